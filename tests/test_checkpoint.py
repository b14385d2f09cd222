"""Training checkpoints (tispipe.artifacts.checkpoint): whole step-N folders, pruning, state round trips, world checks."""

from __future__ import annotations

import pytest
import torch

from tispipe.artifacts import checkpoint
from tispipe.artifacts.checkpoint import TrainState
from tispipe.errors import TispipeError


class FakeModel:
    """Stands in for a transformers model: save_pretrained writes one weights file."""

    def save_pretrained(self, path, safe_serialization=True, state_dict=None):
        (path / "model.safetensors").write_bytes(b"weights")


def _trainer(seed: int = 0):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return layer, optimizer, scheduler


def _save(out, step: int, config=None, **kw):
    _, optimizer, scheduler = _trainer()
    state = TrainState(step, epoch=1, rows_in_epoch=7)
    return checkpoint.save_checkpoint(out, state, FakeModel(), optimizer, scheduler, checkpoint.rng_state(), config or {}, **kw)


def test_incomplete_checkpoints_are_never_loaded(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step-3", "step-12", ".tmp-step-20-abc", "step-15"):
        (root / name).mkdir(parents=True)
    for name in ("step-3", "step-12", ".tmp-step-20-abc"):
        (root / name / "state.json").write_text("{}")
    assert checkpoint.latest_checkpoint(tmp_path) == root / "step-12"  # step-15 has no state.json, .tmp-* is unfinished
    checkpoint.prune(tmp_path, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-12", "step-15"]


def test_save_then_read_state_round_trips(tmp_path):
    config = {"beta": 0.1, "loss": "tisdpo", "nested": {"lr": 1e-6}}
    path = _save(tmp_path, 5, config)
    assert path == tmp_path / "checkpoints" / "step-5"
    assert {p.name for p in path.iterdir()} == {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}
    assert checkpoint.read_state(path) == (TrainState(5, 1, 7), config)


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    _save(tmp_path, 4, {"run": 1})
    _save(tmp_path, 4, {"run": 2})
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-4"]  # no .tmp-step-* or .old leftovers
    assert checkpoint.read_state(root / "step-4")[1] == {"run": 2}


def test_prune_keeps_the_newest_keep_by_step_number(tmp_path):
    for step in (2, 9, 10, 11):  # 10 and 11 sort before 9 as strings
        _save(tmp_path, step)
    kept = [f"step-{s}" for s in (2, 9, 10, 11)[-checkpoint.KEEP :]]
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == kept
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(kept)


def test_load_training_state_restores_optimizer_scheduler_and_rng(tmp_path):
    layer, optimizer, scheduler = _trainer()
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.ones(4, 3)).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()
    rng = checkpoint.rng_state()
    path = checkpoint.save_checkpoint(tmp_path, TrainState(3, 0, 12), FakeModel(), optimizer, scheduler, rng, {})

    _, fresh_optimizer, fresh_scheduler = _trainer(seed=1)
    restored_rng = checkpoint.load_training_state(path, fresh_optimizer, fresh_scheduler, "cpu")
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]  # lr set by the schedule after 3 steps
    for key, state in saved["state"].items():
        assert float(loaded["state"][key]["step"]) == 3
        assert torch.equal(loaded["state"][key]["exp_avg"], state["exp_avg"])
        assert torch.equal(loaded["state"][key]["exp_avg_sq"], state["exp_avg_sq"])
    assert fresh_scheduler.last_epoch == 3 and fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert torch.equal(restored_rng["torch"], rng["torch"])


def test_checkpoint_parallel_defaults_to_one_process(tmp_path):
    assert checkpoint.checkpoint_parallel(_save(tmp_path / "a", 1)) == {"world_size": 1, "fsdp": False}
    assert checkpoint.checkpoint_parallel(_save(tmp_path / "b", 1, parallel={"world_size": 4, "fsdp": True})) == {"world_size": 4, "fsdp": True}


def test_check_checkpoint_world_names_both_world_sizes(tmp_path):
    path = _save(tmp_path, 1, parallel={"world_size": 4, "fsdp": False})
    checkpoint.check_checkpoint_world(path, 4, False)  # same world: no error
    with pytest.raises(TispipeError, match=r"4 process\(es\); this one has 2 process\(es\)"):
        checkpoint.check_checkpoint_world(path, 2, False)
