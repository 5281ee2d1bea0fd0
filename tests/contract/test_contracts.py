"""
Every backend mdpy ships keeps the contract suites of
L{mdpy.testing.contracts}, which a backend written elsewhere runs the same
way: subclass each suite and give it the object under test.
"""

import pytest

from mdpy.backends.memory import MemoryBackend
from mdpy.delivery.targets import LocalStoreTarget, QueueTarget
from mdpy.domainpop.state import CollectorState
from mdpy.errors import TemporaryFailure
from mdpy.testing import (
    ChangeFeedContract,
    DedupeContract,
    DeliveryTargetContract,
    DirectoryContract,
    LocksContract,
    QueueContract,
    StoreContract,
    TwoPhaseTargetContract,
    resultOf,
)
from mdpy.testing.contracts import ALICE


class TestStore(StoreContract):
    @pytest.fixture
    def store(self, backend):
        resultOf(backend.store.createAccount(ALICE))
        return backend.store


class TestQueue(QueueContract):
    @pytest.fixture
    def queue(self, backend):
        return backend.queue


class TestDirectory(DirectoryContract):
    @pytest.fixture
    def directory(self, backend):
        return backend.directory


class TestLocks(LocksContract):
    @pytest.fixture
    def locks(self, backend):
        return backend.maildropLocks


class TestChangeFeed(ChangeFeedContract):
    @pytest.fixture
    def feed(self, backend):
        return backend.changeFeed

    def test_theStoreSpeaksThroughIt(self, backend):
        """
        What the store changes is published on the backend's feed.
        """
        heard = []
        backend.changeFeed.subscribe(ALICE, None, lambda *args: heard.append(args))
        resultOf(backend.store.createAccount(ALICE))
        resultOf(backend.store.deliver([(ALICE, "INBOX", [b"Subject: x\r\n\r\nx\r\n"])]))
        assert heard == [(ALICE, "INBOX")]


class TestDedupe(DedupeContract):
    """
    The collectors' dedupe cache, on disk and in an SQLite database in
    memory.
    """

    @pytest.fixture(params=["file", "memory"])
    def dedupe(self, request, tmp_path, clock):
        path = str(tmp_path / "state.sqlite") if request.param == "file" else ":memory:"
        state = CollectorState(path, clock=lambda: clock[0])
        yield state
        state.close()


def failingFsync(monkeypatch):
    """
    Make every fsync fail, as a failing disk does.
    """
    import errno
    import os

    def fail(*args):
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fsync", fail)


class TestLocalStoreTarget(DeliveryTargetContract):
    """
    The pipeline's target of local accounts, over each backend's store.
    """

    recipients = [ALICE]

    @pytest.fixture
    def target(self, backend, tmp_path):
        resultOf(backend.store.createAccount(ALICE))
        target = LocalStoreTarget(backend.store, spoolDir=str(tmp_path))
        target.backend = backend
        return target

    def visible(self, target):
        mailbox = resultOf(target.store.openMailbox(ALICE))
        return [resultOf(message.read()) for message in mailbox.messages()]

    def failCommits(self, target, monkeypatch):
        if isinstance(target.backend, MemoryBackend):
            target.store.failDeliver = TemporaryFailure("injected")
        else:
            failingFsync(monkeypatch)

    def test_copiesCarryTheirRecipient(self, target):
        """
        Each copy starts with its own trace headers.
        """
        resultOf(self.start(target).commit())
        [stored] = self.visible(target)
        assert stored.startswith(b"Return-Path: <sender@remote.example>\r\nX-MDRcpt-To: %s\r\n"
                                 % (ALICE.encode(),))


class TestQueueTarget(TwoPhaseTargetContract):
    """
    The pipeline's target of remote recipients, over each backend's queue.
    """

    recipients = ["bob@remote.example"]

    @pytest.fixture
    def target(self, backend, tmp_path):
        return QueueTarget(backend.queue, spoolDir=str(tmp_path))

    def visible(self, target):
        bodies = []
        for entry in target.queue.list():
            with entry.openBody() as f:
                bodies.append(f.read())
        return bodies

    def stored(self, target):
        bodies = []
        for entry in target.queue.inspect()[0]:
            with open(target.queue.bodyPath(entry.id), "rb") as f:
                bodies.append(f.read())
        return bodies

    def failCommits(self, target, monkeypatch):
        failingFsync(monkeypatch)
