"""What each `zflood bookmarks` subcommand does (its parser is in `cli`, which every zflood
command builds, so this module and what it imports load only for a bookmarks command)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..group import Group, opened, stop_on_signals
from ..group import notes as held_notes
from . import edits, files
from .cli import BROWSER_NOTE
from .model import APP, ROOTS, Item, Op, Registers, Tree, chunks, encode


def _now_us() -> int:
    return time.time_ns() // 1000


def _tags(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


class Session:
    """The group opened, the bookmark notes folded, and what this command publishes."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.regs = Registers()
        self.last = -1  # local index of the last bookmark note folded
        for n in held_notes(group, app=APP):
            self.regs.add_note(n)
            self.last = max(self.last, int(n["index"]))
        self._tree: Tree | None = None

    @property
    def tree(self) -> Tree:
        if self._tree is None:
            self._tree = self.regs.tree()
        return self._tree

    def publish(self, ops: list[Op]) -> None:
        if not ops:
            return
        for clock, chunk in chunks(self.regs.clock + 1, ops):
            note = self.group.publish(encode(clock, chunk))
            self.regs.add(clock, note["origin"], note["seqno"], chunk)  # no need to decode it
            self.last = max(self.last, int(note["index"]))
        self._tree = None


def run(state: Path, args: argparse.Namespace) -> int:
    from ...cli import BadArgument

    cmd = args.bookmarks_command
    url = args.url if cmd in ("add", "edit") else None
    if url is not None:  # a bad argument, told as one (exit 2), before the store is opened
        try:
            files.check_url(url)
        except files.BadFile as e:
            raise BadArgument(str(e)) from None
    if cmd == "sync" and args.watch:
        return _watch(state, args)
    with opened(state) as group:
        s = Session(group)
        return int(COMMANDS[cmd](s, state, args))


def cmd_add(s: Session, state: Path, args: argparse.Namespace) -> int:
    bid, ops = edits.add(s.tree, args.url, args.title, args.folder, _tags(args.tags) or [],
                         _now_us())
    s.publish(ops)
    print(f"added {bid[:8]} {_where(s)}")
    return 0


def _where(s: Session) -> str:
    return "(the daemon sends it on)" if s.group.running else \
        "(in the store: it leaves with the next zflood run)"


def cmd_ls(s: Session, state: Path, args: argparse.Namespace) -> int:
    top = None
    if args.folder:
        top = edits.find_folder(s.tree, args.folder)
        if top is None:
            raise files.BadFile(f"no folder {args.folder!r}")
    for depth, it in s.tree.walk(top):
        if args.json:
            print(json.dumps(_row(s.tree, it), ensure_ascii=False))
        elif it.id in ROOTS:
            print(f"{it.id}/  {it.title}")
        elif it.folder:
            print(f"{'  ' * depth}{it.id[:8]}  {printable(it.title)}/")
        else:
            tags = f"  [{', '.join(printable(t) for t in it.tags)}]" if it.tags else ""
            print(f"{'  ' * depth}{it.id[:8]}  {printable(it.title)}  "
                  f"{printable(it.url)}{tags}")
    return 0


def _row(tree: Tree, it: Item) -> dict[str, Any]:
    row: dict[str, Any] = {"id": it.id, "kind": "folder" if it.folder else "bookmark",
                           "title": it.title}
    if not it.folder:
        row["url"] = it.url
        row["tags"] = list(it.tags)
    if it.id not in ROOTS:
        row["folder"] = "/".join(tree.path(it))
        row["added"] = it.added / 1e6 if it.added else None
    return row


def printable(text: str) -> str:
    from ..chat.lines import printable as escape

    return escape(text)


def cmd_rm(s: Session, state: Path, args: argparse.Namespace) -> int:
    items = edits.resolve(s.tree, args.ref, many=True)
    ops = edits.remove(s.tree, items)
    s.publish(ops)
    print(f"deleted {len(ops)} item{'s' if len(ops) != 1 else ''} {_where(s)}")
    return 0


def cmd_mv(s: Session, state: Path, args: argparse.Namespace) -> int:
    (it,) = edits.resolve(s.tree, args.ref)
    s.publish(edits.move(s.tree, it, args.folder, args.index, _now_us()))
    print(f"moved {it.id[:8]} to {'/'.join(s.tree.path(s.tree.items[it.id]))} {_where(s)}")
    return 0


