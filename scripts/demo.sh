#!/usr/bin/env bash
# ferry's main job, as a demo on this machine: a local cluster of 3 test hosts (network
# namespaces with their own daemons, scripts/testnet.sh); a running, unmodified python3 job is
# moved from host to host while it runs, once with each of the five algorithms
# (n1 -> n2 -> n3 -> n1 -> n2 -> n3), and finishes with exactly the output of an uninterrupted
# run. Prints every migration's metrics. Then two processes exchange messages while one of them
# migrates, 6 CPU-bound jobs spread over 3 half-CPU hosts, and a shell pipeline (a process
# tree) is checkpointed mid-run and restored with its pids. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [[ $(id -u) -ne 0 ]]; then
  echo "demo: ferry creates network namespaces and restores processes with their credentials: run as root" >&2
  exit 1
fi
scripts/setup.sh
[[ -f "$HOME/.cargo/env" ]] && . "$HOME/.cargo/env"
echo "== building ferry (release)"
cargo build --release --locked -q -p ferry
ferry=$root/target/release/ferry
export FERRY=$ferry FERRY_RUN=/run/ferry-demo
work=${FERRY_DEMO_DIR:-/tmp/ferry-demo}
rm -rf "$work" && mkdir -p "$work"
job=(python3 "$root/workloads/python/compute.py" 40)
tn=$root/scripts/testnet.sh

echo "== a cluster of 3 hosts"
"$tn" up 3
trap '"$tn" down >/dev/null 2>&1 || true' EXIT

echo "== the job, uninterrupted (reference)"
ref=$("$tn" exec n1 --detach --out "$work/reference.out" -- "${job[@]}")
while [[ -e /proc/$ref && $(awk '{print $3}' "/proc/$ref/stat" 2>/dev/null) != Z ]]; do sleep 0.2; done
tail -n 1 "$work/reference.out"

echo "== the job again, on n1; moved while it runs"
pid=$("$tn" exec n1 --detach --out "$work/job.out" -- "${job[@]}")
until grep -q "^step 3:" "$work/job.out" 2>/dev/null; do sleep 0.05; done
here=n1
n=0
for hop in n2:total-copy n3:pre-copy n1:demand-paging n2:file-server n3:freeze-free; do
  to=${hop%%:*} algorithm=${hop#*:}
  n=$((n + 1))
  echo "   $here -> $to with $algorithm (pid $pid, $(wc -l <"$work/job.out") lines so far)"
  "$tn" exec "$here" -- "$ferry" migrate "$pid" --to "$to" --algorithm "$algorithm" --json --wait 2 \
    >"$work/report-$n.json"
  pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["new_pid"])' "$work/report-$n.json")
  here=$to
  sleep 0.7
done

echo "== the metrics of each migration (docs/migration.md defines them)"
python3 - "$work"/report-{1..5}.json <<'PY'
import json, sys
rows = [json.load(open(p)) for p in sys.argv[1:]]
head = ["algorithm", "from", "to", "latency ms", "freeze ms", "excision ms", "insertion ms",
        "residual ms", "state B", "pages B", "resent B", "store B", "faults", "fault p50 ms", "rounds"]
def f(v):
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
table = [[r["algorithm"], r["from"], r["to"], f(r["latency_ms"]), f(r["freeze_ms"]),
          f(r["excision_ms"]), f(r["insertion_ms"]),
          f(r.get("residual_ms")) if r.get("residual_ms") is not None else "still serving",
          f(r["state_bytes"]), f(r["page_bytes"]), f(r["resent_bytes"]), f(r["store_bytes"]),
          f(r["remote_faults"]["count"]), f(r["remote_faults"]["median_ms"]), f(r["precopy_rounds"])]
         for r in rows]
w = [max(len(str(x)) for x in col) for col in zip(head, *table)]
for line in [head] + table:
    print("  ".join(str(x).rjust(n) for x, n in zip(line, w)))
PY

