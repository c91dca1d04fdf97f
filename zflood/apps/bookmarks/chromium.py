"""Chromium's `Bookmarks` file (Chrome, Chromium, Edge, Brave, Vivaldi): JSON with `roots`
`bookmark_bar`, `other` and `synced` (the mobile root), each a folder node; a node has `id`
(a decimal string, unique in the file), `guid`, `name`, `type` ("url" or "folder"), `url` or
`children`, and `date_added` / `date_modified` as decimal microseconds since 1601-01-01 UTC.

The `checksum` is what Chromium's BookmarkCodec computes and checks on load: an MD5 over
every node in the order it encodes them (bookmark_bar, other, synced, each depth first,
a folder before its children): for a URL node its id, its title as UTF-16LE, "url" and the
URL; for a folder its id, its title as UTF-16LE and "folder". A file whose checksum does not
match is still read (Chromium then only renumbers ids).

Our item ids are the guids: an id that is not a UUID (from another format) is written as the
UUID5 of it, the same every time.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from .files import BadFile, check_url, roots
from .model import BOOKMARK, FOLDER, Item

#: Microseconds from 1601-01-01 (Windows' epoch, Chromium's) to 1970-01-01.
EPOCH_DELTA_US = 11_644_473_600 * 1_000_000
ROOT_KEYS = {"bookmark_bar": "bar", "other": "other", "synced": "mobile"}
ROOT_GUIDS = {"bar": "0bc5d13f-2cba-5d74-951f-3f233fe6c908",
              "other": "82b081ec-3dd3-529c-8475-ab6c344590dd",
              "mobile": "4cf2e351-0e85-532b-bb37-df045d8f8d0f"}
ROOT_IDS = {"bar": "1", "other": "2", "mobile": "3"}
_NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # RFC 4122's URL namespace


def guid_of(iid: str) -> str:
    try:
        return str(uuid.UUID(iid))
    except ValueError:
        return str(uuid.uuid5(_NAMESPACE, "zflood-bookmark:" + iid))


def _date(node: dict[str, Any], key: str) -> int:
    raw = node.get(key, "0")
    if not isinstance(raw, str) or not raw.isdigit():
        raise BadFile(f"a Chromium bookmark's {key} is not a number: {raw!r}")
    v = int(raw)
    return max(0, v - EPOCH_DELTA_US) if v else 0


def _node(node: object, depth: int) -> Item:
    if not isinstance(node, dict):
        raise BadFile("a Chromium bookmark node is not an object")
    if depth > 200:
        raise BadFile("Chromium bookmarks nested too deep")
    name, kind, guid = node.get("name", ""), node.get("type"), node.get("guid", "")
    if not isinstance(name, str) or not isinstance(guid, str):
        raise BadFile("a Chromium bookmark's name or guid is not text")
    if kind == "url":
        url = node.get("url")
        if not isinstance(url, str):
            raise BadFile(f"a Chromium bookmark with no url ({name!r})")
        it = Item(guid, BOOKMARK, name, check_url(url))
    elif kind == "folder":
        children = node.get("children", [])
        if not isinstance(children, list):
            raise BadFile(f"a Chromium folder's children are not a list ({name!r})")
        it = Item(guid, FOLDER, name)
        it.children = [_node(c, depth + 1) for c in children]
        it.modified = _date(node, "date_modified")
    else:
        raise BadFile(f"a Chromium bookmark node of type {kind!r}")
    it.added = _date(node, "date_added")
    return it


def read(data: bytes) -> dict[str, Item]:
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadFile(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("roots"), dict):
        raise BadFile("not a Chromium Bookmarks file (no \"roots\" object)")
    tree = roots()
    found = False
    for key, root in ROOT_KEYS.items():
        if key in doc["roots"]:
            node = _node(doc["roots"][key], 0)
            if node.kind != FOLDER:
                raise BadFile(f"the Chromium root {key} is not a folder")
            tree[root].children = node.children
            tree[root].added, tree[root].modified = node.added, node.modified
            found = True
    if not found:
        raise BadFile("not a Chromium Bookmarks file (no bookmark_bar, other or synced root)")
    return tree


def _stamp(us: int) -> str:
    return str(us + EPOCH_DELTA_US) if us else "0"


class _Encoder:
    def __init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.next_id = 4

    def node(self, it: Item, root: str | None = None) -> dict[str, Any]:
        if root is not None:
            nid, guid = ROOT_IDS[root], ROOT_GUIDS[root]
        else:
            nid, guid = str(self.next_id), guid_of(it.id)
            self.next_id += 1
        out: dict[str, Any] = {"date_added": _stamp(it.added), "date_last_used": "0",
                               "guid": guid, "id": nid, "name": it.title}
        self.md5.update(nid.encode())
        self.md5.update(it.title.encode("utf-16-le"))
        if it.folder:
            self.md5.update(b"folder")
            out["children"] = [self.node(c) for c in it.children]
            out["date_modified"] = _stamp(it.modified)
            out["type"] = "folder"
        else:
            self.md5.update(b"url")
            self.md5.update(it.url.encode())
            out["type"] = "url"
            out["url"] = it.url
        return out


def checksum(doc: dict[str, Any]) -> str:
    """The checksum Chromium computes for a Bookmarks document's roots (to check a file)."""
    md5 = hashlib.md5(usedforsecurity=False)

    def visit(node: dict[str, Any]) -> None:
        md5.update(str(node["id"]).encode())
        md5.update(str(node.get("name", "")).encode("utf-16-le"))
        if node.get("type") == "url":
            md5.update(b"url")
            md5.update(str(node["url"]).encode())
        else:
            md5.update(b"folder")
            for c in node.get("children", []):
                visit(c)

    for key in ROOT_KEYS:
        if key in doc["roots"]:
            visit(doc["roots"][key])
    return md5.hexdigest()


def write(tree: dict[str, Item]) -> bytes:
    enc = _Encoder()
    rendered = {key: enc.node(tree[root], root) for key, root in ROOT_KEYS.items()}
    doc = {"checksum": enc.md5.hexdigest(), "roots": rendered, "version": 1}
    return (json.dumps(doc, indent=3, ensure_ascii=False) + "\n").encode()
