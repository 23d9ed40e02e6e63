/*
 * files.c - ferry test workload: open files, offsets, flags, cwd and umask.
 *
 * Usage:   files DIR           DIR must exist; the program creates DIR/wd, chdirs there and
 *                              creates data.bin, log.txt (and after.txt at the end) in it.
 *                              Expects stdin to be /dev/null (or any empty file) and only fds
 *                              0-2 open at exec.
 *
 * Output (stdout, one write(2) per line): "files start", "fds opened: ...", "ready",
 * "sleep 0" .. "sleep 7" (400 ms apart), then one line per check, each ending in "yes" or
 * showing the value read back (cwd, umask, per-fd offset and O_* flags, FD_CLOEXEC, what
 * reads return, the mode of a file created after the sleep, the list of open fds), "done".
 * Exit status 0.
 *
 * Exercises: a regular file open O_RDWR at offset 1234 and the same file separately open
 * O_RDONLY at offset 777; an O_APPEND log; a directory fd; /dev/null, /dev/zero, /dev/urandom;
 * an fd moved to number >= 100 with FD_CLOEXEC at offset 4321; the working directory; umask
 * 027. No two fds share an open file description (ferry's image has no way to express that).
 * Nothing is retried: every unexpected value is printed.
 *
 * Marker for tests: "sleep 1" (then 2.4 s more). Runs about 3.2 s.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DATA_SIZE 10000

__attribute__((format(printf, 1, 2))) static void out(const char *fmt, ...)
{
	char buf[1024];
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

static unsigned char pattern(size_t i)
{
	return (unsigned char)((i * 7919u) ^ (i >> 8));
}

static int xopen(const char *path, int flags, mode_t mode)
{
	int fd = open(path, flags, mode);
	if (fd < 0) {
		out("open %s failed: %s\n", path, strerror(errno));
		exit(1);
	}
	return fd;
}

static const char *fl_str(int fd, char *buf, size_t len)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0) {
		snprintf(buf, len, "F_GETFL failed: %s", strerror(errno));
		return buf;
	}
	const char *acc = (fl & O_ACCMODE) == O_RDONLY ? "O_RDONLY" :
			  (fl & O_ACCMODE) == O_WRONLY ? "O_WRONLY" : "O_RDWR";
	snprintf(buf, len, "%s%s%s", acc, fl & O_APPEND ? "|O_APPEND" : "",
		 fl & O_NONBLOCK ? "|O_NONBLOCK" : "");
	return buf;
}

static const char *cloexec_str(int fd)
{
	int f = fcntl(fd, F_GETFD);
	return f < 0 ? "F_GETFD failed" : (f & FD_CLOEXEC) ? "cloexec" : "no-cloexec";
}

/* "fd N: pos=P flags=F cloexec" */
static void show_fd(const char *name, int fd)
{
	char fb[64];
	out("%s: pos=%lld flags=%s %s\n", name, (long long)lseek(fd, 0, SEEK_CUR),
	    fl_str(fd, fb, sizeof fb), cloexec_str(fd));
}

