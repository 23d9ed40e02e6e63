//! The ferry daemon.
//!
//! - [`config`]: the configuration file and flags.
//! - [`control`]: the local control socket's requests and events (the CLI side is in `ferry`).
//! - [`daemon`]: the daemon's main loop.
//! - [`migrate`]: migration requests: authorization, targets.
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
pub mod daemon;
pub mod migrate;
