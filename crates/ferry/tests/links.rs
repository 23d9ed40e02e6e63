//! Links: a process's connection (`AF_UNIX` `SOCK_SEQPACKET`, abstract name) to the local
//! daemon's message service. The daemon names the fds; checkpoint records them, restore
//! connects a new socket to the same name on its host, sends the hello first and puts it at
//! the old fd number. Here the test process plays the message service, and drives checkpoint
//! and restore through the library (the daemon's way: the CLI has no way to name links).

mod support;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_checkpoint::{CheckpointOptions, LinkFd, MobilityOptions, RestoreError};
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr};
use support::*;

/// Connects to the service named by argv[1], says which fd it got (and keeps a duplicate of
/// it at fd 9), then answers every datagram with "pong " + the datagram, until end of file.
const PY_LINKED: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("\0" + sys.argv[1])
os.dup2(s.fileno(), 9)
print("connected", s.fileno(), flush=True)
while True:
    m = s.recv(4096)
    if not m:
        print("eof", flush=True)
        break
    s.send(b"pong " + m)
"#;

/// How long the service waits for anything (a restore takes well under a second).
const WAIT: Duration = Duration::from_secs(5);

/// The message service's listening socket (non-blocking: every wait has a deadline).
struct Service {
    name: String,
    fd: OwnedFd,
}

impl Service {
    fn listen(label: &str) -> Service {
        let name = format!("ferry-test-{label}-{}", std::process::id());
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .expect("socket(AF_UNIX, SOCK_SEQPACKET)");
        let addr = UnixAddr::new_abstract(name.as_bytes()).expect("abstract address");
        socket::bind(fd.as_raw_fd(), &addr).expect("binding the abstract name");
        socket::listen(&fd, Backlog::new(8).expect("backlog")).expect("listen");
        Service { name, fd }
    }

    /// The next connection, within `timeout`.
    fn accept(&self, timeout: Duration) -> Option<Conn> {
        let deadline = Instant::now() + timeout;
        loop {
            match socket::accept4(
                self.fd.as_raw_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                Ok(fd) => return Some(Conn(fd)),
                Err(Errno::EAGAIN | Errno::EINTR) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(Errno::EAGAIN) => return None,
                Err(e) => panic!("accept on @{}: {e}", self.name),
            }
        }
    }
}

/// One accepted connection (non-blocking).
struct Conn(RawFd);

impl Conn {
    /// The next datagram, or None at end of file; panics after `timeout`.
    fn recv(&self, what: &str, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 8192];
        loop {
            match socket::recv(self.0, &mut buf, MsgFlags::empty()) {
                Ok(0) => return None,
                Ok(n) => return Some(buf[..n].to_vec()),
                Err(Errno::EAGAIN | Errno::EINTR) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("waiting {timeout:?} for {what}: {e}"),
            }
        }
    }

    fn send(&self, data: &[u8]) {
        let n = socket::send(self.0, data, MsgFlags::MSG_NOSIGNAL).expect("send");
        assert_eq!(n, data.len());
    }

    /// Sends `ping`, expects "pong " + `ping` back.
    fn ping(&self, ping: &[u8], proc: &Proc) {
        self.send(ping);
        let answer = self.recv("the answer", WAIT);
        let want = [b"pong ".as_slice(), ping].concat();
        assert_eq!(
            answer.as_deref(),
            Some(want.as_slice()),
            "the process must answer {:?} on this connection\n{}",
            String::from_utf8_lossy(ping),
            proc.diagnostics()
        );
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = nix::unistd::close(self.0);
    }
}

/// The python workload, connected to `service` (accepted: returned), and its link fd.
fn start_linked(scratch: &Scratch, service: &Service) -> (Proc, Conn, i32) {
    let dir = scratch.subdir("run");
    let mut proc = Launch::new("py-linked", system_program("python3"), &dir)
        .args(["-c", PY_LINKED, service.name.as_str()])
        .cwd(&dir)
        .spawn();
    wait_for_text(&mut proc, "\n");
    let out = proc.output();
    let fd: i32 = out
        .strip_prefix("connected ")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line\n{}", proc.diagnostics()));
    let conn = service
        .accept(WAIT)
        .unwrap_or_else(|| panic!("the workload never connected\n{}", proc.diagnostics()));
    conn.ping(b"before", &proc);
    (proc, conn, fd)
}

