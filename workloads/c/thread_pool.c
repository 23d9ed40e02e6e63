/*
 * thread_pool.c - ferry test workload: a pthread worker pool fed by an epoll loop.
 *
 * Usage:   thread_pool [WORKERS]       (WORKERS 1..64, default 8; "ready" after about
 *                                       0.26 s; runs until SIGUSR1, then about 0.4 s)
 *
 * Threads: main, WORKERS workers, one signal thread and one sleeper, i.e. WORKERS + 3
 * (11 by default, 16 for `thread_pool 13`) from before "ready" until SIGUSR1 arrives.
 *   - main: one epoll instance over a periodic timerfd (5 ms), a "done" eventfd (every worker
 *     adds 1 per finished task) and a "signal" eventfd (written by the signal thread). Each
 *     timer expiration puts 2 task numbers on a FIFO work queue (head/tail under a pthread
 *     mutex, with a condition variable the workers wait on while it is empty).
 *   - workers: each names itself "worker-N" (N = 0..WORKERS-1, pthread_setname_np) and takes
 *     tasks; task i is a deterministic ~0.3 ms CPU chain (xorshift64 + FNV-1a, plus a double
 *     accumulation, so SSE registers are live) stored in results[i]. Tasks done are counted in
 *     a __thread variable that is added to a shared atomic total when the worker exits, after
 *     checking with pthread_getname_np(pthread_self()) that its name is still "worker-N".
 *   - signal thread: installs a 64 KiB sigaltstack, waits with sigwaitinfo({SIGUSR1}), writes
 *     the signal eventfd, checks that sigaltstack(NULL, &ss) still reports the same ss_sp and
 *     ss_size (ss_flags 0) and exits.
 *   - sleeper: clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) in 2 ms steps (each deadline
 *     2 ms after the previous one; re-based on the clock when it is over 1 s behind) until the
 *     stop flag is set; a wake-up before the deadline is a failure.
 * SIGUSR1 is blocked in main before any thread is created, so every thread inherits the mask;
 * only the signal thread takes it, with sigwaitinfo.
 *
 * After SIGUSR1, main queues exactly 100 more tasks (2 per tick) and waits until every queued
 * task is done (counted through the done eventfd). While the workers and the sleeper are still
 * alive (before the stop flag is set) it calls pthread_kill(thread, 0) on each of them and
 * requires 0: glibc sends tgkill to its cached thread id only for a thread that has not
 * started exiting, so this checks that the cached tids still name live threads. Then it sets
 * the stop flag, broadcasts the condition variable, joins every thread with pthread_join,
 * recomputes every result, and checks that the per-thread counts and the done eventfd both
 * add up to the number of tasks.
 *
 * Output (stdout, one write(2) per line):
 *   "thread_pool start"
 *   "ready"                      100 tasks done, all threads running (the marker)
 *   "signal SIGUSR1"             the signal thread took it; 100 more tasks follow
 *   "tasks: results verified"    results[i] equals the recomputation for every task queued
 *   "threads: counts add up"     __thread counts and done-eventfd total = tasks queued
 *   "names kept"                 every worker still named "worker-N" when it exited
 *   "altstack kept"              the signal thread's sigaltstack unchanged after the signal
 *   "pthread_kill ok"            pthread_kill(t, 0) returned 0 for every worker and the sleeper
 *   "done"
 * Exit status 0; on any inconsistency "FAIL: ..." and exit status 1; a bad argument prints a
 * usage line to stderr and exits 2. Nothing printed depends on timing (how many tasks ran
 * before the signal), tids or addresses, so two runs print identical bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 64
#define MAX_TASKS (1u << 20) /* results[] is 8 MiB of bss; only touched pages count */
#define READY_TASKS 100
#define EXTRA_TASKS 100
#define PER_TICK 2
#define ITERATIONS 100000 /* about 0.3 ms per task */
#define ALTSTACK_SIZE 65536
#define TAG 0x7001000000000000ULL

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

