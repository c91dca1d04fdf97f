"""Netscape bookmark HTML (`<!DOCTYPE NETSCAPE-Bookmark-file-1>`): what every browser imports
and exports. Folders are `<DT><H3>` followed by a `<DL>`; bookmarks `<DT><A HREF ADD_DATE>`.
ADD_DATE and LAST_MODIFIED are seconds since 1970; TAGS (Firefox) is a comma list. The bookmark
bar is the top-level folder marked PERSONAL_TOOLBAR_FOLDER (Chromium, Firefox), Firefox's
"Other Bookmarks" is marked UNFILED_BOOKMARKS_FOLDER, and other top-level entries are the
`other` root's; the `mobile` root, when not empty, is a top-level folder marked
ZFLOOD_ROOT="mobile" (browsers ignore attributes they do not know).
"""

from __future__ import annotations

import re
from html import escape, unescape

from .files import BadFile, check_url, roots
from .model import BOOKMARK, FOLDER, Item

HEAD = """<!DOCTYPE NETSCAPE-Bookmark-file-1>
<!-- This is an automatically generated file.
     It will be read and overwritten.
     DO NOT EDIT! -->
<META HTTP-EQUIV="Content-Type" CONTENT="text/html; charset=UTF-8">
<TITLE>Bookmarks</TITLE>
<H1>Bookmarks</H1>
<DL><p>
"""


def seconds_to_us(text: str | None) -> int:
    """A date attribute as microseconds; seconds by the format, though some writers use
    milliseconds or microseconds (told apart by size)."""
    if not text:
        return 0
    try:
        v = int(text.strip())
    except ValueError:
        raise BadFile(f"not a date: {text!r}") from None
    if v < 0:
        raise BadFile(f"not a date: {text!r}")
    if v > 10**14:
        return v
    if v > 10**11:
        return v * 1000
    return v * 1_000_000


# The format is a fixed, flat use of a few tags, so a tokenizer of three regular expressions
# reads it (about 4x faster than html.parser, which a 10,000-bookmark import would wait on).
_TOKEN = re.compile(r"""<!--.*?-->|<(/?)([A-Za-z][A-Za-z0-9]*)((?:[^>"']|"[^"]*"|'[^']*')*)>"""
                    r"""|<!([^>]*)>|([^<]+)|<""", re.S)
_ATTR = re.compile(r"""([A-Za-z_:][-A-Za-z0-9_:.]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'"""
                   r"""|([^\s"'>]+)))?""")


def _text(raw: str) -> str:
    return unescape(raw) if "&" in raw else raw


