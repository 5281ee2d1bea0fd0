"""
Tests for L{mdpy.domainpop.state} (the dedupe keys) and the files
backend's state of a collected source that keeps them
(L{mdpy.backends.files.collectorstate}).
"""

import sqlite3
import subprocess
import sys
import threading

import pytest

from mdpy.backends.files import collectorstate as statemodule
from mdpy.backends.files.collectorstate import SCHEMA_VERSION, CollectorState
from mdpy.domainpop.recipients import parseHead
from mdpy.domainpop.state import DEDUPE_FINGERPRINT, MAX_KEY_VALUE, dedupeKey, fingerprint
from mdpy.errors import PermanentFailure, TemporaryFailure


class Clock:
    def __init__(self, now=1000000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "state.sqlite")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def state(path, clock):
    s = CollectorState(path, clock=clock)
    yield s
    s.close()


# --- UIDL state ---------------------------------------------------------------


def test_unknownUid(state):
    assert state.get("u1") is None
    assert state.uids() == {}


def test_pendingThenDelivered(state, clock):
    state.markPending("u1", 500.0)
    assert state.get("u1") == ("pending", 500.0)
    state.markPending("u1", 900.0)
    assert state.get("u1") == ("pending", 500.0)
    state.markDelivered("u1")
    assert state.get("u1") == ("delivered", 500.0)


def test_deliveredStaysDelivered(state):
    state.markDelivered("u1")
    state.markPending("u1", 1.0)
    assert state.get("u1") == ("delivered", 1000000.0)


def test_deliveredUnknownUidFirstSeenNow(state, clock):
    clock.now = 1234.5
    state.markDelivered("u9")
    assert state.get("u9") == ("delivered", 1234.5)


def test_forget(state):
    for uid in ("a", "b", "c"):
        state.markPending(uid, 1.0)
    state.markDelivered("b")
    state.forget({"b", "zzz"})
    assert state.uids() == {"b": ("delivered", 1.0)}
    state.forget(set())
    assert state.uids() == {}


def test_unicodeAndOddUids(state):
    uid = "\u00e9\x7e!#/'\"; DROP TABLE uids"
    state.markPending(uid, 2.0)
    assert state.uids() == {uid: ("pending", 2.0)}


# --- durability and sharing -----------------------------------------------------


def test_reopen(path, clock):
    s = CollectorState(path, clock=clock)
    s.markPending("p", 10.0)
    s.markDelivered("d", [("h:message-id:<1@x>", "bob@example.test")])
    s.countDuplicates(3)
    s.close()
    s = CollectorState(path, clock=clock)
    try:
        assert s.uids() == {"p": ("pending", 10.0), "d": ("delivered", clock.now)}
        assert s.isDuplicate("h:message-id:<1@x>", "bob@example.test")
        assert s.duplicatesDropped() == 3
    finally:
        s.close()


def test_heldReasons(state, clock, path):
    """
    A message held again (after a crash) keeps when it was first held and
    takes the latest reason; a file made before the held table existed
    gets it on opening.
    """
    assert state.heldReasons() == {}
    state.recordHeld("a.eml", "u1", "a loop")
    clock.now += 60
    state.recordHeld("b.eml", "u2", "no postmaster")
    state.recordHeld("a.eml", "u1", "a loop, again")
    assert state.heldReasons() == {"a.eml": (1000000.0, "a loop, again"), "b.eml": (1000060.0, "no postmaster")}
    old = path + ".v1"
    db = sqlite3.connect(old)
    for statement in statemodule._MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    upgraded = CollectorState(old, clock=clock)
    try:
        upgraded.recordHeld("c.eml", "u3", "why")
        assert upgraded.heldReasons() == {"c.eml": (clock.now, "why")}
    finally:
        upgraded.close()


def test_walAndSynchronousFull(state, path):
    assert state._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert state._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_twoObjectsOnOneFile(path, clock):
    a = CollectorState(path, clock=clock)
    b = CollectorState(path, clock=clock)
    try:
        a.markPending("u1", 1.0)
        assert b.get("u1") == ("pending", 1.0)
        b.markDelivered("u1", [("k", "r@example.test")])
        assert a.get("u1") == ("delivered", 1.0)
        assert a.isDuplicate("k", "r@example.test")
        a.countDuplicates(1)
        b.countDuplicates(2)
        assert a.duplicatesDropped() == b.duplicatesDropped() == 3
    finally:
        a.close()
        b.close()


