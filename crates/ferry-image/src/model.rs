//! The state of one process, as the paper divides it (section 4.1.3): control information,
//! execution state, address space, file information and signals. Plain data only.
//!
//! Addresses and sizes are `u64` and untrusted until [`crate::validate`] has checked them.

use serde::{Deserialize, Serialize};

/// Size of a page on every platform ferry supports.
pub const PAGE_SIZE: u64 = 4096;

/// A whole process image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessImage {
    pub origin: Origin,
    pub control: Control,
    pub credentials: Credentials,
    pub execution: Execution,
    pub memory: AddressSpace,
    pub files: Files,
    pub signals: Signals,
    pub timers: Timers,
    /// The threads besides the main one (whose state is `execution` and `signals`), in the
    /// order the kernel lists them. Empty for a single-threaded process (and in images of
    /// format 1.0 and 1.1, which had no threads).
    pub threads: Vec<Thread>,
    /// Set when the process was the init (pid 1) of a PID namespace of its own: every id in
    /// the image (its pid, its threads', its tree's) is that namespace's, and it is restored
    /// as the init of a new one. `None` in images of format 1.4 and older.
    pub pid_namespace: Option<PidNamespace>,
    /// Set on the init of a PID namespace that had an IPC namespace of its own too (a job of
    /// `ferry run`): its SysV shared memory segments, restored in a new IPC namespace with
    /// their ids. `None` in images of format 1.5 and older.
    pub ipc_namespace: Option<IpcNamespace>,
}

/// The IPC namespace of a job: what it holds, moved whole with the job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcNamespace {
    /// Its SysV shared memory segments (`shmget`), attached or not, by id.
    pub segments: Vec<SysvSegment>,
}

/// One SysV shared memory segment: made again with its id, key, size, owner and mode; its
/// bytes carried here (attachments map it by id: [`Backing::SysvShm`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvSegment {
    /// `shmid`, as `shmget` returned it.
    pub id: i32,
    /// Its key (0: `IPC_PRIVATE`, and every segment marked for removal).
    pub key: i32,
    /// Its size in bytes, as asked of `shmget`.
    pub size: u64,
    /// Permission bits (`0o777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Marked for removal (`IPC_RMID`): it ends at its last detach.
    pub removed: bool,
    /// Its bytes, as runs of pages not known to be zero, by offset, in order.
    pub runs: Vec<SegmentRun>,
}

/// Bytes of a [`SysvSegment`] at `offset` (page aligned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRun {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// Largest sum of SysV segment bytes an image carries (the image's payload holds them).
pub const MAX_SYSV_BYTES: usize = 32 << 20;

/// The PID namespace a process was the init of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidNamespace {
    /// Its pid on the host it was captured on (for display: the image's ids are 1, 2, ...).
    pub host_pid: i32,
}

/// One thread other than the main one: its execution state, its signal mask and the signals
/// queued for it alone. Every other attribute (memory, files, dispositions, credentials)
/// belongs to the process and is shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    /// Its thread id on the old host.
    pub tid: i32,
    /// `/proc/PID/task/TID/comm`, at most 15 bytes.
    pub comm: String,
    pub execution: Execution,
    /// Blocked mask, bit `n-1` for signal `n`.
    pub blocked: u64,
    /// Signals queued for this thread (`tgkill`); each has `shared == false`.
    pub pending: Vec<PendingSignal>,
}

/// Where and when the image was taken, and the platform it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Random identifier shared by `core.img` and `pages.img` of one checkpoint.
    pub image_id: u64,
    pub created_unix_ms: u64,
    pub ferry_version: String,
    pub hostname: String,
    pub platform: Platform,
}

/// What the destination kernel and CPU must match (homogeneous migration only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `uname -m`, e.g. `x86_64`.
    pub arch: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// The vDSO area of the source kernel; `None` if the process had none.
    pub vdso: Option<VdsoFingerprint>,
    /// Enabled XSAVE features (XCR0) and the size of the XSAVE area.
    pub xsave: XsaveLayout,
}