static int data_ok(int fd, off_t at, size_t n)
{
	unsigned char buf[64];
	if (n > sizeof buf)
		n = sizeof buf;
	ssize_t r = pread(fd, buf, n, at);
	if (r != (ssize_t)n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (buf[i] != pattern((size_t)at + i))
			return 0;
	return 1;
}

static void nap(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	if (nanosleep(&ts, NULL) != 0)
		out("nanosleep failed: %s\n", strerror(errno));
}

static int cmp_int(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

int main(int argc, char **argv)
{
	char fb[64];

	if (argc != 2) {
		dprintf(STDERR_FILENO, "usage: files DIR\n");
		return 2;
	}
	out("files start\n");
	if (chdir(argv[1]) != 0) {
		out("chdir DIR failed: %s\n", strerror(errno));
		return 1;
	}
	if (mkdir("wd", 0755) != 0 && errno != EEXIST)
		out("mkdir wd failed: %s\n", strerror(errno));
	if (chdir("wd") != 0) {
		out("chdir wd failed: %s\n", strerror(errno));
		return 1;
	}
	umask(027);

	unsigned char *data = malloc(DATA_SIZE);
	if (!data)
		return 1;
	for (size_t i = 0; i < DATA_SIZE; i++)
		data[i] = pattern(i);

	int fd_data = xopen("data.bin", O_RDWR | O_CREAT | O_TRUNC, 0666);
	if (write(fd_data, data, DATA_SIZE) != DATA_SIZE)
		out("write data.bin: short or failed\n");
	lseek(fd_data, 1234, SEEK_SET);
	int fd_ro = xopen("data.bin", O_RDONLY, 0);
	lseek(fd_ro, 777, SEEK_SET);
	int fd_log = xopen("log.txt", O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0666);
	if (write(fd_log, "line 1\n", 7) != 7)
		out("write log.txt: short or failed\n");
	int fd_dir = xopen(".", O_RDONLY | O_DIRECTORY, 0);
	int fd_null = xopen("/dev/null", O_WRONLY, 0);
	int fd_zero = xopen("/dev/zero", O_RDONLY, 0);
	int fd_rand = xopen("/dev/urandom", O_RDONLY, 0);
	int tmp = xopen("data.bin", O_RDONLY, 0);
	int fd_high = fcntl(tmp, F_DUPFD_CLOEXEC, 100);
	if (fd_high < 0)
		out("F_DUPFD_CLOEXEC failed: %s\n", strerror(errno));
	close(tmp);
	lseek(fd_high, 4321, SEEK_SET);
	out("fds opened: data=%d ro=%d log=%d dir=%d null=%d zero=%d urandom=%d high=%d\n", fd_data,
	    fd_ro, fd_log, fd_dir, fd_null, fd_zero, fd_rand, fd_high);

	out("ready\n");
	for (int i = 0; i < 8; i++) {
		nap(400);
		out("sleep %d\n", i);
	}

	char cwd[4096];
	if (!getcwd(cwd, sizeof cwd)) {
		out("getcwd failed: %s\n", strerror(errno));
	} else {
		size_t n = strlen(cwd);
		out("cwd ends with /wd: %s\n", n >= 3 && strcmp(cwd + n - 3, "/wd") == 0 ? "yes" : "no");
	}
	struct stat a, b;
	if (stat(".", &a) == 0 && fstat(fd_dir, &b) == 0)
		out("cwd is the directory fd: %s, a directory: %s\n",
		    a.st_dev == b.st_dev && a.st_ino == b.st_ino ? "yes" : "no",
		    S_ISDIR(b.st_mode) ? "yes" : "no");
	else
		out("stat cwd/dirfd failed: %s\n", strerror(errno));
	mode_t old = umask(022);
	umask(old);
	out("umask: %03o\n", (unsigned)old);

	show_fd("data", fd_data);
	out("data content at its offset: %s\n", data_ok(fd_data, 1234, 64) ? "yes" : "no");
	show_fd("ro", fd_ro);
	{
		unsigned char c[16];
		ssize_t r = read(fd_ro, c, sizeof c);
		int ok = r == (ssize_t)sizeof c;
		for (size_t i = 0; ok && i < sizeof c; i++)
			ok = c[i] == pattern(777 + i);
		out("ro read 16 from 777: %s, now at %lld\n", ok ? "yes" : "no",
		    (long long)lseek(fd_ro, 0, SEEK_CUR));
	}
	show_fd("log", fd_log);
	{
		ssize_t w = write(fd_log, "line 2\n", 7);
		char buf[64] = "";
		int f = openat(fd_dir, "log.txt", O_RDONLY);
		ssize_t r = f >= 0 ? read(f, buf, sizeof buf - 1) : -1;
		if (f >= 0)
			close(f);
		out("log append: write=%zd, file now %zd bytes, content ok: %s\n", w, r,
		    r == 14 && memcmp(buf, "line 1\nline 2\n", 14) == 0 ? "yes" : "no");
	}
	show_fd("dir", fd_dir);
	out("null: flags=%s write=%zd\n", fl_str(fd_null, fb, sizeof fb), write(fd_null, "x", 1));
	{
		unsigned char z[32];
		memset(z, 0xff, sizeof z);
		ssize_t r = read(fd_zero, z, sizeof z);
		int zero = 1;
		for (size_t i = 0; i < sizeof z; i++)
			zero &= z[i] == 0;
		out("zero: flags=%s read=%zd all zero: %s\n", fl_str(fd_zero, fb, sizeof fb), r,
		    zero ? "yes" : "no");
		out("urandom: flags=%s read=%zd\n", fl_str(fd_rand, fb, sizeof fb),
		    read(fd_rand, z, sizeof z));
	}
	show_fd("high", fd_high);
	out("high content at its offset: %s\n", data_ok(fd_high, 4321, 64) ? "yes" : "no");
	show_fd("stdout", STDOUT_FILENO) /* pos is the output so far: deterministic */;
	{
		char c;
		out("stdin read: %zd\n", read(STDIN_FILENO, &c, 1));
	}
	{
		int f = open("after.txt", O_WRONLY | O_CREAT | O_TRUNC, 0666);
		struct stat st;
		if (f < 0 || fstat(f, &st) != 0)
			out("create after.txt failed: %s\n", strerror(errno));
		else
			out("after.txt mode (0666 & ~umask): %03o\n", (unsigned)(st.st_mode & 0777));
		if (f >= 0)
			close(f);
	}
	{
		DIR *d = opendir("/proc/self/fd");
		int fds[256], n = 0;
		struct dirent *e;
		while (d && (e = readdir(d)) && n < 256) {
			if (e->d_name[0] == '.')
				continue;
			int fd = atoi(e->d_name);
			if (fd != dirfd(d))
				fds[n++] = fd;
		}
		if (d)
			closedir(d);
		qsort(fds, (size_t)n, sizeof fds[0], cmp_int);
		char list[1024] = "";
		for (int i = 0; i < n; i++) {
			char one[16];
			snprintf(one, sizeof one, "%s%d", i ? " " : "", fds[i]);
			strncat(list, one, sizeof list - strlen(list) - 1);
		}
		out("open fds: %s\n", list);
	}
	free(data);
	out("done\n");
	return 0;
}
