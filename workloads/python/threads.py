"""threads.py - ferry test workload: an unmodified python3 with several OS threads.

Usage:   python3 threads.py     ("ready" after about 0.25 s; runs until SIGUSR1, then for
                                 about as long again as it ran before it, re-checking results)

Threads: main, 4 workers and a sleeper (threading.Thread), i.e. 6 from before "ready" until
the end. The workers take task numbers from a queue.Queue and put (i, value) on a result
queue; task i chains hashlib.sha256 2000 times over b"task I" and runs a pure-Python 64-bit
LCG and a big-integer pow(), about 0.75 ms of work holding the GIL (a 32-byte update does not
release it), so the threads hand the GIL to each other all the time. The sleeper loops
time.sleep(0.002) until a threading.Event is set. The main thread keeps at most 8 tasks
outstanding, feeding continuously, and waits for results with result_queue.get(timeout=0.05).

SIGUSR1 has a Python handler (signal.signal) that only sets a flag; the main thread runs it
(CPython calls handlers in the main thread), and the 50 ms timeouts bound how long it takes to
notice. After the signal exactly 100 more tasks are fed; when all results are in, the workers
get one None each (their stop), the Event is set, every thread is joined, and every result is
recomputed in the main thread: each task number fed must have come back exactly once, with the
same value.

Output (stdout, print(..., flush=True), one line at a time, only from the main thread):
    "threads start"
    "ready"                     100 results in, all 6 threads running (the marker)
    "signal SIGUSR1"            the handler ran; 100 more tasks follow
    "tasks: results verified"   every task's value equals its recomputation
    "threads: joined"           every thread joined and no longer alive
    "done"
Exit status 0; on any inconsistency "FAIL: ..." on stdout and exit status 1. Nothing printed
depends on timing (how many tasks ran before the signal), thread ids or PYTHONHASHSEED.
"""
import hashlib
import queue
import signal
import sys
import threading
import time

WORKERS = 4
OUTSTANDING = 8
READY = 100
EXTRA = 100
MASK = (1 << 64) - 1


def say(line):
    print(line, flush=True)


def fail(what):
    say("FAIL: %s" % what)
    sys.exit(1)


def compute(i):
    h = hashlib.sha256(b"task %d" % i).digest()
    for _ in range(2000):
        h = hashlib.sha256(h).digest()
    a = i
    for _ in range(300):
        a = (a * 6364136223846793005 + 1442695040888963407) & MASK
    b = pow(i + 3, 65537, (1 << 127) - 1)
    return h.hex(), a, b


tasks = queue.Queue()
results = queue.Queue()
stop_sleeping = threading.Event()
got_signal = False


def on_usr1(signum, frame):
    global got_signal
    got_signal = True


def worker(n):
    try:
        while True:
            i = tasks.get()
            if i is None:
                return
            results.put((i, compute(i)))
    except BaseException as e:  # tell the main thread instead of hanging it
        results.put(("error", "worker %d: %r" % (n, e)))


def sleeper():
    while not stop_sleeping.is_set():
        time.sleep(0.002)


say("threads start")
signal.signal(signal.SIGUSR1, on_usr1)
threads = [threading.Thread(target=worker, args=(n,), name="worker-%d" % n) for n in range(WORKERS)]
threads.append(threading.Thread(target=sleeper, name="sleeper"))
for t in threads:
    t.start()

got = {}
fed = 0
ready = False
signalled = False
extra = 0
while not (signalled and extra == EXTRA and len(got) == fed):
    while fed - len(got) < OUTSTANDING and (not signalled or extra < EXTRA):
        tasks.put(fed)
        fed += 1
        if signalled:
            extra += 1
    try:
        i, value = results.get(timeout=0.05)
    except queue.Empty:
        i = None
    if i == "error":
        fail(value)
    if i is not None:
        if not (isinstance(i, int) and 0 <= i < fed):
            fail("result for task %r, which was never fed" % (i,))
        if i in got:
            fail("task %d came back twice" % i)
        got[i] = value
        if not ready and len(got) >= READY:
            say("ready")
            ready = True
    if got_signal and not signalled:
        say("signal SIGUSR1")
        signalled = True

for _ in range(WORKERS):
    tasks.put(None)
stop_sleeping.set()
for t in threads:
    t.join()
if not results.empty():
    fail("results left over after every task came back")
for i in range(fed):
    if got.get(i) != compute(i):
        fail("task %d: got %r, recomputed %r" % (i, got.get(i), compute(i)))
say("tasks: results verified")
if any(t.is_alive() for t in threads) or threading.active_count() != 1:
    fail("%d threads still alive after joining" % threading.active_count())
say("threads: joined")
say("done")