/// Sizes and content hash of the kernel's vDSO area (`[vvar]`, `[vvar_vclock]`, `[vdso]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdsoFingerprint {
    pub vvar_pages: u64,
    pub vvar_vclock_pages: u64,
    pub vdso_pages: u64,
    /// xxh3-64 of the `[vdso]` code pages.
    pub code_hash: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct XsaveLayout {
    pub features: u64,
    pub size: u32,
}

/// Control information: identity, limits and per-process settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// `/proc/PID/comm`, at most 15 bytes.
    pub comm: String,
    /// Target of `/proc/PID/exe`.
    pub exe: String,
    /// Command line, for display only (the real one lives in memory).
    pub argv: Vec<String>,
    pub cwd: String,
    pub umask: u32,
    pub personality: u32,
    pub nice: i32,
    pub rlimits: Vec<Rlimit>,
    /// `PR_GET_DUMPABLE`.
    pub dumpable: u32,
    pub no_new_privs: bool,
    pub child_subreaper: bool,
    pub pdeathsig: i32,
    pub thp_disable: bool,
    pub timer_slack_ns: u64,
    /// The process was in a job-control stop (state `T`) when captured.
    pub stopped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_*` number.
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Real, effective, saved and filesystem ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdSet {
    pub real: u32,
    pub effective: u32,
    pub saved: u32,
    pub fs: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: IdSet,
    pub gid: IdSet,
    pub groups: Vec<u32>,
    pub caps: Capabilities,
    pub securebits: u32,
}

/// The x86_64 `user_regs_struct`, field for field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registers {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// Execution state of one thread (the main thread's in [`ProcessImage::execution`], the
/// others' in [`Thread::execution`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// Registers as the kernel reported them at the stop, including `orig_rax` and a
    /// `-ERESTART*` value in `rax` when the thread was inside a system call (see
    /// `ferry_checkpoint::restart`). Restore hands them back so that the kernel applies its own
    /// restart rules.
    pub regs: Registers,
    /// The XSAVE area (`NT_X86_XSTATE`): x87, SSE, AVX, AVX-512 and the rest.
    pub xstate: Vec<u8>,
    /// `set_tid_address` pointer (`PR_GET_TID_ADDRESS`): the kernel clears the thread id
    /// there when the thread exits. Thread libraries keep their cached thread id at this very
    /// address, so restore rewrites it there when a thread comes back with a new id.
    pub tid_address: u64,
    pub robust_list: RobustList,
    pub rseq: Option<Rseq>,
    pub sigaltstack: SigAltStack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobustList {
    pub head: u64,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    pub address: u64,
    pub length: u32,
    pub signature: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

/// The address space: layout, mappings and the pages whose content must travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSpace {
    pub layout: MmLayout,
    /// The auxiliary vector (`/proc/PID/auxv`) as 64-bit words.
    pub auxv: Vec<u64>,
    /// Every mapping of `/proc/PID/maps`, sorted by address (`[vsyscall]` excluded).
    pub vmas: Vec<Vma>,
    pub pages: PageIndex,
}

/// `mm_struct` boundaries, as `PR_SET_MM_MAP` takes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmLayout {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// One virtual memory area.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub prot: Prot,
    pub shared: bool,
    pub backing: Backing,
    pub flags: VmaFlags,
    /// Name given with `PR_SET_VMA_ANON_NAME` (`[anon:NAME]`).
    pub anon_name: Option<String>,
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether pages of this mapping may have content that its backing does not hold.
    pub fn carries_pages(&self) -> bool {
        match &self.backing {
            Backing::Anonymous | Backing::Heap | Backing::Stack | Backing::SharedAnonymous => true,
            Backing::File { .. } | Backing::UnnamedFile { .. } => !self.shared,
            Backing::Vvar | Backing::VvarVclock | Backing::Vdso | Backing::SysvShm { .. } => false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prot {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

/// What a mapping is backed by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backing {
    Anonymous,
    Heap,
    Stack,
    /// `MAP_SHARED | MAP_ANONYMOUS` (shown as `/dev/zero (deleted)`).
    SharedAnonymous,
    File {
        path: String,
        offset: u64,
        identity: FileIdentity,
    },
    Vvar,
    VvarVclock,
    Vdso,
    /// A file with no name: a memfd, or a regular file deleted while mapped. Restore makes
    /// the file again from the bytes carried here (once per `file`) and maps it.
    UnnamedFile {
        /// The file's inode number at the checkpoint: every mapping of one file names it.
        file: u64,
        offset: u64,
        origin: UnnamedOrigin,
        /// The file's bytes (at most [`MAX_CARRIED_BYTES`]), carried by the first mapping of
        /// the file in address order; empty on the others.
        data: Vec<u8>,
        /// The primary fd of this image that holds the same file (a `MemFd` or `DeletedFile`
        /// fd), if any: restore gives it the file the mappings map.
        fd: Option<i32>,
    },
    /// A SysV shared memory segment of the process's IPC namespace, attached whole (`shmat`):
    /// its bytes travel with the segment ([`IpcNamespace`]), not as pages of the mapping.
    SysvShm {
        /// The segment's id.
        id: i32,
        /// Attached with `SHM_RDONLY`: the mapping may never be made writable.
        read_only: bool,
    },
}

/// How a file without a name was made, and how restore makes it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnnamedOrigin {
    /// `memfd_create(name)`, with its `F_SEAL_*` bits.
    MemFd { name: String, seals: u32 },
    /// A regular file at `path` (without ` (deleted)`), deleted: made again as an `O_TMPFILE`
    /// in its directory, with permission bits `mode`.
    Deleted { path: String, mode: u32 },
}

/// Enough of a file's `stat` to notice that it is not the file the process had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

/// Per-VMA flags that restore reapplies (from `VmFlags` in `/proc/PID/smaps`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmaFlags {
    pub growsdown: bool,
    pub dontfork: bool,
    pub dontdump: bool,
    pub wipeonfork: bool,
    pub hugepage: bool,
    pub nohugepage: bool,
    pub locked: bool,
}

/// Which pages travel in `pages.img`, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageIndex {
    /// Runs of consecutive pages, sorted by address, each inside one VMA.
    pub runs: Vec<PageRun>,
    /// Total bytes of page data (`pages.img` length minus its header).
    pub bytes: u64,
    /// Hash of the page data (`format::PageHasher`: xxh3-64 over 16 MiB block hashes).
    pub hash: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    pub addr: u64,
    pub pages: u64,
}

impl PageRun {
    pub fn len(&self) -> u64 {
        self.pages.saturating_mul(PAGE_SIZE)
    }

    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.len())
    }
}

/// Open files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Files {
    pub fds: Vec<Fd>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    pub number: i32,
    pub cloexec: bool,
    pub kind: FdKind,
    /// This fd is a duplicate of fd N (same open file description: shared offset and status
    /// flags, as after `dup` or `2>&1`). N is the lowest-numbered fd of the group.
    pub dup_of: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file, reopened by path at its offset.
    Regular {
        path: String,
        /// `O_*` status and access flags, without `O_CLOEXEC`.
        flags: i32,
        pos: u64,
        identity: FileIdentity,
    },
    Directory {
        path: String,
        flags: i32,
        pos: u64,
    },
    /// `/dev/null`, `/dev/zero`, `/dev/random`, `/dev/urandom`.
    CharDevice {
        path: String,
        flags: i32,
        major: u32,
        minor: u32,
    },
    /// A connection (`AF_UNIX`, `SOCK_SEQPACKET`) to the local ferry daemon's message
    /// service, listening at an abstract socket name. Restore connects a new socket to the
    /// same name on the host it runs on and sends `hello` first, so that that host's daemon
    /// can attach the connection to the process's link state.
    Link {
        /// Abstract socket name, without the leading NUL byte (shown as `@name`).
        socket: String,
        /// The first datagram to send once connected (at most [`MAX_LINK_HELLO`] bytes;
        /// empty: nothing is sent).
        hello: Vec<u8>,
    },
    /// One end of a pipe that no other process holds. Restore makes one pipe per `pipe`
    /// number and puts its ends at the fds that had them; ends the process did not hold are
    /// closed (a reader then sees end-of-file, a writer `EPIPE`, as before).
    Pipe {
        /// The pipe's inode number on the old host: the ends of one pipe share it.
        pipe: u64,
        /// The write end (else the read end).
        write: bool,
        /// `O_*` status and access flags, without `O_CLOEXEC`.
        flags: i32,
        /// The pipe's capacity in bytes (`F_GETPIPE_SZ`).
        capacity: u32,
        /// The bytes in flight, in order, on every read end of the pipe (empty on write ends):
        /// restore writes them into the new pipe once.
        data: Vec<u8>,
    },
    /// An `eventfd`.
    EventFd {
        flags: i32,
        count: u64,
        semaphore: bool,
    },
    /// A `timerfd`, re-armed with the time that was left when the process was frozen.
    TimerFd {
        flags: i32,
        /// `CLOCK_*` id.
        clock: i32,
        /// Time to the next expiry (0: disarmed).
        value_ns: u64,
        /// Period (0: fires once).
        interval_ns: u64,
        /// Expiries not yet read.
        ticks: u64,
    },
    /// A `signalfd`.
    SignalFd {
        flags: i32,
        /// Signals it reads, bit `n-1` for signal `n`.
        mask: u64,
    },
    /// An epoll instance and its registrations.
    Epoll {
        flags: i32,
        watches: Vec<EpollWatch>,
    },
    /// A memfd (`memfd_create`), its contents carried in the image (at most
    /// [`MAX_CARRIED_BYTES`]).
    MemFd {
        /// The name it was created with (without `memfd:`).
        name: String,
        flags: i32,
        pos: u64,
        /// `F_SEAL_*` bits (`F_GET_SEALS`); a memfd made without `MFD_ALLOW_SEALING` has
        /// `F_SEAL_SEAL`.
        seals: u32,
        /// The file's bytes; its size is their length.
        data: Vec<u8>,
    },
    /// A regular file that was deleted while open (no name left), its contents carried in
    /// the image (at most [`MAX_CARRIED_BYTES`]). Restore makes an unnamed file
    /// (`O_TMPFILE`) in the directory it was in.
    DeletedFile {
        /// The path it had (as `/proc/PID/fd` shows it, without ` (deleted)`).
        path: String,
        flags: i32,
        pos: u64,
        /// Permission bits.
        mode: u32,
        /// The file's bytes; its size is their length.
        data: Vec<u8>,
    },
    /// One end of a connected pair of unix stream sockets, as images of format 1.1 and 1.2
    /// hold it. The reader turns it into a [`FdKind::UnixPair`] of [`SocketKind::Stream`]:
    /// no loaded image holds one.
    UnixStream {
        /// The socket's inode number on the old host.
        socket: u64,
        /// The inode number of the other end (an end of this image).
        peer: u64,
        /// `O_*` status flags (`O_RDWR`, `O_NONBLOCK`), without `O_CLOEXEC`.
        flags: i32,
        /// The bytes waiting to be read at this end, in order (at most [`MAX_CARRIED_BYTES`]).
        data: Vec<u8>,
    },
    /// One end of a connected pair of unix sockets (`socketpair`) — stream, datagram or
    /// seqpacket — whose other end the process holds too. Restore makes one pair per two ends,
    /// writes each end's queued messages into it from the other end, and puts each at its fds.
    UnixPair {
        /// The socket's inode number on the old host.
        socket: u64,
        /// The inode number of the other end (an end of this image).
        peer: u64,
        kind: SocketKind,
        /// `O_*` status flags (`O_RDWR`, `O_NONBLOCK`), without `O_CLOEXEC`.
        flags: i32,
        /// `SO_PASSCRED`: the socket asks for its senders' credentials.
        pass_credentials: bool,
        /// `SO_SNDBUF` as the kernel reports it (twice what was asked for): what the socket
        /// may have in flight towards its peer; 0: not recorded (left as the kernel makes it).
        send_buffer: u32,
        /// What waits to be read at this end, in order: each datagram or seqpacket record with
        /// its boundaries; a stream's bytes as one message. At most [`MAX_CARRIED_BYTES`] in
        /// all.
        messages: Vec<Vec<u8>>,
    },
    /// A FIFO (named pipe) reopened by its path, every holder of which is this process. Restore
    /// reopens it without blocking, writes the bytes that were in flight once (with the first
    /// end of it that comes up), then gives each fd its flags back.
    Fifo {
        path: String,
        /// `O_*` status and access flags, without `O_CLOEXEC`.
        flags: i32,
        /// The FIFO's capacity in bytes (`F_GETPIPE_SZ`).
        capacity: u32,
        /// The bytes in flight, in order; carried by one end only.
        data: Vec<u8>,
    },
    /// A file of `/proc` (a file or directory, e.g. `/proc/self/status`, `/proc/meminfo`):
    /// `/proc` files have no identity across hosts or boots, so restore opens the same name
    /// in the new host's `/proc`, the process's own files under its new pid.
    ProcFile {
        /// Path below `/proc/`; a file of the process itself starts with `self/`.
        path: String,
        directory: bool,
        flags: i32,
        pos: u64,
    },
    /// An inotify instance with its watches (by path, at their watch descriptors). Its queue
    /// was empty when the process was frozen.
    Inotify {
        flags: i32,
        /// In ascending order of watch descriptor.
        watches: Vec<InotifyWatch>,
    },
    /// A unix socket listening for connections (`listen`), bound to `name`, with no
    /// connection waiting to be accepted. Restore binds a new socket to the name (a path held
    /// by the original's socket file is taken over when the process starts).
    UnixListener {
        /// The socket's inode number at the checkpoint.
        socket: u64,
        /// Stream or seqpacket.
        kind: SocketKind,
        name: SocketName,
        /// `listen`'s backlog.
        backlog: u32,
        /// Status flags (`O_NONBLOCK`).
        flags: i32,
        pass_credentials: bool,
    },
}

/// The name a unix socket is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketName {
    /// An abstract name (without its leading NUL byte), unique in a network namespace.
    Abstract(Vec<u8>),
    /// An absolute path, with the identity of the socket file `bind` made there and its
    /// permission bits.
    Path {
        path: String,
        dev: u64,
        inode: u64,
        mode: u32,
    },
}

/// Longest name a unix socket address holds (`sun_path` without a terminating NUL).
pub const MAX_SOCKET_NAME: usize = 107;

/// One watch of an inotify instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    /// Its watch descriptor, which events name: restore gives it back exactly.
    pub wd: i32,
    /// The watched file or directory.
    pub path: String,
    /// Its `IN_*` event bits and flags (`IN_ONESHOT`, `IN_EXCL_UNLINK`, …).
    pub mask: u32,
}

/// The type of a unix socket pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketKind {
    /// `SOCK_STREAM`: bytes.
    Stream,
    /// `SOCK_DGRAM`: datagrams, boundaries kept.
    Datagram,
    /// `SOCK_SEQPACKET`: records, boundaries kept.
    SeqPacket,
}

impl SocketKind {
    /// Its `SOCK_*` number.
    pub fn number(self) -> i32 {
        match self {
            SocketKind::Stream => 1,
            SocketKind::Datagram => 2,
            SocketKind::SeqPacket => 5,
        }
    }

    /// Its kind from a `SOCK_*` number.
    pub fn from_number(n: i32) -> Option<SocketKind> {
        match n {
            1 => Some(SocketKind::Stream),
            2 => Some(SocketKind::Datagram),
            5 => Some(SocketKind::SeqPacket),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SocketKind::Stream => "stream",
            SocketKind::Datagram => "datagram",
            SocketKind::SeqPacket => "seqpacket",
        }
    }
}

/// Largest memfd or deleted file whose contents an image carries.
pub const MAX_CARRIED_BYTES: usize = 16 << 20;
/// Longest memfd name (`memfd_create` allows 249 bytes).
pub const MAX_MEMFD_NAME: usize = 249;

/// One registration of an epoll instance: the fd it was added with (which still refers to
/// the registered file) and its `struct epoll_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollWatch {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// Longest abstract socket name of a [`FdKind::Link`]: `sun_path` holds 108 bytes, the
/// first of them the NUL that makes the name abstract.
pub const MAX_LINK_SOCKET: usize = 107;
/// Largest `hello` datagram of a [`FdKind::Link`].
pub const MAX_LINK_HELLO: usize = 4096;

impl FdKind {
    /// The file's path; empty for kinds that are no file (see [`FdKind::is_file`]).
    pub fn path(&self) -> &str {
        match self {
            FdKind::Regular { path, .. }
            | FdKind::Directory { path, .. }
            | FdKind::CharDevice { path, .. }
            | FdKind::Fifo { path, .. } => path,
            _ => "",
        }
    }

    /// `O_*` status and access flags, without `O_CLOEXEC` (`O_RDWR` for a link).
    pub fn flags(&self) -> i32 {
        match self {
            FdKind::Regular { flags, .. }
            | FdKind::Directory { flags, .. }
            | FdKind::CharDevice { flags, .. }
            | FdKind::Pipe { flags, .. }
            | FdKind::EventFd { flags, .. }
            | FdKind::TimerFd { flags, .. }
            | FdKind::SignalFd { flags, .. }
            | FdKind::Epoll { flags, .. }
            | FdKind::MemFd { flags, .. }
            | FdKind::DeletedFile { flags, .. }
            | FdKind::UnixStream { flags, .. }
            | FdKind::UnixPair { flags, .. }
            | FdKind::Fifo { flags, .. }
            | FdKind::ProcFile { flags, .. }
            | FdKind::Inotify { flags, .. }
            | FdKind::UnixListener { flags, .. } => *flags,
            FdKind::Link { .. } => O_RDWR,
        }
    }

    /// Whether the fd is reopened by [`FdKind::path`] (else it is a link or a kernel object
    /// that restore creates anew).
    pub fn is_file(&self) -> bool {
        matches!(
            self,
            FdKind::Regular { .. } | FdKind::Directory { .. } | FdKind::CharDevice { .. }
        )
    }
}

/// `O_RDWR` on Linux (this crate knows no libc).
const O_RDWR: i32 = 0o2;

/// Signal dispositions, the blocked mask and the queued signals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// Every disposition that is not the default (`SIG_DFL`, no flags, empty mask).
    pub actions: Vec<SigAction>,
    /// Blocked mask, bit `n-1` for signal `n`.
    pub blocked: u64,
    pub pending: Vec<PendingSignal>,
}

