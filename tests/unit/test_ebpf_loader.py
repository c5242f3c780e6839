"""What decides whether eBPF root mode can run (loader's cheap checks), on recorded inputs."""

from __future__ import annotations

import pytest

from netmond.backends.ebpf import loader

HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


@pytest.mark.parametrize("mounts, expected", [
    (HYBRID_MOUNTS, "/sys/fs/cgroup/unified"),
    ("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n", "/sys/fs/cgroup"),
    ("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n", None),  # v1 only
    ("none /my\\040cgroups cgroup2 rw 0 0\n", "/my cgroups"),  # escaped space
])
def test_cgroup2_mount_is_found_wherever_it_is(tmp_path, mounts, expected):
    path = tmp_path / "mounts"
    path.write_text(mounts)
    assert loader.cgroup2_mount(str(path)) == expected


def test_cgroup2_mount_unreadable_is_none(tmp_path):
    assert loader.cgroup2_mount(str(tmp_path / "absent")) is None


def caps(*numbers: int) -> int:
    return sum(1 << n for n in numbers)


@pytest.mark.parametrize("mask, missing", [
    (caps(*range(41)), []),  # root
    (caps(loader.CAP_BPF, loader.CAP_PERFMON, loader.CAP_NET_ADMIN), []),
    (caps(loader.CAP_SYS_ADMIN, loader.CAP_NET_ADMIN), []),  # pre-5.8 style
    (caps(loader.CAP_BPF, loader.CAP_NET_ADMIN), ["CAP_PERFMON"]),
    (0, ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]),
])
def test_missing_capabilities(mask, missing):
    assert loader.missing_capabilities(mask) == missing


def test_effective_capabilities_read_from_status(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n")
    assert loader.effective_capabilities(str(status)) == 0x1FFFFFFFFFF
    status.write_text("Name:\tx\n")
    assert loader.effective_capabilities(str(status)) == 0


@pytest.mark.parametrize("release, expected", [
    ("6.18.44-fc-v1147", (6, 18)),
    ("5.10.0-21-amd64", (5, 10)),
    ("4.19.0", (4, 19)),
    ("weird", (0, 0)),
])
def test_kernel_version(release, expected):
    assert loader.kernel_version(release) == expected


def test_a_missing_object_is_the_reason_when_all_else_is_there(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "effective_capabilities", lambda: caps(*range(41)))
    monkeypatch.setattr(loader, "cgroup2_mount", lambda: "/sys/fs/cgroup")
    monkeypatch.setattr(loader, "kernel_version", lambda: (6, 1))
    reason = loader.unavailable_reason(str(tmp_path / "netmon.bpf.o"))
    assert reason.startswith(f"the BPF object {tmp_path / 'netmon.bpf.o'} was not built")


def test_an_old_kernel_is_the_reason(monkeypatch):
    monkeypatch.setattr(loader, "effective_capabilities", lambda: caps(*range(41)))
    monkeypatch.setattr(loader, "kernel_version", lambda: (5, 4))
    assert loader.unavailable_reason() == "kernel 5.4 is older than 5.10"


def test_ebpf_setting_is_validated_and_turned_off_by_the_flag():
    from netmond.config import ConfigError, build_config
    from netmond.main import build_parser

    assert build_config().ebpf is True
    assert build_config({"ebpf": False}).ebpf is False
    with pytest.raises(ConfigError, match="ebpf must be true or false, got 'no'"):
        build_config({"ebpf": "no"})
    assert build_parser().parse_args(["--no-ebpf"]).ebpf is False
    assert build_parser().parse_args([]).ebpf is None  # not given: the file or the default decides


def test_status_shows_the_root_mode_line_only_where_there_is_one():
    from netmonctl.commands.status import _describe

    on = _describe({"root_mode": {"active": True, "reason": "eBPF programs attached"}})
    assert "root mode:   on (eBPF programs attached)" in on
    off = _describe({"root_mode": {"active": False, "reason": "turned off (--no-ebpf / ebpf = false)"}})
    assert "root mode:   off (turned off (--no-ebpf / ebpf = false))" in off
    assert "root mode" not in _describe({"root_mode": None})  # darwin, portable
