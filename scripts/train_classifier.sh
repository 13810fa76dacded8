#!/usr/bin/env bash
# Regenerate the CIFAR-10 classifier shipped in the package (diffjscc/assets/classifier_cifar10.pt),
# the feature network of fd_cls / kid_cls / acc_cls, from the shared CIFAR-10 archive: trained on
# its training split, its top-1 accuracy measured on its test split. Seeded; CPU.
#
#   bash scripts/train_classifier.sh [WORK_DIR]      # default WORK_DIR: runs/classifier
#
# Environment: DIFFJSCC_ARCHIVE (default ../shared/data/cifar-10-python.tar.gz). The log, with the
# accuracy per epoch, is written to WORK_DIR/train.log.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-runs/classifier}
ARCHIVE=${DIFFJSCC_ARCHIVE:-../shared/data/cifar-10-python.tar.gz}
DIFFJSCC=${DIFFJSCC:-.venv/bin/diffjscc}

mkdir -p "$WORK"
if [ ! -d "$WORK/data/cifar_test" ]; then
    "$DIFFJSCC" data cifar10 --archive "$ARCHIVE" --out "$WORK/data"
fi
"$DIFFJSCC" classifier --train "$WORK/data/cifar_train" --test "$WORK/data/cifar_test" \
    --out diffjscc/assets/classifier_cifar10.pt --overwrite --seed 0 2>&1 | tee "$WORK/train.log"
