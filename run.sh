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
#   bash run.sh sysu_mm01|regdb
#                           visible-infrared: protect with the reference settings (each image through its
#                           modality's stem), then the recovery attack; checkpoints named as the AGW
#                           cross-modality train.py saves them (SYSU_CKPT / REGDB_CKPT override; REGDB_CKPT
#                           with {trial} = one per trial); TRIALS="1 2" limits the trials,
#                           ATTACK_ARGS="" is added to recovery_attack.py (e.g. --total_epochs 20)
#   bash run.sh demo_vi     synthetic visible/infrared people, a small cross-modality model it trains,
#                           PixelFade vs blur, the attack, a report and a figure (CPU, minutes)
#   bash run.sh cuhk_pedes|icfg_pedes|rstpreid
#                           text-to-image: protect the images (gallery; train split for the attack) with
#                           an IRRA model, $CKPT_DIR/<dataset>_irra_best.pth (T2I_CKPT overrides), score
#                           captions vs original and protected images, then the recovery attack
#   bash run.sh demo_t2i    synthetic captioned people, a small CLIP it trains, PixelFade vs blur,
#                           text-to-image scores, the attack, a report and a figure (CPU, under 5 min)
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

# Visible-infrared: the file names the AGW cross-modality code's train.py gives its best models.
VI_CKPT_STEM=agw_p4_n8_lr_0.1_seed_0

# TRIALS="1 2" as the YAML list DATASETS.TRIALS takes ("" when unset: every trial).
vi_trials_list() {
    [ -n "${TRIALS:-}" ] || return 0
    if ! [[ "$TRIALS" =~ ^[0-9\ ]+$ ]]; then
        echo "run.sh: TRIALS must be trial numbers separated by spaces, e.g. TRIALS=\"1 2\"; got '$TRIALS'" >&2
        exit 2
    fi
    # shellcheck disable=SC2086
    echo "[$(echo $TRIALS | tr ' ' ',')]"
}

# The SYSU-MM01 checkpoint, or RegDB's (one file, or a {trial} pattern whose selected trials all exist);
# otherwise where to get them, on stderr, and status 1.
vi_checkpoint() {
    local dataset=$1
    if [ "$dataset" = sysu_mm01 ]; then
        local ckpt=${SYSU_CKPT:-$CKPT_DIR/sysu_${VI_CKPT_STEM}_best.t}
        [ -f "$ckpt" ] && { echo "$ckpt"; return 0; }
        echo "run.sh: missing checkpoint $ckpt" >&2
        echo "  Download the trained SYSU-MM01 AGW model linked (Google Drive) in the README of the" >&2
        echo "  mangye16/Cross-Modal-Re-ID-baseline GitHub repository and put it at that path (or set" >&2
        echo "  CKPT_DIR, or SYSU_CKPT to its path), or train one: python tools/train_cross_modality.py" >&2
        echo "  --dataset sysu_mm01 --root $DATA_ROOT --output log/sysu_agw (docs/visible_infrared.md)." >&2
        return 1
    fi
    local per_trial="$CKPT_DIR/regdb_${VI_CKPT_STEM}_trial_{trial}_best.t"
    local pattern=${REGDB_CKPT:-$per_trial}
    local trial missing=()
    for trial in ${TRIALS:-1 2 3 4 5 6 7 8 9 10}; do
        [ -f "${pattern//\{trial\}/$trial}" ] || missing+=("$trial")
    done
    [ ${#missing[@]} = 0 ] && { echo "$pattern"; return 0; }
    local which=""
    [[ "$pattern" != *"{trial}"* ]] || which=" for RegDB trial(s) ${missing[*]}"
    echo "run.sh: missing checkpoint ${pattern//\{trial\}/<t>}$which" >&2
    echo "  The mangye16/Cross-Modal-Re-ID-baseline README links no RegDB model; its train.py trains one per" >&2
    echo "  trial. Train them (python tools/train_cross_modality.py --dataset regdb --root $DATA_ROOT" >&2
    echo "  --output log/regdb_agw_trial<t> DATASETS.TRIALS \"[<t>]\") and put each at that path (or set" >&2
    echo "  CKPT_DIR, or REGDB_CKPT: one file for every trial, or a path with {trial}); TRIALS=\"1\" runs" >&2
    echo "  trial 1 only (docs/visible_infrared.md)." >&2
    return 1
}

# The data set's folder (or the root itself in its layout); otherwise where to get it, and status 1.
vi_check_dataset() {
    local dataset=$1
    if [ "$dataset" = sysu_mm01 ]; then
        [ -d "$DATA_ROOT/SYSU-MM01" ] || [ -d "$DATA_ROOT/exp" ] && return 0
        echo "run.sh: SYSU-MM01 not found: expected $DATA_ROOT/SYSU-MM01 with cam1..cam6 and exp/ (set DATA_ROOT)." >&2
        echo "  SYSU-MM01 is released on request by its authors at Sun Yat-sen University (see the" >&2
        echo "  wuancong/SYSU-MM01 GitHub repository and the mangye16/Cross-Modal-Re-ID-baseline README)." >&2
    else
        [ -d "$DATA_ROOT/RegDB" ] || [ -d "$DATA_ROOT/idx" ] && return 0
        echo "run.sh: RegDB not found: expected $DATA_ROOT/RegDB with Visible/, Thermal/ and idx/ (set DATA_ROOT)." >&2
        echo "  RegDB is released by Dongguk University after a copyright form (\"Dongguk Body-based Person" >&2
        echo "  Recognition Database (DBPerson-Recog-DB1)\"; see the mangye16/Cross-Modal-Re-ID-baseline README)." >&2
    fi
    echo "  Accepted layouts: docs/visible_infrared.md." >&2
    return 1
}

# Protect SYSU-MM01 or RegDB with the reference settings, then the recovery attack on both modalities' pairs.
vi_reproduce() {
    local dataset=$1 ckpt trials bad=0
    trials=$(vi_trials_list)
    ckpt=$(vi_checkpoint "$dataset") || bad=1
    vi_check_dataset "$dataset" || bad=1
    [ "$bad" = 0 ] || exit 1
    ensure_env
    local out="$OUTPUT_ROOT/${dataset}_protect" opts=()
    [ -z "$trials" ] || opts=(DATASETS.TRIALS "$trials")
    echo "== protecting $dataset -> $out"
    # shellcheck disable=SC2086
    "$PY" protect_image.py --dataset "$dataset" --root "$DATA_ROOT" --reid_ckpt_path "$ckpt" --output "$out" \
        --save_image_npy --device "$DEVICE" --nproc_per_node "$NPROC" $EXTRA_ARGS "${opts[@]}"
    echo "== recovery attack on $out"
    "$PY" recovery_attack.py --npy_path "$out" --device "$DEVICE" --attacker both ${ATTACK_ARGS:-}
}

# Text-to-image: each data set's folder under DATA_ROOT, its annotation file(s) and where it is released.
t2i_layout() {
    case "$1" in
        cuhk_pedes) echo "CUHK-PEDES reid_raw.json" ;;
        icfg_pedes) echo "ICFG-PEDES ICFG-PEDES.json ICFG_PEDES.json" ;;
        rstpreid) echo "RSTPReid data_captions.json" ;;
    esac
}

