"""The local API over real ZeroMQ sockets: PUB, the control socket and `Client`.

The daemon side (a durable Node and a LocalAPI) runs on an asyncio loop in a background thread,
as it does in the daemon; the synchronous Client runs in the test thread. The `daemon` fixture
fails a test that leaves a task running or a socket open, and joins its thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import pytest
import zmq
import zmq.asyncio
from zmq.utils.garbage import GarbageCollectorThread

from zflood import local
from zflood.config import DEFAULT, Config, MiB
from zflood.errors import LocalError
from zflood.local import Client, DaemonUnavailable, LocalAPI, ipc_endpoints
from zflood.local import client as client_module
from zflood.node import Node
from zflood.store import Note

WAIT = 5.0  # bound on any single wait; every expected event comes far sooner locally
T = TypeVar("T")


class Daemon:
    """A Node and its LocalAPI on their own loop thread. Node calls go through `call`: the
    engine is not thread-safe and its SQLite connection belongs to the loop thread."""

    def __init__(self, directory: Path, api_class: type[LocalAPI] = LocalAPI,
                 tcp: bool = False, config: Config = DEFAULT) -> None:
        self.directory = directory
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="daemon-loop")
        self.thread.start()
        self.ctx = zmq.asyncio.Context()
        self.node: Node = self.call(lambda: Node(path=str(directory / "store.db"),
                                                  config=config))
        pub, control = ipc_endpoints(directory)
        extra = ["tcp://127.0.0.1:0"] if tcp else []
        self.status: Callable[[], dict[str, Any]] = lambda: {"count": self.node.count}
        self.links: list[tuple[bytes, bool]] = []  # what `link` requests asked of the mesh

        async def make() -> LocalAPI:
            api = api_class(self.ctx, self.node, pub=[pub, *extra], control=[control, *extra],
                            status=lambda: self.status(),
                            link=lambda node, up: self.links.append((node, up)))
            await api.start()
            return api

        self.api = self.run(make())

    def call(self, fn: Callable[[], T]) -> T:
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def go() -> None:
            try:
                done.set_result(fn())
            except BaseException as e:
                done.set_exception(e)

        self.loop.call_soon_threadsafe(go)
        return done.result(WAIT)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def publish(self, body: str | bytes) -> Note:
        """As if a note arrived from a peer: delivered by the node, not asked for locally."""
        return self.call(lambda: self.node.publish(body))

    def client(self, **kw: Any) -> Client:
        return Client(self.api.control_endpoints[0], self.api.pub_endpoints[0], **kw)

    def close(self) -> None:
        async def stop() -> list[asyncio.Task[Any]]:
            await self.api.close()
            return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

        left = self.run(stop())
        self.call(self.node.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the loop thread did not stop"
        self.loop.close()
        leaked = [s for s in self.ctx._sockets if not s.closed]
        self.ctx.destroy(linger=0)
        assert not left, f"tasks left running: {left}"
        assert not leaked, f"sockets left open: {leaked}"


def threads() -> set[threading.Thread]:
    """Running threads but pyzmq's garbage collector, which is started once, on the first
    reply handed to ZeroMQ without a copy, and serves the whole process from then on."""
    return {t for t in threading.enumerate() if not isinstance(t, GarbageCollectorThread)}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    before = threads()
    d = Daemon(tmp_path)
    yield d
    d.close()
    assert threads() == before, "a thread outlived the test"


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with daemon.client() as c:
        yield c
    assert c._ctx.closed


def subscribed(daemon: Daemon, ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
    """A plain SUB on the daemon's PUB, returned once its subscription is in effect (probe
    notes are published until one arrives; they are drained)."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"note")
    sub.connect(daemon.api.pub_endpoints[0])
    deadline = time.monotonic() + WAIT
    while not sub.poll(20):
        assert time.monotonic() < deadline, "the subscription never took effect"
        daemon.publish("probe")
    while sub.poll(100):
        sub.recv_multipart()
    return sub


def received(sub: zmq.Socket[bytes]) -> dict[str, Any]:
    assert sub.poll(int(WAIT * 1000)), "no note on PUB"
    topic, data = sub.recv_multipart()
    assert topic == b"note"
    note = cbor2.loads(data)
    assert isinstance(note, dict)
    return note


