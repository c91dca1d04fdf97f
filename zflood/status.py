"""What `zflood status` and `zflood members` report, built from the engine, the member table
and the mesh's link rows; the daemon and the CLI (with the daemon stopped) both use it.

Times in these maps are Unix times (seconds) from the caller's wall clock: a link row's ages
are turned into times when the report is built, so a reader in another process can show
"since" and "last heard" as it likes. Nothing here imports zmq or asyncio.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

from . import identity
from .members import Members
from .node import Node
from .progress import gaps

Map = dict[str, Any]


def node_status(node: Node, members: Members, linked: frozenset[bytes] = frozenset(),
                limit: int | None = None) -> Map:
    """What `status` says of the node itself, with the daemon running or not; at most
    `limit` members are listed (see `member_rows`), `members_left_out` says how many more
    origins the group holds."""
    heads = node.heads
    rows = member_rows(node, members, linked, limit)
    return {
        "node": node.id.hex(),
        "name": members.name(node.id),
        "group": node.group.hex(),
        "notes": node.count,
        # the heads of the members listed, not of every origin: a member gone bad can mint
        # thousands, and a status listing them all cost a megabyte and tens of ms a call
        "heads": {row["origin"]: row["notes"] for row in rows},
        "origins": len(heads),
        "forks": node.fork_report(),  # where each forked origin split, what was kept
        "store": node.store_status,  # storing or not (a full disk), damage being repaired
        "members": rows,
        "members_left_out": len(heads) - len(rows),
        "ed25519": identity.backend(),  # libsodium with the `fast` extra, else cryptography
    }


def member_rows(node: Node, members: Members, linked: frozenset[bytes],
                limit: int | None = None) -> list[Map]:
    """Origins the group holds: name, notes held, when its latest note arrived here (local
    time: None if none arrived since names were kept), and whether it is linked. This node
    first, then the named by name, then the rest by notes held; at most `limit`, and only
    those shown cost anything (a member gone bad may have minted thousands of origins)."""
    heads = node.heads
    own = [node.id] if node.id in heads else []
    named = sorted((m for m in members if m.name and m.origin in heads and m.origin != node.id),
                   key=lambda m: (str(m.name).lower(), m.origin))
    chosen = own + [m.origin for m in named]
    room = None if limit is None else max(0, limit - len(chosen))
    if room is None or room > 0:
        taken = set(chosen)
        rest = [o for o in heads if o not in taken]
        if room is None or room < len(rest):
            rest = heapq.nsmallest(len(rest) if room is None else room, rest,
                                   key=lambda o: (-heads[o], o))
        chosen += rest
    if limit is not None:
        chosen = chosen[:limit]
    rows: list[Map] = []
    for origin in chosen:
        m = members.get(origin)
        rows.append({
            "origin": origin.hex(),
            "name": m.name,
            "notes": heads[origin],
            "last": m.last_at,
            "linked": origin in linked,
            "self": origin == node.id,
        })
    return rows


def peer_rows(
    links: Sequence[Mapping[str, Any]],
    engine_peers: Sequence[Mapping[str, Any]],
    ours: Mapping[bytes, int],
    members: Members,
    wall: float,
) -> list[Map]:
    """The mesh's link rows with each peer's name, times, and what each side lacks.

    `they_lack` counts notes we hold that the peer does not, `we_lack` the reverse, as far as
    the engine knows its heads (None while no engine link is up)."""
    heads: dict[bytes, Mapping[bytes, int]] = {}
    for p in engine_peers:
        if p.get("ready") and isinstance(p.get("node"), bytes):
            heads[p["node"]] = p["heads"]
    rows = []
    for link in links:
        row = dict(link)
        node = bytes.fromhex(row["node"]) if row.get("node") else None
        row["name"] = members.name(node) if node else None
        for key in ("since", "heard"):
            ago = row.get(key)
            row[key] = None if ago is None else wall - ago
        theirs = heads.get(node) if node else None
        if theirs is None:
            row["they_lack"] = row["we_lack"] = None
        else:
            row["they_lack"], row["we_lack"] = gaps(ours, theirs)
        rows.append(row)
    return rows
