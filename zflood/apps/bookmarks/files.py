"""Bookmark files as browsers write them: which format a file is, reading, writing atomically.

A file's tree is three root `Item`s (`bar`, `other`, `mobile`, as in `model`); items carry the
id the file gives them (Chromium's guid, XBEL's id) or "" where it gives none (Netscape HTML).
Dates are microseconds since 1970, 0 where unknown. Anything malformed raises `BadFile` with
one line saying what and where; nothing is written then.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from ...errors import LocalError
from .cli import FORMATS as FORMATS
from .model import FOLDER, ROOT_TITLES, ROOTS, Item

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_NEEDS_HOST = {"http", "https", "ftp", "ws", "wss"}


class BadFile(LocalError):
    """A bookmark file or value that cannot be taken as it is."""


def roots() -> dict[str, Item]:
    return {r: Item(r, FOLDER, ROOT_TITLES[r]) for r in ROOTS}


def check_url(url: str) -> str:
    """`url` if it is a URL (a scheme, and a host where the scheme needs one), else BadFile."""
    if not url or len(url) > 64 * 1024 or any(c.isspace() or ord(c) < 32 for c in url):
        raise BadFile(f"not a URL: {url!r}")
    scheme, sep, _ = url.partition(":")
    if not sep or not _SCHEME.match(scheme):
        raise BadFile(f"not a URL (no scheme such as https:): {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as e:
        raise BadFile(f"not a URL ({e}): {url!r}") from None
    if parts.scheme.lower() in _NEEDS_HOST and not parts.hostname:
        raise BadFile(f"not a URL (no host): {url!r}")
    return url


def detect(data: bytes) -> str:
    """The format of a file's content: "html", "xbel" or "chromium"."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"{"):
        return "chromium"
    if head.startswith(b"<!doctype netscape-bookmark-file-1"):
        return "html"
    if head.startswith((b"<?xml", b"<xbel", b"<!doctype xbel")) and (
            b"<xbel" in head or b"doctype xbel" in head):
        return "xbel"
    raise BadFile("not a bookmark file (Netscape HTML, XBEL or Chromium JSON)")


def read(data: bytes, fmt: str | None = None) -> dict[str, Item]:
    fmt = fmt or detect(data)
    if fmt == "html":
        from .netscape import read as read_html

        return read_html(data)
    if fmt == "xbel":
        from .xbel import read as read_xbel

        return read_xbel(data)
    if fmt == "chromium":
        from .chromium import read as read_chromium

        return read_chromium(data)
    raise BadFile(f"unknown format {fmt!r} (html, xbel or chromium)")


def write(tree: dict[str, Item], fmt: str) -> bytes:
    if fmt == "html":
        from .netscape import write as write_html

        return write_html(tree)
    if fmt == "xbel":
        from .xbel import write as write_xbel

        return write_xbel(tree)
    if fmt == "chromium":
        from .chromium import write as write_chromium

        return write_chromium(tree)
    raise BadFile(f"unknown format {fmt!r} (html, xbel or chromium)")


def format_of(path: Path) -> str:
    """The format of an existing file, from its content; of a new one, from its name."""
    try:
        with path.open("rb") as fp:
            head = fp.read(4096)
    except FileNotFoundError:
        head = b""
    if head.strip():
        return detect(head)
    name = path.name.lower()
    if name.endswith(".xbel"):
        return "xbel"
    if name == "bookmarks" or name.endswith(".json"):
        return "chromium"
    return "html"


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` whole: a reader sees the old file or the new, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fp:
            fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        try:
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

