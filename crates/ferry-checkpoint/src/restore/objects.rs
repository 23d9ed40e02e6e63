//! Kernel objects of an image created anew in the vessel: pipes, FIFOs (reopened by path),
//! unix socket pairs (with the bytes or messages that were in flight) and listening unix
//! sockets (bound to their names again), eventfd, timerfd,
//! signalfd, inotify (its watches at their descriptors), memfd (with its contents and seals),
//! deleted files (unnamed `O_TMPFILE` files in their old directory, with their contents) and
//! epoll instances (registrations added once every fd is in place). Their state was read by
//! `crate::objects` at capture.

use super::*;

/// A pipe, socket or FIFO already made or opened (by the first of its fds that came up).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Made {
    Pipe(u64),
    Socket(u64),
    Fifo(String),
}

const EFD_SEMAPHORE: u64 = 1;
/// `TFD_IOC_SET_TICKS` (`_IOW('T', 0, u64)`): sets a timerfd's count of unread expiries.
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
const EPOLL_CTL_ADD: u64 = 1;
/// `SO_SNDBUFFORCE`: `SO_SNDBUF` beyond `net.core.wmem_max` (`CAP_NET_ADMIN`; the vessel is
/// still root when objects are made).
const SO_SNDBUFFORCE: i32 = 32;
/// Bytes of pipe or memfd data written per call.
const WRITE_CHUNK: usize = 32 << 10;

