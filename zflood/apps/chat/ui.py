"""The interactive chat: recent history, then new lines as they arrive, above an input line.

Three threads, each with its own Client (a Client is one thread's): the terminal's
(prompt_toolkit), a reader that follows the daemon's notes and appends the room's lines, and a
sender that publishes what was typed. While the daemon does not answer, the status line says so
and typed lines wait, in order, to be sent when it is back; a line still waiting when the chat
is closed goes into the store directly if the daemon is stopped (it leaves with the next
`zflood run`, as `chat send` does), so nothing typed is lost.

Where unread lines begin is kept per room in the user's own state directory
($XDG_STATE_HOME/zflood), as the index of the first line not yet shown.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from ...errors import ZfloodError
from . import history
from .lines import APP, Line, format_line, line, note

HISTORY = 200
KEEP = 2000  # lines held for the screen: memory stays flat however long the chat runs
RETRY = 1.0  # seconds between tries while the daemon does not answer
TIMEOUT = 2.0  # a request the daemon has not answered by then: it is unreachable

MARKER = "──── unread ────"


def _read_file(state: Path, room: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    key = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:16]
    return Path(base) / "zflood" / f"chat-{key}-{room.encode().hex()[:32]}.json"


def load_read(state: Path, room: str) -> int | None:
    try:
        value = json.loads(_read_file(state, room).read_text()).get("read")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def save_read(state: Path, room: str, index: int) -> None:
    path = _read_file(state, room)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"read": index}))
    os.replace(tmp, path)


class Chat:
    """What the screen shows, fed from the reader thread; no terminal here."""

    def __init__(self, state: Path, room: str) -> None:
        self.state = state
        self.room = room
        self.lines: deque[str] = deque(maxlen=KEEP)
        self.conn = "connecting to the zflood daemon..."
        self.names: dict[str, str] = {}
        self.next_index = 0
        self.unread_from = load_read(state, room)
        self.marked = False
        self.outbox: queue.Queue[str] = queue.Queue()
        self.waiting: list[str] = []  # typed, not yet taken by the daemon (sender's)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.changed: Any = lambda: None  # set by the terminal: redraw

    def show(self, ln: Line) -> None:
        with self.lock:
            if (not self.marked and self.unread_from is not None
                    and ln.index >= self.unread_from and self.lines):
                self.lines.append(MARKER)
                self.marked = True
            self.lines.append(format_line(ln, self.names))
            self.next_index = max(self.next_index, ln.index + 1)

    def set_status(self, text: str) -> None:
        with self.lock:
            self.conn = text
        self.changed()

    @property
    def status(self) -> str:
        """The status line: the daemon's state, and what typed lines still wait."""
        with self.lock:
            waiting = len(self.waiting) + self.outbox.qsize()
            return self.conn + (f" · {waiting} line(s) waiting" if waiting else "")

    def text(self) -> str:
        with self.lock:
            return "\n".join(self.lines)


def _connect(state: Path) -> Any:
    from ..group import Online, open_group

    group = open_group(state)
    if not isinstance(group, Online):
        group.close()
        raise ZfloodError("the zflood daemon is not running")
    group.client.timeout = TIMEOUT
    return group


def reader(chat: Chat) -> None:
    """Follow the daemon's notes; show the room's lines. Reconnects while it is away; with
    the daemon stopped the history comes from the store (opened just long enough to read)."""
    first = True
    while not chat.stop.is_set():
        try:
            group = _connect(chat.state)
        except ZfloodError as e:
            if first:
                first = not _history_offline(chat)
            stopped = "not running" in str(e)
            chat.set_status("daemon not running: what you type is kept (stored when you quit)"
                            if stopped else f"daemon unreachable ({e})")
            chat.stop.wait(RETRY)
            continue
        try:
            chat.names = group.names()
            if first:
                for old in history.last(group, chat.room, HISTORY):
                    chat.show(old)
                chat.next_index = max(chat.next_index, group.count())
                first = False
                chat.changed()
            chat.set_status(f"room {chat.room} · {len(chat.names)} named members · "
                            "Enter sends, Ctrl-D quits")
            for n in group.client.follow(chat.next_index, app=APP, timeout=RETRY):
                ln = line(n)
                if ln is not None and ln.room == chat.room:
                    if ln.origin.hex() not in chat.names:
                        chat.names = group.names()
                    chat.show(ln)
                    chat.changed()
                chat.next_index = max(chat.next_index, int(n["index"]) + 1)
                if chat.stop.is_set():
                    break
        except ZfloodError as e:
            chat.set_status(f"daemon unreachable ({e})")
            chat.stop.wait(RETRY)
        finally:
            group.close()


