"""`zflood bookmarks ...`: the group's bookmark tree from the command line, daemon running or
not (with it stopped the edits go into the store and leave with the next `zflood run`)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from ..group import Group, opened
from ..group import notes as held_notes
from . import edits, files
from .model import APP, ROOTS, Item, Op, Registers, Tree, chunks, encode

BROWSER_NOTE = ("A running browser keeps its bookmarks in memory and may overwrite its file "
                "when it exits: close it before a sync, or keep --watch running, which takes "
                "what the browser writes as edits and writes the merged tree back.")
WATCH_INTERVAL = 1.0  # seconds between looks at the file and the group's new notes


def add_parser(sub: Any) -> None:
    """`zflood bookmarks` and its subcommands, on the zflood command's subparsers."""
    b = sub.add_parser("bookmarks", help="the group's bookmarks, one tree for every browser",
                       description="The group's bookmark tree, shared by every member and "
                       "every browser. Folder paths are ROOT/A/B with ROOT bar (the bookmark "
                       "bar), other or mobile; a path not starting with a root is under "
                       "other. Items are named by id, id prefix (4+ characters) or URL.")
    bsub = b.add_subparsers(dest="bookmarks_command", required=True, metavar="SUBCOMMAND")
    a = bsub.add_parser("add", help="add a bookmark")
    a.add_argument("url", metavar="URL")
    a.add_argument("--title", help="its title (default: the URL)")
    a.add_argument("--folder", metavar="PATH", help="where (default: other); made if missing")
    a.add_argument("--tags", metavar="T1,T2", help="comma-separated tags")
    ls = bsub.add_parser("ls", help="the tree, or one folder's part of it")
    ls.add_argument("folder", nargs="?", metavar="FOLDER", help="a folder path")
    ls.add_argument("--json", action="store_true", help="one JSON object per item")
    rm = bsub.add_parser("rm", help="delete a bookmark or a folder with all it holds (a URL: "
                         "every bookmark with it)")
    rm.add_argument("ref", metavar="ID|URL")
    mv = bsub.add_parser("mv", help="move a bookmark or folder into FOLDER")
    mv.add_argument("ref", metavar="ID|URL")
    mv.add_argument("folder", metavar="FOLDER")
    mv.add_argument("--index", type=int, metavar="N", help="its place there from 0 (default: "
                    "last)")
    ed = bsub.add_parser("edit", help="change a bookmark's or folder's title, URL or tags")
    ed.add_argument("ref", metavar="ID|URL")
    ed.add_argument("--title")
    ed.add_argument("--url")
    ed.add_argument("--tags", metavar="T1,T2", help="comma-separated tags ('' for none)")
    im = bsub.add_parser("import", help="add a browser's bookmark file (Netscape HTML, XBEL or "
                         "Chromium Bookmarks, told from its content)")
    im.add_argument("file", type=Path, metavar="FILE")
    ex = bsub.add_parser("export", help="write the tree to FILE (atomically)")
    ex.add_argument("file", type=Path, metavar="FILE")
    ex.add_argument("--format", choices=files.FORMATS,
                    help="default: the file's present format, else from its name (.xbel, "
                    ".json or Bookmarks: chromium), else html")
    sy = bsub.add_parser("sync", help="two-way sync with a browser's own bookmark file",
                         description="What changed in FILE since the last sync becomes edits; "
                         "then the merged tree is written back to FILE atomically. "
                         + BROWSER_NOTE)
    sy.add_argument("file", type=Path, metavar="FILE")
    sy.add_argument("--format", choices=files.FORMATS, help="as for export")
    sy.add_argument("--watch", action="store_true", help="keep syncing: whenever FILE or the "
                    "group's bookmarks change, until interrupted")
    sy.add_argument("--interval", type=float, default=WATCH_INTERVAL, metavar="S",
                    help=f"with --watch, look this often (default {WATCH_INTERVAL:g} s)")


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


def main(state: Path, args: argparse.Namespace) -> int:
    cmd = args.bookmarks_command
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
    n = sync_once(s, state, args.file, args.format, watching=False)
    print(f"synced {args.file}: {n} edits from it")
    return 0


def sync_once(s: Session, state: Path, path: Path, fmt: str | None, watching: bool) -> int:
    """One sync of `path`; the number of edits it made of the file's changes."""
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
    return len(ops)


def _watch(state: Path, args: argparse.Namespace) -> int:
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"syncing {args.file} until interrupted. {BROWSER_NOTE}", file=sys.stderr)
    last_file: tuple[int, int] | None = None
    last_note = -1
    first = True
    while not stopping:
        sig = _stat(args.file)
        with opened(state) as group:
            newer, _ = group.read(last_note + 1, 1, app=APP)
            if first or sig != last_file or newer:
                first = False
                s = Session(group)
                n = sync_once(s, state, args.file, args.format, watching=True)
                if n:
                    print(f"synced {args.file}: {n} edits from it", flush=True)
                last_note, last_file = s.last, _stat(args.file)
        deadline = time.monotonic() + args.interval
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, args.interval))  # a file offers no event to await (no inotify)
    return 0


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


COMMANDS = {"add": cmd_add, "ls": cmd_ls, "rm": cmd_rm, "mv": cmd_mv, "edit": cmd_edit,
            "import": cmd_import, "export": cmd_export, "sync": cmd_sync}
