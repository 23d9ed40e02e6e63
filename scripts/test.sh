#!/usr/bin/env bash
# ferry's test command (README, CI): formatting, lints, then every test.
# Tests that checkpoint processes need root; without root they say "skipped: needs root"
# (and fail under CI=true, where root is required).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[[ -f "$HOME/.cargo/env" ]] && . "$HOME/.cargo/env"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked "$@"
