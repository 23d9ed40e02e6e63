//! Messages between daemons: one long-lived `messages` connection per peer and direction
//! (Noise-authenticated, see `ferry-wire`), requests numbered and pipelined, answers matched by
//! number. A request whose connection fails gets an error; the caller retries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_msg::EndpointId;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::LinkState;

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Daemon → daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Message `seq` of the link `from` → `to`.
    Deliver {
        to: EndpointId,
        from: EndpointId,
        seq: u64,
        data: Vec<u8>,
    },
    /// A link that moved here with its process.
    Install(Box<LinkState>),
    /// Which endpoint has this name, if it lives at your node?
    Lookup { name: String },
    /// The process of link `id` stayed with me after all (its migration failed after the link
    /// moved): send the link back to node `to`. Answered once it is back.
    Return { id: EndpointId, to: String },
}

/// The answer to a [`PeerMsg`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerAnswer {
    /// In the endpoint's queue (or it was already: a retransmission).
    Accepted,
    /// The endpoint moved to this node: send there.
    Moved {
        node: String,
    },
    /// The endpoint is closed (or never existed).
    Gone,
    /// A message before this one is missing: send the oldest unacknowledged first.
    OutOfOrder,
    Installed,
    Refused(String),
    Found(EndpointId),
    NotFound,
}

#[derive(Debug, Serialize, Deserialize)]
struct Numbered<T> {
    n: u64,
    body: T,
}

type Waiter = oneshot::Sender<Result<PeerAnswer, String>>;

/// Outgoing connections, one per peer node, opened on first use.
pub struct Peers {
    node: String,
    secret: ferry_wire::ClusterSecret,
    addresses: Mutex<HashMap<String, SocketAddr>>,
    conns: Mutex<HashMap<String, mpsc::UnboundedSender<(PeerMsg, Waiter)>>>,
}

impl Peers {
    pub fn new(node: &str, secret: ferry_wire::ClusterSecret) -> Peers {
        Peers {
            node: node.to_string(),
            secret,
            addresses: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// The nodes this daemon can reach (configured or gossiped), by name.
    pub fn set_addresses(&self, addresses: HashMap<String, SocketAddr>) {
        if let Ok(mut a) = self.addresses.lock() {
            *a = addresses;
        }
    }

    pub fn known_nodes(&self) -> Vec<String> {
        self.addresses
            .lock()
            .map(|a| a.keys().filter(|n| **n != self.node).cloned().collect())
            .unwrap_or_default()
    }

    /// Sends `msg` to `node` and waits for the answer.
    pub async fn ask(self: &Arc<Self>, node: &str, msg: PeerMsg) -> Result<PeerAnswer, String> {
        let (tx, rx) = oneshot::channel();
        let queue = self.connection(node)?;
        if queue.send((msg, tx)).is_err() {
            self.forget(node);
            return Err(format!("connection to {node} closed"));
        }
        rx.await
            .map_err(|_| format!("connection to {node} closed"))?
    }

    fn forget(&self, node: &str) {
        if let Ok(mut c) = self.conns.lock() {
            c.remove(node);
        }
    }

    fn connection(
        self: &Arc<Self>,
        node: &str,
    ) -> Result<mpsc::UnboundedSender<(PeerMsg, Waiter)>, String> {
        let mut conns = self.conns.lock().map_err(|_| "poisoned".to_string())?;
        if let Some(q) = conns.get(node)
            && !q.is_closed()
        {
            return Ok(q.clone());
        }
        let addr = self
            .addresses
            .lock()
            .ok()
            .and_then(|a| a.get(node).copied())
            .ok_or_else(|| format!("unknown node {node}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        conns.insert(node.to_string(), tx.clone());
        tokio::spawn(Arc::clone(self).run(node.to_string(), addr, rx));
        Ok(tx)
    }

    /// One connection's life: connect, then write requests and read answers until it fails.
    async fn run(
        self: Arc<Self>,
        node: String,
        addr: SocketAddr,
        mut queue: mpsc::UnboundedReceiver<(PeerMsg, Waiter)>,
    ) {
        let conn = ferry_wire::Connection::connect(
            addr,
            &self.secret,
            ferry_wire::Role::Messages,
            ferry_wire::Mode::Encrypted,
            &self.node,
            CONNECT_TIMEOUT,
        )
        .await;
        let conn = match conn {
            Ok(c) if c.peer_node() == node => c,
            Ok(c) => {
                warn!(%node, %addr, answers_as = c.peer_node(), "wrong node at that address");
                self.fail(&node, queue, "wrong node at that address").await;
                return;
            }
            Err(e) => {
                debug!(%node, error = %e, "messages connection");
                self.fail(&node, queue, &e.to_string()).await;
                return;
            }
        };
        let (mut tx, mut rx) = conn.into_split();
        let waiting: Arc<Mutex<HashMap<u64, Waiter>>> = Arc::default();
        let mut reader = {
            let waiting = Arc::clone(&waiting);
            tokio::spawn(async move {
                while let Ok(a) = rx.recv_msg::<Numbered<PeerAnswer>>().await {
                    let w = waiting.lock().ok().and_then(|mut w| w.remove(&a.n));
                    if let Some(w) = w {
                        let _ = w.send(Ok(a.body));
                    }
                }
            })
        };
        let mut n = 0u64;
        while let Some((msg, waiter)) = tokio::select! {
            m = queue.recv() => m,
            // The reader ends when the connection fails.
            _ = &mut reader => None,
        } {
            n += 1;
            if let Ok(mut w) = waiting.lock() {
                w.insert(n, waiter);
            }
            if let Err(e) = tx.send_msg(&Numbered { n, body: msg }).await {
                debug!(%node, error = %e, "messages connection lost");
                break;
            }
        }
        reader.abort();
        self.forget(&node);
        // Whatever is still unanswered fails: the callers retry on a new connection.
        if let Ok(mut w) = waiting.lock() {
            for (_, waiter) in w.drain() {
                let _ = waiter.send(Err(format!("connection to {node} lost")));
            }
        }
        self.fail(&node, queue, "connection lost").await;
    }

    async fn fail(
        &self,
        node: &str,
        mut queue: mpsc::UnboundedReceiver<(PeerMsg, Waiter)>,
        why: &str,
    ) {
        self.forget(node);
        queue.close();
        while let Some((_, waiter)) = queue.recv().await {
            let _ = waiter.send(Err(format!("{node}: {why}")));
        }
    }
}

/// Serves one incoming `messages` connection: every request is handled in its own task (a
/// delivery to a link in transit waits without holding up the others).
pub async fn serve(service: Arc<super::Service>, conn: ferry_wire::Connection) {
    let peer = conn.peer_node().to_string();
    let (mut tx, mut rx) = conn.into_split();
    let (answers, mut out) = mpsc::unbounded_channel::<Numbered<PeerAnswer>>();
    let writer = tokio::spawn(async move {
        while let Some(a) = out.recv().await {
            if tx.send_msg(&a).await.is_err() {
                break;
            }
        }
    });
    while let Ok(req) = rx.recv_msg::<Numbered<PeerMsg>>().await {
        let service = Arc::clone(&service);
        let answers = answers.clone();
        tokio::spawn(async move {
            let body = service.answer(req.body).await;
            let _ = answers.send(Numbered { n: req.n, body });
        });
    }
    debug!(%peer, "messages connection closed");
    drop(answers);
    let _ = writer.await;
}
