"""Peer liveness for the mesh, with no I/O: who we dial, hear, link with, and give up on.

Theory of operation. `Liveness` is a state machine stepped by the mesh with `now` and one
event at a time: a HI received (with the CURVE User-Id its connection proved), DATA or BYE or a
malformed message received, a dial asked for by discovery (`announce`) or by configuration
(`knock`), `forget`, `cut`, `heal`, the engine closing a link, and `tick`. Each step returns
the actions the mesh carries out, in order: open or close our DEALER to a node, send it a HI,
open or close a knocker, bring a link up, take one down (with or without a BYE). It reads no
clock and opens no socket, so the rules below are tested with a fake clock and no network.

Liveness rules (ZRE-like). HI (node id, our ROUTER port, session nonce, "hears you") is the
heartbeat; it goes out every `heartbeat` on every DEALER, and at once when our "hears" for that
peer flips. A link comes up when we hear the peer, the peer says it hears us, and we have a
DEALER to it: two round trips from first contact. It goes down on BYE, on silence for
`peer_timeout`, when the peer says it no longer hears us, or when its nonce changes (it
restarted). A HI naming node N counts only if it came over a connection whose CURVE key is
N's, so nothing here trusts mDNS: a link exists only while HIs arrive.

Static peers (`knock`) get a knocker: a DEALER with a random routing id that sends HIs marked
KNOCK, which the receiver takes as presence but not as "hears"; they make the peer dial us back.

Bounded cost. An mDNS record is a claim anyone on the LAN can make, so a node we have never
heard ("unproven") is dialled only on trial: at most `dial_slots` at once, each for
`dial_trial`, then again after a backoff that doubles, and after `dial_attempts` failed trials
it is forgotten; at most `max_candidates` such records are held (the oldest go). Free slots go
alternately to the newest record (a member that just appeared) and the one waiting longest.
A node that has once sent us a valid HI holds the group key and its own: it is dialled freely.
HIs are taken from each sender (CURVE key) at `hi_rate` a second with bursts of `hi_burst`;
the rest are dropped and counted. A code holder can mint node ids, each with a key of its
own: at most `members_per_host` members are taken from one address at once (HIs of new ones
beyond are dropped and counted, and `admits` tells the mesh's ZAP handler to refuse their
handshakes, so they cost no connection either); one that goes silent frees its place.
Every fault a peer can repeat is logged through one `QuietLog`: once, then counted, then
summarised.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

from .config import DEFAULT, Config
from .endpoints import tcp_endpoint, tcp_parts
from .quietlog import QuietLog

log = logging.getLogger("zflood.liveness")

_HI = struct.Struct("!B32sH16sB")  # mesh version, node id, ROUTER port, session nonce, hears
HI_SIZE = _HI.size
MESH_VERSION = 1  # of HI/DATA/BYE framing; the engine's HELLO carries the protocol's own
NOT_HEARING, HEARING, KNOCK = 0, 1, 2  # the "hears" byte; KNOCK: a knocker's, says nothing


def hi_payload(node: bytes, port: int, nonce: bytes, hears: int) -> bytes:
    """The body of a HI message (after the kind frame)."""
    return _HI.pack(MESH_VERSION, node, port, nonce, hears)


def _host(address: str) -> str:
    """One address, however a connection shows it (IPv4 seen through an IPv6 socket too)."""
    return address.removeprefix("::ffff:")


def short(node: bytes) -> str:
    return node.hex()[:8]  # the one short id form (zflood.members.short)


def _same_host(endpoint: str) -> str:
    """An endpoint, with localhost spelt as the address a peer's connections come from."""
    return endpoint.replace("//localhost:", "//127.0.0.1:")


_P = 2**255 - 19


def is_curve_key_of(user_id: str, node: bytes) -> bool:
    """Whether `user_id` (hex, as our ZAP handler names a CURVE client) is the X25519 key of
    Ed25519 key `node`: u = (1 + y) / (1 - y) mod p, checked as u * (1 - y) = 1 + y. Two
    multiplications instead of the inversion (about 0.5 ms in Python), since anyone holding
    the group key can make us check one per HI, and every HI names a node."""
    try:
        u = int.from_bytes(bytes.fromhex(user_id), "little")
    except ValueError:
        return False
    y = int.from_bytes(node, "little") & ((1 << 255) - 1)
    return len(node) == 32 and u < _P and (u * (1 - y) - (1 + y)) % _P == 0 and y % _P != 1


