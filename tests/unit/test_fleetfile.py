"""fleet.json is validated on read, bounded and pruned (issue 10); a bad
NETMON_SSH_COMMAND is a usage error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from netmonctl import fleetfile
from tests.helpers import REPO


@pytest.fixture
def xdg(tmp_path, monkeypatch):
    for var, sub in (("XDG_CONFIG_HOME", "c"), ("XDG_STATE_HOME", "s"), ("XDG_CACHE_HOME", "k")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    (tmp_path / "c" / "netmon").mkdir(parents=True)
    (tmp_path / "s" / "netmon").mkdir(parents=True)
    (tmp_path / "c" / "netmon" / "hosts.toml").write_text(
        '[hosts.a]\nurl = "unix:///nonexistent/a.sock"\n[hosts.b]\nurl = "unix:///nonexistent/b.sock"\n')
    return tmp_path


def fleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netmonctl.cli", "fleet", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("content, warning", [
    ('{"hosts": {"a": {"last_seen": "yesterday"}, "b": [1], "c": {"last_seen": 5}}}', "2 bad entries dropped"),
    ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),
    ('{"hosts": [1]}', 'has no "hosts" map'),
])
def test_a_bad_fleet_json_is_a_warning_not_a_crash(xdg, content, warning):
    (xdg / "s" / "netmon" / "fleet.json").write_text(content)
    ran = fleet("--json")
    assert ran.returncode == 0, ran.stderr
    assert warning in ran.stderr and "Traceback" not in ran.stderr
    assert [h["name"] for h in json.loads(ran.stdout)["hosts"]] == ["a", "b"]


def test_a_huge_fleet_json_is_not_parsed(xdg):
    path = xdg / "s" / "netmon" / "fleet.json"
    path.write_text(json.dumps({"hosts": {f"h{i}": {"last_seen": 1} for i in range(500_000)}}))
    t0 = time.monotonic()
    assert fleetfile.load_state(str(path)) == {}
    assert time.monotonic() - t0 < 1.0


def test_saving_prunes_hosts_no_longer_in_hosts_toml_and_keeps_valid_times(xdg):
    path = xdg / "s" / "netmon" / "fleet.json"
    path.write_text(json.dumps({"hosts": {"a": {"last_seen": 10}, "gone": {"last_seen": 20},
                                          "b": {"last_seen": "yesterday"}}}))
    fleetfile.save_state({"b": {"last_seen": 30}})
    assert json.loads(path.read_text()) == {"hosts": {"a": {"last_seen": 10}, "b": {"last_seen": 30}}}


def test_an_unbalanced_netmon_ssh_command_is_exit_2_with_a_message(xdg, monkeypatch):
    monkeypatch.setenv("NETMON_SSH_COMMAND", "ssh \"unbalanced")
    (xdg / "c" / "netmon" / "hosts.toml").write_text('[hosts.a]\nurl = "ssh://localhost"\n')
    for argv in (["-H", "ssh://localhost", "status"], ["fleet"]):
        ran = subprocess.run([sys.executable, "-m", "netmonctl.cli", *argv], capture_output=True, text=True,
                             timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert ran.returncode == 2, (argv, ran.stderr)
        assert "NETMON_SSH_COMMAND" in ran.stderr and "fix its quoting" in ran.stderr
        assert "Traceback" not in ran.stderr


def test_xdg_homes_ignore_relative_values(monkeypatch, tmp_path):
    """The XDG spec: a relative $XDG_CONFIG_HOME is invalid; every file of ours ignores it alike."""
    from common import paths

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(paths, "is_root", lambda: False)
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, "relative/dir")
    assert paths.default_config_path() == str(tmp_path / ".config" / "netmon" / "netmond.toml")
    assert fleetfile.hosts_path() == str(tmp_path / ".config" / "netmon" / "hosts.toml")
    assert fleetfile.state_path() == str(tmp_path / ".local" / "state" / "netmon" / "fleet.json")
    assert paths.cache_dir() == str(tmp_path / ".cache" / "netmon")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert paths.default_config_path() == str(tmp_path / "cfg" / "netmon" / "netmond.toml")
