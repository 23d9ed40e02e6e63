//! The message service: endpoints of local processes and their links, held by the daemon
//! outside the processes (the paper's communication region, section 4.1.8).
//!
//! - [`session`]: a process's connection (abstract `SOCK_SEQPACKET` socket `@ferry-msg`).
//! - [`peers`]: delivery, link installation and name lookup between daemons.
//!
//! Each endpoint's [`LinkState`] holds its receive queue, the next sequence number expected
//! from each sender (duplicates are dropped), for each destination the next sequence number
//! and the messages not yet acknowledged with where the destination was last seen, and the
//! process's last request and reply (a request repeated after a reconnection is answered, not
//! run again). A sender's daemon delivers each destination's messages one at a time in order
//! and retransmits until acknowledged: per-sender FIFO, no loss, no duplicates.
//!
//! Migration: while a process migrates with any algorithm but freeze-free, its links are
//! frozen for the freeze window — deliveries to them are held — and move with the process.
//! With freeze-free the links keep receiving at the old host while the process moves and
//! move separately right after, frozen only while the link state crosses. Either way, held
//! deliveries are then answered "moved to NODE" and the old host keeps answering so
//! (a forwarding pointer); senders update their link and retransmit there.

pub mod peers;
pub mod session;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_checkpoint::mobility::LinkFd;
use ferry_migrate::report::LinkFigures;
use ferry_msg::protocol::{self, Answer, FromDaemon, ToDaemon};
use ferry_msg::{EndpointId, MsgError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

pub use peers::{PeerAnswer, PeerMsg, Peers};

/// Forwarding hops a delivery follows before it gives up on an endpoint.
const MAX_HOPS: u32 = 16;
/// Pause before a delivery is retried after a failed connection.
const RETRY: Duration = Duration::from_millis(100);

/// Everything about one endpoint that moves with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkState {
    pub id: EndpointId,
    pub name: Option<String>,
    pub key: [u8; 16],
    /// The connection's fd number in the process.
    pub fd: i32,
    pub queue: VecDeque<Incoming>,
    /// Per sender, the next sequence number to accept.
    pub expected: HashMap<EndpointId, u64>,
    pub outgoing: HashMap<EndpointId, Outgoing>,
    pub last_request: u64,
    pub last_reply: Option<Vec<u8>>,
    /// A receive waiting for a message: request id, milliseconds left (`None`: forever).
    pub pending: Option<(u64, Option<u64>)>,
    /// Its process closed it: it only delivers what it sent, then goes.
    pub closing: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Incoming {
    pub from: EndpointId,
    pub data: Vec<u8>,
}

/// One destination of an endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outgoing {
    pub next_seq: u64,
    /// Where the destination was last seen.
    pub at: String,
    pub unacked: VecDeque<(u64, Vec<u8>)>,
    /// The destination is closed: sends fail.
    pub gone: bool,
}

/// A delivery held while the link is frozen.
struct Held {
    since: Instant,
    msg: (EndpointId, u64, Vec<u8>),
    answer: oneshot::Sender<PeerAnswer>,
}

/// Commands to a process's session task.
pub enum ToSession {
    Write(Vec<u8>),
    /// Read every request already queued on the connection, handle them, then end the session
    /// (the link is leaving with its process).
    Drain(oneshot::Sender<()>),
}

struct Link {
    st: LinkState,
    /// The process behind it (0 until a process connects after a daemon restart).
    pid: i32,
    session: Option<mpsc::UnboundedSender<ToSession>>,
    /// The pending receive's deadline.
    deadline: Option<Instant>,
    /// Its process is migrating: the end of its connection does not close it.
    moving: bool,
    /// Deliveries are held since then.
    frozen: Option<Instant>,
    held: Vec<Held>,
    /// Destinations with a delivery task running.
    sending: HashSet<EndpointId>,
}

#[derive(Default)]
struct State {
    links: HashMap<EndpointId, Link>,
    names: HashMap<String, EndpointId>,
    /// Endpoints that moved away, and where to.
    forward: HashMap<EndpointId, String>,
    closed: HashSet<EndpointId>,
    /// Where endpoints of other nodes were last seen (names resolved, moves learnt).
    names_seen: HashMap<String, (EndpointId, String)>,
    next_n: u64,
    /// Sessions waiting for their link to arrive (a migrated process ran before its link).
    awaiting: HashMap<EndpointId, Vec<oneshot::Sender<()>>>,
    /// Deliveries that reached this host before the link whose process already runs here:
    /// held until it arrives.
    early: HashMap<EndpointId, Vec<Held>>,
    /// The links were saved for the next daemon: nothing changes them any more.
    stopped: bool,
}

/// What the service keeps across a daemon restart.
#[derive(Serialize, Deserialize)]
struct Saved {
    links: Vec<(i32, LinkState)>,
    forward: HashMap<EndpointId, String>,
    closed: HashSet<EndpointId>,
    next_n: u64,
}

