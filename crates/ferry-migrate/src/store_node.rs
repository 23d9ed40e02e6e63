//! A page store on another host: a ferry daemon in page-store role keeps the files of a
//! [`DirStore`] and serves them to the cluster over authenticated `store` connections.
//!
//! One connection does one thing: write one migration's pages (`Put`, page frames whose
//! address is their stream offset, `Sync`…, `Finish`), or read pages (`Get`, answered with
//! one page frame), or remove a file. Every request that needs an answer gets exactly one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use ferry_wire::{ClusterSecret, Connection, Mode, Received, Receiver, Role, Sender};

use crate::protocol::tag;
use crate::store::{DirStore, StoreError, StoreReader, StoreWriter};

/// Requests to a page-store node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToStore {
    /// Starts the file of migration `id`; page frames follow, in stream order.
    Put { id: String, image_id: u64 },
    /// Makes what was sent durable; answered with `Synced`.
    Sync,
    /// Completes the file (header, sync); answered with `Finished`.
    Finish,
    /// `len` bytes at stream offset `offset` of migration `id`: answered with one page frame
    /// (address = offset), or `NotYet` / `Failed`.
    Get { id: String, offset: u64, len: u64 },
    /// Removes the file of migration `id`; answered with `Removed`.
    Remove { id: String },
}

/// Answers of a page-store node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromStore {
    Synced {
        upto: u64,
    },
    Finished {
        bytes: u64,
    },
    Removed,
    /// The pages asked for are not written yet.
    NotYet,
    Failed {
        reason: String,
    },
}

/// How to reach a page-store node.
#[derive(Debug, Clone)]
pub struct NodeStore {
    /// The store node's name and address.
    pub name: String,
    pub addr: SocketAddr,
    /// This node's name and the cluster secret, to authenticate.
    pub local_node: String,
    pub secret: ClusterSecret,
    /// Encrypt page traffic (authentication is always on).
    pub encrypt: bool,
    pub timeout: Duration,
}

fn lost(store: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote {
        node: store.to_string(),
        detail: e.to_string(),
    }
}

impl NodeStore {
    async fn connect(&self) -> Result<(Sender, Receiver), StoreError> {
        let mode = if self.encrypt {
            Mode::Encrypted
        } else {
            Mode::Plain
        };
        let conn = Connection::connect(
            self.addr,
            &self.secret,
            Role::Store,
            mode,
            &self.local_node,
            self.timeout,
        )
        .await
        .map_err(|e| lost(&self.name, e))?;
        Ok(conn.into_split())
    }

