"""Zeroconf (mDNS/DNS-SD): announce this node, browse for the other members of its group.

Theory of operation. We register one `_zflood._tcp` service whose instance name holds the node
id, so it is unique by construction; that lets us skip the probe for name conflicts
(`cooperating_responders=True`), which otherwise costs about 1.2 s before anyone can see us.
TXT records carry the protocol version, the public group id and the node id. We browse the same
type; a service of our group that is not ourselves is resolved (usually straight from the
cache, since announcements carry SRV, TXT and A records together) and reported with
`on_found(node, "tcp://ip:port")`; its removal with `on_lost(node)`.

mDNS is unauthenticated, and a crashed node's record can linger for its TTL: `on_found` is a
hint to dial, never proof of life or of identity. The mesh's CURVE handshake and HIs are that.

Anyone on the LAN can also announce thousands of records carrying our (public) group id. With a
`record_key` (the daemon derives one from the group secret: `record_key(group)`), our TXT
carries a tag `t`, a keyed hash of node id and port that only members can make, and records of
our group without a valid tag are not reported: a stranger's fakes cost a parse, never a dial.
(A copied tag names a real member's node and port, so replays add at most one record per
member; the mesh bounds what it dials anyway, see zflood.liveness.) A record is resolved from
the cache when its announcement carried everything, as ours do, and over the network only
`max_resolving` at a time; at most `max_records` reported records are remembered.

On close the goodbye (TTL 0) is awaited, or it never leaves and peers keep the record.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .config import DEFAULT, Config
from .endpoints import tcp_endpoint
from .errors import LocalError
from .identity import Group

log = logging.getLogger("zflood.discovery")

SERVICE_TYPE = "_zflood._tcp.local."
PROTOCOL_VERSION = b"1"
_RESOLVE_MS = 3000
_SIOCGIFADDR = 0x8915


def instance_label(node: bytes) -> str:
    """A DNS label (at most 63 bytes) holding the whole node id: base32 fits, hex does not."""
    return "zflood-" + base64.b32encode(node).decode().rstrip("=").lower()


def record_key(group: Group) -> bytes:
    """The key that tags our mDNS records: from the group secret, so members alone hold it."""
    return hashlib.blake2b(b"zflood:mdns-record", key=group.secret, digest_size=32).digest()


def record_tag(key: bytes, node: bytes, port: int) -> bytes:
    """The TXT `t` value (hex) a member with `node` listening on `port` announces."""
    mac = hashlib.blake2b(node + port.to_bytes(2, "big"), key=key, digest_size=16)
    return mac.hexdigest().encode()


def interface_ipv4(name: str) -> str:
    """The IPv4 address of interface `name` (Linux ioctl: no dependency)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError as e:
            raise LocalError(f"interface {name!r} has no IPv4 address ({e.strerror})") from None
    return socket.inet_ntoa(req[20:24])


def host_addresses(interfaces: list[str] | None) -> list[str]:
    """IP addresses for `interfaces` (names or IPs); None: every interface's IPv4 address,
    loopback only if there is nothing else."""
    if interfaces is not None:
        return [_address_of(i) for i in interfaces]
    found: list[str] = []
    for _, name in socket.if_nameindex():
        with contextlib.suppress(LocalError):
            found.append(interface_ipv4(name))
    outside = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return outside or found


def _address_of(interface: str) -> str:
    try:
        return str(ipaddress.ip_address(interface))
    except ValueError:
        return interface_ipv4(interface)


def best_address(candidates: list[str], ours: list[str]) -> str | None:
    """The peer address most likely reachable from here: not one of ours (say, the same
    docker0 address every host has), sharing the longest prefix with one of ours."""
    if not candidates:
        return None
    own = [ipaddress.ip_address(a) for a in ours]

    def score(text: str) -> tuple[bool, int]:
        a = ipaddress.ip_address(text)
        same = [o for o in own if o.version == a.version]
        shared = max((a.max_prefixlen - (int(a) ^ int(o)).bit_length() for o in same), default=0)
        return a not in own, shared

    return max(candidates, key=score)