/// What the message service did since the daemon started (`ferry nodes --json`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageCounters {
    /// Endpoints living here now.
    pub endpoints: u64,
    /// Messages taken into a local endpoint's queue.
    pub delivered: u64,
    /// Retransmissions of messages already taken (acknowledged again, dropped).
    pub duplicates: u64,
    /// Deliveries answered "moved to NODE" by a forwarding pointer.
    pub redirected: u64,
    /// Deliveries this node retried (connection failed, out of order, a restarting peer).
    pub retransmitted: u64,
}

pub struct Service {
    node: String,
    state: Mutex<State>,
    pub peers: Arc<Peers>,
    counters: Mutex<MessageCounters>,
}

impl Service {
    pub fn new(node: &str, secret: ferry_wire::ClusterSecret) -> Arc<Service> {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Arc::new(Service {
            node: node.to_string(),
            state: Mutex::new(State {
                // Unique across restarts of this daemon: seconds since the epoch, then a counter.
                next_n: epoch << 20,
                ..State::default()
            }),
            peers: Arc::new(Peers::new(node, secret)),
            counters: Mutex::new(MessageCounters::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still consistent enough
        // to keep serving (every update is a few assignments).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut MessageCounters)) {
        if let Ok(mut c) = self.counters.lock() {
            f(&mut c);
        }
    }

    pub fn counters(&self) -> MessageCounters {
        let mut c = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        c.endpoints = self
            .state()
            .links
            .values()
            .filter(|l| !l.st.closing)
            .count() as u64;
        c
    }

    // ---- Processes' requests -------------------------------------------------------------

    /// A new endpoint for process `pid`.
    pub async fn open(
        self: &Arc<Self>,
        pid: i32,
        name: Option<String>,
        fd: i32,
        session: mpsc::UnboundedSender<ToSession>,
    ) -> Result<(EndpointId, [u8; 16]), MsgError> {
        if let Some(n) = &name {
            protocol::check_name(n)?;
            if self.state().names.contains_key(n) || self.lookup_remote(n).await.is_some() {
                return Err(MsgError::NameTaken(n.clone()));
            }
        }
        let key = random_key().map_err(|e| MsgError::Daemon(format!("no randomness: {e}")))?;
        let mut st = self.state();
        if st.stopped {
            return Err(MsgError::Daemon("the daemon is restarting".into()));
        }
        if let Some(n) = &name
            && st.names.contains_key(n)
        {
            return Err(MsgError::NameTaken(n.clone()));
        }
        st.next_n += 1;
        let id = EndpointId {
            node: self.node.clone(),
            n: st.next_n,
        };
        if let Some(n) = &name {
            st.names.insert(n.clone(), id.clone());
        }
        st.links.insert(
            id.clone(),
            Link::new(
                LinkState {
                    id: id.clone(),
                    name,
                    key,
                    fd,
                    queue: VecDeque::new(),
                    expected: HashMap::new(),
                    outgoing: HashMap::new(),
                    last_request: 0,
                    last_reply: None,
                    pending: None,
                    closing: false,
                },
                pid,
                Some(session),
            ),
        );
        debug!(endpoint = %id, pid, "endpoint opened");
        Ok((id, key))
    }

    /// A connection re-established for `id` (by the restorer after a migration, or by the
    /// library after a daemon restart). Waits for a link still in transit.
    pub async fn resume(
        &self,
        pid: i32,
        id: &EndpointId,
        key: [u8; 16],
        session: mpsc::UnboundedSender<ToSession>,
    ) -> Result<(), MsgError> {
        let arrived = {
            let mut st = self.state();
            if st.links.contains_key(id) {
                None
            } else {
                let (tx, rx) = oneshot::channel();
                st.awaiting.entry(id.clone()).or_default().push(tx);
                Some(rx)
            }
        };
        if let Some(rx) = arrived {
            // The link follows its process within moments; a minute means it never will.
            match tokio::time::timeout(Duration::from_secs(60), rx).await {
                Ok(Ok(())) => {}
                _ => {
                    // It never came: nobody waits here any more; held deliveries go on.
                    let mut st = self.state();
                    if !st.links.contains_key(id) {
                        st.awaiting.remove(id);
                        let answer = self.elsewhere(&st, id);
                        for h in st.early.remove(id).unwrap_or_default() {
                            let _ = h.answer.send(answer.clone());
                        }
                    }
                    return Err(MsgError::Closed(id.to_string()));
                }
            }
        }
        // A restore that was abandoned leaves a connection from a process that is gone: it
        // must not take the link from the one that came after it.
        if pid != 0 && !ferry_sys::proc::exists(ferry_sys::Pid::from_raw(pid)) {
            return Err(MsgError::Closed(id.to_string()));
        }
        let mut st = self.state();
        let link = st
            .links
            .get_mut(id)
            .ok_or_else(|| MsgError::Closed(id.to_string()))?;
        if link.st.key != key {
            warn!(endpoint = %id, pid, "resume with a wrong key refused");
            return Err(MsgError::Daemon("wrong key for this endpoint".into()));
        }
        link.pid = pid;
        link.moving = false;
        // The last reply may have been lost with the old connection: the process skips it if
        // it had it.
        if let Some(r) = &link.st.last_reply {
            let _ = session.send(ToSession::Write(r.clone()));
        }
        link.session = Some(session);
        debug!(endpoint = %id, pid, "endpoint resumed");
        Ok(())
    }

    /// The process closed its connection (it exited, or closed the endpoint).
    /// Messages it sent are still delivered: the link stays, closing, until all are taken.
    pub fn disconnected(&self, id: &EndpointId) {
        let mut st = self.state();
        let Some(link) = st.links.get_mut(id) else {
            return;
        };
        if link.moving || link.st.closing {
            return;
        }
        link.st.closing = true;
        link.session = None;
        link.st.pending = None;
        for h in std::mem::take(&mut link.held) {
            let _ = h.answer.send(PeerAnswer::Gone);
        }
        let name = link.st.name.take();
        let done = link.all_sent();
        if let Some(n) = name {
            st.names.remove(&n);
        }
        st.closed.insert(id.clone());
        if done {
            st.links.remove(id);
        }
        debug!(endpoint = %id, lingering = !done, "endpoint closed");
    }

    /// One request of a process; the reply goes out through its session. What a request does
    /// and its reply are recorded in one step: a daemon that stops in between has done neither.
    pub async fn request(self: &Arc<Self>, id: &EndpointId, req_id: u64, op: protocol::Op) {
        {
            let st = self.state();
            if st.stopped {
                // The next daemon answers it: the process sends it again.
                return;
            }
            let Some(link) = st.links.get(id) else {
                return;
            };
            if req_id <= link.st.last_request {
                // Repeated after a reconnection: answer from the record, never run twice.
                if req_id == link.st.last_request
                    && link.st.pending.is_none()
                    && let (Some(r), Some(s)) = (&link.st.last_reply, &link.session)
                {
                    let _ = s.send(ToSession::Write(r.clone()));
                }
                return;
            }
        }
        // The only wait: finding where a name lives (nothing changes meanwhile).
        let resolved = match &op {
            protocol::Op::Send { data, .. } if data.len() > ferry_msg::MAX_MESSAGE => {
                Some(Err(MsgError::TooLarge {
                    size: data.len(),
                    max: ferry_msg::MAX_MESSAGE,
                }))
            }
            protocol::Op::Send { to, .. } => Some(self.resolve(to).await),
            protocol::Op::Recv { .. } => None,
        };
        let mut st = self.state();
        if st.stopped {
            return;
        }
        let Some(link) = st.links.get_mut(id) else {
            return;
        };
        if req_id <= link.st.last_request {
            return;
        }
        link.st.last_request = req_id;
        let result = match (op, resolved) {
            (protocol::Op::Send { data, .. }, Some(Ok((dest, at)))) => {
                let start = link.queue(dest.clone(), at, data);
                if let Ok(true) = start {
                    self.spawn_sender(id.clone(), dest);
                }
                start.map(|_| Answer::Sent)
            }
            (protocol::Op::Send { .. }, Some(Err(e))) => Err(e),
            (protocol::Op::Recv { wait_ms }, _) => {
                if let Some(m) = link.st.queue.pop_front() {
                    Ok(Answer::Message {
                        from: m.from,
                        data: m.data,
                    })
                } else if wait_ms == Some(0) {
                    Ok(Answer::Empty)
                } else {
                    link.st.pending = Some((req_id, wait_ms));
                    link.deadline = wait_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
                    if let Some(ms) = wait_ms {
                        self.arm_timer(id.clone(), req_id, Duration::from_millis(ms));
                    }
                    return;
                }
            }
            (protocol::Op::Send { .. }, None) => return,
        };
        link.reply(req_id, result);
    }

    fn arm_timer(self: &Arc<Self>, id: EndpointId, req_id: u64, after: Duration) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut st = me.state();
            if !st.stopped
                && let Some(link) = st.links.get_mut(&id)
                && link.st.pending.map(|p| p.0) == Some(req_id)
            {
                link.st.pending = None;
                link.deadline = None;
                link.reply(req_id, Ok(Answer::Empty));
            }
        });
    }

