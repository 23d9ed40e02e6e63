//! The load-sharing requests of the local CLI: `ferry run`, `ps`, `nodes`, `drain`, `owner`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::control::{Counts, Event, FailureKind, NodeRow};
use crate::daemon::Shared;
use crate::jobs::RunSpec;
use crate::peer::{PeerReply, PeerRequest};
use crate::placement::Policy;
use crate::sharing;

fn failed(kind: FailureKind, message: impl Into<String>) -> Event {
    Event::Failed {
        kind,
        message: message.into(),
    }
}

/// `ferry run`: place, then start, with the caller's credentials.
pub async fn run(
    shared: Arc<Shared>,
    caller: (u32, u32),
    spec: RunSpec,
    on: Option<String>,
    policy: Option<Policy>,
) -> Event {
    let spec = RunSpec {
        uid: caller.0,
        gid: caller.1,
        ..spec
    };
    if spec.argv.is_empty() {
        return failed(FailureKind::Error, "ferry run: no command given");
    }
    // Refuse here what cannot run anywhere (paths are checked again where it runs).
    if let Err(why) = crate::jobs::Jobs::check(&spec) {
        return failed(FailureKind::Error, why);
    }
    let (node, why) = match on {
        Some(n) => {
            if n != shared.config.node && sharing::address_of(&shared, &n).await.is_none() {
                return failed(
                    FailureKind::Error,
                    format!("unknown node {n} (ferry nodes lists the known ones)"),
                );
            }
            (n, "asked for".to_string())
        }
        None => match sharing::place(&shared, policy.unwrap_or(shared.config.policy)).await {
            Ok(p) => p,
            Err(e) => return failed(FailureKind::Rejected, e),
        },
    };
    match sharing::run_on(&shared, &node, spec).await {
        Ok(job) => Event::Started {
            job,
            placement: why,
        },
        Err(e) => failed(FailureKind::Rejected, e),
    }
}

/// `ferry ps`: this node's jobs, fresh, and the others' as gossip last brought them.
pub async fn ps(shared: &Shared) -> Event {
    let mine = shared.jobs.snapshot();
    let others: Vec<_> = shared
        .gossip
        .view()
        .await
        .into_iter()
        .filter(|p| p.name != shared.config.node)
        .flat_map(|p| p.jobs())
        .collect();
    Event::Jobs {
        jobs: crate::jobs::merge(mine.into_iter().chain(others)),
    }
}

pub fn counts(shared: &Shared) -> Counts {
    let c = &shared.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Counts {
        messages: get(&c.messages),
        bids: get(&c.bids),
        claims: get(&c.claims),
        drafts: get(&c.drafts),
        spawns: get(&c.spawns),
        auto_migrations: get(&c.auto_migrations),
        evictions: get(&c.evictions),
    }
}

/// `ferry nodes`.
pub async fn nodes(shared: &Shared) -> Event {
    let view = shared.gossip.view().await;
    let nodes = view
        .into_iter()
        .map(|p| {
            let me = p.name == shared.config.node;
            NodeRow {
                status: if me {
                    "self".into()
                } else if p.alive {
                    "alive".into()
                } else {
                    "dead".into()
                },
                age_ms: p.age.map(|a| a.as_millis() as u64),
                advert: p.advert,
                counters: me.then(|| counts(shared)),
                messages: me.then(|| shared.messages.counters()),
                name: p.name,
            }
        })
        .collect();
    Event::Nodes { nodes }
}

/// `ferry drain` and `ferry owner`: set the flag on `node`, here or through its daemon.
pub async fn set_flag(
    shared: Arc<Shared>,
    caller_uid: u32,
    node: String,
    req: PeerRequest,
) -> Event {
    if caller_uid != 0 {
        return failed(
            FailureKind::PermissionDenied,
            "permission denied: only root may drain a node or set its owner's presence",
        );
    }
    let what = match &req {
        PeerRequest::Drain { on: true } => format!("{node} drains: its mobile processes move off"),
        PeerRequest::Drain { on: false } => format!("{node} takes processes again"),
        PeerRequest::Owner { present: true } => {
            format!("owner present on {node}: foreign processes move off")
        }
        PeerRequest::Owner { present: false } => format!("owner away from {node}"),
        _ => String::new(),
    };
    let reply = if node == shared.config.node {
        sharing::answer(Arc::clone(&shared), &shared.config.node, req).await
    } else {
        match sharing::address_of(&shared, &node).await {
            None => {
                return failed(
                    FailureKind::Error,
                    format!("unknown node {node} (ferry nodes lists the known ones)"),
                );
            }
            Some(addr) => match crate::peer::ask(
                &shared.config.node,
                &shared.source.secret,
                &node,
                addr,
                &req,
                &shared.counters,
            )
            .await
            {
                Ok(r) => r,
                Err(e) => return failed(FailureKind::Error, e),
            },
        }
    };
    match reply {
        PeerReply::Done => Event::Done { message: what },
        PeerReply::Refused(why) => failed(FailureKind::Rejected, why),
        other => failed(FailureKind::Error, format!("unexpected answer {other:?}")),
    }
}
