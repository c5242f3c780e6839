"""The RPC handlers against the narrow interface they are given
(handlers.DaemonInterface, handlers.Session), without a daemon or a socket:
what they check, what they change, and that the real Daemon and
ClientSession provide every member the handlers use."""

from __future__ import annotations

from typing import cast

import pytest

from common import api, protocol
from common.models import Filter
from common.protocol import RPCError
from netmond import handlers
from netmond.app import Daemon
from netmond.backends.base import Backend
from netmond.config import build_config
from netmond.server import ClientSession, LogBudget, Policy
from netmond.usage.recorder import UsageUnavailable


class FakeDaemon:
    """A DaemonInterface that records what the handlers ask of it."""

    backend_name = "fake"

    def __init__(self, effective: float | None = None) -> None:
        self.monitoring = True
        self.interval = 1.0
        self.effective = effective
        self.cleared = 0

    def capabilities(self) -> list[str]:
        return ["connections"]

    def effective_interval(self) -> float | None:
        return self.effective

    def set_monitoring(self, on: bool) -> None:
        self.monitoring = on

    def set_interval(self, interval: float) -> None:
        self.interval = interval

    def clear(self) -> None:
        self.cleared += 1

    async def usage(self, query: dict) -> list:
        self.asked = query
        if getattr(self, "unavailable", None):
            raise UsageUnavailable(self.unavailable)
        return [{"app": "curl", "bytes_sent": 1, "bytes_received": 2}]

    async def forget_usage(self, before: float | None) -> int:
        self.forgot = before
        return 3


class FakeSession:
    def __init__(self, may_control: bool) -> None:
        self.may_control = may_control
        self.topics: set[str] = set()

    def subscribe(self, topics: list[str], flt: Filter) -> None:
        self.topics.update(topics)

    def unsubscribe(self, topics: list[str]) -> None:
        self.topics.difference_update(topics)


def call(method: str, params: dict, daemon: FakeDaemon, may_control: bool = True):
    # FakeDaemon has the members these handlers use, not the queries of the others.
    return handlers.bind(cast(handlers.DaemonInterface, daemon))[method](params, FakeSession(may_control))


def test_control_and_configure_need_control_rights_and_change_nothing_without():
    daemon = FakeDaemon()
    for method, params in ((api.CONTROL, {"action": api.STOP}), (api.CONTROL, {"action": api.CLEAR}),
                           (api.CONFIGURE, {"interval": 5})):
        with pytest.raises(RPCError) as err:
            call(method, params, daemon, may_control=False)
        assert err.value.code == protocol.ACCESS_DENIED
    assert daemon.monitoring and daemon.interval == 1.0 and daemon.cleared == 0
    assert call(api.CONTROL, {"action": api.STOP}, daemon) == {"monitoring": False}
    assert call(api.CONTROL, {"action": api.CLEAR}, daemon) == {"monitoring": False} and daemon.cleared == 1


def test_configure_checks_the_contracts_bounds_and_names_the_effective_interval_only_when_it_differs():
    daemon = FakeDaemon()
    for bad in (api.INTERVAL_MIN / 2, api.INTERVAL_MAX + 1, "1", True):
        with pytest.raises(RPCError) as err:
            call(api.CONFIGURE, {"interval": bad}, daemon)
        assert err.value.code == protocol.INVALID_PARAMS and err.value.message.startswith("interval: ")
    assert call(api.CONFIGURE, {"interval": 2}, daemon) == {"interval": 2.0}
    daemon.effective = 3.0  # nettop samples at whole seconds
    assert call(api.CONFIGURE, {"interval": 2.5}, daemon) == {"interval": 2.5, "effective_interval": 3.0}


def test_hello_reports_the_backend_through_the_interface():
    result = call(api.HELLO, {"client_version": "x"}, FakeDaemon())
    assert (result["backend"], result["capabilities"], result["protocol"]) == (
        "fake", ["connections"], protocol.PROTOCOL_VERSION)


