//! The ferry daemon.
//!
//! - [`config`]: the configuration file and flags.
//! - [`control`]: the local control socket's requests and events (the CLI side is in `ferry`).
//! - [`daemon`]: the daemon's main loop.
//! - [`migrate`]: migration requests: authorization, targets.
//! - [`gossip`]: membership and load dissemination (chitchat).
//! - [`jobs`]: ferry-managed processes of this node (remote execution, ids across moves).
//! - [`placement`]: the policies (bidding, drafting, hybrid, automatic migration), pure.
//! - [`sharing`]: load measurement, placement and automatic migration carried out.
//! - [`peer`]: load-sharing messages between daemons.
//! - [`messages`]: the message service: endpoints of local processes, links between daemons,
//!   links moving with their processes.
//! - [`commands`]: `ferry run`, `ps`, `nodes`, `drain`, `owner` on the daemon's side.
#![forbid(unsafe_code)]

pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod gossip;
pub mod jobs;
pub mod messages;
pub mod migrate;
pub mod peer;
pub mod placement;
pub mod sharing;