def cmd_edit(s: Session, state: Path, args: argparse.Namespace) -> int:
    (it,) = edits.resolve(s.tree, args.ref)
    s.publish(edits.edit(it, args.title, args.url, _tags(args.tags)))
    print(f"edited {it.id[:8]} {_where(s)}")
    return 0


def _read(path: Path) -> dict[str, Item]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise files.BadFile(f"cannot read {path}: {e.strerror}") from None
    try:
        return files.read(data)
    except files.BadFile as e:
        raise files.BadFile(f"{path}: {e}") from None


def cmd_import(s: Session, state: Path, args: argparse.Namespace) -> int:
    tree = _read(args.file)
    ops = edits.graft(s.tree, tree, _now_us())
    s.publish(ops)
    print(f"imported {len(ops)} new items from {args.file} {_where(s)}")
    return 0


def _roots(tree: Tree) -> dict[str, Item]:
    return {r: tree.items[r] for r in ROOTS}


def cmd_export(s: Session, state: Path, args: argparse.Namespace) -> int:
    fmt = args.format or files.format_of(args.file)
    files.write_atomically(args.file, files.write(_roots(s.tree), fmt))
    n = sum(1 for _ in s.tree.walk()) - len(ROOTS)
    print(f"wrote {n} items to {args.file} ({fmt})")
    return 0


def cmd_sync(s: Session, state: Path, args: argparse.Namespace) -> int:
    n, _ = sync_once(s, state, args.file, args.format, watching=False)
    print(f"synced {args.file}: {n} edits from it")
    return 0


def sync_once(s: Session, state: Path, path: Path, fmt: str | None,
              watching: bool) -> tuple[int, bytes]:
    """One sync of `path`: the number of edits it made of the file's changes, and the file's
    content as this sync left it."""
    from . import sync

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    except OSError as e:
        raise files.BadFile(f"cannot read {path}: {e.strerror}") from None
    ops: list[Op] = []
    unseen: set[str] = set()
    seen: set[str] = set()
    if data.strip():
        try:
            own = files.detect(data)
            if fmt is not None and fmt != own:
                raise files.BadFile(f"it is {own}, not {fmt}: a browser's file keeps its format")
            fmt = own
            now = files.read(data, own)
        except files.BadFile as e:
            raise files.BadFile(f"{path}: {e}") from None
        snap = sync.load_snapshot(state, path)
        if snap is None:
            ops = edits.graft(s.tree, now, _now_us(), seen)
        else:
            base, unseen = snap
            ops = sync.diff(s.regs, s.tree, now, base, fmt == "html", _now_us(),
                            keep=unseen if watching else set(), seen=seen)
    else:
        fmt = fmt or files.format_of(path)
    s.publish(ops)
    roots = _roots(s.tree)
    out = files.write(roots, fmt)
    if out != data:
        files.write_atomically(path, out)
    written = {it.id for _, it in s.tree.walk()} - set(ROOTS)
    sync.save_snapshot(state, path, roots, fmt, (written - seen) if watching else set())
    return len(ops), out


def _watch(state: Path, args: argparse.Namespace) -> int:
    stopping = stop_on_signals()
    print(f"syncing {args.file} until interrupted. {BROWSER_NOTE}", file=sys.stderr)
    last_file: tuple[int, int] | None = None
    ours: bytes | None = None  # what the last sync left in the file, until it is looked at
    last_note = -1
    first = True
    while not stopping.is_set():
        sig = _stat(args.file)
        if ours is not None:
            # A browser may write the file right after we did: its stat alone, taken after
            # our write, could be the browser's. Our own write is known by its content.
            if sig is not None and _content(args.file) == ours:
                last_file = sig
            ours = None
        with opened(state) as group:
            newer, _ = group.read(last_note + 1, 1, app=APP)
            if first or sig != last_file or newer:
                first = False
                s = Session(group)
                n, ours = sync_once(s, state, args.file, args.format, watching=True)
                if n:
                    print(f"synced {args.file}: {n} edits from it", flush=True)
                last_note = s.last
                continue  # look at the file again at once: is what it holds ours?
        deadline = time.monotonic() + args.interval
        while not stopping.is_set() and time.monotonic() < deadline:
            time.sleep(min(0.1, args.interval))  # a file offers no event to await (no inotify)
    return 0


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


COMMANDS = {"add": cmd_add, "ls": cmd_ls, "rm": cmd_rm, "mv": cmd_mv, "edit": cmd_edit,
            "import": cmd_import, "export": cmd_export, "sync": cmd_sync}
