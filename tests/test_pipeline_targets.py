"""
Tests of the pipeline as a router over delivery targets
(L{mdpy.delivery.targets}): each kind of recipient reaches its target, the
targets can be replaced, and one commit over them is all or nothing by the
two-phase protocol of L{ITwoPhaseDelivery}.
"""

import os

import pytest
from twisted.internet import defer, task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mdpy import errors
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.backends.files.queue import SpoolQueue
from mdpy.backends.memory import MemoryStore
from mdpy.delivery.pipeline import DeliveryPipeline, Route
from mdpy.delivery.targets import ForwardTarget, GatewayHoldTarget, LocalStoreTarget, QueueTarget
from mdpy.envelope import Envelope
from mdpy.interfaces import IDelivery, IDeliveryTarget, ITwoPhaseDelivery
from mdpy.mailauth.srs import SRS
from mdpy.odmr.gateway import GatewayDomain, Gateways
from mdpy.testing import RecordingTarget, capturedLogs, loggedLines, resultOf, synchronousRunner

AUTHENTICATED = dict(sender="joe@elsewhere.test", authenticatedAs="joe@example.test")


@pytest.fixture
def pipeline(tmp_path):
    """
    A pipeline with a store in memory and a queue on disk, SRS, and the
    gateway domain C{gw.test}: joe is local, fwd forwards to a remote
    address.
    """
    directory = SQLiteDirectory(str(tmp_path / "directory.sqlite"))
    directory.addDomain("example.test")
    directory.addUser("joe@example.test", "pw")
    directory.addAlias("fwd@example.test", ["someone@remote.test"])
    queue = SpoolQueue(str(tmp_path / "queue"), runInThread=synchronousRunner, clock=task.Clock())
    return DeliveryPipeline(directory, MemoryStore(), queue=queue, spoolDir=str(tmp_path),
                            srs=SRS(b"secret-key"), gateways=Gateways([GatewayDomain("gw.test")]))


def deliver(pipeline, recipients, data=b"Subject: x\r\n\r\nbody\r\n", sender="a@remote.test", **kwargs):
    """
    @return: the Deferred of the commit, and the envelope.
    """
    envelope = Envelope(sender, **kwargs)
    delivery = resultOf(pipeline.startDelivery(envelope))
    for recipient in recipients:
        resultOf(delivery.addRecipient(recipient))
    delivery.write(data)
    return delivery.commit(), envelope


def failureOf(d):
    failures = []
    d.addErrback(failures.append)
    assert failures, "the Deferred did not fail"
    return failures[0]


def inbox(pipeline, address="joe@example.test"):
    return [resultOf(m.read()) for m in pipeline.store.openMailbox(address).messages()]


def queueFiles(pipeline):
    return [sorted(os.listdir(os.path.join(pipeline.queue.path, part))) for part in ("env", "msg")]


def test_targetsProvideTheirInterfaces(pipeline):
    envelope = Envelope("a@remote.test")
    assert [type(t) for t in pipeline.targets] == [QueueTarget, GatewayHoldTarget, ForwardTarget, LocalStoreTarget]
    for target in pipeline.targets:
        verifyObject(IDeliveryTarget, target)
        delivery = target.startDelivery(envelope)
        verifyObject(IDelivery, delivery)
        assert ITwoPhaseDelivery.providedBy(delivery) == (target is not pipeline.localTarget)
        if ITwoPhaseDelivery.providedBy(delivery):
            verifyObject(ITwoPhaseDelivery, delivery)
        delivery.abort()


def test_eachRecipientReachesItsTarget(pipeline):
    """
    Local, relayed, held and forwarded recipients of one message: the
    relayed and held copies are queued under the message's id and one of
    their own, as received; the forwarded copy under another, from the SRS
    sender; one copy is stored.
    """
    d, envelope = deliver(pipeline, ["joe@example.test", "x@remote.test", "y@gw.test", "fwd@example.test"],
                          **AUTHENTICATED)
    assert resultOf(d) is None
    assert len(inbox(pipeline)) == 1
    entries = {tuple(r.address for r in e.recipients): e for e in pipeline.queue.list()}
    assert sorted(entries) == [("someone@remote.test",), ("x@remote.test",), ("y@gw.test",)]
    assert entries[("x@remote.test",)].id == envelope.messageId
    assert len({e.id for e in entries.values()}) == 3
    assert entries[("someone@remote.test",)].sender.startswith("SRS0=")
    assert entries[("someone@remote.test",)].sender.endswith("=elsewhere.test=joe@example.test")
    assert entries[("y@gw.test",)].sender == "joe@elsewhere.test"
    for entry in entries.values():
        with entry.openBody() as f:
            assert f.read() == b"Subject: x\r\n\r\nbody\r\n"


