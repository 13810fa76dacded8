"""Several processes, one model: torch.distributed set up from whichever launcher started us.

``torchrun``, ``mpiexec``/``mpirun`` and SLURM's ``srun`` each start N copies of the same
command and tell every copy who it is through environment variables:

==================  ================================================================  ======================
launcher            rank / world size / local rank                                    rendezvous address
==================  ================================================================  ======================
torchrun (or env)   ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``                        ``MASTER_ADDR``
Open MPI            ``OMPI_COMM_WORLD_RANK`` / ``_SIZE`` / ``_LOCAL_RANK``            ``MASTER_ADDR``
MPICH (Hydra)       ``PMI_RANK`` / ``PMI_SIZE`` / ``MPI_LOCALRANKID``                 ``MASTER_ADDR``
SLURM ``srun``      ``SLURM_PROCID`` / ``SLURM_STEP_NUM_TASKS`` / ``SLURM_LOCALID``   first host of the step
==================  ================================================================  ======================

torchrun sets ``MASTER_ADDR``/``MASTER_PORT`` itself; otherwise ``MASTER_ADDR`` defaults to
127.0.0.1 (one node; under ``srun`` the first node of the job step) and ``MASTER_PORT`` to
29500. MPI only *launches* the processes: they talk through torch.distributed (NCCL between
GPUs, gloo on CPU), so no MPI library is loaded.

Every collective has a timeout (``--dist-timeout``): a rank that died or hangs makes the others
fail with :class:`DistributedError` instead of waiting forever.

The helpers at the bottom (``all_reduce_sum``, ``all_gather_cat``, ``shard_range``...) are what
sharded work such as evaluation needs; in one process they return their input unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import socket
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from diffjscc.errors import UserError

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500
DEFAULT_TIMEOUT_S = 600.0

# (launcher name, rank, world size, local rank): the first whose rank and size are set wins.
# torchrun comes first: it may itself run inside an MPI or SLURM job. SLURM is read only inside
# an srun step (SLURM_STEP_NUM_TASKS): an sbatch script has SLURM_PROCID=0 and SLURM_NTASKS
# too, and a lone process there must not wait for ranks that will never come.
_LAUNCHERS = (
    ("torchrun/env", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("MPICH", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("SLURM", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"),
)

# Words in the RuntimeError text of a failed collective (gloo and NCCL raise plain
# RuntimeErrors for a closed connection or a timeout, not always torch's DistError).
_COMMUNICATION_WORDS = re.compile(r"gloo|nccl|c10d|connection|timed out|timeout|socket|peer", re.IGNORECASE)


class DistributedError(RuntimeError):
    """Another rank died or stopped answering: a one-line message, not a user mistake."""


@dataclass(frozen=True)
class DistContext:
    """Who this process is among those a launcher started; one process by default."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single process"
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, sample grids and checkpoints."""
        return self.rank == 0

    def local_batch(self, global_batch: int) -> int:
        """Per-process batch: ``batch_size`` in the config is the global batch of one step."""
        if global_batch % self.world_size:
            raise UserError(f"batch_size={global_batch} (the global batch) is not divisible by the "
                            f"{self.world_size} processes; use a multiple of {self.world_size}")
        return global_batch // self.world_size

    def rows(self, global_batch: int) -> tuple[int, int]:
        """This rank's rows ``[start, stop)`` of every global batch (contiguous slices)."""
        local = self.local_batch(global_batch)
        return self.rank * local, (self.rank + 1) * local

    def place(self, device: torch.device) -> torch.device:
        """One GPU per process: ``cuda`` becomes ``cuda:(LOCAL_RANK mod visible GPUs)``.

        With every GPU of the node visible, local rank i takes GPU i. Under per-task binding
        (SLURM ``--gpus-per-task=1`` / ``--gpu-bind``, MPI wrappers that set
        ``CUDA_VISIBLE_DEVICES`` per rank) each process sees one GPU, index 0. Two processes that
        end up on one GPU are refused by :func:`check_distinct_gpus` once the group exists.
        """
        if device.type != "cuda" or not self.enabled:
            return device
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError(f"rank {self.rank} sees no GPU (CUDA_VISIBLE_DEVICES="
                            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use --device cpu or bind a GPU")
        index = self.local_rank % count
        torch.cuda.set_device(index)
        return torch.device("cuda", index)

    def describe(self) -> str:
        return f"{self.world_size} processes ({self.launcher}, {dist.get_backend()})" if self.enabled else ""


def _int(env: Mapping[str, str], name: str) -> int:
    text = env[name]
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer") from None


def detect_launch(env: Mapping[str, str] | None = None) -> DistContext:
    """Rank, world size and local rank from torchrun's, MPI's or SLURM's variables."""
    env = os.environ if env is None else env
    for launcher, rank_var, size_var, local_var in _LAUNCHERS:
        if rank_var in env and size_var in env:
            rank, size = _int(env, rank_var), _int(env, size_var)
            local = _int(env, local_var) if local_var in env else 0
            if size < 1 or not 0 <= rank < size or local < 0:
                raise UserError(f"{launcher} says rank {rank} of {size} (local rank {local}): not a valid "
                                f"rank ({rank_var}, {size_var}, {local_var})")
            return DistContext(rank, size, local, launcher)
    return DistContext()


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``gpu[03-05,09],cpu1`` → ``gpu03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        return ""
    prefix, ranges = match.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def _rendezvous_env(launch: DistContext, env: MutableMapping[str, str]) -> None:
    """Fill in what torch's ``env://`` rendezvous reads, keeping anything already set."""
    if "MASTER_ADDR" not in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        host = first_slurm_host(nodelist) if launch.launcher == "SLURM" and nodelist else ""
        env["MASTER_ADDR"] = host or DEFAULT_MASTER_ADDR
    env.setdefault("MASTER_PORT", str(DEFAULT_MASTER_PORT))
    env["RANK"], env["WORLD_SIZE"] = str(launch.rank), str(launch.world_size)
    env["LOCAL_RANK"] = str(launch.local_rank)


def _wants_cuda(device_name: str) -> bool:
    return device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, device_name: str = "auto") -> DistContext:
    """Join the process group the launcher set up (NCCL for GPUs, gloo on CPU), if there is one."""
    if not timeout_s > 0:
        raise UserError(f"--dist-timeout must be a positive number of seconds, got {timeout_s}")
    context = dataclasses.replace(detect_launch(), timeout_s=timeout_s)
    if not context.enabled:
        return context
    _rendezvous_env(context, os.environ)
    use_cuda = _wants_cuda(device_name)
    if use_cuda:
        context.place(torch.device("cuda"))  # NCCL needs the device chosen before it starts
    try:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    except RuntimeError as err:  # TCPStore errors: no rank 0 at MASTER_ADDR:MASTER_PORT in time
        raise DistributedError(
            f"rank {context.rank}: could not join the {context.world_size} processes at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s:g} s "
            f"({_first_line(err)})") from None
    if use_cuda:
        check_distinct_gpus(context)
    return context


