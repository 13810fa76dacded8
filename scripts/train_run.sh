# Sourced by the training scripts (scripts/train_models.sh, scripts/train_photo_models.sh).
# train LOG_DIR OVERRIDES...: a new run of configs/tiny.yaml into LOG_DIR, or the rest of an
# interrupted one (--resume auto); a finished run is not retrained. Needs $DIFFJSCC.
train() {
    local run=$1
    shift
    if [ -f "$run/config.yaml" ]; then
        "$DIFFJSCC" train configs/tiny.yaml --set "log_dir=$run" "$@" --resume auto --no-progress
    else
        "$DIFFJSCC" train configs/tiny.yaml --set "log_dir=$run" "$@" --no-progress
    fi
}
