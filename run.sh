#!/usr/bin/env bash
# PixelFade toolkit entry points.
#
#   bash run.sh [demo]      synthetic data, an AGW MobileNetV2 the demo trains from bundled ImageNet
#                           weights, protection + recovery attack (CPU, about 5 min)
#   bash run.sh test        the test suite
#   bash run.sh market1501  protect Market-1501 with the reference settings, then the recovery attack
#   bash run.sh cuhk03      same for CUHK03 (new protocol, detected; beta_temp 0.02)
#   bash run.sh msmt17      same for MSMT17
#   bash run.sh all         market1501, cuhk03 and msmt17 in turn
#   bash run.sh train_market1501|train_cuhk03|train_msmt17
#                           train an AGW authorization model (train_reid.py, the ReID-Survey recipe);
#                           IMAGENET_WEIGHTS=$CKPT_DIR/resnet50-19c8e357.pth (torchvision file, never
#                           downloaded; missing = random init, logged)
#   bash run.sh privacy     every protection method (METHODS="pixelfade blur ...") through every attacker
#                           on market1501, one comparison table and figure in $OUTPUT_ROOT/privacy/report
#   bash run.sh table_methods|table_ablation|table_params|table_backbones|tables
#                           the paper's tables (tools/paper_tables.py) in $OUTPUT_ROOT/tables: Markdown,
#                           JSON, PNG. DATASET=market1501, BACKBONES="name=path.pth ...", ATTACKERS=reference,strong,
#                           TABLE_OPTS="KEY VALUE ...". SMALL=1 (privacy and tables): the synthetic set on a CPU
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

# Training without the ImageNet file runs, but far below the reference: say so where it cannot be missed.
warn_no_imagenet() {
    {
        echo "################################################################################"
        echo "run.sh: WARNING: ImageNet weights not found: $1"
        echo "  The backbone will start from RANDOM weights. AGW's reference results need the"
        echo "  torchvision ImageNet ResNet-50 (resnet50-19c8e357.pth, never downloaded here):"
        echo "  put it at $CKPT_DIR/resnet50-19c8e357.pth or set IMAGENET_WEIGHTS=/path/to/it."
        echo "  Expect far lower Rank-1/mAP than README's targets from random weights."
        echo "################################################################################"
    } >&2
}

train() {
    local dataset=$1
    check_dataset "$dataset"
    ensure_env
    local weights=${IMAGENET_WEIGHTS:-$CKPT_DIR/resnet50-19c8e357.pth}
    if [ ! -f "$weights" ]; then
        warn_no_imagenet "$weights"
        weights=""
    fi
    local out="$OUTPUT_ROOT/${dataset}_train"
    echo "== training AGW on $dataset -> $out"
    # shellcheck disable=SC2086
    "$PY" train_reid.py --config_file "configs/AGW_baseline_${dataset}.yml" --root "$DATA_ROOT" --output "$out" \
        --device "$DEVICE" --nproc_per_node "$NPROC" $EXTRA_ARGS \
        MODEL.PRETRAIN_PATH "$weights" MODEL.WEIGHT_REGULARIZED_TRIPLET on SOLVER.EVAL_PERIOD 40
}

# Every protection method through every attacker on one data set, one comparison table and figure.
privacy() {
    ensure_env
    local out="$OUTPUT_ROOT/privacy"
    local methods=${METHODS:-"pixelfade blur mosaic noise blur12_pil mosaic24_topleft noise0.5_uint8"}
    local data size auth=() opts=() attack=() runs=()
    if [ "${SMALL:-0}" = 1 ]; then
        data="$out/data"
        [ -d "$data/market1501" ] || "$PY" tools/make_synthetic_data.py --root "$data" --dataset market1501 \
            --num_ids 16 --num_cams 3 --images_per_id_cam 2 --height 64 --width 32
        auth=(--random_init); size="[64, 32]"; opts=(PIXELFADE.MAX_ITER 20)
        attack=(--total_epochs 3 ATTACK.NGF 8 ATTACK.INVERSION_STEPS 20)
    else
        check_dataset market1501
        data="$DATA_ROOT"
        auth=(--reid_ckpt_path "$(checkpoint_for market1501)" --config_file configs/AGW_baseline_market1501.yml)
        size="[256, 128]"
    fi
    for method in $methods; do
        "$PY" protect_image.py "${auth[@]}" --root "$data" --output "$out/$method" --save_image_npy \
            --train_order identity_balanced --device "$DEVICE" \
            INPUT.IMG_SIZE "$size" PIXELFADE.METHOD "$method" "${opts[@]}"
        # shellcheck disable=SC2086
        "$PY" recovery_attack.py --npy_path "$out/$method" --attacker all --device "$DEVICE" "${attack[@]}" $EXTRA_ARGS
        runs+=("$out/$method")
    done
    "$PY" -m tools.privacy_report --runs "${runs[@]}" --output "$out/report"
}

# The paper's tables (tools/paper_tables.py) into $OUTPUT_ROOT/tables: Markdown, JSON, PNG.
tables() {
    ensure_env
    local attackers=${ATTACKERS:-reference,strong}
    if [ "${SMALL:-0}" = 1 ]; then
        # shellcheck disable=SC2086
        "$PY" -m tools.paper_tables "$@" --small --output "$OUTPUT_ROOT/tables/small" --device "$DEVICE" \
            --attackers "$attackers" ${TABLE_OPTS:-}
        return
    fi
    local dataset=${DATASET:-market1501}
    checkpoint_for "$dataset" > /dev/null
    check_dataset "$dataset"
    local backbones=()
    for item in ${BACKBONES:-}; do backbones+=(--backbone "$item"); done
    # shellcheck disable=SC2086
    "$PY" -m tools.paper_tables "$@" --output "$OUTPUT_ROOT/tables" --dataset "$dataset" --root "$DATA_ROOT" \
        --ckpt_dir "$CKPT_DIR" --device "$DEVICE" --attackers "$attackers" "${backbones[@]}" ${TABLE_OPTS:-}
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
    privacy)
        privacy
        ;;
    table_methods|table_ablation|table_params|table_backbones)
        tables "$target"
        ;;
    tables)
        tables all
        ;;
    all)
        for dataset in market1501 cuhk03 msmt17; do
            reproduce "$dataset"
        done
        ;;
    *)
        echo "usage: bash run.sh [demo|test|market1501|cuhk03|msmt17|all|train_market1501|train_cuhk03|train_msmt17|privacy|table_methods|table_ablation|table_params|table_backbones|tables]" >&2
        exit 2
        ;;
esac
