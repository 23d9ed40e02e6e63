//! Load-sharing messages between daemons: one request, one answer, on an authenticated
//! `cluster` connection (see `ferry-wire`). Every request and every answer counts as one
//! message in the node's figures (what the makespan experiment reports).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::jobs::{JobInfo, RunSpec};

/// A node's fresh figures, as a bid or with a draft claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub run_queue: f64,
    pub capacity: f64,
    pub mem_free: u64,
    pub jobs: u32,
    pub accepting: bool,
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Bidding: your current figures, please.
    Bid,
    /// Drafting: you advertised spare capacity; may I send you one process? `source`: the
    /// sender's fresh figures when it is an automatic migration (the receiver then also takes
    /// a move that balances two overloaded nodes); none for a new process.
    Claim { source: Option<Figures> },
    /// Drafting, receiver-initiated: I have spare capacity (these fresh figures); if you are
    /// overloaded, send me one of your processes (answered once it moved, or refused).
    Draft { figures: Figures },
    /// Remote execution: run this as job `id`, submitted at `origin`.
    Spawn {
        id: String,
        origin: String,
        spec: RunSpec,
    },
    /// Stop taking processes and move every mobile one off (`on`), or take them again.
    Drain { on: bool },
    /// The workstation's owner is present (evict foreign processes, take none) or away.
    Owner { present: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerReply {
    Figures(Figures),
    Granted,
    Spawned(Box<JobInfo>),
    Done,
    Refused(String),
}

/// Messages this node sent and received for load sharing (not gossip, not migrations).
#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub bids: AtomicU64,
    pub claims: AtomicU64,
    pub drafts: AtomicU64,
    pub spawns: AtomicU64,
    pub auto_migrations: AtomicU64,
    pub evictions: AtomicU64,
}

/// Counts one more of what `counter` counts.
pub fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How long an answer may take (a spawn includes starting the process).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends `req` to the daemon `name` at `addr` and returns its answer.
pub async fn ask(
    local: &str,
    secret: &ferry_wire::ClusterSecret,
    name: &str,
    addr: SocketAddr,
    req: &PeerRequest,
    counters: &Counters,
) -> Result<PeerReply, String> {
    let talk = async {
        let mut conn = ferry_wire::Connection::connect(
            addr,
            secret,
            ferry_wire::Role::Cluster,
            ferry_wire::Mode::Encrypted,
            local,
            ANSWER_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())?;
        if conn.peer_node() != name {
            return Err(format!(
                "{addr} answers as {}, not {name}",
                conn.peer_node()
            ));
        }
        conn.send_msg(req).await.map_err(|e| e.to_string())?;
        count(&counters.messages);
        let reply = conn
            .recv_msg::<PeerReply>()
            .await
            .map_err(|e| e.to_string())?;
        count(&counters.messages);
        Ok(reply)
    };
    tokio::time::timeout(ANSWER_TIMEOUT, talk)
        .await
        .map_err(|_| format!("{name} did not answer within {ANSWER_TIMEOUT:?}"))?
        .map_err(|e| format!("{name}: {e}"))
}
