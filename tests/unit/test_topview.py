"""netmonctl.topview: the `top` screen laid out on fixed data, without curses."""

from __future__ import annotations

import itertools

import pytest

from netmonctl import topview
from netmonctl.topview import Line, TopModel, ViewState, layout

NOW = 1_700_000_000.0


def history(n: int = 120, step: float = 0.5) -> list[dict]:
    """A ramp of n points ending at NOW; older than a minute at the start."""
    return [
        {"timestamp": NOW - (n - 1 - i) * step, "upload": 1000.0 * i, "download": 2000.0 * i}
        for i in range(n)
    ]


def app(name, pids, conns, up, down, sent, recv):
    return {"process_name": name, "pids": pids, "connections": conns, "upload_speed": up,
            "download_speed": down, "bytes_sent": sent, "bytes_received": recv}


def conn(proto, local, remote, state, pid, name, up, down, sent=0, recv=0, age=5.0):
    lport = int(local.rsplit(":", 1)[1])
    rport = int(remote.rsplit(":", 1)[1]) if remote else None
    return {"protocol": proto, "local_addr": local, "remote_addr": remote, "local_port": lport,
            "remote_port": rport, "state": state, "pid": pid, "process_name": name,
            "upload_speed": up, "download_speed": down, "bytes_sent": sent,
            "bytes_received": recv, "duration": age}


def remote(ip, name, conns, up, down, sent, recv, apps, port=None):
    return {"remote_ip": ip, "remote_port": port, "hostname": name, "scope": "internet", "connections": conns,
            "upload_speed": up, "download_speed": down, "bytes_sent": sent, "bytes_received": recv,
            "apps": apps, "partial": False}


REMOTES = [
    remote("127.0.0.1", "localhost", 1, 10_000.0, 20_000.0, 1_000_000, 2_000_000, ["python"]),
    remote("142.250.1.1", "fra16s52-in-f1.1e100.net", 30, 900_000.0, 2_500_000.0, 50_000_000, 900_000_000,
           ["firefox", "curl", "wget", "git"]),
    remote("2001:db8:ffff:eeee:dddd:cccc:bbbb:aaaa", None, 1, None, None, None, None, []),
]

STATS = {
    "total_upload_speed": 1_500_000.0,
    "total_download_speed": 3_500_000.0,
    "active_connections": 42,
    "interval": 1.0,
    "monitoring": True,
    "attributed_upload_speed": 1_000_000.0,
    "attributed_download_speed": 3_000_000.0,
    "unattributed_upload_speed": 500_000.0,
    "unattributed_download_speed": 500_000.0,
    "top_app": "firefox",
}

APPS = [
    app("python", [4242], 2, 10_000.0, 20_000.0, 1_000_000, 2_000_000),
    app("firefox", [100, 101, 102, 103], 30, 900_000.0, 2_500_000.0, 50_000_000, 900_000_000),
    app("unknown", [], 5, None, None, None, None),
    app("sshd", [22], 1, 0.0, 10.0, 5_000, 6_000),
]

CONNS = [
    conn("TCP", "127.0.0.1:5000", "127.0.0.1:80", "ESTABLISHED", 4242, "python", 10_000.0, 20_000.0),
    conn("TCP", "192.168.1.5:50000", "142.250.1.1:443", "ESTABLISHED", 100, "firefox",
         900_000.0, 2_500_000.0, 10_000_000, 80_000_000, 192.0),
    conn("TCP", "[2001:db8:1234:5678:9abc:def0:1234:5678]:51000",
         "[2001:db8:ffff:eeee:dddd:cccc:bbbb:aaaa]:443", "ESTABLISHED", None, None, None, None),
    conn("TCP", "0.0.0.0:22", None, "LISTEN", 22, "sshd", 0.0, 0.0),
    conn("UDP", "127.0.0.1:53", None, "NONE", None, None, None, None),
]


