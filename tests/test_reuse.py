"""A re-run reuses only what still matches what it was made from: a contrastive model whose weights changed
since it was saved is built again, and shards scored with other pi+/pi- are scored again, never mixed."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import invoke_cli, prompt_estimate

pytestmark = pytest.mark.usefixtures("one_thread")

SFT = ["--method", "sft", "--lora-r", "4", "--shard-size", "6", "--contrast-epochs", "1", "--contrast-batch-size", "4"]


def digests(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("part-*.parquet"))}


@pytest.fixture
def built(tmp_path, make_tiny_llama):
    command = prompt_estimate(tmp_path, make_tiny_llama)  # base, pairs.jsonl (and a prompt estimate in weights/)
    command = [*command[: command.index("--method")], *SFT, "--device", "cpu"]
    result = invoke_cli(*command, "--out", tmp_path / "sft")
    assert result.exit_code == 0, result.output
    return command, tmp_path / "sft"


def change_weights(folder):
    import safetensors.torch

    path = folder / "adapter_model.safetensors"
    weights = safetensors.torch.load_file(path)
    safetensors.torch.save_file({name: tensor + 0.5 for name, tensor in weights.items()}, path)


def test_a_reused_adapter_whose_weights_changed_is_built_again_and_no_shard_mixes(built):
    from tispipe.modeling.models import fingerprint_model

    command, out = built
    before, manifest = digests(out), json.loads((out / "manifest.json").read_text())
    assert len(before) == 2
    change_weights(out / "contrast" / "pos")
    (out / "shards" / "part-00001.parquet").unlink()
    result = invoke_cli(*command, "--out", out)
    assert result.exit_code == 0, result.output
    assert "Reusing pos model" not in result.output and "building it again" in result.output
    # pi+ is rebuilt (deterministic for the seed), so the kept shard and the rebuilt one come from the same models
    assert digests(out) == before
    after = json.loads((out / "manifest.json").read_text())
    assert after["fingerprints"] == manifest["fingerprints"] == {**after["fingerprints"], "pos": fingerprint_model(out / "contrast" / "pos")}


def test_shards_scored_with_other_models_are_scored_again(built):
    command, out = built
    before = digests(out)
    scorers = json.loads((out / "estimate-scorers.json").read_text())
    (out / "estimate-scorers.json").write_text(json.dumps({**scorers, "neg": "0" * 16}))  # as if scored by another pi-
    kept = (out / "shards" / "part-00000.parquet").stat().st_ino
    (out / "shards" / "part-00001.parquet").unlink()
    result = invoke_cli(*command, "--out", out)
    assert result.exit_code == 0, result.output
    assert "scored with other pi+/pi-" in result.output and "scoring every shard again" in result.output
    assert (out / "shards" / "part-00000.parquet").stat().st_ino != kept  # rewritten, not kept
    assert digests(out) == before


def test_an_unchanged_adapter_is_reused(built):
    command, out = built
    (out / "shards" / "part-00001.parquet").unlink()
    result = invoke_cli(*command, "--out", out)
    assert result.exit_code == 0 and "Reusing pos model" in result.output and "scoring every shard again" not in result.output, result.output
