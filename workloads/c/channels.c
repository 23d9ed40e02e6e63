/*
 * channels.c - ferry test workload: message channels and named files of one process.
 *
 * Usage:   channels
 *
 * Every 5 ms tick:
 *   - a numbered datagram goes into a unix datagram socket pair (SOCK_DGRAM), and a numbered
 *     record into a seqpacket pair (SOCK_SEQPACKET), each of a length that varies with its
 *     number (every 7th is empty); the program reads them back itself, always leaving 50 of
 *     each in flight, and checks each one's length and bytes (boundaries must survive);
 *   - a 100-byte numbered record goes into a FIFO made in the working directory
 *     ("channels.fifo"), read back through a non-blocking read end, 40 left in flight.
 * The datagram pair's sending end has a larger send buffer; one end of an idle stream pair asks
 * for credentials (SO_PASSCRED). The process holds /proc/self/status, /proc/meminfo (read
 * 9 bytes into) and the directory /proc/self open, and a blocking inotify instance watching
 * the working directory (IN_CREATE, descriptor 2) and a file in it (IN_MODIFY, descriptor 3;
 * descriptor 1 was used and removed first).
 *
 * Output (stdout, one write(2) per line):
 *   "channels start"
 *   "ready"                               after 100 ticks: every channel holds messages
 *   "signal SIGUSR1"                      40 more ticks follow
 *   "datagrams: boundaries and order kept"
 *   "records: boundaries and order kept"
 *   "fifo: records in order, flags kept"
 *   "socket options kept"
 *   "proc: own status, own directory, meminfo"
 *   "inotify: events at their watch descriptors"
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
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEPTH 50
#define FIFO_DEPTH 40
#define FIFO_RECORD 100
#define MAX_MESSAGE 600
#define FIFO_NAME "channels.fifo"

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
	unlink(FIFO_NAME);
	exit(1);
}

/* Message `seq` of channel `tag`: its length and bytes. */
static size_t message(unsigned char *m, uint64_t seq, unsigned tag)
{
	size_t len = (seq % 7 == 0) ? 0 : 8 + (size_t)((seq * 37 + tag) % (MAX_MESSAGE - 8));

	if (len == 0)
		return 0;
	memcpy(m, &seq, sizeof seq);
	for (size_t i = sizeof seq; i < len; i++)
		m[i] = (unsigned char)(seq * 13 + i + tag);
	return len;
}

struct channel {
	const char *name;
	int tx, rx;
	unsigned tag;
	uint64_t sent, taken;
};

static void send_one(struct channel *c)
{
	unsigned char m[MAX_MESSAGE];
	size_t len = message(m, c->sent, c->tag);

	if (send(c->tx, m, len, 0) != (ssize_t)len)
		fail("%s: sending message %llu", c->name, (unsigned long long)c->sent);
	c->sent++;
}

/* Takes the next message and checks its length and bytes; 0 when none waits. */
static int take_one(struct channel *c)
{
	unsigned char m[MAX_MESSAGE + 1], want[MAX_MESSAGE];
	ssize_t n = recv(c->rx, m, sizeof m, MSG_DONTWAIT);

	if (n < 0 && errno == EAGAIN)
		return 0;
	size_t len = message(want, c->taken, c->tag);
	if (n != (ssize_t)len)
		fail("%s: message %llu is %zd bytes, not %zu", c->name, (unsigned long long)c->taken,
		     n, len);
	if (memcmp(m, want, len) != 0)
		fail("%s: message %llu is not as sent", c->name, (unsigned long long)c->taken);
	c->taken++;
	return 1;
}

static int fifo_r, fifo_w;
static uint64_t fifo_written, fifo_taken;

static void fifo_fill(unsigned char *rec, uint64_t seq)
{
	memcpy(rec, &seq, sizeof seq);
	for (size_t i = sizeof seq; i < FIFO_RECORD; i++)
		rec[i] = (unsigned char)(seq * 7 + i);
}

static int fifo_take(void)
{
	unsigned char rec[FIFO_RECORD], want[FIFO_RECORD];
	ssize_t n = read(fifo_r, rec, FIFO_RECORD);

	if (n < 0 && errno == EAGAIN)
		return 0;
	if (n != FIFO_RECORD)
		fail("fifo: read %zd bytes of record %llu", n, (unsigned long long)fifo_taken);
	fifo_fill(want, fifo_taken);
	if (memcmp(rec, want, FIFO_RECORD) != 0)
		fail("fifo: record %llu is not as written", (unsigned long long)fifo_taken);
	fifo_taken++;
	return 1;
}

