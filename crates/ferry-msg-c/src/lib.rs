//! The C ABI of ferry's message API: `libferrymsg.so` / `libferrymsg.a` with the hand-written
//! header `include/ferry_msg.h`, for programs in any language that can call C.
//!
//! Each exported function wraps one call of the Rust crate `ferry-msg`. Errors become `FERRY_E_*` codes ([`code`]) plus a
//! message per thread; panics are caught at the boundary; a received message that does not fit
//! the caller's buffers stays in the handle for the next `ferry_recv`. Every pointer the caller
//! hands over is turned into a reference in [`raw`] (the documented exception to "`unsafe` only
//! in ferry-sys"); the functions here only call it, each with its `SAFETY:` reason.
//!
//! Build with `cargo build -p ferry-msg-c`; link with
//! `cc -I crates/ferry-msg-c/include prog.c -L target/debug -lferrymsg`.

mod error;
mod raw;
#[cfg(test)]
mod tests;

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::time::Duration;

use ferry_msg::{Endpoint, MAX_MESSAGE, Message, MsgError, Wait};

pub use error::{
    FERRY_E_BUFFER, FERRY_E_CLOSED, FERRY_E_INVALID, FERRY_E_IO, FERRY_E_NAME_TAKEN,
    FERRY_E_NO_DAEMON, FERRY_E_NO_SUCH_NAME, FERRY_E_PROTOCOL, FERRY_E_TOO_LARGE, FERRY_EMPTY,
    FERRY_OK, code,
};
use error::{fail, fail_with, guard};

/// `FERRY_MAX_MESSAGE` of the header.
pub const FERRY_MAX_MESSAGE: usize = 65536;
const _: () = assert!(
    FERRY_MAX_MESSAGE == MAX_MESSAGE,
    "ferry_msg.h is out of date"
);

/// `FERRY_WAIT_FOREVER` of the header.
pub const FERRY_WAIT_FOREVER: c_int = -1;

/// An open endpoint; `ferry_endpoint` in C, where it is opaque.
#[derive(Debug)]
pub struct FerryEndpoint {
    ep: Endpoint,
    /// A received message that did not fit the caller's buffers (`FERRY_E_BUFFER`): the next
    /// `ferry_recv` returns it.
    held: Option<Message>,
}

fn null(function: &str, argument: &str) -> c_int {
    fail(FERRY_E_INVALID, format!("{function}: {argument} is NULL"))
}

/// Opens an endpoint at the local daemon; NULL on error. See `ferry_msg.h`.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_open(name: *const c_char) -> *mut FerryEndpoint {
    guard("ferry_open", ptr::null_mut(), || {
        // SAFETY: the caller's promise (above and in ferry_msg.h).
        let name = unsafe { raw::cstr(name) };
        let name = match name.map(CStr::to_str).transpose() {
            Ok(name) => name,
            Err(_) => {
                let lossy = name.map(CStr::to_string_lossy).unwrap_or_default();
                fail_with(&MsgError::BadName(lossy.into_owned()));
                return ptr::null_mut();
            }
        };
        match Endpoint::open(name) {
            Ok(ep) => raw::into_handle(Box::new(FerryEndpoint { ep, held: None })),
            Err(e) => {
                fail_with(&e);
                ptr::null_mut()
            }
        }
    })
}

/// Closes the endpoint and frees the handle. NULL is a no-op.
///
/// # Safety
/// `ep` is NULL or a handle from [`ferry_open`] not yet closed; it is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_close(ep: *mut FerryEndpoint) {
    guard("ferry_close", (), || {
        // SAFETY: the caller's promise (above and in ferry_msg.h).
        unsafe { raw::free(ep) }
    })
}

/// Writes the endpoint's id, NUL-terminated, into `buf`. See `ferry_msg.h`.
///
/// # Safety
/// `ep` is NULL or an open handle not in use by another thread; `buf` is NULL or has `cap`
/// writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_id(ep: *const FerryEndpoint, buf: *mut c_char, cap: usize) -> c_int {
    guard("ferry_id", FERRY_E_PROTOCOL, || {
        // SAFETY: the caller's promise (above and in ferry_msg.h).
        let Some(h) = (unsafe { raw::handle(ep) }) else {
            return null("ferry_id", "ep");
        };
        if buf.is_null() {
            return null("ferry_id", "buf");
        }
        let id = h.ep.id().to_string();
        if id.len() >= cap {
            return fail(
                FERRY_E_BUFFER,
                format!(
                    "ferry_id: the id {id} needs {} bytes, the buffer has {cap}",
                    id.len() + 1
                ),
            );
        }
        // SAFETY: `buf` is not NULL and has `cap` > `id.len()` writable bytes (the caller's
        // promise, checked above).
        unsafe { raw::write_cstr(buf, &id) };
        FERRY_OK
    })
}

/// The endpoint's connection fd, for `poll`. See `ferry_msg.h`.
///
/// # Safety
/// `ep` is NULL or an open handle not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_fd(ep: *const FerryEndpoint) -> c_int {
    guard("ferry_fd", FERRY_E_PROTOCOL, || {
        // SAFETY: the caller's promise (above and in ferry_msg.h).
        match unsafe { raw::handle(ep) } {
            Some(h) => h.ep.as_raw_fd(),
            None => null("ferry_fd", "ep"),
        }
    })
}

