#!/usr/bin/env bash
# A cluster of test hosts on this one machine, for tests, benchmarks, the demo and people.
#
# A test host nK = a network namespace `ferry-nK` (eth0 = 10.77.0.K/24 on the bridge ferrybr0,
# whose own address is 10.77.0.254) + a cgroup `ferry/nK` with a CPU quota, running its own
# `ferry daemon`. See docs/testnet.md. Needs root.
#
#   scripts/testnet.sh up N [--cpu-quota PERCENT[,PERCENT...]|max] [--encrypt-pages|--plain-pages]
#                           [--store-node K] [--policy P] [--groups G[,G...]] [--auto-migrate]
#   scripts/testnet.sh down
#   scripts/testnet.sh status
#   scripts/testnet.sh exec NODE [--detach [--out FILE]] [--] CMD [ARGS...]
#   scripts/testnet.sh shape RATE [--burst BYTES] [--latency TIME] | shape off
#   scripts/testnet.sh kill NODE [--host] [--term]
#   scripts/testnet.sh start NODE
#   scripts/testnet.sh quota NODE|all PERCENT|max
set -euo pipefail

readonly MAX_NODES=8
readonly BRIDGE=ferrybr0
readonly NET=10.77.0
readonly BRIDGE_ADDR=$NET.254
readonly PORT=7070
readonly PERIOD_US=100000
readonly WAIT_TENTHS=100 # 10 s for a daemon to create its socket
readonly STOP_TENTHS=50  # 5 s between SIGTERM and SIGKILL
readonly MARKER=.testnet # in the run dir: "this directory belongs to testnet.sh"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
  echo "testnet: $*" >&2
  exit 1
}
usage_error() {
  echo "testnet: $*" >&2
  echo "usage: scripts/testnet.sh up N | down | status | exec NODE CMD... | shape RATE|off | kill NODE | start NODE | quota NODE PERCENT (help: scripts/testnet.sh help)" >&2
  exit 2
}
note() { echo "testnet: $*" >&2; }

usage() {
  cat <<'EOF'
scripts/testnet.sh: a cluster of test hosts (network namespace + CPU-quota cgroup + ferry daemon)
on this machine. Run as root.

  up N [--cpu-quota P] [--encrypt-pages|--plain-pages] [--store-node K]
        Create hosts n1..nN (1 <= N <= 8) and start their daemons; takes down whatever cluster
        is up first. P = percent of one CPU per host (default 100), "max" for no limit, or a
        comma list per host (the last value repeats): --cpu-quota 100,50.
        --store-node K: host nK is a page-store node (role "page-store", keeping pages in
        RUN/store); the other hosts flush to it over the network (page_store = "node:nK").
        Without it every host flushes to the shared directory RUN/store.
        --policy P: placement policy of every daemon (bidding, drafting, hybrid).
        --groups G,...: placement group per host (the last value repeats), for hybrid.
        --auto-migrate: daemons move CPU-bound processes off overloaded hosts.
  down  Stop daemons, kill every process on the hosts, remove namespaces, links, bridge,
        cgroups and the run dir. Safe when nothing (or half a cluster) is up.
  status
        Hosts, addresses, links, quotas, shaping, daemons. Exit 0 when a cluster is up and every
        daemon is alive, 1 otherwise.
  exec NODE [--detach [--out FILE]] [--] CMD [ARGS...]
        Run CMD on host NODE (its network namespace and cgroup) in the foreground, with
        FERRY_SOCKET and FERRY_NODE set. --detach: in a new session, stdin from /dev/null,
        stdout+stderr to FILE (default /dev/null), no other fds; prints its pid.
  shape RATE [--burst BYTES] [--latency TIME]
        Limit every host's link to RATE in each direction (tc tbf on both ends of its veth):
        e.g. 1gbit, 100mbit, 50mbps (bytes). "shape off" removes the limit.
  kill NODE [--host] [--term]
        SIGKILL the host's daemon (--term: SIGTERM, then SIGKILL after 5 s). --host also takes
        the host's link down, so that peers see it as unreachable. Its processes keep running.
  start NODE
        Bring the host's link up and start its daemon again (if not running).
  quota NODE|all P
        Change CPU quota of a running host (P as for --cpu-quota, one value).

Environment: FERRY (ferry binary, default target/release/ferry of this repository),
FERRY_RUN (run dir, default /run/ferry).
EOF
}

# ---------------------------------------------------------------------------------------------
# helpers

need_root() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (it creates network namespaces and cgroups)"
}

need_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || die "'$t' not found: install it (scripts/setup.sh installs iproute2; nsenter, setsid and flock are in util-linux)"
  done
}

