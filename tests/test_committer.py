"""
Tests of L{mdpy.backends.files.committer}: group commit of new message files.
"""

import errno
import os
import queue

import pytest
from twisted.internet import defer

from mdpy import errors
from mdpy.backends.files import committer as committerModule
from mdpy.backends.files.committer import Committer
from mdpy.backends.files.maildir import MaildirStore, _prepareCopies


class ThreadReactor:
    """Collects what writer threads hand back; the test runs it."""

    def __init__(self):
        self.calls = queue.SimpleQueue()
        self.triggers = []

    def callFromThread(self, f, *args):
        self.calls.put((f, args))

    def addSystemEventTrigger(self, *args):
        self.triggers.append(args)

    def runOne(self, timeout=30):
        f, args = self.calls.get(timeout=timeout)
        f(*args)


@pytest.fixture
def store(tmp_path):
    store = MaildirStore(str(tmp_path), runInThread=lambda f, *a: defer.maybeDeferred(f, *a))
    for name in ("a@example.test", "b@example.test"):
        store.createAccount(name)
    return store


def targets(store, account, data=b"Subject: x\r\n\r\nbody\r\n"):
    return [(store.folderPath(account), [data])]


def results(batchResults):
    out = []
    for deferred, failure in batchResults:
        out.append(None if failure is None else failure.value)
    return out


def files(store, account, sub):
    return os.listdir(os.path.join(store.folderPath(account), sub))


def test_batchWritesAllWithOneDirectoryFsyncEach(store, monkeypatch):
    synced = []
    real = committerModule.fsyncDirectory
    monkeypatch.setattr(committerModule, "fsyncDirectory", lambda path: (synced.append(path), real(path)))
    committer = Committer(ThreadReactor(), _prepareCopies)
    batch = [(targets(store, "a@example.test"), defer.Deferred()) for i in range(5)]
    batch.append((targets(store, "b@example.test"), defer.Deferred()))
    assert results(committer._commitBatch(batch)) == [None] * 6
    assert len(files(store, "a@example.test", "new")) == 5
    assert len(files(store, "b@example.test", "new")) == 1
    assert files(store, "a@example.test", "tmp") == []
    assert sorted(synced) == sorted({store.folderPath(a) + "/new" for a in ("a@example.test", "b@example.test")})


def test_oneFailedDeliveryDoesNotFailTheOthers(store):
    committer = Committer(ThreadReactor(), _prepareCopies)
    missing = [(store.folderPath("a@example.test", "Nowhere"), [b"x"])]
    batch = [
        (targets(store, "a@example.test"), defer.Deferred()),
        (missing, defer.Deferred()),
        (targets(store, "a@example.test"), defer.Deferred()),
    ]
    outcome = results(committer._commitBatch(batch))
    assert outcome[0] is None and outcome[2] is None
    assert isinstance(outcome[1], errors.NotFound)
    assert len(files(store, "a@example.test", "new")) == 2


def test_directoryFsyncFailureFailsItsDeliveriesAndLeavesNothing(store, monkeypatch):
    def fail(path):
        if path.startswith(store.folderPath("a@example.test")):
            raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(committerModule, "fsyncDirectory", fail)
    committer = Committer(ThreadReactor(), _prepareCopies)
    batch = [
        (targets(store, "a@example.test"), defer.Deferred()),
        (targets(store, "b@example.test"), defer.Deferred()),
    ]
    outcome = results(committer._commitBatch(batch))
    assert isinstance(outcome[0], errors.TemporaryFailure)
    assert outcome[1] is None  # b's directory was fine
    assert files(store, "a@example.test", "new") == []
    assert files(store, "a@example.test", "tmp") == []
    assert len(files(store, "b@example.test", "new")) == 1


