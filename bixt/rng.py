"""Seeding and restoring the host RNGs (``random``, ``numpy``, torch's CPU generator).

Shared by the engine's per-sample seeding (:mod:`bixt.engine.reproducibility`) and by data sets
that fix a sample's randomness on their own (evaluation subsamples), which must not import the
engine.
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


def seed_host_rngs(seed: int) -> None:
    """Seed ``random``, ``numpy`` and torch's CPU generator: what per-sample data code draws from.

    The default generator directly: ``torch.manual_seed`` also visits every accelerator (much
    slower per sample, and it would move the GPU stream that dropout in training draws from).
    """
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.default_generator.manual_seed(seed & 0x7FFFFFFFFFFFFFFF)


@contextlib.contextmanager
def host_rngs_restored() -> Iterator[None]:
    """Restore the ``random``, ``numpy`` and torch CPU generator states on exit."""
    saved = (random.getstate(), np.random.get_state(), torch.default_generator.get_state())
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.default_generator.set_state(saved[2])
