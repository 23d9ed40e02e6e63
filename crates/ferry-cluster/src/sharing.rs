//! Load sharing on one daemon: measure the local load, publish it, place new processes
//! (bidding, drafting, hybrid), move processes automatically when overloaded, drain the node
//! and evict foreign processes when its owner is present. The decisions themselves are in
//! [`crate::placement`]; this module gathers their inputs and carries them out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use ferry_migrate::Algorithm;
use ferry_migrate::source::Target;

use crate::config::Role;
use crate::daemon::Shared;
use crate::gossip::{Advert, GOSSIP_INTERVAL, PeerView};
use crate::jobs::{JobInfo, RunSpec};
use crate::peer::{Figures, PeerReply, PeerRequest, ask};
use crate::placement::{self, NodeLoad, Policy, Rules};

/// How often the run queue is sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// Time constant of the run-queue average.
const SMOOTHING: Duration = Duration::from_secs(1);
/// How often the balancer looks at the load (automatic migration, drain, eviction).
const BALANCE_INTERVAL: Duration = Duration::from_millis(500);
/// Most automatic migrations one node starts per round (they run concurrently).
const MOVES_PER_ROUND: usize = 8;
/// Algorithm of automatic migrations (shortest freeze) and of evictions (no residual
/// dependency: the node may go away right after).
const BALANCE_ALGORITHM: Algorithm = Algorithm::FreezeFree;
const EVICT_ALGORITHM: Algorithm = Algorithm::TotalCopy;

/// The run queue and capacity as sampled.
struct RunQueue {
    /// Exponential average.
    average: f64,
    /// The last sample.
    now: u32,
    sampled_at: Instant,
    capacity: Capacity,
}

/// CPUs this node may use: its quota (if its cgroup has one) capped by its CPU count.
#[derive(Clone, Copy)]
struct Capacity {
    cpus: u32,
    quota: Option<f64>,
}

impl Capacity {
    fn cpus(self) -> f64 {
        self.quota
            .unwrap_or(self.cpus as f64)
            .min(self.cpus as f64)
            .max(0.01)
    }
}

/// The load-sharing state of a daemon.
pub struct Sharing {
    load: std::sync::Mutex<RunQueue>,
    /// A failed sample was reported (once).
    sample_warned: AtomicBool,
    pub draining: AtomicBool,
    pub owner_present: AtomicBool,
    seq: AtomicU64,
    /// Peers this node sent a process to, and when: until their gossip shows it.
    pending: Mutex<Vec<(String, Instant)>>,
    pub rules: Rules,
}

impl Default for Sharing {
    fn default() -> Self {
        Sharing {
            load: std::sync::Mutex::new(RunQueue {
                average: 0.0,
                now: 0,
                sampled_at: Instant::now(),
                capacity: Capacity {
                    cpus: ferry_sys::load::cpu_count() as u32,
                    quota: None,
                },
            }),
            sample_warned: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            owner_present: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            rules: Rules::default(),
        }
    }
}

/// Why this node takes no new processes, if it does not.
pub fn refusal(shared: &Shared) -> Option<String> {
    shared.sharing.refusal(&shared.config)
}

impl Sharing {
    /// A process is about to run here: count it before the next sample sees it, so that a
    /// bid or claim right after does.
    pub fn count_arrival(&self) {
        let mut l = self.load.lock().unwrap_or_else(|p| p.into_inner());
        l.now += 1;
        l.average += 1.0;
    }

    /// A process left: count it gone now rather than when the average catches up.
    fn count_departure(&self) {
        let mut l = self.load.lock().unwrap_or_else(|p| p.into_inner());
        l.now = l.now.saturating_sub(1);
        l.average = (l.average - 1.0).max(0.0);
    }

    /// Why a node with `config` and this state takes no new processes, if it does not.
    pub fn refusal(&self, config: &crate::config::Config) -> Option<String> {
        if config.role == Role::PageStore {
            return Some(format!("{} is a page-store node", config.node));
        }
        if self.draining.load(Ordering::Relaxed) {
            return Some(format!("{} is draining", config.node));
        }
        if self.owner_present.load(Ordering::Relaxed) {
            return Some(format!(
                "the owner of {} is present: it takes no foreign processes",
                config.node
            ));
        }
        None
    }
}

