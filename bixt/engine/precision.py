"""The autocast dtype of a run (``trainer.amp``) and the reason for it, logged at start.

``auto`` means bf16 where the hardware multiplies bf16 matrices natively (CUDA; CPUs with
AVX-512 BF16 or AMX, where the train step runs about twice as fast as in fp32) and fp32 elsewhere:
on an AVX2 CPU bf16 GEMMs are emulated and slower than fp32, so ``amp=bf16`` forced there warns.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger("bixt.engine")

#: /proc/cpuinfo flags of native bf16 matrix products, by the name a log line gives them
_NATIVE_BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX-512 BF16"}
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": None, "float32": None, "none": None, "false": None}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: no flags to read, so no claim of native bf16
        return set()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def _bf16_matmul_works() -> bool:
    """A tiny bf16 matrix product agrees with fp32 (the build and the CPU really run it)."""
    try:
        a = torch.arange(64, dtype=torch.float32).reshape(8, 8) / 64
        return bool(torch.allclose((a.bfloat16() @ a.bfloat16()).float(), a @ a, rtol=2e-2, atol=2e-2))
    except RuntimeError:
        return False


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> tuple[bool, str]:
    """``(native, what)``: whether this CPU has native bf16 GEMMs (probed once per process), and the
    instruction set that decided it (``"AMX"``, ``"AVX-512 BF16"``, else torch's CPU capability)."""
    flags = _cpu_flags()
    for flag, name in _NATIVE_BF16_FLAGS.items():
        if flag in flags:
            return _bf16_matmul_works(), name
    return False, torch.backends.cpu.get_cpu_capability()


def autocast_dtype(amp: str, device: torch.device) -> tuple[Optional[torch.dtype], str]:
    """The autocast dtype for ``trainer.amp`` on ``device`` (``None`` = fp32), and why, for the log."""
    amp = str(amp).lower()
    if amp in ("auto", "true"):
        if device.type == "cuda":
            return torch.bfloat16, "CUDA"
        if device.type != "cpu":
            return None, f"auto on {device.type}"
        native, what = cpu_bf16_support()
        if native:
            return torch.bfloat16, f"native bf16 GEMMs: {what}"
        return None, f"no native bf16 GEMMs on this CPU: {what}"
    if amp not in _DTYPES:
        raise ValueError(f"trainer.amp={amp!r}; expected auto, bf16, fp16 or fp32")
    dtype = _DTYPES[amp]
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError("trainer.amp=fp16 needs CUDA; on CPU use trainer.amp=bf16 or fp32")
    if dtype == torch.bfloat16 and device.type == "cpu":
        native, what = cpu_bf16_support()
        if not native:
            log.warning("trainer.amp=bf16 on a CPU without native bf16 GEMMs (%s): slower than fp32, which "
                        "trainer.amp=auto picks here", what)
            return dtype, f"trainer.amp=bf16, emulated on {what}"
        return dtype, f"trainer.amp=bf16, native: {what}"
    return dtype, f"trainer.amp={amp}"
