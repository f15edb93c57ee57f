"""How a batch leaves a loader worker process: one shared-memory buffer (:class:`PackedBatch`)
instead of a segment per tensor, and a worker allocator that keeps freed memory
(:func:`keep_freed_memory`). ``model.data.TokenLoader`` wires both in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

_ALIGN = 64  # bytes: every packed tensor starts on a cache line (and any dtype's alignment)


class PackedBatch:
    """A batch as one byte buffer plus a layout, for the trip from a worker process.

    The DataLoader sends each tensor of a batch through its own shared-memory segment, and
    the main process receives each descriptor over a fresh, authenticated connection: with
    the 20 tensors of a masked batch that cost about 20 us per sample in the main process
    and as much again in the workers (bench/loader.py). One buffer allocated in shared
    memory in the worker makes it one segment, one descriptor and no copy on sending;
    :meth:`unpack` gives back the same tensors as views of it.
    """

    __slots__ = ("buf", "layout")

    def __init__(
        self, buf: torch.Tensor, layout: tuple[tuple[str, torch.dtype, tuple[int, ...], int], ...]
    ) -> None:
        self.buf = buf
        #: per tensor: (key, dtype, shape, byte offset in ``buf``)
        self.layout = layout

    @classmethod
    def pack(cls, batch: Mapping[str, torch.Tensor], shared: bool = False) -> PackedBatch:
        layout: list[tuple[str, torch.dtype, tuple[int, ...], int]] = []
        size = 0
        for key, t in batch.items():
            layout.append((key, t.dtype, tuple(t.shape), size))
            size += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
        size = max(size, _ALIGN)  # a whole number of elements of any dtype, never empty
        if shared:  # a worker: straight into shared memory, so sending it copies nothing
            buf = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(size))
        else:
            buf = torch.empty(size, dtype=torch.uint8)
        out = cls(buf, tuple(layout))
        for (key, *_), view in zip(layout, out._views()):
            view.copy_(batch[key])
        return out

    def _views(self) -> Iterator[torch.Tensor]:
        typed: dict[torch.dtype, torch.Tensor] = {}  # the buffer seen as each dtype, once
        for _, dtype, shape, offset in self.layout:
            base = typed.get(dtype)
            if base is None:
                base = typed[dtype] = self.buf.view(dtype)
            strides = [1] * len(shape)
            for d in range(len(shape) - 2, -1, -1):
                strides[d] = strides[d + 1] * shape[d + 1]
            # one as_strided per tensor: slicing and two views cost 3x (the main process
            # unpacks every batch)
            yield base.as_strided(shape, strides, offset // base.element_size())

    def unpack(self) -> dict[str, torch.Tensor]:
        """The batch: each tensor a view of :attr:`buf` (pinned if the buffer is)."""
        return {key: view for (key, *_), view in zip(self.layout, self._views())}

    def pin_memory(self, device: Any = None) -> PackedBatch:
        """What the DataLoader's pin thread calls: one pinned copy of the whole buffer."""
        return PackedBatch(self.buf.pin_memory(), self.layout)


# glibc ``mallopt`` parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory(
    mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20, top_pad: int = 16 << 20
) -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back at once.

    A masked batch allocates tens of MB of short-lived NumPy temporaries. With glibc's
    defaults a freshly forked loader worker returned them to the kernel after each batch
    and page-faulted them in again on the next: about 2,400 minor faults per batch of 128,
    a third of the worker's CPU time (bench/loader.py). Allocations below
    ``mmap_threshold`` come from the heap and up to ``trim_threshold`` bytes of free heap are
    kept, so a worker's memory is its peak working set (a batch and a shuffle window, not
    the store). Returns False where there is no glibc ``mallopt`` (nothing changed).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        and mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        and mallopt(_M_TOP_PAD, top_pad)
    )


#: whether this process's malloc was tuned by :func:`keep_freed_memory` (loader workers)
MALLOC_TUNED = False


def worker_init(_: int) -> None:
    """Runs in each loader worker process (ours alone, so its allocator may be tuned)."""
    global MALLOC_TUNED
    MALLOC_TUNED = keep_freed_memory()


class PackedItems(Dataset):
    """``dataset``'s items packed (:class:`PackedBatch`) in the worker that builds them."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> PackedBatch:
        shared = torch.utils.data.get_worker_info() is not None
        return PackedBatch.pack(self.dataset[key], shared=shared)
