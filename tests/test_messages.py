"""Messages that point the right way (issue 31, class 5): an adapter whose base moved names the adapter and
its base_model_name_or_path; a damaged weights file read by a run is not taken for a full disk; a FIFO,
a device or a broken link is said to be one, never "does not exist" or "a file, not a folder"; a model
that needs its own code names --trust-remote-code. Each is one `Error:` line, exit 1, no traceback."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import invoke_cli, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def one_error(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory, make_tiny_llama, make_tiny_tokenizer):
    """base/ (a tiny model), adapter/ (a LoRA adapter on it, saved as a train run saves one), pairs.jsonl."""
    from peft import LoraConfig, get_peft_model

    from tispipe.data.toy import generate

    root = tmp_path_factory.mktemp("messages")
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_llama(root / "base", tokenizer=tokenizer)
    adapter = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    adapter.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    (root / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(root / "base")}))
    write_jsonl(root / "pairs.jsonl", generate(6, 0, "train"))
    return root


def eval_command(root, model, out):
    return ["eval", "--data", root / "pairs.jsonl", "--split", "train", "--model", model, "--out", out, "--num-prompts", 0, "--device", "cpu"]


def test_an_adapter_whose_base_moved_names_the_adapter_and_its_base(root, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(root / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    moved = tmp_path / "bm"
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(moved)}))
    for command in (eval_command(root, adapter, tmp_path / "ev"),
                    ["estimate", "--data", root / "pairs.jsonl", "--model", adapter, "--method", "prompt", "--out", tmp_path / "w", "--device", "cpu"]):
        line = one_error(invoke_cli(*command))
        assert str(adapter) in line and str(moved) in line and "base_model_name_or_path" in line and "does not exist" in line, line
        assert "init-base" not in line
    assert not (tmp_path / "ev").exists() and not (tmp_path / "w").exists()


def test_the_adapter_itself_still_loads_where_its_base_is(root, tmp_path):
    result = invoke_cli(*eval_command(root, root / "adapter", tmp_path / "ev"))
    assert result.exit_code == 0, result.output


def test_a_damaged_adapter_read_by_shared_base_names_it(root, tmp_path):
    from tispipe.errors import TispipeError
    from tispipe.modeling.adapters import shared_base
    from tispipe.modeling.models import load_model

    damaged = tmp_path / "damaged"
    shutil.copytree(root / "adapter", damaged)
    with open(damaged / "adapter_model.safetensors", "r+b") as f:
        f.write(b"\xff" * 8)
    base = load_model(str(root / "base"))
    with pytest.raises(TispipeError, match=f"could not load the adapter in {damaged}: .*header") as e:
        shared_base(base, {"pos": root / "adapter", "neg": damaged})
    assert "space" not in (e.value.hint or "")


@pytest.mark.parametrize("message, read", [("Error while deserializing header: header too large", True),
                                            ("Error while serializing: IoError(No space left on device)", False)])
def test_a_safetensors_read_error_is_not_taken_for_a_full_disk(tmp_path, message, read):
    from safetensors import SafetensorError

    from tispipe.artifacts.atomic import cleaned_up_on_failure
    from tispipe.errors import TispipeError

    out = tmp_path / "out"
    with pytest.raises(TispipeError) as e, cleaned_up_on_failure(out, saved=lambda _: False):
        out.mkdir()
        raise SafetensorError(message)
    if read:
        assert "could not be read" in e.value.message and "space" not in e.value.hint and "writing" not in e.value.message
    else:
        assert e.value.message.startswith(f"writing {out}") and "free some space" in e.value.hint
    assert not out.exists()


def test_an_os_error_on_an_input_names_the_input_not_out(tmp_path):
    from tispipe.artifacts.atomic import cleaned_up_on_failure
    from tispipe.errors import TispipeError

    out, source = tmp_path / "out", tmp_path / "pairs.jsonl"
    with pytest.raises(TispipeError) as e, cleaned_up_on_failure(out, saved=lambda _: False):
        raise PermissionError(13, "Permission denied", str(source))
    assert e.value.message == f"{source}: Permission denied; nothing of it was kept" and "writing" not in e.value.message


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def test_a_config_file_that_is_a_device_says_so():
    assert one_error(invoke_cli("toy-data", "--config", "/dev/zero")) == "Error: config file /dev/zero is a character device, not a regular file"


def test_a_config_file_that_is_a_fifo_says_so(fifo):
    assert one_error(invoke_cli("toy-data", "--config", fifo)) == f"Error: config file {fifo} is a named pipe (FIFO), not a regular file"


@pytest.mark.parametrize("command", ["estimate", "eval", "generate", "init-base"])
def test_data_that_is_a_fifo_or_a_device_says_so(root, tmp_path, fifo, command):
    option = "--prompts" if command == "generate" else "--data"
    for source, kind in ((fifo, "a named pipe (FIFO)"), ("/dev/null", "a character device")):
        args = {"estimate": ["estimate", option, source, "--model", root / "base", "--method", "prompt"],
                "eval": ["eval", option, source, "--model", root / "base", "--num-prompts", 0],
                "generate": ["generate", option, source, "--model", root / "base"],
                "init-base": ["init-base", option, source]}[command]
        line = one_error(invoke_cli(*args, "--out", tmp_path / "out", *([] if command == "init-base" else ["--device", "cpu"])))
        assert f"{source} is {kind}, not a regular file" in line and "does not exist" not in line, line
    assert not (tmp_path / "out").exists()


def test_data_that_is_a_broken_link_names_where_it_points(root, tmp_path):
    link = tmp_path / "pairs.jsonl"
    link.symlink_to(tmp_path / "gone.jsonl")
    line = one_error(invoke_cli("estimate", "--data", link, "--model", root / "base", "--method", "prompt", "--out", tmp_path / "w", "--device", "cpu"))
    assert line == f"Error: --data {link} is a link to {tmp_path / 'gone.jsonl'}, which does not exist"


def test_a_model_path_that_is_a_fifo_says_so(root, tmp_path, fifo):
    line = one_error(invoke_cli(*eval_command(root, fifo, tmp_path / "ev")))
    assert "named pipe (FIFO), not a model folder" in line, line


def custom_model(root, tmp_path, auto_map: bool):
    model = tmp_path / "custom"
    shutil.copytree(root / "base", model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "my-own-llama"
    if auto_map:
        config["auto_map"] = {"AutoConfig": "configuration_mine.MyConfig", "AutoModelForCausalLM": "modeling_mine.MyModel"}
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("command", ["eval", "estimate"])
def test_a_model_with_its_own_code_names_trust_remote_code(root, tmp_path, command):
    model = custom_model(root, tmp_path, auto_map=True)
    args = eval_command(root, model, tmp_path / "out") if command == "eval" else [
        "estimate", "--data", root / "pairs.jsonl", "--model", model, "--method", "prompt", "--out", tmp_path / "out", "--device", "cpu"]
    line = one_error(invoke_cli(*args))
    assert "--trust-remote-code" in line and "my-own-llama" in line and "cannot be read" not in line, line


def test_an_unknown_model_type_names_it_and_the_transformers_version(root, tmp_path):
    import transformers

    line = one_error(invoke_cli(*eval_command(root, custom_model(root, tmp_path, auto_map=False), tmp_path / "out")))
    assert "'my-own-llama'" in line and transformers.__version__ in line and "--trust-remote-code" not in line, line


def test_a_full_disk_during_merge_says_to_resume_and_resume_finishes_it(tmp_path, make_tiny_llama, monkeypatch):
    from conftest import prompt_estimate

    from tispipe.train import train

    prompt_estimate(tmp_path, make_tiny_llama)
    args = ["train", "--shards", tmp_path / "weights", "--model", tmp_path / "base", "--lora-r", 2, "--merge", "--max-steps", 2, "--batch-size", 4,
            "--device", "cpu", "--out", tmp_path / "run"]
    real = train.save_merged_model

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "save_merged_model", full)
    result = invoke_cli(*args)
    assert one_error(result) == f"Error: writing {tmp_path / 'run'}: No space left on device; what it finished is kept: add --resume to the same command to continue"
    assert "Hint: free some space or fix the permissions, then add --resume to the same command to continue" in result.output
    monkeypatch.setattr(train, "save_merged_model", real)
    refused = invoke_cli(*args)  # the same command without --resume is refused, its hint pointing at --resume
    assert refused.exit_code == 1 and "Hint: add --resume" in refused.output, refused.output
    result = invoke_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "merged" / "model.safetensors").is_file()
