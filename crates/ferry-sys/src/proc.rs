//! What `/proc` says about a process.
//!
//! `stat` and `status` come from the procfs crate. Mappings are parsed here from
//! `/proc/PID/smaps`, because capture needs each mapping's `VmFlags` and swap in the same pass
//! and must take paths byte for byte (procfs trims them and needs UTF-8).

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::Pid;

use crate::{Result, SysError};

/// One line of `/proc/PID/maps` plus the `VmFlags`/`Swap` of its smaps block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// Path or pseudo-path (`[heap]`, `[anon:name]`, `/dev/zero (deleted)`), raw bytes.
    pub path: Vec<u8>,
    /// Two-letter `VmFlags` mnemonics.
    pub vm_flags: Vec<[u8; 2]>,
    pub swap_kb: u64,
}

impl Mapping {
    pub fn path_is(&self, p: &str) -> bool {
        self.path == p.as_bytes()
    }

    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|v| v == f.as_bytes())
    }
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// Parses the header line of a mapping: `start-end perms offset maj:min inode   path`.
fn parse_map_line(line: &[u8]) -> Option<Mapping> {
    let mut fields = Vec::with_capacity(5);
    let mut rest = line;
    for _ in 0..5 {
        let start = rest.iter().position(|&b| b != b' ')?;
        rest = &rest[start..];
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    let path = match rest.iter().position(|&b| b != b' ') {
        Some(p) => rest[p..].to_vec(),
        None => Vec::new(),
    };
    let dash = fields[0].iter().position(|&b| b == b'-')?;
    let perms = fields[1];
    if perms.len() != 4 {
        return None;
    }
    let colon = fields[3].iter().position(|&b| b == b':')?;
    Some(Mapping {
        start: parse_hex(&fields[0][..dash])?,
        end: parse_hex(&fields[0][dash + 1..])?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: parse_hex(fields[2])?,
        dev_major: parse_hex(&fields[3][..colon])? as u32,
        dev_minor: parse_hex(&fields[3][colon + 1..])? as u32,
        inode: std::str::from_utf8(fields[4]).ok()?.parse().ok()?,
        path,
        vm_flags: Vec::new(),
        swap_kb: 0,
    })
}

/// Whether a smaps line starts a new mapping (`hex-hex ...`) rather than a `Key:` line.
fn is_map_header(line: &[u8]) -> bool {
    let dash = line.iter().position(|&b| b == b'-');
    match dash {
        Some(d) if d > 0 => line[..d].iter().all(|b| b.is_ascii_hexdigit()),
        _ => false,
    }
}

fn parse_maps_text(path: &str, text: &[u8], with_smaps: bool) -> Result<Vec<Mapping>> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if !with_smaps || is_map_header(line) {
            let m = parse_map_line(line).ok_or_else(|| SysError::Parse {
                path: path.to_string(),
                detail: format!("bad mapping line {:?}", String::from_utf8_lossy(line)),
            })?;
            out.push(m);
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if let Some(flags) = line.strip_prefix(b"VmFlags:") {
            cur.vm_flags = flags
                .split(|&b| b == b' ')
                .filter(|f| f.len() == 2)
                .map(|f| [f[0], f[1]])
                .collect();
        } else if let Some(swap) = line.strip_prefix(b"Swap:") {
            let kb = swap
                .split(|&b| b == b' ')
                .find(|f| !f.is_empty())
                .and_then(|f| std::str::from_utf8(f).ok()?.parse().ok())
                .unwrap_or(0);
            cur.swap_kb = kb;
        }
    }
    Ok(out)
}

/// `/proc/PID/maps`: mappings without flags (cheap).
pub fn read_maps(pid: Pid) -> Result<Vec<Mapping>> {
    let path = format!("/proc/{pid}/maps");
    let text = fs::read(&path).map_err(|e| SysError::io(&path, e))?;
    parse_maps_text(&path, &text, false)
}

/// `/proc/PID/smaps`: mappings with `VmFlags` and swap usage.
pub fn read_smaps(pid: Pid) -> Result<Vec<Mapping>> {
    let path = format!("/proc/{pid}/smaps");
    let text = fs::read(&path).map_err(|e| SysError::io(&path, e))?;
    parse_maps_text(&path, &text, true)
}

fn procfs_err(pid: Pid, what: &str, e: procfs::ProcError) -> SysError {
    match e {
        procfs::ProcError::NotFound(_) => SysError::Gone {
            pid: pid.as_raw(),
            how: "does not exist".into(),
        },
        other => SysError::Parse {
            path: format!("/proc/{pid}/{what}"),
            detail: other.to_string(),
        },
    }
}

pub use procfs::process::{Stat, Status};

