//! What needs no daemon: argument checks, error codes and messages, the boundary's panic guard,
//! the header's agreement with the library. (tests/endpoint.rs has the calls that need one.)

use std::ffi::{CStr, c_char};
use std::ptr;

use super::*;

fn last_error() -> String {
    // SAFETY: ferry_last_error returns a NUL-terminated string valid until the next failure.
    unsafe { CStr::from_ptr(ferry_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn assert_invalid(rc: c_int, mentions: &str) {
    assert_eq!(rc, FERRY_E_INVALID);
    assert_eq!(ferry_last_code(), FERRY_E_INVALID);
    assert!(last_error().contains(mentions), "{:?}", last_error());
}

#[test]
fn null_arguments_are_invalid() {
    let mut buf = [0 as c_char; 8];
    let mut len = 0usize;
    // SAFETY: every call gets NULL handles, which it must refuse, and valid buffers.
    unsafe {
        ferry_close(ptr::null_mut());
        assert_invalid(
            ferry_id(ptr::null(), buf.as_mut_ptr(), 8),
            "ferry_id: ep is NULL",
        );
        assert_invalid(ferry_fd(ptr::null()), "ferry_fd: ep is NULL");
        let rc = ferry_send(ptr::null_mut(), c"x".as_ptr(), b"x".as_ptr().cast(), 1);
        assert_invalid(rc, "ferry_send: ep is NULL");
        let rc = ferry_recv(
            ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            8,
            &mut len,
            ptr::null_mut(),
            0,
            0,
        );
        assert_invalid(rc, "ferry_recv: ep is NULL");
        assert_eq!(ferry_pending_size(ptr::null()), 0);
        assert_eq!(ferry_last_code(), FERRY_E_INVALID);
    }
}

#[test]
fn errors_map_to_their_codes() {
    let s = String::new;
    let cases = [
        (MsgError::TooLarge { size: 1, max: 0 }, FERRY_E_TOO_LARGE),
        (MsgError::BadName(s()), FERRY_E_INVALID),
        (MsgError::BadAddress(s()), FERRY_E_INVALID),
        (MsgError::NameTaken(s()), FERRY_E_NAME_TAKEN),
        (MsgError::NoSuchName(s()), FERRY_E_NO_SUCH_NAME),
        (MsgError::Closed(s()), FERRY_E_CLOSED),
        (
            MsgError::NoDaemon {
                socket: s(),
                detail: s(),
            },
            FERRY_E_NO_DAEMON,
        ),
        (MsgError::Io(s()), FERRY_E_IO),
        (MsgError::Protocol(s()), FERRY_E_PROTOCOL),
        (MsgError::Daemon(s()), FERRY_E_PROTOCOL),
    ];
    for (e, c) in cases {
        assert_eq!(code(&e), c, "{e:?}");
    }
    // What ferry_send records for an oversize message (it refuses before any daemon call).
    let rc = error::fail_with(&MsgError::TooLarge {
        size: FERRY_MAX_MESSAGE + 1,
        max: MAX_MESSAGE,
    });
    assert_eq!(
        (rc, ferry_last_code()),
        (FERRY_E_TOO_LARGE, FERRY_E_TOO_LARGE)
    );
    assert!(last_error().contains("65537"), "{}", last_error());
}

#[test]
fn the_last_error_is_per_thread_and_outlives_successes() {
    // SAFETY: a NULL handle.
    unsafe { ferry_fd(ptr::null()) };
    let before = ferry_last_error();
    // A successful call leaves the record (and its pointer) alone.
    // SAFETY: NULL is a no-op.
    unsafe { ferry_close(ptr::null_mut()) };
    assert_eq!(ferry_last_error(), before);
    assert_eq!(ferry_last_code(), FERRY_E_INVALID);
    std::thread::spawn(|| {
        assert_eq!(ferry_last_code(), FERRY_OK);
        assert_eq!(last_error(), "");
    })
    .join()
    .unwrap();
    // Interior NULs (from a daemon's strings) cannot cut the message short.
    error::fail(FERRY_E_IO, "a\0b");
    assert_eq!(last_error(), "a\\0b");
}

#[test]
fn a_panic_stays_on_the_rust_side() {
    let rc = error::guard("ferry_test", FERRY_E_PROTOCOL, || -> c_int {
        panic!("boom")
    });
    assert_eq!(rc, FERRY_E_PROTOCOL);
    assert_eq!(ferry_last_code(), FERRY_E_PROTOCOL);
    assert_eq!(last_error(), "internal error in ferry_test: boom");
    let p = error::guard("ferry_test", ptr::null_mut::<FerryEndpoint>(), || {
        panic!("{}", String::from("formatted"))
    });
    assert!(p.is_null());
    assert!(last_error().ends_with("formatted"), "{}", last_error());
}

#[test]
fn the_header_agrees_with_the_library() {
    let h = include_str!("../include/ferry_msg.h");
    let codes = [
        ("FERRY_OK", FERRY_OK),
        ("FERRY_EMPTY", FERRY_EMPTY),
        ("FERRY_E_INVALID", FERRY_E_INVALID),
        ("FERRY_E_TOO_LARGE", FERRY_E_TOO_LARGE),
        ("FERRY_E_BUFFER", FERRY_E_BUFFER),
        ("FERRY_E_NAME_TAKEN", FERRY_E_NAME_TAKEN),
        ("FERRY_E_NO_SUCH_NAME", FERRY_E_NO_SUCH_NAME),
        ("FERRY_E_CLOSED", FERRY_E_CLOSED),
        ("FERRY_E_NO_DAEMON", FERRY_E_NO_DAEMON),
        ("FERRY_E_IO", FERRY_E_IO),
        ("FERRY_E_PROTOCOL", FERRY_E_PROTOCOL),
    ];
    for (name, value) in codes {
        assert!(
            h.contains(&format!("    {name} = {value}")),
            "{name} = {value}"
        );
    }
    let in_header = h
        .lines()
        .filter(|l| l.starts_with("    FERRY_") && l.contains(" = "));
    assert_eq!(in_header.count(), codes.len(), "a code the library lacks");
    assert!(h.contains(&format!("#define FERRY_MAX_MESSAGE {FERRY_MAX_MESSAGE}\n")));
    assert!(h.contains(&format!(
        "#define FERRY_WAIT_FOREVER ({FERRY_WAIT_FOREVER})\n"
    )));
    for f in [
        "ferry_endpoint *ferry_open(const char *name);",
        "void ferry_close(ferry_endpoint *ep);",
        "int ferry_id(const ferry_endpoint *ep, char *buf, size_t cap);",
        "int ferry_fd(const ferry_endpoint *ep);",
        "int ferry_send(ferry_endpoint *ep, const char *to, const void *data, size_t len);",
        "int ferry_recv(ferry_endpoint *ep, void *buf, size_t cap, size_t *len, char *from,\n               size_t from_cap, int timeout_ms);",
        "size_t ferry_pending_size(const ferry_endpoint *ep);",
        "const char *ferry_last_error(void);",
        "int ferry_last_code(void);",
    ] {
        assert!(h.contains(f), "the header lacks {f}");
    }
}

/// The only test of this binary that touches the environment (and the only one that opens).
#[test]
fn open_without_a_daemon_names_the_socket() {
    let socket = format!("ferry-msg-c-nobody-{}", std::process::id());
    // SAFETY: no other test of this binary reads the environment (none opens an endpoint), and
    // std serialises its own accesses.
    unsafe { std::env::set_var("FERRY_MSG_SOCKET", &socket) };

    // SAFETY: every call gets NULL or a NUL-terminated string.
    unsafe {
        assert!(ferry_open(ptr::null()).is_null());
        assert_eq!(ferry_last_code(), FERRY_E_NO_DAEMON);
        let message = last_error();
        assert!(message.contains("no ferry message service"), "{message}");
        assert!(message.contains(&format!("@{socket}")), "{message}");

        assert!(ferry_open(c"pong".as_ptr()).is_null());
        assert_eq!(ferry_last_code(), FERRY_E_NO_DAEMON);
        assert!(ferry_open(c"not a name".as_ptr()).is_null());
        assert_eq!(ferry_last_code(), FERRY_E_INVALID);
        assert!(last_error().contains("\"not a name\""), "{}", last_error());
        assert!(ferry_open(c"\xff".as_ptr()).is_null());
        assert_eq!(ferry_last_code(), FERRY_E_INVALID);
    }
}