/* Any thread may fail: _exit, not exit, so that no atexit/stdio work races other threads. */
__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...)
{
	char buf[200];
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	out("FAIL: %s (errno %d)\n", buf, saved);
	_exit(1);
}

static uint64_t results[MAX_TASKS];

/* The work queue: task numbers head..tail-1 are waiting. */
static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cond = PTHREAD_COND_INITIALIZER;
static uint32_t queue_head, queue_tail;
static int stop; /* under queue_lock for the workers; atomic loads in the sleeper */

static int done_efd, signal_efd;
static uint64_t counted_total; /* sum of the workers' __thread counts, atomically */
static __thread uint64_t tasks_by_me;

struct worker {
	pthread_t thread;
	int index;
	int name_kept;
	char name_at_exit[32];
};
static struct worker workers[MAX_WORKERS];

static unsigned char altstack[ALTSTACK_SIZE] __attribute__((aligned(64)));
static char altstack_problem[128]; /* empty if the signal thread found it unchanged */

/* Task i: an integer chain and a double accumulation, both deterministic. */
__attribute__((noinline)) static uint64_t compute(uint64_t i)
{
	uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ULL, h = 0xcbf29ce484222325ULL;
	double acc = (double)i, scale = 1.0;

	for (int k = 0; k < ITERATIONS; k++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		h = (h ^ (x & 0xff)) * 0x100000001b3ULL;
		acc += (double)(x >> 11) * 0x1.0p-53 * scale;
		scale = scale * 0.9999 + 0.00005;
	}
	uint64_t bits;
	memcpy(&bits, &acc, sizeof bits);
	return h ^ bits ^ x;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	char want[16], got[32];
	uint64_t one = 1;
	int e;

	snprintf(want, sizeof want, "worker-%d", w->index);
	if ((e = pthread_setname_np(pthread_self(), want)) != 0) {
		errno = e;
		fail("pthread_setname_np(%s)", want);
	}
	for (;;) {
		pthread_mutex_lock(&queue_lock);
		while (queue_head == queue_tail && !stop)
			pthread_cond_wait(&queue_cond, &queue_lock);
		if (queue_head == queue_tail) {
			pthread_mutex_unlock(&queue_lock);
			break;
		}
		uint32_t i = queue_head++;
		pthread_mutex_unlock(&queue_lock);

		results[i] = compute(i);
		tasks_by_me++;
		if (write(done_efd, &one, sizeof one) != sizeof one)
			fail("worker-%d: writing the done eventfd", w->index);
	}
	if ((e = pthread_getname_np(pthread_self(), got, sizeof got)) != 0) {
		errno = e;
		fail("worker-%d: pthread_getname_np", w->index);
	}
	snprintf(w->name_at_exit, sizeof w->name_at_exit, "%s", got);
	w->name_kept = strcmp(got, want) == 0;
	__atomic_fetch_add(&counted_total, tasks_by_me, __ATOMIC_SEQ_CST);
	return NULL;
}

static void *signal_main(void *arg)
{
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0 }, now;
	sigset_t usr1;
	siginfo_t si;
	uint64_t one = 1;
	int sig;

	(void)arg;
	if (sigaltstack(&ss, NULL) != 0)
		fail("sigaltstack");
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	do
		sig = sigwaitinfo(&usr1, &si);
	while (sig < 0 && errno == EINTR);
	if (sig != SIGUSR1 || si.si_signo != SIGUSR1)
		fail("sigwaitinfo returned %d (si_signo %d)", sig, si.si_signo);
	if (write(signal_efd, &one, sizeof one) != sizeof one)
		fail("writing the signal eventfd");
	if (sigaltstack(NULL, &now) != 0)
		fail("sigaltstack(NULL)");
	if (now.ss_sp != ss.ss_sp || now.ss_size != ss.ss_size || now.ss_flags != 0)
		snprintf(altstack_problem, sizeof altstack_problem,
			 "altstack %s, size %zu, flags %#x after the signal",
			 now.ss_sp == ss.ss_sp ? "at the same place" : "moved", now.ss_size,
			 (unsigned)now.ss_flags);
	return NULL;
}

