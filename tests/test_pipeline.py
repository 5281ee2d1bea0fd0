"""
Tests of L{mdpy.delivery.pipeline}: routing through the directory to the
store, and the per-copy trace headers.
"""

import contextlib
import email
import os

import pytest
from twisted.internet import defer
from zope.interface.verify import verifyObject

from mdpy import errors
from mdpy.delivery.pipeline import DeliveryPipeline, stripTraceHeaders
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.envelope import Envelope
from mdpy.interfaces import IDelivery, IDeliveryTarget
from mdpy.backends.memory import MemoryStore
from mdpy.testing import resultOf


@pytest.fixture
def pipeline(tmp_path):
    directory = SQLiteDirectory(str(tmp_path / "directory.sqlite"))
    directory.addDomain("example.test")
    directory.addUser("joe@example.test", "pw")
    directory.addUser("ann@example.test", "pw")
    directory.addAlias("team@example.test", ["joe@example.test", "ann@example.test"])
    directory.addAlias("fwd@example.test", ["someone@remote.test"])
    return DeliveryPipeline(directory, MemoryStore(), spoolDir=str(tmp_path))


def inbox(pipeline, address):
    return [resultOf(m.read()) for m in pipeline.store.openMailbox(address).messages()]


def deliver(pipeline, recipients, data, sender="a@remote.test", **kwargs):
    delivery = pipeline.startDelivery(Envelope(sender, **kwargs))
    for rcpt in recipients:
        delivery.addRecipient(rcpt)
    delivery.write(data)
    return delivery.commit()


def test_interfaces(pipeline):
    verifyObject(IDeliveryTarget, pipeline)
    verifyObject(IDelivery, pipeline.startDelivery(Envelope("a@b.test")))


def test_oneCopyPerAccountWithTraceHeaders(pipeline):
    d = deliver(pipeline, ["team@example.test", "Joe@Example.TEST"], b"Subject: x\r\n\r\nbody\r\n")
    assert d.called and d.result is None
    [joe] = inbox(pipeline, "joe@example.test")
    [ann] = inbox(pipeline, "ann@example.test")
    assert joe == (
        b"Return-Path: <a@remote.test>\r\nX-MDRcpt-To: team@example.test\r\n"
        b"X-Rcpt-To: team@example.test\r\nSubject: x\r\n\r\nbody\r\n"
    )
    assert email.message_from_bytes(ann)["X-Rcpt-To"] == "team@example.test"


def test_subaddressDeliveredToItsUser(pipeline):
    """
    C{joe+lists@} is delivered to joe, the copy naming the whole address;
    with C{joe@} in the same message, joe gets one copy, as for an alias.
    An unknown user's subaddress is refused.
    """
    d = deliver(pipeline, ["joe+lists@example.test"], b"Subject: x\r\n\r\nbody\r\n")
    assert d.called and d.result is None
    [copy] = [email.message_from_bytes(m) for m in inbox(pipeline, "joe@example.test")]
    assert (copy.get_all("X-MDRcpt-To"), copy.get_all("X-Rcpt-To")) == (
        ["joe+lists@example.test"], ["joe+lists@example.test"])
    deliver(pipeline, ["joe+a@example.test", "joe@example.test", "team+b@example.test"], b"\r\nagain\r\n")
    assert len(inbox(pipeline, "joe@example.test")) == 2
    assert len(inbox(pipeline, "ann@example.test")) == 1
    delivery = pipeline.startDelivery(Envelope("a@remote.test"))
    with pytest.raises(errors.NotFound):
        delivery.addRecipient("nobody+lists@example.test")


def test_catchAllKeepsACopyPerRecipient(pipeline):
    """
    Recipients that reach one account through the catch-all get a copy each,
    naming its own recipient once; those that name the account share one.
    """
    pipeline.directory.addUser("box@example.test", "pw")
    pipeline.directory.addAlias("sales@example.test", ["box@example.test"])
    pipeline.directory.setCatchAll("example.test", "box@example.test")
    recipients = ["alice@example.test", "bob@example.test", "Alice@Example.TEST", "box@example.test",
                  "sales@example.test", "team@example.test", "joe@example.test"]
    d = deliver(pipeline, recipients, b"Subject: x\r\n\r\nbody\r\n")
    assert d.called and d.result is None
    copies = [email.message_from_bytes(m) for m in inbox(pipeline, "box@example.test")]
    assert [(c.get_all("X-MDRcpt-To"), c.get_all("X-Rcpt-To")) for c in copies] == [
        ([address], [address]) for address in ("alice@example.test", "bob@example.test", "box@example.test")
    ]
    # team is an alias of joe and ann: one copy each, as before.
    assert len(inbox(pipeline, "joe@example.test")) == len(inbox(pipeline, "ann@example.test")) == 1


