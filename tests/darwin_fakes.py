"""What DarwinBackend's tests share: the recordings in tests/data/nettop/, the
fake nettop that replays them (tests/data/fake_nettop) and a ProcessCache
stand-in."""

from __future__ import annotations

import os
from pathlib import Path

from netmond.backends.nettop_parser import parse_text

DATA = Path(__file__).resolve().parent / "data"
FAKE_NETTOP = DATA / "fake_nettop"
MIXED = parse_text((DATA / "nettop" / "mixed.csv").read_text())
#: apsd's connection in mixed.csv: it moves bytes in every frame.
APSD = ("TCP", "192.168.1.5", 50000, "17.57.146.10", 5223)


def path_with_fake_nettop(directory: Path) -> str:
    """A PATH whose first entry, directory/bin (made here, world-readable so
    that `nobody` finds it too), holds the fake as `nettop`."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(mode=0o755)
    (bin_dir / "nettop").symlink_to(FAKE_NETTOP)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


class StubProcesses:
    """ProcessCache stand-in: the recordings' pids mean nothing on this host."""

    def __init__(self, known: dict[int, tuple[str | None, str | None]] | None = None) -> None:
        self.known = known or {}
        self.forgotten_except: set[int] | None = None

    def lookup(self, pid):
        return self.known.get(pid, (None, None))

    def forget_missing(self, alive):
        self.forgotten_except = set(alive)
