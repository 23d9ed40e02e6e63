/*
 * fpu_avx.c - ferry test workload: FPU, SSE, AVX and AVX-512 register state across a sleep.
 *
 * Usage:   fpu_avx             (no arguments; runs about 3 s)
 *
 * Output (stdout, one write(2) per line), in order:
 *   "fpu_avx start"
 *   "avx: yes"                                     (or "avx: not available, ymm not tested")
 *   "avx512: yes, zmm0-31 and k1-k7 tested"        (or "avx512: not available, ...")
 *   "ready"                                        the asm block starts right after this
 *   "sleeps: 30 calls, 0 failed"
 *   "gpr ok", "x87 ok", "x87 control/status ok", "mxcsr ok", "ymm ok", "zmm ok", "opmask ok"
 *                                                  (lines for untested state are left out)
 *   "done"
 * A mismatch prints e.g. "ymm3 mismatch: got ... want ..." instead of the "ok" line, a
 * failed sleep prints "sleeps: 30 calls, 1 failed (last ret -4)". Exit status 0 either way.
 * The "avx"/"avx512" lines depend only on the CPU, so runs on one machine compare equal.
 *
 * Exercises: the whole XSAVE state a restore must put back. One asm block, so that no compiler
 * generated code can touch the registers in between: it loads known patterns into the x87
 * stack (all 8 registers), a non-default x87 control word (53-bit precision, round up),
 * MXCSR (round toward zero, flush-to-zero), xmm/ymm0-15, and, when the CPU and kernel have
 * AVX-512F, the upper halves of zmm0-15, all of zmm16-31 and opmasks k1-k7 (64-bit with
 * AVX512BW, else 16-bit); also rbx, rdx, r8-r10, r12, r13. Then it sleeps with raw
 * `syscall` nanosleep (30 x 100 ms) - a checkpoint lands there - and stores everything back
 * to memory; C code compares afterwards. The syscall return values are counted in the block.
 *
 * Marker for tests: "ready" (wait a few hundred ms more to be sure the block has started).
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SLEEPS 30

__attribute__((format(printf, 1, 2))) static void out(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		_exit(90);
	if ((size_t)n >= sizeof buf)
		n = sizeof buf - 1;
	ssize_t w = write(STDOUT_FILENO, buf, (size_t)n);
	if (w != n) {
		dprintf(STDERR_FILENO, "write to stdout returned %zd (errno %s)\n", w,
			strerror(errno));
		_exit(91);
	}
}

struct state {
	/* inputs */
	unsigned char x87_in[8][16]; /* 80-bit values, padded to 16 bytes */
	unsigned char ymm_in[16][32];
	unsigned char zmm_in[32][64]; /* for zmm0-15 only bytes 32..63 are loaded */
	uint64_t k_in[8];	      /* k1..k7 */
	uint64_t gpr_in[7];	      /* rbx rdx r8 r9 r10 r12 r13 */
	uint32_t mxcsr_in;
	uint16_t fcw_in;
	uint32_t has_avx;
	uint32_t has_avx512;
	uint32_t has_bw;
	struct timespec ts;
	uint64_t calls;
	uint64_t failed;
	int64_t last_fail;
	/* outputs */
	unsigned char x87_out[8][16];
	unsigned char ymm_out[16][32];
	unsigned char zmm_out[32][64];
	uint64_t k_out[8];
	uint64_t gpr_out[7];
	uint32_t mxcsr_out;
	uint16_t fcw_out;
	uint16_t fsw_before;
	uint16_t fsw_after;
	/* the caller's control registers, put back at the end of the block */
	uint32_t mxcsr_saved;
	uint16_t fcw_saved;
} __attribute__((aligned(64)));

static struct state st;

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void fill(void *p, size_t n, uint64_t *s)
{
	unsigned char *b = p;
	for (size_t i = 0; i < n; i += 8) {
		uint64_t v = splitmix(s);
		memcpy(b + i, &v, n - i < 8 ? n - i : 8);
	}
}

static void cpu_features(void)
{
	unsigned a, b, c, d;
	uint64_t xcr0 = 0;

	if (!__get_cpuid(1, &a, &b, &c, &d))
		return;
	int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
	if (osxsave) {
		uint32_t lo, hi;
		__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
		xcr0 = ((uint64_t)hi << 32) | lo;
	}
	st.has_avx = avx && (xcr0 & 0x6) == 0x6;
	if (st.has_avx && __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
		st.has_avx512 = ((b >> 16) & 1) && (xcr0 & 0xe6) == 0xe6;
		st.has_bw = st.has_avx512 && ((b >> 30) & 1);
	}
}

