"""Where the learner computes: CUDA when present (with bfloat16 autocast), otherwise the CPU.

>>> pick_device("cpu").type
'cpu'
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from shelfq.contracts.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; an explicit CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"learner: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"learner: device {name!r} asked for, but torch sees no CUDA device")
    return device


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """Mixed precision on CUDA (bfloat16 matmuls, float32 weights); full float32 on the CPU,
    where autocast gains nothing for networks this small."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