def shared_gpus(owners: list[tuple[str, str]]) -> list[list[int]]:
    """Groups of ranks (2 or more) that hold the same GPU: ``owners[rank]`` = (host, GPU UUID)."""
    ranks: dict[tuple[str, str], list[int]] = {}
    for rank, owner in enumerate(owners):
        ranks.setdefault(owner, []).append(rank)
    return [group for group in ranks.values() if len(group) > 1]


def check_distinct_gpus(context: DistContext) -> None:
    """Refuse two processes on one GPU, which NCCL cannot run (it fails at its first collective
    with an opaque message). The hosts and GPU UUIDs are exchanged over a gloo group, not NCCL."""
    owner = (socket.gethostname(), str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid))
    owners: list = [None] * context.world_size
    dist.all_gather_object(owners, owner, group=dist.new_group(backend="gloo"))
    clashes = shared_gpus(owners)
    if clashes:
        listed = "; ".join(f"ranks {group} on {owners[group[0]][0]}" for group in clashes)
        raise UserError(f"several processes share one GPU ({listed}): NCCL needs one GPU per process; "
                        f"start at most one process per GPU on each node")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(timeout_s: float = DEFAULT_TIMEOUT_S, device_name: str = "auto") -> Iterator[DistContext]:
    """``with process_group(...) as ctx:`` — join the group, leave it cleanly on success.

    A collective that fails inside (a peer died, or did not answer within ``timeout_s``) is
    reported as one :class:`DistributedError` naming the problem. After a failure the group is
    left as is (the process is about to exit): tearing down a group whose peer is gone can
    itself block.
    """
    context = init_distributed(timeout_s, device_name)
    try:
        yield context
    except RuntimeError as err:
        # gloo raises here. Under NCCL a peer that died or a collective past ``timeout_s`` is
        # caught by NCCL's watchdog thread, which aborts the process (SIGABRT, exit status 134)
        # with NCCL's own message instead; checkpoints written before are complete either way.
        if context.enabled and is_communication_error(err) and not isinstance(err, DistributedError):
            raise communication_failure(context, err) from None
        raise
    except SystemExit as stop:
        if isinstance(stop.code, int) and stop.code > 128:  # a signal every rank agreed on:
            shutdown()                                       # the peers are alive, leave cleanly
        raise
    shutdown()


