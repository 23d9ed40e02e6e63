#!/usr/bin/env bash
# Installs what ferry's build, tests, demo and benchmarks need on a fresh Debian/Ubuntu
# machine (x86_64, Linux >= 6.7). Idempotent; installs nothing that is already present.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have gcc || need+=(gcc libc6-dev)
have python3 || need+=(python3)
have gzip || need+=(gzip)
have make || need+=(make)
have sha256sum || need+=(coreutils)
have mount || need+=(mount)
have ip || need+=(iproute2)
have tc || need+=(iproute2)
have nsenter || need+=(util-linux)
have unshare || need+=(util-linux)
have setsid || need+=(util-linux)
have flock || need+=(util-linux)

if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing ${need[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! have cargo; then
  # shellcheck disable=SC1091
  [[ -f "$HOME/.cargo/env" ]] && . "$HOME/.cargo/env"
fi
have cargo || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done