def model(**kw) -> TopModel:
    base = dict(stats=dict(STATS), apps=list(APPS), connections=list(CONNS), remotes=list(REMOTES),
                history=history(),
                where="/run/netmond.sock", clock=NOW)
    base.update(kw)
    return TopModel(**base)


def texts(lines: list[Line]) -> list[str]:
    return [line.text for line in lines]


def screen(lines: list[Line]) -> str:
    return "\n".join(texts(lines))


def check_bounds(lines: list[Line], width: int, height: int) -> None:
    assert len(lines) == max(0, height) if width > 0 else lines == []
    for line in lines:
        assert len(line.text) <= width, (width, line.text)
        assert line.style in topview.STYLES


def table_rows(lines: list[Line]) -> list[str]:
    """The lines between the table header and the footer (detail and key lines) that have text."""
    start = next(i for i, line in enumerate(lines) if line.style == "header")
    end = -2 if lines[-1].text.startswith("q:quit") else len(lines)
    return [line.text.rstrip() for line in lines[start + 1 : end] if line.text.strip()]


# -- whole screens ----------------------------------------------------------------


def test_apps_at_80x24_has_header_table_and_keys():
    lines = layout(model(), ViewState(), 80, 24)
    check_bounds(lines, 80, 24)
    text = texts(lines)
    assert lines[0].style == "title" and "applications" in text[0] and "every 1s" in text[0]
    assert text[1].startswith("up") and "1.5 MB/s" in text[1] and "peak" in text[1]
    assert text[2].startswith("down") and "3.5 MB/s" in text[2]
    assert any(ch in text[1] for ch in "▁▂▃▄▅▆▇█")
    assert "42 active connections" in text[3]
    assert "top app firefox" in text[3]
    assert "unattributed 20%" in text[3]  # 1 MB/s of 5 MB/s
    header = next(line.text for line in lines if line.style == "header")
    for col in ("PROCESS", "PIDS", "CONNS", "UP", "DOWN", "SENT", "RECV"):
        assert col in header
    rows = table_rows(lines)
    # Sorted by total speed, unknown (no counters) last.
    assert [r.split()[0] for r in rows] == ["firefox", "python", "sshd", "unknown"]
    assert "3.4 MB/s" not in rows[0] and "2.5 MB/s" in rows[0] and "900.0 kB/s" in rows[0]
    assert "100,101 +2" in rows[0]
    assert "-" in rows[3].split()  # unknown rates are "-", never 0
    assert lines[-1].text.startswith("q:quit") and lines[-1].style == "dim"


def test_connections_at_100x30_shows_addresses_and_cuts_long_ones():
    lines = layout(model(), ViewState(view="conns"), 100, 30)
    check_bounds(lines, 100, 30)
    assert "connections" in lines[0].text
    header = next(line.text for line in lines if line.style == "header")
    for col in ("PROTO", "LOCAL", "REMOTE", "STATE", "PROCESS", "UP", "DOWN"):
        assert col in header
    rows = table_rows(lines)
    assert "142.250.1.1:443" in rows[0] and "firefox" in rows[0]
    assert "127.0.0.1:80" in rows[1] and "python" in rows[1]
    ipv6 = next(r for r in rows if "bbbb:aaaa]:443" in r)
    assert "…" in ipv6  # 47 characters do not fit in 21: cut on the left, the port kept
    assert ipv6.split()[2].endswith("]:443") and ipv6.split()[1].endswith("]:51000")
    assert "5 connections" in screen(lines)


def test_remote_hosts_at_120x30_show_names_addresses_and_processes():
    lines = layout(model(), ViewState(view="remotes"), 120, 30)
    check_bounds(lines, 120, 30)
    assert "remote hosts" in lines[0].text
    header = next(line.text for line in lines if line.style == "header")
    for col in ("REMOTE", "ADDRESS", "CONNS", "PROCESSES", "UP", "DOWN", "SENT", "RECV"):
        assert col in header
    rows = table_rows(lines)
    assert rows[0].split()[:3] == ["fra16s52-in-f1.1e100.net", "142.250.1.1", "30"]
    assert "firefox +3" in rows[0]  # the processes that fit, then how many more
    assert rows[1].split()[:2] == ["localhost", "127.0.0.1"] and "python" in rows[1]
    # No name: the address (cut on its left); unknown rates last, as "-".
    assert rows[2].split()[0].endswith("bbbb:aaaa") and rows[2].split()[3:] == ["-"] * 5
    assert "3 remotes" in screen(lines)


