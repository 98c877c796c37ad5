#!/usr/bin/env bash
# The GPU check: certtrain on a CUDA machine without network, in at most 8 minutes.
#
#   bash scripts/gpu_check.sh WHEELS_DIR [OUT_DIR]
#
# WHEELS_DIR holds wheels of certtrain's dependencies other than torch (the machine's own CUDA
# torch is kept; torch >= 2.11 is accepted). Fill it on a machine with network, for the GPU
# machine's Python (README, "GPUs and clusters"). Prints one JSON line per part and writes them
# to OUT_DIR/gpu_check.jsonl (default results/gpu):
#   device_tests  python -m pytest -m device on CUDA (values compared with the CPU's)
#   bench_*       scripts/bench.py --device cuda: dm_small batch 256 every method; dm_medium
#                 CIFAR batch 128 CROWN-IBP; cnn7 CIFAR batch 256 IBP and CROWN-IBP (+ fused),
#                 with seconds per CIFAR epoch (50,000 / batch steps) derived from ms per step
#   train_gm      a two-epoch gm_crown_ibp run on the offline mnist5k digits
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:?usage: bash scripts/gpu_check.sh WHEELS_DIR [OUT_DIR]}
OUT=${2:-results/gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.jsonl"
: >"$LOG"

SITE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl || exit 1
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')" || exit 1
GPU=$(python3 -c "import torch; print(torch.cuda.get_device_name(0))")
TORCH=$(python3 -c "import torch; print(torch.__version__)")

# part NAME LIMIT_S COMMAND...: runs the command with a time limit and prints its JSON line
# (the command's own last JSON line merged in when it prints one).
part() {
  local name=$1 limit=$2
  shift 2
  local started output rc
  started=$(date +%s.%N)
  output=$(timeout "$limit" "$@" 2>"$OUT/$name.err")
  rc=$?
  python3 - "$name" "$rc" "$started" "$GPU" "$TORCH" "$output" <<'EOF' | tee -a "$LOG"
import json, sys, time
name, rc, started, gpu, torch_version, output = sys.argv[1:]
line = {"part": name, "rc": int(rc), "seconds": round(time.time() - float(started), 1), "gpu": gpu, "torch": torch_version}
for text in reversed(output.strip().splitlines()):
    if text.startswith("{"):
        result = json.loads(text)
        line.update(result)
        steps = {"cifar10": 50000}.get(result.get("dataset"))
        if steps and "ms_per_step" in result:
            per_epoch = -(-steps // result["batch"])
            line["s_per_epoch"] = {k: round(ms * per_epoch / 1000, 1) for k, ms in result["ms_per_step"].items()}
        break
else:
    line["tail"] = output.strip().splitlines()[-3:]
print(json.dumps(line))
EOF
}

export CERTTRAIN_TEST_DEVICE=cuda
part device_tests 90 python3 -m pytest -q -m device -p no:cacheprovider tests/test_device.py
part bench_dm_small 90 python3 scripts/bench.py --device cuda --model dm_small --batch 256 --steps 10
part bench_dm_medium 60 python3 scripts/bench.py --device cuda --model dm_medium --dataset cifar10 --batch 128 --steps 10 --methods crown_ibp,crown_ibp_fused
part bench_cnn7 90 python3 scripts/bench.py --device cuda --model cnn7 --dataset cifar10 --batch 256 --steps 10 --methods ibp,crown_ibp,crown_ibp_fused
part train_gm 120 python3 train.py method=gm_crown_ibp epochs=2 device=cuda eval.every=0 "hydra.run.dir=$OUT/train_gm"
echo "figures: $LOG"