def test_keyedCatchAllCopiesAreEachStoredOnce(tmp_path):
    """
    Keyed deliveries (a collected message, delivered again after a crash)
    tell the catch-all copies of one account apart, and store each once.
    """
    from mdpy.backends.files.maildir import MaildirStore
    from mdpy.testing import synchronousRunner

    directory = SQLiteDirectory(str(tmp_path / "directory.sqlite"))
    directory.addDomain("example.test")
    directory.addUser("box@example.test", "pw")
    directory.setCatchAll("example.test", "box@example.test")
    store = MaildirStore(str(tmp_path / "mail"), runInThread=synchronousRunner)
    pipeline = DeliveryPipeline(directory, store, spoolDir=str(tmp_path))
    for again in (False, True):
        d = deliver(pipeline, ["alice@example.test", "bob@example.test"], b"Subject: k\r\n\r\nb\r\n",
                    receivedAt=1700000000, deliveryKey="isp/1", again=again)
        assert d.called and d.result is None
    stored = sorted(email.message_from_bytes(m)["X-Rcpt-To"] for m in inbox(pipeline, "box@example.test"))
    assert stored == ["alice@example.test", "bob@example.test"]


def test_forgedTraceHeadersAreReplaced(pipeline):
    data = (
        b"Received: x\r\nX-MDRcpt-To: evil@example.test\r\nx-rcpt-to: evil@example.test\r\n"
        b"Return-Path: <evil@remote.test>\r\n (folded)\r\nSubject: y\r\n\r\n"
        b"X-Rcpt-To: in the body stays\r\n"
    )
    deliver(pipeline, ["joe@example.test"], data)
    [joe] = inbox(pipeline, "joe@example.test")
    message = email.message_from_bytes(joe)
    assert message.get_all("X-MDRcpt-To") == ["joe@example.test"]
    assert message.get_all("X-Rcpt-To") == ["joe@example.test"]
    assert message.get_all("Return-Path") == ["<a@remote.test>"]
    assert b"(folded)" not in joe
    assert joe.endswith(b"\r\n\r\nX-Rcpt-To: in the body stays\r\n")


def test_largeMessageIsSpooledAndCopiedWhole(pipeline):
    body = b"".join(b"line %07d\r\n" % i for i in range(300000))
    deliver(pipeline, ["team@example.test"], b"X-Rcpt-To: forged\r\nSubject: big\r\n\r\n" + body)
    for address in ("joe@example.test", "ann@example.test"):
        [stored] = inbox(pipeline, address)
        assert stored.endswith(b"Subject: big\r\n\r\n" + body)
        assert stored.count(b"X-Rcpt-To") == 1


def test_recipientErrors(pipeline):
    delivery = pipeline.startDelivery(Envelope("a@remote.test"))
    with pytest.raises(errors.NotFound):
        delivery.addRecipient("nobody@example.test")
    with pytest.raises(errors.RelayDenied):
        delivery.addRecipient("x@remote.test")
    with pytest.raises(errors.RemoteUnavailable):
        delivery.addRecipient("fwd@example.test")
    authenticated = pipeline.startDelivery(Envelope("joe@example.test", authenticatedAs="joe@example.test"))
    with pytest.raises(errors.RemoteUnavailable):
        authenticated.addRecipient("x@remote.test")
    pipeline.directory.setEnabled("joe@example.test", False)
    with pytest.raises(errors.Disabled):
        delivery.addRecipient("joe@example.test")


def test_storeFailureFailsTheCommit(pipeline):
    pipeline.store.failDeliver = errors.TemporaryFailure("disk full")
    d = deliver(pipeline, ["joe@example.test"], b"x\r\n")
    failure = []
    d.addErrback(failure.append)
    assert failure[0].check(errors.TemporaryFailure)
    assert inbox(pipeline, "joe@example.test") == []


