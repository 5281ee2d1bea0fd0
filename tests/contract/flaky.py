"""
A backend that fails: the memory backend whose store fails every fourth
commit of new mail with a temporary failure, as a full or failing disk
would.  Loaded by C{[server] backend = tests.contract.flaky:FlakyBackend}.
"""

from twisted.internet import defer

from mdpy.backends.memory import MemoryBackend, MemoryStore
from mdpy.errors import TemporaryFailure


class FlakyStore(MemoryStore):
    """
    A L{MemoryStore} whose every fourth L{deliver} fails and stores
    nothing.

    @ivar commits: how many deliveries were asked for.
    """

    commits = 0

    def deliver(self, copies, key=None, again=False):
        self.commits += 1
        if self.commits % 4 == 0:
            return defer.fail(TemporaryFailure("commit %d failed: disk full" % (self.commits,)))
        return MemoryStore.deliver(self, copies, key, again)


class FlakyBackend(MemoryBackend):
    """
    The memory backend with a L{FlakyStore}.
    """

    def __init__(self, reactor=None, recipientDelimiter="+"):
        MemoryBackend.__init__(self, reactor, recipientDelimiter)
        self.store = FlakyStore(changeFeed=self.changeFeed)
