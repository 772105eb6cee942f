"""Seeding, RNG-state capture and the samplers that make training order resumable.

Why this shape: a run that is killed mid-epoch and resumed must reproduce the uninterrupted run
bit for bit (on CPU). Three sources of randomness are involved, each handled separately:

1. *Which samples, in what order*: :class:`ResumableSampler` is a ``DistributedSampler`` (also
   used for a single process) whose permutation depends only on ``(seed, epoch)``; on resume it
   skips the samples this rank already consumed in the interrupted epoch.
2. *Per-sample augmentation*: :class:`SeededDataset` seeds ``random``, ``numpy`` and ``torch``
   from ``(seed, epoch, index)`` around every ``__getitem__``, so augmentations do not depend on
   worker count, worker assignment, rank, or where the run was resumed.
3. *Everything else in the training process* (dropout, drop-path, mixup): the global RNG states,
   saved in every checkpoint (:func:`capture_rng_state`) and restored on resume.
"""
from __future__ import annotations

import random
from typing import Any, Iterable, Iterator, Sized

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from bixt.rng import host_rngs_restored, seed_host_rngs  # noqa: F401  (also part of this module's API)

_MASK64 = (1 << 64) - 1


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (all devices). Call before building the model."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _mix(*values: int) -> int:
    """A small splitmix64-style hash: well-spread seeds from (seed, epoch, index)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states as plain tensors/tuples, so checkpoints load with ``weights_only=True``."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class SeededDataset(Dataset):
    """Wraps a map-style dataset; indexed by ``(epoch, index)`` pairs from :class:`ResumableSampler`.

    Each sample is produced right after seeding ``random``, ``numpy`` and ``torch`` (CPU) from
    ``(seed, epoch, index)``. In worker processes that is all; when loading happens in the main
    process, iterate through :func:`rng_guarded` so the training-time random stream is untouched.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed_host_rngs(_mix(self.seed, epoch, index))
        return self.dataset[index]


def rng_guarded(iterable: Iterable) -> Iterator:
    """Iterate, restoring the global RNG states after each item is produced (per batch, cheap)."""
    iterator = iter(iterable)
    while True:
        with host_rngs_restored():
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` yielding ``(epoch, index)`` and able to start mid-epoch.

    Usable without a process group (pass ``num_replicas``/``rank``). ``set_start(n)`` skips the
    first ``n`` samples of this rank's share of the current epoch (reset it to 0 for the next).
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"cannot skip {start} samples of an epoch of {self.num_samples} per rank")
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardedSampler(Sampler[int]):
    """Rank ``r`` of ``w`` gets indices ``r, r + w, ...``: no padding, so metrics summed over ranks
    count every evaluation sample exactly once (``DistributedSampler`` would duplicate some)."""

    def __init__(self, length: int, num_replicas: int, rank: int):
        self.indices = range(rank, length, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

