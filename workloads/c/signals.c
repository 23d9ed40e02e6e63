/*
 * signals.c - ferry test workload: signal dispositions, masks, queued signals, itimers and the
 * alternate signal stack.
 *
 * Usage:   signals             (no arguments; runs about 4 s)
 *
 * Output (stdout, one write(2) per line): "signals start", "ready", "sleep 0" .. "sleep 7"
 * (500 ms apart), then the state as read back after the sleep:
 *   "action SIGUSR1: handler=on_info flags=SA_SIGINFO|SA_RESTART|SA_ONSTACK mask=SIGHUP,SIGTERM"
 *   ... one "action" line per configured signal (and SIGINT, left at its default) ...
 *   "blocked: SIGUSR2,RTMIN+1"
 *   "pending: SIGUSR2,RTMIN+1"
 *   "itimer real: interval=7.000000 value in (0,1000s]: yes"
 *   "itimer virtual: interval=5.000000 value in (0,900s+1s]: yes"   (prof: 3 s, 800 s)
 *   "sigaltstack: sp=ours size=65536 flags=0"
 * then "unblocking" and one "delivered ..." line per handler run, in the order the handlers
 * ran (signal, si_code, si_value for the RT ones), then the SA_RESETHAND, SA_ONSTACK and
 * SIG_IGN checks, and "done". Exit status 0.
 *
 * Setup before "ready": SIGUSR1 -> SA_SIGINFO|SA_RESTART|SA_ONSTACK handler with sa_mask
 * {SIGHUP, SIGTERM}; SIGUSR2 -> SA_SIGINFO handler with sa_mask {SIGINT}; SIGRTMIN+1 ->
 * SA_SIGINFO|SA_RESTART handler with sa_mask {SIGRTMIN+2}; SIGHUP -> SIG_IGN; SIGTERM -> plain
 * handler with SA_RESETHAND; SIGALRM -> plain handler with SA_RESTART. Blocked: SIGUSR2 and
 * SIGRTMIN+1. Pending: SIGUSR2 twice, once for the thread (raise = tgkill, SI_TKILL) and once
 * for the process (kill, SI_USER); SIGRTMIN+1 queued twice for the process (sigqueue, values 42
 * then 43). ITIMER_REAL 1000 s / interval 7 s, ITIMER_VIRTUAL 900 s / 5 s, ITIMER_PROF
 * 800 s / 3 s. A 64 KiB sigaltstack.
 *
 * Marker for tests: "sleep 1" (then 3 s more sleeping). Real-time signals are printed
 * relative to SIGRTMIN ("RTMIN+1"); nothing printed depends on pids or addresses.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define ALTSTACK_SIZE 65536

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

static char altstack[ALTSTACK_SIZE] __attribute__((aligned(16)));

struct delivery {
	int signo;
	int code;
	int value;
	int on_altstack;
	int mask_has_hup_term_self;
};

static struct delivery log_[32];
static volatile int nlog;

static int on_our_altstack(void)
{
	char here;
	uintptr_t p = (uintptr_t)&here, lo = (uintptr_t)altstack;
	return p >= lo && p < lo + ALTSTACK_SIZE;
}

static void record(int sig, int code, int value)
{
	int i = __atomic_fetch_add(&nlog, 1, __ATOMIC_SEQ_CST);
	if (i >= (int)(sizeof log_ / sizeof log_[0]))
		return;
	sigset_t cur;
	int masked = -1;
	if (sigprocmask(SIG_BLOCK, NULL, &cur) == 0)
		masked = sigismember(&cur, SIGHUP) == 1 && sigismember(&cur, SIGTERM) == 1 &&
			 sigismember(&cur, sig) == 1;
	log_[i] = (struct delivery){ sig, code, value, on_our_altstack(), masked };
}

static void on_info(int sig, siginfo_t *si, void *uctx)
{
	(void)uctx;
	record(sig, si->si_code, sig >= SIGRTMIN ? si->si_value.sival_int : 0);
}

static void on_plain(int sig)
{
	record(sig, 0, 0);
}

static const char *sig_name(int sig, char *buf, size_t len)
{
	static const struct {
		int sig;
		const char *name;
	} names[] = { { SIGHUP, "SIGHUP" },   { SIGINT, "SIGINT" },   { SIGUSR1, "SIGUSR1" },
		      { SIGUSR2, "SIGUSR2" }, { SIGTERM, "SIGTERM" }, { SIGALRM, "SIGALRM" },
		      { SIGVTALRM, "SIGVTALRM" }, { SIGPROF, "SIGPROF" } };
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (names[i].sig == sig)
			return names[i].name;
	if (sig >= SIGRTMIN && sig <= SIGRTMAX)
		snprintf(buf, len, "RTMIN+%d", sig - SIGRTMIN);
	else
		snprintf(buf, len, "SIG%d", sig);
	return buf;
}

static const char *set_str(const sigset_t *set, char *buf, size_t len)
{
	char one[32];
	buf[0] = '\0';
	for (int s = 1; s < NSIG; s++) {
		if (sigismember(set, s) != 1)
			continue;
		if (buf[0])
			strncat(buf, ",", len - strlen(buf) - 1);
		strncat(buf, sig_name(s, one, sizeof one), len - strlen(buf) - 1);
	}
	if (!buf[0])
		snprintf(buf, len, "none");
	return buf;
}

static const char *flags_str(unsigned long flags, char *buf, size_t len)
{
	static const struct {
		unsigned long bit;
		const char *name;
	} names[] = { { SA_SIGINFO, "SA_SIGINFO" },   { SA_RESTART, "SA_RESTART" },
		      { SA_ONSTACK, "SA_ONSTACK" },   { SA_RESETHAND, "SA_RESETHAND" },
		      { SA_NODEFER, "SA_NODEFER" },   { SA_NOCLDSTOP, "SA_NOCLDSTOP" },
		      { SA_NOCLDWAIT, "SA_NOCLDWAIT" } };
	/* glibc always adds SA_RESTORER (and its restorer); that is not ours to compare */
	flags &= ~0x04000000UL;
	buf[0] = '\0';
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		if (!(flags & names[i].bit))
			continue;
		flags &= ~names[i].bit;
		if (buf[0])
			strncat(buf, "|", len - strlen(buf) - 1);
		strncat(buf, names[i].name, len - strlen(buf) - 1);
	}
	if (flags) {
		char extra[32];
		snprintf(extra, sizeof extra, "%s%#lx", buf[0] ? "|" : "", flags);
		strncat(buf, extra, len - strlen(buf) - 1);
	}
	if (!buf[0])
		snprintf(buf, len, "0");
	return buf;
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
	case SI_TIMER:
		return "SI_TIMER";
	default:
		return "other";
	}
}