def test_remote_hosts_at_100_and_80_keep_the_name_and_drop_the_address_first():
    header = next(line.text for line in layout(model(), ViewState(view="remotes"), 100, 30) if line.style == "header")
    assert "ADDRESS" not in header and {"REMOTE", "PROCESSES", "SENT"} <= set(header.replace("▼", "").split())
    lines = layout(model(), ViewState(view="remotes"), 80, 24)
    header = next(line.text for line in lines if line.style == "header")
    assert "PROCESSES" not in header and {"REMOTE", "CONNS", "UP", "DOWN"} <= set(header.replace("▼", "").split())
    assert table_rows(lines)[0].split()[0] == "fra16s52-in-f1.1e100.net"


def test_remote_hosts_at_80_cut_long_names_on_the_left():
    long = remote("198.51.100.7", "a-very-long-reverse-name-of-some-cloud-host.eu-west-1.compute.example.com",
                  1, 1e6, 1e6, 1, 1, ["curl"])
    lines = layout(model(remotes=[long]), ViewState(view="remotes"), 80, 24)
    check_bounds(lines, 80, 24)
    (row,) = table_rows(lines)
    assert row.startswith("…") and "compute.example.com" in row


def test_text_filter_in_remotes_matches_names_addresses_and_processes():
    def ips(text):
        return [r["remote_ip"] for r in topview.visible_rows(model(), ViewState(view="remotes", filter_text=text))]

    assert ips("1e100") == ["142.250.1.1"]
    assert ips("LOCALHOST") == ["127.0.0.1"]
    assert ips("wget") == ["142.250.1.1"]
    assert ips("2001:db8") == ["2001:db8:ffff:eeee:dddd:cccc:bbbb:aaaa"]


def test_connections_show_the_remotes_name_where_known():
    named = {**CONNS[1], "remote_host": "www.example.com", "remote_ip": "142.250.1.1"}
    rows = table_rows(layout(model(connections=[named]), ViewState(view="conns"), 120, 24))
    assert "www.example.com:443" in rows[0] and "142.250.1.1" not in rows[0]
    # A long name is cut on its left, as addresses are: the domain and the port stay.
    long = {**named, "remote_host": "fra16s52-in-f1.1e100.net"}
    rows = table_rows(layout(model(connections=[long]), ViewState(view="conns"), 100, 24))
    assert "1e100.net:443" in rows[0]
    numeric = {k: v for k, v in named.items() if k != "remote_host"}  # top -n does not ask for names
    rows = table_rows(layout(model(connections=[numeric]), ViewState(view="conns"), 120, 24))
    assert "142.250.1.1:443" in rows[0] and "example" not in rows[0]


def test_connections_at_80x24_drop_the_local_address_first():
    lines = layout(model(), ViewState(view="conns"), 80, 24)
    check_bounds(lines, 80, 24)
    header = next(line.text for line in lines if line.style == "header")
    assert "LOCAL" not in header
    assert {"REMOTE", "PROCESS", "UP", "DOWN"} <= set(header.replace("▼", "").split())


@pytest.mark.parametrize("view", topview.VIEWS)
def test_tiny_40x10_keeps_names_and_rates(view):
    lines = layout(model(), ViewState(view=view), 40, 10)
    check_bounds(lines, 40, 10)
    header = next(line.text for line in lines if line.style == "header")
    name = "REMOTE" if view == "remotes" else "PROCESS"
    assert {name, "UP", "DOWN"} <= set(header.replace("▼", "").split())
    rows = table_rows(lines)
    top = "1e100.net" if view == "remotes" else "firefox"
    assert rows and top in rows[0] and "kB/s" in rows[0]
    assert lines[-1].text.startswith("q:quit")


