"""`usage` / `forget` params (netmond/usage/params.py) and the times they take
(common.units.parse_time): every bad value is refused naming the param."""

from __future__ import annotations

import time

import pytest

from common.units import parse_time
from netmond.usage.params import MAX_ROWS, ParamError, forget_before, group_keys, usage_query

NOW = time.mktime((2026, 12, 3, 15, 30, 0, 0, 0, -1))


@pytest.mark.parametrize("text, expected", [
    ("24h", NOW - 86400), ("7d", NOW - 7 * 86400), ("2w", NOW - 14 * 86400), ("30m", NOW - 1800),
    ("90s", NOW - 90), ("now", NOW), ("1700000000", 1700000000.0), (1700000000, 1700000000.0),
    ("today", time.mktime((2026, 12, 3, 0, 0, 0, 0, 0, -1))),
    ("yesterday", time.mktime((2026, 12, 2, 0, 0, 0, 0, 0, -1))),
    ("2026-12-01", time.mktime((2026, 12, 1, 0, 0, 0, 0, 0, -1))),
    ("2026-12-01 18:00", time.mktime((2026, 12, 1, 18, 0, 0, 0, 0, -1))),
    ("2026-12-01T18:00:30", time.mktime((2026, 12, 1, 18, 0, 30, 0, 0, -1))),
])
def test_times(text, expected):
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("bad", ["", "soon", "-1d", "7y", "2026-13-01", "inf", float("nan"), -5, True])
def test_bad_times_say_what_is_allowed(bad):
    with pytest.raises(ValueError, match="not a time"):
        parse_time(bad, NOW)


def test_by_takes_one_or_two_keys():
    assert group_keys(None) == ("app",)
    assert group_keys("day,app") == ("day", "app")
    assert group_keys(["Remote"]) == ("remote",)
    for bad, why in (("", "unknown key"), ("week", "unknown key"), ("app,app", "one or two different"),
                     ("day,hour", "not both"), ("app,day,remote", "one or two"), (3, "must be a string")):
        with pytest.raises(ParamError, match=why) as err:
            group_keys(bad)
        assert err.value.field == "by"


def test_usage_query_defaults_and_refusals():
    q = usage_query({}, NOW)
    assert (q["since"], q["until"], q["by"], q["limit"]) == (0.0, NOW, ("app",), MAX_ROWS)
    assert q["app_match"] is None and q["remote_match"] is None
    for params, field in (({"since": "soon"}, "since"), ({"until": [1]}, "until"),
                          ({"since": "1h", "until": "2h"}, "until"), ({"limit": 0}, "limit"),
                          ({"limit": True}, "limit"), ({"days": 3}, "days"),
                          ({"filter": {"pid": 1}}, "filter.pid"), ({"filter": {"port": 80}}, "filter.port"),
                          ({"filter": {"ip": "nonsense"}}, "filter.ip"), ({"filter": []}, "filter")):
        with pytest.raises(ParamError) as err:
            usage_query(params, NOW)
        assert err.value.field == field, (params, err.value)


def test_usage_filters_are_apps_and_remotes():
    q = usage_query({"filter": {"proc": "CUR", "ip": "10.0.0.0/8", "scope": "lan"}}, NOW)
    assert q["app_match"]("curl") and not q["app_match"]("ssh") and not q["app_match"](None)
    assert q["remote_match"]("10.1.2.3", None)
    assert not q["remote_match"]("192.168.1.1", None)  # lan, outside the network
    q = usage_query({"filter": {"scope": "internet"}}, NOW)
    assert q["remote_match"]("1.1.1.1", "one.one") and not q["remote_match"]("127.0.0.1", None)


def test_forget_before():
    assert forget_before({}, NOW) is None
    assert forget_before({"before": "2026-12-01"}, NOW) == time.mktime((2026, 12, 1, 0, 0, 0, 0, 0, -1))
    with pytest.raises(ParamError) as err:
        forget_before({"after": 1}, NOW)
    assert err.value.field == "after"