def test_noRecipientsCannotCommit(pipeline):
    d = pipeline.startDelivery(Envelope("a@b.test")).commit()
    failure = []
    d.addErrback(failure.append)
    assert failure[0].check(errors.PermanentFailure)


def test_stripTraceHeaders():
    assert stripTraceHeaders(b"A: 1\r\nReturn-Path: <x>\r\nB: 2\r\n\r\nReturn-Path: body\r\n") == (
        b"A: 1\r\nB: 2\r\n\r\nReturn-Path: body\r\n",
        True,
    )
    assert stripTraceHeaders(b"\r\nX-Rcpt-To: body\r\n") == (b"\r\nX-Rcpt-To: body\r\n", True)
    assert stripTraceHeaders(b"A: unfinished") == (b"A: unfinished", False)


# --- SMTP over the real Maildir store -------------------------------------------------


def maildirTranscript(tmp_path, queue=None):
    """
    @return: a L{Transcript} of an SMTP session after EHLO, over a pipeline
        with a real Maildir store (and C{queue}) that has joe@example.test.
    """
    from twisted.internet import task

    from mdpy.smtp.server import SMTPFactory
    from mdpy.backends.files.maildir import MaildirStore
    from mdpy.testing import Transcript, synchronousRunner

    directory = SQLiteDirectory(str(tmp_path / "directory.sqlite"))
    directory.addDomain("example.test")
    directory.addUser("joe@example.test", "pw")
    directory.addAlias("fwd@example.test", ["someone@remote.test"])
    store = MaildirStore(str(tmp_path / "mail"), runInThread=synchronousRunner)
    store.createAccount("joe@example.test")
    pipeline = DeliveryPipeline(directory, store, queue=queue, spoolDir=str(tmp_path))
    factory = SMTPFactory("mx.example.test", pipeline, clock=task.Clock())
    t = Transcript(factory.buildProtocol(None))
    t.expect("220 *")
    t.send("EHLO client.test")
    t.lines()
    t.maildir = tmp_path / "mail" / "example.test" / "joe"
    t.pipeline = pipeline
    return t


@pytest.fixture
def maildirSession(tmp_path):
    return maildirTranscript(tmp_path)


def sendOne(t):
    t.send("MAIL FROM:<a@remote.test>", "RCPT TO:<joe@example.test>", "DATA")
    t.expect("250 *", "250 *", "354 *")
    t.sendRaw(b"Subject: x\r\n\r\n" + b"body line\r\n" * 1000 + b".\r\n")
    return t.lines()


def test_maildirDeliveryOverSMTP(maildirSession):
    t = maildirSession
    assert sendOne(t)[0].startswith("250 2.0.0 Ok: queued as")
    [name] = [n for n in (t.maildir / "new").iterdir()]
    assert name.read_bytes().startswith(b"Return-Path: <a@remote.test>\r\nX-MDRcpt-To: joe@example.test\r\n")
    assert list((t.maildir / "tmp").iterdir()) == []


def test_accountDeletedDuringDeliveryAnswers451(maildirSession):
    """
    A user deleted between RCPT and the end of DATA (the directory entry
    first, then the mail tree): the message gets 451, so the client tries
    again and is refused at RCPT, and no tree is made again at the old path.
    """
    t = maildirSession
    t.send("MAIL FROM:<a@remote.test>", "RCPT TO:<joe@example.test>", "DATA")
    t.expect("250 *", "250 *", "354 *")
    t.pipeline.directory.removeUser("joe@example.test")
    t.pipeline.store.deleteAccount("joe@example.test", archive=True)
    t.sendRaw(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    t.expect("451 4.3.0 *")
    t.send("MAIL FROM:<a@remote.test>", "RCPT TO:<joe@example.test>")
    t.expect("250 *", "550 5.1.1 *")
    assert not t.maildir.exists()


@pytest.mark.parametrize("failing", ["fsync", "write", "rename"])
def test_storeFailureAnswers451AndLeavesNothing(maildirSession, monkeypatch, failing):
    import errno
    import os

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC if failing == "write" else errno.EIO, "injected")

    monkeypatch.setattr(os, failing, fail)
    t = maildirSession
    if failing == "write":  # a full disk: RFC 3463 X.3.1
        assert sendOne(t) == ["452 4.3.1 Insufficient system storage"]
    else:
        assert sendOne(t) == ["451 4.3.0 Error: local error in processing; try again later"]
    monkeypatch.undo()
    assert list((t.maildir / "new").iterdir()) == []
    assert list((t.maildir / "tmp").iterdir()) == []
    assert sendOne(t)[0].startswith("250 2.0.0 Ok")


