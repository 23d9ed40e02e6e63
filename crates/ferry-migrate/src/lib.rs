//! Live migration of a process from one host to another.
//!
//! - `assembly`: a process tree arriving in one flow per process, rebuilt as one.
//! - [`pinned`]: ptrace-bound state (a frozen source, a vessel) on a thread of its own.
//! - [`changes`]: address-space changes of a lazily restored process, and what they mean
//!   for its image pages.
//! - [`hot`]: the pages freeze-free sends with the state.
//! - [`staging`]: pre-copy pages kept at the destination until the final state.
//! - [`pages`]: where each page sits in a page stream.
//! - [`protocol`]: the messages between source and destination, and the commit rule.
//! - [`report`]: the algorithms' names and the paper's metrics.
//! - [`store`]: the page store ("file server"): a directory, or ([`store_node`]) a daemon
//!   in page-store role.
#![forbid(unsafe_code)]

mod assembly;
pub mod changes;
pub mod dest;
pub mod hot;
pub mod pages;
pub mod pinned;
pub mod protocol;
pub mod report;
pub mod source;
pub mod staging;
pub mod store;
pub mod store_node;

pub use report::{Algorithm, FaultStats, MigrationReport};
