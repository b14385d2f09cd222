"""The pairs of one `tispipe generate` shard: each prompt answered under the two system prompts, or its
answers ranked by a reward model (tispipe.prepare.generate says when each is used).

Sampling is seeded by (seed, prompt chunk, sample, side or candidate) alone, so a resumed shard is
sampled again exactly.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from tispipe.configs import GenerateConfig

# Why a pair is dropped, as counted in the manifest and the printed table.
IDENTICAL, EMPTY, NO_EOS, TIED = "identical responses", "empty response", "cut off without EOS", "reward model ties"


def sample_shard(
    model, tokenizer, prompts: list[dict[str, Any]], index: int, samples: range, cfg: GenerateConfig, device: str, progress, t0: float, ranker=None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One shard's pairs (prompt order, then sample) and the number dropped per reason; `index` numbers its
    prompt chunk, which with the sample number seeds the sampling. `ranker`: (reward model, its tokenizer) with --reward-model."""
    rows: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    for sample in samples:
        made = ranked_pairs(model, tokenizer, prompts, index, sample, cfg, device, ranker) if ranker else contrast_pairs(model, tokenizer, prompts, index, sample, cfg, device)
        for row in made:
            reason = drop_reason(row, cfg.require_eos)
            if reason is None:
                rows.append(row)
            else:
                dropped[reason] = dropped.get(reason, 0) + 1
        progress.advance(len(prompts), f"{(progress.done + len(prompts)) / max(time.perf_counter() - t0, 1e-9):.1f} pairs/s")
    return rows, dropped


def sample_answers(model, tokenizer, prompts: list[dict[str, Any]], system: str | None, cfg: GenerateConfig, seed_text: str, device: str) -> list[tuple[str, bool]]:
    """(text, ended with EOS) of one sampled answer per prompt, seeded by `seed_text` alone."""
    from tispipe.data.tokenization import encode_prompt
    from tispipe.modeling.generation import generate

    ids = [encode_prompt(tokenizer, p["prompt"], system, cfg.chat_template)[-cfg.max_prompt_length :] for p in prompts]
    seed = int(hashlib.sha256(seed_text.encode()).hexdigest()[:8], 16)
    answers = generate(model, ids, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, eos_id=tokenizer.eos_token_id,
                       pad_id=tokenizer.pad_token_id, batch_size=cfg.batch_size, seed=seed, device=device)
    return [(tokenizer.decode(answer, skip_special_tokens=True), finished) for answer, finished in answers]


def _sampling(cfg: GenerateConfig, sample: int) -> dict[str, Any]:
    extra = {"candidates": cfg.candidates} if cfg.reward_model else {}
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "sample": sample, **extra}


def contrast_pairs(model, tokenizer, prompts: list[dict[str, Any]], index: int, sample: int, cfg: GenerateConfig, device: str) -> list[dict[str, Any]]:
    """One pair per prompt: the answer under --pos-prompt (chosen) and the one under --neg-prompt (rejected)."""
    chosen, rejected = (sample_answers(model, tokenizer, prompts, system, cfg, f"{cfg.seed}/{index}/{sample}/{side}", device)
                        for side, system in (("chosen", cfg.pos_prompt), ("rejected", cfg.neg_prompt)))
    return [{"pair_id": f"{p['prompt_id']}-{sample}", "prompt": p["prompt"], "chosen": c, "rejected": r,
             "chosen_system": cfg.pos_prompt, "rejected_system": cfg.neg_prompt, "chosen_finished": c_eos, "rejected_finished": r_eos,
             "sampling": _sampling(cfg, sample)}
            for p, (c, c_eos), (r, r_eos) in zip(prompts, chosen, rejected, strict=True)]


def ranked_pairs(model, tokenizer, prompts: list[dict[str, Any]], index: int, sample: int, cfg: GenerateConfig, device: str, ranker) -> list[dict[str, Any]]:
    """One pair per prompt: of --candidates answers without a system prompt, the reward model's best (chosen) and
    worst (rejected), with their scores; the first of equal scores wins, and a prompt whose answers all score
    alike makes a pair the drop counts as a tie."""
    from tispipe.modeling.generation import reward_scores

    reward_model, reward_tokenizer = ranker
    candidates = [sample_answers(model, tokenizer, prompts, None, cfg, f"{cfg.seed}/{index}/{sample}/candidate-{c}", device) for c in range(cfg.candidates)]
    texts = [answers[i][0] for i in range(len(prompts)) for answers in candidates]
    scores = reward_scores(reward_model, reward_tokenizer, [p["prompt"] for p in prompts for _ in candidates], texts, chat_template=cfg.chat_template,
                           max_prompt_length=cfg.max_prompt_length, batch_size=cfg.batch_size, device=device)
    rows = []
    for i, p in enumerate(prompts):
        mine = scores[i * len(candidates) : (i + 1) * len(candidates)]
        best, worst = mine.index(max(mine)), mine.index(min(mine))
        (chosen, chosen_eos), (rejected, rejected_eos) = candidates[best][i], candidates[worst][i]
        rows.append({"pair_id": f"{p['prompt_id']}-{sample}", "prompt": p["prompt"], "chosen": chosen, "rejected": rejected,
                     "chosen_system": None, "rejected_system": None, "chosen_finished": chosen_eos, "rejected_finished": rejected_eos,
                     "chosen_reward": mine[best], "rejected_reward": mine[worst], "sampling": _sampling(cfg, sample)})
    return rows


def drop_reason(row: dict[str, Any], require_eos: bool) -> str | None:
    """Why a generated pair cannot train (identical or empty responses, or a cut-off one under --require-eos); None if it can."""
    if not row["chosen"].strip() or not row["rejected"].strip():
        return EMPTY
    if row.get("chosen_reward") is not None and row["chosen_reward"] == row["rejected_reward"]:
        return TIED
    if row["chosen"] == row["rejected"]:
        return IDENTICAL
    if require_eos and not (row["chosen_finished"] and row["rejected_finished"]):
        return NO_EOS
    return None