static void tick(struct channel *chans, int n)
{
	unsigned char rec[FIFO_RECORD];

	for (int i = 0; i < n; i++) {
		send_one(&chans[i]);
		while (chans[i].sent - chans[i].taken > DEPTH)
			if (!take_one(&chans[i]))
				fail("%s: message %llu missing", chans[i].name,
				     (unsigned long long)chans[i].taken);
	}
	fifo_fill(rec, fifo_written);
	if (write(fifo_w, rec, FIFO_RECORD) != FIFO_RECORD)
		fail("fifo: writing record %llu", (unsigned long long)fifo_written);
	fifo_written++;
	while (fifo_written - fifo_taken > FIFO_DEPTH)
		if (!fifo_take())
			fail("fifo: record %llu missing", (unsigned long long)fifo_taken);
}

static volatile sig_atomic_t woken;

static void on_usr1(int sig)
{
	(void)sig;
	woken = 1;
}

static int int_option(int fd, int name)
{
	int v = -1;
	socklen_t len = sizeof v;

	if (getsockopt(fd, SOL_SOCKET, name, &v, &len) != 0)
		fail("getsockopt(%d)", name);
	return v;
}

/* The status file at `fd` (read from its start) names pid `pid`. */
static void check_status(int fd, pid_t pid, const char *what)
{
	char buf[4096], want[32];
	ssize_t n = pread(fd, buf, sizeof buf - 1, 0);

	if (n <= 0)
		fail("proc: reading %s", what);
	buf[n] = 0;
	snprintf(want, sizeof want, "\nPid:\t%d\n", (int)pid);
	if (!strstr(buf, want))
		fail("proc: %s does not name pid %d", what, (int)pid);
}

