"""Systems without a module of their own (neither Linux nor macOS)."""

from __future__ import annotations

import socket

from ..peercred import PeerCredentials


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """Unknown here: such a peer gets no control rights (docs/DESIGN.md §7)."""
    return None


def tune_allocator() -> None:
    """Nothing to tune."""