@pytest.mark.parametrize("view", topview.VIEWS)
def test_any_size_fits_without_crashing(view):
    m = model()
    for width, height in itertools.product((0, 1, 2, 5, 13, 27, 39, 61, 80, 133), (0, 1, 2, 3, 5, 7, 8, 24)):
        for ui in (ViewState(view=view), ViewState(view=view, help=True),
                   ViewState(view=view, editing_filter=True, filter_text="x" * 80)):
            check_bounds(layout(m, ui, width, height), width, height)
        check_bounds(layout(TopModel(), ViewState(view=view), width, height), width, height)


def test_rows_beyond_the_screen_are_counted():
    many = [app(f"app{i:03}", [i], 1, float(i), 0.0, i, i) for i in range(100)]
    lines = layout(model(apps=many), ViewState(), 80, 24)
    check_bounds(lines, 80, 24)
    assert len(table_rows(lines)) == 24 - 4 - 2 - 2 == topview.table_room(24)
    assert "100 apps, rows 1-16 shown" in screen(lines)
    assert table_rows(lines)[0].startswith("app099")


# -- keys' effects -----------------------------------------------------------------


def test_sort_cycle_reverse_and_arrow():
    assert topview.next_sort("apps", "speed") == "upload_speed"
    assert topview.next_sort("apps", "process_name") == "speed"  # wraps
    assert topview.next_sort("apps", "duration") == "speed"  # not an apps key
    by_name = layout(model(), ViewState(sort="process_name"), 80, 24)
    assert [r.split()[0] for r in table_rows(by_name)] == ["firefox", "python", "sshd", "unknown"]
    header = next(line.text for line in by_name if line.style == "header")
    assert "PROCESS ▲" in header and "UP ▼" not in header
    assert "sort: process_name ▲" in screen(by_name)
    reverse = layout(model(), ViewState(sort="process_name", reverse=True), 80, 24)
    assert [r.split()[0] for r in table_rows(reverse)] == ["unknown", "sshd", "python", "firefox"]
    up = layout(model(), ViewState(sort="upload_speed"), 80, 24)
    header = next(line.text for line in up if line.style == "header")
    assert "UP ▼" in header and "DOWN ▼" not in header


def test_text_filter_matches_process_ip_and_port():
    def names(text, view="conns"):
        rows = topview.visible_rows(model(), ViewState(view=view, filter_text=text))
        return [r["process_name"] for r in rows]

    assert names("PYTH") == ["python"]
    assert names("142.250") == ["firefox"]
    assert names("443") == ["firefox", None]  # remote ports 443
    assert names("22") == ["sshd"]  # local port
    assert names("fire", view="apps") == ["firefox"]
    assert names("4242", view="apps") == ["python"]  # a pid
    lines = layout(model(), ViewState(filter_text="nothing-like-this"), 80, 24)
    assert "no rows match the filter" in screen(lines)
    assert "0 apps  filter 'nothing-like-this'" in screen(lines)


def test_editing_filter_shows_a_prompt():
    lines = layout(model(), ViewState(filter_text="fir", editing_filter=True), 80, 24)
    assert "filter: fir_" in screen(lines)
    assert [r.split()[0] for r in table_rows(lines)] == ["firefox"]


def test_paused_help_and_message():
    assert "PAUSED" in layout(model(), ViewState(paused=True), 80, 24)[0].text
    helped = screen(layout(model(), ViewState(help=True), 80, 24))
    assert "q        quit" in helped and "+ / -" in helped
    msg = layout(model(), ViewState(message=topview_denied()), 80, 24)
    line = next(line for line in msg if "needs root" in line.text)
    assert line.style == "alert"


def topview_denied() -> str:
    from netmonctl.commands.top import DENIED

    return DENIED


