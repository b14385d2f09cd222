"""Optimizer and learning-rate schedule of `tispipe train` (and the schedule of the base-model SFT)."""

from __future__ import annotations

import math

import torch

from tispipe.configs import TrainConfig


def make_optimizer(cfg: TrainConfig, model) -> torch.optim.Optimizer:
    """AdamW or RMSprop (--optimizer) over the trainable parameters, at the peak lr.

    AdamW is torch's fused kernel (as transformers' Trainer uses by default): one pass over each parameter's
    state instead of a chain of elementwise ops. On SmolLM2's 134.5M parameters it steps in 0.046 s against
    0.57 s for the default (bench/adamw_step.py, bench/README.md); the update is the same up to float rounding."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str, floor: float = 0.0) -> float:
    """Multiplier of the peak lr at 0-based step `step`.

    Linear warmup over `warmup_steps` (the first step is already > 0), then `kind`: "constant" (1),
    or "cosine" from 1 down to `floor` at the last step. `floor=0.0` is `tispipe train --scheduler
    cosine`; the base-model SFT (tispipe/prepare/init_base.py) decays to `floor=0.05`, i.e. 0.05 + 0.95 * cosine.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, kind: str, floor: float = 0.0):
    """A LambdaLR stepping `lr_factor` once per optimizer step (its state goes into checkpoints)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, kind, floor))
