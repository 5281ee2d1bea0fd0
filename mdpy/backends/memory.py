# -*- test-case-name: tests.test_store_memory -*-
"""
The memory backend (L{MemoryBackend}), for tests and for subclassers: a
server whose mail lives as long as its process.

Its store, L{MemoryStore}, is an L{IMailStore} kept in memory, also used on
its own by protocol tests.  It keeps the store contract and the rules of L{mdpy.mailbox}: the
same folder names and checks, UIDs that are never reused, a modification
sequence raised by every change, and mailbox views that change only in C{sync} or through their own
writes.  C{deliver}, C{append}, C{changeFlags} and C{expunge} return Deferreds
(already fired) as the Maildir store does; everything else is synchronous.

    store = MemoryStore()
    store.createAccount("alice@example.com")
    store.deliver([("alice@example.com", "INBOX", [b"Subject: hi\\r\\n\\r\\nhello\\r\\n"])])
    store.openMailbox("alice@example.com").messages()[0].read()  # a Deferred
"""

import io
import shutil
import tempfile
import time
import uuid

from twisted.internet import defer
from zope.interface import implementer

from mdpy.address import normaliseDomain
from mdpy.errors import Exists, InvalidInput, NotFound
from mdpy.interfaces import IBackend, ICollectorStates, IMailbox, IMailStore, IStoredMessage
from mdpy.quota import Usage
from mdpy.mailbox import (
    DELETED,
    REPLACE,
    ExpungeHistory,
    SPECIAL_FOLDERS,
    FlagShorthand,
    StoredFlags,
    accountKey,
    changedFlags,
    normaliseFolderName,
    storableFlags,
)
from mdpy.backends.local import (
    ChangeFeed,
    LoginFailures,
    MaildropLocks,
    RemoteAccounts,
    StoreListeners,
    sourceParts,
)



def _readParts(parts):
    chunks = []
    for part in parts:
        chunks.append(bytes(part) if isinstance(part, (bytes, bytearray, memoryview)) else part.read())
    return b"".join(chunks)


@implementer(IStoredMessage)
class MemoryMessage:
    """
    One message held in memory.  See L{IStoredMessage}.

    @ivar data: the message's bytes.
    """

    def __init__(self, folder, uid, key, data, flags, internalDate, modSeq):
        self.uid = uid
        self.key = key
        self.data = data
        self.flags = flags
        self.size = len(data)
        self.internalDate = internalDate
        self.modSeq = modSeq
        self._folder = folder

    def open(self):
        """
        See L{IStoredMessage.open}.
        """
        return defer.maybeDeferred(lambda: io.BytesIO(self._present()))

    def read(self):
        """
        See L{IStoredMessage.read}.
        """
        return defer.maybeDeferred(self._present)

    def _present(self):
        """
        @return: L{data}.
        @raise NotFound: the message was expunged meanwhile.
        """
        current = self._folder.messages.get(self.uid)
        if current is None or current.key != self.key:
            raise NotFound("message %s is gone" % (self.key,))
        return self.data

    def _withFlags(self, flags, modSeq):
        return MemoryMessage(self._folder, self.uid, self.key, self.data, flags,
                             self.internalDate, modSeq)

    def __repr__(self):
        return "<MemoryMessage uid=%d %s>" % (self.uid, self.key)


class _Folder:
    """
    The messages of one folder, in UID order, and its counters.

    @ivar recentThreshold: the highest UID a view has claimed
        (L{MemoryMailbox.claimRecent}).
    """

    def __init__(self, uidValidity):
        self.uidValidity = uidValidity
        self.uidNext = 1
        self.highestModSeq = 0
        self.messages = {}
        self.deleted = False
        self.expunged = ExpungeHistory()
        self.recentThreshold = 0

    def add(self, data, flags, internalDate):
        uid, self.uidNext = self.uidNext, self.uidNext + 1
        self.highestModSeq += 1
        key = "%s,S=%d" % (uuid.uuid4().hex, len(data))
        self.messages[uid] = MemoryMessage(
            self, uid, key, data, flags,
            time.time() if internalDate is None else float(internalDate),
            self.highestModSeq,
        )
        return uid


