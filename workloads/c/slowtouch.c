/*
 * slowtouch.c - ferry test workload: memory that is needed slowly, over seconds.
 *
 * Usage:   slowtouch [MIB [TOUCHES [INTERVAL_MS]]]      (defaults: 64, 1500, 4)
 *
 * Output (stdout, one write(2) per line), in order:
 *   "slowtouch start mib=MIB touches=TOUCHES interval_ms=INTERVAL_MS"
 *   "checksum 1: %016x"                 the whole region right after it was filled
 *   "ready"
 *   "touched K"                         K = 250, 500, ... (every 250 touches)
 *   "touch sum: %016x"                  what the touches read
 *   "checksum 2: %016x"                 the whole region after the touches
 *   "done"
 * Exit status 0.
 *
 * Exercises: a process whose memory is needed a little at a time long after a migration, as
 * a lazy migration (demand-paging, file-server, freeze-free) sees it. MIB MiB of one anonymous
 * mapping are filled with a seeded PRNG; after "ready" the program touches one page every
 * INTERVAL_MS ms (nanosleep in between), TOUCHES times: page (K * 7919 + 13) mod pages, so
 * that consecutive touches land far apart and each one usually needs a page nobody fetched
 * yet. A touch reads 8 bytes of the page into a sum and changes one byte. At the end the
 * whole region is read back. Nothing is retried: a failed nanosleep is printed.
 *
 * Marker for tests: "ready" (then TOUCHES * INTERVAL_MS ms of touching: 6 s by default).
 * Deterministic for given arguments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

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

static uint64_t checksum(const unsigned char *p, size_t size)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i + 8 <= size; i += 8) {
		uint64_t v;
		memcpy(&v, p + i, 8);
		h = (h ^ v) * 0x100000001b3ULL;
		h ^= h >> 29;
	}
	return h;
}

static long arg(int argc, char **argv, int i, long def, long lo, long hi)
{
	if (argc <= i)
		return def;
	char *end;
	long v = strtol(argv[i], &end, 10);
	if (*argv[i] == '\0' || *end != '\0' || v < lo || v > hi) {
		dprintf(STDERR_FILENO, "usage: slowtouch [MIB [TOUCHES [INTERVAL_MS]]]\n");
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	long mib = arg(argc, argv, 1, 64, 1, 16384);
	long touches = arg(argc, argv, 2, 1500, 0, 10000000);
	long interval = arg(argc, argv, 3, 4, 0, 10000);
	out("slowtouch start mib=%ld touches=%ld interval_ms=%ld\n", mib, touches, interval);

	size_t size = (size_t)mib << 20;
	size_t pages = size / PAGE;
	unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				-1, 0);
	if (p == MAP_FAILED) {
		out("mmap of %ld MiB failed: %s\n", mib, strerror(errno));
		return 1;
	}
	uint64_t rng = 0x51077041c4ULL + (uint64_t)mib;
	for (size_t i = 0; i < size; i += 8) {
		uint64_t v = splitmix(&rng);
		memcpy(p + i, &v, 8);
	}
	out("checksum 1: %016llx\n", (unsigned long long)checksum(p, size));
	out("ready\n");

	struct timespec ts = { .tv_sec = interval / 1000, .tv_nsec = (interval % 1000) * 1000000L };
	uint64_t sum = 0;
	for (long k = 0; k < touches; k++) {
		if (interval > 0 && nanosleep(&ts, NULL) != 0)
			out("nanosleep %ld failed: %s\n", k, strerror(errno));
		size_t page = ((size_t)k * 7919 + 13) % pages;
		size_t off = page * PAGE + ((size_t)k * 64) % PAGE;
		uint64_t v;
		memcpy(&v, p + off, 8);
		sum = (sum ^ v) * 0x100000001b3ULL;
		p[off] ^= (unsigned char)(k & 0xff);
		if ((k + 1) % 250 == 0)
			out("touched %ld\n", k + 1);
	}
	out("touch sum: %016llx\n", (unsigned long long)sum);
	out("checksum 2: %016llx\n", (unsigned long long)checksum(p, size));
	out("done\n");
	return 0;
}
