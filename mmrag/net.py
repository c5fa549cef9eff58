"""One quick TCP connect, to tell "unreachable" in milliseconds instead of after a client's retries."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


def tcp_connect(url: str, *, default_port: int, default_host: str = "localhost", timeout: float = 3.0) -> None:
    """Open and close one TCP connection to `url`'s host and port (https: 443, else
    `default_port`); OSError when that fails. A bare `host:port` is read as http."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or default_host
    port = parts.port or (443 if parts.scheme == "https" else default_port)
    socket.create_connection((host, port), timeout=timeout).close()
