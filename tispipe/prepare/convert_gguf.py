"""`tispipe convert-gguf`: a GGUF model file into a plain Hugging Face model folder, with the same logits.

Every tispipe command takes a model folder (tispipe.modeling.models loads them all), and a GGUF file is not
one. transformers can read a GGUF (`from_pretrained(folder, gguf_file=NAME)` dequantizes every tensor
to float32) but will not save a model loaded that way. So this stage:

1. checks the options: the file exists and ends in .gguf, the gguf package is installed, --out is free
   (or --overwrite) and writable;
2. loads the tokenizer and the model from the GGUF with transformers;
3. builds a plain model of the same class from its config without the GGUF quantization entry, loads
   the GGUF model's weights into it (every key, strictly) and checks that both give the same float32
   logits, bit for bit, on a fixed text;
4. saves model (safetensors, in --dtype), tokenizer and generation config into a staged folder,
   reloads that folder as every command will and checks its weights, its logits (float32) and its
   token ids, writes `gguf.json` (source file name, sha256, size, architecture, parameter count), and
   only then moves the folder to --out: an interrupted conversion leaves nothing half-written.

`python -m tispipe.prepare.convert_gguf --find PACKAGE` prints the first .gguf file inside an installed Python
package's folder (found without importing the package), so a Makefile can locate a model shipped as a wheel.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tispipe.artifacts.atomic import atomic_write_json, check_writable, cleaned_up_on_failure, output_lock, staged_folder
from tispipe.configs import ConvertGgufConfig, check_options
from tispipe.errors import TispipeError, wrong_path

DTYPES = ("float32", "bfloat16")
# The fixed text both models read in the exactness checks: words, digits, punctuation, accents, CJK.
CHECK_TEXT = "The quick brown fox jumps over the lazy dog. 0123456789 -- ¿Qué tal? 你好!"
GGUF_HINT = "pip install 'tispipe[gguf]' (or pip install gguf==0.19.0)"


def run(cfg: ConvertGgufConfig) -> dict:
    """Convert cfg.gguf into the folder cfg.out; returns what gguf.json records."""
    from tispipe.console import log_console

    source = check_inputs(cfg)
    console = log_console()
    started = time.perf_counter()
    with output_lock(cfg.out), cleaned_up_on_failure(cfg.out, saved=lambda _: False), staged_folder(cfg.out) as tmp:
        record = convert(source, tmp, cfg.dtype, console)
        check_out(Path(cfg.out), cfg.overwrite)  # something may have appeared there meanwhile
    size = sum(f.stat().st_size for f in Path(cfg.out).iterdir()) / 1e6
    console.print(f"convert-gguf: {source.name} -> {cfg.out} ({size:,.0f} MB, {cfg.dtype}) in {time.perf_counter() - started:.0f} s", highlight=False)
    return record


def check_inputs(cfg: ConvertGgufConfig) -> Path:
    """Every check that needs no model loaded: fails in milliseconds, before anything is written."""
    check_options(cfg, choices={"dtype": DTYPES})
    source = Path(cfg.gguf)
    if not source.is_file():
        raise wrong_path(source, "GGUF file")
    if source.suffix.lower() != ".gguf":
        raise TispipeError(f"{source} is not a .gguf file", hint="give the path of a GGUF model file (NAME.gguf)")
    if importlib.util.find_spec("gguf") is None:
        raise TispipeError("reading GGUF files needs the gguf package", hint=GGUF_HINT)
    out = Path(cfg.out)
    if out.resolve() in source.resolve().parents:
        raise TispipeError(f"--out {out} holds the GGUF file itself; replacing it would delete the source", hint="choose another --out")
    check_out(out, cfg.overwrite)
    check_writable(out)
    return source


def check_out(out: Path, overwrite: bool) -> None:
    from tispipe.artifacts.outputs import check_new_out

    check_new_out(out, overwrite)


def convert(source: Path, folder: Path, dtype: str, console) -> dict:
    """Write the plain model, tokenizer, generation config and gguf.json for `source` into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tispipe.modeling.models import load_model, load_tokenizer

    with step(console, f"Reading {source} ({source.stat().st_size / 1e6:,.0f} MB), dequantizing to float32"):
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
            gguf_model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32).eval()
        except Exception as e:  # noqa: BLE001 - an unsupported architecture or a damaged file raise many types
            raise TispipeError(f"transformers could not read {source.name}: {first_line(e)}") from e
    ids = tokenizer(CHECK_TEXT, return_tensors="pt").input_ids
    with step(console, f"Rebuilding it as a plain {type(gguf_model).__name__}"):
        model = plain_copy(gguf_model)
        expected = logits(gguf_model, ids)
        same_logits(logits(model, ids), expected, "the rebuilt model does not reproduce the GGUF model's logits")
    del gguf_model
    model.to(getattr(torch, dtype))
    with step(console, f"Saving ({dtype}) and checking the saved folder"):
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        reloaded = load_model(str(folder), dtype=dtype)
        converted, saved = model.state_dict(), reloaded.state_dict()
        if converted.keys() != saved.keys() or not all(torch.equal(saved[name], weight) for name, weight in converted.items()):
            raise TispipeError(f"the saved folder does not hold the weights of {source} as converted")
        if dtype == "float32":  # rounded to bfloat16, the weights give other logits by design
            same_logits(logits(reloaded, ids), expected, "the saved folder does not reproduce the GGUF model's logits")
        if load_tokenizer(str(folder))(CHECK_TEXT).input_ids != ids[0].tolist():
            raise TispipeError(f"the saved tokenizer encodes the check text differently from the tokenizer in {source.name}")
    record = {
        "source": source.name,
        "sha256": sha256(source),
        "bytes": source.stat().st_size,
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
        "check_tokens": ids.shape[1],
    }
    atomic_write_json(folder / "gguf.json", record)
    return record


