"""The one place that loads models and tokenizers, picks devices and dtypes, and fingerprints them.

A name that is an existing local folder loads from that folder. A name that looks like a local path
but does not exist is an error naming it, and so is a folder without weights. Anything else is a
Hugging Face Hub name, loaded with the ordinary `from_pretrained` (which honours HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from tispipe.console import quiet_transformers
from tispipe.data.tokenization import ensure_pad_token
from tispipe.errors import TispipeError
from tispipe.modeling.hub import hub_offline, local_folder

quiet_transformers()

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; asking for CUDA without one is a user error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TispipeError(f"device {device!r} was asked for but no CUDA GPU is available", hint="use --device cpu or auto")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise TispipeError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")
    return device


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_dtype(dtype: str, device: str, for_training: bool = False) -> torch.dtype:
    """`auto` -> float32 on CPU, bfloat16 on CUDA; a model loaded for training stays float32 under `auto`.

    Training keeps float32 master weights because a bfloat16 weight (8 bits of mantissa) silently
    drops updates smaller than ~0.4% of its value, which is every update at DPO learning rates.
    """
    if dtype == "auto":
        if for_training or not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16
    if dtype not in _DTYPES:
        raise TispipeError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def _local_folder(name_or_path: str, what: str) -> Path | None:
    return local_folder(name_or_path, what, hint="run `tispipe init-base` to make the offline base model, or give a Hugging Face Hub name")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _hub_error(name: str, what: str, error: Exception) -> TispipeError:
    first = _first_line(error)
    offline = hub_offline()
    return TispipeError(
        f"could not load {what} {name!r} (not a local folder; Hugging Face Hub{' offline mode' if offline else ''}): {first}",
        hint="check the name, or unset HF_HUB_OFFLINE to download it" if offline else "check the name and your connection",
    )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """Load a tokenizer (local folder or Hub name) and make sure it has a pad token."""
    from transformers import AutoTokenizer

    folder = _local_folder(name_or_path, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder or name_or_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if folder is not None:
            if not any((folder / f).exists() for f in TOKENIZER_FILES):
                raise TispipeError(
                    f"folder {name_or_path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})",
                    hint="save the tokenizer next to the model (tokenizer.save_pretrained(folder))",
                ) from None
            reason = " ".join(line.strip() for line in str(e).splitlines())  # transformers' messages span lines
            raise TispipeError(f"folder {name_or_path} has no loadable tokenizer: {reason}") from None
        raise _hub_error(name_or_path, "tokenizer", e) from None
    ensure_pad_token(tokenizer)
    return tokenizer


def load_model(
    name_or_path: str,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    for_training: bool = False,
):
    """Load a causal LM onto `device` in train mode (`for_training`) or eval mode with gradients off.

    A LoRA run folder (`tispipe.modeling.adapters`) loads as its base with the adapter: merged in for use, or as the
    trainable PeftModel `for_training` (a resumed LoRA run).
    """
    from transformers import AutoModelForCausalLM

    from tispipe.modeling.adapters import adapter_base, is_adapter_folder, load_adapter

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device, for_training=for_training)
    folder = _local_folder(name_or_path, "model")
    if folder is not None and is_adapter_folder(folder):
        base = load_model(adapter_base(folder), device=device, dtype=dtype, trust_remote_code=trust_remote_code, for_training=for_training)
        return _set_mode(load_adapter(folder, base, for_training).to(device), for_training)
    if folder is not None and not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        raise TispipeError(
            f"model folder {name_or_path} has no weights (no *.safetensors or *.bin files)",
            hint="point at a folder written by `tispipe init-base` or `save_pretrained`",
        )
    source = str(folder or name_or_path)
    kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(source, attn_implementation="sdpa", **kwargs)
        except (ValueError, ImportError) as e:  # an architecture without SDPA support (Gemma2): fall back to eager attention
            if "sdpa" not in str(e).lower() and "scaled_dot_product_attention" not in str(e):
                raise
            from tispipe.console import log_console

            log_console().print(f"[yellow]Note:[/yellow] {name_or_path} has no SDPA attention; using eager attention (slower, same results)")
            model = AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager", **kwargs)
    except Exception as e:  # noqa: BLE001 - damaged weights raise SafetensorError, RuntimeError, EOFError ...
        if folder is not None:
            raise _config_error(folder, "model", name_or_path, trust_remote_code) or TispipeError(
                f"could not load the model in {name_or_path}: {_first_line(e)}") from e
        if not isinstance(e, (OSError, ValueError)):
            raise
        raise _hub_error(name_or_path, "model", e) from None
    return _set_mode(model.to(device), for_training)


def _set_mode(model, for_training: bool):
    if for_training:
        return model.train()
    model.eval()
    model.requires_grad_(False)
    return model


def check_model(name_or_path: str, option: str, tokenizer, trust_remote_code: bool = False) -> None:
    """Fail now, before any output is claimed, when the model `option` names cannot serve with `tokenizer`:
    an unreadable config, a damaged safetensors file, a tokenizer of its own that differs, or fewer
    embedding rows than the tokenizer has ids. Cheap: reads the config and the safetensors headers only."""
    from transformers import AutoConfig

    from tispipe.modeling.adapters import adapter_base, is_adapter_folder

    folder = _local_folder(name_or_path, "model")
    if folder is not None and is_adapter_folder(folder):  # a LoRA run: its base must serve, and its adapter file be whole
        check_model(adapter_base(folder), f"{option} {name_or_path}'s base", tokenizer, trust_remote_code)
        _check_safetensors(folder, option, name_or_path)
        return
    try:
        config = AutoConfig.from_pretrained(str(folder or name_or_path), trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - a damaged config.json raises JSON, OS and value errors
        if folder is None:
            raise _hub_error(name_or_path, "model", e) from None
        raise _config_error(folder, option, name_or_path, trust_remote_code) or TispipeError(
            f"{option} {name_or_path}: its config.json cannot be read: {_first_line(e)}") from e
    if folder is not None:
        _check_safetensors(folder, option, name_or_path)
        loaded_from_here = Path(str(getattr(tokenizer, "name_or_path", "") or "")).resolve() == folder.resolve()
        if not loaded_from_here and any((folder / f).exists() for f in TOKENIZER_FILES):  # the run's own tokenizer is not loaded twice
            own = load_tokenizer(str(folder), trust_remote_code=trust_remote_code)
            if fingerprint_tokenizer(own) != fingerprint_tokenizer(tokenizer):
                raise TispipeError(
                    f"{option} {name_or_path} has a tokenizer of its own (fingerprint {fingerprint_tokenizer(own)}) that differs "
                    f"from the one in use (fingerprint {fingerprint_tokenizer(tokenizer)})",
                    hint="every model of a run must share one tokenizer",
                )
    _check_causal_lm(config, option, name_or_path)
    vocab_size = getattr(config.get_text_config(), "vocab_size", None)
    if isinstance(vocab_size, int) and vocab_size < len(tokenizer):
        raise TispipeError(
            f"{option} {name_or_path} has {vocab_size} embedding rows, fewer than the {len(tokenizer)} token ids of the tokenizer in use",
            hint="every model of a run must share one tokenizer",
        )


def _config_error(folder: Path, option: str, name_or_path: str, trust_remote_code: bool) -> TispipeError | None:
    """Why transformers refused the config.json in `folder`, said truthfully, when the file itself tells: custom
    code (`auto_map`) that runs only with --trust-remote-code, or a `model_type` this transformers does not know."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    model_type, auto_map = config.get("model_type"), config.get("auto_map")
    if auto_map and not trust_remote_code:
        return TispipeError(
            f"{option} {name_or_path}: its config.json needs the model's own code (auto_map, model type {model_type!r}), which runs only with --trust-remote-code",
            hint=f"add --trust-remote-code if you trust the Python files in {name_or_path}; tispipe never runs them otherwise",
        )
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING_NAMES and not auto_map:
        return TispipeError(
            f"{option} {name_or_path}: model type {model_type!r} (config.json) is not one transformers {transformers.__version__} knows",
            hint="check config.json's model_type, or upgrade transformers (pip install -U transformers)",
        )
    return None