static void *sleeper_main(void *arg)
{
	struct timespec deadline, now;

	(void)arg;
	if (clock_gettime(CLOCK_MONOTONIC, &deadline) != 0)
		fail("clock_gettime");
	while (!__atomic_load_n(&stop, __ATOMIC_SEQ_CST)) {
		deadline.tv_nsec += 2000000;
		if (deadline.tv_nsec >= 1000000000) {
			deadline.tv_nsec -= 1000000000;
			deadline.tv_sec++;
		}
		int e;
		do
			e = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL);
		while (e == EINTR);
		if (e != 0) {
			errno = e;
			fail("sleeper: clock_nanosleep");
		}
		if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
			fail("clock_gettime");
		if (now.tv_sec < deadline.tv_sec ||
		    (now.tv_sec == deadline.tv_sec && now.tv_nsec < deadline.tv_nsec))
			fail("sleeper woke at %lld.%09ld, before its deadline %lld.%09ld",
			     (long long)now.tv_sec, now.tv_nsec, (long long)deadline.tv_sec,
			     deadline.tv_nsec);
		/* After a long stop (e.g. a checkpoint) start again from now instead of catching up. */
		if (now.tv_sec > deadline.tv_sec + 1)
			deadline = now;
	}
	return NULL;
}

static void enqueue(uint32_t *queued, uint32_t n)
{
	pthread_mutex_lock(&queue_lock);
	queue_tail += n;
	pthread_mutex_unlock(&queue_lock);
	for (uint32_t k = 0; k < n; k++)
		pthread_cond_signal(&queue_cond);
	*queued += n;
}

/* Reads an eventfd (non-blocking); a spurious wake-up reads nothing. */
static uint64_t take_count(int fd, const char *what)
{
	uint64_t v;
	ssize_t n = read(fd, &v, sizeof v);

	if (n < 0 && errno == EAGAIN)
		return 0;
	if (n != sizeof v)
		fail("reading the %s eventfd", what);
	return v;
}

