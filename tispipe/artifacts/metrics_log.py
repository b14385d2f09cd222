"""OUT/metrics.jsonl, the per-step record of a training run, and the one-line summary of a step."""

from __future__ import annotations

import json
from pathlib import Path

from tispipe.artifacts.atomic import atomic_write_text


class MetricsLog:
    """OUT/metrics.jsonl, one JSON object per step, appended and flushed as it happens (path None: nothing)."""

    def __init__(self, path: Path | None):
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "a", encoding="utf-8") if self.path is not None else None
        return self

    def write(self, metrics: dict[str, float]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(metrics, sort_keys=True) + "\n")
            self.file.flush()

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop logged steps after `step` (and a half-written last line) so a resumed run's log has each step once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Every logged step of OUT/metrics.jsonl, in order (lines that do not parse are skipped)."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def logged_metrics(path: Path | None, step: int) -> dict[str, float]:
    """The logged metrics of `step` ({} when none): the real final metrics of a run whose last step was
    done before a kill, by an earlier process."""
    if path is None or not path.is_file():
        return {}
    return next((r for r in reversed(read_metrics(path)) if r.get("step") == step), {})


def step_line(m: dict[str, float]) -> str:
    """A step's metrics as the progress line shows them: loss, accuracy, reward margin and means, KL, |grad|, lr, rate, epoch."""
    parts = [f"loss {m['loss']:.4f}", f"acc {m['rewards/accuracies']:.2f}", f"margin {m['rewards/margins']:+.3f}",
             f"chosen {m['rewards/chosen']:+.3f}", f"rejected {m['rewards/rejected']:+.3f}"]
    if "kl/chosen" in m:
        parts.append(f"kl {m['kl/chosen']:.3f}/{m['kl/rejected']:.3f}")
    if "eval/loss" in m:
        parts.append(f"eval loss {m['eval/loss']:.4f} acc {m['eval/rewards/accuracies']:.2f}")
    parts += [f"|g| {m['grad_norm']:.2f}", f"lr {m['lr']:.1e}", f"{m['pairs_per_s']:.1f} pairs/s", f"ep {m['epoch']:.2f}"]
    return "  ".join(parts)
