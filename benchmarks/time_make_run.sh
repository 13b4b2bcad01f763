#!/usr/bin/env bash
# Wall time of `make run`: cold (empty feature cache) and warm (second run, cache filled).
# Writes benchmarks/make_run_timing.json. Needs an installed venv (`make install`) and a
# quiet machine. Uses its own cache folder, so the checkout's cache is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
run() { local t0; t0=$(date +%s); FACECHECK_CACHE="$cache" make run REPORT="$cache/report" SCORES="$cache/scores.csv" >/dev/null 2>&1; echo $(( $(date +%s) - t0 )); }
cold=$(run)
warm=$(run)
machine=$(.venv/bin/python -c "from facecheck.evaluation.report import machine_description as m; print(m())")
cat > benchmarks/make_run_timing.json <<JSON
{"runs": {"cold (empty feature cache)": $cold, "warm (second run)": $warm},
 "machine": "$machine", "date": "$(date +%F)"}
JSON
cat benchmarks/make_run_timing.json