@implementer(IMailbox)
class MemoryMailbox(FlagShorthand):
    """
    A view of one folder of a L{MemoryStore}.  See L{IMailbox}.
    """

    def __init__(self, store, account, name, folder):
        self.name = name
        self._store = store
        self._account = account
        self._folder = folder
        self._claiming = False
        self._claimed = set()
        self.sync()

    def __repr__(self):
        return "<MemoryMailbox %s %s>" % (self._account, self.name)

    def sync(self):
        """
        See L{IMailbox.sync}.
        """
        self._takeIn()

    def _takeIn(self):
        """
        Take in the folder as it is now; a view that claims (L{claimRecent})
        claims what no view has.

        @return: the UIDs claimed.
        """
        folder = self._folder
        if folder.deleted:
            raise NotFound("mailbox %s of %s is gone" % (self.name, self._account))
        self.uidValidity = folder.uidValidity
        self.uidNext = folder.uidNext
        self.highestModSeq = folder.highestModSeq
        self._messages = list(folder.messages.values())
        claimed = []
        if self._claiming:
            claimed = [uid for uid in folder.messages if uid > folder.recentThreshold]
            folder.recentThreshold = folder.uidNext - 1
            self._claimed.update(claimed)
        self.recentThreshold = folder.recentThreshold
        return claimed

    def messages(self):
        """
        See L{IMailbox.messages}.
        """
        return list(self._messages)

    def claimRecent(self):
        """
        See L{IMailbox.claimRecent}.  The folder keeps the highest UID
        claimed.
        """
        self._claiming = True
        return defer.maybeDeferred(self._takeIn)

    def claimedUids(self):
        """
        See L{IMailbox.claimedUids}.
        """
        return frozenset(self._claimed)

    def _changed(self, result):
        self.sync()
        self._store._notify(self._account, self.name)
        return result

    def append(self, data, flags=(), internalDate=None):
        """
        See L{IMailbox.append}.
        """
        d = self.appendMany([(data, flags, internalDate)])
        d.addCallback(lambda uids: uids[0])
        return d

    def appendMany(self, messages):
        """
        See L{IMailbox.appendMany}.  Every message is read before the first
        is added, so a file that cannot be read adds none.
        """
        return defer.maybeDeferred(self._appendMany, messages)

    def _appendMany(self, messages):
        if self._folder.deleted:
            raise NotFound("mailbox %s of %s is gone" % (self.name, self._account))
        ready = [
            (_readParts(data if isinstance(data, list) else [data]), storableFlags(flags), internalDate)
            for data, flags, internalDate in messages
        ]
        return self._changed([self._folder.add(*message) for message in ready])

    def changeFlags(self, uids, flags, mode=REPLACE, unchangedSince=None):
        """
        See L{IMailbox.changeFlags}.  The folder's messages are the current
        state, so the change is applied to them, never to this view's copy.
        """
        return defer.maybeDeferred(self._changeFlags, uids, storableFlags(flags), mode, unchangedSince)

    def _changeFlags(self, uids, flags, mode, unchangedSince):
        folder = self._folder
        if folder.deleted:
            raise NotFound("mailbox %s of %s is gone" % (self.name, self._account))
        changedFlags(frozenset(), flags, mode)  # an unknown mode fails before any change
        results, modSeq = {}, None
        for uid in uids:
            message = folder.messages.get(uid)
            if message is None:
                continue
            new = changedFlags(message.flags, flags, mode)
            refused = unchangedSince is not None and message.modSeq > unchangedSince
            if refused or (new == message.flags and unchangedSince is None):
                results[uid] = StoredFlags(message.flags, message.modSeq, False)
                continue
            if modSeq is None:
                folder.highestModSeq += 1
                modSeq = folder.highestModSeq
            folder.messages[uid] = message._withFlags(new, modSeq)
            results[uid] = StoredFlags(new, modSeq, True)
        if modSeq is None:
            self.sync()
            return results
        return self._changed(results)

    def expunge(self, uids, deletedOnly=False):
        """
        See L{IMailbox.expunge}.
        """
        return defer.maybeDeferred(self._expunge, uids, deletedOnly)

    def _expunge(self, uids, deletedOnly):
        folder = self._folder
        removed = sorted(
            uid for uid in set(uids)
            if uid in folder.messages and (not deletedOnly or DELETED in folder.messages[uid].flags)
        )
        for uid in removed:
            del folder.messages[uid]
        if removed:
            folder.highestModSeq += 1
            folder.expunged.record(folder.highestModSeq, removed)
        return self._changed(removed)

    def expungedSince(self, modSeq):
        """
        See L{IMailbox.expungedSince}.
        """
        folder = self._folder
        if folder.uidValidity != self.uidValidity:
            return defer.succeed(None)
        return defer.succeed(folder.expunged.since(modSeq))


