#!/usr/bin/env bash
# Regenerates the committed reference experiments of leaderboards/ (see leaderboards/README.md).
# Run from anywhere; every experiment writes its store, tables, manifest, paper tables and HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. The embedded default experiment (`interpbench run` without arguments): gradient, gradcam, random, center x
#    deletion, insertion on shapes:cnn (shapes world) and timm:tf_efficientnet_lite0 (photos), 128 samples each.
interpbench run --out leaderboards/default

# 2. The larger one on the embedded data for the ImageNet model: EfficientNet-Lite0 on the photos and on the
#    shapes world (upsampled to 224 px), the RISE protocol at its published granularity (one image row, 224 px,
#    per step: 225 points per curve), 64 samples per dataset.
interpbench run --experiment lite0-embedded \
  --models timm:tf_efficientnet_lite0 --dataset photos,shapes --limit 64 \
  --methods gradient,gradcam,random,center --metrics deletion,insertion \
  --out leaderboards/lite0-embedded

for experiment in leaderboards/default leaderboards/lite0-embedded; do
  interpbench table "$experiment" --print none   # writes $experiment/tables/
  interpbench report "$experiment"               # writes $experiment/report.html
  if [[ "${CHECK:-0}" == 1 ]]; then              # CHECK=1: re-run each and demand identical numbers (twice the time)
    interpbench reproduce "$experiment" --exact --no-progress
  fi
done