def test_shippedFakesProvideTheirInterfaces():
    from mdpy.testing import RecordingTarget

    target = RecordingTarget()
    verifyObject(IDeliveryTarget, target)
    verifyObject(IDelivery, target.startDelivery(Envelope("a@b.test")).result)


# --- remote recipients: the outbound queue, forwarding with SRS, checks ----------------


@pytest.fixture
def relaying(pipeline, tmp_path):
    from twisted.internet import task

    from mdpy.backends.files.queue import SpoolQueue
    from mdpy.mailauth.srs import SRS
    from mdpy.testing import synchronousRunner

    pipeline.queue = SpoolQueue(str(tmp_path / "queue"), runInThread=synchronousRunner, clock=task.Clock())
    pipeline.srs = SRS(b"secret-key")
    return pipeline


def queued(pipeline):
    return [
        (entry.sender, [r.address for r in entry.recipients], entry.openBody().read())
        for entry in pipeline.queue.list()
    ]


def fired(d):
    results = []
    d.addBoth(results.append)
    assert results and not hasattr(results[0], "raiseException"), results
    return results[0]


def test_authenticatedSenderIsQueuedAsReceived(relaying):
    data = b"X-Rcpt-To: kept\r\nSubject: out\r\n\r\nbody\r\n"
    fired(deliver(relaying, ["x@remote.test", "y@other.test", "joe@example.test"], data,
                  sender="joe@example.test", authenticatedAs="joe@example.test"))
    assert queued(relaying) == [("joe@example.test", ["x@remote.test", "y@other.test"], data)]
    [local] = inbox(relaying, "joe@example.test")
    assert local.count(b"X-Rcpt-To") == 1 and local.endswith(b"Subject: out\r\n\r\nbody\r\n")


def test_unauthenticatedRelayStillDenied(relaying):
    delivery = relaying.startDelivery(Envelope("a@remote.test"))
    with pytest.raises(errors.RelayDenied):
        delivery.addRecipient("x@remote.test")


def test_forwardedThroughAnAliasUsesSRS(relaying):
    fired(deliver(relaying, ["fwd@example.test", "joe@example.test"], b"Subject: f\r\n\r\nb\r\n",
                  sender="alice@sender.test"))
    [(sender, recipients, data)] = queued(relaying)
    assert recipients == ["someone@remote.test"]
    assert sender.startswith("SRS0=") and sender.endswith("=sender.test=alice@example.test")
    assert data == b"Subject: f\r\n\r\nb\r\n"
    assert len(inbox(relaying, "joe@example.test")) == 1
    # A bounce to the SRS address goes back to the original sender.
    fired(deliver(relaying, [sender], b"Subject: bounce\r\n\r\n", sender=""))
    assert ("", ["alice@sender.test"]) in [q[:2] for q in queued(relaying)]
    # A forged SRS address is unknown.
    delivery = relaying.startDelivery(Envelope(""))
    with pytest.raises(errors.NotFound):
        delivery.addRecipient("SRS0=AAAA=ZZ=sender.test=alice@example.test")


def test_forwardedNullSenderKeepsIt(relaying):
    fired(deliver(relaying, ["fwd@example.test"], b"x\r\n", sender=""))
    assert queued(relaying)[0][0] == ""


def test_noQueueMeansRemoteUnavailable(pipeline):
    delivery = pipeline.startDelivery(Envelope("joe@example.test", authenticatedAs="joe"))
    with pytest.raises(errors.RemoteUnavailable):
        delivery.addRecipient("x@remote.test")


def test_checkerResultGoesIntoLocalCopiesOfUnauthenticatedMail(relaying):
    from twisted.internet import defer

    calls = []

    class Checker:
        hostname = "mx.example.test"

        def check(self, ip, helo, sender, message):
            calls.append((ip, helo, sender, message))
            return defer.succeed(b"Authentication-Results: mx.example.test; spf=pass\r\n")

    relaying.checker = Checker()
    data = (
        b"Authentication-Results: MX.example.test; dkim=pass (forged)\r\n"
        b"Authentication-Results: other.test; spf=fail\r\nSubject: in\r\n\r\nbody\r\n"
    )
    fired(deliver(relaying, ["joe@example.test"], data, clientAddress="192.0.2.7", helo="client.test"))
    assert calls == [("192.0.2.7", "client.test", "a@remote.test", data)]
    [stored] = inbox(relaying, "joe@example.test")
    assert b"\r\nAuthentication-Results: mx.example.test; spf=pass\r\n" in stored
    assert b"forged" not in stored and b"other.test; spf=fail\r\nSubject: in\r\n" in stored
    fired(deliver(relaying, ["joe@example.test"], data, sender="joe@example.test",
                  authenticatedAs="joe@example.test", clientAddress="192.0.2.7"))
    assert len(calls) == 1


