#!/usr/bin/env bash
# Exercise every CUDA path of diffjscc once, in at most ~8 minutes on one GPU, and record what
# happened: each command runs with its own time limit, its log goes to OUT_DIR/logs/NAME.log and
# its exit status and wall time to OUT_DIR/summary.tsv (printed at the end).
#
#   bash scripts/gpu_smoke.sh OUT_DIR                 # on a GPU machine
#   bash scripts/gpu_smoke.sh OUT_DIR --device cpu    # dry run of the same commands on CPU (< 10 min)
#
# Environment: PYTHON (default .venv/bin/python, else python3), DIFFJSCC_ARCHIVE (CIFAR-10 archive;
# default ../shared/data/cifar-10-python.tar.gz; without it the package's 320 embedded images are
# used). The multi-process path is not here: NCCL refuses two ranks on one GPU, and on one GPU
# several ranks can only use gloo, which the CPU tests already cover.
# Exit status: 0 when every command passed, else the number of commands that failed.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${1:?usage: bash scripts/gpu_smoke.sh OUT_DIR [--device cpu]}
DEVICE=cuda
if [ "${2:-}" = "--device" ]; then DEVICE=${3:?--device needs cpu or cuda}; fi
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi
ARCHIVE=${DIFFJSCC_ARCHIVE:-../shared/data/cifar-10-python.tar.gz}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.tsv"
printf 'step\texit\tseconds\n' > "$SUMMARY"
FAILED=0

# step NAME LIMIT_S COMMAND...: run COMMAND with a time limit; record its exit status and wall time.
step() {
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout --kill-after=15 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" | tee -a "$SUMMARY"
    if [ "$rc" -ne 0 ]; then
        FAILED=$((FAILED + 1))
        tail -n 3 "$OUT/logs/$name.log" | sed 's/^/    /'
    fi
    return "$rc"
}
DIFFJSCC=("$PYTHON" -m diffjscc)
BENCH=("$PYTHON" -m bench)

# Shorter runs on CPU so that the dry run stays under 10 minutes; the same code paths either way.
if [ "$DEVICE" = cpu ]; then SCALE=1; else SCALE=5; fi
DATA="$OUT/data"
RUNS="$OUT/runs"
COMMON=(--set "device=$DEVICE" --set "data_dir=$DATA/cifar_train" --set "test_dir=$DATA/cifar_test" --set log_interval=10)

