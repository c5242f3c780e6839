"""netmond.resolver: reverse names without blocking, bounded, expiring; local
addresses only from the hosts file. Lookups are injected: no test sends a DNS query."""

from __future__ import annotations

import threading
import time

import pytest

from netmond.resolver import (
    ReverseResolver,
    clean_name,
    hosts_file_name,
    lookup_kind,
)
from tests.helpers import wait_until


class FakeDNS:
    """A lookup that records what it is asked and answers from a table."""

    def __init__(self, names: dict[str, str] | None = None, default: str | None = None) -> None:
        self.names = names or {}
        self.default = default
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, ip: str) -> str | None:
        with self.lock:
            self.asked.append(ip)
        return self.names.get(ip, self.default)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolved(r: ReverseResolver, ip: str) -> str | None:
    """Ask, wait for the lookup to finish, ask again."""
    r.name(ip)
    wait_until(lambda: r.in_flight() == 0, timeout=10)
    return r.name(ip)


@pytest.fixture
def hosts(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(
        "# comment\n"
        "127.0.0.1\tlocalhost loopy   # trailing comment\n"
        "127.0.0.1 second-line\n"
        "::1 ip6-localhost ip6-loopback\n"
        "fe80::1%eth0 router-ll\n"
        "169.254.9.9 linklocal-box\n"
        "10.0.0.7 nas.lan nas\n"
        "not-an-address foo\n"
        "192.0.2.9 bad\x1bname good-name\n"
    )
    return str(path)


def test_a_name_arrives_later_and_is_then_cached(hosts):
    dns = FakeDNS({"93.184.216.34": "example.com."})
    r = ReverseResolver(dns, hosts_path=hosts)
    assert r.name("93.184.216.34") is None  # asked, not known yet: never waits
    wait_until(lambda: r.name("93.184.216.34") == "example.com")  # trailing dot dropped
    for _ in range(5):
        assert r.name("93.184.216.34") == "example.com"
    assert dns.asked == ["93.184.216.34"]  # one lookup, then the cache


def test_loopback_and_link_local_are_named_by_the_hosts_file_only(hosts):
    dns = FakeDNS(default="from-dns.example")
    r = ReverseResolver(dns, hosts_path=hosts)
    assert resolved(r, "127.0.0.1") == "localhost"  # the first name of the first line
    assert resolved(r, "::1") == "ip6-localhost"
    assert resolved(r, "fe80::1") == "router-ll"
    assert resolved(r, "169.254.9.9") == "linklocal-box"
    assert resolved(r, "::ffff:127.0.0.1") == "localhost"  # mapped: asked as the IPv4 address
    # Local addresses the hosts file does not name have no name: no DNS query about them.
    assert resolved(r, "127.0.0.2") is None
    assert resolved(r, "169.254.1.1") is None
    assert resolved(r, "fe80::dead:beef") is None
    assert dns.asked == []
    # Other addresses go to the lookup (the system's: hosts file, then DNS).
    assert resolved(r, "10.0.0.7") == "from-dns.example"
    assert dns.asked == ["10.0.0.7"]


def test_addresses_without_a_name_to_ask_are_never_looked_up(hosts):
    dns = FakeDNS(default="x.example")
    r = ReverseResolver(dns, hosts_path=hosts)
    for ip in ("0.0.0.0", "::", "224.0.0.251", "ff02::1", "255.255.255.255", "not-an-ip", ""):
        assert resolved(r, ip) is None
    assert r.name(None) is None
    assert dns.asked == []
    assert lookup_kind("::ffff:8.8.8.8") == ("dns", "8.8.8.8")
    assert lookup_kind("fe80::1%eth0") == ("hosts", "fe80::1%eth0")


def test_the_real_hosts_file_names_127_0_0_1_as_the_system_does():
    # What the integration tests rely on; whatever this machine's /etc/hosts says.
    import socket

    expected = hosts_file_name("127.0.0.1")
    if expected is None:
        pytest.skip("/etc/hosts does not name 127.0.0.1 here")
    assert socket.gethostbyaddr("127.0.0.1")[0] == expected
    r = ReverseResolver(FakeDNS())
    assert resolved(r, "127.0.0.1") == expected


def test_names_expire_after_the_ttl_and_no_name_after_the_negative_ttl(hosts):
    clock = Clock()
    dns = FakeDNS({"198.51.100.1": "a.example"})
    r = ReverseResolver(dns, hosts_path=hosts, ttl=3600, negative_ttl=300, clock=clock)
    assert resolved(r, "198.51.100.1") == "a.example"
    assert resolved(r, "198.51.100.2") is None  # no name: cached too
    assert len(dns.asked) == 2
    clock.now += 299
    assert r.name("198.51.100.1") == "a.example" and r.name("198.51.100.2") is None
    assert len(dns.asked) == 2  # both still fresh
    clock.now += 2  # past the negative TTL only
    dns.names["198.51.100.2"] = "b.example"
    assert resolved(r, "198.51.100.2") == "b.example"
    assert resolved(r, "198.51.100.1") == "a.example"
    assert dns.asked.count("198.51.100.1") == 1
    clock.now += 3600  # past the positive TTL
    dns.names["198.51.100.1"] = "renamed.example"
    # Expired: the old name is still shown while the new lookup runs, then replaced.
    assert r.name("198.51.100.1") == "a.example"
    wait_until(lambda: r.name("198.51.100.1") == "renamed.example")
    assert dns.asked.count("198.51.100.1") == 2


def test_a_hanging_resolver_never_blocks_and_stays_bounded(hosts):
    """A lookup that sleeps 30 s: 10,000 distinct addresses asked several
    times each cost the caller microseconds per call; lookups in flight,
    threads and cache stay within their caps."""
    release = threading.Event()
    started = []

    def hang(ip: str) -> str | None:
        started.append(ip)
        release.wait(30)
        return "late.example"

    r = ReverseResolver(hang, hosts_path=hosts, workers=4, max_in_flight=64, max_cache=1000)
    ips = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(10_000)]
    try:
        t0 = time.perf_counter()
        for _ in range(3):  # three "ticks" worth of reads
            for ip in ips:
                assert r.name(ip) is None
        elapsed = time.perf_counter() - t0
        # 30,000 calls; a call that waited on the lookup would take 30 s.
        assert elapsed < 5, elapsed
        wait_until(lambda: len(started) == 4)
        assert r.in_flight() == 64
        assert r.threads() == 4
        assert r.cached() == 0
    finally:
        release.set()
    wait_until(lambda: r.in_flight() == 0)
    assert r.cached() == 64  # the 64 asked: each answered once
    assert r.lookups == 64
    r.close()


