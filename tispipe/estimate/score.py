"""Scoring pairs with the contrastive models, and the shard rows the scores become (stage one's compute).

For a batch of pairs, one forward per model gives per-token log-probs of both responses
(tispipe.modeling.batching's pair layout): log pi+ and log pi- make r_t = log pi+ - log pi- (with `--logratio
one-sided`, each side against the base: log pi_ref - log pi- on chosen, log pi+ - log pi_ref on rejected
tokens), and the base model's log pi_ref is stored too. With the prompt method pi+ and pi- are the base model under two
system prompts, so one forward of the base over three prompts per pair gives all three. Pairs go
through the models in the shared-prompt layout (tispipe.modeling.shared_prompt): each prompt computed once.
When pi+ and pi- are LoRA adapters of the base (`estimate --lora-r`), one base in memory carries
both (`adapters.shared_base`).
`write_shards` turns those into Parquet shards (tispipe.artifacts.shards), one shard at a time, resumably.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tispipe.configs import EstimateConfig
from tispipe.data.pairs import TokenizedPair, as_text
from tispipe.errors import TispipeError
from tispipe.modeling.batching import budget_runs, logits_width, make_pair_batch, sequence_token_logps

# Elements of the (rows, response positions, vocabulary) logits one scoring forward may hold: 2**26 float32
# = 256 MiB. A batch of 16 HH pairs through SmolLM2 (49,152-token vocabulary) by the prompt method is 96 rows
# of up to 256 positions, 4.8 GB of logits in one forward (bench/real_model.py measures the estimate's peak).
LOGITS_ELEMENTS = 1 << 26


def logits_parts(items: Sequence[TokenizedPair], rows_per_pair: int, vocab: int, budget: int = LOGITS_ELEMENTS) -> list[list[TokenizedPair]]:
    """`items` cut in order into runs whose logits (rows x longest response x vocab) fit `budget`; a pair
    over the budget on its own is a run of its own."""
    sizes = [rows_per_pair * max(len(item.chosen_ids), len(item.rejected_ids), 1) * vocab for item in items]
    return budget_runs(items, sizes, budget)


class Scorer:
    """Per-token log pi+, log pi- and log pi_ref of pair batches, under inference_mode."""

    def __init__(self, cfg: EstimateConfig, tokenizer, pos_path: str, neg_path: str, device: str, dtype: torch.dtype):
        from tispipe.modeling.adapters import adapter_base, is_adapter_folder, shared_base
        from tispipe.modeling.hub import same_source
        from tispipe.modeling.models import load_model

        self.cfg, self.tokenizer, self.pad_id, self.device = cfg, tokenizer, tokenizer.pad_token_id, device
        self.by_prompt = cfg.scores_by_prompt()
        self.prompts: dict[str, tuple[list[int], list[int]]] = {}  # the prompt method's (pi+, pi-) prompt ids of this shard's pairs
        load = lambda path: load_model(path, device=device, dtype=str(dtype).removeprefix("torch."), trust_remote_code=cfg.trust_remote_code)  # noqa: E731
        self.base = load(cfg.model)
        self.vocab = logits_width(self.base)  # read before pi+/pi- may wrap the base
        self.pos = self.neg = None
        if self.by_prompt:
            return
        if all(is_adapter_folder(p) and same_source(adapter_base(p), cfg.model) for p in (pos_path, neg_path)):
            # pi+ and pi- as adapters on the one base in memory; the reference is that base with them off.
            models = shared_base(self.base, {"pos": Path(pos_path), "neg": Path(neg_path)})
            self.base, self.pos, self.neg = models["base"], models["pos"], models["neg"]
        else:
            self.pos, self.neg = load(pos_path), load(neg_path)

    def contrast_prompts(self, pair: TokenizedPair) -> tuple[list[int], list[int]]:
        """The prompt method's prompt ids of `pair` under pi+ and pi-, encoded once per shard (`forget_prompts`)."""
        from tispipe.estimate.pairs import contrast_prompts

        if pair.pair_id not in self.prompts:
            self.prompts[pair.pair_id] = contrast_prompts(self.cfg, self.tokenizer, pair)
        return self.prompts[pair.pair_id]

    def forget_prompts(self) -> None:
        self.prompts.clear()

    def length(self, pair: TokenizedPair) -> int:
        """The longest row this pair puts in a batch (sort key, so batches hold pairs of similar length)."""
        prompts = self.contrast_prompts(pair) if self.by_prompt else ([], [])
        return max(len(pair.prompt_ids), *map(len, prompts)) + max(len(pair.chosen_ids), len(pair.rejected_ids))

    def score(self, items: Sequence[TokenizedPair]) -> list[dict[str, np.ndarray]]:
        """For each pair: chosen/rejected logratio and ref_logps, float32 arrays as long as the response ids;
        in as many forwards as the logits' budget (`logits_parts`) asks."""
        rows_per_pair = 6 if self.by_prompt else 2  # the prompt method runs ref, pi+ and pi- in one forward
        return [result for part in logits_parts(items, rows_per_pair, self.vocab) for result in self._score(part)]

    @torch.inference_mode()
    def _score(self, items: Sequence[TokenizedPair]) -> list[dict[str, np.ndarray]]:
        b = len(items)
        chosen, rejected = [i.chosen_ids for i in items], [i.rejected_ids for i in items]
        if self.by_prompt:
            # One forward of the base over three pairs per pair, one per prompt (ref, pi+, pi-), each prompt computed
            # once: rows come back as [ref, pos, neg chosen | ref, pos, neg rejected].
            contrast = [self.contrast_prompts(i) for i in items]
            prompts = [i.prompt_ids for i in items] + [c[0] for c in contrast] + [c[1] for c in contrast]
            batch = make_pair_batch(prompts, chosen * 3, rejected * 3, self.pad_id).to(self.device)
            values = batch.unplace(sequence_token_logps(self.base, batch))
            ref, pos, neg = (values[k * b : (k + 1) * b] + values[(3 + k) * b : (4 + k) * b] for k in range(3))
        else:
            batch = make_pair_batch([i.prompt_ids for i in items], chosen, rejected, self.pad_id).to(self.device)
            ref, pos, neg = (batch.unplace(sequence_token_logps(model, batch)) for model in (self.base, self.pos, self.neg))
        # --logratio one-sided: on chosen tokens log ref - log pi-, on rejected tokens log pi+ - log ref
        minus = {"chosen": (ref, neg), "rejected": (pos, ref)} if self.cfg.logratio == "one-sided" else {"chosen": (pos, neg), "rejected": (pos, neg)}
        out = []
        for j, item in enumerate(items):
            result = {}
            for side, row in (("chosen", j), ("rejected", b + j)):
                high, low = minus[side]
                logratio = np.asarray(high[row], dtype=np.float32) - np.asarray(low[row], dtype=np.float32)
                ref_logps = np.asarray(ref[row], dtype=np.float32)
                if not (np.isfinite(logratio).all() and np.isfinite(ref_logps).all()):
                    raise TispipeError(f"pair {item.pair_id!r}: the {side} scores hold NaN or infinite values", hint="try --dtype float32, or check the models")
                result[f"{side}_logratio"], result[f"{side}_ref_logps"] = logratio, ref_logps
            out.append(result)
        return out


