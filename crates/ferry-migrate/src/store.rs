//! The page store ("file server"): a third party that holds a migrating process's pages, so
//! that the old host can drop out before the new one has them all.
//!
//! A store is a directory (local disk, or a shared mount such as NFS) holding one file per
//! migration, in the format of `pages.img` (header, then the pages in run order, see
//! [`crate::pages::PageMap`]). A ferry daemon in page-store role serves the same files over
//! the network. Writers append in order and report how far they got, so that readers know
//! which pages are already there.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ferry_image::PagesHeader;
use ferry_image::format::{PAGES_HEADER_LEN, PageHasher};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("page store {}: {detail}", path.display())]
    Io { path: PathBuf, detail: String },
    #[error("page store: {0:?} is not a valid migration id")]
    BadId(String),
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