def leave_now(status: int) -> NoReturn:
    """Exit at once with ``status`` after a lost peer, skipping interpreter teardown.

    The process group's threads may still hold the dead peer's connections; tearing the group
    down in a normal exit can abort the process (SIGABRT) instead of exiting with ``status``.
    Files are already closed and checkpoints fsynced by then.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _first_line(err: BaseException) -> str:
    """The gist of a c10d/gloo message: first line, without its source location and advice."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else type(err).__name__
    return text.split(". This is typically")[0].rstrip(".")[:300]


def is_communication_error(err: BaseException) -> bool:
    """Whether ``err`` came from a failed collective (dead peer, closed socket, timeout)."""
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError)
                                               and bool(_COMMUNICATION_WORDS.search(str(err))))


def communication_failure(context: DistContext, err: BaseException) -> DistributedError:
    """The one-line error a rank reports when its peers stop answering."""
    return DistributedError(
        f"rank {context.rank} of {context.world_size}: lost contact with the other processes "
        f"({_first_line(err)}): another process crashed, or did not answer within "
        f"--dist-timeout={context.timeout_s:g} s; see its log")


# ---- helpers for sharded work: no-ops in one process ---------------------------------------
def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_range(num_items: int) -> range:
    """This rank's contiguous share of ``range(num_items)``; the first ranks get one more
    item when it does not divide evenly. Concatenating the shards in rank order gives back
    ``range(num_items)``, which is what :func:`all_gather_cat` returns results in."""
    rank, size = get_rank(), get_world_size()
    base, extra = divmod(num_items, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all ranks (a new tensor on ``tensor``'s device).

    Sums are what exact pooled statistics need: counts, sums of metrics, FID's Σx and Σxxᵀ.
    Reduce in float64 where the sum of many terms must not lose digits.
    """
    if get_world_size() == 1:
        return tensor
    buffer = tensor.detach().to(_comm_device()).clone()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(tensor.device)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order.

    The first dimension may differ between ranks (an uneven last shard); the other dimensions
    must match. With :func:`shard_range` the result is in the original item order.
    """
    size = get_world_size()
    if size == 1:
        return tensor
    device = _comm_device()
    local = tensor.detach().to(device).contiguous()
    lengths = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(size)]
    dist.all_gather(lengths, torch.tensor([local.shape[0]], device=device))
    longest = int(max(int(n) for n in lengths))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(n)] for part, n in zip(parts, lengths)]).to(tensor.device)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics and counters) to every rank, in place.

    Parameters stay identical by construction (the same averaged gradients); buffers that a
    forward pass updates from the rank's own rows do not.
    """
    if get_world_size() == 1:
        return
    device = _comm_device()
    for buffer in module.buffers():
        shared = buffer.detach().to(device).contiguous()
        dist.broadcast(shared, src=src)
        buffer.copy_(shared.to(buffer.device))


def all_gather_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape on all ranks), in rank order."""
    size = get_world_size()
    if size == 1:
        return [tensor]
    local = tensor.detach().to(_comm_device()).contiguous()
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local)
    return [part.to(tensor.device) for part in parts]
