/*
 * poller.c - ferry test workload: poll(2)/ppoll(2) sleeping with a timeout.
 *
 * Usage:   poller FILE       FILE is created (or truncated) and filled by the program
 *
 * Output (stdout, one write(2) per line), in order:
 *   "poller start"
 *   "poll I: ret=0"                                          I = 0..9, poll(NULL, 0, 400 ms)
 *   "poll file: ret=1 revents=POLLIN|POLLOUT"                poll on a regular-file fd, 400 ms
 *   "ppoll: start"
 *   "ppoll: ret=0 timeout left=0.000000000"                  raw ppoll(NULL, 0, 1 s, &mask)
 *   "ppoll file: ret=1 revents=POLLIN"                       ppoll on the regular file, 1 s
 *   "done"
 * Exit status 0.
 *
 * Exercises: poll() with no fds and a timeout (the kernel restarts it through the restart
 * block, -ERESTART_RESTARTBLOCK), poll() on a regular file (always ready), and ppoll() with
 * a signal mask (-ERESTARTNOHAND, the kernel writes the time left back; called through
 * syscall(2) because glibc's wrapper hides that write-back). Nothing is retried: return values,
 * errno, revents and the remaining ppoll timeout are all printed.
 *
 * Markers for tests: "poll 3: ret=" (process is inside a later 400 ms poll), "ppoll: start"
 * (just before the 1 s ppoll). Runs about 5 s.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
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

static const char *events_str(short ev, char *buf, size_t len)
{
	static const struct {
		short bit;
		const char *name;
	} names[] = { { POLLIN, "POLLIN" },   { POLLPRI, "POLLPRI" }, { POLLOUT, "POLLOUT" },
		      { POLLERR, "POLLERR" }, { POLLHUP, "POLLHUP" }, { POLLNVAL, "POLLNVAL" } };
	buf[0] = '\0';
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		if (ev & names[i].bit) {
			if (buf[0])
				strncat(buf, "|", len - strlen(buf) - 1);
			strncat(buf, names[i].name, len - strlen(buf) - 1);
		}
	}
	if (!buf[0])
		snprintf(buf, len, "0");
	return buf;
}

static void report(const char *what, int ret, int err)
{
	if (ret < 0)
		out("%s: ret=%d errno=%s\n", what, ret, strerror(err));
	else
		out("%s: ret=%d\n", what, ret);
}

int main(int argc, char **argv)
{
	char ebuf[128];

	if (argc != 2) {
		dprintf(STDERR_FILENO, "usage: poller FILE\n");
		return 2;
	}
	out("poller start\n");

	int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) {
		out("open %s failed: %s\n", "FILE", strerror(errno));
		return 1;
	}
	static const char data[] = "some data in a regular file\n";
	ssize_t w = write(fd, data, sizeof data - 1);
	if (w != (ssize_t)(sizeof data - 1))
		out("write to FILE returned %zd\n", w);

	for (int i = 0; i < 10; i++) {
		int ret = poll(NULL, 0, 400);
		char what[32];
		snprintf(what, sizeof what, "poll %d", i);
		report(what, ret, errno);
	}

	{
		struct pollfd p = { .fd = fd, .events = POLLIN | POLLOUT };
		int ret = poll(&p, 1, 400);
		if (ret < 0)
			out("poll file: ret=%d errno=%s\n", ret, strerror(errno));
		else
			out("poll file: ret=%d revents=%s\n", ret,
			    events_str(p.revents, ebuf, sizeof ebuf));
	}

	{
		sigset_t mask;
		sigemptyset(&mask);
		sigaddset(&mask, SIGUSR2);
		struct timespec ts = { .tv_sec = 1, .tv_nsec = 0 };
		out("ppoll: start\n");
		/* kernel sigset size is 8 bytes on x86_64 */
		long ret = syscall(SYS_ppoll, NULL, 0, &ts, &mask, 8);
		int err = errno;
		if (ret < 0)
			out("ppoll: ret=%ld errno=%s\n", ret, strerror(err));
		else
			out("ppoll: ret=%ld timeout left=%lld.%09ld\n", ret, (long long)ts.tv_sec,
			    ts.tv_nsec);
	}

	{
		struct pollfd p = { .fd = fd, .events = POLLIN };
		struct timespec ts = { .tv_sec = 1, .tv_nsec = 0 };
		int ret = ppoll(&p, 1, &ts, NULL);
		if (ret < 0)
			out("ppoll file: ret=%d errno=%s\n", ret, strerror(errno));
		else
			out("ppoll file: ret=%d revents=%s\n", ret,
			    events_str(p.revents, ebuf, sizeof ebuf));
	}

	if (close(fd) != 0)
		out("close failed: %s\n", strerror(errno));
	out("done\n");
	return 0;
}