# --- all or nothing across the store and the queue ----------------------------------


@pytest.fixture
def mixed(tmp_path):
    """
    SMTP over a pipeline with a real Maildir store and a real queue, taking
    mail for joe (local) and fwd (forwarded to a remote address).
    """
    from twisted.internet import task

    from mdpy.backends.files.queue import SpoolQueue
    from mdpy.testing import synchronousRunner

    queue = SpoolQueue(str(tmp_path / "queue"), runInThread=synchronousRunner, clock=task.Clock())
    t = maildirTranscript(tmp_path, queue)
    t.queue = queue
    t.queueDir = tmp_path / "queue"
    return t


def sendMixed(t, subject):
    t.send("MAIL FROM:<a@remote.test>", "RCPT TO:<joe@example.test>", "RCPT TO:<fwd@example.test>", "DATA")
    t.expect("250 *", "250 *", "250 *", "354 *")
    t.sendRaw(b"Subject: " + subject + b"\r\n\r\nbody\r\n.\r\n")
    return t.lines()


def stored(t):
    return sorted(p.read_bytes().split(b"Subject: ")[1] for p in (t.maildir / "new").iterdir())


def queuedFiles(t):
    return sorted(os.listdir(t.queueDir / "env")), sorted(os.listdir(t.queueDir / "msg"))


@contextlib.contextmanager
def replacedByAFile(directory):
    """
    Replace C{directory} by a file for a while: whoever writes in it fails,
    root included.
    """
    aside = directory.with_name(directory.name + ".aside")
    directory.rename(aside)
    directory.write_bytes(b"")
    try:
        yield
    finally:
        directory.unlink()
        aside.rename(directory)


def test_queueFailureStoresNoLocalCopy(mixed):
    """
    The queue fails on commit: the client gets 451 and no local copy is
    visible; its retry stores and queues each copy once.
    """
    t = mixed
    with replacedByAFile(t.queueDir / "msg"):
        assert sendMixed(t, b"one") == ["451 4.3.0 Error: local error in processing; try again later"]
        assert stored(t) == [] and os.listdir(t.maildir / "tmp") == []
        assert t.queue.list() == []
    assert queuedFiles(t) == ([], [])
    assert sendMixed(t, b"one")[0].startswith("250 2.0.0 Ok")
    assert stored(t) == [b"one\r\n\r\nbody\r\n"]
    [entry] = t.queue.list()
    assert [r.address for r in entry.recipients] == ["someone@remote.test"]
    assert queuedFiles(t) == ([entry.id], [entry.id])


def test_localFailureWithdrawsTheQueuedCopy(mixed):
    """
    The store fails after the queued copy was staged: it is withdrawn, so
    the retry queues it once.
    """
    t = mixed
    staged = []
    t.queue.listeners.append(staged.append)
    with replacedByAFile(t.maildir / "tmp"):
        assert sendMixed(t, b"two") == ["451 4.3.0 Error: local error in processing; try again later"]
    assert staged == [] and t.queue.list() == [] and queuedFiles(t) == ([], [])
    assert stored(t) == []
    assert sendMixed(t, b"two")[0].startswith("250 2.0.0 Ok")
    assert stored(t) == [b"two\r\n\r\nbody\r\n"]
    [entry] = t.queue.list()
    assert staged == [entry]


