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
