# -*- test-case-name: tests.test_store_maildir -*-
"""
The Maildir++ store: one standard Maildir tree per account, readable by
Dovecot, mutt and mbsync, with a small rebuildable index beside each folder.

This module is past ~800 lines on purpose: the store and the mailbox view
share the folder layout, the file names and the locking rules written
here, and the invariants below hold across both.

Layout::

    root/<domain>/<localpart>/            INBOX (cur/ new/ tmp/)
    root/<domain>/<localpart>/.Sent/      folder "Sent" (with a maildirfolder file)
    root/<domain>/<localpart>/.Lists.Work/  folder "Lists/Work"

The root also holds C{.mdpy-uidvalidity} (see L{mdpy.backends.files.maildirindex}),
and, for a moment, C{.deleting.<unique>}: a tree being deleted (see
L{MaildirStore._removeTree}); a leading dot is no domain's name.

Folder levels are stored in modified UTF-7 (RFC 3501 section 5.1.3), as
Dovecot does.  The domain and local part are lowercased; C{%}, C{/}, NUL and a
leading C{.} in them are written as C{%XX} so no address can escape the root.

Message files are named C{<seconds>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<size
with CR LF line endings>} (Dovecot's fields), with
the Maildir info suffix C{:2,<flags>} once in C{cur/}.  The index beside each
folder, its file format and its locking are described in
L{mdpy.backends.files.maildirindex}.

Invariants: a L{MaildirMailbox}'s view (L{MaildirMailbox.messages} and its
counters) changes only in L{MaildirMailbox.sync} or when a Deferred of its own
C{append}, C{changeFlags} or C{expunge} fires, on the reactor thread; the work
itself is done under the folder lock in a worker thread (a sync that finds
the folder as its index says reads it without the lock), and a view never
goes back to an older HIGHESTMODSEQ of the same UIDVALIDITY.
"""

import errno
import functools
import itertools
import hashlib
import os
import re
import shutil
import socket
import sqlite3
import time
import weakref
from bisect import bisect_left
from contextlib import contextmanager

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from mdpy import mutf7
from mdpy.address import normaliseDomain
from mdpy.dotstuffing import NormalisedSizeCounter, normaliseLineEndings, normalisedFileSize
from mdpy.durable import fsyncDirectory, unlinkQuietly, writeFileAtomically, writeParts
from mdpy.errors import Exists, InvalidInput, LimitExceeded, NotFound, storageFailure
from mdpy.logs import Logger
from mdpy.quota import Usage
from mdpy.interfaces import IMailbox, IMailStore, IMessageCache, IStoredMessage
from mdpy.mailbox import (
    DELETED,
    REMOVE,
    REPLACE,
    SPECIAL_FOLDERS,
    FlagShorthand,
    StoredFlags,
    accountKey,
    changedFlags,
    encodedFolderName,
    normaliseFlags,
    normaliseFolderName,
    storableFlags,
)
from mdpy.backends.local import ChangeFeed, StoreListeners
from mdpy.backends.files.committer import commitBatch, writerFor
from mdpy.backends.files.maildirindex import (
    ChangesHeard,
    FolderIndex,
    LockHeld,
    ParsedIndexes,
    Syncs,
    flagsFromInfo,
    infoForFlags,
    lastUidValidity,
    raiseUidValidity,
)

SUBSCRIPTIONS_NAME = "subscriptions"
CACHE_NAME = "mdpy-cache.sqlite"

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 65536
# Messages up to this many octets in all are appended without a worker
# thread, when the kernel runs the syncs (L{MaildirMailbox.appendMany}).
APPEND_HERE_SIZE = 1 << 20
# Seconds the writes to a folder's cache wait to be made together.
CACHE_WRITE_DELAY = 1.0
# Linux: a read that fails instead of waiting for the disk (preadv2(2)).
_NOWAIT = getattr(os, "RWF_NOWAIT", None)
_counter = itertools.count(1)
_stateSerial = itertools.count(1)
_log = Logger()


def _escapeHost(host):
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


_HOST = _escapeHost(socket.gethostname())


def _closeSyncs(result, syncs):
    """
    Close what L{Syncs} held open, on the thread that opened it; pass
    C{result} on.
    """
    syncs.close()
    return result


def uniqueName(now=None):
    """
    A new Maildir base name, C{<seconds>.M<usec>P<pid>Q<counter>.<host>}.
    The host name has C{/}, C{:} and C{,} escaped as C{\\057}, C{\\072},
    C{\\054}; the pid is read now, so a forked process makes its own names.
    """
    if now is None:
        now = time.time()
    seconds = int(now)
    return "%d.M%dP%dQ%d.%s" % (
        seconds, int((now - seconds) * 1000000), os.getpid(), next(_counter), _HOST,
    )


# --- names ------------------------------------------------------------------


def _folderDirName(name):
    """
    @return: the directory of folder C{name} inside the account, C{""} for
        INBOX.  C{name} is normalised.
    """
    if name == "INBOX":
        return ""
    return encodedFolderName(name)


def _folderNameFromDir(dirName):
    return "/".join(mutf7.decode(level) for level in dirName[1:].split("."))


def _escapeComponent(text):
    text = text.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    if text.startswith("."):
        text = "%2E" + text[1:]
    return text


# --- disk helpers -----------------------------------------------------------


@contextmanager
def _folderErrors(what):
    """
    Report an I/O error of a folder operation as a store error: a path the
    file system finds too long as L{LimitExceeded}, any other as
    L{storageFailure} says.
    """
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise LimitExceeded("%s: %s" % (what, e.strerror)) from e
        raise storageFailure(what, e) from e


def _makeMaildir(path, folder):
    os.makedirs(path, 0o700, exist_ok=True)
    for sub in ("cur", "tmp"):
        os.makedirs(os.path.join(path, sub), 0o700, exist_ok=True)
    if folder:
        os.close(os.open(os.path.join(path, "maildirfolder"), os.O_WRONLY | os.O_CREAT, 0o600))
    # new/ last: its presence means the folder is complete.
    os.makedirs(os.path.join(path, "new"), 0o700, exist_ok=True)


# The Maildir specification: a file in tmp/ untouched for 36 hours is left
# over from a crash.
STALE_TMP_AGE = 36 * 3600


