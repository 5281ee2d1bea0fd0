"""
Tests of the outbound queue on disk (L{mdpy.backends.files.queue}).
"""

import io
import json
import os

import pytest
from twisted.internet import task
from zope.interface.verify import verifyObject

from mdpy import errors
from mdpy.cli import formatEntry, main
from mdpy.backends.files.queue import (
    BOUNCED,
    FAILED,
    PENDING,
    SENT,
    SpoolQueue,
    readQueue,
)
from mdpy.envelope import Envelope
from mdpy.interfaces import IDelivery, IOutboundQueue
from mdpy.testing import synchronousRunner

MESSAGE = b"Subject: hello\r\n\r\nbody\r\n"


def result(d):
    """
    @return: the result of a Deferred that has fired, raising its failure.
    """
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def makeQueue(path, clock=None, signerFor=None):
    return SpoolQueue(
        str(path),
        runInThread=synchronousRunner,
        clock=clock or task.Clock(),
        signerFor=signerFor,
    )


def enqueue(queue, recipients=("a@remote.test", "b@other.test"), sender="joe@example.test", data=MESSAGE):
    envelope = Envelope(sender, authenticatedAs=sender or None)
    return result(queue.enqueue(envelope, list(recipients), [data]))


def test_interfaces(tmp_path):
    queue = makeQueue(tmp_path)
    assert verifyObject(IOutboundQueue, queue)
    assert verifyObject(IDelivery, queue.startDelivery(Envelope("a@b.test")))


def test_enqueueWritesBodyOnceAndStateBeside(tmp_path):
    seen = []
    queue = makeQueue(tmp_path / "q")
    queue.listeners.append(seen.append)
    entry = enqueue(queue, data=MESSAGE + b"caf\xc3\xa9\r\n")
    assert seen == [entry]
    with open(queue.bodyPath(entry.id), "rb") as f:
        assert f.read() == MESSAGE + b"caf\xc3\xa9\r\n"
    state = json.loads(open(queue.envPath(entry.id), "rb").read())
    assert state["sender"] == "joe@example.test"
    assert [r["address"] for r in state["recipients"]] == ["a@remote.test", "b@other.test"]
    assert entry.size == len(MESSAGE) + 7 and entry.eightBit
    assert sorted(os.listdir(tmp_path / "q" / "msg")) == [entry.id]
    assert os.stat(queue.envPath(entry.id)).st_mode & 0o777 == 0o600


def test_reloadGivesTheSameQueue(tmp_path):
    queue = makeQueue(tmp_path)
    entry = enqueue(queue)
    entry.recipients[0].state = SENT
    entry.recipients[1].attempts = 3
    entry.recipients[1].due = 12345.0
    entry.recipients[1].diagnostic = "smtp; 451 4.3.0 try later"
    result(queue.save(entry))
    queue.hold("Held.TEST")

    again = makeQueue(tmp_path)
    assert again.load() == 1
    [loaded] = again.list()
    assert loaded.id == entry.id and loaded.sender == entry.sender
    assert [r.state for r in loaded.recipients] == [SENT, PENDING]
    assert loaded.recipients[1].attempts == 3
    assert loaded.recipients[1].diagnostic == "smtp; 451 4.3.0 try later"
    assert loaded.recipients[1].domain == "other.test"
    assert again.isHeld("held.test")
    with loaded.openBody() as f:
        assert f.read() == MESSAGE


def test_stagedEntryWaitsForAdmitOrWithdraw(tmp_path):
    """
    A staged entry is on disk but not delivered (not listed, no listener
    told) until it is admitted; a withdrawn one leaves no file.  Its id is
    taken meanwhile; a staged entry left by a crash loads as queued.
    """
    seen = []
    queue = makeQueue(tmp_path)
    queue.listeners.append(seen.append)
    envelope = Envelope("joe@example.test", authenticatedAs="joe")
    staged = result(queue.stage(envelope, ["a@remote.test"], [MESSAGE]))
    assert os.listdir(tmp_path / "env") == os.listdir(tmp_path / "msg") == [staged.id]
    assert queue.list() == [] and queue.due(now=1e12) == [] and seen == []
    with pytest.raises(errors.TemporaryFailure):
        result(queue.stage(envelope, ["b@remote.test"], [MESSAGE]))
    restarted = makeQueue(tmp_path)
    assert restarted.load() == 1 and [e.id for e in restarted.list()] == [staged.id]
    assert queue.admit(staged) is staged
    assert queue.list() == [staged] and seen == [staged]

    other = result(queue.stage(Envelope("joe@example.test"), ["c@remote.test"], [MESSAGE]))
    result(queue.withdraw(other))
    assert other.removed and queue.list() == [staged] and seen == [staged]
    assert os.listdir(tmp_path / "env") == os.listdir(tmp_path / "msg") == [staged.id]
    # A failed staging frees its id.
    os.rename(tmp_path / "msg", tmp_path / "aside")
    (tmp_path / "msg").write_bytes(b"")
    failing = Envelope("joe@example.test")
    with pytest.raises(errors.TemporaryFailure):
        result(queue.stage(failing, ["d@remote.test"], [MESSAGE]))
    os.unlink(tmp_path / "msg")
    os.rename(tmp_path / "aside", tmp_path / "msg")
    assert result(queue.enqueue(failing, ["d@remote.test"], [MESSAGE])).id == failing.messageId