def request(daemon: Daemon, frames: list[bytes], kind: int = zmq.DEALER) -> Any:
    """Send raw frames to the control socket; the decoded reply."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(daemon.api.control_endpoints[0])
        sock.send_multipart(frames)
        assert sock.poll(int(WAIT * 1000)), "no reply"
        return cbor2.loads(sock.recv_multipart()[-1])
    finally:
        ctx.destroy(linger=0)


# -- PUB ---------------------------------------------------------------------------------------


def test_published_note_arrives_on_pub_with_its_fields_and_persists(
    daemon: Daemon, client: Client
) -> None:
    ctx = zmq.Context()
    try:
        sub = subscribed(daemon, ctx)
        note = client.publish("hello")
        live = received(sub)
    finally:
        ctx.destroy(linger=0)
    assert live == note
    assert live["origin"] == daemon.node.id and live["body"] == "hello"
    assert type(live["seqno"]) is int and type(live["index"]) is int
    assert isinstance(live["id"], bytes) and len(live["id"]) == 32
    stored = daemon.call(lambda: list(daemon.node.notes(note["index"])))
    assert [(n.body, n.id, n.index) for n in stored] == [("hello", note["id"], note["index"])]


def test_notes_delivered_by_the_node_arrive_on_pub(daemon: Daemon) -> None:
    ctx = zmq.Context()
    try:
        sub = subscribed(daemon, ctx)
        sent = [daemon.publish(b"\x00bin"), daemon.publish("text")]
        got = [received(sub), received(sub)]
    finally:
        ctx.destroy(linger=0)
    assert got == [local.note_map(n) for n in sent]
    assert got[0]["body"] == b"\x00bin"


def test_tcp_endpoints_resolve_their_port_and_serve(tmp_path: Path) -> None:
    d = Daemon(tmp_path, tcp=True)
    try:
        pub_tcp, control_tcp = d.api.pub_endpoints[1], d.api.control_endpoints[1]
        assert pub_tcp.startswith("tcp://127.0.0.1:") and not pub_tcp.endswith(":0")
        with Client(control_tcp, pub_tcp) as c:
            note = c.publish("over tcp")
            assert next(c.follow(note["index"], timeout=WAIT)) == note
    finally:
        d.close()


def test_close_removes_the_ipc_socket_files(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    assert (tmp_path / "pub.sock").exists() and (tmp_path / "control.sock").exists()
    d.close()
    assert not (tmp_path / "pub.sock").exists() and not (tmp_path / "control.sock").exists()


def test_a_tcp_endpoint_off_loopback_is_refused(daemon: Daemon) -> None:
    with pytest.raises(LocalError, match="loopback"):
        LocalAPI(daemon.ctx, daemon.node, pub=["tcp://0.0.0.0:0"], control=[], status=dict)


def test_an_endpoint_that_cannot_be_bound_fails_start_and_leaves_nothing_open(
    daemon: Daemon, tmp_path: Path
) -> None:
    async def start() -> None:
        api = LocalAPI(daemon.ctx, daemon.node, pub=[f"ipc://{tmp_path}/pub2.sock"],
                       control=[f"ipc://{tmp_path}/no/such/dir/c.sock"], status=dict)
        with pytest.raises(LocalError, match="cannot bind"):
            await api.start()
        assert api.pub_endpoints == [] and not (tmp_path / "pub2.sock").exists()

    daemon.run(start())


# -- control -----------------------------------------------------------------------------------


def test_status_returns_what_the_callback_returns(daemon: Daemon, client: Client) -> None:
    daemon.publish("x")
    assert client.status() == {"count": 1}


def test_cut_and_heal_reach_the_link_callback(daemon: Daemon, client: Client) -> None:
    node = bytes(range(32))
    client.cut(node.hex())
    client.heal(node)
    assert daemon.links == [(node, False), (node, True)]
    with pytest.raises(LocalError, match="32 bytes"):
        client.cut("not hex")
    assert daemon.links == [(node, False), (node, True)]


def test_read_paginates_by_local_index(daemon: Daemon, client: Client) -> None:
    daemon.call(lambda: daemon.node.publish_many([f"n{i}" for i in range(25)]))
    pages = []
    start = 0
    while True:
        notes, start = client.read(start, 10)
        if not notes:
            break
        pages.append([n["body"] for n in notes])
    assert start == 25
    assert pages == [[f"n{i}" for i in range(a, min(a + 10, 25))] for a in (0, 10, 20)]
    assert client.read(100) == ([], 100)


def test_read_caps_its_limit(daemon: Daemon, client: Client) -> None:
    daemon.call(lambda: daemon.node.publish_many(["x"] * (DEFAULT.local_read_limit + 5)))
    notes, nxt = client.read(0, 10 * DEFAULT.local_read_limit)
    assert len(notes) == DEFAULT.local_read_limit and nxt == DEFAULT.local_read_limit


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        ([b"\xff\xfe garbage"], "not a CBOR"),
        ([cbor2.dumps([1, 2])], "CBOR map"),
        ([cbor2.dumps({"op": "nope"})], "unknown op"),
        ([cbor2.dumps({"op": "x\n" * 100_000})], "unknown op"),
        ([cbor2.dumps({"no": "op"})], "unknown op"),
        ([cbor2.dumps({"op": "publish", "body": 5})], "body"),
        ([cbor2.dumps({"op": "publish"})], "body"),
        ([cbor2.dumps({"op": "read", "start": -1})], "start"),
        ([cbor2.dumps({"op": "read", "start": True})], "start"),
        ([cbor2.dumps({"op": "read", "limit": 0})], "limit"),
        ([cbor2.dumps({"op": "link", "node": b"x" * 31, "up": False})], "32-byte"),
        ([cbor2.dumps({"op": "link", "node": "ab" * 32, "up": False})], "32-byte"),
        ([cbor2.dumps({"op": "link", "node": b"x" * 32, "up": 0})], "true or false"),
        ([cbor2.dumps({"op": "publish", "body": "x"}) + b"\x00"], "trailing"),
        ([b""], "not a CBOR"),
        ([cbor2.dumps({"op": "publish", "body": b"x" * (256 * 1024 + 1)})], "at most"),
    ],
)
def test_a_bad_request_gets_an_error_and_the_api_keeps_serving(
    daemon: Daemon, client: Client, frames: list[bytes], error: str
) -> None:
    reply = request(daemon, frames)
    assert reply["ok"] is False and error in reply["error"]
    assert "\n" not in reply["error"] and len(reply["error"]) <= 200
    assert daemon.call(lambda: daemon.node.count) == 0
    assert client.status() == {"count": 0}
    assert daemon.links == []


def test_a_request_over_maxmsgsize_is_dropped_and_the_api_keeps_serving(
    daemon: Daemon, client: Client
) -> None:
    huge = cbor2.dumps({"op": "publish", "body": b"x" * (daemon.node.config.max_frame + 1)})
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.connect(daemon.api.control_endpoints[0])
        sock.send(huge)
        # ZeroMQ cuts the connection instead of reading the message
        assert monitor.poll(int(WAIT * 1000)), "the connection was not cut"
        assert not sock.poll(0)
        sock.disable_monitor()
        monitor.close()
    finally:
        ctx.destroy(linger=0)
    assert client.status() == {"count": 0}
    with pytest.raises(LocalError, match="exceeds"):
        client.publish(b"x" * (daemon.node.config.max_frame + 1))


def test_req_clients_and_request_ids_are_answered_in_their_envelope(daemon: Daemon) -> None:
    reply = request(daemon, [cbor2.dumps({"op": "status", "id": "abc"})], zmq.REQ)
    assert reply == {"ok": True, "status": {"count": 0}, "id": "abc"}
    reply = request(daemon, [b"", cbor2.dumps({"op": "publish", "body": "via req"})])
    assert reply["ok"] is True and reply["note"]["body"] == "via req"


def test_a_failing_status_callback_gets_an_error_reply(daemon: Daemon, client: Client) -> None:
    daemon.status = lambda: {"bad": object()}
    with pytest.raises(LocalError, match="cannot encode"):
        client.status()

    def boom() -> dict[str, Any]:
        raise RuntimeError("disk on fire")

    daemon.status = boom
    with pytest.raises(LocalError, match="disk on fire"):
        client.status()
    daemon.status = lambda: {"fine": True}
    assert client.status() == {"fine": True}


def test_client_without_a_daemon_raises_daemon_unavailable_in_time(tmp_path: Path) -> None:
    with Client(f"ipc://{tmp_path}/control.sock", timeout=0.3) as c:
        assert c.pub == f"ipc://{tmp_path}/pub.sock"  # the daemon's layout, derived
        began = time.monotonic()
        with pytest.raises(DaemonUnavailable, match="no answer"):
            c.status()
        assert time.monotonic() - began < 0.3 + 1.0


def test_a_request_given_up_on_is_not_run_by_a_daemon_that_starts_later(tmp_path: Path) -> None:
    with Client(f"ipc://{tmp_path}/control.sock", timeout=0.2) as c:
        with pytest.raises(DaemonUnavailable):
            c.publish("too late")
        d = Daemon(tmp_path)
        try:
            assert c.status() == {"count": 0}
            assert d.call(lambda: d.node.count) == 0
        finally:
            d.close()


def rss() -> int:
    """This process's resident set, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_client_that_never_reads_its_replies_costs_a_bounded_number_of_bytes(
    tmp_path: Path,
) -> None:
    config = Config(local_client_bytes=2 * DEFAULT.max_frame, local_total_bytes=8 * MiB)
    d = Daemon(tmp_path, config=config)
    asked = 200  # each reply is about 2 MiB: 400 MiB if they all waited for the client (it
    # reads none: the first few are in its own queue and the kernel's, the rest in ours)
    ctx = zmq.Context()
    try:
        d.call(lambda: d.node.publish_many([bytes(200 * 1024)] * 40))
        before = rss()
        bad = ctx.socket(zmq.DEALER)
        bad.setsockopt(zmq.LINGER, 0)
        bad.setsockopt(zmq.RCVHWM, 1)  # so what it does not read stays in the daemon
        bad.setsockopt(zmq.RCVBUF, 4096)
        bad.connect(d.api.control_endpoints[0])
        for i in range(asked):
            bad.send(cbor2.dumps({"op": "read", "start": 0, "limit": 1000, "id": i}))
        deadline = time.monotonic() + WAIT
        while (stats := d.call(d.api.stats))["requests"] < asked:
            assert time.monotonic() < deadline, f"the requests were not all read: {stats}"
            time.sleep(0.01)
        assert stats["queued_bytes"] <= config.local_client_bytes + config.max_frame, stats
        assert stats["dropped_requests"] >= asked - 10, stats
        assert rss() - before < 64 * MiB
        with d.client() as good:  # another client, and the daemon, are served as before
            notes, nxt = good.read(0)
            assert nxt == len(notes) and len(notes) >= 9
            assert good.status() == {"count": 40}
        bad.close(linger=0)
        deadline = time.monotonic() + WAIT
        while (stats := d.call(d.api.stats))["queued_bytes"]:  # freed with its connection
            assert time.monotonic() < deadline, f"replies held after the client left: {stats}"
            time.sleep(0.01)
        assert stats["clients"] == 0
    finally:
        ctx.destroy(linger=0)
        d.close()


