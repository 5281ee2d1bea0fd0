# -*- test-case-name: tests.test_changefeed -*-
"""
State a backend keeps in this process's memory: the change feed of the
changes made through this process (L{ChangeFeed}), and the POP3 maildrop
locks.  Both backends use them; a backend shared by several processes or
machines replaces them with ones that reach every process (the files
backend's L{mdpy.backends.files.changefeed.MaildirChangeFeed}).

Invariants: subscribers are called on the reactor thread; the changes a
folder sees during one reactor turn from outside this process make one
call to each of its subscribers.
"""

from zope.interface import implementer

from mdpy.interfaces import IChangeFeed, IMaildropLocks
from mdpy.logs import Logger

_log = Logger()


class _Subscription:
    """
    One subscriber; see L{IChangeFeed.subscribe}.
    """

    def __init__(self, feed, account, folder, callback):
        self._feed = feed
        self.account = account
        self.folder = folder
        self.callback = callback

    def __repr__(self):
        return "<subscription of %r to %s %s>" % (self.callback, self.account, self.folder or "(all folders)")

    def __call__(self, account, folder):
        if self.folder in (None, folder):
            self.callback(account, folder)

    def unsubscribe(self):
        """
        See L{IChangeFeed.subscribe}.  Calling it again does nothing.
        """
        feed, self._feed = self._feed, None
        if feed is not None:
            feed._unsubscribe(self)


@implementer(IChangeFeed)
class ChangeFeed:
    """
    The changes made in this process.  See L{IChangeFeed}.
    """

    def __init__(self, reactor=None, accountKey=str):
        """
        @param accountKey: C{accountKey(address)} returns the name the store
            files an account under (L{mdpy.mailbox.accountKey}), so
            that every spelling of an address names the same account.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._accountKey = accountKey
        self._byAccount = {}  # account: subscriptions of it
        self._folderSubscribers = {}  # (account, folder): count
        self._pending = {}  # (account, folder) heard since the last flush
        self._flush = None

    def subscribe(self, account, folder, callback):
        """
        See L{IChangeFeed.subscribe}.
        """
        account = self._accountKey(account)
        subscription = _Subscription(self, account, folder, callback)
        self._byAccount.setdefault(account, []).append(subscription)
        if folder is not None:
            key = (account, folder)
            self._folderSubscribers[key] = self._folderSubscribers.get(key, 0) + 1
            if self._folderSubscribers[key] == 1:
                self.startWatching(account, folder)
        return subscription

    def _unsubscribe(self, subscription):
        subscriptions = self._byAccount.get(subscription.account, [])
        if subscription in subscriptions:
            subscriptions.remove(subscription)
        if not subscriptions:
            self._byAccount.pop(subscription.account, None)
        if subscription.folder is not None:
            key = (subscription.account, subscription.folder)
            self._folderSubscribers[key] -= 1
            if not self._folderSubscribers[key]:
                del self._folderSubscribers[key]
                self.stopWatching(*key)

    def notify(self, account, folder):
        """
        See L{IChangeFeed.notify}.  The subscribers are called now (one that
        fails is logged and the others are still called); a change heard
        from outside for the same folder and not yet reported is reported by
        this call.
        """
        account = self._accountKey(account)
        self._pending.pop((account, folder), None)
        for subscription in list(self._byAccount.get(account, ())):
            try:
                subscription(account, folder)
            except Exception:
                _log.failure("mailbox listener {listener} failed", listener=subscription)

    def changed(self, account, folder):
        """
        Report a change heard from outside at the end of this reactor turn,
        once however often it is heard until then.
        """
        self._pending[(account, folder)] = None
        if self._flush is None:
            self._flush = self._reactor.callLater(0, self._flushChanges)

    def _flushChanges(self):
        self._flush = None
        while self._pending:
            self.notify(*next(iter(self._pending)))

    def watchedFolders(self):
        """
        @return: the C{(account, folder)} pairs that have subscribers.
        """
        return list(self._folderSubscribers)

    def startWatching(self, account, folder):
        """
        Called when a folder gets its first subscriber: a feed that hears
        other processes starts listening to it here.
        """

    def stopWatching(self, account, folder):
        """
        Called when the last subscriber of a folder went away.
        """


class StoreListeners:
    """
    L{mdpy.interfaces.IMailStore.addListener} and C{removeListener} kept by
    a store as subscriptions of whole accounts to its change feed.
    """

    def __init__(self):
        self._subscriptions = {}  # (account, listener): subscriptions

    def add(self, feed, account, listener):
        """
        Subscribe C{listener} to every folder of C{account} on C{feed}.
        """
        subscription = feed.subscribe(account, None, listener)
        self._subscriptions.setdefault((account, listener), []).append(subscription)

    def remove(self, account, listener):
        """
        Undo one L{add} of C{listener} to C{account}, if any.
        """
        key = (account, listener)
        subscriptions = self._subscriptions.get(key)
        if subscriptions:
            subscriptions.pop().unsubscribe()
            if not subscriptions:
                del self._subscriptions[key]


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
