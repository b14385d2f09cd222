"""Stage one, `tispipe estimate`: score every response token with a contrastive pair of models, once.

For every response token y_t (chosen and rejected, EOS included), in float32 and never rounded:

    r_t = log pi+(y_t | x, y_<t) - log pi-(y_t | x, y_<t)
    w_t = k * exp(mu * clamp(r_t, L, U)),  mu = +1 on chosen, -1 on rejected   (paper Eq. 19)

plus log pi_ref(y_t) under the base model, so training can skip the reference forward.

pi+ / pi- come from `--method`: `prompt` (the base under a harmless / harmful system prompt),
`sft` or `dpo` (trained by tispipe.estimate.contrast), or two given models (`--pos-model/--neg-model`).

Output (see tispipe.artifacts.shards): DIR/shards/part-NNNNN.parquet and DIR/manifest.json, written last.
Shard i holds pairs [i*S, (i+1)*S) in data order and its bytes are a pure function of the settings,
so an interrupted run resumes by skipping the shards that exist, and ends byte-identical to an
uninterrupted one. DIR/estimate-state.json records the settings a folder was started with: a rerun
with other settings is refused unless --overwrite.

Under torchrun (tispipe.modeling.distributed) rank r scores and writes the shards i with i % world == r (the
same bytes one process would write), rank 0 builds pi+/pi- alone while the others wait and then load
them, and rank 0 writes the manifest once every rank has finished. Resuming skips complete shards
whatever the number of processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from tispipe.artifacts import figures, weight_quality
from tispipe.artifacts.atomic import cleaned_up_on_failure, output_lock
from tispipe.artifacts.shards import shard_entry, shard_name, shard_sizes, write_manifest
from tispipe.artifacts.weight_checks import weight_warnings
from tispipe.config_files import write_config
from tispipe.configs import ESTIMATION_METHODS, EstimateConfig, check_bounds, check_options, check_weight_options
from tispipe.errors import TispipeError
from tispipe.estimate.output import RUN_LOG, TOKENIZER_DIR, already_done, check_scorers, claim_out, recorded_shards
from tispipe.estimate.pairs import all_pairs, shard_chunks, survey
from tispipe.estimate.score import Scorer, write_shards
from tispipe.modeling import distributed


def run(cfg: EstimateConfig) -> dict[str, Any]:
    """Estimate, holding OUT's lock (rank 0) so that no second run writes into it at the same time; a new
    OUT that the run fails in before finishing a shard or a contrastive model is removed again."""
    if distributed.env_rank() != 0:
        return _estimate(cfg)
    with output_lock(cfg.out), cleaned_up_on_failure(cfg.out, _holds_work):
        return _estimate(cfg)


def _holds_work(out: Path) -> bool:
    """A finished shard or contrastive model: work a re-run resumes from."""
    return any((out / "shards").glob("part-*.parquet")) or any((out / "contrast").glob("*/*model.safetensors"))  # model or adapter_model


def _estimate(cfg: EstimateConfig) -> dict[str, Any]:
    from tispipe.console import log_console, result_console
    from tispipe.core.weights import DEFAULT_BOUNDS
    from tispipe.data.pairs import print_report
    from tispipe.modeling.models import check_model, fingerprint_model, fingerprint_tokenizer, load_tokenizer, resolve_device, resolve_dtype

    started = time.perf_counter()
    validate(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    lower, upper = _bounds(cfg, DEFAULT_BOUNDS)  # rank has no bounds: (None, None)
    device = distributed.setup(resolve_device(cfg.device))
    rank, world = distributed.rank(), distributed.world_size()
    console = log_console(quiet=rank != 0)
    dtype = resolve_dtype(cfg.dtype, device)
    out = Path(cfg.out)

    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    for option, name in (("--model", cfg.model), ("--pos-model", cfg.pos_model), ("--neg-model", cfg.neg_model)):
        if name:
            check_model(name, option, tokenizer, cfg.trust_remote_code)
    surveyed = survey(cfg, tokenizer)  # the pairs are read again, shard by shard, when they are scored
    report = surveyed.report
    print_report(report, console)

    fingerprints = {"data": surveyed.fingerprint, "tokenizer": fingerprint_tokenizer(tokenizer), "base": fingerprint_model(cfg.model)}
    if cfg.pos_model:
        fingerprints["pos"], fingerprints["neg"] = fingerprint_model(cfg.pos_model), fingerprint_model(cfg.neg_model)
    settings = _settings(cfg, lower, upper)
    state = {"settings": settings, "device": torch.device(device).type, "dtype": str(dtype).removeprefix("torch."), "fingerprints": fingerprints}
    # Rank 0 judges and claims OUT; the others follow (and must not read it while rank 0 clears it).
    if distributed.broadcast_object(already_done(out, state, cfg.overwrite, console) if rank == 0 else None):
        console.print(f"{out} already holds a finished estimate with these settings; nothing to do.")
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        if rank == 0 and not (out / TOKENIZER_DIR).is_dir():  # a folder from before the copy and the figure existed
            save_tokenizer(tokenizer, out / TOKENIZER_DIR)
            figures.weights_figure(weight_quality.read_statistics(out, manifest["shards"]), out / "weights.png")
        print_summary(manifest, None, result_console())
        return {"manifest": manifest, "skipped": True}
    replaced = None
    if rank == 0:
        replaced = claim_out(out, state, cfg.overwrite)
    else:
        distributed.barrier()  # wait for rank 0 to claim OUT and build pi+/pi-; then reuse its saved models
    try:
        if rank == 0:
            # --overwrite is an action, not a setting: re-running from config.yaml must not replace this run.
            write_config(dataclasses.replace(cfg, overwrite=False), out / "config.yaml")
            save_tokenizer(tokenizer, out / TOKENIZER_DIR)  # the folder reads anywhere, without the base model
        pos_path, neg_path, contrast_info, contrast_seconds = contrastive_models(cfg, tokenizer, fingerprints, device, console)
        fingerprints["pos"] = fingerprint_model(pos_path) if pos_path != cfg.model else _prompt_fingerprint(fingerprints["base"], cfg.pos_prompt)
        fingerprints["neg"] = fingerprint_model(neg_path) if neg_path != cfg.model else _prompt_fingerprint(fingerprints["base"], cfg.neg_prompt)
        if rank == 0:
            check_scorers(out, fingerprints, console)  # shards kept from an earlier try come from these pi+/pi-
            distributed.barrier()
        scoring_start = time.perf_counter()
        scorer = Scorer(cfg, tokenizer, pos_path, neg_path, device, dtype)
    except BaseException:
        if replaced is not None:
            replaced.restore()  # --overwrite whose models do not build or load: the old run is back, nothing lost
        raise
    if replaced is not None:
        replaced.discard()
    sizes = shard_sizes(surveyed.pairs, cfg.shard_size)
    chunks = shard_chunks(cfg, tokenizer, cfg.shard_size, surveyed)
    entries, scored = write_shards(out, chunks, sizes, scorer, cfg, lower, upper, console, rank=rank, world=world, recorded=recorded_shards(out))
    if world > 1:
        # The sum returns once every rank has written its shards; rank 0 then describes them all.
        scored = dict(zip(("pairs", "tokens"), (int(v) for v in distributed.all_reduce([scored["pairs"], scored["tokens"]]))))
        if rank != 0:
            distributed.barrier()  # rank 0 writes the manifest
            return {"manifest": json.loads((out / "manifest.json").read_text(encoding="utf-8")), "timings": None, "skipped": False}
        entries = [entry or shard_entry(out / "shards" / shard_name(index), size) for index, (entry, size) in enumerate(zip(entries, sizes))]
    calibration = calibrate(out, entries, cfg, lower, upper) if cfg.transform == "calibrated" else None
    entries = calibration.pop("entries") if calibration else entries
    scoring_seconds = time.perf_counter() - scoring_start

    manifest = {
        "method": cfg.method,
        "settings": settings,
        "device": state["device"],
        "dtype": state["dtype"],
        "fingerprints": fingerprints,
        "contrast": contrast_info,
        "data": report.to_dict(),
        "pairs": surveyed.pairs,
        "tokens": surveyed.tokens,
        "shards": entries,
        **({"calibration": calibration} if calibration else {}),
        **weight_quality.shard_statistics(statistics := weight_quality.read_statistics(out, entries)),
    }
    figures.weights_figure(statistics, out / "weights.png")  # before the manifest: a folder with a manifest is complete
    write_manifest(out, manifest)
    timings = {
        "total_seconds": time.perf_counter() - started,
        "contrast_seconds": contrast_seconds,
        "scoring_seconds": scoring_seconds,
        "scored_pairs": scored["pairs"],
        "scored_tokens": scored["tokens"],
        "tokens_per_second": scored["tokens"] / scoring_seconds if scored["tokens"] and scoring_seconds > 0 else None,
    }
    from tispipe.artifacts.atomic import atomic_write_json

    atomic_write_json(out / RUN_LOG, timings)
    distributed.barrier()  # the other ranks return once the manifest is there
    print_summary(manifest, timings, result_console())
    return {"manifest": manifest, "timings": timings, "skipped": False}


def calibrate(out: Path, entries: list[dict[str, Any]], cfg: EstimateConfig, lower: float, upper: float) -> dict[str, Any]:
    """--transform calibrated: once every shard holds its r_t, the std of r per side is known; each shard's
    weights are rewritten from its stored r (the same bytes however often this runs, so a resumed run
    that stopped half-way through ends the same). Returns the manifest's `calibration` plus the new entries."""
    from tispipe.artifacts.shards import rewrite_weights
    from tispipe.estimate.score import response_weights

    moments = weight_quality.column_moments(out, entries, ["chosen_logratio", "rejected_logratio"])
    scales = {side: moments[f"{side}_logratio"].std() for side in ("chosen", "rejected")}
    mu = {"chosen": 1.0, "rejected": -1.0}
    weights_of = lambda r, side: response_weights(r, mu[side], cfg, lower, upper, scale=scales[side])  # noqa: E731
    new_entries = [rewrite_weights(out / "shards" / entry["file"], weights_of) for entry in entries]
    return {"logratio_std": scales, "entries": new_entries}