def test_secondStagingFailureWithdrawsTheFirst(relaying, monkeypatch):
    """
    Relayed and forwarded copies are queued as two entries; when the second
    cannot be staged, the first is withdrawn too.
    """
    queue = relaying.queue
    stage = queue.stage

    def failSecond(envelope, recipients, parts):
        if recipients == ["someone@remote.test"]:
            return defer.fail(errors.TemporaryFailure("disk full"))
        return stage(envelope, recipients, parts)

    monkeypatch.setattr(queue, "stage", failSecond)
    d = deliver(relaying, ["x@remote.test", "fwd@example.test", "joe@example.test"], b"x\r\n",
                sender="joe@example.test", authenticatedAs="joe@example.test")
    failures = []
    d.addErrback(failures.append)
    assert failures[0].check(errors.TemporaryFailure)
    assert queue.list() == [] and os.listdir(os.path.join(queue.path, "env")) == []
    assert inbox(relaying, "joe@example.test") == []


def test_failedWithdrawalIsLogged(relaying, monkeypatch):
    """
    A staged copy that cannot be withdrawn is logged; the commit fails with
    the error that undid it.
    """
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        relaying.store.failDeliver = errors.TemporaryFailure("disk full")
        monkeypatch.setattr(relaying.queue, "_removeStaged", lambda id: 1 / 0)
        d = deliver(relaying, ["fwd@example.test", "joe@example.test"], b"x\r\n")
        failures = []
        d.addErrback(failures.append)
        assert failures[0].check(errors.TemporaryFailure)
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if "could not be withdrawn" in e.get("log_format", "")]
    assert event["why"] == "division by zero"


def test_eachStoredCopyIsLogged(pipeline):
    """
    One C{deliver:} line per stored copy, under the message's id (the one
    the SMTP accepted line shows), naming the address the client gave when
    an alias or the catch-all led elsewhere.
    """
    from mdpy.testing import capturedLogs, loggedLines

    pipeline.directory.addUser("box@example.test", "pw")
    pipeline.directory.setCatchAll("example.test", "box@example.test")
    envelope = Envelope("a@remote.test")
    with capturedLogs() as events:
        delivery = pipeline.startDelivery(envelope)
        for rcpt in ("team@example.test", "Joe@Example.TEST", "nobody@example.test"):
            delivery.addRecipient(rcpt)
        delivery.write(b"Subject: x\r\n\r\nbody\r\n")
        assert fired(delivery.commit()) is None
    id = envelope.messageId
    assert loggedLines(events, "deliver: ") == [
        "deliver: %s to=<joe@example.test> orig_to=<team@example.test> folder=INBOX status=stored" % (id,),
        "deliver: %s to=<ann@example.test> orig_to=<team@example.test> folder=INBOX status=stored" % (id,),
        "deliver: %s to=<box@example.test> orig_to=<nobody@example.test> folder=INBOX status=stored" % (id,),
    ]


def test_directCopyHasNoOriginalRecipient(pipeline):
    from mdpy.testing import capturedLogs, loggedLines

    envelope = Envelope("a@remote.test")
    with capturedLogs() as events:
        delivery = pipeline.startDelivery(envelope)
        delivery.addRecipient("JOE@example.test")
        delivery.write(b"x\r\n")
        fired(delivery.commit())
    assert loggedLines(events, "deliver: ") == [
        "deliver: %s to=<joe@example.test> folder=INBOX status=stored" % (envelope.messageId,)
    ]


def test_forwardedCopyIsLoggedWithItsQueueId(relaying):
    """
    A copy forwarded through an alias is logged with the alias and the id
    it is queued under, which the relay's lines show.
    """
    from mdpy.testing import capturedLogs, loggedLines

    envelope = Envelope("joe@example.test", authenticatedAs="joe@example.test")
    with capturedLogs() as events:
        delivery = relaying.startDelivery(envelope)
        delivery.addRecipient("x@remote.test")
        delivery.addRecipient("fwd@example.test")
        delivery.write(b"x\r\n")
        fired(delivery.commit())
    [forwarded] = [e for e in relaying.queue.list() if e.id != envelope.messageId]
    assert loggedLines(events, "deliver: ") == [
        "deliver: %s to=<someone@remote.test> orig_to=<fwd@example.test> status=forwarded (queued as %s)"
        % (envelope.messageId, forwarded.id)
    ]


def test_failedCommitLogsNoCopy(pipeline):
    from mdpy.testing import capturedLogs, loggedLines

    pipeline.store.failDeliver = errors.TemporaryFailure("disk full")
    with capturedLogs() as events:
        d = deliver(pipeline, ["joe@example.test"], b"x\r\n")
        d.addErrback(lambda f: f.trap(errors.TemporaryFailure))
    assert loggedLines(events, "deliver: ") == []