# -- follow ------------------------------------------------------------------------------------


def test_follow_yields_history_then_live_notes_each_once_in_order(
    daemon: Daemon, client: Client
) -> None:
    history, live = 200, 400
    daemon.call(lambda: daemon.node.publish_many([f"h{i}" for i in range(history)]))
    errors: list[BaseException] = []
    started = threading.Event()

    def publisher() -> None:
        try:
            started.wait(WAIT)
            with daemon.client() as other:  # half through the control socket, half "peers"
                for i in range(live):
                    if i % 2:
                        other.publish(f"l{i}")
                    else:
                        daemon.publish(f"l{i}")
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=publisher)
    thread.start()
    got = []
    try:
        for note in client.follow(0, timeout=WAIT):
            started.set()
            got.append(note)
            if len(got) == history + live:
                break
    finally:
        started.set()
        thread.join(WAIT * 4)
    assert not thread.is_alive() and not errors
    assert [n["index"] for n in got] == list(range(history + live))
    assert [n["body"] for n in got] == [f"h{i}" for i in range(history)] + [
        f"l{i}" for i in range(live)
    ]


@pytest.mark.parametrize(
    ("history", "size", "live"),
    [(20_000, 10, 0), (20_000, 10, 300), (120, 100 * 1024, 0), (120, 100 * 1024, 300)],
    ids=["small", "small, live meanwhile", "large", "large, live meanwhile"],
)
def test_follow_reads_a_long_history_without_waiting_for_its_timer(
    daemon: Daemon, history: int, size: int, live: int
) -> None:
    """Many pages of history (of large notes: pages cut short by the reply's byte budget),
    alone or with live notes arriving during the catch-up, come out each once, in order. The
    resync timer is set far beyond the test's bound: a follower that waited for it between
    pages fails."""
    client = daemon.client(config=Config(local_resync=60.0))
    bodies: list[str | bytes] = [f"h{i} {'x' * size}" for i in range(history)]
    for i in range(0, history, 5000):
        chunk = bodies[i : i + 5000]
        daemon.call(lambda: daemon.node.publish_many(chunk))  # noqa: B023 (called at once)
    errors: list[BaseException] = []
    started = threading.Event()

    def publisher() -> None:
        try:
            started.wait(WAIT)
            for i in range(live):
                daemon.publish(f"l{i}")
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=publisher)
    thread.start()
    got: list[str] = []
    deadline = time.monotonic() + WAIT
    try:
        for note in client.follow(0, timeout=WAIT):
            started.set()
            assert note["index"] == len(got), "out of order, repeated or missing"
            got.append(note["body"].split(" ")[0])
            assert time.monotonic() < deadline, f"only {len(got)} notes within {WAIT}s"
            if len(got) == history + live:
                break
    finally:
        started.set()
        thread.join(WAIT)
        client.close()
    assert not thread.is_alive() and not errors
    assert got == [f"h{i}" for i in range(history)] + [f"l{i}" for i in range(live)]


