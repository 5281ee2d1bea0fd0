"""
Mailbox storage: the Maildir++ store and an in-memory store for tests.
"""

from collections import namedtuple

from mdpy.errors import NotFound
from mdpy.logs import Logger

_log = Logger()

ADD = "add"
REMOVE = "remove"
REPLACE = "replace"
FLAG_MODES = (ADD, REMOVE, REPLACE)


StoredFlags = namedtuple("StoredFlags", "flags modSeq changed")
StoredFlags.__doc__ = """
What L{mdpy.interfaces.IMailbox.changeFlags} left on one message: its
C{flags} (a L{frozenset}) and C{modSeq} as now stored, and whether this call
C{changed} it (gave it a new modification sequence).
"""


def changedFlags(current, flags, mode):
    """
    Apply a flag change to the flags a message has now.  Flags compare
    without regard to case (RFC 3501 section 2.3.2), so C{-FLAGS ($junk)}
    removes a stored C{$Junk} and C{+FLAGS ($junk)} does not add it twice.

    @param current: the message's stored flags.
    @param flags: the flags of the change, normalised.
    @param mode: L{ADD}, L{REMOVE} or L{REPLACE}.
    @return: the new flags, a L{frozenset}.
    """
    if mode == REPLACE:
        return frozenset(flags)
    lowered = {flag.lower() for flag in flags}
    if mode == REMOVE:
        return frozenset(flag for flag in current if flag.lower() not in lowered)
    if mode == ADD:
        have = {flag.lower() for flag in current}
        return frozenset(current) | {flag for flag in flags if flag.lower() not in have}
    raise ValueError("unknown flag change mode %r" % (mode,))


class FlagShorthand:
    """
    L{mdpy.interfaces.IMailbox.setFlags} for a mailbox that has
    C{changeFlags}.
    """

    def setFlags(self, uid, flags):
        """
        See L{mdpy.interfaces.IMailbox.setFlags}.
        """
        d = self.changeFlags([uid], flags, REPLACE)

        def modSeqOf(results):
            if uid not in results:
                raise NotFound("no message with UID %d" % (uid,))
            return results[uid].modSeq

        return d.addCallback(modSeqOf)


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