/// `/proc/PID/stat`.
pub fn stat(pid: Pid) -> Result<Stat> {
    procfs::process::Process::new(pid.as_raw())
        .and_then(|p| p.stat())
        .map_err(|e| procfs_err(pid, "stat", e))
}

/// `/proc/PID/status`.
pub fn status(pid: Pid) -> Result<Status> {
    procfs::process::Process::new(pid.as_raw())
        .and_then(|p| p.status())
        .map_err(|e| procfs_err(pid, "status", e))
}

/// Whether the process exists (and is not yet reaped).
pub fn exists(pid: Pid) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Every process this /proc shows (its numeric entries), in no particular order.
pub fn pids() -> Result<Vec<Pid>> {
    Ok(fs::read_dir("/proc")
        .map_err(|e| SysError::io("/proc", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .map(Pid::from_raw)
        .collect())
}

/// The thread ids of a process (`/proc/PID/task`), the main thread first, then ascending.
pub fn thread_ids(pid: Pid) -> Result<Vec<Pid>> {
    let path = format!("/proc/{pid}/task");
    let mut tids: Vec<i32> = fs::read_dir(&path)
        .map_err(|e| SysError::io(&path, e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable_by_key(|&t| (t != pid.as_raw(), t));
    Ok(tids.into_iter().map(Pid::from_raw).collect())
}

/// `/proc/PID/task/TID/status`: the per-thread view (credentials, seccomp and
/// `no_new_privs` belong to each thread).
pub fn thread_status(pid: Pid, tid: Pid) -> Result<Status> {
    procfs::process::Process::new(pid.as_raw())
        .and_then(|p| p.task_from_tid(tid.as_raw()))
        .and_then(|t| t.status())
        .map_err(|e| procfs_err(pid, &format!("task/{tid}/status"), e))
}

/// Thread `tid` of process `pid` as the process's own PID namespace numbers it (what
/// `gettid` returns in it; `tid == pid` for the process): the last of its `NSpid` ids, or
/// `tid` when that cannot be read.
pub fn own_id(pid: Pid, tid: Pid) -> Pid {
    thread_status(pid, tid)
        .ok()
        .and_then(|s| s.nspid?.last().copied())
        .map_or(tid, Pid::from_raw)
}

/// Target of a `/proc/PID/*` link (`exe`, `cwd`, `root`, `fd/N`), raw bytes.
pub fn readlink(pid: Pid, link: &str) -> Result<Vec<u8>> {
    let path = format!("/proc/{pid}/{link}");
    fs::read_link(&path)
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .map_err(|e| SysError::io(&path, e))
}

/// A small text file under `/proc/PID/`, trimmed.
pub fn read_text(pid: Pid, file: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{file}");
    fs::read_to_string(&path)
        .map(|s| s.trim_end().to_string())
        .map_err(|e| SysError::io(&path, e))
}

/// Raw bytes of a file under `/proc/PID/`.
pub fn read_bytes(pid: Pid, file: &str) -> Result<Vec<u8>> {
    let path = format!("/proc/{pid}/{file}");
    fs::read(&path).map_err(|e| SysError::io(&path, e))
}

/// `stat()` of what a `/proc/PID/fd/N` (or `exe`, `cwd`) link points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStat {
    pub mode: u32,
    pub dev: u64,
    pub inode: u64,
    pub rdev: u64,
    pub size: u64,
    pub nlink: u64,
    pub mtime_ns: i128,
}

impl LinkStat {
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

pub fn stat_path(path: &Path) -> Result<LinkStat> {
    let m = fs::metadata(path).map_err(|e| SysError::io(path, e))?;
    Ok(LinkStat {
        mode: m.mode(),
        dev: m.dev(),
        inode: m.ino(),
        rdev: m.rdev(),
        size: m.size(),
        nlink: m.nlink(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

pub fn stat_link(pid: Pid, link: &str) -> Result<LinkStat> {
    stat_path(Path::new(&format!("/proc/{pid}/{link}")))
}

/// One open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFd {
    pub fd: i32,
    /// `readlink` of `/proc/PID/fd/N`: a path, or `pipe:[…]`, `socket:[…]`, `anon_inode:…`.
    pub target: Vec<u8>,
    /// Present when the target could be stat'ed.
    pub stat: Option<LinkStat>,
    pub pos: u64,
    /// `flags:` of fdinfo (octal in the file), including `O_CLOEXEC`.
    pub flags: i32,
}

/// Every open fd with its fdinfo.
pub fn open_fds(pid: Pid) -> Result<Vec<OpenFd>> {
    let dir = format!("/proc/{pid}/fd");
    let mut fds = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| SysError::io(&dir, e))? {
        let entry = entry.map_err(|e| SysError::io(&dir, e))?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let target = readlink(pid, &format!("fd/{fd}"))?;
        let stat = stat_link(pid, &format!("fd/{fd}")).ok();
        let info = read_text(pid, &format!("fdinfo/{fd}"))?;
        let mut pos = 0u64;
        let mut flags = 0i32;
        for line in info.lines() {
            if let Some(v) = line.strip_prefix("pos:") {
                pos = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("flags:") {
                flags = i32::from_str_radix(v.trim(), 8).unwrap_or(0);
            }
        }
        fds.push(OpenFd {
            fd,
            target,
            stat,
            pos,
            flags,
        });
    }
    fds.sort_by_key(|f| f.fd);
    Ok(fds)
}

/// Whether two fds of a process refer to the same open file description (one is a `dup` of
/// the other, sharing offset and status flags): `kcmp(KCMP_FILE)`.
pub fn same_open_file(pid: Pid, fd1: i32, fd2: i32) -> Result<bool> {
    same_file_of(pid, fd1, pid, fd2)
}

/// Whether fd `fd1` of `pid1` and fd `fd2` of `pid2` are one open file description (`kcmp`),
/// as `fork` or `SCM_RIGHTS` share them.
pub fn same_file_of(pid1: Pid, fd1: i32, pid2: Pid, fd2: i32) -> Result<bool> {
    const KCMP_FILE: i32 = 0;
    kcmp(pid1, pid2, KCMP_FILE, fd1 as u64, fd2 as u64)
}

/// Whether two processes share one address space (`CLONE_VM`, as `vfork` does).
pub fn same_memory(pid1: Pid, pid2: Pid) -> Result<bool> {
    const KCMP_VM: i32 = 1;
    kcmp(pid1, pid2, KCMP_VM, 0, 0)
}

fn kcmp(pid1: Pid, pid2: Pid, kind: i32, idx1: u64, idx2: u64) -> Result<bool> {
    // SAFETY: kcmp takes plain integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1.as_raw(),
            pid2.as_raw(),
            kind,
            idx1 as libc::c_ulong,
            idx2 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(SysError::syscall("kcmp", pid2, nix::errno::Errno::last()));
    }
    Ok(r == 0)
}

/// The file mapped at `start..end` of `pid`, opened read-only through
/// `/proc/PID/map_files` (needs `CAP_SYS_ADMIN` or `CAP_CHECKPOINT_RESTORE`): a file with no
/// name (a memfd, a deleted file) included.
pub fn open_mapped_file(pid: Pid, start: u64, end: u64) -> Result<fs::File> {
    let path = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
    fs::File::open(&path).map_err(|e| SysError::io(&path, e))
}

/// The children of a process: those of each of its threads (`/proc/PID/task/TID/children`),
/// ascending. A thread that ends meanwhile has none.
pub fn children(pid: Pid) -> Result<Vec<Pid>> {
    let mut all = Vec::new();
    for tid in thread_ids(pid)? {
        let Ok(list) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")) else {
            continue;
        };
        all.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    all.sort_unstable();
    all.dedup();
    Ok(all.into_iter().map(Pid::from_raw).collect())
}

/// The robust futex list head of a thread (`get_robust_list`).
pub fn robust_list(pid: Pid) -> Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: both out-pointers are valid for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            pid.as_raw(),
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    if r != 0 {
        return Err(SysError::syscall(
            "get_robust_list",
            pid,
            nix::errno::Errno::last(),
        ));
    }
    Ok((head, len as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_blocks() {
        let text =
            b"55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234    /usr/bin/my prog  (deleted)\n\
Size:                  4 kB\n\
Swap:                  8 kB\n\
VmFlags: rd mr mw me sd \n\
7ffc0e3fd000-7ffc0e41e000 rw-p 00000000 00:00 0                          [stack]\n\
VmFlags: rd wr mr mw me gd ac \n\
7f00aa000000-7f00aa001000 rw-s 00000000 00:01 99                         /dev/zero (deleted)\n";
        let maps = parse_maps_text("x", text, true).unwrap();
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].path, b"/usr/bin/my prog  (deleted)");
        assert_eq!(maps[0].swap_kb, 8);
        assert_eq!(maps[0].dev_major, 0xfe);
        assert_eq!(maps[0].inode, 1234);
        assert!(maps[1].has_flag("gd"));
        assert!(maps[1].path_is("[stack]"));
        assert!(maps[2].shared && maps[2].write && !maps[2].exec);
    }

    #[test]
    fn reads_own_maps_and_fds() {
        let me = nix::unistd::getpid();
        let maps = read_smaps(me).unwrap();
        assert!(
            maps.iter()
                .any(|m| m.path_is("[stack]") && m.has_flag("gd"))
        );
        assert!(maps.windows(2).all(|w| w[0].end <= w[1].start));
        let fds = open_fds(me).unwrap();
        assert!(!fds.is_empty());
    }
}
