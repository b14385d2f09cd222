"""TRL's DPOTrainer on tispipe shards' exact token ids (run in the bench venv, one process per run).

TRL tokenizes text itself; to train on the same tokens as tispipe its prepared dataset is replaced by the
shards' prompt_ids/chosen_ids/rejected_ids (the columns its collator reads). Prints one JSON line with the
wall time of every optimizer step, so the caller can drop warm-up steps the same way for both sides.

    python bench/trl_dpo.py --model runs/base --shards runs/weights-dpo --steps 40 --batch-size 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch


def shard_ids(shards: Path, pairs: int) -> dict[str, list]:
    manifest = json.loads((shards / "manifest.json").read_text())
    columns = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for entry in manifest["shards"]:
        table = pq.read_table(shards / "shards" / entry["file"], columns=list(columns)).to_pydict()
        for name in columns:
            columns[name].extend(table[name])
        if len(columns["prompt_ids"]) >= pairs:
            break
    return {name: values[:pairs] for name, values in columns.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default; off unless given (tispipe keeps activations)")
    parser.add_argument("--precompute-ref-log-probs", action="store_true", help="reference log-probs computed before training, as tispipe's cached ones")
    parser.add_argument("--lora-r", type=int, default=0, help="train a LoRA adapter of this rank (alpha 2r, dropout 0, all linear layers: tispipe's defaults); 0: every weight")
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    ids = shard_ids(Path(args.shards), args.steps * args.batch_size)
    text = Dataset.from_dict({"prompt": ["a"] * 4, "chosen": ["b"] * 4, "rejected": ["c"] * 4})  # replaced below
    config = DPOConfig(
        output_dir=args.out, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, max_steps=args.steps,
        learning_rate=args.lr, beta=0.1, max_length=args.max_length, logging_steps=args.steps, save_strategy="no", report_to="none",
        use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True, bf16=False, fp16=False,
        gradient_checkpointing=args.gradient_checkpointing,  # TRL 1.x defaults to True; off, neither side recomputes
        precompute_ref_log_probs=args.precompute_ref_log_probs,  # done before train(), so outside the step times
    )

    times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    peft_config = None
    if args.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=text, processing_class=tokenizer, callbacks=[StepTimes()], peft_config=peft_config)
    trainer.train_dataset = Dataset.from_dict(ids)
    if args.precompute_ref_log_probs:  # what DPOTrainer does to its train_dataset in __init__, done to the swapped-in one
        trainer.train_dataset = trainer._precompute_ref_logps(trainer.train_dataset, "train", args.batch_size)
    torch.set_num_threads(args.threads)  # in case anything above reset it
    start = time.perf_counter()
    trainer.train()
    print(json.dumps({"start": start, "step_times": [t - start for t in times], "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
