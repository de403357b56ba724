#!/usr/bin/env bash
# CUDA verification and GPU benchmark in one run, for a short loan of a GPU machine.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--device cuda|cpu] [--tiny] [--budget SECONDS] [--stages LIST]
#   bash benchmarks/gpu_check.sh --device cpu --tiny --out /tmp/gpu_check_dry    # dry run of every stage on a CPU
#
# Stages (each independent, timed, with its own time limit; one failing does not stop the rest; the exit status is
# 0 only when every stage passed): env (versions, GPU, importable packages), tests (tests/commands/test_cuda.py, -m cuda),
# protect (protect_image.py on a synthetic Market-1501), attack (one recovery_attack.py epoch on its pairs), train (one
# train_reid.py epoch with SOLVER.AMP bf16), bench (benchmarks/bench_gpu.py, AGW resnet50_nl, batches 20/64/128),
# fidelity (benchmarks/bench_fidelity.py --device, what each speed option changes), models (bench_gpu.py for the
# cross-modality AGW and CLIP ViT-B/16 when importable), compile (torch.compile at batch 64). --stages picks a subset
# (comma-separated) for a rerun. The whole run stops starting stages once --budget seconds are spent (default 540;
# --tiny: 1200, and three times each stage's limit).
#
# Packages missing on the machine (pytorch-ignite, yacs, ...) are installed from the wheels in .whl/ (if any) into
# /tmp/site, only those not importable. Outputs in --out (default: $OUT when set, else log/gpu_check): gpu_check.log,
# env.json, test_cuda.xml, gpu_bench.json, gpu_bench.md, fidelity.json, fidelity.md. Work folders (data, runs) go
# under ${TMPDIR:-/tmp}/pixelfade_gpu_check.
set -u
export PYTHONUNBUFFERED=1

OUT_DIR=${OUT:-log/gpu_check}
DEVICE=cuda
TINY=0
BUDGET=
STAGES=env,tests,protect,attack,train,bench,fidelity,models,compile
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR=$2; shift 2 ;;
        --device) DEVICE=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --budget) BUDGET=$2; shift 2 ;;
        --stages) STAGES=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | grep '^#'; exit 0 ;;
        *) echo "gpu_check.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# A CPU dry run (--tiny) is slower per stage than the GPU and may share its cores: three times the stage limits.
if [ "$TINY" = 1 ]; then SCALE=3; BUDGET=${BUDGET:-1200}; else SCALE=1; BUDGET=${BUDGET:-540}; fi
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=${TMPDIR:-/tmp}/pixelfade_gpu_check
rm -rf "$WORK" && mkdir -p "$WORK"
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
START=$(date +%s)
SUMMARY=()
FAILED=0

# Sizes: the paper's input on a GPU; tiny ones for the CPU dry run.
if [ "$TINY" = 1 ]; then
    H=64; W=32; IDS=12; CAMS=2; PER=2; ITERS=2; BENCH=(--tiny)
    FIDELITY=(--scale small --num-ids 6 --max-iter 2 --variants channels_last bf16 tf32 tf32_convs --with-fp16)
    ATTACK=(--generator resnet_6blocks ATTACK.NGF 8); COMPILE_BATCH=2
else
    H=256; W=128; IDS=16; CAMS=3; PER=2; ITERS=20; BENCH=(); FIDELITY=(--scale gpu --with-fp16)
    ATTACK=(); COMPILE_BATCH=64
fi

stamp() { date -u +%H:%M:%S; }

wanted() { case ",$STAGES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# stage NAME LIMIT COMMAND...: run COMMAND under a time limit (never past the budget), log its time and status.
stage() {
    local name=$1 limit=$(($2 * SCALE)); shift 2
    wanted "$name" || return 0
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 20 ]; then
        echo "[$(stamp)] SKIP $name: the ${BUDGET} s budget is spent"
        SUMMARY+=("$name: skipped (budget)"); FAILED=1; return 0
    fi
    [ "$limit" -gt $((left - 5)) ] && limit=$((left - 5))
    echo "[$(stamp)] START $name (limit ${limit} s, $((($(date +%s) - START))) s elapsed)"
    local began rc
    began=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    local took=$(($(date +%s) - began))
    [ "$rc" = 124 ] && echo "[$(stamp)] $name: timed out after ${limit} s"
    echo "[$(stamp)] END $name: exit $rc, ${took} s"
    SUMMARY+=("$name: exit $rc, ${took} s")
    [ "$rc" = 0 ] || FAILED=1
}

