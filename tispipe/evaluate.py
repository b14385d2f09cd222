"""`tispipe eval`: measure what training did, on held-out pairs, with what is at hand locally.

For every `--model` (plus `--baseline` when it is not one of them):

1. Likelihood on the held-out pairs (teacher-forced, no sampling):
   - reward r(y) = beta * (log pi(y|x) - log ref(y|x)), sequence sums over response tokens (EOS
     included), DPO's implicit reward. Without `--ref` the reference term is dropped and r(y) is
     beta * log pi(y|x), the model's own log-prob margin (report.json says which, `reward_kind`);
   - preference accuracy = fraction of pairs with r(chosen) > r(rejected), ties half (so the
     reference model itself scores 0.5), and the mean reward margin r(chosen) - r(rejected);
   - mean chosen / rejected sequence log-probs, and the log-prob accuracy (own margin, no ref);
   - mean per-token KL(pi || ref) over the response positions of chosen and rejected (with `--ref`).
2. Generation on the held-out prompts (distinct prompts in data order, the first `num_prompts`): at
   each temperature (0 = greedy: one response per prompt, since more would be copies), seeded the same way for every model,
   batched with left padding, stopping at EOS or `max_new_tokens`. Each response is scored with the
   toy oracle (`--oracle toy`: phrase reward and harmful-phrase rate) and/or a reward model
   (`--reward-model DIR`, any AutoModelForSequenceClassification with one output, fed the rendered
   prompt + response text without EOS). Win rate against `--baseline` (default: the first --model)
   compares the same (temperature, prompt, sample index), ties half, with a 95% interval. Intervals
   treat responses as independent; samples of one prompt are correlated, so with
   --samples-per-prompt > 1 they are somewhat too narrow.
3. Weight quality (`--shards DIR` from `tispipe estimate`, when its rows carry token labels): AUC of
   the weight at picking the decisive tokens: labelled helpful tokens among all chosen tokens, and
   labelled harmful tokens among all rejected tokens. Both should get HIGH weight: w = exp(mu * r)
   with r = log pi+ - log pi-, mu = +1 on chosen (weight rises with the token's reward) and mu = -1
   on rejected (weight falls with it, so the worst tokens count most; paper section 6.1 and 7.1).
   1.0 is a perfect ranking, 0.5 is chance, below 0.5 is the wrong way round.

Outputs in `out`: report.json (every number + the config), report.md, samples.jsonl, config.yaml, and
PNG plots when matplotlib is importable; the comparison table is printed at the end.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tispipe import metrics
from tispipe.atomic import atomic_path, atomic_write_json, atomic_write_text
from tispipe.configs import EvalConfig
from tispipe.errors import TispipeError
from tispipe.weight_quality import weight_quality

ORACLES = ("toy",)




def parse_temperatures(text: str) -> list[float]:
    """"0,0.5,1.0" -> [0.0, 0.5, 1.0]; each must be a number >= 0, no repeats."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise TispipeError(f"--temperatures {text!r} is not a comma-separated list of numbers", hint="e.g. --temperatures 0,0.5,1.0") from None
    if not values or any(not v >= 0 or v == float("inf") for v in values):
        raise TispipeError(f"--temperatures {text!r}: give one or more finite numbers >= 0 (0 = greedy)")
    if len(set(values)) != len(values):
        raise TispipeError(f"--temperatures {text!r} repeats a value")
    return values


