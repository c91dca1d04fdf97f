"""XBEL 1.0 (the XML Bookmark Exchange Language): `<xbel version="1.0">` holding `<folder>`s
(a `<title>`, then entries) and `<bookmark href>`s (a `<title>`), with `id`, `added` and
`modified` attributes (ISO 8601 dates). Separators, aliases and descriptions are skipped. The
bar and mobile roots are top-level folders with the ids `bar` and `mobile`; other top-level
entries are the `other` root's. Item ids are written as `z` + the id (an XML id starts with a
letter), and read back the same way.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from .files import BadFile, check_url, roots
from .model import BOOKMARK, FOLDER, ROOTS, Item

HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE xbel PUBLIC "+//IDN python.org//DTD XML Bookmark Exchange Language 1.0//EN'
        '//XML" "http://pyxml.sourceforge.net/topics/dtds/xbel-1.0.dtd">\n')
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _date(text: str | None) -> int:
    if not text:
        return 0
    try:
        d = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadFile(f"not an XBEL date: {text!r}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return max(0, (d - _EPOCH) // timedelta(microseconds=1))


def _iso(us: int) -> str:
    d = _EPOCH + timedelta(microseconds=us)
    text = d.strftime("%Y-%m-%dT%H:%M:%S")
    if d.microsecond:
        text += f".{d.microsecond:06d}"
    return text + "Z"


def _id(el: ET.Element) -> str:
    raw = el.get("id") or ""
    return raw[1:] if raw.startswith("z") and len(raw) > 1 else raw


def _title(el: ET.Element) -> str:
    t = el.find("title")
    return "".join(t.itertext()).strip() if t is not None else ""


def _entries(el: ET.Element, into: Item, top: dict[str, Item] | None) -> None:
    for child in el:
        if child.tag == "folder":
            iid = _id(child)
            if top is not None and iid in ("bar", "mobile", "other"):
                it = top[iid]
            else:
                it = Item(iid, FOLDER, _title(child))
                into.children.append(it)
            it.added, it.modified = _date(child.get("added")), _date(child.get("modified"))
            _entries(child, it, None)
        elif child.tag == "bookmark":
            href = child.get("href")
            if href is None:
                raise BadFile("an XBEL bookmark with no href")
            it = Item(_id(child), BOOKMARK, _title(child), check_url(href))
            it.added, it.modified = _date(child.get("added")), _date(child.get("modified"))
            into.children.append(it)


def read(data: bytes) -> dict[str, Item]:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise BadFile(f"not well-formed XBEL: {e}") from None
    if root.tag != "xbel":
        raise BadFile(f"not XBEL: the document is <{root.tag}>, not <xbel>")
    tree = roots()
    _entries(root, tree["other"], tree)
    return tree


def _attrs(el: ET.Element, it: Item) -> None:
    if it.id:
        el.set("id", it.id if it.id in ROOTS else "z" + it.id)
    if it.added:
        el.set("added", _iso(it.added))
    if it.modified:
        el.set("modified", _iso(it.modified))


def _write(parent: ET.Element, items: list[Item]) -> None:
    for it in items:
        if it.folder:
            el = ET.SubElement(parent, "folder")
            _attrs(el, it)
            ET.SubElement(el, "title").text = it.title
            _write(el, it.children)
        else:
            el = ET.SubElement(parent, "bookmark", href=it.url)
            _attrs(el, it)
            ET.SubElement(el, "title").text = it.title


def write(tree: dict[str, Item]) -> bytes:
    top = ET.Element("xbel", version="1.0")
    bar = ET.SubElement(top, "folder")
    _attrs(bar, tree["bar"])
    ET.SubElement(bar, "title").text = tree["bar"].title
    _write(bar, tree["bar"].children)
    _write(top, tree["other"].children)
    if tree["mobile"].children:
        mobile = ET.SubElement(top, "folder")
        _attrs(mobile, tree["mobile"])
        ET.SubElement(mobile, "title").text = tree["mobile"].title
        _write(mobile, tree["mobile"].children)
    ET.indent(top)
    return (HEAD + ET.tostring(top, encoding="unicode") + "\n").encode()
