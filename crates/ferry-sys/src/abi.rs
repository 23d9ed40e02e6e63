//! Kernel ABI that Debian's libc headers (and the libc crate) predate or omit: constants,
//! `#[repr(C)]` structures, and byte encoders for structures that travel through a tracee's
//! memory during syscall injection. x86_64 only.

// ptrace requests and notes.
pub const PTRACE_PEEKSIGINFO: u32 = 0x4209;
pub const PTRACE_GETSIGMASK: u32 = 0x420a;
pub const PTRACE_SETSIGMASK: u32 = 0x420b;
pub const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;
pub const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
pub const NT_X86_XSTATE: u32 = 0x202;

// arch_prctl.
pub const ARCH_MAP_VDSO_64: u64 = 0x2003;

// prctl.
pub const PR_SET_PDEATHSIG: u64 = 1;
pub const PR_GET_PDEATHSIG: u64 = 2;
pub const PR_GET_DUMPABLE: u64 = 3;
pub const PR_SET_DUMPABLE: u64 = 4;
pub const PR_SET_KEEPCAPS: u64 = 8;
pub const PR_SET_NAME: u64 = 15;
pub const PR_CAPBSET_DROP: u64 = 24;
pub const PR_GET_SECUREBITS: u64 = 27;
pub const PR_SET_SECUREBITS: u64 = 28;
pub const PR_SET_TIMERSLACK: u64 = 29;
pub const PR_SET_MM: u64 = 35;
pub const PR_SET_MM_MAP: u64 = 14;
pub const PR_SET_CHILD_SUBREAPER: u64 = 36;
pub const PR_GET_CHILD_SUBREAPER: u64 = 37;
pub const PR_SET_NO_NEW_PRIVS: u64 = 38;
pub const PR_GET_TID_ADDRESS: u64 = 40;
pub const PR_SET_THP_DISABLE: u64 = 41;
pub const PR_GET_THP_DISABLE: u64 = 42;
pub const PR_CAP_AMBIENT: u64 = 47;
pub const PR_CAP_AMBIENT_RAISE: u64 = 2;
pub const PR_SET_VMA: u64 = 0x53564d41;
pub const PR_SET_VMA_ANON_NAME: u64 = 0;

