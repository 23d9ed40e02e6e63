//! Image files mapped into ferry's memory, read-only.

use std::fs::File;
use std::path::Path;

use memmap2::{Advice, Mmap};

use crate::{Result, SysError};

/// A whole file mapped read-only (private, page tables populated up front), excluded from
/// forks.
pub struct MappedFile {
    map: Option<Mmap>,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).map_err(|e| SysError::io(path, e))?;
        let len = file.metadata().map_err(|e| SysError::io(path, e))?.len();
        if len == 0 {
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the mapping is private and read-only. Image files belong to ferry; should
        // another process modify one while it is mapped, ferry may read the new bytes (and
        // checksums catch that), but it never reads outside the mapping.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
            .map_err(|e| SysError::io(path, e))?;
        // Best effort: read ahead, and keep forks (the restore vessel) from inheriting it.
        let _ = map.advise(Advice::Sequential);
        let _ = map.advise(Advice::DontFork);
        Ok(MappedFile { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Reserves `len` bytes for `file` (`fallocate`): on tmpfs this allocates the pages now, so
/// that later writes only copy. Best effort: file systems without it are left as they are.
pub fn preallocate(file: &File, len: u64) {
    use std::os::fd::AsFd;
    let _ = nix::fcntl::fallocate(
        file.as_fd(),
        nix::fcntl::FallocateFlags::empty(),
        0,
        len as libc::off_t,
    );
}
