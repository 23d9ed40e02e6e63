//! The ferry daemon.
//!
//! - [`config`]: the configuration file and flags.
//! - [`control`]: the local control socket's requests and events (the CLI side is in `ferry`).
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
