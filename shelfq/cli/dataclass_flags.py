"""Command-line flags generated from a settings dataclass: one ``--field-name`` per field, its
help the field's docstring with its default and environment variable, its type the field's
(cleanrl's ``tyro.cli(Args)``, in the few lines argparse needs). Flags left out stay ``None``,
so the dataclass's defaults and the environment (``from_env``) keep deciding: flag over
variable over default.

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
>>> from shelfq.agents.config import AgentConfig
>>> flag_help(AgentConfig, "epsilon", env_prefix="SHELFQ_AGENT_")
'Chance of a uniform draw at each position (epsilon-greedy). (default 0.1; SHELFQ_AGENT_EPSILON)'
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SCALARS = (int, float, str, Path)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal right below it in the class body), read from
    the class's source once: Python keeps no docstrings of attributes at run time. Without the
    source (an install that ships bytecode only) the flags still work, their help says less."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    tree = ast.parse(textwrap.dedent(source))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs = {}
    for field, after in zip(body, body[1:]):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[field.target.id] = " ".join(after.value.value.split())
    return docs


def flag_kind(annotation: Any) -> type | None:
    """The type a flag parses for a field annotated ``annotation``: bool, a scalar, or the
    scalar of an optional one (``int | None``); None for what a flag cannot carry (nested
    settings, mappings).

    >>> flag_kind(int), flag_kind(int | None), flag_kind(Path), flag_kind(dict[str, float])
    (<class 'int'>, <class 'int'>, <class 'pathlib.Path'>, None)
    """
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        present = [a for a in typing.get_args(annotation) if a is not type(None)]
        return flag_kind(present[0]) if len(present) == 1 else None
    return annotation if annotation is bool or annotation in SCALARS else None


def flag_fields(cls: type) -> list[str]:
    """The fields of ``cls`` a flag can set (``flag_kind``), in their order."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if flag_kind(hints[f.name]) is not None]


def flag_name(field: str, renames: Mapping[str, str] | None = None) -> str:
    """``--field-name``, or the name ``renames`` gives the field (a flag older than the field).

    >>> flag_name("batch_size"), flag_name("fmt", {"fmt": "format"})
    ('--batch-size', '--format')
    """
    return "--" + (renames or {}).get(field, field).replace("_", "-")


def flag_help(cls: type, field: str, env_prefix: str | None = None) -> str:
    """A field's docstring, then its default and the variable that sets it (``env_prefix`` +
    the field's name in upper case; none when the settings are not read from the environment)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == field)
    if f.default is not dataclasses.MISSING:
        default = "empty" if f.default == "" else "none" if f.default is None else f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = "required"
    env = f"; {env_prefix}{field.upper()}" if env_prefix else ""
    return f"{field_docs(cls).get(field, '')} (default {default}{env})".strip()


def add_fields(parser: argparse.ArgumentParser | Any, cls: type, only: Iterable[str] | None = None,
               choices: Mapping[str, Iterable[str]] | None = None, *, exclude: Iterable[str] = (),
               env_prefix: str | None = None, renames: Mapping[str, str] | None = None) -> None:
    """Add a flag for each field of ``cls`` a flag can set (or of those named in ``only``, less
    ``exclude``): ``--name VALUE``, or ``--name/--no-name`` for a boolean; ``choices`` lists a
    text field's accepted values, ``renames`` a field's flag name when it is not the field's."""
    hints = typing.get_type_hints(cls)
    wanted = set(flag_fields(cls) if only is None else only) - set(exclude)
    for name in flag_fields(cls):
        if name not in wanted:
            continue
        kind = flag_kind(hints[name])
        assert kind is not None  # flag_fields keeps only these
        text = flag_help(cls, name, env_prefix).replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag_name(name, renames), dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            options = list((choices or {}).get(name, ())) or None
            metavar = None if options else kind.__name__.upper()
            parser.add_argument(flag_name(name, renames), dest=name, type=kind, choices=options, default=None,
                                metavar=metavar, help=text)


def overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