int main(void)
{
	int d[2], s[2], idle[2];
	struct channel chans[2];
	struct sigaction sa;

	out("channels start\n");
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, d) != 0 || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, s) != 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, idle) != 0)
		fail("socketpair");
	/* A sender asking for credentials would be bound to an automatic name: the idle pair
	 * asks instead. */
	int one = 1, sndbuf = 300000;
	if (setsockopt(idle[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0 ||
	    setsockopt(d[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) != 0)
		fail("setsockopt");
	int sndbuf_now = int_option(d[0], SO_SNDBUF);
	chans[0] = (struct channel){ "datagrams", d[0], d[1], 1, 0, 0 };
	chans[1] = (struct channel){ "records", s[1], s[0], 2, 0, 0 };

	unlink(FIFO_NAME);
	if (mkfifo(FIFO_NAME, 0600) != 0)
		fail("mkfifo");
	fifo_r = open(FIFO_NAME, O_RDONLY | O_NONBLOCK);
	fifo_w = open(FIFO_NAME, O_WRONLY);
	if (fifo_r < 0 || fifo_w < 0)
		fail("opening the FIFO");

	int status = open("/proc/self/status", O_RDONLY);
	int self_dir = open("/proc/self", O_RDONLY | O_DIRECTORY);
	int meminfo = open("/proc/meminfo", O_RDONLY);
	if (status < 0 || self_dir < 0 || meminfo < 0)
		fail("opening /proc files");
	char head[9];
	if (read(meminfo, head, sizeof head) != sizeof head)
		fail("reading /proc/meminfo");

	/* inotify: descriptor 1 taken and given back (its IN_IGNORED event read), then the
	 * directory (2) and a file made before the directory was watched (3). */
	char events[4096] __attribute__((aligned(8)));
	int watched = open("watched.txt", O_CREAT | O_WRONLY | O_TRUNC, 0600);
	int ino = inotify_init1(IN_CLOEXEC);
	if (watched < 0 || close(watched) != 0 || ino < 0)
		fail("inotify setup");
	int gone = inotify_add_watch(ino, "/", IN_DELETE_SELF);
	if (gone != 1 || inotify_rm_watch(ino, gone) != 0 || read(ino, events, sizeof events) <= 0)
		fail("inotify: first descriptor %d", gone);
	int wd_dir = inotify_add_watch(ino, ".", IN_CREATE);
	int wd_file = inotify_add_watch(ino, "watched.txt", IN_MODIFY);
	if (wd_dir != 2 || wd_file != 3)
		fail("inotify: descriptors %d and %d", wd_dir, wd_file);

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	if (sigaction(SIGUSR1, &sa, NULL) != 0)
		fail("sigaction");

	struct timespec period = { 0, 5 * 1000 * 1000 };
	uint64_t ticks = 0, after = 0;
	for (;;) {
		nanosleep(&period, NULL);
		tick(chans, 2);
		ticks++;
		if (ticks == 100)
			out("ready\n");
		if (woken && after == 0)
			out("signal SIGUSR1\n");
		if (woken && ++after == 40)
			break;
	}

	for (int i = 0; i < 2; i++) {
		while (take_one(&chans[i]))
			;
		if (chans[i].taken != chans[i].sent)
			fail("%s: %llu sent, %llu taken", chans[i].name,
			     (unsigned long long)chans[i].sent, (unsigned long long)chans[i].taken);
		out("%s: boundaries and order kept\n", chans[i].name);
	}
	while (fifo_take())
		;
	if (fifo_taken != fifo_written)
		fail("fifo: %llu written, %llu taken", (unsigned long long)fifo_written,
		     (unsigned long long)fifo_taken);
	if (!(fcntl(fifo_r, F_GETFL) & O_NONBLOCK) || (fcntl(fifo_w, F_GETFL) & O_NONBLOCK))
		fail("fifo: flags %#x and %#x", fcntl(fifo_r, F_GETFL), fcntl(fifo_w, F_GETFL));
	out("fifo: records in order, flags kept\n");

	if (int_option(idle[0], SO_PASSCRED) != 1 || int_option(idle[1], SO_PASSCRED) != 0 ||
	    int_option(d[0], SO_SNDBUF) != sndbuf_now || int_option(s[0], SO_TYPE) != SOCK_SEQPACKET ||
	    int_option(d[1], SO_TYPE) != SOCK_DGRAM)
		fail("socket options: passcred %d, sndbuf %d (was %d)", int_option(idle[0], SO_PASSCRED),
		     int_option(d[0], SO_SNDBUF), sndbuf_now);
	out("socket options kept\n");

	check_status(status, getpid(), "/proc/self/status");
	int again = openat(self_dir, "status", O_RDONLY);
	if (again < 0)
		fail("proc: opening status through /proc/self");
	check_status(again, getpid(), "status through the /proc/self directory");
	char rest[8];
	if (pread(meminfo, rest, 0, 0) != 0 || lseek(meminfo, 0, SEEK_CUR) != sizeof head ||
	    pread(meminfo, head, sizeof head, 0) != sizeof head || memcmp(head, "MemTotal:", 9) != 0)
		fail("proc: /proc/meminfo");
	out("proc: own status, own directory, meminfo\n");

	if (fcntl(ino, F_GETFL) & O_NONBLOCK)
		fail("inotify: no longer blocking");
	int made = open("created.txt", O_CREAT | O_WRONLY, 0600);
	int touch = open("watched.txt", O_WRONLY | O_APPEND);
	if (made < 0 || close(made) != 0 || touch < 0 || write(touch, "x", 1) != 1 || close(touch) != 0)
		fail("inotify: making events");
	int seen_create = 0, seen_modify = 0;
	while (!(seen_create && seen_modify)) {
		ssize_t n = read(ino, events, sizeof events);
		if (n <= 0)
			fail("inotify: reading events");
		for (char *p = events; p < events + n;) {
			struct inotify_event *e = (struct inotify_event *)p;
			if (e->wd == wd_dir && (e->mask & IN_CREATE) && e->len > 0 &&
			    strcmp(e->name, "created.txt") == 0)
				seen_create = 1;
			else if (e->wd == wd_file && (e->mask & IN_MODIFY))
				seen_modify = 1;
			else
				fail("inotify: event wd %d mask %#x", e->wd, e->mask);
			p += sizeof *e + e->len;
		}
	}
	unlink("created.txt");
	unlink("watched.txt");
	out("inotify: events at their watch descriptors\n");

	unlink(FIFO_NAME);
	out("done\n");
	return 0;
}
