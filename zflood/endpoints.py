"""ZeroMQ tcp endpoints: the one place that builds tcp://HOST:PORT and takes it apart."""

from __future__ import annotations

import contextlib
import ipaddress

from .errors import LocalError


def tcp_endpoint(host: str, port: int) -> str:
    """tcp://HOST:PORT, with an IPv6 HOST in brackets."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"tcp://[{host}]:{port}"
    return f"tcp://{host}:{port}"


def tcp_parts(endpoint: str) -> tuple[str, str] | None:
    """(HOST as written, PORT as text) of tcp://HOST:PORT, or None if it has no such form.
    An IPv6 HOST keeps its brackets."""
    if not endpoint.startswith("tcp://"):
        return None
    host, colon, port = endpoint[len("tcp://") :].rpartition(":")
    return (host, port) if colon and host else None


def tcp_port(endpoint: str, *, any_port: bool = False) -> int:
    """The port of a tcp://HOST:PORT endpoint (0 only with `any_port`: "pick one"), or a
    LocalError saying what is wrong with it. libzmq itself would take port 99999 as 34463."""
    parts = tcp_parts(endpoint)
    if parts is None or not parts[1].isdigit():
        raise LocalError(f"{endpoint!r} is not tcp://HOST:PORT")
    port, low = int(parts[1]), 0 if any_port else 1
    if not low <= port <= 65535:
        raise LocalError(f"{endpoint!r}: the port must be {low} to 65535")
    return port