class Discovery:
    def __init__(
        self,
        node: bytes,
        group_id: bytes,
        port: int,
        *,
        on_found: Callable[[bytes, str], None],
        on_lost: Callable[[bytes], None],
        interfaces: list[str] | None = None,
        config: Config = DEFAULT,
        record_key: bytes | None = None,
    ) -> None:
        self.node = node
        self._record_key = record_key
        self._config = config
        self._group_hex = group_id.hex().encode()
        self._port = port
        self._on_found = on_found
        self._on_lost = on_lost
        self._interfaces = interfaces
        self._addresses: list[str] = []
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._announcing: asyncio.Future[None] | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._reported: dict[str, tuple[bytes, str]] = {}  # service name -> (node, endpoint)

    async def start(self) -> None:
        """Announce (no probing: the name is unique by construction) and browse."""
        self._addresses = host_addresses(self._interfaces)
        bind = self._addresses if self._interfaces is not None else InterfaceChoice.All
        self._zc = AsyncZeroconf(interfaces=bind)
        label = instance_label(self.node)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{label}.{SERVICE_TYPE}",
            port=self._port,
            properties=self._properties(),
            server=f"{label}.local.",
            parsed_addresses=self._addresses,
        )
        try:
            self._browser = AsyncServiceBrowser(
                self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
            )
            announcing = await self._zc.async_register_service(
                self._info, cooperating_responders=True
            )
        except BaseException:
            self._info = None  # not registered: no goodbye to send
            await self.close()
            raise
        self._announcing = asyncio.ensure_future(announcing)  # repeats the announcement twice
        log.info("announced %s on %s port %d", label, self._addresses, self._port)

    def _properties(self) -> dict[bytes, bytes | str]:
        props: dict[bytes, bytes | str] = {
            b"v": PROTOCOL_VERSION, b"g": self._group_hex, b"n": self.node.hex()}
        if self._record_key is not None:
            props[b"t"] = record_tag(self._record_key, self.node, self._port)
        return props

    async def close(self) -> None:
        """Goodbye (awaited, so it leaves), stop browsing, close Zeroconf."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        if self._browser is not None:
            await self._browser.async_cancel()
        for task in self._resolving.values():
            task.cancel()
        await asyncio.gather(*self._resolving.values(), return_exceptions=True)
        self._resolving.clear()
        if self._announcing is not None:
            self._announcing.cancel()  # a late repeat must not follow the goodbye
            await asyncio.gather(self._announcing, return_exceptions=True)
        if self._info is not None:
            await (await zc.async_unregister_service(self._info))
        await zc.async_close()

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        old = self._resolving.pop(name, None)
        if old is not None:
            old.cancel()  # a newer event supersedes it; a removal must not be overtaken
        if state_change is ServiceStateChange.Removed:
            gone = self._reported.pop(name, None)
            if gone is not None:
                log.info("lost %s", gone[0].hex()[:8])
                try:
                    self._on_lost(gone[0])
                except Exception:
                    log.exception("on_lost callback failed")
        elif self._zc is not None:
            info = AsyncServiceInfo(service_type, name)
            if info.load_from_cache(zeroconf):  # announcements carry SRV, TXT and A
                self._found(name, info)
            elif len(self._resolving) < self._config.max_resolving:
                self._resolving[name] = asyncio.create_task(self._resolve(service_type, name))
            else:
                log.debug("not resolving %s: %d records resolving already", name,
                          len(self._resolving))

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(service_type, name)
        try:
            if await info.async_request(self._zc.zeroconf, _RESOLVE_MS):
                self._found(name, info)
        except Exception:
            log.exception("resolving %s failed", name)
        finally:
            if self._resolving.get(name) is asyncio.current_task():
                del self._resolving[name]

    def _found(self, name: str, info: AsyncServiceInfo) -> None:
        props = info.properties
        if props.get(b"v") != PROTOCOL_VERSION or props.get(b"g") != self._group_hex:
            return  # another protocol version or another group: not for us
        try:
            node = bytes.fromhex((props.get(b"n") or b"").decode())
        except ValueError:
            node = b""
        if len(node) != 32 or not info.port:
            log.debug("ignored %s: malformed TXT or port", name)
            return
        if node == self.node:
            return
        if self._record_key is not None and not hmac.compare_digest(
            props.get(b"t") or b"", record_tag(self._record_key, node, info.port)
        ):
            log.debug("ignored %s: no valid member tag", name)
            return
        address = best_address(info.parsed_addresses(IPVersion.V4Only), self._addresses)
        address = address or best_address(info.parsed_addresses(IPVersion.V6Only), [])
        if address is None:
            return
        endpoint = tcp_endpoint(address, info.port)
        if self._reported.get(name) != (node, endpoint):
            self._reported.pop(name, None)
            self._reported[name] = (node, endpoint)  # the newest last
            while len(self._reported) > self._config.max_records:
                del self._reported[next(iter(self._reported))]
            # debug, not info: a record is a claim anyone can make, thousands at a time; the
            # mesh logs a link once the member proves itself
            log.debug("found %s at %s", node.hex()[:8], endpoint)
            self._on_found(node, endpoint)
