//! Messages between the source and destination daemons of one migration.
//!
//! Connections (all authenticated, see `ferry-wire`), opened by the source:
//!
//! | role | direction | carries |
//! |---|---|---|
//! | control | both | the messages below; page faults and their replies |
//! | pages | source → destination | the bulk page stream (page frames) |
//!
//! Page bytes never go through serde: they travel as page frames (address, length, tag, raw
//! bytes), on the pages connection for the bulk stream and on the control connection for
//! fault replies, so that a fault never waits behind the bulk stream.
//!
//! ```text
//!  source                                   destination
//!  Offer ─────────────────────────────────▶  (checks: platform, memory, files)
//!        ◀───────────────────────────────── Accept | Reject{reason}     (not freeze-free)
//!  [pre-copy: Round{n} + page frames…, while the process runs]
//!  freeze
//!  State{image, eager} + page frames ─────▶ build the process (stopped)
//!  [total-copy, pre-copy: all/dirty pages, then PagesEnd]
//!        ◀───────────────────────────────── Ready | Abort{reason}
//!  Commit ────────────────────────────────▶ start it
//!        ◀───────────────────────────────── Started{pid}
//!  [lazy algorithms: Fault{id,addr,pages} ◀──  …  ──▶ page frame tagged id
//!   bulk stream, FlushProgress, FlushComplete]
//!        ◀───────────────────────────────── Done{…}   (no residual dependency any more)
//! ```
//!
//! Until the source sends `Commit` it may resume its process (on `Reject`, `Abort`, a timeout
//! or a broken link); after `Commit` it never does on its own: the destination records every
//! commit it receives and answers a `Query` after a reconnect. There are never two copies.

use serde::{Deserialize, Serialize};

use ferry_image::{Platform, ProcessImage, TreeImage};

use crate::report::{Algorithm, FaultStats};

/// Version of this protocol; both ends must speak the same.
pub const PROTOCOL: u32 = 3;

/// Page frame tags.
pub mod tag {
    /// A page of the bulk stream (or an eager page).
    pub const STREAM: u32 = 0;
    /// Fault replies carry the request id in the upper bits: `FAULT | id << 8`.
    pub const FAULT: u32 = 1;
}

/// What the source offers before anything is frozen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub protocol: u32,
    pub migration: String,
    pub from: String,
    pub algorithm: Algorithm,
    pub comm: String,
    pub pid: i32,
    pub uid: u32,
    /// Resident bytes that will have to move.
    pub memory_bytes: u64,
    /// Files the process has open or mapped (they must exist at the destination).
    pub files: Vec<String>,
    pub platform: Platform,
    /// What the layer above says about the process (the cluster's job record), carried as is.
    pub tag: Option<String>,
    /// Processes that move: 1, or a tree's living members (each comes on a flow of its own,
    /// introduced by `ToDest::Member`; `memory_bytes` and `files` are the whole tree's).
    pub processes: u32,
}

/// The frozen process's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub migration: String,
    pub algorithm: Algorithm,
    pub image: ProcessImage,
    /// A tree's manifest, on its root's state: the destination rebuilds the tree once every
    /// living member's state arrived.
    pub tree: Option<TreeImage>,
    /// Pages that follow right after this message, as page frames, before `PagesEnd`.
    pub eager_bytes: u64,
    /// The offer, for freeze-free (which skips the negotiation).
    pub offer: Option<Offer>,
    /// Where the source flushes pages (file-server, freeze-free).
    pub store: Option<StoreRef>,
}

/// A page store as both daemons name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreRef {
    /// A directory both hosts see (shared mount).
    Dir(String),
    /// A ferry daemon in page-store role.
    Node { name: String, addr: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]

pub enum ToDest {
    /// First message on a pages connection: which migration it belongs to.
    Attach {
        migration: String,
    },
    Offer(Box<Offer>),
    /// First message of a tree member's control connection: it belongs to the tree whose
    /// root is migration `tree`, and is migration `migration` itself (its pages connection
    /// attaches with that name).
    Member {
        tree: String,
        migration: String,
    },
    State(Box<State>),
    /// Pre-copy: round `round` of pages (page frames) follows.
    Round {
        round: u32,
    },
    /// On the pages connection, after any pre-copy rounds: the pages that follow belong to the
    /// frozen state (sent right after `State`).
    Final,
    /// End of a batch of page frames (eager pages, a pre-copy round, the final pages).
    PagesEnd {
        bytes: u64,
    },
    Commit,
    /// The source gives up before committing (its process keeps running there).
    Abort {
        reason: String,
    },
    /// Page-store bytes durable so far (stream offsets below this are in the store).
    FlushProgress {
        upto: u64,
    },
    /// Every page is in the store; the source drops out.
    FlushComplete {
        bytes: u64,
    },
    /// The bulk stream is complete.
    StreamComplete {
        bytes: u64,
    },
    /// After a broken link: did migration `migration` start?
    Query {
        migration: String,
    },
}

/// The destination's side of the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DestFigures {
    pub insertion_ms: f64,
    pub remote_faults: FaultStats,
    pub store_faults: u64,
    /// Executing → no residual dependency, as seen by the destination.
    pub residual_ms: Option<f64>,
    /// Why the dependency ended: all pages arrived, the process exited, …
    pub ended_by: String,
    /// The destination still reads pages from the page store (it removes them when done).
    pub needs_store: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]

pub enum ToSource {
    Accept,
    Reject {
        reason: String,
    },
    /// The process is built and stopped, waiting for `Commit`.
    Ready {
        insertion_ms: f64,
    },
    Started {
        pid: i32,
    },
    /// Page fault: send `pages` pages from `addr` (a page frame tagged with `id`).
    Fault {
        id: u32,
        addr: u64,
        pages: u32,
    },
    /// The destination needs nothing more from the source.
    Done {
        figures: DestFigures,
    },
    Abort {
        reason: String,
    },
    /// Answer to `Query`.
    Outcome(Outcome),
}

/// What a destination knows of a migration it was asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// It runs there as `pid`.
    Started { pid: i32 },
    /// Committed, still starting: ask again.
    Pending,
    /// It will never run there (aborted, failed to start, or never committed): the source
    /// may resume it.
    NotStarted,
}

/// The tag of a fault reply.
pub fn fault_tag(id: u32) -> u32 {
    tag::FAULT | (id << 8)
}

/// The request id of a fault-reply tag, if it is one.
pub fn fault_id(t: u32) -> Option<u32> {
    (t & 0xff == tag::FAULT).then_some(t >> 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_tags_round_trip() {
        for id in [0u32, 1, 77, (1 << 24) - 1] {
            assert_eq!(fault_id(fault_tag(id)), Some(id));
        }
        assert_eq!(fault_id(tag::STREAM), None);
    }

    #[test]
    fn a_tree_members_hello_round_trips() {
        let m = ToDest::Member {
            tree: "n1-42-abc".into(),
            migration: "n1-42-abc-p43".into(),
        };
        let bytes = postcard::to_stdvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<ToDest>(&bytes).unwrap(), m);
    }

    #[test]
    fn messages_encode_compactly() {
        let m = ToSource::Fault {
            id: 3,
            addr: 0x7f00_0000_1000,
            pages: 1,
        };
        let bytes = postcard::to_stdvec(&m).unwrap();
        assert!(bytes.len() < 24, "{} bytes", bytes.len());
        assert_eq!(postcard::from_bytes::<ToSource>(&bytes).unwrap(), m);
    }
}