def test_usage_checks_its_params_then_awaits_the_store():
    import asyncio

    daemon = FakeDaemon()
    result = asyncio.run(call(api.USAGE, {"since": "7d", "by": "day,app", "filter": {"proc": "cu"}}, daemon))
    assert result["usage"] == [{"app": "curl", "bytes_sent": 1, "bytes_received": 2}]
    assert result["until"] - result["since"] == pytest.approx(7 * 86400, abs=5)
    assert daemon.asked["by"] == ("day", "app") and daemon.asked["app_match"]("curl")
    for params, field in (({"by": "week"}, "by"), ({"filter": {"pid": 1}}, "filter.pid"), ({"x": 1}, "x")):
        with pytest.raises(RPCError) as err:
            call(api.USAGE, params, daemon)  # refused before anything is awaited
        assert err.value.code == protocol.INVALID_PARAMS and err.value.message.startswith(field + ": ")
    daemon.unavailable = "not storing usage (the disk is full)"
    with pytest.raises(RPCError) as err:
        asyncio.run(call(api.USAGE, {}, daemon))
    assert err.value.code == protocol.UNAVAILABLE and "disk is full" in err.value.message


def test_forget_needs_control_rights():
    import asyncio

    daemon = FakeDaemon()
    with pytest.raises(RPCError) as err:
        call(api.FORGET, {}, daemon, may_control=False)
    assert err.value.code == protocol.ACCESS_DENIED and not hasattr(daemon, "forgot")
    assert asyncio.run(call(api.FORGET, {"before": 1000}, daemon)) == {"deleted": 3} and daemon.forgot == 1000


def test_the_bound_table_serves_every_method():
    assert set(handlers.bind(cast(handlers.DaemonInterface, FakeDaemon()))) == set(handlers.HANDLERS) == set(api.METHODS)


def _members(proto: type) -> set[str]:
    return {name for name in vars(proto) if not name.startswith("_")}


def test_the_daemon_and_the_session_provide_every_member_handlers_may_use():
    daemon = Daemon(build_config(), backend=Backend())
    policy = Policy(max_clients=1, client_idle_timeout=1.0, subscriber_queue=1, control_gid=None)
    session = ClientSession(policy, {}, None, None, None, LogBudget())
    for proto, real in ((handlers.DaemonInterface, daemon), (handlers.Session, session)):
        assert _members(proto) and not {name for name in _members(proto) if not hasattr(real, name)}


class RowsDaemon(FakeDaemon):
    """A FakeDaemon with two rows, recording what remote_usage is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = [{"remote_ip": "192.0.2.1", "remote_host": "a.example", "pid": 1},
                     {"remote_ip": "192.0.2.2", "remote_host": None, "pid": 2}]
        self.asked: list[tuple[list, bool]] = []

    def connections(self, include_closed: bool) -> list:
        assert include_closed  # remotes count the retained closed rows too
        return self.rows

    def remote_usage(self, rows, by_port: bool = False) -> list:
        self.asked.append((list(rows), by_port))
        return []


def test_remotes_filters_the_rows_and_passes_by_port():
    daemon = RowsDaemon()
    assert call(api.REMOTES, {}, daemon) == {"remotes": []}
    assert call(api.REMOTES, {"filter": {"host": "A.EX"}, "by_port": True}, daemon) == {"remotes": []}
    assert daemon.asked == [(daemon.rows, False), ([daemon.rows[0]], True)]
    for params, field in (({"by_port": 1}, "by_port"), ({"filter": {"host": ""}}, "filter.host"), ({"x": 1}, "x")):
        with pytest.raises(RPCError) as err:
            call(api.REMOTES, params, daemon)
        assert err.value.code == protocol.INVALID_PARAMS and err.value.message.startswith(field + ": ")
    assert len(daemon.asked) == 2
