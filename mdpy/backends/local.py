"""
State a backend keeps in this process's memory: the change feed of the
changes made through this process, and the POP3 maildrop locks.  Both
backends use them; a backend shared by several processes or machines
replaces them with ones that reach every process.
"""

from zope.interface import implementer

from mdpy.interfaces import IChangeFeed, IMaildropLocks
from mdpy.logs import Logger

_log = Logger()


@implementer(IChangeFeed)
class LocalChangeFeed:
    """
    The changes made through this process's stores, told to this process's
    listeners; see L{IChangeFeed}.  Accounts are given by their already
    normalised key.
    """

    def __init__(self):
        self._byAccount = {}

    def subscribe(self, account, listener):
        """
        See L{IChangeFeed.subscribe}.
        """
        self._byAccount.setdefault(account, []).append(listener)

    def unsubscribe(self, account, listener):
        """
        See L{IChangeFeed.unsubscribe}.
        """
        listeners = self._byAccount.get(account, [])
        if listener in listeners:
            listeners.remove(listener)
        if not listeners:
            self._byAccount.pop(account, None)

    def publish(self, account, folder):
        """
        See L{IChangeFeed.publish}: each listener of C{account} is called at
        once; one that fails is logged and the others are still called.
        """
        for listener in list(self._byAccount.get(account, ())):
            try:
                listener(account, folder)
            except Exception:
                _log.failure("mailbox listener {listener} failed", listener=listener)


@implementer(IMaildropLocks)
class MaildropLocks:
    """
    Which maildrops have a POP3 session in TRANSACTION state, in this
    process; see L{IMaildropLocks}.
    """

    def __init__(self):
        self._holders = {}

    def acquire(self, account, holder):
        """
        See L{IMaildropLocks.acquire}.
        """
        if self._holders.setdefault(account, holder) is not holder:
            return False
        return True

    def release(self, account, holder):
        """
        See L{IMaildropLocks.release}.
        """
        if self._holders.get(account) is holder:
            del self._holders[account]

    def __contains__(self, account):
        return account in self._holders