fn sample(shared: &Shared) -> Option<u32> {
    let r = match &shared.config.cgroup {
        Some(dir) => ferry_sys::load::cgroup_run_queue(dir),
        None => ferry_sys::load::machine_run_queue(),
    };
    match r {
        Ok(n) => Some(n),
        Err(e) => {
            if !shared.sharing.sample_warned.swap(true, Ordering::Relaxed) {
                warn!(error = %e, "cannot sample the run queue; this node's load is not known");
            }
            None
        }
    }
}

fn read_capacity(shared: &Shared) -> Capacity {
    Capacity {
        cpus: ferry_sys::load::cpu_count() as u32,
        quota: shared
            .config
            .cgroup
            .as_ref()
            .and_then(|d| ferry_sys::load::cgroup_cpu_quota(d).ok().flatten()),
    }
}

/// This node's figures now: the smoothed run queue, never below the current sample (a
/// process that just started counts at once).
pub fn own_figures(shared: &Shared) -> Figures {
    let (ema, now, capacity) = {
        let l = shared
            .sharing
            .load
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (l.average, l.now, l.capacity)
    };
    Figures {
        run_queue: ema.max(now as f64),
        capacity: capacity.cpus(),
        mem_free: ferry_sys::host::mem_available().unwrap_or(0),
        jobs: shared.jobs.running(),
        accepting: refusal(shared).is_none(),
        group: shared.config.group.clone(),
    }
}

fn own_load(shared: &Shared) -> NodeLoad {
    let f = own_figures(shared);
    load_of(&shared.config.node, &f, Duration::ZERO)
}

/// Decisions count whole tasks: the smoothed figure filters out short spikes, rounding keeps
/// its slow decay from hiding an idle CPU for seconds.
fn tasks(run_queue: f64) -> f64 {
    run_queue.round()
}

fn load_of(name: &str, f: &Figures, age: Duration) -> NodeLoad {
    NodeLoad {
        name: name.to_string(),
        group: f.group.clone(),
        run_queue: tasks(f.run_queue),
        capacity: f.capacity,
        mem_free: f.mem_free,
        jobs: f.jobs,
        age,
        alive: true,
        accepting: f.accepting,
    }
}

/// The gossip view as load tables (nodes without an advert are left out: nothing is known).
pub fn loads(view: &[PeerView]) -> Vec<NodeLoad> {
    view.iter()
        .filter_map(|p| {
            let a = p.advert.as_ref()?;
            Some(NodeLoad {
                name: p.name.clone(),
                group: a.group.clone(),
                run_queue: tasks(a.run_queue),
                capacity: a.capacity,
                mem_free: a.mem_free,
                jobs: a.jobs,
                age: p.age.unwrap_or(Duration::MAX),
                alive: p.alive,
                accepting: a.accepting,
            })
        })
        .collect()
}

/// Samples the run queue and publishes this node's advert and jobs, until the daemon ends.
pub async fn measure_and_publish(shared: Arc<Shared>) {
    let mut publish_at = Instant::now();
    loop {
        // The quota may change while the node runs (testnet.sh quota): read with the sample.
        let capacity = read_capacity(&shared);
        if let Some(n) = sample(&shared) {
            let mut l = shared
                .sharing
                .load
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            l.capacity = capacity;
            let dt = l.sampled_at.elapsed().as_secs_f64();
            let w = 1.0 - (-dt / SMOOTHING.as_secs_f64()).exp();
            l.average += (n as f64 - l.average) * w;
            l.now = n;
            l.sampled_at = Instant::now();
        }
        if publish_at.elapsed() >= GOSSIP_INTERVAL {
            publish_at = Instant::now();
            let f = own_figures(&shared);
            let (now, capacity) = {
                let l = shared
                    .sharing
                    .load
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                (l.now, l.capacity)
            };
            let advert = Advert {
                seq: shared.sharing.seq.fetch_add(1, Ordering::Relaxed),
                run_queue: f.run_queue,
                run_queue_now: now,
                capacity: f.capacity,
                cpus: capacity.cpus,
                quota: capacity.quota,
                mem_free: f.mem_free,
                jobs: f.jobs,
                accepting: f.accepting,
                draining: shared.sharing.draining.load(Ordering::Relaxed),
                owner_present: shared.sharing.owner_present.load(Ordering::Relaxed),
                group: shared.config.group.clone(),
                role: match shared.config.role {
                    Role::Normal => "normal".into(),
                    Role::PageStore => "page-store".into(),
                },
                auto_migrate: shared.config.auto_migrate,
                addr: shared.config.listen,
                measured: match &shared.config.cgroup {
                    Some(d) => d.display().to_string(),
                    None => "machine".into(),
                },
            };
            let jobs = shared.jobs.snapshot();
            shared.gossip.publish(&advert, &jobs).await;
        }
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
}

/// The TCP address of node `name`: configured, or advertised through gossip.
pub async fn address_of(shared: &Shared, name: &str) -> Option<std::net::SocketAddr> {
    if let Some(p) = shared.config.peer(name) {
        return Some(p.addr);
    }
    shared
        .gossip
        .view()
        .await
        .into_iter()
        .find(|p| p.name == name)
        .and_then(|p| p.advert.map(|a| a.addr))
}

/// Keeps the message service's address book current (configured peers, then gossip).
pub async fn track_addresses(shared: Arc<Shared>) {
    loop {
        let mut book: std::collections::HashMap<String, std::net::SocketAddr> = shared
            .config
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.addr))
            .collect();
        for p in shared.gossip.view().await {
            if let (true, Some(a)) = (p.alive, p.advert.as_ref()) {
                book.entry(p.name.clone()).or_insert(a.addr);
            }
        }
        shared.messages.peers.set_addresses(book);
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
}

