//! The daemon: one per host. Serves the local CLI on a Unix socket and peer daemons on TCP.
//!
//! Every request runs in its own task; migrations out and in are driven by
//! `ferry_migrate::{source, dest}`, with their ptrace-bound parts on threads of their own.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, mpsc};
use tracing::{error, info, warn};

use crate::config::{Config, PageStore, Role};
use crate::control::{Event, FailureKind, NodeStatus, Request};
use crate::gossip::Gossip;
use crate::jobs::Jobs;
use crate::peer::{Counters, PeerReply, PeerRequest};
use crate::sharing::Sharing;
use ferry_migrate::store::{DirStore, PageStore as PageStoreHandle, StoreAccess};
use ferry_migrate::store_node::NodeStore;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("control socket {}: {detail}", path.display())]
    Socket {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("{0}")]
    Setup(String),
}

/// What every task of the daemon shares.
pub struct Shared {
    pub config: Config,
    pub history: Mutex<Vec<ferry_migrate::MigrationReport>>,
    pub source: Arc<ferry_migrate::source::SourceConfig>,
    pub dest: Arc<ferry_migrate::dest::Dest>,
    pub jobs: Arc<Jobs>,
    pub gossip: Gossip,
    pub sharing: Arc<Sharing>,
    pub counters: Counters,
    pub messages: Arc<crate::messages::Service>,
}

/// How long a peer may stay silent during a migration.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Memory a destination keeps free when it accepts a process.
const RESERVE_BYTES: u64 = 64 << 20;

/// Nice value of the daemon's threads: on a loaded host it must still freeze, copy and answer
/// at once (the processes it starts or restores get their own nice value back).
pub const DAEMON_NICE: i32 = -10;

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    // Before any thread exists, so that every thread of the runtime inherits it.
    if let Err(e) = ferry_sys::host::set_nice(0, DAEMON_NICE) {
        warn!(error = %e, "cannot raise the daemon's priority; migrations off a loaded host will be slow");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry-daemon")
        .build()
        .map_err(|e| DaemonError::Setup(format!("starting the runtime: {e}")))?;
    rt.block_on(serve(config))
}

