//! SysV shared memory segments (`shmget`) of an IPC namespace: listed, read, made again with
//! their ids, removed.
//!
//! Segments are named by id within one IPC namespace, and `setns(CLONE_NEWIPC)` moves only
//! the calling thread: every call here acts on the namespace of the thread that makes it, and
//! [`in_namespace_of`] runs work on a thread of its own inside another process's namespace.
//! `/proc/sysvipc/*` and `/proc/sys/kernel/shm_next_id` also show the opener's namespace.
//!
//! Kernel facts relied on (checked on 6.18):
//! - `shm_next_id` makes the next `shmget` of that namespace take exactly that id (index and
//!   sequence) or fail with `ENOSPC` if its index is taken; it resets to -1 once used.
//! - Linux lets `shmat` attach a segment already marked for removal (`SHM_DEST`), by id.
//! - `mincore` on a shmem mapping reports the pages present in its page cache; a page neither
//!   there nor swapped out reads as zeros.

use std::ffi::c_void;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::{PAGE_SIZE, Result, SysError};

const SHM_LIST: &str = "/proc/sysvipc/shm";
const SHM_NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";
/// `SHM_DEST` in the `perms` column: marked for removal.
const SHM_DEST: u32 = 0o1000;

/// One segment, as `/proc/sysvipc/shm` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub key: i32,
    pub id: i32,
    /// Permission bits (without `SHM_DEST` and `SHM_LOCKED`).
    pub mode: u32,
    pub removed: bool,
    pub size: u64,
    pub attached: u64,
    pub uid: u32,
    pub gid: u32,
    /// Bytes swapped out.
    pub swapped: u64,
}

/// Runs `f` on a new thread that joined the IPC namespace of `pid` (needs `CAP_SYS_ADMIN`).
pub fn in_namespace_of<T: Send>(pid: Pid, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/proc/{pid}/ns/ipc");
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let ns = std::fs::File::open(&path).map_err(|e| SysError::io(&path, e))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWIPC)
                .map_err(|e| SysError::syscall("setns(CLONE_NEWIPC)", pid, e))?;
            f()
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The segments of this thread's IPC namespace, by id.
pub fn segments() -> Result<Vec<SegmentInfo>> {
    let text = std::fs::read_to_string(SHM_LIST).map_err(|e| SysError::io(SHM_LIST, e))?;
    let mut list = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(parse_segment)
        .collect::<Result<Vec<_>>>()?;
    list.sort_by_key(|s| s.id);
    Ok(list)
}

