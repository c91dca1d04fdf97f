"""What each command writes: the ops that turn the tree as this member holds it into the tree
the user asked for. Ops only name items by id and set fields (see `model`), so an edit made
offline merges with whatever the others did meanwhile.
"""

from __future__ import annotations

import uuid

from .files import BadFile, check_url
from .model import BOOKMARK, FOLDER, ROOTS, Item, Op, Tree
from .position import between, spread


def new_id() -> str:
    return str(uuid.uuid4())


def split_path(path: str | None) -> tuple[str, list[str]]:
    """A folder path "ROOT/A/B" as (root id, folder titles); a path whose first part is not
    a root (bar, other, mobile) is under `other`."""
    parts = [p for p in (path or "").split("/") if p]
    if parts and parts[0] in ROOTS:
        return parts[0], parts[1:]
    return "other", parts


def find_folder(tree: Tree, path: str | None) -> Item | None:
    root, names = split_path(path)
    at = tree.items[root]
    for name in names:
        nxt = next((c for c in at.children if c.folder and c.title == name), None)
        if nxt is None:
            return None
        at = nxt
    return at


def ensure_folder(tree: Tree, path: str | None, now_us: int, ops: list[Op]) -> str:
    """The id of the folder at `path`, appending to `ops` what creates the missing part."""
    root, names = split_path(path)
    at: Item | None = tree.items[root]
    fid = root
    for name in names:
        nxt = None if at is None else next(
            (c for c in at.children if c.folder and c.title == name), None)
        if nxt is not None:
            at, fid = nxt, nxt.id
            continue
        key = between(at.children[-1].pos if at is not None and at.children else None, None)
        nid = new_id()
        ops.append({"i": nid, "k": FOLDER, "t": name, "a": now_us, "p": [fid, key]})
        at, fid = None, nid  # the rest of the path is new too: each goes first in its folder
    return fid


def end_key(tree: Tree, folder: str) -> str:
    it = tree.items.get(folder)
    last = it.children[-1].pos if it is not None and it.children else None
    return between(last or None, None)


def key_at(tree: Tree, folder: str, index: int | None, moving: str | None = None) -> str:
    """A position key that puts an item at `index` among `folder`'s children (None: last)."""
    it = tree.items.get(folder)
    kids = [c for c in (it.children if it is not None else []) if c.id != moving]
    if index is None or index >= len(kids):
        return between(kids[-1].pos or None if kids else None, None)
    index = max(0, index)
    lo = kids[index - 1].pos if index > 0 else None
    hi = kids[index].pos
    if (lo is not None and lo >= hi) or not hi:
        return between(lo, None)  # positions collide (never written so): after lo
    return between(lo or None, hi)


def add(tree: Tree, url: str, title: str | None, folder: str | None, tags: list[str],
        now_us: int) -> tuple[str, list[Op]]:
    check_url(url)
    ops: list[Op] = []
    fid = ensure_folder(tree, folder, now_us, ops)
    key = end_key(tree, fid) if fid in tree.items else "V"
    bid = new_id()
    op: Op = {"i": bid, "k": BOOKMARK, "t": title if title is not None else url, "u": url,
              "a": now_us, "p": [fid, key]}
    if tags:
        op["g"] = tags
    ops.append(op)
    return bid, ops


def resolve(tree: Tree, ref: str, many: bool = False) -> list[Item]:
    """The items `ref` names: an id, a unique id prefix (4+ characters) or a URL (every
    bookmark with it when `many`, else exactly one)."""
    if ref in tree.items and ref not in ROOTS:
        return [tree.items[ref]]
    by_url = [it for it in tree.items.values() if it.kind == BOOKMARK and it.url == ref]
    if by_url:
        if len(by_url) > 1 and not many:
            raise BadFile(f"{len(by_url)} bookmarks have the URL {ref}: name one by its id "
                          "(zflood bookmarks ls shows them)")
        return by_url
    if len(ref) >= 4:
        found = [it for i, it in tree.items.items() if i.startswith(ref) and i not in ROOTS]
        if len(found) == 1:
            return found
        if len(found) > 1:
            raise BadFile(f"the id prefix {ref} names {len(found)} items: give more of it")
    raise BadFile(f"no bookmark or folder {ref!r} (an id, an id prefix or a URL)")


def remove(tree: Tree, items: list[Item]) -> list[Op]:
    """Deletes for the items and everything under them (a folder goes whole)."""
    ops: list[Op] = []
    seen: set[str] = set()
    for top in items:
        for _, it in tree.walk(top):
            if it.id not in seen:
                seen.add(it.id)
                ops.append({"i": it.id, "d": True})
    return ops


def move(tree: Tree, it: Item, folder: str | None, index: int | None, now_us: int) -> list[Op]:
    ops: list[Op] = []
    fid = ensure_folder(tree, folder, now_us, ops)
    if it.folder and fid in tree.items:
        up: str | None = fid
        while up is not None and up not in ROOTS:
            if up == it.id:
                raise BadFile(f"cannot move the folder {it.title!r} into itself")
            up = tree.items[up].parent
    key = key_at(tree, fid, index, it.id) if fid in tree.items else "V"
    ops.append({"i": it.id, "p": [fid, key]})
    return ops


def edit(it: Item, title: str | None, url: str | None, tags: list[str] | None) -> list[Op]:
    op: Op = {"i": it.id}
    if title is not None:
        op["t"] = title
    if url is not None:
        if it.folder:
            raise BadFile(f"{it.title!r} is a folder: it has no URL")
        op["u"] = check_url(url)
    if tags is not None:
        op["g"] = tags
    if len(op) == 1:
        raise BadFile("nothing to change: give --title, --url or --tags")
    return [op]


def graft(tree: Tree, file: dict[str, Item], now_us: int,
          seen: set[str] | None = None) -> list[Op]:
    """Ops that add a file's tree into ours: a folder already at the same place with the same
    title is reused, a bookmark already in the same folder with the same URL is skipped,
    everything else is added after what the folder holds, in the file's order. `seen` gets
    the ids of ours that the file holds."""
    ops: list[Op] = []
    held = seen if seen is not None else set()
    for root in ROOTS:
        _graft(tree.items[root], root, file[root].children, ops, now_us, held)
    return ops


def _graft(have: Item | None, fid: str, items: list[Item], ops: list[Op], now_us: int,
           seen: set[str]) -> None:
    kids = have.children if have is not None else []
    folders = {c.title: c for c in kids if c.folder}
    urls = {c.url: c.id for c in kids if not c.folder}
    fresh = [it for it in items if not (it.folder and it.title in folders)
             and not (not it.folder and it.url in urls)]
    keys = iter(spread(kids[-1].pos if kids else None, None, len(fresh)))
    for it in items:
        if it.folder and it.title in folders:
            old = folders[it.title]
            seen.add(old.id)
            _graft(old, old.id, it.children, ops, now_us, seen)
            continue
        if not it.folder and it.url in urls:
            seen.add(urls[it.url])
            continue
        nid = new_id()
        seen.add(nid)
        op: Op = {"i": nid, "k": it.kind, "t": it.title, "a": it.added or now_us,
                  "p": [fid, next(keys)]}
        if not it.folder:
            op["u"] = it.url
        if it.tags:
            op["g"] = list(it.tags)
        if it.modified:
            op["m"] = it.modified
        ops.append(op)
        if it.folder:
            _graft(None, nid, it.children, ops, now_us, seen)
