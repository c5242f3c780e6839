"""EbpfAttribution on a fake probe: joins, final reads then deletion, eviction resets, full maps."""

from __future__ import annotations

import socket

from netmond.backends.ebpf.attribution import OWNER_GRACE_TICKS, EbpfAttribution
from netmond.backends.ebpf.loader import OWNERS_CAPACITY, RELEASED, Owner, UdpCounts


class FakeProbe:
    """The maps as dicts; records what was deleted."""

    def __init__(self) -> None:
        self.owner_map: dict[int, Owner] = {}
        self.udp_map: dict[int, UdpCounts] = {}
        self.deleted_owners: list[int] = []
        self.deleted_udp: list[int] = []
        self.fail = False
        self.closed = False

    def owner_records(self):
        if self.fail:
            raise OSError(5, "EIO")
        return {cookie: (o.pid, o.uid, RELEASED if o.released else 0, 0, o.comm.encode().ljust(16, b"\0"))
                for cookie, o in self.owner_map.items()}

    def udp_counts(self):
        return dict(self.udp_map)

    def delete_owners(self, cookies):
        cookies = list(cookies)
        self.deleted_owners += cookies
        for c in cookies:
            self.owner_map.pop(c, None)
        return len(cookies)

    def delete_udp(self, cookies):
        cookies = list(cookies)
        self.deleted_udp += cookies
        for c in cookies:
            self.udp_map.pop(c, None)
        return len(cookies)

    def close(self):
        self.closed = True


def udp(sent: int, received: int, released: bool = False) -> UdpCounts:
    return UdpCounts(sent, received, 1, 1, released, socket.AF_INET, bytes(16), bytes(16), 5000, 0)


def test_owner_of_a_released_socket_is_deleted_once_no_dump_lists_it_and_kept_a_few_ticks():
    probe = FakeProbe()
    probe.owner_map = {1: Owner(10, 0, "curl", True), 2: Owner(11, 0, "sshd", True), 3: Owner(12, 0, "x", False)}
    att = EbpfAttribution(probe)
    att.refresh()
    att.finish_tick(live={2}, ended=[])
    # 1: released and gone -> deleted; 2: released but still listed (FIN_WAIT) -> kept; 3: open -> kept.
    assert probe.deleted_owners == [1]
    for _ in range(OWNER_GRACE_TICKS - 1):
        att.refresh()
        assert att.owner(1) == Owner(10, 0, "curl", True)  # a late destroy event still finds it
        att.finish_tick(live={2}, ended=[])
    att.refresh()
    att.finish_tick(live={2}, ended=[])
    assert att.owner(1) is None
    assert att.owner(2).comm == "sshd" and att.owner(3).comm == "x"


def test_owner_of_an_ended_tcp_socket_is_deleted_even_before_release():
    probe = FakeProbe()
    probe.owner_map = {7: Owner(1, 0, "a", False)}
    att = EbpfAttribution(probe)
    att.refresh()
    att.finish_tick(live=set(), ended=[7])
    assert probe.deleted_owners == [7]


def test_closed_udp_reports_final_counts_then_deletes():
    probe = FakeProbe()
    probe.udp_map = {5: udp(100, 50), 6: udp(300, 0, released=True), 8: udp(1, 1, released=True)}
    att = EbpfAttribution(probe)
    att.refresh()
    assert att.udp_bytes(5) == (100, 50)
    closed = att.closed_udp(live={5, 8})  # 8: released, but the dump still listed it (race)
    assert [(c, b) for c, _, b in closed] == [(6, (300, 0))]
    att.finish_tick(live={5, 8}, ended=[])
    assert probe.deleted_udp == [6]
    att.refresh()
    assert [(c, b) for c, _, b in att.closed_udp(live={5})] == [(8, (1, 1))]


def test_while_paused_closed_udp_sockets_are_forgotten_not_reported_at_resume():
    probe = FakeProbe()
    probe.udp_map = {5: udp(100, 0), 6: udp(300, 0, released=True)}
    att = EbpfAttribution(probe)
    att.discard_released()
    assert probe.deleted_udp == [6] and set(probe.udp_map) == {5}
    att.refresh()
    assert att.closed_udp(live={5}) == []


def test_a_socket_without_an_entry_moved_nothing_since_start():
    att = EbpfAttribution(FakeProbe())
    att.refresh()
    assert att.udp_bytes(42) == (0, 0)


def test_an_evicted_entry_that_restarts_from_zero_never_makes_the_counter_go_back():
    probe = FakeProbe()
    att = EbpfAttribution(probe)
    probe.udp_map = {9: udp(1000, 400)}
    att.refresh()
    assert att.udp_bytes(9) == (1000, 400)
    probe.udp_map = {}  # evicted by the kernel (LRU)
    att.refresh()
    assert att.udp_bytes(9) == (1000, 400)
    probe.udp_map = {9: udp(10, 0)}  # recreated at the next datagram
    att.refresh()
    assert att.udp_bytes(9) == (1010, 400)
    probe.udp_map = {9: udp(30, 5)}
    att.refresh()
    assert att.udp_bytes(9) == (1030, 405)


def test_a_full_map_is_reported_and_the_report_clears():
    probe = FakeProbe()
    probe.owner_map = {i: Owner(1, 0, "a", False) for i in range(OWNERS_CAPACITY)}
    att = EbpfAttribution(probe)
    att.refresh()
    assert any(w.startswith(f"eBPF owner map full ({OWNERS_CAPACITY} sockets)") for w in att.warnings())
    probe.owner_map = {}
    att.refresh()
    assert att.warnings() == []


def test_a_failed_read_keeps_the_previous_view():
    probe = FakeProbe()
    probe.owner_map = {1: Owner(3, 0, "a", False)}
    att = EbpfAttribution(probe)
    att.refresh()
    probe.fail = True
    att.refresh()
    assert att.owner(1).pid == 3 and att.read_errors == 1
    assert att.warnings() == ["reading the eBPF maps failed 1 times: those ticks used the previous owners "
                              "and UDP counts (see the log)"]


def test_close_closes_the_probe():
    probe = FakeProbe()
    EbpfAttribution(probe).close()
    assert probe.closed