    /// An endpoint id and where to look for it first.
    async fn resolve(&self, to: &str) -> Result<(EndpointId, String), MsgError> {
        if let Ok(id) = to.parse::<EndpointId>() {
            let at = self
                .state()
                .forward
                .get(&id)
                .cloned()
                .unwrap_or_else(|| id.node.clone());
            return Ok((id, at));
        }
        protocol::check_name(to).map_err(|_| MsgError::BadAddress(to.to_string()))?;
        {
            let st = self.state();
            if let Some(id) = st.names.get(to) {
                return Ok((id.clone(), self.node.clone()));
            }
            if let Some((id, at)) = st.names_seen.get(to) {
                return Ok((id.clone(), at.clone()));
            }
        }
        match self.lookup_remote(to).await {
            Some((id, at)) => {
                self.state()
                    .names_seen
                    .insert(to.to_string(), (id.clone(), at.clone()));
                Ok((id, at))
            }
            None => Err(MsgError::NoSuchName(to.to_string())),
        }
    }

    /// Asks every known node at once whether `name` lives there.
    async fn lookup_remote(&self, name: &str) -> Option<(EndpointId, String)> {
        let mut asks = tokio::task::JoinSet::new();
        for node in self.peers.known_nodes() {
            let peers = Arc::clone(&self.peers);
            let name = name.to_string();
            asks.spawn(async move {
                let answer = tokio::time::timeout(
                    Duration::from_secs(2),
                    peers.ask(&node, PeerMsg::Lookup { name }),
                )
                .await;
                (node, answer)
            });
        }
        while let Some(r) = asks.join_next().await {
            if let Ok((node, Ok(Ok(PeerAnswer::Found(id))))) = r {
                return Some((id, node));
            }
        }
        None
    }

