"""Checkpoints of the learner, written atomically, read without unpickling anything.

A checkpoint is a directory ``ckpt-<step>`` holding safetensors files (network weights,
optimiser moments, the replay buffer) and ``state.json`` (step, model version, the consumed
offsets it covers, the dedupe window, the catalog). The file ``LATEST`` names the newest
complete one; it is replaced atomically only after the directory is fully written and synced,
so a crash at any moment leaves the previous checkpoint intact.

>>> import tempfile, numpy as np, torch
>>> root = Path(tempfile.mkdtemp())
>>> save_checkpoint(root, {"w": torch.ones(2)}, {"buf": np.arange(3)}, {"step": 7}).name
'ckpt-00000007'
>>> ck = load_checkpoint(root)
>>> ck.state["step"], ck.tensors["w"].tolist(), ck.arrays["buf"].tolist()
(7, [1.0, 1.0], [0, 1, 2])
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file as load_tensors
from safetensors.torch import save_file as save_tensors

from contracts.errors import ShelfqError

LATEST = "LATEST"
KEEP = 2  # complete checkpoints kept on disk
_CKPT_NAME = re.compile(r"ckpt-[0-9]{1,20}")


class Checkpoint(NamedTuple):
    path: Path
    tensors: dict[str, torch.Tensor]
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]


def save_checkpoint(root: Path, tensors: dict[str, torch.Tensor], arrays: dict[str, np.ndarray],
                    state: dict[str, Any]) -> Path:
    """Write a checkpoint under ``root`` and make it the latest; returns its directory."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"ckpt-{int(state['step']):08d}"
    work = root / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(work / "tensors.safetensors"))
    save_arrays({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(work / "arrays.safetensors"))
    (work / "state.json").write_text(json.dumps(state))
    for f in work.iterdir():
        _fsync(f)
    shutil.rmtree(final, ignore_errors=True)  # a same-step leftover from before a crash
    os.replace(work, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    _fsync(pointer)
    os.replace(pointer, root / LATEST)
    _fsync(root)
    for old in sorted(root.glob("ckpt-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(root: Path) -> Checkpoint | None:
    """The latest complete checkpoint under ``root``, or None when there is none.

    Whatever the files hold, the answer is a checkpoint, None or a ``ShelfqError`` saying
    which one is unreadable:

    >>> import tempfile; bad = Path(tempfile.mkdtemp())
    >>> (bad / LATEST).write_text("../../etc")
    9
    >>> load_checkpoint(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    contracts.errors.ShelfqError: checkpoint pointer .../LATEST names '../../etc', not a ckpt-<step> directory; ...
    """
    pointer = root / LATEST
    if not pointer.exists():
        return None
    advice = "move it away to start fresh"
    try:
        name = pointer.read_text().strip()
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ShelfqError(f"checkpoint pointer {pointer} is unreadable ({exc}); {advice}") from None
    if not _CKPT_NAME.fullmatch(name):  # never a path out of root
        raise ShelfqError(f"checkpoint pointer {pointer} names {name[:80]!r}, not a ckpt-<step> directory; {advice}")
    path = root / name
    try:
        state = json.loads((path / "state.json").read_text())
        if not isinstance(state, dict):
            raise ValueError("state.json is not a JSON object")
        tensors = load_tensors(str(path / "tensors.safetensors"))
        arrays = load_arrays(str(path / "arrays.safetensors"))
    except (OSError, ValueError, RecursionError, SafetensorError) as exc:
        raise ShelfqError(f"checkpoint {path} is unreadable ({str(exc)[:300]}); {advice}") from None
    return Checkpoint(path, tensors, arrays, state)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's state as flat tensors plus JSON (instead of a pickled state dict)."""
    sd = optimizer.state_dict()
    tensors = {f"optim.{i}.{name}": value for i, slots in sd["state"].items() for name, value in slots.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore what ``optimizer_tensors`` saved, or raise ``ShelfqError`` when it does not fit.

    >>> opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
    >>> load_optimizer(opt, {"optim.x.step": torch.ones(1)}, {"param_groups": []})
    Traceback (most recent call last):
    ...
    contracts.errors.ShelfqError: checkpoint optimiser state is unreadable (invalid literal for int() with base 10: 'x')
    """
    try:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise ShelfqError(f"checkpoint optimiser state is unreadable ({str(exc)[:300]})") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
