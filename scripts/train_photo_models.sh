#!/usr/bin/env bash
# Train the photo models on random crops of ../shared/data/photos (49 Wikimedia Commons photos;
# their sources: ../shared/data/photos/README.md), to be scored on the 24 Kodak photos:
#   Deep JSCC photo bases, SNR-adaptive over 0-20 dB, AWGN, on CROP x CROP crops with flips, the
#   learning rate annealed linearly to 0 over the run:
#   - deep_jscc_photo_512 (c_out 8: 512 real symbols per 32x32x3 block, k/n 1/6 real, 1/12
#     complex): a further stage (init_from) of the CIFAR deep_jscc_512, 16 000 steps from 5e-4;
#   - deep_jscc_photo_128 (c_out 2: 1/24 real, 1/48 complex): from scratch, 30 000 steps from
#     1e-3 (starting from the CIFAR deep_jscc_128 kept CIFAR's colours: 22.79 dB on Kodak), then a
#     second stage from its EMA weights (init_from): 10 000 steps from 3e-4, new draws (seed 1).
# Resumable: run it again after an interruption and each training continues from its last
# checkpoint (--resume auto); finished runs are not retrained.
#
#   bash scripts/train_photo_models.sh [WORK_DIR]      # default WORK_DIR: runs/photo
#
# Environment: PHOTOS (default ../shared/data/photos), BATCH (default 8), CROP (default 128),
# STEPS_512 / STEPS_128, LR_512 / LR_128 and INIT_512 / INIT_128 (init_from; empty: from scratch)
# for each base, STAGE2_STEPS_512 / STAGE2_STEPS_128 (0: none) and STAGE2_LR for its second stage,
# BANDWIDTHS (default "512 128"; two shells with one each and OMP_NUM_THREADS=1 train both side by
# side).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-runs/photo}
PHOTOS=${PHOTOS:-../shared/data/photos}
BATCH=${BATCH:-8}
CROP=${CROP:-128}
STEPS_512=${STEPS_512:-16000}
LR_512=${LR_512:-5.0e-4}
INIT_512=${INIT_512-deep_jscc_512}
STEPS_128=${STEPS_128:-30000}
LR_128=${LR_128:-1.0e-3}
INIT_128=${INIT_128-}
STAGE2_STEPS_512=${STAGE2_STEPS_512:-0}
STAGE2_STEPS_128=${STAGE2_STEPS_128:-10000}
STAGE2_LR=${STAGE2_LR:-3.0e-4}
BANDWIDTHS=${BANDWIDTHS:-512 128}
DIFFJSCC=${DIFFJSCC:-.venv/bin/diffjscc}
PYTHON=${PYTHON:-.venv/bin/python}
CREDIT="shared/data/photos/README.md (Wikimedia Commons source pages)"

source scripts/train_run.sh  # train LOG_DIR OVERRIDES...: a new run, or the rest of an interrupted one

mkdir -p "$WORK"
base_run() {  # the run directory and step of the finished photo base with $1 symbols (its last stage)
    local steps_var=STEPS_$1 stage2_var=STAGE2_STEPS_$1
    if [ "${!stage2_var}" -gt 0 ]; then
        echo "$WORK/deep_jscc_photo_$1_stage2 ${!stage2_var}"
    else
        echo "$WORK/deep_jscc_photo_$1 ${!steps_var}"
    fi
}
for symbols in $BANDWIDTHS; do
    c_out=$((symbols / 64))
    steps_var=STEPS_$symbols lr_var=LR_$symbols init_var=INIT_$symbols stage2_var=STAGE2_STEPS_$symbols
    init=()
    if [ -n "${!init_var}" ]; then init=(--set "init_from=${!init_var}"); fi
    base_settings=(--set "data_dir=$PHOTOS" --set "crop_size=$CROP" --set mode=jscc --set "c_out=$c_out"
        --set "latent_dim=$symbols" --set snr_adaptive=true --set "snr_range=[0,20]" --set device=cpu
        --set "batch_size=$BATCH" --set save_interval=500 --set log_interval=100)
    train "$WORK/deep_jscc_photo_$symbols" "${base_settings[@]}" --set seed=0 --set "lr=${!lr_var}" \
        --set "total_steps=${!steps_var}" "${init[@]}"
    if [ "${!stage2_var}" -gt 0 ]; then  # from the first stage's EMA weights: new draws, lr restarted lower
        first=$(printf "%s/deep_jscc_photo_%s/ckpt_%07d.pt" "$WORK" "$symbols" "${!steps_var}")
        train "$WORK/deep_jscc_photo_${symbols}_stage2" "${base_settings[@]}" --set seed=1 --set "init_from=$first" \
            --set "lr=$STAGE2_LR" --set "total_steps=${!stage2_var}"
    fi
    read -r run step <<< "$(base_run "$symbols")"
    "$PYTHON" scripts/package_models.py add "deep_jscc_photo_$symbols" --run "$run" --step "$step" \
        --description "Deep JSCC decoder" --command "bash scripts/train_photo_models.sh" \
        --data "random ${CROP}x${CROP} crops (with flips) of the 49 Wikimedia Commons photos of shared/data/photos" \
        --sources "$CREDIT"
