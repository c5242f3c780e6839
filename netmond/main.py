"""netmond command line: argv -> config -> logging -> app.run(). Nothing else.

`netmond service ...` (install as a launchd/systemd service) is dispatched to
netmond.service before the daemon's own options are parsed, so the daemon's
argv stays exactly as documented.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from common import __version__

from .config import BACKENDS, LOG_LEVELS, ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="netmond",
        description="netmon daemon: samples every connection, its process and its bytes, "
        "and serves them on a Unix socket to netmonctl.",
        epilog="Run as a service: `netmond service install [--user]` (launchd on macOS, "
        "systemd on Linux); see `netmond service --help`.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: "
                   "/etc/netmon/netmond.toml for root, ~/.config/netmon/netmond.toml otherwise)")
    p.add_argument("--socket", metavar="PATH", help="Unix socket path to listen on")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="sampling interval (default 1)")
    p.add_argument("--history-seconds", type=int, metavar="N", help="bandwidth history kept (default 3600)")
    p.add_argument("--closed-retention", type=float, metavar="SECONDS",
                   help="how long closed connections stay listed (default 60)")
    p.add_argument("--include-loopback", action=argparse.BooleanOptionalAction, default=None,
                   help="monitor loopback (127.0.0.0/8, ::1) sockets and count the loopback "
                        "interface, in every view (default: yes)")
    p.add_argument("--backend", choices=BACKENDS, help="where the numbers come from (default auto)")
    p.add_argument("--socket-group", metavar="GROUP", help="group allowed to use a root daemon's socket")
    p.add_argument("--max-clients", type=int, metavar="N", help="concurrent clients (default 128)")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus /metrics there, e.g. 127.0.0.1:9101 (default: off)")
    p.add_argument("--metrics-textfile", metavar="PATH",
                   help="write Prometheus metrics to PATH every tick, for node_exporter's textfile collector")
    p.add_argument("--no-ebpf", dest="ebpf", action="store_const", const=False, default=None,
                   help="Linux: never load the eBPF programs of root mode (config: ebpf = false)")
    p.add_argument("--no-resolve", dest="resolve", action="store_const", const=False, default=None,
                   help="never look up the names of remote addresses (reverse DNS sends their addresses "
                   "to the configured DNS server; config: resolve = false)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="where usage over days is stored (default: /var/lib/netmon for root, "
                        "$XDG_DATA_HOME/netmon otherwise)")
    p.add_argument("--no-store-usage", dest="store_usage", action="store_const", const=False, default=None,
                   help="keep no usage on disk: `netmonctl usage` is then unavailable (config: store_usage = false)")
    p.add_argument("--usage-retention-days", type=int, metavar="N",
                   help="days of usage kept (default 400; hours older than 35 days are kept as days)")
    p.add_argument("--usage-write-interval", type=float, metavar="SECONDS",
                   help="seconds between writes of usage to disk, 0.1 - 10 (default 10)")
    p.add_argument("--version", action="version", version=f"netmond {__version__}")
    return p


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as config keys: each daemon flag's dest is its config
    key (build_config refuses any other name), --config aside."""
    return {key: value for key, value in vars(args).items() if key != "config" and value is not None}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["service"]:
        from .service import main as service_main  # only then: keeps startup light

        return service_main(argv[1:])
    args = build_parser().parse_args(argv)
    overrides = config_overrides(args)
    try:
        config = load_config(args.config, **overrides)
    except ConfigError as exc:
        print(f"netmond: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s netmond[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not (config.metrics_listen or config.metrics_textfile):
        # Nothing to serve but a Unix socket: keep OpenSSL out of the daemon.
        # asyncio imports ssl when it can (libssl + libcrypto: ~5 MB of RSS)
        # and runs without it; the Prometheus exporter needs it, hence the if.
        # (None in sys.modules makes `import ssl` fail: documented, not in typeshed.)
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from . import platform  # after logging is set up; keeps --help/--version fast

    platform.tune_allocator()  # before the daemon's modules allocate
    from . import app

    return app.run(
        config,
        config_path=args.config,
        cli_overrides=overrides,
    )


if __name__ == "__main__":
    sys.exit(main())
