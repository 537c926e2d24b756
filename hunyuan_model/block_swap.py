"""Block swap: the DiT's last N blocks live in CPU memory and are copied to the device just before they run.

The blocks count as one sequence, double blocks first then single blocks (60 on the 720p model, as
musubi-tuner counts them); the last N of it are swapped. Base weights are frozen, so only host->device
copies are needed: the CPU copy (the "master", pinned with --use_pinned_memory_for_block_swap) never changes.

A swapped tensor keeps its identity (the Parameter / buffer object the module holds); only its `.data`
changes: a fresh device tensor while the block is resident, an empty placeholder while it is offloaded.
Running an offloaded block therefore fails at once (shape errors) instead of computing with stale weights.

Schedule (the model calls the hooks around each block, see model.py `_run`):
- forward: `begin_forward` offloads stale blocks and prefetches the first swapped one; `before_forward(i)`
  makes i resident and prefetches i + 1; `after_forward(i)` offloads i, except the last block when a backward
  will follow (it is the first one backward needs).
- backward: an identity autograd node after each block calls `before_backward(i)` once the gradients of the
  block's outputs are there, i.e. before the block's own backward (or its checkpoint recompute) starts.
  Every later block has finished the part of its backward that reads weights, so it is offloaded; i is made
  resident and i - 1 prefetched. A callback at the end of the backward offloads what is left.
- without gradient checkpointing, the tensors autograd saves in a swapped block's forward may be the weights
  or views of them (`W.t()` in F.linear), which would pin the device copy (no memory saved) or, with reused
  buffers, read another block's weights. A saved-tensor hook stores such tensors as (weight, view geometry)
  and rebuilds the view from the weight's current data in backward, failing loudly if it is not resident.
  With gradient checkpointing nothing of the forward is saved; the recompute runs on resident weights.
On CUDA, copies run on a side stream: a load waits for the work already queued on the compute stream (so it
never overwrites memory that work still reads) and the compute stream waits for the copy's event before the
block runs. Device tensors are allocated on the compute stream, so freeing them needs no stream bookkeeping.
At most two swapped blocks are resident: the running one and the prefetched one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from hv_common.errors import UserError

logger = logging.getLogger(__name__)


def check_blocks_to_swap(n: int, total: int) -> None:
    """N must leave two blocks on the device: while block i runs, i + 1 is prefetched into a second slot."""
    if not 0 <= n <= total - 2:
        raise ValueError(
            f"blocks_to_swap {n} is out of range: this DiT has {total} blocks, allowed 0 to {total - 2}"
        )


@dataclass
class SwapStats:
    """Debug counters: host->device bytes and block loads since the last `reset`, most blocks resident at once."""

    bytes_to_device: int = 0
    loads: int = 0
    max_resident: int = 0

    def reset(self) -> None:
        self.bytes_to_device = self.loads = self.max_resident = 0


@dataclass
class _Slot:
    """One parameter or buffer of a swapped block."""

    name: str  # relative to the block, as in its state dict
    tensor: torch.Tensor  # the object the module holds; only its .data is ever reassigned
    master: torch.Tensor  # the CPU copy
    placeholder: torch.Tensor  # empty, on the device: the tensor's data while offloaded


@dataclass
class _Resident:
    event: torch.cuda.Event | None  # CUDA event of the pending copy; None once waited for (or synchronous)
    by_storage: dict[int, _Slot] = field(default_factory=dict)  # device storage pointer -> slot


@dataclass(frozen=True)
class _WeightRef:
    """A saved tensor that is a swapped weight or a view of one: rebuilt from the weight's data in backward."""

    block: int
    slot: _Slot
    size: torch.Size
    stride: tuple[int, ...]
    offset: int


def _storage_ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. wrapper subclasses)
        return 0


def _block_slots(block: nn.Module, device: torch.device, pin: bool) -> list[_Slot]:
    """Moves the block's tensors to CPU masters (pinned if asked) and points each at an empty placeholder."""
    slots, seen = [], set()
    for prefix, module in block.named_modules():
        tensors = [*module._parameters.items(), *module._buffers.items()]
        for name, t in tensors:
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            if t.requires_grad:
                raise ValueError(f"block swap needs frozen block weights; {prefix}.{name} requires grad")
            master = t.detach().to("cpu")
            if pin:
                master = master.pin_memory()
            # empty: never fill or zero (fill is not implemented for float8 on the CPU)
            placeholder = torch.empty(0, dtype=t.dtype, device=device)
            t.data = placeholder
            slots.append(_Slot(f"{prefix}.{name}" if prefix else name, t, master, placeholder))
    return slots