def test_renameFailure(store, monkeypatch):
    def fail(source, destination):
        raise OSError(errno.ENOSPC, "injected")

    monkeypatch.setattr(os, "rename", fail)
    committer = Committer(ThreadReactor(), _prepareCopies)
    [outcome] = results(committer._commitBatch([(targets(store, "a@example.test"), defer.Deferred())]))
    monkeypatch.undo()
    assert isinstance(outcome, errors.TemporaryFailure)
    assert files(store, "a@example.test", "new") == []
    assert files(store, "a@example.test", "tmp") == []


def test_writerThreadsFireOnTheReactor(store):
    reactor = ThreadReactor()
    committer = Committer(reactor, _prepareCopies, threads=2)
    fired = []
    for i in range(20):
        d = defer.Deferred()
        d.addBoth(fired.append)
        committer.commit(targets(store, "a@example.test", b"message %d\r\n" % i), d)
    while len(fired) < 20:
        reactor.runOne()
    assert fired == [None] * 20
    assert len(files(store, "a@example.test", "new")) == 20
    assert reactor.triggers == [("during", "shutdown", committer.stop)]
    committer.stop()


def test_storeUsesTheCommitterByDefault(tmp_path):
    reactor = ThreadReactor()
    store = MaildirStore(str(tmp_path), reactor=reactor)
    store.createAccount("a@example.test")
    fired = []
    store.deliver([("a@example.test", "INBOX", [b"x\r\n"])]).addBoth(fired.append)
    reactor.runOne()
    assert fired == [None]
    assert len(files(store, "a@example.test", "new")) == 1


def unsyncedPrepare(directory):
    """A prepare leaving its file unsynced, its descriptor open (as the queue's)."""

    def prepare(name):
        tmpPath = os.path.join(directory, name + ".tmp")
        fd = os.open(tmpPath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, name.encode())
        return [(tmpPath, os.path.join(directory, name), fd)]

    return prepare


def test_unsyncedFilesAreFsyncedClosedAndRenamed(tmp_path, monkeypatch):
    synced, closed = [], []
    realFsync, realClose = os.fsync, os.close
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), realFsync(fd)))
    monkeypatch.setattr(os, "close", lambda fd: (closed.append(fd), realClose(fd)))
    prepare = unsyncedPrepare(str(tmp_path))
    assert committerModule.commitBatch(prepare, ["a", "b"]) == [None, None]
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    assert len(synced) == 3  # both files, then the directory once
    assert set(synced[:2]) <= set(closed)


def test_unsyncedFileFsyncFailureFailsOnlyItsDelivery(tmp_path, monkeypatch):
    realFsync = os.fsync
    prepare = unsyncedPrepare(str(tmp_path))
    failing = []

    def fsync(fd):
        if fd in failing:
            raise OSError(errno.EIO, "injected")
        realFsync(fd)

    def prepareFailing(name):
        files = prepare(name)
        if name == "bad":
            failing.append(files[0][2])
        return files

    monkeypatch.setattr(os, "fsync", fsync)
    outcome = committerModule.commitBatch(prepareFailing, ["good", "bad"])
    assert outcome[0] is None
    assert isinstance(outcome[1].value, errors.TemporaryFailure)
    assert os.listdir(tmp_path) == ["good"]


def test_deliveriesQueuedWhileWritingJoinTheBatch(store):
    reactor = ThreadReactor()
    committer = Committer(reactor, None, threads=1, joinWhileWriting=True)
    second = defer.Deferred()

    def prepare(targets):
        if targets == "first":
            committer.commit("second", second)  # arrives while "first" is written
        return _prepareCopies(targets_(targets))

    def targets_(name):
        return targets(store, "a@example.test", name.encode() + b"\r\n")

    committer._prepare = prepare
    fired = []
    first = defer.Deferred()
    first.addBoth(fired.append)
    second.addBoth(fired.append)
    committer.commit("first", first)
    reactor.runOne()  # one hand-back for both
    assert fired == [None, None]
    assert len(files(store, "a@example.test", "new")) == 2
    committer.stop()
