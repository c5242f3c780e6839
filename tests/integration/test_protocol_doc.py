"""docs/PROTOCOL.md is complete and true: every method of the dispatch table,
every error code, topic, field, filter key, capability and limit is in it,
and its examples run against a real daemon as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from common import api, models, protocol
from common.models import (
    APP_FIELDS, CONNECTION_FIELDS, HISTORY_FIELDS, INTERFACE_FIELDS, REMOTE_FIELDS, STATS_FIELDS, Filter,
)
from netmond.backends.base import Backend
from netmond.config import Config
from netmond import server
from netmond.handlers import HANDLERS
from tests.helpers import REPO

DOC = (REPO / "docs" / "PROTOCOL.md").read_text()


def section(number: int) -> str:
    """The text of '## N. ...' up to the next '## '."""
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", DOC, re.M | re.S)
    assert match, f"no section {number} in docs/PROTOCOL.md"
    return match.group(0)


def table_keys(text: str) -> set[str]:
    """The `names` in the first column of the markdown tables in text."""
    return {name for cell in re.findall(r"^\| ([^|]+) \|", text, re.M) for name in re.findall(r"`(\w+)`", cell)}


def named(text: str) -> set[str]:
    """Every `name` in text."""
    return set(re.findall(r"`(\w+)`", text))


def test_the_documented_methods_are_the_dispatch_table():
    documented = set(re.findall(r"^### (\w+)$", section(6), re.M))
    assert documented == set(HANDLERS)


def test_every_error_code_is_documented_and_no_other():
    assert table_keys(section(5)) == set(protocol.ERROR_CODES)


def test_every_topic_lagged_and_chunk_is_documented():
    assert table_keys(section(7)) == set(protocol.TOPICS) | {protocol.LAGGED, protocol.CONNECTIONS_CHUNK}


@pytest.mark.parametrize("names", [CONNECTION_FIELDS, APP_FIELDS, REMOTE_FIELDS, STATS_FIELDS, INTERFACE_FIELDS,
                                   HISTORY_FIELDS, tuple(api.UsageRow.__annotations__)],
                         ids=["Connection", "AppUsage", "RemoteUsage", "Stats", "Interface", "HistoryPoint", "UsageRow"])
def test_every_field_of_the_data_model_is_documented(names):
    assert set(names) - named(section(8)) == set()


def test_every_filter_key_is_documented():
    keys = {f.name for f in fields(Filter) if not f.name.startswith("_")}
    filter_part = section(8).split("### Filter", 1)[1]
    assert table_keys(filter_part) == keys


def test_every_capability_is_documented():
    class Full(Backend):
        per_socket_bytes = True

    # The backend's, and the daemon's own: "usage" while it stores usage.
    assert table_keys(section(4)) == set(Full().capabilities()) | {"usage"}


def test_the_documented_limits_are_the_codes():
    limits = section(3)
    assert protocol.MAX_BUFFER_SIZE == 1024 * 1024 and "1 MiB" in limits
    assert f"| {protocol.MAX_ARRAY_LEN} |" in limits and f"| {protocol.MAX_MAP_LEN} entries |" in limits
    assert f"| {protocol.MAX_OBJECTS} |" in limits and f"| {protocol.MAX_DEPTH} levels |" in limits
    assert f"| {models.MAX_FILTER_TEXT} characters |" in limits
    assert (f"| {server._BUFFERED_CAP // 2**20} MiB (a client holding more than "
            f"{server._BUFFERED_SMALL // 1024} KiB of one is the one dropped) |") in limits
    assert (f"and {server._QUEUE_BYTES // 2**20} MiB (queue and socket buffer; "
            f"{server._QUEUE_BYTES_TOTAL // 2**20} MiB for all subscribers;") in limits
    assert f"| {server._LAG_GRACE:g} s (or the idle timeout if shorter) |" in limits
    defaults = Config()
    assert f"`client_idle_timeout`, {defaults.client_idle_timeout:g} s" in limits
    assert f"`max_clients`, {defaults.max_clients}," in limits
    assert f"`subscriber_queue`, {defaults.subscriber_queue} notifications" in limits
    assert f"today **{protocol.PROTOCOL_VERSION}**" in section(4)


def test_every_field_of_hello_and_status_is_documented(start_daemon_thread):
    d = start_daemon_thread()
    with d.client() as c:
        hello, status = c.call("hello"), c.call("status")
    methods = section(6)
    hello_part = methods.split("### hello", 1)[1].split("### ", 1)[0]
    status_part = methods.split("### status", 1)[1].split("### ", 1)[0]
    assert set(hello) - named(hello_part) == set()
    assert set(status) == table_keys(status_part)


def test_the_code_points_to_the_documents_and_the_readme_links_them():
    for path in [*REPO.glob("common/*.py"), *REPO.glob("netmond/**/*.py"), *REPO.glob("netmonctl/**/*.py")]:
        text = path.read_text()
        assert "DESIGN §" not in text.replace("docs/DESIGN.md §", ""), f"{path}: cites a document not in the repo"
        for doc, number in re.findall(r"docs/(PROTOCOL|DESIGN)\.md §(\d+)", text):
            body = (REPO / "docs" / f"{doc}.md").read_text()
            assert re.search(rf"^## {number}\. ", body, re.M), f"{path}: docs/{doc}.md has no section {number}"
    readme = (REPO / "README.md").read_text()
    assert "(docs/PROTOCOL.md)" in readme and "(docs/DESIGN.md)" in readme


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section(10), re.M | re.S)


def test_the_documents_examples_run_as_written(start_daemon_thread):
    d = start_daemon_thread(include_loopback=True)
    bin_dir = str(Path(sys.executable).parent)  # python3 with msgpack, and netmonctl
    env = {**os.environ, "NETMON_SOCKET": d.socket, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    python, pynvim_example = code_blocks("python")
    out = subprocess.run([sys.executable, "-c", python], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"protocol {protocol.PROTOCOL_VERSION}\n")
    assert re.search(r"^bandwidth_data \{'timestamp': [\d.]+, 'upload': ", out.stdout, re.M), out.stdout

    (shell,) = code_blocks("sh")
    out = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    with d.client() as c:  # stats' top_app: one of the apps, or None when nothing moved
        assert out.stdout.strip() in {a["process_name"] for a in c.call("apps")["apps"]} | {"None"}

    pytest.importorskip("pynvim", reason="pynvim (test extra) is not installed")
    out = subprocess.run([sys.executable, "-c", pynvim_example], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) >= 0
