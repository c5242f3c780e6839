"""procinfo.ProcessCache: names and users per pid, and when a cached one is stale."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from netmond.backends import procinfo
from netmond.backends.procinfo import ProcessCache

# Waits for a line, takes a new name as prctl(PR_SET_NAME) does (what a
# program setting its title, or an exec after fork, does to comm), says so,
# then waits again.
_RENAMES_ITSELF = """
import ctypes, sys
sys.stdin.readline()
ctypes.CDLL(None).prctl(15, b"renamed-now", 0, 0, 0)
print("renamed", flush=True)
sys.stdin.readline()
"""


@pytest.mark.skipif(not procinfo._HAVE_PROC, reason="needs /proc (Linux)")
def test_a_process_that_takes_a_new_name_is_named_anew() -> None:
    child = subprocess.Popen([sys.executable, "-c", _RENAMES_ITSELF], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        cache = ProcessCache()
        before, user = cache.lookup(child.pid)
        assert before is not None and before != "renamed-now" and user is not None
        assert cache.lookup(child.pid) == (before, user)  # cached: the same answer
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "renamed"
        assert cache.lookup(child.pid) == ("renamed-now", user)
    finally:
        child.kill()
        child.wait()
    assert cache.lookup(child.pid) == (None, None)  # gone: forgotten


def test_our_own_process_and_no_process() -> None:
    cache = ProcessCache()
    name, user = cache.lookup(os.getpid())
    assert name and user
    assert cache.lookup(None) == (None, None)
    assert cache.lookup(2**22 + 12345) == (None, None)  # above pid_max: never a process
