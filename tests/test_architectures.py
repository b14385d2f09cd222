"""Every common architecture, as a tiny random model built from its config (a few tens of thousands of parameters):
batched, left-padded log-probs equal one-sequence forwards, and the pipeline runs end to end (estimate ->
train full and LoRA -> eval), with the conftest tokenizer. Gemma2 runs eager attention (its soft-capping);
Mistral, Gemma2 and Gemma3 have sliding windows shorter than the test sequences, and Bloom (ALiBi) takes no
position ids."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import invoke_cli, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
ARCHITECTURES = {
    "llama": dict(SMALL, num_key_value_heads=2),
    "qwen2": dict(SMALL, num_key_value_heads=1),
    "qwen3": dict(SMALL, num_key_value_heads=1, head_dim=16),
    "mistral": dict(SMALL, num_key_value_heads=1, sliding_window=8),
    "gemma2": dict(SMALL, num_key_value_heads=1, head_dim=16, sliding_window=8),
    "gemma3_text": dict(SMALL, num_key_value_heads=1, head_dim=16, sliding_window=8),
    "phi3": dict(SMALL, num_key_value_heads=2),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_positions=512),
    "gpt_neox": dict(SMALL),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=2),  # ALiBi: its forward takes no position ids
}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def architecture(request, tmp_path_factory, make_tiny_tokenizer):
    """(model_type, folder): a tiny random model of that architecture saved with the tiny tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = request.param
    tokenizer = make_tiny_tokenizer()
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                  bos_token_id=None, **ARCHITECTURES[model_type])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    folder = tmp_path_factory.mktemp(model_type) / "base"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model_type, folder


def test_batched_left_padded_logps_equal_one_sequence_forwards(architecture):
    from tispipe.core.logps import token_logps
    from tispipe.modeling.batching import make_pair_batch, sequence_token_logps
    from tispipe.modeling.models import load_model

    model_type, folder = architecture
    model = load_model(str(folder))
    generator = torch.Generator().manual_seed(1)
    lengths = [(3, 5, 9), (11, 2, 4), (1, 7, 6), (6, 12, 1)]  # (prompt, chosen, rejected): windows of 8 are crossed
    ids = [[torch.randint(3, 200, (n,), generator=generator).tolist() for n in row] for row in lengths]
    prompts, chosen, rejected = zip(*ids)
    batch = make_pair_batch(prompts, chosen, rejected, pad_id=0)
    with torch.no_grad():
        batched = batch.unplace(sequence_token_logps(model, batch))
        for i, (prompt, response) in enumerate(zip(prompts + prompts, chosen + rejected)):
            sequence = torch.tensor([list(prompt) + list(response)])
            logits = model(input_ids=sequence).logits[:, len(prompt) - 1 : -1]
            single = token_logps(logits, torch.tensor([list(response)]))[0].tolist()
            assert batched[i] == pytest.approx(single, abs=1e-5), f"{model_type}, row {i}"