def test_unreachable_daemon_is_said_and_old_rows_are_dimmed():
    lines = layout(model(connected=False, outage="daemon closed the connection", retry_in=1.25),
                   ViewState(), 100, 30)
    check_bounds(lines, 100, 30)
    status = next(line for line in lines if "daemon unreachable" in line.text)
    assert status.style == "alert"
    assert "/run/netmond.sock" in status.text and "reconnecting in 1.2s" in status.text
    rows = [line for line in lines if "firefox" in line.text and line.style != "normal"]
    assert rows and rows[0].style == "dim"


def test_a_silent_daemon_is_said():
    lines = layout(model(silent_for=75.0), ViewState(), 100, 30)
    status = next(line for line in lines if "no update from the daemon for 1m 15s" in line.text)
    assert status.style == "alert" and "monitoring stopped?" in status.text


def test_no_data_yet():
    lines = layout(TopModel(where="/s"), ViewState(), 80, 24)
    check_bounds(lines, 80, 24)
    assert "waiting for data" in screen(lines)
    assert lines[1].text.startswith("up") and "-" in lines[1].text


def test_sparkline_shows_the_last_minute_only():
    # 240 points at 0.5 s of a ramp from 0: the 120 of the last 60 s are
    # drawn, one per character, so the line starts half way up (▅), not at 0.
    line = layout(model(history=history(240)), ViewState(), 200, 24)[1].text
    spark = line.split("/s ", 1)[1].split("  peak")[0].strip()
    assert len(spark) == 120 and spark[0] == "▅" and spark[-1] == "█"
    assert "peak 239.0 kB/s" in line


def test_ascii_mode_has_no_unicode():
    lines = layout(model(), ViewState(ascii=True, view="conns"), 80, 24)
    assert all(line.text.isascii() for line in lines)
    assert "#" in lines[1].text  # the sparkline's top


def test_control_characters_in_names_are_not_sent_to_the_terminal():
    evil = [app("bad\x1b]0;pwned\x07name", [1], 1, 10.0, 10.0, 1, 1)]
    out = screen(layout(model(apps=evil, stats={**STATS, "top_app": "x\x1by"}), ViewState(), 80, 24))
    assert "\x1b" not in out and "\x07" not in out
    assert "bad?]0;pwned?" in out and "top app x?y" in out


def test_unattributed_share():
    assert topview.unattributed_percent(STATS) == pytest.approx(20.0)
    assert topview.unattributed_percent({**STATS, "total_upload_speed": 0, "total_download_speed": 0}) is None
    assert topview.unattributed_percent(None) is None
    assert topview.unattributed_percent({"total_upload_speed": 5.0}) is None  # unknown, not 0%


# -- scrolling (issue 13 item 3) ------------------------------------------------------


def test_window_keeps_the_selection_visible_and_the_screen_full():
    assert topview.window(0, 0, 0, 10) == (0, 0)
    assert topview.window(5, 0, 100, 10) == (5, 0)
    assert topview.window(15, 0, 100, 10) == (15, 6)  # scrolled just enough
    assert topview.window(3, 6, 100, 10) == (3, 3)  # back up
    assert topview.window(99, 0, 100, 10) == (99, 90)
    assert topview.window(500, 95, 100, 10) == (99, 90)  # rows went away: clamped, no blank tail
    assert topview.window(-3, -1, 100, 10) == (0, 0)


def test_scroll_keys_move_selection_and_pages():
    many = [app(f"app{i:03}", [i], 1, float(i), 0.0, i, i) for i in range(100)]
    ui = ViewState(sort="process_name")
    room = topview.table_room(24)
    for key, selected, offset in (("down", 1, 0), ("pgdn", 1 + room, room), ("end", 99, 100 - room),
                                  ("up", 98, 100 - room), ("pgup", 98 - room, 100 - 2 * room),
                                  ("home", 0, 0)):
        topview.scroll(ui, key, len(many), room)
        assert (ui.selected, ui.offset) == (selected, offset), key
    topview.scroll(ui, "pgdn", len(many), room)
    lines = layout(model(apps=many), ui, 80, 24)
    rows = table_rows(lines)
    assert rows[0].startswith(f"app{room:03}") and len(rows) == room
    assert f"100 apps, rows {room + 1}-{2 * room} shown" in screen(lines)
    chosen = [line for line in lines if line.style == "selected"]
    assert len(chosen) == 1 and chosen[0].text.startswith(f"app{room:03}")  # the first after a page
    topview.scroll(ui, "end", len(many), room)
    assert table_rows(layout(model(apps=many), ui, 80, 24))[-1].startswith("app099")
    assert topview.selected_row(model(apps=many), ui)["process_name"] == "app099"


