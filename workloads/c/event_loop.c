/*
 * event_loop.c - ferry test workload: a single-threaded event loop over kernel objects.
 *
 * Usage:   event_loop
 *
 * One epoll instance watches a periodic timerfd (5 ms), an eventfd in semaphore mode and a
 * signalfd (SIGUSR1, blocked). Every timer tick:
 *   - a 512-byte numbered record goes into a pipe (capacity raised to 128 KiB) that the
 *     program reads itself, always leaving 100 records (50 KiB) in flight; reads alternate
 *     between the read end (non-blocking) and a dup of it at fd 40;
 *   - a plain eventfd is incremented, and read every 10th tick (it must hold exactly 10);
 *   - the semaphore eventfd gets 3, taken back one per epoll wake-up.
 *   - the tick number is appended to a memfd "event-log" (sealed against shrinking).
 * A file in /tmp is unlinked while open (offset 8 into "deleted but open\n"), and an
 * O_TMPFILE file (mode 0666, umask 0) holding "unnamed\n" is open read-only only.
 * A second pipe holds "trailer\n" and has no write end left (its reader must see the
 * trailer, then end-of-file); a memfd made without MFD_ALLOW_SEALING holds "hello". Each
 * epoll registration carries a tag in its data field.
 *
 * Output (stdout, one write(2) per line):
 *   "event_loop start"
 *   "ready"                       after 100 ticks: every object holds state (the marker)
 *   "signal SIGUSR1"              read from the signalfd; 40 more ticks follow
 *   "pipe: records in order"      every record drained, numbered and filled as written
 *   "eventfd: 10 per read"
 *   "semaphore: balanced"         every unit written was read once
 *   "deleted files: contents, offset and access mode kept"
 *   "trailer: ok, then end-of-file"
 *   "memfd: log complete, seals kept"
 *   "done"
 * Exit status 0; on any inconsistency "FAIL: ..." and exit status 1. Runs until SIGUSR1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define RECORD 512
#define DEPTH 100
#define DUP_FD 40
#define TAG 0x5eed000000000000ULL

__attribute__((format(printf, 1, 2))) static void out(const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof buf)
		_exit(90);
	if (write(STDOUT_FILENO, buf, (size_t)n) != n)
		_exit(91);
}

__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	out("FAIL: %s (errno %d)\n", buf, errno);
	exit(1);
}

static void fill(unsigned char *rec, uint64_t seq)
{
	memcpy(rec, &seq, sizeof seq);
	for (size_t i = sizeof seq; i < RECORD; i++)
		rec[i] = (unsigned char)(seq * 31 + i);
}

static int pipe_r, pipe_w, plain_efd, log_fd;
static uint64_t written, taken;

/* Takes the next record from the pipe, through the read end or its dup, and checks it. */
static int take_record(void)
{
	unsigned char rec[RECORD], want[RECORD];
	int fd = (taken % 2) ? DUP_FD : pipe_r;
	ssize_t n = read(fd, rec, RECORD);

	if (n < 0 && errno == EAGAIN)
		return 0;
	if (n != RECORD)
		fail("read %zd bytes of record %llu from fd %d", n, (unsigned long long)taken, fd);
	fill(want, taken);
	if (memcmp(rec, want, RECORD) != 0)
		fail("record %llu is not as written", (unsigned long long)taken);
	taken++;
	return 1;
}

static void tick(uint64_t ticks, int sem_efd)
{
	unsigned char rec[RECORD];
	uint64_t v;

	fill(rec, written);
	if (write(pipe_w, rec, RECORD) != RECORD)
		fail("writing record %llu", (unsigned long long)written);
	written++;
	while (written - taken > DEPTH)
		if (!take_record())
			fail("record %llu missing", (unsigned long long)taken);
	v = 1;
	if (write(plain_efd, &v, sizeof v) != sizeof v)
		fail("eventfd write");
	if (ticks % 10 == 0) {
		if (read(plain_efd, &v, sizeof v) != sizeof v)
			fail("eventfd read");
		if (v != 10)
			fail("eventfd held %llu after 10 ticks", (unsigned long long)v);
	}
	v = 3;
	if (write(sem_efd, &v, sizeof v) != sizeof v)
		fail("semaphore write");
	if (write(log_fd, &ticks, sizeof ticks) != sizeof ticks)
		fail("memfd log write");
}