def test_finishedEntryLeavesNoFile(tmp_path):
    queue = makeQueue(tmp_path)
    entry = enqueue(queue)
    entry.recipients[0].state = SENT
    entry.recipients[1].state = BOUNCED
    result(queue.save(entry))
    assert os.listdir(tmp_path / "msg") == [] and os.listdir(tmp_path / "env") == []
    assert queue.list() == [] and entry.removed
    # A later change of the removed entry writes nothing back.
    entry.recipients[1].state = PENDING
    result(queue.save(entry))
    assert os.listdir(tmp_path / "env") == []


def test_failedRecipientKeepsTheEntry(tmp_path):
    queue = makeQueue(tmp_path)
    entry = enqueue(queue)
    entry.recipients[0].state = SENT
    entry.recipients[1].state = FAILED
    result(queue.save(entry))
    assert not entry.finished
    assert os.listdir(tmp_path / "env") == [entry.id]


def test_crashLeftoversAreCleanedAndCorruptFilesQuarantined(tmp_path):
    queue = makeQueue(tmp_path)
    good = enqueue(queue)
    # A body written before a crash that came before the commit point.
    (tmp_path / "msg" / "ORPHAN").write_bytes(b"x")
    (tmp_path / "env" / "HALF.tmp").write_bytes(b"{")
    # A state file damaged on disk, and one whose body is gone.
    (tmp_path / "env" / "BROKEN").write_bytes(b"\x00garbage")
    (tmp_path / "msg" / "BROKEN").write_bytes(MESSAGE)
    lonely = enqueue(queue, recipients=["c@remote.test"])
    os.unlink(queue.bodyPath(lonely.id))

    again = makeQueue(tmp_path)
    assert again.load() == 1
    assert [e.id for e in again.list()] == [good.id]
    assert sorted(os.listdir(tmp_path / "msg")) == [good.id]
    assert sorted(os.listdir(tmp_path / "env")) == [good.id]
    assert sorted(os.listdir(tmp_path / "corrupt")) == sorted(
        ["BROKEN.env", "BROKEN.msg", lonely.id + ".env"]
    )
    assert sorted(i for i, why in again.quarantined) == sorted(["BROKEN", lonely.id])


def test_holdAndRelease(tmp_path):
    clock = task.Clock()
    clock.advance(1000)
    queue = makeQueue(tmp_path, clock)
    queue.hold("remote.test")
    entry = enqueue(queue)
    assert [r.address for e, r in queue.due()] == ["b@other.test"]
    notified = []
    queue.listeners.append(notified.append)
    assert queue.release("REMOTE.test") == [entry.id]
    assert notified == [None]
    assert [r.address for e, r in queue.due()] == ["a@remote.test", "b@other.test"]
    again = makeQueue(tmp_path)
    again.load()
    assert not again.isHeld("remote.test")


def test_flushMakesEverythingDue(tmp_path):
    clock = task.Clock()
    queue = makeQueue(tmp_path, clock)
    entry = enqueue(queue)
    for r in entry.recipients:
        r.due = 5000
    assert queue.due() == [] and queue.nextDue() == 5000
    queue.flush()
    assert len(queue.due()) == 2


def test_removeDeletesFiles(tmp_path):
    queue = makeQueue(tmp_path)
    entry = enqueue(queue)
    result(queue.remove(entry.id))
    assert os.listdir(tmp_path / "env") == [] and queue.list() == []
    with pytest.raises(errors.NotFound):
        queue.remove(entry.id)


def test_signerPrependsItsHeader(tmp_path):
    signed = []

    class Signer:
        def sign(self, message):
            signed.append(message)
            return b"DKIM-Signature: v=1; d=example.test\r\n"

    queue = makeQueue(tmp_path, signerFor=lambda domain: Signer() if domain == "example.test" else None)
    entry = enqueue(queue)
    assert signed == [MESSAGE]
    with entry.openBody() as f:
        assert f.read() == b"DKIM-Signature: v=1; d=example.test\r\n" + MESSAGE
    other = enqueue(queue, sender="x@elsewhere.test")
    with other.openBody() as f:
        assert f.read() == MESSAGE
    bounce = enqueue(queue, sender="")
    assert len(signed) == 1 and bounce.sender == ""


def test_writeFailureIsTemporaryAndLeavesNothing(tmp_path):
    queue = makeQueue(tmp_path)
    # A disk error, even for root: msg/ is not a directory.
    os.rmdir(tmp_path / "msg")
    (tmp_path / "msg").write_bytes(b"")
    envelope = Envelope("joe@example.test", authenticatedAs="joe")
    with pytest.raises(errors.TemporaryFailure):
        result(queue.enqueue(envelope, ["a@remote.test"], [MESSAGE]))
    assert os.listdir(tmp_path / "env") == [] and queue.list() == []


