"""Build the contrastive pair of models pi+ / pi- that token weights are estimated from (paper section 6.2).

- `sft`: pi+ = base fine-tuned on (prompt, chosen), pi- = base fine-tuned on (prompt, rejected);
  causal-LM loss on response tokens only (paper App. B.2).
- `dpo`: pi+ = base trained with DPO on the pairs, pi- = base trained with DPO on the pairs with
  chosen and rejected swapped ("reverse DPO"), reference = the base (paper App. B.3). The loss is
  `tispipe.core.losses.dpo_loss`, the same code `tispipe train` uses.

(`prompt` needs no training: it is the base model under two system prompts; see estimate.py.)

Each model is saved in Hugging Face format with a small `tispipe-contrast.json` holding the settings
and fingerprints it was built from; `build` reuses a saved model whose file matches exactly.
Training is deterministic for a seed: the example order comes from a seeded generator and the
model from the base weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tispipe.artifacts.atomic import staged_folder
from tispipe.console import ProgressLine
from tispipe.contrast_presets import PAPER_DEFAULTS, PRESETS
from tispipe.errors import TispipeError
from tispipe.modeling.batching import micro_batches, reference_logps

FINGERPRINT_FILE = "tispipe-contrast.json"



@dataclass(frozen=True)
class ContrastSettings:
    """Everything that decides the trained weights (besides the base model and the data)."""

    method: str  # sft | dpo
    lr: float
    weight_decay: float
    epochs: float
    batch_size: int
    beta: float
    seed: int


def settings_for(method: str, lr: float | None, epochs: float | None, batch_size: int | None, beta: float | None, seed: int,
                 preset: str = "small") -> ContrastSettings:
    """The method's defaults from `preset` (PRESETS: small, paper or lora), overridden by whichever of lr/epochs/batch_size/beta is given."""
    if preset not in PRESETS:
        raise TispipeError(f"--contrast-preset must be one of {', '.join(PRESETS)}, not {preset!r}")
    defaults = PRESETS[preset][method]
    return ContrastSettings(
        method=method,
        lr=float(defaults["lr"] if lr is None else lr),
        weight_decay=float(defaults["weight_decay"]),
        epochs=float(defaults["epochs"] if epochs is None else epochs),
        batch_size=int(defaults["batch_size"] if batch_size is None else batch_size),
        beta=float(defaults["beta"] if beta is None else beta),
        seed=int(seed),
    )


def _identity(settings: ContrastSettings, side: str, fingerprints: dict[str, str], lora: dict[str, Any] | None = None) -> dict[str, Any]:
    identity = {"side": side, "settings": asdict(settings), "fingerprints": dict(sorted(fingerprints.items()))}
    return {**identity, "lora": lora} if lora else identity  # a full fine-tune's identity is as it always was


def saved_matches(folder: Path, identity: dict[str, Any]) -> bool:
    """True when `folder` holds a finished model built from exactly `identity`."""
    path = folder / FINGERPRINT_FILE
    if not path.is_file():
        return False
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return saved.get("identity") == identity and _weights_unchanged(folder, saved.get("weights"))


def _weights_unchanged(folder: Path, recorded: Any) -> bool:
    """The folder's weights are still those saved with it (their fingerprint, recorded at the save): a model
    whose weights changed since, or saved before the fingerprint was recorded, is built again."""
    from tispipe.modeling.models import fingerprint_model

    try:
        return isinstance(recorded, str) and fingerprint_model(folder) == recorded
    except (TispipeError, OSError):
        return False


def _batches(n: int, batch_size: int, epochs: float, generator: torch.Generator) -> list[list[int]]:
    """Index batches over `epochs` passes (a fractional last pass takes a prefix of a fresh permutation)."""
    total = max(1, math.ceil(n * epochs))
    order: list[int] = []
    while len(order) < total:
        order.extend(torch.randperm(n, generator=generator).tolist())
    order = order[:total]
    return [order[i : i + batch_size] for i in range(0, total, batch_size)]