/// A `struct kernel_sigaction` as x86_64 `rt_sigaction` uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    pub signo: u32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// A queued signal with its full `siginfo_t` (128 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSignal {
    /// Queued for the whole process (`kill`) rather than the thread (`tgkill`).
    pub shared: bool,
    pub siginfo: Vec<u8>,
}

impl PendingSignal {
    pub fn signo(&self) -> u32 {
        match self.siginfo.get(0..4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }
}

/// Interval timers (`getitimer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timers {
    pub real: ITimer,
    pub virtual_: ITimer,
    pub prof: ITimer,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ITimer {
    pub interval_us: u64,
    pub value_us: u64,
}

impl ITimer {
    pub fn is_armed(&self) -> bool {
        self.value_us != 0
    }
}

impl ProcessImage {
    /// Bytes of memory the restored process will have resident from the image.
    pub fn resident_bytes(&self) -> u64 {
        self.memory.pages.bytes
    }

    /// Total size of all mappings.
    pub fn mapped_bytes(&self) -> u64 {
        self.memory.vmas.iter().map(Vma::len).sum()
    }

    /// Every thread's execution state, the main thread's first.
    pub fn executions(&self) -> impl Iterator<Item = &Execution> {
        std::iter::once(&self.execution).chain(self.threads.iter().map(|t| &t.execution))
    }
}

/// A small, valid, realistic image for tests and fuzzing seeds.
#[cfg(any(test, feature = "sample"))]
pub mod tests_support {
    use super::*;