def test_the_detail_line_sits_above_the_keys():
    lines = layout(model(detail="pid 4242  python3 -m http.server 8000"), ViewState(), 80, 24)
    assert lines[-2].text == "pid 4242  python3 -m http.server 8000" and lines[-2].style == "dim"
    assert lines[-1].text.startswith("q:quit")


# -- column widths and priorities (issue 13 item 4) -----------------------------------

MAPPED = conn("TCP", "[::ffff:127.0.0.1]:54321", "[::ffff:127.0.0.1]:8080", "ESTABLISHED", 13333,
              "python3", 1000.0, 2000.0, 3000, 4000)
MANY_PIDS = app("python3", list(range(13333, 13345)), 4, 1000.0, 2000.0, 5000, 6000)


def header_of(lines: list[Line]) -> list[str]:
    text = next(line.text for line in lines if line.style == "header")
    return text.replace("▼", "").replace("▲", "").split()


def test_apps_at_120_share_the_width_between_process_and_pids():
    lines = layout(model(apps=[MANY_PIDS]), ViewState(), 120, 24)
    row = table_rows(lines)[0]
    pids = row.split()[1]
    assert pids.startswith("13333,13334,13335,13336") and row.split()[2].startswith("+")  # whole pids, "+N"
    widths = dict(((c.column.header, w) for c, w in topview.fit_columns(topview.APP_COLUMNS, 120, "speed")))
    assert widths["PROCESS"] <= 40 and widths["PIDS"] >= 24


@pytest.mark.parametrize("width", [80, 100, 120, 160, 200])
def test_addresses_never_lose_their_port(width):
    lines = layout(model(connections=[MAPPED, *CONNS]), ViewState(view="conns"), width, 24)
    check_bounds(lines, width, 24)
    header = header_of(lines)
    rows = table_rows(lines)
    mapped = next(r for r in rows if "13333" in r or "python3" in r).split()
    for name, port in (("LOCAL", ":54321"), ("REMOTE", ":8080")):
        if name in header:
            assert mapped[header.index(name)].endswith(port), (width, mapped)
    assert "REMOTE" in header
    if width >= 160:
        assert "[::ffff:127.0.0.1]:8080" in mapped and "[::ffff:127.0.0.1]:54321" in mapped  # both whole


@pytest.mark.parametrize("width", [80, 100, 120, 140, 160])
@pytest.mark.parametrize("view", topview.VIEWS)
def test_sent_and_recv_go_together_and_the_sort_column_always_shows(width, view):
    for sort in topview.SORT_KEYS[view]:
        header = header_of(layout(model(), ViewState(view=view, sort=sort), width, 24))
        assert ("SENT" in header) == ("RECV" in header), (width, sort, header)
        shows = {c.column.header for c in topview.VIEW_COLUMNS[view] if sort in c.sorts}
        assert shows <= set(header), (width, sort, header)


def test_status_says_bytes_and_speed_are_totals():
    assert "sort: bytes (sent+recv) ▼" in screen(layout(model(), ViewState(sort="bytes"), 80, 24))
    assert "sort: speed (up+down) ▼" in screen(layout(model(), ViewState(), 80, 24))


def test_conns_at_80_sorted_by_age_shows_age():
    lines = layout(model(), ViewState(view="conns", sort="duration"), 80, 24)
    assert "AGE" in header_of(lines)
