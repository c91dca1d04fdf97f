"""Two-way sync with a browser's own bookmark file.

The app keeps, per synced file, a snapshot of the tree as it last wrote that file (with our
ids). A sync compares the file now with that snapshot, so only what changed in the file since
then (the user's work in the browser) becomes edits; what the group changed meanwhile is in
the notes and wins nothing by being absent from the file. Then the merged tree is written back
whole (atomically) and becomes the new snapshot.

Items of the file are matched to the snapshot by id where the format keeps ours (Chromium's
guid, XBEL's id), else by place: in a matched folder a bookmark with the same URL and title,
then the same URL, then the same title (its URL edited), a folder with the same title; then a
bookmark with a URL that exactly one unmatched snapshot bookmark has (moved to another
folder). Matched items whose title, URL or
tags (where the format has tags) differ are edited; those whose folder differs, or whose place
among their matched siblings changed (not on a longest run kept in order), are moved; snapshot
items not in the file are deleted; file items matched to nothing are added. With no snapshot
(the first sync of a file) the file is imported as `import` does and nothing is deleted.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from pathlib import Path
from typing import Any

from . import edits, files
from .model import BOOKMARK, FOLDER, ROOTS, Item, Op, Registers, Tree
from .position import spread


def snapshot_path(state: Path, file: Path) -> Path:
    key = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:16]
    return state / "bookmarks" / f"sync-{key}.json"


def _dump(it: Item) -> list[Any]:
    return [it.id, it.kind, it.title, it.url, list(it.tags), it.added, it.modified,
            [_dump(c) for c in it.children]]


def _load(v: list[Any]) -> Item:
    it = Item(v[0], v[1], v[2], v[3], tuple(v[4]), v[5], v[6])
    it.children = [_load(c) for c in v[7]]
    return it


def save_snapshot(state: Path, file: Path, tree: dict[str, Item], fmt: str,
                  unseen: set[str]) -> None:
    """What was written to `file`; `unseen`: ids written there that the file, as last read,
    did not hold yet (a running browser may never have loaded them)."""
    path = snapshot_path(state, file)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    doc = {"file": str(file.resolve()), "format": fmt, "unseen": sorted(unseen),
           "roots": {r: _dump(tree[r]) for r in ROOTS}}
    files.write_atomically(path, json.dumps(doc, ensure_ascii=False).encode())


def load_snapshot(state: Path, file: Path) -> tuple[dict[str, Item], set[str]] | None:
    try:
        doc = json.loads(snapshot_path(state, file).read_bytes())
        return {r: _load(doc["roots"][r]) for r in ROOTS}, set(doc["unseen"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise files.BadFile(f"the sync snapshot of {file} is damaged ({e}); remove "
                            f"{snapshot_path(state, file)} to sync it afresh") from None


def diff(regs: Registers, tree: Tree, now: dict[str, Item], base: dict[str, Item],
         tags: bool, now_us: int, keep: set[str], seen: set[str]) -> list[Op]:
    """The ops that carry the file's changes since `base` (the snapshot) into `tree`. Items
    in `keep` are not deleted for being absent (the browser never had them); the ids the file
    was matched to are added to `seen`."""
    olds: dict[str, tuple[Item, str]] = {}  # our id -> (snapshot item, its parent's id)
    for r in ROOTS:
        for it, parent in _pairs(base[r]):
            olds[it.id] = (it, parent.id)
    match: dict[int, str] = {id(now[r]): r for r in ROOTS}  # id(file item) -> our id
    taken: set[str] = set(ROOTS)
    every = [pair for r in ROOTS for pair in _pairs(now[r])]  # (file item, its parent)
    for it, _ in every:  # by the ids the file keeps
        if it.id and it.id in olds and it.id not in taken:
            match[id(it)] = it.id
            taken.add(it.id)
    under: dict[str, list[Item]] = {}
    for old, pid in olds.values():
        under.setdefault(pid, []).append(old)
    for by_title in (False, True):  # by place, under a matched folder: URL first, then title
        for it, parent in every:
            if id(it) in match or id(parent) not in match:
                continue
            cands = [o for o in under.get(match[id(parent)], [])
                     if o.id not in taken and o.kind == it.kind]
            found: Item | None = None
            if it.kind == BOOKMARK and not by_title:
                found = next((o for o in cands if o.url == it.url and o.title == it.title),
                             None) or next((o for o in cands if o.url == it.url), None)
            elif it.kind == FOLDER or by_title:
                found = next((o for o in cands if o.title == it.title), None)
            if found is not None:
                match[id(it)] = found.id
                taken.add(found.id)
    by_url: dict[str, list[str]] = {}
    for old, _ in olds.values():
        if old.kind == BOOKMARK and old.id not in taken:
            by_url.setdefault(old.url, []).append(old.id)
    for it, _ in every:  # moved to another folder
        if id(it) not in match and it.kind == BOOKMARK and len(by_url.get(it.url, [])) == 1:
            match[id(it)] = by_url[it.url][0]
            taken.add(by_url[it.url][0])
    known = set(regs.fields) | set(regs.deleted)
    for it, _ in every:  # ids for the new items: the file's own where it is new to us
        if id(it) not in match:
            fresh = it.id and it.id not in known and it.id not in taken and len(it.id) <= 64
            match[id(it)] = it.id if fresh else edits.new_id()
            taken.add(match[id(it)])
    seen.update(match.values())
    ops: list[Op] = []
    for it, _ in every:  # edits of fields
        our = match[id(it)]
        if our not in olds or our not in tree.items:
            continue
        old = olds[our][0]
        op: Op = {}
        if it.title != old.title:
            op["t"] = it.title
        if it.kind == BOOKMARK and it.url != old.url:
            op["u"] = it.url
        if tags and it.tags != old.tags:
            op["g"] = list(it.tags)
        if op:
            ops.append({"i": our, **op})
    for r in ROOTS:
        for folder in [now[r], *(it for it, _ in _pairs(now[r]))]:
            if folder.kind == FOLDER:
                ops.extend(_place(tree, folder, match, olds, base, now_us))
    in_file = {match[id(it)] for it, _ in every}
    for our in olds:
        if our not in in_file and our in tree.items and our not in keep:
            ops.append({"i": our, "d": True})
    return ops


def _place(tree: Tree, folder: Item, match: dict[int, str],
           olds: dict[str, tuple[Item, str]], base: dict[str, Item], now_us: int) -> list[Op]:
    """Adds and moves for `folder`'s children: those new to it or out of their old order get
    keys between the children that stay."""
    pid = match[id(folder)]
    base_order: dict[str, int] = {}
    old = olds[pid][0] if pid in olds else base.get(pid)
    for i, c in enumerate(old.children if old is not None else []):
        base_order[c.id] = i
    kids = [match[id(c)] for c in folder.children]
    # on a longest run in the snapshot's order: where the user left them, so no op at all
    # (the group may have moved them since; that stands)
    untouched = _longest_run([(k, base_order[k]) for k in kids if k in base_order])
    have = tree.items.get(pid)
    current = {c.id: c.pos for c in have.children} if have is not None else {}
    ops: list[Op] = []
    pending: list[tuple[Item, str]] = []
    lo: str | None = None

    def flush(hi: str | None) -> None:
        nonlocal pending
        if not pending:
            return
        top = hi if hi is not None and (lo is None or lo < hi) else None
        for (c, our), key in zip(pending, spread(lo, top, len(pending)), strict=True):
            ops.append(_write(c, our, pid, key, our in tree.items, now_us))
        pending = []

    for c, our in zip(folder.children, kids, strict=True):
        if our in untouched:
            if current.get(our):  # still here: what comes next goes after it
                flush(current[our])
                lo = current[our]
        elif our in olds and our not in tree.items:
            continue  # deleted by the group since the last sync: that stands
        else:
            pending.append((c, our))
    flush(None)
    return ops


def _write(it: Item, our: str, parent: str, key: str, known: bool, now_us: int) -> Op:
    if known:
        return {"i": our, "p": [parent, key]}
    op: Op = {"i": our, "k": it.kind, "t": it.title, "a": it.added or now_us,
              "p": [parent, key]}
    if it.kind == BOOKMARK:
        op["u"] = it.url
    if it.tags:
        op["g"] = list(it.tags)
    if it.modified:
        op["m"] = it.modified
    return op


def _longest_run(pairs: list[tuple[str, int]]) -> set[str]:
    """The ids of a longest subsequence of `pairs` whose numbers increase (patience sort)."""
    tails: list[int] = []
    tail_at: list[int] = []
    back: list[int] = [-1] * len(pairs)
    for i, (_, n) in enumerate(pairs):
        j = bisect.bisect_left(tails, n)
        if j == len(tails):
            tails.append(n)
            tail_at.append(i)
        else:
            tails[j], tail_at[j] = n, i
        back[i] = tail_at[j - 1] if j else -1
    out: set[str] = set()
    k = tail_at[-1] if tail_at else -1
    while k >= 0:
        out.add(pairs[k][0])
        k = back[k]
    return out


def _pairs(top: Item) -> list[tuple[Item, Item]]:
    """(item, its parent) for everything under `top`, in tree order."""
    out: list[tuple[Item, Item]] = []
    stack = [(top, c) for c in reversed(top.children)]
    while stack:
        parent, it = stack.pop()
        out.append((it, parent))
        stack.extend((it, c) for c in reversed(it.children))
    return out