static void set_action(int sig, void *handler, int flags, int m1, int m2)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sigemptyset(&sa.sa_mask);
	if (m1)
		sigaddset(&sa.sa_mask, m1);
	if (m2)
		sigaddset(&sa.sa_mask, m2);
	sa.sa_flags = flags;
	if (flags & SA_SIGINFO)
		sa.sa_sigaction = (void (*)(int, siginfo_t *, void *))handler;
	else
		sa.sa_handler = (void (*)(int))handler;
	char nb[32];
	if (sigaction(sig, &sa, NULL) != 0)
		out("sigaction %s failed: %s\n", sig_name(sig, nb, sizeof nb), strerror(errno));
}

static const char *handler_name(const struct sigaction *sa)
{
	void *h = (sa->sa_flags & SA_SIGINFO) ? (void *)sa->sa_sigaction : (void *)sa->sa_handler;
	if (h == (void *)SIG_DFL)
		return "SIG_DFL";
	if (h == (void *)SIG_IGN)
		return "SIG_IGN";
	if (h == (void *)on_info)
		return "on_info";
	if (h == (void *)on_plain)
		return "on_plain";
	return "unknown";
}

static void show_action(int sig)
{
	struct sigaction sa;
	char nb[32], fb[128], mb[256];
	if (sigaction(sig, NULL, &sa) != 0) {
		out("sigaction query %s failed: %s\n", sig_name(sig, nb, sizeof nb), strerror(errno));
		return;
	}
	out("action %s: handler=%s flags=%s mask=%s\n", sig_name(sig, nb, sizeof nb),
	    handler_name(&sa), flags_str((unsigned int)sa.sa_flags, fb, sizeof fb),
	    set_str(&sa.sa_mask, mb, sizeof mb));
}

