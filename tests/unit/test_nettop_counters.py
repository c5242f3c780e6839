"""NettopAccounting: nettop's raw frames -> the counters netmon reports.

Pure: frames are parsed from CSV text written here, in the format of the
recordings in tests/data/nettop/ (see nettop_parser.py for its sources).
"""

from __future__ import annotations

import pytest

from netmond.backends.darwin import sockets_from_sample
from netmond.backends.nettop_counters import (
    WRAP32,
    NettopAccounting,
    _split,
    payload_delta,
    wrapped_delta,
)
from netmond.backends.nettop_parser import parse_text
from netmond.state import MonitorState
from netmond.backends.base import Snapshot

HEADER = ",interface,state,bytes_in,bytes_out,rx_dupe,re-tx,"
APSD = ("TCP", "192.168.1.5", 50000, "17.57.146.10", 5223)
APSD_ROW = "tcp4 192.168.1.5:50000<->17.57.146.10:5223,en0,Established"


def app_bytes(state: MonitorState, name: str) -> tuple[int | None, int | None]:
    """(received, sent) of an app as `apps` reports it."""
    (app,) = [a for a in state.app_usage() if a["process_name"] == name]
    return app["bytes_received"], app["bytes_sent"]


def frame(*rows: str):
    """One parsed frame from rows in HEADER's columns."""
    (sample,) = parse_text("\n".join([HEADER, *rows]) + "\n")
    assert sample.skipped == 0, rows
    return sample


def feed(acc: NettopAccounting, sample, replaces: bool = False):
    sockets = acc.frame(sample, sockets_from_sample(sample), replaces=replaces)
    return {s.key: s for s in sockets}


def apsd(bytes_in: int, bytes_out: int, dupe: str = "0", retx: str = "0", proc: tuple[int, int] | None = None):
    p_in, p_out = proc if proc is not None else (bytes_in, bytes_out)
    return frame(f"apsd.388,,,{p_in},{p_out},,,", f"{APSD_ROW},{bytes_in},{bytes_out},{dupe},{retx},")


# -- finding 2: count from the first frame, survive restarts -----------------


def test_a_connection_open_at_start_counts_from_the_first_frame():
    acc = NettopAccounting()
    counters = []
    for b_in, b_out in [(3177530, 7189392), (3177600, 7189500), (3177700, 7189600)]:
        s = feed(acc, apsd(b_in, b_out))[APSD]
        counters.append((s.bytes_received, s.bytes_sent))
    # growth only: 170 in / 208 out, not the connection's whole history
    assert counters == [(0, 0), (70, 108), (170, 208)]


def test_a_connection_first_seen_later_counts_in_full():
    acc = NettopAccounting()
    feed(acc, frame("launchd.1,,,0,0,,,"))
    s = feed(acc, apsd(1000, 2000))[APSD]
    assert (s.bytes_received, s.bytes_sent) == (1000, 2000)


def test_the_whole_session_through_the_state_table():
    """What `apps` shows: the state table fed the reported sockets."""
    acc = NettopAccounting()
    state = MonitorState(interval=1.0)
    state.apply(Snapshot(0.0, 0.0, []))  # the daemon's first tick: no frame yet
    for i, (b_in, b_out) in enumerate([(3177530, 7189392), (3177600, 7189500), (3177700, 7189600)]):
        sockets = list(feed(acc, apsd(b_in, b_out)).values())
        state.apply(Snapshot(1.0 + i, 1.0 + i, sockets, closed=acc.take_closed()))
    assert app_bytes(state, "apsd") == (170, 208)


@pytest.mark.parametrize(
    "after_restart, expected",
    [
        # nettop counts a socket since its birth (ntstat reads inp_stat):
        # the new run continues above the last counters
        ((3177800, 7189700), (270, 308)),
        # or since it first saw it: the new run starts near zero again
        ((40, 50), (210, 258)),
    ],
    ids=["since-birth", "since-seen"],
)
def test_a_nettop_restart_does_not_count_everything_again(after_restart, expected):
    acc = NettopAccounting()
    acc.new_run()
    for b_in, b_out in [(3177530, 7189392), (3177600, 7189500), (3177700, 7189600)]:
        feed(acc, apsd(b_in, b_out))
    acc.new_run()
    s = feed(acc, apsd(*after_restart))[APSD]
    assert s.key == APSD  # the same connection, the same row
    assert (s.bytes_received, s.bytes_sent) == expected
    assert acc.take_closed() == []  # a restart closes nothing


def test_counters_that_drop_within_one_run_are_a_new_socket():
    acc = NettopAccounting()
    feed(acc, frame("launchd.1,,,0,0,,,"))
    feed(acc, apsd(5000, 6000))
    out = feed(acc, apsd(10, 20))
    new = out[(*APSD, "#1")]
    assert (new.bytes_received, new.bytes_sent) == (10, 20)
    assert APSD not in out
    # closed at once, with its final counters (its row is gone already)
    (old,) = acc.take_closed()
    assert old.key == APSD and (old.bytes_received, old.bytes_sent) == (5000, 6000)
    feed(acc, apsd(10, 20), replaces=True)  # the same frame again, completed
    feed(acc, apsd(10, 20))
    assert acc.take_closed() == []  # never twice