    /// The delivery task of link `from` → `to`: one message at a time, in order, until none is
    /// left unacknowledged, the link leaves, or the link freezes.
    fn spawn_sender(self: &Arc<Self>, from: EndpointId, to: EndpointId) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut hops = 0;
            loop {
                let next = {
                    let mut st = me.state();
                    if st.stopped {
                        return;
                    }
                    let Some(link) = st.links.get_mut(&from) else {
                        return;
                    };
                    let front = link.st.outgoing.get(&to).and_then(|o| {
                        o.unacked
                            .front()
                            .map(|(s, d)| (*s, d.clone(), o.at.clone()))
                    });
                    match front {
                        Some(f) if link.frozen.is_none() => f,
                        _ => {
                            link.sending.remove(&to);
                            // A closed endpoint lingers only until its last message is taken.
                            if link.st.closing && link.all_sent() {
                                st.links.remove(&from);
                            }
                            return;
                        }
                    }
                };
                let (seq, data, at) = next;
                let answer = me
                    .deliver_to(&at, to.clone(), from.clone(), seq, data)
                    .await;
                let pause = {
                    let mut st = me.state();
                    if st.stopped {
                        return;
                    }
                    let Some(link) = st.links.get_mut(&from) else {
                        return;
                    };
                    let Some(out) = link.st.outgoing.get_mut(&to) else {
                        link.sending.remove(&to);
                        return;
                    };
                    match answer {
                        Ok(PeerAnswer::Accepted) => {
                            if out.unacked.front().map(|u| u.0) == Some(seq) {
                                out.unacked.pop_front();
                            }
                            hops = 0;
                            None
                        }
                        Ok(PeerAnswer::Moved { node }) if hops < MAX_HOPS => {
                            hops += 1;
                            out.at = node;
                            None
                        }
                        Ok(PeerAnswer::Moved { .. }) | Ok(PeerAnswer::Gone) => {
                            warn!(from = %from, to = %to, "destination closed: its messages are dropped");
                            out.gone = true;
                            out.unacked.clear();
                            None
                        }
                        Ok(PeerAnswer::OutOfOrder) => Some(Duration::from_millis(5)),
                        Ok(other) => {
                            warn!(?other, "unexpected answer to a delivery");
                            Some(RETRY)
                        }
                        Err(e) => {
                            debug!(to = %to, at = %at, error = %e, "delivery failed; retrying");
                            Some(RETRY)
                        }
                    }
                };
                if let Some(p) = pause {
                    me.count(|c| c.retransmitted += 1);
                    tokio::time::sleep(p).await;
                }
            }
        });
    }

    async fn deliver_to(
        self: &Arc<Self>,
        node: &str,
        to: EndpointId,
        from: EndpointId,
        seq: u64,
        data: Vec<u8>,
    ) -> Result<PeerAnswer, String> {
        if node == self.node {
            Ok(self.deliver(to, from, seq, data).await)
        } else {
            self.peers
                .ask(
                    node,
                    PeerMsg::Deliver {
                        to,
                        from,
                        seq,
                        data,
                    },
                )
                .await
        }
    }

    // ---- Other daemons' requests ----------------------------------------------------------

    pub async fn answer(self: Arc<Self>, msg: PeerMsg) -> PeerAnswer {
        match msg {
            PeerMsg::Deliver {
                to,
                from,
                seq,
                data,
            } => self.deliver(to, from, seq, data).await,
            PeerMsg::Install(state) => self.install(*state, 0),
            PeerMsg::Lookup { name } => match self.state().names.get(&name) {
                Some(id) => PeerAnswer::Found(id.clone()),
                None => PeerAnswer::NotFound,
            },
            PeerMsg::Return { id, to } => {
                if !self.state().links.contains_key(&id) {
                    return PeerAnswer::Gone;
                }
                self.move_links(vec![id], to).await;
                PeerAnswer::Installed
            }
        }
    }

    /// A message for a local endpoint (or one that was here).
    async fn deliver(
        self: &Arc<Self>,
        to: EndpointId,
        from: EndpointId,
        seq: u64,
        data: Vec<u8>,
    ) -> PeerAnswer {
        let held = {
            let mut st = self.state();
            if st.stopped {
                // Not acknowledged: the sender retries with the next daemon.
                return PeerAnswer::Refused("the daemon is restarting".into());
            }
            if !st.links.contains_key(&to) && st.awaiting.contains_key(&to) {
                // Its process is here, its link on the way: hold the message for it.
                let (tx, rx) = oneshot::channel();
                st.early.entry(to).or_default().push(Held {
                    since: Instant::now(),
                    msg: (from, seq, data),
                    answer: tx,
                });
                rx
            } else {
                let Some(link) = st.links.get_mut(&to) else {
                    if st.forward.contains_key(&to) {
                        self.count(|c| c.redirected += 1);
                    }
                    return self.elsewhere(&st, &to);
                };
                if link.st.closing {
                    return PeerAnswer::Gone;
                }
                if link.frozen.is_some() {
                    let (tx, rx) = oneshot::channel();
                    link.held.push(Held {
                        since: Instant::now(),
                        msg: (from, seq, data),
                        answer: tx,
                    });
                    rx
                } else {
                    let taken = link.accept(from, seq, data);
                    match taken {
                        Taken::New => self.count(|c| c.delivered += 1),
                        Taken::Duplicate => self.count(|c| c.duplicates += 1),
                        Taken::OutOfOrder => {}
                    }
                    return taken.answer();
                }
            }
        };
        held.await.unwrap_or(PeerAnswer::Gone)
    }

    /// Where to send a delivery for `id`, which does not live here.
    fn elsewhere(&self, st: &State, id: &EndpointId) -> PeerAnswer {
        if let Some(node) = st.forward.get(id) {
            return PeerAnswer::Moved { node: node.clone() };
        }
        if st.closed.contains(id) || id.node == self.node {
            return PeerAnswer::Gone;
        }
        PeerAnswer::Moved {
            node: id.node.clone(),
        }
    }

    /// Installs a link that moved here; `pid` is known only for a restart.
    fn install(self: &Arc<Self>, state: LinkState, pid: i32) -> PeerAnswer {
        let id = state.id.clone();
        let mut st = self.state();
        if st.stopped {
            return PeerAnswer::Refused("the daemon is restarting".into());
        }
        if st.links.contains_key(&id) {
            return PeerAnswer::Refused(format!("endpoint {id} already lives here"));
        }
        if let Some(n) = &state.name {
            st.names.insert(n.clone(), id.clone());
        }
        st.forward.remove(&id);
        st.closed.remove(&id);
        let mut link = Link::new(state, pid, None);
        if let Some((req_id, Some(ms))) = link.st.pending {
            link.deadline = Some(Instant::now() + Duration::from_millis(ms));
            self.arm_timer(id.clone(), req_id, Duration::from_millis(ms));
        }
        let dests = link.start_senders();
        st.links.insert(id.clone(), link);
        for d in dests {
            self.spawn_sender(id.clone(), d);
        }
        for w in st.awaiting.remove(&id).unwrap_or_default() {
            let _ = w.send(());
        }
        let early = st.early.remove(&id).unwrap_or_default();
        if let Some(link) = st.links.get_mut(&id) {
            link.take_held(early);
        }
        debug!(endpoint = %id, "link installed");
        PeerAnswer::Installed
    }

    // ---- Migration --------------------------------------------------------------------------

    /// The links of process `pid`, as the capture must record them.
    pub fn links_of(&self, pid: i32) -> Vec<(EndpointId, LinkFd)> {
        let st = self.state();
        st.links
            .values()
            .filter(|l| l.pid == pid && l.session.is_some() && !l.st.closing)
            .filter_map(|l| {
                let hello = protocol::encode(&ToDaemon::Resume {
                    endpoint: l.st.id.clone(),
                    key: l.st.key,
                })
                .ok()?;
                Some((
                    l.st.id.clone(),
                    LinkFd {
                        fd: l.st.fd,
                        socket: protocol::DEFAULT_SOCKET.to_string(),
                        hello,
                    },
                ))
            })
            .collect()
    }

    /// The process of `links` is about to move: its connection may end without closing them;
    /// with `freeze`, deliveries are held from now on.
    pub fn begin_move(&self, links: &[EndpointId], freeze: bool) {
        let mut st = self.state();
        for id in links {
            if let Some(l) = st.links.get_mut(id) {
                l.moving = true;
                if freeze && l.frozen.is_none() {
                    l.frozen = Some(Instant::now());
                }
            }
        }
    }

    /// The migration failed: the links stay and take the held deliveries.
    pub fn cancel_move(self: &Arc<Self>, links: &[EndpointId]) {
        let mut st = self.state();
        for id in links {
            if let Some(l) = st.links.get_mut(id) {
                l.moving = false;
                l.frozen = None;
                let held = std::mem::take(&mut l.held);
                l.take_held(held);
                for d in l.start_senders() {
                    self.spawn_sender(id.clone(), d);
                }
            }
        }
    }

    /// Moves `links` to node `to`, where their process now runs. Retries until the node takes
    /// them (the process there waits for them).
    pub async fn move_links(self: &Arc<Self>, links: Vec<EndpointId>, to: String) -> LinkFigures {
        let mut figures = LinkFigures {
            links: links.len() as u32,
            ..LinkFigures::default()
        };
        let mut delays: Vec<f64> = Vec::new();
        for id in links {
            // Freeze (if not yet), then take in what the old connection still holds.
            let session = {
                let mut st = self.state();
                let Some(l) = st.links.get_mut(&id) else {
                    continue;
                };
                l.moving = true;
                l.frozen.get_or_insert_with(Instant::now);
                l.session.take()
            };
            let t0 = Instant::now();
            if let Some(s) = session {
                let (tx, rx) = oneshot::channel();
                if s.send(ToSession::Drain(tx)).is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
                }
            }
            let drained = t0.elapsed();
            let mut tries = 0u32;
            loop {
                let state = {
                    let st = self.state();
                    match st.links.get(&id) {
                        Some(l) => l.export(),
                        None => break,
                    }
                };
                match self.peers.ask(&to, PeerMsg::Install(Box::new(state))).await {
                    Ok(PeerAnswer::Installed) => break,
                    other => {
                        tries += 1;
                        if tries % 10 == 1 {
                            warn!(endpoint = %id, %to, ?other, "moving a link failed; retrying");
                        }
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
            let mut st = self.state();
            if let Some(link) = st.links.remove(&id) {
                if let Some(n) = &link.st.name {
                    st.names.remove(n);
                }
                st.forward.insert(id.clone(), to.clone());
                let now = Instant::now();
                if let Some(since) = link.frozen {
                    figures.message_freeze_ms = figures
                        .message_freeze_ms
                        .max(now.duration_since(since).as_secs_f64() * 1e3);
                }
                for h in link.held {
                    delays.push(now.duration_since(h.since).as_secs_f64() * 1e3);
                    let _ = h.answer.send(PeerAnswer::Moved { node: to.clone() });
                }
            }
            info!(endpoint = %id, %to, drain_us = drained.as_micros() as u64,
                handover_us = t0.elapsed().as_micros() as u64, "link moved");
        }
        figures.held = delays.len() as u64;
        figures.held_max_ms = delays.iter().copied().fold(0.0, f64::max);
        if !delays.is_empty() {
            figures.held_mean_ms = delays.iter().sum::<f64>() / delays.len() as f64;
        }
        figures
    }

    /// Brings `links` back from node `from`, where they went ahead of a process that then did
    /// not move. Its connection here was handed over, so the process reconnects to them.
    pub async fn call_back(&self, links: &[EndpointId], from: &str) {
        for id in links {
            let msg = PeerMsg::Return {
                id: id.clone(),
                to: self.node.clone(),
            };
            match self.peers.ask(from, msg).await {
                Ok(PeerAnswer::Installed) => info!(endpoint = %id, %from, "link called back"),
                other => warn!(endpoint = %id, %from, ?other, "calling a link back failed"),
            }
        }
    }

    // ---- Restart ------------------------------------------------------------------------------

    /// Writes every link to `path` (the daemon is stopping); processes reconnect to the next
    /// daemon and lose nothing.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut st = self.state();
        st.stopped = true;
        let saved = Saved {
            links: st.links.values().map(|l| (l.pid, l.export())).collect(),
            forward: st.forward.clone(),
            closed: st.closed.clone(),
            next_n: st.next_n,
        };
        let bytes = postcard::to_allocvec(&saved).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        info!(links = saved.links.len(), path = %path.display(), "message links saved");
        Ok(())
    }

    /// Takes back what [`Service::save`] wrote, and removes the file.
    pub fn load(self: &Arc<Self>, path: &Path) {
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        let _ = std::fs::remove_file(path);
        let saved: Saved = match postcard::from_bytes(&bytes) {
            Ok(s) => s,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "saved message links unreadable");
                return;
            }
        };
        let n = saved.links.len();
        {
            let mut st = self.state();
            st.forward = saved.forward;
            st.closed = saved.closed;
            st.next_n = st.next_n.max(saved.next_n);
        }
        for (pid, link) in saved.links {
            self.install(link, pid);
        }
        info!(links = n, "message links restored");
    }
}

