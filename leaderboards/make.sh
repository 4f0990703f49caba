#!/usr/bin/env bash
# Regenerates the committed reference experiments of leaderboards/ (see leaderboards/README.md).
# Run from anywhere; every experiment writes its store, tables, manifest, paper tables and HTML report.
# Each folder is removed first: a run into an existing store adds a run beside the old one (resuming what it can),
# and a reference experiment must hold its own run only.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf leaderboards/default leaderboards/lite0-embedded leaderboards/shortcut

# 1. The embedded default experiment (`interpbench run` without arguments; its grids are listed in
#    interpbench/commands/cli.py DEFAULT_EXPERIMENT and recorded in the manifest).
interpbench run --out leaderboards/default --no-progress

# 2. The ImageNet model on the embedded data: EfficientNet-Lite0 on the photos and on the shapes world (resized
#    to 224 px), deletion and insertion at RISE's published granularity (one image row, 224 px, per step: 225
#    forward passes per curve, about 15 minutes on 2 CPU cores).
interpbench run --experiment lite0-embedded \
  --models timm:tf_efficientnet_lite0 --dataset photos,shapes --limit 8 \
  --methods gradient,gradcam,random,center \
  --metrics deletion,insertion --out leaderboards/lite0-embedded --no-progress

# 3. The planted shortcut: a model trained where a corner patch's colour predicts the label, against the plain
#    model, on test images whose patch names another class.
interpbench run --experiment shortcut \
  --models shapes:cnn.shortcut,shapes:cnn --dataset shapes-shortcut --limit 128 \
  --methods gradient,input_x_gradient,integrated_gradients,smoothgrad,guided_backprop,gradcam,gradcam_pp,scorecam,occlusion,random,center \
  --metrics shortcut_localization --out leaderboards/shortcut --no-progress

# 4. Remove and retrain (ROAR) and keep and retrain (KAR), Hooker et al. 2019, on shapes:cnn: 9 fractions x 3 seeds,
#    each a network retrained from scratch (interpbench/models/retrain.py); deletion, insertion and ROAD MoRF on the
#    same 128 test images for the rank agreement (tables/agreement.md). The methods whose maps of the 512 training
#    images or whose retrainings do not fit the experiment's budget (about 25 minutes on 2 CPU cores) are left out
#    (docs/protocols.md, ROAR and KAR). One intra-op thread: the small retrained networks lose most of their time to
#    thread synchronisation otherwise.
rm -rf leaderboards/roar
OMP_NUM_THREADS=1 interpbench run --experiment roar \
  --models shapes:cnn --dataset shapes --limit 128 \
  --methods random,center,gradient,input_x_gradient,integrated_gradients,smoothgrad,guided_backprop,gradcam,gradcam_pp \
  --metrics roar,kar,deletion,insertion,road_morf --out leaderboards/roar --no-progress
python benchmarks/roar.py leaderboards/roar       # leaderboards/roar/roar.md: curves and the rank agreement

for experiment in leaderboards/default leaderboards/lite0-embedded leaderboards/shortcut leaderboards/roar; do
  interpbench table "$experiment" --print none   # writes $experiment/tables/
  interpbench report "$experiment"               # writes $experiment/report.html
  if [[ "${CHECK:-0}" == 1 ]]; then              # CHECK=1: re-run each and demand identical numbers (twice the time)
    interpbench reproduce "$experiment" --exact --no-progress
  fi
done
