/*
 * creds.c - ferry test workload: a root process that dropped to other ids.
 *
 * Usage:   creds               (must start as root; runs about 3.2 s)
 *
 * Output (stdout, one write(2) per line), in order:
 *   "creds start"
 *   "dropped"                       after setgroups, setresgid, setresuid, no_new_privs
 *   "ready"
 *   "sleep 0" .. "sleep 7"          400 ms apart
 *   "uid: real=2100 effective=2200 saved=2300"
 *   "gid: real=1100 effective=1200 saved=1300"
 *   "groups: 100 200 65534"
 *   "CapInh:\t..." .. "CapAmb:\t..."  from /proc/self/status (Prm/Eff/Amb zero after the
 *                                   drop; Inh is whatever the parent passed on)
 *   "no_new_privs=1 dumpable=1"
 *   "setuid(0): EPERM"              the process must not have got its privileges back
 *   "done"
 * Exit status 0 ("creds: not root" and exit 3 if started unprivileged).
 *
 * Exercises: real/effective/saved uid and gid that all differ, supplementary groups, the
 * empty capability sets that follow a drop from root, PR_SET_NO_NEW_PRIVS, and dumpable set
 * back to 1 after the id change reset it. The restored process must have exactly these
 * credentials: not root's, and not less than what it had.
 *
 * Marker for tests: "sleep 1" (then 2.4 s more).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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

static void nap(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	if (nanosleep(&ts, NULL) != 0)
		out("nanosleep failed: %s\n", strerror(errno));
}

static int cmp_gid(const void *a, const void *b)
{
	gid_t x = *(const gid_t *)a, y = *(const gid_t *)b;
	return x < y ? -1 : x > y;
}

int main(void)
{
	out("creds start\n");
	if (geteuid() != 0) {
		out("creds: not root\n");
		return 3;
	}

	const gid_t groups[] = { 200, 100, 65534 };
	if (setgroups(3, groups) != 0)
		out("setgroups failed: %s\n", strerror(errno));
	if (setresgid(1100, 1200, 1300) != 0)
		out("setresgid failed: %s\n", strerror(errno));
	if (setresuid(2100, 2200, 2300) != 0)
		out("setresuid failed: %s\n", strerror(errno));
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		out("PR_SET_NO_NEW_PRIVS failed: %s\n", strerror(errno));
	if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0)
		out("PR_SET_DUMPABLE failed: %s\n", strerror(errno));
	out("dropped\n");

	out("ready\n");
	for (int i = 0; i < 8; i++) {
		nap(400);
		out("sleep %d\n", i);
	}

	uid_t ru, eu, su;
	gid_t rg, eg, sg;
	if (getresuid(&ru, &eu, &su) == 0)
		out("uid: real=%u effective=%u saved=%u\n", ru, eu, su);
	else
		out("getresuid failed: %s\n", strerror(errno));
	if (getresgid(&rg, &eg, &sg) == 0)
		out("gid: real=%u effective=%u saved=%u\n", rg, eg, sg);
	else
		out("getresgid failed: %s\n", strerror(errno));

	gid_t got[64];
	int n = getgroups(64, got);
	if (n < 0) {
		out("getgroups failed: %s\n", strerror(errno));
	} else {
		qsort(got, (size_t)n, sizeof got[0], cmp_gid);
		char list[512] = "";
		for (int i = 0; i < n; i++) {
			char one[16];
			snprintf(one, sizeof one, "%s%u", i ? " " : "", got[i]);
			strncat(list, one, sizeof list - strlen(list) - 1);
		}
		out("groups: %s\n", list);
	}

	FILE *f = fopen("/proc/self/status", "r");
	if (!f) {
		out("open /proc/self/status failed: %s\n", strerror(errno));
	} else {
		char line[256];
		while (fgets(line, sizeof line, f)) {
			if (!strncmp(line, "CapInh:", 7) || !strncmp(line, "CapPrm:", 7) ||
			    !strncmp(line, "CapEff:", 7) || !strncmp(line, "CapAmb:", 7))
				out("%s", line);
		}
		fclose(f);
	}
	out("no_new_privs=%d dumpable=%d\n", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
	    prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));

	if (setuid(0) == 0)
		out("setuid(0): succeeded (privileges came back)\n");
	else
		out("setuid(0): %s\n", errno == EPERM ? "EPERM" : strerror(errno));
	out("done\n");
	return 0;
}