impl Builder {
    /// Creates the object of primary fd `fd` (not a file, not a link) at its number. The first
    /// end of a pipe that comes up creates the whole pipe (every end, see
    /// [`Builder::create_pipe`]), and likewise the first end of a socket pair; `made`
    /// remembers which pipes and sockets exist.
    pub(super) fn create_object(
        &mut self,
        q: &mut Queue,
        fd: &Fd,
        files: &Files,
        made: &mut HashSet<Made>,
    ) -> Result<(), RestoreError> {
        self.room(q, 6, 64)?;
        let opened = match &fd.kind {
            FdKind::Pipe { pipe, .. } => {
                if made.insert(Made::Pipe(*pipe)) {
                    self.create_pipe(q, *pipe, files)?;
                }
                return Ok(());
            }
            FdKind::Fifo { path, .. } => {
                if made.insert(Made::Fifo(path.clone())) {
                    self.open_fifo(q, path, files)?;
                }
                return Ok(());
            }
            FdKind::UnixPair { socket, peer, .. } => {
                if made.insert(Made::Socket(*socket)) {
                    made.insert(Made::Socket(*peer));
                    self.create_socket_pair(q, *socket, *peer, files)?;
                }
                return Ok(());
            }
            FdKind::EventFd {
                count, semaphore, ..
            } => {
                let t = self.fds.open();
                let sem = if *semaphore { EFD_SEMAPHORE } else { 0 };
                self.push(
                    q,
                    Tag::Plain,
                    "eventfd2",
                    libc::SYS_eventfd2,
                    [0, libc::EFD_CLOEXEC as u64 | sem, 0, 0, 0, 0],
                );
                if *count > 0 {
                    let at = q.batch.bytes(&count.to_le_bytes());
                    self.push(q, Tag::Plain, "write", libc::SYS_write, [t, at, 8, 0, 0, 0]);
                }
                t
            }
            FdKind::TimerFd {
                clock,
                value_ns,
                interval_ns,
                ticks,
                ..
            } => {
                let t = self.fds.open();
                self.push(
                    q,
                    Tag::Plain,
                    "timerfd_create",
                    libc::SYS_timerfd_create,
                    [*clock as u64, libc::TFD_CLOEXEC as u64, 0, 0, 0, 0],
                );
                if *value_ns > 0 || *interval_ns > 0 {
                    // A periodic timer caught just at its expiry shows 0 left: 0 would disarm.
                    let value = (*value_ns).max(1);
                    let mut spec = Vec::with_capacity(32);
                    for ns in [*interval_ns, value] {
                        spec.extend_from_slice(&(ns / 1_000_000_000).to_le_bytes());
                        spec.extend_from_slice(&(ns % 1_000_000_000).to_le_bytes());
                    }
                    let at = q.batch.bytes(&spec);
                    self.push(
                        q,
                        Tag::Plain,
                        "timerfd_settime",
                        libc::SYS_timerfd_settime,
                        [t, 0, at, 0, 0, 0],
                    );
                }
                if *ticks > 0 {
                    let at = q.batch.bytes(&ticks.to_le_bytes());
                    self.push(
                        q,
                        Tag::Plain,
                        "ioctl(TFD_IOC_SET_TICKS)",
                        libc::SYS_ioctl,
                        [t, TFD_IOC_SET_TICKS, at, 0, 0, 0],
                    );
                }
                t
            }
            FdKind::SignalFd { mask, .. } => {
                let t = self.fds.open();
                let at = q.batch.bytes(&mask.to_le_bytes());
                self.push(
                    q,
                    Tag::Plain,
                    "signalfd4",
                    libc::SYS_signalfd4,
                    [u64::MAX, at, 8, libc::SFD_CLOEXEC as u64, 0, 0],
                );
                t
            }
            FdKind::Inotify { flags, watches } => {
                let t = self.fds.open();
                self.push(
                    q,
                    Tag::Plain,
                    "inotify_init1",
                    libc::SYS_inotify_init1,
                    [(libc::IN_CLOEXEC | libc::IN_NONBLOCK) as u64, 0, 0, 0, 0, 0],
                );
                self.flush(q)?;
                self.add_inotify_watches(q, t, watches)?;
                // Made non-blocking to be drained: its own status flags back.
                self.room(q, 1, 0)?;
                self.push(
                    q,
                    Tag::Plain,
                    "fcntl(F_SETFL)",
                    libc::SYS_fcntl,
                    [
                        t,
                        libc::F_SETFL as u64,
                        (flags & libc::O_NONBLOCK) as u64,
                        0,
                        0,
                        0,
                    ],
                );
                t
            }
            FdKind::Epoll { .. } => {
                let t = self.fds.open();
                self.push(
                    q,
                    Tag::Plain,
                    "epoll_create1",
                    libc::SYS_epoll_create1,
                    [libc::EPOLL_CLOEXEC as u64, 0, 0, 0, 0, 0],
                );
                t
            }
            FdKind::MemFd {
                name,
                pos,
                seals,
                data,
                ..
            } => {
                let origin = UnnamedOrigin::MemFd {
                    name: name.clone(),
                    seals: 0,
                };
                let t = self.unnamed_file_for(q, fd.number, &origin, data)?;
                self.room(q, 2, 0)?;
                self.seek(q, t, *pos);
                // Last: a write or size seal would stop the writes above.
                if *seals != 0 {
                    self.push(
                        q,
                        Tag::Plain,
                        "fcntl(F_ADD_SEALS)",
                        libc::SYS_fcntl,
                        [t, libc::F_ADD_SEALS as u64, u64::from(*seals), 0, 0, 0],
                    );
                }
                t
            }
            FdKind::DeletedFile {
                path,
                flags,
                pos,
                mode,
                data,
            } => {
                let origin = UnnamedOrigin::Deleted {
                    path: path.clone(),
                    mode: *mode,
                };
                let t = self.unnamed_file_for(q, fd.number, &origin, data)?;
                // Made read-write to be filled: reopened with its own access mode if it had
                // another.
                let t = if flags & libc::O_ACCMODE != libc::O_RDWR {
                    let again = format!("/proc/self/fd/{t}");
                    self.room(q, 2, again.len() + 8)?;
                    let again_at = q.batch.c_string(&again);
                    let t2 = self.fds.open();
                    self.push(
                        q,
                        Tag::Plain,
                        "open",
                        libc::SYS_openat,
                        [
                            libc::AT_FDCWD as u64,
                            again_at,
                            (*flags | libc::O_CLOEXEC) as u64,
                            0,
                            0,
                            0,
                        ],
                    );
                    self.push(q, Tag::Plain, "close", libc::SYS_close, [t, 0, 0, 0, 0, 0]);
                    self.fds.close(t);
                    t2
                } else {
                    t
                };
                self.room(q, 1, 0)?;
                self.seek(q, t, *pos);
                t
            }
            FdKind::UnixListener {
                kind,
                name,
                backlog,
                flags,
                pass_credentials,
                ..
            } => {
                let (addr, file) = match name {
                    SocketName::Abstract(bytes) => (unix_sockaddr(&[&[0], bytes]), None),
                    SocketName::Path {
                        path,
                        dev,
                        inode,
                        mode,
                    } => {
                        let at = self.listening_path(path, *dev, *inode)?;
                        (unix_sockaddr(&[at.as_bytes()]), Some((at, *mode)))
                    }
                };
                self.room(
                    q,
                    5,
                    addr.len() + file.as_ref().map_or(0, |(p, _)| p.len()) + 24,
                )?;
                let nonblock = if flags & libc::O_NONBLOCK != 0 {
                    libc::SOCK_NONBLOCK
                } else {
                    0
                };
                let t = self.fds.open();
                self.push(
                    q,
                    Tag::Plain,
                    "socket",
                    libc::SYS_socket,
                    [
                        libc::AF_UNIX as u64,
                        (kind.number() | libc::SOCK_CLOEXEC | nonblock) as u64,
                        0,
                        0,
                        0,
                        0,
                    ],
                );
                let a = q.batch.bytes(&addr);
                self.push(
                    q,
                    Tag::Plain,
                    "bind",
                    libc::SYS_bind,
                    [t, a, addr.len() as u64, 0, 0, 0],
                );
                if let Some((at, mode)) = file {
                    // bind made the file with the vessel's umask: the original's bits back.
                    let p = q.batch.c_string(&at);
                    self.push(
                        q,
                        Tag::Plain,
                        "fchmodat(socket file)",
                        libc::SYS_fchmodat,
                        [libc::AT_FDCWD as u64, p, u64::from(mode), 0, 0, 0],
                    );
                }
                self.push(
                    q,
                    Tag::Plain,
                    "listen",
                    libc::SYS_listen,
                    [t, u64::from(*backlog), 0, 0, 0, 0],
                );
                if *pass_credentials {
                    self.set_socket_option(q, t, libc::SO_PASSCRED, 1)?;
                }
                t
            }
            FdKind::Regular { .. }
            | FdKind::Directory { .. }
            | FdKind::CharDevice { .. }
            | FdKind::ProcFile { .. }
            | FdKind::Link { .. } => {
                unreachable!("files and links are opened by their own paths")
            }
            FdKind::UnixStream { .. } => {
                unreachable!("the image reader turns stream pairs into UnixPairs")
            }
        };
        self.room(q, 3, 0)?;
        self.settle(q, opened, fd);
        // The objects are created blocking, without O_APPEND.
        let status = fd.kind.flags() & (libc::O_NONBLOCK | libc::O_APPEND);
        if status != 0 {
            self.push(
                q,
                Tag::Plain,
                "fcntl(F_SETFL)",
                libc::SYS_fcntl,
                [
                    fd.number as u64,
                    libc::F_SETFL as u64,
                    status as u64,
                    0,
                    0,
                    0,
                ],
            );
        }
        Ok(())
    }