def _history_offline(chat: Chat) -> bool:
    """The room's last lines from the store itself; False if it cannot be read now."""
    from ..group import Offline

    try:
        group = Offline(chat.state)
    except (ZfloodError, OSError):
        return False
    try:
        chat.names = group.names()
        for old in history.last(group, chat.room, HISTORY):
            chat.show(old)
        chat.next_index = max(chat.next_index, group.count())
    finally:
        group.close()
    chat.changed()
    return True


def sender(chat: Chat) -> None:
    """Publish typed lines in order; while the daemon is away they wait."""
    group = None
    while not (chat.stop.is_set() and chat.outbox.empty() and not chat.waiting):
        if not chat.waiting:
            try:
                chat.waiting.append(chat.outbox.get(timeout=0.2))
            except queue.Empty:
                continue
        if chat.stop.is_set() and group is None:
            return  # closing: what waits is left to `flush_offline`
        try:
            group = group or _connect(chat.state)
            group.publish(note(chat.room, chat.waiting[0]))
            chat.waiting.pop(0)
        except ZfloodError:
            if group is not None:
                group.close()
                group = None
            chat.changed()  # the status line counts what waits
            chat.stop.wait(RETRY)
    if group is not None:
        group.close()


def flush_offline(chat: Chat) -> str | None:
    """Lines still waiting at exit: into the store if the daemon is stopped."""
    while not chat.outbox.empty():
        chat.waiting.append(chat.outbox.get())
    if not chat.waiting:
        return None
    from ..group import opened

    try:
        with opened(chat.state) as group:
            for text in chat.waiting:
                group.publish(note(chat.room, text))
            where = "" if group.running else " offline; they go out with zflood run"
    except ZfloodError as e:
        return f"zflood: {len(chat.waiting)} line(s) not sent: {e}"
    n = len(chat.waiting)
    chat.waiting.clear()
    return f"{n} waiting line(s) sent{where}"


def run(state: Path, room: str) -> int:
    from prompt_toolkit.application import Application
    from prompt_toolkit.document import Document
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.layout import HSplit, Layout, Window
    from prompt_toolkit.layout.controls import FormattedTextControl
    from prompt_toolkit.widgets import TextArea

    chat = Chat(state, room)
    output = TextArea(read_only=True, focusable=False, wrap_lines=True, scrollbar=False)
    status = Window(FormattedTextControl(lambda: chat.status), height=1, style="reverse")

    def accept(buffer: Any) -> bool:
        text = buffer.text
        if text.strip():
            chat.outbox.put(text)
            chat.changed()
        return False  # clears the input line

    entry = TextArea(height=1, prompt=f"[{room}] ", multiline=False, accept_handler=accept)
    keys = KeyBindings()

    @keys.add("c-d")
    @keys.add("c-c")
    def _quit(event: Any) -> None:
        event.app.exit()

    app: Application[None] = Application(
        layout=Layout(HSplit([output, status, entry]), focused_element=entry),
        key_bindings=keys, full_screen=True)

    def redraw() -> None:
        def update() -> None:
            text = chat.text()
            output.buffer.set_document(Document(text, len(text)), bypass_readonly=True)
            app.invalidate()

        if app.loop is not None:
            app.loop.call_soon_threadsafe(update)

    chat.changed = redraw
    threads = [threading.Thread(target=f, args=(chat,), daemon=True, name=f.__name__)
               for f in (reader, sender)]
    def begin() -> None:
        for t in threads:
            t.start()
        redraw()

    app.pre_run_callables.append(begin)
    try:
        app.run()
    finally:
        chat.stop.set()
        for t in threads:
            t.join(timeout=TIMEOUT + RETRY)
        if chat.next_index:
            save_read(state, room, chat.next_index)
    said = flush_offline(chat)
    if said is None:
        return 0
    if said.startswith("zflood: "):  # typed lines that could not be kept anywhere
        print(said, file=sys.stderr)
        return 1
    print(said)
    return 0