lock() {
  local f=/run/lock/ferry-testnet.lock
  [[ -d /run/lock ]] || f=/run/ferry-testnet.lock
  exec 9>"$f"
  flock -w 120 9 || die "another scripts/testnet.sh is still running (lock $f)"
}

ns_of() { echo "ferry-n$1"; }
veth_of() { echo "vferry-n$1"; }
addr_of() { echo "$NET.$1"; }

# node name (n3) -> index (3)
node_index() {
  local n=$1
  if [[ $n =~ ^n([1-9][0-9]*)$ ]] && ((BASH_REMATCH[1] <= MAX_NODES)); then
    echo "${BASH_REMATCH[1]}"
  else
    usage_error "no such node '$n': nodes are n1..n$MAX_NODES"
  fi
}

node_is_up() { [[ -e /run/netns/$(ns_of "$1") ]]; }

up_nodes() {
  local k
  for ((k = 1; k <= MAX_NODES; k++)); do
    if node_is_up "$k"; then echo "$k"; fi
  done
}

require_up() { # require_up K
  node_is_up "$1" && return 0
  local up
  up=$(up_nodes | sed 's/^/n/' | paste -sd' ')
  die "n$1 is not up (hosts up: ${up:-none}; start a cluster with: scripts/testnet.sh up N)"
}