def plain_copy(gguf_model):
    """The same model class and weights, built from the config without its `quantization_config`."""
    from transformers.initialization import no_init_weights

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with no_init_weights():  # every weight is overwritten below: skip the random initialisation
        model = type(gguf_model)(config)
    model.tie_weights()  # what the skipped initialisation would have tied (the output head to the embeddings)
    try:
        model.load_state_dict(gguf_model.state_dict(), strict=True)
    except RuntimeError as e:
        raise TispipeError(f"the GGUF's weights do not fit a plain {type(gguf_model).__name__}: {first_line(e)}") from e
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    return model.eval().requires_grad_(False)


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def same_logits(got, expected, failure: str) -> None:
    """Raise `failure` unless the two logit tensors are equal bit for bit."""
    import torch

    if not torch.equal(got, expected):
        largest = (got - expected).abs().max().item() if got.shape == expected.shape else float("nan")
        raise TispipeError(f"{failure} exactly (largest difference {largest:.3g})")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@contextlib.contextmanager
def step(console, text: str) -> Iterator[None]:
    """`text ...` when the step starts and its time when it ends (plain lines: transformers draws its own
    bar while it dequantizes, which a spinner would garble)."""
    began = time.perf_counter()
    console.print(f"{text} ...", highlight=False, soft_wrap=True)
    yield
    console.print(f"  done in {time.perf_counter() - began:.1f} s", highlight=False)


def find_gguf(package: str) -> Path:
    """The first .gguf file (by path) inside the installed package `package`'s folder; the package is not imported."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a dotted name whose parent is missing
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec else []
    if not folders:
        raise TispipeError(f"no installed package named {package!r}", hint=f"pip install {package}")
    found = sorted(path for folder in folders for path in Path(folder).rglob("*.gguf"))
    if not found:
        raise TispipeError(f"package {package} ({', '.join(folders)}) holds no .gguf file")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tispipe.prepare.convert_gguf", description="Print the path of the first .gguf file in an installed package.")
    parser.add_argument("--find", required=True, metavar="PACKAGE", help="installed Python package that ships a .gguf file")
    args = parser.parse_args(argv)
    try:
        print(find_gguf(args.find))
    except TispipeError as e:
        print(f"Error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"Hint: {e.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
