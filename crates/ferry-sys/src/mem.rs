//! Bulk access to another process's memory.
//!
//! [`read`] and [`write_scattered`] use `process_vm_readv`/`process_vm_writev` with up to
//! `IOV_MAX` remote segments per call, never one call per page. Both honour the target's page
//! protections; [`ProcMem`] (`/proc/PID/mem`, which the kernel serves with `FOLL_FORCE`)
//! reaches pages without read permission (`PROT_NONE`, execute-only).

use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::uio::{RemoteIoVec, process_vm_readv, process_vm_writev};
use nix::unistd::Pid;

use crate::{Result, SysError};

/// Most iovecs one `process_vm_*` call takes.
pub const IOV_MAX: usize = 1024;

/// Reads the remote `ranges` (address, length) back to back into `buf`, whose length must be
/// their total.
pub fn read(pid: Pid, ranges: &[(u64, usize)], buf: &mut [u8]) -> Result<()> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    assert_eq!(total, buf.len(), "mem::read: buffer does not match ranges");
    let nonempty: Vec<(u64, usize)> = ranges.iter().copied().filter(|r| r.1 != 0).collect();
    let ranges = nonempty.as_slice();
    let mut done = 0usize; // bytes of buf filled
    let mut idx = 0usize; // current range
    let mut skip = 0usize; // bytes of ranges[idx] already read
    while idx < ranges.len() {
        let remote: Vec<RemoteIoVec> = ranges[idx..]
            .iter()
            .take(IOV_MAX)
            .enumerate()
            .map(|(i, &(a, l))| {
                let s = if i == 0 { skip } else { 0 };
                RemoteIoVec {
                    base: (a as usize) + s,
                    len: l - s,
                }
            })
            .collect();
        let want: usize = remote.iter().map(|r| r.len).sum();
        let mut local = [IoSliceMut::new(&mut buf[done..done + want])];
        let n = match process_vm_readv(pid, &mut local, &remote) {
            Ok(0) | Err(Errno::EFAULT) => {
                return Err(SysError::Memory {
                    pid: pid.as_raw(),
                    addr: remote[0].base as u64,
                    len: remote[0].len as u64,
                    errno: Errno::EFAULT,
                });
            }
            Ok(n) => n,
            Err(errno) => return Err(SysError::syscall("process_vm_readv", pid, errno)),
        };
        done += n;
        let mut left = n;
        while left > 0 {
            let rest = ranges[idx].1 - skip;
            if left >= rest {
                left -= rest;
                idx += 1;
                skip = 0;
            } else {
                skip += left;
                left = 0;
            }
        }
        while idx < ranges.len() && ranges[idx].1 == skip {
            idx += 1;
            skip = 0;
        }
    }
    Ok(())
}

/// Writes `data` at `addr` in the target.
pub fn write(pid: Pid, addr: u64, data: &[u8]) -> Result<()> {
    write_scattered(pid, &[(addr, data)])
}

/// Writes each `(address, bytes)` segment into the target, batching up to `IOV_MAX` segments
/// per system call.
pub fn write_scattered(pid: Pid, segments: &[(u64, &[u8])]) -> Result<()> {
    let nonempty: Vec<(u64, &[u8])> = segments
        .iter()
        .copied()
        .filter(|s| !s.1.is_empty())
        .collect();
    let segments = nonempty.as_slice();
    let mut idx = 0usize;
    let mut skip = 0usize;
    while idx < segments.len() {
        let batch: Vec<(u64, &[u8])> = segments[idx..]
            .iter()
            .take(IOV_MAX)
            .enumerate()
            .map(|(i, &(a, d))| {
                let s = if i == 0 { skip } else { 0 };
                (a + s as u64, &d[s..])
            })
            .collect();
        let local: Vec<std::io::IoSlice> = batch
            .iter()
            .map(|(_, d)| std::io::IoSlice::new(d))
            .collect();
        let remote: Vec<RemoteIoVec> = batch
            .iter()
            .map(|&(a, d)| RemoteIoVec {
                base: a as usize,
                len: d.len(),
            })
            .collect();
        let n = match process_vm_writev(pid, &local, &remote) {
            Ok(0) | Err(Errno::EFAULT) => {
                return Err(SysError::Memory {
                    pid: pid.as_raw(),
                    addr: batch[0].0,
                    len: batch[0].1.len() as u64,
                    errno: Errno::EFAULT,
                });
            }
            Ok(n) => n,
            Err(errno) => return Err(SysError::syscall("process_vm_writev", pid, errno)),
        };
        let mut left = n;
        while left > 0 {
            let rest = segments[idx].1.len() - skip;
            if left >= rest {
                left -= rest;
                idx += 1;
                skip = 0;
            } else {
                skip += left;
                left = 0;
            }
        }
        while idx < segments.len() && segments[idx].1.len() == skip {
            idx += 1;
            skip = 0;
        }
    }
    Ok(())
}

/// `/proc/PID/mem`: reads and writes that ignore page protections.
pub struct ProcMem {
    pid: Pid,
    file: File,
}

impl ProcMem {
    pub fn open(pid: Pid) -> Result<ProcMem> {
        let path = format!("/proc/{pid}/mem");
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|_| File::open(&path))
            .map_err(|e| SysError::io(&path, e))?;
        Ok(ProcMem { pid, file })
    }

    pub fn read_at(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, addr)
            .map_err(|e| SysError::Memory {
                pid: self.pid.as_raw(),
                addr,
                len: buf.len() as u64,
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
    }

    pub fn write_at(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, addr)
            .map_err(|e| SysError::Memory {
                pid: self.pid.as_raw(),
                addr,
                len: data.len() as u64,
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_own_memory_in_pieces() {
        let me = nix::unistd::getpid();
        let src: Vec<u8> = (0..3 * 4096).map(|i| (i % 251) as u8).collect();
        let base = src.as_ptr() as u64;
        let ranges = [(base, 100usize), (base + 5000, 3000), (base + 9000, 1)];
        let mut buf = vec![0u8; 3101];
        read(me, &ranges, &mut buf).unwrap();
        assert_eq!(&buf[..100], &src[..100]);
        assert_eq!(&buf[100..3100], &src[5000..8000]);
        assert_eq!(buf[3100], src[9000]);

        let mut dst = vec![0u8; 4096];
        let d = dst.as_mut_ptr() as u64;
        write_scattered(me, &[(d, &src[..10]), (d + 100, &src[10..20])]).unwrap();
        assert_eq!(&dst[..10], &src[..10]);
        assert_eq!(&dst[100..110], &src[10..20]);
    }

    #[test]
    fn reports_the_faulting_address() {
        let me = nix::unistd::getpid();
        let mut buf = vec![0u8; 16];
        let err = read(me, &[(8, 16)], &mut buf).unwrap_err();
        assert!(matches!(err, SysError::Memory { addr: 8, .. }), "{err}");
    }
}
