"""`tispipe generate`: preference pairs made by the model itself under contrastive system prompts (RLCD-style).

Each prompt is answered twice by the same model: under --pos-prompt (the chosen response) and under
--neg-prompt (the rejected one). The paper's third Table 2 block trains on such data, where the
prompt-built weights (TIS-DPO(P)) score it with the very prompts that made it.

With --reward-model the pairs are ranked instead: the model answers each prompt --candidates times with
no system prompt, the reward model scores the answers, and its best is the chosen response, its worst the
rejected one (ties in its score drop the pair). Trained on pairs made by the system prompts (`tispipe
reward-model`), this is the preference model of RLCD; DPO on the pairs it ranks stands in for RLCD's RL
against it (tispipe.studies.generated_block).

OUT holds
    train-00000.jsonl, ...   standard-format pairs: pair_id, prompt, chosen, rejected, the system
                             prompt each side came from, whether each ended with EOS, the sampling settings
    manifest.json            settings, fingerprints, each shard's rows and sha256, the filter counts
    generate-state.json      the settings and inputs of the run (a re-run with others is refused)
    config.yaml              the command's settings (`--config` repeats it)

`estimate --data OUT` reads the shards directly (the folder's `train` split). The prompts go in chunks of
--shard-size, and a chunk's --num-samples pairs per prompt into one shard, or, when they are more than
--shard-size pairs, into several shards of consecutive samples (`shard_plan`): a shard never holds much
more than --shard-size pairs, so a huge request is saved as it goes. Sampling is seeded by (seed, chunk,
sample) alone, so a run killed midway resumes with the shards it lacks and ends byte-identical to an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from tispipe.artifacts.atomic import atomic_write_json, atomic_write_text, check_writable, cleaned_up_on_failure, output_lock
from tispipe.configs import GenerateConfig, check_options
from tispipe.errors import TispipeError
from tispipe.prepare.pair_sampling import sample_shard

STATE_FILE = "generate-state.json"
MAX_SHARDS = 100_000  # files in one output folder


def run(cfg: GenerateConfig) -> dict[str, Any]:
    """Generate the pairs into cfg.out (resuming a run with the same settings); returns the manifest."""
    with output_lock(cfg.out), cleaned_up_on_failure(cfg.out, saved=lambda out: any(out.glob("train-*.jsonl"))):
        return _generate(cfg)


def _generate(cfg: GenerateConfig) -> dict[str, Any]:
    import torch

    from tispipe.config_files import write_config
    from tispipe.console import ProgressLine, log_console, result_console
    from tispipe.modeling.models import check_model, fingerprint_model, load_model, load_reward_model, load_tokenizer

    started = time.perf_counter()
    validate(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    console = log_console()
    out = Path(cfg.out)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    check_model(cfg.model, "--model", tokenizer, cfg.trust_remote_code)
    prompts, source = read_prompts(cfg, tokenizer)
    shards = shard_plan(len(prompts), cfg)  # bounded, before any work
    console.print(f"Prompts: {len(prompts)} from {source}; {cfg.num_samples} pair(s) each", highlight=False)
    layout = {"split_samples": True} if samples_per_shard(min(len(prompts), cfg.shard_size), cfg) < cfg.num_samples else {}  # recorded only where samples are split: a folder without the key keeps matching
    fingerprints = {"model": fingerprint_model(cfg.model), "prompts": fingerprint_prompts(prompts)}
    if cfg.reward_model:
        fingerprints["reward_model"] = fingerprint_model(cfg.reward_model)
    state = {"settings": {**settings(cfg), **layout}, "fingerprints": fingerprints}
    replacing = claim_out(out, state, cfg.overwrite)
    finished = finished_manifest(out, state)
    if finished is not None:
        console.print(f"{out} already holds these pairs; nothing to do", soft_wrap=True)
        print_table(finished, result_console())
        return finished
    check_writable(out)
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    ranker = load_reward_model(cfg.reward_model, device=str(next(model.parameters()).device), dtype=cfg.dtype,
                               trust_remote_code=cfg.trust_remote_code) if cfg.reward_model else None
    if replacing:  # only now, with every input loaded, may the old run go
        remove_old_run(out)
    write_config(dataclasses.replace(cfg, overwrite=False), out / "config.yaml")
    atomic_write_json(out / STATE_FILE, state)

    recorded = recorded_shards(out)
    todo = [i for i in range(len(shards)) if not complete(out, i, recorded)]
    console.print(f"{len(prompts) * cfg.num_samples:,} pairs to sample, saved in {len(shards):,} shard(s) of at most "
                  f"{max(len(p) * len(s) for p, s in shards):,} pairs (an interrupted run resumes from the last saved shard)", highlight=False)
    if len(todo) < len(shards):
        console.print(f"Resuming: {len(shards) - len(todo)} of {len(shards)} shards are already complete")
    device = str(next(model.parameters()).device)
    progress = ProgressLine(console, "Generating", sum(len(shards[i][0]) * len(shards[i][1]) for i in todo))
    t0 = time.perf_counter()
    with progress:
        for index in todo:
            chunk, samples = shards[index]
            try:
                rows, dropped = sample_shard(model, tokenizer, [prompts[i] for i in chunk], chunk.start // cfg.shard_size, samples, cfg, device, progress, t0, ranker)
            except KeyboardInterrupt:
                progress.stop()
                saved = sum(complete(out, i, recorded) for i in range(len(shards)))
                raise TispipeError(f"interrupted: {saved} of {len(shards)} shards are saved in {out}", hint="run the same command again to resume") from None
            # The counts first, then the shard: a shard that exists is complete and has its counts beside it.
            atomic_write_json(out / counts_file(index), dropped)
            atomic_write_text(out / shard_file(index), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    manifest = describe(out, cfg, state, len(prompts), len(shards), time.perf_counter() - started)
    if manifest["pairs"] == 0:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(manifest["dropped"].items()))
        raise TispipeError(f"every generated pair was dropped ({reasons})", hint="raise --max-new-tokens, drop --require-eos, or check the system prompts")
    atomic_write_json(out / "manifest.json", manifest)
    print_table(manifest, result_console())
    console.print(f"Wrote {manifest['pairs']} pairs to {out} in {manifest['seconds']:.1f} s; train on them with `tispipe estimate --data {out}`")
    return manifest


def validate(cfg: GenerateConfig) -> None:
    check_options(cfg, at_least_one=("num_samples", "max_new_tokens", "batch_size", "shard_size", "max_prompt_length"), non_negative=("temperature", "threads"))
    if not 0 < cfg.top_p <= 1:
        raise TispipeError(f"--top-p must be in (0, 1], not {cfg.top_p}")
    if cfg.reward_model:
        from tispipe.modeling.hub import local_folder

        local_folder(cfg.reward_model, "reward model")
        if cfg.candidates < 2:
            raise TispipeError(f"--candidates must be at least 2 (a best and a worst answer), not {cfg.candidates}")
    elif cfg.pos_prompt == cfg.neg_prompt:
        raise TispipeError("--pos-prompt and --neg-prompt are the same: the two responses would differ only by chance")


def settings(cfg: GenerateConfig) -> dict[str, Any]:
    """What decides the output: every setting but where it goes, the inputs' paths (fingerprinted instead) and the threads;
    --candidates only where a reward model ranks (a folder made by the system prompts keeps matching)."""
    from tispipe.config_files import config_dict

    unused = () if cfg.reward_model else ("candidates",)
    return {k: v for k, v in config_dict(cfg).items() if k not in ("out", "overwrite", "threads", "model", "prompts", "reward_model", *unused)}


def shard_file(index: int) -> str:
    return f"train-{index:05d}.jsonl"


def recorded_shards(out: Path) -> dict[str, str]:
    """file -> sha256 of the shards an earlier finished run's manifest lists ({} without a readable one)."""
    try:
        return {e["file"]: e["sha256"] for e in json.loads((out / "manifest.json").read_text(encoding="utf-8"))["shards"]}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return {}


