"""The nettop CSV parser on recorded output (tests/data/nettop/).

There is no Mac here, so the recordings were written by hand to follow
real `nettop -L` captures published in open-source projects that parse
nettop (header, row shapes, column counts, truncated names, `*` and
IPv6 `.port` endpoints, empty counters on listeners, empty state on UDP):

  mixed.csv             nettop -L 0 -s 1 -x -n        (TCP and UDP), 3 samples
  tcp.csv               nettop -L 0 -s 1 -x -n -m tcp, 3 samples
  udp.csv               nettop -L 0 -s 1 -x -n -m udp, 3 samples
  selected_columns.csv  nettop -L 0 -x -n -J interface,state,bytes_in,bytes_out,
                        joined mid-stream (a row before the first header)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netmond.backends.nettop_parser import (
    NettopFlow,
    NettopParser,
    NettopProcess,
    NettopSample,
    map_state,
    parse_endpoint,
    parse_text,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "nettop"
HEADER = (
    "time,,interface,state,bytes_in,bytes_out,rx_dupe,rx_ooo,re-tx,rtt_avg,"
    "rcvsize,tx_win,tc_class,tc_mgt,cc_algo,P,C,R,W,arch,"
)


def recording(name: str) -> list[NettopSample]:
    return parse_text((DATA / name).read_text(encoding="utf-8"))


def by_local_port(sample: NettopSample, port: int, transport: str | None = None) -> NettopFlow:
    found = [
        f
        for f in sample.flows
        if f.local_port == port and (transport is None or f.transport == transport)
    ]
    assert len(found) == 1, found
    return found[0]


def pids(sample: NettopSample) -> list[int]:
    return [p.pid for p in sample.processes]


# -- mixed.csv: the default mode, everything at once -------------------------


@pytest.fixture(scope="module")
def mixed() -> list[NettopSample]:
    return recording("mixed.csv")


def test_mixed_has_three_samples_with_their_rows(mixed):
    assert [len(s.flows) for s in mixed] == [24, 22, 19]
    assert [len(s.processes) for s in mixed] == [11, 11, 9]
    assert [s.time for s in mixed] == ["10:00:01.100064", "10:00:02.100064", "10:00:03.100064"]
    assert not any(s.continuation for s in mixed)


def test_process_rows_split_on_the_last_dot(mixed):
    first = mixed[0]
    assert [(p.pid, p.name) for p in first.processes] == [
        (1, "launchd"),
        (412, "mDNSResponder"),
        (388, "apsd"),
        (1272, "Google Chrome H"),  # truncated by nettop
        (13476, "com.docker.back"),  # dots in the (truncated) name
        (530, "rapportd"),
        (772, "Microsoft Edge"),  # "Microsoft Edge .772": truncation left a space
        (6001, "ssh"),
        (5120, "curl"),
        (7001, "Python"),
        (650, "AirPlayXPCHelpe"),
    ]
    assert first.processes[1] == NettopProcess(412, "mDNSResponder", 67044191, 20822887)


def test_ipv4_connection(mixed):
    assert by_local_port(mixed[0], 50000) == NettopFlow(
        protocol="TCP",
        family="IPv4",
        local_ip="192.168.1.5",
        local_port=50000,
        remote_ip="17.57.146.10",
        remote_port=5223,
        state="ESTABLISHED",
        interface="en0",
        bytes_in=3177530,
        bytes_out=7189392,
        pid=388,
        process_name="apsd",
        transport="tcp4",
        raw_state="Established",
        retransmitted=0,
        duplicate_in=0,
    )


def test_ipv6_uses_a_dot_before_the_port(mixed):
    flow = by_local_port(mixed[0], 50413)
    assert (flow.family, flow.local_ip, flow.remote_ip, flow.remote_port) == (
        "IPv6",
        "2a01:e0a:1f3:8c0:1c2b:3aff:fe4d:5e6f",
        "2a00:1450:4007:80e::200e",
        443,
    )
    assert (flow.pid, flow.process_name, flow.bytes_in, flow.bytes_out) == (
        1272,
        "Google Chrome H",
        150000,
        90000,
    )
    assert flow.retransmitted == 1361


def test_ipv6_link_local_keeps_its_scope(mixed):
    flow = by_local_port(mixed[0], 49823)
    assert (flow.local_ip, flow.local_port, flow.remote_ip, flow.remote_port) == (
        "fe80::1c2b:3aff:fe4d:5e6f%en0",
        49823,
        "fe80::8a2:1bff:fe33:44aa%en0",
        7000,
    )
    assert (flow.family, flow.pid, flow.state) == ("IPv6", 530, "ESTABLISHED")
    udp = by_local_port(mixed[0], 3722)
    assert (udp.protocol, udp.local_ip, udp.remote_ip, udp.remote_port) == (
        "UDP",
        "fe80::1c2b:3aff:fe4d:5e6f%en0",
        None,
        None,
    )


def test_ipv4_mapped_address(mixed):
    flow = by_local_port(mixed[0], 50800)
    assert (flow.family, flow.local_ip, flow.remote_ip, flow.remote_port) == (
        "IPv6",
        "::ffff:192.168.1.5",
        "::ffff:10.0.0.7",
        22,
    )
    assert (flow.pid, flow.process_name, flow.bytes_in, flow.bytes_out) == (6001, "ssh", 5400, 3900)


def test_listeners_have_no_remote_and_no_counters(mixed):
    v4, v6 = mixed[0].flows[0], mixed[0].flows[1]
    assert (v4.transport, v4.local_ip, v4.local_port, v4.remote_ip, v4.remote_port) == (
        "tcp4",
        None,
        22,
        None,
        None,
    )
    assert (v6.transport, v6.family, v6.local_ip, v6.local_port) == ("tcp6", "IPv6", None, 22)
    for flow in (v4, v6):
        assert (flow.state, flow.interface, flow.pid) == ("LISTEN", None, 1)
        # nettop prints nothing: unknown, never 0
        assert flow.bytes_in is None and flow.bytes_out is None
    loopback = by_local_port(mixed[0], 2375)
    assert (loopback.local_ip, loopback.family, loopback.interface) == ("::1", "IPv6", "lo0")


def test_udp_sockets(mixed):
    v4 = by_local_port(mixed[0], 5353, "udp4")
    v6 = by_local_port(mixed[0], 5353, "udp6")
    assert (v4.protocol, v4.family, v4.local_ip, v4.remote_ip, v4.state) == (
        "UDP",
        "IPv4",
        None,
        None,
        "NONE",
    )
    assert (v4.bytes_in, v4.bytes_out, v4.raw_state) == (52613305, 12620001, None)
    assert (v6.family, v6.bytes_in, v6.bytes_out, v6.pid) == ("IPv6", 14430886, 8202886, 412)
    quic = by_local_port(mixed[0], 61234)
    assert (quic.transport, quic.protocol, quic.state, quic.remote_ip, quic.remote_port) == (
        "quic4",
        "UDP",
        "NONE",
        "142.250.74.110",
        443,
    )


def test_states_are_mapped_to_netmon_names(mixed):
    states = {(f.raw_state, f.state) for s in mixed for f in s.flows if f.protocol == "TCP"}
    assert states == {
        ("Listen", "LISTEN"),
        ("Established", "ESTABLISHED"),
        ("SynSent", "SYN_SENT"),
        ("SynReceived", "SYN_RECV"),
        ("CloseWait", "CLOSE_WAIT"),
        ("LastAck", "LAST_ACK"),
        ("FinWait1", "FIN_WAIT1"),
        ("FinWait2", "FIN_WAIT2"),
        ("TimeWait", "TIME_WAIT"),
        ("Closing", "CLOSING"),
    }


def test_counters_grow_from_sample_to_sample(mixed):
    series = [(by_local_port(s, 50412).bytes_in, by_local_port(s, 50412).bytes_out) for s in mixed]
    assert series == [(812345, 201234), (1312345, 301234), (1912345, 401234)]
    syn = [by_local_port(s, 50414) for s in mixed]
    assert [(f.state, f.bytes_in) for f in syn] == [
        ("SYN_SENT", 0),
        ("ESTABLISHED", 70587),
        ("ESTABLISHED", 178587),
    ]


def test_processes_that_come_and_go(mixed):
    assert 5120 in pids(mixed[0])  # curl
    assert 5120 not in pids(mixed[1]) and 5120 not in pids(mixed[2])
    assert not any(f.pid == 5120 for s in mixed[1:] for f in s.flows)
    assert 772 in pids(mixed[1]) and 772 not in pids(mixed[2])  # Edge
    assert 5034 not in pids(mixed[0])  # Slack helper starts in sample 2
    slack = by_local_port(mixed[1], 51000)
    assert (slack.pid, slack.process_name) == (5034, "Slack Helper (R")


def test_garbage_and_cut_lines_are_skipped_and_counted(mixed):
    # sample 2: a row cut short and a line that is no row at all;
    # the file ends in the middle of a row, which counts for sample 3.
    assert [s.skipped for s in mixed] == [0, 2, 1]
    # the rows around the garbage are intact
    assert by_local_port(mixed[1], 50413).bytes_in == 210000
    assert by_local_port(mixed[1], 49823).pid == 530
    # the cut row ("Python.70") made no process
    assert 7001 not in pids(mixed[2])


# -- tcp.csv / udp.csv: one mode each --------------------------------------


def test_tcp_recording():
    samples = recording("tcp.csv")
    assert len(samples) == 3
    assert all(f.protocol == "TCP" for s in samples for f in s.flows)
    assert [s.skipped for s in samples] == [0, 0, 0]
    webkit = by_local_port(samples[1], 52100)
    assert (webkit.pid, webkit.process_name, webkit.bytes_in, webkit.bytes_out) == (
        812,
        "com.apple.WebKi",
        750000,
        50000,
    )
    closing = [by_local_port(s, 52101) for s in samples]
    assert [f.state for f in closing] == ["CLOSE_WAIT", "CLOSE", "CLOSE"]
    assert closing[0].remote_ip == "2a02:26f0:2b00::17ce"
    # git-remote-http exits after the first sample
    assert 8100 in pids(samples[0]) and 8100 not in pids(samples[1])
    assert by_local_port(samples[0], 52200).process_name == "git-remote-http"
    pg = [f for f in samples[2].flows if f.pid == 901]
    assert [(f.local_ip, f.local_port, f.state) for f in pg] == [
        ("127.0.0.1", 5432, "LISTEN"),
        ("::1", 5432, "LISTEN"),
    ]


def test_udp_recording():
    samples = recording("udp.csv")
    assert len(samples) == 3
    assert all(f.protocol == "UDP" and f.state == "NONE" for s in samples for f in s.flows)
    ntp = [by_local_port(s, 123) for s in samples]
    assert [(f.bytes_in, f.bytes_out) for f in ntp] == [(96, 96), (144, 144), (192, 192)]
    assert (ntp[0].remote_ip, ntp[0].remote_port, ntp[0].process_name) == (
        "17.253.34.253",
        123,
        "timed",
    )
    assert [f.local_port for f in samples[0].flows if f.pid == 301] == [137, 138]
    mapped = by_local_port(samples[0], 57621)
    assert (mapped.family, mapped.local_ip, mapped.remote_ip) == (
        "IPv6",
        "::ffff:192.168.1.5",
        "::ffff:192.168.1.255",
    )
    # dig's query socket is gone in the second sample
    assert by_local_port(samples[0], 53001).pid == 9001
    assert not any(f.pid == 9001 for f in samples[1].flows)


def test_selected_columns_found_by_name():
    """-J drops the time column and moves everything: names still match."""
    samples = recording("selected_columns.csv")
    assert len(samples) == 2
    assert samples[0].time is None
    first = samples[0]
    assert [(p.pid, p.name) for p in first.processes] == [
        (1, "launchd"),
        (388, "apsd"),
        (412, "mDNSResponder"),
        (659, "cloudd"),
    ]
    apsd = by_local_port(first, 50000)
    # the row before the first header (joined mid-stream) was dropped, so
    # this is the one after it
    assert (apsd.bytes_in, apsd.bytes_out, apsd.interface, apsd.state) == (
        3177530,
        7189392,
        "en0",
        "ESTABLISHED",
    )
    quic = by_local_port(first, 60979)
    assert (quic.transport, quic.protocol, quic.family, quic.remote_port, quic.pid) == (
        "quic6",
        "UDP",
        "IPv6",
        443,
        659,
    )
    assert by_local_port(samples[1], 50000).bytes_in == 3177600


def test_rows_before_the_first_header_are_counted():
    parser = NettopParser()
    for line in (DATA / "selected_columns.csv").read_text().split("\n"):
        parser.feed(line)
    parser.flush()
    assert parser.skipped_lines == 1
    assert parser.samples_emitted == 2


# -- the incremental interface ---------------------------------------------


def test_feed_emits_a_sample_when_the_next_header_arrives():
    parser = NettopParser()
    assert parser.feed(HEADER, at=10.0) == []
    assert parser.feed("10:00:01.1,apsd.388,,,10,20,0,0,0,,,,,,,,,,,,") == []
    assert parser.pending
    done = parser.feed(HEADER, at=11.0)
    assert len(done) == 1
    assert done[0].processes == (NettopProcess(388, "apsd", 10, 20),)
    assert done[0].received_at == 10.0
    assert parser.feed("10:00:02.1,apsd.388,,,30,40,0,0,0,,,,,,,,,,,,") == []
    last = parser.flush()
    assert [s.processes[0].bytes_in for s in last] == [30]
    assert last[0].received_at == 11.0
    assert parser.flush() == []


def test_line_by_line_equals_parse_text():
    text = (DATA / "mixed.csv").read_text()
    parser = NettopParser()
    samples = []
    for line in text.split("\n"):
        samples += parser.feed(line + "\n")
    samples += parser.flush()
    assert samples == parse_text(text)
    assert parser.skipped_lines == 3


def test_an_empty_sample_is_still_a_sample():
    samples = parse_text(HEADER + "\n" + HEADER + "\n")
    assert samples == [NettopSample(), NettopSample()]


def test_rows_after_a_flush_continue_the_same_sample():
    """A quiet stream ends a sample early; late rows are its continuation."""
    parser = NettopParser()
    parser.feed(HEADER, at=1.0)
    parser.feed("t,Google Chrome H.1272,,,5,6,0,0,0,,,,,,,,,,,,")
    (first,) = parser.flush()
    assert not first.continuation and not parser.pending
    # nettop stalled mid-burst; the rest of its sample arrives late
    parser.feed("t,tcp4 10.0.0.2:5000<->10.0.0.3:443,en0,Established,5,6,0,0,0,,,,,,,,,,,,", at=2.0)
    assert parser.pending
    (tail,) = parser.feed(HEADER, at=3.0)
    assert tail.continuation
    assert tail.flows[0].pid == 1272  # still the process above it
    merged = first.merged(tail)
    assert (len(merged.processes), len(merged.flows)) == (1, 1)
    assert merged.received_at == 1.0 and not merged.continuation


def test_pty_line_endings_and_missing_trailing_comma():
    text = f"{HEADER}\r\nt,apsd.388,,,1,2,0,0,0,,,,,,,,,,,\r\n"
    (sample,) = parse_text(text)
    assert sample.processes == (NettopProcess(388, "apsd", 1, 2),)
    assert sample.skipped == 0


def test_a_comma_in_a_process_name():
    (sample,) = parse_text(
        f"{HEADER}\nt,Foo, Inc..42,,,7,8,0,0,0,,,,,,,,,,,,\n"
        "t,tcp4 10.0.0.2:5000<->10.0.0.3:443,en0,Established,7,8,0,0,0,,,,,,,,,,,,\n"
    )
    assert sample.processes == (NettopProcess(42, "Foo, Inc.", 7, 8),)
    assert sample.flows[0].process_name == "Foo, Inc."


def test_unknown_columns_and_another_order():
    text = (
        "time,,bytes_out,frobs,bytes_in,state,interface,\n"
        "t,apsd.388,20,x,10,,,\n"
        "t,tcp4 10.0.0.2:5000<->10.0.0.3:443,20,x,10,TimeWait,en1,\n"
    )
    (sample,) = parse_text(text)
    flow = sample.flows[0]
    assert (flow.bytes_in, flow.bytes_out, flow.state, flow.interface) == (10, 20, "TIME_WAIT", "en1")
    assert flow.retransmitted is None
    assert sample.processes == (NettopProcess(388, "apsd", 10, 20),)


@pytest.mark.parametrize(
    "row",
    [
        "t,tcp4 10.0.0.2:5000<->10.0.0.3:443,en0,Established,1.2 MiB,7,0,0,0,,,,,,,,,,,,",  # no -x
        "t,sctp4 10.0.0.2:5000<->10.0.0.3:443,en0,Established,1,2,0,0,0,,,,,,,,,,,,",
        "t,tcp4 10.0.0.2:99999<->10.0.0.3:443,en0,Established,1,2,0,0,0,,,,,,,,,,,,",
        "t,tcp6 2001:db8::1:443<->*.*,en0,Listen,,,,,,,,,,,,,,,,,",  # v6 with a colon port
        "t,tcp4 10.0.0.2:5000<->,en0,Established,1,2,0,0,0,,,,,,,,,,,,",
        "t,tcp4 10.0.0.2:5000-10.0.0.3:443,en0,Established,1,2,0,0,0,,,,,,,,,,,,",
        "t,noname,,,1,2,0,0,0,,,,,,,,,,,,",
        "t,.42,,,1,2,0,0,0,,,,,,,,,,,,",
        "t,apsd.388",
        "garbage",
    ],
)
def test_damaged_rows_are_skipped(row):
    (sample,) = parse_text(f"{HEADER}\n{row}\nt,ok.1,,,1,2,0,0,0,,,,,,,,,,,,\n")
    assert sample.skipped == 1
    assert sample.processes == (NettopProcess(1, "ok", 1, 2),)
    assert sample.flows == ()


def test_a_damaged_header_ends_the_sample_but_is_not_used():
    text = (
        f"{HEADER}\nt,a.1,,,1,2,0,0,0,,,,,,,,,,,,\n"
        f"t,a.1{HEADER}\nt,a.1,,,3,4,0,0,0,,,,,,,,,,,,\n"  # cut row glued to a header
        f"{HEADER}\nt,a.1,,,5,6,0,0,0,,,,,,,,,,,,\n"
    )
    samples = parse_text(text)
    assert [s.processes[0].bytes_in for s in samples] == [1, 5]


def test_a_socket_row_before_any_process_row_has_no_pid():
    (sample,) = parse_text(f"{HEADER}\nt,udp4 *:68<->*:*,en0,,1,2,,,,,,,,,,,,,,,\n")
    assert (sample.flows[0].pid, sample.flows[0].process_name) == (None, None)


def test_dual_stack_and_bracketed_and_named_endpoints():
    text = (
        f"{HEADER}\nt,x.1,,,0,0,0,0,0,,,,,,,,,,,,\n"
        "t,tcp46 *.8080<->*.*,,Listen,,,,,,,,,,,,,,,,,\n"
        "t,tcp6 [::1]:5000<->[::1]:6000,lo0,Established,1,2,0,0,0,,,,,,,,,,,,\n"
        "t,tcp4 10.0.0.2:5000<->host.example.com:443,en0,Established,1,2,0,0,0,,,,,,,,,,,,\n"
    )
    (sample,) = parse_text(text)
    dual, bracketed, named = sample.flows
    assert (dual.family, dual.local_ip, dual.local_port) == ("IPv6", None, 8080)
    assert (bracketed.local_ip, bracketed.remote_port) == ("::1", 6000)
    assert (named.family, named.remote_ip, named.remote_port) == ("IPv4", "host.example.com", 443)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("192.168.1.5:50000", ("192.168.1.5", 50000)),
        ("192.168.1.5:*", ("192.168.1.5", None)),
        ("*:*", (None, None)),
        ("*.*", (None, None)),
        ("*:5353", (None, 5353)),
        ("*.22", (None, 22)),
        ("fe80::1%lo0.631", ("fe80::1%lo0", 631)),
        ("::1.8080", ("::1", 8080)),
        ("::ffff:10.0.0.7.22", ("::ffff:10.0.0.7", 22)),
        ("2001:db8::1.*", ("2001:db8::1", None)),
        ("10.0.0.7.22", ("10.0.0.7", 22)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ],
)
def test_parse_endpoint(text, expected):
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    "text", ["", "*", "10.0.0.7", "2001:db8::1", "10.0.0.7:http", "[::1]443", "a b:1", "1.2.3.4:70000"]
)
def test_parse_endpoint_rejects(text):
    with pytest.raises(ValueError):
        parse_endpoint(text)


@pytest.mark.parametrize(
    "raw, state",
    [
        ("Established", "ESTABLISHED"),
        ("Listen", "LISTEN"),
        ("SynSent", "SYN_SENT"),
        ("SynReceived", "SYN_RECV"),
        ("FinWait1", "FIN_WAIT1"),
        ("FinWait2", "FIN_WAIT2"),
        ("CloseWait", "CLOSE_WAIT"),
        ("LastAck", "LAST_ACK"),
        ("Closing", "CLOSING"),
        ("TimeWait", "TIME_WAIT"),
        ("Closed", "CLOSE"),
        ("FIN_WAIT_1", "FIN_WAIT1"),
        ("time-wait", "TIME_WAIT"),
        ("", "NONE"),
        (None, "NONE"),
        # not one of the eleven: kept as printed, shown, never dropped
        ("Frobnicating", "Frobnicating"),
        (" ", "NONE"),
    ],
)
def test_map_state(raw, state):
    assert map_state(raw) == state


# The eleven TCP states of Apple's NetworkStatistics framework, in xnu's
# TCPS_* order (bsd/netinet/tcp_fsm.h); nettop prints them CamelCase.
ELEVEN = [
    ("Closed", "CLOSE"), ("Listen", "LISTEN"), ("SynSent", "SYN_SENT"),
    ("SynReceived", "SYN_RECV"), ("Established", "ESTABLISHED"),
    ("CloseWait", "CLOSE_WAIT"), ("FinWait1", "FIN_WAIT1"), ("Closing", "CLOSING"),
    ("LastAck", "LAST_ACK"), ("FinWait2", "FIN_WAIT2"), ("TimeWait", "TIME_WAIT"),
]


def test_all_eleven_states_and_an_unknown_one_reach_the_socket_rows():
    from netmond.backends.darwin import sockets_from_sample

    header = "time,,interface,state,bytes_in,bytes_out,"
    rows = [f"t,tcp4 10.0.0.1:{40000 + i}<->10.0.0.2:443,en0,{raw},1,2," for i, (raw, _) in enumerate(ELEVEN)]
    rows.append("t,tcp4 10.0.0.1:50000<->10.0.0.2:443,en0,Reticulating,3,4,")
    (sample,) = parse_text("\n".join([header, "t,curl.7,,,0,0,", *rows]) + "\n")
    assert sample.skipped == 0
    states = [s.state for s in sockets_from_sample(sample)]
    assert states == [name for _, name in ELEVEN] + ["Reticulating"]
    assert sample.flows[-1].raw_state == "Reticulating"