def _scanDirs(path):
    try:
        with os.scandir(path) as entries:
            return [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def removeStaleTmpFiles(root, maxAge=STALE_TMP_AGE, now=None):
    """
    Remove what a crash left in the C{tmp/} folders of every Maildir under
    C{root} (C{root/<domain>/<localpart>/} and its C{.Folder}s): the files
    neither read nor changed for C{maxAge} seconds.

    Not every file of C{tmp/} can go, even at the server's start: another
    process may be writing a message there at this moment (C{mdpy domainpop
    run} beside the server, a migration tool) and nothing but age tells its
    file from a dead server's.  Such a file lives for a fraction of a
    second, so the Maildir specification's 36 hours keep it safe.

    @return: the paths removed.
    """
    if now is None:
        now = time.time()
    removed = []
    for domain in _scanDirs(root):
        for account in _scanDirs(domain):
            folders = [account] + [p for p in _scanDirs(account) if os.path.basename(p).startswith(".")]
            for folder in folders:
                tmp = os.path.join(folder, "tmp")
                try:
                    entries = list(os.scandir(tmp))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                        if entry.is_dir(follow_symlinks=False):
                            continue
                        if now - max(info.st_mtime, info.st_atime) < maxAge:
                            continue
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        continue
                    removed.append(entry.path)
    return removed


_WIRE_SIZE = re.compile(r",W=([0-9]+)")
_STORED_SIZE = re.compile(r",S=([0-9]+)")


def _countFolder(path):
    """
    @return: C{(octets, messages)} of the messages in C{cur/} and C{new/} of
        the folder at C{path}: sizes read from the C{,S=} of their names
        (Maildir++), a file named without one measured.
    """
    storage = messages = 0
    for sub in ("cur", "new"):
        try:
            entries = os.scandir(os.path.join(path, sub))
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                match = _STORED_SIZE.search(entry.name)
                if match is not None:
                    size = int(match.group(1))
                else:
                    try:
                        size = entry.stat().st_size
                    except FileNotFoundError:
                        continue
                storage += size
                messages += 1
    return storage, messages


def wireSizeFromName(key):
    """
    @return: the C{,W=} size in a Maildir base name, or L{None}.
    """
    match = _WIRE_SIZE.search(key)
    return int(match.group(1)) if match else None


def keyedName(key, account, folder, tag=None):
    """
    The Maildir base name of a copy of a keyed delivery (L{IMailStore.deliver}
    with C{key}): the same for the same key, account, folder and C{tag} (what
    tells apart several copies of one delivery in one folder), so a repeated
    delivery can find the copy it made before.
    """
    seconds, text = key
    fields = (text, account, folder) if tag is None else (text, account, folder, tag)
    digest = hashlib.sha256("\0".join(fields).encode("utf-8")).hexdigest()
    return "%d.K%s.%s" % (int(seconds), digest[:32], _HOST)


def _alreadyStored(folderPath, base):
    for sub in ("new", "cur"):
        try:
            names = os.listdir(folderPath + "/" + sub)
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith(base) and name[len(base):len(base) + 1] in (",", ":", ""):
                return True
    return False


def _prepareCopies(targets):
    """
    Write each C{(folderPath, parts[, base, again])} to its C{tmp/} and fsync
    it, named C{base} when one is given (a keyed delivery); with C{again},
    a copy whose C{base} is in the folder already is skipped.  Runs in a
    worker thread.

    @return: C{[(tmpPath, finalPath)]}, the final paths in C{new/}.
    @raise NotFound: a folder has no C{new/}.
    @raise TemporaryFailure: an I/O error; nothing is left behind.
    """
    now = time.time()
    written, finals = [], []
    step = "deliver"
    try:
        for target in targets:
            folderPath, parts = target[:2]
            keyed = target[2] if len(target) > 2 else None
            if keyed is not None and target[3] and _alreadyStored(folderPath, keyed):
                continue
            while True:
                base = keyed or uniqueName(now)
                tmpPath = folderPath + "/tmp/" + base
                step = "create " + tmpPath
                try:
                    fd = os.open(tmpPath, _CREATE, 0o600)
                    break
                except FileExistsError:
                    if keyed is not None:
                        unlinkQuietly(tmpPath)  # left by a crash
                    continue
                except FileNotFoundError:
                    if not os.path.isdir(folderPath + "/new"):
                        raise NotFound("no such mailbox: %s" % (folderPath,))
                    raise
            written.append(tmpPath)
            try:
                step = "write " + tmpPath
                size = writeParts(fd, parts, _CHUNK)
                step = "fsync " + tmpPath
                os.fsync(fd)
            finally:
                os.close(fd)
            # Deliveries are CR LF already: the wire size is the file size.
            finals.append("%s/new/%s,S=%d,W=%d" % (folderPath, base, size, size))
    except BaseException as e:
        for path in written:
            unlinkQuietly(path)
        if isinstance(e, OSError):
            raise storageFailure(step, e) from e
        raise
    return list(zip(written, finals))


def _writeCopies(targets):
    """
    Commit one delivery in the calling thread: L{_prepareCopies}, rename into
    C{new/}, fsync each C{new/}; all or nothing.
    """
    [failure] = commitBatch(_prepareCopies, [targets])
    if failure is not None:
        failure.raiseException()


def _cacheConnection(path, **options):
    """
    A connection to a folder's cache that never waits for the disk, and
    whose rollback journal is emptied rather than removed after each
    write: making and removing a file for every entry cost the most of a
    write (a new inode each time), on the reactor thread.
    """
    connection = sqlite3.connect(path, isolation_level=None, **options)
    connection.execute("PRAGMA synchronous=OFF")
    connection.execute("PRAGMA journal_mode=TRUNCATE")
    return connection


def _openCache(path):
    connection = _cacheConnection(path, check_same_thread=False)
    connection.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, data BLOB)")
    return connection


# --- messages and mailboxes -------------------------------------------------


def _locate(folderPath, key):
    for sub in ("cur", "new"):
        directory = os.path.join(folderPath, sub)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if name == key or name.startswith(key + ":"):
                return os.path.join(directory, name)
    raise NotFound("message %s is gone" % (key,))


