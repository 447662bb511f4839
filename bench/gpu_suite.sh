#!/usr/bin/env bash
# GPU benchmark suite for a machine with a CUDA GPU (torchvision, onnx, onnxruntime
# installed; no network needed). Run it in parts, each well under ten minutes:
#
#   bash bench/gpu_suite.sh tables      # torch CUDA tables, fp16: resnet18, resnet50, mobilenet_v2
#   bash bench/gpu_suite.sh fidelity    # predicted vs measured on 20 random pruned copies each
#   bash bench/gpu_suite.sh prune       # prune to $TARGET (importance from random data), verify
#   bash bench/gpu_suite.sh inspect     # inspect --check on torchvision classifiers and SSDlite
#   bash bench/gpu_suite.sh lease       # for a short loan of a GPU: verify_cuda.py, then per
#                                       # model of $MODELS its batch-$BATCH table, fidelity
#                                       # and prune, all within $BUDGET_S seconds
#   bash bench/gpu_suite.sh pareto      # bench/pareto.py on the GPU: the harder digits'
#                                       # MobileNetV2, measured table against MACs table,
#                                       # uniform width and Torch-Pruning's Taylor, all
#                                       # trained and timed there, within $BUDGET_S seconds
#
# Results go to $RESULTS (default bench/results/gpu); tables to $WORK (default
# /tmp/halp-trt-gpu). Every JSON records the device it ran on. Set DEVICE=cpu, BATCH and
# MODELS (and TARGET, default 0.8x) to smoke-test the script without a GPU (the figures
# then mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

PART=${1:?usage: bench/gpu_suite.sh tables|fidelity|prune|inspect|lease|pareto}
case "$PART" in
tables | fidelity | prune | inspect | lease | pareto) ;;
*) echo "gpu_suite.sh: unknown part $PART (tables, fidelity, prune, inspect, lease, pareto)" >&2; exit 2 ;;
esac
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-fp16}
BATCH=${BATCH:-32}
# On an H200 (fp16, batch 32, 224x224) the tables allow ResNet-18 no less than 0.73x and
# MobileNetV2 no less than 0.61x with every group keeping 0.3 of its channels: 0.5x is
# refused there, so the default asks for what both can reach.
TARGET=${TARGET:-0.8x}
SIZE=${SIZE:-224}
MODELS=${MODELS:-torchvision:resnet18 torchvision:resnet50 torchvision:mobilenet_v2}
RESULTS=${RESULTS:-bench/results/gpu}
WORK=${WORK:-/tmp/halp-trt-gpu}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS" "$WORK"
export PYTHONUNBUFFERED=1

slug() { echo "$1" | tr ':/.' '___'; }

# Without halp-trt installed (on PYTHONPATH only) lut_builder finds no narrowed copies to
# fit the tables' affine network model on, and falls back to the additive one.
if ! "$PY" -c "import sys; from importlib.metadata import entry_points as e; sys.exit(not e(group='lut_builder.calibration_variants'))"; then
  echo "note: halp-trt is not installed (pip install --no-deps -e .): tables get the additive network model" >&2
fi

$PY - "$RESULTS/device_${PART}.json" <<'PY'
import json, sys, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1))
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(info)
PY

