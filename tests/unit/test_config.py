"""config.py: defaults and overrides, the daemon's flags as config keys, clear
messages for invalid values and files."""

from __future__ import annotations

import pytest

from netmond.config import Config, ConfigError, build_config, load_config
from netmond.main import build_parser, config_overrides


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text('interval = 2\nhistory_seconds = 600\n[netmond]\ninclude_loopback = true\n')
    cfg = load_config(str(f), interval=0.5)
    assert cfg.interval == 0.5 and cfg.history_seconds == 600 and cfg.include_loopback is True


@pytest.mark.parametrize("kw,needle", [
    ({"interval": 0}, "interval must be between"),
    ({"interval": "fast"}, "interval must be a number"),
    ({"history_seconds": 1.5}, "whole number"),
    ({"backend": "bpf"}, "backend must be one of"),
    ({"log_level": "loud"}, "log_level"),
    ({"metrics_listen": "9100"}, "HOST:PORT"),
    ({"socket": "/tmp/" + "x" * 200}, "too long"),
    ({"bogus_key": 1}, "unknown setting 'bogus_key'"),
    ({"usage_retention_days": 0}, "usage_retention_days must be between 1"),
    ({"usage_retention_days": 1.5}, "usage_retention_days must be a whole number"),
    ({"usage_write_interval": 11}, "usage_write_interval must be between"),
    ({"store_usage": "yes"}, "store_usage must be true or false"),
    ({"data_dir": 5}, "data_dir must be a directory path"),
])
def test_invalid_values_have_clear_messages(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config({}, **kw)


def test_every_daemon_flag_is_its_config_key():
    argv = ["--socket", "/tmp/s.sock", "--interval", "2", "--history-seconds", "60", "--closed-retention", "5",
            "--no-include-loopback", "--backend", "portable", "--socket-group", "0", "--max-clients", "7",
            "--log-level", "debug", "--metrics-listen", "127.0.0.1:9101", "--metrics-textfile", "/tmp/m.prom",
            "--no-ebpf", "--no-resolve", "--data-dir", "/tmp/nm-data", "--no-store-usage",
            "--usage-retention-days", "30", "--usage-write-interval", "2", "--config", "/tmp/n.toml"]
    flags = {a.dest for a in build_parser()._actions if a.dest not in ("help", "version", "config")}
    overrides = config_overrides(build_parser().parse_args(argv))
    assert set(overrides) == flags and flags <= set(Config.__dataclass_fields__)
    cfg = build_config(**overrides)
    assert (cfg.interval, cfg.history_seconds, cfg.include_loopback, cfg.ebpf, cfg.max_clients) == (2, 60, False, False, 7)
    assert cfg.resolve is False
    assert (cfg.data_path(), cfg.store_usage, cfg.usage_retention_days, cfg.usage_write_interval) == (
        "/tmp/nm-data", False, 30, 2.0)
    assert config_overrides(build_parser().parse_args([])) == {}  # nothing given: the file and defaults decide


def test_bad_toml_names_the_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("interval = = 2")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(str(f))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.toml"))
