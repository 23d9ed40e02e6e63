//! Result codes, the per-thread record of the last failure, and the guard that keeps panics on
//! the Rust side of the boundary.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int};
use std::panic::{self, AssertUnwindSafe};

use ferry_msg::MsgError;

pub const FERRY_OK: c_int = 0;
pub const FERRY_EMPTY: c_int = 1;
pub const FERRY_E_INVALID: c_int = -1;
pub const FERRY_E_TOO_LARGE: c_int = -2;
pub const FERRY_E_BUFFER: c_int = -3;
pub const FERRY_E_NAME_TAKEN: c_int = -4;
pub const FERRY_E_NO_SUCH_NAME: c_int = -5;
pub const FERRY_E_CLOSED: c_int = -6;
pub const FERRY_E_NO_DAEMON: c_int = -7;
pub const FERRY_E_IO: c_int = -8;
pub const FERRY_E_PROTOCOL: c_int = -9;

/// The code `ferry_msg.h` gives to an error of the Rust API.
pub fn code(e: &MsgError) -> c_int {
    match e {
        MsgError::TooLarge { .. } => FERRY_E_TOO_LARGE,
        MsgError::BadName(_) | MsgError::BadAddress(_) => FERRY_E_INVALID,
        MsgError::NameTaken(_) => FERRY_E_NAME_TAKEN,
        MsgError::NoSuchName(_) => FERRY_E_NO_SUCH_NAME,
        MsgError::Closed(_) => FERRY_E_CLOSED,
        MsgError::NoDaemon { .. } => FERRY_E_NO_DAEMON,
        MsgError::Io(_) => FERRY_E_IO,
        MsgError::Protocol(_) | MsgError::Daemon(_) => FERRY_E_PROTOCOL,
    }
}

struct Last {
    code: c_int,
    message: CString,
}

thread_local! {
    static LAST: RefCell<Last> = RefCell::new(Last { code: FERRY_OK, message: CString::default() });
}

/// Records a failure of this thread's current call and returns its code.
pub(crate) fn fail(code: c_int, message: impl Into<String>) -> c_int {
    let mut message = message.into();
    if message.contains('\0') {
        message = message.replace('\0', "\\0");
    }
    let message = CString::new(message).unwrap_or_default();
    // During thread exit the record may be gone already: then the message is lost, the code
    // is still returned.
    let _ = LAST.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            *last = Last { code, message };
        }
    });
    code
}

/// Records `e` and returns its code.
pub(crate) fn fail_with(e: &MsgError) -> c_int {
    fail(code(e), e.to_string())
}

/// The message of this thread's last failure ("" if none), valid until the next failure.
pub(crate) fn last_message() -> *const c_char {
    LAST.try_with(|last| last.try_borrow().map(|l| l.message.as_ptr()).ok())
        .ok()
        .flatten()
        .unwrap_or(c"".as_ptr())
}

/// The code of this thread's last failure, [`FERRY_OK`] if none.
pub(crate) fn last_code() -> c_int {
    LAST.try_with(|last| last.try_borrow().map(|l| l.code).unwrap_or(FERRY_OK))
        .unwrap_or(FERRY_OK)
}

/// Runs `body`; a panic becomes a recorded [`FERRY_E_PROTOCOL`] failure and `on_panic`.
pub(crate) fn guard<T>(function: &str, on_panic: T, body: impl FnOnce() -> T) -> T {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            fail(
                FERRY_E_PROTOCOL,
                format!("internal error in {function}: {}", panic_message(&*payload)),
            );
            // Dropping the payload could panic in turn; leaking it cannot.
            std::mem::forget(payload);
            on_panic
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "panic"
    }
}
