"""fifo_tree.py - ferry test workload: a FIFO shared by a process and its child.

Usage:   python3 fifo_tree.py     (in a writable directory: it makes ./shared.fifo)

The parent makes the FIFO and opens its read end (non-blocking); its child opens the write
end and writes "in flight;" at once, then "after the move;" 1.5 s later, and exits. The parent
prints "ready" 0.5 s after the fork (the first bytes are in the FIFO then), waits 2 s, reads
until the child's end closes, reaps the child and removes the FIFO.

Output (stdout):
    "ready"
    "in flight;after the move; 0"
    "done"
Exit status 0. Nothing printed depends on timing or pids.
"""
import os
import time

os.mkfifo("shared.fifo")
r = os.open("shared.fifo", os.O_RDONLY | os.O_NONBLOCK)
child = os.fork()
if child == 0:
    w = os.open("shared.fifo", os.O_WRONLY)
    os.write(w, b"in flight;")
    time.sleep(1.5)
    os.write(w, b"after the move;")
    os._exit(0)
time.sleep(0.5)
print("ready", flush=True)
time.sleep(2)
os.set_blocking(r, True)
data = b""
while True:
    chunk = os.read(r, 100)
    if not chunk:
        break
    data += chunk
_, status = os.waitpid(child, 0)
os.unlink("shared.fifo")
print(data.decode(), status, flush=True)
print("done", flush=True)
