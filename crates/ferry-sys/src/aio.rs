//! Kernel file descriptors watched by tokio: readiness of a userfaultfd (page faults waiting)
//! or a pidfd (the process exited).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::uffd::Uffd;

/// Watches an owned fd for readability.
pub fn watch_owned(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd moves into the AsyncFd, so the descriptor stays open and refers to
    // the same file until the AsyncFd is dropped; as_raw_fd always returns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into())
}

/// Watches a userfaultfd for pending events.
pub fn watch_uffd(uffd: Arc<Uffd>) -> std::io::Result<AsyncFd<Arc<Uffd>>> {
    // SAFETY: the AsyncFd holds an Arc of the Uffd, which owns its descriptor and never
    // replaces it, so the descriptor stays open and the same for the AsyncFd's lifetime.
    unsafe { AsyncFd::register_with_interest(uffd, Interest::READABLE) }.map_err(|e| e.into())
}

/// Resolves once process `pid` has exited (pidfd readable).
pub async fn exited(pid: nix::unistd::Pid) {
    match crate::pidfd::pidfd_open(pid).map(watch_owned) {
        Ok(Ok(fd)) => {
            let _ = fd.readable().await;
        }
        _ => std::future::pending::<()>().await,
    }
}