async fn ask_node(shared: &Shared, name: &str, req: &PeerRequest) -> Result<PeerReply, String> {
    let addr = address_of(shared, name)
        .await
        .ok_or_else(|| format!("unknown node {name}"))?;
    ask(
        &shared.config.node,
        &shared.source.secret,
        name,
        addr,
        req,
        &shared.counters,
    )
    .await
}

/// Fresh bids of `peers` (those that answer), asked in turn: a handful of peers on a LAN,
/// each answer within a millisecond or two.
async fn collect_bids(shared: &Shared, peers: &[&NodeLoad]) -> Vec<NodeLoad> {
    let mut bids = Vec::with_capacity(peers.len());
    for p in peers {
        crate::peer::count(&shared.counters.bids);
        match ask_node(shared, &p.name, &PeerRequest::Bid).await {
            Ok(PeerReply::Figures(f)) => bids.push(load_of(&p.name, &f, Duration::ZERO)),
            Ok(other) => debug!(peer = %p.name, ?other, "odd answer to a bid request"),
            Err(e) => debug!(peer = %p.name, error = %e, "no bid"),
        }
    }
    bids
}

/// Claims a slot at each of `drafters` in turn; the first that grants it. `source`: this
/// node's figures, for an automatic migration.
async fn claim_first(
    shared: &Shared,
    drafters: &[&NodeLoad],
    source: Option<Figures>,
) -> Option<String> {
    for d in drafters {
        if claim(shared, &d.name, source.clone()).await {
            return Some(d.name.clone());
        }
    }
    None
}

/// Claims one slot at drafter `name`; whether it granted it.
async fn claim(shared: &Shared, name: &str, source: Option<Figures>) -> bool {
    crate::peer::count(&shared.counters.claims);
    match ask_node(shared, name, &PeerRequest::Claim { source }).await {
        Ok(PeerReply::Granted) => true,
        Ok(other) => {
            debug!(peer = name, ?other, "claim refused");
            false
        }
        Err(e) => {
            debug!(peer = name, error = %e, "claim failed");
            false
        }
    }
}