class _Reader:
    def __init__(self, text: str) -> None:
        self.source = text
        self.at = 0
        self.roots = roots()
        self.stack: list[Item] = []
        self.pending: Item | None = None  # a folder whose <DL> comes next
        self.text: list[str] | None = None
        self.current: Item | None = None  # the <A> or <H3> whose text is being read
        self.closed = False
        self.doctype = False

    def run(self) -> None:
        for m in _TOKEN.finditer(self.source):
            self.at = m.start()
            close, tag, attrs, decl, data = m.groups()
            if tag is not None:
                if close:
                    self.end(tag.lower())
                else:
                    self.start(tag.lower(), attrs)
            elif data is not None:
                if self.text is not None:
                    self.text.append(data)
            elif decl is not None:
                if decl.lower().startswith("doctype netscape-bookmark-file-1"):
                    self.doctype = True
            elif m.group(0) == "<" and self.text is not None:
                self.text.append("<")

    def _where(self) -> str:
        return f"line {self.source.count(chr(10), 0, self.at) + 1}"

    def start(self, tag: str, raw: str) -> None:
        if tag not in ("dl", "h3", "a"):
            return
        a = {m.group(1).lower(): _text(m.group(2) if m.group(2) is not None else
                                       m.group(3) if m.group(3) is not None else
                                       m.group(4) or "")
             for m in _ATTR.finditer(raw)}
        if tag == "dl":
            if self.closed:
                raise BadFile(f"a <DL> after the end of the list ({self._where()})")
            if not self.stack:
                self.stack.append(self.roots["other"])
            elif self.pending is None:
                raise BadFile(f"a <DL> that belongs to no folder ({self._where()})")
            else:
                self.stack.append(self.pending)
            self.pending = None
        elif tag in ("h3", "a"):
            if not self.stack:
                raise BadFile(f"a <{tag.upper()}> outside the <DL> list ({self._where()})")
            if self.current is not None:
                raise BadFile(f"a <{tag.upper()}> inside another entry ({self._where()})")
            self.pending = None
            if tag == "h3":
                it = Item("", FOLDER)
                top = len(self.stack) == 1
                if top and a.get("personal_toolbar_folder", "").lower() == "true":
                    it = self.roots["bar"]
                elif top and a.get("unfiled_bookmarks_folder", "").lower() == "true":
                    it = self.roots["other"]
                elif top and a.get("zflood_root") == "mobile":
                    it = self.roots["mobile"]
                else:
                    self.stack[-1].children.append(it)
            else:
                if "href" not in a:
                    raise BadFile(f"a bookmark with no HREF ({self._where()})")
                try:
                    url = check_url(a["href"])
                except BadFile as e:
                    raise BadFile(f"{e} ({self._where()})") from None
                it = Item("", BOOKMARK, url=url)
                tags = [t.strip() for t in a.get("tags", "").split(",") if t.strip()]
                it.tags = tuple(tags)
                self.stack[-1].children.append(it)
            it.added = seconds_to_us(a.get("add_date"))
            it.modified = seconds_to_us(a.get("last_modified"))
            self.current, self.text = it, []

    def end(self, tag: str) -> None:
        if tag == "dl":
            if not self.stack:
                raise BadFile(f"a </DL> with no <DL> ({self._where()})")
            self.stack.pop()
            self.closed = not self.stack
        elif tag in ("h3", "a") and self.current is not None:
            it = self.current
            if (it.folder and tag != "h3") or (not it.folder and tag != "a"):
                raise BadFile(f"</{tag.upper()}> closes another entry ({self._where()})")
            title = _text("".join(self.text or [])).strip()
            if it.id not in ("bar", "other", "mobile"):
                it.title = title
            if it.folder:
                self.pending = it
            self.current, self.text = None, None


def read(data: bytes) -> dict[str, Item]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadFile(f"not UTF-8 text (byte {e.start})") from None
    r = _Reader(text)
    r.run()
    if not r.doctype:
        raise BadFile("not a Netscape bookmark file (no <!DOCTYPE NETSCAPE-Bookmark-file-1>)")
    if r.current is not None:
        raise BadFile("the file ends inside an entry")
    if r.stack or not r.closed:
        raise BadFile("the file ends before its bookmark list does (a <DL> is not closed)")
    return r.roots


def _attrs(it: Item) -> str:
    out = ""
    if it.added:
        out += f' ADD_DATE="{it.added // 1_000_000}"'
    if it.modified:
        out += f' LAST_MODIFIED="{it.modified // 1_000_000}"'
    return out


def _items(out: list[str], items: list[Item], depth: int) -> None:
    pad = "    " * depth
    for it in items:
        if it.folder:
            out.append(f"{pad}<DT><H3{_attrs(it)}>{escape(it.title, False)}</H3>\n")
            out.append(f"{pad}<DL><p>\n")
            _items(out, it.children, depth + 1)
            out.append(f"{pad}</DL><p>\n")
        else:
            tags = f' TAGS="{escape(",".join(it.tags))}"' if it.tags else ""
            out.append(f'{pad}<DT><A HREF="{escape(it.url)}"{_attrs(it)}{tags}>'
                       f"{escape(it.title, False)}</A>\n")


def write(tree: dict[str, Item]) -> bytes:
    out = [HEAD]
    bar = tree["bar"]
    out.append(f'    <DT><H3{_attrs(bar)} PERSONAL_TOOLBAR_FOLDER="true">'
               f"{escape(bar.title, False)}</H3>\n    <DL><p>\n")
    _items(out, bar.children, 2)
    out.append("    </DL><p>\n")
    _items(out, tree["other"].children, 1)
    mobile = tree["mobile"]
    if mobile.children:
        out.append(f'    <DT><H3{_attrs(mobile)} ZFLOOD_ROOT="mobile">'
                   f"{escape(mobile.title, False)}</H3>\n    <DL><p>\n")
        _items(out, mobile.children, 2)
        out.append("    </DL><p>\n")
    out.append("</DL><p>\n")
    return "".join(out).encode()
