"""sysv_tree.py - ferry test workload: SysV shared memory between a process and its child.

Usage:   python3 sysv_tree.py

The parent makes two SysV segments (through libc, with ctypes): an IPC_PRIVATE one of
1 MiB + 100 bytes, filled with a pattern and marked for removal (IPC_RMID) once parent and
child hold it, and a 64 KiB one with a key, holding a counter. It forks; the child attaches the
keyed one a second time read-only, then for 3 s bumps the counter every 0.1 s and writes one
page of the private one each time. The parent prints "ready" 0.5 s after the fork, reaps the
child, and checks what the child did: the counter, the pages, that the key still finds the
same id, that its ids still work with shmctl.

Output (stdout):
    "ready"
    "counter 30 seen read-only 30"
    "pattern ok"
    "key finds the same id: True"
    "done"
Exit status 0. Nothing printed depends on timing, pids or ids.
"""
import ctypes
import os
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
libc.shmdt.argtypes = [ctypes.c_void_p]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]

IPC_PRIVATE, IPC_RMID, IPC_STAT = 0, 0, 2
IPC_CREAT, IPC_EXCL, SHM_RDONLY = 0o1000, 0o2000, 0o10000
PAGE = 4096
ROUNDS = 30


def check(value, what):
    if value == -1 or value is None or value == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return value


def attach(shmid, flags=0):
    return check(libc.shmat(shmid, None, flags), "shmat")


def view(addr, size):
    return (ctypes.c_ubyte * size).from_address(addr)


BIG = (1 << 20) + 100
key = 0x46520000 + (os.getpid() & 0xFFFF)
private = check(libc.shmget(IPC_PRIVATE, BIG, 0o600), "shmget(private)")
keyed = check(libc.shmget(key, 1 << 16, IPC_CREAT | IPC_EXCL | 0o640), "shmget(key)")
big = view(attach(private), BIG)
for i in range(0, BIG, 997):
    big[i] = i % 251
counter = ctypes.c_uint64.from_address(attach(keyed))
counter.value = 0

child = os.fork()
if child == 0:
    seen = ctypes.c_uint64.from_address(attach(keyed, SHM_RDONLY))
    for round in range(ROUNDS):
        time.sleep(0.1)
        counter.value += 1
        page = 8 + round
        for i in range(page * PAGE, (page + 1) * PAGE):
            big[i] = (round * 7 + i) % 256
    # The keyed segment as the read-only attachment sees it, after the rounds.
    ctypes.c_uint64.from_address(ctypes.addressof(counter) + 8).value = seen.value
    os._exit(0)

time.sleep(0.1)
check(libc.shmctl(private, IPC_RMID, None), "shmctl(IPC_RMID)")
time.sleep(0.4)
print("ready", flush=True)
_, status = os.waitpid(child, 0)
assert status == 0, status
seen = ctypes.c_uint64.from_address(ctypes.addressof(counter) + 8).value
print("counter", counter.value, "seen read-only", seen, flush=True)
child_pages = range(8 * PAGE, (8 + ROUNDS) * PAGE)
ok = all(big[i] == i % 251 for i in range(0, BIG, 997) if i not in child_pages)
for round in range(ROUNDS):
    page = 8 + round
    ok = ok and all(
        big[i] == (round * 7 + i) % 256 for i in range(page * PAGE, (page + 1) * PAGE, 61)
    )
print("pattern", "ok" if ok else "broken", flush=True)
again = libc.shmget(key, 0, 0)
print("key finds the same id:", again == keyed, flush=True)
stat = ctypes.create_string_buffer(256)
check(libc.shmctl(keyed, IPC_STAT, stat), "shmctl(IPC_STAT)")
check(libc.shmctl(keyed, IPC_RMID, None), "shmctl(IPC_RMID)")
print("done", flush=True)