# Every step below runs under `within SECONDS cmd...`: at most SECONDS, and never past
# $DEADLINE (set by the lease part; far away otherwise). A step cut short exits 124.
DEADLINE=$(( $(date +%s) + 10#${BUDGET_S:-864000} ))
within() {
  local cap=$1 left
  shift
  left=$(( DEADLINE - $(date +%s) ))
  (( left < cap )) && cap=$left
  if (( cap < 5 )); then echo "no time left for: $*" >&2; return 124; fi
  timeout -k 5 "$cap" "$@"
}

table() {  # table MODEL BATCH [SECONDS]
  local s b=$2
  s=$(slug "$1")
  within "${3:-86400}" "$PY" -m lut_builder build --model "$1" --input-shape "$b,3,$SIZE,$SIZE" \
    --backend torch --precision "$PRECISION" --device "$DEVICE" --out "$WORK/${s}_b${b}.lut" \
    --json > "$RESULTS/lut_build_${s}_b${b}.json" || return $?
  "$PY" -m lut_builder show "$WORK/${s}_b${b}.lut" --json > "$RESULTS/lut_show_${s}_b${b}.json"
}

fidelity() {  # fidelity MODEL [SECONDS]
  local s
  s=$(slug "$1")
  within "${2:-86400}" "$PY" bench/lut_fidelity.py --model "$1" --backend torch \
    --input-shape "$BATCH,3,$SIZE,$SIZE" --device "$DEVICE" --precision "$PRECISION" \
    --table "$WORK/${s}_b${BATCH}.lut" --samples 20 --out "$RESULTS/lut_fidelity_${s}_b${BATCH}.json"
}

random_data() {  # importance from random data: what matters here is latency, not accuracy
  "$PY" - "$WORK/random.npz" "$SIZE" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(0)
n, size = 512, int(sys.argv[2])
np.savez(sys.argv[1], images=rng.standard_normal((n, 3, size, size)).astype(np.float32),
         labels=rng.integers(0, 10, n))  # valid for any classifier with >= 10 classes
PY
}

prune() {  # prune MODEL [SECONDS]: prune to $TARGET on the batch-$BATCH table, each step's
  # plan measured on this GPU (feedback), then verify
  local s
  s=$(slug "$1")
  rm -rf "$WORK/pruned_$s"
  if ! within "${2:-86400}" "$PY" -m halp_trt prune --model "$1" --data "npz:$WORK/random.npz" \
    --lut "$WORK/${s}_b${BATCH}.lut" --target "$TARGET" --input-shape "$BATCH,3,$SIZE,$SIZE" \
    --epochs 2 --steps 5 --batch-size 32 --device "$DEVICE" --feedback --no-progress --out "$WORK/pruned_$s" \
    2> "$RESULTS/prune_${s}.err"; then
    cat "$RESULTS/prune_${s}.err" >&2
    echo "prune failed for $1 (kept in $RESULTS/prune_${s}.err); next model" >&2
    return 1
  fi
  rm -f "$RESULTS/prune_${s}.err"
  cp "$WORK/pruned_$s/plan.json" "$RESULTS/plan_${s}.json"
  # A missed budget exits 1: the report is written all the same.
  within 120 "$PY" -m halp_trt verify --original "$1" --pruned "$WORK/pruned_$s/model.pt" \
    --backend torch --device "$DEVICE" --precision "$PRECISION" \
    --input-shape "$BATCH,3,$SIZE,$SIZE" --plan "$WORK/pruned_$s/plan.json" \
    --out "$RESULTS/verify_${s}_b${BATCH}.json" || true
}

case "$PART" in
tables)
  for m in $MODELS; do
    for b in 1 "$BATCH"; do table "$m" "$b"; done
  done ;;
fidelity)
  for m in $MODELS; do fidelity "$m"; done ;;
prune)
  random_data
  for m in $MODELS; do prune "$m" || continue; done ;;
