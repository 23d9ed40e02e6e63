//! The destination side of a migration: judge the offer, rebuild the process, start it on
//! `Commit`, and (lazy algorithms) fill its memory as it runs.
//!
//! ```text
//!  Offer ──▶ check (protocol, platform, files, memory) ──▶ Accept | Reject
//!  State ──▶ vessel (warm) + mappings ──▶ pages (staged / eager) ──▶ [uffd] ──▶ finish
//!        ──▶ Ready ──▶ Commit ──▶ record, start ──▶ Started ──▶ [pager until Done]
//!  control lost or Abort before Commit: the vessel dies, "aborted" is recorded.
//! ```
//!
//! The pages connection is read by one task whose target the control task moves along:
//! staging (pre-copy rounds), then the vessel (pages that follow the state), then the
//! userfaultfd (the freeze-free stream).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_checkpoint::{Builder, RestoreError, Vessel};
use ferry_image::{PAGE_SIZE, ProcessImage};
use ferry_sys::uffd::{RegisterMode, Uffd};
use ferry_sys::{Pid, host};
use ferry_wire::{Connection, Received, Receiver, Role, Sender};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::assembly::Assembly;
use crate::changes::Changes;
use crate::pages::PageMap;
use crate::pinned::Pinned;
use crate::protocol::{self, DestFigures, Offer, PROTOCOL, State, ToDest, ToSource, tag};
use crate::report::{Algorithm, FaultStats, Timeline};
use crate::source::ms;
use crate::staging::Staging;
use crate::store::{PageReader, PageStore, StoreAccess};

#[derive(Clone)]
pub struct DestConfig {
    pub node: String,
    /// Commit records live in `state_dir/migrations`.
    pub state_dir: PathBuf,
    /// How to open the page store a source flushes to.
    pub store_access: StoreAccess,
    pub timeout: Duration,
    /// Refuse processes that would leave less than this much memory available.
    pub reserve_bytes: u64,
    /// This node only stores pages (it runs no processes).
    pub page_store_only: bool,
    /// Refuse processes needing more memory than this.
    pub memory_limit: Option<u64>,
    /// The layer above may refuse an offer too (a draining node, its owner present): the
    /// reason, or `Ok`.
    pub admission: Option<Admission>,
    /// Where processes that start or end here are announced.
    pub events: Option<mpsc::UnboundedSender<DestEvent>>,
}

/// A check of the layer above on every offer.
pub type Admission = Arc<dyn Fn(&Offer) -> Result<(), String> + Send + Sync>;

/// What the destination tells the layer above.
#[derive(Debug, Clone, PartialEq)]
pub enum DestEvent {
    /// A migrated process runs here now.
    Started {
        migration: String,
        from: String,
        pid: i32,
        /// The offer's tag.
        tag: Option<String>,
    },
    /// A process that migrated here ended (and was reaped), after using `cpu` here.
    Exited {
        pid: i32,
        status: host::ExitStatus,
        cpu: Option<Duration>,
    },
}

/// What a vessel thread holds.
enum Slot {
    Warm(Vessel),
    Building(Box<Builder>),
}

type VesselThread = Pinned<Slot>;

/// The destination side of a daemon.
pub struct Dest {
    cfg: DestConfig,
    attached: Mutex<HashMap<String, Receiver>>,
    arrived: Notify,
    warm: Mutex<Option<VesselThread>>,
    /// Processes that still depend on another host for pages, by pid.
    pagers: Mutex<HashMap<i32, Arc<Pager>>>,
    /// Process trees arriving, by their root's migration.
    trees: Mutex<HashMap<String, Arc<Assembly>>>,
}

/// What one incoming flow carries.
enum Part {
    /// A process on its own.
    Whole,
    /// A tree's root (its flow commits the tree).
    Root(Arc<Assembly>),
    /// Another process of a tree.
    Member(Arc<Assembly>),
}

impl Part {
    fn assembly(&self) -> Option<&Arc<Assembly>> {
        match self {
            Part::Whole => None,
            Part::Root(a) | Part::Member(a) => Some(a),
        }
    }
}

/// Where a flow's process is being built.
enum Shell {
    Vessel(VesselThread),
    Tree(Arc<Assembly>),
}

impl Dest {
    pub fn new(cfg: DestConfig) -> Arc<Dest> {
        Arc::new(Dest {
            cfg,
            attached: Mutex::new(HashMap::new()),
            arrived: Notify::new(),
            warm: Mutex::new(None),
            pagers: Mutex::new(HashMap::new()),
            trees: Mutex::new(HashMap::new()),
        })
    }

    /// The assembly of tree migration `id` (made by whichever of its flows comes first).
    async fn assembly(&self, id: &str) -> Arc<Assembly> {
        Arc::clone(
            self.trees
                .lock()
                .await
                .entry(id.to_string())
                .or_insert_with(|| Assembly::new(id)),
        )
    }

