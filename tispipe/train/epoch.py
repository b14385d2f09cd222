"""The order of optimizer steps: which rows go into which micro-batch of which step.

Everything here is a lazy generator over rows (dicts from `shards.stream_rows`); nothing touches a
model. A step is a list of up to `grad_accum` micro-batches, each a list of up to `batch_size` rows.
The order is a pure function of (seed, epoch, manifest, settings), so a resumed run that skips the
rows it already used replays exactly the steps the killed run had left.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Iterable, Iterator
from typing import Any

from tispipe.artifacts.shards import stream_rows
from tispipe.configs import TrainConfig
from tispipe.errors import TispipeError
from tispipe.modeling.distributed import rank_skip

Step = list[list[dict]]


def planned_steps(cfg: TrainConfig, rows_per_epoch: int, world: int = 1) -> int:
    """Optimizer steps of the whole run: every epoch's (last one possibly short), capped by --max-steps."""
    per_step = cfg.batch_size * cfg.grad_accum * world
    total = cfg.epochs * math.ceil(rows_per_epoch / per_step)
    return min(total, cfg.max_steps) if cfg.max_steps is not None else total


def epoch_steps(
    cfg: TrainConfig, manifest: dict[str, Any], columns: list[str], epoch: int, skip: int, rank: int, world: int, vocab_size: int | None = None
) -> Iterator[Step]:
    """This rank's optimizer steps of `epoch`, starting `skip` rows (of the global order) into it; token ids
    must be below `vocab_size`."""
    stream = functools.partial(
        stream_rows, cfg.shards, manifest, seed=cfg.seed, epoch=epoch, shuffle_buffer=cfg.shuffle_buffer, columns=columns, vocab_size=vocab_size
    )
    if not cfg.length_group_steps:
        rows = stream(skip=rank_skip(skip, rank, world), rank=rank, world_size=world)
        return step_batches(rows, cfg.batch_size, cfg.grad_accum)
    # Grouping runs on the global order (every rank reads all of it anyway) and each rank takes every
    # world-th row of each global micro-batch, so N processes train on the same steps as one process
    # with an N times larger batch. A window is a unit: a resumed run re-reads the window it stopped
    # in and drops the steps it had done.
    window = cfg.batch_size * world * cfg.grad_accum * cfg.length_group_steps
    stream_skip = skip - skip % window
    steps = length_grouped_steps(stream(skip=stream_skip), cfg.batch_size * world, cfg.grad_accum, cfg.length_group_steps, f"{cfg.seed}-{epoch}", stream_skip // window)
    steps = drop_rows(steps, skip - stream_skip)
    if world == 1:
        return steps
    return ([part for micro in step if (part := micro[rank::world])] for step in steps)


def step_batches(rows: Iterable[dict], batch_size: int, grad_accum: int) -> Iterator[Step]:
    """Group a row stream into optimizer steps of up to `grad_accum` micro-batches of up to `batch_size` rows.

    Lazy: it holds at most one step's rows. The last step of an epoch may be smaller.
    """
    step: Step = []
    micro: list[dict] = []
    for row in rows:
        micro.append(row)
        if len(micro) == batch_size:
            step.append(micro)
            micro = []
            if len(step) == grad_accum:
                yield step
                step = []
    if micro:
        step.append(micro)
    if step:
        yield step


def pair_length(row: dict) -> int:
    """Sort key of a pair: its prompt and both responses, the width of its run in tispipe.modeling.shared_prompt's rows.

    On the toy shards, in batches of 16, 97% of the packed rows' positions are then real tokens (76% in
    random batches); at HH-RLHF's lengths (bench/hh_lengths.py, batches of 8) 94%.
    """
    return len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])


def length_grouped_steps(
    rows: Iterable[dict], batch_size: int, grad_accum: int, window_steps: int, seed: str, first_window: int = 0
) -> Iterator[Step]:
    """Steps whose micro-batches hold pairs of similar length, so little of each forward is padding.

    The stream is cut into windows of `window_steps` steps' rows; a window is sorted by `pair_length`,
    cut into micro-batches, and those are shuffled (seeded by `seed` and the window's index) and
    grouped `grad_accum` at a time. Steps stay in random order and every row is used once, as in
    `step_batches`; only which pairs share a micro-batch changes. Holds one window of rows.
    """
    window: list[dict] = []
    index = first_window
    for row in itertools.chain(rows, [None]):
        if row is not None:
            window.append(row)
            if len(window) < batch_size * grad_accum * window_steps:
                continue
        if not window:
            break
        window.sort(key=pair_length)
        micro = [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
        full = len(window) // batch_size  # a short micro-batch (the epoch's end) stays last
        micro[:full] = random.Random(f"{seed}-{index}").sample(micro[:full], full)
        for i in range(0, len(micro), grad_accum):
            yield micro[i : i + grad_accum]
        window, index = [], index + 1


def drop_rows(steps: Iterator[Step], rows: int) -> Iterator[Step]:
    """`steps` without its leading steps holding `rows` rows (those a resumed run has already taken)."""
    while rows > 0 and (step := next(steps, None)) is not None:
        rows -= sum(len(m) for m in step)
    if rows != 0:
        raise TispipeError("the checkpoint's position does not fall between two steps of this run's data order")
    return steps


def even_steps(steps: Iterable[Step], count: int) -> Iterator[Step]:
    """Exactly `count` steps: a rank whose share of the epoch ran out gets empty steps (it still syncs)."""
    steps = iter(steps)
    for _ in range(count):
        yield next(steps, [])
