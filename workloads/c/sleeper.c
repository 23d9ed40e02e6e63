/*
 * sleeper.c - ferry test workload: every flavour of sleep the kernel restarts by itself.
 *
 * Usage:   sleeper            (no arguments; runs about 5.5 s)
 *
 * Output (stdout, one write(2) per line), in order:
 *   "sleeper start"
 *   "nanosleep I: ret=0 slept>=req: yes"                        I = 0..5,  glibc nanosleep(), 250 ms
 *   "raw nanosleep I: ret=0 slept>=req: yes"                    I = 0..3,  syscall(SYS_nanosleep), 250 ms
 *   "raw nanosleep null rem: ret=0 slept>=req: yes"             500 ms, rem == NULL
 *   "clock_nanosleep abs: start"
 *   "clock_nanosleep abs: ret=0 deadline reached: yes"          CLOCK_MONOTONIC, TIMER_ABSTIME, 1.2 s
 *   "clock_nanosleep rel: start"
 *   "clock_nanosleep rel: ret=0 slept>=req: yes"                CLOCK_MONOTONIC, relative, 1.2 s
 *   "done"
 * Exit status 0.
 *
 * Exercises: nanosleep(&req, &rem) with distinct req/rem (glibc's wrapper and the raw
 * nanosleep syscall), a NULL rem, and clock_nanosleep both absolute and relative. A
 * checkpoint interrupts these with -ERESTART_RESTARTBLOCK (-ERESTARTNOHAND for the absolute
 * one); the restored process must resume the sleep as if nothing happened. Nothing is retried:
 * every return value is printed, with errno and rem when a sleep fails. (rem is not printed
 * after a successful sleep: the kernel writes it whenever the sleep is interrupted, even when
 * it then restarts the sleep transparently, e.g. after SIGSTOP/SIGCONT or a ptrace attach;
 * POSIX gives it a meaning only on EINTR.) Each sleep must also have lasted at least what was
 * asked (CLOCK_MONOTONIC).
 *
 * Markers for tests: "nanosleep 2:" (inside glibc nanosleep), "raw nanosleep 1:" (inside the
 * raw syscall), "clock_nanosleep abs: start", "clock_nanosleep rel: start" (each printed just
 * before a 1.2 s sleep starts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
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

static int64_t now_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
		out("clock_gettime failed: %s\n", strerror(errno));
		return 0;
	}
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static const struct timespec SENTINEL = { .tv_sec = 12345, .tv_nsec = 678 };

/* "" after a successful sleep, else " errno=E rem=S.N" (rem as the kernel left it). */
static const char *failure(int err, const struct timespec *rem, char *buf, size_t len)
{
	if (!err)
		return "";
	if (rem->tv_sec == SENTINEL.tv_sec && rem->tv_nsec == SENTINEL.tv_nsec)
		snprintf(buf, len, " errno=%s rem=unwritten", strerror(err));
	else
		snprintf(buf, len, " errno=%s rem=%lld.%09ld", strerror(err), (long long)rem->tv_sec,
			 rem->tv_nsec);
	return buf;
}

static const char *yes_no(int b)
{
	return b ? "yes" : "no";
}

int main(void)
{
	char rbuf[128];

	out("sleeper start\n");

	for (int i = 0; i < 6; i++) {
		struct timespec req = { .tv_sec = 0, .tv_nsec = 250 * 1000000L };
		struct timespec rem = SENTINEL;
		int64_t t0 = now_ns();
		int ret = nanosleep(&req, &rem);
		int err = ret ? errno : 0;
		int64_t slept = now_ns() - t0;
		out("nanosleep %d: ret=%d%s slept>=req: %s\n", i, ret,
		    failure(err, &rem, rbuf, sizeof rbuf), yes_no(slept >= 250 * 1000000L));
	}

	for (int i = 0; i < 4; i++) {
		struct timespec req = { .tv_sec = 0, .tv_nsec = 250 * 1000000L };
		struct timespec rem = SENTINEL;
		int64_t t0 = now_ns();
		long ret = syscall(SYS_nanosleep, &req, &rem);
		int err = ret ? errno : 0;
		int64_t slept = now_ns() - t0;
		out("raw nanosleep %d: ret=%ld%s slept>=req: %s\n", i, ret,
		    failure(err, &rem, rbuf, sizeof rbuf), yes_no(slept >= 250 * 1000000L));
	}

	{
		struct timespec req = { .tv_sec = 0, .tv_nsec = 500 * 1000000L };
		int64_t t0 = now_ns();
		long ret = syscall(SYS_nanosleep, &req, NULL);
		int err = ret ? errno : 0;
		int64_t slept = now_ns() - t0;
		out("raw nanosleep null rem: ret=%ld%s%s slept>=req: %s\n", ret, err ? " errno=" : "",
		    err ? strerror(err) : "", yes_no(slept >= 500 * 1000000L));
	}

	{
		struct timespec deadline;
		if (clock_gettime(CLOCK_MONOTONIC, &deadline) != 0)
			out("clock_gettime failed: %s\n", strerror(errno));
		deadline.tv_sec += 1;
		deadline.tv_nsec += 200 * 1000000L;
		if (deadline.tv_nsec >= 1000000000L) {
			deadline.tv_sec += 1;
			deadline.tv_nsec -= 1000000000L;
		}
		int64_t deadline_ns = (int64_t)deadline.tv_sec * 1000000000 + deadline.tv_nsec;
		out("clock_nanosleep abs: start\n");
		/* clock_nanosleep returns the error number; it does not set errno. */
		int ret = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL);
		out("clock_nanosleep abs: ret=%d%s%s deadline reached: %s\n", ret, ret ? " " : "",
		    ret ? strerror(ret) : "", yes_no(now_ns() >= deadline_ns));
	}

	{
		struct timespec req = { .tv_sec = 1, .tv_nsec = 200 * 1000000L };
		struct timespec rem = SENTINEL;
		out("clock_nanosleep rel: start\n");
		int64_t t0 = now_ns();
		int ret = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, &rem);
		int64_t slept = now_ns() - t0;
		out("clock_nanosleep rel: ret=%d%s slept>=req: %s\n", ret,
		    failure(ret, &rem, rbuf, sizeof rbuf), yes_no(slept >= 1200 * 1000000L));
	}

	out("done\n");
	return 0;
}
