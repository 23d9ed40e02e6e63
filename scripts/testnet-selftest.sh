#!/usr/bin/env bash
# Self-test of scripts/testnet.sh, with a stand-in for `ferry daemon` (a python3 program that
# listens on the config's Unix socket and TCP address and answers each connection with its node
# name), so that it runs before the real daemon exists. Checks namespaces, addresses, routes,
# connectivity, cgroups and CPU quotas, shaping, kill/start, up twice, down (twice) and failed
# ups; prints PASS/FAIL per check and exits 1 if any failed. Needs root and python3; ~1 minute.
# If a ferry binary is there (target/release/ferry, or $FERRY_REAL), one more check moves a job
# from n1 to n2 with `ferry checkpoint` / `ferry restore`.
# It refuses to run while a test cluster is up (FERRY_SELFTEST_FORCE=1: take it down).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
tn=$PWD/scripts/testnet.sh

if [[ $(id -u) -ne 0 ]]; then
  echo "testnet-selftest: run as root" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "testnet-selftest: needs python3" >&2; exit 1; }
if { [[ -e /sys/class/net/ferrybr0 ]] || ip netns list | grep -q '^ferry-n'; } && [[ ${FERRY_SELFTEST_FORCE:-} != 1 ]]; then
  echo "testnet-selftest: a test cluster is up; it would be taken down (FERRY_SELFTEST_FORCE=1 to go ahead)" >&2
  exit 1
fi

run=${FERRY_RUN:-/run/ferry}
tmp=$(mktemp -d /tmp/ferry-testnet-selftest.XXXXXX)
cleanup() {
  "$tn" down >/dev/null 2>&1
  FERRY_RUN=$tmp/run "$tn" down >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
export FERRY=$tmp/ferry
real_ferry=${FERRY_REAL:-$PWD/target/release/ferry}

# ---- stand-ins and tools ---------------------------------------------------------------------

cat >"$tmp/ferry" <<'EOF'
#!/usr/bin/env python3
# Stand-in for `ferry daemon --config FILE`.
import os, re, selectors, signal, socket, sys
a = sys.argv[1:]
if a[:1] != ["daemon"]:
    sys.exit("stand-in: only 'daemon' is supported")
if "--help" in a:
    print("stand-in ferry daemon"); sys.exit(0)
cfg = a[a.index("--config") + 1]
conf = dict(re.findall(r'^(\w+) = "?([^"\n]*)"?$', open(cfg).read(), re.M))
node, path = conf["node"], conf["socket"]
host, port = conf["listen"].rsplit(":", 1)
u = socket.socket(socket.AF_UNIX); u.bind(path); u.listen(16)
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((host, int(port))); t.listen(16)
print(f"stand-in {node} pid {os.getpid()} on {conf['listen']} and {path}", flush=True)
def bye(*_):
    print(f"stand-in {node}: SIGTERM", flush=True)
    try: os.unlink(path)
    except OSError: pass
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
sel = selectors.DefaultSelector()
sel.register(u, selectors.EVENT_READ); sel.register(t, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        c, _ = key.fileobj.accept()
        try: c.sendall((node + "\n").encode())
        except OSError: pass
        c.close()
EOF
cat >"$tmp/bad-ferry" <<'EOF'
#!/bin/sh
[ "$2" = --help ] && exit 0
echo "stand-in refuses to start: boom" >&2
exit 1
EOF
cat >"$tmp/mute-ferry" <<'EOF'
#!/bin/sh
[ "$2" = --help ] && exit 0
echo "stand-in that never opens its socket"
exec sleep 600
EOF
chmod +x "$tmp/ferry" "$tmp/bad-ferry" "$tmp/mute-ferry"

# ping ADDR: one ICMP echo, 1 s timeout (raw socket; iputils may not be installed)
cat >"$tmp/ping.py" <<'EOF'
import os, socket, struct, sys, time
addr = sys.argv[1]
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
ident, payload = os.getpid() & 0xFFFF, b"ferry-selftest"
pkt = struct.pack("!BBHHH", 8, 0, csum(struct.pack("!BBHHH", 8, 0, 0, ident, 1) + payload), ident, 1) + payload
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(1.0)
try:
    s.sendto(pkt, (addr, 0))
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        data, src = s.recvfrom(2048)
        ihl = (data[0] & 15) * 4
        typ, _, _, i, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if src[0] == addr and typ == 0 and i == ident:
            sys.exit(0)
except OSError as e:
    print(f"ping {addr}: {e}")
sys.exit(1)
EOF

# get HOST PORT|PATH: connect, print what the peer says (first line)
cat >"$tmp/get.py" <<'EOF'
import socket, sys
try:
    if sys.argv[1].startswith("/"):
        s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])
    else:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)
    print(s.recv(100).decode().strip())
