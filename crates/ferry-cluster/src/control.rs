//! The local control socket: how the `ferry` CLI talks to the daemon of its host.
//!
//! A Unix stream socket; the client writes one JSON request line, the daemon answers with JSON
//! event lines (progress, then exactly one final `Done`/`Failed`) and closes. The caller is
//! identified by `SO_PEERCRED`: only root or the owner of a process may move it.

use serde::{Deserialize, Serialize};

use ferry_migrate::{Algorithm, MigrationReport};

use crate::gossip::Advert;
use crate::jobs::JobInfo;
use crate::placement::Policy;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Move `pid` to the first of `to` that accepts it.
    Migrate {
        pid: i32,
        to: Vec<String>,
        algorithm: Algorithm,
    },
    /// This node, its peers, and migrations it knows of.
    Status,
    /// Start a job (`ferry run`): on `on`, or where `policy` (default: the daemon's) places
    /// it. The daemon runs it with the caller's credentials.
    Run {
        argv: Vec<String>,
        cwd: String,
        env: Vec<(String, String)>,
        stdout: Option<String>,
        stderr: Option<String>,
        on: Option<String>,
        policy: Option<Policy>,
    },
    /// Every ferry-managed process of the cluster, as this node knows them.
    Ps,
    /// Every node this node knows, with its load figures and their age.
    Nodes,
    /// Drain `node` (or stop draining it).
    Drain { node: String, on: bool },
    /// The owner of `node` is present (or away).
    Owner { node: String, present: bool },
}

/// Why a request failed, for the CLI's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The process cannot move (`not migratable: …`).
    NotMigratable,
    /// Every target refused it.
    Rejected,
    /// The caller may not do this.
    PermissionDenied,
    /// Anything else.
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A phase began, or `done` of `total` bytes moved.
    Progress {
        phase: String,
        done: u64,
        total: u64,
    },
    /// The migration completed (the process runs at `report.to`).
    Migrated {
        report: MigrationReport,
    },
    Status {
        status: NodeStatus,
    },
    /// A job started.
    Started {
        job: JobInfo,
        /// Why there.
        placement: String,
    },
    Jobs {
        jobs: Vec<JobInfo>,
    },
    Nodes {
        nodes: Vec<NodeRow>,
    },
    /// A request without a result of its own succeeded.
    Done {
        message: String,
    },
    Failed {
        kind: FailureKind,
        message: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub listen: String,
    pub peers: Vec<String>,
    /// Migrations this node took part in, most recent last (reports as far as known).
    pub migrations: Vec<MigrationReport>,
}

/// One node in `ferry nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    pub name: String,
    /// alive, dead (the failure detector), or self.
    pub status: String,
    /// Age of its figures, as the asking node sees them.
    pub age_ms: Option<u64>,
    pub advert: Option<Advert>,
    /// Load-sharing counters (only for the node that answers).
    pub counters: Option<Counts>,
    /// Its message service: endpoints and delivery counters (only for the node that answers).
    #[serde(default)]
    pub messages: Option<crate::messages::MessageCounters>,
}

/// What a node did for load sharing since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests and answers between daemons (bids, claims, drafts, spawns, drain, owner).
    pub messages: u64,
    pub bids: u64,
    pub claims: u64,
    pub drafts: u64,
    pub spawns: u64,
    pub auto_migrations: u64,
    pub evictions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let r = Request::Migrate {
            pid: 42,
            to: vec!["n2".into()],
            algorithm: Algorithm::PreCopy,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"request":"migrate","pid":42,"to":["n2"],"algorithm":"pre-copy"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        let e = Event::Failed {
            kind: FailureKind::NotMigratable,
            message: "not migratable: fd 1 is a pipe".into(),
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains(r#""event":"failed""#) && text.contains("not-migratable"));
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e);
    }
}
