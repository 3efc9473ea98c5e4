"""Memory measurement: what autograd keeps for backward, and the peak a device reaches.

- ``SavedTensorsMeter``: exact bytes of the tensors autograd saves for backward, through
  ``torch.autograd.graph.saved_tensors_hooks``. Each saved tensor is counted once per storage (views
  and repeated saves of one buffer cost nothing extra) and stops counting when the graph holding it
  is freed, so ``peak_bytes`` is the largest amount held at any moment (EasyTune frees its graph after
  every update; DRaFT-K holds K steps at once). Storages of ``exclude`` tensors (the parameters, which
  exist anyway) are not counted. Not seen: tensors saved inside regions that install their own hooks
  (``torch.utils.checkpoint`` keeps no activations there) and temporaries of the backward pass itself.
- ``LiveTensorMeter``: the most bytes of tensors created inside a block alive at once, on any device
  (a ``TorchDispatchMode`` that registers every new output storage and a weak-reference callback that
  uncounts it when freed). On CPU it is the exact analogue of CUDA's ``max_memory_allocated`` minus
  the memory in use before the block; it slows Python-heavy code, so time in separate runs.
- ``PeakMemory``: the device's peak during a block. CUDA: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats`` (the caching allocator's live tensors; no fragmentation, no context).
  CPU: the process's peak resident set (``VmHWM``) after resetting it through ``/proc/self/clear_refs``;
  where that reset is not allowed, the process-lifetime ``ru_maxrss`` (``method`` says which). RSS
  includes the interpreter, libraries and allocator caches, so compare CPU peaks only between runs
  in the same fresh process layout (``easytune.bench.isolate`` runs each case in its own process).
"""

from __future__ import annotations

import resource
import sys
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storage_key(t: torch.Tensor) -> tuple[tuple[str, int], int]:
    """((device, data pointer), bytes) of the storage backing ``t``; tensors without a plain storage
    (sparse, nested, subclasses) are keyed by identity and sized by their own elements."""
    try:
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if ptr != 0:
            return (str(t.device), ptr), nbytes
    except (RuntimeError, NotImplementedError, TypeError):
        pass
    return ("id", id(t)), t.numel() * t.element_size()


class _Packed:
    """What autograd holds instead of the tensor; dropping it (graph freed) releases the count."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: torch.Tensor, key: Any, meter: SavedTensorsMeter) -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        if self.key is not None:
            self.meter._release(self.key)


class SavedTensorsMeter:
    """Context manager measuring the bytes autograd saves for backward inside its block.

    Attributes after (or during) the block: ``live_bytes`` (held now), ``peak_bytes`` (most held at
    once), ``total_bytes`` (sum over every newly held storage, as if nothing were ever freed),
    ``saved_tensors`` (number of saves, repeats included). See the module docstring for what counts.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {_storage_key(t)[0] for t in exclude}
        self._refs: dict[Any, list[int]] = {}  # key -> [references, bytes]
        self._lock = threading.Lock()
        self.live_bytes = 0
        self.peak_bytes = 0
        self.total_bytes = 0
        self.saved_tensors = 0
        self._hooks: Any = None

    def _pack(self, t: torch.Tensor) -> _Packed:
        key, nbytes = _storage_key(t)
        with self._lock:
            self.saved_tensors += 1
            if key in self._excluded:
                return _Packed(t, None, self)
            entry = self._refs.get(key)
            if entry is None:
                self._refs[key] = [1, nbytes]
                self.live_bytes += nbytes
                self.total_bytes += nbytes
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            else:
                entry[0] += 1
        return _Packed(t, key, self)

    @staticmethod
    def _unpack(packed: _Packed) -> torch.Tensor:
        return packed.tensor

    def _release(self, key: Any) -> None:
        with self._lock:
            entry = self._refs[key]
            entry[0] -= 1
            if entry[0] == 0:
                self.live_bytes -= entry[1]
                del self._refs[key]

    def __enter__(self) -> SavedTensorsMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None


class LiveTensorMeter(TorchDispatchMode):
    """Context manager: ``peak_bytes`` (most bytes of tensor storages created inside the block alive at
    once) and ``live_bytes`` (still alive now). Storages are counted once (views and in-place results
    share them); tensors that existed before the block are never counted, even when freed inside it."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._tracked: dict[int, weakref.ref] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def _track(self, t: torch.Tensor) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return
        key, nbytes = id(storage), storage.nbytes()
        if nbytes == 0 or key in self._tracked:
            return

        def release(_: object, key: int = key, nbytes: int = nbytes) -> None:
            with self._lock:
                if self._tracked.pop(key, None) is not None:
                    self.live_bytes -= nbytes

        with self._lock:
            self._tracked[key] = weakref.ref(storage, release)
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # Views, in-place and out= results share an input's storage: nothing new was allocated.
        inputs = {_storage_key(t)[0] for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and _storage_key(t)[0] not in inputs:
                self._track(t)
        return out


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (e.g. a model's parameters and buffers)."""
    seen: dict[Any, int] = {}
    for t in tensors:
        key, nbytes = _storage_key(t)
        seen[key] = nbytes
    return sum(seen.values())


def _read_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes() -> int | None:
    """The current resident set size of this process (Linux), else None."""
    return _read_status_kb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> tuple[int, str]:
    """(peak RSS in bytes, method): ``VmHWM`` (since the last reset) or the lifetime ``ru_maxrss``."""
    hwm = _read_status_kb("VmHWM")
    if hwm is not None:
        return hwm, "VmHWM"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (maxrss if sys.platform == "darwin" else maxrss * 1024), "ru_maxrss"


class PeakMemory:
    """Context manager: the peak memory of ``device`` during the block (see the module docstring).

    After the block: ``peak_bytes``, ``start_bytes`` (in use when the block began: allocated tensors on
    CUDA, RSS on CPU), ``method`` (how it was measured).
    """

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.start_bytes = 0
        self.method = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
        else:
            reset = reset_peak_rss()
            self.start_bytes = rss_bytes() or 0
            self.method = "VmHWM after clear_refs" if reset else "process-lifetime peak RSS (reset refused)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak_bytes, source = peak_rss_bytes()
            if source == "ru_maxrss":
                self.method = "process-lifetime ru_maxrss"


def trajectory_activation_bytes(run: Any, batch_size: int) -> int:
    """Peak bytes autograd keeps for backward during one more trajectory of a fine-tuning ``run``
    (``easytune.training.finetune.Run``, trained or not; it takes that trajectory's updates)."""
    captions, lengths = run.prompts.draw(10**9, batch_size)
    batch = run.objective.batch(captions, lengths, run.info.device)
    with SavedTensorsMeter(exclude=list(run.pipe.model.parameters())) as meter:
        run.trainer.step(batch)
    return meter.peak_bytes