fn bind_control(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |detail: String| DaemonError::Socket {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    // A socket left by a daemon that died: remove it, unless one is still listening there.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("another daemon is listening there".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(e.to_string()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    // Anyone may connect; the daemon checks each caller's credentials per request.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

async fn serve(config: Config) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        DaemonError::Setup(format!(
            "state directory {}: {e}",
            config.state_dir.display()
        ))
    })?;
    let secret = ferry_wire::ClusterSecret::load(&config.secret_file)
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    let (source_store, served) = page_stores(&config, &secret)?;
    let sharing = Arc::new(Sharing::default());
    let admission: ferry_migrate::dest::Admission = {
        let sharing = Arc::clone(&sharing);
        let config = config.clone();
        Arc::new(move |_offer: &ferry_migrate::protocol::Offer| {
            sharing.refusal(&config).map_or(Ok(()), Err)
        })
    };
    let (dest_events, mut dest_rx) = mpsc::unbounded_channel();
    let jobs = Arc::new(Jobs::new(&config.node, &config.state_dir));
    let seeds: Vec<std::net::SocketAddr> = config.peers.iter().map(|p| p.addr).collect();
    let gossip = Gossip::start(&config.node, config.gossip, secret.cluster_name(), seeds)
        .await
        .map_err(DaemonError::Setup)?;
    let source = Arc::new(ferry_migrate::source::SourceConfig {
        node: config.node.clone(),
        secret: secret.clone(),
        encrypt_pages: config.encrypt_pages,
        store: source_store,
        precopy: Default::default(),
        timeout: PEER_TIMEOUT,
    });
    let dest = ferry_migrate::dest::Dest::new(ferry_migrate::dest::DestConfig {
        node: config.node.clone(),
        state_dir: config.state_dir.clone(),
        store_access: StoreAccess {
            local_node: config.node.clone(),
            secret: secret.clone(),
            encrypt: config.encrypt_pages,
            timeout: PEER_TIMEOUT,
        },
        timeout: PEER_TIMEOUT,
        reserve_bytes: RESERVE_BYTES,
        page_store_only: config.role == Role::PageStore,
        memory_limit: config.memory_limit,
        admission: Some(admission),
        events: Some(dest_events),
    });
    let mut peers = ferry_wire::Listener::bind(
        config.listen,
        secret.clone(),
        ferry_wire::AcceptConfig::new(config.node.clone()),
    )
    .await
    .map_err(|e| DaemonError::Setup(format!("listening on {}: {e}", config.listen)))?;
    let control = bind_control(&config.socket)?;
    let messages = crate::messages::Service::new(&config.node, secret.clone());
    let message_socket = crate::messages::session::bind(ferry_msg::protocol::DEFAULT_SOCKET)
        .map_err(|e| {
            DaemonError::Setup(format!(
                "message socket @{}: {e} (is another ferry daemon running in this network namespace?)",
                ferry_msg::protocol::DEFAULT_SOCKET
            ))
        })?;
    messages.load(&crate::messages::saved_path(&config.state_dir));
    jobs.set_messages(Arc::clone(&messages));
    tokio::spawn(crate::messages::session::accept_loop(
        Arc::clone(&messages),
        message_socket,
    ));
    info!(node = %config.node, socket = %config.socket.display(), listen = %config.listen, "ferry daemon up");
    let shared = Arc::new(Shared {
        config,
        history: Mutex::new(Vec::new()),
        source,
        dest: Arc::clone(&dest),
        jobs,
        gossip,
        sharing,
        counters: Counters::default(),
        messages,
    });
    tokio::spawn(crate::sharing::track_addresses(Arc::clone(&shared)));
    tokio::spawn(crate::sharing::measure_and_publish(Arc::clone(&shared)));
    tokio::spawn(crate::sharing::balance(Arc::clone(&shared)));
    tokio::spawn({
        let jobs = Arc::clone(&shared.jobs);
        let sharing = Arc::clone(&shared.sharing);
        async move {
            while let Some(ev) = dest_rx.recv().await {
                match ev {
                    ferry_migrate::dest::DestEvent::Started { from, pid, tag, .. } => {
                        let comm = ferry_sys::proc::status(ferry_sys::Pid::from_raw(pid))
                            .map(|s| s.name)
                            .unwrap_or_default();
                        jobs.adopt(pid, tag.as_deref(), &from, &comm);
                        // Bids and claims right after must see it.
                        sharing.count_arrival();
                    }
                    ferry_migrate::dest::DestEvent::Exited { pid, status, cpu } => {
                        jobs.ended(pid, status, cpu)
                    }
                }
            }
        }
    });
    tokio::spawn({
        let dest = Arc::clone(&dest);
        async move { dest.warm_up().await }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DaemonError::Setup(format!("SIGTERM handler: {e}")))?;
    loop {
        tokio::select! {
            accepted = control.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move { control_session(shared, stream).await });
                }
                Err(e) => warn!(error = %e, "control socket accept"),
            },
            accepted = peers.accept() => match accepted {
                Ok(conn) if conn.role() == ferry_wire::Role::Store => match served.clone() {
                    Some(store) => {
                        tokio::spawn(ferry_migrate::store_node::serve(store, conn));
                    }
                    None => warn!(peer = conn.peer_node(), "a page-store connection, but this node keeps no page store"),
                },
                Ok(conn) if conn.role() == ferry_wire::Role::Cluster => {
                    tokio::spawn(peer_session(Arc::clone(&shared), conn));
                }
                Ok(conn) if conn.role() == ferry_wire::Role::Messages => {
                    tokio::spawn(crate::messages::peers::serve(Arc::clone(&shared.messages), conn));
                }
                Ok(conn) => {
                    let dest = Arc::clone(&shared.dest);
                    tokio::spawn(async move { dest.handle(conn).await });
                }
                // A peer without the secret, or a broken handshake: it got nothing.
                Err(ferry_wire::AcceptError::Handshake { peer, source }) => {
                    warn!(%peer, error = %source, "refused a peer");
                }
                Err(e) => {
                    warn!(error = %e, "peer listener");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = std::fs::remove_file(&shared.config.socket);
    // Processes keep their endpoints: they reconnect to the next daemon, which takes these.
    if let Err(e) = shared
        .messages
        .save(&crate::messages::saved_path(&shared.config.state_dir))
    {
        warn!(error = %e, "saving message links: processes lose them");
    }
    info!(node = %shared.config.node, "ferry daemon down");
    Ok(())
}

/// One load-sharing request from a peer daemon.
async fn peer_session(shared: Arc<Shared>, mut conn: ferry_wire::Connection) {
    let peer = conn.peer_node().to_string();
    let req = match tokio::time::timeout(PEER_TIMEOUT, conn.recv_msg::<PeerRequest>()).await {
        Ok(Ok(r)) => r,
        other => {
            warn!(%peer, ?other, "cluster connection without a request");
            return;
        }
    };
    let reply: PeerReply = crate::sharing::answer(Arc::clone(&shared), &peer, req).await;
    if let Err(e) = conn.send_msg(&reply).await {
        warn!(%peer, error = %e, "answering a cluster request");
    }
}

/// The store this node flushes to as a source, and the directory it serves to peers (a
/// page-store node keeps its pages in `state_dir/store` unless told otherwise).
fn page_stores(
    config: &Config,
    secret: &ferry_wire::ClusterSecret,
) -> Result<(Option<PageStoreHandle>, Option<DirStore>), DaemonError> {
    let setup = |e: ferry_migrate::store::StoreError| DaemonError::Setup(e.to_string());
    let dir = match (&config.page_store, config.role) {
        (Some(PageStore::Dir(d)), _) => Some(d.clone()),
        (Some(PageStore::Node(n)), Role::PageStore) => {
            return Err(DaemonError::Setup(format!(
                "a page-store node keeps its own pages: page_store = \"node:{n}\" makes no sense here"
            )));
        }
        (_, Role::PageStore) => Some(config.state_dir.join("store")),
        _ => None,
    };
    let served = dir.map(|d| DirStore::open(&d)).transpose().map_err(setup)?;
    let flush_to = match &config.page_store {
        Some(PageStore::Dir(_)) => served.clone().map(PageStoreHandle::Dir),
        Some(PageStore::Node(name)) => {
            let peer = config
                .peers
                .iter()
                .find(|p| &p.name == name)
                .ok_or_else(|| {
                    DaemonError::Setup(format!(
                        "page_store = \"node:{name}\", but {name} is not among the peers"
                    ))
                })?;
            Some(PageStoreHandle::Node(NodeStore {
                name: name.clone(),
                addr: peer.addr,
                local_node: config.node.clone(),
                secret: secret.clone(),
                encrypt: config.encrypt_pages,
                timeout: PEER_TIMEOUT,
            }))
        }
        None => None,
    };
    Ok((flush_to, served))
}

/// One CLI request: read it, check who asks, answer with events.
async fn control_session(shared: Arc<Shared>, stream: UnixStream) {
    let caller = ferry_sys::host::peer_credentials(&stream);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let request = match lines.next_line().await {
        Ok(Some(line)) => serde_json::from_str::<Request>(&line),
        _ => return,
    };
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let writer = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let Ok(mut line) = serde_json::to_string(&event) else {
                continue;
            };
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let fail = |kind, message: String| Event::Failed { kind, message };
    match (request, caller) {
        (Err(e), _) => {
            let _ = tx
                .send(fail(FailureKind::Error, format!("bad request: {e}")))
                .await;
        }
        (_, Err(e)) => {
            error!(error = %e, "control socket: no peer credentials");
        }
        (Ok(Request::Status), Ok(_)) => {
            let status = NodeStatus {
                node: shared.config.node.clone(),
                listen: shared.config.listen.to_string(),
                peers: shared.config.peers.iter().map(|p| p.name.clone()).collect(),
                migrations: shared.history.lock().await.clone(),
            };
            let _ = tx.send(Event::Status { status }).await;
        }
        (Ok(Request::Migrate { pid, to, algorithm }), Ok((_, uid, _))) => {
            crate::migrate::handle(shared, uid, pid, to, algorithm, tx.clone()).await;
        }
        (
            Ok(Request::Run {
                argv,
                cwd,
                env,
                stdout,
                stderr,
                on,
                policy,
            }),
            Ok((_, uid, gid)),
        ) => {
            let spec = crate::jobs::RunSpec {
                argv,
                cwd,
                env,
                uid,
                gid,
                stdout,
                stderr,
            };
            let ev = crate::commands::run(shared, (uid, gid), spec, on, policy).await;
            let _ = tx.send(ev).await;
        }
        (Ok(Request::Ps), Ok(_)) => {
            let _ = tx.send(crate::commands::ps(&shared).await).await;
        }
        (Ok(Request::Nodes), Ok(_)) => {
            let _ = tx.send(crate::commands::nodes(&shared).await).await;
        }
        (Ok(Request::Drain { node, on }), Ok((_, uid, _))) => {
            let req = PeerRequest::Drain { on };
            let _ = tx
                .send(crate::commands::set_flag(shared, uid, node, req).await)
                .await;
        }
        (Ok(Request::Owner { node, present }), Ok((_, uid, _))) => {
            let req = PeerRequest::Owner { present };
            let _ = tx
                .send(crate::commands::set_flag(shared, uid, node, req).await)
                .await;
        }
    }
    drop(tx);
    let _ = writer.await;
}
