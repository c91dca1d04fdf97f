"""Every limit and timer zflood uses, in one frozen object.

Sizes are bytes, times are seconds. The engine takes a `Config`; the daemon, mesh and local API
read the same object, so changing a limit here changes it everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Config:
    # -- sizes ------------------------------------------------------------------------------
    #: Largest note body accepted from a local caller or a peer.
    max_body: int = 256 * KiB
    #: A batch of notes is cut at this many notes ...
    batch_notes: int = 1024
    #: ... or once its bodies reach this many bytes (a single larger note still goes alone).
    batch_bytes: int = 256 * KiB
    #: Largest frame on any channel (ZMQ_MAXMSGSIZE too); must hold one batch plus framing.
    max_frame: int = 2 * MiB
    #: Batches asked for at once from one peer: how deep a bulk sync pipelines.
    window_batches: int = 8
    #: Most origins one HELLO or HEADS lists: longer heads go out as several pages, so no
    #: message ever outgrows what a peer accepts.
    heads_page: int = 4096
    #: Most origins a node holds (a group is 2 to about 10 machines, but every machine that
    #: ever joined stays an origin). Past it new origins are refused, except a directly
    #: linked peer's own, so a member that mints origins cannot lock a new member out.
    max_origins: int = 16_384

    # -- what one peer may make us spend ----------------------------------------------------
    #: Origins one peer may claim (in its heads) that we hold nothing of; further claims are
    #: ignored until its next full heads, so fake claims cost bounded memory.
    claims_per_peer: int = 16_384
    #: Requests for origins we hold nothing of, outstanding to one peer at once. Halved each
    #: time one goes unanswered, grown by one per origin it delivers: a peer that claims and
    #: never delivers ends up asked one at a time, once per `request_timeout`.
    new_origin_window: int = 256
    #: Bytes of notes sent to one peer per serving step ... the driver pumps `Node.serve()`
    #: again after giving its event loop a turn.
    serve_step: int = 1 * MiB
    #: ... or this many batches, whichever comes first: each batch served costs a read and a
    #: signature check, so a step of one-note origins (a member that minted thousands) would
    #: otherwise hold the loop for 10,000 verifies.
    serve_frames: int = 128
    #: Notes queued to be served to one peer; WANTs past it are refused (the asker re-asks
    #: after `request_timeout`).
    serve_queue: int = 65_536

    # -- the store ----------------------------------------------------------------------------
    #: The WAL is checkpointed once it holds its bound and cut back to it after, so it stays
    #: under the bound plus one transaction (a batch: about batch_bytes + max_body). The bound
    #: is an eighth of the disk's free space, looked at again as it changes, between
    #: `wal_min` and `wal_bytes`: on a roomy disk a checkpoint (two fsyncs) comes every few
    #: hundred single-note commits, on a nearly full one the WAL cannot fill what is left. A
    #: checkpoint runs inside the commit that fills the WAL, on the event loop: at 64 MiB it
    #: took 150-240 ms (status p99 194 ms during a 1M-note sync), at 8 MiB under 80 ms, at
    #: the same sync and publish rates (tools/bench_engine.py, tools/bench_hostile.py).
    wal_bytes: int = 8 * MiB
    wal_min: int = 4 * MiB
    #: Storing resumes after a failed write (a full disk) once this much is free again ...
    store_headroom: int = 2 * MiB
    #: ... looked at this often; the first write that succeeds ends the pause for good.
    store_retry: float = 2.0

    # -- engine timers (driven by Node.tick) ---------------------------------------------------
    #: Resend our hello this often until the peer shows it has seen it.
    hello_retry: float = 1.0
    #: Send every peer our full heads this often, so a lost announcement is repaired.
    sync_interval: float = 5.0
    #: A request that made no progress for this long is asked of another peer.
    request_timeout: float = 3.0

    # -- mesh timers and queues ----------------------------------------------------------------
    #: A link sends a heartbeat when it has sent nothing for this long.
    heartbeat: float = 1.0
    #: A link that has heard nothing for this long is closed and dialled again.
    peer_timeout: float = 5.0
    #: Wait before dialling a peer again after its link closed.
    reconnect: float = 0.5
    #: Frames queued towards one peer before ZeroMQ drops (the engine recovers losses).
    send_hwm: int = 10_000
    #: Frames to a peer this large are handed to ZeroMQ uncopied and tracked until it lets
    #: them go (about 10 us a frame; smaller ones are copied, bounded by send_hwm) ...
    peer_track_from: int = 1 * KiB
    #: ... and notes are not served to a peer while ZeroMQ holds this many tracked bytes for
    #: it (it does not read): one peer holds at most this plus one serve step, and send_hwm
    #: small frames. An honest sync asks window_batches batches at a time, well under it.
    peer_backlog: int = 8 * MiB
    #: How often serving looks again at a peer whose backlog was full.
    backlog_poll: float = 0.05
    #: The mesh reader handles at most this many messages in one go before the event loop
    #: gets a turn (the local API, the timers, the watchdog), fewer as it learns how many
    #: the engine takes in burst_time (a one-note run from a new origin costs a verify and
    #: an insert: 1,000 of them held the loop for 170 ms) ...
    burst_messages: int = 256
    #: ... or this many bytes of them (fewer as it learns how many the engine takes in
    #: burst_time; a burst holds one message at least) ...
    burst_bytes: int = 8 * MiB
    #: ... so that one burst, the engine's work on it included, holds the loop for about this
    #: long (a bulk sync must not: status answers within 100 ms).
    burst_time: float = 0.02

    # -- mesh bounds: what a member gone bad or a stranger on the LAN can make us spend -------
    #: HIs a second taken from one sender (one CURVE key); above that, dropped and counted.
    #: A member sends one a heartbeat per DEALER and per knocker, plus one per change.
    hi_rate: float = 50.0
    #: HIs one sender may send at once above its rate.
    hi_burst: int = 100
    #: Senders whose HI rate is tracked at once.
    hi_senders: int = 1024
    #: Members taken from one address (IP) at once. A member gone bad can mint node ids,
    #: each with a CURVE key of its own, and each would cost a DEALER, a connection and a
    #: link; a household runs one daemon per group per machine (tests run a few on 127.0.0.1).
    members_per_host: int = 16
    #: Announced records never heard from (anyone can announce one): at most this many
    #: dialled at once ...
    dial_slots: int = 16
    #: ... each for this long before its DEALER is closed ...
    dial_trial: float = 3.0
    #: ... then tried again after a backoff doubling from this ...
    dial_backoff: float = 1.0
    #: ... up to this ...
    dial_backoff_max: float = 60.0
    #: ... and forgotten after this many trials.
    dial_attempts: int = 8
    #: Announced records never heard from that are held at once (the oldest go first).
    max_candidates: int = 1024
    #: Service records discovery keeps (what it reported, to tell updates from news) and
    #: resolves over the network at once; more are taken only from what the cache holds.
    max_records: int = 4096
    max_resolving: int = 32

    # -- local API -----------------------------------------------------------------------------
    #: Most notes a "read" returns at once, whatever limit is asked (and about max_frame).
    local_read_limit: int = 1000
    #: Most requests handled in one burst, so a flood of requests cannot starve the loop.
    local_burst: int = 1000
    #: Notes queued towards one PUB subscriber before ZeroMQ drops (readers repair from the
    #: store).
    local_pub_hwm: int = 10_000
    #: Largest message a PUB subscriber may send: it sends only subscriptions.
    local_pub_maxmsgsize: int = 4096
    #: Notes a follower's SUB buffers; it reads the store for whatever PUB dropped.
    local_sub_hwm: int = 10_000
    #: An idle follower reads the store this often, to catch notes PUB dropped at a burst's
    #: tail.
    local_resync: float = 1.0
    #: Live notes a follower holds while it reads a gap from the store; more are read again.
    local_max_ahead: int = 10_000
    #: Reads a follower keeps in flight while it is behind the store.
    local_reads_ahead: int = 2
    #: Replies this large are tracked until ZeroMQ lets them go (smaller ones are copied, and
    #: bounded by count: a copy costs less than the tracking).
    local_track_from: int = 4096
    #: Reply bytes ZeroMQ may still hold for one local client; while it holds more (the client
    #: does not read), that client's requests are dropped unanswered.
    local_client_bytes: int = 8 * MiB
    #: The same for all local clients together; a client with at most one reply unread is
    #: always served.
    local_total_bytes: int = 64 * MiB

    # -- logging -----------------------------------------------------------------------------
    #: Repeated faults of one kind from one peer are logged once, then summarised this often.
    fault_summary: float = 60.0

    # -- daemon --------------------------------------------------------------------------------
    #: A sync that lasts longer than this logs its progress this often (arrival rates are
    #: measured over twice this); the member table is saved to the store as often.
    progress_interval: float = 5.0
    #: Rows of the member table saved each time, at most, in one transaction (a member gone
    #: bad may have minted thousands of origins; the rest follow at the next save).
    member_rows_per_save: int = 1024
    #: A static peer (`run --peer`) whose host name does not resolve within this is logged
    #: (once; it is dialled all the same).
    resolve_timeout: float = 10.0
    #: Most members a status reply lists (named ones first): a group is a few machines, but
    #: a member gone bad can mint thousands of origins, and status must stay quick.
    status_members: int = 1024

    def __post_init__(self) -> None:
        if min(self.burst_messages, self.dial_slots, self.dial_attempts, self.hi_burst,
               self.serve_frames, self.members_per_host) < 1:
            raise ValueError("burst_messages, dial_slots, dial_attempts, hi_burst, "
                             "serve_frames, members_per_host: at least 1")
        if min(self.peer_track_from, self.peer_backlog) < 1 or self.backlog_poll <= 0:
            raise ValueError("peer_track_from and peer_backlog must be at least 1, "
                             "backlog_poll above 0")
        if self.batch_notes < 1 or self.window_batches < 1:
            raise ValueError("batch_notes and window_batches must be at least 1")
        if self.max_frame < self.batch_bytes + self.max_body + 64 * KiB:
            raise ValueError("max_frame must hold a full batch plus one largest note")
        if self.local_read_limit < 1 or self.local_reads_ahead < 1:
            raise ValueError("local_read_limit and local_reads_ahead must be at least 1")
        if self.local_client_bytes < 2 * self.max_frame:
            # a client reading promptly may be charged for a reply or two it already read
            raise ValueError("local_client_bytes must be at least twice max_frame")
        # an entry of a heads page with its tip is about 80 bytes of CBOR
        if self.heads_page < 1 or self.heads_page * 128 > self.max_frame:
            raise ValueError("heads_page must be at least 1 and a page must fit max_frame")


DEFAULT = Config()
