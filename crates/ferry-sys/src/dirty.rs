//! Dirty-page tracking for pre-copy: which pages of a running process were written since the
//! last look.
//!
//! [`DirtyTracker`] is the interface the migration code uses; [`UffdWpTracker`] implements it
//! with userfaultfd write-protection in async mode:
//!
//! ```text
//!  create   injected userfaultfd(UFFD_USER_MODE_ONLY) in the stopped process, pidfd_getfd,
//!           UFFDIO_API(WP_ASYNC | WP_UNPOPULATED), UFFDIO_REGISTER(WP) per range
//!  arm      UFFDIO_WRITEPROTECT(WP) per range: every page clean (untouched ones included)
//!  (runs)   first write to a protected page: one minor fault, resolved by the kernel itself
//!           (no message, the process never waits for ferry); the page is now "written"
//!  take     PAGEMAP_SCAN(PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN):
//!           the written runs, write-protected again in the same page-table walk (per page,
//!           under the page-table lock: a racing write shows now or next time, never lost)
//!  stop     UFFDIO_UNREGISTER per range: protection gone, full speed again
//! ```
//!
//! What this kernel (6.18) does, as `tests/uffd.rs` shows:
//!
//! - **Memory kinds**: private anonymous, shmem (`MAP_SHARED|MAP_ANONYMOUS`), private file
//!   and shared file mappings all register and report exactly the written pages. Pages never
//!   touched before arming are protected too (`WP_UNPOPULATED`): their first write is seen, a
//!   read maps them without counting.
//! - **Writes that count**: the process's own stores, the kernel's writes on its behalf
//!   (`read(2)` into a tracked buffer) and ferry's `process_vm_writev`. A user-mode-only uffd
//!   loses nothing here (async faults never reach the uffd), and any user may create one, so
//!   processes of other users are tracked without privileges.
//! - **Dropped pages** (`MADV_DONTNEED`): private anonymous: reported (the content is now
//!   zeros). shmem, shared file: not reported, and the content is indeed unchanged. **Private
//!   file: a copied-on-write page that is dropped reverts to the file's content and is NOT
//!   reported.** Before the final round the caller must find such pages itself (rescan the
//!   private file mappings for copied-on-write pages, `pagemap::Select::PrivateFileDirty`, and
//!   treat pages sent earlier that are no longer copied-on-write as changed).
//! - **Transparent huge pages** survive arming; the first write splits the huge mapping and
//!   exactly the written 4 KiB page is reported.
//! - **Cost** (64 MiB, 2-core VM): register 0.1 ms, arm 10 µs, a take over a clean range
//!   10 µs, a take over 64 MiB all written 1–5 ms (one run).
//! - **Mappings that change**: an unmapped hole in a range is skipped. A mapping created
//!   inside a tracked range after registration is not tracked, and [`DirtyTracker::take_dirty`]
//!   fails with EPERM (`PM_SCAN_CHECK_WPASYNC`) naming the range instead of missing its writes.
//!   New mappings elsewhere are not seen at all, and `mremap` moves a mapping out of tracking:
//!   the caller compares `/proc/PID/maps` every round, sends new mappings whole, and may track
//!   them from then on ([`UffdWpTracker::add_ranges`] + [`UffdWpTracker::protect`]).
//! - While tracked, the mappings carry `uw` in `/proc/PID/smaps` `VmFlags`.
//!
//! **Soft-dirty** (not implemented: `CONFIG_MEM_SOFT_DIRTY` is off in this kernel) would be a
//! second implementation of the trait: `arm` = write `4` to `/proc/PID/clear_refs`; `take_dirty`
//! = `PAGEMAP_SCAN` with category `PAGE_IS_SOFT_DIRTY` (or bit 55 of `/proc/PID/pagemap`), then
//! `clear_refs` again. Unlike `PM_SCAN_WP_MATCHING`, the clear is separate from the read and
//! covers the whole process, so a page first written between the scan and the clear would be
//! lost: that tracker must stop the process around scan + clear (as CRIU's pre-dump does).

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::unistd::Pid;
use tracing::{debug, trace};

use crate::abi::{self, PageRegion, PmScanArg};
use crate::inject::Injector;
use crate::uffd::{RegisterMode, Uffd};
use crate::{Result, SysError};

/// Records which pages of a running process were written since the last look.
pub trait DirtyTracker: Send {
    /// Starts a tracking period: every tracked page counts as clean from now on.
    fn arm(&mut self) -> Result<()>;

    /// Appends to `out` the runs `[start, end)` written since [`DirtyTracker::arm`] or the
    /// previous call (adjacent runs merged, in address order), and makes them clean again
    /// in the same step: a write that races with the call is reported now or next time,
    /// never lost. EPERM: a tracked range now holds a mapping that is not tracked (see the
    /// module doc).
    fn take_dirty(&mut self, out: &mut Vec<(u64, u64)>) -> Result<()>;

    /// The ranges `[start, end)` tracked.
    fn ranges(&self) -> &[(u64, u64)];

    /// Ends tracking; the process runs on at full speed.
    fn stop(self: Box<Self>) -> Result<()>;
}

/// Tracks writes with userfaultfd write-protection in async mode and `PAGEMAP_SCAN`.
pub struct UffdWpTracker {
    uffd: Uffd,
    pid: Pid,
    pagemap: File,
    ranges: Vec<(u64, u64)>,
    regions: Vec<PageRegion>,
}