def complete(out: Path, index: int, recorded: dict[str, str]) -> bool:
    """Shard `index` exists with its counts and, where `recorded` lists it, with the recorded sha256."""
    from tispipe.artifacts.shards import file_sha256

    path = out / shard_file(index)
    if not path.is_file() or not (out / counts_file(index)).is_file():
        return False
    return path.name not in recorded or file_sha256(path) == recorded[path.name]


def counts_file(index: int) -> str:
    """The shard's dropped-pair counts; hidden, so readers of the folder's data files never see it."""
    return f".{shard_file(index)}.dropped.json"


# ---------------------------------------------------------------- prompts


def read_prompts(cfg: GenerateConfig, tokenizer) -> tuple[list[dict[str, Any]], str]:
    """[{"prompt_id", "prompt"}] in source order: a file with a prompt column and no responses is read as
    prompts; anything else as pairs (every format --data reads), of which the prompts are kept. HH
    transcripts become chat turns when the tokenizer has a template, as in `pairs.tokenize_pairs`."""
    from tispipe.data.pairs import load_pairs, print_report
    from tispipe.data.readers import read_records

    opts = cfg.read_options(cfg.prompts)
    source, records = read_records(opts)
    first = next(iter(records), None)
    if first is None:
        raise TispipeError(f"{source} holds no rows")
    where, record = first
    if cfg.prompt_column in record and cfg.chosen_column not in record and cfg.rejected_column not in record:
        _, records = read_records(opts)  # from the start again
        prompts = []
        for index, (where, record) in enumerate(records):
            if opts.limit is not None and index >= opts.limit:
                break
            prompt = record.get(cfg.prompt_column)
            if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
                raise TispipeError(f"{where}: column {cfg.prompt_column!r} holds no prompt (a non-empty string or message list)")
            prompts.append({"prompt_id": str(record.get("pair_id", f"row-{index}")), "prompt": prompt})
        return prompts, source
    from tispipe.console import log_console
    from tispipe.data.tokenization import has_chat_template
    from tispipe.data.transcripts import as_messages, is_transcript

    rows, report = load_pairs(opts)
    as_turns = cfg.chat_template and has_chat_template(tokenizer)
    prompts = []
    for row in rows:
        prompt = row["prompt"]
        if report.format == "implicit" and is_transcript(prompt):
            report.transcripts = "chat turns" if as_turns else "raw text"
            prompt = as_messages(prompt, row["chosen"], row["rejected"])[0] if as_turns else prompt
        prompts.append({"prompt_id": row["pair_id"], "prompt": prompt})
    print_report(report, log_console())
    return prompts, source