def test_a_follower_and_its_clients_own_requests_do_not_take_each_others_replies(
    daemon: Daemon, client: Client
) -> None:
    daemon.call(lambda: daemon.node.publish_many(["h"] * (3 * DEFAULT.local_read_limit)))
    got = []
    for note in client.follow(0, timeout=WAIT):
        got.append(note["index"])
        if note["index"] % 500 == 0:  # while the follower's reads are in flight
            assert client.status() == {"count": daemon.call(lambda: daemon.node.count)}
        if note["index"] < 10:
            client.publish("more")
        if len(got) == 3 * DEFAULT.local_read_limit + 10:
            break
    assert got == list(range(3 * DEFAULT.local_read_limit + 10))


def test_follow_from_the_end_sees_only_new_notes_and_times_out_when_idle(
    daemon: Daemon, client: Client
) -> None:
    daemon.publish("old")
    follower = client.follow(1, timeout=0.3)
    timer = threading.Timer(0.05, lambda: daemon.publish("new"))
    timer.start()
    began = time.monotonic()
    try:
        assert [n["body"] for n in follower] == ["new"]
    finally:
        timer.join(WAIT)
    assert time.monotonic() - began < WAIT


class Lossy(LocalAPI):
    """Drops chosen notes on PUB, as a full queue would: one mid-stream, one at the tail."""

    drop = {3, 9}

    def _on_note(self, note: Note) -> None:
        if note.index not in self.drop:
            super()._on_note(note)