    /// The file of fd `number` (a memfd or deleted file): a new descriptor of the file its
    /// mappings were made from, if they were, else a file made as `origin` says with `data`.
    fn unnamed_file_for(
        &mut self,
        q: &mut Queue,
        number: i32,
        origin: &UnnamedOrigin,
        data: &[u8],
    ) -> Result<u64, RestoreError> {
        let Some(&kept) = self.mapped_unnamed.get(&number) else {
            return self.make_unnamed_file(q, origin, data);
        };
        self.room(q, 1, 0)?;
        let t = self.fds.open();
        self.push(q, Tag::Plain, "dup", libc::SYS_dup, [kept, 0, 0, 0, 0, 0]);
        Ok(t)
    }

    /// Makes a file without a name as `origin` says — `memfd_create` (sealable), or an
    /// `O_TMPFILE` in the deleted file's directory with its mode exactly — holding `data`
    /// (what is queued runs first); returns its fd, read-write and close-on-exec.
    pub(super) fn make_unnamed_file(
        &mut self,
        q: &mut Queue,
        origin: &UnnamedOrigin,
        data: &[u8],
    ) -> Result<u64, RestoreError> {
        let t = match origin {
            UnnamedOrigin::MemFd { name, .. } => {
                self.room(q, 3, name.len() + 8)?;
                let t = self.fds.open();
                let name_at = q.batch.c_string(name);
                self.push(
                    q,
                    Tag::Plain,
                    "memfd_create",
                    libc::SYS_memfd_create,
                    [
                        name_at,
                        (libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) as u64,
                        0,
                        0,
                        0,
                        0,
                    ],
                );
                t
            }
            UnnamedOrigin::Deleted { path, mode } => {
                let dir = parent_dir(path);
                self.room(q, 3, dir.len() + 8)?;
                let t = self.fds.open();
                let dir_at = q.batch.c_string(dir);
                self.push(
                    q,
                    Tag::OwnerOpen,
                    "open(O_TMPFILE)",
                    libc::SYS_openat,
                    [
                        libc::AT_FDCWD as u64,
                        dir_at,
                        (libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC) as u64,
                        u64::from(*mode),
                        0,
                        0,
                    ],
                );
                // The mode exactly, whatever the vessel's umask took from it.
                self.push(
                    q,
                    Tag::Plain,
                    "fchmod",
                    libc::SYS_fchmod,
                    [t, u64::from(*mode), 0, 0, 0, 0],
                );
                t
            }
        };
        self.fill_file(q, t, data)?;
        Ok(t)
    }

