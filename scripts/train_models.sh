#!/usr/bin/env bash
# Train the Deep JSCC bases that diffjscc's receivers and shipped models build on, from the shared
# CIFAR-10 archive, then score them at 0/5/10/15/20 dB on its test split. Resumable: run it again
# after an interruption and each training continues from its last checkpoint (--resume auto);
# finished runs are not retrained.
#
#   bash scripts/train_models.sh [WORK_DIR]      # default WORK_DIR: runs/models
#
# Environment: DIFFJSCC_ARCHIVE (default ../shared/data/cifar-10-python.tar.gz), STEPS (training
# steps per model, default 30000), EVAL_LIMIT (score only the first N test images in file-name
# order, i.e. only the first classes: for a quick check; default: all 10,000).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-runs/models}
ARCHIVE=${DIFFJSCC_ARCHIVE:-../shared/data/cifar-10-python.tar.gz}
STEPS=${STEPS:-30000}
LIMIT=()
if [ -n "${EVAL_LIMIT:-}" ]; then LIMIT=(--limit "$EVAL_LIMIT"); fi
DIFFJSCC=${DIFFJSCC:-.venv/bin/diffjscc}

mkdir -p "$WORK"
if [ ! -d "$WORK/data/cifar_test" ]; then
    "$DIFFJSCC" data cifar10 --archive "$ARCHIVE" --out "$WORK/data"
fi

# name  c_out  (real symbols = c_out * 64 for 32x32 images: 8 -> 512, k/n 1/6 real, 1/12 complex;
#                2 -> 128, k/n 1/24 real, 1/48 complex)
for spec in "deep_jscc_512 8" "deep_jscc_128 2"; do
    set -- $spec
    name=$1 c_out=$2
    run="$WORK/$name"
    settings=(--set mode=jscc --set "c_out=$c_out" --set "latent_dim=$((c_out * 64))"
              --set snr_adaptive=true --set "snr_range=[0,20]" --set batch_size=64 --set lr=1.0e-3
              --set "total_steps=$STEPS" --set save_interval=1000 --set log_interval=200
              --set "data_dir=$WORK/data/cifar_train" --set "log_dir=$run" --set device=cpu --set seed=0)
    if [ -f "$run/config.yaml" ]; then
        "$DIFFJSCC" train configs/tiny.yaml "${settings[@]}" --resume auto --no-progress
    else
        "$DIFFJSCC" train configs/tiny.yaml "${settings[@]}" --no-progress
    fi
    final=$(printf '%s/ckpt_%07d.pt' "$run" "$STEPS")
    "$DIFFJSCC" evaluate --checkpoint "$final" --data "$WORK/data/cifar_test" --snr 0,5,10,15,20 \
        "${LIMIT[@]}" --no-fid --out "$WORK/eval_$name" --overwrite --no-progress
done