lease)
  # What a loan of a few minutes can hold, cheapest first: ResNet-50 narrowed uniformly
  # to 0.7 of its widths (no table needed), then per model its table, the table's
  # fidelity and a pruned copy's measured speed-up. A step that fails or runs out of time
  # is logged and the next one starts; a model whose table is unfinished is skipped.
  DEADLINE=$(( $(date +%s) + 10#${BUDGET_S:-480} ))
  echo "== verify_cuda.py ($(( DEADLINE - $(date +%s) )) s left)" >&2
  within "${VERIFY_S:-90}" "$PY" bench/verify_cuda.py --device "$DEVICE" --batch "$BATCH" --eager \
    --size "$SIZE" --precision "$PRECISION" --out "$RESULTS/verify_resnet50_uniform.json" \
    || echo "verify_cuda.py: exit $?" >&2
  random_data
  for m in $MODELS; do
    echo "== $m: table, fidelity, prune ($(( DEADLINE - $(date +%s) )) s left)" >&2
    table "$m" "$BATCH" "${TABLE_S:-200}" || { echo "table of $m: exit $?" >&2; continue; }
    fidelity "$m" "${FIDELITY_S:-90}" || echo "fidelity of $m: exit $?" >&2
    prune "$m" "${PRUNE_S:-120}" || true
  done
  echo "== done ($(( DEADLINE - $(date +%s) )) s left)" >&2 ;;
pareto)
  # Accuracy against measured latency where a MAC count is furthest from latency: every
  # model trained on the GPU and timed there (torch, $PRECISION, each model one CUDA graph),
  # at latency batch $PBATCH and $PSIZE x $PSIZE (the 16x16 digits resized). Training is
  # seconds a method there (1437 training images); the table and the pruner's feedback
  # take most of the time. The result is rewritten after every seed and target, so a run
  # cut at the deadline keeps what finished.
  DEADLINE=$(( $(date +%s) + 10#${BUDGET_S:-480} ))
  PMODEL=${PMODEL:-halp_trt.models:mobilenetv2_cifar}
  PSIZE=${PSIZE:-64}
  PBATCH=${PBATCH:-128}
  DATA=${DATA:-npz:$WORK/digits_hard_v4.npz}
  if [[ $DATA == "npz:$WORK/digits_hard_v4.npz" && ! -f $WORK/digits_hard_v4.npz ]]; then
    "$PY" bench/hard_digits.py --out "$WORK/digits_hard_v4.npz" --val-copies 4
  fi
  s=$(slug "$PMODEL")
  echo "== pareto.py, $PMODEL at ${PBATCH}x3x${PSIZE}x${PSIZE} ($(( DEADLINE - $(date +%s) )) s left)" >&2
  within "${PARETO_S:-86400}" "$PY" bench/pareto.py --model "$PMODEL" --data "$DATA" \
    --input-shape "$PBATCH,3,$PSIZE,$PSIZE" --backend torch --device "$DEVICE" \
    --precision "$PRECISION" --pretrain-epochs "${PPRETRAIN:-10}" --epochs "${PEPOCHS:-6}" \
    --steps 5 --step "${PSTEP:-16}" --timing blocks --rounds 30 \
    --targets "${PTARGETS:-0.7x}" --seeds "${PSEEDS:-0,1,2}" \
    --methods "${PMETHODS:-halp-taylor-weights,halp-taylor-weights-macs,uniform,tp-taylor}" \
    --table "$WORK/pareto_${s}_b${PBATCH}_${PSIZE}.lut" \
    --out "$RESULTS/pareto_${s}_b${PBATCH}_${PSIZE}_${DEVICE%%:*}.json" \
    || echo "pareto.py: exit $?" >&2
  echo "== done ($(( DEADLINE - $(date +%s) )) s left)" >&2 ;;
inspect)
  CLASSIFIERS=${CLASSIFIERS:-$($PY -c "import torchvision.models as m; print(' '.join('torchvision:' + n for n in m.list_models(module=m)))")}
  for m in $CLASSIFIERS; do
    s=$(slug "$m")
    "$PY" -m halp_trt inspect --model "$m" --input-shape "1,3,$SIZE,$SIZE" --check --json \
      > "$WORK/inspect_${s}.json" 2> "$WORK/inspect_${s}.err" && rc=0 || rc=$?
    "$PY" - "$m" "$rc" "$WORK/inspect_${s}.json" "$WORK/inspect_${s}.err" >> "$WORK/inspect.jsonl" <<'PY'
import json, sys
name, rc, out, err = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    d = json.load(open(out))
    row = {"model": name, "rc": rc, "groups": len(d["groups"]),
           "prunable": sum(g["prunable"] for g in d["groups"]), "check": d.get("check")}
except Exception:
    row = {"model": name, "rc": rc, "error": open(err).read().strip().splitlines()[-1:]}
print(json.dumps(row))
PY
  done
  "$PY" -m halp_trt inspect --model torchvision:ssdlite320_mobilenet_v3_large \
    --input-shape 1,3,320,320 --check --json > "$RESULTS/inspect_ssdlite.json" || true
  "$PY" -c "import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]; json.dump(rows, open(sys.argv[2],'w'), indent=1); print(sum(r['rc']==0 for r in rows), 'of', len(rows), 'passed')" \
    "$WORK/inspect.jsonl" "$RESULTS/inspect_torchvision.json"
  rm -f "$WORK/inspect.jsonl" ;;
esac