def test_deliveryTargetTransaction(tmp_path):
    queue = makeQueue(tmp_path)
    delivery = queue.startDelivery(Envelope("", trusted=True))
    delivery.addRecipient("x@remote.test")
    delivery.addRecipient("x@remote.test")
    delivery.write(b"Subject: report\r\n\r\n")
    delivery.write(b"text\r\n")
    entry = result(delivery.commit())
    assert [r.address for r in entry.recipients] == ["x@remote.test"]
    with entry.openBody() as f:
        assert f.read() == b"Subject: report\r\n\r\ntext\r\n"


def test_readQueueAndListCommand(tmp_path):
    data = tmp_path / "data"
    queue = makeQueue(data / "queue")
    entry = enqueue(queue)
    entry.recipients[1].attempts = 2
    entry.recipients[1].diagnostic = "smtp; 451 4.7.1 greylisted"
    result(queue.save(entry))
    (data / "queue" / "env" / "JUNK").write_bytes(b"not json")
    entries, unreadable = readQueue(str(data / "queue"))
    assert [e.id for e in entries] == [entry.id] and unreadable == ["JUNK"]
    text = formatEntry(entries[0])
    assert text.startswith(entry.id + " ")
    assert "<joe@example.test>" in text
    assert "    <b@other.test> pending attempts=2 next=" in text
    assert "last: smtp; 451 4.7.1 greylisted" in text

    config = tmp_path / "mdpy.ini"
    config.write_text("[server]\ndata_dir = data\nhostname = mx.example.test\n")
    out, err = io.StringIO(), io.StringIO()
    assert main(["-c", str(config), "queue", "list"], out, io.StringIO(), err) == 0
    assert entry.id in out.getvalue() and "JUNK (unreadable" in out.getvalue()
    # Without a running server, del works on the files and flush says so.
    out = io.StringIO()
    assert main(["-c", str(config), "queue", "flush"], out, io.StringIO(), err) == 0
    assert "no server is running" in out.getvalue()
    assert main(["-c", str(config), "queue", "del", entry.id], out, io.StringIO(), err) == 0
    assert not os.path.exists(queue.envPath(entry.id))
    assert not os.path.exists(queue.bodyPath(entry.id))
    assert main(["-c", str(config), "queue", "del", "../etc"], out, io.StringIO(), err) == 1


def age(path, seconds):
    """
    Make the file C{path} look C{seconds} old.
    """
    then = os.stat(path).st_mtime - seconds
    os.utime(path, (then, then))


def test_anEntryAnotherProcessQueuedIsAdopted(tmp_path):
    """
    L{SpoolQueue.adopt} takes up at once an entry another queue on the same
    folder stored, and its listeners hear of it; one it holds, or that is
    gone, is not taken twice.
    """
    running, other = makeQueue(tmp_path), makeQueue(tmp_path)
    heard = []
    running.listeners.append(heard.append)
    entry = enqueue(other, recipients=["far@remote.test"])
    other.forget(entry)
    assert other.list() == [] and os.listdir(tmp_path / "env") == [entry.id]
    adopted = running.adopt(entry.id)
    assert [e.id for e in running.list()] == [entry.id] and heard == [adopted]
    assert [r.address for r in adopted.recipients] == ["far@remote.test"]
    assert running.adopt(entry.id) is None
    assert running.adopt("NOSUCH") is None
    assert running.adopt("../env") is None
    assert heard == [adopted]


def test_pickUpWaitsForTheGraceOfOtherWriters(tmp_path):
    """
    L{SpoolQueue.pickUp} leaves entries and half-written files younger than
    its grace (another process may be writing or staging them) and takes or
    removes them once they are older; L{SpoolQueue.load} with a grace does
    the same.
    """
    running, other = makeQueue(tmp_path), makeQueue(tmp_path)
    heard = []
    running.listeners.append(heard.append)
    entry = enqueue(other)
    (tmp_path / "msg" / "WRITING.tmp").write_bytes(b"x")
    (tmp_path / "msg" / "ORPHAN").write_bytes(b"x")
    (tmp_path / "env" / "HALF.tmp").write_bytes(b"{")
    assert running.pickUp(60) == [] and heard == []
    assert running.load(60) == 0
    assert sorted(os.listdir(tmp_path / "msg")) == sorted([entry.id, "WRITING.tmp", "ORPHAN"])
    for name in (entry.id, "ORPHAN"):
        age(tmp_path / "msg" / name, 120)
    age(tmp_path / "env" / entry.id, 120)
    age(tmp_path / "env" / "HALF.tmp", 120)
    taken = running.pickUp(60)
    assert [e.id for e in taken] == [entry.id] and heard == taken
    assert sorted(os.listdir(tmp_path / "msg")) == sorted([entry.id, "WRITING.tmp"])
    assert os.listdir(tmp_path / "env") == [entry.id]
    assert running.pickUp(60) == []
