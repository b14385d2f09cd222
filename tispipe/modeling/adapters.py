"""LoRA adapters (peft) and gradient checkpointing: what lets a trained model fit in memory.

With `--lora-r R` the policy is the base model with a LoRA adapter on its linear layers (peft's
`LoraConfig`, `target_modules="all-linear"` by default), and only the adapter trains. The reference is the
same model with the adapter switched off (`AdapterOff`, as TRL does for PEFT policies): one set of base
weights in memory serves both. A run folder then holds the adapter (`adapter_config.json`,
`adapter_model.safetensors`), loadable with `PeftModel.from_pretrained(base, OUT)`; its config names the
base as an absolute local path (or the hub name), so it loads from any working directory.
`models.load_model` reads such a folder as the base with the adapter merged in (or, for training, as the
trainable PeftModel), so eval, estimate and a resumed train take it like any model folder.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tispipe.errors import TispipeError
from tispipe.modeling.hub import local_folder, looks_local

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: str | Path) -> str:
    """The base model an adapter folder was trained on (its adapter_config.json's base_model_name_or_path)."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TispipeError(f"{path} is damaged ({e})") from None
    if not isinstance(base, str) or not base:
        raise TispipeError(f"{path} names no base model (base_model_name_or_path)")
    if looks_local(base) and not Path(base).expanduser().is_dir():  # the base moved: name the adapter, not a bare path
        state = "is not a folder" if Path(base).expanduser().exists() else "does not exist"
        raise TispipeError(f"the adapter {folder} was trained on the base model {base} (base_model_name_or_path in {path}), which {state}",
                           hint=f"put the base model back at {base}, or set base_model_name_or_path in {path} to where it is now")
    return base


def base_reference(name: str) -> str:
    """How an adapter records its base: a local folder as its absolute path, a hub name as given."""
    folder = local_folder(name, "model")
    return str(folder.resolve()) if folder is not None else name


def check_lora(options: Any) -> None:
    """The LoRA options in range, named as flags (before anything is loaded)."""
    if options.lora_r < 0:
        raise TispipeError(f"--lora-r must not be negative, not {options.lora_r}")
    if options.lora_alpha is not None and not options.lora_alpha > 0:
        raise TispipeError(f"--lora-alpha must be positive, not {options.lora_alpha}")
    if not 0 <= options.lora_dropout < 1:
        raise TispipeError(f"--lora-dropout must be in [0, 1), not {options.lora_dropout}")
    if not options.lora_targets.strip(" ,"):
        raise TispipeError("--lora-targets names no module")


def add_lora(model, options: Any, base_name: str):
    """`model` (a causal LM) wrapped in a PeftModel with a new, trainable LoRA adapter.

    `options` holds lora_r, lora_alpha (None: 2 r), lora_dropout and lora_targets ("all-linear" or
    comma-separated module names). peft starts B at zero, so the policy equals the base at step 0; A's
    random start comes from torch's generator, which the caller has seeded.
    """
    from peft import LoraConfig, get_peft_model

    targets = options.lora_targets if options.lora_targets == "all-linear" else [t.strip() for t in options.lora_targets.split(",") if t.strip()]
    config = LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha if options.lora_alpha is not None else 2 * options.lora_r,
        lora_dropout=options.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_reference(base_name),
    )
    model.name_or_path = config.base_model_name_or_path  # what peft writes into adapter_config.json
    check_rank(model, options.lora_r, targets)
    try:
        with _quiet_deprecations():
            peft_model = get_peft_model(model, config)
    except ValueError as e:  # target modules that the model does not have
        raise TispipeError(f"--lora-targets {options.lora_targets}: {str(e).splitlines()[0]}") from None
    return peft_model


def check_rank(model, rank: int, targets: str | list[str]) -> None:
    """A rank above the narrowest adapted layer's width adds parameters and no expressiveness (a layer's
    update is full rank at rank = its width): refused before the adapter is made, naming that width."""
    import torch

    head = model.get_output_embeddings()
    widths = [(min(module.in_features, module.out_features), name) for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and module is not head
              and (targets == "all-linear" or any(name == t or name.endswith(f".{t}") for t in targets))]
    if widths and rank > min(widths)[0]:
        width, name = min(widths)
        raise TispipeError(f"--lora-r {rank} is above the width of the adapted layer {name} ({width}): an update of rank {width} is already full rank",
                           hint=f"use a --lora-r of at most {width} (LoRA ranks are usually 4 to 64), or 0 to train every weight")