def _same(a: str, b: str) -> bool:
    """Two model names refer to the same model (same local folder, or the same hub name)."""
    if os.path.isdir(a) and os.path.isdir(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a == b


def check_config(cfg: EvalConfig) -> list[float]:
    if not cfg.model:
        raise TispipeError("give at least one --model to evaluate")
    for i, name in enumerate(cfg.model):
        if any(_same(name, other) for other in cfg.model[:i]):
            raise TispipeError(f"--model {name} is given twice")
    if cfg.oracle is not None and cfg.oracle not in ORACLES:
        raise TispipeError(f"unknown oracle {cfg.oracle!r}", hint=f"known: {', '.join(ORACLES)}")
    for name in ("samples_per_prompt", "max_new_tokens", "batch_size"):
        if getattr(cfg, name) < 1:
            raise TispipeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.num_prompts < 0:
        raise TispipeError(f"--num-prompts must be >= 0, got {cfg.num_prompts}")
    if cfg.beta <= 0:
        raise TispipeError(f"--beta must be > 0, got {cfg.beta}")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise TispipeError(f"--out {out} exists and is not a folder")
    if (out / "report.json").exists() and not cfg.overwrite:
        raise TispipeError(f"{out} already holds an eval report", hint="use --overwrite or another --out")
    return parse_temperatures(cfg.temperatures)


# ---------------------------------------------------------------- likelihood


@torch.no_grad()
def likelihood(model, ref, pairs, pad_id: int, batch_size: int, device: str, progress=None) -> dict[str, list[float]]:
    """Per-pair sequence log-probs of chosen and rejected under `model` (and `ref`), and per-pair KL sums.

    Returns lists over pairs: chosen_logps, rejected_logps (and ref_chosen_logps, ref_rejected_logps,
    kl_sums, kl_tokens when `ref` is given; KL(model || ref) summed over both responses' tokens).
    """
    from tispipe.batching import forward_logits, make_pair_batch
    from tispipe.logps import token_logps, token_logps_and_kl

    out: dict[str, list[float]] = {k: [] for k in ("chosen_logps", "rejected_logps")}
    if ref is not None:
        out.update({k: [] for k in ("ref_chosen_logps", "ref_rejected_logps", "kl_sums", "kl_tokens")})
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        n = len(chunk)
        batch = make_pair_batch([p.prompt_ids for p in chunk], [p.chosen_ids for p in chunk], [p.rejected_ids for p in chunk], pad_id).to(device)
        labels, mask = batch.labels, batch.response_mask
        logits = forward_logits(model, batch)
        if ref is None:
            token_values = token_logps(logits, labels)
        else:
            ref_logits = logits if ref is model else forward_logits(ref, batch)
            token_values, ref_token_values, token_kl = token_logps_and_kl(logits, ref_logits, labels)  # KL(model || ref)
        logps = (token_values * mask).sum(-1).tolist()
        out["chosen_logps"] += logps[:n]
        out["rejected_logps"] += logps[n:]
        if ref is not None:
            ref_logps = (ref_token_values * mask).sum(-1).tolist()
            out["ref_chosen_logps"] += ref_logps[:n]
            out["ref_rejected_logps"] += ref_logps[n:]
            kl = (token_kl * mask).sum(-1)
            tokens = mask.sum(-1)
            out["kl_sums"] += (kl[:n] + kl[n:]).tolist()
            out["kl_tokens"] += (tokens[:n] + tokens[n:]).tolist()
        if progress is not None:
            progress.advance(n)
    return out


def likelihood_metrics(values: dict[str, list[float]], beta: float) -> dict[str, Any]:
    """The numbers of part 1 of the module docstring from `likelihood`'s per-pair lists."""
    has_ref = "ref_chosen_logps" in values
    zeros = [0.0] * len(values["chosen_logps"])
    chosen = metrics.implicit_rewards(values["chosen_logps"], values["ref_chosen_logps"] if has_ref else zeros, beta)
    rejected = metrics.implicit_rewards(values["rejected_logps"], values["ref_rejected_logps"] if has_ref else zeros, beta)
    kl = sum(values["kl_sums"]) / max(sum(values["kl_tokens"]), 1) if has_ref else None
    return {
        "pairs": len(chosen),
        "pref_accuracy": metrics.preference_accuracy(chosen, rejected),
        "reward_margin": metrics.mean([c - r for c, r in zip(chosen, rejected, strict=True)]),
        "chosen_reward": metrics.mean(chosen),
        "rejected_reward": metrics.mean(rejected),
        "logp_accuracy": metrics.preference_accuracy(values["chosen_logps"], values["rejected_logps"]),
        "chosen_logp": metrics.mean(values["chosen_logps"]),
        "rejected_logp": metrics.mean(values["rejected_logps"]),
        "kl_per_token": kl,
    }


# ---------------------------------------------------------------- generation


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (N, L), padded on the left so every row ends at position L-1."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, length - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, length - len(s) :] = 1
    return ids, mask


@torch.no_grad()
def generate(model, prompt_ids: list[list[int]], *, temperature: float, max_new_tokens: int, eos_id: int, pad_id: int, batch_size: int, seed: int, device: str, progress=None) -> list[tuple[list[int], bool]]:
    """One response per prompt: (token ids without the EOS, whether EOS was produced).

    Plain ancestral sampling at `temperature` (no top-k/top-p), greedy at 0. The RNG is reseeded
    here, so every model sees the same random stream for the same call.
    """
    from transformers import GenerationConfig

    sampling = temperature > 0
    settings = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_k=0 if sampling else None,
        top_p=1.0 if sampling else None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    results = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start : start + batch_size]
        ids, mask = left_pad(chunk, pad_id)
        output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=settings)
        for row in output[:, ids.shape[1] :].tolist():
            finished = eos_id in row
            results.append((row[: row.index(eos_id)] if finished else row, finished))
        if progress is not None:
            progress.advance(len(chunk))
    return results