/// Where the service keeps its links across a restart.
pub fn saved_path(state_dir: &Path) -> PathBuf {
    state_dir.join("message-links")
}

impl Link {
    fn new(st: LinkState, pid: i32, session: Option<mpsc::UnboundedSender<ToSession>>) -> Link {
        Link {
            st,
            pid,
            session,
            deadline: None,
            moving: false,
            frozen: None,
            held: Vec::new(),
            sending: HashSet::new(),
        }
    }

    /// Queues `data` for `dest` (last seen at `at`); true if its delivery task must start.
    fn queue(&mut self, dest: EndpointId, at: String, data: Vec<u8>) -> Result<bool, MsgError> {
        let out = self.st.outgoing.entry(dest.clone()).or_insert(Outgoing {
            next_seq: 1,
            at,
            unacked: VecDeque::new(),
            gone: false,
        });
        if out.gone {
            return Err(MsgError::Closed(dest.to_string()));
        }
        let seq = out.next_seq;
        out.next_seq += 1;
        out.unacked.push_back((seq, data));
        Ok(self.frozen.is_none() && self.sending.insert(dest))
    }

    /// Destinations with messages waiting and no delivery task, now marked as having one: the
    /// caller starts their tasks.
    fn start_senders(&mut self) -> Vec<EndpointId> {
        let dests: Vec<EndpointId> = self
            .st
            .outgoing
            .iter()
            .filter(|(d, o)| !o.unacked.is_empty() && !self.sending.contains(*d))
            .map(|(d, _)| d.clone())
            .collect();
        self.sending.extend(dests.iter().cloned());
        dests
    }

