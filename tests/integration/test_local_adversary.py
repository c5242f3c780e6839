"""Issue 10: what another local user could do to a root daemon and root's CLI.

Each test replays one attack of the adversary round as uid 65534 (`setpriv
--reuid=65534 --regid=65534 --clear-groups`) against a real netmond, and
checks what root then gets: exit codes, rows, events, /metrics, memory.
Every one of them failed on the code before the fix (the figures are in the
commit messages and the issue's report).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Iterator

import pytest

from common.client import Client
from tests.conftest import netmonctl_cmd
from tests import helpers
from tests.helpers import REPO, linux_backend_works, wait_until

NOBODY = 65534

needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or not sys.platform.startswith("linux"),
    reason="needs root and setpriv (Linux) to act as another user",
)


def _nobody_can_run_python() -> bool:
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", "import msgpack, common.client"],
        env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd="/", capture_output=True, timeout=60,
    )
    return probe.returncode == 0


@pytest.fixture(scope="module")
def as_nobody_argv() -> list[str]:
    """argv prefix that runs this venv's python as uid/gid 65534 with the repo importable."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    if not _nobody_can_run_python():
        pytest.skip(f"uid {NOBODY} cannot run {sys.executable} with {REPO} importable")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable]


def nobody_env(**extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}


def spawn_as_nobody(argv: list[str], script: str, *args: str) -> subprocess.Popen:
    """Start `script` (python source) as nobody; its stdout is a pipe of lines."""
    return subprocess.Popen([*argv, "-c", script, *args], env=nobody_env(), cwd="/",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def netmonctl(socket_path: str, *args: str, prefix: list[str] | None = None,
              env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run netmonctl (as root unless `prefix` says otherwise) against socket_path."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("NETMON_")}
    return subprocess.run([*(prefix or []), *netmonctl_cmd("--socket", socket_path, *args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**base, "PYTHONPATH": str(REPO), **(env or {})})


# -- hole 1: a process name that is not UTF-8 ------------------------------------------

# A process named "éééééééé": the kernel keeps 15 bytes of a name, which cuts
# the eighth "é" in half. It holds a loopback connection and moves bytes on it.
BAD_NAME_PROCESS = r"""
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, "éééééééé".encode(), 0, 0, 0)
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen()
cli = socket.create_connection(lst.getsockname()); srv, _ = lst.accept()
print(lst.getsockname()[1], flush=True)
while sys.stdin.readline():
    cli.sendall(b"x" * 100000)
    got = 0
    while got < 100000:
        got += len(srv.recv(1 << 20))
    print("moved", flush=True)
"""


@needs_setpriv
@pytest.mark.skipif(not linux_backend_works(), reason="needs the Linux backend (netlink sock_diag)")
def test_hole1_a_non_utf8_process_name_never_blinds_the_daemon(start_daemon_thread, as_nobody_argv):
    pytest.importorskip("prometheus_client")
    port = free_port()
    from netmond.backends.linux import LinuxBackend

    d = start_daemon_thread(LinuxBackend(), metrics_listen=f"127.0.0.1:{port}")
    evil = subprocess.Popen([*as_nobody_argv, "-c", BAD_NAME_PROCESS], env=nobody_env(), cwd="/",
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        lport = int(evil.stdout.readline())
        expected = "ééééééé\ufffd"  # 7 whole characters and the cut one replaced

        with d.client() as watcher:
            watcher.call("subscribe", {"topics": ["connection_update", "stats_update"]})

            def evil_rows() -> list[dict[str, Any]]:
                with d.client() as c:
                    rows = c.call("connections", {"filter": {"port": lport}})["connections"]
                return [r for r in rows if r["pid"] == evil.pid or r["process_name"] == expected]

            rows = wait_until(evil_rows, timeout=20)
            assert {r["process_name"] for r in rows} == {expected}
            assert {r["user"] for r in rows} == {"nobody"}
            evil.stdin.write("go\n")
            evil.stdin.flush()
            assert evil.stdout.readline().strip() == "moved"
            ticks = d.daemon.state.ticks
            wait_until(lambda: d.daemon.state.ticks >= ticks + 3, timeout=20)
            events = 0
            deadline = time.monotonic() + 10
            while events < 3 and time.monotonic() < deadline:
                events += watcher.next_notification(timeout=2) is not None
            assert events >= 3, "the subscriber received nothing"

        for cmd in (["conns"], ["apps"], ["stats"], ["conns", "--json"], ["apps", "--json"]):
            ran = netmonctl(d.socket, *cmd)
            assert ran.returncode == 0, (cmd, ran.returncode, ran.stderr)
        apps = json.loads(netmonctl(d.socket, "apps", "--json").stdout)["apps"]
        assert expected in {a["process_name"] for a in apps}
        assert expected in netmonctl(d.socket, "conns").stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200
            assert f'app="{expected}"' in resp.read().decode()
    finally:
        evil.stdin.close()
        stop(evil)
    # After the process is gone its bytes are still in the totals: still readable.
    ticks = d.daemon.state.ticks
    wait_until(lambda: d.daemon.state.ticks >= ticks + 2, timeout=20)
    assert netmonctl(d.socket, "apps").returncode == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200


# -- a fake daemon another user runs ----------------------------------------------------

# Answers every request from a JSON file of canned results ({method: result};
# "control" answers {"monitoring": false}) and prints each method it served.
FAKE_DAEMON = r"""
import json, os, socket, sys
import msgpack
path, canned, listen_fd = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3])
if listen_fd >= 0:
    srv = socket.socket(fileno=listen_fd)
else:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    os.chmod(path, 0o777)
srv.listen(8)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    unpacker = msgpack.Unpacker(raw=False)
    while True:
        data = conn.recv(65536)
        if not data:
            break
        unpacker.feed(data)
        for msg in unpacker:
            print("served", msg[2], flush=True)
            error = canned.get("!" + msg[2])  # "!method": answer with that error instead
            result = None if error else canned.get(msg[2], {"monitoring": False})
            conn.sendall(msgpack.packb([1, msg[1], error, result]))
    conn.close()
"""


def canned_replies(d: Any, directory: str, **changes: Any) -> str:
    """Real replies of a real daemon, some changed; written where nobody can read them."""
    with d.client() as c:
        canned = {m: c.call(m) for m in ("hello", "status", "connections", "apps", "stats")}
    for method, edit in changes.items():
        edit(canned[method])
    path = os.path.join(directory, "canned.json")
    with open(path, "w") as fh:
        json.dump(canned, fh)
    os.chmod(path, 0o644)
    return path


def start_fake_daemon(argv: list[str], path: str, canned: str, listen_fd: int | None = None) -> subprocess.Popen:
    fds = () if listen_fd is None else (listen_fd,)
    fake = subprocess.Popen([*argv, "-c", FAKE_DAEMON, path, canned, str(-1 if listen_fd is None else listen_fd)],
                            env=nobody_env(), cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, pass_fds=fds)
    assert fake.stdout.readline().strip() == "ready", fake.stderr.read()
    return fake


def served(fake: subprocess.Popen) -> list[str]:
    """What the fake daemon answered (it is stopped first)."""
    stop_out = []
    if fake.poll() is None:
        fake.kill()
    out, _ = fake.communicate(timeout=10)
    stop_out = [line.split()[1] for line in out.splitlines() if line.startswith("served")]
    return stop_out


def sticky_tmp(short_dir: str) -> str:
    """A directory like /tmp (root's, 1777) to stand in for it through TMPDIR."""
    tmp = os.path.join(short_dir, "tmp")
    os.mkdir(tmp)
    os.chmod(tmp, 0o1777)
    return tmp


def root_env(tmp: str, home: str) -> dict[str, str]:
    """root's environment under sudo/cron/su: no XDG_RUNTIME_DIR, no NETMON_SOCKET."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR" and not k.startswith("NETMON_")}
    return {**env, "TMPDIR": tmp, "HOME": home, "PYTHONPATH": str(REPO)}


# -- hole 2: another user's socket answers root's netmonctl -----------------------------------

@needs_setpriv
def test_hole2_a_socket_another_user_planted_never_answers_root(start_daemon_thread, short_dir, as_nobody_argv):
    d = start_daemon_thread()
    canned = canned_replies(d, short_dir, connections=lambda r: r["connections"][:0] or r["connections"].append(
        {**(r["connections"] or [{}])[0], "process_name": "FAKE-ROW"}) or None)
    tmp = sticky_tmp(short_dir)
    home = os.path.join(short_dir, "roothome")
    os.mkdir(home, 0o700)
    planted = os.path.join(tmp, "netmon-0", "netmond.sock")  # what root's netmonctl looked at first
    fake = start_fake_daemon(as_nobody_argv, planted, canned)
    try:
        assert os.stat(planted).st_uid == NOBODY
        env = root_env(tmp, home)
        results = {}
        # Not `stop`: with the planted socket passed over, root's netmonctl
        # goes on to /run/netmond.sock, where a real daemon may be running.
        for cmd in (["status", "--json"], ["conns", "--json"]):
            ran = subprocess.run(netmonctl_cmd(*cmd), capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
            results[cmd[0]] = ran
            assert "FAKE-ROW" not in ran.stdout, (cmd, ran.stdout)
            if cmd[0] == "status" and ran.returncode == 0:  # a real root daemon answered
                assert json.loads(ran.stdout)["socket"] != planted
    finally:
        answered = served(fake)
    assert answered == [], f"the planted daemon answered root: {answered}"
    # Named explicitly, the same socket is the user's choice: it is used.
    os.mkdir(os.path.join(short_dir, "nobody"), 0o755)
    os.chown(os.path.join(short_dir, "nobody"), NOBODY, NOBODY)
    fake = start_fake_daemon(as_nobody_argv, os.path.join(short_dir, "nobody", "n.sock"), canned)
    try:
        ran = netmonctl(os.path.join(short_dir, "nobody", "n.sock"), "conns", env={"HOME": home})
        assert ran.returncode == 0 and "FAKE-ROW" in ran.stdout, ran.stderr
    finally:
        assert served(fake)[-1] == "connections"


@needs_setpriv
def test_hole2_a_daemon_running_as_another_user_is_refused_by_its_credentials(start_daemon_thread, short_dir,
                                                                              as_nobody_argv):
    # Path checks alone are not enough: here the socket file and its directory
    # are root's, but the process listening on it is nobody's (it called listen()).
    d = start_daemon_thread()
    canned = canned_replies(d, short_dir)
    tmp = sticky_tmp(short_dir)
    home = os.path.join(short_dir, "roothome")
    os.mkdir(home, 0o700)
    os.mkdir(os.path.join(tmp, "netmon-0"), 0o700)
    path = os.path.join(tmp, "netmon-0", "netmond.sock")
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(path)
    fake = start_fake_daemon(as_nobody_argv, path, canned, listen_fd=bound.fileno())
    bound.close()
    try:
        ran = subprocess.run(netmonctl_cmd("status"), capture_output=True, text=True, timeout=60, cwd=REPO,
                             env=root_env(tmp, home))
        assert ran.returncode == 4, (ran.returncode, ran.stdout, ran.stderr)
        assert f"runs as uid {NOBODY}" in ran.stderr
    finally:
        answered = served(fake)
    assert answered == []


@needs_setpriv
def test_hole2_a_users_own_daemon_is_not_blocked_by_a_directory_another_user_made(short_dir, as_nobody_argv):
    # uid 12345 creates <tmp>/netmon-65534 first; nobody's own daemon and
    # netmonctl move to ~/.netmon together instead of failing.
    tmp = sticky_tmp(short_dir)
    home = os.path.join(short_dir, "nobodyhome")
    os.mkdir(home, 0o700)
    os.chown(home, NOBODY, NOBODY)
    squat = subprocess.run(["setpriv", "--reuid=12345", "--regid=12345", "--clear-groups",
                            "mkdir", "-m", "0777", os.path.join(tmp, f"netmon-{NOBODY}")], capture_output=True)
    assert squat.returncode == 0, squat.stderr
    env = {**nobody_env(TMPDIR=tmp, HOME=home)}
    daemon = subprocess.Popen([*as_nobody_argv, "-m", "netmond.main", "--backend", "portable", "--interval", "0.2"],
                              env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sock = os.path.join(home, ".netmon", "netmond.sock")
        wait_until(lambda: os.path.exists(sock) or daemon.poll() is not None, timeout=30)
        assert daemon.poll() is None, daemon.stdout.read()
        ran = subprocess.run([*as_nobody_argv, "-m", "netmonctl.cli", "status", "--json"], env=env, cwd="/",
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["socket"] == sock
    finally:
        daemon.terminate()
        daemon.wait(15)
        daemon.stdout.close()


# -- hole 6: the socket directory reached through another user's symlink -----------------------

@needs_setpriv
def test_hole6_a_socket_path_through_another_users_symlink_is_refused(start_daemon_process, short_dir,
                                                                       as_nobody_argv):
    tmp = sticky_tmp(short_dir)
    rootdir = os.path.join(short_dir, "rootdir")
    os.mkdir(rootdir, 0o755)
    link = os.path.join(tmp, "link")
    made = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "ln", "-s", rootdir, link], capture_output=True)
    assert made.returncode == 0 and os.lstat(link).st_uid == NOBODY
    d = start_daemon_process("--backend", "portable", socket_path=os.path.join(link, "n.sock"), wait=False)
    assert d.proc.wait(30) == 1, d.log()
    assert f"{link} is a symlink that belongs to uid {NOBODY}" in d.log(), d.log()
    assert "Traceback" not in d.log() and os.listdir(rootdir) == []
    # root's netmonctl refuses that path too, even named explicitly: the
    # link's owner could point it anywhere between two calls.
    real = start_daemon_process("--backend", "portable", socket_path=os.path.join(rootdir, "n.sock"))
    assert netmonctl(real.socket, "status").returncode == 0
    ran = netmonctl(os.path.join(link, "n.sock"), "status")
    assert ran.returncode == 4 and f"belongs to uid {NOBODY}" in ran.stderr, (ran.returncode, ran.stderr)
    # A root-owned symlink (like /var/run -> /run) is fine.
    os.symlink(rootdir, os.path.join(short_dir, "rootlink"))
    assert netmonctl(os.path.join(short_dir, "rootlink", "n.sock"), "status").returncode == 0


# -- hole 3: terminal escapes from a daemon ---------------------------------------------------

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"


@needs_setpriv
def test_hole3_no_string_from_a_daemon_reaches_the_terminal_raw(start_daemon_thread, short_dir, as_nobody_argv):
    d = start_daemon_thread()

    def hostile_rows(reply: dict) -> None:
        rows = reply["connections"] or []
        template = rows[0] if rows else {}
        reply["connections"] = [{**template, "process_name": "evil" + ESCAPES, "user": ESCAPES,
                                 "state": "ESTABLISHED" + ESCAPES}]

    canned = canned_replies(
        d, short_dir,
        status=lambda r: r.update(warnings=["look" + ESCAPES], version="9" + ESCAPES, backend=ESCAPES),
        connections=hostile_rows,
        apps=lambda r: r.update(apps=[{"process_name": "evil" + ESCAPES, "pids": [1], "connections": 1,
                                       "upload_speed": 0.0, "download_speed": 0.0, "bytes_sent": 1,
                                       "bytes_received": 2}]),
        stats=lambda r: r.update(top_app="evil" + ESCAPES),
    )
    with open(canned) as fh:
        data = json.load(fh)
    data["!control"] = {"code": "internal", "message": "no" + ESCAPES}
    with open(canned, "w") as fh:
        json.dump(data, fh)
    home = os.path.join(short_dir, "nobody")
    os.mkdir(home, 0o755)
    os.chown(home, NOBODY, NOBODY)
    path = os.path.join(home, "n.sock")
    fake = start_fake_daemon(as_nobody_argv, path, canned)
    try:
        for cmd in (["status"], ["conns"], ["apps"], ["stats"], ["conns", "--format", "csv"], ["apps", "--format", "csv"],
                    ["conns", "--json"], ["status", "--json"], ["stop"]):
            ran = netmonctl(path, *cmd)
            assert "\x1b" not in ran.stdout and "\x07" not in ran.stdout, (cmd, ran.stdout)
            assert "\x1b" not in ran.stderr and "\x07" not in ran.stderr, (cmd, ran.stderr)
            assert ran.returncode == (1 if cmd == ["stop"] else 0), (cmd, ran.returncode, ran.stderr)
        assert "look?]0;pwned??[2J?[31m" in netmonctl(path, "status").stdout
    finally:
        served(fake)


# -- hole 4: descriptor exhaustion through the metrics port --------------------------------------

FD_FLOOD = r"""
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    try:
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        pass
print(len(held), flush=True)
sys.stdin.readline()  # hold them, idle, until told to stop
"""


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@needs_setpriv
@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_hole4_idle_metrics_connections_never_exhaust_the_daemons_descriptors(start_daemon_process,
                                                                               as_nobody_argv):
    pytest.importorskip("prometheus_client")
    port = free_port()
    # 1,024 descriptors, hard limit included: raising the soft limit cannot help here.
    d = start_daemon_process("--backend", "portable", "--metrics-listen", f"127.0.0.1:{port}",
                             prefix=["prlimit", "--nofile=1024:1024", "--"])
    pid = d.proc.pid
    flood = subprocess.Popen([*as_nobody_argv, "-c", FD_FLOOD, str(port), "1016"], env=nobody_env(), cwd="/",
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        opened = int(flood.stdout.readline())
        assert opened > 0
        peak = open_fds(pid)
        for _ in range(5):  # while the flood holds its connections, root is served
            ran = netmonctl(d.socket, "status", "--json")
            assert ran.returncode == 0, ran.stderr
            peak = max(peak, open_fds(pid))
        assert peak < 200, f"{peak} descriptors open with {opened} idle metrics connections"
    finally:
        flood.stdin.close()
        flood.wait(30)
        flood.stdout.close()

    def scrape() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False
    assert wait_until(scrape, timeout=30)
    log = d.log()
    assert len(log) < 20_000 and "Traceback" not in log, log[-3000:]


@pytest.mark.skipif(shutil.which("prlimit") is None or not sys.platform.startswith("linux"),
                    reason="needs prlimit (util-linux)")
def test_hole4_the_soft_descriptor_limit_is_raised_to_the_hard_one(start_daemon_process):
    d = start_daemon_process("--backend", "portable", prefix=["prlimit", "--nofile=1024:4096", "--"])
    with open(f"/proc/{d.proc.pid}/limits") as fh:
        line = next(x for x in fh if x.startswith("Max open files"))
    assert line.split()[3:5] == ["4096", "4096"], line


# -- hole 5: root writing through another user's symlink ---------------------------------------------

# Watches the textfile's directory for the daemon's temporary names and
# plants a symlink to the victim under each one it sees (the old names,
# PATH.<pid>.<thread>, came back every tick).
SYMLINK_PLANTER = r"""
import os, sys, time
directory, name, victim, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
seen, planted = set(), 0
end = time.time() + seconds
while time.time() < end:
    for entry in os.listdir(directory):
        if entry != name and name in entry and not os.path.islink(os.path.join(directory, entry)):
            seen.add(entry)
    for entry in seen:
        try:
            os.symlink(victim, os.path.join(directory, entry))
            planted += 1
        except OSError:
            pass
    time.sleep(0.005)
print(len(seen), planted, flush=True)
"""


@needs_setpriv
def test_hole5_the_textfile_is_never_written_through_a_planted_symlink(start_daemon_process, short_dir,
                                                                       as_nobody_argv):
    pytest.importorskip("prometheus_client")
    tmp = sticky_tmp(short_dir)
    victim = os.path.join(short_dir, "victim")
    with open(victim, "w") as fh:
        fh.write("precious\n")
    os.chmod(victim, 0o600)
    textfile = os.path.join(tmp, "netmon.prom")
    d = start_daemon_process("--backend", "portable", "--metrics-textfile", textfile, "--interval", "0.1")
    wait_until(lambda: os.path.exists(textfile))
    planter = subprocess.run([*as_nobody_argv, "-c", SYMLINK_PLANTER, tmp, "netmon.prom", victim, "4"],
                             env=nobody_env(), cwd="/", capture_output=True, text=True, timeout=60)
    assert planter.returncode == 0, planter.stderr
    seen, planted = map(int, planter.stdout.split())
    with Client.connect(d.socket) as c:  # a few more ticks with the links in place
        ticks = c.call("status")["ticks"]
        wait_until(lambda: c.call("status")["ticks"] >= ticks + 3, timeout=20)
    assert open(victim).read() == "precious\n"
    st = os.lstat(textfile)
    assert os.path.isfile(textfile) and not os.path.islink(textfile) and st.st_uid == 0
    assert "netmon_build_info" in open(textfile).read()
    assert d.proc.poll() is None
    print(f"\nplanter saw {seen} temporary names and planted {planted} links; victim intact")


@needs_setpriv
def test_hole5_a_textfile_directory_others_control_is_refused_at_start(start_daemon_process, short_dir):
    pytest.importorskip("prometheus_client")
    open_dir = os.path.join(short_dir, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    d = start_daemon_process("--backend", "portable", "--metrics-textfile", os.path.join(open_dir, "n.prom"),
                             wait=False)
    assert d.proc.wait(30) == 1
    assert f"directory {open_dir} is writable by other users (mode 0777)" in d.log()
    # Sticky, like /tmp, but the file there is another user's: not replaced.
    tmp = sticky_tmp(short_dir)
    theirs = os.path.join(tmp, "n.prom")
    with open(theirs, "w") as fh:
        fh.write("theirs\n")
    os.chown(theirs, NOBODY, NOBODY)
    d = start_daemon_process("--backend", "portable", "--metrics-textfile", theirs, wait=False)
    assert d.proc.wait(30) == 1
    assert f"{theirs} belongs to uid {NOBODY}" in d.log() and "Traceback" not in d.log()
    assert open(theirs).read() == "theirs\n"


# -- smaller defects ---------------------------------------------------------------------------

def test_metrics_listen_is_parsed_strictly_and_listening_beyond_loopback_is_loud(start_daemon_process):
    pytest.importorskip("prometheus_client")
    for bad in ("0:9352", "1.2.3:9352", "[127.0.0.1]:9352", "::1:9352", "127.0.0.1:0", "host:port"):
        d = start_daemon_process("--backend", "portable", "--metrics-listen", bad, wait=False)
        assert d.proc.wait(30) == 2, (bad, d.log())
        assert "metrics_listen must be HOST:PORT" in d.log() and "Traceback" not in d.log()
    port = free_port()
    d = start_daemon_process("--backend", "portable", "--metrics-listen", f"0.0.0.0:{port}")
    assert f"metrics_listen 0.0.0.0:{port} accepts connections from other machines" in d.log()
    status = json.loads(netmonctl(d.socket, "status", "--json").stdout)
    assert any("served to other machines" in w for w in status["warnings"]), status["warnings"]
    shown = netmonctl(d.socket, "status").stdout
    assert f"Prometheus metrics are served to other machines on 0.0.0.0:{port}" in shown


# -- hole 7: control rights survive revocation ------------------------------------------------------

@pytest.fixture
def throwaway_group() -> Iterator[tuple[str, int]]:
    with helpers.throwaway_group() as group:
        yield group


# One connection, kept open: a control call, then (after a line on stdin) two more.
HELD_CONTROL = r"""
import sys
from common.client import Client
c = Client.connect(sys.argv[1])
def attempt(method, params):
    try:
        c.call(method, params)
        return "ok"
    except Exception as exc:
        return getattr(exc, "code", type(exc).__name__)
print(attempt("control", {"action": "stop"}), flush=True)
sys.stdin.readline()
print(attempt("control", {"action": "start"}), attempt("configure", {"interval": 0.5}), flush=True)
"""


@needs_setpriv
def test_hole7_control_rights_are_checked_per_call_against_the_current_config(start_daemon_process, short_dir,
                                                                              as_nobody_argv, throwaway_group):
    name, gid = throwaway_group
    config = os.path.join(short_dir, "netmond.toml")
    with open(config, "w") as fh:
        fh.write(f'socket_group = "{name}"\n')
    d = start_daemon_process("--backend", "portable", "--config", config)
    member = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={gid}",
                               sys.executable, "-c", HELD_CONTROL, d.socket], env=nobody_env(), cwd="/",
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert member.stdout.readline().split() == ["ok"]  # a member: may stop it
        with open(config, "w") as fh:
            fh.write("")  # socket_group removed
        d.proc.send_signal(__import__("signal").SIGHUP)
        wait_until(lambda: "socket_group" in d.log() and "config reloaded" in d.log(), timeout=20)
        member.stdin.write("again\n")
        member.stdin.flush()
        assert member.stdout.readline().split() == ["access_denied", "access_denied"]
    finally:
        member.stdin.close()
        member.wait(30)
        member.stdout.close()
        member.stderr.close()
    status = json.loads(netmonctl(d.socket, "status", "--json").stdout)
    assert status["monitoring"] is False and status["interval"] == 0.2  # nothing after the revocation


# -- hole 8: memory amplification ------------------------------------------------------------------

# `clients` connections each send one message and then stay, silent, never
# reading: "bomb" is 1 MiB of empty maps (a million objects, one byte each),
# "partial" 1 MiB less one byte of a message that never ends.
MEMORY_BOMB = r"""
import socket, sys, time
import msgpack
path, clients, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
inner = b"\xdc\x10\x00" + b"\x80" * 4096  # an array of 4096 empty maps
bomb = b"\x94\x00\x01" + msgpack.packb("hello") + b"\x91\xdc" + (255).to_bytes(2, "big") + inner * 255
if kind == "partial":
    # params: a string announced as 1,000,000 bytes, of which 999,000 come
    bomb = b"\x94\x00\x01" + msgpack.packb("hello") + b"\x91\xdb" + (1_000_000).to_bytes(4, "big") + b"x" * 999_000
held = []
for _ in range(clients):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    try:
        s.sendall(bomb)
    except OSError:
        pass
    held.append(s)
print(len(bomb), flush=True)
sys.stdin.readline()
"""


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


@needs_setpriv
@pytest.mark.parametrize("kind", ["bomb", "partial"])
def test_hole8_what_clients_send_never_amplifies_into_gigabytes(start_daemon_process, as_nobody_argv, kind):
    d = start_daemon_process("--backend", "portable", "--max-clients", "200")
    os.chmod(d.socket, 0o666)  # the attacker may connect (as a socket_group member could)
    before = rss_of(d.proc.pid)
    attack = subprocess.Popen([*as_nobody_argv, "-c", MEMORY_BOMB, d.socket, "64", kind], env=nobody_env(),
                              cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert int(attack.stdout.readline()) > 999_000
        time.sleep(1.0)  # let the daemon read everything it will read
        during = rss_of(d.proc.pid)
        assert netmonctl(d.socket, "status").returncode == 0
    finally:
        attack.stdin.close()
        attack.wait(30)
        attack.stdout.close()
    print(f"\n{kind}: rss {before / 2**20:.0f} MiB -> {during / 2**20:.0f} MiB with 64 clients")
    assert during - before < 100 * 2**20
    assert "Traceback" not in d.log()


@needs_setpriv
@pytest.mark.parametrize("depth", [1000, 100_000])  # below and beyond msgpack's own stack limit (1024)
def test_hole8_a_message_nested_a_thousand_deep_is_refused_without_a_traceback(start_daemon_thread, depth):
    d = start_daemon_thread()
    deep = b"\x94" + b"\x91" * depth + b"\x00" + b"\x01\xa1x\x90"  # kind = [[[...]]]
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(d.socket)
    with s:
        s.sendall(deep)
        u = __import__("msgpack").Unpacker(raw=False)
        while not (msgs := list(u)):
            chunk = s.recv(65536)
            assert chunk, "closed without a reply"
            u.feed(chunk)
    assert msgs[0][2]["code"] == "too_large" and "nested deeper" in msgs[0][2]["message"]
    with d.client() as c:
        assert c.call("status")["monitoring"] is True


# -- hole 9: subscribers that never read ------------------------------------------------------------

# `pairs` loopback connections, a byte each way on every one every 50 ms (so
# every row changes every tick), and 5 of them closed and reopened each round.
CHURN = r"""
import socket, sys, time
pairs, seconds = int(sys.argv[1]), float(sys.argv[2])
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(1024)
def pair():
    c = socket.create_connection(lst.getsockname()); s, _ = lst.accept()
    c.setblocking(False); s.setblocking(False)
    return [c, s]
conns = [pair() for _ in range(pairs)]
print("ready", flush=True)
end = time.time() + seconds
round_ = 0
while time.time() < end:
    for c, s in conns:
        try:
            c.send(b"x"); s.recv(4096); s.send(b"y"); c.recv(4096)
        except OSError:
            pass
    for i in range(5):
        k = (round_ * 5 + i) % pairs
        for x in conns[k]:
            x.close()
        conns[k] = pair()
    round_ += 1
    time.sleep(0.05)
"""

# 50 subscribers, each with its own filter (all of them matching every
# loopback row), that never read a byte.
DEAF_SUBSCRIBERS = r"""
import socket, sys
from common import protocol
path, count = sys.argv[1], int(sys.argv[2])
filters = [{"ip": f"127.0.0.0/{bits}"} for bits in range(8, 32)]
filters += [{**f, "family": 4} for f in filters] + [{"search": "127."}, {"search": "127.0"}]
held = []
for i in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(path)
    s.sendall(protocol.pack_request(1, "subscribe", {"topics": ["connection_update", "connection_closed"],
                                                     "filter": filters[i % len(filters)]}))
    held.append(s)
print("subscribed", flush=True)
sys.stdin.readline()
"""


@needs_setpriv
@pytest.mark.skipif(not linux_backend_works(), reason="needs the Linux backend (per-socket bytes)")
def test_hole9_subscribers_that_never_read_cannot_grow_the_daemon(start_daemon_process, as_nobody_argv, short_dir):
    d = start_daemon_process("--backend", "linux", "--interval", "0.1", "--max-clients", "200")
    os.chmod(d.socket, 0o666)
    churn = subprocess.Popen([*as_nobody_argv, "-c", CHURN, "300", "60"], env=nobody_env(), cwd="/",
                             stdout=subprocess.PIPE, text=True)
    deaf = None
    try:
        assert churn.stdout.readline().strip() == "ready"
        before = rss_of(d.proc.pid)
        deaf = subprocess.Popen([*as_nobody_argv, "-c", DEAF_SUBSCRIBERS, d.socket, "50"], env=nobody_env(),
                                cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert deaf.stdout.readline().strip() == "subscribed"
        with Client.connect(d.socket) as good:  # one subscriber that reads
            good.call("subscribe", {"topics": ["connection_update"], "filter": {"ip": "127.0.0.0/8"}})
            ticks = good.call("status")["ticks"]
            peak, received, lagged = before, 0, 0
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                note = good.next_notification(timeout=1)
                if note is not None:
                    received += note.method == "connection_update"
                    lagged += note.method == "lagged"
                peak = max(peak, rss_of(d.proc.pid))
            ticks = good.call("status")["ticks"] - ticks
        print(f"\nrss {before / 2**20:.0f} -> peak {peak / 2**20:.0f} MiB in 15 s with 50 deaf subscribers; "
              f"the reading subscriber got {received} updates in {ticks} ticks ({lagged} lagged)")
        # Every tick moves bytes on every connection: one update per tick.
        assert received >= max(3, ticks // 2)
        assert peak - before < 200 * 2**20
    finally:
        for p in (deaf, churn):
            if p is not None:
                if p.stdin:
                    p.stdin.close()
                stop(p)


# -- hole 10: one subscriber's filter stops everyone's updates ----------------------------------------

SUBSCRIBE_AS = r"""
import sys, json
from common.client import Client
c = Client.connect(sys.argv[1])
try:
    print(json.dumps(c.call("subscribe", {"topics": ["connection_update", "connection_closed", "stats_update"],
                                          "filter": {"search": sys.argv[2]}})), flush=True)
except Exception as exc:
    print(json.dumps({"error": getattr(exc, "code", type(exc).__name__), "message": str(exc)}), flush=True)
sys.stdin.readline()
"""


@needs_setpriv
def test_hole10_one_subscribers_filter_never_stops_the_others(start_daemon_process, as_nobody_argv, short_dir):
    pytest.importorskip("prometheus_client")
    textfile = os.path.join(short_dir, "n.prom")
    d = start_daemon_process("--backend", "portable", "--metrics-textfile", textfile)
    os.chmod(d.socket, 0o666)
    hostile = []
    try:
        for search in ("1" * 5000, "²", "1" * 11):
            p = subprocess.Popen([*as_nobody_argv, "-c", SUBSCRIBE_AS, d.socket, search], env=nobody_env(),
                                 cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            hostile.append(p)
            answer = json.loads(p.stdout.readline())
            if len(search) > 256:
                assert answer["error"] == "invalid_params" and "longer than 256" in answer["message"]
            else:
                assert "topics" in answer, answer
        with Client.connect(d.socket) as good:
            good.call("subscribe", {"topics": ["stats_update", "connection_update"]})
            with tcp_traffic():
                events = 0
                deadline = time.monotonic() + 15
                while events < 5 and time.monotonic() < deadline:
                    events += good.next_notification(timeout=2) is not None
        assert events >= 5, "the other subscribers got nothing"
        age = time.time() - os.stat(textfile).st_mtime
        assert age < 5, f"textfile stale for {age:.1f}s"
        assert "sample failed" not in d.log() and "Traceback" not in d.log(), d.log()[-3000:]
    finally:
        for p in hostile:
            p.stdin.close()
            stop(p)


@__import__("contextlib").contextmanager
def tcp_traffic() -> Iterator[None]:
    """A loopback connection moving a few bytes, so that rows change."""
    from tests.helpers import tcp_pair

    with tcp_pair() as (_lst, cli, srv):
        cli.sendall(b"x" * 1000)
        srv.recv(4096)
        yield


def test_config_that_is_a_fifo_a_directory_or_not_utf8_is_a_clean_error_at_start_and_at_sighup(
        start_daemon_process, short_dir):
    import signal

    fifo = os.path.join(short_dir, "fifo.toml")
    os.mkfifo(fifo)
    bad = os.path.join(short_dir, "bad.toml")
    with open(bad, "wb") as fh:
        fh.write(b'interval = "\xff"\n')
    cases = {fifo: "is not a regular file", short_dir: "is a directory: --config takes the TOML file",
             bad: "not UTF-8 text"}
    for path, needle in cases.items():
        d = start_daemon_process("--backend", "portable", "--config", path, wait=False)
        assert d.proc.wait(30) == 2, d.log()
        assert needle in d.log() and "Traceback" not in d.log(), d.log()
    config = os.path.join(short_dir, "netmond.toml")
    with open(config, "w") as fh:
        fh.write("interval = 0.2\n")
    d = start_daemon_process("--backend", "portable", "--config", config)
    for path, needle in cases.items():
        os.replace(config, config + ".ok") if os.path.exists(config) else None
        if os.path.isdir(path):
            os.mkdir(config)
        elif path == fifo:
            os.mkfifo(config)
        else:
            shutil.copy(path, config)
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: d.log().count("reload failed") >= list(cases).index(path) + 1, timeout=20)
        assert needle in d.log()
        assert netmonctl(d.socket, "status").returncode == 0  # never hung, still serving
        if os.path.isdir(config):
            os.rmdir(config)
        else:
            os.unlink(config)
    assert "Traceback" not in d.log() and "Exception in callback" not in d.log()


def test_socket_paths_that_cannot_work_are_refused_with_the_path_and_what_to_do(start_daemon_process, short_dir):
    # Issue 13 item 7, done here with the socket path checks.
    d = start_daemon_process("--backend", "portable", socket_path="/proc/x.sock", wait=False)
    assert d.proc.wait(30) == 1
    assert "cannot create the socket /proc/x.sock" in d.log() and "--socket PATH" in d.log()
    if os.geteuid() == 0 and shutil.which("setpriv"):
        ro = os.path.join(short_dir, "ro")
        os.mkdir(ro, 0o755)
        d = start_daemon_process("--backend", "portable", socket_path=os.path.join(ro, "n.sock"), wait=False,
                                 prefix=["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"])
        assert d.proc.wait(30) == 1
        assert f"directory {ro} is not writable by uid {NOBODY}" in d.log(), d.log()
        assert "Traceback" not in d.log()


SLOW_READERS = r"""
import socket, sys, time
from common import protocol
held = []
for _ in range(20):
    s = socket.socket(socket.AF_UNIX)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect(sys.argv[1])
    s.sendall(protocol.pack_request(1, "subscribe", {}))
    for i in range(50):
        s.sendall(protocol.pack_request(i + 2, "connections", {"include_closed": True}))
    held.append(s)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_sigterm_under_load_is_quiet_and_exits_0(start_daemon_process):
    import signal

    d = start_daemon_process("--backend", "portable", "--interval", "0.1")
    load = subprocess.Popen([sys.executable, "-c", SLOW_READERS, d.socket], env=nobody_env(), cwd="/",
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert load.stdout.readline().strip() == "ready"
        time.sleep(1)
        assert d.stop(signal.SIGTERM) == 0
    finally:
        load.stdin.close()
        stop(load)
    assert "Traceback" not in d.log() and "CancelledError" not in d.log(), d.log()[-3000:]
    assert d.log().rstrip().endswith("stopped")


# -- the client cap: another user holding every slot ---------------------------------------------

HOLD_SLOTS = r"""
import json, sys
from common.client import Client, DaemonUnavailable
from common.protocol import RPCError
held, refused = [], []
for _ in range(int(sys.argv[2])):
    c = Client.connect(sys.argv[1], timeout=5)
    try:
        c.call("hello", {})
        held.append(c)
    except (RPCError, DaemonUnavailable) as exc:
        refused.append(getattr(exc, "code", type(exc).__name__))
        c.close()
print(json.dumps({"held": len(held), "refused": refused}), flush=True)
sys.stdin.readline()  # hold them, idle, until told to stop
"""


@needs_setpriv
def test_another_user_holding_every_slot_never_locks_root_out(start_daemon_process, as_nobody_argv):
    # A socket group's member (here: anyone, mode 0666) may connect, but the
    # last slots of max_clients are root's and the daemon user's.
    d = start_daemon_process("--max-clients", "16")
    os.chmod(d.socket, 0o666)
    hog = subprocess.Popen([*as_nobody_argv, "-c", HOLD_SLOTS, d.socket, "20"], env=nobody_env(), cwd="/",
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        got = json.loads(hog.stdout.readline())
        assert got["held"] == 14, got  # 16 less the owner's 2
        assert got["refused"] == ["too_many_clients"] * 6, got
        for cmd in ("status", "conns", "apps"):
            ran = netmonctl(d.socket, cmd, "--json")
            assert ran.returncode == 0, (cmd, ran.stderr)
        with Client.connect(d.socket) as c1, Client.connect(d.socket) as c2:
            assert c2.call("status")["clients"] == 16
            with pytest.raises(Exception) as refused:  # root too is refused beyond the cap
                with Client.connect(d.socket, timeout=5) as c3:
                    c3.call("status")
            assert getattr(refused.value, "code", None) == "too_many_clients", refused.value
            assert c1.call("status")["clients"] == 16
    finally:
        hog.stdin.close()
        stop(hog)