def test_follow_fills_what_pub_dropped_from_the_store(tmp_path: Path) -> None:
    d = Daemon(tmp_path, Lossy)
    try:
        # the tail drop is found by the idle check
        with d.client(config=Config(local_resync=0.05)) as c:
            follower = c.follow(0, timeout=WAIT)
            first = d.publish("n0")
            assert next(follower) == local.note_map(first)
            for i in range(1, 10):
                d.publish(f"n{i}")
            got = [next(follower) for _ in range(9)]
            follower.close()
    finally:
        d.close()
    assert [n["index"] for n in got] == list(range(1, 10))


def test_follow_survives_a_real_pub_overflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []  # notes in each read reply the follower took
    read_reply = client_module._read_reply

    def counted(reply: Any) -> Any:
        taken = read_reply(reply)
        reads.append(len(taken[0]))
        return taken

    monkeypatch.setattr(client_module, "_read_reply", counted)
    d = Daemon(tmp_path, config=Config(local_pub_hwm=1))
    total = 20_001
    try:
        with d.client(config=Config(local_sub_hwm=1, local_resync=0.05)) as c:
            follower = c.follow(0, timeout=WAIT)
            d.publish("first")
            assert next(follower)["index"] == 0
            # far more than the queues and kernel buffers hold, while the follower waits
            d.call(lambda: d.node.publish_many([f"n{i}" for i in range(1, total)]))
            indices = [next(follower)["index"] for _ in range(1, total)]
            follower.close()
    finally:
        d.close()
    assert indices == list(range(1, total))
    assert sum(reads) > 1, "nothing was dropped: the test did not overflow PUB"


# -- apps --------------------------------------------------------------------------------------


def app_body(app: str, **fields: Any) -> bytes:
    return cbor2.dumps({"app": app, **fields})


