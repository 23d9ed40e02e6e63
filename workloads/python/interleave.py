"""interleave.py - ferry test workload: stdout and stderr sharing one open file description.

Usage:   python3 interleave.py          (about 3 s), started with `> OUT 2>&1`

Writes "out I" to fd 1 and "err I" to fd 2 in turn, 60 lines, 50 ms apart, with os.write (no
buffering), then "done". Both fds share one file offset; a restore that opened the file twice
would make the two streams overwrite each other, and the output would differ.

Marker for tests: "err 9" (then 2.5 s more).
"""
import os
import time

for i in range(60):
    fd = 1 if i % 2 == 0 else 2
    os.write(fd, ("%s %d\n" % ("out" if fd == 1 else "err", i)).encode())
    time.sleep(0.05)
os.write(1, b"done\n")
