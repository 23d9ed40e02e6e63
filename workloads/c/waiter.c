/*
 * waiter.c - ferry test workload: blocking waits that end by timeout (no fds, no children).
 *
 * Usage:   waiter            (no arguments; runs about 4.5 s)
 *
 * Output (stdout, one write(2) per line), in order:
 *   "waiter start"
 *   "select I: start"   then   "select I: ret=0 timeout left=0.000000"     I = 0, 1; 1 s each
 *   "pselect: start"    then   "pselect: ret=0 timeout left=0.000000000"   1 s, with a sigmask
 *   "sigtimedwait: start" then "sigtimedwait: ret=-1 errno=EAGAIN"          1.5 s for SIGUSR2
 *   "blocked after: SIGUSR2"
 *   "done"
 * Exit status 0.
 *
 * Exercises: select() and pselect6() with no fds and a timeout (the kernel restarts them with
 * -ERESTARTNOHAND and writes the time left back into the caller's timeout, so they are called
 * through syscall(2): glibc's wrappers may copy the timeout), and sigtimedwait() on a blocked
 * signal that never comes. Note that the kernel does NOT restart sigtimedwait by itself: a
 * stop (SIGSTOP or a ptrace freeze) makes it return EINTR (see signal(7), "Interruption of
 * system calls ... by stop signals"), so a checkpoint during that wait only gives the
 * reference output if ferry compensates. Nothing is retried: an EINTR, a non-zero return or a
 * timeout left that is not zero is printed.
 *
 * Markers for tests: "select 1: start", "pselect: start", "sigtimedwait: start" (each printed
 * just before a sleep of 1 s or more).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/select.h>
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

static const char *errname(int e)
{
	switch (e) {
	case EAGAIN:
		return "EAGAIN";
	case EINTR:
		return "EINTR";
	case EINVAL:
		return "EINVAL";
	default:
		return strerror(e);
	}
}

int main(void)
{
	out("waiter start\n");

	for (int i = 0; i < 2; i++) {
		struct timeval tv = { .tv_sec = 1, .tv_usec = 0 };
		out("select %d: start\n", i);
		long ret = syscall(SYS_select, 0, NULL, NULL, NULL, &tv);
		int err = errno;
		if (ret < 0)
			out("select %d: ret=%ld errno=%s\n", i, ret, errname(err));
		else
			out("select %d: ret=%ld timeout left=%lld.%06ld\n", i, ret,
			    (long long)tv.tv_sec, (long)tv.tv_usec);
	}

	{
		sigset_t mask;
		sigemptyset(&mask);
		sigaddset(&mask, SIGUSR1);
		/* pselect6's sixth argument: { const sigset_t *ss; size_t ss_len; } */
		struct {
			const sigset_t *ss;
			size_t len;
		} sigarg = { &mask, 8 };
		struct timespec ts = { .tv_sec = 1, .tv_nsec = 0 };
		out("pselect: start\n");
		long ret = syscall(SYS_pselect6, 0, NULL, NULL, NULL, &ts, &sigarg);
		int err = errno;
		if (ret < 0)
			out("pselect: ret=%ld errno=%s\n", ret, errname(err));
		else
			out("pselect: ret=%ld timeout left=%lld.%09ld\n", ret, (long long)ts.tv_sec,
			    ts.tv_nsec);
	}

	{
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGUSR2);
		if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
			out("sigprocmask failed: %s\n", strerror(errno));
		struct timespec ts = { .tv_sec = 1, .tv_nsec = 500 * 1000000L };
		siginfo_t si;
		out("sigtimedwait: start\n");
		int ret = sigtimedwait(&set, &si, &ts);
		int err = errno;
		if (ret < 0)
			out("sigtimedwait: ret=%d errno=%s\n", ret, errname(err));
		else
			out("sigtimedwait: ret=%d (a signal arrived: %d)\n", ret, si.si_signo);

		sigset_t now;
		if (sigprocmask(SIG_BLOCK, NULL, &now) != 0)
			out("sigprocmask query failed: %s\n", strerror(errno));
		char list[256] = "";
		for (int s = 1; s < NSIG; s++) {
			if (sigismember(&now, s) == 1) {
				char one[16];
				snprintf(one, sizeof one, "%s%s", list[0] ? "," : "",
					 s == SIGUSR2 ? "SIGUSR2" : "other");
				strncat(list, one, sizeof list - strlen(list) - 1);
			}
		}
		out("blocked after: %s\n", list[0] ? list : "none");
	}

	out("done\n");
	return 0;
}