done

# The photo diffusion receivers: a further stage (init_from) of the CIFAR receiver with the same
# symbols, around the photo Deep JSCC above (frozen), on 32x32 crops of the same photos (the
# receiver works on 32x32 windows of a photo; its Deep JSCC base is read from the run above).
# diffusion_photo_128's base was trained from scratch, so its symbols mean something else than the
# CIFAR base's: a second stage (from the first's EMA weights, new draws) gives it longer to learn them.
# Environment: RX_STEPS_512 / RX_STEPS_128 (default 3000 / 5000), RX_STAGE2_STEPS_512 /
# RX_STAGE2_STEPS_128 (default 0 / 15000), RX_LR (default 2e-4, both stages), RX_BATCH (default 32).
RX_STEPS_512=${RX_STEPS_512:-3000}
RX_STEPS_128=${RX_STEPS_128:-5000}
RX_STAGE2_STEPS_512=${RX_STAGE2_STEPS_512:-0}
RX_STAGE2_STEPS_128=${RX_STAGE2_STEPS_128:-15000}
RX_LR=${RX_LR:-2.0e-4}
RX_BATCH=${RX_BATCH:-32}
for symbols in $BANDWIDTHS; do
    c_out=$((symbols / 64))
    rx_steps_var=RX_STEPS_$symbols rx_stage2_var=RX_STAGE2_STEPS_$symbols
    read -r run step <<< "$(base_run "$symbols")"
    base=$(printf "%s/ckpt_%07d.pt" "$run" "$step")
    rx_settings=(--set "data_dir=$PHOTOS" --set crop_size=32 --set mode=frozen \
        --set "jscc_encoder_path=$base" --set "c_out=$c_out" --set "latent_dim=$symbols" \
        --set conditioning=residual --set prediction=v --set sample_spacing=trailing --set sample_steps=8 \
        --set condition_dropout=0.1 --set bf16=auto --set snr_adaptive=true --set "snr_range=[0,20]" \
        --set device=cpu --set "batch_size=$RX_BATCH" --set "lr=$RX_LR" --set save_interval=250 \
        --set log_interval=50)
    train "$WORK/diffusion_photo_$symbols" "${rx_settings[@]}" --set seed=2 \
        --set "total_steps=${!rx_steps_var}" --set "init_from=diffusion_$symbols"
    rx_run=$WORK/diffusion_photo_$symbols rx_step=${!rx_steps_var}
    if [ "${!rx_stage2_var}" -gt 0 ]; then
        first=$(printf "%s/ckpt_%07d.pt" "$rx_run" "$rx_step")
        rx_run=$WORK/diffusion_photo_${symbols}_stage2 rx_step=${!rx_stage2_var}
        train "$rx_run" "${rx_settings[@]}" --set seed=3 --set "total_steps=$rx_step" --set "init_from=$first"
    fi
    "$PYTHON" scripts/package_models.py add "diffusion_photo_$symbols" --run "$rx_run" \
        --step "$rx_step" --base "deep_jscc_photo_$symbols" --command "bash scripts/train_photo_models.sh" \
        --description "diffusion receiver (residual around Deep JSCC, v-prediction, trailing steps, guidance-ready; DPM-Solver++(2M), 8 steps)" \
        --data "random 32x32 crops (with flips) of the 49 Wikimedia Commons photos of shared/data/photos" \
        --sources "$CREDIT"
done

# Kodak scores of the four shipped photo models into the manifest (diffjscc models prints them),
# with the by-eye contact sheets: the table of all four (Deep JSCC on all 24 photos, the diffusion
# receivers on the contact sheet's 6; bench/results/kodak_photo.json is this file), then each
# diffusion receiver alone on all 24 photos (15-18 s a photo on one thread; bench/results/
# kodak_<receiver>_all24.json are these files), whose rows are the receivers' manifest scores.
models=deep_jscc_photo_512,deep_jscc_photo_128 receivers=diffusion_photo_512,diffusion_photo_128
command="python -m bench kodak --models $models --few-models $receivers --snr 0,10,20"
"$PYTHON" -m bench kodak --models "$models" --few-models "$receivers" --snr 0,10,20 \
    --sheet "$WORK/kodak_sheet" --json "$WORK/kodak_photo.json"
for name in ${models//,/ }; do
    "$PYTHON" scripts/package_models.py kodak-scores "$name" "$WORK/kodak_photo.json" --command "$command"
done
for name in ${receivers//,/ }; do
    "$PYTHON" -m bench kodak --models "$name" --snr 0,10,20 --threads 1 --json "$WORK/kodak_${name}_all24.json"
    "$PYTHON" scripts/package_models.py kodak-scores "$name" "$WORK/kodak_${name}_all24.json" \
        --command "python -m bench kodak --models $name --snr 0,10,20 --threads 1"
done