# -- finding 4: payload, not retransmissions; 32-bit wrap ----------------------


def test_retransmitted_and_duplicate_bytes_are_subtracted():
    acc = NettopAccounting()
    feed(acc, apsd(1000, 1000, dupe="10", retx="20"))
    s = feed(acc, apsd(1500, 3000, dupe="60", retx="420"))[APSD]
    # out: 2000 more, of which 400 were sent again; in: 500, 50 of them twice
    assert (s.bytes_sent, s.bytes_received) == (1600, 450)


def test_a_new_connection_counts_its_payload_only():
    acc = NettopAccounting()
    feed(acc, frame("launchd.1,,,0,0,,,"))
    s = feed(acc, apsd(1500, 3000, dupe="60", retx="420"))[APSD]
    assert (s.bytes_sent, s.bytes_received) == (2580, 1440)


def test_the_32_bit_retransmit_counter_wraps():
    acc = NettopAccounting()
    feed(acc, apsd(10_000, 10 * WRAP32, retx=str(WRAP32 - 100)))
    # 1,000 bytes out, 300 of them retransmitted: re-tx went past 2**32 to 200
    s = feed(acc, apsd(10_000, 10 * WRAP32 + 1000, retx="200"))[APSD]
    assert s.bytes_sent == 700


def test_wrap_arithmetic():
    assert wrapped_delta(5, WRAP32 - 5) == 10
    assert wrapped_delta(100, 40) == 60
    assert wrapped_delta(None, 40) == 0 and wrapped_delta(4, None) == 0
    assert payload_delta(2000, 1000, 300, 100) == 800
    assert payload_delta(2000, 1000, 10, WRAP32 - 10) == 980
    assert payload_delta(1000, 1000, 50, 0) == 0  # never negative


def test_without_the_columns_nothing_is_subtracted():
    acc = NettopAccounting()
    (first,) = parse_text(",interface,state,bytes_in,bytes_out,\napsd.388,,,1,1,\n" + APSD_ROW + ",100,200,\n")
    (second,) = parse_text(",interface,state,bytes_in,bytes_out,\napsd.388,,,1,1,\n" + APSD_ROW + ",150,290,\n")
    feed(acc, first)
    s = feed(acc, second)[APSD]
    assert (s.bytes_received, s.bytes_sent) == (50, 90)


# -- finding 5: bytes of connections that closed -------------------------------

CURL = ("TCP", "192.168.1.5", 50700, "93.184.216.34", 80)
CURL_ROW = "tcp4 192.168.1.5:50700<->93.184.216.34:80,en0,Established"
KEEP = ("TCP", "192.168.1.5", 50701, "93.184.216.34", 443)
KEEP_ROW = "tcp4 192.168.1.5:50701<->93.184.216.34:443,en0,Established"


def curl_frame(proc: tuple[int, int] | None, curl: tuple[int, int] | None, keep: tuple[int, int], name="curl"):
    rows = []
    if proc is not None:
        rows.append(f"{name}.5120,,,{proc[0]},{proc[1]},,,")
    if curl is not None:
        rows.append(f"{CURL_ROW},{curl[0]},{curl[1]},0,0,")
    rows.append(f"{KEEP_ROW},{keep[0]},{keep[1]},0,0,")
    return frame(*rows)


def run_closing(last_proc: tuple[int, int] | None, name: str = "curl"):
    """curl's port-80 connection grows 2,000 in / 200 out, then vanishes
    after moving 2,000 / 200 more; its port-443 one stays at 100 / 10."""
    acc = NettopAccounting()
    state = MonitorState(interval=1.0)
    frames = [
        curl_frame((1100, 110), (1000, 100), (100, 10)),
        curl_frame((3100, 310), (3000, 300), (100, 10)),
        curl_frame(last_proc, None, (100, 10), name=name),
        curl_frame(last_proc, None, (100, 10), name=name),  # frame 3 is complete
    ]
    closed = []
    for i, f in enumerate(frames):
        sockets = list(feed(acc, f).values())
        gone = acc.take_closed()
        closed += gone
        state.apply(Snapshot(float(i), float(i), sockets, closed=gone))
    return closed, state, acc


def test_a_closed_connections_last_bytes_come_from_the_process_row():
    # the process row keeps closed sockets (deg/beads-utils, OpenActivity)
    closed, state, acc = run_closing(last_proc=(5100, 510))
    (curl,) = closed
    assert curl.key == CURL
    assert (curl.bytes_received, curl.bytes_sent) == (4000, 400)  # 2,000 + its last 2,000
    assert app_bytes(state, "curl") == (4000, 400)
    assert (acc.recovered_in, acc.recovered_out) == (2000, 200)


def test_a_process_row_of_open_sockets_only_adds_nothing():
    # the other reading: per-process figures sum open sockets only
    closed, state, acc = run_closing(last_proc=(100, 10))
    (curl,) = closed
    assert (curl.bytes_received, curl.bytes_sent) == (2000, 200)
    assert app_bytes(state, "curl") == (2000, 200)
    assert (acc.recovered_in, acc.recovered_out) == (0, 0)


