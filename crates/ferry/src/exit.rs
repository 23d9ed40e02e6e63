//! Exit codes and the text of errors as users see them.

use ferry_checkpoint::{CheckpointError, ImageError, RestoreError};

/// Process exit codes of `ferry` (also listed in `ferry --help` and the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// Anything else went wrong (the process, if any, was left as it was).
    Error = 1,
    /// The process cannot be moved: `not migratable: REASON`.
    NotMigratable = 3,
    /// The image is unreadable, corrupted, invalid, or made for another kernel/CPU.
    BadImage = 4,
}

pub fn classify(err: &anyhow::Error) -> Code {
    if let Some(e) = err.downcast_ref::<CheckpointError>() {
        return match e {
            CheckpointError::NotMigratable { .. } => Code::NotMigratable,
            CheckpointError::Image(_) => Code::BadImage,
            _ => Code::Error,
        };
    }
    if let Some(e) = err.downcast_ref::<RestoreError>() {
        return match e {
            RestoreError::Image(_) | RestoreError::Incompatible(_) => Code::BadImage,
            _ => Code::Error,
        };
    }
    if err.downcast_ref::<ImageError>().is_some() {
        return Code::BadImage;
    }
    if let Some(f) = err.downcast_ref::<crate::remote::RemoteFailure>() {
        return f.code();
    }
    Code::Error
}

/// The error with its chain of causes, on one line.
pub fn render(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
