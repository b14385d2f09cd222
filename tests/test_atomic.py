"""tispipe.artifacts.atomic: a file or folder appears whole under its name or not at all."""

from __future__ import annotations

import pytest

from tispipe.artifacts.atomic import atomic_path, atomic_write_text, staged_files, staged_folder


class Boom(Exception):
    pass


def test_atomic_write_text_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_exception_inside_atomic_path_keeps_the_old_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(Boom), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise Boom
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_staged_folder_replaces_the_folder_whole(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.bin").write_text("old")
    with staged_folder(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.") and not any(tmp.iterdir())
        (tmp / "new.bin").write_text("new")
        assert (final / "old.bin").is_file()  # nothing changes before the block ends
    assert [p.name for p in final.iterdir()] == ["new.bin"]  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or .old folder left


def test_exception_inside_staged_folder_leaves_the_old_folder(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.bin").write_text("old")
    with pytest.raises(Boom), staged_folder(final) as tmp:
        (tmp / "new.bin").write_text("new")
        raise Boom
    assert [p.name for p in final.iterdir()] == ["old.bin"] and (final / "old.bin").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_staged_files_move_into_an_existing_folder(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("keep")
    (tmp_path / "model.safetensors").write_text("old")
    with staged_files(tmp_path) as tmp:
        assert tmp.parent == tmp_path
        (tmp / "model.safetensors").write_text("new")
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.jsonl", "model.safetensors"]
    assert (tmp_path / "model.safetensors").read_text() == "new" and (tmp_path / "metrics.jsonl").read_text() == "keep"
    with pytest.raises(Boom), staged_files(tmp_path) as tmp:
        (tmp / "model.safetensors").write_text("newer")
        raise Boom
    assert (tmp_path / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.jsonl", "model.safetensors"]


def test_set_aside_restores_or_discards_whole(tmp_path):
    from tispipe.artifacts.atomic import SetAside, holder_for

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.bin").write_text("old")
    aside = SetAside([run, tmp_path / "absent"], holder_for(run))
    assert not run.exists() and aside.moved == [run]
    run.mkdir()
    (run / "half.bin").write_text("new, unfinished")
    aside.restore()
    assert [p.name for p in run.iterdir()] == ["model.bin"] and (run / "model.bin").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    SetAside([run], holder_for(run)).discard()
    assert list(tmp_path.iterdir()) == []


def test_stale_holders_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    from tispipe.artifacts.atomic import holder_for, remove_stale_holders

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale, live = tmp_path / f".run.{dead}.replaced", holder_for(tmp_path / "run")
    stale.mkdir()
    live.mkdir()
    (tmp_path / ".other.1.replaced").mkdir()  # another path's holder is not touched
    remove_stale_holders(tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, ".other.1.replaced"])


def test_a_failed_write_names_the_file_it_was_for(tmp_path):
    target = tmp_path / "report.json"
    with pytest.raises(OSError) as error, atomic_path(target):
        raise OSError(28, "No space left on device")  # what a write to a full disk raises: no file name
    assert error.value.filename == str(target) and error.value.errno == 28
    assert list(tmp_path.iterdir()) == []


def test_staging_removes_what_a_killed_run_left(tmp_path):
    (tmp_path / ".model.killed.tmp").mkdir()
    (tmp_path / ".model.killed.tmp.old").mkdir()
    (tmp_path / ".model.1234.replaced").mkdir()  # a set-aside holder is not a staging leftover
    with staged_folder(tmp_path / "model") as tmp:
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.1234.replaced", "model"]
    (tmp_path / "model" / ".final-killed.tmp").mkdir()
    with staged_files(tmp_path / "model", prefix=".final-") as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["a", "b"]