// PAGEMAP_SCAN (linux/fs.h, 6.7+).
pub const PAGEMAP_SCAN: u64 = 0xc060_6610;
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct ptrace_peeksiginfo_args`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PeekSiginfoArgs {
    pub off: u64,
    pub flags: u32,
    pub nr: i32,
}

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RseqConfiguration {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

/// Size of `siginfo_t`.
pub const SIGINFO_SIZE: usize = 128;
pub type Siginfo = [u8; SIGINFO_SIZE];

/// Signal number of a raw `siginfo_t`.
pub fn siginfo_signo(info: &Siginfo) -> i32 {
    i32::from_le_bytes([info[0], info[1], info[2], info[3]])
}

/// Syscall return values that mean "interrupted, restart" (never seen by user space).
pub const ERESTARTSYS: i64 = 512;
pub const ERESTARTNOINTR: i64 = 513;
pub const ERESTARTNOHAND: i64 = 514;
pub const ERESTART_RESTARTBLOCK: i64 = 516;

/// Little-endian builder for structures written into a tracee.
#[derive(Default)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

/// Reads little-endian fields from a structure read back from a tracee.
pub struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Fields(b)
    }
    pub fn u64(&self, off: usize) -> u64 {
        let mut a = [0u8; 8];
        if let Some(s) = self.0.get(off..off + 8) {
            a.copy_from_slice(s);
        }
        u64::from_le_bytes(a)
    }
    pub fn u32(&self, off: usize) -> u32 {
        let mut a = [0u8; 4];
        if let Some(s) = self.0.get(off..off + 4) {
            a.copy_from_slice(s);
        }
        u32::from_le_bytes(a)
    }
    pub fn i32(&self, off: usize) -> i32 {
        self.u32(off) as i32
    }
}

/// x86_64 `struct kernel_sigaction` (what `rt_sigaction` takes): 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

impl KernelSigaction {
    pub const SIZE: usize = 32;
    pub fn encode(&self) -> Vec<u8> {
        Bytes::default()
            .u64(self.handler)
            .u64(self.flags)
            .u64(self.restorer)
            .u64(self.mask)
            .0
    }
    pub fn decode(b: &[u8]) -> Self {
        let f = Fields::new(b);
        KernelSigaction {
            handler: f.u64(0),
            flags: f.u64(8),
            restorer: f.u64(16),
            mask: f.u64(24),
        }
    }
}

/// `struct itimerval` in microseconds: interval then value, 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Itimerval {
    pub interval_us: u64,
    pub value_us: u64,
}

impl Itimerval {
    pub const SIZE: usize = 32;
    pub fn encode(&self) -> Vec<u8> {
        Bytes::default()
            .u64(self.interval_us / 1_000_000)
            .u64(self.interval_us % 1_000_000)
            .u64(self.value_us / 1_000_000)
            .u64(self.value_us % 1_000_000)
            .0
    }
    pub fn decode(b: &[u8]) -> Self {
        let f = Fields::new(b);
        Itimerval {
            interval_us: f.u64(0) * 1_000_000 + f.u64(8),
            value_us: f.u64(16) * 1_000_000 + f.u64(24),
        }
    }
}

/// `struct clone_args` of `clone3` as far as ferry uses it (`CLONE_ARGS_SIZE_VER2`, 88 bytes):
/// a fork-like clone with an exit signal and, optionally, the pid it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub exit_signal: u64,
    /// Address of a `pid_t` array, innermost pid namespace first (0: any pid).
    pub set_tid: u64,
    pub set_tid_size: u64,
}

impl CloneArgs {
    pub const SIZE: usize = 88;
    pub fn encode(&self) -> Vec<u8> {
        Bytes::default()
            .u64(self.flags)
            .u64(0) // pidfd
            .u64(0) // child_tid
            .u64(0) // parent_tid
            .u64(self.exit_signal)
            .u64(0) // stack
            .u64(0) // stack_size
            .u64(0) // tls
            .u64(self.set_tid)
            .u64(self.set_tid_size)
            .u64(0) // cgroup
            .0
    }
}

/// `stack_t`: 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StackT {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

impl StackT {
    pub const SIZE: usize = 24;
    pub fn encode(&self) -> Vec<u8> {
        Bytes::default()
            .u64(self.sp)
            .i32(self.flags)
            .u32(0)
            .u64(self.size)
            .0
    }
    pub fn decode(b: &[u8]) -> Self {
        let f = Fields::new(b);
        StackT {
            sp: f.u64(0),
            flags: f.i32(8),
            size: f.u64(16),
        }
    }
}

/// `struct timespec`.
pub fn encode_timespec_ns(ns: u64) -> Vec<u8> {
    Bytes::default()
        .u64(ns / 1_000_000_000)
        .u64(ns % 1_000_000_000)
        .0
}

pub fn decode_timespec_ns(b: &[u8]) -> u64 {
    let f = Fields::new(b);
    f.u64(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(f.u64(8))
}

/// `struct prctl_mm_map` for `PR_SET_MM_MAP`: 104 bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrctlMmMap {
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
    pub auxv: u64,
    pub auxv_size: u32,
    pub exe_fd: u32,
}

impl PrctlMmMap {
    pub const SIZE: usize = 104;
    pub fn encode(&self) -> Vec<u8> {
        Bytes::default()
            .u64(self.start_code)
            .u64(self.end_code)
            .u64(self.start_data)
            .u64(self.end_data)
            .u64(self.start_brk)
            .u64(self.brk)
            .u64(self.start_stack)
            .u64(self.arg_start)
            .u64(self.arg_end)
            .u64(self.env_start)
            .u64(self.env_end)
            .u64(self.auxv)
            .u32(self.auxv_size)
            .u32(self.exe_fd)
            .0
    }
}

/// `capset` header (version 3) and two data words, as one buffer: header at 0, data at 8.
pub fn encode_capset(pid: i32, effective: u64, permitted: u64, inheritable: u64) -> Vec<u8> {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    Bytes::default()
        .u32(LINUX_CAPABILITY_VERSION_3)
        .i32(pid)
        .u32(effective as u32)
        .u32(permitted as u32)
        .u32(inheritable as u32)
        .u32((effective >> 32) as u32)
        .u32((permitted >> 32) as u32)
        .u32((inheritable >> 32) as u32)
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(std::mem::size_of::<PageRegion>(), 24);
        assert_eq!(std::mem::size_of::<PeekSiginfoArgs>(), 16);
        assert_eq!(std::mem::size_of::<RseqConfiguration>(), 24);
        assert_eq!(
            KernelSigaction::default().encode().len(),
            KernelSigaction::SIZE
        );
        assert_eq!(Itimerval::default().encode().len(), Itimerval::SIZE);
        assert_eq!(StackT::default().encode().len(), StackT::SIZE);
        assert_eq!(PrctlMmMap::default().encode().len(), PrctlMmMap::SIZE);
        assert_eq!(encode_capset(0, 0, 0, 0).len(), 32);
        // _IOWR('f', 16, struct pm_scan_arg)
        assert_eq!(
            PAGEMAP_SCAN,
            (3 << 30) | (96 << 16) | ((b'f' as u64) << 8) | 16
        );
    }

    #[test]
    fn round_trips() {
        let a = KernelSigaction {
            handler: 1,
            flags: 2,
            restorer: 3,
            mask: 4,
        };
        assert_eq!(KernelSigaction::decode(&a.encode()), a);
        let t = Itimerval {
            interval_us: 7_000_001,
            value_us: 999_000_000,
        };
        assert_eq!(Itimerval::decode(&t.encode()), t);
        let s = StackT {
            sp: 0x1000,
            flags: 2,
            size: 8192,
        };
        assert_eq!(StackT::decode(&s.encode()), s);
        assert_eq!(
            decode_timespec_ns(&encode_timespec_ns(3_000_000_123)),
            3_000_000_123
        );
    }
}

// ---------------------------------------------------------------------------------------------
// userfaultfd (linux/userfaultfd.h as of 6.18; Debian's header stops at 6.1) and the
// PAGEMAP_SCAN flags that drive uffd-wp-async dirty tracking. Used by `uffd` and `dirty`.
// ---------------------------------------------------------------------------------------------

/// `_IOC(dir, 0xAA, nr, size)` for the userfaultfd ioctls (`_IOC_WRITE` = 1, `_IOC_READ` = 2).
const fn uffd_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_READ_WRITE: u64 = 3;

/// The only userfaultfd API version.
pub const UFFD_API: u64 = 0xAA;
/// `userfaultfd(2)` flag: only faults raised by user-mode accesses are reported; a kernel
/// access (a `write(2)` from the buffer, `process_vm_readv`) fails with EFAULT instead.
/// Without it, creating a uffd needs CAP_SYS_PTRACE when `vm.unprivileged_userfaultfd` is 0.
pub const UFFD_USER_MODE_ONLY: u64 = 1;
/// `/dev/userfaultfd` ioctl: a new uffd for the caller's mm (`_IO(0xAA, 0)`).
pub const USERFAULTFD_IOC_NEW: u64 = 0xAA00;

pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
pub const UFFD_FEATURE_MINOR_HUGETLBFS: u64 = 1 << 9;
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

/// Names of the feature bits, for logs and errors.
pub const UFFD_FEATURE_NAMES: [(u64, &str); 17] = [
    (UFFD_FEATURE_PAGEFAULT_FLAG_WP, "PAGEFAULT_FLAG_WP"),
    (UFFD_FEATURE_EVENT_FORK, "EVENT_FORK"),
    (UFFD_FEATURE_EVENT_REMAP, "EVENT_REMAP"),
    (UFFD_FEATURE_EVENT_REMOVE, "EVENT_REMOVE"),
    (UFFD_FEATURE_MISSING_HUGETLBFS, "MISSING_HUGETLBFS"),
    (UFFD_FEATURE_MISSING_SHMEM, "MISSING_SHMEM"),
    (UFFD_FEATURE_EVENT_UNMAP, "EVENT_UNMAP"),
    (UFFD_FEATURE_SIGBUS, "SIGBUS"),
    (UFFD_FEATURE_THREAD_ID, "THREAD_ID"),
    (UFFD_FEATURE_MINOR_HUGETLBFS, "MINOR_HUGETLBFS"),
    (UFFD_FEATURE_MINOR_SHMEM, "MINOR_SHMEM"),
    (UFFD_FEATURE_EXACT_ADDRESS, "EXACT_ADDRESS"),
    (UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "WP_HUGETLBFS_SHMEM"),
    (UFFD_FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED"),
    (UFFD_FEATURE_POISON, "POISON"),
    (UFFD_FEATURE_WP_ASYNC, "WP_ASYNC"),
    (UFFD_FEATURE_MOVE, "MOVE"),
];

// ioctl numbers within the 0xAA space (bits of `uffdio_api.ioctls` / `uffdio_register.ioctls`).
pub const UFFDIO_REGISTER_NR: u64 = 0x00;
pub const UFFDIO_UNREGISTER_NR: u64 = 0x01;
pub const UFFDIO_WAKE_NR: u64 = 0x02;
pub const UFFDIO_COPY_NR: u64 = 0x03;
pub const UFFDIO_ZEROPAGE_NR: u64 = 0x04;
pub const UFFDIO_MOVE_NR: u64 = 0x05;
pub const UFFDIO_WRITEPROTECT_NR: u64 = 0x06;
pub const UFFDIO_CONTINUE_NR: u64 = 0x07;
pub const UFFDIO_POISON_NR: u64 = 0x08;
pub const UFFDIO_API_NR: u64 = 0x3F;

pub const UFFDIO_API: u64 = uffd_ioc(IOC_READ_WRITE, UFFDIO_API_NR, size_of::<UffdioApi>());
pub const UFFDIO_REGISTER: u64 = uffd_ioc(
    IOC_READ_WRITE,
    UFFDIO_REGISTER_NR,
    size_of::<UffdioRegister>(),
);
// UNREGISTER and WAKE are `_IOR` in the kernel header although the kernel reads them.
pub const UFFDIO_UNREGISTER: u64 =
    uffd_ioc(IOC_READ, UFFDIO_UNREGISTER_NR, size_of::<UffdioRange>());
pub const UFFDIO_WAKE: u64 = uffd_ioc(IOC_READ, UFFDIO_WAKE_NR, size_of::<UffdioRange>());
pub const UFFDIO_COPY: u64 = uffd_ioc(IOC_READ_WRITE, UFFDIO_COPY_NR, size_of::<UffdioCopy>());
pub const UFFDIO_ZEROPAGE: u64 = uffd_ioc(
    IOC_READ_WRITE,
    UFFDIO_ZEROPAGE_NR,
    size_of::<UffdioZeropage>(),
);
pub const UFFDIO_MOVE: u64 = uffd_ioc(IOC_READ_WRITE, UFFDIO_MOVE_NR, size_of::<UffdioMove>());
pub const UFFDIO_WRITEPROTECT: u64 = uffd_ioc(
    IOC_READ_WRITE,
    UFFDIO_WRITEPROTECT_NR,
    size_of::<UffdioWriteprotect>(),
);
pub const UFFDIO_CONTINUE: u64 = uffd_ioc(
    IOC_READ_WRITE,
    UFFDIO_CONTINUE_NR,
    size_of::<UffdioContinue>(),
);

pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;
pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;
pub const UFFDIO_CONTINUE_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_CONTINUE_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_MOVE_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES: u64 = 1 << 1;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`; `ioctls` is written by the kernel.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_copy`; `copy` is written by the kernel: bytes copied, or `-errno`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

/// `struct uffdio_zeropage`; `zeropage` is written by the kernel like `UffdioCopy::copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioZeropage {
    pub range: UffdioRange,
    pub mode: u64,
    pub zeropage: i64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

/// `struct uffdio_continue`; `mapped` is written by the kernel.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioContinue {
    pub range: UffdioRange,
    pub mode: u64,
    pub mapped: i64,
}

