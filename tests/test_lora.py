"""`train --lora-r`: LoRA adapters (peft) with the base as reference, --merge, resume, torchrun; gradient
checkpointing; bfloat16 autocast on CPU."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import invoke_cli, prompt_estimate

pytestmark = pytest.mark.usefixtures("one_thread")


def train(root, out, *flags):
    return invoke_cli("train", "--shards", root / "weights", "--model", root / "base", "--out", out, "--batch-size", 4, "--epochs", 2,
                      "--lr", 1e-2, "--warmup-steps", 1, "--device", "cpu", *flags)


def logged(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture()
def estimated(tmp_path, make_tiny_llama):
    prompt_estimate(tmp_path, make_tiny_llama)
    return tmp_path


def sequence_logps(model, root):
    from tispipe.artifacts.shards import iter_shard_rows
    from tispipe.modeling.batching import make_pair_batch, sequence_token_logps

    rows = list(iter_shard_rows(sorted((root / "weights" / "shards").iterdir())[0]))[:6]
    batch = make_pair_batch([r["prompt_ids"] for r in rows], [r["chosen_ids"] for r in rows], [r["rejected_ids"] for r in rows], 0)
    with torch.no_grad():
        return sequence_token_logps(model, batch)


def test_lora_run_saves_an_adapter_that_peft_loads_and_a_merged_model_that_matches_it(estimated):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tispipe.modeling.models import load_model

    run = estimated / "run"
    result = train(estimated, run, "--lora-r", 4, "--merge", "--max-steps", 4)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "LoRA r=4:" in output and "reference: the base, adapter off" in output
    assert (run / "adapter_model.safetensors").is_file() and not (run / "model.safetensors").exists()
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((estimated / "base").resolve()) and config["r"] == 4 and config["lora_alpha"] == 8

    # peft's own loader, tispipe's loader (the adapter merged in) and the merged folder agree.
    by_peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(estimated / "base"), run).eval()
    merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
    expected = sequence_logps(by_peft, estimated)
    torch.testing.assert_close(sequence_logps(load_model(str(run)), estimated), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sequence_logps(merged, estimated), expected, atol=1e-5, rtol=1e-5)
    base = sequence_logps(load_model(str(estimated / "base")), estimated)
    assert (expected - base).abs().max() > 1e-3  # the adapter trained

    # At step 1 the adapter's B is zero: the policy is the base, so the KL to the reference (adapter off) is 0.
    first = logged(run)[0]
    assert first["kl/chosen"] == pytest.approx(0.0, abs=1e-6) and first["logratio/chosen"] == pytest.approx(0.0, abs=1e-5)

    # eval takes the adapter folder as a model.
    result = invoke_cli("eval", "--model", run, "--model", run / "merged", "--ref", estimated / "base", "--data", estimated / "pairs.jsonl",
                        "--num-prompts", 0, "--out", estimated / "eval", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads((estimated / "eval" / "report.json").read_text())["results"]
    assert report[str(run)]["likelihood"]["pref_accuracy"] == report[str(run / "merged")]["likelihood"]["pref_accuracy"]


def test_the_adapter_off_reference_is_the_base_loaded_separately(estimated):
    """The KL terms against the base under the adapter equal those against a second copy of the base."""
    shutil.copytree(estimated / "base", estimated / "base-copy")
    one, two = estimated / "one", estimated / "two"
    assert train(estimated, one, "--lora-r", 4, "--loss", "tdpo2", "--max-steps", 4).exit_code == 0
    result = train(estimated, two, "--lora-r", 4, "--loss", "tdpo2", "--max-steps", 4, "--ref", estimated / "base-copy")
    assert result.exit_code == 0 and "reference " + str(estimated / "base-copy") in result.output.replace("\n", ""), result.output
    a, b = logged(one), logged(two)
    for name in ("loss", "kl/chosen", "kl/rejected", "rewards/margins"):
        assert [m[name] for m in a] == pytest.approx([m[name] for m in b], rel=1e-5, abs=1e-6), name


def test_lora_resume_ends_with_the_same_adapter_bytes(estimated):
    whole, resumed = estimated / "whole", estimated / "resumed"
    assert train(estimated, whole, "--lora-r", 4, "--max-steps", 6).exit_code == 0
    assert train(estimated, resumed, "--lora-r", 4, "--max-steps", 6, "--save-every", 3).exit_code == 0
    for name in ("adapter_model.safetensors", "train_info.json"):
        (resumed / name).unlink()
    shutil.rmtree(resumed / "checkpoints" / "step-6")
    result = train(estimated, resumed, "--lora-r", 4, "--max-steps", 6, "--save-every", 3, "--resume")
    assert result.exit_code == 0 and "Resuming from" in result.output, result.output
    assert (resumed / "adapter_model.safetensors").read_bytes() == (whole / "adapter_model.safetensors").read_bytes()


def test_gradient_checkpointing_recomputes_each_layer_and_gives_the_same_losses(estimated):
    from tispipe.modeling.adapters import enable_gradient_checkpointing
    from tispipe.modeling.models import load_model
    from tispipe.train import train as train_stage

    plain, checkpointed = estimated / "plain", estimated / "checkpointed"
    assert train(estimated, plain, "--max-steps", 4, "--loss", "tdpo2").exit_code == 0
    result = train(estimated, checkpointed, "--max-steps", 4, "--loss", "tdpo2", "--gradient-checkpointing")
    assert result.exit_code == 0 and "gradient checkpointing" in " ".join(result.output.split()), result.output
    a, b = logged(plain), logged(checkpointed)
    for name in ("loss", "grad_norm", "kl/chosen"):
        assert [m[name] for m in a] == pytest.approx([m[name] for m in b], rel=1e-5, abs=1e-7), name

    # Recomputation is real: each attention block runs twice per training forward+backward, once without.
    for checkpointing, runs in ((False, 1), (True, 2)):
        model = load_model(str(estimated / "base"), for_training=True).eval()
        if checkpointing:
            enable_gradient_checkpointing(model)
        calls = []
        model.model.layers[0].self_attn.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        ids = torch.tensor([[5, 6, 7, 8]])
        model(input_ids=ids).logits.sum().backward()
        assert len(calls) == runs
        assert not model.model.layers[0].self_attn.training  # dropout stays off
    assert train_stage  # (the stage module imports cleanly with the adapters)


def test_bfloat16_autocast_on_cpu_stays_close_to_float32(estimated):
    full, half = estimated / "fp32", estimated / "bf16"
    common = ("--max-steps", 6, "--loss", "tisdpo", "--lr", 1e-3)
    assert train(estimated, full, *common).exit_code == 0
    result = train(estimated, half, *common, "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    a, b = logged(full), logged(half)
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%): the first step, from the same weights,
    # agrees to 0.5%; six steps on, the two trajectories' losses still agree to 2%.
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=5e-3) and b[0]["grad_norm"] == pytest.approx(a[0]["grad_norm"], rel=2e-2)
    assert [m["loss"] for m in b] == pytest.approx([m["loss"] for m in a], rel=0.02)
    assert [m["loss"] for m in b] != [m["loss"] for m in a]  # the forward did run in bfloat16
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(half / "model.safetensors").values()} == {torch.float32}  # float32 master weights

    # LoRA under bfloat16: the frozen base is held in bfloat16, the adapter trains (and is saved) in float32.
    lora = estimated / "lora-bf16"
    result = train(estimated, lora, *common, "--dtype", "bfloat16", "--lora-r", 4)
    assert result.exit_code == 0, result.output
    assert {t.dtype for t in load_file(lora / "adapter_model.safetensors").values()} == {torch.float32}
    assert logged(lora)[0]["loss"] == pytest.approx(a[0]["loss"], rel=5e-3)  # step 1: the policy is the base


@pytest.mark.parametrize(("flags", "message"), [
    (("--merge",), "--merge needs --lora-r"),
    (("--lora-r", -1), "--lora-r must not be negative"),
    (("--lora-r", 4, "--lora-dropout", 1.5), "--lora-dropout must be below 1"),
    (("--lora-r", 4, "--lora-targets", "no_such_proj"), "--lora-targets no_such_proj"),
])
def test_bad_lora_options_are_one_line(estimated, flags, message):
    result = train(estimated, estimated / "run", *flags)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output


def test_estimate_builds_pi_plus_and_minus_as_adapters_scored_on_one_base(tmp_path, make_tiny_llama):
    import pyarrow.parquet as pq
    from conftest import write_jsonl

    from tispipe.data.toy import generate
    from tispipe.modeling.batching import make_pair_batch, sequence_token_logps
    from tispipe.modeling.models import load_model

    make_tiny_llama(tmp_path / "base")
    write_jsonl(tmp_path / "pairs.jsonl", generate(12, 0, "train"))
    command = ["estimate", "--data", tmp_path / "pairs.jsonl", "--model", tmp_path / "base", "--method", "dpo", "--lora-r", 4,
               "--contrast-lr", 1e-2, "--contrast-batch-size", 4, "--device", "cpu", "--out", tmp_path / "weights"]
    result = invoke_cli(*command)
    assert result.exit_code == 0, result.output
    for side in ("pos", "neg"):
        assert (tmp_path / "weights" / "contrast" / side / "adapter_model.safetensors").is_file()
    manifest = json.loads((tmp_path / "weights" / "manifest.json").read_text())
    assert manifest["contrast"]["lora"] == {"r": 4, "alpha": 8.0, "dropout": 0.0, "targets": "all-linear"}

    # The stored r_t and reference log-probs are those of the merged pi+, pi- and the base, to float tolerance.
    rows = pq.read_table(tmp_path / "weights" / "shards").to_pylist()
    batch = make_pair_batch([r["prompt_ids"] for r in rows], [r["chosen_ids"] for r in rows], [r["rejected_ids"] for r in rows], 0)
    with torch.no_grad():
        pos, neg, ref = (batch.unplace(sequence_token_logps(load_model(str(path)), batch))
                         for path in (tmp_path / "weights" / "contrast" / "pos", tmp_path / "weights" / "contrast" / "neg", tmp_path / "base"))
    n = len(rows)
    for i, row in enumerate(rows):
        assert row["chosen_logratio"] == pytest.approx([a - b for a, b in zip(pos[i], neg[i])], abs=1e-5)
        assert row["rejected_ref_logps"] == pytest.approx(ref[n + i], abs=1e-5)
    assert max(abs(v) for r in rows for v in r["chosen_logratio"]) > 1e-3  # the adapters trained

    result = invoke_cli(*command)
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    command[command.index("--lora-r") + 1] = 2
    result = invoke_cli(*command)
    assert result.exit_code == 1 and "lora_r" in result.output  # other adapters: refused without --overwrite

    result = invoke_cli("estimate", "--data", tmp_path / "pairs.jsonl", "--model", tmp_path / "base", "--method", "prompt", "--lora-r", 4,
                        "--out", tmp_path / "other")
    assert result.exit_code == 1 and "--lora-r builds pi+/pi- as adapters" in result.output
