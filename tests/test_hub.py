"""tispipe.modeling.hub: which names are local paths and which may be Hugging Face Hub names."""

from __future__ import annotations

from pathlib import Path

import pytest

from tispipe.errors import TispipeError
from tispipe.modeling.hub import hub_offline, is_hub_name, local_folder, looks_local


@pytest.mark.parametrize("name", ["./x", "../x", "/abs/x", "~/x", "a/b/c", "runs\\base"])
def test_path_shaped_names_are_local(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_local(name) and not is_hub_name(name)


def test_owner_name_is_a_hub_name_unless_its_first_folder_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_name("runs/base") and not looks_local("runs/base")
    assert local_folder("runs/base", "model") is None  # may be downloaded
    (tmp_path / "runs").mkdir()
    assert looks_local("runs/base") and not is_hub_name("runs/base")
    with pytest.raises(TispipeError, match="model folder runs/base does not exist"):
        local_folder("runs/base", "model")
    (tmp_path / "runs" / "base").mkdir()
    assert local_folder("runs/base", "model") == Path("runs/base")


def test_local_suffixes_make_a_name_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_name("owner/pairs.jsonl")
    assert not is_hub_name("owner/pairs.jsonl", (".jsonl",)) and looks_local("owner/pairs.jsonl", (".jsonl",))


def test_missing_dot_path_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TispipeError) as e:
        local_folder("./x", "base model")
    assert e.value.message == "base model folder ./x does not exist"
    assert "Hub name" in e.value.hint


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(TispipeError, match="is a file"):
        local_folder(str(tmp_path / "f"), "model")


@pytest.mark.parametrize(("value", "offline"), [("1", True), ("true", True), (" TRUE ", True), ("0", False), ("", False), ("false", False)])
def test_hub_offline(value, offline, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is offline


def test_hub_offline_unset(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub_offline() is False