@implementer(IStoredMessage)
class MaildirMessage:
    """
    One message file.  See L{IStoredMessage}.
    """

    def __init__(self, folderPath, uid, key, filename, flags, modSeq, size=None, runInThread=None):
        self.uid = uid
        self.key = key
        self.filename = filename
        self.flags = flags
        self.modSeq = modSeq
        self._folderPath = folderPath
        self._size = size
        self._internalDate = None
        self._runInThread = runInThread

    def _stat(self):
        path = os.path.join(self._folderPath, "cur", self.filename)
        try:
            return os.stat(path)
        except FileNotFoundError:
            return os.stat(_locate(self._folderPath, self.key))

    @property
    def size(self):
        """
        The size with CR LF line endings: the C{,W=} field of the name (as
        mdpy and Dovecot write it), else counted from the file once per
        message object, since mail from other programs (Postfix, an rsync of
        an old server) may have bare LF line endings.  Their names are never
        changed: a later rsync pass would copy them again.
        """
        if self._size is None:
            self._size = wireSizeFromName(self.key)
            if self._size is None:
                with self.openFile() as file:
                    self._size = normalisedFileSize(file)
        return self._size

    @property
    def internalDate(self):
        if self._internalDate is None:
            self._internalDate = self._stat().st_mtime
        return self._internalDate

    def open(self):
        """
        See L{IStoredMessage.open}: L{openFile} in the store's thread pool.
        """
        return self._runInThread(self.openFile)

    def read(self):
        """
        See L{IStoredMessage.read}: from the page cache at once when the
        kernel can read the whole file without waiting for the disk
        (C{RWF_NOWAIT}), else L{readFile} in the store's thread pool.
        """
        try:
            data = self._readCached()
        except OSError:
            data = None
        if data is not None:
            return defer.succeed(data)
        return self._runInThread(self.readFile)

    def _readCached(self):
        """
        @return: the octets of the message (as L{readFile} gives them) if
            all of them are in the page cache, else L{None}: also when the
            file is not where the last sync saw it, as finding it again
            lists directories.
        """
        if _NOWAIT is None:
            return None
        # A bare descriptor: a Python file object costs more than the read.
        try:
            fd = os.open(os.path.join(self._folderPath, "cur", self.filename), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            buffer = bytearray(size)
            try:
                read = os.preadv(fd, [buffer], 0, _NOWAIT)
            except BlockingIOError:
                return None
        finally:
            os.close(fd)
        if read != size:
            return None
        data = bytes(buffer)
        if size != self.size:
            data = normaliseLineEndings(data)
        return data

    def readFile(self):
        """
        @return: the octets of the message with CR LF line endings, in the
            calling thread; a file other programs wrote with bare LF line
            endings is normalised.
        @raise mdpy.errors.NotFound: it was removed meanwhile.
        """
        with self.openFile() as file:
            data = file.read()
        if len(data) != self.size:
            data = normaliseLineEndings(data)
        return data

    def openFile(self):
        """
        @return: the message file, opened for reading in the calling thread.
            A file renamed by another program since the last sync is found
            again by its key.
        """
        try:
            return open(os.path.join(self._folderPath, "cur", self.filename), "rb")
        except FileNotFoundError:
            return open(_locate(self._folderPath, self.key), "rb")

    def __repr__(self):
        return "<MaildirMessage uid=%d %s>" % (self.uid, self.filename)


class _State:
    """
    A consistent view of a folder, as of one locked transaction.

    @ivar claimed: the UIDs the transaction claimed for the view.
    @ivar seen: the latest C{uidList.seen} (see L{FolderIndex.transact}) it
        was found current at, by any view that holds it; L{None} if none.
    """

    def __init__(self, serial, uidValidity, uidNext, highestModSeq, messages, keywords,
                 recentThreshold=0, claimed=(), byUid=None):
        self.serial = serial
        self.uidValidity = uidValidity
        self.uidNext = uidNext
        self.highestModSeq = highestModSeq
        self.messages = messages
        self.byUid = {message.uid: message for message in messages} if byUid is None else byUid
        self.keywords = keywords
        self.recentThreshold = recentThreshold
        self.claimed = claimed
        self.seen = None


_EMPTY = _State(0, 0, 1, 0, [], ())


def _uidOf(message):
    return message.uid


def _later(seen, than):
    """
    @return: whether C{seen} (see L{FolderIndex.transact}) says a state is
        current later than C{than} does.
    """
    if seen is None or seen[0] is None:
        return False
    return than is None or than[0] is None or (seen[0], seen[2]) > (than[0], than[2])


@implementer(IMailbox, IMessageCache)
class MaildirMailbox(FlagShorthand):
    """
    One Maildir folder.  See L{IMailbox} and the module docstring for the
    index and its invariants.

    @ivar path: the folder's directory.
    """

    def __init__(self, store, account, name, accountPath, path):
        self.name = name
        self.path = path
        self._store = store
        self._account = account
        self._accountPath = accountPath
        self._state = _EMPTY
        self._index = FolderIndex(path, accountPath, "%s of %s" % (name, account), store.root,
                                  store._parsedIndexes, store.changesHeard)
        # What the state is current at (FolderIndex.isCurrent).
        self._seen = None
        self._pendingFlags = []
        self._flagJobRunning = False
        self._cache = None
        self._claiming = False
        self._claimed = set()

    uidValidity = property(lambda self: self._state.uidValidity)
    uidNext = property(lambda self: self._state.uidNext)
    highestModSeq = property(lambda self: self._state.highestModSeq)
    recentThreshold = property(lambda self: self._state.recentThreshold)

    def __repr__(self):
        return "<MaildirMailbox %s %s>" % (self._account, self.name)

    def _transact(self, operation=None):
        """
        See L{FolderIndex.transact}; runs in the calling (or a worker) thread.

        @return: C{(state, operation's result)}.
        """
        return self._index.transact(operation, self._buildSeen, self._claiming)

    def _buildSeen(self, uidList, files, keywords):
        """
        @return: C{(state, seen)}: L{_buildState}, and what it is current
            at (C{uidList.seen}, see L{FolderIndex.transact}).
        """
        return self._buildState(uidList, files, keywords), uidList.seen

    def _buildState(self, uidList, files, keywords):
        """
        @return: the L{_State} of what a transaction or a snapshot read:
            the view's own or another view's of this folder when the index
            is as it was for that one (every change of a message raises
            HIGHESTMODSEQ), else one made anew, with the messages that did
            not change taken from the view's (L{_changedMessages}, else
            L{_allMessages}).
        """
        previous = self._state
        names = tuple(keywords.names)
        version = (uidList.uidValidity, uidList.uidNext, uidList.highestModSeq, uidList.recentThreshold, names)
        built = self._store._builtStates
        if not uidList.claimed:
            for state in (previous, built.get(self.path)):
                if state is not None and state.uidValidity and not state.claimed and version == (
                        state.uidValidity, state.uidNext, state.highestModSeq, state.recentThreshold,
                        state.keywords):
                    return state
        changed = self._changedMessages(previous, uidList, files, keywords, names)
        messages, byUid = changed if changed is not None else (
            self._allMessages(previous, uidList, files, keywords, names), None)
        state = _State(next(_stateSerial), uidList.uidValidity, uidList.uidNext, uidList.highestModSeq,
                       messages, names, uidList.recentThreshold, uidList.claimed, byUid)
        if not uidList.claimed:
            built[self.path] = state
        return state

    def _allMessages(self, previous, uidList, files, keywords, names):
        """
        @return: the messages of every entry, those of the view's state that
            did not change kept as they are.
        """
        reuse = previous.byUid if previous.keywords == names else {}
        flagsByInfo = {}
        messages = []
        for key, (uid, modSeq, info, size) in uidList.entries.items():
            name = files[key]
            message = reuse.get(uid)
            if message is None or message.filename != name or message.modSeq != modSeq:
                flags = flagsByInfo.get(info)
                if flags is None:
                    flags = flagsByInfo[info] = flagsFromInfo(info, keywords)
                message = MaildirMessage(
                    self.path, uid, key, name, flags, modSeq, size, self._store._runInThread
                )
            messages.append(message)
        return messages

    def _changedMessages(self, previous, uidList, files, keywords, names):
        """
        The messages of a transaction's state made from the view's, when
        the transaction read the index the view's state was made from and
        only changed entries, added ones above them or removed ones (flags
        changed, messages added or expunged): the others are the view's as
        they are.

        @return: C{(messages, byUid)}, or L{None} when the whole state must
            be made.
        """
        entries = uidList.entries
        changed = getattr(entries, "changed", None)
        if changed is None or previous.keywords != names or getattr(
                uidList, "readAt", None) != (previous.uidValidity, previous.uidNext, previous.highestModSeq):
            return None
        messages = list(previous.messages)
        byUid = dict(previous.byUid)
        if entries.removed:
            # Removed by this transaction: each noted in its tombstones.
            if len(uidList.expunged) != len(entries.removed):
                return None
            for uid in uidList.expunged:
                message = byUid.pop(uid, None)
                if message is None or message.key not in entries.removed:
                    return None
                del messages[bisect_left(messages, uid, key=_uidOf)]
        added = []
        for key in changed:
            uid, modSeq, info, size = entries[key]
            message = MaildirMessage(self.path, uid, key, files[key], flagsFromInfo(info, keywords), modSeq,
                                     size, self._store._runInThread)
            old = byUid.get(uid)
            byUid[uid] = message
            if old is None:
                added.append(message)
            else:
                messages[bisect_left(messages, uid, key=_uidOf)] = message
        if added:
            added.sort(key=_uidOf)
            if messages and added[0].uid <= messages[-1].uid:
                return None
            messages.extend(added)
        return messages, byUid

    def _install(self, outcome, sync=False):
        """
        Take in the state a transaction built, if newer than the view's.
        Only L{sync} takes in another UIDVALIDITY (an index rebuilt, the
        account made again): until then, the view's UIDs stay those it
        gave out, and changes by them find nothing (see L{_applyFlags}).

        @return: the transaction's result.
        """
        (state, seen), result = outcome
        current = self._state
        if state.uidValidity == current.uidValidity:
            # Each index written raises HIGHESTMODSEQ: a state built without
            # the lock (L{sync}) may be older than one built after it.
            newer = (state.highestModSeq, state.serial) > (current.highestModSeq, current.serial)
        else:
            newer = state.serial > current.serial and (sync or current.uidValidity == 0)
        if newer:
            self._state = state
            self._seen = seen
        elif state is current and _later(seen, self._seen):
            # The same state, found current later.
            self._seen = seen
        if _later(seen, state.seen):
            state.seen = seen
        if state.claimed and state.uidValidity == self._state.uidValidity:
            # Kept even when a newer state was installed first: that one
            # holds these messages, claimed before it was built.
            self._claimed.update(state.claimed)
        return result

    def _notify(self, result):
        self._store._notify(self._account, self.name)
        return result

    # IMessageCache

    def _cacheConnection(self):
        if self._cache is None:
            path = os.path.join(self.path, CACHE_NAME)
            try:
                self._cache = _openCache(path)
            except sqlite3.Error as e:
                # A damaged cache is thrown away and made again.
                _log.warn("cache {path} unusable ({error}); rebuilding it", path=path, error=e)
                unlinkQuietly(path)
                self._cache = _openCache(path)
        return self._cache

    def cachedData(self, key):
        """
        See L{IMessageCache.cachedData}.  Entries live in C{mdpy-cache.sqlite}
        in the folder directory.
        """
        waiting = self._store._cacheWrites.get(self.path)
        if waiting and key in waiting:
            return waiting[key]
        try:
            row = self._cacheConnection().execute(
                "SELECT data FROM cache WHERE key = ?", (key,)
            ).fetchone()
        except sqlite3.Error as e:
            _log.warn("cache of {mailbox}: {error}", mailbox=self, error=e)
            return None
        return None if row is None else bytes(row[0])

    def cacheData(self, key, data):
        """
        See L{IMessageCache.cacheData}.
        """
        if self._store.gatherCacheWrites(self.path, {key: data}):
            return
        try:
            self._cacheConnection().execute(
                "INSERT OR REPLACE INTO cache (key, data) VALUES (?, ?)", (key, data)
            )
        except sqlite3.Error as e:
            _log.warn("cache of {mailbox}: {error}", mailbox=self, error=e)

    def _forgetCached(self, keys):
        """
        Drop the cache entries of removed message files, outside the folder
        lock and without waiting for the disk: an entry left behind by a
        crash is never read again, as no file is ever named by a removed
        key again.
        """
        if not keys or self._store.gatherCacheWrites(self.path, dict.fromkeys(keys)):
            return
        if self._cache is None and not os.path.exists(os.path.join(self.path, CACHE_NAME)):
            return
        # The view's own connection where SQLite is built to let threads
        # share one (serialized), rather than one opened for each removal.
        shared = sqlite3.threadsafety == 3
        try:
            connection = self._cacheConnection() if shared else _cacheConnection(
                os.path.join(self.path, CACHE_NAME))
            try:
                connection.executemany("DELETE FROM cache WHERE key = ?", [(k,) for k in keys])
            finally:
                if not shared:
                    connection.close()
        except sqlite3.Error:
            pass

    # IMailbox

    def sync(self):
        """
        See L{IMailbox.sync}.  Synchronous.  When the folder is as its index
        says, the view is read without the folder lock
        (L{FolderIndex.snapshot}), so it never waits for another session's
        write to reach the disk.
        """
        if not self.syncFromSnapshot():
            self._install(self._transact(), sync=True)

    def syncFromSnapshot(self):
        """
        The half of L{sync} that needs no lock and writes nothing: a few
        small reads (L{FolderIndex.snapshot}), quick enough for the reactor
        thread.

        @return: whether the view is now what L{sync} would make it; when
            not, only L{sync} can tell.
        @raise NotFound: the folder is gone.
        """
        built = self._index.snapshot(self._buildSeen, self._claiming)
        if built is None:
            return False
        self._install((built, None), sync=True)
        return True

    def isCurrent(self):
        """
        @return: whether the view is what L{sync} would make it, known
            without reading the folder: the change feed watches it and
            heard nothing since the view was read but the view's own
            changes (L{FolderIndex.isCurrent}); or the same holds for the
            state another view of the folder made last, which this view
            then takes.  Only on the reactor thread.
        """
        if self._index.isCurrent(self._seen):
            return True
        # Another view's state, current: a view just opened (STATUS,
        # SELECT) takes it without reading the folder.
        shared = self._store._builtStates.get(self.path)
        if shared is None or shared is self._state or shared.seen is None or (
                self._claiming and shared.recentThreshold < shared.uidNext - 1):
            return False
        if not self._index.isCurrent(shared.seen):
            return False
        self._install(((shared, shared.seen), None), sync=True)
        return self._state is shared

    def messages(self):
        """
        See L{IMailbox.messages}.
        """
        return list(self._state.messages)

    def claimRecent(self):
        """
        See L{IMailbox.claimRecent}.  The index keeps the highest UID
        claimed, read and advanced under the folder lock; from this call
        on, each transaction of this view claims (L{FolderIndex.transact}).
        When the view holds no message above that UID, nothing is
        written: messages that come later are claimed by the transaction
        that takes them in.
        """
        self._claiming = True
        state = self._state
        if state.uidValidity and state.recentThreshold >= state.uidNext - 1:
            return defer.succeed([])
        d = self._store._runInThread(self._transact)
        d.addCallback(self._cbClaimed)
        return d

    def _cbClaimed(self, outcome):
        self._install(outcome, sync=True)
        return list(outcome[0][0].claimed)

    def claimedUids(self):
        """
        See L{IMailbox.claimedUids}.
        """
        return frozenset(self._claimed)

    def append(self, data, flags=(), internalDate=None):
        """
        See L{IMailbox.append}.  The file goes straight into C{cur/}; a
        file given is copied in chunks in a worker thread.
        """
        d = self.appendMany([(data, flags, internalDate)])
        d.addCallback(lambda uids: uids[0])
        return d

    def appendMany(self, messages):
        """
        See L{IMailbox.appendMany}.  Each message is written and synced to
        C{tmp/} first; then, in one locked transaction, all are moved into
        C{cur/} and given their UIDs in one index write; any failure
        removes every file, so the index never names a message of a
        failed call.  Messages held in memory, up to L{APPEND_HERE_SIZE}
        octets in all, are written on the calling thread when the store
        has L{MaildirStore.kernelSyncs} (L{_appendHere}); others in a
        worker thread.
        """
        prepared = []
        size = 0
        for data, flags, internalDate in messages:
            parts = data if isinstance(data, list) else [data]
            parts = [part if hasattr(part, "read") else bytes(part) for part in parts]
            size += sum(len(part) if isinstance(part, bytes) else APPEND_HERE_SIZE + 1 for part in parts)
            prepared.append((parts, normaliseFlags(flags), internalDate))
        if self._store.kernelSyncs is not None and size <= APPEND_HERE_SIZE:
            d = self._appendHere(prepared)
        else:
            d = self._store._runInThread(self._appendInThread, prepared)
        d.addCallback(self._install)
        d.addCallback(self._notify)
        return d

    def _appendInThread(self, messages):
        written = []
        placed = []
        try:
            self._writeMessages(messages, written)
            return self._transact(self._placer(written, placed))
        except BaseException as e:
            self._appendFailed(e, written, placed)

    def _appendHere(self, messages):
        """
        L{appendMany} without a worker thread: the files are written here,
        the kernel syncs them (L{MaildirStore.kernelSyncs}), then the
        transaction runs here too when the folder lock is free
        (L{_transactHere}), else in a worker thread.
        """
        written = []
        placed = []
        fds = []

        def closeFiles(result):
            for fd in fds:
                os.close(fd)
            del fds[:]
            return result

        def transact(_):
            operation = self._placer(written, placed)
            d = self._transactHere(operation)
            return self._store._runInThread(self._transact, operation) if d is None else d

        def failed(failure):
            self._appendFailed(failure.value, written, placed)

        try:
            self._writeMessages(messages, written, fds)
        except BaseException:
            d = defer.fail()
            closeFiles(None)
        else:
            d = self._store.kernelSyncs.sync([(fd, False) for fd in fds])
            d.addBoth(closeFiles)
            d.addCallback(transact)
        d.addErrback(failed)
        return d

    def _writeMessages(self, messages, written, fds=None):
        """
        Write each of C{messages} to a file of C{tmp/}, listed in
        C{written} as C{(path, base, size, wireSize, flags)} as soon as it
        is made, and synced; or, with C{fds}, left open there for the
        caller to sync.
        """
        for parts, flags, internalDate in messages:
            base = uniqueName()
            tmpPath = os.path.join(self.path, "tmp", base)
            wireSize = NormalisedSizeCounter()
            fd = os.open(tmpPath, _CREATE, 0o600)
            try:
                written.append((tmpPath, base, None, None, flags))
                size = writeParts(fd, parts, _CHUNK, observe=wireSize.feed)
                if internalDate is not None:
                    os.utime(fd, (internalDate, internalDate))
                if fds is None:
                    os.fsync(fd)
            finally:
                if fds is None:
                    os.close(fd)
                else:
                    fds.append(fd)
            written[-1] = (tmpPath, base, size, wireSize.finish(), flags)

    def _placer(self, written, placed):
        """
        @return: the operation of a transaction moving the files of
            C{written} (L{_writeMessages}) into C{cur/}, each path listed
            in C{placed} once there; its result is their UIDs.
        """
        def place(uidList, files, keywords):
            uids = []
            for tmpPath, base, size, wireSize, flags in written:
                key = "%s,S=%d,W=%d" % (base, size, wireSize)
                info = infoForFlags(flags, keywords)
                final = os.path.join(self.path, "cur", key + ":" + info)
                self._index.place(tmpPath, final)
                placed.append(final)
                files[key] = key + ":" + info
                uids.append(uidList.add(key, info, wireSizeFromName(key)))
            uidList.unsynced.add(os.path.join(self.path, "cur"))
            return uids

        return place

    def _appendFailed(self, e, written, placed):
        """
        Remove every file an append made, and raise what it failed with as
        the store tells of it.
        """
        for path in [entry[0] for entry in written] + placed:
            unlinkQuietly(path)
        if isinstance(e, FileNotFoundError):
            raise NotFound("mailbox %s of %s is gone" % (self.name, self._account)) from e
        if isinstance(e, OSError):
            raise storageFailure("append to " + self.path, e) from e
        raise e

    def changeFlags(self, uids, flags, mode=REPLACE, unchangedSince=None):
        """
        See L{IMailbox.changeFlags}.  Under the folder lock, each message's
        current flags are read from its file name (a rename by another
        session or program since the last sync is seen), changed, and the
        file renamed.  Calls made while one is being written are committed
        together in one locked transaction and one index write, in the
        order they were made.
        """
        changedFlags(frozenset(), (), mode)  # an unknown mode fails here
        d = defer.Deferred()
        self._pendingFlags.append((tuple(uids), normaliseFlags(flags), mode, unchangedSince, d))
        if not self._flagJobRunning:
            self._startFlagJob()
        return d

    def _startFlagJob(self):
        batch, self._pendingFlags = self._pendingFlags, []
        self._flagJobRunning = True
        operation = functools.partial(self._applyFlags, batch)
        d = self._transactHere(operation) if self._store.transactsOnCaller else None
        if d is None:
            d = self._store._runInThread(self._transact, operation)
        d.addBoth(self._flagJobDone, batch)

    def _transactHere(self, operation):
        """
        Run the locked transaction of C{operation} on the calling thread
        when the folder lock is free, leaving only its syncs to
        L{MaildirStore.runSyncs} (L{FolderIndex.transact} with L{Syncs}):
        a flag change is a few renames and a line appended to the log, an
        expunge a few removals, less work than handing it to a thread and
        back.

        @return: a Deferred firing with the transaction's outcome once it
            is durable, or L{None} when another transaction holds the lock
            (then it is for a worker thread to wait).
        """
        syncs = Syncs()
        try:
            outcome = self._index.transact(operation, self._buildSeen, self._claiming, syncs)
        except LockHeld:
            return None
        except Exception:
            syncs.close()
            return defer.fail()
        d = self._store.runSyncs(self._index, syncs)
        d.addBoth(_closeSyncs, syncs)
        d.addCallback(lambda _: outcome)
        return d

    def _applyFlags(self, batch, uidList, files, keywords):
        """
        Apply each change of C{batch} in turn; runs under the folder lock.

        @return: for each change, its L{IMailbox.changeFlags} result or the
            exception it failed with.
        """
        if self._state.uidValidity not in (0, uidList.uidValidity):
            # The index was rebuilt: the UIDs asked for name other messages now.
            keyOf = {}.get
        else:
            keyOf = self._keyOf(uidList.entries)
        return [
            self._applyOneChange(change, keyOf, uidList, files, keywords)
            for change in batch
        ]

    def _keyOf(self, entries):
        """
        @param entries: the entries of the index, as a transaction read it
            (of the view's UIDVALIDITY).
        @return: a function giving the key the index has for a UID, or
            L{None}: through the view's messages (a key is the same
            message's as long as the index has it), else from every entry,
            once.
        """
        byUid = self._state.byUid
        everyEntry = None

        def keyOf(uid):
            nonlocal everyEntry
            message = byUid.get(uid)
            if message is not None:
                entry = entries.get(message.key)
                return message.key if entry is not None and entry[0] == uid else None
            if everyEntry is None:
                everyEntry = {entry[0]: key for key, entry in entries.items()}
            return everyEntry.get(uid)

        return keyOf

    def _applyOneChange(self, change, keyOf, uidList, files, keywords):
        uids, flags, mode, unchangedSince, _ = change
        if mode != REMOVE:
            try:
                keywords.reserve([flag for flag in storableFlags(flags) if not flag.startswith("\\")])
            except InvalidInput as e:
                return e
        cur = os.path.join(self.path, "cur")
        results = {}
        for uid in uids:
            key = keyOf(uid)
            if key is None:
                continue
            _, modSeq, info, size = uidList.entries[key]
            current = flagsFromInfo(info, keywords)
            refused = unchangedSince is not None and modSeq > unchangedSince
            new = info if refused else infoForFlags(changedFlags(current, flags, mode), keywords, info)
            if refused or (new == info and unchangedSince is None):
                results[uid] = StoredFlags(current, modSeq, False)
                continue
            if new != info:
                old = files[key]
                self._index.rename(os.path.join(cur, old), os.path.join(cur, key + ":" + new))
                files[key] = key + ":" + new
                uidList.unsynced.add(cur)
            modSeq = uidList.nextModSeq()
            uidList.entries[key] = (uid, modSeq, new, size)
            results[uid] = StoredFlags(flagsFromInfo(new, keywords), modSeq, True)
        return results

    def _flagJobDone(self, outcome, batch):
        self._flagJobRunning = False
        if isinstance(outcome, Failure):
            results = [outcome] * len(batch)
        else:
            results = self._install(outcome)
            if any(not isinstance(r, Exception) and any(f.changed for f in r.values()) for r in results):
                self._notify(None)
        for change, result in zip(batch, results):
            d = change[-1]
            if isinstance(result, (Exception, Failure)):
                d.errback(result)
            else:
                d.callback(result)
        if self._pendingFlags and not self._flagJobRunning:
            self._startFlagJob()

    def expunge(self, uids, deletedOnly=False):
        """
        See L{IMailbox.expunge}.  With C{deletedOnly}, the flags are read
        from the file names under the folder lock.
        """
        d = self._expungeHere(frozenset(uids), deletedOnly) if self._store.kernelSyncs is not None else None
        if d is None:
            d = self._store._runInThread(self._expungeInThread, frozenset(uids), deletedOnly)
        d.addCallback(self._install)
        d.addCallback(self._notify)
        return d

    def _expungeHere(self, uids, deletedOnly):
        """
        L{expunge}'s transaction on the calling thread, its syncs left to
        the kernel (L{_transactHere}).

        @return: a Deferred firing with the transaction's outcome, or
            L{None} when another transaction holds the folder lock.
        """
        removedKeys = []
        d = self._transactHere(self._expungeLocked(uids, deletedOnly, removedKeys))
        if d is not None:
            d.addCallback(lambda outcome: (self._forgetCached(removedKeys), outcome)[1])
        return d

    def _expungeInThread(self, uids, deletedOnly):
        removedKeys = []
        outcome = self._transact(self._expungeLocked(uids, deletedOnly, removedKeys))
        self._forgetCached(removedKeys)
        return outcome

    def _expungeLocked(self, uids, deletedOnly, removedKeys):
        """
        @param removedKeys: a list the keys of the removed files are added to.
        """
        def remove(uidList, files, keywords):
            if self._state.uidValidity not in (0, uidList.uidValidity):
                # The index was rebuilt, or the account made again: the UIDs
                # asked for name other messages now.
                return []
            cur = os.path.join(self.path, "cur")
            keyOf = self._keyOf(uidList.entries)
            removed = []
            for uid in sorted(uids):
                key = keyOf(uid)
                if key is None:
                    continue
                info = uidList.entries[key][2]
                if not deletedOnly or DELETED in flagsFromInfo(info, keywords):
                    try:
                        self._index.unlink(os.path.join(cur, files.pop(key)))
                    except FileNotFoundError:
                        pass
                    uidList.remove(key)
                    removed.append(uid)
                    removedKeys.append(key)
            if removed:
                uidList.unsynced.add(cur)
                uidList.nextModSeq()
            return removed

        return remove

    def expungedSince(self, modSeq):
        """
        See L{IMailbox.expungedSince}: from the folder's C{mdpy-expunged}
        (L{mdpy.backends.files.maildirindex}), read in a worker thread.
        """
        return self._store._runInThread(self._index.expungedSince, self.uidValidity, modSeq)


# --- the store --------------------------------------------------------------


@implementer(IMailStore)
class MaildirStore:
    """
    Maildir++ trees under C{root}.  See L{IMailStore} and the module
    docstring.

    @param runInThread: C{runInThread(f, *args)} returns a L{Deferred} firing
        with C{f(*args)} run off the reactor thread; by default the global
        reactor's thread pool.
    @ivar changeFeed: the L{IChangeFeed} told of every change made through
        this store, which calls its listeners; by default one that hears
        this process only (replace it before adding listeners).
    @ivar changesHeard: the L{ChangesHeard} of this store's folders, which
        a feed that hears other processes keeps (L{MaildirChangeFeed}).
    """

    def __init__(self, root, runInThread=None, reactor=None, committerThreads=4, archiveRoot=None,
                 groupCommit=None, changeFeed=None, transactsOnCaller=False):
        """
        @param archiveRoot: where L{deleteAccount} and L{deleteDomain} keep
            the mail they take out of the store; by default C{deleted}
            beside C{root}.
        @param runInThread: C{runInThread(f, *args)} returning a Deferred, for
            blocking work; by default the reactor's thread pool.
        @param groupCommit: whether new messages go through a L{Committer}
            (group commit) rather than C{runInThread}; by default when
            C{runInThread} is not given (tests pass a synchronous one that
            does all the work).
        @param changeFeed: the L{mdpy.interfaces.IChangeFeed} told of every
            change; by default one of this process only.
        @param transactsOnCaller: whether flag changes run their locked
            transaction on the calling thread (the reactor's) when the
            folder lock is free, with only their syncs left to
            L{runSyncs} (L{MaildirMailbox._transactHere}); with
            L{kernelSyncs}, so do expunges and appends.
        """
        self.root = os.path.abspath(root)
        if archiveRoot is None:
            archiveRoot = os.path.join(os.path.dirname(self.root), "deleted")
        self.archiveRoot = os.path.abspath(archiveRoot)
        self.changeFeed = ChangeFeed(reactor, accountKey) if changeFeed is None else changeFeed
        self.reactor = reactor
        self.transactsOnCaller = transactsOnCaller
        # Writes to folders' caches waiting: {path: {key: data or None}}.
        self._cacheWrites = {}
        # Runs syncs without a thread (L{kernelSyncs}), when set.
        self.kernelSyncs = None
        self._listeners = StoreListeners()
        self._committer, self._runInThread = writerFor(
            reactor, _prepareCopies, committerThreads, runInThread, groupCommit)
        # Each folder's index as last parsed, shared by its views.
        self._parsedIndexes = ParsedIndexes()
        # Each folder's state as last built, while a view holds it.
        self._builtStates = weakref.WeakValueDictionary()
        # What this process heard of the changes of its folders.
        self.changesHeard = ChangesHeard()

    def __repr__(self):
        return "<MaildirStore %s>" % (self.root,)

    _accountKey = staticmethod(accountKey)

    def gatherCacheWrites(self, path, writes):
        """
        On the reactor thread of a store that has one, the writes to the
        cache of folder C{path} wait in memory, where its views read them
        (L{MaildirMailbox.cachedData}), for up to L{CACHE_WRITE_DELAY}
        seconds; then they go to the file in one transaction
        (L{_writeCache}): an entry made and removed meanwhile, as for a
        message appended, fetched and expunged, costs no write.  Nothing
        that matters is lost if they never do: it is a cache.

        @param writes: C{{key: data}}, L{None} for an entry to remove.
        @return: whether they wait; if not, the caller writes them.
        """
        if self.reactor is None or not isInIOThread():
            return False
        waiting = self._cacheWrites.get(path)
        if waiting is None:
            waiting = self._cacheWrites[path] = {}
            self.reactor.callLater(CACHE_WRITE_DELAY, self._writeCache, path)
        waiting.update(writes)
        return True

    def _writeCache(self, path):
        """
        Write the entries of folder C{path}'s cache waiting
        (L{gatherCacheWrites}) in one transaction: those set, and the
        removals.
        """
        writes = self._cacheWrites.pop(path, {})
        kept = [(key, data) for key, data in writes.items() if data is not None]
        removed = [(key,) for key, data in writes.items() if data is None]
        cache = os.path.join(path, CACHE_NAME)
        if not kept and not os.path.exists(cache):
            return
        try:
            connection = _openCache(cache)
        except sqlite3.Error as e:
            _log.warn("cache {path} unusable ({error}); its views make it again", path=cache, error=e)
            return
        try:
            connection.execute("BEGIN")
            connection.executemany("INSERT OR REPLACE INTO cache (key, data) VALUES (?, ?)", kept)
            connection.executemany("DELETE FROM cache WHERE key = ?", removed)
            connection.execute("COMMIT")
        except sqlite3.Error as e:
            _log.warn("cache {path}: {error}", path=cache, error=e)
        finally:
            connection.close()

    def runSyncs(self, index, syncs):
        """
        Make what a transaction of C{index} left to L{Syncs} durable: by
        L{kernelSyncs} when there is one, else in a worker thread.

        @return: a Deferred firing with L{None} once it is, or failing as
            L{FolderIndex.transact} does.
        """
        if self.kernelSyncs is None:
            return self._runInThread(index.runSyncs, syncs)
        d = self.kernelSyncs.sync(syncs.requests())
        d.addErrback(index.failedSyncs)
        return d

    def accountPath(self, address):
        """
        @return: the directory of C{address}'s INBOX.
        """
        local, _, domain = self._accountKey(address).rpartition("@")
        return os.path.join(self.root, _escapeComponent(domain), _escapeComponent(local))

    def folderPath(self, address, name="INBOX"):
        """
        @return: the directory of folder C{name} of C{address}.
        @raise InvalidInput: a bad folder name.
        """
        dirName = _folderDirName(normaliseFolderName(name))
        path = self.accountPath(address)
        return os.path.join(path, dirName) if dirName else path

    def _existingAccountPath(self, address):
        path = self.accountPath(address)
        if not os.path.isdir(os.path.join(path, "new")):
            raise NotFound("no mailbox for %s" % (address,))
        return path

    def _notify(self, account, folder):
        self.changeFeed.notify(account, folder)

    # IMailStore

    def createAccount(self, address):
        """
        See L{IMailStore.createAccount}.
        """
        path = self.accountPath(address)
        _makeMaildir(path, folder=False)
        for name in SPECIAL_FOLDERS:
            _makeMaildir(os.path.join(path, _folderDirName(name)), folder=True)
        subscriptions = os.path.join(path, SUBSCRIPTIONS_NAME)
        if not os.path.exists(subscriptions):
            writeFileAtomically(subscriptions, "".join(n + "\n" for n in SPECIAL_FOLDERS).encode())

    def deleteAccount(self, address, archive=False):
        """
        See L{IMailStore.deleteAccount}.  With C{archive}, the tree goes to
        C{archiveRoot/<UTC time>/<domain>/<localpart>/}; see L{_removeTree}.
        """
        local, _, domain = self._accountKey(address).rpartition("@")
        return self._removeTree(
            self.accountPath(address), (_escapeComponent(domain), _escapeComponent(local)), archive
        )

    def deleteDomain(self, domain, archive=False):
        """
        See L{IMailStore.deleteDomain}.  With C{archive}, the tree goes to
        C{archiveRoot/<UTC time>/<domain>/}; see L{_removeTree}.
        """
        name = _escapeComponent(normaliseDomain(domain))
        if not name or name in (".", ".."):
            raise InvalidInput("not a domain: %r" % (domain,))
        return self._removeTree(os.path.join(self.root, name), (name,), archive)

    def _removeTree(self, path, names, archive):
        """
        Take the tree at C{path} out of the store, then remove it or move it
        to C{archiveRoot/<UTC time>/<names...>}.

        Invariants: the tree first leaves its path in one rename, to
        C{root/.deleting.<unique>} (a leading dot is no domain's name), so a
        delivery or session still holding the old path fails with
        L{NotFound} instead of writing into a half-moved tree, and nothing
        is ever half in place; a crash after that rename leaves the whole
        tree under that name.  The last UIDVALIDITY of the tree is kept in
        the store's counter first, so a tree made again at C{path} starts
        above it.

        @param names: the path components of the tree under C{archiveRoot/<UTC time>/}.
        @return: See L{IMailStore.deleteAccount}.
        """
        if not os.path.isdir(path):
            return None
        raiseUidValidity(self.root, max(
            [lastUidValidity(entry.path) for entry in os.scandir(path) if entry.is_dir()]
            + [lastUidValidity(path)]
        ))
        doomed = os.path.join(self.root, ".deleting." + uniqueName())
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return None  # removed meanwhile by another process
        fsyncDirectory(os.path.dirname(path))
        fsyncDirectory(self.root)
        if not archive:
            shutil.rmtree(doomed)
            return path, None
        kept = self._archivePath(names)
        os.makedirs(os.path.dirname(kept), 0o700, exist_ok=True)
        try:
            os.rename(doomed, kept)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            # archiveRoot is on another file system: copy, then remove.
            shutil.copytree(doomed, kept, symlinks=True)
            shutil.rmtree(doomed)
        fsyncDirectory(os.path.dirname(kept))
        return path, kept

    def _archivePath(self, names):
        """
        @return: a free path C{archiveRoot/<UTC time>/<names...>}; a second
            deletion of the same tree within a second gets C{<UTC time>-2}.
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for n in itertools.count(1):
            kept = os.path.join(self.archiveRoot, stamp if n == 1 else "%s-%d" % (stamp, n), *names)
            if not os.path.lexists(kept):
                return kept

    def accountExists(self, address):
        """
        See L{IMailStore.accountExists}.
        """
        return os.path.isdir(os.path.join(self.accountPath(address), "new"))

    def deliver(self, copies, key=None, again=False):
        """
        See L{IMailStore.deliver}.  One call of C{runInThread} writes every
        copy; listeners are called once the Deferred has fired.  A keyed copy
        is named by L{keyedName}.
        """
        targets, changed = [], {}
        try:
            for account, folder, parts, *tag in copies:
                folder = normaliseFolderName(folder)
                path = self.folderPath(account, folder)
                if key is None:
                    targets.append((path, parts))
                else:
                    name = keyedName(key, self._accountKey(account), folder, *tag)
                    targets.append((path, parts, name, again))
                changed[(self._accountKey(account), folder)] = None
        except Exception:
            return defer.fail()
        if self._committer is not None:
            d = defer.Deferred()
            self._committer.commit(targets, d)
        else:
            d = self._runInThread(_writeCopies, targets)
        d.addCallback(self._cbDelivered, changed)
        return d

    def _cbDelivered(self, _, changed):
        for account, folder in changed:
            self._notify(account, folder)

    def usage(self, address):
        """
        See L{IMailStore.usage}: one directory listing of C{cur/} and
        C{new/} per folder, sizes taken from the message files' names.
        """
        path = self.accountPath(address)
        storage, messages = _countFolder(path)
        for folder in _scanDirs(path):
            if os.path.basename(folder).startswith(".") and os.path.isdir(os.path.join(folder, "cur")):
                octets, count = _countFolder(folder)
                storage += octets
                messages += count
        return Usage(storage, messages)

    def listMailboxes(self, address):
        """
        See L{IMailStore.listMailboxes}.
        """
        path = self._existingAccountPath(address)
        names = []
        for entry in os.scandir(path):
            if entry.name.startswith(".") and not entry.name.startswith("..") and entry.is_dir():
                # new/ is made last: a folder being made is not listed
                # before it can be opened.
                if os.path.isdir(os.path.join(entry.path, "new")):
                    names.append(_folderNameFromDir(entry.name))
        return ["INBOX"] + sorted(names)

    def createMailbox(self, address, name):
        """
        See L{IMailStore.createMailbox}.
        """
        name = normaliseFolderName(name)
        accountPath = self._existingAccountPath(address)
        if name == "INBOX":
            raise Exists("INBOX exists")
        path = os.path.join(accountPath, _folderDirName(name))
        with _folderErrors("create mailbox %s" % (path,)):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                raise Exists("mailbox %s exists" % (name,))
            _makeMaildir(path, folder=True)

    def deleteMailbox(self, address, name):
        """
        See L{IMailStore.deleteMailbox}.  Child folders stay (they are
        separate directories in Maildir++).
        """
        name = normaliseFolderName(name)
        accountPath = self._existingAccountPath(address)
        if name == "INBOX":
            raise InvalidInput("INBOX cannot be deleted")
        path = os.path.join(accountPath, _folderDirName(name))
        doomed = os.path.join(accountPath, "..mdpy-deleted." + uniqueName())
        with _folderErrors("delete mailbox %s" % (path,)):
            try:
                os.rename(path, doomed)
            except FileNotFoundError:
                raise NotFound("no mailbox %s" % (name,))
            shutil.rmtree(doomed)

    def renameMailbox(self, address, old, new):
        """
        See L{IMailStore.renameMailbox}.  Renaming INBOX moves its messages
        into the new folder and leaves INBOX empty (RFC 3501 section 6.3.5).
        """
        old, new = normaliseFolderName(old), normaliseFolderName(new)
        with _folderErrors("rename mailbox %s of %s to %s" % (old, address, new)):
            return self._renameMailbox(address, old, new)

    def _renameMailbox(self, address, old, new):
        accountPath = self._existingAccountPath(address)
        if new == "INBOX" or new == old or new.startswith(old + "/"):
            raise InvalidInput("cannot rename %s to %s" % (old, new))
        if old == "INBOX":
            return self._renameInbox(address, accountPath, new)
        oldDir, newDir = _folderDirName(old), _folderDirName(new)
        moves = [
            (entry, newDir + entry[len(oldDir):])
            for entry in os.listdir(accountPath)
            if entry == oldDir or entry.startswith(oldDir + ".")
        ]
        if oldDir not in [entry for entry, _ in moves]:
            raise NotFound("no mailbox %s" % (old,))
        for _, target in moves:
            normaliseFolderName(_folderNameFromDir(target))  # a child may grow past the limits
        for _, target in moves:
            if os.path.lexists(os.path.join(accountPath, target)):
                raise Exists("mailbox %s exists" % (_folderNameFromDir(target),))
        for source, target in moves:
            os.rename(os.path.join(accountPath, source), os.path.join(accountPath, target))
        fsyncDirectory(accountPath)

    def _renameInbox(self, address, accountPath, new):
        self.createMailbox(address, new)
        target = os.path.join(accountPath, _folderDirName(new))
        for sub in ("new", "cur"):
            source = os.path.join(accountPath, sub)
            for name in os.listdir(source):
                if not name.startswith("."):
                    os.rename(os.path.join(source, name), os.path.join(target, sub, name))
            fsyncDirectory(os.path.join(target, sub))
        self.openMailbox(address).sync()

    def listSubscriptions(self, address):
        """
        See L{IMailStore.listSubscriptions}.  They are kept one name per line
        in the account's C{subscriptions} file, Dovecot's older format.
        """
        path = os.path.join(self._existingAccountPath(address), SUBSCRIPTIONS_NAME)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        if lines and lines[0].startswith("V\t"):
            # Dovecot 2.3's format: a version line, an empty line, then names
            # with TAB between levels.
            lines = [line.replace("\t", "/") for line in lines[2:]]
        return sorted({line for line in lines if line})

    def setSubscribed(self, address, name, subscribed):
        """
        See L{IMailStore.setSubscribed}.
        """
        name = normaliseFolderName(name)
        names = set(self.listSubscriptions(address))
        if (name in names) == subscribed:
            return
        if subscribed:
            names.add(name)
        else:
            names.discard(name)
        path = os.path.join(self._existingAccountPath(address), SUBSCRIPTIONS_NAME)
        writeFileAtomically(path, "".join(n + "\n" for n in sorted(names)).encode("utf-8"))

    def openMailbox(self, address, name="INBOX"):
        """
        See L{IMailStore.openMailbox}.  Synchronous: the folder is synced
        before it is returned.
        """
        mailbox = self.openUnsynced(address, name)
        mailbox.sync()
        return mailbox

    def openUnsynced(self, address, name="INBOX"):
        """
        L{openMailbox} but for the sync: the view holds nothing yet.

        @raise NotFound: no such account or folder.
        """
        name = normaliseFolderName(name)
        accountPath = self._existingAccountPath(address)
        path = self.folderPath(address, name)
        if not os.path.isdir(os.path.join(path, "new")):
            raise NotFound("no mailbox %s for %s" % (name, address))
        return MaildirMailbox(self, self._accountKey(address), name, accountPath, path)

    def addListener(self, address, listener):
        """
        See L{IMailStore.addListener}: a subscription of the whole account
        to L{changeFeed}, so which other processes' changes are reported
        depends on the feed.
        """
        self._listeners.add(self.changeFeed, self._accountKey(address), listener)

    def removeListener(self, address, listener):
        """
        See L{IMailStore.removeListener}.
        """
        self._listeners.remove(self._accountKey(address), listener)
