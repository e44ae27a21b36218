"""Zeroed CPU buffers for dense mask stacks, recycled once nothing references them.

A (300, 768, 1024) bool stack is 236 MB. Fresh memory costs a page fault per 4 KiB page written
(and on a VM often a host fault too): ~140 ms to touch all of it on the 2-core benchmark VM,
against ~20 ms to clear memory that is already mapped. Predicting image after image frees one
stack while the next is made, so ``BufferPool`` keeps the released ones and clears them for
the next request, as PyTorch's CUDA caching allocator does for GPU memory.

Safety: a buffer goes back to the pool only when the numpy array handed to torch is deallocated,
which torch does when the last tensor (or view) of that storage is gone, so memory still in use
is never handed out. A reused buffer is cleared whole (the caller may have written anywhere).
"""

from __future__ import annotations

import math
import mmap
import threading
import weakref

import numpy as np

SMALL = mmap.PAGESIZE * 64  # smaller buffers are ordinary numpy allocations


class BufferPool:
    """Hands out zeroed numpy arrays backed by anonymous mappings (small pages, zeroed by the OS
    where first written) and keeps up to ``max_bytes`` of released ones for reuse."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._free: list[mmap.mmap] = []
        self._lock = threading.RLock()  # a release may run inside _take (garbage collection)
        self.reused = 0  # requests served from the pool (for tests and benchmarks)

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A zero array of ``shape`` and ``dtype``: a released buffer of at least its size and
        at most twice it, cleared, or a fresh mapping."""
        dtype = np.dtype(dtype)
        size = math.prod(shape) * dtype.itemsize
        if size < SMALL:
            return np.zeros(shape, dtype)
        buffer = self._take(size)
        reused = buffer is not None
        if not reused:
            buffer = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        array = np.frombuffer(buffer, dtype, math.prod(shape)).reshape(shape)
        if reused:
            array.fill(0)
        weakref.finalize(array, self._release, buffer).atexit = False
        return array

    def _take(self, size: int) -> mmap.mmap | None:
        with self._lock:
            fits = [b for b in self._free if size <= len(b) <= 2 * size]
            if not fits:
                return None
            best = min(fits, key=len)
            self._free.remove(best)
            self.reused += 1
            return best

    def _release(self, buffer: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buffer)
            while sum(len(b) for b in self._free) > self.max_bytes:
                self._free.pop(0)  # the oldest goes; its memory is unmapped once unreferenced


POOL = BufferPool(max_bytes=1 << 30)