    /// Takes deliveries that waited for it, in the order they came, and answers them.
    fn take_held(&mut self, held: Vec<Held>) {
        for h in held {
            let (from, seq, data) = h.msg;
            let _ = h.answer.send(self.accept(from, seq, data).answer());
        }
    }

    /// Every message it sent was taken (or its destination is gone).
    fn all_sent(&self) -> bool {
        self.st.outgoing.values().all(|o| o.unacked.is_empty())
    }

    /// Sends (or keeps, with no connection) the reply to request `id`.
    fn reply(&mut self, id: u64, result: Result<Answer, MsgError>) {
        let Ok(bytes) = protocol::encode(&FromDaemon::Reply { id, result }) else {
            return;
        };
        if let Some(s) = &self.session {
            let _ = s.send(ToSession::Write(bytes.clone()));
        }
        self.st.last_reply = Some(bytes);
    }

    /// Takes message `seq` from `from` if it is the next one; wakes a waiting receive.
    fn accept(&mut self, from: EndpointId, seq: u64, data: Vec<u8>) -> Taken {
        let expected = self.st.expected.entry(from.clone()).or_insert(1);
        if seq < *expected {
            return Taken::Duplicate;
        }
        if seq > *expected {
            return Taken::OutOfOrder;
        }
        *expected += 1;
        self.st.queue.push_back(Incoming { from, data });
        if let Some((req_id, _)) = self.st.pending
            && let Some(m) = self.st.queue.pop_front()
        {
            self.st.pending = None;
            self.deadline = None;
            self.reply(
                req_id,
                Ok(Answer::Message {
                    from: m.from,
                    data: m.data,
                }),
            );
        }
        Taken::New
    }

