"""The estimators' training presets (`estimate --contrast-preset`): the lr, epochs, batch size and beta that
pi+/pi- are built with (tispipe.estimate.contrast), shared with the studies that record or choose them."""

from __future__ import annotations

# Paper App. B.2 (sft) and B.3 (dpo), for 7B models. Neither gives a schedule: the learning rate is constant.
PAPER_DEFAULTS = {
    "sft": {"lr": 5e-5, "weight_decay": 0.01, "epochs": 3.0, "batch_size": 32, "beta": 0.1},
    "dpo": {"lr": 1e-5, "weight_decay": 0.01, "epochs": 1.0, "batch_size": 16, "beta": 0.1},
}
# The settings `tispipe contrast-study` measured best on the toy base (docs/results/contrast-study.md: the highest
# weaker-side decision-token AUC on validation): the defaults for small models. For sft that is the paper's
# setting; for dpo a larger lr with a larger beta (0.879 against the paper's 0.871).
SMALL_MODEL_DEFAULTS = {
    "sft": {"lr": 5e-5, "weight_decay": 0.01, "epochs": 3.0, "batch_size": 32, "beta": 0.1},
    "dpo": {"lr": 2e-5, "weight_decay": 0.01, "epochs": 1.0, "batch_size": 16, "beta": 0.5},
}
# For LoRA adapters on a pretrained model (estimate --lora-r, the real track in the Makefile): an adapter moves less per
# step than full weights, so its usual learning rates are about ten times full fine-tuning's; one epoch, batch 16.
# Set a priori, not chosen on a grid (docs/real-paradetox/weights.md measures what they give).
LORA_DEFAULTS = {
    "sft": {"lr": 2e-4, "weight_decay": 0.01, "epochs": 1.0, "batch_size": 16, "beta": 0.1},
    "dpo": {"lr": 1e-4, "weight_decay": 0.01, "epochs": 1.0, "batch_size": 16, "beta": 0.1},
}
PRESETS = {"small": SMALL_MODEL_DEFAULTS, "paper": PAPER_DEFAULTS, "lora": LORA_DEFAULTS}
