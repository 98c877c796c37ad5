#!/usr/bin/env bash
# certtrain's training step against auto_LiRPA 0.7.1's (the peer) in one sitting, alternated.
#
#   bash scripts/bench_vs_peer.sh [ROUNDS] [PEER_PYTHON] [THREADS]
#
# PEER_PYTHON (default /work/peer/venv/bin/python) is a virtual environment with auto_LiRPA
# installed (scripts/bench_auto_lirpa.py says how). Each round runs certtrain's bench.py and
# the peer's bench once each, DM-small MNIST batch 256, IBP and CROWN-IBP; the last line is the
# median over rounds of each ms figure and of certtrain / auto_LiRPA per method, and (from the
# last round) each step's GFLOP, peak memory and the matmul rate as certtrain/cost.py measures them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
PEER=${2:-/work/peer/venv/bin/python}
THREADS=${3:-2}
LOG=$(mktemp)
for round in $(seq "$ROUNDS"); do
  python scripts/bench.py --methods ibp,crown_ibp,crown_ibp_fused --steps 10 --threads "$THREADS" 2>/dev/null \
    | tail -n 1 | sed 's/^/certtrain /' | tee -a "$LOG"
  "$PEER" scripts/bench_auto_lirpa.py --methods ibp,crown_ibp --steps 10 --threads "$THREADS" 2>/dev/null \
    | tail -n 1 | sed 's/^/peer /' | tee -a "$LOG"
done
python - "$LOG" <<'PY'
import json, statistics, sys
runs, last = {"certtrain": [], "peer": []}, {}
for line in open(sys.argv[1]):
    who, text = line.split(" ", 1)
    last[who] = json.loads(text)
    runs[who].append(last[who]["ms_per_step"])
median = {who: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for who, rs in runs.items()}
ratio = {k: round(median["certtrain"][k] / median["peer"][k], 3) for k in median["peer"] if k in median["certtrain"]}
cost = {who: {k: v for k, v in run.items() if k in ("gflop_per_step", "peak_step_mb", "matmul_gflops")} for who, run in last.items()}
print(json.dumps({"rounds": len(runs["peer"]), "median_ms": median, "certtrain_over_peer": ratio, "last_round_cost": cost}))
PY