    /// The link's state as it travels (a pending receive keeps the time it has left).
    fn export(&self) -> LinkState {
        let mut st = self.st.clone();
        if let Some((id, Some(_))) = st.pending {
            let left = self
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64)
                .unwrap_or(0);
            st.pending = Some((id, Some(left.max(1))));
        }
        st
    }
}

/// What became of a delivered message.
enum Taken {
    New,
    /// Already taken (a retransmission): acknowledged again, dropped.
    Duplicate,
    OutOfOrder,
}

impl Taken {
    fn answer(&self) -> PeerAnswer {
        match self {
            Taken::New | Taken::Duplicate => PeerAnswer::Accepted,
            Taken::OutOfOrder => PeerAnswer::OutOfOrder,
        }
    }
}

fn random_key() -> std::io::Result<[u8; 16]> {
    use std::io::Read;
    let mut key = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_msg::protocol::Op;

    fn service() -> Arc<Service> {
        Service::new("n1", ferry_wire::ClusterSecret::from_bytes([7; 32]))
    }

    /// The next reply written to a session, decoded.
    async fn reply(rx: &mut mpsc::UnboundedReceiver<ToSession>) -> FromDaemon {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a reply within 5 s")
            .expect("the session channel is open");
        match got {
            ToSession::Write(bytes) => protocol::decode(&bytes).expect("a valid reply"),
            ToSession::Drain(_) => panic!("a drain instead of a reply"),
        }
    }

    fn id(n: u64) -> EndpointId {
        EndpointId {
            node: "n2".into(),
            n,
        }
    }

    /// A fresh link's state, with a pending receive if given.
    fn state(pending: Option<(u64, Option<u64>)>) -> LinkState {
        LinkState {
            id: id(1),
            name: None,
            key: [0; 16],
            fd: 3,
            queue: VecDeque::new(),
            expected: HashMap::new(),
            outgoing: HashMap::new(),
            last_request: pending.map_or(0, |p| p.0),
            last_reply: None,
            pending,
            closing: false,
        }
    }

    #[test]
    fn a_link_takes_each_message_once_and_in_order() {
        let mut link = Link::new(state(None), 1, None);
        assert!(matches!(link.accept(id(9), 1, b"a".to_vec()), Taken::New));
        assert!(matches!(
            link.accept(id(9), 1, b"a".to_vec()),
            Taken::Duplicate
        ));
        assert!(matches!(
            link.accept(id(9), 3, b"c".to_vec()),
            Taken::OutOfOrder
        ));
        assert!(matches!(link.accept(id(9), 2, b"b".to_vec()), Taken::New));
        // Another sender has its own numbering.
        assert!(matches!(link.accept(id(8), 1, b"x".to_vec()), Taken::New));
        let got: Vec<&[u8]> = link.st.queue.iter().map(|m| m.data.as_slice()).collect();
        assert_eq!(got, [b"a".as_slice(), b"b", b"x"]);

        // A waiting receive takes the next message at once; the reply is kept for a replay.
        link.st.queue.clear();
        link.st.pending = Some((7, None));
        assert!(matches!(link.accept(id(9), 3, b"c".to_vec()), Taken::New));
        assert!(link.st.pending.is_none() && link.st.queue.is_empty());
        let kept: FromDaemon =
            protocol::decode(link.st.last_reply.as_deref().expect("a kept reply")).expect("valid");
        assert_eq!(
            kept,
            FromDaemon::Reply {
                id: 7,
                result: Ok(Answer::Message {
                    from: id(9),
                    data: b"c".to_vec()
                })
            }
        );
    }

    #[test]
    fn a_moving_receive_keeps_the_time_it_has_left() {
        let mut link = Link::new(state(Some((4, Some(10_000)))), 1, None);
        link.deadline = Some(Instant::now() + Duration::from_millis(2_000));
        let left = link.export().pending.and_then(|p| p.1).expect("a wait");
        assert!((1_900..=2_000).contains(&left), "{left} ms left");
        // Past its deadline, a wait still travels as a wait (of 1 ms), never as "no wait".
        link.deadline = Some(Instant::now());
        assert_eq!(link.export().pending, Some((4, Some(1))));
    }

    #[tokio::test]
    async fn local_endpoints_talk_and_a_repeated_request_is_not_run_twice() {
        let svc = service();
        let (atx, mut arx) = mpsc::unbounded_channel();
        let (btx, mut brx) = mpsc::unbounded_channel();
        let (a, _) = svc.open(1, Some("a".into()), 3, atx).await.expect("open a");
        let (b, _) = svc.open(2, Some("b".into()), 3, btx).await.expect("open b");
        let (ctx, _crx) = mpsc::unbounded_channel();
        assert_eq!(
            svc.open(3, Some("b".into()), 3, ctx).await.err(),
            Some(MsgError::NameTaken("b".into()))
        );

        // b waits; a sends twice (the second request repeats id 1: answered, not run).
        svc.request(&b, 1, Op::Recv { wait_ms: None }).await;
        for _ in 0..2 {
            svc.request(
                &a,
                1,
                Op::Send {
                    to: "b".into(),
                    data: b"hello".to_vec(),
                },
            )
            .await;
            assert_eq!(
                reply(&mut arx).await,
                FromDaemon::Reply {
                    id: 1,
                    result: Ok(Answer::Sent)
                }
            );
        }
        assert_eq!(
            reply(&mut brx).await,
            FromDaemon::Reply {
                id: 1,
                result: Ok(Answer::Message {
                    from: a.clone(),
                    data: b"hello".to_vec()
                })
            }
        );
        svc.request(&b, 2, Op::Recv { wait_ms: Some(0) }).await;
        assert_eq!(
            reply(&mut brx).await,
            FromDaemon::Reply {
                id: 2,
                result: Ok(Answer::Empty)
            }
        );
        // Errors come back as replies.
        svc.request(
            &a,
            2,
            Op::Send {
                to: "nobody".into(),
                data: vec![],
            },
        )
        .await;
        assert_eq!(
            reply(&mut arx).await,
            FromDaemon::Reply {
                id: 2,
                result: Err(MsgError::NoSuchName("nobody".into()))
            }
        );
        svc.request(
            &a,
            3,
            Op::Send {
                to: b.to_string(),
                data: vec![0; ferry_msg::MAX_MESSAGE + 1],
            },
        )
        .await;
        assert!(matches!(
            reply(&mut arx).await,
            FromDaemon::Reply {
                id: 3,
                result: Err(MsgError::TooLarge { .. })
            }
        ));
        // A closed endpoint's name is free again, and messages to it are refused.
        svc.disconnected(&b);
        assert_eq!(svc.counters().endpoints, 1);
        let (dtx, _drx) = mpsc::unbounded_channel();
        svc.open(4, Some("b".into()), 3, dtx)
            .await
            .expect("the name is free");
        assert_eq!(
            svc.deliver(b.clone(), a.clone(), 2, vec![]).await,
            PeerAnswer::Gone
        );
    }

    #[tokio::test]
    async fn a_message_that_reaches_the_new_host_before_the_link_waits_for_it() {
        let svc = service();
        let key = [3; 16];
        let (tx, mut rx) = mpsc::unbounded_channel();
        // The migrated process connects first: its resume waits for the link.
        let resumed = {
            let svc = Arc::clone(&svc);
            tokio::spawn(async move { svc.resume(0, &id(1), key, tx).await })
        };
        while !svc.state().awaiting.contains_key(&id(1)) {
            tokio::task::yield_now().await;
        }
        let delivery = {
            let svc = Arc::clone(&svc);
            tokio::spawn(async move { svc.deliver(id(1), id(9), 1, b"early".to_vec()).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!delivery.is_finished(), "answered before the link arrived");
        // The link arrives with a receive waiting: the early message answers it.
        let mut st = state(Some((4, None)));
        st.key = key;
        assert_eq!(svc.install(st, 0), PeerAnswer::Installed);
        let answered = tokio::time::timeout(Duration::from_secs(5), delivery)
            .await
            .expect("answered once the link came")
            .expect("delivery task");
        assert_eq!(answered, PeerAnswer::Accepted);
        resumed
            .await
            .expect("resume task")
            .expect("resumed once the link came");
        assert_eq!(
            reply(&mut rx).await,
            FromDaemon::Reply {
                id: 4,
                result: Ok(Answer::Message {
                    from: id(9),
                    data: b"early".to_vec()
                })
            }
        );
    }
}
