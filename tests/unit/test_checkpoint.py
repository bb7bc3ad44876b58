"""Checkpoints survive a kill at any instant of a save, and loading survives damaged files.

A simulated kill (one filesystem call raising, nothing after it run) at each step of a save
leaves the previous or the new checkpoint loadable, never nothing; real SIGKILLs of a process
saving in a loop lose no checkpoint it finished; a damaged newest checkpoint falls back to the
older one with a warning.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import shelfq.learner.checkpoint as checkpoint_module
from shelfq.contracts.errors import ShelfqError
from shelfq.learner.checkpoint import KEEP, LATEST, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


def save(root: Path, step: int, mark: float) -> Path:
    """A small checkpoint whose tensor and array carry ``mark``, to tell two of one step apart."""
    return save_checkpoint(root, {"w": torch.full((3,), mark)}, {"buf": np.full(4, mark)},
                           {"step": step, "mark": mark})


def mark_of(root: Path) -> float | None:
    ck = load_checkpoint(root)
    if ck is None:
        return None
    assert ck.tensors["w"].tolist() == [ck.state["mark"]] * 3 and ck.arrays["buf"].tolist() == [ck.state["mark"]] * 4
    return ck.state["mark"]


def on_disk(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


class Killed(BaseException):
    """The process died here: nothing after the call runs, no except clause catches it."""


def kill_at(monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """Make the ``n``-th filesystem step of what follows raise ``Killed``; returns the steps seen."""
    seen: list[str] = []

    def wrap(owner: object, name: str) -> None:
        real = getattr(owner, name)

        def step(*args: object, **kwargs: object) -> object:
            seen.append(name)
            if len(seen) == n + 1:
                raise Killed(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, step)

    for name in ("rename", "replace", "fsync", "unlink", "mkdir"):
        wrap(os, name)
    wrap(shutil, "rmtree")
    for name in ("save_tensors", "save_arrays"):
        wrap(checkpoint_module, name)
    return seen


@pytest.mark.parametrize("same_step", [False, True], ids=["next step", "same step"])
def test_a_kill_at_any_step_of_a_save_leaves_the_previous_or_the_new_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same_step: bool) -> None:
    outcomes = []
    for n in range(100):
        root = tmp_path / str(n)
        for step in range(1, KEEP + 2):  # enough that the next save prunes
            save(root, step, mark=float(step))
        previous = float(KEEP + 1)
        with monkeypatch.context() as patch:
            seen = kill_at(patch, n)
            try:
                save(root, KEEP + (1 if same_step else 2), mark=99.0)
                completed = True
            except Killed:
                completed = False
        got = mark_of(root)  # never raises, never None: the old one or the new one
        assert got in (previous, 99.0), (n, seen, on_disk(root))
        if "replace" in seen[:-1] or completed:
            assert got == 99.0, "LATEST was replaced: the new checkpoint is the latest"
        else:
            assert got == previous, "LATEST still names the previous checkpoint"
        outcomes.append(got)
        # The next save recovers whatever the kill left, and cleans it up.
        save(root, 50, mark=50.0)
        assert mark_of(root) == 50.0
        names = on_disk(root)
        assert LATEST in names and len(names) == KEEP + 1, names
        assert not [name for name in names if name.startswith(".")], names
        if completed:
            break
    else:
        pytest.fail("the save never completed")
    assert n >= 10, f"only {n} kill points: the simulation does not reach into the save"
    assert previous in outcomes and 99.0 in outcomes


def test_a_save_never_moves_or_removes_the_checkpoint_latest_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[str] = []

    def guarded(real):  # type: ignore[no-untyped-def]
        def call(path: object, *args: object, **kwargs: object) -> object:
            live = (tmp_path / LATEST).read_text() if (tmp_path / LATEST).exists() else None
            touched.append(Path(str(path)).name)
            assert Path(str(path)).name != live, f"{real.__name__} of the live checkpoint {live}"
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(shutil, "rmtree", guarded(shutil.rmtree))
    monkeypatch.setattr(os, "rename", guarded(os.rename))
    for step in [1, 2, 2, 2, 3]:  # a stop right after a checkpoint saves the same step again
        save(tmp_path, step, mark=float(step))
        assert mark_of(tmp_path) == float(step)
    assert any(name.startswith("ckpt-") for name in touched), "nothing was pruned: the guard saw nothing"
    assert len([n for n in on_disk(tmp_path) if n.startswith("ckpt-")]) == KEEP


def corrupt(path: Path, how: str) -> None:
    if how == "removed":
        shutil.rmtree(path)
    elif how.startswith("truncated "):
        f = path / how.split()[1]
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how.startswith("missing "):
        (path / how.split()[1]).unlink()
    elif how == "state not an object":
        (path / "state.json").write_text("[1, 2]")
    elif how == "state garbage":
        (path / "state.json").write_bytes(b"\xff\x00{")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", [
    "removed", "truncated tensors.safetensors", "truncated arrays.safetensors", "truncated state.json",
    "missing tensors.safetensors", "missing state.json", "state not an object", "state garbage"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_older_one(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    older = save(tmp_path, 1, mark=1.0)
    newest = save(tmp_path, 2, mark=2.0)
    corrupt(newest, how)
    with caplog.at_level(logging.WARNING, logger="shelfq.learner.checkpoint"):
        assert mark_of(tmp_path) == 1.0
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert f"using {older}" in message and f"{LATEST} names {newest.name}, which" in message, message
    # Training goes on from there: the next save is the latest, the damaged one is pruned.
    save(tmp_path, 2, mark=3.0)
    assert mark_of(tmp_path) == 3.0
    assert newest.name not in on_disk(tmp_path) or how == "removed"


@pytest.mark.parametrize("pointer", [None, b"", b"ckpt-00000099", b"../../etc", b"\xff\xfe", b"ckpt-1\x00"],
                         ids=["missing", "empty", "names nothing", "outside", "binary", "nul"])
def test_a_damaged_pointer_falls_back_to_the_newest_complete_checkpoint(
        tmp_path: Path, pointer: bytes | None, caplog: pytest.LogCaptureFixture) -> None:
    save(tmp_path, 1, mark=1.0)
    newest = save(tmp_path, 2, mark=2.0)
    if pointer is None:
        (tmp_path / LATEST).unlink()
    else:
        (tmp_path / LATEST).write_bytes(pointer)
    with caplog.at_level(logging.WARNING, logger="shelfq.learner.checkpoint"):
        assert mark_of(tmp_path) == 2.0
    assert [f"using {newest}" in r.getMessage() and LATEST in r.getMessage() for r in caplog.records] == [True]


def test_leftovers_of_killed_writes_are_never_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save(tmp_path, 1, mark=1.0)
    # What killed writers leave: a half-written work directory (newer than everything), its
    # pointer file, a half-removed checkpoint, and the same from the writer before the counter.
    for name in (".partial-x1", ".removing-ckpt-00000000", ".ckpt-00000009.partial-123"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_text('{"step": 9, "mark": 9.0}')
    (tmp_path / ".LATEST.partial-x1").write_text(".partial-x1")
    (tmp_path / ".LATEST.tmp").write_text("ckpt-00000009")
    with caplog.at_level(logging.WARNING, logger="shelfq.learner.checkpoint"):
        assert mark_of(tmp_path) == 1.0
    assert not caplog.records
    save(tmp_path, 2, mark=2.0)
    assert [n for n in on_disk(tmp_path) if n.startswith(".")] == []


def test_nothing_readable_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "never-made") is None
    assert load_checkpoint(tmp_path) is None
    (tmp_path / ".partial-x").mkdir()  # the first save was killed: nothing completed
    assert load_checkpoint(tmp_path) is None
    first, second = save(tmp_path, 1, mark=1.0), save(tmp_path, 2, mark=2.0)
    corrupt(first, "truncated tensors.safetensors")
    corrupt(second, "state garbage")
    with pytest.raises(ShelfqError, match=r"no readable checkpoint under .*LATEST names ckpt-00000002, which is unreadable.*"
                                          r"ckpt-00000001 is unreadable.*move it away"):
        load_checkpoint(tmp_path)


def test_checkpoints_named_by_step_before_the_counter_still_load_and_order(tmp_path: Path) -> None:
    save(tmp_path, 7, mark=7.0)
    os.rename(tmp_path / "ckpt-00000001", tmp_path / "ckpt-00000007")  # the old writer's name
    (tmp_path / LATEST).write_text("ckpt-00000007")
    assert mark_of(tmp_path) == 7.0
    assert save(tmp_path, 8, mark=8.0).name == "ckpt-00000008"
    assert save(tmp_path, 9, mark=9.0).name == "ckpt-00000009"
    assert [n for n in on_disk(tmp_path) if n.startswith("ckpt-")] == ["ckpt-00000008", "ckpt-00000009"]
    assert mark_of(tmp_path) == 9.0


WRITER = """
import sys, numpy as np, torch
from pathlib import Path
from shelfq.learner.checkpoint import save_checkpoint
root, step = Path(sys.argv[1]), int(sys.argv[2])
while True:
    step += 1
    save_checkpoint(root, {"w": torch.full((1 << 18,), float(step))}, {"buf": np.full(1 << 18, step)},
                    {"step": step, "mark": float(step)})
    print(step, flush=True)
"""


def test_sigkill_while_saving_in_a_loop_loses_no_finished_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    last = 0
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(last)], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        first = child.stdout.readline()  # imported and saving
        assert first.strip(), "the writer did not start"
        time.sleep(rng.uniform(0.05, 0.5))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        finished = int([first, *out.split()][-1])
        ck = load_checkpoint(tmp_path)
        assert ck is not None
        # Every save that returned is there; the one in flight may or may not be.
        assert ck.state["step"] in (finished, finished + 1), (finished, on_disk(tmp_path))
        assert ck.tensors["w"][0].item() == ck.state["step"] and int(ck.arrays["buf"][-1]) == ck.state["step"]
        last = ck.state["step"]
    assert last > 3