def _check_causal_lm(config, option: str, name_or_path: str) -> None:
    """The model is a causal LM whose forward takes an attention mask (left-padded batches need one)."""
    import inspect

    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return  # the repository's own code (--trust-remote-code) decides
    model_type = getattr(config, "model_type", None)
    class_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if class_name is None:
        raise TispipeError(
            f"{option} {name_or_path}: model type {model_type!r} is not a causal language model (transformers has no AutoModelForCausalLM for it)",
            hint="tispipe trains and scores decoder-only causal LMs (Llama, Qwen, Mistral, Gemma, Phi, GPT-2, GPT-NeoX, ...)",
        )
    model_class = getattr(transformers, class_name, None)
    if model_class is not None and "attention_mask" not in inspect.signature(model_class.forward).parameters:
        raise TispipeError(f"{option} {name_or_path}: model type {model_type!r} takes no attention mask, which tispipe's padded batches need")


def _check_safetensors(folder: Path, option: str, name_or_path: str) -> None:
    """Every safetensors file in `folder` has a readable header (a truncated or random file fails here, in milliseconds)."""
    from safetensors import safe_open

    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "pt"):
                pass
        except Exception as e:  # noqa: BLE001 - SafetensorError is not exported under one name
            raise TispipeError(f"{option} {name_or_path}: {weights.name} is damaged ({_first_line(e)})") from e