    pub fn sample_image() -> ProcessImage {
        let file = |path: &str, offset| Backing::File {
            path: path.into(),
            offset,
            identity: FileIdentity {
                dev: 0xfe01,
                inode: 1234,
                size: 0x5000,
                mtime_ns: 1_700_000_000_000_000_000,
            },
        };
        let rw = Prot {
            read: true,
            write: true,
            exec: false,
        };
        let rx = Prot {
            read: true,
            write: false,
            exec: true,
        };
        let r = Prot {
            read: true,
            write: false,
            exec: false,
        };
        let vma = |start, end, prot, backing| Vma {
            start,
            end,
            prot,
            shared: false,
            backing,
            flags: VmaFlags::default(),
            anon_name: None,
        };
        let mut stack = vma(0x7ffd_0000_0000, 0x7ffd_0002_1000, rw, Backing::Stack);
        stack.flags.growsdown = true;
        let mut siginfo = vec![0u8; 128];
        siginfo[0] = 10;
        ProcessImage {
            origin: Origin {
                image_id: 0x1234_5678_9abc_def0,
                created_unix_ms: 1_760_000_000_000,
                ferry_version: "0.1.0".into(),
                hostname: "node-a".into(),
                platform: Platform {
                    arch: "x86_64".into(),
                    kernel_release: "6.18.0".into(),
                    vdso: Some(VdsoFingerprint {
                        vvar_pages: 4,
                        vvar_vclock_pages: 2,
                        vdso_pages: 2,
                        code_hash: 42,
                    }),
                    xsave: XsaveLayout {
                        features: 0x2e7,
                        size: 2696,
                    },
                },
            },
            control: Control {
                pid: 4242,
                ppid: 1,
                pgid: 4242,
                sid: 4242,
                comm: "counter".into(),
                exe: "/usr/bin/counter".into(),
                argv: vec!["counter".into(), "out.txt".into()],
                cwd: "/tmp".into(),
                umask: 0o022,
                personality: 0,
                nice: 0,
                rlimits: vec![Rlimit {
                    resource: 7,
                    soft: 1024,
                    hard: 4096,
                }],
                dumpable: 1,
                no_new_privs: false,
                child_subreaper: false,
                pdeathsig: 0,
                thp_disable: false,
                timer_slack_ns: 50_000,
                stopped: false,
            },
            credentials: Credentials {
                uid: IdSet {
                    real: 1000,
                    effective: 1000,
                    saved: 1000,
                    fs: 1000,
                },
                gid: IdSet {
                    real: 1000,
                    effective: 1000,
                    saved: 1000,
                    fs: 1000,
                },
                groups: vec![1000, 27],
                caps: Capabilities {
                    inheritable: 0,
                    permitted: 0,
                    effective: 0,
                    bounding: 0x1ff_ffff_ffff,
                    ambient: 0,
                },
                securebits: 0,
            },
            execution: Execution {
                regs: Registers {
                    rip: 0x5555_5555_5100,
                    rsp: 0x7ffd_0002_0000,
                    cs: 0x33,
                    ss: 0x2b,
                    orig_rax: u64::MAX,
                    eflags: 0x246,
                    fs_base: 0x7f00_0000_0740,
                    ..Registers::default()
                },
                xstate: vec![0u8; 2696],
                tid_address: 0x7f00_0000_0a10,
                robust_list: RobustList {
                    head: 0x7f00_0000_0a20,
                    len: 24,
                },
                rseq: Some(Rseq {
                    address: 0x7f00_0000_0e00,
                    length: 32,
                    signature: 0x5305_3053,
                }),
                sigaltstack: SigAltStack {
                    sp: 0,
                    flags: 2,
                    size: 0,
                },
            },
            memory: AddressSpace {
                layout: MmLayout {
                    start_code: 0x5555_5555_5000,
                    end_code: 0x5555_5555_6000,
                    start_data: 0x5555_5555_7000,
                    end_data: 0x5555_5555_8000,
                    start_brk: 0x5555_5556_0000,
                    brk: 0x5555_5558_1000,
                    start_stack: 0x7ffd_0002_0800,
                    arg_start: 0x7ffd_0002_0900,
                    arg_end: 0x7ffd_0002_0910,
                    env_start: 0x7ffd_0002_0910,
                    env_end: 0x7ffd_0002_0f00,
                },
                auxv: vec![6, 4096, 0, 0],
                vmas: vec![
                    vma(
                        0x5555_5555_4000,
                        0x5555_5555_5000,
                        r,
                        file("/usr/bin/counter", 0),
                    ),
                    vma(
                        0x5555_5555_5000,
                        0x5555_5555_6000,
                        rx,
                        file("/usr/bin/counter", 0x1000),
                    ),
                    vma(
                        0x5555_5555_7000,
                        0x5555_5555_8000,
                        rw,
                        file("/usr/bin/counter", 0x3000),
                    ),
                    vma(0x5555_5556_0000, 0x5555_5558_1000, rw, Backing::Heap),
                    stack,
                    vma(0x7ffd_0003_0000, 0x7ffd_0003_4000, r, Backing::Vvar),
                    vma(0x7ffd_0003_4000, 0x7ffd_0003_6000, r, Backing::VvarVclock),
                    vma(0x7ffd_0003_6000, 0x7ffd_0003_8000, rx, Backing::Vdso),
                ],
                pages: PageIndex {
                    runs: vec![
                        PageRun {
                            addr: 0x5555_5555_7000,
                            pages: 1,
                        },
                        PageRun {
                            addr: 0x5555_5556_0000,
                            pages: 3,
                        },
                        PageRun {
                            addr: 0x7ffd_0001_f000,
                            pages: 2,
                        },
                    ],
                    bytes: 6 * PAGE_SIZE,
                    hash: 0,
                },
            },
            files: Files {
                fds: vec![
                    Fd {
                        number: 1,
                        cloexec: false,
                        kind: FdKind::Regular {
                            path: "/tmp/out.txt".into(),
                            flags: 0o1 | 0o2000,
                            pos: 120,
                            identity: FileIdentity::default(),
                        },
                        dup_of: None,
                    },
                    Fd {
                        number: 2,
                        cloexec: false,
                        kind: FdKind::Regular {
                            path: "/tmp/out.txt".into(),
                            flags: 0o1 | 0o2000,
                            pos: 120,
                            identity: FileIdentity::default(),
                        },
                        dup_of: Some(1),
                    },
                    Fd {
                        number: 0,
                        cloexec: false,
                        kind: FdKind::CharDevice {
                            path: "/dev/null".into(),
                            flags: 0,
                            major: 1,
                            minor: 3,
                        },
                        dup_of: None,
                    },
                ],
            },
            signals: Signals {
                actions: vec![SigAction {
                    signo: 10,
                    handler: 0x5555_5555_5200,
                    flags: 0x0400_0004,
                    restorer: 0x7f00_0000_1000,
                    mask: 0,
                }],
                blocked: 1 << 9,
                pending: vec![PendingSignal {
                    shared: true,
                    siginfo,
                }],
            },
            timers: Timers::default(),
            threads: Vec::new(),
            pid_namespace: None,
            ipc_namespace: None,
        }
    }
}
