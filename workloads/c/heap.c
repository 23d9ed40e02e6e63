/*
 * heap.c - ferry test workload: a large, busy malloc heap.
 *
 * Usage:   heap [MIB]          (default 300: total bytes allocated, in MiB; 1..16384)
 *
 * Output (stdout, one write(2) per line), in order:
 *   "heap start mib=MIB"
 *   "allocated: chunks=N small=S large=L bytes=B"
 *   "checksum 1: %016x"
 *   "ready"
 *   "sleep I"                          I = 0..7, 400 ms each
 *   "verify: bad bytes=0 bad chunks=0"
 *   "modified: xored=X freed+reallocated=F grown=G"
 *   "checksum 2: %016x"
 *   "done"
 * Exit status 0.
 *
 * Exercises: about a third of MIB in ~1 KiB chunks (the brk heap and its malloc metadata) and
 * the rest in 256 KiB .. 8 MiB chunks (each its own anonymous mmap), all filled with a
 * seeded PRNG. After the sleep (where a test checkpoints and restores) every byte is
 * re-verified against the PRNG, then the heap is changed through malloc again: chunks are
 * xored in place, freed and reallocated, and grown with realloc (mremap for the big ones), so
 * a restored process must have working malloc state, not just the right bytes.
 *
 * Marker for tests: "ready" (then 3.2 s of sleeping). Deterministic for a given MIB.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

struct chunk {
	unsigned char *p;
	size_t size;
	uint64_t seed;
};

static void fill(unsigned char *p, size_t size, uint64_t seed)
{
	uint64_t s = seed;
	size_t i = 0;
	for (; i + 8 <= size; i += 8) {
		uint64_t v = splitmix(&s);
		memcpy(p + i, &v, 8);
	}
	if (i < size) {
		uint64_t v = splitmix(&s);
		memcpy(p + i, &v, size - i);
	}
}

/* Number of bytes that differ from what fill(seed) wrote. */
static size_t check(const unsigned char *p, size_t size, uint64_t seed)
{
	uint64_t s = seed;
	size_t bad = 0, i = 0;
	for (; i + 8 <= size; i += 8) {
		uint64_t v = splitmix(&s), got;
		memcpy(&got, p + i, 8);
		if (got != v)
			for (int b = 0; b < 8; b++)
				bad += ((got >> (8 * b)) & 0xff) != ((v >> (8 * b)) & 0xff);
	}
	if (i < size) {
		uint64_t v = splitmix(&s);
		unsigned char want[8];
		memcpy(want, &v, 8);
		for (size_t b = 0; i + b < size; b++)
			bad += p[i + b] != want[b];
	}
	return bad;
}

static uint64_t checksum(const struct chunk *c, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t k = 0; k < n; k++) {
		const unsigned char *p = c[k].p;
		size_t i = 0;
		for (; i + 8 <= c[k].size; i += 8) {
			uint64_t v;
			memcpy(&v, p + i, 8);
			h = (h ^ v) * 0x100000001b3ULL;
			h ^= h >> 29;
		}
		for (; i < c[k].size; i++)
			h = (h ^ p[i]) * 0x100000001b3ULL;
		h = (h ^ c[k].size) * 0x100000001b3ULL;
	}
	return h;
}

static void nap(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	if (nanosleep(&ts, NULL) != 0)
		out("nanosleep failed: %s\n", strerror(errno));
}

int main(int argc, char **argv)
{
	long mib = 300;
	if (argc > 1) {
		char *end;
		mib = strtol(argv[1], &end, 10);
		if (*argv[1] == '\0' || *end != '\0' || mib < 1 || mib > 16384) {
			dprintf(STDERR_FILENO, "usage: heap [MIB]\n");
			return 2;
		}
	}
	out("heap start mib=%ld\n", mib);

	size_t target = (size_t)mib << 20;
	size_t small_budget = target / 3;
	size_t cap = small_budget / 16 + target / (256 << 10) + 16;
	struct chunk *c = calloc(cap, sizeof *c);
	if (!c) {
		out("calloc of the chunk table failed\n");
		return 1;
	}

	uint64_t rng = 0x5eed0000f00dULL + (uint64_t)mib;
	size_t n = 0, total = 0, nsmall = 0, nlarge = 0;
	while (total < target && n < cap) {
		size_t size;
		if (total < small_budget) {
			size = 16 + splitmix(&rng) % 2033; /* 16 .. 2048 */
			nsmall++;
		} else {
			size = (256 << 10) + splitmix(&rng) % ((8 << 20) - (256 << 10));
			if (size > target - total)
				size = target - total < 16 ? 16 : target - total;
			nlarge++;
		}
		unsigned char *p = malloc(size);
		if (!p) {
			out("malloc(%zu) failed\n", size);
			return 1;
		}
		c[n].p = p;
		c[n].size = size;
		c[n].seed = splitmix(&rng);
		fill(p, size, c[n].seed);
		total += size;
		n++;
	}
	out("allocated: chunks=%zu small=%zu large=%zu bytes=%zu\n", n, nsmall, nlarge, total);
	out("checksum 1: %016llx\n", (unsigned long long)checksum(c, n));
	out("ready\n");

	for (int i = 0; i < 8; i++) {
		nap(400);
		out("sleep %d\n", i);
	}

	size_t bad = 0, bad_chunks = 0;
	for (size_t k = 0; k < n; k++) {
		size_t b = check(c[k].p, c[k].size, c[k].seed);
		bad += b;
		bad_chunks += b != 0;
	}
	out("verify: bad bytes=%zu bad chunks=%zu\n", bad, bad_chunks);

	size_t xored = 0, refilled = 0, grown = 0;
	for (size_t k = 0; k < n; k++) {
		if (k % 5 == 1) {
			free(c[k].p);
			size_t size = 16 + splitmix(&rng) % (c[k].size > 4096 ? 65536 : 4096);
			c[k].p = malloc(size);
			if (!c[k].p) {
				out("malloc(%zu) failed\n", size);
				return 1;
			}
			c[k].size = size;
			c[k].seed = splitmix(&rng);
			fill(c[k].p, size, c[k].seed);
			refilled++;
		} else if (k % 7 == 3) {
			size_t old = c[k].size, size = old + old / 2;
			unsigned char *p = realloc(c[k].p, size);
			if (!p) {
				out("realloc(%zu) failed\n", size);
				return 1;
			}
			fill(p + old, size - old, splitmix(&rng));
			c[k].p = p;
			c[k].size = size;
			grown++;
		} else if (k % 3 == 0) {
			for (size_t i = 0; i < c[k].size; i++)
				c[k].p[i] ^= (unsigned char)(0x5a + i);
			xored++;
		}
	}
	out("modified: xored=%zu freed+reallocated=%zu grown=%zu\n", xored, refilled, grown);
	out("checksum 2: %016llx\n", (unsigned long long)checksum(c, n));

	for (size_t k = 0; k < n; k++)
		free(c[k].p);
	free(c);
	out("done\n");
	return 0;
}