def load_reward_model(name: str, *, device: str, dtype: str, trust_remote_code: bool, for_training: bool = False, tokenizer=None):
    """A local or hub AutoModelForSequenceClassification with one output, and its tokenizer (`tokenizer`
    when given: a checkpoint folder holds none).

    `for_training`: float32 weights in train mode, and a causal LM given here (no score head yet) gets a
    new one-output head, as `tispipe reward-model` starts from a base model; otherwise eval mode with
    gradients off, and a model with other than one output is refused.
    """
    from transformers import AutoModelForSequenceClassification

    folder = local_folder(name, "reward model")
    source = str(folder) if folder else name
    device = resolve_device(device)
    heads = {"num_labels": 1} if for_training else {}
    try:
        with _quiet_loading(for_training):  # a new score head is the point here, not a loading problem to report
            model = AutoModelForSequenceClassification.from_pretrained(
                source, dtype=resolve_dtype(dtype, device, for_training=for_training), trust_remote_code=trust_remote_code, **heads
            )
    except Exception as e:  # noqa: BLE001 - damaged weights raise SafetensorError, RuntimeError, EOFError ...
        if folder is None and not isinstance(e, (OSError, ValueError)):
            raise
        raise TispipeError(f"could not load the reward model {name}: {_first_line(e)}") from None
    if model.config.num_labels != 1:
        raise TispipeError(f"reward model {name} has {model.config.num_labels} outputs; a reward model has one (num_labels=1)")
    tokenizer = tokenizer or load_tokenizer(source, trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # how the model finds the last real token of a padded row
    model.to(device)
    if for_training:
        return model.train(), tokenizer
    return model.eval().requires_grad_(False), tokenizer


@contextlib.contextmanager
def _quiet_loading(quiet: bool) -> Iterator[None]:
    """transformers' warnings (its load report) off while loading, when `quiet`."""
    from transformers.utils import logging

    before = logging.get_verbosity()
    if quiet:
        logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _snapshot_folder(name_or_path: str | Path) -> Path:
    folder = _local_folder(str(name_or_path), "model")
    if folder is not None:
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=list(WEIGHT_PATTERNS) + ["*.json"]))
    except Exception as e:  # the hub client raises many unrelated types for "not there"
        raise _hub_error(str(name_or_path), "model", e) from None


def fingerprint_model(path: str | Path) -> str:
    """Short sha256 over the weight files (names and bytes), so a manifest can tell models apart.

    Only weights count: re-saving the same weights with a different config.json keeps the fingerprint.
    """
    from tispipe.modeling.adapters import adapter_base, is_adapter_folder

    folder = _snapshot_folder(path)
    base = fingerprint_model(adapter_base(folder)) if is_adapter_folder(folder) else None  # an adapter is its base plus its own weights
    files = sorted(f for p in ("*.safetensors",) for f in folder.glob(p))
    files = files or sorted(folder.glob("*.bin"))
    if not files:
        raise TispipeError(f"model folder {path} has no weights (no *.safetensors or *.bin files)")
    digest = hashlib.sha256(f"base:{base}\0".encode() if base else b"")
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def fingerprint_tokenizer(tokenizer) -> str:
    """Short sha256 over what decides token ids: vocab, merges, normalisation, special tokens, chat template.

    Padding and truncation settings are left out: they change how batches look, not which ids text gets.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("padding", None)
        state.pop("truncation", None)
    else:
        state = {"vocab": sorted(tokenizer.get_vocab().items())}
    state["special_tokens"] = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    state["chat_template"] = tokenizer.chat_template
    blob = json.dumps(state, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]
