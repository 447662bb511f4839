#!/usr/bin/env bash
# GPU benchmark suite for a machine with a CUDA GPU (torchvision, onnx, onnxruntime
# installed; no network needed). Run it in parts, each well under ten minutes:
#
#   bash bench/gpu_suite.sh tables      # torch CUDA tables, fp16: resnet18, resnet50, mobilenet_v2
#   bash bench/gpu_suite.sh fidelity    # predicted vs measured on 20 random pruned copies each
#   bash bench/gpu_suite.sh prune       # prune to 0.5x (importance from random data), verify
#   bash bench/gpu_suite.sh inspect     # inspect --check on torchvision classifiers and SSDlite
#
# Results go to $RESULTS (default bench/results/gpu); tables to $WORK (default
# /tmp/halp-trt-gpu). Every JSON records the device it ran on. Set DEVICE=cpu, BATCH and
# MODELS (and TARGET, default 0.5x) to smoke-test the script without a GPU (the figures
# then mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

PART=${1:?usage: bench/gpu_suite.sh tables|fidelity|prune|inspect}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-fp16}
BATCH=${BATCH:-32}
TARGET=${TARGET:-0.5x}
SIZE=${SIZE:-224}
MODELS=${MODELS:-torchvision:resnet18 torchvision:resnet50 torchvision:mobilenet_v2}
RESULTS=${RESULTS:-bench/results/gpu}
WORK=${WORK:-/tmp/halp-trt-gpu}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS" "$WORK"
export PYTHONUNBUFFERED=1

slug() { echo "$1" | tr ':/.' '___'; }

$PY - "$RESULTS/device_${PART}.json" <<'PY'
import json, sys, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1))
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(info)
PY

case "$PART" in
tables)
  for m in $MODELS; do
    s=$(slug "$m")
    for b in 1 "$BATCH"; do
      "$PY" -m lut_builder build --model "$m" --input-shape "$b,3,$SIZE,$SIZE" --backend torch \
        --precision "$PRECISION" --device "$DEVICE" --out "$WORK/${s}_b${b}.lut" --json \
        > "$RESULTS/lut_build_${s}_b${b}.json"
      "$PY" -m lut_builder show "$WORK/${s}_b${b}.lut" --json > "$RESULTS/lut_show_${s}_b${b}.json"
    done
  done ;;
fidelity)
  for m in $MODELS; do
    s=$(slug "$m")
    "$PY" bench/lut_fidelity.py --model "$m" --input-shape "$BATCH,3,$SIZE,$SIZE" --backend torch \
      --table "$WORK/${s}_b${BATCH}.lut" --samples 20 --out "$RESULTS/lut_fidelity_${s}_b${BATCH}.json"
  done ;;
prune)
  # Importance from random data: what matters here is latency, not accuracy.
  "$PY" - "$WORK/random.npz" "$SIZE" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(0)
n, size = 512, int(sys.argv[2])
np.savez(sys.argv[1], images=rng.standard_normal((n, 3, size, size)).astype(np.float32),
         labels=rng.integers(0, 10, n))  # valid for any classifier with >= 10 classes
PY
  for m in $MODELS; do
    s=$(slug "$m")
    rm -rf "$WORK/pruned_$s"
    if ! "$PY" -m halp_trt prune --model "$m" --data "npz:$WORK/random.npz" \
      --lut "$WORK/${s}_b${BATCH}.lut" --target "$TARGET" --input-shape "$BATCH,3,$SIZE,$SIZE" \
      --epochs 2 --steps 5 --batch-size 32 --device "$DEVICE" --no-progress --out "$WORK/pruned_$s" \
      2> "$RESULTS/prune_${s}.err"; then
      cat "$RESULTS/prune_${s}.err" >&2
      echo "prune failed for $m (kept in $RESULTS/prune_${s}.err); next model" >&2
      continue
    fi
    rm -f "$RESULTS/prune_${s}.err"
    cp "$WORK/pruned_$s/plan.json" "$RESULTS/plan_${s}.json"
    "$PY" -m halp_trt verify --original "$m" --pruned "$WORK/pruned_$s/model.pt" --backend torch \
      --device "$DEVICE" --precision "$PRECISION" --input-shape "$BATCH,3,$SIZE,$SIZE" \
      --plan "$WORK/pruned_$s/plan.json" \
      --out "$RESULTS/verify_${s}_b${BATCH}.json" || true   # a missed budget exits 1: keep going
  done ;;
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
*) echo "unknown part $PART" >&2; exit 2 ;;
esac