/// Where a new process submitted here should run, by `policy`; the decision and why.
pub async fn place(shared: &Shared, policy: Policy) -> Result<(String, String), String> {
    let rules = shared.sharing.rules;
    let me = own_load(shared);
    let view = loads(&shared.gossip.view().await);
    let fallback = |me: &NodeLoad, view: &[NodeLoad]| -> Result<(String, String), String> {
        if me.accepting {
            return Ok((me.name.clone(), "nobody better: stays here".into()));
        }
        placement::usable_peers(&me.name, view, &rules)
            .first()
            .map(|n| (n.name.clone(), "least loaded known node".into()))
            .ok_or_else(|| {
                format!(
                    "no node takes processes ({}; no usable peer)",
                    refusal(shared).unwrap_or_default()
                )
            })
    };
    match policy {
        Policy::Bidding => {
            let peers = placement::usable_peers(&me.name, &view, &rules);
            let bids = collect_bids(shared, &peers).await;
            match placement::choose_bid(&me, &bids) {
                Some(n) => Ok((n.name.clone(), format!("best of {} bids", bids.len() + 1))),
                None => fallback(&me, &view),
            }
        }
        Policy::Drafting => {
            let drafters = placement::drafters(&me.name, &view, &rules);
            if me.accepting && placement::can_take(&me) {
                return Ok((me.name.clone(), "spare capacity here".into()));
            }
            match claim_first(shared, &drafters, None).await {
                Some(n) => Ok((n, "drafted".into())),
                None => fallback(&me, &view),
            }
        }
        Policy::Hybrid => {
            if me.accepting && placement::can_take(&me) {
                return Ok((me.name.clone(), "spare capacity here".into()));
            }
            let (drafters, others) = placement::hybrid_candidates(&me, &view, &rules);
            if let Some(n) = claim_first(shared, &drafters, None).await {
                return Ok((n, "drafted in its group".into()));
            }
            let bids = collect_bids(shared, &others).await;
            match placement::choose_bid(&me, &bids) {
                Some(n) => Ok((
                    n.name.clone(),
                    format!("best of {} bids from other groups", bids.len() + 1),
                )),
                None => fallback(&me, &view),
            }
        }
    }
}

/// Runs `spec` as a new job on `node` (here or through its daemon).
pub async fn run_on(shared: &Shared, node: &str, spec: RunSpec) -> Result<JobInfo, String> {
    let id = shared.jobs.new_id();
    if node == shared.config.node {
        return spawn_here(shared, &id, &shared.config.node.clone(), &spec);
    }
    crate::peer::count(&shared.counters.spawns);
    match ask_node(
        shared,
        node,
        &PeerRequest::Spawn {
            id,
            origin: shared.config.node.clone(),
            spec,
        },
    )
    .await?
    {
        PeerReply::Spawned(info) => Ok(*info),
        PeerReply::Refused(why) => Err(format!("{node} refused: {why}")),
        other => Err(format!("{node}: unexpected answer {other:?}")),
    }
}

pub fn spawn_here(
    shared: &Shared,
    id: &str,
    origin: &str,
    spec: &RunSpec,
) -> Result<JobInfo, String> {
    if let Some(why) = refusal(shared) {
        return Err(why);
    }
    let info = shared.jobs.spawn(id, origin, spec)?;
    crate::jobs::watch(Arc::clone(&shared.jobs), info.pid);
    shared.sharing.count_arrival();
    Ok(info)
}

/// Answers a peer's request (`from`: the peer's authenticated node name).
pub async fn answer(shared: Arc<Shared>, from: &str, req: PeerRequest) -> PeerReply {
    match req {
        PeerRequest::Bid => PeerReply::Figures(own_figures(&shared)),
        PeerRequest::Claim { source } => {
            let me = own_load(&shared);
            let granted = match &source {
                None => placement::can_take(&me),
                Some(f) => placement::can_take_from(&me, &load_of(from, f, Duration::ZERO)),
            };
            if granted {
                // Counted at once, so that a second claim sees it.
                shared.sharing.count_arrival();
                PeerReply::Granted
            } else {
                PeerReply::Refused(refusal(&shared).unwrap_or_else(|| "no spare capacity".into()))
            }
        }
        PeerRequest::Spawn { id, origin, spec } => match spawn_here(&shared, &id, &origin, &spec) {
            Ok(info) => PeerReply::Spawned(Box::new(info)),
            Err(why) => PeerReply::Refused(why),
        },
        PeerRequest::Draft { figures } => answer_draft(&shared, from, figures).await,
        PeerRequest::Drain { on } => {
            shared.sharing.draining.store(on, Ordering::Relaxed);
            info!(node = %shared.config.node, on, "drain");
            PeerReply::Done
        }
        PeerRequest::Owner { present } => {
            shared
                .sharing
                .owner_present
                .store(present, Ordering::Relaxed);
            info!(node = %shared.config.node, present, "owner");
            PeerReply::Done
        }
    }
}

