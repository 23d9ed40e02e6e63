#!/usr/bin/env bash
# ferry's main job, as a demo on this machine: a running, unmodified python3 job is
# checkpointed mid-run (it ends), inspected, brought back to life, and finishes with exactly
# the output of an uninterrupted run. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [[ $(id -u) -ne 0 ]]; then
  echo "demo: ferry checkpoints processes with ptrace and restores their credentials: run as root" >&2
  exit 1
fi
scripts/setup.sh
[[ -f "$HOME/.cargo/env" ]] && . "$HOME/.cargo/env"
echo "== building ferry (release)"
cargo build --release --locked -q -p ferry
ferry=$root/target/release/ferry
work=${FERRY_DEMO_DIR:-/tmp/ferry-demo}
rm -rf "$work" && mkdir -p "$work" && cd "$work"
job=(python3 "$root/workloads/python/compute.py" 24)

# Start a process with only stdin/stdout/stderr open (nothing inherited from this shell).
start() { # start OUTFILE CMD...
  local out=$1; shift
  python3 - "$out" "$@" <<'PY'
import os, sys
out = sys.argv[1]
pid = os.fork()
if pid == 0:
    os.setsid()
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1); os.dup2(fd, 2)
    os.closerange(3, 1 << 16)
    os.execvp(sys.argv[2], sys.argv[2:])
print(pid)
PY
}

echo "== the job, uninterrupted (reference)"
pid=$(start reference.out "${job[@]}")
while [[ -e /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do sleep 0.2; done
tail -n 2 reference.out

echo "== the job again; checkpointed mid-run"
pid=$(start job.out "${job[@]}")
until grep -q "^step 8:" job.out 2>/dev/null; do sleep 0.05; done
echo "   pid $pid has printed $(wc -l < job.out) lines"
"$ferry" checkpoint "$pid" --dir image
state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
[[ $state == Z || $state == gone ]] || { echo "demo: pid $pid should have ended (state $state)" >&2; exit 1; }
echo "== the image"
"$ferry" inspect image | sed -n '1,9p'
echo "== restored: it continues where it was, and ferry waits for it"
"$ferry" restore --dir image --json 2>restore.json
python3 -c 'import json; r = json.load(open("restore.json")); print("   restored as pid %(pid)d in %(total_ms).1f ms (%(mappings)d mappings, %(memory_bytes)d bytes of memory)" % r)'
tail -n 2 job.out
if cmp -s reference.out job.out; then
  echo "== identical to the uninterrupted run ($(wc -c < job.out) bytes): ok"
else
  diff reference.out job.out | head
  echo "demo: the outputs differ" >&2
  exit 1
fi
