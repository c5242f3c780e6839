"""launchd plists and systemd units: rendered right, in sync with the repository
copies, accepted by systemd-analyze, and installed where the managers look."""

from __future__ import annotations

import configparser
import grp
import io
import os
import plistlib
import shutil
import subprocess

import pytest

from netmond import main as netmond_main
from netmond import service
from tests.helpers import REPO

PROGRAM = ("/opt/netmon/bin/netmond",)


def unit_sections(text: str) -> configparser.ConfigParser:
    """A systemd unit as INI (our units repeat no key, so strict parsing works)."""
    cp = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    cp.optionxform = str  # keys are case-sensitive
    cp.read_string(text)
    return cp


# -- launchd ---------------------------------------------------------------------------------


@pytest.mark.parametrize("user", [False, True], ids=["LaunchDaemon", "LaunchAgent"])
def test_launchd_plist_parses_and_has_the_keys(user):
    s = service.default_settings("launchd", user, program=PROGRAM)
    job = plistlib.loads(service.launchd_plist(s))
    assert job["Label"] == "com.netmon.netmond"
    args = job["ProgramArguments"]
    assert args[0] == PROGRAM[0] and all(os.path.isabs(a) for a in args if a.startswith("/"))
    assert args[args.index("--socket") + 1] == s.socket_path and os.path.isabs(s.socket_path)
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["ThrottleInterval"] >= 10
    assert os.path.isabs(job["StandardOutPath"]) and job["StandardErrorPath"] == job["StandardOutPath"]
    listener = job["Sockets"]["Listeners"]  # the name launchd_socket() asks for
    assert listener["SockPathName"] == s.socket_path
    assert (listener["SockFamily"], listener["SockType"]) == ("Unix", "stream")
    if user:
        assert listener["SockPathMode"] == 0o600 and "SockPathGroup" not in listener
        assert "--socket-group" not in args
        assert job["StandardOutPath"].endswith("Library/Logs/netmond.log")
    else:
        # root daemon: 0660 with group admin, the same group the daemon grants control to
        assert listener["SockPathMode"] == 0o660 and listener["SockPathGroup"] == 80
        assert args[args.index("--socket-group") + 1] == "admin"
        assert s.socket_path == "/var/run/netmond.sock"
        assert job["StandardOutPath"] == "/var/log/netmond.log"


def test_launchd_install_paths_and_commands():
    daemon = service.plan("launchd", service.default_settings("launchd", False, program=PROGRAM))
    assert [p for p, _ in daemon.files] == ["/Library/LaunchDaemons/com.netmon.netmond.plist"]
    assert daemon.start == [["launchctl", "bootstrap", "system", "/Library/LaunchDaemons/com.netmon.netmond.plist"]]
    assert daemon.stop == [["launchctl", "bootout", "system/com.netmon.netmond"]]
    agent = service.plan("launchd", service.default_settings("launchd", True, program=PROGRAM))
    path = os.path.expanduser("~/Library/LaunchAgents/com.netmon.netmond.plist")
    assert [p for p, _ in agent.files] == [path]
    assert agent.start == [["launchctl", "bootstrap", f"gui/{os.getuid()}", path]]


# -- systemd -------------------------------------------------------------------------------------


