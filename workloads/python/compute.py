#!/usr/bin/env python3
"""compute.py - ferry test workload: an unmodified CPython interpreter doing pure-Python work.

Usage:   python3 compute.py [STEPS]        (default 24 steps, about 4-5 s in total)

Output (stdout, flushed after every line):
    "compute start steps=STEPS"
    "step I: primes=N sum=S chain=XXXXXXXXXXXXXXXX words=W"   I = 0..STEPS-1
    "result CHAIN-HEX"
    "done"
Exit status 0.

Each step sieves a segment of integers for primes in pure Python, folds them into a 64-bit
hash chain, rebuilds a dictionary of word counts from a seeded random.Random, and then sleeps
150 ms (time.sleep, i.e. the interpreter blocked in a select/clock_nanosleep). Everything
printed is deterministic: no times, no pids, no addresses, no hash() of str (PYTHONHASHSEED
varies).

Exercises: the interpreter's heap (arenas, many small objects, a growing dict), its many
file-backed mappings (the executable, libpython, extension modules), and a sleep inside the
interpreter. Marker for tests: "step 3:" (the process is mid-run).
"""

import random
import sys
import time

MASK = (1 << 64) - 1
SEGMENT = 150_000


def primes_in(lo, hi):
    """Primes in [lo, hi) by a segmented sieve, in pure Python."""
    limit = int(hi ** 0.5) + 1
    base = [True] * (limit + 1)
    base[0:2] = [False, False]
    for i in range(2, int(limit ** 0.5) + 1):
        if base[i]:
            base[i * i :: i] = [False] * len(base[i * i :: i])
    small = [i for i, is_p in enumerate(base) if is_p]
    seg = [True] * (hi - lo)
    for p in small:
        start = max(p * p, (lo + p - 1) // p * p)
        for m in range(start, hi, p):
            seg[m - lo] = False
    return [lo + i for i, is_p in enumerate(seg) if is_p and lo + i >= 2]


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    print(f"compute start steps={steps}", flush=True)
    rng = random.Random(20240607)
    vocab = ["".join(rng.choice("abcdefghij") for _ in range(4)) for _ in range(300)]
    words = {}
    chain = 0x9E3779B97F4A7C15
    for step in range(steps):
        primes = primes_in(step * SEGMENT, (step + 1) * SEGMENT)
        for p in primes:
            chain = ((chain ^ p) * 0x100000001B3) & MASK
            chain ^= chain >> 29
        for _ in range(5_000):
            w = rng.choice(vocab)
            words[w] = words.get(w, 0) + 1
        top = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        chain = ((chain ^ top[1]) * 0x100000001B3) & MASK
        print(
            f"step {step}: primes={len(primes)} sum={sum(primes)} "
            f"chain={chain:016x} words={len(words)}",
            flush=True,
        )
        time.sleep(0.15)
    print(f"result {chain:016x}", flush=True)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