def test_a_reused_pid_recovers_nothing():
    closed, state, _ = run_closing(last_proc=(9_000_000, 900_000), name="otherproc")
    (curl,) = closed
    assert (curl.bytes_received, curl.bytes_sent) == (2000, 200)


def test_a_process_row_that_drops_recovers_nothing():
    closed, _, acc = run_closing(last_proc=(50, 5))
    (curl,) = closed
    assert (curl.bytes_received, curl.bytes_sent) == (2000, 200)
    assert acc.recovered_in == 0


def test_recovered_bytes_are_split_by_size_and_sum_exactly():
    assert _split(1000, [3, 1]) == [750, 250]
    assert _split(10, [0, 0, 0]) == [4, 3, 3] or sum(_split(10, [0, 0, 0])) == 10
    assert sum(_split(1001, [7, 5, 3])) == 1001
    assert _split(5, []) == []


# -- frames in two parts, and closes one frame late ---------------------------


def test_a_frame_that_stalls_midway_closes_nothing():
    acc = NettopAccounting()
    full = curl_frame((1100, 110), (1000, 100), (100, 10))
    feed(acc, full)
    # the next frame arrives in two parts: the first lacks the port-443 row
    part = curl_frame((3100, 310), (3000, 300), (100, 10))
    first_part = type(part)(flows=part.flows[:1], processes=part.processes)
    shown = feed(acc, first_part)
    assert KEEP in shown  # carried, not closed
    assert acc.take_closed() == []
    shown = feed(acc, part, replaces=True)
    assert set(shown) == {CURL, KEEP}
    feed(acc, part)
    assert acc.take_closed() == []


def test_a_vanished_socket_is_closed_when_the_next_frame_begins():
    acc = NettopAccounting()
    feed(acc, curl_frame((1100, 110), (1000, 100), (100, 10)))
    shown = feed(acc, curl_frame((1100, 110), None, (100, 10)))
    assert CURL in shown  # the frame may not be complete yet
    assert acc.take_closed() == []
    shown = feed(acc, curl_frame((1100, 110), None, (100, 10)))
    assert CURL not in shown
    assert [c.key for c in acc.take_closed()] == [CURL]


def test_listeners_keep_unknown_counters():
    acc = NettopAccounting()
    for _ in range(2):
        out = feed(acc, frame("launchd.1,,,0,0,,,", "tcp4 *:22<->*:*,,Listen,,,,,"))
    listener = out[("TCP", "0.0.0.0", 22, None, None, 1)]
    assert listener.bytes_sent is None and listener.bytes_received is None


def test_an_unchanged_socket_is_handed_on_as_the_same_object():
    # state.py skips a socket cheaply when it gets last tick's very object
    acc = NettopAccounting()
    first = feed(acc, apsd(1000, 2000))[APSD]
    same = feed(acc, apsd(1000, 2000))[APSD]
    moved = feed(acc, apsd(1100, 2000))[APSD]
    assert same is first
    assert moved is not first and moved.bytes_received == 100 and first.bytes_received == 0


@pytest.mark.parametrize("proc_keeps_closed", [True, False], ids=["process-row-keeps-closed", "open-only"])
def test_a_row_missing_from_one_frame_is_not_counted_twice(proc_keeps_closed):
    """A socket nettop leaves out of a frame (or whose frame it missed) and
    lists again: reported closed, back under a new key, every byte once."""
    acc = NettopAccounting()
    state = MonitorState(interval=1.0)
    missing_proc = (3100, 310) if proc_keeps_closed else (100, 10)
    frames = [
        curl_frame((1100, 110), (1000, 100), (100, 10)),
        curl_frame((2100, 210), (2000, 200), (100, 10)),
        curl_frame(missing_proc, None, (100, 10)),  # its row is missing
        curl_frame((4100, 410), (4000, 400), (100, 10)),  # and back
        curl_frame((5100, 510), (5000, 500), (100, 10)),
    ]
    for i, f in enumerate(frames):
        sockets = list(feed(acc, f).values())
        state.apply(Snapshot(float(i), float(i), sockets, closed=acc.take_closed()))
    assert app_bytes(state, "curl") == (4000, 400)  # 5,000 - 1,000, once
    keys = {row.key for row in state.connections(True)}
    assert (*CURL, "#1") in keys and CURL in keys


def test_a_new_socket_on_a_just_closed_key_gets_a_key_of_its_own():
    acc = NettopAccounting()
    feed(acc, curl_frame((1100, 110), (1000, 100), (100, 10)))
    feed(acc, curl_frame((1100, 110), None, (100, 10)))
    # the addresses again, but counters below the old ones: another socket
    shown = feed(acc, curl_frame((1100, 110), (5, 5), (100, 10)))
    closed = acc.take_closed()
    assert [c.key for c in closed] == [CURL]
    assert (*CURL, "#1") in shown and CURL not in shown
    assert (shown[(*CURL, "#1")].bytes_received, shown[(*CURL, "#1")].bytes_sent) == (5, 5)