def test_the_cache_stays_bounded_under_10000_distinct_addresses(hosts):
    dns = FakeDNS(default="host.example")
    r = ReverseResolver(dns, hosts_path=hosts, workers=1, max_cache=1000, max_in_flight=10_000)
    ips = [f"2001:db8::{i:x}" for i in range(10_000)]
    for ip in ips:
        r.name(ip)
        assert r.cached() <= 1000
    wait_until(lambda: r.in_flight() == 0)
    assert r.lookups == 10_000
    assert r.cached() == 1000
    # The newest stay (one worker: answered in the order asked): served from the cache.
    asked = len(dns.asked)
    assert all(r.name(ip) == "host.example" for ip in ips[-1000:])
    assert len(dns.asked) == asked
    r.close()


def test_a_lookup_that_raises_is_no_name_and_the_workers_live_on(hosts):
    def flaky(ip: str) -> str | None:
        if ip == "198.51.100.66":
            raise RuntimeError("resolver library bug")
        return "ok.example"

    r = ReverseResolver(flaky, hosts_path=hosts, workers=1)
    assert resolved(r, "198.51.100.66") is None
    assert resolved(r, "198.51.100.67") == "ok.example"
    assert r.failures == 1 and r.lookups == 2


@pytest.mark.parametrize("answer", [
    "evil\x1b[2Jname.example", "tab\tname", "a" * 254, "", ".", "spa ce.example", "naïve.example", 42, None,
])
def test_hostile_or_empty_answers_are_no_name(hosts, answer):
    r = ReverseResolver(lambda ip: answer, hosts_path=hosts)
    assert resolved(r, "198.51.100.9") is None


def test_clean_name_keeps_ordinary_names():
    assert clean_name("ec2-52-1-2-3.compute-1.amazonaws.com.") == "ec2-52-1-2-3.compute-1.amazonaws.com"
    assert clean_name("_gateway") == "_gateway"
    assert clean_name("x" * 253) == "x" * 253


def test_hosts_file_lines_that_are_not_names_are_skipped(hosts, tmp_path):
    assert hosts_file_name("192.0.2.9", hosts) == "good-name"  # the escape-laden alias skipped
    assert hosts_file_name("10.0.0.7", hosts) == "nas.lan"
    assert hosts_file_name("127.0.0.1", str(tmp_path / "missing")) is None
    assert hosts_file_name("not-an-ip", hosts) is None


def test_after_close_nothing_more_is_looked_up(hosts):
    dns = FakeDNS(default="x.example")
    r = ReverseResolver(dns, hosts_path=hosts)
    assert resolved(r, "198.51.100.1") == "x.example"
    r.close()
    assert r.name("198.51.100.2") is None
    time.sleep(0.05)
    assert dns.asked == ["198.51.100.1"]


def test_10000_cached_names_cost_a_few_megabytes():
    """The figure of the README: the cache's memory at 10,000 names of a
    typical length (cloud PTR names, ~45 characters), the address strings
    counted too (the cache outlives the rows that brought them)."""
    import gc
    import tracemalloc

    r = ReverseResolver(lambda ip: f"ec2-{ip.replace('.', '-')}.compute-1.amazonaws.com",
                        max_in_flight=10_000)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(10_000):
            r.name(f"52.{i >> 8 & 255}.{i & 255}.{i * 7 & 255}")
        wait_until(lambda: r.in_flight() == 0)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert r.cached() == 10_000
    print(f"10,000 cached names: {grown / 1e6:.2f} MB ({grown / 10_000:.0f} B each)")
    assert grown < 4_000_000
