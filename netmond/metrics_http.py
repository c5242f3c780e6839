"""The HTTP side of the Prometheus exporter (netmond.metrics): `/metrics` served
by http.server, bounded (see metrics.py's "Safe on a shared machine").

A module of its own so that http.server is imported only by a daemon that
serves metrics over HTTP.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class MetricsHandler(BaseHTTPRequestHandler):
    """GET /metrics (or /): the exposition; anything else 404. One request per connection."""

    server_version = "netmond"
    server: "BoundedHTTPServer"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)  # a silent client is dropped

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served here")
            return
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no line per scrape
        pass


class BoundedHTTPServer(ThreadingHTTPServer):
    """http.server with at most `max_connections` connections being served."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, registry: Any, max_connections: int, request_timeout: float) -> None:
        self.registry = registry
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), MetricsHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the bound: its descriptor goes at once
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away or timed out: nothing to log
