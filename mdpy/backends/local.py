# -*- test-case-name: tests.test_changefeed -*-
"""
State a backend keeps in this process's memory: the change feed of the
changes made through this process (L{ChangeFeed}), the POP3 maildrop
locks, the failed logins (L{LoginFailures}) and the MultiPOP accounts
(L{RemoteAccounts}).  The memory backend uses them, and protocol objects
built without a backend take them by default; a backend shared by several
processes or machines replaces them with ones that reach every process
(the files backend's L{mdpy.backends.files.changefeed.MaildirChangeFeed},
L{mdpy.backends.files.locks}, L{mdpy.backends.files.logins}).  With them,
the rules every backend applies alike: the values of a MultiPOP account
(L{remoteAccount}) and the names of collected sources (L{sourceParts}).

Invariants: subscribers are called on the reactor thread; the changes a
folder sees during one reactor turn from outside this process make one
call to each of its subscribers.
"""

import secrets
from collections import OrderedDict, deque

from zope.interface import implementer

from mdpy import errors
from mdpy.address import normalise
from mdpy.interfaces import IChangeFeed, ILoginFailures, IMaildropLocks, IRemoteAccounts
from mdpy.logs import Logger
from mdpy.tls import TLS_MODES

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
        @return: the C{(account, folder)} pairs that have subscribers (of
            that folder, not of the whole account).
        """
        return [key for key in self._folderSubscribers if key[1] is not None]

    def startWatching(self, account, folder):
        """
        Called when a folder gets its first subscriber: a feed that hears
        other processes starts listening to it here.  Folder L{None}: the
        first subscriber of the whole account, which also hears of folders
        made, deleted or renamed and subscriptions changed.
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


@implementer(ILoginFailures)
class LoginFailures:
    """
    The failed logins of this process, in bounded memory; see
    L{ILoginFailures}.
    """

    def __init__(self):
        # table -> OrderedDict of key -> deque of (when, source, tag),
        # ordered by the time of the key's latest event, oldest first.
        self._tables = {}

    def _table(self, table):
        return self._tables.setdefault(table, OrderedDict())

    @staticmethod
    def _expire(events, since):
        while events and events[0][0] <= since:
            events.popleft()

    def record(self, table, key, source, tag, now, since, maxEvents, maxKeys):
        """
        See L{ILoginFailures.record}.
        """
        keyed = self._table(table)
        while keyed:
            oldest, events = next(iter(keyed.items()))
            if events and events[-1][0] > since:
                break
            del keyed[oldest]
        events = keyed.get(key)
        if events is not None:
            self._expire(events, since)
            if tag is not None and any(t == tag for _, _, t in events):
                return False
        if not events:
            events = keyed[key] = deque(maxlen=maxEvents)
            while len(keyed) > maxKeys:
                keyed.popitem(last=False)
        elif events.maxlen != maxEvents:
            events = keyed[key] = deque(events, maxlen=maxEvents)
        events.append((now, source, tag))
        keyed.move_to_end(key)
        return True

    def recent(self, table, key, since):
        """
        See L{ILoginFailures.recent}.
        """
        events = self._table(table).get(key)
        if not events:
            return ()
        self._expire(events, since)
        return tuple(events)

    def forget(self, table, key, source):
        """
        See L{ILoginFailures.forget}.
        """
        keyed = self._table(table)
        events = keyed.get(key)
        if events is None:
            return
        kept = [event for event in events if event[1] != source]
        if kept:
            keyed[key] = deque(kept, maxlen=events.maxlen)
        else:
            del keyed[key]

    def keys(self, table, since):
        """
        See L{ILoginFailures.keys}.
        """
        return sum(1 for events in self._table(table).values() if events and events[-1][0] > since)


def remoteAccount(user, host, port=110, tls="starttls", username="", password="", leaveOnServerDays=0):
    """
    Check the values of a new MultiPOP account (L{IRemoteAccounts.add}).

    @return: the account, a L{dict} with a new id.
    @raise errors.InvalidInput: a malformed value.
    """
    user = normalise(user)
    if tls not in TLS_MODES:
        raise errors.InvalidInput("tls must be one of " + ", ".join(TLS_MODES))
    if not host or any(c in host for c in "\r\n\0 /"):
        raise errors.InvalidInput("bad host: %r" % (host,))
    if not 0 < int(port) < 65536:
        raise errors.InvalidInput("bad port: %r" % (port,))
    if int(leaveOnServerDays) < 0:
        raise errors.InvalidInput("leave_on_server_days must not be negative")
    return dict(
        id=secrets.token_hex(4), user=user, host=host, port=int(port), tls=tls,
        username=username, password=password, leave_on_server_days=int(leaveOnServerDays),
    )


@implementer(IRemoteAccounts)
class RemoteAccounts:
    """
    MultiPOP accounts; see L{IRemoteAccounts}.  Kept in memory here; a
    subclass keeps them elsewhere by overriding L{list} and L{_save}.
    """

    def __init__(self):
        self._accounts = []

    def list(self):
        """
        See L{IRemoteAccounts.list}.
        """
        return [dict(account) for account in self._accounts]

    def _save(self, accounts):
        """
        Keep C{accounts}, the whole list, in place of the former one.
        """
        self._accounts = [dict(account) for account in accounts]

    def add(self, user, host, port=110, tls="starttls", username="", password="", leaveOnServerDays=0):
        """
        See L{IRemoteAccounts.add}.
        """
        account = remoteAccount(user, host, port, tls, username, password, leaveOnServerDays)
        self._save(self.list() + [account])
        return account["id"]

    def remove(self, accountId):
        """
        See L{IRemoteAccounts.remove}.
        """
        accounts = self.list()
        kept = [a for a in accounts if a["id"] != accountId]
        if len(kept) == len(accounts):
            raise errors.NotFound("no such MultiPOP account: %s" % (accountId,))
        self._save(kept)


SOURCE_KINDS = ("domainpop", "multipop")


def sourceParts(source):
    """
    @param source: the name of a collected source
        (L{mdpy.interfaces.ICollectorStates.stateOf}).
    @return: C{(kind, name)}: C{domainpop} or C{multipop}, and a name that
        is one safe path segment.
    @raise ValueError: C{source} is no such name.
    """
    kind, slash, name = source.partition("/")
    if kind not in SOURCE_KINDS or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ValueError("not a source name: %r" % (source,))
    return kind, name
