"""pool.py - ferry test workload: an unmodified python3 multiprocessing.Pool (a process tree).

Usage:   python3 pool.py     ("ready" once the pool runs; about 3 s of work in all)

The main process starts a Pool of 2 worker processes (fork start method): the workers are
its children, tasks and results travel through pipes (multiprocessing's SimpleQueue), and
the queues' locks are POSIX semaphores in /dev/shm that were unlinked once mapped (shared
memory with no name, mapped by the main process and both workers). The main process also runs
the pool's handler threads. Each of 60 tasks chains sha256 over 20000 strings and sleeps
50 ms; results come back in order (imap) and are printed as they arrive.

Output (stdout, one line per result, from the main process only):
    "pool start"
    "ready"
    "I DIGEST"          for I in 0..59, in order (DIGEST: 12 hex digits)
    "done"
Exit status 0. Nothing printed depends on timing or pids.
"""
import hashlib
import multiprocessing as mp
import time


def work(i):
    h = hashlib.sha256()
    for k in range(20000):
        h.update(b"%d-%d" % (i, k))
    time.sleep(0.05)
    return i, h.hexdigest()[:12]


if __name__ == "__main__":
    mp.set_start_method("fork")
    print("pool start", flush=True)
    with mp.Pool(2) as pool:
        print("ready", flush=True)
        for i, digest in pool.imap(work, range(60)):
            print(i, digest, flush=True)
    print("done", flush=True)
