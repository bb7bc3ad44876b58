"""Checkpoints of the learner, written so a kill at any instant loses none, read without
unpickling anything.

A checkpoint is a directory ``ckpt-<n>`` (``n`` counts the checkpoints written under the root)
holding safetensors files (network weights, optimiser moments, the replay buffer) and
``state.json`` (step, model version, the consumed offsets it covers, the dedupe window, the
catalog). The file ``LATEST`` names the newest one. Writing never touches a checkpoint that
``LATEST`` may name:

1. the files go to a fresh hidden directory, each synced, then the directory itself;
2. it is renamed to a new ``ckpt-<n>`` name (never an existing one) and the root synced;
3. ``LATEST`` is replaced atomically (a synced temporary file renamed over it), the root synced;
4. only then are the checkpoints beyond the newest ``KEEP`` removed, each first renamed out of
   the ``ckpt-*`` names so a kill halfway through a removal leaves no half-deleted checkpoint.

So at every instant ``LATEST`` names a complete checkpoint, and every ``ckpt-*`` directory is
complete. Loading takes the one ``LATEST`` names and falls back to the newest other complete
one, with a warning, when that one is missing or unreadable (a disk that lost or damaged it).
One learner writes a root at a time.

>>> import tempfile, numpy as np, torch
>>> root = Path(tempfile.mkdtemp())
>>> save_checkpoint(root, {"w": torch.ones(2)}, {"buf": np.arange(3)}, {"step": 7}).name
'ckpt-00000001'
>>> ck = load_checkpoint(root)
>>> ck.state["step"], ck.tensors["w"].tolist(), ck.arrays["buf"].tolist()
(7, [1.0, 1.0], [0, 1, 2])
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file as load_tensors
from safetensors.torch import save_file as save_tensors

from shelfq.contracts.errors import ShelfqError

log = logging.getLogger(__name__)

LATEST = "LATEST"
KEEP = 2  # complete checkpoints kept on disk
#: A complete checkpoint's name; checkpoints written before the counter were named by step,
#: ``ckpt-<step>``, and read the same way (their numbers order them too).
_CKPT_NAME = re.compile(r"ckpt-([0-9]{1,20})")
#: Hidden names of what is being written or removed: never a checkpoint, removed when left over
#: (the last two are what writers before the counter left).
_WORK_PREFIX, _TRASH_PREFIX = ".partial-", ".removing-"
_LEFTOVER = re.compile(rf"\{_WORK_PREFIX}.*|\{_TRASH_PREFIX}.*|\.{LATEST}\{_WORK_PREFIX}.*"
                       rf"|\.ckpt-[0-9]+\.partial-.*|\.{LATEST}\.tmp")
_ADVICE = "move it away to start fresh"
_MAX_HEADER = 100_000_000  # safetensors' own limit on a header


class Checkpoint(NamedTuple):
    path: Path
    tensors: dict[str, torch.Tensor]
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]


def save_checkpoint(root: Path, tensors: dict[str, torch.Tensor], arrays: dict[str, np.ndarray],
                    state: dict[str, Any]) -> Path:
    """Write a checkpoint under ``root`` and make it the latest; returns its directory.

    When this returns, the checkpoint is durable and ``LATEST`` names it; if it raises (or the
    process dies) before, ``LATEST`` still names the previous complete checkpoint.
    """
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        _fsync(root.parent)
    work = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=root))
    save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(work / "tensors.safetensors"))
    save_arrays({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(work / "arrays.safetensors"))
    (work / "state.json").write_text(json.dumps(state))
    for f in work.iterdir():
        _fsync(f)
    _fsync(work)
    final = _claim_name(root, work)
    _fsync(root)
    pointer = work.with_name(f".{LATEST}{work.name}")  # unique, like the work directory
    pointer.write_text(final.name)
    _fsync(pointer)
    os.replace(pointer, root / LATEST)
    _fsync(root)
    _prune(root, keep={final.name})
    return final


def _claim_name(root: Path, work: Path) -> Path:
    """Rename ``work`` to the next unused ``ckpt-<n>``. The rename never replaces a checkpoint:
    renaming a directory onto a non-empty one fails, and a checkpoint is never empty."""
    n = max((number for number, _ in _checkpoints(root)), default=0) + 1
    while True:
        final = root / f"ckpt-{n:08d}"
        try:
            os.rename(work, final)
            return final
        except OSError:
            if not final.exists():
                raise
            n += 1  # taken since the listing


def _prune(root: Path, keep: set[str]) -> None:
    """Keep ``keep`` and the newest intact other checkpoints, ``KEEP`` in all; remove the rest
    (a damaged one too, though newer: a fallback went past it) and what killed writers or
    removals left behind."""
    kept = len(keep)
    doomed = []
    for _, path in _checkpoints(root):
        if path.name in keep:
            continue
        if kept < KEEP and _intact(path):
            kept += 1
        else:
            doomed.append(path)
    for path in doomed:
        trash = root / f"{_TRASH_PREFIX}{path.name}"
        try:
            os.rename(path, trash)  # out of the ckpt-* names first: never half a checkpoint
        except OSError:
            continue  # a leftover of the same name is still there; next time
    if doomed:
        _fsync(root)
    for path in root.iterdir():
        if _LEFTOVER.fullmatch(path.name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _intact(path: Path) -> bool:
    """Whether ``path`` holds a whole checkpoint, judged without reading the tensors: every file
    there, ``state.json`` an object, each safetensors file as long as its header says."""
    try:
        if not isinstance(json.loads((path / "state.json").read_text()), dict):
            return False
        for name in ("tensors.safetensors", "arrays.safetensors"):
            with open(path / name, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                length = int.from_bytes(f.read(8), "little")
                if length > min(size, _MAX_HEADER):
                    return False
                header = json.loads(f.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
            if size != 8 + length + end:
                return False
    except (OSError, ValueError, RecursionError, KeyError, TypeError, IndexError, AttributeError):
        return False
    return True


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    """The ``ckpt-<n>`` directories under ``root``, newest (highest ``n``) first."""
    found = []
    for path in root.iterdir():
        match = _CKPT_NAME.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, key=lambda item: item[0], reverse=True)


def load_checkpoint(root: Path) -> Checkpoint | None:
    """The checkpoint ``LATEST`` names under ``root``; when that one is missing or unreadable,
    the newest other complete one (with a warning saying which and why); None when there is
    none at all.

    Whatever the files hold, the answer is a checkpoint, None, or a ``ShelfqError`` when
    ``LATEST`` exists but no checkpoint under ``root`` can be read (nothing a crash leaves:
    the disk lost them, and starting afresh would drop all training, so it is not silent):

    >>> import tempfile; bad = Path(tempfile.mkdtemp())
    >>> (bad / LATEST).write_text("../../etc")
    9
    >>> load_checkpoint(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    shelfq.contracts.errors.ShelfqError: no readable checkpoint under ...: LATEST names '../../etc', not a ckpt-<n> directory; ...
    """
    if not root.is_dir():
        return None
    pointer = root / LATEST
    named: str | None = None
    problems: list[str] = []
    if not pointer.exists():
        problems.append(f"{LATEST} is missing")
    else:
        try:
            named = pointer.read_text().strip()
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            problems.append(f"{LATEST} is unreadable ({exc})")
        if named is not None and not _CKPT_NAME.fullmatch(named):  # never a path out of root
            problems.append(f"{LATEST} names {named[:80]!r}, not a ckpt-<n> directory")
            named = None
    try:
        others = [path for _, path in _checkpoints(root) if path.name != named]
    except OSError as exc:
        raise ShelfqError(f"checkpoint directory {root} is unreadable ({exc})") from None
    if not pointer.exists() and not others:
        return None  # nothing was ever completed here
    candidates = ([root / named] if named is not None else []) + others
    for path in candidates:
        try:
            ck = _read(path)
        except ShelfqError as exc:
            problems.append(f"{LATEST} names {path.name}, which {exc}" if path.name == named else f"{path.name} {exc}")
            continue
        if problems:
            log.warning("checkpoint: using %s, the newest readable one, because %s", path, "; ".join(problems))
        return ck
    raise ShelfqError(f"no readable checkpoint under {root}: {'; '.join(problems)}; {_ADVICE}")


def _read(path: Path) -> Checkpoint:
    """One checkpoint directory, or ``ShelfqError`` saying why it cannot be used."""
    if not path.is_dir():
        raise ShelfqError("is missing")
    try:
        state = json.loads((path / "state.json").read_text())
        if not isinstance(state, dict):
            raise ValueError("state.json is not a JSON object")
        tensors = load_tensors(str(path / "tensors.safetensors"))
        arrays = load_arrays(str(path / "arrays.safetensors"))
    except (OSError, ValueError, RecursionError, SafetensorError) as exc:
        raise ShelfqError(f"is unreadable ({str(exc)[:300]})") from None
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
    shelfq.contracts.errors.ShelfqError: checkpoint optimiser state is unreadable (invalid literal for int() with base 10: 'x')
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
