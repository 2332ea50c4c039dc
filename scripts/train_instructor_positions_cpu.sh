#!/usr/bin/env bash
# The next instructor run (issue 3's grounding probe): as stage 2 of train_mini_cpu.sh but with the 2D
# position table on the image tokens (model.image_token_positions=true), on both cores. Resumes from its
# newest checkpoint when re-run; then probe it:
#   .venv/bin/viva train probe --instructor RUNS/instructor_pos/instructor
# Usage: scripts/train_instructor_positions_cpu.sh [RUNS_DIR]
set -euo pipefail
RUNS=${1:-runs}
VIVA=${VIVA:-.venv/bin/viva}
[ -d "$RUNS/instructor_pos/checkpoints/step-00003000" ] || $VIVA train instructor --config configs/instructor_mini.yaml \
  --out "$RUNS/instructor_pos" --device cpu --no-progress model.image_token_pool=2 model.image_token_positions=true \
  model.train_language_model=true optim.language_model_lr=1.0e-4 optim.warmup_steps=200 train.steps=3000 \
  train.batch_size=32 train.num_workers=1 train.cpu_threads=2 train.checkpoint_every=250