def test_anotherProcessWritesAtOnce(path, state):
    """
    A second process (as the C{mdpy domainpop run} command) writes while
    this one does: both sets of writes land.
    """
    script = (
        "import sys\n"
        "from mdpy.backends.files.collectorstate import CollectorState\n"
        "s = CollectorState(sys.argv[1])\n"
        "for i in range(200):\n"
        "    s.markDelivered('child-%d' % i, [('k%d' % i, 'r@example.test')])\n"
        "s.close()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, path])
    for i in range(200):
        state.markDelivered("parent-%d" % i, [("k%d" % i, "s@example.test")])
    assert child.wait(60) == 0
    uids = state.uids()
    assert len(uids) == 400
    assert all(state.isDuplicate("k%d" % i, "r@example.test") for i in range(200))


def test_threads(state):
    def work(n):
        for i in range(50):
            state.markDelivered("t%d-%d" % (n, i), [("k", "t%d-%d" % (n, i))])
            state.countDuplicates(1)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(state.uids()) == 200
    assert state.duplicatesDropped() == 200


def test_newerSchemaRefused(path):
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(PermanentFailure):
        CollectorState(path)


def test_cannotOpen(tmp_path):
    with pytest.raises(TemporaryFailure):
        CollectorState(str(tmp_path / "missing" / "state.sqlite"))


def test_lockedFileIsTemporaryFailure(path, state, monkeypatch):
    monkeypatch.setattr(statemodule, "BUSY_TIMEOUT_MS", 100)
    other = CollectorState(path)
    try:
        other._db.execute("PRAGMA busy_timeout = 100")
        state._db.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(TemporaryFailure):
                other.markPending("x", 1.0)
        finally:
            state._db.execute("ROLLBACK")
        other.markPending("x", 1.0)
        assert state.get("x") == ("pending", 1.0)
    finally:
        other.close()


# --- markDelivered atomicity ------------------------------------------------------


def test_markDeliveredAllOrNothing(state):
    """
    A failure while recording the pairs leaves neither the pairs nor the
    delivered state.
    """
    state.markPending("u1", 5.0)

    def pairs():
        yield ("k1", "a@example.test")
        raise OSError("disk gone")

    with pytest.raises(OSError):
        state.markDelivered("u1", pairs())
    assert state.get("u1") == ("pending", 5.0)
    assert not state.isDuplicate("k1", "a@example.test")


def test_markDeliveredSqliteFailureRollsBack(state):
    state.markPending("u1", 5.0)
    with pytest.raises(TemporaryFailure):
        state.markDelivered("u1", [("k1", "a@example.test"), ("k2", None)])
    assert state.get("u1") == ("pending", 5.0)
    assert not state.isDuplicate("k1", "a@example.test")
    state.markDelivered("u1", [("k1", "a@example.test")])
    assert state.get("u1") == ("delivered", 5.0)
    assert state.isDuplicate("k1", "a@example.test")


def test_markDeliveredIsOneTransaction(path, state):
    """
    Another connection sees the state and the pairs together or not at
    all: a commit hook fires once for the whole call.
    """
    commits = []
    state._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    state.markDelivered("u1", [("k%d" % i, "a@example.test") for i in range(10)])
    state._db.set_trace_callback(None)
    assert commits == ["COMMIT"]


# --- dedupe cache -----------------------------------------------------------


def test_dedupeKeyedOnKeyAndRecipient(state):
    state.markDelivered("u1", [("h:message-id:<1@x>", "bob@example.test"), ("h:message-id:<1@x>", "carol@example.test")])
    assert state.isDuplicate("h:message-id:<1@x>", "bob@example.test")
    assert state.isDuplicate("h:message-id:<1@x>", "carol@example.test")
    assert not state.isDuplicate("h:message-id:<1@x>", "dave@example.test")
    assert not state.isDuplicate("h:message-id:<2@x>", "bob@example.test")


def test_dedupeTtl(state, clock):
    state.markDelivered("u1", [("k", "bob@example.test")])
    clock.now += 100
    state.markDelivered("u2", [("k2", "bob@example.test")])
    clock.now += 50
    assert state.isDuplicate("k", "bob@example.test", ttl=151)
    assert not state.isDuplicate("k", "bob@example.test", ttl=150)
    assert state.isDuplicate("k", "bob@example.test")
    assert state.expire(120) == 1
    assert not state.isDuplicate("k", "bob@example.test")
    assert state.isDuplicate("k2", "bob@example.test")
    clock.now += 1000
    assert state.expire(120) == 1
    assert not state.isDuplicate("k2", "bob@example.test")


def test_dedupeRenewedWhenSeenAgain(state, clock):
    state.markDelivered("u1", [("k", "bob@example.test")])
    clock.now += 100
    state.markDelivered("u2", [("k", "bob@example.test")])
    clock.now += 50
    state.expire(60)
    assert state.isDuplicate("k", "bob@example.test")


def test_duplicateCounter(state):
    assert state.duplicatesDropped() == 0
    state.countDuplicates(2)
    state.countDuplicates(0)
    state.countDuplicates(5)
    assert state.duplicatesDropped() == 7


# --- dedupeKey ------------------------------------------------------------------


def head(*lines):
    return parseHead(b"".join(line.encode("utf-8") + b"\r\n" for line in lines) + b"\r\n")


def test_dedupeKey():
    h = head("Message-ID:  <abc@x.test>", "Date: Mon,\r\n  1 Jan 2024 00:00:00 +0000")
    assert dedupeKey(h, "Message-ID") == "h:message-id:<abc@x.test>"
    assert dedupeKey(h, "message-id") == "h:message-id:<abc@x.test>"
    assert dedupeKey(h, "Date") == "h:date:Mon, 1 Jan 2024 00:00:00 +0000"


def test_dedupeKeyTopmostField():
    assert dedupeKey(head("Message-ID: <1@x>", "Message-ID: <2@x>"), "Message-ID") == "h:message-id:<1@x>"


def test_dedupeKeyMissingOrEmpty():
    assert dedupeKey(head("Subject: x"), "Message-ID") is None
    assert dedupeKey(head("Message-ID:   "), "Message-ID") is None


def test_dedupeKeyLongValueHashed():
    key = dedupeKey(head("Message-ID: <%s@x>" % ("a" * 2000,)), "Message-ID")
    assert key.startswith("h:message-id:sha256:") and len(key) < MAX_KEY_VALUE
    assert key != dedupeKey(head("Message-ID: <%s@x>" % ("a" * 2001,)), "Message-ID")


def test_dedupeKeyNotForFingerprint():
    with pytest.raises(ValueError):
        dedupeKey(head("Subject: x"), DEDUPE_FINGERPRINT)


# --- fingerprint ----------------------------------------------------------------

COMMON = ["From: a@ext.test", "To: bob@example.test", "Cc: carol@example.test", "Subject: hello", "Date: Mon, 1 Jan 2024"]


def test_fingerprintIgnoresTraceHeaders():
    bob = head(
        "Return-Path: <a@ext.test>",
        "Delivered-To: bob@example.test",
        "X-Rcpt-To: bob@example.test",
        "Received: from x by mx.isp.test id 1 for <bob@example.test>; Mon, 1 Jan 2024 00:00:01",
        "Authentication-Results: mx.isp.test; spf=pass",
        *COMMON,
        "X-UIDL: 111",
        "Status: RO",
    )
    carol = head(
        "X-Original-To: carol@example.test",
        "Received: from x by mx.isp.test id 2 for <carol@example.test>; Mon, 1 Jan 2024 00:00:02",
        "Received: from y by relay.isp.test id 3; Mon, 1 Jan 2024 00:00:02",
        *COMMON,
        "X-Spam-Status: No, score=0.1",
    )
    body = [b"Hi,\r\n", b"the body.\r\n"]
    one = fingerprint(bob, iter(body))
    assert one.startswith("f:") and len(one) == 2 + 64
    assert one == fingerprint(carol, [b"Hi,\r\nthe body.\r\n"])


def test_fingerprintFoldingDoesNotMatter():
    a = head("Subject: a long\r\n  subject", "From: a@ext.test")
    b = head("Subject: a long subject", "From: a@ext.test")
    assert fingerprint(a, [b"x"]) == fingerprint(b, [b"x"])


def test_fingerprintDiffers():
    base = fingerprint(head(*COMMON), [b"body\r\n"])
    assert base != fingerprint(head(*COMMON), [b"body!\r\n"])
    assert base != fingerprint(head(*COMMON), [])
    assert base != fingerprint(head(*COMMON[:-1], "Date: Mon, 1 Jan 2024 00:00:01"), [b"body\r\n"])
    assert base != fingerprint(head(*COMMON, "Message-ID: <1@x>"), [b"body\r\n"])
    # A field's name and value cannot trade octets with the body.
    assert fingerprint(head("Subject: x"), [b"y"]) != fingerprint(head("Subject: xy"), [])


def test_providesIDedupeCache(tmp_path):
    from zope.interface.verify import verifyObject

    from mdpy.interfaces import IDedupeCache

    state = CollectorState(str(tmp_path / "state.sqlite"))
    try:
        assert verifyObject(IDedupeCache, state)
    finally:
        state.close()