    /// Sends `req` and waits for the answer.
    async fn ask(
        &self,
        tx: &mut Sender,
        rx: &mut Receiver,
        req: &ToStore,
    ) -> Result<FromStore, StoreError> {
        tx.send_msg(req).await.map_err(|e| lost(&self.name, e))?;
        match tokio::time::timeout(self.timeout, rx.recv_msg::<FromStore>()).await {
            Ok(Ok(FromStore::Failed { reason })) => Err(lost(&self.name, reason)),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(lost(&self.name, e)),
            Err(_) => Err(lost(
                &self.name,
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }

    pub async fn create(&self, id: &str, image_id: u64) -> Result<NodeWriter, StoreError> {
        let (mut tx, rx) = self.connect().await?;
        tx.send_msg(&ToStore::Put {
            id: id.to_string(),
            image_id,
        })
        .await
        .map_err(|e| lost(&self.name, e))?;
        Ok(NodeWriter {
            store: self.clone(),
            tx,
            rx,
            written: 0,
        })
    }

    pub async fn reader(&self, id: &str) -> Result<NodeReader, StoreError> {
        let (tx, rx) = self.connect().await?;
        Ok(NodeReader {
            store: self.clone(),
            id: id.to_string(),
            tx,
            rx,
            buf: Vec::new(),
        })
    }

    pub async fn remove(&self, id: &str) -> Result<(), StoreError> {
        let (mut tx, mut rx) = self.connect().await?;
        let req = ToStore::Remove { id: id.to_string() };
        match self.ask(&mut tx, &mut rx, &req).await? {
            FromStore::Removed => Ok(()),
            other => Err(lost(&self.name, format!("unexpected answer {other:?}"))),
        }
    }
}

/// Writes one migration's pages to a page-store node.
pub struct NodeWriter {
    store: NodeStore,
    tx: Sender,
    rx: Receiver,
    written: u64,
}

impl NodeWriter {
    pub async fn append(&mut self, data: &[u8]) -> Result<(), StoreError> {
        for part in data.chunks(ferry_wire::MAX_PAGES_PAYLOAD) {
            self.tx
                .send_pages(self.written, tag::STREAM, part)
                .await
                .map_err(|e| lost(&self.store.name, e))?;
            self.written += part.len() as u64;
        }
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub async fn sync(&mut self) -> Result<(), StoreError> {
        match self
            .store
            .ask(&mut self.tx, &mut self.rx, &ToStore::Sync)
            .await?
        {
            FromStore::Synced { upto } if upto == self.written => Ok(()),
            other => Err(lost(
                &self.store.name,
                format!("sync answered {other:?}, {} bytes sent", self.written),
            )),
        }
    }

    pub async fn finish(mut self) -> Result<u64, StoreError> {
        match self
            .store
            .ask(&mut self.tx, &mut self.rx, &ToStore::Finish)
            .await?
        {
            FromStore::Finished { bytes } if bytes == self.written => Ok(bytes),
            other => Err(lost(
                &self.store.name,
                format!("finish answered {other:?}, {} bytes sent", self.written),
            )),
        }
    }
}

/// Reads one migration's pages from a page-store node.
pub struct NodeReader {
    store: NodeStore,
    id: String,
    tx: Sender,
    rx: Receiver,
    buf: Vec<u8>,
}

impl NodeReader {
    pub async fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<(), StoreError> {
        let req = ToStore::Get {
            id: self.id.clone(),
            offset,
            len: out.len() as u64,
        };
        self.tx
            .send_msg(&req)
            .await
            .map_err(|e| lost(&self.store.name, e))?;
        if self.buf.len() < ferry_wire::MAX_PAGES_PAYLOAD {
            self.buf.resize(ferry_wire::MAX_PAGES_PAYLOAD, 0);
        }
        let answer =
            tokio::time::timeout(self.store.timeout, self.rx.recv::<FromStore>(&mut self.buf))
                .await
                .map_err(|_| lost(&self.store.name, "no answer"))?
                .map_err(|e| lost(&self.store.name, e))?;
        match answer {
            Received::Pages(h) if h.addr == offset && h.len as usize == out.len() => {
                out.copy_from_slice(&self.buf[..out.len()]);
                Ok(())
            }
            Received::Msg(FromStore::NotYet) => Err(StoreError::NotYet {
                path: format!("{}:{}", self.store.name, self.id).into(),
                offset,
                len: out.len() as u64,
            }),
            Received::Msg(FromStore::Failed { reason }) => Err(lost(&self.store.name, reason)),
            Received::Pages(h) => Err(lost(
                &self.store.name,
                format!(
                    "asked for {} bytes at {offset}, got {} at {}",
                    out.len(),
                    h.len,
                    h.addr
                ),
            )),
            Received::Msg(other) => Err(lost(
                &self.store.name,
                format!("unexpected answer {other:?}"),
            )),
        }
    }
}

/// Serves one `store` connection from a peer with the files of `store`.
pub async fn serve(store: DirStore, conn: Connection) {
    let peer = conn.peer_node().to_string();
    let (mut tx, mut rx) = conn.into_split();
    let mut buf = vec![0u8; ferry_wire::MAX_PAGES_PAYLOAD];
    let mut writer: Option<StoreWriter> = None;
    let mut readers: HashMap<String, StoreReader> = HashMap::new();
    loop {
        let received = match rx.recv::<ToStore>(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(%peer, error = %e, "store connection ended");
                break;
            }
        };
        let answer = match received {
            Received::Pages(h) => {
                let Some(w) = writer.as_mut() else {
                    warn!(%peer, "pages without a Put: dropping the connection");
                    break;
                };
                if h.addr != w.written() {
                    warn!(%peer, offset = h.addr, written = w.written(), "pages out of order: dropping the connection");
                    break;
                }
                match w.append(&buf[..h.len as usize]) {
                    Ok(()) => continue,
                    // The writer reads this at its next Sync, then finds the connection gone.
                    Err(e) => {
                        warn!(%peer, error = %e, "writing pages");
                        let _ = tx
                            .send_msg(&FromStore::Failed {
                                reason: e.to_string(),
                            })
                            .await;
                        break;
                    }
                }
            }
            Received::Msg(ToStore::Put { id, image_id }) => match store.create(&id, image_id) {
                Ok(w) => {
                    writer = Some(w);
                    continue;
                }
                Err(e) => {
                    warn!(%peer, error = %e, "starting a page file");
                    FromStore::Failed {
                        reason: e.to_string(),
                    }
                }
            },
            Received::Msg(ToStore::Sync) => match writer.as_ref() {
                Some(w) => match tokio::task::block_in_place(|| w.sync()) {
                    Ok(()) => FromStore::Synced { upto: w.written() },
                    Err(e) => FromStore::Failed {
                        reason: e.to_string(),
                    },
                },
                None => FromStore::Failed {
                    reason: "nothing is being written".into(),
                },
            },
            Received::Msg(ToStore::Finish) => match writer.take() {
                Some(w) => match tokio::task::block_in_place(|| w.finish()) {
                    Ok(bytes) => FromStore::Finished { bytes },
                    Err(e) => FromStore::Failed {
                        reason: e.to_string(),
                    },
                },
                None => FromStore::Failed {
                    reason: "nothing is being written".into(),
                },
            },
            Received::Msg(ToStore::Get { id, offset, len }) => {
                if len as usize > ferry_wire::MAX_PAGES_PAYLOAD {
                    FromStore::Failed {
                        reason: format!(
                            "{len} bytes asked, at most {} at once",
                            ferry_wire::MAX_PAGES_PAYLOAD
                        ),
                    }
                } else {
                    let reader = match readers.get(&id) {
                        Some(r) => Ok(r),
                        None => store
                            .reader(&id)
                            .map(|r| &*readers.entry(id.clone()).or_insert(r)),
                    };
                    let data = &mut buf[..len as usize];
                    match reader.and_then(|r| r.read_at(offset, data)) {
                        Ok(()) => {
                            if tx.send_pages(offset, tag::STREAM, data).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        Err(StoreError::NotYet { .. }) => FromStore::NotYet,
                        Err(e) => FromStore::Failed {
                            reason: e.to_string(),
                        },
                    }
                }
            }
            Received::Msg(ToStore::Remove { id }) => {
                readers.remove(&id);
                match store.remove(&id) {
                    Ok(()) => FromStore::Removed,
                    Err(e) => FromStore::Failed {
                        reason: e.to_string(),
                    },
                }
            }
        };
        if tx.send_msg(&answer).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_wire::{AcceptConfig, Listener};

    /// A real store node on loopback: pages written through the node are read back by offset,
    /// an unflushed offset is "not yet", and remove deletes the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_round_trip_through_a_store_node() {
        let dir = tempfile::tempdir().unwrap();
        let served = DirStore::open(dir.path()).unwrap();
        let secret = ClusterSecret::from_bytes([7; ferry_wire::SECRET_LEN]);
        let mut listener = Listener::bind("127.0.0.1:0", secret.clone(), AcceptConfig::new("s"))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok(conn) = listener.accept().await {
                tokio::spawn(serve(served.clone(), conn));
            }
        });
        let store = NodeStore {
            name: "s".into(),
            addr,
            local_node: "a".into(),
            secret,
            encrypt: true,
            timeout: Duration::from_secs(5),
        };
        let mut w = store.create("a-1-2", 9).await.unwrap();
        w.append(&[1u8; 8192]).await.unwrap();
        w.sync().await.unwrap();
        let mut r = store.reader("a-1-2").await.unwrap();
        let mut buf = vec![0u8; 4096];
        r.read_at(4096, &mut buf).await.unwrap();
        assert_eq!(buf, vec![1u8; 4096]);
        assert!(matches!(
            r.read_at(8192, &mut buf).await,
            Err(StoreError::NotYet { .. })
        ));
        w.append(&[2u8; 4096]).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 12288);
        r.read_at(8192, &mut buf).await.unwrap();
        assert_eq!(buf, vec![2u8; 4096]);
        store.remove("a-1-2").await.unwrap();
        assert!(!dir.path().join("a-1-2.pages").exists());
    }
}
