#!/usr/bin/env bash
# Runs every benchmark behind docs/benchmarks.md: each scenario against Roomcast, the bare
# tokio-tungstenite server and Socket.IO, 3 runs each, server pinned to CPU 0 and the load
# generator to CPU 1, then draws the charts. Results land in bench/results/.
#
#   cargo build --release -p roomcast -p roomcast-bench
#   (cd bench/socketio && npm ci)
#   bench/run-all.sh            # about 40 minutes on 2 cores
#   bench/run-all.sh fanout     # only the suites whose name contains "fanout"
set -euo pipefail
cd "$(dirname "$0")/.."

bench=target/release/roomcast-bench
out=bench/results
runs=${RUNS:-3}
only=${1:-}
[ -x "$bench" ] && [ -x target/release/roomcast ] \
  || { echo "build first: cargo build --release -p roomcast -p roomcast-bench" >&2; exit 1; }
[ -d bench/socketio/node_modules/socket.io ] \
  || { echo "install the Socket.IO baseline first: (cd bench/socketio && npm ci)" >&2; exit 1; }
mkdir -p "$out"

# Measure a private copy of the binaries, so that a rebuild of target/ during the runs cannot
# change what is measured.
bin_dir=$(mktemp -d /tmp/roomcast-bench-bin.XXXXXX)
trap 'rm -rf "$bin_dir"' EXIT
cp target/release/roomcast target/release/roomcast-bench "$bin_dir/"
bench="$bin_dir/roomcast-bench"
echo "measuring $(git describe --always --dirty) built $(date -r target/release/roomcast -u +%FT%TZ)" >&2

# Other work on the machine skews CPU-bound figures: wait (up to WAIT_QUIET seconds) until the
# 1-minute load average is below 1. The load at start and end is recorded in every results file.
quiet() {
  local waited=0
  while awk '{exit !($1 >= 1.0)}' /proc/loadavg && [ "$waited" -lt "${WAIT_QUIET:-600}" ]; do
    sleep 10; waited=$((waited + 10))
  done
}

suite() {
  local name=$1; shift
  if [ -n "$only" ] && [[ "$name" != *"$only"* ]]; then return 0; fi
  quiet
  echo "==> $name: $*" >&2
  taskset -c 1 "$bench" "$@" --runs "$runs" --server-cpus 0 --quiet --out "$out/$name.json" \
    --roomcast-dir "$bin_dir" --socketio-dir bench/socketio \
    || echo "==> $name: some runs failed (see $out/$name.json)" >&2
  "$bench" plot "$out/$name.json" >/dev/null
}

all=roomcast,bare,socketio

# Fan-out efficiency: 1,000 subscribers × 300 messages/s, bare with tungstenite's default
# buffers (128 KiB) and, separately, with the gateway's 4 KiB buffers.
suite fanout-1000x300 fanout --targets $all --subscribers 1000 --rate 300 --duration 20 --warmup 2
suite fanout-1000x300-bare4k fanout --targets roomcast,bare --bare-buffer 4096 \
  --subscribers 1000 --rate 300 --duration 20 --warmup 2
# Latency: 100 subscribers × 100 messages/s.
suite fanout-100x100 fanout --targets $all --subscribers 100 --rate 100 --duration 20 --warmup 2
# Many subscribers: 10,000 × 10 messages/s.
suite fanout-10000x10 fanout --targets $all --subscribers 10000 --rate 10 --duration 20 --warmup 2 \
  --source-ips 2
# Idle connections: 19,000, spread over 4 source addresses and 2 load-generator processes.
suite connections-19000 connections --targets $all --connections 19000 --concurrency 64 \
  --source-ips 4 --client-procs 2 --settle 3 --hold 10
suite connections-19000-bare4k connections --targets roomcast,bare --bare-buffer 4096 \
  --connections 19000 --concurrency 64 --source-ips 4 --client-procs 2 --settle 3 --hold 10
# Ingest: 16 publishers, 32 publishes in flight each.
suite ingest-16x32 ingest --targets $all --publishers 16 --inflight 32 --duration 20 --warmup 2

# Replay storm: 200 since=0 joiners that never read, against another user's publish and join.
suite replay-storm replay-storm --targets roomcast

for f in "$out"/*.json; do "$bench" table "$f"; done