def save_tokenizer(tokenizer, folder: Path) -> None:
    """The tokenizer's files (a few MB at most) in `folder`, whole or not at all."""
    from tispipe.artifacts.atomic import staged_folder

    with staged_folder(folder) as tmp:
        tokenizer.save_pretrained(tmp)


# ---------------------------------------------------------------- options


def validate(cfg: EstimateConfig) -> None:
    """Option errors, each naming its option, before anything slow happens."""
    from tispipe.core.weights import TRANSFORMS

    check_options(
        cfg, choices={"method": ESTIMATION_METHODS, "transform": TRANSFORMS, "contrast_preset": ("small", "paper", "lora"), "logratio": ("pair", "one-sided")},
        positive=("k", "contrast_lr", "contrast_epochs", "contrast_beta", "top_fraction"),
        at_least_one=("shard_size", "batch_size", "max_length", "max_prompt_length", "contrast_batch_size"), non_negative=("threads",),
    )
    if bool(cfg.pos_model) != bool(cfg.neg_model):
        raise TispipeError("--pos-model and --neg-model go together: give both or neither")
    check_bounds(cfg.lower, cfg.upper)
    from tispipe.modeling.adapters import check_lora

    check_lora(cfg)
    if cfg.lora_r and not cfg.builds_contrast_models():
        raise TispipeError(f"--lora-r builds pi+/pi- as adapters: it needs --method sft or dpo (without --pos-model/--neg-model), not {cfg.method}")
    if cfg.scores_by_prompt() and cfg.pos_prompt == cfg.neg_prompt:
        raise TispipeError("--pos-prompt and --neg-prompt are the same: every log-ratio would be 0")