def test_localCommitFailureWithdrawsEveryQueuedCopy(pipeline):
    """
    The local store, the last to be committed, fails: the relayed, held and
    forwarded copies, prepared already, are withdrawn, and no copy is
    logged as delivered.
    """
    pipeline.store.failDeliver = errors.TemporaryFailure("disk full")
    with capturedLogs() as events:
        d, _ = deliver(pipeline, ["x@remote.test", "y@gw.test", "fwd@example.test", "joe@example.test"],
                       **AUTHENTICATED)
        assert failureOf(d).check(errors.TemporaryFailure)
    assert pipeline.queue.list() == [] and queueFiles(pipeline) == [[], []]
    assert inbox(pipeline) == []
    assert loggedLines(events, "deliver: ") == []
    # The retry delivers each copy once.
    d, _ = deliver(pipeline, ["x@remote.test", "fwd@example.test", "joe@example.test"], **AUTHENTICATED)
    assert resultOf(d) is None
    assert len(pipeline.queue.list()) == 2 and len(inbox(pipeline)) == 1


@implementer(IDeliveryTarget)
class TwoPhaseRecorder:
    """
    A two-phase target keeping what was committed; C{prepareError} makes
    the next C{prepare} fail.
    """

    prepareError = None

    def __init__(self):
        self.prepared, self.committed, self.aborted = [], [], []

    def startDelivery(self, envelope):
        return _RecorderDelivery(self)


@implementer(ITwoPhaseDelivery)
class _RecorderDelivery:
    def __init__(self, target):
        self.target = target
        self.recipients, self.data = [], []

    def addRecipient(self, address):
        self.recipients.append(address)

    def write(self, data):
        self.data.append(data)

    def prepare(self):
        error, self.target.prepareError = self.target.prepareError, None
        if error is not None:
            return defer.fail(error)
        self.target.prepared.append(self)
        return defer.succeed(None)

    def commit(self):
        self.target.committed.append((self.recipients, b"".join(self.data)))

    def abort(self):
        self.target.aborted.append(self)


class RoutingPipeline(DeliveryPipeline):
    """
    Sends C{own.test} to C{self.own}.
    """

    own = None

    def route(self, address, envelope):
        if address.endswith("@own.test"):
            return [Route(self.own, address)]
        return DeliveryPipeline.route(self, address, envelope)


@pytest.fixture
def routing(pipeline):
    routing = RoutingPipeline(pipeline.directory, pipeline.store, queue=pipeline.queue,
                              spoolDir=pipeline.spoolDir, srs=pipeline.srs)
    routing.own = TwoPhaseRecorder()
    return routing


def test_aSubclassRoutesToItsOwnTarget(routing):
    d, _ = deliver(routing, ["a@own.test", "joe@example.test", "b@own.test"])
    assert resultOf(d) is None
    assert routing.own.committed == [(["a@own.test", "b@own.test"], b"Subject: x\r\n\r\nbody\r\n")]
    assert routing.own.aborted == []  # a committed transaction is not aborted
    assert len(inbox(routing)) == 1


def test_failedPrepareStoresNothing(routing):
    """
    A target's C{prepare} fails: the queued copy prepared before it is
    withdrawn, the local store is never written.
    """
    routing.own.prepareError = errors.TemporaryFailure("the archive is away")
    d, _ = deliver(routing, ["x@remote.test", "a@own.test", "joe@example.test"], **AUTHENTICATED)
    assert failureOf(d).check(errors.TemporaryFailure)
    assert inbox(routing) == []
    assert routing.queue.list() == [] and queueFiles(routing) == [[], []]
    [failed] = routing.own.aborted
    assert routing.own.prepared == [] and routing.own.committed == []


def test_aSecondPlainTargetIsRefusedForNow(routing):
    """
    Two targets whose commits cannot be taken back cannot share one
    commit: the recipient that needs the second is refused for now (the
    client sends it again on its own), the others are delivered.
    """
    plain = RecordingTarget()
    routing.own = plain
    delivery = resultOf(routing.startDelivery(Envelope("a@remote.test")))
    delivery.addRecipient("joe@example.test")
    with pytest.raises(errors.TemporaryFailure):
        resultOf(delivery.addRecipient("a@own.test"))
    delivery.write(b"x\r\n")
    assert resultOf(delivery.commit()) is None
    assert plain.messages == [] and len(inbox(routing)) == 1


def test_replacedLocalTarget(pipeline):
    """
    The pipeline's targets are its attributes: a wrapper put in place of
    the local one receives the local recipients.
    """
    seen = []

    class Counting(LocalStoreTarget):
        def startDelivery(self, envelope):
            seen.append(envelope)
            return LocalStoreTarget.startDelivery(self, envelope)

    pipeline.localTarget = Counting(pipeline.store, pipeline.spoolDir)
    d, envelope = deliver(pipeline, ["joe@example.test"])
    assert resultOf(d) is None and seen == [envelope] and len(inbox(pipeline)) == 1
