#!/usr/bin/env bash
# Regenerate the pretrained models shipped in diffjscc/assets/models/ from the shared CIFAR-10
# archive, and the scores that `diffjscc models` prints:
#   1. Deep JSCC bases, SNR-adaptive over 0-20 dB: deep_jscc_512 (c_out 8: 512 real symbols,
#      k/n 1/6 real, 1/12 complex) and deep_jscc_128 (c_out 2: 128 symbols, 1/24 real, 1/48 complex);
#      scored at 0/5/10/15/20 dB on all 10,000 test images.
#   2. On each base (loaded by its shipped name), a diffusion receiver: residual around the Deep
#      JSCC estimate, v-prediction, trailing timesteps, SNR-adaptive, the received symbols dropped
#      for 10 % of the training images (for --guidance), bf16 where native; sampled with
#      DPM-Solver++(2M) in 8 steps; at 512 symbols a second stage from the first one's weights
#      (init_from); scored at 0/10/20 dB, with the controls, on 1,000 test images (every 10th file).
# Resumable: run it again after an interruption and each training continues from its last
# checkpoint (--resume auto); finished runs are not retrained.
#
#   bash scripts/train_models.sh [WORK_DIR]      # default WORK_DIR: runs/models
#
# Environment: DIFFJSCC_ARCHIVE (default ../shared/data/cifar-10-python.tar.gz), STEPS (Deep JSCC
# steps, batch 64, default 20000), RX_STEPS_512 and RX_STEPS_128 (receiver steps, batch 32, default
# 6000 and 2400; RX_STEPS sets both; the learning rate anneals to 0 over them), RX_STAGE2_STEPS_512 and
# RX_STAGE2_STEPS_128 (a second receiver stage from the first's EMA weights, init_from, seed 1, learning
# rate RX_STAGE2_LR annealed to 0; default 3200 and 0), BANDWIDTHS
# (default "512 128"; two shells with one each and OMP_NUM_THREADS=1 train both side by side),
# EVAL_LIMIT (score only the first N test images: a quick check that does not match the manifest),
# DIFFJSCC_MODELS_DIR (write the models and manifest there instead of diffjscc/assets/models).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-runs/models}
ARCHIVE=${DIFFJSCC_ARCHIVE:-../shared/data/cifar-10-python.tar.gz}
STEPS=${STEPS:-20000}
RX_STEPS_512=${RX_STEPS_512:-${RX_STEPS:-6000}}  # 0 dB realism needed the longer run (docs/models.md)
RX_STEPS_128=${RX_STEPS_128:-${RX_STEPS:-2400}}
RX_STAGE2_STEPS_512=${RX_STAGE2_STEPS_512:-3200}  # 0: no second stage
RX_STAGE2_STEPS_128=${RX_STAGE2_STEPS_128:-0}
RX_STAGE2_LR=${RX_STAGE2_LR:-2.0e-4}
BANDWIDTHS=${BANDWIDTHS:-512 128}
LIMIT=()
if [ -n "${EVAL_LIMIT:-}" ]; then LIMIT=(--limit "$EVAL_LIMIT"); fi
PYTHON=${PYTHON:-.venv/bin/python}
DIFFJSCC=${DIFFJSCC:-.venv/bin/diffjscc}
TEST=$WORK/data/cifar_test
SPREAD=$WORK/data/cifar_test_every10

mkdir -p "$WORK"
if [ ! -d "$TEST" ]; then
    "$DIFFJSCC" data cifar10 --archive "$ARCHIVE" --out "$WORK/data"
fi
if [ ! -d "$SPREAD" ]; then  # 1,000 images, 100 per class
    "$PYTHON" -c "import sys; from pathlib import Path; from bench.common import spread_subset; \
spread_subset(Path(sys.argv[1]), 1000, Path(sys.argv[2]))" "$TEST" "$SPREAD"
fi

source scripts/train_run.sh  # train LOG_DIR OVERRIDES...: a new run, or the rest of an interrupted one

common=(--set "data_dir=$WORK/data/cifar_train" --set snr_adaptive=true --set "snr_range=[0,20]" --set device=cpu
        --set seed=0 --set save_interval=1000 --set log_interval=200)
for symbols in $BANDWIDTHS; do
    c_out=$((symbols / 64))
    base=deep_jscc_$symbols receiver=diffusion_$symbols
    rx_steps_of=RX_STEPS_$symbols
    rx_steps=${!rx_steps_of:-${RX_STEPS:-2400}}
    train "$WORK/$base" "${common[@]}" --set mode=jscc --set "c_out=$c_out" --set "latent_dim=$symbols" \
        --set batch_size=64 --set lr=1.0e-3 --set "total_steps=$STEPS"
    "$PYTHON" scripts/package_models.py add "$base" --run "$WORK/$base" --step "$STEPS" \
        --description "Deep JSCC decoder"
    command="diffjscc evaluate --model $base --data cifar_test --snr 0,5,10,15,20 --no-fid"
    "$DIFFJSCC" evaluate --model "$base" --data "$TEST" --snr 0,5,10,15,20 "${LIMIT[@]}" --no-fid \
        --out "$WORK/eval_$base" --overwrite --no-progress
    "$PYTHON" scripts/package_models.py scores "$base" "$WORK/eval_$base/results.json" --receiver deep_jscc \
        --data "CIFAR-10 test_batch (all 10,000 images)" --command "$command"

    receiver_settings=(--set mode=frozen --set "jscc_encoder_path=$base" --set "c_out=$c_out" --set "latent_dim=$symbols"
        --set conditioning=residual --set prediction=v --set sample_spacing=trailing --set sample_steps=8
        --set condition_dropout=0.1 --set bf16=auto)
    train "$WORK/$receiver" "${common[@]}" "${receiver_settings[@]}" --set "total_steps=$rx_steps"
    run=$WORK/$receiver step=$rx_steps
    stage2_steps_of=RX_STAGE2_STEPS_$symbols
    stage2_steps=${!stage2_steps_of:-0}
    if [ "$stage2_steps" -gt 0 ]; then  # a second stage from the first's EMA weights: new draws, lr restarted lower
        first=$(printf "%s/ckpt_%07d.pt" "$run" "$rx_steps")
        run=$WORK/${receiver}_stage2 step=$stage2_steps
        train "$run" "${common[@]}" "${receiver_settings[@]}" --set seed=1 --set "init_from=$first" \
            --set "lr=$RX_STAGE2_LR" --set "total_steps=$stage2_steps"
    fi
    "$PYTHON" scripts/package_models.py add "$receiver" --run "$run" --step "$step" --base "$base" \
        --description "diffusion receiver (residual around Deep JSCC, v-prediction, trailing steps, guidance-ready; DPM-Solver++(2M), 8 steps)"
    command="diffjscc evaluate --model $receiver --data cifar_test_every10 --snr 0,10,20 --steps 8 --controls --no-fid"
    "$DIFFJSCC" evaluate --model "$receiver" --data "$SPREAD" --snr 0,10,20 --steps 8 --controls "${LIMIT[@]}" \
        --no-fid --out "$WORK/eval_$receiver" --overwrite --no-progress
    "$PYTHON" scripts/package_models.py scores "$receiver" "$WORK/eval_$receiver/results.json" --receiver diffusion \
        --data "every 10th file of CIFAR-10 test_batch (1,000 images, 100 per class)" --how "8 steps, 1 sample" \
        --command "$command"
done
