//! The page store ("file server"): a third party that holds a migrating process's pages, so
//! that the old host can drop out before the new one has them all.
//!
//! A store is a directory (local disk, or a shared mount such as NFS) holding one file per
//! migration, in the format of `pages.img` (header, then the pages in run order, see
//! [`crate::pages::PageMap`]). A ferry daemon in page-store role serves the same files over
//! the network ([`crate::store_node`]); [`PageStore`] is either. Writers append in order and report how far they got, so that readers know
//! which pages are already there.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ferry_image::PagesHeader;
use ferry_image::format::{PAGES_HEADER_LEN, PageHasher};

use crate::protocol::StoreRef;
use crate::store_node::{NodeReader, NodeStore, NodeWriter};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("page store {}: {detail}", path.display())]
    Io { path: PathBuf, detail: String },
    #[error("page store: {0:?} is not a valid migration id")]
    BadId(String),
    #[error("page store on {node}: {detail}")]
    Remote { node: String, detail: String },
    #[error("page store {}: pages at offset {offset} (+{len}) not written yet", path.display())]
    NotYet {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// A page store in a directory.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

fn check_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadId(id.to_string()))
    }
}

impl DirStore {
    /// Uses `root`, creating it (mode 0700: pages are process memory) if missing.
    pub fn open(root: &Path) -> Result<DirStore, StoreError> {
        fs::create_dir_all(root).map_err(io(root))?;
        let meta = fs::metadata(root).map_err(io(root))?;
        if !meta.is_dir() {
            return Err(StoreError::Io {
                path: root.to_path_buf(),
                detail: "not a directory".into(),
            });
        }
        Ok(DirStore {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, id: &str) -> Result<PathBuf, StoreError> {
        check_id(id)?;
        Ok(self.root.join(format!("{id}.pages")))
    }

    /// Starts the file of migration `id` (replacing a leftover one).
    pub fn create(&self, id: &str, image_id: u64) -> Result<StoreWriter, StoreError> {
        let path = self.path(id)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(&[0u8; PAGES_HEADER_LEN as usize])
            .map_err(io(&path))?;
        Ok(StoreWriter {
            path,
            file,
            image_id,
            written: 0,
            hasher: PageHasher::new(),
        })
    }

    /// Opens the file of migration `id` for reading.
    pub fn reader(&self, id: &str) -> Result<StoreReader, StoreError> {
        let path = self.path(id)?;
        let file = File::open(&path).map_err(io(&path))?;
        Ok(StoreReader { path, file })
    }

    /// Removes the file of migration `id` (its process no longer needs it).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path(id)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

/// A page store, wherever it is.
#[derive(Debug, Clone)]
pub enum PageStore {
    Dir(DirStore),
    Node(NodeStore),
}

impl PageStore {
    /// How peers name this store.
    pub fn describe(&self) -> StoreRef {
        match self {
            PageStore::Dir(d) => StoreRef::Dir(d.root().display().to_string()),
            PageStore::Node(n) => StoreRef::Node {
                name: n.name.clone(),
                addr: n.addr.to_string(),
            },
        }
    }

    pub async fn create(&self, id: &str, image_id: u64) -> Result<PageWriter, StoreError> {
        Ok(match self {
            PageStore::Dir(d) => PageWriter::Dir(Box::new(d.create(id, image_id)?)),
            PageStore::Node(n) => PageWriter::Node(Box::new(n.create(id, image_id).await?)),
        })
    }

    pub async fn reader(&self, id: &str) -> Result<PageReader, StoreError> {
        Ok(match self {
            PageStore::Dir(d) => PageReader::Dir(d.reader(id)?),
            PageStore::Node(n) => PageReader::Node(Box::new(n.reader(id).await?)),
        })
    }

    pub async fn remove(&self, id: &str) -> Result<(), StoreError> {
        match self {
            PageStore::Dir(d) => d.remove(id),
            PageStore::Node(n) => n.remove(id).await,
        }
    }
}

/// What a destination needs to open the store a source names.
#[derive(Debug, Clone)]
pub struct StoreAccess {
    /// This node's name and the cluster secret, for store nodes.
    pub local_node: String,
    pub secret: ferry_wire::ClusterSecret,
    pub encrypt: bool,
    pub timeout: std::time::Duration,
}

impl StoreAccess {
    /// The store `r` names: a directory this host sees too, or a store node.
    pub fn open(&self, r: &StoreRef) -> Result<PageStore, StoreError> {
        match r {
            StoreRef::Dir(d) => Ok(PageStore::Dir(DirStore::open(Path::new(d))?)),
            StoreRef::Node { name, addr } => {
                let addr = addr.parse().map_err(|_| StoreError::Remote {
                    node: name.clone(),
                    detail: format!("bad address {addr:?}"),
                })?;
                Ok(PageStore::Node(NodeStore {
                    name: name.clone(),
                    addr,
                    local_node: self.local_node.clone(),
                    secret: self.secret.clone(),
                    encrypt: self.encrypt,
                    timeout: self.timeout,
                }))
            }
        }
    }
}

/// Writes one migration's pages, in stream order.
pub enum PageWriter {
    Dir(Box<StoreWriter>),
    Node(Box<NodeWriter>),
}

impl PageWriter {
    pub async fn append(&mut self, data: &[u8]) -> Result<(), StoreError> {
        match self {
            PageWriter::Dir(w) => w.append(data),
            PageWriter::Node(w) => w.append(data).await,
        }
    }

    pub fn written(&self) -> u64 {
        match self {
            PageWriter::Dir(w) => w.written(),
            PageWriter::Node(w) => w.written(),
        }
    }

    /// Makes every page before `written()` durable.
    pub async fn sync(&mut self) -> Result<(), StoreError> {
        match self {
            PageWriter::Dir(w) => w.sync(),
            PageWriter::Node(w) => w.sync().await,
        }
    }

    pub async fn finish(self) -> Result<u64, StoreError> {
        match self {
            PageWriter::Dir(w) => (*w).finish(),
            PageWriter::Node(w) => (*w).finish().await,
        }
    }
}

/// Reads one migration's pages at stream offsets.
pub enum PageReader {
    Dir(StoreReader),
    Node(Box<NodeReader>),
}

impl PageReader {
    pub async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        match self {
            PageReader::Dir(r) => r.read_at(offset, buf),
            PageReader::Node(r) => r.read_at(offset, buf).await,
        }
    }
}

/// Appends pages in stream order.
pub struct StoreWriter {
    path: PathBuf,
    file: File,
    image_id: u64,
    written: u64,
    hasher: PageHasher,
}

impl StoreWriter {
    pub fn append(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.file.write_all(data).map_err(io(&self.path))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes of page data written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes what was written durable: readers may rely on every page before `written()`.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io(&self.path))
    }

    /// Writes the header and syncs: the file is complete.
    pub fn finish(mut self) -> Result<u64, StoreError> {
        let header = PagesHeader {
            image_id: self.image_id,
            data_len: self.written,
            data_hash: std::mem::take(&mut self.hasher).digest(),
        };
        self.file
            .write_all_at(&header.encode(), 0)
            .and_then(|_| self.file.sync_all())
            .map_err(io(&self.path))?;
        Ok(self.written)
    }
}

/// Reads pages of one migration at stream offsets.
pub struct StoreReader {
    path: PathBuf,
    file: File,
}

impl StoreReader {
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.file
            .read_exact_at(buf, PAGES_HEADER_LEN + offset)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    StoreError::NotYet {
                        path: self.path.clone(),
                        offset,
                        len: buf.len() as u64,
                    }
                } else {
                    io(&self.path)(e)
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_then_reads_pages_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(&dir.path().join("store")).unwrap();
        let mut w = store.create("n1-42", 7).unwrap();
        let a = vec![1u8; 4096];
        let b = vec![2u8; 8192];
        w.append(&a).unwrap();
        let r = store.reader("n1-42").unwrap();
        let mut buf = vec![0u8; 4096];
        r.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, a);
        assert!(matches!(
            r.read_at(4096, &mut buf),
            Err(StoreError::NotYet { .. })
        ));
        w.append(&b).unwrap();
        w.sync().unwrap();
        r.read_at(8192, &mut buf).unwrap();
        assert_eq!(buf, vec![2u8; 4096]);
        assert_eq!(w.finish().unwrap(), 12288);
        let bytes = fs::read(store.root().join("n1-42.pages")).unwrap();
        let h = PagesHeader::decode(&bytes, bytes.len() as u64).unwrap();
        assert_eq!((h.image_id, h.data_len), (7, 12288));
        store.remove("n1-42").unwrap();
        store.remove("n1-42").unwrap();
    }

    #[test]
    fn refuses_ids_that_could_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        for bad in ["../x", "a/b", "", ".hidden", "x\0"] {
            assert!(
                matches!(store.create(bad, 1), Err(StoreError::BadId(_))),
                "{bad:?}"
            );
        }
    }
}
