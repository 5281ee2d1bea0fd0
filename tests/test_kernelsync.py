"""
Tests for L{mdpy.backends.files.kernelsync}, and for the Maildir store's
appends and expunges whose syncs it runs (L{MaildirStore.kernelSyncs}).
"""

import errno
import os
import select

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from mdpy.backends.files import kernelsync, maildirindex
from mdpy.backends.files.maildir import MaildirStore
from mdpy.errors import TemporaryFailure
from mdpy.mailbox import ADD
from mdpy.testing import resultOf, track
from mdpy.testing.contracts import ALICE, MESSAGE

from tests.test_store_maildir import QueuedRunner, runNow


class ReaderReactor(Clock):
    """
    The part of a reactor L{kernelsync.kernelSyncs} uses: readers added and
    removed, and calls later.
    """

    def __init__(self):
        super().__init__()
        self.readers = []

    def addReader(self, reader):
        self.readers.append(reader)

    def removeReader(self, reader):
        self.readers.remove(reader)


@pytest.fixture
def syncs(tmp_path):
    reactor = ReaderReactor()
    syncs = kernelsync.kernelSyncs(reactor, str(tmp_path))
    assert syncs is not None and reactor.readers == [syncs]
    syncs.reactor = reactor
    yield syncs
    syncs.close()
    assert reactor.readers == []


def completeAll(syncs, deferreds):
    """
    Submit what was asked for in this turn of the reactor, then read
    completions as the reactor would, until every Deferred fired.
    """
    syncs.reactor.advance(0)
    for _ in range(1000):
        if all(d.called for d in deferreds):
            return
        readable, _, _ = select.select([syncs.fileno()], [], [], 10)
        assert readable, "no completion within 10 s"
        syncs.doRead()
    raise AssertionError("the syncs never completed")


def openFile(path, data=b"data"):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.write(fd, data)
    return fd


