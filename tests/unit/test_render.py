"""netmonctl.render: tables in human units, machine formats, colours, sparklines."""

from __future__ import annotations

import csv
import io
import json

import pytest

from common.models import CONNECTION_FIELDS
from netmonctl import render
from netmonctl.commands.conns import COLUMNS as CONN_COLUMNS

ANSI = "\x1b["


def conn_row(**over):
    row = {f: None for f in CONNECTION_FIELDS}
    row.update(
        id=1, protocol="TCP", family="IPv4", local_addr="10.0.0.2:50000",
        remote_addr="1.2.3.4:443", local_ip="10.0.0.2", local_port=50000,
        remote_ip="1.2.3.4", remote_port=443, state="ESTABLISHED", pid=4242,
        process_name="firefox", user="me", scope="internet", bytes_sent=12_345_678,
        bytes_received=999, upload_speed=1_500_000.0, download_speed=0.0, duration=192.4,
        first_seen=1.0, last_seen=2.0, counters="kernel",
    )
    row.update(over)
    return row


class FakeStream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


# -- tables ------------------------------------------------------------------


def test_connection_table_uses_human_units():
    text = render.table([conn_row()], CONN_COLUMNS)
    header, _, line = text.splitlines()
    assert header.split() == ["PROTO", "LOCAL", "REMOTE", "STATE", "PID", "PROCESS",
                              "UP", "DOWN", "SENT", "RECV", "AGE"]
    assert "1.5 MB/s" in line      # upload_speed
    assert "0 B/s" in line         # a known zero stays 0
    assert "12.3 MB" in line       # bytes_sent
    assert "999 B" in line
    assert "3m 12s" in line        # duration
    assert "4242" in line and "firefox" in line


def test_unknown_values_show_as_dash_never_zero():
    row = conn_row(pid=None, process_name=None, remote_addr=None, bytes_sent=None,
                   bytes_received=None, upload_speed=None, download_speed=None)
    line = render.table([row], CONN_COLUMNS).splitlines()[2]
    cells = line.split()
    # PROTO LOCAL REMOTE STATE PID PROCESS UP DOWN SENT RECV AGE
    assert cells[2] == "-" and cells[4:10] == ["-"] * 6
    assert "0 B" not in line
    assert render.dash(None) == "-" and render.dash(0) == "0"


def test_long_process_names_are_shortened_in_tables_only():
    name = "x" * 60
    line = render.table([conn_row(process_name=name)], CONN_COLUMNS).splitlines()[2]
    assert name not in line and "…" in line


def test_table_drops_low_priority_columns_to_fit_the_width():
    rows = [conn_row()]
    full = render.table(rows, CONN_COLUMNS)
    full_width = max(len(line) for line in full.splitlines())
    narrow = render.table(rows, CONN_COLUMNS, width=full_width - 1)
    assert max(len(line) for line in narrow.splitlines()) <= full_width - 1
    headers = narrow.splitlines()[0].split()
    assert "AGE" not in headers                      # dropped first
    assert {"PROTO", "LOCAL", "REMOTE", "STATE", "UP", "DOWN"} <= set(headers)
    tiny = render.table(rows, CONN_COLUMNS, width=20).splitlines()[0].split()
    # Core columns stay even when nothing fits; the terminal wraps them.
    assert tiny == ["PROTO", "LOCAL", "REMOTE", "STATE", "PROCESS", "UP", "DOWN"]
    assert render.table(rows, CONN_COLUMNS, width=None) == full


def test_states_are_coloured_only_when_asked():
    plain = render.table([conn_row()], CONN_COLUMNS, color=False)
    assert ANSI not in plain
    coloured = render.table([conn_row(), conn_row(state="NONE")], CONN_COLUMNS, color=True)
    assert "\x1b[32mESTABLISHED" in coloured     # green
    assert coloured.count("\x1b[0m") == 1        # NONE stays plain; only STATE is styled
    # Alignment ignores the escape codes: both rows have the same visible width.
    lines = [line.replace("\x1b[32m", "").replace("\x1b[0m", "") for line in coloured.splitlines()]
    assert len(lines[2]) == len(lines[3])


def test_empty_table_prints_the_message():
    assert render.table([], CONN_COLUMNS, empty="no connections match") == "no connections match"


def test_key_values_aligns_and_lists():
    text = render.key_values([("a", 1), ("long key", None), ("warnings", ["w1", "w2"]), ("none", [])])
    assert text.splitlines() == [
        "a:        1",
        "long key: -",
        "warnings: w1",
        "          w2",
        "none:     none",
    ]


def test_clock_and_seconds():
    assert render.clock(None) == "-"
    assert len(render.clock(0)) == 8
    assert render.clock(10.25, tenths=True).endswith(".2")
    assert render.seconds(0.2) == "0.2s" and render.seconds(None) == "-"


# -- colour decision -----------------------------------------------------------


def test_colour_only_on_a_terminal_without_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert render.color_enabled(False, FakeStream(True))
    assert not render.color_enabled(False, FakeStream(False))
    assert not render.color_enabled(True, FakeStream(True))
    monkeypatch.setenv("NO_COLOR", "1")
    assert not render.color_enabled(False, FakeStream(True))
    monkeypatch.setenv("NO_COLOR", "")  # no-color.org: empty means unset
    assert render.color_enabled(False, FakeStream(True))
    assert render.terminal_width(FakeStream(False)) is None


