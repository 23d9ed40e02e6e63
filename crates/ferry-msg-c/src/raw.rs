//! C's pointers turned into Rust references, and back: the one place of this crate that
//! dereferences memory it was handed.
//!
//! ferry keeps `unsafe` in `ferry-sys`; this crate is the documented exception, because an FFI
//! boundary cannot avoid trusting the caller's pointers. The exception is kept narrow: every
//! function here does one conversion (a pointer into a handle, a `CStr`, a byte slice, or a copy
//! into the caller's buffer), NULL becomes `None` rather than undefined behaviour, and the rest
//! of the crate is safe code working on the results. Each caller states in its `SAFETY:`
//! comment which promise of `ferry_msg.h` makes the conversion sound.

use std::ffi::{CStr, c_char, c_void};
use std::ptr;

use crate::FerryEndpoint;

/// Gives the handle to C: the pointer stays valid until [`free`].
pub(crate) fn into_handle(ep: Box<FerryEndpoint>) -> *mut FerryEndpoint {
    Box::into_raw(ep)
}

/// Drops a handle made by [`into_handle`]. NULL is a no-op.
///
/// # Safety
/// `ep` is NULL or a pointer from [`into_handle`] not yet freed, and not used afterwards.
pub(crate) unsafe fn free(ep: *mut FerryEndpoint) {
    if !ep.is_null() {
        // SAFETY: the caller's promise: `ep` came from `Box::into_raw` and is freed once.
        drop(unsafe { Box::from_raw(ep) });
    }
}

/// The handle behind `ep`, `None` for NULL.
///
/// # Safety
/// `ep` is NULL or a live handle from [`into_handle`], not used mutably elsewhere for `'a`.
pub(crate) unsafe fn handle<'a>(ep: *const FerryEndpoint) -> Option<&'a FerryEndpoint> {
    // SAFETY: the caller's promise: non-NULL means a live, aligned `FerryEndpoint`.
    unsafe { ep.as_ref() }
}

/// The handle behind `ep`, mutably, `None` for NULL.
///
/// # Safety
/// `ep` is NULL or a live handle from [`into_handle`], not used elsewhere for `'a`.
pub(crate) unsafe fn handle_mut<'a>(ep: *mut FerryEndpoint) -> Option<&'a mut FerryEndpoint> {
    // SAFETY: the caller's promise: non-NULL means a live, aligned `FerryEndpoint`, unaliased.
    unsafe { ep.as_mut() }
}

/// The string at `s`, `None` for NULL.
///
/// # Safety
/// `s` is NULL or points to a NUL-terminated string that stays unchanged for `'a`.
pub(crate) unsafe fn cstr<'a>(s: *const c_char) -> Option<&'a CStr> {
    if s.is_null() {
        return None;
    }
    // SAFETY: the caller's promise: non-NULL, NUL-terminated, unchanged while borrowed.
    Some(unsafe { CStr::from_ptr(s) })
}

/// The `len` bytes at `data`; `None` for NULL unless `len` is 0 (then an empty slice).
///
/// # Safety
/// `data` is NULL or points to `len` readable, initialised bytes, unchanged for `'a`.
pub(crate) unsafe fn bytes<'a>(data: *const c_void, len: usize) -> Option<&'a [u8]> {
    if data.is_null() {
        return (len == 0).then_some(&[][..]);
    }
    // SAFETY: the caller's promise: `len` readable bytes at `data`, unchanged while borrowed;
    // an object that exists is at most `isize::MAX` bytes long.
    Some(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

/// The `usize` at `p`, `None` for NULL.
///
/// # Safety
/// `p` is NULL or points to a writable, aligned `size_t` not otherwise used for `'a`.
pub(crate) unsafe fn size_out<'a>(p: *mut usize) -> Option<&'a mut usize> {
    // SAFETY: the caller's promise: non-NULL means a writable, aligned, unaliased size_t.
    unsafe { p.as_mut() }
}

/// Copies `src` to `dst`.
///
/// # Safety
/// `dst` points to at least `src.len()` writable bytes (the caller has checked its capacity)
/// that do not overlap `src`. It may be NULL only if `src` is empty.
pub(crate) unsafe fn write(dst: *mut c_void, src: &[u8]) {
    if src.is_empty() {
        return;
    }
    // SAFETY: the caller's promise: room for `src.len()` bytes at `dst`, no overlap; u8 needs
    // no alignment.
    unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst.cast::<u8>(), src.len()) }
}

/// Copies `s` and a terminating NUL to `dst`.
///
/// # Safety
/// `dst` points to at least `s.len() + 1` writable bytes that do not overlap `s`.
pub(crate) unsafe fn write_cstr(dst: *mut c_char, s: &str) {
    // SAFETY: the caller's promise: room for `s.len() + 1` bytes at `dst`, no overlap.
    unsafe {
        write(dst.cast::<c_void>(), s.as_bytes());
        dst.add(s.len()).write(0);
    }
}