step environment 120 "$PYTHON" - "$DEVICE" <<'EOF'
import platform, sys
import torch
import diffjscc
device = sys.argv[1]
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, diffjscc {diffjscc.__version__}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU is visible: run with --device cpu for a dry run")
    props = torch.cuda.get_device_properties(0)
    print(f"GPU {props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}, "
          f"{torch.cuda.device_count()} visible, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print(f"CPU dry run: {torch.get_num_threads()} threads")
EOF

if [ -f "$ARCHIVE" ]; then
    step data 300 "${DIFFJSCC[@]}" data cifar10 --archive "$ARCHIVE" --limit 1024 --out "$DATA"
else
    step data 60 "$PYTHON" - "$DATA" <<'EOF'
import shutil, sys
from pathlib import Path
from diffjscc.demo import embedded_sample_dir
files = sorted(embedded_sample_dir().glob("*.png"))
for split, chosen in (("cifar_train", [f for i, f in enumerate(files) if i % 5]),
                      ("cifar_test", files[::5])):
    (Path(sys.argv[1]) / split).mkdir(parents=True, exist_ok=True)
    for f in chosen:
        shutil.copy(f, Path(sys.argv[1]) / split / f.name)
print(f"embedded sample: {len(files)} images, every 5th held out for testing")
EOF
fi
TEST="$DATA/cifar_test"
JSCC_CKPT=$(printf '%s/jscc/ckpt_%07d.pt' "$RUNS" $((40 * SCALE)))
FROZEN_CKPT=$(printf '%s/frozen/ckpt_%07d.pt' "$RUNS" $((30 * SCALE)))

# Deep JSCC, eager fp32, two loader workers (pinned memory is on for CUDA).
step train_jscc_fp32 150 "${DIFFJSCC[@]}" train configs/tiny.yaml "${COMMON[@]}" --no-progress \
    --set mode=jscc --set num_workers=2 --set bf16=false --set total_steps=$((40 * SCALE)) \
    --set save_interval=$((20 * SCALE)) --set "log_dir=$RUNS/jscc"

# A frozen residual v-prediction receiver on it: bf16, channels_last, block Rayleigh fading over
# an SNR range; stopped part-way, then continued with --resume auto.
FROZEN=(--set mode=frozen --set "jscc_encoder_path=$JSCC_CKPT" --set conditioning=residual --set prediction=v
        --set bf16=true --set channels_last=true --set channel=rayleigh_block --set "snr_range=[0,20]"
        --set save_interval=$((10 * SCALE)) --set "log_dir=$RUNS/frozen")
step train_frozen_bf16 150 "${DIFFJSCC[@]}" train configs/tiny.yaml "${COMMON[@]}" "${FROZEN[@]}" --no-progress \
    --set total_steps=$((20 * SCALE))
step train_frozen_resume 120 "${DIFFJSCC[@]}" train configs/tiny.yaml "${COMMON[@]}" "${FROZEN[@]}" --no-progress \
    --set total_steps=$((30 * SCALE)) --resume auto

# Joint training with torch.compile, bf16, class conditioning and SNR adaptation.
step train_joint_compile 300 "${DIFFJSCC[@]}" train configs/tiny.yaml "${COMMON[@]}" --no-progress \
    --set mode=joint --set compile=true --set bf16=true --set class_cond=true --set snr_adaptive=true \
    --set "snr_range=[0,20]" --set total_steps=$((4 * SCALE)) --set save_interval=$((4 * SCALE)) \
    --set "log_dir=$RUNS/joint"

# The full-size config for a few steps in bf16.
step train_cifar10_bf16 200 "${DIFFJSCC[@]}" train configs/cifar10.yaml "${COMMON[@]}" --no-progress \
    --set bf16=true --set batch_size=16 --set total_steps=$((2 * SCALE)) --set save_interval=$((2 * SCALE)) \
    --set "log_dir=$RUNS/cifar10"

# Evaluation with every start mode and a digital baseline; sampling; one image through transmit.
step evaluate 200 "${DIFFJSCC[@]}" evaluate --checkpoint "$FROZEN_CKPT" --data "$TEST" --device "$DEVICE" \
    --starts gaussian,mean,inversion --samples-per-image 2 --steps 10 --snr 0,10 --limit 32 \
    --digital jpeg --no-fid --out "$OUT/evaluate" --overwrite --no-progress
step sample_gaussian 120 "${DIFFJSCC[@]}" sample --checkpoint "$FROZEN_CKPT" --data "$TEST" --device "$DEVICE" \
    --start gaussian --steps 10 --limit 16 --batch-size 8 --out "$OUT/sample_gaussian"
step sample_inversion 120 "${DIFFJSCC[@]}" sample --checkpoint "$FROZEN_CKPT" --data "$TEST" --device "$DEVICE" \
    --start inversion --steps 10 --limit 16 --batch-size 8 --out "$OUT/sample_inversion"
step transmit 120 "${DIFFJSCC[@]}" transmit --checkpoint "$FROZEN_CKPT" --snr 5 --steps 10 --device "$DEVICE" \
    "$(ls "$TEST"/*.png | head -n 1)" "$OUT/transmit.png"

# Benchmarks on a tiny budget (their numbers are only a smoke check at these sizes).
step bench_train_step 240 "${BENCH[@]}" train-step --config configs/tiny.yaml --config configs/cifar10.yaml \
    --device "$DEVICE" --steps 2 --rounds 1 --results "$OUT/bench"
step bench_memory 180 "${BENCH[@]}" memory --device "$DEVICE" --results "$OUT/bench"
step bench_sample 150 "${BENCH[@]}" sample --checkpoint "$FROZEN_CKPT" --device "$DEVICE" --data-root "$DATA" \
    --steps 1,2,4,8,20 --test-images 32 --timing-images 32 --rounds 1 --results "$OUT/bench"
step bench_quality 240 "${BENCH[@]}" quality --quick --conditioning residual --device "$DEVICE" --data-root "$DATA" \
    --work "$OUT/bench_quality" --test-images 32 --results "$OUT/bench"

echo "$FAILED of $(( $(wc -l < "$SUMMARY") - 1 )) steps failed; logs in $OUT/logs, summary in $SUMMARY"
exit "$FAILED"