class _BackwardBoundary(torch.autograd.Function):
    """Identity on a block's outputs; its backward tells the swapper that the block's backward comes next."""

    @staticmethod
    def forward(ctx, swapper: BlockSwapper, index: int, *tensors: torch.Tensor):
        ctx.swapper, ctx.index = swapper, index
        ctx.set_materialize_grads(False)
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.swapper.before_backward(ctx.index)
        return (None, None, *grads)


class BlockSwapper:
    """Keeps blocks[first:] in CPU memory and moves each to `device` around its forward and backward."""

    def __init__(
        self, blocks: Sequence[nn.Module], n: int, device: torch.device | str, pin_memory: bool = False
    ) -> None:
        """pin_memory (--use_pinned_memory_for_block_swap): the CPU masters in pinned memory, so that the copies
        run asynchronously beside the compute; otherwise pageable (no pinned memory used, the host waits for
        each copy), musubi-tuner's default. Pinning needs a CUDA device (and torch built with CUDA)."""
        check_blocks_to_swap(n, len(blocks))
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.total, self.first = len(blocks), len(blocks) - n
        cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        self.pinned = pin_memory and torch.cuda.is_available()
        self._slots = {
            i: _block_slots(blocks[i], self.device, pin=self.pinned) for i in range(self.first, self.total)
        }
        self._bytes = {
            i: sum(s.master.numel() * s.master.element_size() for s in slots)
            for i, slots in self._slots.items()
        }
        self._resident: dict[int, _Resident] = {}
        self._end_queued = False
        self.stats = SwapStats()
        self._hooks = [
            blocks[i].register_state_dict_post_hook(functools.partial(self._state_dict_hook, i))
            for i in self._slots
        ]

    # ------------------------------------------------------------ queries

    def is_swapped(self, index: int) -> bool:
        return index >= self.first

    def resident_blocks(self) -> list[int]:
        return sorted(self._resident)

    @property
    def swapped_bytes(self) -> int:
        """Bytes of all swapped blocks (what one forward copies to the device)."""
        return sum(self._bytes.values())

    def block_bytes(self, index: int) -> int:
        return self._bytes[index]

    # ------------------------------------------------------------ moving

    def _load(self, i: int) -> None:
        if i in self._resident:
            return
        slots = self._slots[i]
        if self._stream is None:  # CPU (or a device without streams): synchronous copies
            devs = [s.master.to(self.device, copy=True) for s in slots]
            event = None
        else:
            compute = torch.cuda.current_stream(self.device)
            devs = [torch.empty_like(s.master, device=self.device) for s in slots]  # on the compute stream
            self._stream.wait_stream(compute)  # memory just freed may still be read by queued kernels
            with torch.cuda.stream(self._stream):
                for d, s in zip(devs, slots, strict=True):
                    d.copy_(s.master, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self._stream)
        resident = _Resident(event)
        for d, s in zip(devs, slots, strict=True):
            s.tensor.data = d
            if d.numel():
                resident.by_storage[_storage_ptr(d)] = s
        self._resident[i] = resident
        self.stats.loads += 1
        self.stats.bytes_to_device += self._bytes[i]
        self.stats.max_resident = max(self.stats.max_resident, len(self._resident))

    def _ready(self, i: int) -> None:
        """Block i resident, and the compute stream ordered after its copy."""
        self._load(i)
        resident = self._resident[i]
        if resident.event is not None:
            torch.cuda.current_stream(self.device).wait_event(resident.event)
            resident.event = None

    def offload(self, i: int) -> None:
        """Point block i's tensors back at their placeholders; the device memory goes back to the allocator."""
        resident = self._resident.pop(i, None)
        if resident is None:
            return
        if resident.event is not None:  # prefetched, never run: the memory is free only once the copy is done
            torch.cuda.current_stream(self.device).wait_event(resident.event)
        for s in self._slots[i]:
            s.tensor.data = s.placeholder

    def offload_all(self) -> None:
        for i in list(self._resident):
            self.offload(i)

    # ------------------------------------------------------------ forward

    def begin_forward(self) -> None:
        self.offload_all()  # left from a forward without backward
        self._load(self.first)

    def before_forward(self, i: int) -> None:
        if not self.is_swapped(i):
            return
        self._ready(i)
        if i + 1 < self.total:
            self._load(i + 1)

    def after_forward(self, i: int) -> None:
        if not self.is_swapped(i):
            return
        if i == self.total - 1 and torch.is_grad_enabled():
            return  # backward starts with this block
        self.offload(i)

    @contextlib.contextmanager
    def saving_weights_by_reference(self, i: int) -> Iterator[None]:
        """Around a swapped block's forward without checkpointing: weights are saved as references."""

        def pack(t: torch.Tensor):
            resident = self._resident.get(i)
            slot = None if resident is None else resident.by_storage.get(_storage_ptr(t))
            if slot is None:
                return t
            return _WeightRef(i, slot, t.size(), t.stride(), int(t.storage_offset()))

        def unpack(packed):
            if not isinstance(packed, _WeightRef):
                return packed
            if packed.block not in self._resident:
                raise RuntimeError(
                    f"block swap: block {packed.block} is needed by backward but its weights are in CPU memory"
                )
            self._ready(packed.block)
            return packed.slot.tensor.detach().as_strided(packed.size, packed.stride, packed.offset)

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield

    def mark_backward(self, i: int, out):
        """The block's outputs, through a node whose backward calls `before_backward(i)`."""
        if i < self.first - 1 or not torch.is_grad_enabled():
            return out
        outs = out if isinstance(out, tuple) else (out,)
        grad = [k for k, t in enumerate(outs) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not grad:
            return out
        marked = _BackwardBoundary.apply(self, i, *(outs[k] for k in grad))
        result = list(outs)
        for k, t in zip(grad, marked, strict=True):
            result[k] = t
        return tuple(result) if isinstance(out, tuple) else result[0]

    # ------------------------------------------------------------ backward

    def before_backward(self, i: int) -> None:
        if not self._end_queued:
            self._end_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)
        for j in list(self._resident):
            if j > i:  # its backward is done up to its inputs: nothing reads its weights any more
                self.offload(j)
        if self.is_swapped(i):
            self._ready(i)
        if i - 1 >= self.first:
            self._load(i - 1)

    def _end_backward(self) -> None:
        self._end_queued = False
        self.offload_all()

    # ------------------------------------------------------------ teardown and state dict

    def restore(self) -> None:
        """Every swapped tensor back on the device for good (undoes the swap)."""
        self.offload_all()
        for slots in self._slots.values():
            for s in slots:
                s.tensor.data = s.master.to(self.device, copy=True)
        for hook in self._hooks:
            hook.remove()
        self._slots, self._hooks = {}, []

    def _state_dict_hook(
        self, index: int, module: nn.Module, state_dict: dict, prefix: str, metadata
    ) -> None:
        """A swapped block's state dict holds its CPU masters, not the placeholders."""
        for s in self._slots.get(index, ()):
            key = prefix + s.name
            if key in state_dict:
                state_dict[key] = s.master


def apply_block_swap(model, n: int, device: torch.device, pin_memory: bool = False) -> None:
    """--blocks_to_swap N on a loaded DiT (LoRA already applied): checked against its block count; the swapped
    blocks stay in CPU memory (pinned with pin_memory: --use_pinned_memory_for_block_swap), everything else
    moves to `device`. On a CPU device: a note, nothing else."""
    blocks = len(model.blocks())
    try:
        check_blocks_to_swap(n, blocks)
    except ValueError as e:
        raise UserError(f"--{e}") from None
    if n and device.type == "cpu":
        logger.info("--blocks_to_swap %d has no effect on the CPU: the DiT already lives in CPU memory", n)
    elif n:
        model.enable_block_swap(n, device, pin_memory=pin_memory)
        logger.info(
            "block swap: the last %d of %d DiT blocks live in %s CPU memory",
            n,
            blocks,
            "pinned" if pin_memory else "pageable",
        )
