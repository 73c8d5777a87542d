#!/usr/bin/env bash
# The routing comparisons of docs/benchmarks.md, exactly as run. Each writes one JSON file
# here; `igw bench show bench/results/*.json` prints them as Markdown tables.
# Needs: igw installed (or PYTHONPATH=python), sglang-router (pip install sglang-router).
# Takes ~30 minutes on a 2-core machine; every run is bounded by --duration-max per policy.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
OUT=${OUT:-bench/results}
POLICIES=${POLICIES:-round-robin,least-loaded,default,predicted-ttft}
# --speed 0.1: model time runs 10x slower than the `default` profile, so that the request rate
# at 70% of capacity (and the Python CPU cost of client, gateway and simulator per request)
# stays small next to the modelled GPU time on 2 shared cores.
COMMON=(--replicas 4 --speed 0.1 --output-tokens 32 --seed 1 --policies "$POLICIES"
        --sglang-router --sglang-policies cache_aware --duration-max 150 --no-progress)
only=${1:-all}
if [[ ${SNAPSHOT:-0} == 1 ]]; then
  # Run from a private copy of python/ (with its built igw._core): a rebuild that overwrites
  # the extension in place crashes (SIGSEGV) every process that has it loaded, which is what
  # happened to simulator processes when these runs shared a work tree with a core build.
  snap=$(mktemp -d)
  cp -r python "$snap/"
  export PYTHONPATH="$snap/python"
  echo "running from snapshot $snap/python" >&2
fi

run() {  # run NAME ARGS...
  local name=$1
  shift
  if [[ $only == all || $only == "$name" ]]; then
    echo "== $name" >&2
    "$PY" -m igw bench run "$@" "${COMMON[@]}" --json "$OUT/$name.json"
  fi
}

# Load: igw `default` sustained at most ~15 req/s on shared-prefix in this setup (offered 19.3,
# the `overload-shared-prefix` run below), so ~70% of the fleet's real capacity is ~10.5 req/s.
# 16 groups x 2,000-token system prompt + 64-token question, Poisson
run shared-prefix --workload shared-prefix --requests 600 --rate 10.5
# one group gets 45% of the requests: more than one replica can serve
run hot-prefix --workload hot-prefix --requests 600 --rate 10.5
# bursts of 32 simultaneous requests, same mean rate
run bursty --workload bursty --requests 576 --rate 10.5
# shared-prefix on a fleet whose last replica runs at half speed (7/8 of the capacity)
run slow-replica --workload shared-prefix --requests 600 --rate 9.2 --slow-replica
# chat sessions of 5 turns, history growing, 1 s think time (wall)
run multi-turn --workload multi-turn --requests 600 --rate 10.5 --think-time 1.0
# steady state: the same at 900 requests, the first 20 s (cold caches) left out of the figures
if [[ $only == shared-prefix-steady ]]; then
  run shared-prefix-steady --workload shared-prefix --requests 900 --rate 10.5 --warmup 20 \
    --duration-max 200
fi
# overload: --load 0.7 of the ideal estimate (capacity.py) = 19.3 req/s, more than any policy sustains
if [[ $only == overload-shared-prefix ]]; then
  run overload-shared-prefix --workload shared-prefix --requests 600 --load 0.7
fi