#define LD_YMM(n) "vmovdqu %c[ymm_in]+32*" #n "(%%r15), %%ymm" #n "\n\t"
#define ST_YMM(n) "vmovdqu %%ymm" #n ", %c[ymm_out]+32*" #n "(%%r15)\n\t"
#define LD_ZMM_HI(n) "vinserti64x4 $1, %c[zmm_in]+64*" #n "+32(%%r15), %%zmm" #n ", %%zmm" #n "\n\t"
#define LD_ZMM(n) "vmovdqu64 %c[zmm_in]+64*" #n "(%%r15), %%zmm" #n "\n\t"
#define ST_ZMM(n) "vmovdqu64 %%zmm" #n ", %c[zmm_out]+64*" #n "(%%r15)\n\t"
#define LD_KQ(n) "kmovq %c[k_in]+8*" #n "(%%r15), %%k" #n "\n\t"
#define ST_KQ(n) "kmovq %%k" #n ", %c[k_out]+8*" #n "(%%r15)\n\t"
#define LD_KW(n) "kmovw %c[k_in]+8*" #n "(%%r15), %%k" #n "\n\t"
#define ST_KW(n) "kmovw %%k" #n ", %c[k_out]+8*" #n "(%%r15)\n\t"

static void run_block(void)
{
	/* The base pointer lives in r15, which the block never writes. */
	register struct state *base __asm__("r15") = &st;

	/*
	 * xmm16-31 and k0-k7 are not listed as clobbers: gcc refuses them unless AVX-512 code
	 * generation is enabled, and without it gcc never uses those registers itself.
	 */
	__asm__ volatile(
		"stmxcsr %c[mxcsr_saved](%%r15)\n\t"
		"fnstcw %c[fcw_saved](%%r15)\n\t"
		/* x87: 8 values, non-default control word */
		"fninit\n\t"
		"fldcw %c[fcw_in](%%r15)\n\t"
		"fldt %c[x87_in]+16*0(%%r15)\n\t"
		"fldt %c[x87_in]+16*1(%%r15)\n\t"
		"fldt %c[x87_in]+16*2(%%r15)\n\t"
		"fldt %c[x87_in]+16*3(%%r15)\n\t"
		"fldt %c[x87_in]+16*4(%%r15)\n\t"
		"fldt %c[x87_in]+16*5(%%r15)\n\t"
		"fldt %c[x87_in]+16*6(%%r15)\n\t"
		"fldt %c[x87_in]+16*7(%%r15)\n\t"
		"fnstsw %c[fsw_before](%%r15)\n\t"
		"ldmxcsr %c[mxcsr_in](%%r15)\n\t"
		/* ymm0-15 */
		"cmpl $0, %c[has_avx](%%r15)\n\t"
		"je 10f\n\t"
		LD_YMM(0) LD_YMM(1) LD_YMM(2) LD_YMM(3) LD_YMM(4) LD_YMM(5) LD_YMM(6) LD_YMM(7)
		LD_YMM(8) LD_YMM(9) LD_YMM(10) LD_YMM(11) LD_YMM(12) LD_YMM(13) LD_YMM(14)
		LD_YMM(15)
		"10:\n\t"
		/* zmm: upper halves of 0-15, all of 16-31, opmasks */
		"cmpl $0, %c[has_avx512](%%r15)\n\t"
		"je 12f\n\t"
		LD_ZMM_HI(0) LD_ZMM_HI(1) LD_ZMM_HI(2) LD_ZMM_HI(3) LD_ZMM_HI(4) LD_ZMM_HI(5)
		LD_ZMM_HI(6) LD_ZMM_HI(7) LD_ZMM_HI(8) LD_ZMM_HI(9) LD_ZMM_HI(10) LD_ZMM_HI(11)
		LD_ZMM_HI(12) LD_ZMM_HI(13) LD_ZMM_HI(14) LD_ZMM_HI(15)
		LD_ZMM(16) LD_ZMM(17) LD_ZMM(18) LD_ZMM(19) LD_ZMM(20) LD_ZMM(21) LD_ZMM(22)
		LD_ZMM(23) LD_ZMM(24) LD_ZMM(25) LD_ZMM(26) LD_ZMM(27) LD_ZMM(28) LD_ZMM(29)
		LD_ZMM(30) LD_ZMM(31)
		"cmpl $0, %c[has_bw](%%r15)\n\t"
		"je 11f\n\t"
		LD_KQ(1) LD_KQ(2) LD_KQ(3) LD_KQ(4) LD_KQ(5) LD_KQ(6) LD_KQ(7)
		"jmp 12f\n\t"
		"11:\n\t"
		LD_KW(1) LD_KW(2) LD_KW(3) LD_KW(4) LD_KW(5) LD_KW(6) LD_KW(7)
		"12:\n\t"
		/* general purpose registers that syscall preserves */
		"mov %c[gpr_in]+8*0(%%r15), %%rbx\n\t"
		"mov %c[gpr_in]+8*1(%%r15), %%rdx\n\t"
		"mov %c[gpr_in]+8*2(%%r15), %%r8\n\t"
		"mov %c[gpr_in]+8*3(%%r15), %%r9\n\t"
		"mov %c[gpr_in]+8*4(%%r15), %%r10\n\t"
		"mov %c[gpr_in]+8*5(%%r15), %%r12\n\t"
		"mov %c[gpr_in]+8*6(%%r15), %%r13\n\t"
		/* the sleep: raw nanosleep(&ts, NULL), SLEEPS times */
		"mov %[sleeps], %%r14d\n\t"
		"20:\n\t"
		"mov $35, %%eax\n\t" /* __NR_nanosleep */
		"lea %c[ts](%%r15), %%rdi\n\t"
		"xor %%esi, %%esi\n\t"
		"syscall\n\t"
		"incq %c[calls](%%r15)\n\t"
		"test %%rax, %%rax\n\t"
		"jz 21f\n\t"
		"incq %c[failed](%%r15)\n\t"
		"mov %%rax, %c[last_fail](%%r15)\n\t"
		"21:\n\t"
		"dec %%r14d\n\t"
		"jnz 20b\n\t"
		/* store everything */
		"mov %%rbx, %c[gpr_out]+8*0(%%r15)\n\t"
		"mov %%rdx, %c[gpr_out]+8*1(%%r15)\n\t"
		"mov %%r8, %c[gpr_out]+8*2(%%r15)\n\t"
		"mov %%r9, %c[gpr_out]+8*3(%%r15)\n\t"
		"mov %%r10, %c[gpr_out]+8*4(%%r15)\n\t"
		"mov %%r12, %c[gpr_out]+8*5(%%r15)\n\t"
		"mov %%r13, %c[gpr_out]+8*6(%%r15)\n\t"
		"stmxcsr %c[mxcsr_out](%%r15)\n\t"
		"fnstcw %c[fcw_out](%%r15)\n\t"
		"fnstsw %c[fsw_after](%%r15)\n\t"
		"fstpt %c[x87_out]+16*7(%%r15)\n\t"
		"fstpt %c[x87_out]+16*6(%%r15)\n\t"
		"fstpt %c[x87_out]+16*5(%%r15)\n\t"
		"fstpt %c[x87_out]+16*4(%%r15)\n\t"
		"fstpt %c[x87_out]+16*3(%%r15)\n\t"
		"fstpt %c[x87_out]+16*2(%%r15)\n\t"
		"fstpt %c[x87_out]+16*1(%%r15)\n\t"
		"fstpt %c[x87_out]+16*0(%%r15)\n\t"
		"cmpl $0, %c[has_avx](%%r15)\n\t"
		"je 31f\n\t"
		"cmpl $0, %c[has_avx512](%%r15)\n\t"
		"jne 30f\n\t"
		ST_YMM(0) ST_YMM(1) ST_YMM(2) ST_YMM(3) ST_YMM(4) ST_YMM(5) ST_YMM(6) ST_YMM(7)
		ST_YMM(8) ST_YMM(9) ST_YMM(10) ST_YMM(11) ST_YMM(12) ST_YMM(13) ST_YMM(14)
		ST_YMM(15)
		"jmp 31f\n\t"
		"30:\n\t"
		ST_ZMM(0) ST_ZMM(1) ST_ZMM(2) ST_ZMM(3) ST_ZMM(4) ST_ZMM(5) ST_ZMM(6) ST_ZMM(7)
		ST_ZMM(8) ST_ZMM(9) ST_ZMM(10) ST_ZMM(11) ST_ZMM(12) ST_ZMM(13) ST_ZMM(14)
		ST_ZMM(15) ST_ZMM(16) ST_ZMM(17) ST_ZMM(18) ST_ZMM(19) ST_ZMM(20) ST_ZMM(21)
		ST_ZMM(22) ST_ZMM(23) ST_ZMM(24) ST_ZMM(25) ST_ZMM(26) ST_ZMM(27) ST_ZMM(28)
		ST_ZMM(29) ST_ZMM(30) ST_ZMM(31)
		"cmpl $0, %c[has_bw](%%r15)\n\t"
		"je 32f\n\t"
		ST_KQ(1) ST_KQ(2) ST_KQ(3) ST_KQ(4) ST_KQ(5) ST_KQ(6) ST_KQ(7)
		"jmp 33f\n\t"
		"32:\n\t"
		ST_KW(1) ST_KW(2) ST_KW(3) ST_KW(4) ST_KW(5) ST_KW(6) ST_KW(7)
		"33:\n\t"
		"vzeroupper\n\t"
		"31:\n\t"
		/* hand the caller back its own control registers */
		"ldmxcsr %c[mxcsr_saved](%%r15)\n\t"
		"fninit\n\t"
		"fldcw %c[fcw_saved](%%r15)\n\t"
		:
		: "r"(base), [sleeps] "i"(SLEEPS),
		  [x87_in] "i"(offsetof(struct state, x87_in)),
		  [ymm_in] "i"(offsetof(struct state, ymm_in)),
		  [zmm_in] "i"(offsetof(struct state, zmm_in)),
		  [k_in] "i"(offsetof(struct state, k_in) - 8), /* k_in[0] is k1 */
		  [gpr_in] "i"(offsetof(struct state, gpr_in)),
		  [mxcsr_in] "i"(offsetof(struct state, mxcsr_in)),
		  [fcw_in] "i"(offsetof(struct state, fcw_in)),
		  [has_avx] "i"(offsetof(struct state, has_avx)),
		  [has_avx512] "i"(offsetof(struct state, has_avx512)),
		  [has_bw] "i"(offsetof(struct state, has_bw)),
		  [ts] "i"(offsetof(struct state, ts)),
		  [calls] "i"(offsetof(struct state, calls)),
		  [failed] "i"(offsetof(struct state, failed)),
		  [last_fail] "i"(offsetof(struct state, last_fail)),
		  [x87_out] "i"(offsetof(struct state, x87_out)),
		  [ymm_out] "i"(offsetof(struct state, ymm_out)),
		  [zmm_out] "i"(offsetof(struct state, zmm_out)),
		  [k_out] "i"(offsetof(struct state, k_out) - 8),
		  [gpr_out] "i"(offsetof(struct state, gpr_out)),
		  [mxcsr_out] "i"(offsetof(struct state, mxcsr_out)),
		  [fcw_out] "i"(offsetof(struct state, fcw_out)),
		  [fsw_before] "i"(offsetof(struct state, fsw_before)),
		  [fsw_after] "i"(offsetof(struct state, fsw_after)),
		  [mxcsr_saved] "i"(offsetof(struct state, mxcsr_saved)),
		  [fcw_saved] "i"(offsetof(struct state, fcw_saved))
		: "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
		  "r14", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
		  "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st", "st(1)",
		  "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)", "memory", "cc");
}