class TestKernelSyncs:
    def test_aBatchFiresOnceEverySyncIsDone(self, syncs, tmp_path):
        """
        A batch of files (C{fdatasync}) and a directory (C{fsync}) fires
        with L{None} once the kernel completed them all, read from the
        eventfd; nothing is left in flight.  Batches asked for while others
        are in flight go to the kernel together.
        """
        fds = [openFile(str(tmp_path / name)) for name in ("a", "b")]
        fds.append(os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        try:
            # Nothing in flight: submitted at once.
            d = syncs.sync([(fds[0], True), (fds[1], True), (fds[2], False)])
            assert syncs.inFlight == 3
            # Asked for while others are in flight: submitted together,
            # once this turn of the reactor is over.
            d2 = syncs.sync([(fds[0], True)])
            d3 = syncs.sync([(fds[1], True)])
            assert syncs.inFlight == 3
            syncs.reactor.advance(0)
            assert not d.called and syncs.inFlight == 5
            completeAll(syncs, [d, d2, d3])
            assert resultOf(d2) is None and resultOf(d3) is None
            assert resultOf(d) is None and syncs.inFlight == 0
        finally:
            for fd in fds:
                os.close(fd)

    def test_nothingToSync(self, syncs):
        assert resultOf(syncs.sync([])) is None

    def test_aSyncTheKernelRefusesFailsItsBatch(self, syncs, tmp_path):
        """
        A descriptor the kernel cannot sync (a pipe) fails the batch with
        its L{OSError}, once the others are done too.
        """
        r, w = os.pipe()
        fd = openFile(str(tmp_path / "a"))
        try:
            d = syncs.sync([(fd, True), (r, True)])
            completeAll(syncs, [d])
            with pytest.raises(OSError) as e:
                resultOf(d)
            assert e.value.errno == errno.EINVAL
            assert syncs.inFlight == 0
        finally:
            for each in (r, w, fd):
                os.close(each)

    def test_moreThanTheContextHoldsWait(self, syncs, tmp_path):
        """
        Past L{kernelsync._DEPTH} requests in flight, the others wait and
        are submitted as completions come in.
        """
        fd = openFile(str(tmp_path / "a"))
        count = kernelsync._DEPTH + 44
        fds = [os.dup(fd) for _ in range(count)]
        try:
            first = syncs.sync([(each, True) for each in fds[:count // 2]])
            second = syncs.sync([(each, True) for each in fds[count // 2:]])
            syncs.reactor.advance(0)
            assert syncs.inFlight == kernelsync._DEPTH
            completeAll(syncs, [first, second])
            assert resultOf(first) is None and resultOf(second) is None
            assert syncs.inFlight == 0
        finally:
            for each in fds + [fd]:
                os.close(each)

    def test_noneWhereTheMachineHasNoSuchCalls(self, monkeypatch, tmp_path):
        """
        On a machine whose system calls are not known, there are no kernel
        syncs: the store keeps its worker threads.
        """
        monkeypatch.setattr(kernelsync, "_NUMBERS", {})
        reactor = ReaderReactor()
        assert kernelsync.kernelSyncs(reactor, str(tmp_path)) is None
        assert reactor.readers == []


class RecordedSyncs:
    """
    L{kernelsync.KernelSyncs} as the store uses it, recording what each
    batch syncs (by path) and firing only when told.
    """

    def __init__(self):
        self.batches = []

    def sync(self, fds):
        d = defer.Deferred()
        self.batches.append(([(os.readlink("/proc/self/fd/%d" % fd), datasync) for fd, datasync in fds], d))
        return d

    def fire(self, error=None):
        _, d = self.batches[-1]
        if error is None:
            d.callback(None)
        else:
            d.errback(error)


def openFds():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def store(tmp_path):
    store = MaildirStore(str(tmp_path / "mail"), runInThread=QueuedRunner(), transactsOnCaller=True)
    store.kernelSyncs = RecordedSyncs()
    store.createAccount(ALICE)
    return store


def deliverNow(store, count=1):
    for _ in range(count):
        d = store.deliver([(ALICE, "INBOX", [MESSAGE])])
        store._runInThread.runAll()
        resultOf(d)
    return store.openMailbox(ALICE)


class TestAppendWithKernelSyncs:
    def test_appendIsToldOnceEverythingIsDurable(self, store):
        """
        An APPEND writes its file to C{tmp/} on the calling thread and has
        the kernel sync it before the file gets its name in C{cur/}; the
        result comes only once the log and C{cur/} are synced too.  No
        thread is used, and no descriptor is left open.
        """
        mailbox = deliverNow(store)
        kernel = store.kernelSyncs
        before = openFds()
        d = mailbox.append(MESSAGE, ["\\Seen"])
        told = track(d)
        [(synced, _)] = kernel.batches
        assert len(synced) == 1 and os.path.dirname(synced[0][0]) == os.path.join(mailbox.path, "tmp")
        assert synced[0][1] is False  # fsync: the file's size and times too
        assert len(os.listdir(os.path.join(mailbox.path, "cur"))) == 1 and not told
        kernel.fire()
        assert [name for name in os.listdir(os.path.join(mailbox.path, "cur")) if name.endswith(":2,S")]
        assert kernel.batches[1][0] == [(os.path.join(mailbox.path, maildirindex.LOG_NAME), True),
                                        (os.path.join(mailbox.path, "cur"), False)]
        assert not told
        kernel.fire()
        assert resultOf(d) == 2
        assert store._runInThread.calls == []
        assert openFds() == before
        assert [m.uid for m in store.openMailbox(ALICE).messages()] == [1, 2]

    def test_appendWhoseFileCannotBeSyncedLeavesNothing(self, store):
        """
        When the kernel fails the sync of the new file, the APPEND fails
        as a temporary failure and its file is removed.
        """
        mailbox = deliverNow(store)
        before = openFds()
        d = mailbox.append(MESSAGE)
        store.kernelSyncs.fire(OSError(errno.EIO, "Input/output error"))
        with pytest.raises(TemporaryFailure):
            resultOf(d)
        assert os.listdir(os.path.join(mailbox.path, "tmp")) == []
        assert len(os.listdir(os.path.join(mailbox.path, "cur"))) == 1
        assert openFds() == before

    def test_aLargeAppendRunsInAThread(self, store, monkeypatch):
        """
        Messages above L{maildir.APPEND_HERE_SIZE} in all are written in a
        worker thread, as without kernel syncs.
        """
        from mdpy.backends.files import maildir

        monkeypatch.setattr(maildir, "APPEND_HERE_SIZE", len(MESSAGE) - 1)
        mailbox = deliverNow(store)
        d = mailbox.append(MESSAGE)
        assert store.kernelSyncs.batches == []
        assert [f.__name__ for f, _, _ in store._runInThread.calls] == ["_appendInThread"]
        store._runInThread.runAll()
        assert resultOf(d) == 2

    def test_appendWaitsInAThreadForALockHeld(self, store):
        """
        While another transaction holds the folder lock, the APPEND's
        transaction waits for it in a worker thread.
        """
        mailbox = deliverNow(store)
        with maildirindex.FolderLock(mailbox.path):
            d = mailbox.append(MESSAGE)
            store.kernelSyncs.fire()
            assert [f.__name__ for f, _, _ in store._runInThread.calls] == ["_transact"]
        store._runInThread.runAll()
        assert resultOf(d) == 2


def expungedSince(store, mailbox, modSeq):
    d = mailbox.expungedSince(modSeq)
    if isinstance(store._runInThread, QueuedRunner):
        store._runInThread.runAll()
    return resultOf(d)


def header(path):
    with open(os.path.join(path, maildirindex.EXPUNGED_NAME)) as f:
        return f.readline().split()


class TestExpungeWithKernelSyncs:
    def test_expungeIsToldOnceEverythingIsDurable(self, store):
        """
        An EXPUNGE runs its transaction on the calling thread; the
        tombstones, the log and C{cur/} are synced by the kernel before the
        result comes.  The first writes the tombstones whole (synced at
        once), their header naming this boot of the machine, as later
        lines may reach the disk after the log's; the next appends its line.
        """
        mailbox = deliverNow(store, 3)
        start = mailbox.highestModSeq
        before = openFds()
        d = mailbox.expunge([1])
        [(synced, _)] = store.kernelSyncs.batches
        assert synced == [(os.path.join(mailbox.path, maildirindex.LOG_NAME), True),
                          (os.path.join(mailbox.path, "cur"), False)]
        store.kernelSyncs.fire()
        assert resultOf(d) == [1]
        assert header(mailbox.path)[3] == maildirindex.bootId()
        d = mailbox.expunge([2])
        told = track(d)
        synced, _ = store.kernelSyncs.batches[1]
        assert synced == [(os.path.join(mailbox.path, maildirindex.EXPUNGED_NAME), True),
                          (os.path.join(mailbox.path, maildirindex.LOG_NAME), True),
                          (os.path.join(mailbox.path, "cur"), False)]
        assert not told
        store.kernelSyncs.fire()
        assert resultOf(d) == [2]
        assert openFds() == before
        assert expungedSince(store, store.openMailbox(ALICE), start) == [1, 2]
        with open(os.path.join(mailbox.path, maildirindex.EXPUNGED_NAME)) as f:
            assert len(f.read().splitlines()) == 3

    def test_tombstonesOfAnotherBootTellNothing(self, store):
        """
        After a crash of the machine, tombstones appended without waiting
        for their sync may be lost while the index kept the removals: a
        history whose header names another boot tells nothing, until the
        next removal writes it anew, complete from then on.
        """
        mailbox = deliverNow(store, 3)
        d = mailbox.expunge([1])
        store.kernelSyncs.fire()
        resultOf(d)
        path = os.path.join(mailbox.path, maildirindex.EXPUNGED_NAME)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace(maildirindex.bootId(), "0" * 8 + "-0000-0000-0000-" + "0" * 12))
        assert expungedSince(store, mailbox, 0) is None
        assert expungedSince(store, mailbox, mailbox.highestModSeq) is None
        read = mailbox.highestModSeq
        d = mailbox.expunge([2])
        store.kernelSyncs.fire()
        resultOf(d)
        assert header(mailbox.path)[3] == maildirindex.bootId()
        assert expungedSince(store, mailbox, read) == [2]
        assert expungedSince(store, mailbox, read - 1) is None

    def test_aSyncedWriterRewritesTombstonesOfAnotherBoot(self, tmp_path):
        """
        A store that syncs its tombstones itself (the C{mdpy} command, a
        worker thread) writes a history of another boot anew too, without
        naming a boot.
        """
        store = MaildirStore(str(tmp_path / "mail"), runInThread=runNow)
        store.createAccount(ALICE)
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE]) for _ in range(3)]))
        mailbox = store.openMailbox(ALICE)
        resultOf(mailbox.expunge([1]))
        path = os.path.join(mailbox.path, maildirindex.EXPUNGED_NAME)
        with open(path) as f:
            lines = f.read().splitlines()
        with open(path, "w") as f:
            f.write("\n".join([lines[0] + " 1234abcd-0000"] + lines[1:]) + "\n")
        assert expungedSince(store, mailbox, 0) is None
        read = mailbox.highestModSeq
        resultOf(mailbox.expunge([2]))
        assert len(header(mailbox.path)) == 3
        assert expungedSince(store, mailbox, read) == [2]

    def test_sharedFilesystemSyncsTombstonesFirst(self, store, monkeypatch):
        """
        On a filesystem other hosts share, whose processes do not know this
        machine's boot, the tombstones are synced before the index is
        written, as without kernel syncs.
        """
        monkeypatch.setattr(maildirindex, "onLocalFilesystem", lambda path: False)
        mailbox = deliverNow(store, 2)
        synced = []
        monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(os.readlink("/proc/self/fd/%d" % fd)))
        d = mailbox.expunge([1])
        assert synced == [os.path.join(mailbox.path, maildirindex.EXPUNGED_NAME)]
        [(batch, _)] = store.kernelSyncs.batches
        assert [path for path, _ in batch] == [os.path.join(mailbox.path, maildirindex.LOG_NAME),
                                               os.path.join(mailbox.path, "cur")]
        store.kernelSyncs.fire()
        assert resultOf(d) == [1]
        assert len(header(mailbox.path)) == 3

    def test_flagChangeSyncsThroughTheKernel(self, store):
        """
        A flag change made on the calling thread leaves its syncs to the
        kernel too, not to a worker thread.
        """
        mailbox = deliverNow(store)
        d = mailbox.changeFlags([1], ["\\Seen"], ADD)
        told = track(d)
        [(batch, _)] = store.kernelSyncs.batches
        assert [path for path, _ in batch] == [os.path.join(mailbox.path, maildirindex.LOG_NAME),
                                               os.path.join(mailbox.path, "cur")]
        assert store._runInThread.calls == [] and not told
        store.kernelSyncs.fire()
        assert resultOf(d)[1].flags == {"\\Seen"}