/// `struct uffdio_move` (6.8+); `move_` (`move` in C) is written by the kernel.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioMove {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub move_: i64,
}

/// Size of `struct uffd_msg` (packed): what one `read` of a uffd returns per event.
pub const UFFD_MSG_SIZE: usize = 32;

pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
pub const UFFD_PAGEFAULT_FLAG_MINOR: u64 = 1 << 2;

/// A decoded `struct uffd_msg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdMsg {
    /// `flags`: `UFFD_PAGEFAULT_FLAG_*`; `ptid`: the faulting thread (with THREAD_ID, else 0).
    Pagefault {
        flags: u64,
        address: u64,
        ptid: u32,
    },
    /// `ufd`: a new uffd that the kernel installed in the *reading* process.
    Fork {
        ufd: u32,
    },
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    Remove {
        start: u64,
        end: u64,
    },
    Unmap {
        start: u64,
        end: u64,
    },
    Unknown {
        event: u8,
    },
}

impl UffdMsg {
    /// Decodes one 32-byte message: `event` at 0, the union at 8.
    pub fn decode(b: &[u8; UFFD_MSG_SIZE]) -> UffdMsg {
        let f = Fields::new(b);
        match b[0] {
            UFFD_EVENT_PAGEFAULT => UffdMsg::Pagefault {
                flags: f.u64(8),
                address: f.u64(16),
                ptid: f.u32(24),
            },
            UFFD_EVENT_FORK => UffdMsg::Fork { ufd: f.u32(8) },
            UFFD_EVENT_REMAP => UffdMsg::Remap {
                from: f.u64(8),
                to: f.u64(16),
                len: f.u64(24),
            },
            UFFD_EVENT_REMOVE => UffdMsg::Remove {
                start: f.u64(8),
                end: f.u64(16),
            },
            UFFD_EVENT_UNMAP => UffdMsg::Unmap {
                start: f.u64(8),
                end: f.u64(16),
            },
            event => UffdMsg::Unknown { event },
        }
    }
}

