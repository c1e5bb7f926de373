#!/usr/bin/env bash
# The prepared GPU check: the scoring, training and evaluation benchmarks with --device cuda, each side by side with
# its peer in the same run, on one GPU, in under 9 minutes (one H100/H200; the sum of the step timeouts is 510 s).
#
#   bash bench/gpu.sh              # from the repository root, on a machine set up as README's "Set up" says
#   bash bench/gpu.sh --dry-run    # print the commands only (also: KD_GPU_DRY_RUN=1)
#
# Writes bench/results/scoring-gpu.json   (pairs/s: kd padded, kd unpadded, sentence-transformers CrossEncoder.predict)
#        bench/results/training-gpu.json  (triples/s and wall time: jobs.distill vs the sentence-transformers MarginMSE loop)
#        bench/results/evaluation-gpu.json (wall time and nDCG@10: kd dense evaluation vs BEIR EvaluateRetrieval)
# each with `speedup_vs_peer` and `mfu` (achieved model FLOP/s / the GPU's dense bf16 peak) at top level; the FLOP
# count formula is named in the JSON. A failing step does not stop the others; the exit status is non-zero when any
# step failed, timed out, or wrote a JSON without those two keys.
#
# Environment: PYTHON (default python), KD_PEAK_TFLOPS (default: from the GPU's name; H100/H200 989 dense bf16),
# KD_GPU_NO_INSTALL=1 (never pip install), KD_GPU_DRY_RUN=1.
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" || "${KD_GPU_DRY_RUN:-0}" == "1" ]]; then DRY=1; fi
PY="${PYTHON:-python}"
OUT=bench/results
# per-step limits (seconds): scoring ~1.5 min, training ~3 min (two Ray/DeepSpeed start-ups), evaluation ~1 min
T_SCORING=150
T_TRAINING=240
T_EVALUATION=120
FAILED=()
START=$SECONDS

say() { printf '\n==== %s\n' "$*"; }

run_step() {  # run_step NAME LIMIT_S CMD...: the command under `timeout`, its failure recorded, never fatal
  local name=$1 limit=$2
  shift 2
  say "$name (limit ${limit} s): $*"
  if [[ $DRY == 1 ]]; then
    echo "timeout $limit $*"
    return 0
  fi
  local t0=$SECONDS rc=0
  timeout --kill-after=5 "$limit" "$@" || rc=$?
  echo "---- $name: rc $rc in $((SECONDS - t0)) s"
  if [[ $rc != 0 ]]; then
    FAILED+=("$name (rc $rc$([[ $rc == 124 || $rc == 137 ]] && echo ", timed out after ${limit} s"))")
  fi
}

check_keys() {  # check_keys NAME FILE: the JSON exists and carries speedup_vs_peer and mfu at top level
  local name=$1 file=$2
  if [[ $DRY == 1 ]]; then
    echo "check $file has top-level speedup_vs_peer, mfu"
    return 0
  fi
  if ! "$PY" - "$file" <<'EOF'; then
import json, sys
path = sys.argv[1]
try:
    r = json.load(open(path))
except Exception as e:
    sys.exit(f"{path}: not written or not JSON ({e})")
missing = [k for k in ("speedup_vs_peer", "mfu") if k not in r]
print(f"{path}: speedup_vs_peer={r.get('speedup_vs_peer')} mfu={r.get('mfu')}")
sys.exit(f"{path}: missing top-level keys {missing}" if missing else 0)
EOF
    FAILED+=("$name (JSON keys)")
  fi
}

# ---------------------------------------------------------------------------------------------------- the machine
say "machine"
if [[ $DRY == 1 ]]; then
  echo "nvidia-smi; $PY -c 'import torch, flash_attn, ...: versions'"
  PEAK="${KD_PEAK_TFLOPS:-989}"
else
  nvidia-smi || FAILED+=("nvidia-smi")
  if [[ "${KD_GPU_NO_INSTALL:-0}" != "1" ]] && ! "$PY" -c "import kd, sentence_transformers, beir" 2>/dev/null; then
    say "installing the package as README's Set up does (torch: keep the CUDA build already installed)"
    "$PY" -m pip install -e ".[dev]" || FAILED+=("pip install -e .[dev]")
  fi
  "$PY" - <<'EOF' || FAILED+=("torch sees no GPU")
import importlib, sys
import torch
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  CUDA {torch.version.cuda}  "
      f"cuDNN {torch.backends.cudnn.version()}")
for name in ("flash_attn", "transformers", "sentence_transformers", "beir", "deepspeed", "ray"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__}: {e})")
from kd.models import unpadded as up
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False")
print(f"GPU {torch.cuda.get_device_name(0)}; unpadded attention kernel in bf16: "
      f"{up.attention_kernel(torch.zeros(1, 1, 8, device='cuda', dtype=torch.bfloat16))}")
EOF
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  case "$GPU_NAME" in
    *H100*|*H200*|*H800*|*GH200*) DEFAULT_PEAK=989 ;;
    *A100*|*A800*) DEFAULT_PEAK=312 ;;
    *L40S*) DEFAULT_PEAK=362 ;;
    *) DEFAULT_PEAK=989; echo "unknown GPU '$GPU_NAME': MFU against 989 TFLOP/s (set KD_PEAK_TFLOPS)" ;;
  esac
  PEAK="${KD_PEAK_TFLOPS:-$DEFAULT_PEAK}"
fi
echo "peak dense bf16 TFLOP/s for MFU: $PEAK"
mkdir -p "$OUT"

# ------------------------------------------------------------------------------------------------- the benchmarks
# scoring: 20,000 DL'19 pairs, batch 256, bf16 autocast; rows ours (padded), ours_unpadded, CrossEncoder.predict
run_step scoring "$T_SCORING" "$PY" bench/scoring.py --device cuda --precision autocast-bf16 --pairs 20000 \
  --batch-size 256 --repeats 2 --unpadded-row --peak-tflops "$PEAK" --out "$OUT/scoring-gpu.json"
check_keys scoring "$OUT/scoring-gpu.json"

# training: jobs.distill (Ray Train + DeepSpeed, bf16) vs the sentence-transformers MarginMSE loop, 200 timed steps
run_step training "$T_TRAINING" "$PY" bench/training.py --device cuda --precision bf16 --steps 200 --warmup 20 \
  --micro-batch 32 --no-diagnostics --no-two-workers --no-thread-probe --job-timeout 180 --peak-tflops "$PEAK" \
  --out "$OUT/training-gpu.json"
check_keys training "$OUT/training-gpu.json"

# evaluation: SciFact dense retrieval, kd vs BEIR EvaluateRetrieval (wall time, nDCG@10), plus the efficiency part
run_step evaluation "$T_EVALUATION" "$PY" bench/evaluation.py --device cuda --batch-size 256 \
  --peak-tflops "$PEAK" --out "$OUT/evaluation-gpu.json"
check_keys evaluation "$OUT/evaluation-gpu.json"

# ------------------------------------------------------------------------------------------------------ the verdict
say "done in $((SECONDS - START)) s"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  printf 'FAILED: %s\n' "${FAILED[@]}"
  exit 1
fi
echo "all steps passed; results in $OUT/*-gpu.json"
