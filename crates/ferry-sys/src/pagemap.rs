//! Which pages of a range hold data that must be copied.
//!
//! The `PAGEMAP_SCAN` ioctl (Linux 6.7+) on `/proc/PID/pagemap` answers with whole runs of
//! matching pages in one call; kernels without it are served by reading the 8-byte
//! `/proc/PID/pagemap` entries. Both are exposed through [`PageScanner`] so that callers and
//! tests can compare them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::abi::{self, PageRegion, PmScanArg};
use crate::{PAGE_SIZE, Result, SysError};

/// Which pages of a mapping to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// Private anonymous memory: every page present or swapped, except the shared zero page.
    Anonymous,
    /// Private file mapping: only pages that no longer come from the file (copied on write).
    PrivateFileDirty,
    /// Shared anonymous memory (shmem): every page present or swapped.
    SharedAnonymous,
}

impl Select {
    /// `(category_inverted, category_mask, category_anyof_mask)` for PAGEMAP_SCAN.
    fn categories(self) -> (u64, u64, u64) {
        let any = abi::PAGE_IS_PRESENT | abi::PAGE_IS_SWAPPED;
        match self {
            Select::Anonymous => (abi::PAGE_IS_PFNZERO, abi::PAGE_IS_PFNZERO, any),
            Select::PrivateFileDirty => (
                abi::PAGE_IS_FILE | abi::PAGE_IS_PFNZERO,
                abi::PAGE_IS_FILE | abi::PAGE_IS_PFNZERO,
                any,
            ),
            Select::SharedAnonymous => (0, 0, any),
        }
    }

    /// The same choice from a raw `/proc/PID/pagemap` entry.
    fn matches_entry(self, e: u64) -> bool {
        let present = e & (1 << 63) != 0;
        let swapped = e & (1 << 62) != 0;
        let file_or_shared = e & (1 << 61) != 0;
        match self {
            Select::Anonymous | Select::SharedAnonymous => present || swapped,
            Select::PrivateFileDirty => swapped || (present && !file_or_shared),
        }
    }
}

/// Scans the page tables of one process.
pub struct PageScanner {
    pid: Pid,
    file: File,
    use_scan_ioctl: bool,
    regions: Vec<PageRegion>,
}

impl PageScanner {
    pub fn open(pid: Pid) -> Result<PageScanner> {
        let path = format!("/proc/{pid}/pagemap");
        let file = File::open(&path).map_err(|e| SysError::io(&path, e))?;
        Ok(PageScanner {
            pid,
            file,
            use_scan_ioctl: true,
            regions: vec![PageRegion::default(); 512],
        })
    }

    /// Forces the `/proc/PID/pagemap` fallback (for tests and old kernels).
    pub fn without_scan_ioctl(mut self) -> Self {
        self.use_scan_ioctl = false;
        self
    }

    /// Whether the last scans used `PAGEMAP_SCAN`.
    pub fn uses_scan_ioctl(&self) -> bool {
        self.use_scan_ioctl
    }

    /// Appends to `out` the page runs `[start, end)` of `[start, end)` that `select` picks.
    /// Adjacent runs are merged.
    pub fn scan(
        &mut self,
        start: u64,
        end: u64,
        select: Select,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        if self.use_scan_ioctl {
            match self.scan_ioctl(start, end, select, out) {
                Err(SysError::Syscall {
                    errno: Errno::ENOTTY | Errno::EINVAL,
                    ..
                }) => self.use_scan_ioctl = false,
                other => return other,
            }
        }
        self.scan_entries(start, end, select, out)
    }

    fn push(out: &mut Vec<(u64, u64)>, s: u64, e: u64) {
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }

    fn scan_ioctl(
        &mut self,
        start: u64,
        end: u64,
        select: Select,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let (inverted, mask, anyof) = select.categories();
        let mut at = start;
        while at < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: at,
                end,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                category_inverted: inverted,
                category_mask: mask,
                category_anyof_mask: anyof,
                return_mask: abi::PAGE_IS_PRESENT | abi::PAGE_IS_SWAPPED,
                ..PmScanArg::default()
            };
            // SAFETY: `arg` is a correctly sized pm_scan_arg whose `vec` points at
            // `self.regions`, which holds `vec_len` writable page_region entries.
            let n = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    abi::PAGEMAP_SCAN as libc::c_ulong,
                    &mut arg as *mut PmScanArg,
                )
            };
            if n < 0 {
                return Err(SysError::syscall("PAGEMAP_SCAN", self.pid, Errno::last()));
            }
            for r in &self.regions[..n as usize] {
                Self::push(out, r.start, r.end);
            }
            if arg.walk_end <= at {
                break;
            }
            at = arg.walk_end;
        }
        Ok(())
    }

    fn scan_entries(
        &mut self,
        start: u64,
        end: u64,
        select: Select,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        const CHUNK: u64 = 64 << 10; // entries per read
        let mut buf = vec![0u8; (CHUNK * 8) as usize];
        let mut page = start / PAGE_SIZE;
        let last = end / PAGE_SIZE;
        while page < last {
            let n = (last - page).min(CHUNK);
            let bytes = &mut buf[..(n * 8) as usize];
            self.file
                .read_exact_at(bytes, page * 8)
                .map_err(|e| SysError::io(format!("/proc/{}/pagemap", self.pid), e))?;
            for (i, e) in bytes.chunks_exact(8).enumerate() {
                let mut a = [0u8; 8];
                a.copy_from_slice(e);
                if select.matches_entry(u64::from_le_bytes(a)) {
                    let s = (page + i as u64) * PAGE_SIZE;
                    Self::push(out, s, s + PAGE_SIZE);
                }
            }
            page += n;
        }
        Ok(())
    }
}