/// The options the daemon would pass: `fd` and its duplicate 9 are links to `service`.
fn link_options(service: &Service, fd: i32, hello: &[u8]) -> MobilityOptions {
    MobilityOptions {
        links: [fd, 9]
            .into_iter()
            .map(|fd| LinkFd {
                fd,
                socket: service.name.clone(),
                hello: hello.to_vec(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Checkpoints (and so ends) the workload; returns its stdout file.
fn checkpoint_linked(proc: Proc, image: &Path, opts: MobilityOptions) -> Option<PathBuf> {
    ferry_checkpoint::checkpoint_with(proc.pid(), image, CheckpointOptions::default(), opts)
        .unwrap_or_else(|e| panic!("checkpoint: {e}\n{}", proc.diagnostics()));
    // The test process is the workload's parent and, through the library, was its tracer:
    // the checkpoint killed it and reaped it already.
    assert!(
        proc_stat(proc.raw_pid()).is_none(),
        "the checkpointed process is still there\n{}",
        proc.diagnostics()
    );
    let stdout = proc.stdout.clone();
    // Nothing left to kill or reap (its pid may already be another process's).
    std::mem::forget(proc);
    stdout
}

fn socket_inode(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("fd {fd}: {e}"))
}

/// Checkpoint records the link, restore connects again: the service gets a new connection
/// whose first datagram is the hello, and the restored process talks on it — at its old fd
/// number, with its duplicate still the same socket.
#[test]
fn link_is_reconnected_on_restore() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("link-restore");
    let service = Service::listen("link-restore");
    let (proc, old, fd) = start_linked(&scratch, &service);
    let image = scratch.join("image");
    let hello = b"\x01resume endpoint 42\x00key".to_vec();
    let stdout = checkpoint_linked(proc, &image, link_options(&service, fd, &hello));
    assert_eq!(
        old.recv("the end of the old connection", WAIT),
        None,
        "the old connection ends with the checkpointed process"
    );
    assert!(
        service.accept(Duration::ZERO).is_none(),
        "nothing connects before the restore"
    );

    let restored = ferry_checkpoint::restore(&image).unwrap_or_else(|e| panic!("restore: {e}"));
    let pid = restored.pid.as_raw();
    let proc = Proc::adopt("py-linked (restored)", pid, stdout, None);
    let conn = service.accept(WAIT).unwrap_or_else(|| {
        panic!(
            "the restored process never connected\n{}",
            proc.diagnostics()
        )
    });
    assert_eq!(
        conn.recv("the hello", WAIT).as_deref(),
        Some(hello.as_slice()),
        "the first datagram on the new connection is the hello\n{}",
        proc.diagnostics()
    );
    conn.ping(b"after", &proc);
    conn.ping(b"again", &proc);
    assert!(
        service.accept(Duration::from_millis(100)).is_none(),
        "one connection per link, its duplicate shares it"
    );
    let (a, b) = (socket_inode(pid, fd), socket_inode(pid, 9));
    assert!(
        a.starts_with("socket:") && a == b,
        "fd {fd} ({a}) and its duplicate fd 9 ({b}) must be one socket"
    );
    assert!(
        !proc.output().contains("eof"),
        "the restored process saw its link end\n{}",
        proc.diagnostics()
    );
}

/// Without the service on the restoring host, restore fails naming it; sockets the daemon did not name, or named fds that are no sockets, are refused.
#[test]
fn link_needs_the_service_and_a_socket() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("link-refused");
    let service = Service::listen("link-refused");
    let (proc, _old, fd) = start_linked(&scratch, &service);

    let check = |opts: &MobilityOptions| {
        ferry_checkpoint::mobility::check_resources(proc.pid(), opts)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = check(&MobilityOptions::default());
    assert!(
        e.contains(&format!("fd {fd} is a socket")),
        "an unnamed socket is refused: {e}"
    );
    let mut not_a_socket = link_options(&service, fd, b"hi");
    not_a_socket.links[1].fd = 1;
    let e = check(&not_a_socket);
    assert!(
        e.contains(&format!(
            "fd 1 is listed as a link to the ferry message service @{} but is not a socket",
            service.name
        )),
        "a named fd that is no socket is refused: {e}"
    );
    let mut bad_name = link_options(&service, fd, b"hi");
    bad_name.links[0].socket.clear();
    let e = check(&bad_name);
    assert!(e.contains("empty abstract socket name"), "{e}");
    check_resources_ok(&proc, &link_options(&service, fd, b"hi"));

    let image = scratch.join("image");
    checkpoint_linked(proc, &image, link_options(&service, fd, b"hi"));
    let name = service.name.clone();
    drop(service);
    let err = match ferry_checkpoint::restore(&image) {
        Ok(r) => panic!("restore without the service succeeded (pid {})", r.pid),
        Err(e) => e,
    };
    assert!(
        matches!(&err, RestoreError::Link { fd: f, .. } if *f == fd),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "fd {fd}: cannot reach the ferry message service @{name} on this host: Connection refused"
        )
    );
}

fn check_resources_ok(proc: &Proc, opts: &MobilityOptions) {
    if let Err(e) = ferry_checkpoint::mobility::check_resources(proc.pid(), opts) {
        panic!("the named links are accepted: {e}\n{}", proc.diagnostics());
    }
}