t2i_source() {
    case "$1" in
        cuhk_pedes) echo "on request from its authors (ShuangLI59/Person-Search-with-Natural-Language-Description on GitHub)" ;;
        icfg_pedes) echo "on request from the SSAN authors (zifyloo/SSAN on GitHub)" ;;
        rstpreid) echo "from the DSSL authors (NjtechCVLab/RSTPReid-Dataset on GitHub)" ;;
    esac
}

# The data set's folder (or the root itself) with imgs/ and its JSON; otherwise where to get it, and status 1.
t2i_check_dataset() {
    local dataset=$1 folder names dir name
    read -r folder names <<< "$(t2i_layout "$dataset")"
    for dir in "$DATA_ROOT/$folder" "$DATA_ROOT"; do
        for name in $names; do
            [ -d "$dir/imgs" ] && [ -f "$dir/$name" ] && return 0
        done
    done
    echo "run.sh: $folder not found: expected $DATA_ROOT/$folder with imgs/ and ${names// / or } (set DATA_ROOT)." >&2
    echo "  $folder is released $(t2i_source "$dataset"); IRRA's README (anosorae/IRRA) links the same." >&2
    echo "  Accepted layouts: docs/text_to_image.md." >&2
    return 1
}

# The IRRA checkpoint of a text data set ($CKPT_DIR/<dataset>_irra_best.pth, T2I_CKPT overrides); else status 1.
t2i_checkpoint() {
    local dataset=$1
    local ckpt=${T2I_CKPT:-$CKPT_DIR/${dataset}_irra_best.pth}
    [ -f "$ckpt" ] && { echo "$ckpt"; return 0; }
    echo "run.sh: missing checkpoint $ckpt" >&2
    echo "  Download 'Model & log for $(t2i_layout "$dataset" | cut -d' ' -f1)' linked (Google Drive) in the README of the" >&2
    echo "  anosorae/IRRA GitHub repository, unpack it and put its best.pth at that path (or set CKPT_DIR, or" >&2
    echo "  T2I_CKPT to the file; a plain CLIP state dict also loads), or train one: python tools/train_text_image.py" >&2
    echo "  --dataset $dataset --root $DATA_ROOT --output log/${dataset}_clip --irra_export (docs/text_to_image.md)." >&2
    return 1
}

# Protect a text-to-image data set's images with an IRRA model (CLIP input contract by default), then the attack.
t2i_reproduce() {
    local dataset=$1 ckpt bad=0
    ckpt=$(t2i_checkpoint "$dataset") || bad=1
    t2i_check_dataset "$dataset" || bad=1
    [ "$bad" = 0 ] || exit 1
    ensure_env
    local out="$OUTPUT_ROOT/${dataset}_protect"
    echo "== protecting $dataset -> $out"
    # shellcheck disable=SC2086
    "$PY" protect_image.py --dataset "$dataset" --root "$DATA_ROOT" --reid_ckpt_path "$ckpt" --output "$out" \
        --save_image_npy --device "$DEVICE" --nproc_per_node "$NPROC" $EXTRA_ARGS
    echo "== recovery attack on $out"
    # shellcheck disable=SC2086
    "$PY" recovery_attack.py --npy_path "$out" --device "$DEVICE" --attacker both ${ATTACK_ARGS:-}
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
    sysu_mm01|regdb)
        vi_reproduce "$target"
        ;;
    demo_vi)
        ensure_env
        "$PY" -m experiments.demo_vi --output "$OUTPUT_ROOT/demo_vi" --device "$DEVICE"
        ;;
    cuhk_pedes|icfg_pedes|rstpreid)
        t2i_reproduce "$target"
        ;;
    demo_t2i)
        ensure_env
        "$PY" -m experiments.demo_t2i --output "$OUTPUT_ROOT/demo_t2i" --device "$DEVICE"
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
        echo "usage: bash run.sh [demo|test|market1501|cuhk03|msmt17|all|train_market1501|train_cuhk03|train_msmt17|privacy|table_methods|table_ablation|table_params|table_backbones|tables|sysu_mm01|regdb|demo_vi|cuhk_pedes|icfg_pedes|rstpreid|demo_t2i]" >&2
        exit 2
        ;;
esac
