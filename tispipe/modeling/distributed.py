"""Running a stage on many processes with PyTorch's own runtime, `torchrun`.

torchrun starts one process per device and tells each its place through environment variables:
RANK (0..WORLD_SIZE-1 over all machines), WORLD_SIZE and LOCAL_RANK (the device index on this
machine), plus MASTER_ADDR/MASTER_PORT for the rendezvous. `setup()` joins the process group from
those (gloo on CPU, nccl on CUDA) and leaves it at the end. A process started without them (plain
`tispipe ...`, or a stage's `run` called from Python) is a world of one: nothing is initialised and
every helper here returns at once, so single-process runs execute exactly the code they always did.

Errors: a rank that raises exits non-zero and torchrun stops the others, so no rank waits forever at
a barrier for a rank that died.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.distributed as dist

from tispipe.errors import TispipeError


def env_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 when not under torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise TispipeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def env_rank() -> int:
    """RANK as torchrun set it (0 when not under torchrun), readable before the process group exists."""
    return int(os.environ.get("RANK", "0") or 0)


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 writes every shared file (manifest, logs, checkpoints, final model) and prints."""
    return rank() == 0


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def setup(device: str) -> str:
    """Join torchrun's process group (once per process); return this rank's device.

    Under torchrun with CUDA each rank takes its own GPU, cuda:LOCAL_RANK (a `cuda:N` the user asked
    for is overridden: one process per GPU is torchrun's contract). Without torchrun, or with
    WORLD_SIZE=1, it returns `device` unchanged and initialises nothing. The group is left at exit;
    a group someone else initialised (e.g. a test harness) is used as it is.
    """
    if env_world_size() <= 1 or not dist.is_available():
        return device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    elif device != "cpu":
        raise TispipeError(f"device {device!r} cannot be used under torchrun", hint="use --device cpu or cuda")
    if not dist.is_initialized():
        if backend_for(device) == "nccl" and not dist.is_nccl_available():
            raise TispipeError("this torch build has no NCCL: multi-GPU runs need a CUDA build of torch")
        dist.init_process_group(backend=backend_for(device), device_id=torch.device(device) if device.startswith("cuda") else None)
        atexit.register(teardown)
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def _device_for_collectives() -> torch.device:
    # nccl reduces CUDA tensors only; gloo reduces CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(values: Sequence[float], op: str = "sum") -> list[float]:
    """Element-wise sum (or max) of `values` over the ranks, in float64; the values unchanged in a world of one."""
    if not active():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device_for_collectives())
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor.cpu().tolist()


def broadcast_object(value=None, src: int = 0):
    """`value` as rank `src` has it, on every rank (any picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_skip(global_rows: int, rank_: int, world: int) -> int:
    """How many of the first `global_rows` rows of a global order belong to `rank_` when rank r keeps
    the rows at positions p with p % world == r (as `shards.stream_rows` splits them)."""
    return max(0, (global_rows - rank_ + world - 1) // world)


# ---------------------------------------------------------------------------------------------
# The trained model under torchrun: DDP or FSDP, gradient sync, full state for saving


def check_fsdp(fsdp: bool) -> None:
    """--fsdp needs a process group: refuse it in a world of one, before any output is touched."""
    if fsdp and world_size() == 1:
        raise TispipeError("--fsdp shards the model over several processes: start the run with torchrun", hint="torchrun --nproc-per-node N -m tispipe train ... --fsdp")


def wrap_policy(policy, fsdp: bool, device: str):
    """The policy as the step loop drives it: itself in one process, DDP or FSDP (`fsdp`) under torchrun."""
    if world_size() == 1:
        check_fsdp(fsdp)
        return policy
    if fsdp:
        from torch.distributed.fsdp import fully_shard  # FSDP2 (per-parameter sharding); runs on gloo too

        # One FSDP unit per transformer block (the classes transformers names as never to be split),
        # then the rest (embeddings, head): a block's weights are gathered only while it runs.
        block_types = tuple(getattr(policy, "_no_split_modules", None) or ())
        for module in policy.modules():
            if type(module).__name__ in block_types:
                fully_shard(module)
        fully_shard(policy)
        return policy
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(policy, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)


def gradient_sync(model, last: bool):
    """Sync gradients on a step's last backward pass only (accumulation); nothing to do in one process."""
    if world_size() == 1:
        return nullcontext()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP
        model.set_requires_gradient_sync(last)
        return nullcontext()
    return nullcontext() if last else model.no_sync()  # DDP


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gathered_model_state(model, fsdp: bool) -> dict | None:
    """FSDP: the full weights, gathered on every rank (a collective); None otherwise (the module saves itself)."""
    if world_size() == 1 or not fsdp:
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def gathered_optimizer_state(model, optimizer, fsdp: bool) -> dict | None:
    """FSDP: the full optimizer state, gathered on every rank (a collective); None otherwise (optimizer.state_dict())."""
    if world_size() == 1 or not fsdp:
        return None
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def optimizer_loader(model, optimizer, fsdp: bool):
    """How a checkpoint's optimizer state goes back in: FSDP scatters the full state to the shards; None: load_state_dict."""
    if world_size() == 1 or not fsdp:
        return None
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    return lambda full: set_optimizer_state_dict(model, optimizer, optim_state_dict=full, options=_full_options())