def _bounds(cfg: EstimateConfig, defaults: dict) -> tuple[float, float]:
    lower, upper = defaults[cfg.transform]
    lower = lower if cfg.lower is None else cfg.lower
    upper = upper if cfg.upper is None else cfg.upper
    check_weight_options(cfg.transform, cfg.k, lower, upper, cfg.top_fraction)
    if cfg.transform in ("exp", "calibrated"):
        # The largest weight Eq. 19 can give: k * exp(U) on chosen, k * exp(-L) on rejected; it must fit float32.
        largest = cfg.k * math.exp(min(max(upper, -lower), 700.0))
        if not largest < torch.finfo(torch.float32).max:
            raise TispipeError(f"--k {cfg.k} is too large: weights up to k * exp({max(upper, -lower):g}) = {largest:.3g} overflow float32")
    return lower, upper


def _settings(cfg: EstimateConfig, lower: float | None, upper: float | None) -> dict[str, Any]:
    """Every setting that decides the output (not where it goes or whether to overwrite), bounds resolved."""
    from tispipe.config_files import config_dict

    settings = config_dict(cfg)
    for name in ("out", "overwrite", "threads", "contrast_preset"):  # the preset only through the values it resolves to, below
        settings.pop(name)
    settings["lower"], settings["upper"] = lower, upper
    if cfg.builds_contrast_models():
        from tispipe.estimate.contrast import settings_for

        resolved = settings_for(cfg.method, cfg.contrast_lr, cfg.contrast_epochs, cfg.contrast_batch_size, cfg.contrast_beta, cfg.seed, cfg.contrast_preset)
        settings["contrast_lr"], settings["contrast_epochs"], settings["contrast_batch_size"] = resolved.lr, resolved.epochs, resolved.batch_size
        settings["contrast_beta"] = resolved.beta
    return settings


