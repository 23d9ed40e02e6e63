/*
 * shared_map.c - ferry test workload: a MAP_SHARED file mapping written over time.
 *
 * Usage:   shared_map PATH     PATH is created (truncated), sized to 256 KiB and mapped
 *                              MAP_SHARED; its content at the end is deterministic.
 *
 * Output (stdout, one write(2) per line), in order:
 *   "shared_map start"
 *   "mapped: pages=64"
 *   "step I"                      I = 0..19, 200 ms apart, each writes one record
 *   "msync after step I: ret=0"   after steps 4, 9, 14, 19
 *   "mapping matches expected: yes"
 *   "file read back: bytes=262144 matches mapping: yes"
 *   "checksum mapping=%016x file=%016x"
 *   "done"
 * Exit status 0.
 *
 * Exercises: a shared, writable file mapping whose fd is closed right after mmap, so the
 * mapping alone keeps the file. Pages are dirtied before and after the checkpoint; the
 * restored process must map the same file (not a private copy: ferry does not carry those
 * pages, the page cache does) so that what it writes reaches the file. At the end the file is
 * read back with read(2) and compared with the mapping and with the expected content.
 *
 * Marker for tests: "step 5" (then 2.8 s more). Runs about 4 s.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGES 64
#define PAGE 4096
#define SIZE (PAGES * PAGE)
#define STEPS 20

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

static uint64_t hash(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

/* The background every page gets first. */
static void background(unsigned char *m)
{
	uint64_t s = 0xbac6;
	for (size_t i = 0; i < SIZE; i += 8) {
		uint64_t v = splitmix(&s);
		memcpy(m + i, &v, 8);
	}
}

/* Record I: a text line and 64 PRNG bytes at a step-dependent page and offset. */
static void record(unsigned char *m, int i)
{
	size_t off = (size_t)((i * 7) % PAGES) * PAGE + (size_t)((i * 104) % 3900);
	int n = snprintf((char *)m + off, 100, "record %02d written through MAP_SHARED\n", i);
	uint64_t s = 0x4ec0 + (uint64_t)i;
	for (int k = 0; k < 64; k += 8) {
		uint64_t v = splitmix(&s);
		memcpy(m + off + (size_t)n + (size_t)k, &v, 8);
	}
}

static void nap(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	if (nanosleep(&ts, NULL) != 0)
		out("nanosleep failed: %s\n", strerror(errno));
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		dprintf(STDERR_FILENO, "usage: shared_map PATH\n");
		return 2;
	}
	const char *path = argv[1];
	out("shared_map start\n");

	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) {
		out("open PATH failed: %s\n", strerror(errno));
		return 1;
	}
	if (ftruncate(fd, SIZE) != 0) {
		out("ftruncate failed: %s\n", strerror(errno));
		return 1;
	}
	unsigned char *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED) {
		out("mmap failed: %s\n", strerror(errno));
		return 1;
	}
	if (close(fd) != 0)
		out("close failed: %s\n", strerror(errno));
	out("mapped: pages=%d\n", PAGES);

	background(m);
	for (int i = 0; i < STEPS; i++) {
		nap(200);
		record(m, i);
		out("step %d\n", i);
		if (i % 5 == 4)
			out("msync after step %d: ret=%d\n", i, msync(m, SIZE, MS_SYNC));
	}

	unsigned char *want = malloc(SIZE);
	unsigned char *got = malloc(SIZE);
	if (!want || !got) {
		out("malloc failed\n");
		return 1;
	}
	background(want);
	for (int i = 0; i < STEPS; i++)
		record(want, i);
	out("mapping matches expected: %s\n", memcmp(want, m, SIZE) == 0 ? "yes" : "no");

	fd = open(path, O_RDONLY);
	if (fd < 0) {
		out("reopen PATH failed: %s\n", strerror(errno));
		return 1;
	}
	size_t total = 0;
	for (;;) {
		ssize_t r = read(fd, got + total, SIZE - total < 65536 ? SIZE - total : 65536);
		if (r < 0) {
			out("read failed: %s\n", strerror(errno));
			break;
		}
		if (r == 0 || (total += (size_t)r) == SIZE)
			break;
	}
	char extra;
	if (total == SIZE && read(fd, &extra, 1) != 0)
		out("file is longer than the mapping\n");
	close(fd);
	out("file read back: bytes=%zu matches mapping: %s\n", total,
	    total == SIZE && memcmp(got, m, SIZE) == 0 ? "yes" : "no");
	out("checksum mapping=%016llx file=%016llx\n", (unsigned long long)hash(m, SIZE),
	    (unsigned long long)hash(got, total));
	if (munmap(m, SIZE) != 0)
		out("munmap failed: %s\n", strerror(errno));
	free(want);
	free(got);
	out("done\n");
	return 0;
}