/// Features a tracker's uffd needs (`WP_UNPOPULATED` also protects pages not yet touched, so
/// that their first write is seen).
pub const TRACKER_FEATURES: u64 = abi::UFFD_FEATURE_WP_ASYNC | abi::UFFD_FEATURE_WP_UNPOPULATED;

impl UffdWpTracker {
    /// Creates the uffd inside the stopped tracee ([`Uffd::create_in_tracee`] with
    /// `UFFD_USER_MODE_ONLY`, which any user may create and which loses nothing in async
    /// mode), then [`UffdWpTracker::new`]. The process may run again once this returns.
    pub fn create_in_tracee(
        injector: &mut Injector<'_>,
        ranges: &[(u64, u64)],
    ) -> Result<UffdWpTracker> {
        let uffd = Uffd::create_in_tracee(injector, abi::UFFD_USER_MODE_ONLY)?;
        UffdWpTracker::new(uffd, ranges)
    }

    /// Takes a uffd of the process (API not yet negotiated, or negotiated with WP_ASYNC),
    /// enables async write-protection and registers every range `[start, end)` (page-aligned,
    /// each covered by mappings without holes). Nothing is protected until
    /// [`DirtyTracker::arm`].
    pub fn new(mut uffd: Uffd, ranges: &[(u64, u64)]) -> Result<UffdWpTracker> {
        let pid = uffd.pid();
        match uffd.features() {
            None => {
                uffd.api(TRACKER_FEATURES)?;
            }
            Some(f) if f & abi::UFFD_FEATURE_WP_ASYNC != 0 => {}
            Some(_) => {
                return Err(SysError::UnexpectedStop {
                    pid: pid.as_raw(),
                    detail: "dirty tracking needs a uffd with WP_ASYNC enabled".into(),
                });
            }
        }
        let path = format!("/proc/{pid}/pagemap");
        let pagemap = File::open(&path).map_err(|e| SysError::io(&path, e))?;
        let mut t = UffdWpTracker {
            uffd,
            pid,
            pagemap,
            ranges: Vec::new(),
            regions: vec![PageRegion::default(); 1024],
        };
        t.add_ranges(ranges)?;
        Ok(t)
    }

    /// Registers more ranges (e.g. mappings the process created since): they are tracked
    /// from the next [`DirtyTracker::arm`] or, if already armed, as soon as
    /// [`UffdWpTracker::protect`] is called for them. Their current content must be
    /// considered dirty by the caller.
    pub fn add_ranges(&mut self, ranges: &[(u64, u64)]) -> Result<()> {
        for &(start, end) in ranges {
            self.uffd
                .register(start, end - start, RegisterMode::WRITE_PROTECT)?;
            self.ranges.push((start, end));
        }
        self.ranges.sort_unstable();
        Ok(())
    }

    /// Write-protects `[start, end)` (part of a tracked range): its pages count as clean.
    pub fn protect(&mut self, start: u64, end: u64) -> Result<()> {
        self.uffd.write_protect(start, end - start, true)
    }

    /// The uffd (e.g. to register more ranges by hand).
    pub fn uffd(&self) -> &Uffd {
        &self.uffd
    }

    fn scan(&mut self, start: u64, end: u64, out: &mut Vec<(u64, u64)>) -> Result<()> {
        let mut at = start;
        while at < end {
            let mut arg = PmScanArg {
                size: size_of::<PmScanArg>() as u64,
                flags: abi::PM_SCAN_WP_MATCHING | abi::PM_SCAN_CHECK_WPASYNC,
                start: at,
                end,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                category_mask: abi::PAGE_IS_WRITTEN,
                return_mask: abi::PAGE_IS_WRITTEN,
                ..PmScanArg::default()
            };
            // SAFETY: `arg` is a correctly sized pm_scan_arg whose `vec` points at
            // `self.regions`, which holds `vec_len` writable page_region entries.
            let n = unsafe {
                libc::ioctl(
                    self.pagemap.as_raw_fd(),
                    abi::PAGEMAP_SCAN as libc::c_ulong,
                    &mut arg as *mut PmScanArg,
                )
            };
            if n < 0 {
                return Err(SysError::Memory {
                    pid: self.pid.as_raw(),
                    addr: at,
                    len: end - at,
                    errno: Errno::last(),
                });
            }
            for r in &self.regions[..n as usize] {
                match out.last_mut() {
                    Some(last) if last.1 == r.start => last.1 = r.end,
                    _ => out.push((r.start, r.end)),
                }
            }
            if arg.walk_end <= at {
                break;
            }
            at = arg.walk_end;
        }
        Ok(())
    }
}

impl DirtyTracker for UffdWpTracker {
    fn arm(&mut self) -> Result<()> {
        for i in 0..self.ranges.len() {
            let (start, end) = self.ranges[i];
            self.protect(start, end)?;
        }
        debug!(
            pid = self.pid.as_raw(),
            ranges = self.ranges.len(),
            "dirty tracking armed"
        );
        Ok(())
    }

    fn take_dirty(&mut self, out: &mut Vec<(u64, u64)>) -> Result<()> {
        let before = out.len();
        for i in 0..self.ranges.len() {
            let (start, end) = self.ranges[i];
            self.scan(start, end, out)?;
        }
        trace!(
            pid = self.pid.as_raw(),
            runs = out.len() - before,
            "dirty runs taken"
        );
        Ok(())
    }

    fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    fn stop(self: Box<Self>) -> Result<()> {
        let mut first = Ok(());
        for &(start, end) in &self.ranges {
            if let Err(e) = self.uffd.unregister(start, end - start)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}
