/*
 * echo - ferry's message API from C.
 *
 *   echo NAME COUNT             open endpoint NAME, receive COUNT messages and send each back to
 *                               its sender unchanged
 *   echo --ping NAME TO COUNT   open endpoint NAME, send "1".."COUNT" to TO one at a time, each
 *                               time waiting for the reply and checking it is what was sent
 *
 * Exits 0 on success, 1 on an error (printed with ferry_last_error()), 2 on bad usage.
 *
 * Build: cc -I include examples/echo.c -L ../../target/debug -lferrymsg \
 *            -Wl,-rpath,$PWD/../../target/debug -o echo
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ferry_msg.h"

/* Room for any sender id this program expects. */
#define ID_CAP 512

static char data[FERRY_MAX_MESSAGE];

static int usage(void)
{
    fprintf(stderr, "usage: echo NAME COUNT\n       echo --ping NAME TO COUNT\n");
    return 2;
}

/* The last ferry call failed: says what and why. Returns 1. */
static int fail(const char *what, const char *arg)
{
    fprintf(stderr, "echo: %s(%s): %s\n", what, arg, ferry_last_error());
    return 1;
}

static int parse_count(const char *s, long *count)
{
    char *end;
    errno = 0;
    *count = strtol(s, &end, 10);
    return errno == 0 && end != s && *end == '\0' && *count >= 0;
}

/* Receives one message into data (waiting as long as it takes). Returns FERRY_OK or an error. */
static int receive(ferry_endpoint *ep, size_t *len, char *from, size_t from_cap)
{
    for (;;) {
        int rc = ferry_recv(ep, data, sizeof data, len, from, from_cap, FERRY_WAIT_FOREVER);
        if (rc != FERRY_EMPTY)
            return rc;
    }
}

/* Sends, retrying for up to 10 s while TO does not exist yet (it may be starting). */
static int send_retrying(ferry_endpoint *ep, const char *to, const void *buf, size_t len)
{
    const struct timespec pause = {0, 100 * 1000 * 1000};
    int tries = 100;
    for (;;) {
        int rc = ferry_send(ep, to, buf, len);
        if (rc != FERRY_E_NO_SUCH_NAME || --tries == 0)
            return rc;
        nanosleep(&pause, NULL);
    }
}

static int serve(const char *name, long count)
{
    ferry_endpoint *ep = ferry_open(name);
    if (ep == NULL)
        return fail("ferry_open", name);
    for (long i = 0; i < count; i++) {
        char from[ID_CAP];
        size_t len;
        if (receive(ep, &len, from, sizeof from) != FERRY_OK) {
            fail("ferry_recv", name);
            ferry_close(ep);
            return 1;
        }
        if (ferry_send(ep, from, data, len) != FERRY_OK) {
            fail("ferry_send", from);
            ferry_close(ep);
            return 1;
        }
    }
    ferry_close(ep);
    return 0;
}

static int ping(const char *name, const char *to, long count)
{
    ferry_endpoint *ep = ferry_open(name);
    if (ep == NULL)
        return fail("ferry_open", name);
    for (long i = 1; i <= count; i++) {
        char sent[32];
        size_t len;
        int n = snprintf(sent, sizeof sent, "%ld", i);
        if (send_retrying(ep, to, sent, (size_t)n) != FERRY_OK) {
            fail("ferry_send", to);
            ferry_close(ep);
            return 1;
        }
        if (receive(ep, &len, NULL, 0) != FERRY_OK) {
            fail("ferry_recv", name);
            ferry_close(ep);
            return 1;
        }
        if (len != (size_t)n || memcmp(data, sent, len) != 0) {
            fprintf(stderr, "echo: reply %ld: expected \"%s\", got \"%.*s\" (%zu bytes)\n", i,
                    sent, len > 64 ? 64 : (int)len, data, len);
            ferry_close(ep);
            return 1;
        }
    }
    ferry_close(ep);
    return 0;
}

int main(int argc, char **argv)
{
    long count;
    if (argc == 3 && strcmp(argv[1], "--ping") != 0) {
        if (!parse_count(argv[2], &count))
            return usage();
        return serve(argv[1], count);
    }
    if (argc == 5 && strcmp(argv[1], "--ping") == 0) {
        if (!parse_count(argv[4], &count))
            return usage();
        return ping(argv[2], argv[3], count);
    }
    return usage();
}
