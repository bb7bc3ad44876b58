"""Model messages: a Q-network as safetensors bytes plus headers, and the loader that checks
one before anything serves it. Shared by the learner (writer) and the agents (readers).

Nothing is unpickled: safetensors holds raw tensors, the headers are JSON and text.

>>> from shelfq.learner.config import LearnerConfig
>>> net = QNetwork(LearnerConfig(hash_buckets=64, context_buckets=8))
>>> value, headers = model_message(net, LearnerConfig(hash_buckets=64, context_buckets=8), version=1, created_ts=1.0)
>>> loaded = load_model(value, headers.to_headers())
>>> loaded.headers.version, loaded.config.hash_buckets
(1, 64)
>>> load_model(value[:-4], headers.to_headers())  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
shelfq.contracts.errors.EventError: value.value.2.weight: data offsets ... outside the ...-byte buffer
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch.overrides import TorchFunctionMode

from shelfq.contracts.errors import ConfigError, EventError
from shelfq.contracts.models import DTYPE_BYTES, ModelHeaders, read_safetensors_index
from shelfq.learner.config import NETWORK_FIELDS, LearnerConfig
from shelfq.learner.item_features import CATEGORY_BUCKETS, PRICE_BANDS
from shelfq.learner.network import QNetwork

_TORCH_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32"}
assert set(_TORCH_DTYPES.values()) <= set(DTYPE_BYTES)


class LoadedModel(NamedTuple):
    """A checked model, ready to score (in eval mode, on the CPU unless moved)."""

    network: QNetwork
    headers: ModelHeaders
    config: LearnerConfig


class _SkipInit(TorchFunctionMode):
    """Leaves ``torch.nn.init`` undone: on the meta device it would only cost the import of
    torch's meta kernels (seconds, once per process), and the values are not looked at."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def _expected_tensors(config: LearnerConfig) -> dict[str, torch.Tensor]:
    """The state dict ``config`` builds, on the meta device: shapes and dtypes, no memory. A
    config from a message is not trusted yet; 10**12 hash buckets must not be allocated.

    >>> _expected_tensors(LearnerConfig(hash_buckets=10**12))["item_ids.weight"].shape[0]
    1000000000000
    """
    with torch.device("meta"), _SkipInit():
        return QNetwork(config).state_dict()


def model_message(network: QNetwork, config: LearnerConfig, version: int, created_ts: float | None = None,
                  extra: dict[str, Any] | None = None) -> tuple[bytes, ModelHeaders]:
    """The value (safetensors bytes) and headers of one model version."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    meta = {**config.network(), "gamma": config.gamma, **(extra or {})}
    headers = ModelHeaders(config.policy, version, time.time() if created_ts is None else created_ts, meta)
    return save_tensors(tensors), headers


def load_model(value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None,
               policy: str | None = None) -> LoadedModel:
    """Check and load one model message, or raise ``EventError`` saying what is wrong.

    Checked, in order: the headers; the policy (when ``policy`` is given); that the
    safetensors table describes the buffer exactly; that the config builds a network; that
    tensor names, shapes and dtypes are exactly that network's; that every weight is finite.
    Whatever the bytes, the answer is a model or an ``EventError`` (a reader that stopped on
    another exception would stop taking models).
    """
    meta = ModelHeaders.from_headers(headers)
    if policy is not None and meta.policy != policy:
        raise EventError("headers.policy", "invalid", f"model is for policy {meta.policy!r}, not {policy!r}")
    index = read_safetensors_index(value)
    known = {f.name for f in dataclasses.fields(LearnerConfig)}
    shape_fields = {k: v for k, v in meta.config.items() if k in known and k in NETWORK_FIELDS}
    shape_fields.setdefault("objective", "item")  # models from before SlateQ are item-wise
    shape_fields.setdefault("item_features", False)  # and from before item features, ids alone,
    shape_fields.setdefault("affinity", False)  # without cross features,
    shape_fields.setdefault("next_clicks", 0)  # and without the next-clicks table
    shape_fields.setdefault("next_click_prior", False)  # or its prior term
    missing = [k for k in NETWORK_FIELDS if k not in shape_fields]
    if missing:
        raise EventError("headers.config", "missing", f"network settings missing: {', '.join(missing)}")
    try:
        config = LearnerConfig(policy=meta.policy, **shape_fields)
        expected = _expected_tensors(config)
    except (ConfigError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise EventError("headers.config", "invalid", str(exc)[:300]) from None
    problems = [f"missing {name}" for name in expected if name not in index]
    problems += [f"unexpected {name}" for name in index if name not in expected]
    for name, info in index.items():
        want = expected.get(name)
        if want is None:
            continue
        if tuple(want.shape) != info.shape:
            problems.append(f"{name} has shape {list(info.shape)}, want {list(want.shape)}")
        elif _TORCH_DTYPES.get(want.dtype) != info.dtype:
            problems.append(f"{name} has dtype {info.dtype}, want {_TORCH_DTYPES.get(want.dtype)}")
    if problems:
        raise EventError("value", "invalid", "tensors do not match the network: " + "; ".join(problems[:5]))
    # The table matched the network, so both fit the buffer; safetensors and torch check again.
    try:
        tensors = load_tensors(value)  # type: ignore[arg-type]
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise EventError("value", "invalid", f"tensors do not load: {str(exc)[:300]}") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise EventError(f"value.{name}", "non_finite", "weights contain NaN or infinity")
    _check_item_attributes(tensors.get("item_attributes"))
    _check_next_clicks(tensors.get("next_click_rows"), tensors.get("next_click_counts"))
    try:
        network = QNetwork(config)
        network.load_state_dict(tensors, strict=True)
    except (ValueError, RuntimeError) as exc:
        raise EventError("value", "invalid", f"tensors do not load: {str(exc)[:300]}") from None
    network.eval()
    return LoadedModel(network, meta, config)


def _check_item_attributes(table: torch.Tensor | None) -> None:
    """The item-attribute table indexes two embeddings: every entry within them, the padding
    row empty (an index out of range would fail every request scored, not the load)."""
    if table is None:
        return
    for column, (name, rows) in enumerate((("category", CATEGORY_BUCKETS), ("price band", PRICE_BANDS))):
        values = table[:, column]
        if bool((values < 0).any()) or bool((values >= rows).any()):
            raise EventError("value.item_attributes", "out_of_range", f"{name} rows must be in 0..{rows - 1}")
    if bool((table[0] != 0).any()):
        raise EventError("value.item_attributes", "invalid", "the padding row 0 must have no attributes")


def _check_next_clicks(successors: torch.Tensor | None, counts: torch.Tensor | None) -> None:
    """The next-clicks table holds item rows and counts: rows within the item table, counts
    not negative (finite is checked with every weight), the padding row empty."""
    if successors is None or counts is None:
        return
    if bool((successors < 0).any()) or bool((successors >= successors.shape[0]).any()):
        raise EventError("value.next_click_rows", "out_of_range", f"item rows must be in 0..{successors.shape[0] - 1}")
    if bool((counts < 0).any()):
        raise EventError("value.next_click_counts", "out_of_range", "counts must be >= 0")
    if bool((successors[0] != 0).any()) or bool((counts[0] != 0).any()):
        raise EventError("value.next_click_rows", "invalid", "the padding row 0 must be empty")
