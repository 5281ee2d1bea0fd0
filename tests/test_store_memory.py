"""
Tests for L{mdpy.backends.memory}: the memory store keeps the store contract
(L{mdpy.testing.StoreContract}) and fails on request.
"""

import pytest
from twisted.internet import defer

from mdpy.backends.memory import MemoryStore
from mdpy.errors import TemporaryFailure
from mdpy.testing import resultOf
from mdpy.testing.contracts import ALICE, MESSAGE, StoreContract


class TestMemoryStore(StoreContract):
    """
    The memory store keeps the contract, and fails on request.
    """

    def makeStore(self, tmp_path):
        return MemoryStore()

    def test_failDeliver(self, store):
        store.failDeliver = TemporaryFailure("disk full")
        with pytest.raises(TemporaryFailure):
            resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        assert store.failDeliver is None
        assert store.openMailbox(ALICE).messages() == []
        self.deliver(store, MESSAGE)
        assert store.delivered == [(ALICE, "INBOX", MESSAGE)]

    def test_returnsDeferreds(self, store):
        mailbox = store.openMailbox(ALICE)
        assert isinstance(store.deliver([(ALICE, "INBOX", [MESSAGE])]), defer.Deferred)
        assert isinstance(mailbox.append(MESSAGE), defer.Deferred)
        assert isinstance(mailbox.setFlags(1, []), defer.Deferred)
        assert isinstance(mailbox.expunge([1]), defer.Deferred)