/* Compare N bytes; on a mismatch print the first differing 8-byte word (little endian). */
static int same(const char *what, int idx, const void *got, const void *want, size_t n)
{
	if (memcmp(got, want, n) == 0)
		return 1;
	const unsigned char *g = got, *w = want;
	size_t off = 0;
	while (off + 8 < n && memcmp(g + off, w + off, 8) == 0)
		off += 8;
	uint64_t gv = 0, wv = 0;
	memcpy(&gv, g + off, n - off < 8 ? n - off : 8);
	memcpy(&wv, w + off, n - off < 8 ? n - off : 8);
	out("%s%d mismatch at byte %zu: got %016llx want %016llx\n", what, idx, off,
	    (unsigned long long)gv, (unsigned long long)wv);
	return 0;
}

int main(void)
{
	out("fpu_avx start\n");
	cpu_features();
	out(st.has_avx ? "avx: yes\n" : "avx: not available, ymm not tested\n");
	if (st.has_avx512)
		out("avx512: yes, zmm0-31 and k1-k7 tested\n");
	else
		out("avx512: not available, zmm and opmasks not tested\n");

	uint64_t s = 0xf9f9f9f9;
	for (int i = 0; i < 8; i++) {
		/* normal 80-bit values: explicit integer bit, exponent well inside the range */
		uint64_t mant = splitmix(&s) | (1ULL << 63);
		uint16_t se = (uint16_t)(0x3fff - 200 + (int)(splitmix(&s) % 400));
		if (i & 1)
			se |= 0x8000;
		memcpy(st.x87_in[i], &mant, 8);
		memcpy(st.x87_in[i] + 8, &se, 2);
	}
	fill(st.ymm_in, sizeof st.ymm_in, &s);
	fill(st.zmm_in, sizeof st.zmm_in, &s);
	fill(st.k_in, sizeof st.k_in, &s);
	if (!st.has_bw)
		for (int i = 0; i < 8; i++)
			st.k_in[i] &= 0xffff;
	fill(st.gpr_in, sizeof st.gpr_in, &s);
	st.fcw_in = 0x0a7f;   /* all exceptions masked, 53-bit precision, round up */
	st.mxcsr_in = 0xff80; /* all exceptions masked, round toward zero, flush-to-zero */
	st.ts.tv_sec = 0;
	st.ts.tv_nsec = 100 * 1000000L;

	out("ready\n");
	run_block();

	if (st.failed)
		out("sleeps: %llu calls, %llu failed (last ret %lld)\n", (unsigned long long)st.calls,
		    (unsigned long long)st.failed, (long long)st.last_fail);
	else
		out("sleeps: %llu calls, 0 failed\n", (unsigned long long)st.calls);

	static const char *gpr_names[7] = { "rbx", "rdx", "r8", "r9", "r10", "r12", "r13" };
	int ok = 1;
	for (int i = 0; i < 7; i++)
		if (st.gpr_out[i] != st.gpr_in[i]) {
			out("%s mismatch: got %016llx want %016llx\n", gpr_names[i],
			    (unsigned long long)st.gpr_out[i], (unsigned long long)st.gpr_in[i]);
			ok = 0;
		}
	if (ok)
		out("gpr ok\n");

	ok = 1;
	for (int i = 0; i < 8; i++)
		ok &= same("st", 7 - i, st.x87_out[i], st.x87_in[i], 10);
	if (ok)
		out("x87 ok\n");
	if (st.fcw_out == st.fcw_in && st.fsw_after == st.fsw_before)
		out("x87 control/status ok\n");
	else
		out("x87 control/status mismatch: fcw %04x (want %04x) fsw %04x (want %04x)\n",
		    st.fcw_out, st.fcw_in, st.fsw_after, st.fsw_before);
	/* The low six MXCSR bits are sticky exception flags; the sleep raises none. */
	if (st.mxcsr_out == st.mxcsr_in)
		out("mxcsr ok\n");
	else
		out("mxcsr mismatch: got %08x want %08x\n", st.mxcsr_out, st.mxcsr_in);

	if (st.has_avx) {
		ok = 1;
		for (int i = 0; i < 16; i++) {
			const unsigned char *got = st.has_avx512 ? st.zmm_out[i] : st.ymm_out[i];
			ok &= same("ymm", i, got, st.ymm_in[i], 32);
		}
		if (ok)
			out("ymm ok\n");
	}
	if (st.has_avx512) {
		ok = 1;
		for (int i = 0; i < 16; i++)
			ok &= same("zmm_hi", i, st.zmm_out[i] + 32, st.zmm_in[i] + 32, 32);
		for (int i = 16; i < 32; i++)
			ok &= same("zmm", i, st.zmm_out[i], st.zmm_in[i], 64);
		if (ok)
			out("zmm ok\n");
		ok = 1;
		for (int i = 1; i < 8; i++)
			ok &= same("k", i, &st.k_out[i - 1], &st.k_in[i - 1], 8);
		if (ok)
			out("opmask ok\n");
	}
	out("done\n");
	return 0;
}