/* The memfd log holds tick numbers 1..ticks, is sealed against shrinking, and its offset is
 * at its end; the plain memfd refuses seals (it was made without MFD_ALLOW_SEALING). */
static void check_memfds(int plain_memfd, uint64_t ticks)
{
	uint64_t v;

	if (fcntl(log_fd, F_GET_SEALS) != F_SEAL_SHRINK)
		fail("memfd seals %#x", fcntl(log_fd, F_GET_SEALS));
	if (fcntl(plain_memfd, F_GET_SEALS) != F_SEAL_SEAL)
		fail("plain memfd seals %#x", fcntl(plain_memfd, F_GET_SEALS));
	if (lseek(log_fd, 0, SEEK_CUR) != (off_t)(ticks * sizeof v))
		fail("memfd offset %lld after %llu ticks", (long long)lseek(log_fd, 0, SEEK_CUR),
		     (unsigned long long)ticks);
	for (uint64_t i = 1; i <= ticks; i++)
		if (pread(log_fd, &v, sizeof v, (off_t)((i - 1) * sizeof v)) != sizeof v || v != i)
			fail("memfd log entry %llu", (unsigned long long)i);
	char hello[6] = { 0 };
	if (pread(plain_memfd, hello, 5, 0) != 5 || strcmp(hello, "hello") != 0)
		fail("plain memfd contents");
}

/* A file unlinked while open (offset 8), and an O_TMPFILE file reopened read-only. */
static void make_deleted(int *deleted_fd, int *unnamed_ro)
{
	char name[] = "/tmp/event_loop.XXXXXX";
	int fd = mkstemp(name);

	if (fd < 0 || write(fd, "deleted but open\n", 17) != 17 || unlink(name) != 0 ||
	    lseek(fd, 8, SEEK_SET) != 8)
		fail("deleted file");
	umask(0);
	int tmp = open("/tmp", O_TMPFILE | O_RDWR, 0666);
	char again[64];
	snprintf(again, sizeof again, "/proc/self/fd/%d", tmp);
	if (tmp < 0 || write(tmp, "unnamed\n", 8) != 8)
		fail("O_TMPFILE file");
	int ro = open(again, O_RDONLY);
	if (ro < 0 || close(tmp) != 0)
		fail("reopening the O_TMPFILE file");
	*deleted_fd = fd;
	*unnamed_ro = ro;
}

static void check_deleted(int deleted_fd, int unnamed_ro)
{
	char buf[32] = { 0 };
	struct stat st;

	if (read(deleted_fd, buf, sizeof buf) != 9 || memcmp(buf, "but open\n", 9) != 0)
		fail("deleted file contents after offset 8");
	if (fstat(deleted_fd, &st) != 0 || st.st_nlink != 0 || (st.st_mode & 07777) != 0600)
		fail("deleted file nlink %lu mode %o", (unsigned long)st.st_nlink, st.st_mode);
	if (read(unnamed_ro, buf, sizeof buf) != 8 || memcmp(buf, "unnamed\n", 8) != 0)
		fail("O_TMPFILE file contents");
	if (fstat(unnamed_ro, &st) != 0 || (st.st_mode & 07777) != 0666)
		fail("O_TMPFILE file mode %o", st.st_mode & 07777);
	if ((fcntl(unnamed_ro, F_GETFL) & O_ACCMODE) != O_RDONLY || write(unnamed_ro, "x", 1) != -1)
		fail("O_TMPFILE file is no longer read-only");
}