/// Sends `len` bytes at `data` to `to` (a name or an id). See `ferry_msg.h`.
///
/// # Safety
/// `ep` is NULL or an open handle not in use by another thread; `to` is NULL or a NUL-terminated
/// string; `data` is NULL or has `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_send(
    ep: *mut FerryEndpoint,
    to: *const c_char,
    data: *const c_void,
    len: usize,
) -> c_int {
    guard("ferry_send", FERRY_E_PROTOCOL, || {
        // SAFETY: the caller's promise (above and in ferry_msg.h).
        let Some(h) = (unsafe { raw::handle_mut(ep) }) else {
            return null("ferry_send", "ep");
        };
        // SAFETY: the caller's promise (above and in ferry_msg.h).
        let Some(to) = (unsafe { raw::cstr(to) }) else {
            return null("ferry_send", "to");
        };
        // Refused before `data` is looked at: its length is not worth trusting.
        if len > MAX_MESSAGE {
            return fail_with(&MsgError::TooLarge {
                size: len,
                max: MAX_MESSAGE,
            });
        }
        // SAFETY: the caller's promise (above and in ferry_msg.h).
        let Some(data) = (unsafe { raw::bytes(data, len) }) else {
            return null("ferry_send", "data");
        };
        let Ok(to) = to.to_str() else {
            return fail_with(&MsgError::BadAddress(to.to_string_lossy().into_owned()));
        };
        match h.ep.send(to, data) {
            Ok(()) => FERRY_OK,
            Err(e) => fail_with(&e),
        }
    })
}

/// Receives one message into `buf`, its sender's id into `from`. See `ferry_msg.h`.
///
/// # Safety
/// `ep` is NULL or an open handle not in use by another thread; `buf` is NULL or has `cap`
/// writable bytes; `len` is NULL or a writable `size_t`; `from` is NULL or has `from_cap`
/// writable bytes; none of them overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_recv(
    ep: *mut FerryEndpoint,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
    from: *mut c_char,
    from_cap: usize,
    timeout_ms: c_int,
) -> c_int {
    guard("ferry_recv", FERRY_E_PROTOCOL, || {
        // SAFETY: the caller's promise (above and in ferry_msg.h).
        let Some(h) = (unsafe { raw::handle_mut(ep) }) else {
            return null("ferry_recv", "ep");
        };
        // SAFETY: the caller's promise (above and in ferry_msg.h).
        let Some(len) = (unsafe { raw::size_out(len) }) else {
            return null("ferry_recv", "len");
        };
        if buf.is_null() && cap > 0 {
            return null("ferry_recv", "buf");
        }
        let wait = match timeout_ms {
            FERRY_WAIT_FOREVER => Wait::Forever,
            0 => Wait::NoWait,
            ms if ms > 0 => Wait::For(Duration::from_millis(ms.unsigned_abs().into())),
            ms => {
                return fail(
                    FERRY_E_INVALID,
                    format!(
                        "ferry_recv: timeout_ms {ms}: FERRY_WAIT_FOREVER (-1), 0 or a positive \
                         number of milliseconds"
                    ),
                );
            }
        };
        let m = match h.held.take() {
            Some(m) => m,
            None => match h.ep.recv(wait) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    *len = 0;
                    return FERRY_EMPTY;
                }
                Err(e) => return fail_with(&e),
            },
        };
        *len = m.data.len();
        let size = m.data.len();
        let sender = m.from.to_string();
        if size > cap {
            h.held = Some(m);
            return fail(
                FERRY_E_BUFFER,
                format!(
                    "ferry_recv: the message of {size} bytes does not fit the buffer of {cap} \
                     bytes; it is kept for the next call"
                ),
            );
        }
        if !from.is_null() && sender.len() >= from_cap {
            h.held = Some(m);
            return fail(
                FERRY_E_BUFFER,
                format!(
                    "ferry_recv: the sender id {sender} needs {} bytes, the from buffer has \
                     {from_cap}; the message is kept for the next call",
                    sender.len() + 1
                ),
            );
        }
        // SAFETY: `buf` has `cap` >= `size` writable bytes, not overlapping the message (the
        // caller's promise; checked above); NULL only if `cap`, hence `size`, is 0.
        unsafe { raw::write(buf, &m.data) };
        if !from.is_null() {
            // SAFETY: `from` is not NULL and has `from_cap` > `sender.len()` writable bytes (the
            // caller's promise; checked above).
            unsafe { raw::write_cstr(from, &sender) };
        }
        FERRY_OK
    })
}

/// The length of the message held back by `FERRY_E_BUFFER`, else 0.
///
/// # Safety
/// `ep` is NULL or an open handle not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_pending_size(ep: *const FerryEndpoint) -> usize {
    guard("ferry_pending_size", 0, || {
        // SAFETY: the caller's promise (above and in ferry_msg.h).
        match unsafe { raw::handle(ep) } {
            Some(h) => h.held.as_ref().map_or(0, |m| m.data.len()),
            None => {
                null("ferry_pending_size", "ep");
                0
            }
        }
    })
}

/// The message of this thread's last failing call, "" if none; owned by the library, valid
/// until the next failing call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn ferry_last_error() -> *const c_char {
    guard("ferry_last_error", c"".as_ptr(), error::last_message)
}

/// The code of this thread's last failing call, `FERRY_OK` if none.
#[unsafe(no_mangle)]
pub extern "C" fn ferry_last_code() -> c_int {
    guard("ferry_last_code", FERRY_E_PROTOCOL, error::last_code)
}