# -- actions: what the mesh carries out ----------------------------------------------------


@dataclass(frozen=True)
class Dial:
    """(Re)open our DEALER to `node` at `endpoint`, closing any it had (routing id: our id)."""
    node: bytes
    endpoint: str


@dataclass(frozen=True)
class SendHi:
    """A HI on our DEALER to `node`, saying whether we hear it."""
    node: bytes
    hears: int


@dataclass(frozen=True)
class Hang:
    """Close our DEALER to `node`; `linger`: give a BYE queued on it time to leave."""
    node: bytes
    linger: bool = False


@dataclass(frozen=True)
class LinkUp:
    node: bytes


@dataclass(frozen=True)
class LinkDown:
    """The link to `node` is closed; `bye`: tell the peer first."""
    node: bytes
    reason: str
    bye: bool


@dataclass(frozen=True)
class Knock:
    """Open a knocker DEALER (routing id `routing_id`) to a static peer and knock once."""
    endpoint: str
    routing_id: bytes


@dataclass(frozen=True)
class KnockAgain:
    endpoint: str


@dataclass(frozen=True)
class Unknock:
    endpoint: str


Action = Dial | SendHi | Hang | LinkUp | LinkDown | Knock | KnockAgain | Unknock


# -- state ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Peer:
    node: bytes
    user_id: str = ""  # hex X25519 key its CURVE handshake showed (set once it is proven)
    endpoint: str = ""  # where we dial it
    dialled: bool = False  # we hold a DEALER to it
    announced: bool = False  # announce() named it: keep dialling until forget()
    proven: bool = False  # it once sent a valid HI: a member, not just a record
    heard_at: float | None = None  # last HI of its DEALER (or DATA); None: we don't hear it
    knocked_at: float = 0.0  # last HI of its knocker (a static peer's presence)
    nonce: bytes | None = None
    they_hear: bool = False
    heard_us_at: float = 0.0  # last HI saying it hears us, or when we last (re)dialled it
    seen_at: str = ""  # its ROUTER at the address its connections come from
    host: str = ""  # the address its connections come from, once it is proven
    restarted_at: float | None = None  # when its nonce last changed
    linked: bool = False
    since: float | None = None  # when it was first heard of, or its link came up or went down
    last_heard: float | None = None  # heard_at before we stopped hearing it (for status)
    retry_at: float = 0.0
    trial_until: float | None = None  # unproven and dialled: give up at
    tries: int = 0  # failed trials while unproven
    next_try: float = 0.0


