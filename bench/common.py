"""Shared pieces of the benchmarks: machine facts, the larger model, shard copies, child-process RSS."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench"  # scratch (runs/ is git-ignored)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine(threads: int) -> dict:
    import torch
    import transformers

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": os.cpu_count(),
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": threads,
        "load_average_start": load_average(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def matmul_gflops(threads: int, size: int = 1024, seconds: float = 3.0) -> float:
    """Dense float32 matmul throughput of this machine at `threads` threads (best of repeated size^3 products)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t) / 1e9)
    return best


def forward_flops_per_token(config, context: float) -> float:
    """Forward FLOPs per token: 2 x matmul parameters (lm head included) + causal attention scores and mixing.

    Attention costs 2 (QK^T) + 2 (AV) FLOPs per head dim per attended position; in a causal sequence of
    `context` tokens a token attends to context/2 positions on average: 2 * context * heads * head_dim per layer.
    """
    h, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    per_layer = h * (config.num_attention_heads * head_dim) * 2 + h * kv * 2 + 3 * h * config.intermediate_size
    matmul_params = layers * per_layer + h * config.vocab_size
    return 2 * matmul_params + layers * 2 * context * config.num_attention_heads * head_dim


def build_large_model(out: Path, base: Path, hidden: int = 384, layers: int = 6, heads: int = 6) -> Path:
    """A randomly initialised Llama with the base model's tokenizer (10-50M parameters), saved like init-base does."""
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base)
    base_config = json.loads((base / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=base_config["vocab_size"], hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=base_config["bos_token_id"], eos_token_id=base_config["eos_token_id"], pad_token_id=base_config["pad_token_id"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for name in f.keys():
            n = 1
            for dim in f.get_slice(name).get_shape():
                n *= dim
            total += n
    return total


def replicate_shards(src: Path, out: Path, times: int) -> Path:
    """A shards folder whose manifest lists `times` copies of every shard of `src` (files copied, same bytes)."""
    manifest = json.loads((src / "manifest.json").read_text())
    if (out / "manifest.json").is_file() and len(json.loads((out / "manifest.json").read_text())["shards"]) == times * len(manifest["shards"]):
        return out
    shutil.rmtree(out, ignore_errors=True)
    (out / "shards").mkdir(parents=True)
    entries = []
    for _ in range(times):
        for entry in manifest["shards"]:
            name = f"part-{len(entries):05d}.parquet"
            shutil.copyfile(src / "shards" / entry["file"], out / "shards" / name)
            entries.append({**entry, "file": name})
    manifest["shards"] = entries
    manifest["pairs"] = sum(e["rows"] for e in entries)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def run_child(args: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Run a command to completion; its wall time and peak RSS (MiB, from wait4 on that child alone)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    out = open(log, "w") if log else subprocess.DEVNULL
    start = time.perf_counter()
    process = subprocess.Popen(args, env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if log:
        out.close()
    if process.returncode != 0:
        tail = log.read_text()[-3000:] if log else ""
        raise RuntimeError(f"{' '.join(map(str, args))} exited {process.returncode}\n{tail}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def python() -> str:
    return sys.executable
