"""Running the server: bind the socket first, then hand it to uvicorn.

Binding before uvicorn starts turns the usual start-up failures (a port in use, a host
that does not resolve or is not this machine's) into one `ConfigError` line with what
to do, instead of uvicorn's several lines of log and exit code 1; it also gives the
caller the socket to check (`is_loopback`) before anything is served, and the real
port when port 0 asked for any free one.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from lumenlm.errors import ConfigError


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening; a `ConfigError` saying
    what to do when the host is unknown or not this machine's, or the port is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"--host {host}: cannot resolve it ({why}); give an address such as 127.0.0.1"
        ) from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first, as clients try
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            msg = (
                f"port {port} on {host} is already in use; use another --port (0 = any free "
                "port), or stop what is listening there"
            )
        elif exc.errno == errno.EADDRNOTAVAIL:
            msg = (
                f"--host {host}: not an address of this machine; use 127.0.0.1 (this "
                "machine only) or an address of one of its interfaces"
            )
        elif exc.errno == errno.EACCES:
            msg = (
                f"--port {port}: permission denied (ports below 1024 need privileges); use a "
                "port >= 1024"
            )
        else:
            msg = f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and --port"
        raise ConfigError(msg) from None
    return sock


def is_loopback(sock: socket.socket) -> bool:
    """Whether `sock` is bound to a loopback address (reachable from this machine only)."""
    try:
        return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback
    except ValueError:
        return False


def url_of(sock: socket.socket) -> str:
    """http://HOST:PORT of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    app: Any,
    sock: socket.socket | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Run `app` with uvicorn on `sock` (default: `bind_socket(host, port)`) until
    interrupted. (uvicorn does not log the address of a socket it is given: `url_of`.)"""
    import uvicorn

    sock = sock if sock is not None else bind_socket(host, port)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])
