"""App notes: which app a body belongs to, and the store's index of them (real SQLite files)."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import cbor2
import pytest

from zflood import store as store_module
from zflood.appnote import MAX_APP, app_of
from zflood.identity import GENESIS, note_id
from zflood.log import again as published_again
from zflood.node import Node
from zflood.sim import Sim
from zflood.store import Body, Store


@pytest.mark.parametrize(
    ("body", "app"),
    [
        (cbor2.dumps({"app": "chat", "text": "hi"}), "chat"),
        (cbor2.dumps({"text": "hi", "app": "mail"}), "mail"),
        (cbor2.dumps({"app": "é" * 32}), "é" * 32),  # 64 bytes of UTF-8
        (cbor2.dumps({"app": "é" * 33}), None),  # 66: longer than a name may be
        (cbor2.dumps({"app": "x" * MAX_APP}), "x" * MAX_APP),
        (cbor2.dumps({"app": ""}), None),
        (cbor2.dumps({"app": b"chat"}), None),
        (cbor2.dumps({"app": 5}), None),
        (cbor2.dumps({"text": "no app"}), None),
        (cbor2.dumps(["app", "chat"]), None),
        (cbor2.dumps({"app": "chat"}) + b"\x00", None),  # trailing bytes
        (cbor2.dumps({"app": "chat"})[:-2], None),  # cut short
        (b"\xbf\x63app\x64chat\xff", "chat"),  # an indefinite-length map
        (b"\xa1", None),
        (b"", None),
        (b"plain bytes", None),
        ('{"app": "chat"}', None),  # text bodies are opaque
    ],
)
def test_app_of_reads_the_app_name_of_a_map_body_and_nothing_else(body: Body,
                                                                  app: str | None) -> None:
    assert app_of(body) == app


def n_of(body: Body) -> int:
    assert isinstance(body, bytes)
    n: int = cbor2.loads(body)["n"]
    return n


def _mixed(n: int) -> list[Body]:
    out: list[Body] = []
    for i in range(n):
        out += [cbor2.dumps({"app": "chat", "n": i}), b"x", cbor2.dumps({"app": "mail", "n": i}),
                b"\xa1broken", "text"]
    return out


def test_the_store_indexes_app_notes_as_they_are_stored_one_by_one_or_in_batches(
    tmp_path: Path,
) -> None:
    node = Node(path=str(tmp_path / "n.db"))
    try:
        bodies = _mixed(20)
        node.publish_many(bodies[:50])
        for body in bodies[50:]:
            node.publish(body)
        chat, searched = node.app_notes("chat")
        assert [n_of(n.body) for n in chat] == list(range(20))
        assert [n.index for n in chat] == list(range(0, 100, 5)) and searched == 100
        page, searched = node.app_notes("mail", 10, limit=3)
        assert [n.index for n in page] == [12, 17, 22] and searched == 23
        assert node.app_notes("nobody") == ([], 100)
        assert node.app_before("chat", 50) == 45 and node.app_before("chat", 0) == -1
    finally:
        node.close()


def test_notes_from_a_peer_are_indexed_too() -> None:
    sim = Sim(seed=7)
    a, b = Node(), Node()
    a.publish_many(_mixed(10))
    sim.connect_nodes(a, b)
    sim.run_until_quiescent()
    assert [n.id for n in b.app_notes("mail")[0]] == [n.id for n in a.app_notes("mail")[0]]
    assert len(b.app_notes("mail")[0]) == 10


def test_a_store_from_before_the_index_is_indexed_when_it_is_opened(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    node = Node(path=str(path))
    node.publish_many(_mixed(10))
    node.close()
    db = sqlite3.connect(path)  # back to a store as it was before the index
    db.executescript("DROP TRIGGER app_notes_insert; DROP TRIGGER app_notes_delete;"
                     " DROP TRIGGER app_notes_update; DROP TABLE app_notes;"
                     " DELETE FROM meta WHERE key = 'app_index';")
    db.close()
    node = Node(path=str(path))
    try:
        assert [n_of(n.body) for n in node.app_notes("chat")[0]] == list(range(10))
        node.publish(cbor2.dumps({"app": "chat", "n": 10}))
        assert len(node.app_notes("chat")[0]) == 11
    finally:
        node.close()


def test_reading_an_app_searches_its_index_not_the_log(tmp_path: Path) -> None:
    """The cost follows the app's notes: SQLite's plan walks the index by (app, idx) and
    looks each note up by its key; it never scans the notes."""
    store = Store(tmp_path / "s.db")
    try:
        for query in (store_module._APP_READ, store_module._APP_READ_FORKED):
            plan = store._db.execute("EXPLAIN QUERY PLAN " + query, ("chat", 0, 10, 10))
            check_plan([row[-1] for row in plan])
    finally:
        store.close()


def check_plan(steps: list[str]) -> None:

    assert any(s.startswith("SEARCH a USING PRIMARY KEY (app=? AND idx>? AND idx<?)")
               for s in steps), steps
    assert any(s.startswith("SEARCH n USING INTEGER PRIMARY KEY (rowid=?)")
               for s in steps), steps
    assert not any(s.startswith("SCAN") for s in steps), steps
    assert not any("TEMP B-TREE" in s for s in steps), steps


def _check_index_matches_replay(store: Store, seed: int) -> None:
    shown = list(store.replay())
    for app in ("chat", "mail", "zflood"):
        want = [n for n in shown if app_of(n.body) == app]
        got, searched = store.app_notes(app)
        assert got == want, f"seed {seed}: {app}"
        assert searched == store.next_index
        assert store.app_before(app, store.next_index) == (want[-1].index if want else -1)


@pytest.mark.parametrize("seed", range(20))
def test_the_app_index_shows_what_replay_shows_through_forks_and_bodies_published_again(
    tmp_path: Path, seed: int
) -> None:
    """Chains replaced from a seqno (their notes move off the chain, still shown where they
    were), bodies published again (shown, or hidden where shown already), reopening a store
    and rebuilding an old one's index: an app's notes are always replay's, filtered."""
    rng = random.Random(seed)
    path = tmp_path / "s.db"
    store = Store(path)
    counter = 0

    def body() -> Body:
        nonlocal counter
        counter += 1
        kind = rng.choice(["chat", "mail", "zflood", "opaque", "text"])
        if kind == "opaque":
            return b"opaque %d" % counter
        if kind == "text":
            return f"text {counter}"
        return cbor2.dumps({"app": kind, "n": counter})

    origins = [bytes([i]) * 32 for i in range(3)]
    try:
        for step in range(30):
            origin = rng.choice(origins)
            have = store.count(origin)
            action = rng.random()
            start = have if action < 0.6 or have == 0 else rng.randrange(have)
            # real hash links, and bodies published again as log.py writes them: the store
            # checks both when it reads
            prev = store.id_at(origin, start - 1) if start else GENESIS
            assert prev is not None
            new: list[tuple[bytes, bytes | None, Body]] = []
            again = []
            for i in range(rng.randint(1, 4)):
                b = body()
                if rng.random() < 0.3:
                    root, hidden = rng.randbytes(32), rng.random() < 0.3
                    again.append((start + i, root, 0, hidden, b))
                    b = published_again(0, root, b)
                prev = note_id(origin, start + i, prev, b)
                new.append((prev, None, b))
            if start == have:
                store.append(origin, have, new, again)
            else:
                store.replace(origin, start, new, again)
            if step % 10 == 9:
                store.close()
                store = Store(path)
            _check_index_matches_replay(store, seed)
        store.close()
        db = sqlite3.connect(path)  # as a store from before the index was
        db.executescript("DROP TABLE app_notes; DELETE FROM meta WHERE key = 'app_index';"
                         + "".join(f"DROP TRIGGER {t};" for (t,) in db.execute(
                             "SELECT name FROM sqlite_master WHERE type = 'trigger'")))
        db.close()
        store = Store(path)
        _check_index_matches_replay(store, seed)
    finally:
        store.close()