install_wheels() {
    [ -d /tmp/site ] && export PYTHONPATH="/tmp/site:$PYTHONPATH"
    [ -d .whl ] || return 0
    local missing
    missing=$("$PY" - <<'EOF'
import glob, importlib.util, os
MODULES = {"pytorch_ignite": "ignite", "open_clip_torch": "open_clip", "pyyaml": "yaml"}
for path in sorted(glob.glob(".whl/*.whl")):
    dist = os.path.basename(path).split("-")[0].lower()
    if importlib.util.find_spec(MODULES.get(dist, dist)) is None:
        print(path)
EOF
)
    if [ -n "$missing" ]; then
        echo "[$(stamp)] installing into /tmp/site: $(echo $missing | tr '\n' ' ')"
        # shellcheck disable=SC2086
        "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site $missing || return 1
        export PYTHONPATH="/tmp/site:$PYTHONPATH"
    fi
}

env_report() {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" - "$OUT_DIR/env.json" <<'EOF'
import importlib, json, os, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cpus": os.cpu_count()}
if torch.cuda.is_available():
    info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), gpus=torch.cuda.device_count(),
                name=torch.cuda.get_device_name(0), capability=torch.cuda.get_device_capability(0),
                bf16=torch.cuda.is_bf16_supported(), nccl=torch.distributed.is_nccl_available())
for module in ("ignite", "yacs", "piq", "lpips", "open_clip", "scipy", "h5py", "matplotlib", "PIL", "timm"):
    try:
        info[module] = getattr(importlib.import_module(module), "__version__", "present")
    except Exception as err:
        info[module] = f"missing: {type(err).__name__}: {err}"
print(json.dumps(info, indent=1))
json.dump(info, open(sys.argv[1], "w"), indent=1)
missing = [m for m in ("ignite", "yacs", "piq") if str(info[m]).startswith("missing")]
sys.exit(f"required packages missing: {missing}" if missing else 0)
EOF
}

make_data() {
    "$PY" -c "from data.synthetic import make_market1501; make_market1501('$WORK/data', num_ids=$IDS, num_cams=$CAMS, \
images_per_id_cam=$PER, height=$H, width=$W)"
}

echo "[$(stamp)] gpu_check: device $DEVICE, tiny $TINY, budget $BUDGET s, stages $STAGES, out $OUT_DIR"
install_wheels || { SUMMARY+=("wheels: install failed"); FAILED=1; }

export -f env_report
export PY OUT_DIR
stage env 60 bash -c env_report
stage tests 180 "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda tests/commands/test_cuda.py \
    --junitxml="$OUT_DIR/test_cuda.xml"
if wanted protect || wanted attack || wanted train; then
    make_data || { SUMMARY+=("data: generation failed"); FAILED=1; }
fi
stage protect 90 "$PY" protect_image.py --random_init --root "$WORK/data" --output "$WORK/protect" --device "$DEVICE" \
    --save_image_npy --max_iter "$ITERS" --no_progress --num_workers 2 INPUT.IMG_SIZE "[$H, $W]"
stage attack 90 "$PY" recovery_attack.py --npy_path "$WORK/protect" --total_epochs 1 --device "$DEVICE" \
    --attacker both --no_progress "${ATTACK[@]}" DATALOADER.NUM_WORKERS 2
stage train 90 "$PY" train_reid.py --root "$WORK/data" --output "$WORK/train" --device "$DEVICE" --max_epochs 1 \
    --num_workers 2 --no_progress SOLVER.AMP bf16 SOLVER.IMS_PER_BATCH 16 SOLVER.EVAL_PERIOD 1 \
    SOLVER.CHECKPOINT_PERIOD 1 INPUT.IMG_SIZE "[$H, $W]"
stage bench 150 "$PY" benchmarks/bench_gpu.py --device "$DEVICE" --out "$OUT_DIR" --models agw "${BENCH[@]}"
stage fidelity 150 "$PY" benchmarks/bench_fidelity.py --work "$WORK/fidelity" --device "$DEVICE" --in-process \
    "${FIDELITY[@]}"
[ -f "$WORK/fidelity/fidelity.json" ] && cp "$WORK/fidelity/fidelity.json" "$WORK/fidelity/fidelity.md" "$OUT_DIR/"
stage models 120 "$PY" benchmarks/bench_gpu.py --device "$DEVICE" --out "$OUT_DIR" --models agw_vi clip "${BENCH[@]}"
stage compile 200 "$PY" benchmarks/bench_gpu.py --device "$DEVICE" --out "$OUT_DIR" --models agw --compile-only \
    --compile-batch "$COMPILE_BATCH" "${BENCH[@]}"

echo "[$(stamp)] summary ($(($(date +%s) - START)) s in all):"
printf '  %s\n' "${SUMMARY[@]}"
[ -f "$OUT_DIR/gpu_bench.md" ] && cat "$OUT_DIR/gpu_bench.md"
[ -f "$OUT_DIR/fidelity.md" ] && cat "$OUT_DIR/fidelity.md"
if [ "$FAILED" = 0 ]; then echo "gpu_check: all stages passed"; else echo "gpu_check: some stages failed"; fi
exit "$FAILED"
