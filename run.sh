#!/usr/bin/env bash
# PixelFade toolkit entry points.
#
#   bash run.sh [demo]      synthetic data, untrained AGW, protection + recovery attack (CPU, minutes)
#   bash run.sh test        the test suite
#   bash run.sh market1501  protect Market-1501 with the reference settings, then the recovery attack
#   bash run.sh cuhk03      same for CUHK03 (new protocol, detected; beta_temp 0.02)
#   bash run.sh msmt17      same for MSMT17
#   bash run.sh all         market1501, cuhk03 and msmt17 in turn
#   bash run.sh train_market1501|train_cuhk03|train_msmt17
#                           train an AGW authorization model (train_reid.py, the ReID-Survey recipe);
#                           IMAGENET_WEIGHTS=$CKPT_DIR/resnet50-19c8e357.pth (torchvision file, never
#                           downloaded; missing = random init, logged)
#
# Variables (with defaults): DATA_ROOT=./datasets  CKPT_DIR=./ckpt  OUTPUT_ROOT=./log  VENV=./.venv
# DEVICE=auto  NPROC=1 (processes, e.g. one per GPU)  EXTRA_ARGS="" (added to protect_image.py).
# The first call creates the virtual environment from requirements.txt (about 6 GB: the CUDA
# build of torch, which also runs on the CPU) and installs this project into it in editable mode.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
DATA_ROOT=${DATA_ROOT:-${PIXELFADE_DATA:-./datasets}}
CKPT_DIR=${CKPT_DIR:-./ckpt}
OUTPUT_ROOT=${OUTPUT_ROOT:-./log}
DEVICE=${DEVICE:-auto}
NPROC=${NPROC:-1}
EXTRA_ARGS=${EXTRA_ARGS:-}

ensure_env() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "== creating virtual environment $VENV"
        python3 -m venv "$VENV"
    fi
    # Reinstall when requirements.txt (the pins) or pyproject.toml (the project) changes.
    local stamp="$VENV/.requirements.sha256"
    local want
    want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
        echo "== installing requirements.txt and this project (editable) into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
        echo "$want" > "$stamp"
    fi
    PY="$VENV/bin/python"
}

checkpoint_for() {
    local dataset=$1
    local ckpt="$CKPT_DIR/${dataset}_resnet50_nl_model_120.pth"
    if [ ! -f "$ckpt" ]; then
        echo "run.sh: missing checkpoint $ckpt" >&2
        echo "  Download the authors' AGW model trained on $dataset (links in the README of the" >&2
        echo "  iSEE-Laboratory/PixelFade GitHub repository, 'Download Pre-trained Models') and put it" >&2
        echo "  at $ckpt, or set CKPT_DIR. See ckpt/README.md." >&2
        exit 1
    fi
    echo "$ckpt"
}

check_dataset() {
    local dataset=$1
    if [ ! -d "$DATA_ROOT" ]; then
        echo "run.sh: data set root $DATA_ROOT not found (set DATA_ROOT)." >&2
        echo "  The accepted layouts for $dataset are listed in README.md, 'Reproducing the paper'." >&2
        exit 1
    fi
}

reproduce() {
    local dataset=$1
    local ckpt
    ckpt=$(checkpoint_for "$dataset")
    check_dataset "$dataset"
    ensure_env
    local out="$OUTPUT_ROOT/${dataset}_protect"
    echo "== protecting $dataset -> $out"
    # shellcheck disable=SC2086
    "$PY" protect_image.py --config_file "configs/AGW_baseline_${dataset}.yml" \
        --reid_ckpt_path "$ckpt" --root "$DATA_ROOT" --output "$out" --save_image_npy \
        --train_order identity_balanced --device "$DEVICE" --nproc_per_node "$NPROC" $EXTRA_ARGS
    echo "== recovery attack on $out"
    "$PY" recovery_attack.py --npy_path "$out" --config_file "configs/AGW_baseline_${dataset}.yml" \
        --device "$DEVICE" --attacker both
}

train() {
    local dataset=$1
    check_dataset "$dataset"
    ensure_env
    local weights=${IMAGENET_WEIGHTS:-$CKPT_DIR/resnet50-19c8e357.pth}
    [ -f "$weights" ] || weights=""
    local out="$OUTPUT_ROOT/${dataset}_train"
    echo "== training AGW on $dataset -> $out"
    # shellcheck disable=SC2086
    "$PY" train_reid.py --config_file "configs/AGW_baseline_${dataset}.yml" --root "$DATA_ROOT" --output "$out" \
        --device "$DEVICE" --nproc_per_node "$NPROC" $EXTRA_ARGS \
        MODEL.PRETRAIN_PATH "$weights" MODEL.WEIGHT_REGULARIZED_TRIPLET on SOLVER.EVAL_PERIOD 40
}

target=${1:-demo}
case "$target" in
    demo)
        ensure_env
        "$PY" demo.py --output "$OUTPUT_ROOT/demo" --device "$DEVICE"
        ;;
    test)
        ensure_env
        "$PY" -m pytest -q
        ;;
    market1501|cuhk03|msmt17)
        reproduce "$target"
        ;;
    train_market1501|train_cuhk03|train_msmt17)
        train "${target#train_}"
        ;;
    all)
        for dataset in market1501 cuhk03 msmt17; do
            reproduce "$dataset"
        done
        ;;
    *)
        echo "usage: bash run.sh [demo|test|market1501|cuhk03|msmt17|all|train_market1501|train_cuhk03|train_msmt17]" >&2
        exit 2
        ;;
esac
