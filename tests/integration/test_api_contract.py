"""common.api is the contract both sides keep: the dispatch table serves its
methods, every typed client method returns what its TypedDict describes, the
notifications carry their payload types, and netmonctl names methods and
topics through it only."""

from __future__ import annotations

import re
import socket
import time
from typing import get_type_hints

import pytest

from common import api, models, protocol
from common.protocol import RPCError
from netmond.handlers import HANDLERS
from tests.helpers import REPO, tcp_pair, wait_until


def keys(typed_dict: type) -> set[str]:
    return set(get_type_hints(typed_dict))


def test_the_dispatch_table_serves_exactly_the_contracts_methods():
    assert set(HANDLERS) == set(api.METHODS)
    assert protocol.TOPICS is api.TOPICS and protocol.ERROR_CODES is api.ERROR_CODES


def test_the_models_field_tuples_are_the_typed_dicts_in_order():
    assert models.CONNECTION_FIELDS == tuple(api.Connection.__annotations__)
    assert models.REMOTE_FIELDS == tuple(api.RemoteUsage.__annotations__)
    assert models.STATS_FIELDS[0] == "total_upload_speed" and "top_app" in models.STATS_FIELDS
    assert keys(api.FilterMap) == {
        f for f in models.Filter.__dataclass_fields__ if not f.startswith("_")}


def test_every_typed_method_returns_its_typed_dict(start_daemon_thread):
    d = start_daemon_thread(include_loopback=True)
    with d.client() as c, tcp_pair() as (_, cli, _srv):
        port = cli.getsockname()[1]
        assert set(c.hello()) == keys(api.HelloResult)
        assert set(c.status()) == keys(api.Status)
        stats = c.stats()
        assert set(stats) == keys(api.Stats)
        assert all(set(i) == keys(api.Interface) for i in stats["interfaces"])
        rows = wait_until(lambda: c.connections({"port": port})["connections"])
        assert all(set(r) == keys(api.Connection) for r in rows)
        some = c.connections({"port": port}, include_closed=True, fields=["id", "local_port"])["connections"]
        assert some and all(set(r) == {"id", "local_port"} for r in some)
        apps = c.apps()["apps"]
        assert apps and all(set(a) == keys(api.AppUsage) for a in apps)
        assert set(c.apps({"pid": 999_999_999})) == keys(api.AppsResult)
        remotes = c.remotes()["remotes"]
        assert remotes and all(set(r) == keys(api.RemoteUsage) for r in remotes)
        assert all(set(r) == keys(api.RemoteUsage) for r in c.remotes({"port": port}, by_port=True)["remotes"])
        assert set(c.remotes({"pid": 999_999_999})) == keys(api.RemotesResult)
        history = wait_until(lambda: c.bandwidth_history(5)["history"])
        assert all(set(p) == keys(api.HistoryPoint) for p in history)
        assert set(c.bandwidth_history()) == keys(api.BandwidthHistoryResult)
        assert c.control(api.STOP) == {"monitoring": False}
        assert c.control(api.START) == {"monitoring": True}
        assert set(c.configure(0.3)) <= keys(api.ConfigureResult) and c.status()["interval"] == 0.3
        listener = socket.create_server(("127.0.0.1", 0))
        with listener:
            new_port = listener.getsockname()[1]
            assert c.subscribe([api.STATS_UPDATE, api.CONNECTION_UPDATE], {"port": new_port}) == {
                "topics": sorted([api.STATS_UPDATE, api.CONNECTION_UPDATE])}
            # A connection opened after subscribing: new rows, so connection_update.
            with socket.create_connection(("127.0.0.1", new_port)) as late, listener.accept()[0]:
                seen: dict[str, dict] = {}
                deadline = time.monotonic() + 10
                while len(seen) < 2 and time.monotonic() < deadline:
                    note = c.next_notification(timeout=2)
                    if note is not None:
                        seen.setdefault(note.method, note.payload)
                assert late.fileno() >= 0
        assert set(seen[api.STATS_UPDATE]) == keys(api.Stats)
        assert set(seen[api.CONNECTION_UPDATE]) == keys(api.ConnectionsPayload)
        assert c.unsubscribe([api.STATS_UPDATE]) == {"topics": [api.CONNECTION_UPDATE]}
        assert c.unsubscribe() == {"topics": []}
        used = c.usage(since="1h", by="day,app")
        assert set(used) == keys(api.UsageResult)
        assert all(set(r) == {"day", "app", "bytes_sent", "bytes_received"} for r in used["usage"])
        by_remote = c.usage(by="remote")["usage"]
        assert all(set(r) <= keys(api.UsageRow) for r in by_remote)
        assert set(c.forget(before="30d")) == keys(api.ForgetResult)
        with pytest.raises(RPCError) as err:
            c.bandwidth_history(-1)
        assert err.value.code == api.INVALID_PARAMS


def test_netmonctl_names_methods_and_topics_only_through_the_contract():
    quoted = "|".join([*api.METHODS, *api.TOPICS, api.LAGGED])
    for path in (REPO / "netmonctl").rglob("*.py"):
        code = path.read_text()
        assert not re.search(r"\.call\(\s*[\"']", code), f"{path}: a method named by a string literal"
        for line in code.splitlines():
            stripped = line.strip()
            if stripped.startswith(("#", "netmonctl ")) or "jq " in line:
                continue  # comments and help-text examples
            hit = re.search(rf"(==|!=|in \(|\[|\()\s*[\"']({quoted})[\"']", line)
            assert not (hit and hit.group(2) in (*api.TOPICS, api.LAGGED)), f"{path}: {line.strip()}"