    /// If `pid` still depends on another host for pages, fetches them all now (so that it can
    /// move on or that host can go).
    pub async fn make_whole(&self, pid: i32) -> Result<(), String> {
        let pager = self.pagers.lock().await.get(&pid).cloned();
        match pager {
            Some(p) => {
                p.drain(Duration::from_secs(120)).await?;
                self.pagers.lock().await.remove(&pid);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Prepares a vessel for the next migration (fork, seize, restorer), off the critical
    /// path.
    pub async fn warm_up(self: &Arc<Dest>) {
        let mut warm = self.warm.lock().await;
        if warm.is_some() || self.cfg.page_store_only {
            return;
        }
        match Pinned::spawn("ferry-vessel", || Vessel::prepare().map(Slot::Warm)).await {
            Ok(Ok(v)) => *warm = Some(v),
            Ok(Err(e)) => warn!(error = %e, "preparing a warm vessel"),
            Err(e) => warn!(error = %e, "preparing a warm vessel"),
        }
    }

    /// Handles one authenticated connection from a peer.
    pub async fn handle(self: Arc<Dest>, conn: Connection) {
        let peer = conn.peer_node().to_string();
        match conn.role() {
            Role::Control => {
                let (tx, rx) = conn.into_split();
                if let Err(e) = self.control(peer.clone(), tx, rx).await {
                    warn!(%peer, error = %e, "incoming migration failed");
                }
            }
            Role::Pages => {
                let (_tx, mut rx) = conn.into_split();
                match tokio::time::timeout(self.cfg.timeout, rx.recv_msg::<ToDest>()).await {
                    Ok(Ok(ToDest::Attach { migration })) => {
                        self.attached.lock().await.insert(migration, rx);
                        self.arrived.notify_waiters();
                    }
                    other => warn!(%peer, ?other, "pages connection without a migration"),
                }
            }
            other => warn!(%peer, ?other, "unexpected connection role"),
        }
    }

    async fn take_pages(&self, id: &str) -> Option<Receiver> {
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            let notified = self.arrived.notified();
            if let Some(rx) = self.attached.lock().await.remove(id) {
                return Some(rx);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if tokio::time::timeout(left, notified).await.is_err() {
                return self.attached.lock().await.remove(id);
            }
        }
    }

    fn record_path(&self, id: &str) -> Option<PathBuf> {
        let ok = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| self.cfg.state_dir.join("migrations").join(id))
    }

    /// Writes (and syncs) what happened to migration `id`: `started PID` or `aborted`.
    fn record(&self, id: &str, what: &str) {
        let Some(path) = self.record_path(id) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            use std::io::Write;
            let mut f = std::fs::File::create(&path)?;
            f.write_all(what.as_bytes())?;
            f.sync_all()
        };
        if let Err(e) = write() {
            error!(migration = id, error = %e, "cannot record the outcome");
        }
    }

    fn outcome(&self, id: &str) -> protocol::Outcome {
        let text = self
            .record_path(id)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        match text.trim() {
            "committed" => protocol::Outcome::Pending,
            t => match t.strip_prefix("started ") {
                Some(pid) => protocol::Outcome::Started {
                    pid: pid.trim().parse().unwrap_or(0),
                },
                // Aborted, or never committed: a vessel that was not started died with its
                // daemon (PTRACE_O_EXITKILL), so it can never run here.
                None => protocol::Outcome::NotStarted,
            },
        }
    }

    /// Why this host refuses `offer`, if it does. `files`: check that the files the offer
    /// names exist here. (Freeze-free's offer is judged after the freeze, when the list may
    /// be stale — a temporary file deleted meanwhile travels in the image; the rebuild checks
    /// every file the frozen process holds anyway, before `Ready`.)
    fn judge(&self, offer: &Offer, files: bool) -> Result<(), String> {
        if let Some(admit) = &self.cfg.admission {
            admit(offer)?;
        }
        if self.cfg.page_store_only {
            return Err(format!(
                "{} is a page store and runs no processes",
                self.cfg.node
            ));
        }
        if offer.protocol != PROTOCOL {
            return Err(format!(
                "protocol {} offered, {} spoken here",
                offer.protocol, PROTOCOL
            ));
        }
        let host = ferry_checkpoint::platform::host_platform().map_err(|e| e.to_string())?;
        offer
            .platform
            .check_runs_on(&host)
            .map_err(|e| format!("another kernel or CPU: {e}"))?;
        if let Some(missing) = offer
            .files
            .iter()
            .filter(|_| files)
            .find(|f| !std::path::Path::new(f).exists())
        {
            return Err(format!("a needed file is missing here: {missing}"));
        }
        if let Some(limit) = self.cfg.memory_limit
            && offer.memory_bytes > limit
        {
            return Err(format!(
                "not enough memory: {} MiB needed, this host takes at most {} MiB",
                offer.memory_bytes >> 20,
                limit >> 20
            ));
        }
        if let Some(avail) = host::mem_available()
            && avail < offer.memory_bytes + self.cfg.reserve_bytes
        {
            return Err(format!(
                "not enough memory: {} MiB needed, {} MiB available",
                (offer.memory_bytes + self.cfg.reserve_bytes) >> 20,
                avail >> 20
            ));
        }
        Ok(())
    }

    async fn control(
        self: &Arc<Dest>,
        peer: String,
        mut tx: Sender,
        mut rx: Receiver,
    ) -> Result<(), String> {
        let first = tokio::time::timeout(self.cfg.timeout, rx.recv_msg::<ToDest>())
            .await
            .map_err(|_| "no request".to_string())?
            .map_err(|e| e.to_string())?;
        let (offer, state) = match first {
            ToDest::Query { migration } => {
                let _ = tx
                    .send_msg(&ToSource::Outcome(self.outcome(&migration)))
                    .await;
                return Ok(());
            }
            ToDest::Offer(offer) => {
                if let Err(reason) = self.judge(&offer, true) {
                    info!(%peer, migration = %offer.migration, %reason, "refusing");
                    let _ = tx.send_msg(&ToSource::Reject { reason }).await;
                    return Ok(());
                }
                tx.send_msg(&ToSource::Accept)
                    .await
                    .map_err(|e| e.to_string())?;
                (*offer, None)
            }
            ToDest::State(state) => {
                // Freeze-free: the offer comes with the state.
                let Some(offer) = state.offer.clone() else {
                    return Err("a state without an offer".into());
                };
                if let Err(reason) = self.judge(&offer, false) {
                    info!(%peer, migration = %offer.migration, %reason, "refusing after the fact");
                    if offer.processes > 1 {
                        self.assembly(&offer.migration).await.fail(&reason);
                        self.trees.lock().await.remove(&offer.migration);
                    }
                    let _ = tx.send_msg(&ToSource::Abort { reason }).await;
                    return Ok(());
                }
                (offer, Some(state))
            }
            ToDest::Member { tree, migration } => {
                let part = Part::Member(self.assembly(&tree).await);
                return self
                    .incoming(&peer, &migration, None, part, None, tx, rx)
                    .await;
            }
            other => return Err(format!("unexpected first message {other:?}")),
        };
        let id = offer.migration.clone();
        let part = if offer.processes > 1 {
            Part::Root(self.assembly(&id).await)
        } else {
            Part::Whole
        };
        let result = self
            .incoming(&peer, &id, Some(offer), part, state, tx, rx)
            .await;
        self.trees.lock().await.remove(&id);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn incoming(
        self: &Arc<Dest>,
        peer: &str,
        id: &str,
        offer: Option<Offer>,
        part: Part,
        state: Option<Box<State>>,
        mut tx: Sender,
        mut rx: Receiver,
    ) -> Result<(), String> {
        // Until the process runs here, any failure is reported to the source, which then
        // resumes it there.
        let lazy = match self
            .build_and_start(peer, id, offer, part, state, &mut tx, &mut rx)
            .await
        {
            Ok(lazy) => lazy,
            Err(e) => {
                let _ = tx.send_msg(&ToSource::Abort { reason: e.clone() }).await;
                return Err(e);
            }
        };
        let Some((pager, sink, reader, running)) = lazy else {
            return Ok(());
        };
        sink.hand_over(&pager);
        let pid = pager.pid.as_raw();
        self.pagers.lock().await.insert(pid, Arc::clone(&pager));
        let figures = pager.run(tx, rx, running).await;
        if pager.is_finished.load(Ordering::Acquire) {
            self.pagers.lock().await.remove(&pid);
        }
        reader.abort();
        info!(
            migration = id,
            ?figures,
            "no residual dependency on the source any more"
        );
        Ok(())
    }

    /// Everything up to `Started`. Returns what the lazy phase needs, for lazy algorithms.
    #[allow(clippy::too_many_arguments)]
    async fn build_and_start(
        self: &Arc<Dest>,
        peer: &str,
        id: &str,
        offer: Option<Offer>,
        part: Part,
        state: Option<Box<State>>,
        tx: &mut Sender,
        rx: &mut Receiver,
    ) -> Result<Option<LazyPhase>, String> {
        let pages_rx = self
            .take_pages(id)
            .await
            .ok_or_else(|| "the pages connection never came".to_string())?;
        let sink = Arc::new(PageSink::new());
        let reader = tokio::spawn(read_pages(pages_rx, Arc::clone(&sink)));

        // Pre-copy rounds stream in (into staging) while we wait for the state. (A tree's
        // process that ended before the freeze never gets one: its flow just ends.)
        let state = match state {
            Some(s) => s,
            None => match rx.recv_msg::<ToDest>().await {
                Ok(ToDest::State(s)) => s,
                // Before the freeze the source opens a flow for every process of a tree; one
                // that ended by then is dropped without a state: no failure.
                Err(e) if matches!(part, Part::Member(_)) => {
                    debug!(migration = id, error = %e, "a tree's process dropped before its state");
                    reader.abort();
                    return Ok(None);
                }
                Err(e) => return Err(e.to_string()),
                Ok(ToDest::Abort { reason }) => {
                    return Err(format!("the source gave up: {reason}"));
                }
                Ok(other) => return Err(format!("expected the state, got {other:?}")),
            },
        };
        let built = self
            .build_from_state(peer, id, offer.as_ref(), &part, state, sink, tx, rx)
            .await;
        if let (Err(e), Some(tree)) = (&built, part.assembly()) {
            // The tree's other processes stop waiting for this one.
            tree.fail(e);
        }
        if built.is_err() || matches!(built, Ok(None)) {
            reader.abort();
        }
        built.map(|lazy| lazy.map(|(pager, sink, running)| (pager, sink, reader, running)))
    }

    /// [`Dest::build_and_start`] once the state is in.
    #[allow(clippy::too_many_arguments)]
    async fn build_from_state(
        self: &Arc<Dest>,
        peer: &str,
        id: &str,
        offer: Option<&Offer>,
        part: &Part,
        state: Box<State>,
        sink: Arc<PageSink>,
        tx: &mut Sender,
        rx: &mut Receiver,
    ) -> Result<Option<(Arc<Pager>, Arc<PageSink>, Instant)>, String> {
        let received = Instant::now();
        let mut tl = Timeline::new();
        let algorithm = state.algorithm;
        let image = Arc::new(state.image.clone());
        // The store the source flushes to, if it does: a store this host cannot open is a
        // reason to refuse now, while the source can still resume its process.
        let store = match &state.store {
            Some(r) if algorithm.uses_store() => Some(
                self.cfg
                    .store_access
                    .open(r)
                    .map_err(|e| format!("cannot use the page store: {e}"))?,
            ),
            _ => None,
        };
        let wait = self.cfg.timeout.max(Duration::from_secs(600));
        info!(migration = id, %peer, %algorithm, pid = image.control.pid, "rebuilding");

        let (shell, pid, lazy_ranges) = match part {
            Part::Whole => {
                // Checked as an image read from disk is (a tree's, once all are in).
                ferry_image::validate(&image).map_err(|e| e.to_string())?;
                let vessel = self.vessel_for(&image).await?;
                let img = Arc::clone(&image);
                let built = vessel
                    .call(
                        move |slot| -> Result<(Pid, Vec<(u64, u64)>), RestoreError> {
                            let Some(Slot::Warm(v)) = slot.take() else {
                                return Err(RestoreError::PermissionDenied("no vessel".into()));
                            };
                            let b = Builder::new(v, img)?;
                            let out = (b.pid(), b.lazy_ranges());
                            *slot = Some(Slot::Building(Box::new(b)));
                            Ok(out)
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let (pid, lazy) = built.map_err(|e| e.to_string())?;
                (Shell::Vessel(vessel), pid, lazy)
            }
            Part::Root(tree) | Part::Member(tree) => {
                // Built with the tree's other processes, once all are here.
                let (pid, lazy) =
                    watching(rx, tree.build(Arc::clone(&image), state.tree.clone(), wait)).await?;
                (Shell::Tree(Arc::clone(tree)), pid, lazy)
            }
        };
        tl.mark("vessel: mappings");
        let lazy_ranges_kept = lazy_ranges.clone();

        // Staged pages (pre-copy), then what follows the state, straight into the vessel. The
        // state may overtake the last round on the other connection: wait for its end.
        sink.wait_staged(wait)
            .await
            .map_err(|e| format!("pages: {e}"))?;
        {
            let staging = sink.staging.lock().await;
            let (segments, _missing) = staging.for_runs(&image.memory.pages.runs);
            ferry_checkpoint::restore::write_segments(pid, &segments).map_err(|e| e.to_string())?;
        }
        sink.target.send_replace(Target::Vessel(pid));
        tl.mark("staged pages");
        sink.wait_eager_done(wait)
            .await
            .map_err(|e| format!("pages: {e}"))?;
        if let Some(e) = sink.failure.lock().await.take() {
            return Err(e);
        }

        // Lazy algorithms: the rest of the memory comes through userfaultfd.
        let map = Arc::new(PageMap::new(&image.memory.pages.runs));
        tl.mark("first pages");
        let uffd = if algorithm.lazy() {
            let make = move |b: &mut Builder| lazy_uffd(b, &lazy_ranges);
            let uffd = match &shell {
                Shell::Vessel(vessel) => vessel
                    .call(move |slot| match slot.as_mut() {
                        Some(Slot::Building(b)) => make(b),
                        _ => Err("no vessel".into()),
                    })
                    .await
                    .map_err(|e| e.to_string())??,
                Shell::Tree(tree) => tree.make_uffd(image.control.pid, make).await?,
            };
            Some(Arc::new(uffd))
        } else {
            None
        };

        // Complete, still stopped (a tree: every process of it).
        match &shell {
            Shell::Vessel(vessel) => vessel
                .call(|slot| match slot.as_mut() {
                    Some(Slot::Building(b)) => b.finish().map_err(|e| e.to_string()),
                    _ => Err("no vessel".into()),
                })
                .await
                .map_err(|e| e.to_string())??,
            Shell::Tree(tree) => watching(rx, tree.prepared(image.control.pid, wait)).await?,
        }
        tl.mark("uffd + finish");
        let insertion_ms = ms(received.elapsed());
        tx.send_msg(&ToSource::Ready { insertion_ms })
            .await
            .map_err(|e| e.to_string())?;
        let started = match (part, &shell) {
            // Another process of a tree: it starts with the tree, on the root's commit.
            (Part::Member(tree), _) => watching(rx, tree.started(image.control.pid, wait)).await?,
            (_, shell) => {
                match rx.recv_msg::<ToDest>().await {
                    Ok(ToDest::Commit) => {}
                    Ok(ToDest::Abort { reason }) => {
                        self.record(id, "aborted");
                        return Err(format!("the source gave up: {reason}"));
                    }
                    other => {
                        // Lost before the commit: the process will not run here.
                        self.record(id, "aborted");
                        return Err(format!("no commit: {other:?}"));
                    }
                }
                // Recorded before the start: a source that lost the link and asks meanwhile
                // hears "pending", never "not started" about a process that may be running.
                tl.mark("ready → commit");
                self.record(id, "committed");
                let started = match shell {
                    Shell::Vessel(vessel) => vessel
                        .call(|slot| match slot.take() {
                            Some(Slot::Building(b)) => (*b).start().map_err(|e| e.to_string()),
                            _ => Err("no vessel".into()),
                        })
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map(|(pid, _report)| pid)),
                    Shell::Tree(tree) => tree.start().await,
                };
                match started {
                    Ok(pid) => pid,
                    Err(e) => {
                        // The vessel is dead (never detached): the source may resume its copy.
                        self.record(id, "aborted");
                        return Err(format!("starting the process failed: {e}"));
                    }
                }
            }
        };
        drop(shell);
        if !matches!(part, Part::Member(_)) {
            self.record(id, &format!("started {}", started.as_raw()));
        }
        let pid = started;
        tl.mark("start");
        debug!(migration = id, timeline = %tl, "destination timeline");
        let running = Instant::now();
        // It runs: from here nothing is reported as an abort. A source that misses this asks
        // (Query) and reads the commit record.
        if let Err(e) = tx.send_msg(&ToSource::Started { pid: pid.as_raw() }).await {
            warn!(migration = id, pid = pid.as_raw(), error = %e, "started, but lost the source");
        }
        info!(migration = id, pid = pid.as_raw(), insertion_ms, "running");
        // The daemon's child (a tree's root): announced, and reaped when it ends. The tree's
        // other processes are their parents' children.
        if let Some(offer) = offer {
            if let Some(events) = &self.cfg.events {
                let _ = events.send(DestEvent::Started {
                    migration: id.to_string(),
                    from: offer.from.clone(),
                    pid: pid.as_raw(),
                    tag: offer.tag.clone(),
                });
            }
            reap_when_done(pid, self.cfg.events.clone());
        }

        let Some(uffd) = uffd else {
            return Ok(None);
        };
        // If this daemon dies, the kernel would fill the missing pages with zeros and the
        // process would run on with wrong memory: the guard ends it instead.
        let guard = ferry_sys::uffd::PagerGuard::new(&uffd)
            .map_err(|e| format!("guarding the pager: {e}"))?;
        let pager = Pager::new(
            id.to_string(),
            algorithm,
            Registered {
                pid,
                uffd: Arc::clone(&uffd),
                ranges: lazy_ranges_kept,
                guard,
            },
            map,
            store,
        )?;
        Ok(Some((Arc::new(pager), sink, running)))
    }

    /// The vessel for a process on its own: the init of a new PID namespace for a process
    /// that had one of its own (its ids come back exactly); else a warm one if there is,
    /// else a new one.
    async fn vessel_for(self: &Arc<Dest>, image: &ProcessImage) -> Result<VesselThread, String> {
        Ok(if image.pid_namespace.is_some() {
            let ipc = image.ipc_namespace.clone();
            Pinned::spawn("ferry-vessel", move || {
                Vessel::prepare_as_init(ipc.as_ref()).map(Slot::Warm)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
        } else {
            let vessel = match self.warm.lock().await.take() {
                Some(v) => v,
                None => Pinned::spawn("ferry-vessel", || Vessel::prepare().map(Slot::Warm))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?,
            };
            let again = Arc::clone(self);
            tokio::spawn(async move { again.warm_up().await });
            vessel
        })
    }
}

/// A userfaultfd made inside a process being built, with its lazy ranges registered.
fn lazy_uffd(b: &mut Builder, lazy_ranges: &[(u64, u64)]) -> Result<Uffd, String> {
    // A full uffd (not user-mode-only): the process's own system calls must wait for missing
    // pages too, not fail with EFAULT. The vessel is still privileged here.
    let mut uffd = b
        .with_injector("creating a userfaultfd", |inj| {
            Uffd::create_in_tracee(inj, 0)
        })
        .map_err(|e| e.to_string())?;
    // The process's unmap/discard/move must be seen before more pages land.
    uffd.api(
        ferry_sys::abi::UFFD_FEATURE_EVENT_UNMAP
            | ferry_sys::abi::UFFD_FEATURE_EVENT_REMOVE
            | ferry_sys::abi::UFFD_FEATURE_EVENT_REMAP,
    )
    .map_err(|e| e.to_string())?;
    for &(s, e) in lazy_ranges {
        uffd.register(s, e - s, RegisterMode::MISSING)
            .map_err(|e| e.to_string())?;
    }
    Ok(uffd)
}

/// Runs `fut` (a wait for the tree's other processes) while watching the source's control
/// connection, on which nothing is expected meanwhile: a message (an abort) or a broken link
/// ends the wait.
async fn watching<T>(
    rx: &mut Receiver,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::select! {
        r = fut => r,
        m = rx.recv_msg::<ToDest>() => Err(match m {
            Ok(ToDest::Abort { reason }) => format!("the source gave up: {reason}"),
            Ok(other) => format!("unexpected {other:?}"),
            Err(e) => format!("lost the source: {e}"),
        }),
    }
}

/// What the lazy phase takes over: the pager, the page sink and its reader, when it began.
type LazyPhase = (
    Arc<Pager>,
    Arc<PageSink>,
    tokio::task::JoinHandle<()>,
    Instant,
);

/// Reaps a restored process (a child of the daemon) when it exits.
fn reap_when_done(pid: Pid, events: Option<mpsc::UnboundedSender<DestEvent>>) {
    tokio::spawn(async move {
        ferry_sys::aio::exited(pid).await;
        // A zombie still shows its CPU time; read it before reaping.
        let cpu = ferry_sys::load::cpu_usage(pid).ok().map(|(c, _)| c);
        match host::try_reap(pid) {
            Ok(Some(status)) => {
                info!(pid = pid.as_raw(), ?status, "migrated process ended");
                if let Some(events) = events {
                    let _ = events.send(DestEvent::Exited {
                        pid: pid.as_raw(),
                        status,
                        cpu,
                    });
                }
            }
            other => debug!(pid = pid.as_raw(), ?other, "reaping"),
        }
    });
}

/// Where frames of the pages connection go.
enum Target {
    Staging,
    Vessel(Pid),
    Uffd(Arc<Pager>),
}

struct PageSink {
    staging: Mutex<Staging>,
    target: watch::Sender<Target>,
    eager_done: Notify,
    /// Every pre-copy round has been read (the `Final` marker came).
    staged: AtomicBool,
    done: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Pages written straight into the vessel (with the state, or streamed before the pager
    /// took over): the pager counts them as present.
    in_vessel: std::sync::Mutex<InVessel>,
}

#[derive(Default)]
struct InVessel {
    /// (image address, bytes) written before the pager existed.
    written: Vec<(u64, u64)>,
    /// Once set, later writes are marked on it directly.
    pager: Option<Arc<Pager>>,
}

impl PageSink {
    fn new() -> PageSink {
        PageSink {
            staging: Mutex::new(Staging::new()),
            target: watch::Sender::new(Target::Staging),
            eager_done: Notify::new(),
            staged: AtomicBool::new(false),
            done: AtomicBool::new(false),
            failure: Mutex::new(None),
            in_vessel: std::sync::Mutex::new(InVessel::default()),
        }
    }

    /// Records pages written into the vessel (the pager, once it exists, counts them).
    fn wrote_to_vessel(&self, addr: u64, len: u64) {
        let Ok(mut v) = self.in_vessel.lock() else {
            return;
        };
        match &v.pager {
            Some(pager) => pager.mark_image_range(addr, len),
            None => v.written.push((addr, len)),
        }
    }

    /// The pager takes over the pages connection; it counts what was written before it.
    fn hand_over(&self, pager: &Arc<Pager>) {
        if let Ok(mut v) = self.in_vessel.lock() {
            for (addr, len) in std::mem::take(&mut v.written) {
                pager.mark_image_range(addr, len);
            }
            v.pager = Some(Arc::clone(pager));
        }
        self.target.send_replace(Target::Uffd(Arc::clone(pager)));
    }

    async fn wait_eager_done(&self, timeout: Duration) -> Result<(), String> {
        self.wait_for(&self.done, timeout).await
    }

    async fn wait_staged(&self, timeout: Duration) -> Result<(), String> {
        self.wait_for(&self.staged, timeout).await
    }

    async fn wait_for(&self, flag: &AtomicBool, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.eager_done.notified();
            if flag.load(Ordering::Acquire) || self.done.load(Ordering::Acquire) {
                return Ok(());
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or("the pages did not arrive in time")?;
            let _ = tokio::time::timeout(left, n).await;
        }
    }
}

/// Reads the pages connection until it closes, sending each frame where the target says.
async fn read_pages(mut rx: Receiver, sink: Arc<PageSink>) {
    let mut buf = vec![0u8; ferry_wire::MAX_PAGES_PAYLOAD];
    let mut target_rx = sink.target.subscribe();
    let mut staging_round = false;
    // After `PagesEnd` the process may be running (freeze-free stream): its memory must then
    // only be filled with UFFDIO_COPY, which never overwrites a page already there.
    // process_vm_writev would overwrite pages the process got by fault and has written since
    // (it pins a whole batch, faulting each missing page in, and only then copies the stale
    // image bytes over all of them).
    let mut eager_over = false;
    loop {
        let frame = match rx.recv::<ToDest>(&mut buf).await {
            Ok(f) => f,
            Err(e) => {
                if !sink.done.load(Ordering::Acquire) && !e.is_closed() {
                    *sink.failure.lock().await = Some(format!("pages connection: {e}"));
                    sink.done.store(true, Ordering::Release);
                    sink.eager_done.notify_waiters();
                }
                return;
            }
        };
        match frame {
            Received::Msg(ToDest::Round { .. }) => staging_round = true,
            Received::Msg(ToDest::Final) => {
                staging_round = false;
                sink.staged.store(true, Ordering::Release);
                sink.eager_done.notify_waiters();
            }
            Received::Msg(ToDest::PagesEnd { .. }) => {
                staging_round = false;
                eager_over = true;
                sink.done.store(true, Ordering::Release);
                sink.eager_done.notify_waiters();
            }
            Received::Msg(ToDest::StreamComplete { .. }) => {}
            Received::Msg(other) => debug!(?other, "ignored on the pages connection"),
            Received::Pages(h) => {
                let data = &buf[..h.len as usize];
                if staging_round {
                    sink.staging.lock().await.put(h.addr, data);
                    continue;
                }
                // Pages after the state: wait until the vessel exists; pages after `PagesEnd`
                // (the stream): until the pager took over.
                let target = loop {
                    let t = match &*target_rx.borrow_and_update() {
                        Target::Staging => None,
                        Target::Vessel(_) if eager_over => None,
                        Target::Vessel(pid) => Some(Target::Vessel(*pid)),
                        Target::Uffd(p) => Some(Target::Uffd(Arc::clone(p))),
                    };
                    if let Some(t) = t {
                        break t;
                    }
                    if target_rx.changed().await.is_err() {
                        return;
                    }
                };
                match target {
                    Target::Vessel(pid) => {
                        match ferry_checkpoint::restore::write_segments(pid, &[(h.addr, data)]) {
                            Ok(()) => sink.wrote_to_vessel(h.addr, u64::from(h.len)),
                            Err(e) => *sink.failure.lock().await = Some(e.to_string()),
                        }
                    }
                    Target::Uffd(pager) => pager.place_streamed(h.addr, data),
                    Target::Staging => {}
                }
            }
        }
    }
}

/// Why a pager stops depending on the source once the flush completed.
const STORE_HOLDS_ALL: &str = "the page store holds every page";

/// Fault requests sent to the source: id → (image address, pages, when).
type Pending = Arc<std::sync::Mutex<HashMap<u32, (u64, u64, Instant)>>>;

/// Fills a running process's missing memory: faults, the stream, the page store.
pub struct Pager {
    id: String,
    algorithm: Algorithm,
    pid: Pid,
    uffd: Arc<Uffd>,
    map: Arc<PageMap>,
    /// One bit per page of the stream: present in the process.
    present: std::sync::Mutex<Vec<u64>>,
    present_count: AtomicU64,
    total_pages: u64,
    store: Option<PageStore>,
    reader: tokio::sync::Mutex<Option<PageReader>>,
    /// Stream offsets below this are durable in the store.
    flushed: AtomicU64,
    flush_complete: AtomicBool,
    uses_store: bool,
    /// Ends the process if this daemon dies before every page arrived.
    guard: std::sync::Mutex<Option<ferry_sys::uffd::PagerGuard>>,
    /// What the process did to its address space; held while pages are placed.
    changes: std::sync::Mutex<Changes>,
    /// The ranges registered with the uffd (unregistered once every page is in).
    ranges: Vec<(u64, u64)>,
    /// Fetch every missing page now (the process is about to move on).
    draining: AtomicBool,
    /// Every page is in (or the process is gone): no dependency left.
    finished: Notify,
    is_finished: AtomicBool,
    /// Pages (image address, bytes) the kernel would not place while the address space was
    /// changing (`EAGAIN`: an unmap/remove/remap event waits to be read). Placed again once
    /// the events are read ([`Pager::place_deferred`]); a thread may be waiting for them.
    deferred: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
    /// Zero pages (current addresses) refused likewise.
    deferred_zero: std::sync::Mutex<Vec<u64>>,
}

/// A process whose memory is registered with a userfaultfd, ready for a pager.
struct Registered {
    pid: Pid,
    uffd: Arc<Uffd>,
    ranges: Vec<(u64, u64)>,
    guard: ferry_sys::uffd::PagerGuard,
}

impl Pager {
    fn new(
        id: String,
        algorithm: Algorithm,
        registered: Registered,
        map: Arc<PageMap>,
        store: Option<PageStore>,
    ) -> Result<Pager, String> {
        let Registered {
            pid,
            uffd,
            ranges,
            guard,
        } = registered;
        let uses_store = store.is_some();
        let total_pages = map.total_bytes() / PAGE_SIZE;
        Ok(Pager {
            id,
            algorithm,
            pid,
            uffd,
            present: std::sync::Mutex::new(vec![0u64; total_pages.div_ceil(64) as usize]),
            present_count: AtomicU64::new(0),
            total_pages,
            map,
            store,
            reader: tokio::sync::Mutex::new(None),
            flushed: AtomicU64::new(0),
            flush_complete: AtomicBool::new(false),
            uses_store,
            guard: std::sync::Mutex::new(Some(guard)),
            changes: std::sync::Mutex::new(Changes::default()),
            ranges,
            draining: AtomicBool::new(false),
            finished: Notify::new(),
            is_finished: AtomicBool::new(false),
            deferred: std::sync::Mutex::new(Vec::new()),
            deferred_zero: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn mark(&self, offset: u64, pages: u64) {
        let Ok(mut bits) = self.present.lock() else {
            return;
        };
        for i in 0..pages {
            let p = offset / PAGE_SIZE + i;
            let (w, b) = ((p / 64) as usize, p % 64);
            if let Some(word) = bits.get_mut(w)
                && *word & (1 << b) == 0
            {
                *word |= 1 << b;
                self.present_count.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    fn is_present(&self, offset: u64) -> bool {
        let p = offset / PAGE_SIZE;
        self.present
            .lock()
            .map(|bits| {
                bits.get((p / 64) as usize)
                    .is_some_and(|w| w & (1 << (p % 64)) != 0)
            })
            .unwrap_or(false)
    }

    fn complete(&self) -> bool {
        self.present_count.load(Ordering::Acquire) >= self.total_pages
    }

    /// No dependency left: every page is in (or the process is gone). The ranges are
    /// unregistered (so that the process can move on), the guard released.
    fn finish(&self) {
        if self.is_finished.swap(true, Ordering::AcqRel) {
            return;
        }
        if ferry_sys::proc::exists(self.pid) {
            for &(s, e) in &self.ranges {
                if let Err(e) = self.uffd.unregister(s, e - s) {
                    debug!(migration = %self.id, error = %e, "unregistering");
                }
            }
        }
        self.release_guard();
        self.finished.notify_waiters();
        // Nothing will read this migration's pages from the store any more. (Before the flush
        // completed, the source removes them once it is done writing.)
        if let Some(store) = self.store.clone()
            && self.flush_complete.load(Ordering::Acquire)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let id = self.id.clone();
            rt.spawn(async move {
                if let Err(e) = store.remove(&id).await {
                    warn!(migration = %id, error = %e, "removing its pages from the store");
                }
            });
        }
    }

    /// Fetches every missing page now and waits until there is none (or `timeout`).
    pub async fn drain(&self, timeout: Duration) -> Result<(), String> {
        self.draining.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.finished.notified();
            if self.is_finished.load(Ordering::Acquire) {
                return Ok(());
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or("its missing pages did not arrive in time")?;
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), n).await;
        }
    }

    /// Up to `max` missing stretches of pages, as (image address, pages).
    fn missing(&self, max: usize, per: u64) -> Vec<(u64, u64)> {
        let Ok(bits) = self.present.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut p = 0u64;
        while p < self.total_pages && out.len() < max {
            let present = bits
                .get((p / 64) as usize)
                .is_some_and(|w| w & (1 << (p % 64)) != 0);
            if present {
                p += 1;
                continue;
            }
            if let Some(ia) = self.map.addr_at(p * PAGE_SIZE)
                && let Some((_, n)) = self.map.stretch(ia, per)
            {
                out.push((ia, n));
                p += n;
            } else {
                p += 1;
            }
        }
        out
    }

    /// Every page is in: nothing can fault any more, the guard can go.
    fn release_guard(&self) {
        if let Ok(mut g) = self.guard.lock()
            && let Some(g) = g.take()
            && let Err(e) = g.release()
        {
            warn!(migration = %self.id, error = %e, "releasing the pager guard");
        }
    }

    /// Places pages of the bulk stream (an already present page is left alone).
    fn place_streamed(&self, addr: u64, data: &[u8]) {
        self.place(addr, data);
    }

    /// Places image pages (`addr` is their image address) where they live now; pages whose
    /// image content no longer applies are skipped and count as done.
    fn place(&self, addr: u64, data: &[u8]) {
        let Ok(changes) = self.changes.lock() else {
            return;
        };
        let page = PAGE_SIZE as usize;
        let mut i = 0usize;
        while i < data.len() {
            let ia = addr + i as u64;
            let Some(cur) = changes.current(ia) else {
                self.mark_image(ia, 1);
                i += page;
                continue;
            };
            // A stretch that stays contiguous where it lives now.
            let mut n = 1usize;
            while i + n * page < data.len()
                && changes.current(ia + (n * page) as u64) == Some(cur + (n * page) as u64)
            {
                n += 1;
            }
            self.copy_stretch(ia, cur, &data[i..i + n * page]);
            i += n * page;
        }
    }

    /// Copies one stretch to `cur`; if it crosses mappings (ENOENT), page by page. What the
    /// kernel refuses while the address space changes is deferred, never dropped: a thread
    /// may be waiting for it.
    fn copy_stretch(&self, ia: u64, cur: u64, data: &[u8]) {
        match self.uffd.copy(cur, data, true) {
            Ok(out) if out.is_complete() => self.mark_image(ia, data.len() as u64 / PAGE_SIZE),
            Ok(out) => {
                let done = (data.len() as u64 - out.retry) / PAGE_SIZE;
                self.mark_image(ia, done);
                debug!(
                    addr = cur,
                    ?out,
                    "partly placed (address space changing): deferred"
                );
                self.defer(ia + done * PAGE_SIZE, &data[(done * PAGE_SIZE) as usize..]);
            }
            Err(_) if data.len() > PAGE_SIZE as usize => {
                for (k, p) in data.chunks(PAGE_SIZE as usize).enumerate() {
                    let off = k as u64 * PAGE_SIZE;
                    match self.uffd.copy(cur + off, p, true) {
                        Ok(out) if out.is_complete() => self.mark_image(ia + off, 1),
                        Ok(_) => self.defer(ia + off, p),
                        // Not registered there any more (a new mapping): nothing to fill.
                        Err(e) if e.errno() == Some(ferry_sys::Errno::ENOENT) => {
                            self.mark_image(ia + off, 1)
                        }
                        Err(e) => debug!(addr = cur + off, error = %e, "page not placed"),
                    }
                }
            }
            Err(e) if e.errno() == Some(ferry_sys::Errno::ENOENT) => self.mark_image(ia, 1),
            Err(e) => debug!(addr = cur, error = %e, "not placed"),
        }
    }

    fn defer(&self, ia: u64, data: &[u8]) {
        if let Ok(mut d) = self.deferred.lock() {
            d.push((ia, data.to_vec()));
        }
    }

    /// Maps a zero page at `addr` for a thread that faulted on a page the image does not
    /// hold; deferred when the address space is changing (the thread waits for it).
    fn zero_fill(&self, addr: u64) {
        match self.uffd.zeropage(addr, PAGE_SIZE, true) {
            // Present already (a racing fault or copy): make sure nobody waits for it.
            Ok(out) if out.is_complete() && out.already_present > 0 => {
                let _ = self.uffd.wake(addr, PAGE_SIZE);
            }
            Ok(out) if out.is_complete() => {}
            Ok(_) => {
                debug!(addr, "zero page refused (address space changing): deferred");
                if let Ok(mut z) = self.deferred_zero.lock() {
                    z.push(addr);
                }
            }
            Err(e) => debug!(addr, error = %e, "zero page not placed"),
        }
    }

    /// Places again what the kernel refused while the address space changed. Called after
    /// the uffd's events were read (which ends the change), and now and then.
    fn place_deferred(&self) {
        let zeros = match self.deferred_zero.lock() {
            Ok(mut z) if !z.is_empty() => std::mem::take(&mut *z),
            _ => Vec::new(),
        };
        for addr in zeros {
            self.zero_fill(addr);
        }
        let list = match self.deferred.lock() {
            Ok(mut d) if !d.is_empty() => std::mem::take(&mut *d),
            _ => return,
        };
        for (ia, data) in list {
            self.place(ia, &data);
        }
    }

    /// Marks the pages of image range [ia, ia + len) present.
    fn mark_image_range(&self, ia: u64, len: u64) {
        for i in 0..len.div_ceil(PAGE_SIZE) {
            self.mark_image(ia + i * PAGE_SIZE, 1);
        }
    }

    fn mark_image(&self, ia: u64, pages: u64) {
        if let Some(off) = self.map.offset_of(ia) {
            self.mark(off, pages);
        }
    }

    /// Records an address-space change reported by userfaultfd.
    fn apply(&self, ev: &ferry_sys::uffd::Event) {
        use ferry_sys::uffd::Event;
        let Ok(mut changes) = self.changes.lock() else {
            return;
        };
        match *ev {
            Event::Unmap { start, end } | Event::Remove { start, end } => {
                // The image pages that lived there are not needed any more.
                let mut a = start & !(PAGE_SIZE - 1);
                while a < end {
                    if let Some(ia) = changes.image(a)
                        && let Some(off) = self.map.offset_of(ia)
                    {
                        self.mark(off, 1);
                    }
                    a += PAGE_SIZE;
                }
                changes.forget(start, end);
            }
            Event::Remap { from, to, len } => changes.moved(from, to, len),
            _ => {}
        }
    }

    /// The image address whose page belongs at `addr` now.
    fn image_at(&self, addr: u64) -> Option<u64> {
        self.changes.lock().ok()?.image(addr)
    }

    /// Reads pages from the store, if they are there.
    async fn read_store(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        let durable = self.flush_complete.load(Ordering::Acquire)
            || offset + len <= self.flushed.load(Ordering::Acquire);
        if !durable {
            return None;
        }
        let mut reader = self.reader.lock().await;
        if reader.is_none() {
            match self.store.as_ref()?.reader(&self.id).await {
                Ok(r) => *reader = Some(r),
                Err(e) => {
                    warn!(migration = %self.id, error = %e, "opening the page store");
                    return None;
                }
            }
        }
        let mut buf = vec![0u8; len as usize];
        match reader.as_mut()?.read_at(offset, &mut buf).await {
            Ok(()) => Some(buf),
            Err(e) => {
                warn!(migration = %self.id, error = %e, "reading the page store");
                // A broken connection is opened again next time.
                *reader = None;
                None
            }
        }
    }

    /// Serves faults until nothing is needed from the source; returns the figures.
    async fn run(
        self: &Arc<Pager>,
        mut tx: Sender,
        mut rx: Receiver,
        running: Instant,
    ) -> DestFigures {
        const FETCH_PAGES: u64 = 16;
        let pending: Pending = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let samples: Arc<std::sync::Mutex<Vec<f64>>> = Arc::new(std::sync::Mutex::new(Vec::new()));
        let store_faults = Arc::new(AtomicU64::new(0));
        let source_gone = Arc::new(AtomicBool::new(false));
        let (req_tx, mut req_rx) = tokio::sync::mpsc::unbounded_channel::<ToSource>();

        // Replies, flush news and the end of the source, from the control connection.
        let replies = {
            let me = Arc::clone(self);
            let pending = Arc::clone(&pending);
            let samples = Arc::clone(&samples);
            let source_gone = Arc::clone(&source_gone);
            tokio::spawn(async move {
                let mut buf = vec![0u8; ferry_wire::MAX_PAGES_PAYLOAD];
                loop {
                    match rx.recv::<ToDest>(&mut buf).await {
                        Ok(Received::Pages(h)) => {
                            let data = &buf[..h.len as usize];
                            me.place(h.addr, data);
                            if let Some(id) = protocol::fault_id(h.tag)
                                && let Ok(mut p) = pending.lock()
                                && let Some((_, _, t0)) = p.remove(&id)
                                && let Ok(mut s) = samples.lock()
                            {
                                s.push(t0.elapsed().as_secs_f64() * 1e3);
                            }
                        }
                        Ok(Received::Msg(ToDest::FlushProgress { upto })) => {
                            me.flushed.store(upto, Ordering::Release);
                        }
                        Ok(Received::Msg(ToDest::FlushComplete { .. })) => {
                            me.flush_complete.store(true, Ordering::Release);
                        }
                        Ok(Received::Msg(other)) => debug!(?other, "ignored"),
                        Err(_) => {
                            source_gone.store(true, Ordering::Release);
                            return;
                        }
                    }
                }
            })
        };

        let afd = match ferry_sys::aio::watch_uffd(Arc::clone(&self.uffd)) {
            Ok(a) => a,
            Err(e) => {
                error!(migration = %self.id, error = %e, "cannot poll the userfaultfd");
                return DestFigures::default();
            }
        };
        let exited = ferry_sys::aio::exited(self.pid);
        tokio::pin!(exited);
        let mut events = Vec::new();
        let mut next_id: u32 = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let ended_by = loop {
            if self.complete() {
                break "every page arrived";
            }
            if self.uses_store
                && self.flush_complete.load(Ordering::Acquire)
                && self.algorithm != Algorithm::DemandPaging
            {
                break STORE_HOLDS_ALL;
            }
            if source_gone.load(Ordering::Acquire) && !self.flush_complete.load(Ordering::Acquire) {
                error!(
                    migration = %self.id,
                    pid = self.pid.as_raw(),
                    "the process's memory lives on a host that is no longer reachable: ending it"
                );
                let _ = host::send_signal(self.pid, libc_sigkill());
                break "the source host became unreachable (process ended)";
            }
            tokio::select! {
                _ = &mut exited => break "the process exited",
                _ = tick.tick() => {
                    self.place_deferred();
                    if self.draining.load(Ordering::Acquire) {
                        let in_flight = pending.lock().map(|p| p.len()).unwrap_or(0);
                        for (ia, n) in self.missing(64usize.saturating_sub(in_flight), 64) {
                            let asked = pending
                                .lock()
                                .map(|p| p.values().any(|&(a, _, _)| a == ia))
                                .unwrap_or(true);
                            if asked {
                                continue;
                            }
                            if let Some(off) = self.map.offset_of(ia)
                                && let Some(data) = self.read_store(off, n * PAGE_SIZE).await
                            {
                                self.place(ia, &data);
                                continue;
                            }
                            next_id = (next_id + 1) & 0x00ff_ffff;
                            if let Ok(mut p) = pending.lock() {
                                p.insert(next_id, (ia, n, Instant::now()));
                            }
                            let _ = req_tx.send(ToSource::Fault { id: next_id, addr: ia, pages: n as u32 });
                        }
                    }
                    continue;
                }
                Some(req) = req_rx.recv() => {
                    if tx.send_msg(&req).await.is_err() {
                        source_gone.store(true, Ordering::Release);
                    }
                    continue;
                }
                guard = afd.readable() => {
                    let Ok(mut guard) = guard else { break "userfaultfd failed" };
                    events.clear();
                    match self.uffd.read_events(&mut events) {
                        Ok(_) => {}
                        Err(e) => {
                            warn!(error = %e, "reading userfaultfd events");
                        }
                    }
                    guard.clear_ready();
                    for ev in events.drain(..) {
                        let ferry_sys::uffd::Event::PageFault { addr, .. } = ev else {
                            self.apply(&ev);
                            continue;
                        };
                        let here = addr & !(PAGE_SIZE - 1);
                        let stretch = self
                            .image_at(here)
                            .and_then(|ia| self.map.stretch(ia, FETCH_PAGES).map(|s| (ia, s)));
                        let Some((page, (off, n))) = stretch else {
                            // Never touched at the source, or fresh since: a zero page.
                            self.zero_fill(here);
                            continue;
                        };
                        if self.is_present(off) {
                            let _ = self.uffd.wake(here, PAGE_SIZE);
                            continue;
                        }
                        if let Some(data) = self.read_store(off, n * PAGE_SIZE).await {
                            store_faults.fetch_add(1, Ordering::Relaxed);
                            self.place(page, &data);
                            continue;
                        }
                        let already = pending
                            .lock()
                            .map(|p| p.values().any(|&(a, n, _)| a <= page && page < a + n * PAGE_SIZE))
                            .unwrap_or(false);
                        if already {
                            continue;
                        }
                        next_id = (next_id + 1) & 0x00ff_ffff;
                        if let Ok(mut p) = pending.lock() {
                            p.insert(next_id, (page, n, Instant::now()));
                        }
                        let _ = req_tx.send(ToSource::Fault { id: next_id, addr: page, pages: n as u32 });
                    }
                    // The events just read ended any change that made the kernel refuse pages.
                    self.place_deferred();
                }
            }
        };
        let residual = ms(running.elapsed());
        // Faults sent to the source and not answered: from the store now (it holds every
        // page), or they would wait forever.
        if self.flush_complete.load(Ordering::Acquire) {
            let waiting: Vec<(u64, u64)> = pending
                .lock()
                .map(|mut p| p.drain().map(|(_, (a, n, _))| (a, n)).collect())
                .unwrap_or_default();
            for (addr, n) in waiting {
                if let Some(off) = self.map.offset_of(addr)
                    && let Some(data) = self.read_store(off, n * PAGE_SIZE).await
                {
                    store_faults.fetch_add(1, Ordering::Relaxed);
                    self.place(addr, &data);
                }
            }
        }
        if self.complete() || ended_by == "the process exited" {
            self.finish();
        }
        let figures = DestFigures {
            insertion_ms: 0.0,
            remote_faults: FaultStats::from_samples(
                samples.lock().map(|s| s.clone()).unwrap_or_default(),
            ),
            store_faults: store_faults.load(Ordering::Relaxed),
            residual_ms: Some(residual),
            ended_by: ended_by.to_string(),
            needs_store: ended_by == STORE_HOLDS_ALL && !self.complete(),
        };
        let _ = tx
            .send_msg(&ToSource::Done {
                figures: figures.clone(),
            })
            .await;
        replies.abort();
        // The uffd can be registered with the runtime's epoll only once: serve_from_store
        // registers it again (EEXIST while this one lives, and it would return silently).
        drop(afd);
        // After the old host dropped out (file-server): keep serving faults from the store.
        if figures.needs_store {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.serve_from_store().await });
        }
        let _ = tag::STREAM;
        figures
    }

    /// After the source dropped out: every remaining fault from the store, until the process
    /// has all its pages or exits.
    async fn serve_from_store(self: Arc<Pager>) {
        let Ok(afd) = ferry_sys::aio::watch_uffd(Arc::clone(&self.uffd)) else {
            return;
        };
        let mut events = Vec::new();
        while !self.complete() {
            if !ferry_sys::proc::exists(self.pid) {
                self.finish();
                return;
            }
            let draining = self.draining.load(Ordering::Acquire);
            events.clear();
            if draining {
                // Faults first (without waiting), then the next batch of the drain.
                let _ = self.uffd.read_events(&mut events);
            } else {
                let Ok(Ok(mut guard)) =
                    tokio::time::timeout(Duration::from_millis(200), afd.readable()).await
                else {
                    self.place_deferred();
                    continue;
                };
                let _ = self.uffd.read_events(&mut events);
                guard.clear_ready();
            }
            for ev in events.drain(..) {
                let ferry_sys::uffd::Event::PageFault { addr, .. } = ev else {
                    self.apply(&ev);
                    continue;
                };
                let here = addr & !(PAGE_SIZE - 1);
                let image = self
                    .image_at(here)
                    .and_then(|ia| self.map.stretch(ia, 16).map(|s| (ia, s)));
                match image {
                    None => {
                        self.zero_fill(here);
                    }
                    Some((page, (off, n))) => {
                        if !self.place_from_store(page, off, n).await {
                            return;
                        }
                    }
                }
            }
            self.place_deferred();
            if draining {
                for (ia, n) in self.missing(256, 64) {
                    if let Some(off) = self.map.offset_of(ia)
                        && !self.place_from_store(ia, off, n).await
                    {
                        return;
                    }
                }
            }
        }
        self.finish();
        debug!(migration = %self.id, "every page arrived from the store");
    }

    /// Reads `n` pages at stream offset `off` from the store and places them at image address
    /// `page`. A page the store cannot give is fatal to the process (its only copy is gone):
    /// the process is ended with a log line and false is returned.
    async fn place_from_store(&self, page: u64, off: u64, n: u64) -> bool {
        match self.read_store(off, n * PAGE_SIZE).await {
            Some(data) => {
                self.place(page, &data);
                true
            }
            None => {
                error!(migration = %self.id, pid = %self.pid, "a page is missing from the store: ending the process");
                let _ = host::send_signal(self.pid, libc_sigkill());
                false
            }
        }
    }
}

fn libc_sigkill() -> i32 {
    ferry_sys::libc::SIGKILL
}

/// The image's pages, by stream offset (for callers outside).
pub fn page_map(image: &ProcessImage) -> PageMap {
    PageMap::new(&image.memory.pages.runs)
}