int main(int argc, char **argv)
{
	int nworkers = 8;
	sigset_t usr1;
	pthread_t signal_thread, sleeper_thread;
	int e;

	if (argc > 2 || (argc == 2 && ((nworkers = atoi(argv[1])) < 1 || nworkers > MAX_WORKERS))) {
		dprintf(STDERR_FILENO, "usage: thread_pool [WORKERS]   (1..%d, default 8)\n",
			MAX_WORKERS);
		return 2;
	}
	out("thread_pool start\n");
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	if ((e = pthread_sigmask(SIG_BLOCK, &usr1, NULL)) != 0) {
		errno = e;
		fail("pthread_sigmask");
	}
	done_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	signal_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (done_efd < 0 || signal_efd < 0 || tfd < 0 || ep < 0)
		fail("creating the kernel objects");
	int watched[3] = { tfd, done_efd, signal_efd };
	for (int i = 0; i < 3; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG | (uint64_t)i };
		if (epoll_ctl(ep, EPOLL_CTL_ADD, watched[i], &ev) != 0)
			fail("epoll_ctl");
	}

	for (int i = 0; i < nworkers; i++) {
		workers[i].index = i;
		if ((e = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i])) != 0) {
			errno = e;
			fail("creating worker %d", i);
		}
	}
	if ((e = pthread_create(&signal_thread, NULL, signal_main, NULL)) != 0 ||
	    (e = pthread_create(&sleeper_thread, NULL, sleeper_main, NULL)) != 0) {
		errno = e;
		fail("creating the signal and sleeper threads");
	}

	struct itimerspec period = { { 0, 5000000 }, { 0, 5000000 } };
	if (timerfd_settime(tfd, 0, &period, NULL) != 0)
		fail("timerfd_settime");

	uint32_t queued = 0, done = 0, extra = 0;
	int signalled = 0, ready = 0;
	while (!(signalled && extra == EXTRA_TASKS && done == queued)) {
		struct epoll_event evs[8];
		int n = epoll_wait(ep, evs, 8, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fail("epoll_wait");
		}
		for (int k = 0; k < n; k++) {
			uint64_t v;
			if ((evs[k].data.u64 & ~(uint64_t)0xff) != TAG)
				fail("epoll event with data %#llx", (unsigned long long)evs[k].data.u64);
			switch (evs[k].data.u64 & 0xff) {
			case 0:
				if (read(tfd, &v, sizeof v) != sizeof v || v == 0)
					fail("timerfd read");
				for (; v > 0; v--) {
					if (signalled) {
						if (extra < EXTRA_TASKS) {
							enqueue(&queued, PER_TICK);
							extra += PER_TICK;
						}
					} else if (queued + PER_TICK <= MAX_TASKS - EXTRA_TASKS) {
						enqueue(&queued, PER_TICK);
					}
				}
				break;
			case 1:
				v = take_count(done_efd, "done");
				if (v > queued - done)
					fail("%llu more tasks reported done than were outstanding",
					     (unsigned long long)v);
				done += (uint32_t)v;
				if (!ready && done >= READY_TASKS) {
					out("ready\n");
					ready = 1;
				}
				break;
			case 2:
				if (take_count(signal_efd, "signal") == 0)
					break;
				if (signalled)
					fail("a second SIGUSR1 report");
				out("signal SIGUSR1\n");
				signalled = 1;
				break;
			default:
				fail("epoll event with data %#llx", (unsigned long long)evs[k].data.u64);
			}
		}
	}

	/* Everything is done; the workers wait on the condition variable, the sleeper sleeps. */
	for (int i = 0; i < nworkers; i++)
		if ((e = pthread_kill(workers[i].thread, 0)) != 0)
			fail("pthread_kill(worker-%d, 0) returned %d", i, e);
	if ((e = pthread_kill(sleeper_thread, 0)) != 0)
		fail("pthread_kill(sleeper, 0) returned %d", e);

	pthread_mutex_lock(&queue_lock);
	__atomic_store_n(&stop, 1, __ATOMIC_SEQ_CST);
	pthread_cond_broadcast(&queue_cond);
	pthread_mutex_unlock(&queue_lock);
	for (int i = 0; i < nworkers; i++)
		if ((e = pthread_join(workers[i].thread, NULL)) != 0) {
			errno = e;
			fail("joining worker-%d", i);
		}
	if ((e = pthread_join(signal_thread, NULL)) != 0 ||
	    (e = pthread_join(sleeper_thread, NULL)) != 0) {
		errno = e;
		fail("joining the signal and sleeper threads");
	}

	if (queue_head != queued || queue_tail != queued)
		fail("queue at %u..%u after %u tasks", queue_head, queue_tail, queued);
	for (uint32_t i = 0; i < queued; i++)
		if (results[i] != compute(i))
			fail("task %u: result %#llx, recomputed %#llx", i,
			     (unsigned long long)results[i], (unsigned long long)compute(i));
	out("tasks: results verified\n");
	done += (uint32_t)take_count(done_efd, "done");
	if (counted_total != queued || done != queued)
		fail("%u tasks queued, the workers counted %llu, the done eventfd %u", queued,
		     (unsigned long long)counted_total, done);
	out("threads: counts add up\n");
	for (int i = 0; i < nworkers; i++)
		if (!workers[i].name_kept)
			fail("worker-%d was named \"%s\" when it exited", i, workers[i].name_at_exit);
	out("names kept\n");
	if (altstack_problem[0] != '\0')
		fail("signal thread: %s", altstack_problem);
	out("altstack kept\n");
	out("pthread_kill ok\n");
	out("done\n");
	return 0;
}
