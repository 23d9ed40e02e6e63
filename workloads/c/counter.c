/*
 * counter.c - ferry test workload: the simplest process worth moving.
 *
 * Usage:   counter [COUNT [INTERVAL_MS]]        (defaults: COUNT 40, INTERVAL_MS 100)
 *
 * Output (stdout, one write(2) per line):
 *   "counter start count=COUNT interval_ms=INTERVAL_MS"
 *   "0", "1", ... "COUNT-1"     each line after usleep(INTERVAL_MS)
 *   "done"
 * Exit status 0.
 *
 * Exercises: a tight loop of short sleeps (glibc usleep -> clock_nanosleep), so a checkpoint
 * almost always lands inside a sleep that the restored process must resume, plus the file
 * offset of stdout. Nothing is retried: a usleep that fails (EINTR after a botched restore)
 * or a short write is reported, so the output differs from an uninterrupted run.
 *
 * Markers for tests: any number line (e.g. "5\n") means the process is mid-run.
 * Runs COUNT * INTERVAL_MS in total (4 s by default).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static long arg(int argc, char **argv, int i, long def)
{
	if (argc <= i)
		return def;
	char *end;
	long v = strtol(argv[i], &end, 10);
	if (*argv[i] == '\0' || *end != '\0' || v < 0) {
		dprintf(STDERR_FILENO, "usage: counter [COUNT [INTERVAL_MS]]\n");
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	long count = arg(argc, argv, 1, 40);
	long interval_ms = arg(argc, argv, 2, 100);

	out("counter start count=%ld interval_ms=%ld\n", count, interval_ms);
	for (long i = 0; i < count; i++) {
		if (usleep((useconds_t)(interval_ms * 1000)) != 0)
			out("usleep before line %ld failed: %s\n", i, strerror(errno));
		out("%ld\n", i);
	}
	out("done\n");
	return 0;
}
