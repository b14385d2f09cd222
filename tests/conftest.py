"""Shared test fixtures: a tiny byte-level BPE tokenizer built offline in a fraction of a second."""

from __future__ import annotations

import json
import random

import pytest

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# Roles become plain-text markers; each turn ends with "<|end|>\n". The rendering of
# prompt + assistant turn starts with the rendering of the prompt + generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


_WORDS = (
    "the a an how can I you we make bake bread cake safe help please tell me about why what is are "
    "human assistant sorry cannot do that here steps first then water flour oven heat minutes "
    "Human: Assistant: system user <|user|> <|assistant|> <|end|> 123 4.5 ? ! , ."
)


def _training_texts() -> list[str]:
    rng = random.Random(0)
    words = _WORDS.split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) for _ in range(400)]


@pytest.fixture(scope="session")
def tiny_tokenizer_json() -> str:
    """The serialized `tokenizers` model (byte-level BPE, ~400 tokens), trained once per session."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(), trainer=trainer)
    return tok.to_str()


@pytest.fixture(scope="session")
def make_tiny_tokenizer(tiny_tokenizer_json):
    """Factory for fresh `PreTrainedTokenizerFast` wrappers (safe to mutate): make(chat_template=True, pad=True)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    def make(chat_template: bool = True, pad: bool = True) -> PreTrainedTokenizerFast:
        kwargs = {"eos_token": EOS}
        if pad:
            kwargs["pad_token"] = PAD
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tiny_tokenizer_json), **kwargs)
        if chat_template:
            tokenizer.chat_template = CHAT_TEMPLATE
        return tokenizer

    return make


@pytest.fixture(scope="session")
def tiny_tokenizer(make_tiny_tokenizer):
    """Byte-level BPE with eos `<|endoftext|>`, pad `<|pad|>` and a system/user/assistant chat template.

    Shared by the whole session: do not mutate it (use `make_tiny_tokenizer()` for a private copy).
    """
    return make_tiny_tokenizer(chat_template=True)


@pytest.fixture(scope="session")
def tiny_tokenizer_no_template(make_tiny_tokenizer):
    """The same tokenizer without a chat template (prompts are used as plain text)."""
    return make_tiny_tokenizer(chat_template=False)


def write_jsonl(path, rows):
    """Write rows as JSON lines (UTF-8, one `json.dumps` per line); return `path`."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# The tiny random Llama most tests score with: 2 layers, width 32, vocabulary and special tokens from
# the tiny tokenizer. Tests that need another shape pass overrides to `make_tiny_llama`.
TINY_LLAMA = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
    max_position_embeddings=1024, bos_token_id=None,
)


@pytest.fixture(scope="session")
def make_tiny_llama(make_tiny_tokenizer):
    """Factory for tiny random Llamas: make(folder=None, *, seed=0, tokenizer=None, model_class=None, **config_overrides).

    Seeds torch with `seed`, builds `model_class` (default LlamaForCausalLM) from `TINY_LLAMA` with
    vocab_size / eos / pad taken from `tokenizer` (default: a fresh `make_tiny_tokenizer()`), updated
    by `config_overrides`, and returns it as built (train mode). With `folder`, the model and the
    tokenizer are also saved there: a folder `from_pretrained` and tispipe load.
    """

    def make(folder=None, *, seed: int = 0, tokenizer=None, model_class=None, **config_overrides):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = tokenizer if tokenizer is not None else make_tiny_tokenizer()
        settings = dict(TINY_LLAMA, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        settings.update(config_overrides)
        torch.manual_seed(seed)
        model = (model_class or LlamaForCausalLM)(LlamaConfig(**settings))
        if folder is not None:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        return model

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one torch thread: ops on tiny tensors take microseconds, so a second thread only
    adds waiting on a busy 2-core machine; subprocesses get OMP_NUM_THREADS=1, so in-process runs match
    them bit for bit. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke_cli(*args):
    """Run `tispipe ARGS` in this process (typer's CliRunner); arguments may be paths or numbers."""
    from typer.testing import CliRunner

    from tispipe.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def prompt_estimate(root, make_tiny_llama, *flags) -> list:
    """A tiny base in ROOT/base, 12 toy pairs in ROOT/pairs.jsonl and a finished prompt-method estimate of
    them in ROOT/weights (with `flags`); returns the estimate command without its --out."""
    from tispipe.data.toy import generate

    make_tiny_llama(root / "base")
    write_jsonl(root / "pairs.jsonl", generate(12, 0, "train"))
    command = ["estimate", "--data", root / "pairs.jsonl", "--model", root / "base", "--method", "prompt", "--device", "cpu", *flags]
    result = invoke_cli(*command, "--out", root / "weights")
    assert result.exit_code == 0, result.output
    return command


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory):
    """Toy data (48 train / 16 test pairs, with span labels) and a tiny base model trained on it."""
    from tispipe.data import toy
    from tispipe.prepare import init_base as base

    root = tmp_path_factory.mktemp("task")
    toy.run(toy.ToyDataConfig(out=str(root / "data"), pairs=48, test_pairs=16))
    base.run(base.InitBaseConfig(data=str(root / "data" / "train.jsonl"), out=str(root / "base"), vocab_size=300, hidden_size=32,
                                 num_layers=1, num_heads=2, max_length=160, epochs=1.0, batch_size=16, lr=1e-2, threads=1))
    return root