def reward_model_folder(name: str) -> Path | None:
    """The local folder `name` points at, None for a hub name; a missing local path or a file is an error."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise TispipeError(f"reward model path {name} is a file, not a model folder")
    if name.startswith((".", "/", "~")) or Path(name.split("/")[0]).is_dir():
        raise TispipeError(f"reward model folder {name} does not exist")
    return None


def load_reward_model(name: str, *, device: str, dtype: str, trust_remote_code: bool):
    """A local or hub AutoModelForSequenceClassification with one output, in eval mode, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from tispipe.models import load_tokenizer, resolve_dtype

    folder = reward_model_folder(name)
    source = str(folder) if folder else name
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise TispipeError(f"could not load the reward model {name}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    if model.config.num_labels != 1:
        raise TispipeError(f"reward model {name} has {model.config.num_labels} outputs; a reward model has one (num_labels=1)")
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # how the model finds the last real token of a padded row
    return model.to(device).eval().requires_grad_(False), tokenizer


@torch.no_grad()
def reward_scores(model, tokenizer, prompts: list, responses: list[str], *, chat_template: bool, max_prompt_length: int, batch_size: int, device: str, progress=None) -> list[float]:
    """The reward model's logit on the rendered prompt + response text (no EOS appended), left padded.

    Left padding puts every row's last real token at the last position, which is where a sequence
    classifier reads its score; leaving EOS out keeps a pad == EOS tokenizer from hiding that token.
    """
    from tispipe.tokenization import encode_prompt, encode_text

    scores: list[float] = []
    for start in range(0, len(responses), batch_size):
        sequences = [
            encode_prompt(tokenizer, prompt, None, chat_template)[-max_prompt_length:] + encode_text(tokenizer, response)
            for prompt, response in zip(prompts[start : start + batch_size], responses[start : start + batch_size], strict=True)
        ]
        ids, mask = left_pad(sequences, tokenizer.pad_token_id)
        scores += model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().tolist()
        if progress is not None:
            progress.advance(len(sequences))
    return scores


# ---------------------------------------------------------------- weight quality


# ---------------------------------------------------------------- the stage


def _progress(console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)


class _Task:
    """A rich progress task that the helpers above can advance without knowing about rich."""

    def __init__(self, progress, description: str, total: int):
        self.progress, self.id = progress, progress.add_task(description, total=total)

    def advance(self, n: int) -> None:
        self.progress.advance(self.id, n)

    def done(self) -> None:
        self.progress.remove_task(self.id)


def distinct_prompts(pairs, limit: int) -> list:
    """The first `limit` distinct prompts of the pairs, in data order (a prompt is repeated across pairs)."""
    seen, out = set(), []
    for pair in pairs:
        key = json.dumps(pair.prompt, sort_keys=True) if not isinstance(pair.prompt, str) else pair.prompt
        if key not in seen and len(out) < limit:
            seen.add(key)
            out.append(pair)
    return out


def _tokenizer_for(names: list[str], trust_remote_code: bool):
    """The tokenizer of the first model; every other model folder that has one must match it."""
    from tispipe.models import fingerprint_tokenizer, load_tokenizer

    tokenizer = load_tokenizer(names[0], trust_remote_code=trust_remote_code)
    expected = fingerprint_tokenizer(tokenizer)
    for name in names[1:]:
        if os.path.isdir(name) and not any((Path(name) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            continue
        if fingerprint_tokenizer(load_tokenizer(name, trust_remote_code=trust_remote_code)) != expected:
            raise TispipeError(f"{name} uses a different tokenizer from {names[0]}", hint="compare models that share one tokenizer")
    return tokenizer


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate, write the reports into `cfg.out`, print the comparison table; returns the report dict."""
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        # tiny models run many tiny ops: on a busy CPU one thread beats several that wait on each other
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: EvalConfig) -> dict[str, Any]:
    from rich.console import Console

    from tispipe import toy
    from tispipe.config import config_dict, write_config
    from tispipe.data import load_pairs, print_report, tokenize_pairs
    from tispipe.models import load_model, resolve_device

    started = time.time()
    temperatures = check_config(cfg)
    # a log file or pipe gets a wide table instead of rich's 80-column default, which would wrap it
    console = Console(width=None if sys.stdout.isatty() else 160)
    notes: list[str] = []
    device = resolve_device(cfg.device)
    out = Path(cfg.out)

    names = list(cfg.model)
    baseline = cfg.baseline or names[0]
    if not any(_same(baseline, n) for n in names):
        names.append(baseline)  # evaluated like the others, so its row shows what the win rates compare to
    baseline = next(n for n in names if _same(baseline, n))
    tokenizer = _tokenizer_for(([cfg.ref] if cfg.ref else []) + names, cfg.trust_remote_code)

    opts = cfg.data_options()
    rows, data_report = load_pairs(opts)
    pairs = tokenize_pairs(rows, tokenizer, opts, data_report)
    print_report(data_report, console)
    # cheap inputs first, so a wrong path fails before minutes of generation
    weights = weight_quality(cfg.shards) if cfg.shards else None
    if cfg.reward_model:
        reward_model_folder(cfg.reward_model)

    scorers = (["oracle"] if cfg.oracle else []) + (["reward_model"] if cfg.reward_model else [])
    prompts = distinct_prompts(pairs, cfg.num_prompts) if scorers else []
    if not scorers:
        notes.append("generation skipped: give --oracle toy or --reward-model DIR to sample and score responses")
    elif not prompts:
        notes.append("generation skipped: --num-prompts 0")
    if cfg.ref is None:
        notes.append("no --ref: rewards are beta * log pi(y|x) (the model's own log-prob margin) and KL is not measured")

    ref = load_model(cfg.ref, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code) if cfg.ref else None
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    results: dict[str, dict[str, Any]] = {}
    samples: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    with _progress(console) as progress:
        for name in names:
            t0 = time.time()
            model = ref if cfg.ref and _same(name, cfg.ref) else load_model(name, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
            task = _Task(progress, f"likelihood {name}", len(pairs))
            values = likelihood(model, ref, pairs, pad_id, cfg.batch_size, device, task)
            task.done()
            results[name] = {"likelihood": likelihood_metrics(values, cfg.beta)}
            timing[f"likelihood {name}"] = time.time() - t0
            t0 = time.time()
            for temperature in temperatures if prompts else []:
                # greedy decoding gives the same response every time: copies would only narrow the intervals
                draws = 1 if temperature == 0 else cfg.samples_per_prompt
                items = [p.prompt_ids for p in prompts] * draws
                task = _Task(progress, f"generate {name} T={temperature:g}", len(items))
                responses = generate(model, items, temperature=temperature, max_new_tokens=cfg.max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                                     batch_size=cfg.batch_size, seed=cfg.seed, device=device, progress=task)
                task.done()
                for index, (ids, finished) in enumerate(responses):
                    pair = prompts[index % len(prompts)]
                    samples.append({
                        "model": name, "temperature": temperature, "prompt_index": index % len(prompts),
                        "sample": index // len(prompts), "pair_id": pair.pair_id, "prompt": pair.prompt,
                        "response": tokenizer.decode(ids, skip_special_tokens=True), "tokens": len(ids), "finished": finished,
                    })
            if prompts:
                timing[f"generate {name}"] = time.time() - t0
            if model is not ref:
                del model
                gc.collect()
    del ref
    gc.collect()

    t0 = time.time()
    if cfg.oracle and samples:
        for sample in samples:
            sample["oracle_reward"] = toy.oracle_reward(sample["response"])
            sample["harmful"] = toy.harmful_rate(sample["response"])
    if cfg.reward_model and samples:
        rm, rm_tokenizer = load_reward_model(cfg.reward_model, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        with _progress(console) as progress:
            task = _Task(progress, "reward model", len(samples))
            scores = reward_scores(rm, rm_tokenizer, [s["prompt"] for s in samples], [s["response"] for s in samples], chat_template=cfg.chat_template,
                                   max_prompt_length=cfg.max_prompt_length, batch_size=cfg.batch_size, device=device, progress=task)
        for sample, score in zip(samples, scores, strict=True):
            sample["rm_reward"] = score
        del rm
    if samples:
        timing["scoring"] = time.time() - t0
        for name in names:
            results[name]["generation"] = generation_metrics(samples, name, baseline, temperatures, scorers)

    report = {
        "config": config_dict(cfg),
        "models": names,
        "baseline": baseline,
        "reference": cfg.ref,
        "reward_kind": "implicit: beta * (log pi - log ref)" if cfg.ref else "own: beta * log pi (no --ref)",
        "scorers": scorers if samples else [],
        "temperatures": temperatures,
        "data": data_report.to_dict(),
        "prompts": len(prompts),
        "results": results,
        "weights": weights,
        "notes": notes,
    }
    if report["weights"] is not None and not report["weights"]["labelled_rows"]:
        notes.append(f"weight quality skipped: the shards in {cfg.shards} carry no token labels")
    notes.append(write_plots(report, out))
    timing["total"] = time.time() - started
    report["timing_seconds"] = timing

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    write_config(cfg, out / "config.yaml")
    console.print(comparison_table(report))
    for note in notes:
        console.print(f"[dim]note: {note}[/dim]")
    console.print(f"Wrote {out / 'report.json'}, report.md and samples.jsonl in {timing['total']:.1f}s")
    return report


def generation_metrics(samples: list[dict], name: str, baseline: str, temperatures: list[float], scorers: list[str]) -> dict[str, Any]:
    """Per temperature (and pooled, "all"): mean rewards, harmful rate, lengths, and win rates against the baseline."""
    keys = {"oracle": "oracle_reward", "reward_model": "rm_reward"}
    mine = {(s["temperature"], s["prompt_index"], s["sample"]): s for s in samples if s["model"] == name}
    theirs = {(s["temperature"], s["prompt_index"], s["sample"]): s for s in samples if s["model"] == baseline}
    out: dict[str, Any] = {}
    for label, temps in [*((f"{t:g}", [t]) for t in temperatures), ("all", temperatures)]:
        keys_here = sorted(k for k in mine if k[0] in temps)
        picked = [mine[k] for k in keys_here]
        entry: dict[str, Any] = {
            "n": len(picked),
            "mean_tokens": metrics.mean([s["tokens"] for s in picked]),
            "finished_rate": metrics.mean([float(s["finished"]) for s in picked]),
        }
        if "oracle" in scorers:
            entry["harmful_rate"] = metrics.mean([s["harmful"] for s in picked])
        for scorer in scorers:
            values = [s[keys[scorer]] for s in picked]
            entry[f"{scorer}_reward"] = metrics.mean_ci(values).to_dict()
            entry[f"{scorer}_win_rate"] = metrics.win_rate(values, [theirs[k][keys[scorer]] for k in keys_here]).to_dict()
        out[label] = entry
    return out


# ---------------------------------------------------------------- presenting


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _short(name: str) -> str:
    return name.rstrip("/").split("/")[-1] if os.sep in name or "/" in name else name


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The comparison table (the shape of the paper's Table 1) as header + rows of strings."""
    primary = report["scorers"][0] if report["scorers"] else None
    header = ["model", "pref acc", "margin", "KL/token"]
    if primary:
        header += [f"{'oracle' if primary == 'oracle' else 'RM'} T={t:g}" for t in report["temperatures"]]
        if primary == "oracle":
            header.append("harmful")
        header.append(f"win vs {_short(report['baseline'])} [95% CI]")
    rows = []
    for name in report["models"]:
        result = report["results"][name]
        lik = result["likelihood"]
        row = [_short(name), _fmt(lik["pref_accuracy"]), _fmt(lik["reward_margin"], "+.3f"), _fmt(lik["kl_per_token"], ".4f")]
        if primary:
            gen = result["generation"]
            row += [_fmt(gen[f"{t:g}"][f"{primary}_reward"]["estimate"], "+.2f") for t in report["temperatures"]]
            if primary == "oracle":
                row.append(_fmt(gen["all"]["harmful_rate"], ".1%"))
            win = gen["all"][f"{primary}_win_rate"]
            row.append(f"{_fmt(win['rate'])} [{_fmt(win['low'], '.2f')}, {_fmt(win['high'], '.2f')}]")
        rows.append(row)
    return header, rows


def comparison_table(report: dict[str, Any]):
    from rich.table import Table

    header, rows = table_rows(report)
    table = Table(title=f"tispipe eval ({report['data']['kept']} pairs, {report['prompts']} prompts)")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def render_markdown(report: dict[str, Any]) -> str:
    header, rows = table_rows(report)
    text = [(f"# tispipe eval\n\nData: `{report['data']['source']}` ({report['data']['kept']} pairs). "
            f"Reference: `{report['reference']}`. Reward: {report['reward_kind']}, beta {report['config']['beta']}. "
            f"Baseline for win rates: `{report['baseline']}`.\n"), "\n## Comparison\n\n", _md_table(header, rows)]
    lik_header = ["model", "pref acc", "logp acc", "chosen logp", "rejected logp", "chosen reward", "rejected reward", "KL/token"]
    lik_rows = [[_short(n)] + [_fmt(report["results"][n]["likelihood"][k], f) for k, f in
                 [("pref_accuracy", ".3f"), ("logp_accuracy", ".3f"), ("chosen_logp", ".2f"), ("rejected_logp", ".2f"),
                  ("chosen_reward", "+.3f"), ("rejected_reward", "+.3f"), ("kl_per_token", ".4f")]] for n in report["models"]]
    text += ["\n## Likelihood on held-out pairs\n\n", _md_table(lik_header, lik_rows)]
    for scorer in report["scorers"]:
        gen_header = ["model", "T", "n", "mean reward [95% CI]", "win rate [95% CI]", "W/T/L", "tokens", "finished"]
        gen_header += ["harmful"] if scorer == "oracle" else []
        gen_rows = []
        for name in report["models"]:
            for label, entry in report["results"][name]["generation"].items():
                reward, win = entry[f"{scorer}_reward"], entry[f"{scorer}_win_rate"]
                gen_rows.append([_short(name), label, str(entry["n"]),
                                 f"{_fmt(reward['estimate'], '+.2f')} [{_fmt(reward['low'], '+.2f')}, {_fmt(reward['high'], '+.2f')}]",
                                 f"{_fmt(win['rate'])} [{_fmt(win['low'], '.2f')}, {_fmt(win['high'], '.2f')}]",
                                 f"{win['wins']}/{win['ties']}/{win['losses']}", _fmt(entry["mean_tokens"], ".1f"), _fmt(entry["finished_rate"], ".0%")]
                                + ([_fmt(entry["harmful_rate"], ".1%")] if scorer == "oracle" else []))
        text += [f"\n## Generation, scored by {'the toy oracle' if scorer == 'oracle' else 'the reward model'}\n\n", _md_table(gen_header, gen_rows)]
    weights = report.get("weights")
    if weights and weights.get("labelled_rows"):
        text += ["\n## Weight quality\n\n",
                 (f"AUC of the weight for harmful tokens among rejected tokens: {_fmt(weights['rejected_harmful_auc'])}; "
                 f"for helpful tokens among chosen tokens: {_fmt(weights['chosen_helpful_auc'])} "
                 f"({weights['labelled_rows']} labelled rows; 0.5 is chance).\n\n"),
                 _md_table(["side", "harmful", "neutral", "helpful"],
                           [[side] + [_fmt(weights[f"{side}_{k}_mean_weight"]) for k in ("harmful", "neutral", "helpful")] for side in ("chosen", "rejected")])]
    if report["notes"]:
        text += ["\n## Notes\n\n"] + [f"- {note}\n" for note in report["notes"]]
    return "".join(text)


def write_plots(report: dict[str, Any], out: Path) -> str:
    """Reward and win rate against temperature as PNGs, when matplotlib is importable; returns a note."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plots written"
    if not report["scorers"]:
        return "no generation scores: no plots written"
    out.mkdir(parents=True, exist_ok=True)
    primary = report["scorers"][0]
    temps = report["temperatures"]
    for key, what in ((f"{primary}_reward", "mean reward"), (f"{primary}_win_rate", "win rate")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name in report["models"]:
            gen = report["results"][name]["generation"]
            ax.plot(temps, [gen[f"{t:g}"][key]["estimate" if what == "mean reward" else "rate"] for t in temps], marker="o", label=_short(name))
        ax.set_xlabel("temperature")
        ax.set_ylabel(what if what == "mean reward" else f"win rate vs {_short(report['baseline'])}")
        ax.legend()
        fig.tight_layout()
        with atomic_path(out / f"{what.replace(' ', '_')}_vs_temperature.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
    return "plots written: mean_reward_vs_temperature.png, win_rate_vs_temperature.png"
