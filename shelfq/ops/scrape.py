"""Read a local component's /metrics: one series (what the chaos run and the integration tests
use to watch a child process's progress), or all of them (the demo's and the replay bench's figures)."""

from __future__ import annotations

import re
import urllib.request


def metric(port: int, name: str, label: str = "") -> float:
    """The sum of metric ``name``'s series on 127.0.0.1:``port`` whose labels contain
    ``label``; 0 if the endpoint is unreachable (a process starting or stopped)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    found = re.findall(rf"^{name}(?:{{[^}}]*{label}[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return sum(float(v) for v in found)


def series(port: int) -> dict[str, float]:
    """A component's /metrics as {series name: sum over its labels}; empty if unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out
