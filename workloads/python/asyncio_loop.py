"""asyncio_loop.py - ferry test workload: an unmodified python3 asyncio event loop.

Usage:   python3 asyncio_loop.py

asyncio's default loop is an epoll selector with a self-pipe that is a unix stream socket
pair (signal wake-ups arrive through it: loop.add_signal_handler uses signal.set_wakeup_fd).
Besides that, the program holds a socket pair of its own (both ends non-blocking): every
tick (call_later, 5 ms) two numbered 64-byte records are sent into one end, and a reader
registered with loop.add_reader on the other end takes one record per wake-up, so that 50
records (3.2 KiB) always wait in the socket once the loop runs.

Output (stdout, flushed per line):
  "asyncio_loop start"
  "ready"                      after 100 ticks, with records waiting in the socket (the marker)
  "signal SIGUSR1"             from loop.add_signal_handler; 40 more ticks follow
  "socket: records in order"   every record read back numbered and filled as sent
  "timers: ticks in order"
  "done"
Exit status 0; on any inconsistency "FAIL: ..." and exit status 1. Runs until SIGUSR1.
"""

import asyncio
import signal
import socket
import sys

RECORD = 64
DEPTH = 50
TICK = 0.005


def record(n):
    head = b"%08d:" % n
    return head + bytes((n + i) % 251 for i in range(RECORD - len(head)))


def fail(what):
    print("FAIL: " + what, flush=True)
    sys.exit(1)


class Workload:
    def __init__(self, loop):
        self.loop = loop
        self.writer, self.reader = socket.socketpair()
        self.writer.setblocking(False)
        self.reader.setblocking(False)
        self.sent = 0
        self.received = 0
        self.buffer = b""
        self.ticks = 0
        self.reading = False
        self.signalled_at = None
        self.done = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, self.on_signal)

    def finishing(self):
        return self.signalled_at is not None and self.ticks >= self.signalled_at + 40

    def read_when_ready(self, on):
        if on and not self.reading:
            self.loop.add_reader(self.reader.fileno(), self.on_readable)
        elif not on and self.reading:
            self.loop.remove_reader(self.reader.fileno())
        self.reading = on

    def on_readable(self):
        # One record per wake-up while DEPTH records must stay queued; all of them at the end.
        try:
            chunk = self.reader.recv(4096 if self.finishing() else RECORD - len(self.buffer))
        except BlockingIOError:
            return
        if not chunk:
            fail("the socket pair reported end-of-file")
        self.buffer += chunk
        while len(self.buffer) >= RECORD:
            got, self.buffer = self.buffer[:RECORD], self.buffer[RECORD:]
            if got != record(self.received):
                fail("record %d arrived as %r" % (self.received, got[:12]))
            self.received += 1
        if self.finishing():
            if self.received == self.sent and not self.done.done():
                self.read_when_ready(False)
                self.done.set_result(True)
        elif self.sent - self.received <= DEPTH:
            self.read_when_ready(False)

    def tick(self):
        if self.done.done():
            return
        self.ticks += 1
        if not self.finishing():
            for _ in range(2):
                self.writer.sendall(record(self.sent))
                self.sent += 1
        if self.ticks == 100:
            if self.sent - self.received < DEPTH:
                fail("only %d records wait in the socket" % (self.sent - self.received))
            print("ready", flush=True)
        self.read_when_ready(self.finishing() or self.sent - self.received > DEPTH)
        if not self.done.done():
            self.loop.call_later(TICK, self.tick)

    def on_signal(self):
        if self.signalled_at is None:
            print("signal SIGUSR1", flush=True)
            self.signalled_at = max(self.ticks, 100)


async def main():
    print("asyncio_loop start", flush=True)
    work = Workload(asyncio.get_running_loop())
    work.loop.call_later(TICK, work.tick)
    await work.done
    if work.buffer:
        fail("%d bytes of a partial record left" % len(work.buffer))
    print("socket: records in order", flush=True)
    if work.ticks < work.signalled_at + 40:
        fail("finished after %d ticks" % work.ticks)
    print("timers: ticks in order", flush=True)
    work.writer.close()
    work.reader.close()
    print("done", flush=True)


asyncio.run(main())