def test_system_unit_is_hardened_but_can_still_see_every_socket():
    s = service.default_settings("systemd", False, group="netmon", program=PROGRAM)
    unit = unit_sections(service.systemd_service(s))
    svc = unit["Service"]
    assert svc["ExecStart"] == "/opt/netmon/bin/netmond --socket /run/netmond.sock --socket-group netmon"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                       ("ProtectKernelModules", "yes"), ("RestrictNamespaces", "yes")]:
        assert svc[key] == value, key
    # What reading /proc/PID/fd and netlink sock_diag need must survive the hardening.
    assert {"AF_UNIX", "AF_NETLINK"} <= set(svc["RestrictAddressFamilies"].split())
    assert {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"} <= set(svc["CapabilityBoundingSet"].split())
    for forbidden in ("PrivateNetwork", "ProtectProc", "ProcSubset", "PrivateUsers", "DynamicUser"):
        assert forbidden not in svc, forbidden
    assert unit["Unit"]["Requires"] == "netmond.socket"
    assert unit["Install"]["WantedBy"] == "multi-user.target"

    sock = unit_sections(service.systemd_socket(s))["Socket"]
    assert sock["ListenStream"] == "/run/netmond.sock"
    assert (sock["SocketMode"], sock["SocketUser"], sock["SocketGroup"]) == ("0660", "root", "netmon")


def test_without_a_group_the_system_socket_is_root_only():
    s = service.default_settings("systemd", False, program=PROGRAM)
    sock = unit_sections(service.systemd_socket(s))["Socket"]
    assert sock["SocketMode"] == "0600" and "SocketGroup" not in sock
    assert "--socket-group" not in unit_sections(service.systemd_service(s))["Service"]["ExecStart"]


def test_user_units_use_the_runtime_dir():
    s = service.default_settings("systemd", True, program=PROGRAM)
    svc = unit_sections(service.systemd_service(s))
    assert svc["Service"]["ExecStart"] == "/opt/netmon/bin/netmond --socket %t/netmond.sock"
    assert svc["Install"]["WantedBy"] == "default.target"
    sock = unit_sections(service.systemd_socket(s))["Socket"]
    assert (sock["ListenStream"], sock["SocketMode"]) == ("%t/netmond.sock", "0600")


def test_exec_start_escapes_what_systemd_would_expand():
    s = service.ServiceSettings(("/opt/my netmon/50%/$HOME/netmond",), False, "/run/netmond.sock")
    line = unit_sections(service.systemd_service(s))["Service"]["ExecStart"]
    assert line.startswith("'/opt/my netmon/50%%/$$HOME/netmond' --socket")


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(not SYSTEMD_ANALYZE, reason="systemd-analyze not installed (units still checked as INI above)")
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_units_pass_systemd_analyze_verify(tmp_path, user):
    # A real, executable ExecStart: verify checks that it exists.
    s = service.default_settings("systemd", user, group=None if user else "root")
    assert os.access(s.program[0], os.X_OK)
    names = []
    for kind in (("systemd-user-service", "systemd-user-socket") if user else ("systemd-service", "systemd-socket")):
        name = "netmond." + kind.rsplit("-", 1)[1]
        (tmp_path / name).write_text(service.render(kind, s))
        names.append(name)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "SYSTEMD_LOG_LEVEL": "notice"}
    out = subprocess.run([SYSTEMD_ANALYZE, *(["--user"] if user else []), "--man=no", "verify", *names],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    ours = [line for line in (out.stdout + out.stderr).splitlines() if "netmond." in line]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


# -- the repository copies -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", service.KINDS)
def test_repository_copies_are_what_the_renderer_makes(kind):
    path = REPO / service.REFERENCE_FILES[kind]
    expected = service.render(kind, service.reference_settings(kind))
    assert path.read_text() == expected, (
        f"{path} is out of date; regenerate with: python -c "
        "'from netmond.service import write_reference_files; write_reference_files(\".\")'"
    )


# -- the command -------------------------------------------------------------------------------------


def run_service(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = service.main(list(argv), out)
    return code, out.getvalue()


@pytest.mark.parametrize("manager,expected", [
    ("systemd", ["etc/systemd/system/netmond.service", "etc/systemd/system/netmond.socket"]),
    ("launchd", ["Library/LaunchDaemons/com.netmon.netmond.plist"]),
])
def test_install_and_uninstall_into_a_staging_root(tmp_path, manager, expected):
    code, out = run_service("install", "--manager", manager, "--destdir", str(tmp_path))
    assert code == 0
    for rel in expected:
        f = tmp_path / rel
        assert f.is_file() and oct(f.stat().st_mode & 0o777) == "0o644"
        assert f"wrote {f}" in out
    # the job starts this installation's netmond
    assert service.netmond_program()[0] in (tmp_path / expected[0]).read_text()
    # nothing ran (staging); the commands to run are printed
    assert ("systemctl enable --now netmond.socket netmond.service" in out
            or "launchctl bootstrap system /Library/LaunchDaemons/com.netmon.netmond.plist" in out)
    code, out = run_service("uninstall", "--manager", manager, "--destdir", str(tmp_path))
    assert code == 0
    assert not any((tmp_path / rel).exists() for rel in expected)


def test_user_install_goes_to_the_user_unit_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setattr(service, "manager_running", lambda manager: False)
    code, out = run_service("install", "--user", "--manager", "systemd")
    assert code == 0
    unit_dir = tmp_path / "cfg" / "systemd" / "user"
    assert sorted(p.name for p in unit_dir.iterdir()) == ["netmond.service", "netmond.socket"]
    assert "systemctl --user enable --now netmond.socket netmond.service" in out
    assert "only you (and root)" in out
    code, out = run_service("uninstall", "--user", "--manager", "systemd")
    # systemd does not run here: nothing can have been started, so no "stop it first"
    assert "systemd does not manage services here: nothing to stop" in out and "first" not in out
    assert not any(unit_dir.iterdir())
    code, out = run_service("uninstall", "--user", "--manager", "systemd", "--dry-run")
    assert "would run:" in out and "systemctl --user disable --now netmond.service netmond.socket" in out


def test_dry_run_writes_nothing():
    unit = "/etc/systemd/system/netmond.service"
    existed = os.path.exists(unit)
    group = grp.getgrgid(os.getgid()).gr_name  # one that exists here
    code, out = run_service("install", "--manager", "systemd", "--dry-run", "--group", group)
    assert code == 0
    assert f"would write {unit}" in out and f"SocketGroup={group}" in out
    assert f"usermod -aG {group} USER" in out
    assert "wrote" not in out and os.path.exists(unit) == existed


def test_user_unit_dir_ignores_a_relative_xdg_config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/cfg")  # invalid by the XDG spec
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(service, "manager_running", lambda manager: False)
    code, _out = run_service("install", "--user", "--manager", "systemd")
    assert code == 0
    assert (tmp_path / ".config" / "systemd" / "user" / "netmond.service").exists()
    assert not os.path.exists("relative")
    assert run_service("uninstall", "--user", "--manager", "systemd")[0] == 0


def test_status_reports_files_and_a_missing_daemon(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    code, out = run_service("status", "--user", "--manager", "systemd")
    assert code == service.EXIT_NOT_RUNNING
    assert "missing" in out and "stopped" in out


def test_service_subcommand_leaves_the_daemon_argv_alone(capsys):
    assert netmond_main.main(["service", "print", "systemd-socket"]) == 0
    assert "ListenStream=/run/netmond.sock" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        netmond_main.main(["--help"])
    assert e.value.code == 0
    assert "netmond service install" in capsys.readouterr().out


def test_printed_program_really_starts_netmond():
    argv = [*service.netmond_program(), "--version"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and out.stdout.startswith("netmond ")
    assert os.path.isabs(argv[0])


# -- rough edges (issue 13, item 10) ---------------------------------------------------------


def test_install_refuses_a_group_that_does_not_exist(tmp_path, capsys):
    code, out = run_service("install", "--manager", "systemd", "--dry-run", "--group", "nosuchgrp-13")
    assert code == 2 and out == ""
    err = capsys.readouterr().err
    assert "no group 'nosuchgrp-13' on this machine" in err and "sudo groupadd nosuchgrp-13" in err
    # Staged for another machine, the group is that machine's business.
    code, out = run_service("install", "--manager", "systemd", "--destdir", str(tmp_path),
                            "--group", "nosuchgrp-13")
    assert code == 0 and "SocketGroup=nosuchgrp-13" in (tmp_path / "etc/systemd/system/netmond.socket").read_text()


def test_user_install_refuses_a_group():
    code, out = run_service("install", "--user", "--manager", "systemd", "--dry-run", "--group", "root")
    assert code == 2


def test_a_netmond_under_tmp_keeps_its_tmp():
    unit = unit_sections(service.render("systemd-service", service.default_settings(
        "systemd", False, program=("/tmp/venv/bin/netmond",))))
    assert "PrivateTmp" not in unit["Service"]  # it would hide /tmp/venv/bin/netmond from the service
    normal = unit_sections(service.render("systemd-service", service.default_settings("systemd", False,
                                                                                      program=PROGRAM)))
    assert normal["Service"]["PrivateTmp"] == "yes"
