"""The generated-data block of `tispipe experiment` (the paper's third Table 2 block, RLCD-style data).

The base model answers every training prompt twice, under the harmless system prompt (chosen) and under
the harmful one (rejected), with `tispipe generate`; pairs whose responses are identical, empty or cut
off without EOS are kept as sampled (their share is reported). DPO, TIS-DPO(P) and TIS-DPO(D) then train on those pairs with the main
table's budget, each at its lr chosen for the main table, and are evaluated as the main table is: the toy oracle on the test prompts, win rates
against that seed's DPO (here: DPO on the generated pairs). The generated pairs carry no token labels,
so there is no weight AUC; their label noise (how often the oracle disagrees with the system prompts)
is reported instead. RLCD's own recipe trains a preference model on the pairs and then runs RL against it; tispipe has no RL stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tispipe.configs import EstimateConfig, ExperimentConfig, GenerateConfig
from tispipe.studies.results_page import method_rows, slug

# (name, estimation method of its shards, TrainConfig fields), as tispipe.studies.experiment.METHODS
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("DPO", "dpo", {"loss": "dpo"}),
    ("TIS-DPO(P)", "prompt", {"loss": "tisdpo"}),
    ("TIS-DPO(D)", "dpo", {"loss": "tisdpo"}),
]
ESTIMATORS = ["prompt", "dpo"]
LEFT_OUT = "RLCD (a preference model trained on the generated pairs, then RL against it) is left out: `tispipe reward-model` trains the preference model, but tispipe has no RL (PPO) stage."


def pairs_dir(out: Path) -> Path:
    return out / "generated" / "pairs"


def weights_dir(out: Path, method: str) -> Path:
    return out / "generated" / f"weights-{method}"


def model_dir(out: Path, name: str, lr: float, seed: int) -> Path:
    return out / "models" / f"generated-{slug(name)}-lr{lr:g}-seed{seed}"


def generate_config(cfg: ExperimentConfig, out: Path) -> GenerateConfig:
    """One pair per training prompt at T = 1, as long as the eval's responses; responses cut off there are
    kept as sampled (the block reports how many), identical and empty pairs are dropped."""
    return GenerateConfig(model=cfg.base, prompts=str(out / "data" / "train.jsonl"), out=str(pairs_dir(out)), limit=cfg.limit,
                          temperature=1.0, max_new_tokens=cfg.max_new_tokens, threads=cfg.threads, seed=0)


def estimate_config(cfg: ExperimentConfig, method: str, out: Path) -> EstimateConfig:
    return EstimateConfig(data=str(pairs_dir(out)), model=cfg.base, method=method, out=str(weights_dir(out, method)))


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
    """The block's rows (mean ± std over seeds, as the main table's), the generation counts and the label noise."""
    reports = [json.loads((out / "eval" / f"generated-seed-{seed}" / "report.json").read_text(encoding="utf-8")) for seed in range(cfg.seeds)]
    rows = method_rows(reports, METHODS, cfg.base, lambda name, seed: model_dir(out, name, chosen[name], seed))
    for name, _, _ in METHODS:
        rows[name]["lr"] = chosen[name]
    manifest = json.loads((pairs_dir(out) / "manifest.json").read_text(encoding="utf-8"))
    return {
        "methods": rows,
        "generation": {k: manifest[k] for k in ("generated", "pairs", "dropped")} | {"settings": manifest["settings"]},
        "label_noise": label_noise(pairs_dir(out)),
        "left_out": LEFT_OUT,
    }