/// The process this overloaded node should move, if any: long-running, CPU-bound (it used
/// its share of a CPU here), mobile, not just arrived; not one of `taken`.
fn pick_local(shared: &Shared, me: &NodeLoad, taken: &[String]) -> Option<(String, i32)> {
    let rules = shared.sharing.rules;
    let mut cands = shared.jobs.candidates();
    cands.retain(|(c, _, _)| !taken.contains(&c.id));
    let list: Vec<_> = cands.iter().map(|(c, _, _)| c.clone()).collect();
    // On a node with N runnable tasks per CPU a process gets 1/N of a CPU, so the CPU it
    // must have used to count as CPU-bound shrinks in proportion.
    let share = (me.capacity / me.run_queue.max(1.0)).min(1.0);
    let judged = Rules {
        min_cpu: rules.min_cpu.mul_f64(share),
        ..rules
    };
    let pick = placement::pick_process(&list, &judged)?;
    cands
        .iter()
        .find(|(c, _, _)| c.id == pick.id)
        .map(|(c, pid, _)| (c.id.clone(), *pid))
}

/// A peer with spare capacity drafts a process from this node.
async fn answer_draft(shared: &Arc<Shared>, drafter: &str, figures: Figures) -> PeerReply {
    if !shared.config.auto_migrate {
        return PeerReply::Refused(format!(
            "automatic migration is off on {}",
            shared.config.node
        ));
    }
    let me = own_load(shared);
    let them = load_of(drafter, &figures, Duration::ZERO);
    if !me.overloaded() || !placement::worth_moving(&me, &them) {
        return PeerReply::Refused("not overloaded (any more)".into());
    }
    let Some((id, pid)) = pick_local(shared, &me, &[]) else {
        return PeerReply::Refused("no process fit to move".into());
    };
    info!(job = %id, to = drafter, run_queue = me.run_queue, "drafted away");
    if move_job(shared, &id, pid, drafter, BALANCE_ALGORITHM).await {
        crate::peer::count(&shared.counters.auto_migrations);
        shared.sharing.count_departure();
        PeerReply::Done
    } else {
        PeerReply::Refused(format!("moving {id} failed"))
    }
}

/// Receiver side of drafting: an idle slot here pulls a process from an overloaded peer.
async fn draft_round(shared: &Arc<Shared>) {
    let rules = shared.sharing.rules;
    let me = own_load(shared);
    let mut view = loads(&shared.gossip.view().await);
    if shared.config.policy == Policy::Hybrid {
        // Drafting stays inside the group; bidding crosses groups.
        view.retain(|n| n.group == me.group);
    }
    let Some(source) = placement::draft_from(&me, &view, &rules) else {
        return;
    };
    crate::peer::count(&shared.counters.drafts);
    let figures = own_figures(shared);
    match ask_node(shared, &source.name, &PeerRequest::Draft { figures }).await {
        Ok(PeerReply::Done) => debug!(from = %source.name, "drafted a process"),
        Ok(other) => debug!(from = %source.name, ?other, "draft refused"),
        Err(e) => debug!(from = %source.name, error = %e, "draft failed"),
    }
}

/// Moves job process `pid` (job `id`) to `target`; true if it moved.
async fn move_job(
    shared: &Arc<Shared>,
    id: &str,
    pid: i32,
    target: &str,
    algorithm: Algorithm,
) -> bool {
    let Some(addr) = address_of(shared, target).await else {
        return false;
    };
    let tag = shared.jobs.begin_move(pid);
    let (utx, mut urx) = tokio::sync::mpsc::unbounded_channel();
    let drain = tokio::spawn(async move { while urx.recv().await.is_some() {} });
    let result = crate::migrate::move_process(
        shared,
        pid,
        vec![Target {
            name: target.to_string(),
            addr,
        }],
        algorithm,
        tag,
        utx,
    )
    .await;
    drain.abort();
    match result {
        Ok(report) => {
            shared.jobs.end_move(pid, true);
            info!(
                job = id,
                to = target,
                freeze_ms = report.freeze_ms,
                "job moved"
            );
            shared.history.lock().await.push(report);
            true
        }
        Err(e) => {
            shared.jobs.end_move(pid, false);
            warn!(job = id, to = target, error = %e, "moving a job failed");
            false
        }
    }
}

/// The balancer: automatic migration (if configured), drain and owner eviction.
pub async fn balance(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(BALANCE_INTERVAL).await;
        let evict_all = shared.sharing.draining.load(Ordering::Relaxed);
        let evict_foreign = shared.sharing.owner_present.load(Ordering::Relaxed);
        if evict_all || evict_foreign {
            evict(&shared, evict_all).await;
        } else if shared.config.auto_migrate {
            auto_round(&shared).await;
            if shared.config.policy != Policy::Bidding {
                draft_round(&shared).await;
            }
        }
    }
}

