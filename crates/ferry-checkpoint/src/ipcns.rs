//! IPC namespaces. A `ferry run` job has an IPC namespace of its own, next to its PID
//! namespace: its SysV shared memory segments are its alone and move with it, made again
//! with their ids (which the job's processes hold as plain numbers) in a new IPC namespace
//! at the destination. Capture reads every segment of the namespace, attached or not, once,
//! while the whole namespace is frozen; each attachment is a mapping naming its segment
//! ([`Backing::SysvShm`]).
//!
//! Outside a job, SysV memory stays immobile: in a shared IPC namespace its id could be taken
//! where it goes, and processes that are not moving may hold it.

use ferry_image::{Backing, IpcNamespace, MAX_SYSV_BYTES, ProcessImage, SegmentRun, SysvSegment};
use ferry_sys::{Pid, host, proc, sysv};

use crate::CheckpointError;
use crate::mobility::refuse;

/// The inode of `pid`'s IPC namespace.
fn namespace(pid: Pid) -> Result<u64, CheckpointError> {
    proc::stat_link(pid, "ns/ipc")
        .map(|s| s.inode)
        .map_err(CheckpointError::sys("reading the IPC namespace"))
}

/// Whether `pid` lives in an IPC namespace other than ferry's.
pub(crate) fn has_own_namespace(pid: Pid) -> Result<bool, CheckpointError> {
    Ok(namespace(pid)? != namespace(host::self_pid())?)
}

/// The IPC namespace of `pids` (host ids, frozen, the root first, the root the init of a PID
/// namespace of its own when `job` is set), or `None` when it is ferry's or the root is no
/// job's init. Fails if a member lives in another IPC namespace than the root, a process
/// outside the tree lives in the root's, or the namespace holds what does not move.
pub(crate) fn capture(pids: &[Pid], job: bool) -> Result<Option<IpcNamespace>, CheckpointError> {
    let Some(&root) = pids.first() else {
        return Ok(None);
    };
    if !job || !has_own_namespace(root)? {
        return Ok(None);
    }
    let theirs = namespace(root)?;
    for &p in &pids[1..] {
        if namespace(p)? != theirs {
            return Err(refuse(
                p,
                "it lives in another IPC namespace than the root of its tree",
            ));
        }
    }
    for p in proc::pids().map_err(CheckpointError::sys("listing processes"))? {
        if !pids.contains(&p) && namespace(p).ok() == Some(theirs) {
            return Err(refuse(
                root,
                format!(
                    "pid {p} ({}) lives in its IPC namespace outside its tree (it made the namespace, or joined it): it would lose the SysV objects it shares",
                    proc::read_text(p, "comm").unwrap_or_default().trim()
                ),
            ));
        }
    }
    let read = sysv::in_namespace_of(root, || {
        let others = sysv::other_objects()?;
        let mut segments = Vec::new();
        let mut carried = 0usize;
        for s in sysv::segments()? {
            let runs = sysv::read(s.id, s.size, s.swapped > 0)?;
            carried += runs.iter().map(|(_, b)| b.len()).sum::<usize>();
            if carried > MAX_SYSV_BYTES {
                return Ok((others, None));
            }
            segments.push(SysvSegment {
                id: s.id,
                key: s.key,
                size: s.size,
                mode: s.mode,
                uid: s.uid,
                gid: s.gid,
                removed: s.removed,
                runs: runs
                    .into_iter()
                    .map(|(offset, bytes)| SegmentRun { offset, bytes })
                    .collect(),
            });
        }
        Ok((others, Some(segments)))
    })
    .map_err(CheckpointError::sys("reading the job's SysV shared memory"))?;
    match read {
        ((sems, msgs), _) if sems + msgs > 0 => Err(refuse(
            root,
            format!(
                "its IPC namespace holds {sems} SysV semaphore set(s) and {msgs} message queue(s), which do not move yet"
            ),
        )),
        (_, None) => Err(refuse(
            root,
            format!(
                "its SysV shared memory holds more than {} MiB of data (at most that moves)",
                MAX_SYSV_BYTES >> 20
            ),
        )),
        (_, Some(segments)) => Ok(Some(IpcNamespace { segments })),
    }
}

/// Checks that every SysV mapping of `images` (host pid, image) attaches a segment of `ipc`
/// whole; without `ipc`, that there is none.
pub(crate) fn check_attachments<'a>(
    ipc: Option<&IpcNamespace>,
    images: impl IntoIterator<Item = (Pid, &'a ProcessImage)>,
) -> Result<(), CheckpointError> {
    for (pid, image) in images {
        for v in &image.memory.vmas {
            let Backing::SysvShm { id, .. } = v.backing else {
                continue;
            };
            let Some(ipc) = ipc else {
                return Err(refuse(
                    pid,
                    format!(
                        "the mapping at {:#x} is SysV shared memory outside a job's IPC namespace",
                        v.start
                    ),
                ));
            };
            ferry_image::validate::check_sysv_attachment(v, ipc, id)
                .map_err(|e| refuse(pid, e.0))?;
        }
    }
    Ok(())
}
