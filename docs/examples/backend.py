"""
A store of one's own: a message quota per folder, in front of any other
L{mdpy.interfaces.IMailStore}.  Everything but C{deliver} is handed to the
store behind it.
"""

from twisted.internet import defer
from zope.interface import implementer

from mdpy import errors
from mdpy.interfaces import IMailStore


@implementer(IMailStore)
class QuotaStore:
    """
    Refuses a delivery, all of it, when a folder it writes to holds
    C{limit} messages already.
    """

    def __init__(self, store, limit):
        self.store = store
        self.limit = limit

    def __getattr__(self, name):
        return getattr(self.store, name)

    def deliver(self, copies, key=None, again=False):
        return defer.ensureDeferred(self._deliver(copies, key, again))

    async def _deliver(self, copies, key, again):
        for account, folder, *_ in copies:
            mailbox = await defer.maybeDeferred(self.store.openMailbox, account, folder)
            if len(mailbox.messages()) >= self.limit:
                raise errors.QuotaExceeded("%s is full" % (folder,))
        await defer.maybeDeferred(self.store.deliver, copies, key, again)
