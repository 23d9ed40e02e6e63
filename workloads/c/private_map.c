/*
 * private_map.c - ferry test workload: copy-on-write pages of a MAP_PRIVATE file mapping.
 *
 * Usage:   private_map PATH    PATH is created (truncated) and filled with 128 KiB by
 *                              write(2), then mapped MAP_PRIVATE, PROT_READ|PROT_WRITE.
 *
 * Output (stdout, one write(2) per line), in order:
 *   "private_map start"
 *   "file written: bytes=131072"
 *   "mapped: pages=32"
 *   "step I"                      I = 0..19, 200 ms apart, each modifies one page (COW)
 *   "mapping matches expected: yes (modified pages=N, untouched pages=M)"
 *   "file unchanged: yes"
 *   "checksum mapping=%016x file=%016x"
 *   "done"
 * Exit status 0.
 *
 * Exercises: a private, writable file mapping whose fd is closed right after mmap. Some pages
 * are copied-on-write before the checkpoint and some after; untouched pages must still show
 * the file. The restored process must get the modified pages from the image, the others from
 * the file, and its writes must never reach the file (checked with read(2) at the end).
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

#define PAGES 32
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

static void original(unsigned char *m)
{
	uint64_t s = 0xf11e;
	for (size_t i = 0; i < SIZE; i += 8) {
		uint64_t v = splitmix(&s);
		memcpy(m + i, &v, 8);
	}
}

static int page_of_step(int i)
{
	return (i * 3) % PAGES;
}

/* Step I rewrites a strip of page (3*I mod 32) */
static void modify(unsigned char *m, int i)
{
	unsigned char *p = m + (size_t)page_of_step(i) * PAGE + (size_t)((i * 131) % 2048);
	uint64_t s = 0xc0 + (uint64_t)i;
	for (int k = 0; k < 1024; k++)
		p[k] ^= (unsigned char)splitmix(&s);
}

static void nap(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	if (nanosleep(&ts, NULL) != 0)
		out("nanosleep failed: %s\n", strerror(errno));
}

static size_t read_all(const char *path, unsigned char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		out("open PATH for reading failed: %s\n", strerror(errno));
		return 0;
	}
	size_t total = 0;
	while (total < cap) {
		ssize_t r = read(fd, buf + total, cap - total);
		if (r < 0) {
			out("read failed: %s\n", strerror(errno));
			break;
		}
		if (r == 0)
			break;
		total += (size_t)r;
	}
	close(fd);
	return total;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		dprintf(STDERR_FILENO, "usage: private_map PATH\n");
		return 2;
	}
	const char *path = argv[1];
	out("private_map start\n");

	unsigned char *want = malloc(SIZE + 1);
	unsigned char *got = malloc(SIZE + 1);
	if (!want || !got) {
		out("malloc failed\n");
		return 1;
	}
	original(want);

	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) {
		out("open PATH failed: %s\n", strerror(errno));
		return 1;
	}
	size_t done = 0;
	while (done < SIZE) {
		ssize_t w = write(fd, want + done, SIZE - done < 40000 ? SIZE - done : 40000);
		if (w <= 0) {
			out("write to PATH returned %zd: %s\n", w, strerror(errno));
			return 1;
		}
		done += (size_t)w;
	}
	if (fsync(fd) != 0)
		out("fsync failed: %s\n", strerror(errno));
	if (close(fd) != 0)
		out("close failed: %s\n", strerror(errno));
	out("file written: bytes=%zu\n", done);

	fd = open(path, O_RDONLY);
	if (fd < 0) {
		out("reopen PATH failed: %s\n", strerror(errno));
		return 1;
	}
	unsigned char *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED) {
		out("mmap failed: %s\n", strerror(errno));
		return 1;
	}
	if (close(fd) != 0)
		out("close failed: %s\n", strerror(errno));
	out("mapped: pages=%d\n", PAGES);

	for (int i = 0; i < STEPS; i++) {
		nap(200);
		modify(m, i);
		out("step %d\n", i);
	}

	int touched[PAGES] = { 0 };
	for (int i = 0; i < STEPS; i++) {
		modify(want, i);
		touched[page_of_step(i)] = 1;
	}
	int nmod = 0;
	for (int p = 0; p < PAGES; p++)
		nmod += touched[p];
	out("mapping matches expected: %s (modified pages=%d, untouched pages=%d)\n",
	    memcmp(want, m, SIZE) == 0 ? "yes" : "no", nmod, PAGES - nmod);

	original(want);
	size_t n = read_all(path, got, SIZE + 1);
	out("file unchanged: %s\n", n == SIZE && memcmp(want, got, SIZE) == 0 ? "yes" : "no");
	out("checksum mapping=%016llx file=%016llx\n", (unsigned long long)hash(m, SIZE),
	    (unsigned long long)hash(got, n));
	if (munmap(m, SIZE) != 0)
		out("munmap failed: %s\n", strerror(errno));
	free(want);
	free(got);
	out("done\n");
	return 0;
}
