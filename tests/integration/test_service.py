"""`netmond service status` beside a real daemon (the rest of service.py is
unit-tested in tests/unit/test_service.py)."""

from __future__ import annotations

import os

from netmond import service
from tests.unit.test_service import run_service


def test_status_does_not_take_a_hand_started_daemon_for_the_service(start_daemon_process, tmp_path,
                                                                       monkeypatch):
    # A user daemon started by hand where the user service would listen.
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    daemon_pid = start_daemon_process(socket_path=str(runtime / "netmond.sock")).proc.pid
    code, out = run_service("status", "--user", "--manager", "systemd")
    assert code == service.EXIT_NOT_RUNNING
    assert "not the service: a netmond answers (pid" in out and "the service is not installed" in out
    assert "\nrunning" not in "\n" + out
    # The service's own process answering is the service.
    monkeypatch.setattr(service, "managed_pid", lambda manager, user: daemon_pid)
    for path, _ in service.plan("systemd", service.default_settings("systemd", True)).files:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    code, out = run_service("status", "--user", "--manager", "systemd")
    assert code == 0 and f"running    pid {daemon_pid}," in out
