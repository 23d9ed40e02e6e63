/*
 * ferry_msg.h - ferry's message API for C (and anything that can call C).
 *
 * A process that ferry manages opens named endpoints, sends messages to any endpoint of the
 * cluster by name or id, and receives. Messages keep their per-sender order and are neither lost
 * nor duplicated while either end migrates. Each endpoint is one connection to the local ferry
 * daemon (an abstract AF_UNIX socket, `FERRY_MSG_SOCKET`, default "ferry-msg").
 *
 * Link with -lferrymsg (libferrymsg.so, or libferrymsg.a plus the system libraries that
 * `cargo rustc -p ferry-msg-c -- --print native-static-libs` lists).
 *
 * Conventions:
 *  - Functions returning int return FERRY_OK (0), FERRY_EMPTY (1, ferry_recv only) or a
 *    negative FERRY_E_* code. A failing call records a message and its code for the calling
 *    thread: ferry_last_error(), ferry_last_code().
 *  - Strings are NUL-terminated UTF-8. Buffers passed to one call must not overlap.
 *  - A handle may be used by one thread at a time (it may move between threads).
 *  - Calls block: ferry_send until the local daemon holds the message, ferry_recv as long as its
 *    timeout says. ferry_fd() gives a descriptor to poll() first.
 */
#ifndef FERRY_MSG_H
#define FERRY_MSG_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An open endpoint (opaque). */
typedef struct ferry_endpoint ferry_endpoint;

/* Result codes. */
enum {
    FERRY_OK = 0,
    /* ferry_recv: no message within the wait. */
    FERRY_EMPTY = 1,
    /* A NULL or bad argument, a bad endpoint name or address. */
    FERRY_E_INVALID = -1,
    /* A message over FERRY_MAX_MESSAGE bytes. */
    FERRY_E_TOO_LARGE = -2,
    /* A buffer is too small. For ferry_recv the message stays: call again with room for
     * ferry_pending_size() bytes (and for the sender id). */
    FERRY_E_BUFFER = -3,
    /* ferry_open: an endpoint of that name exists in the cluster. */
    FERRY_E_NAME_TAKEN = -4,
    /* ferry_send: no endpoint of that name in the cluster. */
    FERRY_E_NO_SUCH_NAME = -5,
    /* The endpoint (this one or the destination) is closed. */
    FERRY_E_CLOSED = -6,
    /* No ferry message service on this host (is the daemon running? FERRY_MSG_SOCKET?). */
    FERRY_E_NO_DAEMON = -7,
    /* The connection to the daemon failed. */
    FERRY_E_IO = -8,
    /* The daemon refused the request or said something unexpected; or an internal error. */
    FERRY_E_PROTOCOL = -9
};

/* Largest message body, in bytes. */
#define FERRY_MAX_MESSAGE 65536

/* ferry_recv's timeout_ms: wait until a message comes. */
#define FERRY_WAIT_FOREVER (-1)

/*
 * Opens an endpoint at the local daemon. name: NULL for an anonymous endpoint (reachable by its
 * id), else 1-64 letters, digits, '-', '_' or '.', unique in the cluster.
 * Returns the handle, or NULL on error (see ferry_last_error() and ferry_last_code():
 * FERRY_E_INVALID, FERRY_E_NAME_TAKEN, FERRY_E_NO_DAEMON, ...).
 */
ferry_endpoint *ferry_open(const char *name);

/* Closes the endpoint and frees the handle (and a message held back by FERRY_E_BUFFER, unread).
 * NULL is a no-op. */
void ferry_close(ferry_endpoint *ep);

/*
 * Writes the endpoint's cluster-wide id, "node:n", NUL-terminated, into buf (cap bytes).
 * Other endpoints can send to this id. Returns FERRY_OK, FERRY_E_BUFFER if it does not fit,
 * FERRY_E_INVALID for NULL arguments.
 */
int ferry_id(const ferry_endpoint *ep, char *buf, size_t cap);

/*
 * The endpoint's connection descriptor, to poll() for POLLIN before ferry_recv (readable does not
 * always mean a message: call ferry_recv with timeout 0). The number stays the same for the
 * handle's life, across daemon restarts and migrations. Do not read, write or close it.
 * Returns FERRY_E_INVALID for NULL.
 */
int ferry_fd(const ferry_endpoint *ep);

/*
 * Sends len bytes at data (NULL if len is 0) to `to`: an endpoint name or an id "node:n".
 * Returns FERRY_OK once the local daemon holds the message; from there it is delivered once,
 * in order, wherever either end moves. Errors: FERRY_E_TOO_LARGE (len > FERRY_MAX_MESSAGE),
 * FERRY_E_INVALID (NULL argument, bad address), FERRY_E_NO_SUCH_NAME, FERRY_E_CLOSED,
 * FERRY_E_IO, FERRY_E_PROTOCOL.
 */
int ferry_send(ferry_endpoint *ep, const char *to, const void *data, size_t len);

/*
 * Receives one message into buf (cap bytes; buf may be NULL if cap is 0) and stores its length
 * in *len; writes the sender's id, NUL-terminated, into from (from_cap bytes) unless from is
 * NULL. timeout_ms: FERRY_WAIT_FOREVER, 0 = do not wait, > 0 = wait up to that many ms.
 * Returns:
 *  - FERRY_OK: a message; *len is its length.
 *  - FERRY_EMPTY: no message came within the wait; *len is 0.
 *  - FERRY_E_BUFFER: the message (*len bytes) does not fit cap, or the sender id does not fit
 *    from_cap. Nothing is written but *len; the message is kept in the handle and the next
 *    ferry_recv returns it first, without waiting. ferry_pending_size() gives its length again.
 *  - FERRY_E_INVALID (NULL ep or len, NULL buf with cap > 0, timeout_ms < -1), FERRY_E_CLOSED,
 *    FERRY_E_IO, FERRY_E_PROTOCOL; *len is untouched.
 * A buffer of FERRY_MAX_MESSAGE bytes always holds the message.
 */
int ferry_recv(ferry_endpoint *ep, void *buf, size_t cap, size_t *len, char *from,
               size_t from_cap, int timeout_ms);

/*
 * The length of the message held back by FERRY_E_BUFFER, else 0 (also 0 for NULL, and for an
 * empty message held back because its sender id did not fit).
 */
size_t ferry_pending_size(const ferry_endpoint *ep);

/*
 * The message of the last failing call on this thread, "" if none. Successful calls leave it
 * alone. The string is owned by the library and valid until the next failing call on this
 * thread.
 */
const char *ferry_last_error(void);

/* The code (FERRY_E_*) of the last failing call on this thread, FERRY_OK if none. */
int ferry_last_code(void);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_MSG_H */
