//! Membership and load dissemination: every daemon runs a chitchat (scuttlebutt gossip with a
//! phi-accrual failure detector) node over UDP and publishes two keys, `load` (its [`Advert`])
//! and `jobs` (its ferry-managed processes). Each daemon's view of the others is therefore
//! partial and stale by a gossip round or more; [`Gossip::view`] says how stale.
//!
//! The gossip is not authenticated (chitchat's datagrams carry no MAC): a forged datagram can
//! only mislead placement. Everything that acts (spawning, migrating, draining) goes over the
//! authenticated `ferry-wire` connections, to the addresses of configured peers or of nodes
//! whose adverts came through gossip. The cluster id is derived from the cluster secret, so
//! clusters with different secrets ignore each other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use serde::{Deserialize, Serialize};

use crate::jobs::JobInfo;

/// How often a node gossips with a random peer (and publishes its figures).
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(500);

const LOAD_KEY: &str = "load";
const JOBS_KEY: &str = "jobs";

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advert {
    /// Bumped at every publication, so that a node with steady figures still looks fresh.
    pub seq: u64,
    /// Runnable tasks, smoothed (exponential average), never below the current count.
    pub run_queue: f64,
    /// Runnable tasks at the moment of the sample.
    pub run_queue_now: u32,
    /// CPUs it may use: its CPU quota, or its CPU count.
    pub capacity: f64,
    pub cpus: u32,
    /// CPU quota of its cgroup, when it has one.
    pub quota: Option<f64>,
    pub mem_free: u64,
    /// ferry-managed processes running there.
    pub jobs: u32,
    /// It takes new processes.
    pub accepting: bool,
    pub draining: bool,
    pub owner_present: bool,
    pub group: String,
    pub role: String,
    pub auto_migrate: bool,
    /// Its daemon's TCP address (for bids, drafts, spawns and migrations).
    pub addr: SocketAddr,
    /// Where the run queue was read: "machine" or the cgroup directory.
    pub measured: String,
}

/// One node as this daemon sees it.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub name: String,
    /// The failure detector believes it alive (always true for this node).
    pub alive: bool,
    /// Its last advert, if one came through.
    pub advert: Option<Advert>,
    /// Its jobs as published (JSON), parsed by [`PeerView::jobs`] only when asked.
    jobs_json: Option<String>,
    /// Time since this daemon first saw the advert it holds (zero for itself).
    pub age: Option<Duration>,
}

/// A node as chitchat holds it: name, generation, alive, `load` (value, version), `jobs`.
type RawNode = (String, u64, bool, Option<(String, u64)>, Option<String>);

impl PeerView {
    /// The node's jobs as it last published them.
    pub fn jobs(&self) -> Vec<JobInfo> {
        self.jobs_json
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default()
    }
}

/// The gossip side of a daemon.
pub struct Gossip {
    handle: ChitchatHandle,
    node: String,
    /// Per node: the version of its `load` key we hold, and when we first saw it.
    seen: std::sync::Mutex<HashMap<String, (u64, Instant)>>,
}

impl Gossip {
    /// Joins the gossip of the cluster named `cluster` at `listen` (UDP), with `seeds` (the
    /// peers' addresses).
    pub async fn start(
        node: &str,
        listen: SocketAddr,
        cluster: String,
        seeds: Vec<SocketAddr>,
    ) -> Result<Gossip, String> {
        // A restarted daemon is a new generation: peers forget its old state.
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(node.to_string(), generation, listen),
            cluster_id: format!("ferry-{cluster}"),
            gossip_interval: GOSSIP_INTERVAL,
            listen_addr: listen,
            seed_nodes: seeds.iter().map(|s| s.to_string()).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: 100,
                max_interval: Duration::from_secs(5),
                initial_interval: GOSSIP_INTERVAL * 2,
                dead_node_grace_period: Duration::from_secs(3600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let handle = chitchat::spawn_chitchat(config, Vec::new(), &UdpTransport)
            .await
            .map_err(|e| format!("gossip on {listen}/udp: {e:#}"))?;
        Ok(Gossip {
            handle,
            node: node.to_string(),
            seen: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Publishes this node's figures (spread by the next gossip rounds).
    pub async fn publish(&self, advert: &Advert, jobs: &[JobInfo]) {
        let load = serde_json::to_string(advert).unwrap_or_default();
        let jobs = serde_json::to_string(jobs).unwrap_or_default();
        self.handle
            .with_chitchat(|c| {
                let me = c.self_node_state();
                if me.get(LOAD_KEY) != Some(load.as_str()) {
                    me.set(LOAD_KEY, &load);
                }
                if me.get(JOBS_KEY) != Some(jobs.as_str()) {
                    me.set(JOBS_KEY, &jobs);
                }
            })
            .await;
    }

    /// Every node this daemon has heard of (itself included), by name; of several
    /// generations of one node (it restarted), the newest.
    pub async fn view(&self) -> Vec<PeerView> {
        let now = Instant::now();
        let raw: Vec<RawNode> = self
            .handle
            .with_chitchat(|c| {
                let live: Vec<ChitchatId> = c.live_nodes().cloned().collect();
                c.node_states()
                    .iter()
                    .map(|(id, state)| {
                        (
                            id.node_id.to_string(),
                            id.generation_id,
                            live.contains(id),
                            state
                                .get_versioned(LOAD_KEY)
                                .filter(|v| !v.is_deleted())
                                .map(|v| (v.value.clone(), v.version)),
                            state.get(JOBS_KEY).map(str::to_string),
                        )
                    })
                    .collect()
            })
            .await;
        let mut newest: HashMap<String, (u64, PeerView)> = HashMap::new();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (name, generation, alive, load, jobs) in raw {
            let advert = load
                .as_ref()
                .and_then(|(text, _)| serde_json::from_str::<Advert>(text).ok());
            let age = load.as_ref().map(|(_, version)| {
                let key = format!("{name}/{generation}");
                let entry = seen.entry(key).or_insert((*version, now));
                if entry.0 != *version {
                    *entry = (*version, now);
                }
                if name == self.node {
                    Duration::ZERO
                } else {
                    now.duration_since(entry.1)
                }
            });
            let view = PeerView {
                name: name.clone(),
                alive: alive || name == self.node,
                advert,
                jobs_json: jobs,
                age,
            };
            match newest.get(&name) {
                Some((g, _)) if *g > generation => {}
                _ => {
                    newest.insert(name, (generation, view));
                }
            }
        }
        let mut out: Vec<PeerView> = newest.into_values().map(|(_, v)| v).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
