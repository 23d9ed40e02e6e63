/*
 * sigsuspend.c - ferry test workload: a process parked in sigsuspend(2), woken after restore.
 *
 * Usage:   sigsuspend          then send SIGUSR1 (kill(2), i.e. si_code SI_USER) once
 *                              "ready" has been printed.
 *
 * Output (stdout, one write(2) per line), in order:
 *   "sigsuspend start"
 *   "ready"                                       now blocked in sigsuspend(&empty_mask)
 *   "sigsuspend: ret=-1 errno=EINTR"
 *   "handler: ran 1 time(s), signo=SIGUSR1 si_code=SI_USER"
 *   "SIGUSR1 blocked inside handler: yes"
 *   "SIGUSR1 blocked after sigsuspend: yes"
 *   "done"
 * Exit status 0. Without SIGUSR1 the process gives up after 60 s (alarm(2), default action:
 * killed by SIGALRM).
 *
 * Exercises: SIGUSR1 blocked, an SA_SIGINFO handler, and sigsuspend() with an empty mask. While
 * the process waits, its blocked mask is the temporary empty one and the real one (SIGUSR1
 * blocked) is saved by the kernel; a checkpoint there interrupts sigsuspend with
 * -ERESTARTNOHAND. After restore, the process must still be waiting, take the signal in its
 * handler, return EINTR from sigsuspend and have SIGUSR1 blocked again. Nothing is retried.
 *
 * Marker for tests: "ready".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
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

static volatile sig_atomic_t handler_runs;
static volatile sig_atomic_t handler_signo;
static volatile sig_atomic_t handler_code;
static volatile sig_atomic_t blocked_inside;

static void on_usr1(int sig, siginfo_t *si, void *uctx)
{
	(void)uctx;
	sigset_t cur;

	handler_runs++;
	handler_signo = sig;
	handler_code = si->si_code;
	if (sigprocmask(SIG_BLOCK, NULL, &cur) == 0)
		blocked_inside = sigismember(&cur, SIGUSR1) == 1;
	else
		blocked_inside = -1;
}

static const char *code_name(int code)
{
	switch (code) {
	case SI_USER:
		return "SI_USER";
	case SI_QUEUE:
		return "SI_QUEUE";
	case SI_TKILL:
		return "SI_TKILL";
	case SI_KERNEL:
		return "SI_KERNEL";
	default:
		return "other";
	}
}

int main(void)
{
	out("sigsuspend start\n");

	sigset_t usr1, empty, cur;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigemptyset(&empty);
	if (sigprocmask(SIG_BLOCK, &usr1, NULL) != 0)
		out("sigprocmask failed: %s\n", strerror(errno));

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) != 0)
		out("sigaction failed: %s\n", strerror(errno));

	alarm(60);
	out("ready\n");
	int ret = sigsuspend(&empty);
	int err = errno;
	out("sigsuspend: ret=%d errno=%s\n", ret, err == EINTR ? "EINTR" : strerror(err));
	out("handler: ran %d time(s), signo=%s si_code=%s\n", (int)handler_runs,
	    handler_signo == SIGUSR1 ? "SIGUSR1" : "other", code_name(handler_code));
	out("SIGUSR1 blocked inside handler: %s\n",
	    blocked_inside == 1 ? "yes" : blocked_inside == 0 ? "no" : "query failed");
	if (sigprocmask(SIG_BLOCK, NULL, &cur) != 0)
		out("sigprocmask query failed: %s\n", strerror(errno));
	out("SIGUSR1 blocked after sigsuspend: %s\n", sigismember(&cur, SIGUSR1) == 1 ? "yes" : "no");
	alarm(0);
	out("done\n");
	return 0;
}
