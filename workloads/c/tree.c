/*
 * tree.c - ferry test workload: a process tree whose members know each other.
 *
 * Usage:   tree
 *
 * The root leads a session of its own (it makes one unless started as a session leader) and
 * makes:
 *   A    a process group of its own, with a child A1 in that group; A waits for A1, exits 3;
 *   A1   writes 500 numbered 100-byte records into a pipe to the root before "ready" (they
 *        wait in the pipe), 500 more once woken, and 50 lines into a log file it shares with
 *        the root (one open file description: one offset);
 *   Z    exits 7 at once: a zombie the root reaps only after "ready";
 *   K    killed by SIGTERM before "ready": a zombie with a signal status;
 *   E    made by clone with exit signal SIGUSR2 (not SIGCHLD); exits 5 once woken.
 * A1 and E wait for a byte on a pipe from the root. After SIGUSR1 the root checks that every
 * pid, parent, process group and session is what it was, reaps Z and K with their statuses,
 * wakes A1 and E, reads all 1000 records in order, gets SIGUSR2 from E, reaps A and E with
 * theirs, and checks that the log holds its own line, A1's 50 and its own 50 after them
 * (had the offset not been shared, its lines would overwrite A1's).
 *
 * Output (stdout, root only):
 *   "tree start"
 *   "ready"
 *   "signal SIGUSR1"
 *   "ids: pids, parents, groups and sessions kept"
 *   "zombies: Z exited 7, K killed by SIGTERM"
 *   "pipe: 1000 records in order"
 *   "clone child: SIGUSR2 once, exited 5"
 *   "A: exited 3"
 *   "log: one offset shared"
 *   "done"
 * Exit status 0; on any inconsistency "FAIL: ..." and exit status 1. Runs until SIGUSR1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define RECORDS 1000
#define RECORD 100
#define LOG_LINES 50

__attribute__((format(printf, 1, 2))) static void out(const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n > 0 && write(1, buf, (size_t)n) != n)
		_exit(1);
}

__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	out("FAIL: %s (errno %d)\n", buf, errno);
	_exit(1);
}

static volatile sig_atomic_t woken, usr2;

static void on_usr1(int sig)
{
	(void)sig;
	woken = 1;
}

static void on_usr2(int sig)
{
	(void)sig;
	usr2++;
}

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(20);
		buf += n;
		len -= (size_t)n;
	}
}

static void wait_byte(int fd)
{
	char c;
	ssize_t n;

	do
		n = read(fd, &c, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		_exit(21);
}

static void records(int fd, int from, int to)
{
	char rec[RECORD];

	for (int i = from; i < to; i++) {
		memset(rec, 'a' + i % 26, sizeof rec);
		snprintf(rec, sizeof rec, "%06d", i);
		write_all(fd, rec, sizeof rec);
	}
}

/* A1: records, then (woken) the rest and its log lines. */
static void a1(int data, int go, int log)
{
	records(data, 0, RECORDS / 2);
	wait_byte(go);
	records(data, RECORDS / 2, RECORDS);
	for (int i = 0; i < LOG_LINES; i++) {
		char line[16];
		int n = snprintf(line, sizeof line, "a1 %02d\n", i);
		write_all(log, line, (size_t)n);
	}
	_exit(0);
}

static pid_t fork_or_fail(void)
{
	pid_t p = fork();
	if (p < 0)
		fail("fork");
	return p;
}

static void expect_status(pid_t pid, int flags, int want, const char *who)
{
	int status;
	pid_t r;

	do
		r = waitpid(pid, &status, flags);
	while (r < 0 && errno == EINTR);
	if (r != pid)
		fail("waitpid(%s) returned %d", who, (int)r);
	if (status != want)
		fail("%s ended with status %#x, not %#x", who, status, want);
}

