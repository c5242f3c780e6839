"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from tests.linux_fakes import FakeProc


@pytest.fixture
def fake_proc(tmp_path) -> FakeProc:
    """An empty fake /proc under tmp_path (procfd.SocketOwners and LinuxBackend read it)."""
    return FakeProc(tmp_path)