// PAGEMAP_SCAN flags (`pm_scan_arg.flags`) and the categories newer than the ones above.
/// Write-protect the pages that match (with PAGE_IS_WRITTEN: read-and-reset dirty bits).
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail with EPERM if a VMA of the range is not registered for uffd-wp in async mode.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;
pub const PAGE_IS_GUARD: u64 = 1 << 8;

#[cfg(test)]
mod uffd_tests {
    use super::*;

    /// `_IOWR`/`_IOR` as `asm-generic/ioctl.h` spells them, independently of `uffd_ioc`.
    fn ioc(dir: u64, ty: u8, nr: u64, size: u64) -> u64 {
        (dir << 30) | (size << 16) | ((ty as u64) << 8) | nr
    }

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(size_of::<UffdioApi>(), 24);
        assert_eq!(size_of::<UffdioRange>(), 16);
        assert_eq!(size_of::<UffdioRegister>(), 32);
        assert_eq!(size_of::<UffdioCopy>(), 40);
        assert_eq!(size_of::<UffdioZeropage>(), 32);
        assert_eq!(size_of::<UffdioWriteprotect>(), 24);
        assert_eq!(size_of::<UffdioContinue>(), 32);
        assert_eq!(size_of::<UffdioMove>(), 40);
    }

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // The values glibc-era headers produce, spelled out, and the generic encoding.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
        assert_eq!(UFFDIO_MOVE, 0xc028_aa05);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xc018_aa06);
        assert_eq!(UFFDIO_CONTINUE, 0xc020_aa07);
        assert_eq!(UFFDIO_COPY, ioc(3, 0xAA, 3, 40));
        assert_eq!(UFFDIO_UNREGISTER, ioc(2, 0xAA, 1, 16));
        assert_eq!(USERFAULTFD_IOC_NEW, ioc(0, 0xAA, 0, 0));
    }

    #[test]
    fn feature_names_are_the_bits_in_order() {
        for (i, (bit, _)) in UFFD_FEATURE_NAMES.iter().enumerate() {
            assert_eq!(*bit, 1 << i);
        }
    }

    #[test]
    fn messages_decode() {
        let mut m = [0u8; UFFD_MSG_SIZE];
        m[0] = UFFD_EVENT_PAGEFAULT;
        m[8..16].copy_from_slice(&UFFD_PAGEFAULT_FLAG_WRITE.to_le_bytes());
        m[16..24].copy_from_slice(&0x7f00_1234_5000u64.to_le_bytes());
        m[24..28].copy_from_slice(&4242u32.to_le_bytes());
        assert_eq!(
            UffdMsg::decode(&m),
            UffdMsg::Pagefault {
                flags: UFFD_PAGEFAULT_FLAG_WRITE,
                address: 0x7f00_1234_5000,
                ptid: 4242
            }
        );
        let mut m = [0u8; UFFD_MSG_SIZE];
        m[0] = UFFD_EVENT_REMAP;
        m[8..16].copy_from_slice(&1u64.to_le_bytes());
        m[16..24].copy_from_slice(&2u64.to_le_bytes());
        m[24..32].copy_from_slice(&3u64.to_le_bytes());
        assert_eq!(
            UffdMsg::decode(&m),
            UffdMsg::Remap {
                from: 1,
                to: 2,
                len: 3
            }
        );
        m[0] = UFFD_EVENT_REMOVE;
        assert_eq!(UffdMsg::decode(&m), UffdMsg::Remove { start: 1, end: 2 });
        m[0] = UFFD_EVENT_UNMAP;
        assert_eq!(UffdMsg::decode(&m), UffdMsg::Unmap { start: 1, end: 2 });
        m[0] = UFFD_EVENT_FORK;
        assert_eq!(UffdMsg::decode(&m), UffdMsg::Fork { ufd: 1 });
        m[0] = 0x99;
        assert_eq!(UffdMsg::decode(&m), UffdMsg::Unknown { event: 0x99 });
    }
}