def test_the_shared_prompt_forward_gives_the_padded_layouts_logps_and_gradients(architecture):
    """Packed rows (tispipe.modeling.shared_prompt) against two padded rows per pair: same log-probs, same gradients."""
    from tispipe.modeling import shared_prompt
    from tispipe.modeling.batching import make_pair_batch, sequence_token_logps
    from tispipe.modeling.models import load_model

    model_type, folder = architecture
    model = load_model(str(folder)).requires_grad_(True)
    generator = torch.Generator().manual_seed(2)
    # Prompts up to 14 tokens: windows of 8 are crossed; packed into rows of 25, the last two pairs sharing rows.
    lengths = [(9, 5, 3), (2, 11, 4), (14, 1, 10), (5, 6, 6), (3, 2, 1), (4, 1, 2)]
    prompts, chosen, rejected = zip(*([torch.randint(3, 200, (n,), generator=generator).tolist() for n in row] for row in lengths))
    results = []
    for shared in (True, False):
        model.zero_grad()
        batch = make_pair_batch(prompts, chosen, rejected, pad_id=0, shared=shared)
        logps = sequence_token_logps(model, batch)
        (logps * torch.linspace(0.5, 1.5, logps.shape[1])).sum().backward()
        results.append((logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (packed, packed_grads), (padded, padded_grads) = results
    assert make_pair_batch(prompts, chosen, rejected, pad_id=0).packed.input_ids.shape == (4, 25)
    assert (shared_prompt.unsupported(model) is None) == (model_type != "bloom")
    assert torch.allclose(packed, padded, atol=1e-5), model_type
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in packed_grads.items():
        # Sums run in another order in the two layouts, so an element near 0 is off by rounding at its tensor's scale.
        scale = float(padded_grads[name].abs().max())
        assert torch.allclose(grad, padded_grads[name], rtol=1e-4, atol=1e-6 + 1e-5 * scale), f"{model_type}: {name}"


def test_a_model_type_the_shared_prompt_forward_is_not_tested_with_takes_the_padded_layout_with_a_note(tmp_path, make_tiny_tokenizer, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    from tispipe.modeling.batching import forward_logits, make_pair_batch

    tokenizer = make_tiny_tokenizer()
    config = AutoConfig.for_model("opt", vocab_size=len(tokenizer), hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                  word_embed_proj_dim=16, pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    batch = make_pair_batch([[5, 6, 7], [7]], [[8, 9, 10], [11]], [[12], [13, 14]], pad_id=0)
    with torch.no_grad():
        assert forward_logits(model, batch).shape[:2] == (4, 3)
        forward_logits(model, batch)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("each prompt is computed twice per pair") == 1 and "model type 'opt' is not among those tested" in err


@pytest.mark.slow
def test_estimate_train_full_and_lora_and_eval_run_end_to_end(architecture, tmp_path):
    from tispipe.data.toy import generate

    model_type, base = architecture
    write_jsonl(tmp_path / "pairs.jsonl", generate(8, 0, "train"))
    write_jsonl(tmp_path / "test.jsonl", generate(4, 1, "test"))
    device = ("--device", "cpu")
    result = invoke_cli("estimate", "--data", tmp_path / "pairs.jsonl", "--model", base, "--method", "prompt", "--out", tmp_path / "weights", *device)
    assert result.exit_code == 0, f"{model_type}: {result.output}"
    if model_type == "gemma2":  # transformers has no SDPA attention for it
        assert "has no SDPA attention; using eager attention" in " ".join(result.output.split())
    runs = []
    for name, flags in (("full", ()), ("lora", ("--lora-r", 2))):
        run = tmp_path / name
        result = invoke_cli("train", "--shards", tmp_path / "weights", "--model", base, "--out", run, "--max-steps", 2, "--batch-size", 4, *flags, *device)
        assert result.exit_code == 0, f"{model_type} {name}: {result.output}"
        runs.append(run)
    result = invoke_cli("eval", "--model", base, *(a for run in runs for a in ("--model", run)), "--ref", base, "--data", tmp_path / "test.jsonl",
                        "--oracle", "toy", "--num-prompts", 2, "--temperatures", "0", "--max-new-tokens", 4, "--out", tmp_path / "eval", *device)
    assert result.exit_code == 0, f"{model_type}: {result.output}"
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert all(0 <= report["results"][str(run)]["likelihood"]["pref_accuracy"] <= 1 for run in runs)


def test_a_model_that_is_not_a_causal_lm_is_one_line_naming_its_type(tmp_path, make_tiny_tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    from tispipe.data.toy import generate

    tokenizer = make_tiny_tokenizer()
    T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)).save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    write_jsonl(tmp_path / "pairs.jsonl", generate(4, 0, "train"))
    result = invoke_cli("estimate", "--data", tmp_path / "pairs.jsonl", "--model", tmp_path / "t5", "--method", "prompt", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "model type 't5' is not a causal language model" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
