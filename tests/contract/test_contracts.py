"""
Every backend mdpy ships keeps the contract suites of
L{mdpy.testing.contracts}, which a backend written elsewhere runs the same
way: subclass each suite and give it the object under test.
"""

import pytest

from mdpy.domainpop.state import CollectorState
from mdpy.testing import (
    ChangeFeedContract,
    DedupeContract,
    DirectoryContract,
    LocksContract,
    QueueContract,
    StoreContract,
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
