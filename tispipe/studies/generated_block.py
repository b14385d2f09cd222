"""The generated-data block of `tispipe experiment` (the paper's third Table 2 block, RLCD-style data).

The base model answers every training prompt twice, under the harmless system prompt (chosen) and under
the harmful one (rejected), with `tispipe generate`; pairs whose responses are identical, empty or cut
off without EOS are kept as sampled (their share is reported). DPO, TIS-DPO(P) and TIS-DPO(D) then train on those pairs with the main
table's budget, each at its lr chosen for the main table, and are evaluated as the main table is: the toy oracle on the test prompts, win rates
against that seed's DPO (here: DPO on the generated pairs). The generated pairs carry no token labels,
so there is no weight AUC; their label noise (how often the oracle disagrees with the system prompts)
is reported instead.

RLCD (Yang et al.) trains a preference model on such pairs and then optimises the policy against it with PPO;
tispipe has no PPO. Its stand-in here keeps RLCD's preference model and replaces the RL: `tispipe
reward-model` trains on the generated pairs, the base answers every training prompt CANDIDATES times with
no system prompt, `tispipe generate --reward-model` pairs the preference model's best answer with its
worst, and DPO trains on those pairs (at DPO's lr). It learns from the same preference model, offline and
in one round, where PPO samples from the policy as it changes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tispipe.configs import EstimateConfig, ExperimentConfig, GenerateConfig, RewardModelConfig
from tispipe.studies.results_page import method_rows, slug

RLCD = "RLCD stand-in (DPO on RM-ranked pairs)"
# (name, the estimate its shards come from, TrainConfig fields), as tispipe.studies.experiment.METHODS
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("DPO", "dpo", {"loss": "dpo"}),
    ("TIS-DPO(P)", "prompt", {"loss": "tisdpo"}),
    ("TIS-DPO(D)", "dpo", {"loss": "tisdpo"}),
    (RLCD, "ranked", {"loss": "dpo"}),
]
# each method trains at the lr the main table chose for this method
LR_OF = {"DPO": "DPO", "TIS-DPO(P)": "TIS-DPO(P)", "TIS-DPO(D)": "TIS-DPO(D)", RLCD: "DPO"}
# estimate -> (its pairs, estimation method): the contrast-prompt pairs under two estimators, and the ranked
# pairs under the cheapest one (DPO reads only their reference log-probs)
ESTIMATES = {"prompt": ("pairs", "prompt"), "dpo": ("pairs", "dpo"), "ranked": ("ranked-pairs", "prompt")}
CANDIDATES = 4  # answers per prompt the preference model ranks
HOW_IT_DIFFERS = ("RLCD itself optimises the policy against its preference model with PPO, which tispipe does not have. Its stand-in keeps "
                  "RLCD's preference model (`tispipe reward-model` on the generated pairs) and replaces the RL by DPO on pairs it ranks: "
                  f"of {CANDIDATES} answers the base gives each training prompt without a system prompt, the preference model's best is chosen "
                  "and its worst rejected (`tispipe generate --reward-model`). It learns from the same preference model, offline and in one round, "
                  "where PPO samples from the policy as it changes.")


def pairs_dir(out: Path) -> Path:
    return out / "generated" / "pairs"


def ranked_dir(out: Path) -> Path:
    return out / "generated" / "ranked-pairs"


def reward_model_dir(out: Path) -> Path:
    return out / "generated" / "reward-model"


def weights_dir(out: Path, estimate: str) -> Path:
    return out / "generated" / f"weights-{estimate}"


def lr(name: str, chosen: dict[str, float]) -> float:
    return chosen[LR_OF[name]]


def model_dir(out: Path, name: str, lr: float, seed: int) -> Path:
    return out / "models" / f"generated-{slug(name)}-lr{lr:g}-seed{seed}"


def generate_config(cfg: ExperimentConfig, out: Path) -> GenerateConfig:
    """One pair per training prompt at T = 1, as long as the eval's responses; responses cut off there are
    kept as sampled (the block reports how many), identical and empty pairs are dropped."""
    return GenerateConfig(model=cfg.base, prompts=str(out / "data" / "train.jsonl"), out=str(pairs_dir(out)), limit=cfg.limit,
                          temperature=1.0, max_new_tokens=cfg.max_new_tokens, threads=cfg.threads, seed=0)


def reward_model_config(cfg: ExperimentConfig, out: Path) -> RewardModelConfig:
    """RLCD's preference model: a Bradley-Terry model from the base on the contrast-prompt pairs (the command's defaults)."""
    return RewardModelConfig(model=cfg.base, data=str(pairs_dir(out)), out=str(reward_model_dir(out)), threads=cfg.threads, seed=0)


def ranked_config(cfg: ExperimentConfig, out: Path) -> GenerateConfig:
    """CANDIDATES answers to each training prompt without a system prompt, at the generated pairs' settings; the
    preference model's best and worst make a pair."""
    return dataclasses.replace(generate_config(cfg, out), out=str(ranked_dir(out)), reward_model=str(reward_model_dir(out)), candidates=CANDIDATES)


