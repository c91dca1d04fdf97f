"""`zflood bookmarks ...`: the group's bookmark tree from the command line, daemon running or
not (with it stopped the edits go into the store and leave with the next `zflood run`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

FORMATS = ("html", "xbel", "chromium")
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
    ex.add_argument("--format", choices=FORMATS,
                    help="default: the file's present format, else from its name (.xbel, "
                    ".json or Bookmarks: chromium), else html")
    sy = bsub.add_parser("sync", help="two-way sync with a browser's own bookmark file",
                         description="What changed in FILE since the last sync becomes edits; "
                         "then the merged tree is written back to FILE atomically. "
                         + BROWSER_NOTE)
    sy.add_argument("file", type=Path, metavar="FILE")
    sy.add_argument("--format", choices=FORMATS, help="as for export")
    sy.add_argument("--watch", action="store_true", help="keep syncing: whenever FILE or the "
                    "group's bookmarks change, until interrupted")
    sy.add_argument("--interval", type=float, default=WATCH_INTERVAL, metavar="S",
                    help=f"with --watch, look this often (default {WATCH_INTERVAL:g} s)")


def main(state: Path, args: argparse.Namespace) -> int:
    from .commands import run

    return run(state, args)
