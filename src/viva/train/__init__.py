"""Trainers (VAE, instructor pre-training, SFT, Edit-GRPO) and what they share: configs, checkpoints,
accelerate runtime, EMA, stop signals and logs."""
