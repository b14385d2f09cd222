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
   toy oracle (`--oracle toy`: phrase reward and harmful-phrase rate), the outside offensive-text judge
   (`--oracle profanity`: 1 - P(offensive) and the offensive rate; tispipe.evaluate.judges) and/or a reward model
   (`--reward-model DIR`, any AutoModelForSequenceClassification with one output, fed the rendered
   prompt + response text without EOS). Win rate against `--baseline` (default: the first --model)
   compares the same (temperature, prompt, sample index), ties half, with a 95% interval. Intervals
   treat responses as independent; samples of one prompt are correlated, so with
   --samples-per-prompt > 1 they are somewhat too narrow. Every response also gets its chrF against
   the chosen responses of its prompt in the data (the best-matching one): how close it stays to
   what people preferred, so a judge that rewards saying nothing cannot be won by saying nothing.
3. Weight quality (`--shards DIR` from `tispipe estimate`, when its rows carry token labels): AUC of
   the weight at picking the decisive tokens: labelled helpful tokens among all chosen tokens, and
   labelled harmful tokens among all rejected tokens. Both should get HIGH weight: w = exp(mu * r)
   with r = log pi+ - log pi-, mu = +1 on chosen (weight rises with the token's reward) and mu = -1
   on rejected (weight falls with it, so the worst tokens count most; paper section 6.1 and 7.1).
   1.0 is a perfect ranking, 0.5 is chance, below 0.5 is the wrong way round.

Outputs in `out`: report.json (every number + the config), report.md, samples.jsonl, config.yaml, and
the figures (reward_by_temperature.png, reward_vs_kl.png, each with its .json); the comparison table is printed at the end (stdout; progress
and notes go to stderr).

Here: the stage and its checks. The measuring lives in tispipe.evaluate.likelihood (part 1) and
tispipe.modeling.generation (part 2), the weight AUC in tispipe.artifacts.weight_quality (part 3), the tables, report.md
and figures in tispipe.evaluate.report.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from pathlib import Path
from typing import Any

import torch

from tispipe.artifacts.atomic import check_writable, cleaned_up_on_failure, output_lock, staged_files
from tispipe.artifacts.outputs import check_new_out
from tispipe.artifacts.weight_quality import weight_quality
from tispipe.configs import EvalConfig, check_options
from tispipe.console import ProgressLine, log_console, result_console
from tispipe.core import metrics
from tispipe.errors import TispipeError
from tispipe.evaluate.judges import oracle_scores
from tispipe.evaluate.likelihood import likelihood, likelihood_metrics
from tispipe.evaluate.report import comparison_table, figure_names, render_markdown, write_figures
from tispipe.modeling.generation import generate, reward_scores
from tispipe.modeling.hub import local_folder, same_source
from tispipe.option_rules import check_oracle


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


def check_config(cfg: EvalConfig) -> list[float]:
    if not cfg.model:
        raise TispipeError("give at least one --model to evaluate")
    for i, name in enumerate(cfg.model):
        if any(same_source(name, other) for other in cfg.model[:i]):
            raise TispipeError(f"--model {name} is given twice")
    if cfg.oracle is not None:
        check_oracle(cfg.oracle)
    check_options(
        cfg, at_least_one=("samples_per_prompt", "max_new_tokens", "batch_size", "max_length", "max_prompt_length"), positive=("beta",),
        non_negative=("num_prompts", "threads"),
    )
    check_new_out(cfg.out, cfg.overwrite)
    return parse_temperatures(cfg.temperatures)


def distinct_prompts(pairs, limit: int) -> list:
    """The first `limit` distinct prompts of the pairs, in data order (a prompt is repeated across pairs)."""
    seen, out = set(), []
    for pair in pairs:
        key = _prompt_key(pair.prompt)
        if key not in seen and len(out) < limit:
            seen.add(key)
            out.append(pair)
    return out


def _tokenizer_for(names: list[str], trust_remote_code: bool):
    """The tokenizer of the first model; every model must load and fit it (`models.check_model`)."""
    from tispipe.modeling.models import check_model, load_tokenizer

    tokenizer = load_tokenizer(names[0], trust_remote_code=trust_remote_code)
    for name in names:
        check_model(name, "--model", tokenizer, trust_remote_code)
    return tokenizer


# ---------------------------------------------------------------- the stage


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate, write the reports into `cfg.out`, print the comparison table; returns the report dict."""
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        # tiny models run many tiny ops: on a busy CPU one thread beats several that wait on each other
        torch.set_num_threads(cfg.threads)
    try:
        with output_lock(cfg.out):  # one writer at a time, as every stage
            return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: EvalConfig) -> dict[str, Any]:
    from tispipe.config_files import config_dict
    from tispipe.data.pairs import load_pairs, print_report, tokenize_pairs
    from tispipe.modeling.models import resolve_device

    started = time.time()
    temperatures = check_config(cfg)
    check_writable(cfg.out)
    log = log_console()
    device = resolve_device(cfg.device)
    names, baseline = _models(cfg)
    tokenizer = _tokenizer_for(([cfg.ref] if cfg.ref else []) + names, cfg.trust_remote_code)

    opts = cfg.data_options()
    rows, data_report = load_pairs(opts)
    pairs = tokenize_pairs(rows, tokenizer, opts, data_report)
    print_report(data_report, log)
    # cheap inputs first, so a wrong path fails before minutes of generation
    weights = weight_quality(cfg.shards) if cfg.shards else None
    if cfg.reward_model:
        local_folder(cfg.reward_model, "reward model")

    scorers = (["oracle"] if cfg.oracle else []) + (["reward_model"] if cfg.reward_model else [])
    prompts = distinct_prompts(pairs, cfg.num_prompts) if scorers else []
    notes: list[str] = []
    if not scorers:
        notes.append("generation skipped: give --oracle toy or --reward-model DIR to sample and score responses")
    elif not prompts:
        notes.append("generation skipped: --num-prompts 0")
    if cfg.ref is None:
        notes.append("no --ref: rewards are beta * log pi(y|x) (the model's own log-prob margin) and KL is not measured")

    timing: dict[str, float] = {}
    agreement = None
    results, samples = _measure(cfg, names, pairs, prompts, temperatures, tokenizer, device, log, timing)
    if samples:
        t0 = time.time()
        _score(cfg, samples, _chosen_by_prompt(pairs), device, log)
        timing["scoring"] = time.time() - t0
        for name in names:
            results[name]["generation"] = generation_metrics(samples, name, baseline, temperatures, scorers)
        if len(scorers) == 2:
            agreement = scorer_agreement(samples, names)

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
        "reward_model_vs_oracle": agreement,
        "notes": notes,
    }
    if weights is not None and not weights["labelled_rows"]:
        notes.append(f"weight quality skipped: the shards in {cfg.shards} carry no token labels")
    names = figure_names(report)
    notes.append(f"figures: {', '.join(names)}" if names else "no generation scores: no figures")
    timing["total"] = time.time() - started
    report["timing_seconds"] = timing

    _write(cfg, report, samples)
    result_console().print(comparison_table(report))
    for note in notes:
        log.print(f"[dim]note: {note}[/dim]", soft_wrap=True)
    log.print(f"Wrote {Path(cfg.out) / 'report.json'}, report.md and samples.jsonl in {timing['total']:.1f}s", soft_wrap=True)
    return report


def _models(cfg: EvalConfig) -> tuple[list[str], str]:
    """The models to evaluate, and which of them is the baseline of the win rates."""
    names = list(cfg.model)
    baseline = cfg.baseline or names[0]
    if not any(same_source(baseline, n) for n in names):
        names.append(baseline)  # evaluated like the others, so its row shows what the win rates compare to
    return names, next(n for n in names if same_source(baseline, n))


def _measure(cfg: EvalConfig, names: list[str], pairs, prompts, temperatures: list[float], tokenizer, device: str, log,
             timing: dict[str, float]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Likelihood on the pairs and responses to the prompts, one model at a time: (results per model, samples)."""
    from tispipe.modeling.models import load_model

    ref = load_model(cfg.ref, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code) if cfg.ref else None
    results: dict[str, dict[str, Any]] = {}
    samples: list[dict[str, Any]] = []
    for name in names:
        t0 = time.time()
        model = ref if cfg.ref and same_source(name, cfg.ref) else load_model(name, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        with ProgressLine(log, f"likelihood {name}", len(pairs), transient=True) as progress:
            values = likelihood(model, ref, pairs, tokenizer.pad_token_id, cfg.batch_size, device, progress)
        results[name] = {"likelihood": likelihood_metrics(values, cfg.beta)}
        timing[f"likelihood {name}"] = time.time() - t0
        if prompts:
            t0 = time.time()
            samples += _responses(cfg, model, name, prompts, temperatures, tokenizer, device, log)
            timing[f"generate {name}"] = time.time() - t0
        if model is not ref:
            del model
            gc.collect()
    del ref
    gc.collect()
    return results, samples


def _responses(cfg: EvalConfig, model, name: str, prompts, temperatures: list[float], tokenizer, device: str, log) -> list[dict[str, Any]]:
    """`model`'s responses to the prompts at every temperature, as rows of samples.jsonl (before scoring)."""
    samples = []
    for temperature in temperatures:
        # greedy decoding gives the same response every time: copies would only narrow the intervals
        draws = 1 if temperature == 0 else cfg.samples_per_prompt
        items = [p.prompt_ids for p in prompts] * draws
        with ProgressLine(log, f"generate {name} T={temperature:g}", len(items), transient=True) as progress:
            responses = generate(model, items, temperature=temperature, max_new_tokens=cfg.max_new_tokens, eos_id=tokenizer.eos_token_id,
                                 pad_id=tokenizer.pad_token_id, batch_size=cfg.batch_size, seed=cfg.seed, device=device, progress=progress)
        for index, (ids, finished) in enumerate(responses):
            pair = prompts[index % len(prompts)]
            samples.append({
                "model": name, "temperature": temperature, "prompt_index": index % len(prompts),
                "sample": index // len(prompts), "pair_id": pair.pair_id, "prompt": pair.prompt,
                "response": tokenizer.decode(ids, skip_special_tokens=True), "tokens": len(ids), "finished": finished,
            })
    return samples


def _prompt_key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True) if not isinstance(prompt, str) else prompt


def _chosen_by_prompt(pairs) -> dict[str, list[str]]:
    """The chosen responses of every prompt in the data (as text): the references of chrF."""
    out: dict[str, list[str]] = {}
    for pair in pairs:
        text = pair.chosen if isinstance(pair.chosen, str) else "".join(str(m.get("content", "")) for m in pair.chosen)
        out.setdefault(_prompt_key(pair.prompt), []).append(text)
    return out


def _score(cfg: EvalConfig, samples: list[dict[str, Any]], chosen: dict[str, list[str]], device: str, log) -> None:
    """Add chrF against the prompt's chosen responses, the oracle's scores (oracle_reward, harmful) and the
    reward model's (rm_reward) to every sample."""
    from tispipe.modeling.models import load_reward_model

    for sample in samples:
        sample["chrf"] = metrics.chrf(sample["response"], chosen.get(_prompt_key(sample["prompt"]), []))
    if cfg.oracle:
        for sample, scores in zip(samples, oracle_scores(cfg.oracle, [s["response"] for s in samples]), strict=True):
            sample.update(scores)
    if cfg.reward_model:
        rm, rm_tokenizer = load_reward_model(cfg.reward_model, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        with ProgressLine(log, "reward model", len(samples), transient=True) as progress:
            scores = reward_scores(rm, rm_tokenizer, [s["prompt"] for s in samples], [s["response"] for s in samples], chat_template=cfg.chat_template,
                                   max_prompt_length=cfg.max_prompt_length, batch_size=cfg.batch_size, device=device, progress=progress)
        for sample, score in zip(samples, scores, strict=True):
            sample["rm_reward"] = score


def _write(cfg: EvalConfig, report: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    """samples.jsonl, report.json, report.md, config.yaml and the figures into `cfg.out`."""
    from tispipe.config_files import write_config

    out = Path(cfg.out)
    # Staged, then moved in: a full disk leaves the earlier report (or nothing) in OUT, never a mix.
    with cleaned_up_on_failure(out, saved=lambda _: False), staged_files(out, prefix=".eval-") as tmp:
        (tmp / "samples.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
        write_figures(report, tmp)
        write_config(dataclasses.replace(cfg, overwrite=False), tmp / "config.yaml")  # --overwrite is an action, not a setting


def scorer_agreement(samples: list[dict], names: list[str]) -> dict[str, Any]:
    """How well the reward model ranks the sampled responses as the toy oracle does: Spearman's rho over
    all samples, and per model (each model's responses alone)."""
    def rho(picked: list[dict]) -> dict[str, Any]:
        return {"spearman": metrics.spearman([s["rm_reward"] for s in picked], [s["oracle_reward"] for s in picked]), "samples": len(picked)}

    return {"all": rho(samples), "per_model": {name: rho([s for s in samples if s["model"] == name]) for name in names}}


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
            "chrf": metrics.mean([s["chrf"] for s in picked if s.get("chrf") is not None]),
        }
        if "oracle" in scorers:
            entry["harmful_rate"] = metrics.mean([s["harmful"] for s in picked])
        for scorer in scorers:
            values = [s[keys[scorer]] for s in picked]
            entry[f"{scorer}_reward"] = metrics.mean_ci(values).to_dict()
            entry[f"{scorer}_win_rate"] = metrics.win_rate(values, [theirs[k][keys[scorer]] for k in keys_here]).to_dict()
        out[label] = entry
    return out