async fn evict(shared: &Arc<Shared>, all: bool) {
    let me = shared.config.node.clone();
    for (c, pid, origin) in shared.jobs.candidates() {
        if !c.mobile || (!all && origin == me) {
            continue;
        }
        let target = match place(shared, shared.config.policy).await {
            Ok((n, _)) if n != me => n,
            _ => {
                debug!(job = %c.id, "no node to evict it to, yet");
                continue;
            }
        };
        if move_job(shared, &c.id, pid, &target, EVICT_ALGORITHM).await {
            crate::peer::count(&shared.counters.evictions);
        }
    }
}

async fn auto_round(shared: &Arc<Shared>) {
    let rules = shared.sharing.rules;
    let mut me = own_load(shared);
    if !me.overloaded() {
        return;
    }
    let view = loads(&shared.gossip.view().await);
    // Sends that the targets' gossip does not show yet count against them.
    let pending: Vec<String> = {
        let mut p = shared.sharing.pending.lock().await;
        p.retain(|(name, at)| {
            let shown = view
                .iter()
                .find(|n| &n.name == name)
                .is_some_and(|n| n.age + GOSSIP_INTERVAL < at.elapsed());
            !shown && at.elapsed() < rules.stale_after * 2
        });
        p.iter().map(|(n, _)| n.clone()).collect()
    };
    // The (stale) view must promise something before anyone is asked.
    if placement::pick_target(&me, &view, &pending, &rules).is_none() {
        return;
    }
    let with_pending = |nodes: Vec<&NodeLoad>| -> Vec<NodeLoad> {
        nodes
            .into_iter()
            .map(|n| {
                let mut n = n.clone();
                n.run_queue += pending.iter().filter(|p| **p == n.name).count() as f64;
                n
            })
            .collect()
    };
    // Targets with their figures; drafters (advertised a free slot) must also grant a claim
    // for each process, bidders answered with fresh figures.
    let (mut targets, drafted): (Vec<NodeLoad>, Vec<String>) = match shared.config.policy {
        Policy::Bidding => {
            let peers = placement::usable_peers(&me.name, &view, &rules);
            (collect_bids(shared, &peers).await, Vec::new())
        }
        Policy::Drafting => {
            let d = with_pending(placement::drafters(&me.name, &view, &rules));
            let names = d.iter().map(|n| n.name.clone()).collect();
            (d, names)
        }
        Policy::Hybrid => {
            let (d, others) = placement::hybrid_candidates(&me, &view, &rules);
            let mut t = with_pending(d);
            let names = t.iter().map(|n| n.name.clone()).collect();
            t.extend(collect_bids(shared, &others).await);
            (t, names)
        }
    };
    let mut plan: Vec<(String, i32, String)> = Vec::new();
    while plan.len() < MOVES_PER_ROUND && me.overloaded() {
        let taken: Vec<String> = plan.iter().map(|(id, _, _)| id.clone()).collect();
        let Some((id, pid)) = pick_local(shared, &me, &taken) else {
            break;
        };
        let Some(target) =
            placement::pick_target(&me, &targets, &[], &rules).map(|n| n.name.clone())
        else {
            break;
        };
        if drafted.contains(&target) && !claim(shared, &target, Some(own_figures(shared))).await {
            targets.retain(|n| n.name != target);
            continue;
        }
        if let Some(n) = targets.iter_mut().find(|n| n.name == target) {
            n.run_queue += 1.0;
        }
        me.run_queue -= 1.0;
        plan.push((id, pid, target));
    }
    // The moves run at once: on a loaded host each takes a while, since the frozen process
    // and the daemon share the host's CPU with everything else there.
    let mut running = Vec::new();
    for (id, pid, target) in plan {
        info!(job = %id, to = %target, run_queue = me.run_queue, "automatic migration");
        let s = Arc::clone(shared);
        let t = target.clone();
        let h = tokio::spawn(async move { move_job(&s, &id, pid, &t, BALANCE_ALGORITHM).await });
        running.push((target, h));
    }
    for (target, h) in running {
        if matches!(h.await, Ok(true)) {
            crate::peer::count(&shared.counters.auto_migrations);
            shared
                .sharing
                .pending
                .lock()
                .await
                .push((target, Instant::now()));
            shared.sharing.count_departure();
        }
    }
}