echo "== waiting for the job to finish on $here"
while [[ -e /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do sleep 0.2; done
tail -n 1 "$work/job.out"
if cmp -s "$work/reference.out" "$work/job.out"; then
  echo "== identical to the uninterrupted run ($(wc -c <"$work/job.out") bytes), after 5 moves: ok"
else
  diff "$work/reference.out" "$work/job.out" | head
  echo "demo: the outputs differ" >&2
  exit 1
fi

echo "== messages: an echo on n1 and a pinger on n3 exchange numbered messages without pause;"
echo "   the echo moves n1 -> n2 (freeze-free) -> n1 (total-copy) meanwhile (docs/messages.md)"
mkdir -p "$work/echo" "$work/ping"
epid=$(cd "$work/echo" && "$tn" exec n1 --detach --out "$work/echo/out" -- "$ferry" bench msg-echo --name demo-echo)
until [[ -e $work/echo/ready ]]; do sleep 0.05; done
(cd "$work/ping" && "$tn" exec n3 --detach --out "$work/ping/out" -- "$ferry" bench msg-ping --name demo-ping --to demo-echo >/dev/null)
until [[ -e $work/ping/ready ]]; do sleep 0.05; done
here=n1
for hop in n2:freeze-free n1:total-copy; do
  to=${hop%%:*} algorithm=${hop#*:}
  sleep 1
  "$tn" exec "$here" -- "$ferry" migrate "$epid" --to "$to" --algorithm "$algorithm" --json >"$work/msg-report.json"
  epid=$(python3 - "$work/msg-report.json" "$work/ping/echoed" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
echoed = open(sys.argv[2]).read().strip()
print(f"   {r['from']} -> {r['to']} with {r['algorithm']}: process freeze {r['freeze_ms']:.1f} ms, "
      f"message freeze {r['links']['message_freeze_ms']:.2f} ms ({echoed} round trips so far)",
      file=sys.stderr)
print(r["new_pid"])
PY
)
  here=$to
done
sleep 1
touch "$work/ping/stop"
until [[ -e $work/ping/summary.json ]]; do sleep 0.1; done
sleep 0.2
python3 - "$work/ping/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
ok = s["lost"] == s["duplicated"] == s["reordered"] == 0 and s["sent"] == s["echoed"]
print(f"== {s['sent']} messages sent, {s['echoed']} echoed in order, {s['lost']} lost, "
      f"{s['duplicated']} duplicated: {'ok' if ok else 'FAILED'}")
sys.exit(0 if ok else 1)
PY

echo "== load sharing: 3 hosts with half a CPU each, automatic migration on (docs/load-sharing.md)"
"$tn" up 3 --cpu-quota 50 --auto-migrate >/dev/null
sleep 2
mkdir -p "$work/jobs"
echo "   6 CPU-bound jobs submitted at n1 (ferry run --on n1), each ~3 CPU seconds"
for _ in 1 2 3 4 5 6; do
  (cd "$work/jobs" && "$tn" exec n1 -- "$ferry" run --on n1 -- "$ferry" bench spin --units 3000 | head -n 1)
done
start=$(date +%s.%N)
sleep 5
echo "== ferry nodes (as n1 sees the cluster) and ferry ps, 5 s later"
"$tn" exec n1 -- "$ferry" nodes
"$tn" exec n3 -- "$ferry" ps
until "$tn" exec n1 -- "$ferry" ps --json | python3 -c '
import json, sys
jobs = json.load(sys.stdin)
sys.exit(0 if len(jobs) >= 6 and all(j["ended_ms"] is not None for j in jobs) else 1)'; do
  sleep 0.5
done
"$tn" exec n1 -- "$ferry" ps
echo "== all 6 jobs done in $(python3 -c "import time; print(round(time.time() - $start + 0.0, 1))") s after submission (all on n1 alone: ~36 s; ideal: 12 s)"

echo "== a process tree on this host: sh -c 'cat | gzip | sha256sum', checkpointed mid-run and restored with its pids"
rm -rf "$work/tree-image"
seq 1 25000000 >"$work/input"
want=$(gzip -n -1 <"$work/input" | sha256sum)
(
  # Nothing this script inherited (a pipe of whoever runs it) may go with the tree: a pipe
  # shared with a process outside it would keep it immobile.
  for fd in /proc/$BASHPID/fd/*; do
    n=${fd##*/}
    if ((n > 2)); then eval "exec $n>&-"; fi
  done 2>/dev/null
  exec sh -c 'exec <"$1"; cat | gzip -n -1 | sha256sum' sh "$work/input" </dev/null >"$work/tree.out" 2>&1
) &
tree=$!
disown "$tree" # reaped by this shell when ferry ends it, without a "Killed" notice
sleep 0.5
"$ferry" checkpoint "$tree" --dir "$work/tree-image"
"$ferry" inspect "$work/tree-image" | sed -n '/^process tree/,$p'
"$ferry" restore --dir "$work/tree-image"
if [[ "$(cat "$work/tree.out")" == "$want" ]]; then
  echo "== the restored pipeline printed what an uninterrupted run prints: ok"
else
  echo "== the restored pipeline printed $(cat "$work/tree.out"), not $want: FAILED"
  exit 1
fi
