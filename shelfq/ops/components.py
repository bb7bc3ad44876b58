"""A shelfq component started as a child process: the demo's and the replay bench's handle."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Component:
    """A started ``shelfq COMMAND``: its process, /metrics port and log file."""

    name: str
    proc: subprocess.Popen
    port: int
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
