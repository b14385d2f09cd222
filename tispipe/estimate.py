"""Stage one, `tispipe estimate`: score every response token with a contrastive pair of models, once.

For every response token y_t (chosen and rejected, EOS included), in float32 and never rounded:

    r_t = log pi+(y_t | x, y_<t) - log pi-(y_t | x, y_<t)
    w_t = k * exp(mu * clamp(r_t, L, U)),  mu = +1 on chosen, -1 on rejected   (paper Eq. 19)

plus log pi_ref(y_t) under the base model, so training can skip the reference forward.

pi+ / pi- come from `--method`: `prompt` (the base under a harmless / harmful system prompt),
`sft` or `dpo` (trained by tispipe.contrast), or two given models (`--pos-model/--neg-model`).

Output (see tispipe.shards): DIR/shards/part-NNNNN.parquet and DIR/manifest.json, written last.
Shard i holds pairs [i*S, (i+1)*S) in data order and its bytes are a pure function of the settings,
so an interrupted run resumes by skipping the shards that exist, and ends byte-identical to an
uninterrupted one. DIR/estimate-state.json records the settings a folder was started with: a rerun
with other settings is refused unless --overwrite.

Under torchrun (tispipe.distributed) rank r scores and writes the shards i with i % world == r (the
same bytes one process would write), rank 0 builds pi+/pi- alone while the others wait and then load
them, and rank 0 writes the manifest once every rank has finished. Resuming skips complete shards
whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tispipe import distributed, weight_quality
from tispipe.configs import EstimateConfig
from tispipe.errors import TispipeError

METHODS = ("prompt", "sft", "dpo")
STATE_FILE = "estimate-state.json"
RUN_LOG = "estimate-run.json"  # timings: kept out of the manifest so a resumed run's manifest is byte-identical




@dataclass
class Item:
    """One pair as it is scored and stored. `pos_prompt_ids`/`neg_prompt_ids` only for the prompt method."""

    pair_id: str
    prompt: str
    chosen: str
    rejected: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_labels: list[int] | None = None
    rejected_labels: list[int] | None = None
    pos_prompt_ids: list[int] = field(default_factory=list)
    neg_prompt_ids: list[int] = field(default_factory=list)

    def length(self) -> int:
        return max(len(self.prompt_ids), len(self.pos_prompt_ids), len(self.neg_prompt_ids)) + max(len(self.chosen_ids), len(self.rejected_ids))


def run(cfg: EstimateConfig) -> dict[str, Any]:
    from rich.console import Console

    from tispipe.data import print_report
    from tispipe.models import fingerprint_model, fingerprint_tokenizer, load_tokenizer, resolve_device, resolve_dtype
    from tispipe.weights import DEFAULT_BOUNDS

    console = Console(stderr=True)
    started = time.perf_counter()
    validate(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    lower, upper = (cfg.lower, cfg.upper) if cfg.transform == "rank" else _bounds(cfg, DEFAULT_BOUNDS)
    device = distributed.setup(resolve_device(cfg.device))
    rank, world = distributed.rank(), distributed.world_size()
    console.quiet = console.quiet or rank != 0
    dtype = resolve_dtype(cfg.dtype, device)
    out = Path(cfg.out)

    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    items, report = load_items(cfg, tokenizer)
    print_report(report, console)

    fingerprints = {"data": fingerprint_items(items), "tokenizer": fingerprint_tokenizer(tokenizer), "base": fingerprint_model(cfg.model)}
    if cfg.pos_model:
        fingerprints["pos"], fingerprints["neg"] = fingerprint_model(cfg.pos_model), fingerprint_model(cfg.neg_model)
    settings = _settings(cfg, lower, upper)
    state = {"settings": settings, "device": torch.device(device).type, "dtype": str(dtype).removeprefix("torch."), "fingerprints": fingerprints}
    # Rank 0 judges and claims OUT; the others follow (and must not read it while rank 0 clears it).
    if distributed.broadcast_object(_already_done(out, state, cfg.overwrite) if rank == 0 else None):
        console.print(f"{out} already holds a finished estimate with these settings; nothing to do.")
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        print_summary(manifest, None, console)
        return {"manifest": manifest, "skipped": True}
    if rank == 0:
        prepare_out(out, state, cfg.overwrite)
    else:
        distributed.barrier()  # wait for rank 0 to claim OUT and build pi+/pi-; then reuse its saved models
    pos_path, neg_path, contrast_info, contrast_seconds = contrastive_models(cfg, tokenizer, items, fingerprints, device, console)
    if rank == 0:
        distributed.barrier()
    fingerprints["pos"] = fingerprint_model(pos_path) if pos_path != cfg.model else _prompt_fingerprint(fingerprints["base"], cfg.pos_prompt)
    fingerprints["neg"] = fingerprint_model(neg_path) if neg_path != cfg.model else _prompt_fingerprint(fingerprints["base"], cfg.neg_prompt)

    scoring_start = time.perf_counter()
    scorer = Scorer(cfg, tokenizer, pos_path, neg_path, device, dtype)
    entries, scored = write_shards(out, items, scorer, cfg, lower, upper, console, rank=rank, world=world)
    if world > 1:
        # The sum returns once every rank has written its shards; rank 0 then describes them all.
        scored = dict(zip(("pairs", "tokens"), (int(v) for v in distributed.all_reduce([scored["pairs"], scored["tokens"]]))))
        if rank != 0:
            distributed.barrier()  # rank 0 writes the manifest
            return {"manifest": json.loads((out / "manifest.json").read_text(encoding="utf-8")), "timings": None, "skipped": False}
        entries = [entry or shard_entry(out, index, size) for index, (entry, size) in enumerate(zip(entries, shard_sizes(len(items), cfg.shard_size)))]
    scoring_seconds = time.perf_counter() - scoring_start

    manifest = {
        "method": cfg.method,
        "settings": settings,
        "device": state["device"],
        "dtype": state["dtype"],
        "fingerprints": fingerprints,
        "contrast": contrast_info,
        "data": report.to_dict(),
        "pairs": len(items),
        "tokens": {"chosen": sum(len(i.chosen_ids) for i in items), "rejected": sum(len(i.rejected_ids) for i in items)},
        "shards": entries,
        **weight_quality.shard_statistics(out, entries),
    }
    from tispipe.shards import write_manifest

    write_manifest(out, manifest)
    timings = {
        "total_seconds": time.perf_counter() - started,
        "contrast_seconds": contrast_seconds,
        "scoring_seconds": scoring_seconds,
        "scored_pairs": scored["pairs"],
        "scored_tokens": scored["tokens"],
        "tokens_per_second": scored["tokens"] / scoring_seconds if scored["tokens"] and scoring_seconds > 0 else None,
    }
    from tispipe.atomic import atomic_write_json

    atomic_write_json(out / RUN_LOG, timings)
    distributed.barrier()  # the other ranks return once the manifest is there
    print_summary(manifest, timings, console)
    return {"manifest": manifest, "timings": timings, "skipped": False}


# ---------------------------------------------------------------- options


def validate(cfg: EstimateConfig) -> None:
    """Option errors, each naming its option, before anything slow happens."""
    from tispipe.weights import TRANSFORMS

    if cfg.method not in METHODS:
        raise TispipeError(f"--method must be one of {', '.join(METHODS)}, not {cfg.method!r}")
    if cfg.transform not in TRANSFORMS:
        raise TispipeError(f"--transform must be one of {', '.join(TRANSFORMS)}, not {cfg.transform!r}")
    if bool(cfg.pos_model) != bool(cfg.neg_model):
        raise TispipeError("--pos-model and --neg-model go together: give both or neither")
    if cfg.lower is not None and cfg.upper is not None and not cfg.lower < cfg.upper:
        raise TispipeError(f"--lower ({cfg.lower}) must be smaller than --upper ({cfg.upper})")
    if not cfg.k > 0:
        raise TispipeError(f"--k must be positive, not {cfg.k}")
    if cfg.threads < 0:
        raise TispipeError(f"--threads must not be negative, not {cfg.threads}")
    for name in ("shard_size", "batch_size", "max_length", "max_prompt_length"):
        if getattr(cfg, name) < 1:
            raise TispipeError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(cfg, name)}")
    if cfg.contrast_batch_size is not None and cfg.contrast_batch_size < 1:
        raise TispipeError(f"--contrast-batch-size must be at least 1, not {cfg.contrast_batch_size}")
    if cfg.contrast_lr is not None and not cfg.contrast_lr > 0:
        raise TispipeError(f"--contrast-lr must be positive, not {cfg.contrast_lr}")
    if cfg.contrast_epochs is not None and not cfg.contrast_epochs > 0:
        raise TispipeError(f"--contrast-epochs must be positive, not {cfg.contrast_epochs}")
    if not cfg.contrast_beta > 0:
        raise TispipeError(f"--contrast-beta must be positive, not {cfg.contrast_beta}")
    if cfg.method == "prompt" and not cfg.pos_model and cfg.pos_prompt == cfg.neg_prompt:
        raise TispipeError("--pos-prompt and --neg-prompt are the same: every log-ratio would be 0")


def _bounds(cfg: EstimateConfig, defaults: dict) -> tuple[float, float]:
    lower, upper = defaults[cfg.transform]
    lower = lower if cfg.lower is None else cfg.lower
    upper = upper if cfg.upper is None else cfg.upper
    if not lower < upper:
        raise TispipeError(f"--lower ({lower}) must be smaller than --upper ({upper})")
    return lower, upper


def _settings(cfg: EstimateConfig, lower: float | None, upper: float | None) -> dict[str, Any]:
    """Every setting that decides the output (not where it goes or whether to overwrite), bounds resolved."""
    from tispipe.config import config_dict

    settings = config_dict(cfg)
    for name in ("out", "overwrite", "threads"):
        settings.pop(name)
    settings["lower"], settings["upper"] = lower, upper
    if cfg.method in ("sft", "dpo") and not cfg.pos_model:
        from tispipe.contrast import settings_for

        resolved = settings_for(cfg.method, cfg.contrast_lr, cfg.contrast_epochs, cfg.contrast_batch_size, cfg.contrast_beta, cfg.seed)
        settings["contrast_lr"], settings["contrast_epochs"], settings["contrast_batch_size"] = resolved.lr, resolved.epochs, resolved.batch_size
    return settings


# ---------------------------------------------------------------- data


def load_items(cfg: EstimateConfig, tokenizer) -> tuple[list[Item], Any]:
    """Read and tokenize the data (the one tokenization train uses), plus token labels and contrastive prompts."""
    from tispipe.data import as_text, load_pairs, tokenize_pairs
    from tispipe.tokenization import encode_prompt

    opts = cfg.data_options()
    rows, report = load_pairs(opts)
    pairs = tokenize_pairs(rows, tokenizer, opts, report)
    use_prompts = cfg.method == "prompt" and not cfg.pos_model
    items = []
    for pair in pairs:
        item = Item(
            pair.pair_id, as_text(pair.prompt), as_text(pair.chosen), as_text(pair.rejected),
            pair.prompt_ids, pair.chosen_ids, pair.rejected_ids,
            chosen_labels=_labels_for(tokenizer, pair.chosen, pair.extra.get("chosen_spans"), pair.chosen_ids, pair.pair_id),
            rejected_labels=_labels_for(tokenizer, pair.rejected, pair.extra.get("rejected_spans"), pair.rejected_ids, pair.pair_id),
        )
        if use_prompts:
            # Only the prompt differs between pi+ and pi-: the response ids are the stored ones. The
            # system-prompted prompt is not cut to --max-prompt-length (that would cut the system prompt first).
            item.pos_prompt_ids = encode_prompt(tokenizer, pair.prompt, cfg.pos_prompt, cfg.chat_template)
            item.neg_prompt_ids = encode_prompt(tokenizer, pair.prompt, cfg.neg_prompt, cfg.chat_template)
            if item.pos_prompt_ids == item.neg_prompt_ids:
                raise TispipeError(
                    f"pair {pair.pair_id!r}: the positive and negative system prompts render to the same prompt "
                    "(a conversation that brings its own system message keeps it)",
                    hint="use --method sft/dpo for data with system messages",
                )
        items.append(item)
    return items, report


def token_labels(tokenizer, text: str, spans: Sequence[Sequence[int]], ids: Sequence[int]) -> list[int]:
    """Per-token ground-truth labels for response `ids` (as stored: the text's tokens, then EOS unless truncated).

    Token t gets the label of a span [start, end, label] overlapping its characters, else 0; EOS gets 0.
    Uses the tokenizer's offset mapping on the text; the ids it gives must be the stored ones.
    """
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    text_ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    n = len(ids)
    if list(ids[: len(text_ids)]) != text_ids[:n] or n > len(text_ids) + 1:
        raise TispipeError("token labels: the offset-mapped token ids differ from the stored response ids")
    labels = []
    for start, end in offsets[:n]:
        label = 0
        for span_start, span_end, span_label in spans:
            if start < span_end and span_start < end:
                label = int(span_label)
                break
        labels.append(label)
    return labels + [0] * (n - len(labels))  # EOS


def _labels_for(tokenizer, response, spans, ids: list[int], pair_id: str) -> list[int] | None:
    if spans is None or not isinstance(response, str):
        return None
    try:
        return token_labels(tokenizer, response, spans, ids)
    except TispipeError as e:
        raise TispipeError(f"pair {pair_id!r}: {e.message}") from None


def fingerprint_items(items: Sequence[Item]) -> str:
    """Short sha256 of the kept pairs as tokenized (ids, texts, labels), in order."""
    digest = hashlib.sha256()
    for item in items:
        record = [item.pair_id, item.prompt, item.chosen, item.rejected, item.prompt_ids, item.chosen_ids, item.rejected_ids, item.chosen_labels, item.rejected_labels]
        digest.update(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def _prompt_fingerprint(base: str, system_prompt: str) -> str:
    return hashlib.sha256(f"{base}\0{system_prompt}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------- output folder


def _already_done(out: Path, state: dict[str, Any], overwrite: bool) -> bool:
    if overwrite or not (out / "manifest.json").is_file() or not (out / STATE_FILE).is_file():
        return False
    try:
        return json.loads((out / STATE_FILE).read_text(encoding="utf-8")) == state
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def prepare_out(out: Path, state: dict[str, Any], overwrite: bool) -> None:
    """Claim DIR for these settings: refuse a folder started with others (unless overwrite), check it is writable.

    --overwrite removes the shards, manifest and state but keeps DIR/contrast: a saved contrastive
    model is reused only when its own fingerprint file matches, so a new transform does not retrain.
    """
    from tispipe.atomic import atomic_write_json

    state_path = out / STATE_FILE
    if out.exists() and not out.is_dir():
        raise TispipeError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        previous = None
        if state_path.is_file():
            try:
                previous = json.loads(state_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                previous = None
        if previous != state:
            if not overwrite:
                what = "other settings or inputs" if previous is not None else "something that is not a tispipe estimate run"
                changed = _differences(previous, state) if previous is not None else ""
                raise TispipeError(f"--out {out} already holds {what}{changed}", hint="pick another --out, or pass --overwrite to replace it")
            for name in ("shards", "manifest.json", STATE_FILE, RUN_LOG):
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    shards = out / "shards"
    try:
        shards.mkdir(parents=True, exist_ok=True)
        for stale in [*shards.glob(".*.tmp"), *out.glob(".*.tmp")]:  # temporary files of a killed run
            stale.unlink(missing_ok=True)
        probe = shards / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
        atomic_write_json(state_path, state)
    except OSError as e:
        raise TispipeError(f"shards folder {shards} is not writable ({e.strerror or e})") from None


def _differences(previous: dict[str, Any], state: dict[str, Any]) -> str:
    changed = [k for k in sorted(set(previous.get("settings", {})) | set(state["settings"])) if previous.get("settings", {}).get(k) != state["settings"].get(k)]
    changed += [f"{k} fingerprint" for k in sorted(state["fingerprints"]) if previous.get("fingerprints", {}).get(k) != state["fingerprints"][k]]
    changed += [k for k in ("device", "dtype") if previous.get(k) != state[k]]
    return f" (differs in: {', '.join(changed)})" if changed else ""


# ---------------------------------------------------------------- contrastive models


def contrastive_models(cfg: EstimateConfig, tokenizer, items: list[Item], fingerprints: dict[str, str], device: str, console) -> tuple[str, str, dict[str, Any], float]:
    """(pi+ path, pi- path, manifest description, seconds spent building)."""
    if cfg.pos_model:
        return cfg.pos_model, cfg.neg_model, {"source": "given", "pos_model": cfg.pos_model, "neg_model": cfg.neg_model}, 0.0
    if cfg.method == "prompt":
        info = {"source": "prompt", "pos_prompt": cfg.pos_prompt, "neg_prompt": cfg.neg_prompt, "chat_template": cfg.chat_template}
        return cfg.model, cfg.model, info, 0.0
    from dataclasses import asdict

    from tispipe import contrast

    settings = contrast.settings_for(cfg.method, cfg.contrast_lr, cfg.contrast_epochs, cfg.contrast_batch_size, cfg.contrast_beta, cfg.seed)
    base_fingerprints = {k: fingerprints[k] for k in ("data", "tokenizer", "base")}
    try:
        built = contrast.build(Path(cfg.out), cfg.model, tokenizer, items, settings, base_fingerprints, device=device, trust_remote_code=cfg.trust_remote_code, console=console)
    except KeyboardInterrupt:
        kept = [side for side in ("pos", "neg") if (Path(cfg.out) / "contrast" / side).is_dir()]
        saved = f"; {' and '.join(kept)} finished and saved in {Path(cfg.out) / 'contrast'}" if kept else ""
        raise TispipeError(f"interrupted while building pi+/pi-{saved}", hint="run the same command again to continue (saved models are reused)") from None
    seconds = sum(side["seconds"] for side in built.values())
    info = {"source": cfg.method, "settings": asdict(settings), "paper_defaults": contrast.PAPER_DEFAULTS[cfg.method], "pos_model": "contrast/pos", "neg_model": "contrast/neg"}
    return built["pos"]["path"], built["neg"]["path"], info, seconds


# ---------------------------------------------------------------- scoring


class Scorer:
    """Per-token log pi+, log pi- and log pi_ref of pair batches, under inference_mode."""

    def __init__(self, cfg: EstimateConfig, tokenizer, pos_path: str, neg_path: str, device: str, dtype: torch.dtype):
        from tispipe.models import load_model

        self.pad_id = tokenizer.pad_token_id
        self.device = device
        self.by_prompt = cfg.method == "prompt" and not cfg.pos_model
        load = lambda path: load_model(path, device=device, dtype=str(dtype).removeprefix("torch."), trust_remote_code=cfg.trust_remote_code)  # noqa: E731
        self.base = load(cfg.model)
        self.pos = None if self.by_prompt else load(pos_path)
        self.neg = None if self.by_prompt else load(neg_path)

    @torch.inference_mode()
    def score(self, items: Sequence[Item]) -> list[dict[str, np.ndarray]]:
        """For each item: chosen/rejected logratio and ref_logps, float32 arrays as long as the response ids."""
        from tispipe.batching import make_batch, make_pair_batch, sequence_token_logps

        b = len(items)
        chosen, rejected = [i.chosen_ids for i in items], [i.rejected_ids for i in items]
        if self.by_prompt:
            # One forward: rows [ref chosen, ref rejected, pos chosen, pos rejected, neg chosen, neg rejected].
            prompts = [i.prompt_ids for i in items] * 2 + [i.pos_prompt_ids for i in items] * 2 + [i.neg_prompt_ids for i in items] * 2
            batch = make_batch(prompts, (chosen + rejected) * 3, self.pad_id).to(self.device)
            values = batch.unplace(sequence_token_logps(self.base, batch))
            ref, pos, neg = values[: 2 * b], values[2 * b : 4 * b], values[4 * b :]
        else:
            batch = make_pair_batch([i.prompt_ids for i in items], chosen, rejected, self.pad_id).to(self.device)
            ref, pos, neg = (batch.unplace(sequence_token_logps(model, batch)) for model in (self.base, self.pos, self.neg))
        out = []
        for j, item in enumerate(items):
            result = {}
            for side, row in (("chosen", j), ("rejected", b + j)):
                logratio = np.asarray(pos[row], dtype=np.float32) - np.asarray(neg[row], dtype=np.float32)
                ref_logps = np.asarray(ref[row], dtype=np.float32)
                if not (np.isfinite(logratio).all() and np.isfinite(ref_logps).all()):
                    raise TispipeError(f"pair {item.pair_id!r}: the {side} scores hold NaN or infinite values", hint="try --dtype float32, or check the models")
                result[f"{side}_logratio"], result[f"{side}_ref_logps"] = logratio, ref_logps
            out.append(result)
        return out


def token_weights(logratio: np.ndarray, mu: float, cfg: EstimateConfig, lower: float | None, upper: float | None) -> np.ndarray:
    """w_t of one response from its r_t (paper Eq. 19 or the chosen transform), float32."""
    from tispipe.weights import compute_weights

    r = torch.from_numpy(logratio)[None]
    weights = compute_weights(r, torch.ones_like(r), mu, transform=cfg.transform, k=cfg.k, lower=lower, upper=upper)
    return weights[0].numpy().astype(np.float32)


def shard_rows(items: Sequence[Item], scorer: Scorer, cfg: EstimateConfig, lower, upper, on_batch) -> list[dict[str, Any]]:
    """Score one shard's items in length-sorted batches; rows come back in data order."""
    order = sorted(range(len(items)), key=lambda i: (items[i].length(), i))
    scores: dict[int, dict[str, np.ndarray]] = {}
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        for index, result in zip(batch, scorer.score([items[i] for i in batch]), strict=True):
            scores[index] = result
        on_batch(len(batch), sum(len(items[i].chosen_ids) + len(items[i].rejected_ids) for i in batch))
    rows = []
    for index, item in enumerate(items):
        s = scores[index]
        rows.append({
            "pair_id": item.pair_id, "prompt": item.prompt, "chosen": item.chosen, "rejected": item.rejected,
            "prompt_ids": item.prompt_ids, "chosen_ids": item.chosen_ids, "rejected_ids": item.rejected_ids,
            "chosen_logratio": s["chosen_logratio"].tolist(), "rejected_logratio": s["rejected_logratio"].tolist(),
            "chosen_weights": token_weights(s["chosen_logratio"], +1.0, cfg, lower, upper).tolist(),
            "rejected_weights": token_weights(s["rejected_logratio"], -1.0, cfg, lower, upper).tolist(),
            "chosen_ref_logps": s["chosen_ref_logps"].tolist(), "rejected_ref_logps": s["rejected_ref_logps"].tolist(),
            "chosen_labels": item.chosen_labels, "rejected_labels": item.rejected_labels,
        })
    return rows


def shard_sizes(pairs: int, shard_size: int) -> list[int]:
    return [min(shard_size, pairs - start) for start in range(0, pairs, shard_size)]


def shard_entry(out: Path, index: int, rows: int) -> dict[str, Any]:
    """The manifest entry of a shard another rank wrote (checked to open with its row count)."""
    from tispipe.shards import file_sha256, open_shard, shard_name

    path = out / "shards" / shard_name(index)
    open_shard(path, expected_rows=rows)
    return {"file": path.name, "rows": rows, "sha256": file_sha256(path)}


def write_shards(
    out: Path, items: list[Item], scorer: Scorer, cfg: EstimateConfig, lower, upper, console, *, rank: int = 0, world: int = 1
) -> tuple[list[dict[str, Any] | None], dict[str, int]]:
    """Write every missing shard; a complete one (it opens with the right row count) is kept as it is.

    Under torchrun this rank handles the shards i with i % world == rank; the others' entries stay None.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from tispipe.shards import file_sha256, open_shard, shard_name, write_shard

    size = cfg.shard_size
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    entries: list[dict[str, Any] | None] = [None] * len(chunks)
    todo = []
    for index, chunk in enumerate(chunks):
        if index % world != rank:
            continue
        path = out / "shards" / shard_name(index)
        try:
            open_shard(path, expected_rows=len(chunk))
            entries[index] = {"file": path.name, "rows": len(chunk), "sha256": file_sha256(path)}
        except TispipeError:
            todo.append(index)
    mine = len(range(rank, len(chunks), world))
    if len(todo) < mine:
        console.print(f"Resuming: {mine - len(todo)} of {mine} shards are already complete")
    scored = {"pairs": 0, "tokens": 0}
    progress = Progress(
        TextColumn("[bold]Scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} pairs/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
    )
    task = progress.add_task("score", total=sum(len(chunks[i]) for i in todo), rate="-")
    start = time.perf_counter()

    def on_batch(pairs: int, tokens: int) -> None:
        scored["pairs"] += pairs
        scored["tokens"] += tokens
        progress.update(task, advance=pairs, rate=f"{scored['pairs'] / max(time.perf_counter() - start, 1e-9):.1f}")

    try:
        with progress:
            for index in todo:
                rows = shard_rows(chunks[index], scorer, cfg, lower, upper, on_batch)
                entries[index] = write_shard(out / "shards" / shard_name(index), rows)
    except KeyboardInterrupt:  # Ctrl-C: every shard on disk is complete (atomic writes), the rest is rescored
        saved = len(list((out / "shards").glob("part-*.parquet")))
        raise TispipeError(
            f"interrupted: {saved} of {len(chunks)} shards are saved in {out / 'shards'}",
            hint="run the same command again to continue (complete shards are kept)",
        ) from None
    return entries, scored  # type: ignore[return-value]


# ---------------------------------------------------------------- statistics and summary


def print_summary(manifest: dict[str, Any], timings: dict[str, Any] | None, console) -> None:
    from rich.table import Table

    table = Table(title=f"tispipe estimate ({manifest['method']})", show_header=True)
    table.add_column("")
    table.add_column("chosen", justify="right")
    table.add_column("rejected", justify="right")
    tokens = manifest["tokens"]
    table.add_row("pairs", str(manifest["pairs"]), "")
    table.add_row("tokens", str(tokens["chosen"]), str(tokens["rejected"]))
    for name in ("mean", "std", "min", "max"):
        table.add_row(f"weight {name}", *(f"{manifest['weights'][s].get(name, float('nan')):.4f}" for s in ("chosen", "rejected")))
    for q in ("0.05", "0.5", "0.95"):
        table.add_row(f"weight q{q}", *(f"{manifest['weights'][s]['quantiles'][q]:.4f}" for s in ("chosen", "rejected")))
    if manifest.get("auc"):
        a = manifest["auc"]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row("AUC: labelled tokens by high weight", fmt(a["chosen_helpful_by_high_weight"]), fmt(a["rejected_harmful_by_high_weight"]))
    if timings:
        table.add_row("contrast build", f"{timings['contrast_seconds']:.1f} s", "")
        table.add_row("scoring", f"{timings['scoring_seconds']:.1f} s", "")
        rate = timings["tokens_per_second"]
        table.add_row("tokens/s", "-" if rate is None else f"{rate:,.0f}", "")
        table.add_row("total", f"{timings['total_seconds']:.1f} s", "")
    console.print(table)