# -- machine formats -----------------------------------------------------------


def test_json_is_the_payload_unchanged():
    payload = {"connections": [conn_row(), conn_row(id=2, pid=None)]}
    text = render.to_json(payload)
    assert json.loads(text) == payload
    assert text.startswith('{\n  "connections"')  # indented, jq-friendly


def test_ndjson_is_one_object_per_line():
    rows = [conn_row(id=i) for i in range(3)]
    lines = render.to_ndjson(rows).splitlines()
    assert [json.loads(line) for line in lines] == rows


def test_csv_has_a_header_and_one_line_per_row():
    rows = [conn_row(), conn_row(id=2, pid=None, remote_addr=None)]
    text = render.to_csv(rows, CONNECTION_FIELDS)
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == list(CONNECTION_FIELDS)
    assert len(parsed) == 3 and all(len(r) == len(CONNECTION_FIELDS) for r in parsed)
    second = dict(zip(parsed[0], parsed[2]))
    assert second["pid"] == "" and second["remote_addr"] == ""      # unknown: empty
    assert second["bytes_sent"] == "12345678"


def test_csv_encodes_nested_values_as_json():
    text = render.to_csv([{"name": "a", "pids": [1, 2], "ok": True, "n": None}])
    header, line = list(csv.reader(io.StringIO(text)))
    assert header == ["name", "pids", "ok", "n"]
    assert line == ["a", "[1, 2]", "true", ""]
    assert render.to_csv([]) == ""
    assert render.to_csv([], ["a", "b"]) == "a,b"


@pytest.mark.parametrize("fmt", ["json", "ndjson", "csv", "table"])
def test_emit_dispatches_on_format(fmt, capsys):
    payload = {"history": [{"timestamp": 1.0, "upload": 2.0, "download": 3.0}]}
    render.emit(fmt, payload, rows_key="history", fields=("timestamp", "upload", "download"),
                human=lambda: "HUMAN")
    out = capsys.readouterr().out
    expected = {
        "json": render.to_json(payload, pretty=False) + "\n",  # not a terminal: compact
        "ndjson": '{"timestamp":1.0,"upload":2.0,"download":3.0}\n',
        "csv": "timestamp,upload,download\n1.0,2.0,3.0\n",
        "table": "HUMAN\n",
    }[fmt]
    assert out == expected


