"""Sampling responses and scoring them with a reward model, for `tispipe eval` (part 2 of its docstring).

Both run batched with left padding (`tispipe.modeling.batching.left_pad`): a generating model continues
every row from the last column, and a sequence classifier reads its score there.
"""

from __future__ import annotations

import torch

from tispipe.modeling.batching import left_pad


@torch.no_grad()
def generate(
    model, prompt_ids: list[list[int]], *, temperature: float, max_new_tokens: int, eos_id: int, pad_id: int, batch_size: int, seed: int, device: str,
    top_p: float = 1.0, progress=None,
) -> list[tuple[list[int], bool]]:
    """One response per prompt: (token ids without the EOS, whether EOS was produced).

    Ancestral sampling at `temperature` (no top-k; nucleus `top_p`, 1 = off), greedy at 0. The RNG
    is reseeded here, so every model sees the same random stream for the same call.
    """
    from transformers import GenerationConfig

    sampling = temperature > 0
    settings = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_k=0 if sampling else None,
        top_p=top_p if sampling else None,
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


@torch.no_grad()
def reward_scores(model, tokenizer, prompts: list, responses: list[str], *, chat_template: bool, max_prompt_length: int, batch_size: int, device: str, progress=None) -> list[float]:
    """The reward model's logit on the rendered prompt + response text (no EOS appended), left padded.

    Left padding puts every row's last real token at the last position, which is where a sequence
    classifier reads its score; leaving EOS out keeps a pad == EOS tokenizer from hiding that token.
    """
    from tispipe.data.tokenization import encode_prompt, encode_text

    scores: list[float] = []
    for start in range(0, len(responses), batch_size):
        sequences = [
            encode_prompt(tokenizer, prompt, None, chat_template)[-max_prompt_length:] + encode_text(tokenizer, response)
            for prompt, response in zip(prompts[start : start + batch_size], responses[start : start + batch_size], strict=True)
        ]
        scores += sequence_scores(model, sequences, tokenizer.pad_token_id, device).tolist()
        if progress is not None:
            progress.advance(len(sequences))
    return scores


def sequence_scores(model, sequences: list[list[int]], pad_id: int, device: str) -> torch.Tensor:
    """(N,) float32: a one-output sequence classifier's logit on each token sequence, left padded
    (its last real token at the last position, where the classifier reads). Gradients flow when enabled."""
    ids, mask = left_pad(sequences, pad_id)
    return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float()
