"""
Mailbox storage: the Maildir++ store and an in-memory store for tests.
"""

from mdpy.logs import Logger

_log = Logger()


class Listeners:
    """
    The change listeners of every account of a store; see
    L{mdpy.interfaces.IMailStore.addListener}.  Accounts are given by their
    already normalised key.
    """

    def __init__(self):
        self._byAccount = {}

    def add(self, account, listener):
        self._byAccount.setdefault(account, []).append(listener)

    def remove(self, account, listener):
        listeners = self._byAccount.get(account, [])
        if listener in listeners:
            listeners.remove(listener)
        if not listeners:
            self._byAccount.pop(account, None)

    def notify(self, account, folder):
        """
        Call each listener of C{account}; one that fails is logged and the
        others are still called.
        """
        for listener in list(self._byAccount.get(account, ())):
            try:
                listener(account, folder)
            except Exception:
                _log.failure("mailbox listener {listener} failed", listener=listener)