/*
 * The kernel adds a tick to CPU-time timers when they are armed (and so again on every
 * re-arm), so those get a second of slack; the real timer may only have gone down.
 */
static void show_itimer(const char *name, int which, long max_s, long slack_s)
{
	struct itimerval it;
	if (getitimer(which, &it) != 0) {
		out("getitimer %s failed: %s\n", name, strerror(errno));
		return;
	}
	long long v = (long long)it.it_value.tv_sec * 1000000 + it.it_value.tv_usec;
	int in_range = v > 0 && v <= (long long)(max_s + slack_s) * 1000000;
	out("itimer %s: interval=%ld.%06ld value in (0,%lds%s]: %s\n", name,
	    (long)it.it_interval.tv_sec, (long)it.it_interval.tv_usec, max_s,
	    slack_s ? "+1s" : "", in_range ? "yes" : "no");
}

static void arm(int which, long value_s, long interval_s)
{
	struct itimerval it = { .it_interval = { interval_s, 0 }, .it_value = { value_s, 0 } };
	if (setitimer(which, &it, NULL) != 0)
		out("setitimer failed: %s\n", strerror(errno));
}

static void nap(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	int ret = nanosleep(&ts, NULL);
	if (ret != 0)
		out("nanosleep failed: %s\n", strerror(errno));
}

static void show_log(int from)
{
	char nb[32];
	int n = nlog;
	for (int i = from; i < n && i < (int)(sizeof log_ / sizeof log_[0]); i++) {
		const struct delivery *d = &log_[i];
		if (d->signo >= SIGRTMIN)
			out("delivered %s code=%s value=%d\n", sig_name(d->signo, nb, sizeof nb),
			    code_name(d->code), d->value);
		else if (d->signo == SIGUSR1 || d->signo == SIGUSR2)
			out("delivered %s code=%s\n", sig_name(d->signo, nb, sizeof nb),
			    code_name(d->code));
		else
			out("delivered %s (plain handler)\n", sig_name(d->signo, nb, sizeof nb));
	}
}

