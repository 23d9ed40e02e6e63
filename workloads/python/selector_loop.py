"""selector_loop.py - ferry test workload: an unmodified python3 event loop on kernel objects.

Usage:   python3 selector_loop.py       (until SIGUSR1, then about 0.5 s)

One thread. `selectors.DefaultSelector` (epoll) watches a pipe's read end and a wake-up
eventfd; SIGUSR1 is blocked and polled with `signal.sigpending`. Every 10 ms a producer step
writes a numbered 16-byte record into the pipe (the loop reads only while more than 50 are in
flight, so the pipe always holds data), wakes the loop through the eventfd, and adds 1 to a
second eventfd, which is read every 20 steps (it must hold 20).

Output: "selector_loop start", "ready" (after 100 steps: the marker), "signal SIGUSR1",
"pipe: records in order", "eventfd: 20 per read", "done". Exit 0; "FAIL: ..." and exit 1 on any
inconsistency.
"""
import os
import selectors
import signal
import sys
import time


def fail(what):
    os.write(1, ("FAIL: %s\n" % what).encode())
    sys.exit(1)


def say(line):
    os.write(1, (line + "\n").encode())


say("selector_loop start")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
r, w = os.pipe()
os.set_blocking(r, False)
wake = os.eventfd(0, os.EFD_NONBLOCK)
efd = os.eventfd(0)
sel = selectors.DefaultSelector()
sel.register(wake, selectors.EVENT_READ, "wake")

def record(n):
    return b"%015d\n" % n


written = taken = steps = 0
watching_pipe = False
stop_at = None
next_step = time.monotonic()
while stop_at is None or steps < stop_at:
    # The pipe is watched only while more than 50 records are in flight: it always holds data.
    if (written - taken > 50) != watching_pipe:
        if watching_pipe:
            sel.unregister(r)
        else:
            sel.register(r, selectors.EVENT_READ, "pipe")
        watching_pipe = not watching_pipe
    timeout = max(0.0, next_step - time.monotonic())
    for key, _ in sel.select(timeout):
        if key.data == "pipe" and written - taken > 50:
            got = os.read(r, 16)
            if got != record(taken):
                fail("read %r, expected record %d" % (got, taken))
            taken += 1
        elif key.data == "wake" and os.eventfd_read(wake) != 1:
            fail("wake-up eventfd")
    if time.monotonic() >= next_step:
        next_step += 0.01
        os.write(w, record(written))
        written += 1
        os.eventfd_write(efd, 1)
        os.eventfd_write(wake, 1)
        steps += 1
        if steps % 20 == 0:
            got = os.eventfd_read(efd)
            if got != 20:
                fail("eventfd held %d after 20 steps" % got)
        if steps == 100:
            say("ready")
    if stop_at is None and signal.SIGUSR1 in signal.sigpending():
        if signal.sigwait({signal.SIGUSR1}) != signal.SIGUSR1:
            fail("sigwait")
        say("signal SIGUSR1")
        stop_at = steps + 50

os.close(w)
while True:
    try:
        got = os.read(r, 16)
    except BlockingIOError:
        fail("the pipe's write end is closed, yet a read would block")
    if not got:
        break
    if got != record(taken):
        fail("read %r, expected record %d" % (got, taken))
    taken += 1
if taken != written:
    fail("%d records written, %d read" % (written, taken))
say("pipe: records in order")
say("eventfd: 20 per read")
say("done")
