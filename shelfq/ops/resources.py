"""The files shelfq ships beside its code: the embedded broker's pom.xml and properties,
Prometheus' rules and Grafana's dashboard, all under ``deploy/`` in the repository.

They are found through the package (``importlib.resources``), so the same lookup serves a
checkout, an editable install and a wheel installed anywhere:

>>> (deploy_dir() / "kafka" / "pom.xml").is_file()
True
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def deploy_dir() -> Path:
    """The shipped ``deploy/`` folder as a real path (the broker hands paths in it to Java)."""
    found = files("shelfq").joinpath("deploy")
    # Installed packages are unpacked on disk (a wheel, or a checkout's symlink): a
    # Traversable that is not a Path would be a zip import, which shelfq does not support.
    if not isinstance(found, Path):
        raise RuntimeError(f"shelfq's files are not on disk ({found!r}); install shelfq unzipped")
    return found