int main(void)
{
	int fds[2], trailer[2];
	sigset_t usr1;
	uint64_t ticks = 0, sem_written = 0, sem_read = 0, stop_at = 0;

	out("event_loop start\n");
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &usr1, NULL) != 0)
		fail("sigprocmask");
	if (pipe2(trailer, O_CLOEXEC) != 0 || write(trailer[1], "trailer\n", 8) != 8 ||
	    close(trailer[1]) != 0)
		fail("trailer pipe");
	if (pipe2(fds, 0) != 0)
		fail("pipe");
	pipe_r = fds[0];
	pipe_w = fds[1];
	if (fcntl(pipe_w, F_SETPIPE_SZ, 128 << 10) < 0)
		fail("F_SETPIPE_SZ");
	if (fcntl(pipe_r, F_SETFL, O_NONBLOCK) != 0 || dup2(pipe_r, DUP_FD) != DUP_FD)
		fail("pipe read end");
	int deleted_fd, unnamed_ro;
	make_deleted(&deleted_fd, &unnamed_ro);
	log_fd = memfd_create("event-log", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	int plain_memfd = memfd_create("plain", 0);
	if (log_fd < 0 || plain_memfd < 0 || fcntl(log_fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0 ||
	    write(plain_memfd, "hello", 5) != 5)
		fail("memfds");
	plain_efd = eventfd(0, EFD_CLOEXEC);
	int sem_efd = eventfd(0, EFD_SEMAPHORE | EFD_NONBLOCK);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	int sfd = signalfd(-1, &usr1, SFD_CLOEXEC);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (plain_efd < 0 || sem_efd < 0 || tfd < 0 || sfd < 0 || ep < 0)
		fail("creating the objects");
	struct itimerspec period = { { 0, 5000000 }, { 0, 5000000 } };
	if (timerfd_settime(tfd, 0, &period, NULL) != 0)
		fail("timerfd_settime");
	int watched[3] = { tfd, sem_efd, sfd };
	for (int i = 0; i < 3; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG | (uint64_t)i };
		if (epoll_ctl(ep, EPOLL_CTL_ADD, watched[i], &ev) != 0)
			fail("epoll_ctl");
	}

	for (;;) {
		struct epoll_event evs[8];
		int n = epoll_wait(ep, evs, 8, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fail("epoll_wait");
		}
		for (int i = 0; i < n; i++) {
			uint64_t v;
			if ((evs[i].data.u64 & ~(uint64_t)0xff) != TAG)
				fail("epoll event with data %#llx", (unsigned long long)evs[i].data.u64);
			switch (evs[i].data.u64 & 0xff) {
			case 0:
				if (read(tfd, &v, sizeof v) != sizeof v || v == 0)
					fail("timerfd read");
				while (v-- > 0) {
					ticks++;
					tick(ticks, sem_efd);
					sem_written += 3;
					if (ticks == 100)
						out("ready\n");
				}
				break;
			case 1:
				if (read(sem_efd, &v, sizeof v) != sizeof v || v != 1)
					fail("semaphore read");
				sem_read++;
				break;
			case 2: {
				struct signalfd_siginfo si;
				if (read(sfd, &si, sizeof si) != sizeof si)
					fail("signalfd read");
				if (si.ssi_signo != SIGUSR1)
					fail("signal %u from the signalfd", si.ssi_signo);
				out("signal SIGUSR1\n");
				stop_at = ticks + 40;
				break;
			}
			default:
				fail("epoll event with data %#llx", (unsigned long long)evs[i].data.u64);
			}
		}
		if (stop_at != 0 && ticks >= stop_at)
			break;
	}

	while (take_record())
		;
	if (taken != written)
		fail("%llu records written, %llu read", (unsigned long long)written,
		     (unsigned long long)taken);
	out("pipe: records in order\n");
	out("eventfd: 10 per read\n");
	uint64_t v;
	while (read(sem_efd, &v, sizeof v) == sizeof v)
		sem_read++;
	if (sem_read != sem_written)
		fail("semaphore: %llu written, %llu read", (unsigned long long)sem_written,
		     (unsigned long long)sem_read);
	out("semaphore: balanced\n");
	check_deleted(deleted_fd, unnamed_ro);
	out("deleted files: contents, offset and access mode kept\n");
	char buf[16];
	if (read(trailer[0], buf, sizeof buf) != 8 || memcmp(buf, "trailer\n", 8) != 0 ||
	    read(trailer[0], buf, sizeof buf) != 0)
		fail("trailer pipe");
	out("trailer: ok, then end-of-file\n");
	check_memfds(plain_memfd, ticks);
	out("memfd: log complete, seals kept\n");
	out("done\n");
	return 0;
}
