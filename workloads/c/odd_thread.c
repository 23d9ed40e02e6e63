/*
 * odd_thread.c - ferry test workload: a process with one thread that differs from the main
 * thread in what ferry captures once per process, so ferry must refuse to move it.
 *
 * Usage:   odd_thread seccomp|creds SECONDS
 *
 *   seccomp  the second thread installs an allow-everything seccomp filter for itself only
 *            (no TSYNC; needs root or no_new_privs), then sleeps SECONDS;
 *   creds    the second thread changes its own gids with a raw setresgid (glibc would change
 *            every thread's), then sleeps SECONDS. Needs root.
 *
 * Output (stdout, one write(2) per line): "ready" once the second thread is set up, "done"
 * after joining it. Exit status 0; "FAIL: ..." and exit status 1 if the set-up fails.
 */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static const char *mode;
static unsigned seconds;
static sem_t set_up;
static int failed;

static void say(const char *line)
{
	if (write(1, line, strlen(line)) < 0)
		_exit(1);
}

static void *odd(void *arg)
{
	(void)arg;
	if (strcmp(mode, "seccomp") == 0) {
		struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
		struct sock_fprog prog = { .len = 1, .filter = &allow };

		if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
			failed = 1;
	} else if (syscall(SYS_setresgid, 65534, 65534, 65534) != 0) {
		failed = 1;
	}
	sem_post(&set_up);
	struct timespec ts = { .tv_sec = seconds };
	while (nanosleep(&ts, &ts) != 0)
		;
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t;

	if (argc != 3 || (strcmp(argv[1], "seccomp") != 0 && strcmp(argv[1], "creds") != 0)) {
		fprintf(stderr, "usage: odd_thread seccomp|creds SECONDS\n");
		return 2;
	}
	mode = argv[1];
	seconds = (unsigned)atoi(argv[2]);
	if (sem_init(&set_up, 0, 0) != 0 || pthread_create(&t, NULL, odd, NULL) != 0) {
		say("FAIL: cannot start the thread\n");
		return 1;
	}
	while (sem_wait(&set_up) != 0)
		;
	if (failed) {
		say("FAIL: cannot set the thread up\n");
		return 1;
	}
	say("ready\n");
	pthread_join(t, NULL);
	say("done\n");
	return 0;
}