@implementer(IMailStore)
class MemoryStore:
    """
    Every account's folders in memory.  See L{IMailStore}.

    @ivar failDeliver: L{None}, or an exception the next L{deliver} fails
        with (then it is reset to L{None}).
    @ivar delivered: C{(account, folder, bytes)} for each copy delivered, in
        order.
    @ivar archived: C{(account, folders)} of each account L{deleteAccount}
        kept aside, in order.
    """

    failDeliver = None

    def __init__(self, changeFeed=None):
        """
        @param changeFeed: the L{mdpy.interfaces.IChangeFeed} told of every
            change; by default one of its own.
        """
        self._accounts = {}
        self._subscriptions = {}
        self.changeFeed = ChangeFeed(accountKey=accountKey) if changeFeed is None else changeFeed
        self._listeners = StoreListeners()
        self._lastUidValidity = 0
        self.delivered = []
        self._keys = set()  # (key, account, folder[, tag]) of keyed deliveries
        self.archived = []  # (account, folders) kept by deleteAccount

    def _newFolder(self):
        self._lastUidValidity = max(int(time.time()), self._lastUidValidity + 1)
        return _Folder(self._lastUidValidity)

    def _account(self, address):
        folders = self._accounts.get(accountKey(address))
        if folders is None:
            raise NotFound("no mailbox for %s" % (address,))
        return folders

    def _getFolder(self, address, name):
        folder = self._account(address).get(name)
        if folder is None:
            raise NotFound("no mailbox %s for %s" % (name, address))
        return folder

    def _notify(self, account, folder):
        self.changeFeed.notify(account, folder)

    # IMailStore

    def createAccount(self, address):
        """
        See L{IMailStore.createAccount}.
        """
        folders = self._accounts.setdefault(accountKey(address), {})
        self._subscriptions.setdefault(accountKey(address), set(SPECIAL_FOLDERS))
        for name in ("INBOX",) + SPECIAL_FOLDERS:
            if name not in folders:
                folders[name] = self._newFolder()

    def deleteAccount(self, address, archive=False):
        """
        See L{IMailStore.deleteAccount}.  Archived accounts are kept in
        L{archived}; C{keptAt} names the entry, C{"archived[N]"}.
        """
        key = accountKey(address)
        folders = self._accounts.pop(key, None)
        self._subscriptions.pop(key, None)
        if folders is None:
            return None
        for folder in folders.values():
            folder.deleted = True
        if not archive:
            return key, None
        self.archived.append((key, folders))
        return key, "archived[%d]" % (len(self.archived) - 1,)

    def deleteDomain(self, domain, archive=False):
        """
        See L{IMailStore.deleteDomain}: each account is archived on its own.
        """
        suffix = "@" + normaliseDomain(domain)
        removed = [self.deleteAccount(key, archive) for key in list(self._accounts) if key.endswith(suffix)]
        if not removed:
            return None
        return suffix[1:], ", ".join(kept for _, kept in removed) if archive else None

    def accountExists(self, address):
        """
        See L{IMailStore.accountExists}.
        """
        return accountKey(address) in self._accounts

    def deliver(self, copies, key=None, again=False):
        """
        See L{IMailStore.deliver}.
        """
        return defer.maybeDeferred(self._deliver, copies, key, again)

    def _deliver(self, copies, key=None, again=False):
        if self.failDeliver is not None:
            failure, self.failDeliver = self.failDeliver, None
            raise failure
        resolved = []
        for account, name, parts, *tag in copies:
            name = normaliseFolderName(name)
            folder = self._getFolder(account, name)
            keyed = None if key is None else (tuple(key), accountKey(account), name, *tag)
            if keyed is not None and again and keyed in self._keys:
                continue
            resolved.append((accountKey(account), name, folder, _readParts(parts)))
            if keyed is not None:
                self._keys.add(keyed)
        for account, name, folder, data in resolved:
            folder.add(data, frozenset(), None)
            self.delivered.append((account, name, data))
        for account, name in dict.fromkeys((a, n) for a, n, _, _ in resolved):
            self._notify(account, name)

    def usage(self, address):
        """
        See L{IMailStore.usage}.
        """
        folders = self._accounts.get(accountKey(address), {})
        messages = [m for folder in folders.values() for m in folder.messages.values()]
        return Usage(sum(m.size for m in messages), len(messages))

    def listMailboxes(self, address):
        """
        See L{IMailStore.listMailboxes}.
        """
        return ["INBOX"] + sorted(name for name in self._account(address) if name != "INBOX")

    def createMailbox(self, address, name):
        """
        See L{IMailStore.createMailbox}.
        """
        name = normaliseFolderName(name)
        folders = self._account(address)
        if name in folders:
            raise Exists("mailbox %s exists" % (name,))
        folders[name] = self._newFolder()
        self._notify(accountKey(address), name)

    def deleteMailbox(self, address, name):
        """
        See L{IMailStore.deleteMailbox}.  Child folders stay.
        """
        name = normaliseFolderName(name)
        if name == "INBOX":
            raise InvalidInput("INBOX cannot be deleted")
        folder = self._getFolder(address, name)
        del self._account(address)[name]
        folder.deleted = True
        self._notify(accountKey(address), name)

    def renameMailbox(self, address, old, new):
        """
        See L{IMailStore.renameMailbox}.  Renaming INBOX moves its messages
        into the new folder and leaves INBOX empty.
        """
        old, new = normaliseFolderName(old), normaliseFolderName(new)
        folders = self._account(address)
        if new == "INBOX" or new == old or new.startswith(old + "/"):
            raise InvalidInput("cannot rename %s to %s" % (old, new))
        if old not in folders:
            raise NotFound("no mailbox %s" % (old,))
        if old == "INBOX":
            self.createMailbox(address, new)
            inbox, target = folders["INBOX"], folders[new]
            for message in inbox.messages.values():
                target.add(message.data, message.flags, message.internalDate)
            inbox.messages.clear()
            inbox.highestModSeq += 1
            self._notify(accountKey(address), old)
            return
        moves = [(name, new + name[len(old):]) for name in folders
                 if name == old or name.startswith(old + "/")]
        for _, target in moves:
            normaliseFolderName(target)  # a child may grow past the limits
            if target in folders:
                raise Exists("mailbox %s exists" % (target,))
        for source, target in moves:
            folders[target] = folders.pop(source)
        self._notify(accountKey(address), old)
        self._notify(accountKey(address), new)

    def listSubscriptions(self, address):
        """
        See L{IMailStore.listSubscriptions}.
        """
        self._account(address)
        return sorted(self._subscriptions.get(accountKey(address), ()))

    def setSubscribed(self, address, name, subscribed):
        """
        See L{IMailStore.setSubscribed}.
        """
        self._account(address)
        names = self._subscriptions.setdefault(accountKey(address), set())
        name = normaliseFolderName(name)
        if (name in names) == subscribed:
            return
        if subscribed:
            names.add(name)
        else:
            names.discard(name)
        self._notify(accountKey(address), name)

    def openMailbox(self, address, name="INBOX"):
        """
        See L{IMailStore.openMailbox}.
        """
        name = normaliseFolderName(name)
        return MemoryMailbox(self, accountKey(address), name, self._getFolder(address, name))

    def addListener(self, address, listener):
        """
        See L{IMailStore.addListener}.
        """
        self._listeners.add(self.changeFeed, accountKey(address), listener)

    def removeListener(self, address, listener):
        """
        See L{IMailStore.removeListener}.
        """
        self._listeners.remove(accountKey(address), listener)