fn parse_segment(line: &str) -> Result<SegmentInfo> {
    let bad = |detail: &str| SysError::Parse {
        path: SHM_LIST.into(),
        detail: format!("{detail} in {line:?}"),
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 16 {
        return Err(bad("fewer than 16 columns"));
    }
    let int = |i: usize| f[i].parse::<i64>().map_err(|_| bad("a bad number"));
    let perms = u32::from_str_radix(f[2], 8).map_err(|_| bad("bad permissions"))?;
    Ok(SegmentInfo {
        key: int(0)? as i32,
        id: int(1)? as i32,
        mode: perms & 0o777,
        removed: perms & SHM_DEST != 0,
        size: int(3)? as u64,
        attached: int(6)? as u64,
        uid: int(7)? as u32,
        gid: int(8)? as u32,
        swapped: int(15)? as u64,
    })
}

/// How many SysV semaphore sets and message queues this thread's IPC namespace holds.
pub fn other_objects() -> Result<(usize, usize)> {
    let count = |path: &str| -> Result<usize> {
        let text = std::fs::read_to_string(path).map_err(|e| SysError::io(path, e))?;
        Ok(text
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .count())
    };
    Ok((count("/proc/sysvipc/sem")?, count("/proc/sysvipc/msg")?))
}

/// A segment attached to ferry itself, detached when dropped.
struct Attached {
    addr: *mut c_void,
    len: usize,
}

impl Attached {
    fn new(id: i32, len: usize, read_only: bool) -> Result<Attached> {
        let flags = if read_only { libc::SHM_RDONLY } else { 0 };
        // SAFETY: attaching at an address the kernel picks cannot disturb existing mappings;
        // the result is checked before use.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if addr as isize == -1 {
            return Err(SysError::syscall("shmat", Pid::this(), Errno::last()));
        }
        Ok(Attached { addr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes from `addr` are the attached segment (a multiple of the page
        // size covers at most the segment's last page), mapped until `self` is dropped. Other
        // processes may write to it meanwhile: the callers' processes are frozen.
        unsafe { std::slice::from_raw_parts(self.addr.cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `bytes`, attached writable by `write` (the only caller), and only this
        // thread has the attachment's address.
        unsafe { std::slice::from_raw_parts_mut(self.addr.cast::<u8>(), self.len) }
    }

    /// Which pages are present in the segment's page cache.
    fn present(&self) -> Result<Vec<bool>> {
        let pages = self.len.div_ceil(PAGE_SIZE as usize);
        let mut vec = vec![0u8; pages];
        // SAFETY: `addr`..`addr + len` is mapped (the attachment), `vec` has a byte per page.
        let r = unsafe { libc::mincore(self.addr, self.len, vec.as_mut_ptr()) };
        if r < 0 {
            return Err(SysError::syscall("mincore", Pid::this(), Errno::last()));
        }
        Ok(vec.into_iter().map(|b| b & 1 != 0).collect())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: `addr` is this attachment, detached only here; no reference to its bytes
        // outlives `self`.
        unsafe { libc::shmdt(self.addr) };
    }
}

/// The bytes of segment `id` (`size` bytes) of this thread's namespace: runs of the pages that
/// hold data, by offset, all-zero pages left out. Reads only pages present (or, when some are
/// swapped out, every page): a hole is not filled by reading it.
pub fn read(id: i32, size: u64, swapped: bool) -> Result<Vec<(u64, Vec<u8>)>> {
    let len = size.next_multiple_of(PAGE_SIZE) as usize;
    let seg = Attached::new(id, len, true)?;
    let present = if swapped {
        vec![true; len / PAGE_SIZE as usize]
    } else {
        seg.present()?
    };
    let bytes = seg.bytes();
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    for (i, page) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
        if !present[i] || page.iter().all(|&b| b == 0) {
            continue;
        }
        let at = i as u64 * PAGE_SIZE;
        match runs.last_mut() {
            Some((start, run)) if *start + run.len() as u64 == at => run.extend_from_slice(page),
            _ => runs.push((at, page.to_vec())),
        }
    }
    Ok(runs)
}

/// What [`create`] makes.
#[derive(Debug, Clone, Copy)]
pub struct NewSegment {
    pub id: i32,
    pub key: i32,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Makes segment `seg` in this thread's namespace with its id (through `shm_next_id`), writes
/// `runs` (offset, bytes) into it, then gives it its owner and mode. Fails if the id or the key
/// is taken; a segment made with another id is removed again.
pub fn create(seg: &NewSegment, runs: &[(u64, &[u8])]) -> Result<()> {
    std::fs::write(SHM_NEXT_ID, seg.id.to_string()).map_err(|e| SysError::io(SHM_NEXT_ID, e))?;
    // SAFETY: shmget takes plain values and touches no memory of ours.
    let got = unsafe {
        libc::shmget(
            seg.key,
            seg.size as usize,
            libc::IPC_CREAT | libc::IPC_EXCL | 0o600,
        )
    };
    if got < 0 {
        return Err(SysError::syscall("shmget", Pid::this(), Errno::last()));
    }
    if got != seg.id {
        // Best effort: the segment is new and unattached; nothing else can hold it yet.
        let _ = remove(got);
        return Err(SysError::Segment {
            id: seg.id,
            detail: format!("the kernel gave id {got} instead (is the id taken?)"),
        });
    }
    let filled = (|| {
        if !runs.is_empty() {
            let len = seg.size.next_multiple_of(PAGE_SIZE) as usize;
            let mut at = Attached::new(got, len, false)?;
            let bytes = at.bytes_mut();
            for &(offset, data) in runs {
                let range = usize::try_from(offset)
                    .ok()
                    .and_then(|o| Some(o..o.checked_add(data.len())?))
                    .filter(|r| r.end <= bytes.len())
                    .ok_or_else(|| SysError::Segment {
                        id: seg.id,
                        detail: format!(
                            "{} bytes at {offset:#x} do not fit its {} bytes",
                            data.len(),
                            seg.size
                        ),
                    })?;
                bytes[range].copy_from_slice(data);
            }
        }
        set_owner(got, seg)
    })();
    if filled.is_err() {
        let _ = remove(got);
    }
    filled
}

fn set_owner(id: i32, seg: &NewSegment) -> Result<()> {
    let mut ds = std::mem::MaybeUninit::<libc::shmid_ds>::zeroed();
    // SAFETY: `ds` is a `struct shmid_ds` the kernel fills.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, ds.as_mut_ptr()) } < 0 {
        return Err(SysError::syscall(
            "shmctl(IPC_STAT)",
            Pid::this(),
            Errno::last(),
        ));
    }
    // SAFETY: IPC_STAT succeeded: the kernel initialized it.
    let mut ds = unsafe { ds.assume_init() };
    ds.shm_perm.uid = seg.uid;
    ds.shm_perm.gid = seg.gid;
    ds.shm_perm.mode = seg.mode as libc::c_ushort;
    // SAFETY: `ds` is a valid `struct shmid_ds`, read by the kernel only.
    if unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) } < 0 {
        return Err(SysError::syscall(
            "shmctl(IPC_SET)",
            Pid::this(),
            Errno::last(),
        ));
    }
    Ok(())
}

/// Marks segment `id` of this thread's namespace for removal (`IPC_RMID`).
pub fn remove(id: i32) -> Result<()> {
    // SAFETY: IPC_RMID reads no buffer.
    if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } < 0 {
        return Err(SysError::syscall(
            "shmctl(IPC_RMID)",
            Pid::this(),
            Errno::last(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_lines_are_read() {
        let line = "  305419896      32769       1600                 10000  4242  4243      2  1000  1000     0     0 1700000000 1700000001 1700000002  8192  4096";
        let s = parse_segment(line).unwrap();
        assert_eq!(
            s,
            SegmentInfo {
                key: 0x1234_5678,
                id: 32769,
                mode: 0o600,
                removed: true,
                size: 10_000,
                attached: 2,
                uid: 1000,
                gid: 1000,
                swapped: 4096,
            }
        );
        assert!(parse_segment("1 2 3").is_err());
    }
}