def response_weights(logratio: np.ndarray, mu: float, cfg: EstimateConfig, lower: float | None, upper: float | None, scale: float = 1.0) -> np.ndarray:
    """w_t of one response from its r_t (paper Eq. 19 or the chosen transform), float32. `scale`: the side's
    spread of r for the calibrated transform (estimate.calibrate rewrites the weights once it is known)."""
    from tispipe.core.weights import compute_weights

    r = torch.from_numpy(logratio)[None]
    weights = compute_weights(r, torch.ones_like(r), mu, transform=cfg.transform, k=cfg.k, lower=lower, upper=upper, scale=scale,
                              fraction=cfg.top_fraction, floor=cfg.floor)
    return weights[0].numpy().astype(np.float32)


def shard_rows(items: Sequence[TokenizedPair], scorer: Scorer, cfg: EstimateConfig, lower, upper, on_batch) -> list[dict[str, Any]]:
    """Score one shard's pairs in length-sorted batches; rows (tispipe.artifacts.shards.SCHEMA) come back in data order."""
    order = sorted(range(len(items)), key=lambda i: (scorer.length(items[i]), i))
    scores: dict[int, dict[str, np.ndarray]] = {}
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        for index, result in zip(batch, scorer.score([items[i] for i in batch]), strict=True):
            scores[index] = result
        on_batch(len(batch), sum(len(items[i].chosen_ids) + len(items[i].rejected_ids) for i in batch))
    scorer.forget_prompts()
    rows = []
    for index, item in enumerate(items):
        s = scores[index]
        rows.append({
            "pair_id": item.pair_id, "prompt": as_text(item.prompt), "chosen": as_text(item.chosen), "rejected": as_text(item.rejected),
            "prompt_ids": item.prompt_ids, "chosen_ids": item.chosen_ids, "rejected_ids": item.rejected_ids,
            # float32 arrays, not lists: a Python float costs 32 bytes against 4, and a shard holds a million of them
            "chosen_logratio": s["chosen_logratio"], "rejected_logratio": s["rejected_logratio"],
            "chosen_weights": response_weights(s["chosen_logratio"], +1.0, cfg, lower, upper),
            "rejected_weights": response_weights(s["rejected_logratio"], -1.0, cfg, lower, upper),
            "chosen_ref_logps": s["chosen_ref_logps"], "rejected_ref_logps": s["rejected_ref_logps"],
            "chosen_labels": item.chosen_labels, "rejected_labels": item.rejected_labels,
        })
    return rows