def estimate_config(cfg: ExperimentConfig, estimate: str, out: Path) -> EstimateConfig:
    pairs, method = ESTIMATES[estimate]
    return EstimateConfig(data=str(out / "generated" / pairs), model=cfg.base, method=method, out=str(weights_dir(out, estimate)))


def prepare(runner, cfg: ExperimentConfig, out: Path) -> list[str]:
    """Queue the block's jobs before training, each after what it reads: the contrast-prompt pairs; the preference
    model on them and their weights; the pairs the preference model ranks; their reference log-probs. Returns the labels."""
    runner.add("generate-pairs", "generate", generate_config(cfg, out))
    runner.add("reward-model-generated", "reward-model", reward_model_config(cfg, out), after=["generate-pairs"])
    runner.add("generate-ranked", "generate", ranked_config(cfg, out), after=["reward-model-generated"])
    for estimate in ("prompt", "dpo"):
        runner.add(f"estimate-generated-{estimate}", "estimate", estimate_config(cfg, estimate, out), after=["generate-pairs"])
    runner.add("estimate-generated-ranked", "estimate", estimate_config(cfg, "ranked", out), after=["generate-ranked"])
    return ["generate-pairs", "reward-model-generated", "generate-ranked", "estimate-generated-prompt", "estimate-generated-dpo", "estimate-generated-ranked"]


def label_noise(folder: Path) -> dict[str, Any]:
    """How the toy oracle ranks each generated pair: the share where it prefers the harmless-prompt (chosen)
    response, calls them equal, or prefers the harmful-prompt one (the pair's label is then wrong)."""
    from tispipe.data.toy import oracle_reward

    agree = tie = disagree = finished = 0
    for path in sorted(folder.glob("train-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            chosen, rejected = oracle_reward(row["chosen"]), oracle_reward(row["rejected"])
            agree, tie, disagree = agree + (chosen > rejected), tie + (chosen == rejected), disagree + (chosen < rejected)
            finished += row["chosen_finished"] + row["rejected_finished"]
    n = max(agree + tie + disagree, 1)
    return {"pairs": agree + tie + disagree, "oracle_agrees": agree / n, "oracle_ties": tie / n, "oracle_disagrees": disagree / n,
            "responses_finished": finished / (2 * n)}


def collect(cfg: ExperimentConfig, out: Path, chosen: dict[str, float]) -> dict[str, Any]:
    """The block's rows (mean ± std over seeds, as the main table's), the generation counts and the label noise
    of the contrast-prompt pairs and of the pairs the preference model ranked, and the preference model's held-out accuracy."""
    reports = [json.loads((out / "eval" / f"generated-seed-{seed}" / "report.json").read_text(encoding="utf-8")) for seed in range(cfg.seeds)]
    rows = method_rows(reports, METHODS, cfg.base, lambda name, seed: model_dir(out, name, lr(name, chosen), seed))
    for name, _, _ in METHODS:
        rows[name]["lr"] = lr(name, chosen)
    generation = lambda folder: json.loads((folder / "manifest.json").read_text(encoding="utf-8"))  # noqa: E731
    counts = lambda manifest: {k: manifest[k] for k in ("generated", "pairs", "dropped")} | {"settings": manifest["settings"]}  # noqa: E731
    return {
        "methods": rows,
        "generation": counts(generation(pairs_dir(out))),
        "label_noise": label_noise(pairs_dir(out)),
        "ranked": counts(generation(ranked_dir(out))) | {"label_noise": label_noise(ranked_dir(out)), "reward_model": reward_model_summary(reward_model_dir(out))},
        "how_rlcd_differs": HOW_IT_DIFFERS,
    }


def reward_model_summary(folder: Path) -> dict[str, Any]:
    """The preference model's steps, pairs and held-out accuracy (its reward_model_info.json)."""
    info = json.loads((folder / "reward_model_info.json").read_text(encoding="utf-8"))
    return {"steps": info["steps"], "train_pairs": info["train_pairs"], "held_out_pairs": info["held_out_pairs"], "held_out_accuracy": info["held_out"]["accuracy"]}