    /// Pipe `pipe`: made with its capacity, its bytes written in (non-blocking, every write
    /// checked), then each of its primary fds placed. The new ends are first moved above every
    /// fd number of the image, so that placing one end never overwrites the other.
    fn create_pipe(&mut self, q: &mut Queue, pipe: u64, files: &Files) -> Result<(), RestoreError> {
        let (ends, capacity, data) = pipe_ends(
            files,
            |k| matches!(k, FdKind::Pipe { pipe: p, .. } if *p == pipe),
        );
        let above = above_every_fd(files);
        self.room(q, 8, 8)?;
        let pair = q.batch.out(8);
        let (r0, w0) = (self.fds.open(), self.fds.open());
        self.push(
            q,
            Tag::Plain,
            "pipe2",
            libc::SYS_pipe2,
            [
                pair,
                (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64,
                0,
                0,
                0,
                0,
            ],
        );
        let [r, w] = self.move_above(q, [r0, w0], above);
        self.push(
            q,
            Tag::Plain,
            "fcntl(F_SETPIPE_SZ)",
            libc::SYS_fcntl,
            [w, libc::F_SETPIPE_SZ as u64, u64::from(capacity), 0, 0, 0],
        );
        self.flush(q)?;
        self.write_all(q, w, data, None)?;
        for end in ends {
            let write = matches!(&end.kind, FdKind::Pipe { write: true, .. });
            self.place_end(q, if write { w } else { r }, end)?;
        }
        self.close_all(q, [r, w])
    }

    /// Unix socket pair `socket`–`peer`: made non-blocking, moved above every fd number of the
    /// image, its send buffers and `SO_PASSCRED` set, what each end held written into it from
    /// the other end (every write checked; a datagram or record per message), then each end
    /// placed at its fd.
    fn create_socket_pair(
        &mut self,
        q: &mut Queue,
        socket: u64,
        peer: u64,
        files: &Files,
    ) -> Result<(), RestoreError> {
        let end_of = |s: u64| {
            files.fds.iter().find(|f| {
                f.dup_of.is_none()
                    && matches!(&f.kind, FdKind::UnixPair { socket: x, .. } if *x == s)
            })
        };
        // Validation guarantees both ends.
        let (Some(a), Some(b)) = (end_of(socket), end_of(peer)) else {
            return Err(RestoreError::Sys {
                step: q.step.clone(),
                source: SysError::UnexpectedStop {
                    pid: self.pid().as_raw(),
                    detail: format!("socket {socket} or its peer {peer} has no fd in the image"),
                },
            });
        };
        let FdKind::UnixPair { kind, .. } = a.kind else {
            return Ok(());
        };
        let above = above_every_fd(files);
        self.room(q, 5, 8)?;
        let pair = q.batch.out(8);
        let (a0, b0) = (self.fds.open(), self.fds.open());
        self.push(
            q,
            Tag::Plain,
            "socketpair",
            libc::SYS_socketpair,
            [
                libc::AF_UNIX as u64,
                (kind.number() | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) as u64,
                0,
                pair,
                0,
                0,
            ],
        );
        let [sa, sb] = self.move_above(q, [a0, b0], above);
        for (end, fd) in [(sa, a), (sb, b)] {
            let FdKind::UnixPair {
                pass_credentials,
                send_buffer,
                ..
            } = fd.kind
            else {
                continue;
            };
            if send_buffer > 0 {
                // The kernel doubles what it is given (and reported the doubled value).
                self.set_socket_option(q, end, SO_SNDBUFFORCE, send_buffer / 2)?;
            }
            if pass_credentials {
                self.set_socket_option(q, end, libc::SO_PASSCRED, 1)?;
            }
        }
        self.flush(q)?;
        // What an end reads was written by the other.
        for (to, from) in [(a, sb), (b, sa)] {
            let FdKind::UnixPair { messages, .. } = &to.kind else {
                continue;
            };
            match kind {
                SocketKind::Stream => {
                    for m in messages {
                        self.write_all(q, from, m, None)?;
                    }
                }
                _ => self.send_messages(q, from, messages)?,
            }
        }
        self.place_end(q, sa, a)?;
        self.place_end(q, sb, b)?;
        self.close_all(q, [sa, sb])
    }

    /// Where a listening socket of the image binds for `path`: `path` itself where nothing
    /// is there; where the original's socket file is (this host, or a file system both hosts
    /// share), a name beside it that replaces `path` as the process starts
    /// ([`Builder::take_over_socket_paths`]): until then, a migration that fails leaves the
    /// original's name alone.
    fn listening_path(&mut self, path: &str, dev: u64, inode: u64) -> Result<String, RestoreError> {
        let taken = |detail: String| RestoreError::FileChanged {
            what: "the path of a listening socket".into(),
            path: path.to_string(),
            detail,
        };
        // (Its directory is there: `precheck_files`.)
        let dir = parent_dir(path);
        let Ok(st) = proc::stat_path(Path::new(path)) else {
            return Ok(path.to_string());
        };
        if st.file_type() != libc::S_IFSOCK || (st.dev, st.inode) != (dev, inode) {
            return Err(taken(
                "another file holds it now; the socket could not take its name back".into(),
            ));
        }
        let aside = format!(
            "{}/.ferry-{}-{inode}",
            dir.trim_end_matches('/'),
            self.pid()
        );
        if aside.len() > MAX_SOCKET_NAME {
            return Err(taken(format!(
                "the original's socket file is there, and a name beside it ({aside}) is too long for a socket"
            )));
        }
        self.bound_aside.push((aside.clone(), path.to_string()));
        Ok(aside)
    }

    /// Listening sockets bound beside their path take it over (`rename` replaces the
    /// original's socket file at once: a client connecting meanwhile finds one or the other).
    pub(super) fn take_over_socket_paths(&mut self) -> Result<(), RestoreError> {
        while let Some((aside, path)) = self.bound_aside.pop() {
            if let Err(e) = std::fs::rename(&aside, &path) {
                let _ = std::fs::remove_file(&aside);
                return Err(RestoreError::MissingFile {
                    what: "a listening socket taking its path back".into(),
                    path,
                    detail: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Queues `setsockopt(fd, SOL_SOCKET, name, &value)`.
    fn set_socket_option(
        &mut self,
        q: &mut Queue,
        fd: u64,
        name: i32,
        value: u32,
    ) -> Result<(), RestoreError> {
        self.room(q, 1, 4)?;
        let at = q.batch.bytes(&value.to_le_bytes());
        self.push(
            q,
            Tag::Plain,
            "setsockopt",
            libc::SYS_setsockopt,
            [fd, libc::SOL_SOCKET as u64, name as u64, at, 4, 0],
        );
        Ok(())
    }

    /// Sends each of `messages` as one datagram or record on socket `to`, as many per batch
    /// as fit, every send checked to have taken the whole message.
    fn send_messages(
        &mut self,
        q: &Queue,
        to: u64,
        messages: &[Vec<u8>],
    ) -> Result<(), RestoreError> {
        let mut next = 0;
        while next < messages.len() {
            let mut batch = Batch::new(self.vessel.area);
            let first = next;
            while next < messages.len() && batch.fits(1, messages[next].len()) {
                let m = &messages[next];
                let at = batch.bytes(m);
                batch.push(
                    "sendto",
                    libc::SYS_sendto,
                    [
                        to,
                        at,
                        m.len() as u64,
                        (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u64,
                        0,
                        0,
                    ],
                );
                next += 1;
            }
            if next == first {
                return Err(no_room(
                    self.pid(),
                    &format!(
                        "a queued message of {} bytes is larger than the restorer's data area",
                        messages[next].len()
                    ),
                ));
            }
            let r = self.vessel.batch(&q.step, &batch)?;
            if let Some((_, call, errno)) = r.failure() {
                return Err(injected(&q.step, self.pid(), call, errno));
            }
            for (i, m) in messages[first..next].iter().enumerate() {
                let sent = r.result(i).unwrap_or(-1);
                if sent != m.len() as i64 {
                    return Err(RestoreError::Sys {
                        step: q.step.clone(),
                        source: SysError::UnexpectedStop {
                            pid: self.pid().as_raw(),
                            detail: format!(
                                "socket fd {to} sent {sent} of a {}-byte message",
                                m.len()
                            ),
                        },
                    });
                }
            }
        }
        Ok(())
    }

    /// FIFO `path`, every primary fd of it: opened without blocking (read ends first, so that
    /// opening a write end finds a reader; a reader of its own while only write ends are
    /// opened), given its capacity and the bytes that were in flight (through a write end, or
    /// one of its own), then each fd given its flags back.
    fn open_fifo(&mut self, q: &mut Queue, path: &str, files: &Files) -> Result<(), RestoreError> {
        let (mut ends, capacity, data) = pipe_ends(
            files,
            |k| matches!(k, FdKind::Fifo { path: p, .. } if p == path),
        );
        let writes_only = |f: &Fd| f.kind.flags() & libc::O_ACCMODE == libc::O_WRONLY;
        ends.sort_by_key(|f| (writes_only(f), f.number));
        let above = above_every_fd(files);
        let mut helpers = Vec::new();
        if ends.iter().all(|f| writes_only(f)) {
            helpers.push(self.open_fifo_helper(q, path, libc::O_RDONLY, above)?);
        }
        for end in &ends {
            let cloexec = if end.cloexec { libc::O_CLOEXEC } else { 0 };
            let opened = self.open_fifo_end(q, path, end.kind.flags() | cloexec)?;
            self.settle(q, opened, end);
        }
        let first = ends.first().map_or(0, |f| f.number as u64);
        self.room(q, 1, 0)?;
        self.push(
            q,
            Tag::Plain,
            "fcntl(F_SETPIPE_SZ)",
            libc::SYS_fcntl,
            [
                first,
                libc::F_SETPIPE_SZ as u64,
                u64::from(capacity),
                0,
                0,
                0,
            ],
        );
        if !data.is_empty() && self.fifo_is_empty(q, first, data.len())? {
            let writer = match ends.iter().find(|f| f.kind.flags() & libc::O_ACCMODE != 0) {
                Some(f) => f.number as u64,
                None => {
                    let w = self.open_fifo_helper(q, path, libc::O_WRONLY, above)?;
                    helpers.push(w);
                    w
                }
            };
            self.flush(q)?;
            self.write_all(q, writer, data, None)?;
        }
        for end in &ends {
            let status = end.kind.flags() & (libc::O_NONBLOCK | libc::O_APPEND);
            self.room(q, 1, 0)?;
            self.push(
                q,
                Tag::Plain,
                "fcntl(F_SETFL)",
                libc::SYS_fcntl,
                [
                    end.number as u64,
                    libc::F_SETFL as u64,
                    status as u64,
                    0,
                    0,
                    0,
                ],
            );
        }
        for h in helpers {
            self.room(q, 1, 0)?;
            self.push(q, Tag::Plain, "close", libc::SYS_close, [h, 0, 0, 0, 0, 0]);
            self.fds.close(h);
        }
        Ok(())
    }

    /// The watches of the inotify instance at fd `fd` (non-blocking), each at its watch
    /// descriptor: the kernel numbers watches upwards from 1, so each number the image lacks is
    /// taken by a watch of a filler path that is removed at once; the `IN_IGNORED` events those
    /// removals queue are read away after. Every number the kernel hands out is checked.
    fn add_inotify_watches(
        &mut self,
        q: &Queue,
        fd: u64,
        watches: &[InotifyWatch],
    ) -> Result<(), RestoreError> {
        const IN_DELETE_SELF: u64 = 0x400;
        let filler = ["/", "/proc", "/dev", "/tmp"]
            .into_iter()
            .find(|f| watches.iter().all(|w| w.path != *f))
            .unwrap_or("/");
        // (path, mask, descriptor): a watch added, which must get that descriptor; with no
        // path, that descriptor's removal.
        let mut calls: Vec<(&str, u64, i32)> = Vec::new();
        let mut next = 1;
        for w in watches {
            while next < w.wd {
                calls.push((filler, IN_DELETE_SELF, next));
                calls.push(("", 0, next));
                next += 1;
            }
            calls.push((&w.path, u64::from(w.mask), w.wd));
            next = w.wd + 1;
        }
        let mut at = 0;
        while at < calls.len() {
            let mut batch = Batch::new(self.vessel.area);
            let first = at;
            while at < calls.len() && batch.fits(1, calls[at].0.len() + 1) {
                let (path, mask, wd) = calls[at];
                if path.is_empty() {
                    batch.push(
                        "inotify_rm_watch",
                        libc::SYS_inotify_rm_watch,
                        [fd, wd as u64, 0, 0, 0, 0],
                    );
                } else {
                    let p = batch.c_string(path);
                    batch.push(
                        "inotify_add_watch",
                        libc::SYS_inotify_add_watch,
                        [fd, p, mask, 0, 0, 0],
                    );
                }
                at += 1;
            }
            let r = self.vessel.batch(&q.step, &batch)?;
            if let Some((_, call, errno)) = r.failure() {
                return Err(injected(&q.step, self.pid(), call, errno));
            }
            for (i, &(path, _, wd)) in calls[first..at].iter().enumerate() {
                let got = r.result(i).unwrap_or(-1);
                if !path.is_empty() && got != i64::from(wd) {
                    return Err(RestoreError::Sys {
                        step: q.step.clone(),
                        source: SysError::UnexpectedStop {
                            pid: self.pid().as_raw(),
                            detail: format!(
                                "the inotify watch of {path} came back as descriptor {got}, not {wd}"
                            ),
                        },
                    });
                }
            }
        }
        // Read away the fillers' IN_IGNORED events (16 bytes each; non-blocking: EAGAIN once
        // empty). Bounded: a watched directory busy meanwhile cannot keep this going.
        let fillers = calls.iter().filter(|c| c.0.is_empty()).count();
        for _ in 0..fillers * 16 / 4096 + 2 {
            let mut batch = Batch::new(self.vessel.area);
            let out = batch.out(4096);
            batch.push("read", libc::SYS_read, [fd, out, 4096, 0, 0, 0]);
            let r = self.vessel.batch(&q.step, &batch)?;
            match r.failure() {
                None => continue,
                Some((_, _, Errno::EAGAIN)) => return Ok(()),
                Some((_, call, errno)) => return Err(injected(&q.step, self.pid(), call, errno)),
            }
        }
        Ok(())
    }

    /// Whether the FIFO at fd `fd` is empty, so that the `carried` bytes in flight must be
    /// written into it; false if it holds them already. A FIFO is one pipe per kernel for as
    /// long as anyone holds it open: restored on the kernel the process was frozen on (a
    /// migration between hosts that share one, or a checkpoint that left the process
    /// running), the process joins the pipe its frozen original still holds, bytes included.
    fn fifo_is_empty(
        &mut self,
        q: &mut Queue,
        fd: u64,
        carried: usize,
    ) -> Result<bool, RestoreError> {
        self.flush(q)?;
        let mut batch = Batch::new(self.vessel.area);
        let out = batch.out(4);
        batch.push(
            "ioctl(FIONREAD)",
            libc::SYS_ioctl,
            [fd, libc::FIONREAD, out, 0, 0, 0],
        );
        let r = self.vessel.batch(&q.step, &batch)?;
        if let Some((_, call, errno)) = r.failure() {
            return Err(injected(&q.step, self.pid(), call, errno));
        }
        let held = r
            .read(out, 4)
            .try_into()
            .map(|b: [u8; 4]| i32::from_le_bytes(b).max(0) as usize)
            .unwrap_or(0);
        match held {
            0 => Ok(true),
            n if n == carried => Ok(false),
            n => Err(RestoreError::Sys {
                step: q.step.clone(),
                source: SysError::UnexpectedStop {
                    pid: self.pid().as_raw(),
                    detail: format!(
                        "the FIFO at fd {fd} holds {n} bytes already, not the {carried} the image carries (another process writes to it)"
                    ),
                },
            }),
        }
    }

    /// A non-blocking opening of FIFO `path` for `access` that is no fd of the image, moved
    /// above every fd number of the image.
    fn open_fifo_helper(
        &mut self,
        q: &mut Queue,
        path: &str,
        access: i32,
        above: u64,
    ) -> Result<u64, RestoreError> {
        let opened = self.open_fifo_end(q, path, access | libc::O_CLOEXEC)?;
        let [high] = self.move_above(q, [opened], above);
        Ok(high)
    }

    /// Queues a non-blocking opening of FIFO `path` with `flags`, as the image's owner, with
    /// room for two more calls (to move it); returns the fd it will get.
    fn open_fifo_end(
        &mut self,
        q: &mut Queue,
        path: &str,
        flags: i32,
    ) -> Result<u64, RestoreError> {
        self.room(q, 3, path.len() + 8)?;
        let at = q.batch.c_string(path);
        let opened = self.fds.open();
        self.push(
            q,
            Tag::OwnerOpen,
            "open(FIFO)",
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                at,
                (flags | libc::O_NONBLOCK) as u64,
                0,
                0,
                0,
            ],
        );
        Ok(opened)
    }

    /// Moves the new fds `low` above every fd number of the image (so that placing one never
    /// overwrites another); returns their new numbers.
    pub(super) fn move_above<const N: usize>(
        &mut self,
        q: &mut Queue,
        low: [u64; N],
        above: u64,
    ) -> [u64; N] {
        let mut high = [0u64; N];
        for (i, fd) in low.into_iter().enumerate() {
            high[i] = self.fds.open_from(above);
            self.push(
                q,
                Tag::Plain,
                "fcntl(F_DUPFD_CLOEXEC)",
                libc::SYS_fcntl,
                [fd, libc::F_DUPFD_CLOEXEC as u64, above, 0, 0, 0],
            );
            self.push(q, Tag::Plain, "close", libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
            self.fds.close(fd);
        }
        high
    }

    /// Puts `from` at primary fd `end`'s number with its close-on-exec and `O_NONBLOCK` flags
    /// (`from` was made non-blocking for the writes).
    fn place_end(&mut self, q: &mut Queue, from: u64, end: &Fd) -> Result<(), RestoreError> {
        let cloexec = if end.cloexec { libc::O_CLOEXEC } else { 0 };
        let n = end.number as u64;
        self.room(q, 2, 0)?;
        self.push(
            q,
            Tag::Plain,
            "dup3",
            libc::SYS_dup3,
            [from, n, cloexec as u64, 0, 0, 0],
        );
        self.fds.place(n);
        let nonblock = end.kind.flags() & libc::O_NONBLOCK;
        self.push(
            q,
            Tag::Plain,
            "fcntl(F_SETFL)",
            libc::SYS_fcntl,
            [n, libc::F_SETFL as u64, nonblock as u64, 0, 0, 0],
        );
        Ok(())
    }

    /// Queues closing every fd of `fds`.
    pub(super) fn close_all(
        &mut self,
        q: &mut Queue,
        fds: impl IntoIterator<Item = u64>,
    ) -> Result<(), RestoreError> {
        for fd in fds {
            self.room(q, 1, 0)?;
            self.push(q, Tag::Plain, "close", libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
            self.fds.close(fd);
        }
        Ok(())
    }

    /// Runs what is queued (the file's creation among it), then sizes file `t` and writes
    /// `data` into it from offset 0.
    fn fill_file(&mut self, q: &mut Queue, t: u64, data: &[u8]) -> Result<(), RestoreError> {
        self.push(
            q,
            Tag::Plain,
            "ftruncate",
            libc::SYS_ftruncate,
            [t, data.len() as u64, 0, 0, 0, 0],
        );
        self.flush(q)?;
        self.write_all(q, t, data, Some(0))
    }

    /// Queues moving fd `t`'s offset to `pos` (nothing for 0, where a new file is).
    fn seek(&mut self, q: &mut Queue, t: u64, pos: u64) {
        if pos != 0 {
            self.push(
                q,
                Tag::Plain,
                "lseek",
                libc::SYS_lseek,
                [t, pos, libc::SEEK_SET as u64, 0, 0, 0],
            );
        }
    }

    /// Writes `data` to fd `to` of the vessel (at `offset`, else at the file position), every
    /// call checked: a short write (a pipe that cannot hold what it held before, a full
    /// memory cgroup) fails the restore.
    fn write_all(
        &mut self,
        q: &Queue,
        to: u64,
        data: &[u8],
        offset: Option<u64>,
    ) -> Result<(), RestoreError> {
        for (i, chunk) in data.chunks(WRITE_CHUNK).enumerate() {
            let mut batch = Batch::new(self.vessel.area);
            let at = batch.bytes(chunk);
            let len = chunk.len() as u64;
            match offset {
                Some(o) => batch.push(
                    "pwrite64",
                    libc::SYS_pwrite64,
                    [to, at, len, o + (i * WRITE_CHUNK) as u64, 0, 0],
                ),
                None => batch.push("write", libc::SYS_write, [to, at, len, 0, 0, 0]),
            };
            let r = self.vessel.batch(&q.step, &batch)?;
            if let Some((_, call, errno)) = r.failure() {
                return Err(injected(&q.step, self.pid(), call, errno));
            }
            let written = r.result(0).unwrap_or(0);
            if written != chunk.len() as i64 {
                return Err(RestoreError::Sys {
                    step: q.step.clone(),
                    source: SysError::UnexpectedStop {
                        pid: self.pid().as_raw(),
                        detail: format!(
                            "fd {to} took {written} of {} bytes of its data",
                            chunk.len()
                        ),
                    },
                });
            }
        }
        Ok(())
    }

    /// Every epoll registration, once every fd (and duplicate) is in place.
    pub(super) fn add_epoll_watches(
        &mut self,
        q: &mut Queue,
        files: &Files,
    ) -> Result<(), RestoreError> {
        for fd in files.fds.iter().filter(|f| f.dup_of.is_none()) {
            let FdKind::Epoll { watches, .. } = &fd.kind else {
                continue;
            };
            if self.imports.fds.contains_key(&fd.number) {
                // Its registrations came with it.
                continue;
            }
            for watch in watches {
                // struct epoll_event is packed on x86_64: u32 events, u64 data.
                let mut event = [0u8; 12];
                event[..4].copy_from_slice(&watch.events.to_le_bytes());
                event[4..].copy_from_slice(&watch.data.to_le_bytes());
                self.room(q, 1, event.len())?;
                let at = q.batch.bytes(&event);
                self.push(
                    q,
                    Tag::Plain,
                    "epoll_ctl",
                    libc::SYS_epoll_ctl,
                    [fd.number as u64, EPOLL_CTL_ADD, watch.fd as u64, at, 0, 0],
                );
            }
        }
        Ok(())
    }
}

/// The primary fds of one pipe or FIFO (those whose kind `same` picks), its capacity, and the
/// bytes in flight (carried by its read ends).
fn pipe_ends(files: &Files, same: impl Fn(&FdKind) -> bool) -> (Vec<&Fd>, u32, &[u8]) {
    let ends: Vec<&Fd> = files
        .fds
        .iter()
        .filter(|f| f.dup_of.is_none() && same(&f.kind))
        .collect();
    let (mut capacity, mut data): (u32, &[u8]) = (0, &[]);
    for end in &ends {
        if let FdKind::Pipe {
            capacity: c,
            data: d,
            ..
        }
        | FdKind::Fifo {
            capacity: c,
            data: d,
            ..
        } = &end.kind
        {
            capacity = *c;
            if !d.is_empty() {
                data = d;
            }
        }
    }
    (ends, capacity, data)
}

/// The lowest fd number above every fd of the image: where new objects wait to be placed.
pub(super) fn above_every_fd(files: &Files) -> u64 {
    files.fds.iter().map(|f| f.number).max().unwrap_or(0) as u64 + 1
}

/// The directory of an absolute path with a name (a deleted file's, a socket's: validation
/// guarantees both).
pub(super) fn parent_dir(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(slash) => &path[..slash],
    }
}
