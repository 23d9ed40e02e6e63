//! The image directory: `pages.img` then `core.img`, each written to a temporary name, synced
//! and renamed, so that a directory with a `core.img` always holds a complete image. Loading
//! checks every header, checksum and invariant before handing the image out.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_image::format::{PAGES_HEADER_LEN, PageHasher, verify_pages};
use ferry_image::validate::validate_in_tree;
use ferry_image::{
    PagesHeader, ProcessImage, TreeImage, decode_core, decode_tree, encode_core, encode_tree,
    validate_tree,
};
use ferry_sys::file::MappedFile;

use crate::pagecopy::PageSink;
use crate::{CheckpointError, ImageError};

pub const CORE_FILE: &str = "core.img";
pub const PAGES_FILE: &str = "pages.img";
/// The manifest of a process tree; its root's image is the directory's own.
pub const TREE_FILE: &str = "tree.img";

/// Where the image of tree member `pid` (not the root) lives.
pub fn member_dir(dir: &Path, pid: i32) -> PathBuf {
    dir.join(format!("pid-{pid}"))
}

/// Writes `tree.img` (to a temporary name, synced, renamed).
pub fn write_tree(dir: &Path, tree: &TreeImage) -> Result<(), CheckpointError> {
    let fail = |detail: String| CheckpointError::ImageDir {
        path: dir.to_path_buf(),
        detail: format!("{TREE_FILE}: {detail}"),
    };
    let bytes = encode_tree(tree).map_err(|e| fail(e.to_string()))?;
    let tmp = dir.join(format!("{TREE_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| fail(e.to_string()))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| fail(e.to_string()))?;
    fs::rename(&tmp, dir.join(TREE_FILE)).map_err(|e| fail(e.to_string()))
}

/// The tree manifest of an image directory, decoded and validated; `None` for the image of
/// a single process.
pub fn load_tree(dir: &Path) -> Result<Option<TreeImage>, ImageError> {
    let path = dir.join(TREE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let tree = decode_tree(&bytes).map_err(|e| ImageError::Format {
        error: e,
        path: path.clone(),
    })?;
    validate_tree(&tree).map_err(|e| ImageError::Invalid { error: e, path })?;
    Ok(Some(tree))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl PageSink for ImageWriter {
    fn write_pages(&mut self, data: &[u8]) -> Result<(), CheckpointError> {
        self.append(data)
    }
}

/// Writes one image directory. Dropping an unfinished writer removes what it wrote.
pub struct ImageWriter {
    dir: PathBuf,
    pages_tmp: PathBuf,
    pages: File,
    hasher: PageHasher,
    written: u64,
    finished: bool,
    created_dir: bool,
}

impl ImageWriter {
    /// Creates `dir` (or takes an existing empty one), reserving room for about `expected`
    /// bytes of page data (allocated now, before any process is frozen).
    pub fn create(dir: &Path, expected: u64) -> Result<ImageWriter, CheckpointError> {
        let bad = |detail: String| CheckpointError::ImageDir {
            path: dir.to_path_buf(),
            detail,
        };
        let mut created_dir = false;
        match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(bad("not empty; choose a new directory".into()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
                created_dir = true;
            }
            Err(e) => return Err(bad(e.to_string())),
        }
        let pages_tmp = dir.join(format!("{PAGES_FILE}.tmp"));
        let mut pages = File::create(&pages_tmp).map_err(|e| bad(e.to_string()))?;
        ferry_sys::file::preallocate(&pages, PAGES_HEADER_LEN + expected);
        // Placeholder header, rewritten once the length and hash are known.
        pages
            .write_all(&[0u8; PAGES_HEADER_LEN as usize])
            .map_err(|e| bad(e.to_string()))?;
        Ok(ImageWriter {
            dir: dir.to_path_buf(),
            pages_tmp,
            pages,
            hasher: PageHasher::new(),
            written: 0,
            finished: false,
            created_dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends page data (in the order of the page index).
    fn append(&mut self, data: &[u8]) -> Result<(), CheckpointError> {
        self.hasher.update(data);
        self.pages
            .write_all(data)
            .map_err(|e| CheckpointError::ImageDir {
                path: self.pages_tmp.clone(),
                detail: e.to_string(),
            })?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Records length and hash of the pages in `image`, syncs both files and publishes them.
    pub fn finish(mut self, image: &mut ProcessImage) -> Result<(), CheckpointError> {
        let dir = self.dir.clone();
        let fail = |detail: String| CheckpointError::ImageDir {
            path: dir.clone(),
            detail,
        };
        image.memory.pages.bytes = self.written;
        image.memory.pages.hash = std::mem::take(&mut self.hasher).digest();
        let header = PagesHeader {
            image_id: image.origin.image_id,
            data_len: self.written,
            data_hash: image.memory.pages.hash,
        };
        use std::os::unix::fs::FileExt;
        self.pages
            .write_all_at(&header.encode(), 0)
            .and_then(|_| self.pages.set_len(PAGES_HEADER_LEN + self.written))
            .and_then(|_| self.pages.sync_all())
            .map_err(|e| fail(format!("{PAGES_FILE}: {e}")))?;
        fs::rename(&self.pages_tmp, self.dir.join(PAGES_FILE))
            .map_err(|e| fail(format!("{PAGES_FILE}: {e}")))?;

        let core = encode_core(image).map_err(|e| fail(e.to_string()))?;
        let core_tmp = self.dir.join(format!("{CORE_FILE}.tmp"));
        let mut f = File::create(&core_tmp).map_err(|e| fail(format!("{CORE_FILE}: {e}")))?;
        f.write_all(&core)
            .and_then(|_| f.sync_all())
            .map_err(|e| fail(format!("{CORE_FILE}: {e}")))?;
        fs::rename(&core_tmp, self.dir.join(CORE_FILE))
            .map_err(|e| fail(format!("{CORE_FILE}: {e}")))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(e.to_string()))?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.pages_tmp);
            let _ = fs::remove_file(self.dir.join(PAGES_FILE));
            let _ = fs::remove_file(self.dir.join(format!("{CORE_FILE}.tmp")));
            if self.created_dir {
                let _ = fs::remove_dir(&self.dir);
            }
        }
    }
}

/// A verified image: decoded, validated, pages mapped and checked against their hash.
pub struct LoadedImage {
    pub image: ProcessImage,
    pub dir: PathBuf,
    pages: MappedFile,
}

impl LoadedImage {
    /// Loads and checks everything. Nothing about the image is trusted before this returns.
    pub fn open(dir: &Path) -> Result<LoadedImage, ImageError> {
        LoadedImage::open_in_tree(dir, &std::collections::HashSet::new())
    }

    /// [`LoadedImage::open`] for a member of a process tree, whose socket ends `elsewhere`
    /// have their other end in another member's image.
    pub fn open_in_tree(
        dir: &Path,
        elsewhere: &std::collections::HashSet<u64>,
    ) -> Result<LoadedImage, ImageError> {
        let core_path = dir.join(CORE_FILE);
        let pages_path = dir.join(PAGES_FILE);
        let core = fs::read(&core_path).map_err(io_err(&core_path))?;
        let image = decode_core(&core).map_err(|e| ImageError::Format {
            error: e,
            path: core_path.clone(),
        })?;
        validate_in_tree(&image, elsewhere).map_err(|e| ImageError::Invalid {
            error: e,
            path: core_path.clone(),
        })?;

        let pages = MappedFile::open(&pages_path).map_err(|e| ImageError::Io {
            path: pages_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let bytes = pages.bytes();
        let header =
            PagesHeader::decode(bytes, bytes.len() as u64).map_err(|e| ImageError::Format {
                error: e,
                path: pages_path.clone(),
            })?;
        if header.image_id != image.origin.image_id {
            return Err(ImageError::Format {
                error: ferry_image::FormatError::ImageIdMismatch {
                    expected: image.origin.image_id,
                    found: header.image_id,
                },
                path: pages_path,
            });
        }
        if header.data_len != image.memory.pages.bytes {
            return Err(ImageError::Format {
                error: ferry_image::FormatError::LengthMismatch {
                    file: "pages.img",
                    expected: image.memory.pages.bytes,
                    actual: header.data_len,
                },
                path: pages_path,
            });
        }
        let data = &bytes[PAGES_HEADER_LEN as usize..];
        verify_pages(data, image.memory.pages.hash).map_err(|e| ImageError::Format {
            error: e,
            path: pages_path.clone(),
        })?;
        Ok(LoadedImage {
            image,
            dir: dir.to_path_buf(),
            pages,
        })
    }

    /// All page data, in index order.
    pub fn page_data(&self) -> &[u8] {
        &self.pages.bytes()[PAGES_HEADER_LEN as usize..]
    }

    /// Each page run with its bytes.
    pub fn runs(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let data = self.page_data();
        let mut off = 0usize;
        self.image.memory.pages.runs.iter().map(move |r| {
            let len = r.len() as usize;
            let slice = &data[off..off + len];
            off += len;
            (r.addr, slice)
        })
    }
}
