//! Capture a running process into a ferry image, and bring an image back to life.
//!
//! - [`mobility`]: decides whether a process can move at all, with a precise reason if not.
//! - [`objects`]: pipes, unix socket pairs, eventfd, timerfd, signalfd and epoll fds: their state, read
//!   without changing it.
//! - [`freeze`]: a process held still under ptrace ([`freeze::Frozen`]), and the single
//!   resume path that every failure goes through, so that a failed checkpoint leaves the
//!   process running exactly as it was.
//! - [`capture`]: reads control, execution, address space, files and signal state of a frozen
//!   process into a [`ferry_image::ProcessImage`], streaming pages to `pages.img`.
//! - [`pagecopy`]: the page pipeline out of a process into a sink (file, later socket).
//! - [`restart`]: what an interrupted system call must do when the process continues.
//! - [`restore`]: rebuilds the process in a fresh vessel by syscall injection.
//! - `ipcns`: a job's IPC namespace and its SysV shared memory, moved whole.
//! - [`tree`]: a process and its descendants frozen and captured together (their restore is
//!   `restore::tree`).
//! - [`imagedir`]: the image directory (`core.img`, `pages.img`): atomic writing, verified
//!   loading.
//! - [`platform`]: this host's kernel and CPU fingerprint.
#![forbid(unsafe_code)]

pub mod capture;
pub mod freeze;
pub mod imagedir;
mod ipcns;
pub mod mobility;
pub mod objects;
pub mod pagecopy;
mod pidns;
pub mod platform;
pub mod restart;
pub mod restore;
pub mod tree;

use std::path::PathBuf;

pub use capture::{
    CheckpointOptions, CheckpointReport, Excised, ExcisionStats, checkpoint, checkpoint_with,
    excise,
};
pub use ferry_sys::Pid;
pub use imagedir::LoadedImage;
pub use mobility::{LinkFd, Options as MobilityOptions};
pub use restore::{Builder, RestoreReport, RestoredProcess, Vessel, restore};

use ferry_image::validate::PlatformMismatch;
use ferry_image::{FormatError, ValidationError};
use ferry_sys::{Errno, SysError};

/// Why a checkpoint failed. In every case the process was left running as it was.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not migratable: {reason}")]
    NotMigratable { pid: i32, reason: String },
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: i32 },
    #[error("permission denied: {detail}")]
    PermissionDenied { pid: i32, detail: String },
    #[error("image directory {}: {detail}", path.display())]
    ImageDir { path: PathBuf, detail: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{step}: {source}")]
    Sys {
        step: String,
        #[source]
        source: SysError,
    },
}

impl CheckpointError {
    pub(crate) fn sys(step: impl Into<String>) -> impl FnOnce(SysError) -> CheckpointError {
        let step = step.into();
        move |source| CheckpointError::Sys { step, source }
    }
}

/// An image that cannot be read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Format { error: FormatError, path: PathBuf },
    #[error("{}: {error}", path.display())]
    Invalid {
        error: ValidationError,
        path: PathBuf,
    },
}

/// Why a restore failed. No restored process is left behind.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot restore on this host: {0}")]
    Incompatible(#[from] PlatformMismatch),
    #[error("{what}: {path}: {detail}")]
    MissingFile {
        what: String,
        path: String,
        detail: String,
    },
    #[error("{what}: {path} changed since the checkpoint ({detail})")]
    FileChanged {
        what: String,
        path: String,
        detail: String,
    },
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A process of a tree cannot get its pid back: another task holds it on this host.
    #[error(
        "pid {pid} is in use on this host ({holder}); the processes of a tree are restored with their own pids"
    )]
    PidInUse { pid: i32, holder: String },
    /// A link to the ferry message service could not be re-created on this host (no daemon
    /// listening: `ECONNREFUSED`).
    #[error(
        "fd {fd}: {action} the ferry message service @{socket} on this host: {}",
        .errno.desc()
    )]
    Link {
        fd: i32,
        /// Abstract socket name, without the leading NUL.
        socket: String,
        /// What failed: "cannot reach", "cannot send the hello to", …
        action: &'static str,
        errno: Errno,
    },
    #[error("{step}: {source}")]
    Sys {
        step: String,
        #[source]
        source: SysError,
    },
}

impl RestoreError {
    pub(crate) fn sys(step: impl Into<String>) -> impl FnOnce(SysError) -> RestoreError {
        let step = step.into();
        move |source| RestoreError::Sys { step, source }
    }
}