def recordReads(monkeypatch):
    """
    For tests: note the UID of every message of a L{MemoryStore} read from
    now on.

    @param monkeypatch: pytest's C{monkeypatch} fixture, which undoes it.
    @return: the L{list} the UIDs are added to, in order.
    """
    reads = []
    original = MemoryMessage.read

    def recordingRead(message):
        reads.append(message.uid)
        return original(message)

    monkeypatch.setattr(MemoryMessage, "read", recordingRead)
    return reads


@implementer(ICollectorStates)
class MemoryCollectorStates:
    """
    See L{ICollectorStates}: the state of each source in an SQLite database
    in memory.
    """

    def __init__(self):
        self._states = {}

    def stateOf(self, source):
        """
        See L{ICollectorStates.stateOf}.
        """
        from mdpy.backends.files.collectorstate import CollectorState

        key = sourceParts(source)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = CollectorState(":memory:")
        return state

    def close(self):
        """
        Close every state.
        """
        states, self._states = self._states, {}
        for state in states.values():
            state.close()


@implementer(IBackend)
class MemoryBackend:
    """
    See L{IBackend}: the mail in a L{MemoryStore}, the directory and the
    collectors' states SQLite databases in memory, and the outbound queue
    the files backend's spool in a private temporary folder that L{close}
    removes; the maildrop locks, the failed logins and the MultiPOP
    accounts in this process's memory (L{mdpy.backends.local}).
    Everything runs at once on the calling thread, so every Deferred it
    returns has fired.

    Subclass it to make a backend for tests: C{[server] backend =
    package.module:Class} loads it (L{mdpy.backends.load}).
    """

    def __init__(self, reactor=None, recipientDelimiter="+"):
        from mdpy.backends.files.directory import SQLiteDirectory
        from mdpy.backends.files.queue import SpoolQueue

        self.changeFeed = ChangeFeed(reactor, accountKey)
        self.maildropLocks = MaildropLocks()
        self.loginFailures = LoginFailures()
        self.remoteAccounts = RemoteAccounts()
        self.dedupe = MemoryCollectorStates()
        self.store = MemoryStore(changeFeed=self.changeFeed)
        self.directory = SQLiteDirectory(":memory:", recipientDelimiter)
        self._queueDir = tempfile.mkdtemp(prefix="mdpy-queue-")
        self.queue = SpoolQueue(self._queueDir, reactor=reactor, runInThread=self.runBlocking,
                                groupCommit=False)

    @classmethod
    def fromConfig(cls, config, reactor=None, threadPool=None):
        """
        @return: a new, empty backend; C{threadPool} is not used.
        """
        return cls(reactor, config["server"]["recipient_delimiter"])

    def start(self):
        """
        See L{IBackend.start}: nothing is left from an earlier run.
        """

    def runBlocking(self, f, *args, **kwargs):
        """
        See L{IBackend.runBlocking}: at once.
        """
        return defer.maybeDeferred(f, *args, **kwargs)

    def close(self):
        """
        See L{IBackend.close}.
        """
        self.directory.close()
        self.dedupe.close()
        shutil.rmtree(self._queueDir, ignore_errors=True)