@dataclass
class Counters:
    """What the bounds have refused so far (shown by status, read by tests and benchmarks)."""
    his_dropped: int = 0  # over a sender's HI rate
    trials_failed: int = 0  # an unproven record's dial that got no HI in time
    records_forgotten: int = 0  # unproven records given up (tries spent, or evicted)
    members_refused: int = 0  # HIs of new node ids from a host that has members_per_host


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class Liveness:
    """The mesh's liveness state: `node` is ours; every method takes `now` (loop time)."""

    node: bytes
    config: Config = DEFAULT
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self.quiet = QuietLog(log)
        self._peers: dict[bytes, _Peer] = {}
        self._by_user: dict[str, _Peer] = {}  # the same peers by the CURVE key they must show
        self._dealers: dict[bytes, _Peer] = {}  # those we hold a DEALER to
        self._candidates: dict[bytes, _Peer] = {}  # unproven announced records, oldest first
        self._trials: dict[bytes, _Peer] = {}  # unproven records dialled now
        self._newest_next = True  # which end of _candidates the next free slot goes to
        self._cut: set[bytes] = set()
        self._knockers: dict[str, bytes] = {}  # static peer endpoint -> knocker routing id
        self._buckets: dict[str, _Bucket] = {}
        self._hosts: dict[str, set[bytes]] = {}  # address -> proven nodes whose HIs come from it
        self._next_heartbeat = 0.0

    # -- queries ---------------------------------------------------------------------------

    def endpoint_of(self, node: bytes) -> str:
        peer = self._peers.get(node)
        return peer.endpoint if peer else ""

    def node_of(self, user_id: str) -> bytes | None:
        peer = self._by_user.get(user_id)
        return peer.node if peer else None

    def is_linked(self, node: bytes) -> bool:
        peer = self._peers.get(node)
        return peer is not None and peer.linked

    def links(self, now: float | None = None) -> list[dict[str, str | float | None]]:
        """Peers for status: members and the records on trial (not those waiting their turn:
        a flood of fake records must not flood status too). Given `now`, each row says how
        many seconds ago it took its state ("since") and was last heard ("heard"); None when
        not known. A static peer that answered shows once, under its node."""
        def ago(t: float | None) -> float | None:
            return None if t is None or now is None else now - t

        shown = [p for p in self._peers.values()
                 if p.proven or p.dialled or p.node in self._cut]
        rows: list[dict[str, str | float | None]] = [
            {
                "node": p.node.hex(),
                "address": p.endpoint,
                "state": "connected" if p.linked
                else "cut" if p.node in self._cut else "connecting",
                "since": ago(p.since),
                "heard": ago(p.heard_at if p.heard_at is not None else p.last_heard),
            }
            for p in shown
        ]
        known = {_same_host(a) for p in shown for a in (p.endpoint, p.seen_at)}
        rows += [{"node": "", "address": e, "state": "dialling", "since": None, "heard": None}
                 for e in self._knockers if _same_host(e) not in known]
        return rows

    def stats(self) -> dict[str, int]:
        return {
            "peers": len(self._peers),
            "records_waiting": len(self._candidates) - len(self._trials),
            "records_on_trial": len(self._trials),
            "dealers": len(self._dealers),
            "knockers": len(self._knockers),
            "hi_senders": len(self._buckets),  # senders whose HI rate is tracked
            "his_dropped": self.counters.his_dropped,
            "trials_failed": self.counters.trials_failed,
            "records_forgotten": self.counters.records_forgotten,
            "members_refused": self.counters.members_refused,
        }

    def admits(self, user_id: str, peer_ip: str) -> bool:
        """Whether a CURVE handshake with key `user_id` (hex) from `peer_ip` is let through:
        a member we know, or a new one from an address with room (`members_per_host`)."""
        return user_id in self._by_user or self._has_room(peer_ip)

    # -- events from discovery, configuration and the local API -----------------------------

    def announce(self, now: float, node: bytes, endpoint: str) -> list[Action]:
        """Discovery says `node` is at `endpoint`: a claim, dialled within the caps."""
        out: list[Action] = []
        if node == self.node:
            return out
        new = node not in self._peers
        peer = self._peer(node, now)
        peer.announced = True
        if node in self._cut:
            peer.endpoint = peer.endpoint or endpoint  # where heal() dials it
            return out
        if not peer.proven:
            moved = peer.endpoint != endpoint
            if new or moved:
                self._candidates.pop(node, None)
                self._candidates[node] = peer  # the newest record, for the next free slot
                if moved:
                    peer.tries, peer.next_try = 0, now  # a new address earns fresh trials
            if new:
                self._bound_candidates(out)
        # A working DEALER beats a new address: only move one that has no link on it.
        if not peer.dialled or (peer.endpoint != endpoint and not peer.linked):
            self._dial(peer, endpoint, now, out)
        return out

    def knock(self, now: float, endpoint: str, routing_id: bytes) -> list[Action]:
        """A static peer: knock there until it dials us. Idempotent per endpoint."""
        if endpoint in self._knockers:
            return []
        self._knockers[endpoint] = routing_id
        return [Knock(endpoint, routing_id)]

    def knock_failed(self, endpoint: str) -> None:
        """The mesh could not open the knocker."""
        self._knockers.pop(endpoint, None)

    def dial_failed(self, node: bytes) -> None:
        """The mesh could not open the DEALER: the next HI or trial dials again."""
        peer = self._dealers.pop(node, None)
        if peer is not None:
            peer.dialled = False
            if self._trials.pop(node, None) is not None:
                peer.trial_until = None

    def forget(self, now: float, node: bytes) -> list[Action]:
        """Stop dialling `node`; a live link still ends only by BYE or silence."""
        out: list[Action] = []
        peer = self._peers.get(node)
        if peer is not None:
            peer.announced = False
            self._candidates.pop(node, None)
            if peer.heard_at is None:
                self._remove(peer, out)
        return out

    def cut(self, now: float, node: bytes) -> list[Action]:
        """Keep no link with `node` until `heal(node)`: BYE, then ignore it."""
        out: list[Action] = []
        self._cut.add(node)
        peer = self._peers.get(node)
        if peer is None:
            return out
        self._drop_link(peer, "cut here", now, out, bye=True)
        peer.last_heard, peer.heard_at = peer.heard_at or peer.last_heard, None
        self._end_trial(peer)
        self._hang(peer, out, linger=True)
        log.info("cut the link to %s", short(node))
        return out

    def heal(self, now: float, node: bytes) -> list[Action]:
        """Undo `cut(node)`: dial it again where it was announced, and hear it again."""
        out: list[Action] = []
        if node not in self._cut:
            return out
        self._cut.discard(node)
        log.info("healing the link to %s", short(node))
        peer = self._peers.get(node)
        if peer is not None and peer.endpoint:
            peer.next_try = now
            self._dial(peer, peer.endpoint, now, out)
        return out

    def close_link(self, now: float, node: bytes) -> list[Action]:
        """The engine closed the link (it tells the peer: BYE)."""
        out: list[Action] = []
        peer = self._peers.get(node)
        if peer is not None:
            self._drop_link(peer, "closed by the engine", now, out, bye=True)
        return out

    # -- events from the ROUTER ------------------------------------------------------------

    def hi(self, now: float, routing_id: bytes, user_id: str, peer_ip: str,
           payload: bytes) -> list[Action]:
        """A HI from a connection whose CURVE key is `user_id` (hex), at `peer_ip`."""
        out: list[Action] = []
        if not self._take_hi(now, user_id, peer_ip):
            return out
        if len(payload) != _HI.size:
            return self.malformed(now, user_id, peer_ip)
        version, node, port, nonce, hears = _HI.unpack(payload)
        if version != MESH_VERSION:
            self.quiet.fault(now, "HI of another version", peer_ip,
                             "ignored a HI of mesh version %d from %s", version, peer_ip,
                             level=logging.DEBUG)
            return out
        if hears > KNOCK or not port:
            return self.malformed(now, user_id, peer_ip)
        peer = self._peers.get(node)
        if not (user_id == peer.user_id if peer and peer.user_id
                else is_curve_key_of(user_id, node)):
            self.quiet.fault(now, "HI with another's key", user_id[:12],
                             "HI naming %s came with key %s: ignored", short(node), user_id[:12])
            return out
        if node == self.node:
            self._dialled_ourselves(routing_id, tcp_endpoint(peer_ip, port), out)
            return out
        if node in self._cut:
            return out
        if (peer is None or not peer.proven) and not self._has_room(peer_ip):
            self.counters.members_refused += 1
            self.quiet.fault(now, "members from one host", peer_ip,
                             "more than %d members at %s (node ids minted by one member?):"
                             " ignoring new ones, %s first", self.config.members_per_host,
                             peer_ip, short(node))
            return out
        peer = self._peer(node, now)
        self._prove(peer, user_id, peer_ip)
        restarted = peer.nonce is not None and peer.nonce != nonce
        if restarted:
            if peer.restarted_at is not None and now - peer.restarted_at < self.config.peer_timeout:
                # A new incarnation again so soon: a member gone bad (each "restart" would
                # cost a link, an engine hello and log lines), not a machine rebooting.
                self.quiet.fault(now, "restarts", short(node),
                                 "%s restarts again and again (a new session each HI): "
                                 "its new sessions wait %gs", short(node),
                                 self.config.peer_timeout)
                return out
            peer.restarted_at = now
        heard_us = peer.they_hear and not restarted
        if restarted:
            self._drop_link(peer, "peer restarted", now, out, bye=False)
            peer.retry_at = now  # a new incarnation, not a flapping link: relink at once
        peer.nonce = nonce
        peer.seen_at = tcp_endpoint(peer_ip, port)
        if hears == KNOCK:
            # Presence only: it asks us to dial it. We hear a peer only through HIs from its
            # own DEALER, so a DEALER of its that went deaf (its routing id handed over to
            # another connection, say) shows as silence, not hidden behind the knocks.
            peer.knocked_at = now
            # Our DEALER may aim at an old address (it restarted on another port, or a stale
            # mDNS record): unless it has a link, move it to where the knock came from.
            stale = not peer.linked and peer.endpoint != peer.seen_at and (
                restarted or now - peer.heard_us_at > self.config.peer_timeout
            )
            if not peer.dialled or stale:
                self._connect(peer, peer.seen_at, now, out)
            elif restarted:
                self._send_hi_to(peer, out)
            return out
        hears_changed = restarted or peer.heard_at is None  # restarted: it needs our HI now
        peer.heard_at = now
        if hears == HEARING:
            peer.they_hear = True
            peer.heard_us_at = now
        else:
            self._drop_link(peer, "peer no longer hears us", now, out, bye=False)
        if not peer.dialled:  # it dialled us first (we are its static peer): dial back
            self._connect(peer, tcp_endpoint(peer_ip, port), now, out)
        elif (parts := tcp_parts(peer.endpoint)) and int(parts[1]) != port:
            self._connect(peer, f"tcp://{parts[0]}:{port}", now, out)  # restarted, new port
        elif heard_us and hears == NOT_HEARING:
            # It heard us, now it does not, yet we hear it: our connection may be the deaf
            # one. A fresh one takes our routing id back (ROUTER_HANDOVER) at once.
            log.info("%s stopped hearing us: redialling it", short(peer.node))
            self._connect(peer, peer.seen_at or peer.endpoint, now, out)
        elif hears_changed:
            self._send_hi_to(peer, out)
        self._maybe_link(peer, now, out)
        return out

    def data(self, now: float, user_id: str) -> bytes | None:
        """DATA from `user_id`: the node to deliver it to, or None (no link: dropped)."""
        peer = self._by_user.get(user_id)
        if peer is None:
            self._unknown(now, user_id)
            return None
        if not peer.linked:
            return None
        peer.heard_at = now
        return peer.node

    def bye(self, now: float, user_id: str) -> list[Action]:
        out: list[Action] = []
        peer = self._by_user.get(user_id)
        if peer is None:
            self._unknown(now, user_id)
        else:
            self._lost(peer, "said goodbye", now, out)
        return out

    def malformed(self, now: float, user_id: str, peer_ip: str = "") -> list[Action]:
        """A message the mesh cannot take apart: the sender's link closes (logged once)."""
        out: list[Action] = []
        peer = self._by_user.get(user_id)
        if peer is None:
            self._unknown(now, user_id, peer_ip)
            return out
        self.quiet.fault(now, "malformed message", short(peer.node),
                         "malformed message from %s: closing its link", short(peer.node))
        self._drop_link(peer, "malformed message", now, out, bye=True)
        return out

    # -- the timer -------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        self.quiet.flush(now)
        self._end_trials(now, out)
        timeout = self.config.peer_timeout
        for peer in list(self._peers.values()):
            if peer.node in self._cut:
                continue
            if peer.heard_at is None and not peer.announced and now - peer.knocked_at > timeout:
                self._remove(peer, out)  # knocked, never dialled us properly, knocks no more
                continue
            if peer.heard_at is not None and now - peer.heard_at > timeout:
                self._lost(peer, f"silent for {now - peer.heard_at:.1f}s", now, out)
                continue
            if peer.heard_at is not None and now - peer.heard_us_at > timeout:
                # It is alive but our HIs do not reach it: our connection may be one whose
                # routing id its ROUTER handed over, which libzmq leaves open but deaf.
                # Or the address we were given is not the one it is reachable at: redial
                # where its own connections come from.
                log.info("%s does not hear us: redialling it", short(peer.node))
                self._connect(peer, peer.seen_at or peer.endpoint, now, out)
            self._maybe_link(peer, now, out)
        self._fill_slots(now, out)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat
            for peer in self._dealers.values():
                self._send_hi_to(peer, out)
            out += [KnockAgain(e) for e in self._knockers]
        return out

    # -- rules -----------------------------------------------------------------------------

    def _peer(self, node: bytes, now: float) -> _Peer:
        peer = self._peers.get(node)
        if peer is None:
            peer = self._peers[node] = _Peer(node, since=now)
        return peer

    def _take_hi(self, now: float, user_id: str, peer_ip: str) -> bool:
        """The sender's HI rate: a token bucket per CURVE key, the table bounded."""
        c = self.config
        bucket = self._buckets.get(user_id)
        if bucket is None:
            if len(self._buckets) >= c.hi_senders:
                # Forget senders whose bucket has refilled (they are within their rate);
                # if every one is busy, the oldest goes.
                full = c.hi_burst / c.hi_rate
                self._buckets = {u: b for u, b in self._buckets.items() if now - b.at < full}
                if len(self._buckets) >= c.hi_senders:
                    del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[user_id] = _Bucket(float(c.hi_burst), now)
        else:
            bucket.tokens = min(float(c.hi_burst), bucket.tokens + (now - bucket.at) * c.hi_rate)
            bucket.at = now
        if bucket.tokens < 1.0:
            self.counters.his_dropped += 1
            self.quiet.fault(now, "HI flood", user_id[:12],
                             "HIs from key %s at %s beyond %g a second: dropping the excess",
                             user_id[:12], peer_ip, c.hi_rate)
            return False
        bucket.tokens -= 1.0
        return True

    def _unknown(self, now: float, user_id: str, peer_ip: str = "") -> None:
        self.quiet.fault(now, "from unknown", user_id[:12],
                         "dropped a message from unknown %s %s", user_id[:12], peer_ip,
                         level=logging.DEBUG)

    def _has_room(self, host: str) -> bool:
        """Fewer than `members_per_host` members heard from `host` now (one gone silent, or
        only announced, holds no place)."""
        nodes = self._hosts.get(_host(host), ())
        if len(nodes) < self.config.members_per_host:
            return True
        heard = sum(1 for n in nodes if (p := self._peers.get(n)) and p.heard_at is not None)
        return heard < self.config.members_per_host

    def _prove(self, peer: _Peer, user_id: str, host: str) -> None:
        """A valid HI of its own: a member, dialled freely from now on, and the sender of
        whatever comes with its CURVE key."""
        if not peer.user_id:
            peer.user_id = user_id
            self._by_user[user_id] = peer
        host = _host(host)
        if peer.host != host:  # first heard, or moved (a laptop on another network)
            self._unhost(peer)
            peer.host = host
            self._hosts.setdefault(host, set()).add(peer.node)
        if not peer.proven:
            peer.proven = True
            peer.tries = 0
            self._candidates.pop(peer.node, None)
            self._end_trial(peer)

    def _end_trial(self, peer: _Peer) -> None:
        peer.trial_until = None
        self._trials.pop(peer.node, None)

    def _dial(self, peer: _Peer, endpoint: str, now: float, out: list[Action]) -> None:
        """Dial `peer`, within the caps if it is unproven (else just note where)."""
        if not peer.proven and peer.trial_until is None:
            if len(self._trials) >= self.config.dial_slots or now < peer.next_try:
                peer.endpoint = endpoint  # waits for a free slot (tick fills them)
                return
            peer.trial_until = now + self.config.dial_trial
            self._trials[peer.node] = peer
        self._connect(peer, endpoint, now, out)

    def _connect(self, peer: _Peer, endpoint: str, now: float, out: list[Action]) -> None:
        for other in list(self._dealers.values()):
            # One ROUTER endpoint is one node: two of our DEALERs there (say, a crashed
            # node's lingering record) would steal each other's routing id forever.
            if other is not peer and other.endpoint == endpoint and other.heard_at is None:
                self._remove(other, out)
        peer.endpoint = endpoint
        peer.dialled = True
        self._dealers[peer.node] = peer
        peer.heard_us_at = now
        out.append(Dial(peer.node, endpoint))
        self._send_hi_to(peer, out)

    def _hang(self, peer: _Peer, out: list[Action], *, linger: bool = False) -> None:
        if peer.dialled:
            peer.dialled = False
            self._dealers.pop(peer.node, None)
            out.append(Hang(peer.node, linger))

    def _remove(self, peer: _Peer, out: list[Action], *, linger: bool = False) -> None:
        self._hang(peer, out, linger=linger)
        self._end_trial(peer)
        self._candidates.pop(peer.node, None)
        self._peers.pop(peer.node, None)
        if peer.user_id:
            self._by_user.pop(peer.user_id, None)
        self._unhost(peer)

    def _unhost(self, peer: _Peer) -> None:
        nodes = self._hosts.get(peer.host)
        if nodes is not None:
            nodes.discard(peer.node)
            if not nodes:
                del self._hosts[peer.host]
        peer.host = ""

    def _send_hi_to(self, peer: _Peer, out: list[Action]) -> None:
        if peer.dialled:
            out.append(SendHi(peer.node, HEARING if peer.heard_at is not None else NOT_HEARING))

    def _dialled_ourselves(self, routing_id: bytes, here: str, out: list[Action]) -> None:
        """Our own HI came back: drop the DEALER that sent it."""
        for endpoint, knocker_id in list(self._knockers.items()):
            if knocker_id == routing_id:
                log.info("static peer %s is ourselves: not dialling it", endpoint)
                del self._knockers[endpoint]
                out.append(Unknock(endpoint))
        if routing_id == self.node:  # one of our node DEALERs: the one aimed at `here`
            for other in list(self._dealers.values()):
                if other.endpoint == here and other.heard_at is None:
                    log.info("%s's record points at us: not dialling it", short(other.node))
                    self._remove(other, out)

    def _maybe_link(self, peer: _Peer, now: float, out: list[Action]) -> None:
        if (
            not peer.linked
            and peer.dialled
            and peer.heard_at is not None
            and peer.they_hear
            and now >= peer.retry_at
        ):
            peer.linked = True
            peer.since = now
            out.append(LinkUp(peer.node))

    def _drop_link(self, peer: _Peer, reason: str, now: float, out: list[Action], *,
                   bye: bool) -> None:
        peer.they_hear = False  # the next link needs a fresh "hears" from the peer
        if not peer.linked:
            return
        peer.linked = False
        peer.since = now
        peer.retry_at = now + self.config.reconnect
        out.append(LinkDown(peer.node, reason, bye))

    def _lost(self, peer: _Peer, reason: str, now: float, out: list[Action]) -> None:
        """We no longer hear the peer (timeout or BYE)."""
        self._drop_link(peer, reason, now, out, bye=False)
        peer.last_heard, peer.heard_at = peer.heard_at or peer.last_heard, None
        self._send_hi_to(peer, out)  # our "hears" flipped: if it hears us, it redials
        if not peer.announced:
            self._remove(peer, out, linger=True)  # it dialled us; it will again if it returns

    # -- the caps on unproven records ------------------------------------------------------

    def _bound_candidates(self, out: list[Action]) -> None:
        while len(self._candidates) > self.config.max_candidates:
            # The oldest record not on trial goes (one on trial ends by itself soon).
            victim = next((p for p in self._candidates.values() if p.trial_until is None), None)
            if victim is None:
                return
            self.counters.records_forgotten += 1
            self._remove(victim, out)

    def _end_trials(self, now: float, out: list[Action]) -> None:
        c = self.config
        for peer in list(self._trials.values()):
            if peer.trial_until is None or now < peer.trial_until:
                continue
            self._end_trial(peer)
            self._hang(peer, out)
            peer.tries += 1
            self.counters.trials_failed += 1
            if peer.tries >= c.dial_attempts:
                self.counters.records_forgotten += 1
                self.quiet.fault(now, "record never answered", "",
                                 "%s at %s never answered %d dials: forgotten",
                                 short(peer.node), peer.endpoint, peer.tries, level=logging.INFO)
                self._remove(peer, out)
            else:
                backoff = c.dial_backoff * 2 ** (peer.tries - 1)
                peer.next_try = now + min(backoff, c.dial_backoff_max)

    def _fill_slots(self, now: float, out: list[Action]) -> None:
        while len(self._trials) < self.config.dial_slots:
            order = (reversed(self._candidates.values()) if self._newest_next
                     else iter(self._candidates.values()))
            peer = next((p for p in order if not p.dialled and p.endpoint
                         and p.node not in self._cut and now >= p.next_try), None)
            if peer is None:
                return
            self._newest_next = not self._newest_next
            self._dial(peer, peer.endpoint, now, out)
