"""`tispipe init-base`: the tiny offline base model every later stage starts from.

No model can be downloaded here, so the base model is made from the training pairs themselves:

1. a byte-level BPE tokenizer learnt on the prompts, responses and the two system prompts, with a
   chat template whose role markers are special tokens (see CHAT_TEMPLATE);
2. a small Llama-style causal LM initialised from the seed;
3. supervised fine-tuning on three kinds of example per pair, loss on the response tokens only:
   (no system prompt: prompt -> chosen), (harmless system prompt: prompt -> chosen) and
   (harmful system prompt: prompt -> rejected). The last two give the prompt-based contrastive
   construction, TIS-DPO(P), a model that actually reacts to the system prompt.

If a `test.jsonl` sits next to the training file, the log gets the mean per-token response loss on
it per kind (plus two crossed kinds, harmless -> rejected and harmful -> chosen, which show how far
the system prompt moves each response) and the loss of a unigram model as the no-context floor.

The folder it writes is a plain Hugging Face model folder (safetensors, tokenizer, chat template),
written next to `out` and renamed into place at the end, plus `config.yaml` and `train_log.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from tispipe.artifacts.atomic import atomic_write_json, check_writable, cleaned_up_on_failure, output_lock, staged_folder
from tispipe.artifacts.outputs import check_new_out
from tispipe.config_files import config_dict, write_config
from tispipe.configs import HARMFUL_SYSTEM_PROMPT, HARMLESS_SYSTEM_PROMPT, InitBaseConfig, check_options
from tispipe.errors import TispipeError, wrong_path

EOS = "<|endoftext|>"
PAD = "<|pad|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = [EOS, PAD, *(f"<|{role}|>" for role in ROLES)]

# Each turn is `<|role|>content`; an assistant turn ends with EOS. Role markers are special tokens,
# so a turn boundary is always a token boundary: encoding the rendered prompt and the response
# separately gives the same ids as encoding the rendered conversation. The generation prompt is the
# bare `<|assistant|>`, so render(prompt, add_generation_prompt) is a prefix of render(prompt + reply).
# EOS doubles as BOS (config.bos_token_id) but is never put in front of a prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>' + message['content'] -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)

# kind -> (system prompt, response field). SFT uses the first three; the test split also scores the
# two crossed kinds, so the log shows how much the system prompt moves each response.
SFT_KINDS = {"plain": (None, "chosen"), "harmless": (HARMLESS_SYSTEM_PROMPT, "chosen"), "harmful": (HARMFUL_SYSTEM_PROMPT, "rejected")}
CROSSED_KINDS = {"harmless-rejected": (HARMLESS_SYSTEM_PROMPT, "rejected"), "harmful-chosen": (HARMFUL_SYSTEM_PROMPT, "chosen")}


@dataclass
class SFTExample:
    """One SFT sequence: `ids` = prompt + response, `labels` = -100 over the prompt."""

    ids: list[int]
    labels: list[int]
    kind: str


def read_sft_pairs(path: str | Path) -> list[dict]:
    """The `prompt`/`chosen`/`rejected` strings of a JSONL file (other fields are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise wrong_path(path, "training data", hint="make it with `tispipe toy-data --out data/toy`")
    pairs = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise TispipeError(f"{path}:{number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TispipeError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("prompt", "chosen", "rejected")):
                raise TispipeError(f"{path}:{number}: a row needs string fields prompt, chosen and rejected")
            pairs.append({k: row[k] for k in ("prompt", "chosen", "rejected")})
    if not pairs:
        raise TispipeError(f"training data {path} has no rows")
    return pairs


def train_tokenizer(pairs: list[dict], vocab_size: int):
    """Byte-level BPE on every prompt and response (and the system prompts), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    smallest = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= smallest:
        raise TispipeError(f"vocab size {vocab_size} is too small", hint=f"byte-level BPE needs more than {smallest} (256 bytes + special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [text for pair in pairs for text in pair.values()]
    systems = sorted({system for system, _ in SFT_KINDS.values() if system})
    tok.train_from_iterator(texts + systems, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(cfg: InitBaseConfig, tokenizer):
    """A Llama-style LM with tied embeddings, initialised from `cfg.seed` alone."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if cfg.hidden_size % cfg.num_heads:
        raise TispipeError(f"hidden size {cfg.hidden_size} is not a multiple of num heads {cfg.num_heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        # RoPE learns no positions; 512 covers the later stages' default sequence length.
        max_position_embeddings=max(cfg.max_length, 512),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def make_examples(tokenizer, pairs: list[dict], max_length: int, kinds: dict = SFT_KINDS) -> list[SFTExample]:
    """One sequence per pair and kind; by default the three SFT kinds (plain -> chosen, harmless ->
    chosen, harmful -> rejected). Examples whose prompt leaves no room for a response are dropped."""
    from tispipe.data.tokenization import encode_prompt, encode_response

    examples = []
    for pair in pairs:
        for kind, (system, field) in kinds.items():
            prompt_ids = encode_prompt(tokenizer, pair["prompt"], system=system)
            response_ids = encode_response(tokenizer, pair[field])
            ids = (prompt_ids + response_ids)[:max_length]
            labels = ([-100] * len(prompt_ids) + response_ids)[:max_length]
            if any(label != -100 for label in labels[1:]):  # label 0 is never predicted
                examples.append(SFTExample(ids, labels, kind))
    return examples


def length_batches(examples: list[SFTExample], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length examples: sort within chunks of 50 batches, shuffle batch order."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(examples[i].ids))
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[SFTExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels), each (B, L)."""
    length = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids)] = 1
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
    return ids, mask, labels


def response_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (summed next-token cross-entropy over its response tokens, number of those tokens), each (B,)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=-100, reduction="none")
    return loss.sum(dim=1), (targets != -100).sum(dim=1)


@torch.no_grad()
def response_losses(model, examples: list[SFTExample], pad_id: int, batch_size: int = 64, all_kinds=None) -> dict[str, float]:
    """Mean per-token response loss (nats) per example kind, and as `all` over `all_kinds` (default: every kind)."""
    model.eval()
    sums: Counter = Counter()
    counts: Counter = Counter()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    for start in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[start : start + batch_size]]
        loss, n = response_loss(model, *collate(batch, pad_id))
        for e, row_loss, row_n in zip(batch, loss.tolist(), n.tolist(), strict=True):
            sums[e.kind] += row_loss
            counts[e.kind] += row_n
    result = {kind: sums[kind] / counts[kind] for kind in sorted(counts)}
    pooled = [kind for kind in counts if all_kinds is None or kind in all_kinds]
    result["all"] = sum(sums[k] for k in pooled) / max(sum(counts[k] for k in pooled), 1)
    return result


def unigram_loss(train: list[SFTExample], test: list[SFTExample], vocab_size: int) -> float:
    """Per-token loss of an add-one unigram model of the training responses on the test responses:
    the floor a model that ignores context would reach."""
    counts = Counter(t for e in train for t in e.labels[1:] if t != -100)
    total = sum(counts.values()) + vocab_size
    tokens = [t for e in test for t in e.labels[1:] if t != -100]
    return -sum(math.log((counts[t] + 1) / total) for t in tokens) / max(len(tokens), 1)


def _mean_loss(chunk: list[tuple[float, int]]) -> float:
    return sum(s for s, _ in chunk) / sum(n for _, n in chunk)


def fit(model, examples: list[SFTExample], cfg: InitBaseConfig, pad_id: int, console) -> dict:
    """AdamW with linear warmup and cosine decay over `epochs` passes; returns loss and throughput figures.

    On a terminal a rich progress bar; in a log file a plain line every ~5% of the steps.
    """
    from tispipe.console import ProgressLine
    from tispipe.modeling.optim import make_scheduler

    rng = random.Random(cfg.seed)
    per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = max(1, round(cfg.epochs * per_epoch))
    warmup = max(1, total_steps // 20)
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim < 2 else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98)
    )
    scheduler = make_scheduler(optimizer, warmup, total_steps, "cosine", floor=0.05)
    losses: list[tuple[float, int]] = []
    tokens_seen = 0
    start = time.perf_counter()
    model.train()
    every = max(1, total_steps // 20)
    with ProgressLine(console, "SFT", total_steps) as progress:
        step = 0
        while step < total_steps:
            for batch in length_batches(examples, cfg.batch_size, rng):
                if step >= total_steps:
                    break
                ids, mask, labels = collate([examples[i] for i in batch], pad_id)
                row_loss, row_n = response_loss(model, ids, mask, labels)
                loss_sum, n = row_loss.sum(), int(row_n.sum())
                (loss_sum / n).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += int(mask.sum())
                losses.append((loss_sum.item(), n))
                loss, tps = _mean_loss(losses[-20:]), tokens_seen / (time.perf_counter() - start)
                progress.update(step, f"loss {loss:.3f}  {tps:,.0f} tok/s")

    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "steps": total_steps,
        "first_train_loss": _mean_loss(losses[:1]),
        "final_train_loss": _mean_loss(tail),
        "final_train_loss_steps": len(tail),
        "loss_curve": [[min(i + every, len(losses)), round(_mean_loss(losses[i : i + every]), 4)] for i in range(0, len(losses), every)],
        "tokens_seen": tokens_seen,
        "train_seconds": time.perf_counter() - start,
    }


def _check_out(out: Path, overwrite: bool) -> None:
    check_new_out(out, overwrite)
    check_writable(out)  # now, not after minutes of training


def run(cfg: InitBaseConfig) -> dict:
    """Train the tokenizer and the base model on `cfg.data` and save both in `cfg.out`; returns the train log."""
    from tispipe.console import log_console, quiet_transformers

    console = log_console()
    quiet_transformers()
    check_options(cfg, at_least_one=("hidden_size", "num_layers", "num_heads", "max_length", "batch_size"), positive=("epochs", "lr"), non_negative=("threads",))
    out = Path(cfg.out)
    _check_out(out, cfg.overwrite)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    began = time.perf_counter()

    pairs = read_sft_pairs(cfg.data)
    tokenizer = train_tokenizer(pairs, cfg.vocab_size)
    examples = make_examples(tokenizer, pairs, cfg.max_length)
    if not examples:
        raise TispipeError(f"no training example in {cfg.data} fits in --max-length {cfg.max_length}")
    model = build_model(cfg, tokenizer)
    params = sum(p.numel() for p in model.parameters())
    dropped = len(SFT_KINDS) * len(pairs) - len(examples)
    console.print(
        f"init-base: {len(pairs)} pairs -> {len(examples)} SFT examples"
        + (f" ({dropped} dropped: prompt fills --max-length)" if dropped else "")
        + f", vocab {len(tokenizer)}, {params:,} parameters"
    )
    log = {"pairs": len(pairs), "examples": len(examples), "dropped_examples": dropped, "vocab_size": len(tokenizer), "parameters": params}
    log.update(fit(model, examples, cfg, tokenizer.pad_token_id, console))

    test_path = Path(cfg.data).with_name("test.jsonl")
    if test_path.is_file() and test_path.resolve() != Path(cfg.data).resolve():
        test = make_examples(tokenizer, read_sft_pairs(test_path), cfg.max_length, {**SFT_KINDS, **CROSSED_KINDS})
        log["test_data"] = str(test_path)
        log["test_loss"] = response_losses(model, test, tokenizer.pad_token_id, all_kinds=SFT_KINDS)
        log["test_unigram_loss"] = unigram_loss(examples, [e for e in test if e.kind in SFT_KINDS], len(tokenizer))

    with output_lock(out), cleaned_up_on_failure(out, saved=lambda _: False), staged_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_config(dataclasses.replace(cfg, overwrite=False), tmp / "config.yaml")
        log["wall_seconds"] = time.perf_counter() - began
        log["config"] = config_dict(cfg)
        atomic_write_json(tmp / "train_log.json", log)
        _check_out(out, cfg.overwrite)  # something may have appeared there while we trained

    summary = f"init-base: final train loss {log['final_train_loss']:.3f}"
    if "test_loss" in log:
        summary += f", test loss {log['test_loss']['all']:.3f} (unigram baseline {log['test_unigram_loss']:.3f})"
    console.print(f"{summary}; {log['wall_seconds']:.0f} s; saved to {out}")
    return log