class CaptureOut(io.StringIO):
    """stdout as a terminal or a pipe."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "terminal"])
@pytest.mark.parametrize("fmt", ["json", "ndjson", "csv"])
@pytest.mark.parametrize("sizes", [[], [1], [3, 1], [2, 2, 2]], ids=["none", "one", "two", "three"])
def test_streamed_rows_print_exactly_what_emit_prints_for_them_all(fmt, tty, sizes, monkeypatch):
    rows = [conn_row(id=i, process_name=f"p{i}", pids=[i]) for i in range(sum(sizes))]
    chunks, at = [], 0
    for n in sizes:
        chunks.append(rows[at:at + n])
        at += n
    whole, streamed = CaptureOut(tty), CaptureOut(tty)
    monkeypatch.setattr("sys.stdout", whole)
    render.emit(fmt, {"connections": rows}, rows_key="connections", fields=CONNECTION_FIELDS, human=lambda: "")
    monkeypatch.setattr("sys.stdout", streamed)
    render.emit_rows_streamed(fmt, "connections", iter(chunks), CONNECTION_FIELDS)
    assert streamed.getvalue() == whole.getvalue()


def test_emit_of_a_single_map_prints_it_as_one_row(capsys):
    render.emit("ndjson", {"monitoring": True}, human=lambda: "x")
    render.emit("csv", {"monitoring": True}, human=lambda: "x")
    assert capsys.readouterr().out == '{"monitoring":true}\nmonitoring\ntrue\n'


# -- sparkline ---------------------------------------------------------------


def test_sparkline_scales_from_zero_to_the_maximum():
    assert render.sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == render.SPARK_CHARS
    assert render.sparkline([5, 10], 10) == "▅█"


def test_sparkline_edge_cases():
    assert render.sparkline([], 10) == ""
    assert render.sparkline([1, 2], 0) == ""
    assert render.sparkline([0, 0, 0], 5) == "▁▁▁"           # flat, not blank
    assert render.sparkline([None, 4, None], 5) == " █ "      # unknown is a gap
    assert render.sparkline([-3, 4], 5) == "▁█"               # negatives count as 0


def test_sparkline_averages_into_the_width():
    values = [0.0] * 50 + [10.0] * 50
    line = render.sparkline(values, 10)
    assert len(line) == 10
    assert line == "▁" * 5 + "█" * 5
    assert len(render.sparkline(list(range(1000)), 37)) == 37
    assert render.sparkline([None, None, 8, 8], 2) == " █"


def test_sparkline_row_fits_its_width_or_keeps_only_the_rate():
    # top: label, the rate now, the sparkline in what is left, the peak.
    row = render.sparkline_row("up", [0, 1000, 2000], 60, 1500, show_now=True)
    assert len(row) == 60 and row.startswith("up") and "1.5 kB/s" in row and row.endswith("peak 2.0 kB/s")
    assert "▁▅█" in row  # three points, padded so that the peak stays put
    assert render.sparkline_row("up", [0, 1000], 30, 1500, show_now=True) == "up" + " " * 6 + "1.5 kB/s"  # < 8 left
    # history: no rate now, one character per point up to `most`, no width limit in a pipe.
    assert render.sparkline_row("down", [0, 1000], None, most=2) == "down ▁█  peak 1.0 kB/s"
    assert len(render.sparkline_row("up", list(range(500)), None, most=60)) == 5 + 60 + len("  peak 499 B/s")


# -- bars and untrusted text ----------------------------------------------------


def test_bar_is_fixed_width_in_eighths():
    assert render.bar(10, 10, 4) == "████"
    assert render.bar(5, 10, 4) == "██  "
    assert render.bar(3, 16, 2) == "▍ "  # 2 cells are 16 eighths: 3 of them
    assert render.bar(9, 16, 2) == "█▏"
    assert render.bar(1, 10, 1) == "▏"  # a sliver: some traffic is not none
    assert render.bar(0.001, 1000, 3) == "▏  "
    assert render.bar(20, 10, 3) == "███"  # over the top is capped


def test_bar_edge_cases():
    assert render.bar(None, 10, 3) == "   "  # unknown: empty, not a zero bar
    assert render.bar(0, 10, 3) == "   "
    assert render.bar(5, 0, 3) == "   "
    assert render.bar(5, None, 3) == "   "
    assert render.bar(5, 10, 0) == ""


def test_printable_masks_control_characters():
    assert render.printable("firefox") == "firefox"
    assert render.printable("a\x1b[2Jb\x07\n") == "a?[2Jb??"
    assert render.printable("Gärtner 日本") == "Gärtner 日本"


def test_json_is_indented_for_a_terminal_and_compact_for_a_pipe():
    payload = {"a": [1, {"b": None}]}
    assert render.to_json(payload) == '{\n  "a": [\n    1,\n    {\n      "b": null\n    }\n  ]\n}'
    assert render.to_json(payload, pretty=False) == '{"a":[1,{"b":null}]}'


def test_rates_in_bits_on_request():
    from common.units import human_bits

    assert [human_bits(v) for v in (None, 0, 100, 1_500, 1_500_000, 2e9)] == \
        ["-", "0 bps", "800 bps", "12.0 kbps", "12.0 Mbps", "16.0 Gbps"]
    try:
        assert render.rate(1_500_000) == "1.5 MB/s"
        render.use_bits(True)
        assert render.rate(1_500_000) == "12.0 Mbps" and render.bits_shown()
        up = render.traffic_columns()[0]
        assert up.fmt(125.0) == "1.0 kbps"
    finally:
        render.use_bits(False)


def test_no_colour_on_a_dumb_terminal(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert render.color_enabled(False, Tty())
    monkeypatch.setenv("TERM", "dumb")
    assert not render.color_enabled(False, Tty())


def test_apps_table_names_the_unknown_process_line_marks_partial_and_shows_unknown_as_dash():
    from netmonctl.commands import apps as apps_command

    rows = [
        {"process_name": "dnsd", "pids": [7], "connections": 1, "upload_speed": 10.0, "download_speed": 0.0,
         "bytes_sent": 300, "bytes_received": 0, "partial": True},
        {"process_name": None, "pids": [], "connections": 0, "upload_speed": 0.0, "download_speed": 0.0,
         "bytes_sent": 700, "bytes_received": 300, "partial": False},
        {"process_name": "udpapp", "pids": [9], "connections": 1, "upload_speed": None, "download_speed": None,
         "bytes_sent": None, "bytes_received": None, "partial": False},
    ]

    class Settings:
        color, width = False, None

    text = apps_command._describe(rows, Settings())
    lines = text.splitlines()
    assert any(line.startswith("dnsd *") for line in lines)
    assert any(line.startswith(render.UNKNOWN_PROCESS_LABEL) for line in lines)
    udp_line = next(line for line in lines if line.startswith("udpapp"))
    assert udp_line.split()[-4:] == ["-", "-", "-", "-"]
    assert lines[-1] == render.PARTIAL_NOTE


def test_status_and_stats_name_the_connection_counts_alike():
    assert render.connection_counts({"connections": 2, "listeners": 3, "time_wait": 1}) == (
        "2 active, 3 listening, 1 TIME_WAIT")
    assert render.connection_counts({"active_connections": 2, "listeners": 3, "time_wait": 1}) == (
        "2 active, 3 listening, 1 TIME_WAIT")


def test_percentages_never_claim_all_or_nothing_when_not_exact():
    from common.units import human_percent

    assert [human_percent(p, 1000) for p in (0, 3, 10, 500, 996, 1000)] == ["0%", "<1%", "1%", "50%", ">99%", "100%"]
    assert human_percent(5, 0) == "-"
