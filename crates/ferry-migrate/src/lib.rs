//! Live migration of a process from one host to another.
//!
//! - [`pinned`]: ptrace-bound state (a frozen source, a vessel) on a thread of its own.
//! - [`pages`]: where each page sits in a page stream.
//! - [`protocol`]: the messages between source and destination, and the commit rule.
//! - [`report`]: the algorithms' names and the paper's metrics.
//! - [`store`]: the page store ("file server") in a directory.
#![forbid(unsafe_code)]

pub mod pages;
pub mod pinned;
pub mod protocol;
pub mod report;
pub mod store;

pub use report::{Algorithm, FaultStats, MigrationReport};