int main(void)
{
	char b1[256], b2[256];
	int rt1 = SIGRTMIN + 1, rt2 = SIGRTMIN + 2;

	out("signals start\n");

	stack_t ss = { .ss_sp = altstack, .ss_size = ALTSTACK_SIZE, .ss_flags = 0 };
	if (sigaltstack(&ss, NULL) != 0)
		out("sigaltstack failed: %s\n", strerror(errno));

	set_action(SIGUSR1, (void *)on_info, SA_SIGINFO | SA_RESTART | SA_ONSTACK, SIGHUP, SIGTERM);
	set_action(SIGUSR2, (void *)on_info, SA_SIGINFO, SIGINT, 0);
	set_action(rt1, (void *)on_info, SA_SIGINFO | SA_RESTART, rt2, 0);
	set_action(SIGHUP, (void *)SIG_IGN, 0, 0, 0);
	set_action(SIGTERM, (void *)on_plain, SA_RESETHAND, 0, 0);
	set_action(SIGALRM, (void *)on_plain, SA_RESTART, 0, 0);

	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, rt1);
	if (sigprocmask(SIG_BLOCK, &block, NULL) != 0)
		out("sigprocmask failed: %s\n", strerror(errno));

	if (raise(SIGUSR2) != 0)
		out("raise failed\n");
	if (kill(getpid(), SIGUSR2) != 0)
		out("kill failed: %s\n", strerror(errno));
	if (sigqueue(getpid(), rt1, (union sigval){ .sival_int = 42 }) != 0)
		out("sigqueue 42 failed: %s\n", strerror(errno));
	if (sigqueue(getpid(), rt1, (union sigval){ .sival_int = 43 }) != 0)
		out("sigqueue 43 failed: %s\n", strerror(errno));

	arm(ITIMER_REAL, 1000, 7);
	arm(ITIMER_VIRTUAL, 900, 5);
	arm(ITIMER_PROF, 800, 3);

	out("ready\n");
	for (int i = 0; i < 8; i++) {
		nap(500);
		out("sleep %d\n", i);
	}

	show_action(SIGUSR1);
	show_action(SIGUSR2);
	show_action(rt1);
	show_action(SIGHUP);
	show_action(SIGTERM);
	show_action(SIGALRM);
	show_action(SIGINT);

	sigset_t cur, pend;
	if (sigprocmask(SIG_BLOCK, NULL, &cur) != 0)
		out("sigprocmask query failed: %s\n", strerror(errno));
	if (sigpending(&pend) != 0)
		out("sigpending failed: %s\n", strerror(errno));
	out("blocked: %s\n", set_str(&cur, b1, sizeof b1));
	out("pending: %s\n", set_str(&pend, b2, sizeof b2));

	show_itimer("real", ITIMER_REAL, 1000, 0);
	show_itimer("virtual", ITIMER_VIRTUAL, 900, 1);
	show_itimer("prof", ITIMER_PROF, 800, 1);

	stack_t now;
	if (sigaltstack(NULL, &now) != 0)
		out("sigaltstack query failed: %s\n", strerror(errno));
	out("sigaltstack: sp=%s size=%zu flags=%d\n", now.ss_sp == altstack ? "ours" : "other",
	    now.ss_size, now.ss_flags);
	out("deliveries before unblocking: %d\n", (int)nlog);

	out("unblocking\n");
	if (sigprocmask(SIG_UNBLOCK, &block, NULL) != 0)
		out("sigprocmask unblock failed: %s\n", strerror(errno));
	show_log(0);
	if (sigpending(&pend) != 0)
		out("sigpending failed: %s\n", strerror(errno));
	out("pending after unblocking: %s\n", set_str(&pend, b2, sizeof b2));

	int before = nlog;
	if (raise(SIGTERM) != 0)
		out("raise SIGTERM failed\n");
	show_log(before);
	struct sigaction sa;
	if (sigaction(SIGTERM, NULL, &sa) == 0)
		out("SIGTERM after one delivery (SA_RESETHAND): handler=%s\n", handler_name(&sa));

	before = nlog;
	if (raise(SIGUSR1) != 0)
		out("raise SIGUSR1 failed\n");
	show_log(before);
	if (nlog > before)
		out("SIGUSR1 handler on the alternate stack: %s, SIGHUP+SIGTERM+SIGUSR1 masked: %s\n",
		    log_[before].on_altstack ? "yes" : "no",
		    log_[before].mask_has_hup_term_self == 1 ? "yes" : "no");

	before = nlog;
	if (kill(getpid(), SIGHUP) != 0)
		out("kill SIGHUP failed: %s\n", strerror(errno));
	out("SIGHUP ignored: %s\n", nlog == before ? "yes" : "no");

	arm(ITIMER_REAL, 0, 0);
	arm(ITIMER_VIRTUAL, 0, 0);
	arm(ITIMER_PROF, 0, 0);
	out("done\n");
	return 0;
}