def fingerprint_prompts(prompts: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for p in prompts:
        digest.update(json.dumps([p["prompt_id"], p["prompt"]], ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- output folder


def claim_out(out: Path, state: dict[str, Any], overwrite: bool) -> bool:
    """Whether OUT is new or empty, or one this run started (resumed): False; or with --overwrite another
    run, whose files `remove_old_run` deletes once the model has loaded: True. Anything else is refused."""
    if out.exists() and not out.is_dir():
        raise TispipeError(f"--out {out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    try:
        previous = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        previous = None
    if previous == state:
        return False
    if not overwrite:
        what = "a `tispipe generate` run with other settings or inputs" if previous is not None else "files that are not a `tispipe generate` run"
        raise TispipeError(f"--out {out} already holds {what}", hint="choose another --out, or pass --overwrite to replace it")
    if previous is None:
        raise TispipeError(f"--out {out} holds files that are not a `tispipe generate` run; refusing to replace them")
    return True


def remove_old_run(out: Path) -> None:
    """The files of the run --overwrite replaces (called once the inputs are read and the model has loaded)."""
    for path in [*out.glob("train-*.jsonl"), *out.glob(".train-*.dropped.json"), out / "manifest.json", out / STATE_FILE]:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- shards


def shard_plan(prompts: int, cfg: GenerateConfig) -> list[tuple[range, range]]:
    """(prompt indices, sample numbers) of each shard: --shard-size prompts, and of their --num-samples as many
    as keep a shard within --shard-size pairs (at least one), so a huge --num-samples is saved as it goes."""
    count = (prompts // cfg.shard_size) * -(-cfg.num_samples // samples_per_shard(cfg.shard_size, cfg)) + (
        -(-cfg.num_samples // samples_per_shard(prompts % cfg.shard_size, cfg)) if prompts % cfg.shard_size else 0)
    if count > MAX_SHARDS:
        raise TispipeError(f"--num-samples {cfg.num_samples:,} for {prompts:,} prompts makes {count:,} shards of at most --shard-size {cfg.shard_size} pairs, "
                           f"more than {MAX_SHARDS:,}", hint="raise --shard-size, or ask for fewer samples")
    plan = []
    for start in range(0, prompts, cfg.shard_size):
        chunk = range(start, min(start + cfg.shard_size, prompts))
        block = samples_per_shard(len(chunk), cfg)
        plan += [(chunk, range(s, min(s + block, cfg.num_samples))) for s in range(0, cfg.num_samples, block)]
    return plan


def samples_per_shard(chunk: int, cfg: GenerateConfig) -> int:
    return cfg.num_samples if chunk * cfg.num_samples <= cfg.shard_size else max(1, cfg.shard_size // chunk)


# ---------------------------------------------------------------- the manifest


def describe(out: Path, cfg: GenerateConfig, state: dict[str, Any], prompts: int, shards: int, seconds: float) -> dict[str, Any]:
    """The manifest: settings, fingerprints, each shard's rows, sha256 and dropped counts, and the totals."""
    from tispipe.artifacts.shards import file_sha256

    entries, dropped = [], {}
    for index in range(shards):
        path = out / shard_file(index)
        counts = json.loads((out / counts_file(index)).read_text(encoding="utf-8"))
        rows = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        entries.append({"file": path.name, "rows": rows, "sha256": file_sha256(path), "dropped": counts})
        for reason, n in counts.items():
            dropped[reason] = dropped.get(reason, 0) + n
    return {
        "kind": "tispipe generate",
        "model": cfg.model,
        "prompts_source": cfg.prompts,
        **state,
        "prompts": prompts,
        "generated": prompts * cfg.num_samples,
        "pairs": sum(e["rows"] for e in entries),
        "dropped": dropped,
        "shards": entries,
        "seconds": round(seconds, 3),
    }


def finished_manifest(out: Path, state: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a finished run with this state whose shards are all intact, else None (the run goes on)."""
    from tispipe.artifacts.shards import file_sha256

    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        intact = all(file_sha256(out / e["file"]) == e["sha256"] for e in manifest["shards"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return None
    same = manifest.get("settings") == state["settings"] and manifest.get("fingerprints") == state["fingerprints"]
    return manifest if same and intact else None


def print_table(manifest: dict[str, Any], console) -> None:
    """Generated, kept and dropped pairs by reason, in the style of the data report."""
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("generated", str(manifest["generated"]))
    table.add_row("kept", str(manifest["pairs"]))
    for reason, n in sorted(manifest["dropped"].items()):
        table.add_row(f"dropped: {reason}", str(n))
    console.print(table)
