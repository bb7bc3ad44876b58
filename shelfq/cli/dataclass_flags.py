"""Command-line flags generated from a settings dataclass: one ``--field-name`` per field, its
help the field's docstring, its default the dataclass's (cleanrl's ``tyro.cli(Args)``, in the
few lines argparse needs). Flags left out stay ``None``, so the dataclass's defaults and the
environment (``from_env``) keep deciding.

>>> import argparse
>>> from shelfq.evaluation.bench_config import PolicyBenchConfig
>>> p = argparse.ArgumentParser()
>>> add_fields(p, PolicyBenchConfig, only=("steps", "gamma"))
>>> p.parse_args(["--steps", "3"])
Namespace(steps=3, gamma=None)
>>> overrides(p.parse_args(["--gamma", "0.5"]), PolicyBenchConfig)
{'gamma': 0.5}
>>> field_docs(PolicyBenchConfig)["steps"]
'Gradient steps of each learner on the logged transitions.'
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SCALARS = (int, float, str, Path)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal right below it in the class body)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs = {}
    for field, after in zip(body, body[1:]):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[field.target.id] = " ".join(after.value.value.split())
    return docs


def add_fields(parser: argparse.ArgumentParser | Any, cls: type, only: Iterable[str] | None = None,
               choices: Mapping[str, Iterable[str]] | None = None) -> None:
    """Add a flag for each scalar or boolean field of ``cls`` (or of those named in ``only``)."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    wanted = None if only is None else set(only)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if (wanted is not None and f.name not in wanted) or (kind is not bool and kind not in SCALARS):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        text = f"{docs.get(f.name, '')} (default {default})".strip().replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            options = list((choices or {}).get(f.name, ())) or None
            parser.add_argument(flag, dest=f.name, type=kind, choices=options, default=None, help=text)


def overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
