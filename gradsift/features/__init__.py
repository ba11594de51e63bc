"""Gradient features: per-example LoRA gradients, the Adam-aware feature, projections, the gradient
pass (engine) and the build stage."""