except OSError as e:
    print(f"error: {e}"); sys.exit(1)
EOF

# tp.py server ADDR PORT | client ADDR PORT SECONDS: TCP throughput, the server prints Mbit/s
cat >"$tmp/tp.py" <<'EOF'
import socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(1); s.settimeout(20)
    c, _ = s.accept(); c.settimeout(20)
    n, buf, t0 = 0, bytearray(1 << 20), None
    while True:
        k = c.recv_into(buf)
        if not k: break
        if t0 is None: t0 = time.monotonic()
        n += k
    print(f"{n * 8 / (time.monotonic() - t0) / 1e6:.0f}")
else:
    end = time.monotonic() + 5
    while True:
        try: c = socket.create_connection((host, port), 2); break
        except OSError:
            if time.monotonic() > end: raise
            time.sleep(0.05)
    data, end = b"\0" * (1 << 20), time.monotonic() + float(sys.argv[4])
    while time.monotonic() < end: c.sendall(data)
    c.close()
EOF

# ---- harness ---------------------------------------------------------------------------------

pass=0
fail=0
# check NAME CMD...: CMD's output is the detail; its last line is shown with PASS, all of it with FAIL
check() {
  local name=$1 out rc
  shift
  out=$("$@" 2>&1)
  rc=$?
  if ((rc == 0)); then
    pass=$((pass + 1))
    printf 'PASS %s%s\n' "$name" "${out:+: ${out##*$'\n'}}"
  else
    fail=$((fail + 1))
    printf 'FAIL %s\n' "$name"
    [[ -z $out ]] || printf '%s\n' "$out" | sed 's/^/    /'
  fi
  return "$rc"
}
expect() { # expect WHAT CONDITION...: prints WHAT when the test fails
  local what=$1
  shift
  "$@" || { echo "expected: $what"; return 1; }
}