def _fit(model, lengths: Sequence[int], settings: ContrastSettings, description: str, console, batch_loss) -> dict[str, float]:
    """The loop both builds share: seeded index batches over `epochs`, AdamW at a constant lr, one step per batch.

    `lengths[i]` is pair i's padded row length in tokens (for splitting a step into `micro_batches`);
    `batch_loss(indices)` returns (mean loss with gradient, the number of units it is a mean over,
    accuracy or None) for those pairs. Each micro-batch's gradient is taken of mean x units and the sum
    divided by the step's units, so a step's update is that of its whole batch in one forward.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    batches = _batches(len(lengths), settings.batch_size, settings.epochs, generator)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=settings.lr, weight_decay=settings.weight_decay)
    model.train()
    losses, accuracies = [], []
    with ProgressLine(console, description, len(batches)) as progress:
        for indices in batches:
            optimizer.zero_grad(set_to_none=True)
            total_loss, total_units, hits = 0.0, 0, []
            for micro in micro_batches(indices, lengths):
                loss, units, accuracy = batch_loss(micro)
                (loss * units).backward()
                total_loss, total_units = total_loss + loss.item() * units, total_units + units
                if accuracy is not None:
                    hits.append(accuracy * len(micro))
            for p in trained:
                if p.grad is not None:
                    p.grad.div_(max(1, total_units))
            optimizer.step()
            losses.append(total_loss / max(1, total_units))
            if hits:
                accuracies.append(sum(hits) / len(indices))
            progress.update(len(losses), f"loss {sum(losses[-20:]) / len(losses[-20:]):.4f}")
    model.eval()
    tail = max(1, len(losses[-20:]))
    stats = {"steps": len(batches), "final_loss": sum(losses[-20:]) / tail}
    if accuracies:
        stats["final_accuracy"] = sum(accuracies[-20:]) / tail
    return stats


def train_sft(model, pairs: Sequence, side: str, settings: ContrastSettings, pad_id: int, description: str, console=None) -> dict[str, float]:
    """Fine-tune `model` in place on (prompt, chosen) or (prompt, rejected): mean NLL over response tokens."""
    from tispipe.modeling.batching import make_batch, sequence_token_logps

    device = next(model.parameters()).device

    def batch_loss(indices: list[int]):
        prompts = [pairs[i].prompt_ids for i in indices]
        responses = [getattr(pairs[i], f"{side}_ids") for i in indices]
        batch = make_batch(prompts, responses, pad_id).to(device)
        logps = sequence_token_logps(model, batch)
        tokens = batch.response_mask.sum()
        return -logps.sum() / tokens, int(tokens.item()), None  # logps is 0 past each response

    lengths = [len(p.prompt_ids) + len(getattr(p, f"{side}_ids")) for p in pairs]
    return _fit(model, lengths, settings, description, console, batch_loss)


def train_dpo(
    model, pairs: Sequence, ref: list[tuple[list[float], list[float]]], swap: bool, settings: ContrastSettings, pad_id: int, description: str, console=None
) -> dict[str, float]:
    """DPO on the pairs (or on the pairs with chosen/rejected swapped), reference log-probs given."""
    from tispipe.core.losses import dpo_loss
    from tispipe.modeling.batching import make_pair_batch, sequence_token_logps

    device = next(model.parameters()).device

    def batch_loss(indices: list[int]):
        prompts = [pairs[i].prompt_ids for i in indices]
        winners = [pairs[i].rejected_ids if swap else pairs[i].chosen_ids for i in indices]
        losers = [pairs[i].chosen_ids if swap else pairs[i].rejected_ids for i in indices]
        ref_winners = [ref[i][1] if swap else ref[i][0] for i in indices]
        ref_losers = [ref[i][0] if swap else ref[i][1] for i in indices]
        batch = make_pair_batch(prompts, winners, losers, pad_id)
        ref_logps = batch.place(ref_winners + ref_losers).to(device)
        batch = batch.to(device)
        policy = sequence_token_logps(model, batch)
        b = len(indices)
        loss, chosen_rewards, rejected_rewards = dpo_loss(
            policy[:b], policy[b:], ref_logps[:b], ref_logps[b:], batch.response_mask[:b], batch.response_mask[b:], settings.beta
        )
        return loss.mean(), b, (chosen_rewards > rejected_rewards).float().mean().item()

    # a pair is two rows of prompt + response (or one packed row of prompt + both responses): count both
    lengths = [2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    return _fit(model, lengths, settings, description, console, batch_loss)


def _save(model, tokenizer, folder: Path, identity: dict[str, Any], stats: dict[str, float]) -> None:
    """Save whole or not at all (atomic.staged_folder): a half-saved model is never taken for a finished one."""
    from tispipe.modeling.models import fingerprint_model

    with staged_folder(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {"identity": identity, "training": stats, "weights": fingerprint_model(tmp)}  # checked on reuse (`saved_matches`)
        (tmp / FINGERPRINT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build(
    out_dir: Path,
    base_model: str,
    tokenizer,
    pairs: Sequence,
    settings: ContrastSettings,
    fingerprints: dict[str, str],
    *,
    device: str,
    trust_remote_code: bool = False,
    console=None,
    memory: Any = None,
) -> dict[str, Any]:
    """Train (or reuse) DIR/contrast/pos and DIR/contrast/neg; return {side: {path, reused, seconds, training}}.

    `memory` (estimate's TrainingMemoryOptions): with lora_r, pi+ and pi- are LoRA adapters on the base
    (each folder then holds an adapter, `tispipe.modeling.adapters`); with gradient_checkpointing, activations are
    recomputed in the backward pass.

    `pairs` need `prompt_ids`, `chosen_ids`, `rejected_ids`. `fingerprints` (data, tokenizer, base)
    join `settings` in the identity that decides reuse. Training runs in float32 whatever the
    scoring dtype: bf16 weights would drop DPO-sized updates.
    """
    from tispipe.modeling.adapters import add_lora, enable_gradient_checkpointing, lora_identity
    from tispipe.modeling.models import load_model

    if settings.method not in PAPER_DEFAULTS:
        raise TispipeError(f"--method {settings.method!r} builds no contrastive models")
    if not pairs:
        raise TispipeError("no pairs to train the contrastive models on")
    pad_id = tokenizer.pad_token_id
    results: dict[str, Any] = {}
    ref: list | None = None
    for side in ("pos", "neg"):
        folder = out_dir / "contrast" / side
        identity = _identity(settings, side, fingerprints, lora_identity(memory))
        if saved_matches(folder, identity):
            results[side] = {"path": str(folder), "reused": True, "seconds": 0.0}
            if console is not None:
                console.print(f"Reusing {side} model {folder} (same data, base and settings; its weights as saved)")
            continue
        if (folder / FINGERPRINT_FILE).is_file() and console is not None:
            console.print(f"{folder} was built with other settings or its weights changed since: building it again", highlight=False)
        start = time.perf_counter()
        torch.manual_seed(settings.seed)
        model = load_model(base_model, device=device, dtype="float32", trust_remote_code=trust_remote_code, for_training=True)
        if lora_identity(memory):
            model = add_lora(model, memory, base_model)
        if memory is not None and memory.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        label = "pi+" if side == "pos" else "pi-"
        if settings.method == "sft":
            stats = train_sft(model, pairs, "chosen" if side == "pos" else "rejected", settings, pad_id, f"SFT {label}", console)
        else:
            if ref is None:
                base = load_model(base_model, device=device, dtype="float32", trust_remote_code=trust_remote_code)
                ref = reference_logps(base, pairs, pad_id, batch_size=2 * settings.batch_size)
                del base
            stats = train_dpo(model, pairs, ref, side == "neg", settings, pad_id, f"DPO {label}" + (" (swapped pairs)" if side == "neg" else ""), console)
        seconds = time.perf_counter() - start
        stats["seconds"] = round(seconds, 3)
        _save(model, tokenizer, folder, identity, stats)
        del model
        results[side] = {"path": str(folder), "reused": False, "seconds": seconds, "training": stats}
    return results