# The run dir: $FERRY_RUN, else the one recorded on the bridge by `up`, else /run/ferry.
run_dir() {
  local r alias=""
  if [[ -n ${FERRY_RUN:-} ]]; then
    r=$FERRY_RUN
    [[ $r == /* ]] || r=$PWD/$r
  else
    alias=$(cat "/sys/class/net/$BRIDGE/ifalias" 2>/dev/null || true)
    if [[ $alias == ferry-run=/* ]]; then r=${alias#ferry-run=}; else r=/run/ferry; fi
  fi
  r=${r%/}
  [[ $r =~ ^/[A-Za-z0-9._/-]+$ ]] || die "run dir '$r': use an absolute path of letters, digits and ._/- only"
  echo "$r"
}

marker_get() { # marker_get RUN KEY
  sed -n "s/^$2=//p" "$1/$MARKER" 2>/dev/null | head -n1
}

# Is /proc/PID a live (not zombie) process?
proc_alive() {
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [[ -n $st && ${st%% *} != [ZX] ]]
}

# The daemon pid of node K if it is alive (guarded against pid reuse: it must be in nK's cgroup).
daemon_pid() {
  local k=$1 pid
  pid=$(cat "$RUN/n$k.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  proc_alive "$pid" || return 1
  grep -q "/ferry/n$k\$" "/proc/$pid/cgroup" 2>/dev/null || return 1
  echo "$pid"
}

# Closes every fd above 2 of the calling (sub)shell.
close_fds() {
  local f n
  for f in /proc/"$BASHPID"/fd/*; do
    n=${f##*/}
    if ((n > 2)); then exec {n}>&-; fi
  done
}

# ---------------------------------------------------------------------------------------------
# cgroups: the quota lives in the cpu controller's hierarchy (v1 cpu, or v2 with cpu.max); on a
# v1 machine the host also gets ferry/nK in cpuacct (cpuacct.usage) and in the v2 hierarchy at
# /sys/fs/cgroup/unified (cpu.stat usage_usec, cpu.pressure), so that load can be read per host.

fs_type() { stat -fc %T "$1" 2>/dev/null || true; }
is_cg2() { [[ $(fs_type "$1") == cgroup2fs ]]; }

CG_MODE=""
CG_QROOT=""
CG_ROOTS=()
cg_detect() {
  CG_ROOTS=()
  if [[ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
    CG_MODE=v1 CG_QROOT=/sys/fs/cgroup/cpu
  elif is_cg2 /sys/fs/cgroup && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
    CG_MODE=v2 CG_QROOT=/sys/fs/cgroup
  elif is_cg2 /sys/fs/cgroup/unified && grep -qw cpu /sys/fs/cgroup/unified/cgroup.controllers; then
    CG_MODE=v2 CG_QROOT=/sys/fs/cgroup/unified
  else
    die "no cpu cgroup controller: neither /sys/fs/cgroup/cpu (v1) nor a cgroup2 hierarchy with the cpu controller"
  fi
  CG_ROOTS=("$CG_QROOT")
  if [[ $CG_MODE == v1 ]]; then
    if [[ -f /sys/fs/cgroup/cpuacct/cpuacct.usage && ! -e /sys/fs/cgroup/cpu/cpuacct.usage ]]; then
      CG_ROOTS+=(/sys/fs/cgroup/cpuacct)
    fi
    if is_cg2 /sys/fs/cgroup/unified; then CG_ROOTS+=(/sys/fs/cgroup/unified); fi
  fi
}

# Every hierarchy a previous run may have used (for down).
cg_all_roots() {
  local r
  for r in /sys/fs/cgroup/cpu /sys/fs/cgroup/cpuacct /sys/fs/cgroup/unified /sys/fs/cgroup; do
    case $(fs_type "$r") in cgroupfs | cgroup2fs) echo "$r" ;; esac
  done
}

cg_quota_dir() { echo "$CG_QROOT/ferry/n$1"; }

cg_dirs() { # the node's cgroup dirs, one per hierarchy
  local r
  for r in "${CG_ROOTS[@]}"; do echo "$r/ferry/n$1"; done
}

# PERCENT|max -> validated; prints the value
check_quota() {
  local p=$1
  [[ $p == max || ($p =~ ^[1-9][0-9]*$ && $p -le 800) ]] ||
    usage_error "CPU quota '$p': a percentage of one CPU from 1 to 800, or max"
  echo "$p"
}

cg_set_quota() { # cg_set_quota K PERCENT|max
  local d q
  d=$(cg_quota_dir "$1")
  if [[ $CG_MODE == v1 ]]; then
    echo -1 >"$d/cpu.cfs_quota_us"
    echo "$PERIOD_US" >"$d/cpu.cfs_period_us"
    if [[ $2 == max ]]; then q=-1; else q=$(($2 * PERIOD_US / 100)); fi
    echo "$q" >"$d/cpu.cfs_quota_us"
  else
    if [[ $2 == max ]]; then q=max; else q=$(($2 * PERIOD_US / 100)); fi
    echo "$q $PERIOD_US" >"$d/cpu.max"
  fi
}

cg_quota_text() { # "50%" / "max" / "-"
  local d q p
  d=$(cg_quota_dir "$1")
  if [[ $CG_MODE == v1 ]]; then
    q=$(cat "$d/cpu.cfs_quota_us" 2>/dev/null) || { echo -; return; }
    p=$(cat "$d/cpu.cfs_period_us")
  else
    read -r q p <"$d/cpu.max" 2>/dev/null || { echo -; return; }
  fi
  if [[ $q == -1 || $q == max ]]; then echo max; else echo "$((q * 100 / p))%"; fi
}

# The parent ferry/ is one scheduling entity among the machine's other processes (and, with
# autogroup, sessions): give it the weight of N of them, so that other load on the machine does
# not squeeze N hosts into the share of one.
cg_set_parent_weight() { # cg_set_parent_weight N
  if [[ $CG_MODE == v1 ]]; then
    echo $((1024 * $1)) >"$CG_QROOT/ferry/cpu.shares"
  else
    echo $((100 * $1)) >"$CG_QROOT/ferry/cpu.weight"
  fi
}

cg_create() { # cg_create K
  local r
  for r in "${CG_ROOTS[@]}"; do
    mkdir -p "$r/ferry"
    if [[ $CG_MODE == v2 && $r == "$CG_QROOT" ]]; then
      grep -qw cpu "$r/cgroup.subtree_control" || echo +cpu >"$r/cgroup.subtree_control"
      grep -qw cpu "$r/ferry/cgroup.subtree_control" || echo +cpu >"$r/ferry/cgroup.subtree_control"
    fi
    mkdir -p "$r/ferry/n$1"
  done
}

# Moves the calling shell ($BASHPID) into node K's cgroups.
cg_enter() {
  local d
  while read -r d; do
    echo "$BASHPID" >"$d/cgroup.procs" || die "cannot move into cgroup $d"
  done < <(cg_dirs "$1")
}

# Pids in node K's cgroups (any hierarchy) and in its network namespace, except this script.
node_pids() {
  local k=$1 r
  {
    for r in $(cg_all_roots); do
      cat "$r/ferry/n$k/cgroup.procs" 2>/dev/null || true
    done
    if node_is_up "$k"; then ip netns pids "$(ns_of "$k")" 2>/dev/null || true; fi
  } | grep -vx -e "$$" -e "$BASHPID" | sort -un || true
}

kill_node_procs() { # SIGKILL everything on node K; returns 1 if something survives 5 s
  local k=$1 i pids
  for ((i = 0; i < 50; i++)); do
    mapfile -t pids < <(node_pids "$k")
    ((${#pids[@]})) || return 0
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.1
  done
  note "n$k: processes that would not die: $(node_pids "$k" | tr '\n' ' ')"
  return 1
}

# ---------------------------------------------------------------------------------------------
# daemons

resolve_ferry() { # resolve_ferry [--recorded]: $FERRY, else (--recorded) the one `up` used, else the build's
  local f=${FERRY:-}
  if [[ -z $f && ${1:-} == --recorded ]]; then f=$(marker_get "$RUN" ferry); fi
  [[ -n $f ]] || f=$repo/target/release/ferry
  [[ $f == */* ]] || f=$(command -v "$f" 2>/dev/null || echo "$f")
  [[ $f == /* ]] || f=$PWD/$f
  if [[ ! -x $f ]]; then
    die "ferry binary not found at $f: build it with
    cargo build --release -p ferry
(in $repo), or point FERRY at one: FERRY=/path/to/ferry scripts/testnet.sh ..."
  fi
  FERRY=$f
}

start_daemon() { # start_daemon K: detached, inside nK's cgroups and netns; writes nK.pid
  local k=$1 ns cfg log
  ns=$(ns_of "$k")
  cfg=$RUN/n$k.toml
  log=$RUN/n$k.log
  rm -f "$RUN/n$k.sock"
  echo "=== testnet: starting n$k daemon at $(date '+%F %T'): $FERRY daemon --config $cfg" >>"$log"
  (
    cd /
    close_fds
    cg_enter "$k" # before the daemon does anything
    exec setsid nsenter --net="/run/netns/$ns" -- "$FERRY" daemon --config "$cfg"
  ) </dev/null >>"$log" 2>&1 &
  echo "$!" >"$RUN/n$k.pid"
}

wait_daemon() { # wait_daemon K: until nK.sock exists and the daemon lives (10 s)
  local k=$1 pid i
  pid=$(cat "$RUN/n$k.pid")
  for ((i = 0; i < WAIT_TENTHS; i++)); do
    if ! proc_alive "$pid"; then
      note "n$k: the daemon (pid $pid) exited; last lines of $RUN/n$k.log:"
      tail -n 20 "$RUN/n$k.log" | sed 's/^/    /' >&2
      return 1
    fi
    [[ -S $RUN/n$k.sock ]] && return 0
    sleep 0.1
  done
  note "n$k: the daemon (pid $pid) did not create $RUN/n$k.sock within $((WAIT_TENTHS / 10)) s; last lines of $RUN/n$k.log:"
  tail -n 20 "$RUN/n$k.log" | sed 's/^/    /' >&2
  return 1
}

# Sends SIG to the daemons of the given nodes, waits up to 5 s, then SIGKILLs survivors.
stop_daemons() { # stop_daemons SIG K...
  local sig=$1 k pid i left
  shift
  local -A pids=()
  for k in "$@"; do
    if pid=$(daemon_pid "$k"); then
      pids[$k]=$pid
      kill "-$sig" "$pid" 2>/dev/null || true
    fi
  done
  for ((i = 0; i < STOP_TENTHS; i++)); do
    left=0
    for k in "${!pids[@]}"; do
      if proc_alive "${pids[$k]}"; then left=1; fi
    done
    ((left)) || return 0
    sleep 0.1
  done
  for k in "${!pids[@]}"; do
    if proc_alive "${pids[$k]}"; then
      note "n$k: daemon ${pids[$k]} still alive 5 s after SIG$sig: SIGKILL"
      kill -KILL "${pids[$k]}" 2>/dev/null || true
    fi
  done
}

# ---------------------------------------------------------------------------------------------
# network

link_up_node() { # link_up_node K: both ends up, address, default route (idempotent)
  local k=$1 ns veth
  ns=$(ns_of "$k")
  veth=$(veth_of "$k")
  ip link set "$veth" master "$BRIDGE" up
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip -n "$ns" addr replace "$(addr_of "$k")/24" dev eth0
  ip -n "$ns" route replace default via "$BRIDGE_ADDR" dev eth0
}

# After a host's link was down, peers hold FAILED ARP entries for it (connect: "No route to
# host" until they expire) and it holds some for them: forget those so it is reachable at once.
forget_neighbours() { # forget_neighbours K
  local k=$1 j
  ip -n "$(ns_of "$k")" neigh flush dev eth0 2>/dev/null || true
  ip neigh flush dev "$BRIDGE" to "$(addr_of "$k")" 2>/dev/null || true
  for j in $(up_nodes); do
    ((j == k)) || ip -n "$(ns_of "$j")" neigh flush dev eth0 to "$(addr_of "$k")" 2>/dev/null || true
  done
}

create_node_net() { # create_node_net K
  local k=$1 ns veth
  ns=$(ns_of "$k")
  veth=$(veth_of "$k")
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  link_up_node "$k"
}

rate_bytes_per_s() { # 1gbit -> 125000000
  local r=${1,,}
  [[ $r =~ ^([0-9]+(\.[0-9]+)?)(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$ ]] ||
    usage_error "rate '$1': a number with a unit: bit kbit mbit gbit tbit (bits/s) or bps kbps mbps gbps tbps (bytes/s), e.g. 1gbit"
  awk -v n="${BASH_REMATCH[1]}" -v u="${BASH_REMATCH[3]}" 'BEGIN {
    m["bit"]=1/8; m["kbit"]=1e3/8; m["mbit"]=1e6/8; m["gbit"]=1e9/8; m["tbit"]=1e12/8;
    m["bps"]=1; m["kbps"]=1e3; m["mbps"]=1e6; m["gbps"]=1e9; m["tbps"]=1e12;
    printf "%d\n", n * m[u] }'
}

shape_text() { # the tbf rate on node K's link, or "-"
  local r
  r=$(tc qdisc show dev "$(veth_of "$1")" root 2>/dev/null | sed -n 's/.*qdisc tbf .* rate \([^ ]*\).*/\1/p')
  echo "${r:--}"
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_down() {
  need_root
  need_tools ip
  lock
  do_down
}

# Tears down whatever is up, also half-built clusters. Quiet when nothing is up.
do_down() {
  local k r runs=() alias fail=0
  RUN=$(run_dir)
  runs+=("$RUN")
  alias=$(cat "/sys/class/net/$BRIDGE/ifalias" 2>/dev/null || true)
  if [[ $alias == ferry-run=/* && ${alias#ferry-run=} != "$RUN" ]]; then runs+=("${alias#ferry-run=}"); fi

  local nodes=()
  for ((k = 1; k <= MAX_NODES; k++)); do
    if node_is_up "$k" || [[ -e $RUN/n$k.pid ]] || ip link show "$(veth_of "$k")" >/dev/null 2>&1; then
      nodes+=("$k")
    else
      for r in $(cg_all_roots); do
        if [[ -d $r/ferry/n$k ]]; then
          nodes+=("$k")
          break
        fi
      done
    fi
  done

  local saved=$RUN
  if ((${#nodes[@]})); then
    for r in "${runs[@]}"; do
      RUN=$r
      stop_daemons TERM "${nodes[@]}"
    done
  fi
  RUN=$saved

  for k in "${nodes[@]}"; do
    kill_node_procs "$k" || fail=1
    ip link del "$(veth_of "$k")" 2>/dev/null || true
    if node_is_up "$k"; then ip netns del "$(ns_of "$k")" 2>/dev/null || { note "cannot delete namespace $(ns_of "$k")"; fail=1; }; fi
  done
  ip link del "$BRIDGE" 2>/dev/null || true

  local i d
  for r in $(cg_all_roots); do
    [[ -d $r/ferry ]] || continue
    for d in "$r"/ferry/n*; do
      [[ -d $d ]] || continue
      for ((i = 0; i < 20; i++)); do
        rmdir "$d" 2>/dev/null && break
        sleep 0.1
      done
      [[ ! -d $d ]] || { note "cannot remove cgroup $d (still has processes: $(tr '\n' ' ' <"$d/cgroup.procs"))"; fail=1; }
    done
    rmdir "$r/ferry" 2>/dev/null || [[ ! -d $r/ferry ]] || { note "cannot remove cgroup $r/ferry"; fail=1; }
  done

  for r in "${runs[@]}"; do
    if [[ -f $r/$MARKER && $r == /?* ]]; then
      rm -rf "$r"
    elif [[ -d $r ]]; then
      # not ours as a whole (no marker): remove only what up writes
      rm -rf "$r/store" "$r"/n[1-8]
      rm -f "$r/secret" "$r"/n[1-8].{toml,sock,log,pid}
    fi
  done
  ((fail == 0)) || die "down left something behind (see above)"
}

cmd_up() {
  local n="" quotas="100" encrypt=true store_node="" policy="" groups="" auto=false
  while (($#)); do
    case $1 in
      --policy) (($# >= 2)) || usage_error "--policy needs bidding, drafting or hybrid"; policy=$2; shift 2 ;;
      --groups) (($# >= 2)) || usage_error "--groups needs a list, e.g. a,a,b"; groups=$2; shift 2 ;;
      --auto-migrate) auto=true; shift ;;
      --store-node) (($# >= 2)) || usage_error "--store-node needs a host number"; store_node=$2; shift 2 ;;
      --store-node=*) store_node=${1#*=}; shift ;;
      --cpu-quota) (($# >= 2)) || usage_error "--cpu-quota needs a value"; quotas=$2; shift 2 ;;
      --cpu-quota=*) quotas=${1#*=}; shift ;;
      --encrypt-pages) encrypt=true; shift ;;
      --plain-pages) encrypt=false; shift ;;
      -h | --help) usage; exit 0 ;;
      -*) usage_error "up: unknown option '$1'" ;;
      *) [[ -z $n ]] || usage_error "up: one node count only"; n=$1; shift ;;
    esac
  done
  [[ -n $n ]] || usage_error "up: how many hosts? e.g. scripts/testnet.sh up 3"
  if ! [[ $n =~ ^[1-9][0-9]*$ ]] || ((n > MAX_NODES)); then
    usage_error "up: N must be between 1 and $MAX_NODES, not '$n'"
  fi
  local -a qs=()
  local q k
  IFS=, read -ra qs <<<"$quotas"
  ((${#qs[@]})) || usage_error "--cpu-quota: empty"
  for q in "${qs[@]}"; do check_quota "$q" >/dev/null; done
  ((${#qs[@]} <= n)) || usage_error "--cpu-quota: ${#qs[@]} values for $n hosts"
  case $policy in "" | bidding | drafting | hybrid) ;; *) usage_error "--policy '$policy': bidding, drafting or hybrid" ;; esac
  local -a gs=()
  IFS=, read -ra gs <<<"$groups"
  local g
  for g in "${gs[@]}"; do [[ $g =~ ^[A-Za-z0-9-]+$ ]] || usage_error "--groups: '$g' is not a group name (letters, digits, -)"; done
  if [[ -n $store_node ]] && { ! [[ $store_node =~ ^[1-9]$ ]] || ((store_node > n)); }; then
    usage_error "--store-node: a host number between 1 and $n, not '$store_node'"
  fi

  need_root
  need_tools ip nsenter setsid flock od
  RUN=$(run_dir)
  resolve_ferry
  "$FERRY" daemon --help >/dev/null 2>&1 ||
    die "$FERRY has no working 'daemon' subcommand; rebuild it: cargo build --release -p ferry"
  lock
  cg_detect

  # A cluster (or the remains of one) is up: take it down first, so `up` always starts clean.
  if [[ -e /sys/class/net/$BRIDGE ]] || [[ -n $(up_nodes) ]] || [[ -f $RUN/$MARKER ]] ||
    [[ -n $(for r in $(cg_all_roots); do [[ -d $r/ferry ]] && echo x; done) ]]; then
    note "a cluster (or part of one) is up: taking it down first"
    local want=$RUN
    do_down
    RUN=$want
  fi
  if [[ -e $RUN && -n $(ls -A "$RUN" 2>/dev/null) ]]; then
    die "run dir $RUN exists and was not made by scripts/testnet.sh; remove it or set FERRY_RUN"
  fi
  local busy
  busy=$(ip -4 -o addr show | awk -v net="$NET." '$4 ~ "^" net {print $2 " " $4}' | head -n1)
  [[ -z $busy ]] || die "$NET.0/24 is already in use on this machine ($busy)"

  # From here on a failure leaves half a cluster: say how to get rid of it.
  UP_DONE=0
  trap '((UP_DONE)) || note "up did not finish; scripts/testnet.sh down removes what it made"' EXIT

  # run dir
  mkdir -p "$RUN"
  chmod 0755 "$RUN"
  {
    echo "ferry=$FERRY"
    echo "nodes=$n"
    echo "created=$(date '+%F %T')"
  } >"$RUN/$MARKER"
  mkdir -m 0700 "$RUN/store"
  (
    umask 077
    od -An -vtx1 -N32 /dev/urandom | tr -d ' \n' >"$RUN/secret"
  )
  chmod 0600 "$RUN/secret"

  # bridge
  ip link add "$BRIDGE" type bridge
  ip link set "$BRIDGE" alias "ferry-run=$RUN"
  ip addr add "$BRIDGE_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up

  # hosts
  local j
  cg_create 1
  cg_set_parent_weight "$n"
  for ((k = 1; k <= n; k++)); do
    q=${qs[k - 1]:-${qs[${#qs[@]} - 1]}}
    cg_create "$k"
    cg_set_quota "$k" "$q"
    create_node_net "$k"
    mkdir -m 0700 "$RUN/n$k"
    {
      echo "node = \"n$k\""
      echo "listen = \"$(addr_of "$k"):$PORT\""
      echo "socket = \"$RUN/n$k.sock\""
      echo "secret_file = \"$RUN/secret\""
      echo "state_dir = \"$RUN/n$k\""
      if [[ -z $store_node ]]; then
        echo "page_store = \"$RUN/store\""
      elif ((k == store_node)); then
        echo "role = \"page-store\""
        echo "page_store = \"$RUN/store\""
      else
        echo "page_store = \"node:n$store_node\""
      fi
      echo "encrypt_pages = $encrypt"
      echo "cgroup = \"$(cg_quota_dir "$k")\""
      echo "auto_migrate = $auto"
      [[ -z $policy ]] || echo "policy = \"$policy\""
      if ((${#gs[@]})); then echo "group = \"${gs[k - 1]:-${gs[${#gs[@]} - 1]}}\""; fi
      for ((j = 1; j <= n; j++)); do
        ((j == k)) && continue
        printf '\n[[peer]]\nname = "n%d"\naddr = "%s:%d"\n' "$j" "$(addr_of "$j")" "$PORT"
      done
    } >"$RUN/n$k.toml"
    : >"$RUN/n$k.log"
  done
  for ((k = 1; k <= n; k++)); do start_daemon "$k"; done
  local failed=()
  for ((k = 1; k <= n; k++)); do wait_daemon "$k" || failed+=("n$k"); done
  print_table "$n"
  # shellcheck disable=SC2034 # read by the EXIT trap
  UP_DONE=1
  if ((${#failed[@]})); then
    die "daemon(s) ${failed[*]} did not come up; the cluster is left as it is for a look (logs in $RUN); scripts/testnet.sh down removes it"
  fi
  note "$n hosts up (cgroups $CG_MODE, pages $([[ $encrypt == true ]] && echo encrypted || echo plain), run dir $RUN)"
}

print_table() { # print_table N
  local k pid
  printf '%-5s %-15s %-6s %-24s %s\n' node address quota socket pid
  for ((k = 1; k <= $1; k++)); do
    pid=$(daemon_pid "$k" || echo "dead")
    printf '%-5s %-15s %-6s %-24s %s\n' "n$k" "$(addr_of "$k"):$PORT" "$(cg_quota_text "$k")" "$RUN/n$k.sock" "$pid"
  done
}

cmd_status() {
  [[ $# -eq 0 ]] || usage_error "status takes no arguments"
  need_root
  RUN=$(run_dir)
  local nodes k pid link ok=0
  mapfile -t nodes < <(up_nodes)
  if ((${#nodes[@]} == 0)); then
    echo "no test hosts are up (scripts/testnet.sh up N starts some)"
    [[ ! -e /sys/class/net/$BRIDGE ]] || echo "but the bridge $BRIDGE exists: scripts/testnet.sh down cleans up"
    return 1
  fi
  cg_detect
  echo "bridge $BRIDGE $BRIDGE_ADDR/24, run dir $RUN, cgroups $CG_MODE under $CG_QROOT/ferry"
  printf '%-5s %-15s %-5s %-6s %-8s %-15s %s\n' node address link quota shaping daemon socket
  for k in "${nodes[@]}"; do
    link=down
    if ip link show "$(veth_of "$k")" 2>/dev/null | grep -q 'state UP'; then link=up; fi
    if pid=$(daemon_pid "$k"); then pid="alive $pid"; else pid=dead ok=1; fi
    printf '%-5s %-15s %-5s %-6s %-8s %-15s %s\n' "n$k" "$(addr_of "$k"):$PORT" "$link" \
      "$(cg_quota_text "$k")" "$(shape_text "$k")" "$pid" "$RUN/n$k.sock"
  done
  return "$ok"
}

cmd_exec() {
  (($# >= 1)) || usage_error "exec: which node? e.g. scripts/testnet.sh exec n1 python3 job.py"
  local k detach=0 out=/dev/null
  k=$(node_index "$1")
  shift
  while (($#)); do
    case $1 in
      --detach) detach=1; shift ;;
      --out) (($# >= 2)) || usage_error "--out needs a file"; out=$2; shift 2 ;;
      --) shift; break ;;
      *) break ;;
    esac
  done
  (($# >= 1)) || usage_error "exec: what to run? e.g. scripts/testnet.sh exec n$k python3 job.py"
  need_root
  need_tools nsenter
  require_up "$k"
  RUN=$(run_dir)
  cg_detect
  export FERRY_SOCKET="$RUN/n$k.sock" FERRY_NODE="n$k"
  local ns
  ns=$(ns_of "$k")
  if ((detach)); then
    [[ $out == /* ]] || out=$PWD/$out
    (
      close_fds
      cg_enter "$k"
      exec setsid nsenter --net="/run/netns/$ns" -- "$@"
    ) </dev/null >"$out" 2>&1 &
    echo "$!"
  else
    cg_enter "$k"
    exec nsenter --net="/run/netns/$ns" -- "$@"
  fi
}

cmd_shape() {
  (($# >= 1)) || usage_error "shape: give a rate (e.g. 1gbit) or off"
  local rate=$1 burst="" latency=20ms
  shift
  while (($#)); do
    case $1 in
      --burst) (($# >= 2)) || usage_error "--burst needs a value"; burst=$2; shift 2 ;;
      --latency) (($# >= 2)) || usage_error "--latency needs a value"; latency=$2; shift 2 ;;
      *) usage_error "shape: unknown argument '$1'" ;;
    esac
  done
  local bps=0
  if [[ $rate != off ]]; then
    bps=$(rate_bytes_per_s "$rate")
    ((bps >= 1000)) || usage_error "rate '$rate' is too low (at least 8kbit)"
    # burst: 1 ms worth of the rate, at least 8 KiB (several full frames)
    if [[ -z $burst ]]; then burst=$((bps / 1000)); ((burst >= 8192)) || burst=8192; fi
  fi
  need_root
  need_tools tc ip
  lock
  local nodes k
  mapfile -t nodes < <(up_nodes)
  ((${#nodes[@]})) || die "no test hosts are up"
  for k in "${nodes[@]}"; do
    if [[ $rate == off ]]; then
      tc qdisc del dev "$(veth_of "$k")" root 2>/dev/null || true
      tc -n "$(ns_of "$k")" qdisc del dev eth0 root 2>/dev/null || true
    else
      tc qdisc replace dev "$(veth_of "$k")" root tbf rate "$rate" burst "$burst" latency "$latency" ||
        die "tc tbf on $(veth_of "$k") failed (is sch_tbf in this kernel?)"
      tc -n "$(ns_of "$k")" qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency "$latency" ||
        die "tc tbf on eth0 of $(ns_of "$k") failed"
    fi
  done
  if [[ $rate == off ]]; then
    note "shaping off on every host's link"
  else
    note "every host's link limited to $rate each way (tbf burst $burst bytes, latency $latency)"
  fi
}

cmd_kill() {
  (($# >= 1)) || usage_error "kill: which node? e.g. scripts/testnet.sh kill n2 [--host]"
  local k host=0 sig=KILL
  k=$(node_index "$1")
  shift
  while (($#)); do
    case $1 in
      --host) host=1; shift ;;
      --term) sig=TERM; shift ;;
      *) usage_error "kill: unknown argument '$1'" ;;
    esac
  done
  need_root
  lock
  require_up "$k"
  RUN=$(run_dir)
  local pid
  if pid=$(daemon_pid "$k"); then
    stop_daemons "$sig" "$k"
    note "n$k: daemon $pid stopped (SIG$sig)"
  else
    note "n$k: no daemon was running"
  fi
  if ((host)); then
    ip link set "$(veth_of "$k")" down
    note "n$k: link down: peers cannot reach $(addr_of "$k") (scripts/testnet.sh start n$k brings it back)"
  fi
}

cmd_start() {
  (($# == 1)) || usage_error "start: which node? e.g. scripts/testnet.sh start n2"
  local k pid
  k=$(node_index "$1")
  need_root
  need_tools ip nsenter setsid flock
  lock
  require_up "$k"
  RUN=$(run_dir)
  [[ -f $RUN/n$k.toml ]] || die "$RUN/n$k.toml is missing: bring the cluster up again (scripts/testnet.sh up N)"
  cg_detect
  if ! ip link show "$(veth_of "$k")" | grep -q 'state UP'; then
    link_up_node "$k"
    forget_neighbours "$k"
    note "n$k: link up"
  fi
  if pid=$(daemon_pid "$k"); then
    note "n$k: daemon already running (pid $pid)"
    return 0
  fi
  resolve_ferry --recorded
  start_daemon "$k"
  wait_daemon "$k" || die "n$k: daemon did not come up"
  note "n$k: daemon started (pid $(cat "$RUN/n$k.pid"), socket $RUN/n$k.sock)"
}

cmd_quota() {
  (($# == 2)) || usage_error "quota: e.g. scripts/testnet.sh quota n2 50 (or: quota all max)"
  local nodes=() k q
  q=$(check_quota "$2")
  need_root
  lock
  if [[ $1 == all ]]; then
    mapfile -t nodes < <(up_nodes)
    ((${#nodes[@]})) || die "no test hosts are up"
  else
    k=$(node_index "$1")
    require_up "$k"
    nodes=("$k")
  fi
  cg_detect
  for k in "${nodes[@]}"; do
    cg_set_quota "$k" "$q"
    note "n$k: CPU quota $(cg_quota_text "$k")"
  done
}

main() {
  (($#)) || usage_error "no command"
  local cmd=$1
  shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) [[ $# -eq 0 ]] || usage_error "down takes no arguments"; cmd_down ;;
    status) cmd_status "$@" ;;
    exec) cmd_exec "$@" ;;
    shape) cmd_shape "$@" ;;
    kill) cmd_kill "$@" ;;
    start) cmd_start "$@" ;;
    quota) cmd_quota "$@" ;;
    help | -h | --help) usage ;;
    *) usage_error "unknown command '$cmd'" ;;
  esac
}

main "$@"