def release_freed_memory() -> None:
    """Hand memory freed by the last shard back to the system: pyarrow's pool (mimalloc keeps freed pages for
    reuse) and glibc's heap (malloc_trim), so that what a run holds tracks the shard it is on, not the
    largest batch of every shard before it."""
    import ctypes
    import ctypes.util

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def write_shards(
    out: Path, chunks: Iterable[list[TokenizedPair]], sizes: list[int], scorer: Scorer, cfg: EstimateConfig, lower, upper, console, *,
    rank: int = 0, world: int = 1, recorded: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any] | None], dict[str, int]]:
    """Write every missing shard; a complete one (it opens with the right row count and, where a finished
    run's manifest lists it in `recorded`, has that sha256) is kept as it is.

    `chunks` gives shard i's pairs in turn (`sizes[i]` of them: `pairs.shard_chunks` reads them
    from the source as they are needed). Under torchrun this rank handles the shards i with i % world ==
    rank; the others' entries stay None.
    """
    from tispipe.artifacts.shards import shard_entry, shard_name, write_shard
    from tispipe.console import ProgressLine

    entries: list[dict[str, Any] | None] = [None] * len(sizes)
    todo = []
    for index, size in enumerate(sizes):
        if index % world != rank:
            continue
        path = out / "shards" / shard_name(index)
        try:
            entry = shard_entry(path, size)
            if entry["sha256"] != (recorded or {}).get(path.name, entry["sha256"]):
                raise TispipeError(f"shard {path} differs from the one the manifest lists")
            entries[index] = entry
        except TispipeError:
            todo.append(index)
    mine = len(range(rank, len(sizes), world))
    if len(todo) < mine:
        console.print(f"Resuming: {mine - len(todo)} of {mine} shards are already complete")
    scored = {"pairs": 0, "tokens": 0}
    progress = ProgressLine(console, "Scoring", sum(sizes[i] for i in todo))
    start = time.perf_counter()

    def on_batch(pairs: int, tokens: int) -> None:
        scored["pairs"] += pairs
        scored["tokens"] += tokens
        progress.update(scored["pairs"], f"{scored['pairs'] / max(time.perf_counter() - start, 1e-9):.1f} pairs/s")

    try:
        with progress:
            wanted = set(todo)
            for index, chunk in enumerate(chunks):  # read to the end: the source is checked against the survey there
                if index in wanted:
                    rows = shard_rows(chunk, scorer, cfg, lower, upper, on_batch)
                    entries[index] = write_shard(out / "shards" / shard_name(index), rows)
                    del rows
                    release_freed_memory()
    except KeyboardInterrupt:  # Ctrl-C: every shard on disk is complete (atomic writes), the rest is rescored
        saved = len(list((out / "shards").glob("part-*.parquet")))
        raise TispipeError(
            f"interrupted: {saved} of {len(sizes)} shards are saved in {out / 'shards'}",
            hint="run the same command again to continue (complete shards are kept)",
        ) from None
    return entries, scored  # type: ignore[return-value]