int main(void)
{
	int data[2], go[2], log;

	setvbuf(stdout, NULL, _IONBF, 0);
	if (getsid(0) != getpid() && setsid() < 0)
		fail("setsid");
	out("tree start\n");
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, &old);

	if (pipe(data) || pipe(go))
		fail("pipe");
	log = open("tree.log", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (log < 0)
		fail("open tree.log");
	write_all(log, "root before\n", 12);

	pid_t a = fork_or_fail();
	if (a == 0) {
		setpgid(0, 0);
		close(data[0]);
		pid_t child = fork_or_fail();
		if (child == 0)
			a1(data[1], go[0], log);
		close(data[1]);
		close(go[0]);
		close(go[1]);
		close(log);
		int status;
		while (waitpid(child, &status, 0) < 0 && errno == EINTR)
			;
		_exit(status == 0 ? 3 : 30);
	}
	setpgid(a, a); /* also from here: whoever runs first */
	close(data[1]);

	pid_t z = fork_or_fail();
	if (z == 0)
		_exit(7);
	pid_t k = fork_or_fail();
	if (k == 0) {
		for (;;)
			pause();
	}
	pid_t e = (pid_t)syscall(SYS_clone, (long)SIGUSR2, 0L, 0L, 0L, 0L);
	if (e < 0)
		fail("clone");
	if (e == 0) {
		wait_byte(go[0]);
		_exit(5);
	}
	close(go[0]);
	kill(k, SIGTERM);

	/* Z and K have ended (not reaped), A1's first records wait in the pipe. */
	siginfo_t info;
	if (waitid(P_PID, (id_t)z, &info, WEXITED | WNOWAIT) || waitid(P_PID, (id_t)k, &info, WEXITED | WNOWAIT))
		fail("waitid");
	int queued = 0;
	while (queued < RECORDS / 2 * RECORD) {
		if (ioctl(data[0], FIONREAD, &queued))
			fail("FIONREAD");
		usleep(1000);
	}

	pid_t ids[][4] = {
		{ getpid(), getppid(), getpgid(0), getsid(0) },
		{ a, getpid(), getpgid(a), getsid(a) },
		{ e, getpid(), getpgid(e), getsid(e) },
	};
	out("ready\n");
	while (!woken)
		sigsuspend(&old);
	out("signal SIGUSR1\n");

	pid_t now[][4] = {
		{ getpid(), getppid(), getpgid(0), getsid(0) },
		{ a, getpid(), getpgid(a), getsid(a) },
		{ e, getpid(), getpgid(e), getsid(e) },
	};
	if (memcmp(ids, now, sizeof ids))
		fail("ids changed: root %d/%d/%d/%d, now %d/%d/%d/%d", ids[0][0], ids[0][1], ids[0][2],
		     ids[0][3], now[0][0], now[0][1], now[0][2], now[0][3]);
	if (getpgid(a) != a || getpgid(e) != getpid() || getsid(a) != getpid())
		fail("groups: A in %d, E in %d", getpgid(a), getpgid(e));
	out("ids: pids, parents, groups and sessions kept\n");

	expect_status(z, 0, 7 << 8, "Z");
	expect_status(k, 0, SIGTERM, "K");
	out("zombies: Z exited 7, K killed by SIGTERM\n");

	write_all(go[1], "gg", 2);
	char rec[RECORD], want[RECORD];
	int n = 0;
	for (;;) {
		ssize_t r = read(data[0], rec, sizeof rec);
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0)
			break;
		if (r != RECORD)
			fail("short record %d (%zd bytes)", n, r);
		memset(want, 'a' + n % 26, sizeof want);
		snprintf(want, sizeof want, "%06d", n);
		if (memcmp(rec, want, RECORD))
			fail("record %d is not the next one", n);
		n++;
	}
	if (n != RECORDS)
		fail("%d records", n);
	out("pipe: %d records in order\n", n);

	expect_status(e, __WALL, 5 << 8, "E");
	if (usr2 != 1)
		fail("SIGUSR2 came %d times", (int)usr2);
	out("clone child: SIGUSR2 once, exited 5\n");
	expect_status(a, 0, 3 << 8, "A");
	out("A: exited 3\n");

	for (int i = 0; i < LOG_LINES; i++) {
		char line[16];
		int len = snprintf(line, sizeof line, "root %02d\n", i);
		write_all(log, line, (size_t)len);
	}
	char got[4096], expect[4096];
	int len = snprintf(expect, sizeof expect, "root before\n");
	for (int i = 0; i < LOG_LINES; i++)
		len += snprintf(expect + len, sizeof expect - (size_t)len, "a1 %02d\n", i);
	for (int i = 0; i < LOG_LINES; i++)
		len += snprintf(expect + len, sizeof expect - (size_t)len, "root %02d\n", i);
	ssize_t r = pread(log, got, sizeof got, 0);
	if (r != len || memcmp(got, expect, (size_t)len))
		fail("the log holds %zd bytes, not the %d expected in order", r, len);
	out("log: one offset shared\n");
	out("done\n");
	return 0;
}