def adapter_summary(model) -> str:
    """'LoRA r=R: N of M parameters trained' for a PeftModel, '' for a plain model (the run's first line)."""
    if not hasattr(model, "peft_config"):
        return ""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"LoRA r={model.peft_config['default'].r}: {trainable:,} of {total:,} parameters trained"


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """peft 0.21 still calls transformers' `is_gradient_checkpointing`, which warns that it is deprecated on every load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@contextlib.contextmanager
def _adapter_errors(folder: str | Path) -> Iterator[None]:
    """A damaged adapter (a bad header, missing tensors) is an error naming its folder, never taken for a write error."""
    try:
        yield
    except TispipeError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged adapter file raises many types (SafetensorError, KeyError, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TispipeError(f"could not load the adapter in {folder}: {first}",
                           hint=f"its adapter files are damaged or incomplete: make {folder} again with the command that wrote it") from e


def load_adapter(folder: Path, base_model, for_training: bool):
    """The adapter in `folder` on `base_model`: a trainable PeftModel, or (not for training) merged into the base."""
    from peft import PeftModel

    with _adapter_errors(folder), _quiet_deprecations():
        model = PeftModel.from_pretrained(base_model, str(folder), is_trainable=for_training)
    if for_training:
        return model
    return model.merge_and_unload()


class AdapterOff(torch.nn.Module):
    """The base model under a LoRA policy, as a module: the policy's forward with its adapter switched off.

    It is the reference of a PEFT run (the frozen base that the adapter started from), at no memory cost.
    """

    def __init__(self, peft_model):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)


class AdapterOn(torch.nn.Module):
    """One named adapter of a PeftModel that holds several (estimate's pi+ and pi- on one base), as a module."""

    def __init__(self, peft_model, name: str):
        super().__init__()
        self.peft_model, self.name = peft_model, name

    def forward(self, *args, **kwargs):
        self.peft_model.set_adapter(self.name)
        return self.peft_model(*args, **kwargs)


def shared_base(base_model, adapters: dict[str, Path]) -> dict[str, torch.nn.Module]:
    """`base_model` with every adapter of `adapters` (name -> folder) loaded onto it, once: {"base": the base with
    the adapters off, name: the base with that adapter on}. One copy of the base weights serves them all."""
    from peft import PeftModel

    names = list(adapters)
    with _adapter_errors(adapters[names[0]]), _quiet_deprecations():
        model = PeftModel.from_pretrained(base_model, str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        with _adapter_errors(adapters[name]), _quiet_deprecations():
            model.load_adapter(str(adapters[name]), adapter_name=name)
    model.eval().requires_grad_(False)
    return {"base": AdapterOff(model), **{name: AdapterOn(model, name) for name in names}}


def lora_identity(options: Any) -> dict[str, Any] | None:
    """The LoRA settings that decide an adapter's weights (None without --lora-r), for reuse checks."""
    if options is None or not options.lora_r:
        return None
    alpha = options.lora_alpha if options.lora_alpha is not None else 2 * options.lora_r
    return {"r": options.lora_r, "alpha": float(alpha), "dropout": options.lora_dropout, "targets": options.lora_targets}


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations layer by layer in the backward pass (transformers' non-reentrant checkpointing).

    transformers checkpoints a layer only while the layer's own `training` flag is set; tispipe trains the
    policy in eval mode (no dropout, so policy == reference at step 0). So only the checkpointed layers
    themselves are flagged as training, not their children (attention and MLP, where dropout lives); a
    layer that applies dropout itself (OPT's `self.dropout`) has it set to 0.
    """
    if not getattr(model, "supports_gradient_checkpointing", False) and not hasattr(model, "get_base_model"):
        raise TispipeError(f"--gradient-checkpointing: {type(model).__name__} does not support gradient checkpointing")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True
            if isinstance(getattr(module, "dropout", None), float):
                module.dropout = 0.0
