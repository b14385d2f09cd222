"""Peak memory of one step of the sft contrast build on SmolLM2-135M-Instruct (LoRA r 16, preset lora).

    .venv/bin/python bench/contrast_memory.py [--budget 2048] [--pairs 16] [--prompt 256] [--response 256]

One step of `tispipe.estimate.contrast.train_sft` over --pairs random pairs of --prompt + --response tokens, with
micro-batches of at most --budget padded tokens (tispipe.modeling.batching.MICRO_BATCH_TOKENS; a budget above pairs x
(prompt + response) is the whole step in one forward). Prints the peak RSS of the process (getrusage)
and the step's wall time. Needs runs/smollm2 (`make runs/smollm2/model.safetensors`).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from types import SimpleNamespace

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="runs/smollm2")
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--response", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tispipe.estimate import contrast
    from tispipe.modeling import batching
    from tispipe.modeling.adapters import add_lora
    from tispipe.modeling.models import load_model

    batching.MICRO_BATCH_TOKENS = args.budget
    batching.micro_batches.__defaults__ = (args.budget,)  # the default was bound when the function was defined
    model = add_lora(load_model(args.model, for_training=True), SimpleNamespace(lora_r=16, lora_alpha=None, lora_dropout=0.0, lora_targets="all-linear"), args.model)
    generator = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(10, 40000, (n,), generator=generator).tolist()

    pairs = [SimpleNamespace(prompt_ids=ids(args.prompt), chosen_ids=ids(args.response), rejected_ids=ids(args.response)) for _ in range(args.pairs)]
    settings = contrast.settings_for("sft", None, 1.0, args.pairs, None, 0, "lora")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    contrast.train_sft(model, pairs, "chosen", settings, 0, "sft")
    print(json.dumps({"budget": args.budget, "pairs": args.pairs, "tokens_per_pair": args.prompt + args.response, "threads": args.threads,
                      "loaded_rss_mib": round(loaded), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "step_s": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
