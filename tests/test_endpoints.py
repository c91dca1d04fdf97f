"""tcp://HOST:PORT, built and taken apart in one place."""

from __future__ import annotations

import pytest

from zflood import LocalError
from zflood.endpoints import tcp_endpoint, tcp_parts, tcp_port


@pytest.mark.parametrize(("host", "port", "endpoint"), [
    ("192.0.2.7", 5670, "tcp://192.0.2.7:5670"),
    ("::1", 80, "tcp://[::1]:80"),
    ("fe80::1%eth0", 9, "tcp://[fe80::1%eth0]:9"),
    ("box.local", 1, "tcp://box.local:1"),
])
def test_built_endpoints_come_apart_again(host: str, port: int, endpoint: str) -> None:
    assert tcp_endpoint(host, port) == endpoint
    parts = tcp_parts(endpoint)
    assert parts is not None and parts[0].strip("[]") == host
    assert tcp_port(endpoint) == port


@pytest.mark.parametrize("endpoint", ["tcp://host", "tcp://:5", "ipc://x:5", "host:5", ""])
def test_what_is_not_tcp_host_port(endpoint: str) -> None:
    assert tcp_parts(endpoint) is None
    with pytest.raises(LocalError, match="is not tcp://HOST:PORT"):
        tcp_port(endpoint)


def test_ports_out_of_range_are_refused_not_wrapped() -> None:
    with pytest.raises(LocalError, match="1 to 65535"):
        tcp_port("tcp://127.0.0.1:99999")  # libzmq would bind 34463
    with pytest.raises(LocalError, match="1 to 65535"):
        tcp_port("tcp://127.0.0.1:0")
    assert tcp_port("tcp://127.0.0.1:0", any_port=True) == 0
    with pytest.raises(LocalError, match="is not tcp://HOST:PORT"):
        tcp_port("tcp://127.0.0.1:*")