def test_pub_sends_an_app_note_under_its_app_topic_with_its_previous_index(
    daemon: Daemon,
) -> None:
    ctx = zmq.Context()
    try:
        everything = subscribed(daemon, ctx)
        chat = ctx.socket(zmq.SUB)
        chat.setsockopt(zmq.LINGER, 0)
        chat.setsockopt(zmq.SUBSCRIBE, b"note/chat")
        chat.connect(daemon.api.pub_endpoints[0])
        deadline = time.monotonic() + WAIT
        while not chat.poll(20):  # probes until this subscription is in effect too
            assert time.monotonic() < deadline, "the subscription never took effect"
            daemon.publish(app_body("chat", probe=True))
        while chat.poll(100):
            chat.recv_multipart()
        while everything.poll(100):
            everything.recv_multipart()
        last_chat = daemon.call(lambda: daemon.node.count) - 1
        sent = [daemon.publish(b) for b in (app_body("mail", n=1), b"opaque",
                                             app_body("chatter", n=2), app_body("chat", n=3))]
        topics = []
        for _ in sent:
            assert everything.poll(int(WAIT * 1000))
            topics.append(everything.recv_multipart()[0])
        assert topics == [b"note/mail", b"note", b"note/chatter", b"note/chat"]
        # a prefix subscription brings "chatter" too: the topic frame tells them apart
        got = [chat.recv_multipart() for _ in range(2) if chat.poll(int(WAIT * 1000))]
        assert [t for t, _ in got] == [b"note/chatter", b"note/chat"]
        note = cbor2.loads(got[1][1])
    finally:
        ctx.destroy(linger=0)
    assert note == {**local.note_map(sent[3]), "app": "chat", "prev": last_chat}


def test_read_with_an_app_returns_its_notes_and_how_far_the_log_was_searched(
    daemon: Daemon, client: Client
) -> None:
    bodies: list[str | bytes] = []
    for i in range(30):
        bodies += [app_body("chat", n=i), b"x", app_body("mail", n=i), "text"]
    daemon.call(lambda: daemon.node.publish_many(bodies))
    pages, start = [], 0
    while True:
        notes, start = client.read(start, 7, app="chat")
        if not notes:
            break
        pages.append([cbor2.loads(n["body"])["n"] for n in notes])
        # a full page goes on after its last note; a short one searched to the end
        assert start == (notes[-1]["index"] + 1 if len(notes) == 7 else 120)
    assert [n for page in pages for n in page] == list(range(30))
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    assert client.read(0, app="nobody") == ([], 120)
    assert client.read(500, app="chat") == ([], 500)
    assert request(daemon, [cbor2.dumps({"op": "read", "app": 5})])["error"].startswith("read")


def test_follow_with_an_app_yields_its_notes_only_history_then_live_each_once(
    daemon: Daemon, client: Client
) -> None:
    history: list[str | bytes] = []
    for i in range(3000):  # several read pages of the log, fewer of chat
        history.append(app_body("chat", n=i) if i % 3 == 0 else app_body("mail", n=i))
    daemon.call(lambda: daemon.node.publish_many(history))
    errors: list[BaseException] = []
    started = threading.Event()
    live = 300

    def publisher() -> None:
        try:
            started.wait(WAIT)
            with daemon.client() as other:
                for i in range(3000, 3000 + live):
                    app = ("chat", "chatter", "mail", "")[i % 4]
                    body = app_body(app, n=i) if app else b"opaque"
                    (other.publish if i % 2 else daemon.publish)(body)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=publisher)
    thread.start()
    got = []
    want = [i for i in range(3000) if i % 3 == 0] + [i for i in range(3000, 3000 + live)
                                                      if i % 4 == 0]
    try:
        for note in client.follow(0, app="chat", timeout=WAIT):
            started.set()
            got.append(cbor2.loads(note["body"])["n"])
            if len(got) == len(want):
                break
    finally:
        started.set()
        thread.join(WAIT * 4)
    assert not thread.is_alive() and not errors
    assert got == want


class LossyChat(LocalAPI):
    """Drops chosen chat notes on PUB, as a full queue would: mid-stream and at the tail."""

    def _on_note(self, note: Note) -> None:
        if note.body not in (app_body("chat", n=3), app_body("chat", n=9)):
            super()._on_note(note)


def test_follow_with_an_app_fills_what_pub_dropped_from_the_store(tmp_path: Path) -> None:
    d = Daemon(tmp_path, LossyChat)
    try:
        # the tail drop is found by the idle check
        with d.client(config=Config(local_resync=0.05)) as c:
            follower = c.follow(0, app="chat", timeout=WAIT)
            d.publish(app_body("chat", n=0))
            assert cbor2.loads(next(follower)["body"]) == {"app": "chat", "n": 0}
            for i in range(1, 10):
                d.publish(app_body("mail", n=i))
                d.publish(app_body("chat", n=i))
            got = [cbor2.loads(next(follower)["body"])["n"] for _ in range(9)]
            follower.close()
    finally:
        d.close()
    assert got == list(range(1, 10))