# ---------------------------------------------------------------- contrastive models


def _prompt_fingerprint(base: str, system_prompt: str) -> str:
    return hashlib.sha256(f"{base}\0{system_prompt}".encode()).hexdigest()[:16]


def contrastive_models(cfg: EstimateConfig, tokenizer, fingerprints: dict[str, str], device: str, console) -> tuple[str, str, dict[str, Any], float]:
    """(pi+ path, pi- path, manifest description, seconds spent building); building holds every pair (`all_pairs`)."""
    if cfg.pos_model:
        return cfg.pos_model, cfg.neg_model, {"source": "given", "pos_model": cfg.pos_model, "neg_model": cfg.neg_model}, 0.0
    if cfg.method == "prompt":
        info = {"source": "prompt", "pos_prompt": cfg.pos_prompt, "neg_prompt": cfg.neg_prompt, "chat_template": cfg.chat_template}
        return cfg.model, cfg.model, info, 0.0
    from dataclasses import asdict

    from tispipe.estimate import contrast
    from tispipe.modeling.adapters import lora_identity

    settings = contrast.settings_for(cfg.method, cfg.contrast_lr, cfg.contrast_epochs, cfg.contrast_batch_size, cfg.contrast_beta, cfg.seed, cfg.contrast_preset)
    base_fingerprints = {k: fingerprints[k] for k in ("data", "tokenizer", "base")}
    try:
        built = contrast.build(Path(cfg.out), cfg.model, tokenizer, all_pairs(cfg, tokenizer), settings, base_fingerprints, device=device, trust_remote_code=cfg.trust_remote_code, console=console,
                               memory=cfg)
    except KeyboardInterrupt:
        kept = [side for side in ("pos", "neg") if (Path(cfg.out) / "contrast" / side).is_dir()]
        saved = f"; {' and '.join(kept)} finished and saved in {Path(cfg.out) / 'contrast'}" if kept else ""
        raise TispipeError(f"interrupted while building pi+/pi-{saved}", hint="run the same command again to continue (saved models are reused)") from None
    seconds = sum(side["seconds"] for side in built.values())
    lora = {"lora": lora_identity(cfg)} if lora_identity(cfg) else {}
    info = {"source": cfg.method, "settings": asdict(settings), **lora, "paper_defaults": contrast.PAPER_DEFAULTS[cfg.method], "pos_model": "contrast/pos", "neg_model": "contrast/neg"}
    return built["pos"]["path"], built["neg"]["path"], info, seconds


# ---------------------------------------------------------------- summary


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
    if all("at_min" in manifest["weights"][s] for s in ("chosen", "rejected")):
        table.add_row("share at weight min / max", *(f"{manifest['weights'][s]['at_min']:.0%} / {manifest['weights'][s]['at_max']:.0%}"
                                                      for s in ("chosen", "rejected")))
    if manifest.get("auc"):
        a = manifest["auc"]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row("AUC of w: decisive tokens", fmt(a["chosen_helpful_by_high_weight"]), fmt(a["rejected_harmful_by_high_weight"]))
        table.add_row("AUC of w: decision tokens", fmt(a.get("chosen_helpful_decision_by_high_weight")), fmt(a.get("rejected_harmful_decision_by_high_weight")))
        table.add_row("AUC of r: decision tokens", fmt(a.get("chosen_helpful_decision_by_high_logratio")),
                      fmt(a.get("rejected_harmful_decision_by_low_logratio")))
    if timings:
        table.add_row("contrast build", f"{timings['contrast_seconds']:.1f} s", "")
        table.add_row("scoring", f"{timings['scoring_seconds']:.1f} s", "")
        rate = timings["tokens_per_second"]
        table.add_row("tokens/s", "-" if rate is None else f"{rate:,.0f}", "")
        table.add_row("total", f"{timings['total_seconds']:.1f} s", "")
    console.print(table)
    from tispipe.console import log_console

    for warning in weight_warnings(manifest):
        log_console().print(f"[yellow]Warning:[/yellow] {warning}", highlight=False)