on() { timeout 30 "$tn" exec "$@"; }
ping_from() { on "$1" python3 "$tmp/ping.py" "$2"; }
get_from() { on "$1" python3 "$tmp/get.py" "$2" "${3:-}"; }
pid_of() { cat "$run/$1.pid"; }
alive() { [[ -e /proc/$1 ]] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
netns_inode() { stat -Lc %i "/run/netns/ferry-$1"; }
cpu_ns() { awk '{print $1}' "/proc/$1/schedstat"; } # time on CPU, ns

# throughput FROM TO: Mbit/s from node FROM to node TO over 2 s
throughput() {
  local k=${2#n}
  on "$2" python3 "$tmp/tp.py" server "10.77.0.$k" 5001 >"$tmp/tp.out" 2>&1 &
  local srv=$!
  on "$1" python3 "$tmp/tp.py" client "10.77.0.$k" 5001 2 >/dev/null 2>&1
  wait "$srv"
  cat "$tmp/tp.out"
}

# No trace of a cluster: namespaces, links, cgroups, run dir, stand-in processes.
no_junk() {
  local bad=0 r
  if ip netns list | grep -q '^ferry-n'; then echo "namespaces left: $(ip netns list | grep '^ferry-n' | tr '\n' ' ')"; bad=1; fi
  if ip -o link show | grep -Eq ': (ferrybr0|vferry-n[0-9])'; then echo "links left: $(ip -o link show | grep -Eo ': (ferrybr0|vferry-n[0-9]+)' | tr '\n' ' ')"; bad=1; fi
  for r in /sys/fs/cgroup/cpu /sys/fs/cgroup/cpuacct /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [[ -d $r/ferry && $(stat -fc %T "$r") == cgroup* ]]; then echo "cgroup left: $r/ferry"; bad=1; fi
  done
  for r in "$run" "$tmp/run"; do
    if [[ -e $r ]]; then echo "run dir left: $r ($(find "$r" -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null))"; bad=1; fi
  done
  if pgrep -f "$tmp/[a-z-]*ferry daemon" >/dev/null; then echo "stand-in daemons left: $(pgrep -f "$tmp/[a-z-]*ferry daemon" | tr '\n' ' ')"; bad=1; fi
  ((bad == 0)) && echo "nothing left"
  return "$bad"
}

# ---- checks ----------------------------------------------------------------------------------

t_down_nothing() {
  "$tn" down && "$tn" down && no_junk
}

t_usage() {
  local args rc bad=0
  for args in "up" "up 0" "up 9" "up x" "up 2 --cpu-quota 0" "up 2 --cpu-quota 50,50,50" "up 2 --bogus" \
    "exec n9 true" "exec n1" "shape 1foo" "kill nx" "quota n1 900" "frobnicate"; do
    # shellcheck disable=SC2086
    "$tn" $args >"$tmp/usage.out" 2>&1
    rc=$?
    if ((rc != 2)); then echo "'testnet.sh $args' exited $rc, not 2: $(cat "$tmp/usage.out")"; bad=1; fi
  done
  ((bad == 0)) && echo "13 bad command lines exit 2 with a message, e.g.: $(head -n1 "$tmp/usage.out")"
  return "$bad"
}

t_missing_binary() {
  local out rc
  out=$(FERRY=$tmp/nope "$tn" up 1 2>&1)
  rc=$?
  expect "exit 1, not $rc" test "$rc" -eq 1 &&
    expect "a hint to build ferry, got: $out" grep -q 'cargo build --release -p ferry' <<<"$out" &&
    no_junk >/dev/null && echo "$(head -n1 <<<"$out") ..."
}

t_failed_up() {
  local out rc
  out=$(FERRY=$tmp/bad-ferry "$tn" up 2 2>&1)
  rc=$?
  expect "up with a daemon that exits to fail, it exited $rc" test "$rc" -ne 0 &&
    expect "the log tail (boom) in the message: $out" grep -q boom <<<"$out" || return 1
  if ! { "$tn" down && no_junk >/dev/null; }; then no_junk; return 1; fi
  echo "up failed (rc $rc) showing the daemon's log; down then left nothing"
}

t_mute_daemon() {
  local out rc t0=$SECONDS
  out=$(FERRY=$tmp/mute-ferry "$tn" up 1 2>&1)
  rc=$?
  expect "up with a daemon that never makes its socket to fail" test "$rc" -ne 0 &&
    expect "a message about the socket: $out" grep -q 'did not create' <<<"$out" || return 1
  if ! { "$tn" down && no_junk >/dev/null; }; then no_junk; return 1; fi
  echo "up failed after $((SECONDS - t0)) s (10 s timeout); down then left nothing"
}

t_up() {
  "$tn" up 3 >"$tmp/up.out" 2>&1 || { cat "$tmp/up.out"; return 1; }
  expect "3 rows in the table" test "$(grep -Ec '^n[1-3] +10\.77\.0\.[1-3]:7070 +100% +/.*\.sock +[0-9]+$' "$tmp/up.out")" -eq 3 ||
    { cat "$tmp/up.out"; return 1; }
  echo "$(grep -c '^n[0-9]' "$tmp/up.out") hosts, e.g. $(grep '^n1' "$tmp/up.out" | tr -s ' ')"
}

t_run_dir() {
  local k
  expect "secret mode 600" test "$(stat -c %a "$run/secret")" = 600 &&
    expect "secret = 64 hex characters" grep -Eqx '[0-9a-f]{64}' "$run/secret" &&
    expect "store/ and n1..n3/ dirs" test -d "$run/store" -a -d "$run/n1" -a -d "$run/n2" -a -d "$run/n3" || return 1
  for k in 1 2 3; do
    python3 - "$run" "$k" <<'EOF' || return 1
import sys, tomllib
run, k = sys.argv[1], int(sys.argv[2])
c = tomllib.load(open(f"{run}/n{k}.toml", "rb"))
want = {"node": f"n{k}", "listen": f"10.77.0.{k}:7070", "socket": f"{run}/n{k}.sock",
        "secret_file": f"{run}/secret", "state_dir": f"{run}/n{k}", "page_store": f"{run}/store",
        "encrypt_pages": True}
for key, v in want.items():
    assert c.get(key) == v, f"n{k}.toml: {key} = {c.get(key)!r}, want {v!r}"
assert c["cgroup"].endswith(f"/ferry/n{k}"), c["cgroup"]
peers = [(p["name"], p["addr"]) for p in c["peer"]]
want_peers = [(f"n{j}", f"10.77.0.{j}:7070") for j in (1, 2, 3) if j != k]
assert peers == want_peers, f"n{k}.toml: peers {peers}, want {want_peers}"
assert set(c) == set(want) | {"cgroup", "peer"}, f"n{k}.toml: keys {sorted(c)}"
EOF
    [[ -d $(sed -n 's/^cgroup = "\(.*\)"$/\1/p' "$run/n$k.toml") ]] || { echo "n$k.toml: cgroup dir missing"; return 1; }
  done
  echo "secret 0600 64 hex; n1..n3.toml parse (tomllib) with the expected keys and 2 peers each"
}

t_network() {
  local k ns
  expect "bridge ferrybr0 with 10.77.0.254/24" grep -q 'inet 10.77.0.254/24' <(ip -4 addr show dev ferrybr0) || return 1
  for k in 1 2 3; do
    ns=ferry-n$k
    expect "namespace $ns" test -e "/run/netns/$ns" &&
      expect "eth0 10.77.0.$k/24 in $ns" grep -q "inet 10.77.0.$k/24" <(ip -n "$ns" -4 addr show dev eth0) &&
      expect "lo up in $ns" grep -q 'LOOPBACK,UP' <(ip -n "$ns" link show lo) &&
      expect "default via 10.77.0.254 in $ns" grep -q '^default via 10.77.0.254 dev eth0' <(ip -n "$ns" route) &&
      expect "vferry-n$k on ferrybr0" grep -q 'master ferrybr0' <(ip link show "vferry-n$k") || return 1
  done
  echo "3 namespaces with eth0 10.77.0.K/24, lo up, default via 10.77.0.254; veths on ferrybr0 (10.77.0.254/24)"
}

t_daemons() {
  local k pid
  for k in 1 2 3; do
    pid=$(pid_of "n$k")
    expect "n$k daemon $pid alive" alive "$pid" &&
      expect "n$k daemon in netns ferry-n$k" test "$(stat -Lc %i "/proc/$pid/ns/net")" = "$(netns_inode "n$k")" &&
      expect "n$k daemon in our (the root) mount namespace" test "$(stat -Lc %i "/proc/$pid/ns/mnt")" = "$(stat -Lc %i /proc/$$/ns/mnt)" &&
      expect "n$k daemon in cgroup ferry/n$k" grep -Eq ":(cpu|cpu,cpuacct|cpuacct,cpu)?:/ferry/n$k\$" "/proc/$pid/cgroup" &&
      expect "n$k daemon's stdin /dev/null" test "$(readlink "/proc/$pid/fd/0")" = /dev/null &&
      expect "n$k daemon's stdout in n$k.log" test "$(readlink "/proc/$pid/fd/1")" = "$run/n$k.log" &&
      expect "n$k daemon leads its own session" test "$(awk '{print $6}' "/proc/$pid/stat")" = "$pid" &&
      expect "n$k.sock" test -S "$run/n$k.sock" || return 1
  done
  echo "3 daemons alive, each in its netns and cgroup, own session, stdin /dev/null, output in nK.log"
}

quota_of() { # quota_of K -> "QUOTA PERIOD"
  if [[ -f /sys/fs/cgroup/cpu/ferry/n$1/cpu.cfs_quota_us ]]; then
    echo "$(cat "/sys/fs/cgroup/cpu/ferry/n$1/cpu.cfs_quota_us") $(cat "/sys/fs/cgroup/cpu/ferry/n$1/cpu.cfs_period_us")"
  else
    cat "$(sed -n 's/^cgroup = "\(.*\)"$/\1/p' "$run/n$1.toml")/cpu.max"
  fi
}

t_quota_default() {
  local k
  for k in 1 2 3; do
    expect "n$k quota 100000/100000, got $(quota_of "$k")" test "$(quota_of "$k")" = "100000 100000" || return 1
  done
  echo "quota/period = 100000/100000 us on n1..n3 (one full CPU)"
}

t_ping() {
  local pair
  for pair in "n1 10.77.0.2" "n2 10.77.0.3" "n3 10.77.0.1" "n1 10.77.0.254"; do
    # shellcheck disable=SC2086
    ping_from $pair >/dev/null || { echo "no ICMP echo reply for $pair"; return 1; }
  done
  echo "ICMP echo n1->n2, n2->n3, n3->n1, n1->bridge"
}

t_tcp() {
  local got
  got=$(get_from n1 10.77.0.2 7070) && expect "n2 from 10.77.0.2:7070, got $got" test "$got" = n2 || return 1
  got=$(get_from n3 10.77.0.1 7070) && expect "n1 from 10.77.0.1:7070, got $got" test "$got" = n1 || return 1
  got=$(get_from n2 10.77.0.3 7070) && expect "n3 from 10.77.0.3:7070, got $got" test "$got" = n3 || return 1
  got=$(python3 "$tmp/get.py" "$run/n2.sock") && expect "n2 from n2.sock, got $got" test "$got" = n2 || return 1
  echo "TCP n1->10.77.0.2:7070, n3->n1, n2->n3 answered by the right daemon; n2.sock from the root namespace"
}

t_exec() {
  local out rc
  # shellcheck disable=SC2016 # expanded on the node
  out=$(on n2 sh -c 'echo "$FERRY_NODE $FERRY_SOCKET"')
  expect "FERRY_NODE/FERRY_SOCKET, got $out" test "$out" = "n2 $run/n2.sock" || return 1
  out=$(echo hello | on n2 cat)
  expect "stdin passed through, got $out" test "$out" = hello || return 1
  on n2 sh -c 'exit 7'
  rc=$?
  expect "exit status 7, got $rc" test "$rc" -eq 7 || return 1
  out=$(on n3 sh -c 'stat -Lc %i /proc/self/ns/net; grep -c "/ferry/n3$" /proc/self/cgroup')
  expect "netns and cgroup of n3, got $out" test "$out" = "$(netns_inode n3)"$'\n'"$(grep -c "/ferry/n3$" "/proc/$(pid_of n3)/cgroup")" || return 1
  echo "exec: env FERRY_NODE/FERRY_SOCKET, stdin, exit status 7, netns and cgroup of the node"
}

# With the real ferry binary (not the stand-in): a job started with `exec --detach` on n1 is
# checkpointed there and restored on n2, where it runs in n2's netns and cgroup and finishes
# with the output of an uninterrupted run. Skipped without a ferry binary.
t_real_ferry_move() {
  local ferry=$tmp/ferry-real job=(python3 "$PWD/workloads/python/compute.py" 8) pid new i
  on n3 "${job[@]}" >"$tmp/ref.out" 2>&1 || { echo "reference run failed"; return 1; }
  pid=$(on n1 --detach --out "$tmp/job.out" "${job[@]}")
  for ((i = 0; i < 100; i++)); do
    grep -q '^step 3:' "$tmp/job.out" 2>/dev/null && break
    sleep 0.05
  done
  on n1 "$ferry" checkpoint "$pid" --dir "$tmp/img" >"$tmp/ckpt.out" 2>&1 || { cat "$tmp/ckpt.out"; return 1; }
  new=$(on n2 "$ferry" restore --dir "$tmp/img" --detach 2>"$tmp/restore.err") || { cat "$tmp/restore.err"; return 1; }
  expect "restored pid $new in n2's netns" test "$(stat -Lc %i "/proc/$new/ns/net")" = "$(netns_inode n2)" &&
    expect "restored pid $new in cgroup ferry/n2" grep -q '/ferry/n2$' "/proc/$new/cgroup" || return 1
  for ((i = 0; i < 300; i++)); do
    grep -qx 'done' "$tmp/job.out" && break
    sleep 0.05
  done
  expect "the moved job's output = the uninterrupted run's" cmp -s "$tmp/ref.out" "$tmp/job.out" ||
    { diff "$tmp/ref.out" "$tmp/job.out" | head; return 1; }
  echo "compute.py started on n1, checkpointed after step 3, restored on n2 (netns, cgroup n2), output identical"
}

t_shaping() {
  local u s1 s2 u2
  u=$(throughput n1 n2)
  [[ $u =~ ^[0-9]+$ ]] || { echo "unshaped throughput test failed: $u"; return 1; }
  "$tn" shape 1gbit >/dev/null 2>&1 || { echo "shape 1gbit failed"; return 1; }
  expect "tbf on vferry-n1" grep -q 'tbf.*rate 1Gbit' <(tc qdisc show dev vferry-n1) &&
    expect "tbf on eth0 of ferry-n2" grep -q 'tbf.*rate 1Gbit' <(tc -n ferry-n2 qdisc show dev eth0) &&
    expect "status shows 1Gbit" grep -q '^n3 .* 1Gbit ' <("$tn" status) || return 1
  s1=$(throughput n1 n2)
  "$tn" shape 100mbit >/dev/null 2>&1 || { echo "shape 100mbit failed"; return 1; }
  s2=$(throughput n3 n1)
  "$tn" shape off >/dev/null 2>&1 || { echo "shape off failed"; return 1; }
  expect "no tbf after shape off" test -z "$(tc qdisc show dev vferry-n1 | grep tbf)$(tc -n ferry-n1 qdisc show dev eth0 | grep tbf)" || return 1
  u2=$(throughput n1 n2)
  echo "unshaped $u Mbit/s; shaped 1gbit: $s1 Mbit/s; shaped 100mbit: $s2 Mbit/s; off again: $u2 Mbit/s"
  expect "1gbit -> 800..1020 Mbit/s of TCP payload" test "$s1" -ge 800 -a "$s1" -le 1020 &&
    expect "100mbit -> 80..102 Mbit/s" test "$s2" -ge 80 -a "$s2" -le 102 &&
    expect "unshaped well above 1 Gbit/s" test "$u" -ge 1500 -a "$u2" -ge 1500 &&
    echo "TCP payload: unshaped $u, 1gbit $s1, 100mbit $s2, off $u2 Mbit/s"
}

t_up_again() {
  local old=() k secret
  for k in 1 2 3; do old+=("$(pid_of "n$k")"); done
  secret=$(cat "$run/secret")
  "$tn" up 3 --cpu-quota 50 --plain-pages >"$tmp/up.out" 2>&1 || { cat "$tmp/up.out"; return 1; }
  for k in "${old[@]}"; do
    expect "old daemon $k gone" bash -c "! [[ -e /proc/$k ]] || grep -q '^State:.*Z' /proc/$k/status" || return 1
  done
  expect "3 namespaces" test "$(ip netns list | grep -c '^ferry-n')" -eq 3 &&
    expect "3 veths" test "$(ip -o link show | grep -c ': vferry-n')" -eq 3 &&
    expect "one bridge" test "$(ip -o link show | grep -c ': ferrybr0')" -eq 1 &&
    expect "cgroups n1..n3 only" test "$(cd /sys/fs/cgroup/cpu/ferry 2>/dev/null && echo n[0-9]*)" = "n1 n2 n3" -o ! -d /sys/fs/cgroup/cpu &&
    expect "a new secret" test "$(cat "$run/secret")" != "$secret" &&
    expect "encrypt_pages = false" grep -qx 'encrypt_pages = false' "$run/n1.toml" &&
    expect "quota 50000/100000" test "$(quota_of 1)" = "50000 100000" || return 1
  echo "up over a running cluster replaced it: old daemons gone, 3 namespaces/veths, 1 bridge, new secret, plain pages, 50% quota"
}

# share PID SECONDS: fraction of one CPU PID used over SECONDS
share() {
  local a b
  a=$(cpu_ns "$1")
  sleep "$2"
  b=$(cpu_ns "$1")
  awk -v d=$((b - a)) -v s="$2" 'BEGIN { printf "%.2f\n", d / (s * 1e9) }'
}

t_cpu_cap() {
  local pid s50 s25 thr0 thr1 cg
  pid=$(on n1 --detach python3 -c 'while True: pass')
  sleep 0.3
  cg=$(sed -n 's/^cgroup = "\(.*\)"$/\1/p' "$run/n1.toml")
  expect "busy loop in ferry/n1" grep -q '/ferry/n1$' "/proc/$pid/cgroup" || { kill "$pid"; return 1; }
  thr0=$(awk '/^nr_throttled/ {print $2}' "$cg/cpu.stat")
  s50=$(share "$pid" 3)
  thr1=$(awk '/^nr_throttled/ {print $2}' "$cg/cpu.stat")
  "$tn" quota n1 25 >/dev/null 2>&1
  s25=$(share "$pid" 3)
  "$tn" quota n1 50 >/dev/null 2>&1
  echo "$pid" >"$tmp/busy.pid" # left running: down must kill it
  echo "busy loop on n1: $s50 CPU at quota 50%, $s25 at 25%; throttled periods $thr0 -> $thr1"
  # The upper bounds are the caps; the lower ones are loose, as other load on this machine
  # (e.g. a build) can take more from the busy loop than the quota does.
  awk -v a="$s50" -v b="$s25" 'BEGIN { exit !(a >= 0.30 && a <= 0.55 && b >= 0.12 && b <= 0.30 && b < a) }' ||
    { echo "expected ~0.50 (at most 0.55) and ~0.25 (at most 0.30)"; return 1; }
  expect "throttling recorded" test "$thr1" -gt "$thr0" &&
    echo "busy loop capped: $s50 of a CPU at 50%, $s25 at 25% (throttled periods +$((thr1 - thr0)))"
}

t_kill_start() {
  local old new got out rc
  old=$(pid_of n2)
  "$tn" kill n2 >/dev/null 2>&1 || { echo "kill n2 failed"; return 1; }
  sleep 0.2
  expect "daemon $old dead" bash -c "! [[ -e /proc/$old ]] || grep -q '^State:.*Z' /proc/$old/status" || return 1
  out=$("$tn" status)
  rc=$?
  expect "status exit 1 and n2 dead: $out" test "$rc" -eq 1 -a -n "$(grep '^n2 .* dead ' <<<"$out")" || return 1
  got=$(get_from n1 10.77.0.2 7070)
  expect "connection refused by n2, got $got" grep -q 'refused' <<<"$got" || return 1
  "$tn" start n2 >/dev/null 2>&1 || { echo "start n2 failed"; return 1; }
  new=$(pid_of n2)
  expect "a new daemon" test "$new" != "$old" && alive "$new" || return 1
  got=$(get_from n1 10.77.0.2 7070)
  expect "n2 answers again, got $got" test "$got" = n2 || return 1
  "$tn" start n2 >/dev/null 2>&1 && expect "start on a running host is a no-op" test "$(pid_of n2)" = "$new" || return 1
  "$tn" kill n2 --term >/dev/null 2>&1 || { echo "kill n2 --term failed"; return 1; }
  "$tn" start n2 >/dev/null 2>&1 || { echo "start n2 after --term failed"; return 1; }
  expect "SIGTERM reached the daemon (its log)" grep -q 'stand-in n2: SIGTERM' "$run/n2.log" || return 1
  echo "kill n2: daemon dead, status says so (exit 1), TCP refused; start n2: new daemon answers; --term is graceful"
}

t_kill_host() {
  local got down
  "$tn" kill n3 --host >/dev/null 2>&1 || { echo "kill n3 --host failed"; return 1; }
  ping_from n1 10.77.0.3 >/dev/null && { echo "n3 still answers ping"; return 1; }
  down=$(get_from n1 10.77.0.3 7070)
  expect "n3 unreachable, got $down" grep -Eq 'timed out|unreachable|No route' <<<"$down" &&
    expect "status: n3 link down" grep -q '^n3 .* down .* dead ' <("$tn" status) || return 1
  "$tn" start n3 >/dev/null 2>&1 || { echo "start n3 failed"; return 1; }
  ping_from n1 10.77.0.3 >/dev/null || { echo "n3 does not answer ping after start"; return 1; }
  got=$(get_from n2 10.77.0.3 7070)
  expect "n3 answers at once after start, got $got" test "$got" = n3 || return 1
  echo "kill n3 --host: no ping reply, TCP to n3 '$down'; start n3: ping and TCP answer at once"
}

t_down() {
  local busy daemons=() k sleeper
  busy=$(cat "$tmp/busy.pid")
  sleeper=$(on n3 --detach sleep 600)
  for k in 1 2 3; do daemons+=("$(pid_of "n$k")"); done
  "$tn" down || return 1
  for k in "$busy" "$sleeper" "${daemons[@]}"; do
    expect "process $k gone" bash -c "! [[ -e /proc/$k ]] || grep -q '^State:.*Z' /proc/$k/status" || return 1
  done
  no_junk >/dev/null || { no_junk; return 1; }
  echo "daemons, the busy loop and a detached sleep killed; nothing left"
}

t_down_twice() {
  "$tn" down && no_junk
}

t_run_dir_override() {
  local got
  FERRY_RUN=$tmp/run "$tn" up 1 >/dev/null 2>&1 || { echo "up with FERRY_RUN failed"; return 1; }
  expect "socket in the custom run dir" test -S "$tmp/run/n1.sock" &&
    expect "config points there" grep -qx "socket = \"$tmp/run/n1.sock\"" "$tmp/run/n1.toml" || return 1
  got=$(env -u FERRY_RUN "$tn" status)
  expect "status finds the run dir without FERRY_RUN: $got" grep -q "run dir $tmp/run" <<<"$got" || return 1
  env -u FERRY_RUN "$tn" down || return 1
  no_junk >/dev/null || { no_junk; return 1; }
  echo "FERRY_RUN=$tmp/run honoured; status/down found it without FERRY_RUN"
}

echo "testnet self-test (stand-in daemon in $tmp)"
check "down with nothing up, twice" t_down_nothing
check "usage errors" t_usage
check "missing ferry binary" t_missing_binary
check "failed up (daemon exits), then down" t_failed_up
check "failed up (daemon never makes its socket), then down" t_mute_daemon
if check "up 3" t_up; then
  check "run dir, secret, configs" t_run_dir
  check "namespaces, addresses, routes, bridge" t_network
  check "daemons in netns and cgroup" t_daemons
  check "default CPU quota" t_quota_default
  check "ping between hosts" t_ping
  check "TCP to peers' 10.77.0.K:7070 and CLI socket" t_tcp
  check "exec" t_exec
  if [[ -x $real_ferry ]] && cp "$real_ferry" "$tmp/ferry-real" && "$tmp/ferry-real" checkpoint --help >/dev/null 2>&1; then
    check "real ferry moves a job from n1 to n2" t_real_ferry_move
  else
    echo "SKIP real ferry moves a job from n1 to n2: no ferry binary at $real_ferry (FERRY_REAL=...)"
  fi
  check "shaping" t_shaping
  check "up again (over a running cluster)" t_up_again
  check "CPU quota caps a busy loop" t_cpu_cap
  check "kill / start" t_kill_start
  check "kill --host / start" t_kill_host
  check "down kills everything, leaves nothing" t_down
  check "down again" t_down_twice
else
  echo "SKIP the checks that need a running cluster"
fi
check "run dir override" t_run_dir_override
echo "$pass passed, $fail failed"
((fail == 0))
