# -*- test-case-name: tests.test_store_maildir -*-
"""
The files mdpy keeps beside a Maildir folder, and the flag letters of
Maildir file names.  Used by L{mdpy.backends.files.maildir}.

Flag letters in the info suffix C{:2,<letters>} (in ASCII order): D=\\Draft
F=\\Flagged P=$Forwarded R=\\Answered S=\\Seen T=\\Deleted; C{a}-C{z} are
keywords numbered in the folder's C{dovecot-keywords} file, Dovecot's format
(C{<index> <name>} per line, index 0 is C{a}).

The index, C{mdpy-uidlist} in each folder directory, keeps what Maildir
cannot::

    V2 <uidvalidity> <uidnext> <highestmodseq>[ R<recent>][ G<generation>]
    <uid> <modseq> <info> <size> <basename>
    ...

one line per message, in UID order, ending with a newline (an index of
version C{V1} has no C{<size>}).  The changes made since it was written
are in its log, C{mdpy-uidlist.log}, which each transaction that changes
the index appends to and C{fdatasync}s, rather than writing the index
again::

    L1 <uidvalidity> <generation>
    T <uidnext> <highestmodseq> <recent> <lines> <crc32 of the lines, hex>
    - <basename>
    + <uid> <modseq> <info> <size> <basename>
    ...

one C{T} line per transaction, followed by its lines: the messages it
removed, then those it added or changed, in UID order.  The log applies
only to the index of its UIDVALIDITY and generation; a transaction that
is incomplete or fails its checksum ends it (a crash cut it short before
it was reported done), and the next writer cuts the log back to before
it.  Past L{LOG_COMPACT_SIZE} octets, or when the log is missing or does
not apply, the transaction writes the index whole with the next
generation, syncs its name, then replaces the log with an empty one.  C{R<recent>} is
the highest UID a view has claimed (L{UidList.claimRecent}): the messages
above it are new to every session.  It is written only while there are
such UIDs; without it (also in an index written before it existed) every
UID below UIDNEXT is claimed.  C{<info>} is the
info suffix last seen (C{2,FS}), C{-} when empty, with C{%}, space and C{-}
written as C{%XX}; C{<basename>} (the rest of the line) is the file name
before C{:}, also the message's key.  The index is a cache: delivery never
touches it, L{mdpy.backends.files.maildir.MaildirMailbox.sync} brings it up to date
(new files get the next UIDs in order of mtime then name; changed info
suffixes and vanished files raise the modification sequence), and a missing,
truncated or inconsistent file is rebuilt with a new UIDVALIDITY.  Each message that leaves the folder (expunged, or its file gone)
leaves a tombstone in C{mdpy-expunged} beside the index, written before it
in the same locked transaction::

    E1 <uidvalidity> <prunedmodseq> [<boot>]
    <modseq> <uid>,<uid>,...
    ...

one line per transaction that removed messages, modification sequences
ascending.  A transaction appends its line (and C{fdatasync}s the file,
or, in a file whose header names this boot of the machine, has it synced
with the log after the index is written: L{appendExpunged});
readers keep at most L{mdpy.mailbox.EXPUNGES_KEPT} UIDs, dropping the
oldest lines and raising C{<prunedmodseq>} to theirs (the history before
it is incomplete), and past L{EXPUNGED_COMPACT_SIZE} octets the file is
rewritten so (atomically).  A line left incomplete by a crash ends the
history read, so the next transaction rewrites the file without it.  A folder without the file (an index from before it, or one
rebuilt) starts its history at the modification sequence it has then.  The last
header written is also kept in C{mdpy-uidlist.lock}, and the last UIDVALIDITY
given out in the account's C{mdpy-uidvalidity} and in the store root's
C{.mdpy-uidvalidity}, so a rebuilt index never reuses a UIDVALIDITY or lowers
UIDNEXT (UIDs are never reused), and an account made again after its deletion
starts above every UIDVALIDITY of the old one.

Invariants: the index and its log are written only under an exclusive
C{flock} on C{mdpy-uidlist.lock} (between processes, and between threads of
one process alike, as each holder opens the file itself); the index is
rewritten atomically (temporary file, fsync, rename) and the log only
appended to, so a reader without the lock sees a complete index and the
complete transactions of its log.  So the server
and the C{mdpy} command never give two UIDs to one message or one UID to two
messages.  C{dovecot-keywords} is rewritten the same way under the same lock.
"""

import collections
import fcntl
import os
import re
import threading
import time
import zlib
from contextlib import contextmanager

from mdpy.dotstuffing import normalisedFileSize
from mdpy.durable import fsyncDirectory, replaceFile, writeAll, writeFileAtomically
from mdpy.errors import LimitExceeded, NotFound, TemporaryFailure
from mdpy.logs import Logger
from mdpy.mailbox import ExpungeHistory

INDEX_NAME = "mdpy-uidlist"
LOG_NAME = "mdpy-uidlist.log"
# Past this size, the log is folded into a new index.
LOG_COMPACT_SIZE = 64 * 1024
# A folder's listing is made again on each sync until its new/ and cur/
# have been left alone this many seconds (L{FolderIndex.snapshot}).
LOOK_MARGIN = 2.0
# How long a view is taken as current without reading its folder, however
# little was heard (FolderIndex.isCurrent): a bound on what a change the
# feed cannot hear (a network filesystem's other hosts) stays unseen, below
# IMAP IDLE's 30 s poll, which therefore always reads.
CURRENT_FOR = 20.0
# How many messages a process keeps parsed indexes and listings of, in all
# its folders (L{ParsedIndexes}); past that, the least recently used go.
PARSED_MESSAGES_KEPT = 500000
# How many changes of others the change feed keeps of a watched folder for
# its next transaction (L{ChangesHeard.heardSince}); past that, the older
# ones go, and that transaction lists the folder.
HEARD_KEPT = 128
# What a change heard of a name did: made it (renamed or linked in,
# created), removed it (renamed out, deleted), or wrote the file.
MADE, REMOVED, WRITTEN = "made", "removed", "written"
_COARSE_CLOCK = getattr(time, "CLOCK_REALTIME_COARSE", time.CLOCK_REALTIME)
# Filesystems other hosts may change, which this host's inotify does not
# hear (FUSE ones too: "fuse.<name>").
_SHARED_FILESYSTEMS = frozenset([
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "ocfs2", "gfs2",
    "lustre", "gpfs", "beegfs", "fuse", "fuseblk",
])
MOUNTINFO = "/proc/self/mountinfo"
_localDevices = {}
LOCK_NAME = "mdpy-uidlist.lock"
KEYWORDS_NAME = "dovecot-keywords"
EXPUNGED_NAME = "mdpy-expunged"
# Past this size, mdpy-expunged is rewritten with the UIDs kept.
EXPUNGED_COMPACT_SIZE = 256 * 1024
UIDVALIDITY_NAME = "mdpy-uidvalidity"
# In the store's root, where a leading dot is no domain's name.
STORE_UIDVALIDITY_NAME = ".mdpy-uidvalidity"

_LETTER_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
_FLAG_LETTERS = {flag.lower(): letter for letter, flag in _LETTER_FLAGS.items()}
_WIRE_SIZE = re.compile(r",W=([0-9]+)")
_NAME_ORDER = re.compile(r"([0-9]+)\.M([0-9]+)P[0-9]+Q([0-9]+)")
_HEADER = re.compile(r"V([12]) ([0-9]+) ([0-9]+) ([0-9]+)(?: R([0-9]+))?(?: G([0-9]+))?\Z")
_LOG_HEADER = re.compile(rb"L1 ([0-9]+) ([0-9]+)\n")
_LOG_TRANSACTION = re.compile(rb"T ([0-9]+) ([0-9]+) ([0-9]+) ([0-9]+) ([0-9a-f]{8})\Z")
_ESCAPED = re.compile(r"%([0-9A-F]{2})")
_EXPUNGED_HEADER = re.compile(r"E1 ([0-9]+) ([0-9]+)(?: ([0-9a-f-]+))?\Z")
_EXPUNGED_LINE = re.compile(r"([0-9]+) ([0-9]+(?:,[0-9]+)*)\Z")
_log = Logger()


def _escapeInfo(info):
    if not info:
        return "-"
    return info.replace("%", "%25").replace(" ", "%20").replace("-", "%2D")


def _unescapeInfo(token):
    if token == "-":
        return ""
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), token)



def _readWhole(fd):
    """
    @return: the octets of the open file C{fd} from where it is to its end,
        in as few system calls as a folder's small files need (no Python
        file object: every call counts where each one gives the interpreter
        lock away).
    """
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class Keywords:
    """
    The C{dovecot-keywords} file of one folder: keyword names by letter.
    Written under the folder lock.
    """

    def __init__(self, folderPath, names=None):
        """
        @param names: the names by letter when known (as last read), else
            they are read from the file.
        """
        self._path = os.path.join(folderPath, KEYWORDS_NAME)
        self.names = [None] * 26
        if names is not None:
            self.names[:] = names
            return
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            text = _readWhole(fd).decode("utf-8", "replace")
        finally:
            os.close(fd)
        for line in text.splitlines():
            index, _, name = line.partition(" ")
            if index.isdigit() and int(index) < 26 and name:
                self.names[int(index)] = name

    def nameFor(self, letter):
        return self.names[ord(letter) - 97]

    def _find(self, name):
        lowered = name.lower()
        for i, known in enumerate(self.names):
            if known is not None and known.lower() == lowered:
                return i
        return None

    def letterFor(self, name):
        """
        @return: the letter of keyword C{name}, adding it (and saving the
            file) when new.
        @raise LimitExceeded: the folder already has 26 keywords.
        """
        self.reserve([name])
        return chr(97 + self._find(name))

    def reserve(self, names):
        """
        Give a letter to each keyword of C{names} that has none, saving the
        file once: all of them or, when there are not enough free letters,
        none.

        @raise LimitExceeded: the folder would hold more than 26 keywords.
        """
        new = []
        for name in names:
            if self._find(name) is None and name.lower() not in {n.lower() for n in new}:
                new.append(name)
        if not new:
            return
        free = [i for i, known in enumerate(self.names) if known is None]
        if len(new) > len(free):
            raise LimitExceeded("a Maildir folder holds at most 26 keywords")
        for i, name in zip(free, new):
            self.names[i] = name
        lines = "".join("%d %s\n" % (n, k) for n, k in enumerate(self.names) if k)
        writeFileAtomically(self._path, lines.encode("utf-8"))


def flagsFromInfo(info, keywords):
    if not info.startswith("2,"):
        return frozenset()
    flags = []
    for ch in info[2:]:
        flag = _LETTER_FLAGS.get(ch)
        if flag is None and "a" <= ch <= "z":
            flag = keywords.nameFor(ch)
        if flag is not None:
            flags.append(flag)
    return frozenset(flags)


def infoForFlags(flags, keywords, oldInfo=""):
    """
    @return: the info suffix (C{2,<letters>}, letters in ASCII order) for
        C{flags}, keeping letters of C{oldInfo} that mdpy does not know
        (other programs' flags, keyword letters missing from
        C{dovecot-keywords}).
    """
    letters = set()
    if oldInfo.startswith("2,"):
        letters.update(
            ch for ch in oldInfo[2:]
            if (ch.isupper() and ch not in _LETTER_FLAGS) or ("a" <= ch <= "z" and keywords.nameFor(ch) is None)
        )
    for flag in flags:
        letter = _FLAG_LETTERS.get(flag.lower())
        if letter is None:
            if flag.startswith("\\"):
                continue  # \Recent and unknown system flags are not stored
            letter = keywords.letterFor(flag)
        letters.add(letter)
    return "2," + "".join(sorted(letters))



def _raiseCounter(path, atLeast):
    """
    Under an exclusive C{flock} on the counter file C{path} (made if
    missing), store C{max(atLeast, stored + 1)}.

    @return: the value stored.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last = os.pread(fd, 32, 0).strip()
        value = max(atLeast, (int(last) if last.isdigit() else 0) + 1)
        data = b"%d\n" % (value,)
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    return value


def lastUidValidity(directory):
    """
    @return: the last UIDVALIDITY given out in the account at C{directory},
        0 if none.
    """
    try:
        with open(os.path.join(directory, UIDVALIDITY_NAME), "rb") as f:
            last = f.read(32).strip()
    except FileNotFoundError:
        return 0
    return int(last) if last.isdigit() else 0


def raiseUidValidity(storeRoot, atLeast):
    """
    Make sure the store never gives out a UIDVALIDITY below C{atLeast} again
    (called with an account's last one before its tree leaves the store).
    """
    _raiseCounter(os.path.join(storeRoot, STORE_UIDVALIDITY_NAME), atLeast)


def allocateUidValidity(accountPath, atLeast, storeRoot=None):
    """
    @param storeRoot: the store's root, whose C{.mdpy-uidvalidity} keeps the
        last UIDVALIDITY given out in any account: an account deleted and
        made again under the same address (RFC 3501 section 2.3.1.1) never
        sees one of its predecessor's, even within the same second.
    @return: a UIDVALIDITY never given out before in this account (nor in
        the store, with C{storeRoot}): the time, or more if C{atLeast} or
        the last one given out says so.
    """
    value = _raiseCounter(os.path.join(accountPath, UIDVALIDITY_NAME), max(int(time.time()), atLeast))
    if storeRoot is not None:
        # Each counter is locked on its own, never both at once.
        value = _raiseCounter(os.path.join(storeRoot, STORE_UIDVALIDITY_NAME), value)
        if value > lastUidValidity(accountPath):
            _raiseCounter(os.path.join(accountPath, UIDVALIDITY_NAME), value)
    return value


class LockHeld(Exception):
    """
    The folder lock is held by another transaction, and the caller would
    not wait for it.
    """


class FolderLock:
    """
    The exclusive C{flock} on a folder's C{mdpy-uidlist.lock}; the file also
    keeps the last index header written, for rebuilds.

    @param wait: whether to wait for another holder, else raise
        L{LockHeld}.
    """

    def __init__(self, folderPath, wait=True):
        self._path = os.path.join(folderPath, LOCK_NAME)
        self._wait = wait

    def __enter__(self):
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise NotFound("no such mailbox: %s" % (os.path.dirname(self._path),))
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX if self._wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException as e:
            os.close(self._fd)
            if isinstance(e, BlockingIOError):
                raise LockHeld(self._path) from None
            raise
        return self

    def __exit__(self, *exc):
        os.close(self._fd)  # releases the lock

    def lastHeader(self):
        return parseHeader(os.pread(self._fd, 128, 0).decode("ascii", "replace").strip())

    def rememberHeader(self, header):
        data = header.encode("ascii")
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))


class ChangesHeard:
    """
    What this process heard of the changes of the folders its change feed
    watches, so that a view can know without reading its folder that it is
    still as a sync would make it (L{MaildirMailbox.isCurrent}).

    Each watched folder has a mark: a number never given before, taken
    anew before each rename or removal a transaction of this process
    makes in its C{new/} or C{cur/} (L{expect}: the feed then takes that
    event as the transaction's own), when such a transaction ends having
    changed the folder (L{settle}), and for each change the feed hears
    that no such transaction made (L{heard}).  A view read
    after its folder's mark was M knows of every change if the mark is
    still M once the feed read what the kernel has (L{drain}).  A folder
    that is not watched (polled, or inotify lost) has no mark, and its
    views read it; nothing is expected of it, and what was expected of a
    folder goes when it is no longer watched or events were lost.  The
    changes of others are also kept, a few, in the order heard, for the
    next transaction to make to the listing of the folder it takes
    (L{heardSince}, L{FolderIndex._keptListing}).

    Thread-safe: transactions run in worker threads, the feed on the
    reactor thread.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._serial = 0
        self._marks = {}  # folder path: mark
        self._others = {}  # folder path: changes heard that no transaction here made
        self._expected = {}  # folder path: Counter of (directory, name), events to come
        # folder path: (the mark after which every change of others heard
        # is in the list, [(mark, directory, name, what it did)])
        self._history = {}
        # Set by the change feed: drain() takes in what the kernel has
        # (reactor thread only); pending() tells, from any thread, whether
        # it may have something not taken in yet.
        self.drain = lambda: None
        self.pending = lambda: True

    def _next(self):
        self._serial += 1
        return self._serial

    def watch(self, folderPath):
        """
        The feed watches C{folderPath} from now on: a new mark, as what
        happened before was not heard.
        """
        with self._lock:
            mark = self._marks[folderPath] = self._next()
            self._others[folderPath] = self._others.get(folderPath, 0) + 1
            self._history[folderPath] = (mark, [])

    def unwatch(self, folderPath):
        with self._lock:
            self._marks.pop(folderPath, None)
            self._others.pop(folderPath, None)
            self._expected.pop(folderPath, None)
            self._history.pop(folderPath, None)

    def unwatchAll(self):
        with self._lock:
            self._marks.clear()
            self._others.clear()
            self._expected.clear()
            self._history.clear()

    def mark(self, folderPath):
        """
        @return: the folder's mark now, or L{None} when it is not watched.
        """
        return self._marks.get(folderPath)

    def begin(self, folderPath):
        """
        A transaction begins (under the folder lock).

        @return: what L{settle} takes.
        """
        with self._lock:
            return self._others.get(folderPath)

    def isMarked(self, folderPath, mark):
        """
        @return: whether the folder is watched and nothing changed it since
            it had C{mark}, as far as the feed read.
        """
        return mark is not None and self._marks.get(folderPath) == mark

    def heard(self, folderPath, directory, name, what=WRITTEN):
        """
        The feed heard C{name} made, removed or written (C{what}: L{MADE},
        L{REMOVED}, L{WRITTEN}) in C{directory} of C{folderPath}.

        @return: whether it was a change of no transaction of this process
            (the folder's mark then changed, and the change is kept for
            L{heardSince}).
        """
        key = (directory, name)
        with self._lock:
            expected = self._expected.get(folderPath)
            if expected and expected[key] > 0:
                self._consume(folderPath, expected, key)
                return False
            if folderPath in self._marks:
                mark = self._marks[folderPath] = self._next()
                self._others[folderPath] += 1
                changes = self._history[folderPath][1]
                if len(changes) < HEARD_KEPT:
                    changes.append((mark, directory, name, what))
                else:
                    self._history[folderPath] = (mark, [])
            return True

    def heardSince(self, folderPath, mark):
        """
        The changes of others heard in a folder since it had C{mark} (the
        result of a transaction of this process, L{settle}), in the order
        they were heard; those before are forgotten.

        @return: C{[(directory, name, what)]} (see L{heard}), or L{None}
            when some may not have been heard or kept: the folder is not
            watched, or was watched anew, events were lost, or there were
            more than L{HEARD_KEPT}.
        """
        with self._lock:
            history = self._history.get(folderPath)
            if history is None or mark is None or mark < history[0]:
                return None
            changes = [change for change in history[1] if change[0] > mark]
            self._history[folderPath] = (mark, changes)
            return [change[1:] for change in changes]

    def lost(self):
        """
        Events were lost (the kernel's queue overflowed): every folder has
        a new mark, and what was expected may never come.
        """
        with self._lock:
            for path in self._marks:
                mark = self._marks[path] = self._next()
                self._others[path] += 1
                self._history[path] = (mark, [])
            self._expected.clear()

    def expect(self, folderPath, directory, name):
        """
        This process is about to rename (from or to) or remove C{name} in
        C{directory} of C{folderPath}.
        """
        with self._lock:
            if folderPath in self._marks:
                # Views read before are not current from now on.
                self._marks[folderPath] = self._next()
                expected = self._expected.setdefault(folderPath, collections.Counter())
                expected[(directory, name)] += 1

    def withdraw(self, folderPath, directory, name):
        """
        What L{expect} announced did not happen.
        """
        with self._lock:
            expected = self._expected.get(folderPath)
            key = (directory, name)
            if expected and expected[key] > 0:
                self._consume(folderPath, expected, key)

    def _consume(self, folderPath, expected, key):
        expected[key] -= 1
        if not expected[key]:
            del expected[key]
            if not expected:
                del self._expected[folderPath]

    def settle(self, folderPath, begun, changed):
        """
        A transaction that began with C{begun} (L{begin}) ends, having
        C{changed} the folder or not.

        @return: the mark its result is current at, or L{None} when a
            change it did not make was heard meanwhile (or the folder was
            not watched throughout).
        """
        with self._lock:
            if folderPath not in self._marks:
                return None
            if changed:
                self._marks[folderPath] = self._next()
            if begun is None or self._others[folderPath] != begun:
                return None
            return self._marks[folderPath]


class Syncs:
    """
    What a transaction left to make durable (L{FolderIndex.transact} with
    C{syncs}): files written and directories whose names changed, both by
    descriptor.  L{run} makes them so, in a worker thread; until then, the
    transaction's result must not be told to anyone as done.  The
    descriptors are opened and closed by the transaction's thread, so the
    worker thread makes no call but the syncs (each call a thread makes
    gives up Python's interpreter lock, and takes it back, maybe after
    waiting for the reactor).
    """

    def __init__(self):
        self.files = []
        self.directories = {}

    def addDirectory(self, path):
        """
        Open directory C{path} to be synced, once.
        """
        if path not in self.directories:
            self.directories[path] = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def run(self):
        """
        Sync the files, then the directories; blocking.
        """
        for fd in self.files:
            os.fdatasync(fd)
        for _, fd in sorted(self.directories.items()):
            os.fsync(fd)

    def requests(self):
        """
        @return: what L{run} does, as C{(fd, datasync)}: C{fdatasync} of
            the files, C{fsync} of the directories.
        """
        return [(fd, True) for fd in self.files] + [(fd, False) for _, fd in sorted(self.directories.items())]

    def close(self):
        files, self.files = self.files, []
        directories, self.directories = self.directories, {}
        for fd in files + list(directories.values()):
            os.close(fd)


def _agree(entries, files, keys):
    """
    @return: whether an index's C{entries} and a listing C{files} hold as
        many messages, and agree on C{keys}: each held by both, with the
        same info suffix, or by neither.
    """
    if len(files) != len(entries):
        return False
    for key in keys:
        entry, name = entries.get(key), files.get(key)
        if (entry is None) != (name is None) or name is not None and entry[2] != name.partition(":")[2]:
            return False
    return True


def onLocalFilesystem(path):
    """
    @return: whether C{path} is on a filesystem only this host changes, so
        that the kernel's inotify hears every change of it; false when
        that cannot be told (no C{/proc}, an unknown mount).
    """
    try:
        device = os.stat(path).st_dev
    except OSError:
        return False
    local = _localDevices.get(device)
    if local is None:
        kind = _filesystemType(device, os.path.realpath(path))
        local = _localDevices[device] = kind is not None and kind.partition(".")[0] not in _SHARED_FILESYSTEMS
    return local


def _filesystemType(device, path):
    """
    @return: the type of the filesystem mounted as C{device} (by its
        numbers in C{/proc/self/mountinfo}), else of the mount holding
        C{path} (a btrfs subvolume has a device of its own); L{None} if
        neither is found.
    """
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    numbers = "%d:%d" % (os.major(device), os.minor(device))
    byPrefix = None
    for line in lines:
        fields, _, after = line.partition(" - ")
        fields, after = fields.split(), after.split()
        if len(fields) < 5 or not after:
            continue
        if fields[2] == numbers:
            return after[0]
        point = fields[4].replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and (
                byPrefix is None or len(point) >= len(byPrefix[0])):
            byPrefix = (point, after[0])
    return None if byPrefix is None else byPrefix[1]


def parseHeader(line):
    """
    @return: C{(uidvalidity, uidnext, highestmodseq)}, or L{None}.
    """
    match = _HEADER.match(line)
    if match is None:
        return None
    return tuple(int(n) for n in match.groups()[1:4])


_bootId = None


def bootId():
    """
    @return: the identity of this boot of the machine (Linux), or L{None}
        where the system does not tell it.
    """
    global _bootId
    if _bootId is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _bootId = f.read().strip().lower()
        except OSError:
            _bootId = ""
    return _bootId or None


def readExpunged(folderPath):
    """
    @return: C{(uidvalidity, L{ExpungeHistory})} of the folder's
        C{mdpy-expunged}, or L{None} when it is missing or its header is
        damaged.  A damaged line (the file is rewritten whole, so there
        should be none) ends the history read.  A history whose lines a
        process of another boot of the machine may have left unsynced is
        L{ExpungeHistory.incomplete}.
    """
    try:
        with open(os.path.join(folderPath, EXPUNGED_NAME), "rb") as f:
            text = f.read().decode("ascii", "replace")
    except FileNotFoundError:
        return None
    lines = text.split("\n")
    header = _EXPUNGED_HEADER.match(lines[0])
    if header is None:
        return None
    history = ExpungeHistory(int(header.group(2)))
    history.incomplete = header.group(3) not in (None, bootId())
    for line in lines[1:-1]:
        match = _EXPUNGED_LINE.match(line)
        if match is None:
            break
        history.record(int(match.group(1)), [int(uid) for uid in match.group(2).split(",")])
    return int(header.group(1)), history


def appendExpunged(folderPath, uidValidity, modSeq, uids, syncs=None):
    """
    Add one transaction's tombstones to the folder's C{mdpy-expunged} of
    C{uidValidity}, in place: one line appended and synced, or its sync
    left to C{syncs} (a L{Syncs}) when the file's header names this boot
    of the machine (L{writeExpunged}).

    @return: whether that was done; C{False} when the file must be
        rewritten whole instead (missing, of another UIDVALIDITY, ending
        in an incomplete line, due to be compacted, of another boot, or
        of none when C{syncs} is given).
    """
    try:
        fd = os.open(os.path.join(folderPath, EXPUNGED_NAME), os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        if not 0 < size < EXPUNGED_COMPACT_SIZE or os.pread(fd, 1, size - 1) != b"\n":
            return False
        header = _EXPUNGED_HEADER.match(os.pread(fd, 128, 0).partition(b"\n")[0].decode("ascii", "replace"))
        if header is None or int(header.group(1)) != uidValidity:
            return False
        boot = header.group(3)
        if boot is not None and boot != bootId() or syncs is not None and boot is None:
            return False
        writeAll(fd, ("%d %s\n" % (modSeq, ",".join(map(str, uids)))).encode("ascii"))
        if syncs is None:
            os.fdatasync(fd)
        else:
            syncs.files.append(os.dup(fd))
    finally:
        os.close(fd)
    return True


def writeExpunged(folderPath, uidValidity, history, boot=None):
    """
    Replace the folder's C{mdpy-expunged} (atomically).

    @param boot: this boot of the machine (L{bootId}), when lines may be
        appended whose sync is left to a L{Syncs}, which is run after the
        index is written: after a crash of the machine, the index may then
        show removals the file lost, and a process of the next boot reads
        the history as L{ExpungeHistory.incomplete}.
    """
    lines = ["E1 %d %d%s\n" % (uidValidity, history.prunedModSeq, "" if boot is None else " " + boot)]
    lines.extend("%d %s\n" % (modSeq, ",".join(map(str, uids))) for modSeq, uids in history.records)
    writeFileAtomically(os.path.join(folderPath, EXPUNGED_NAME), "".join(lines).encode("ascii"))


class _Entries(dict):
    """
    The entries of an index being changed in a transaction: a dict that
    notes which keys were set and which removed, so that the transaction
    writes only those to the log.
    """

    __slots__ = ("changed", "removed")

    def __init__(self, entries=()):
        dict.__init__(self, entries)
        self.changed = set()
        self.removed = set()

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, value)
        self.changed.add(key)
        self.removed.discard(key)

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        self.changed.discard(key)
        self.removed.add(key)

    def pop(self, key, *default):
        if key not in self:
            return dict.pop(self, key, *default)
        value = dict.pop(self, key)
        self.changed.discard(key)
        self.removed.add(key)
        return value

    def clear(self):
        self.removed.update(self)
        self.changed.clear()
        dict.clear(self)

    def popitem(self):
        raise NotImplementedError("entries are removed by key")

    setdefault = update = popitem


def _entryLine(key, entry):
    uid, modSeq, info, size = entry
    return "%d %d %s %s %s\n" % (uid, modSeq, _escapeInfo(info), "-" if size is None else size, key)


def _parseEntry(line, uidNext, highest):
    """
    @return: C{(key, (uid, modSeq, info, size))} of an index line.
    @raise ValueError: not one, or beyond C{uidNext} and C{highest}.
    """
    uid, modSeq, info, size, key = line.split(" ", 4)
    uid, modSeq = int(uid), int(modSeq)
    if not 0 < uid < uidNext or modSeq > highest or not key:
        raise ValueError("inconsistent line %r" % (line,))
    return key, (uid, modSeq, _unescapeInfo(info), None if size == "-" else int(size))


class UidList:
    """
    The parsed C{mdpy-uidlist}: C{entries} maps each basename to C{(uid,
    modSeq, info)} in UID order.

    @ivar recentThreshold: the highest UID claimed by L{claimRecent};
        L{None} in an index being rebuilt, until the messages found are
        taken in (none of them is new).
    @ivar claimed: the UIDs L{claimRecent} claimed in this transaction.
    @ivar generation: the index file's generation (C{G<n>} in its header):
        its log applies to it only when of the same generation.
    @ivar log: what L{FolderIndex} read of the log, C{(inode, end of its
        last complete transaction, size, whether it applies)}.
    """

    def __init__(self, uidValidity, uidNext, highestModSeq, entries, recentThreshold=None,
                 generation=0):
        self.uidValidity = uidValidity
        self.uidNext = uidNext
        self.highestModSeq = highestModSeq
        self.entries = entries
        self.recentThreshold = uidNext - 1 if recentThreshold is None else recentThreshold
        self.generation = generation
        self.log = (None, 0, 0, False)
        self.seen = None
        self.claimed = ()
        self.dirty = False
        self._modSeq = None
        self.rebuilt = False
        self.expunged = []

    def nextModSeq(self):
        """
        @return: the modification sequence of this transaction's changes.
        """
        if self._modSeq is None:
            self.highestModSeq += 1
            self._modSeq = self.highestModSeq
        self.dirty = True
        return self._modSeq

    def add(self, key, info, size=None):
        uid = self.uidNext
        self.uidNext += 1
        self.entries[key] = (uid, self.nextModSeq(), info, size)
        return uid

    def remove(self, key):
        """
        Drop the message C{key}, noting its UID in C{expunged} (the
        tombstones this transaction leaves).
        """
        self.expunged.append(self.entries.pop(key)[0])
        self.nextModSeq()

    def claimRecent(self):
        """
        Claim every UID above L{recentThreshold}: no later call, in this
        process or another, claims them again.

        @return: the UIDs of the messages claimed, ascending (also kept in
            L{claimed}).
        """
        threshold = self.recentThreshold
        if threshold >= self.uidNext - 1:
            return ()
        claimed = []
        for uid, _, _, _ in reversed(self.entries.values()):
            if uid <= threshold:
                break
            claimed.append(uid)
        claimed.reverse()
        self.recentThreshold = self.uidNext - 1
        self.claimed = tuple(claimed)
        self.dirty = True
        return self.claimed

    def serialise(self):
        lines = [self.header()]
        lines.extend(_entryLine(key, entry) for key, entry in self.entries.items())
        return "".join(lines).encode("utf-8", "surrogateescape")

    def header(self):
        recent = ""
        if self.recentThreshold < self.uidNext - 1:
            recent = " R%d" % (self.recentThreshold,)
        generation = " G%d" % (self.generation,) if self.generation else ""
        return "V2 %d %d %d%s%s\n" % (self.uidValidity, self.uidNext, self.highestModSeq, recent, generation)

    def logRecord(self):
        """
        @return: this transaction's changes as a log transaction (see
            the module docstring): its removed keys, then the lines of the
            entries it set, in UID order.
        """
        entries = self.entries
        lines = ["- %s\n" % (key,) for key in entries.removed]
        lines.extend(
            "+ " + _entryLine(key, entries[key])
            for key in sorted(entries.changed, key=lambda key: entries[key][0])
        )
        body = "".join(lines).encode("utf-8", "surrogateescape")
        return b"T %d %d %d %d %08x\n" % (
            self.uidNext, self.highestModSeq, self.recentThreshold, len(lines), zlib.crc32(body)
        ) + body

    @classmethod
    def parse(cls, text):
        """
        @raise ValueError: the text is not a complete, consistent index.
        """
        if not text.endswith("\n"):
            raise ValueError("truncated")
        lines = text.split("\n")
        header = parseHeader(lines[0])
        if header is None or header[0] == 0:
            raise ValueError("bad header")
        uidValidity, uidNext, highest = header
        match = _HEADER.match(lines[0])
        recent, generation = match.group(5), match.group(6)
        recentThreshold = uidNext - 1 if recent is None else int(recent)
        if recentThreshold >= uidNext:
            raise ValueError("claimed UIDs beyond UIDNEXT")
        version = 1 if lines[0].startswith("V1 ") else 2
        entries, lastUid = {}, 0
        for line in lines[1:-1]:
            if version == 1:
                uid, modSeq, info, key = line.split(" ", 3)
                line = " ".join((uid, modSeq, info, "-", key))
            key, entry = _parseEntry(line, uidNext, highest)
            if not lastUid < entry[0] or key in entries:
                raise ValueError("inconsistent line %r" % (line,))
            lastUid = entry[0]
            entries[key] = entry
        return cls(uidValidity, uidNext, highest, entries, recentThreshold,
                   0 if generation is None else int(generation))


def _applyLog(state, data):
    """
    Apply to C{state} the complete transactions at the start of C{data}
    (log octets after its header, or after the transactions already
    applied), in order, each whole or not at all.  The first one
    incomplete, damaged (its checksum) or inconsistent ends the reading:
    it was being written, or a crash cut it short, and was never reported
    done.

    @param state: C{[uidNext, highestModSeq, recentThreshold, entries]},
        changed in place (C{entries} a dict of its own).
    @return: the number of octets of C{data} applied.
    """
    pos, size = 0, len(data)
    while pos < size:
        eol = data.find(b"\n", pos)
        if eol < 0:
            break
        match = _LOG_TRANSACTION.match(data, pos, eol)
        if match is None:
            break
        uidNext, highest, recent, count = (int(n) for n in match.groups()[:4])
        end = eol + 1
        for _ in range(count):
            end = data.find(b"\n", end) + 1
            if end == 0:
                return pos
        body = data[eol + 1:end]
        if zlib.crc32(body) != int(match.group(5), 16) or recent >= uidNext:
            break
        changes = _logChanges(body, uidNext, highest)
        if changes is None:
            break
        entries = state[3]
        for key, entry in changes:
            if entry is None:
                entries.pop(key, None)
            else:
                entries[key] = entry
        state[:3] = uidNext, highest, recent
        pos = end
    return pos


def _logChanges(body, uidNext, highest):
    """
    @return: C{[(key, entry or None for a removal)]} of a log
        transaction's lines, or L{None} when one is not well formed.
    """
    changes = []
    try:
        for line in body.decode("utf-8", "surrogateescape").split("\n")[:-1]:
            if line.startswith("- "):
                changes.append((line[2:], None))
            elif line.startswith("+ "):
                changes.append(_parseEntry(line[2:], uidNext, highest))
            else:
                return None
    except ValueError:
        return None
    return changes


# What L{FolderIndex} keeps of a folder's index, by folder path: the index
# file's identity (inode, time, size), the log's inode and the end of its
# last transaction applied, whether the log applies to the index, and the
# index with that much of the log applied.
_Parsed = collections.namedtuple("_Parsed", (
    "baseId", "logIno", "offset", "applies", "uidValidity", "uidNext", "highestModSeq", "entries",
    "recentThreshold", "generation",
))


class ParsedIndexes:
    """
    What the L{FolderIndex}es of a process keep of their folders' files as
    last read, shared by every view: the index with its log applied
    (L{_Parsed}, by folder path), the listing of C{cur/} and the keyword
    names.  The least recently used go once those hold more than C{limit}
    messages in all (a folder counts one more), so a server that sees
    every account of a large site in turn does not hold them all; a folder
    whose entries went is read again.  Safe to share between threads.
    """

    def __init__(self, limit=PARSED_MESSAGES_KEPT):
        self.limit = limit
        self.weight = 0
        self._items = collections.OrderedDict()  # key: (value, weight)
        self._lock = threading.Lock()

    def __contains__(self, key):
        return key in self._items

    def get(self, key, default=None):
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return default
            self._items.move_to_end(key)
            return found[0]

    def __setitem__(self, key, value):
        # A parsed index weighs its entries; a listing its files; keyword
        # names their (at most 26) names.
        weight = 1 + len(value.entries if isinstance(value, _Parsed) else value[-1])
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.weight -= old[1]
            self._items[key] = (value, weight)
            self.weight += weight
            while self.weight > self.limit and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self.weight -= dropped

    def pop(self, key, default=None):
        with self._lock:
            found = self._items.pop(key, None)
            if found is None:
                return default
            self.weight -= found[1]
            return found[0]


def readIndex(folderPath):
    """
    @return: the L{UidList} of a folder's index with its log applied, as a
        reader without the lock finds it, or L{None} when it is missing or
        damaged.
    """
    return FolderIndex(folderPath, None, folderPath)._readUnlocked()


class _Damaged(Exception):
    """
    The index file is not complete and consistent.

    @ivar text: what it holds.
    """

    def __init__(self, text):
        Exception.__init__(self, "damaged index")
        self.text = text


class FolderIndex:
    """
    The index of one folder, and the locked transaction that keeps it in step
    with the folder's files.

    @param label: names the folder in error messages.
    @param parsed: where the index last read or written is kept, by folder
        path (and its keywords, by C{(path, KEYWORDS_NAME)}; the listing that
        agreed with it, by C{(path, "look")}): a dict shared by the views of
        one store, so that an index another view wrote is not parsed again
        by each of the others.
    @param heard: the store's L{ChangesHeard}: each transaction and
        snapshot sets C{uidList.seen} before it builds (see L{transact}).
    """

    def __init__(self, folderPath, accountPath, label, storeRoot=None, parsed=None, heard=None):
        self.path = folderPath
        self._new = os.path.join(folderPath, "new")
        self._cur = os.path.join(folderPath, "cur")
        self._indexPath = os.path.join(folderPath, INDEX_NAME)
        self._logPath = os.path.join(folderPath, LOG_NAME)
        self._keywordsPath = os.path.join(folderPath, KEYWORDS_NAME)
        self._accountPath = accountPath
        self._storeRoot = storeRoot
        self._label = label
        self._parsed = ParsedIndexes() if parsed is None else parsed
        self._heard = ChangesHeard() if heard is None else heard
        self._local = None  # whether on a filesystem of this host only, once asked

    def transact(self, operation=None, build=None, claim=False, syncs=None):
        """
        Under the folder lock: read the index, take in the disk's changes
        (move C{new/} to C{cur/}, give UIDs to new files, drop vanished ones),
        run C{operation(uidList, files, keywords)}, with C{claim} claim the
        messages no view has claimed (L{UidList.claimRecent}), save the
        index if anything changed, and call C{build(uidList, files,
        keywords)}, with C{uidList.seen} set to C{(mark, log, time)}: the
        mark of L{ChangesHeard} this is current at (L{None} when something
        else was heard meanwhile), the identity of the log as left,
        C{(inode, size)}, and when (the monotonic clock).

        With C{syncs} (a L{Syncs}), the transaction does not wait for the
        folder lock (L{LockHeld} when another holds it) and leaves the
        syncs of its log and directories to C{syncs} (it still waits for
        the rare others: a whole index written, tombstones): for a caller
        that cannot wait, and tells of the result once C{syncs} ran.  Other
        transactions may read and append to the log meanwhile; each syncs
        the log before it tells of its own result, and with it what came
        before.

        C{files} maps each basename in C{cur/} to its file name; an operation
        that renames or removes files keeps it up to date, and adds the
        directories whose names it changed to C{uidList.unsynced}.  Those
        directories (and the folder's, when the index was written whole)
        are fsynced once the lock is released (other transactions of the
        folder go on meanwhile) and before this returns; the changes to the
        index are appended to its log and synced under the lock
        (L{_write}).  So what a transaction returns is durable, and so is
        every earlier transaction's change.

        @return: C{(build's result, operation's result)}.
        @raise NotFound: the folder is gone.
        @raise TemporaryFailure: an I/O error; the index is unchanged.
        """
        try:
            with FolderLock(self.path, wait=syncs is None) as lock:
                begun = self._heard.begin(self.path)
                changed = True
                try:
                    uidList = self._read(lock)
                    readModSeq = uidList.highestModSeq
                    # What the index was when read, for a view to build on.
                    uidList.readAt = (uidList.uidValidity, uidList.uidNext, readModSeq)
                    uidList.unsynced = set()
                    keywords = self._keywords()
                    kept = self._keptListing(uidList)
                    if kept is None:
                        files = self._scan()
                        self._reconcile(uidList, files)
                    else:
                        files, changed = kept
                        if changed is not None:
                            changed.update(self._takeNew(files))
                            self._reconcile(uidList, files, changed)
                    if uidList.recentThreshold is None:
                        # Rebuilt: what is there is not new.
                        uidList.recentThreshold = uidList.uidNext - 1
                    result = operation(uidList, files, keywords) if operation else None
                    if claim:
                        uidList.claimRecent()
                    if uidList.expunged or uidList.rebuilt:
                        self._recordExpunges(uidList, readModSeq, syncs if self._tombstonesMayWait() else None)
                    if uidList.dirty:
                        self._write(uidList, syncs)
                        lock.rememberHeader(uidList.header())
                    changed = bool(uidList.dirty or uidList.unsynced)
                finally:
                    # Also when it failed half-way: what it did is heard.
                    mark = self._heard.settle(self.path, begun, changed)
                logIno, _, size, _ = uidList.log
                uidList.seen = (mark, (logIno, size), time.monotonic())
                built = build(uidList, files, keywords) if build else None
                if mark is not None:
                    self._parsed[(self.path, "listing")] = (
                        mark, uidList.log[:3], uidList.uidValidity, uidList.seen[2], files)
            if syncs is not None:
                for directory in uidList.unsynced:
                    syncs.addDirectory(directory)
            else:
                for directory in sorted(uidList.unsynced):
                    fsyncDirectory(directory)
            return built, result
        except FileNotFoundError as e:
            raise NotFound("mailbox %s is gone: %s" % (self._label, e)) from e
        except OSError as e:
            raise TemporaryFailure("mailbox %s: %s" % (self._label, e)) from e

    def _keptListing(self, uidList):
        """
        The listing of C{cur/} as the last transaction of this process left
        it, taken (it is the caller's now), and brought up to date with
        what the change feed heard since; so a transaction costs what
        changed, not the size of the folder.

        When nothing else was heard (the folder's mark is the same, with
        nothing left to read) and the index is as that transaction left
        it, the listing is the folder's and the index agrees with it.
        Else the changes of others heard since are made to the listing
        (L{_replay}); then C{new/} is listed, and the keys changed are
        compared with the index.

        @return: C{(files, changed)}: C{{basename: filename}} and the keys
            the changes heard were of (L{None} when none was and the index
            is as left), or L{None} when C{cur/} must be listed.
        """
        kept = self._parsed.pop((self.path, "listing"))
        if kept is None or uidList.rebuilt or not self._mayTake(kept, uidList):
            return None
        mark, log, _, _, files = kept
        if self._heard.isMarked(self.path, mark) and uidList.log[:3] == log:
            return files, None
        changes = self._heard.heardSince(self.path, mark)
        changed = None if changes is None else self._replay(files, changes)
        return None if changed is None else (files, changed)

    def _listingHeard(self, uidList):
        """
        For a reader without the lock (L{snapshot}): a copy of the listing
        the last transaction of this process left, with the changes of
        others heard since made to it (L{_replay}), when it agrees with
        the index as read: as many files as entries, and the same info
        suffixes for the keys changed (the others agreed when it was left,
        and whatever changed them was heard).

        @return: C{{basename: filename}}, or L{None} when C{cur/} must be
            listed.
        """
        name = (self.path, "listing")
        kept = self._parsed.get(name)
        if kept is None or not self._mayTake(kept, uidList):
            return None
        mark, log, _, _, files = kept
        if log[0] != uidList.log[0] or log[1] > uidList.log[1]:
            return None  # left by a transaction after the index was read
        changes = self._heard.heardSince(self.path, mark)
        if changes is None:
            return None
        files = dict(files)
        if self._parsed.get(name) is not kept:
            return None  # a transaction took it meanwhile, and may have changed it
        changed = self._replay(files, changes)
        if changed is None or not _agree(uidList.entries, files, changed):
            return None
        return files

    def _mayTake(self, kept, uidList):
        """
        @param kept: C{(mark, log, uidvalidity, when, files)}, the listing a
            transaction left.
        @return: whether it may be brought up to date from what the feed
            heard: never past L{CURRENT_FOR} seconds, never for another
            UIDVALIDITY (an index made again, a folder deleted and made
            again), never while the kernel may hold events not heard yet,
            and never for a folder the feed does not watch (a polled folder)
            or cannot hear all of (on a filesystem other hosts share).
        """
        return (self._isLocal() and time.monotonic() - kept[3] <= CURRENT_FOR
                and uidList.uidValidity == kept[2] and not self._heard.pending())

    def _tombstonesMayWait(self):
        """
        @return: whether a transaction's tombstones may be synced with its
            log, after the index is written (L{_recordExpunges}): on a
            filesystem of this host only, whose boot the system tells.
        """
        return bootId() is not None and self._isLocal()

    def _isLocal(self):
        """
        @return: whether the folder is on a filesystem of this host only
            (L{onLocalFilesystem}), asked once.
        """
        if self._local is None:
            self._local = onLocalFilesystem(self.path)
        return self._local

    def _replay(self, files, changes):
        """
        Make the changes of others heard in C{cur/} (L{ChangesHeard.heardSince})
        to the listing C{files}, in order; those of C{new/} are left out.

        @return: the keys changed, or L{None} when a change does not fit
            the listing (a name removed it does not hold, one made beside
            another of its key): something was not heard in order, and
            C{cur/} must be listed.
        """
        changed = set()
        for directory, name, what in changes:
            if directory != self._cur or name.startswith(".") or "\n" in name or "\r" in name:
                continue  # no message file has such a name
            key = name.partition(":")[0]
            present = files.get(key)
            if what == MADE:
                if present is not None and present != name:
                    return None
                files[key] = name
            elif present != name:
                return None
            elif what == REMOVED:
                del files[key]
            changed.add(key)
        return changed

    def _takeNew(self, files):
        """
        Move C{new/} into C{cur/}, into the listing C{files} too.

        @return: the keys moved.
        """
        moved = []
        for name in os.listdir(self._new):
            if name.startswith("."):
                continue
            target = name if ":" in name else name + ":2,"
            try:
                self.rename(os.path.join(self._new, name), os.path.join(self._cur, target))
            except FileNotFoundError:
                continue  # another program took it
            key = target.partition(":")[0]
            files[key] = target
            moved.append(key)
        return moved

    def runSyncs(self, syncs):
        """
        L{Syncs.run}, failing as L{transact} does; blocking.
        """
        try:
            syncs.run()
        except OSError as e:
            self._failedSync(e)

    def failedSyncs(self, failure):
        """
        Fail as L{transact} does for the L{OSError} of C{failure}, a sync
        of its L{Syncs}; an errback.
        """
        failure.trap(OSError)
        self._failedSync(failure.value)

    def _failedSync(self, e):
        if isinstance(e, FileNotFoundError):
            raise NotFound("mailbox %s is gone: %s" % (self._label, e)) from e
        raise TemporaryFailure("mailbox %s: %s" % (self._label, e)) from e

    def _recordExpunges(self, uidList, readModSeq, syncs=None):
        """
        Add this transaction's tombstones to C{mdpy-expunged} (before the
        index is written, so a removal the index shows is never missing
        there); a folder without history, or with another UIDVALIDITY's,
        starts it at C{readModSeq}, the index's as read.

        With C{syncs} (a folder of this host only), the line's sync is
        left to it, so it may reach the disk after the index's: the file
        is first rewritten to name this boot of the machine, and a history
        a crash of another boot may have cut short is kept as complete
        from C{readModSeq} on only.
        """
        if uidList.expunged and not uidList.rebuilt:
            modSeq = uidList.nextModSeq()
            if appendExpunged(self.path, uidList.uidValidity, modSeq, uidList.expunged, syncs):
                return
        found = None if uidList.rebuilt else readExpunged(self.path)
        if found is None or found[0] != uidList.uidValidity:
            found = (uidList.uidValidity, ExpungeHistory(readModSeq))
        history = found[1]
        if history.incomplete:
            history.incomplete = False
            history.prunedModSeq = max(history.prunedModSeq, readModSeq)
        if uidList.expunged:
            history.record(uidList.nextModSeq(), uidList.expunged)
        writeExpunged(self.path, uidList.uidValidity, history, None if syncs is None else bootId())

    def expungedSince(self, uidValidity, modSeq):
        """
        See L{mdpy.interfaces.IMailbox.expungedSince}; blocking.
        """
        try:
            found = readExpunged(self.path)
        except OSError as e:
            raise TemporaryFailure("mailbox %s: %s" % (self._label, e)) from e
        if found is None or found[0] != uidValidity:
            return None
        return found[1].since(modSeq)
    def snapshot(self, build, claim=False):
        """
        Without the folder lock, what L{transact} without an operation
        would build when it would change nothing: C{new/} is empty and the
        files in C{cur/} are exactly those the index lists, with the info
        suffixes it lists.  The index is only ever replaced whole (a rename)
        or appended to, and a message file name is never used again, so an
        index and a listing that agree are the folder as of the index's
        writing, which holds every change completed before this call.

        The listing is not made again while C{new/} and C{cur/} keep the
        modification times they had when it was made, if those were older
        than L{LOOK_MARGIN} then, and the index is the same: any change of
        their names since gives them a later time (L{_look}).  Nor is it
        made when the listing a transaction of this process left, with the
        changes the feed heard since, agrees with the index
        (L{_listingHeard}).

        @param claim: whether the view claims what it takes in (see
            L{transact}): then a folder with messages no view claimed needs
            the locked transaction.
        @return: C{build(uidList, files, keywords)}, or L{None} when only a
            locked transaction can tell (new files, files renamed or removed
            by another program or meanwhile, an index missing or damaged,
            messages to claim).
        @raise NotFound: the folder is gone.
        """
        mark = self._heard.mark(self.path)
        try:
            look = self._look()
            uidList = self._readUnlocked()
            if uidList is None or (claim and uidList.recentThreshold < uidList.uidNext - 1):
                return None
            entries = uidList.entries
            kept = self._parsed.get((self.path, "look"))
            if kept is not None and kept[0] == look and kept[1] is entries:
                files = kept[2]
            else:
                if any(not name.startswith(".") for name in os.listdir(self._new)):
                    return None
                files = self._listingHeard(uidList)
                if files is None:
                    files = self._listCur()
                    if not _agree(entries, files, files):
                        return None
                if look is not None:
                    self._parsed[(self.path, "look")] = (look, entries, files)
            # Read last: keyword letters are only ever added, so these name
            # every letter of the files listed.
            keywords = self._keywords()
        except FileNotFoundError as e:
            raise NotFound("mailbox %s is gone: %s" % (self._label, e)) from e
        except OSError:
            return None
        uidList.seen = (mark, (uidList.log[0], uidList.log[2]), time.monotonic())
        return build(uidList, files, keywords)

    def isCurrent(self, seen):
        """
        @param seen: the C{uidList.seen} of a transaction or snapshot.
        @return: whether nothing changed the folder since, as far as this
            process heard (L{ChangesHeard}), and its log is as it was then,
            so that a sync would build the same: without reading the folder.
            Never past L{CURRENT_FOR} seconds.  Only on the reactor thread
            (the change feed reads what the kernel has for it first).
        """
        if seen is None or seen[0] is None or time.monotonic() - seen[2] > CURRENT_FOR:
            return False
        self._heard.drain()
        if not self._heard.isMarked(self.path, seen[0]):
            return False
        try:
            st = os.stat(self._logPath)
        except OSError:
            return False
        return (st.st_ino, st.st_size) == seen[1]

    @contextmanager
    def _expecting(self, *paths):
        """
        Around a rename or removal of C{paths} (in C{new/} or C{cur/}) by a
        transaction: their events expected (L{ChangesHeard}), and no
        longer if it failed.
        """
        heard = self._heard
        events = [os.path.split(path) for path in paths]
        for directory, name in events:
            heard.expect(self.path, directory, name)
        try:
            yield
        except BaseException:
            for directory, name in events:
                heard.withdraw(self.path, directory, name)
            raise

    def rename(self, source, target):
        """
        Rename a message file from C{source} to C{target} (paths in C{new/}
        or C{cur/}) in a transaction, its events expected.
        """
        with self._expecting(source, target):
            os.rename(source, target)

    def place(self, source, target):
        """
        L{rename} from outside C{new/} and C{cur/} (C{tmp/}, unwatched).
        """
        with self._expecting(target):
            os.rename(source, target)

    def unlink(self, path):
        """
        Remove a message file in a transaction, its event expected.
        """
        with self._expecting(path):
            os.unlink(path)

    def _look(self):
        """
        @return: what C{new/} and C{cur/} look like (their inodes and
            modification times), when both were last changed more than
            L{LOOK_MARGIN} seconds ago, else L{None}.  A directory's time is
            set from the kernel's coarse clock whenever a name in it is
            made, renamed or removed; so, once it is older than the clock
            by more than one of its ticks (and whatever another host's
            clock is off, for a folder on a network filesystem), any later
            change gives it another time.
        @raise FileNotFoundError: the folder is gone.
        """
        now = time.clock_gettime_ns(_COARSE_CLOCK)
        new = os.stat(self._new)
        cur = os.stat(self._cur)
        if max(new.st_mtime_ns, cur.st_mtime_ns) > now - int(LOOK_MARGIN * 1e9):
            return None
        return new.st_ino, new.st_mtime_ns, cur.st_ino, cur.st_mtime_ns

    def _keywords(self):
        """
        @return: the folder's L{Keywords}, read again only when its file
            changed since it was read last.
        """
        try:
            st = os.stat(self._keywordsPath)
        except FileNotFoundError:
            return Keywords(self.path, (None,) * 26)
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._parsed.get((self.path, KEYWORDS_NAME))
        if cached is not None and cached[0] == seen:
            return Keywords(self.path, cached[1])
        keywords = Keywords(self.path)
        # Names are only ever added: what was read holds at least those of
        # the file looked at.
        self._parsed[(self.path, KEYWORDS_NAME)] = (seen, tuple(keywords.names))
        return keywords

    def _readUnlocked(self):
        """
        @return: the index as a reader without the lock finds it (to be
            read only), or L{None} when it is missing or damaged.
        """
        try:
            return self._load(copy=False)
        except (FileNotFoundError, _Damaged):
            return None

    def _load(self, copy):
        """
        Read the index and apply its log, from what was read last when the
        files are the same (the index by its inode, time and size; the
        log by its inode, read on from where it was left).

        @param copy: whether the caller changes the entries (then they are
            its own, noting what it changes), else they may be those kept.
        @return: the L{UidList}, with L{UidList.log} set.
        @raise FileNotFoundError: there is no index.
        @raise _Damaged: the index is not complete and consistent.
        """
        cached = self._parsed.get(self.path)
        path = self._indexPath
        st = os.stat(path)
        if cached is None or cached.baseId != (st.st_ino, st.st_mtime_ns, st.st_size):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                text = _readWhole(fd).decode("utf-8", "surrogateescape")
            finally:
                os.close(fd)
            try:
                base = UidList.parse(text)
            except ValueError as e:
                raise _Damaged(text) from e
            cached = _Parsed((st.st_ino, st.st_mtime_ns, st.st_size), None, 0, False, base.uidValidity,
                             base.uidNext, base.highestModSeq, base.entries, base.recentThreshold,
                             base.generation)
        logIno, offset, applies = cached.logIno, cached.offset, cached.applies
        try:
            lst = os.stat(self._logPath)
        except FileNotFoundError:
            lst = None
        if logIno is not None and (lst is None or lst.st_ino != logIno or lst.st_size < offset):
            # The log went, or another replaced it (folded into a new index
            # meanwhile): only the index as written can tell.
            return self._reload(copy)
        data = b""
        if lst is not None and (logIno is None or applies and lst.st_size > offset):
            try:
                fd = os.open(self._logPath, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return self._reload(copy)
            try:
                lst = os.fstat(fd)
                if logIno is None:
                    data = _readWhole(fd)
                    header = _LOG_HEADER.match(data)
                    applies = header is not None and (int(header.group(1)), int(header.group(2))) == (
                        cached.uidValidity, cached.generation)
                    offset = header.end() if applies else 0
                    data = data[offset:]
                elif lst.st_ino != logIno:
                    return self._reload(copy)  # replaced since it was looked at
                else:
                    data = os.pread(fd, lst.st_size - offset, offset)
            finally:
                os.close(fd)
        if lst is not None:
            logIno = lst.st_ino
        state = [cached.uidNext, cached.highestModSeq, cached.recentThreshold, cached.entries]
        if data and applies:
            state[3] = dict(cached.entries)
            offset += _applyLog(state, data)
        cached = cached._replace(logIno=logIno, offset=offset, applies=applies, uidNext=state[0],
                                 highestModSeq=state[1], recentThreshold=state[2], entries=state[3])
        self._parsed[self.path] = cached
        uidList = UidList(cached.uidValidity, cached.uidNext, cached.highestModSeq,
                          _Entries(cached.entries) if copy else cached.entries, cached.recentThreshold,
                          cached.generation)
        uidList.log = (logIno, offset, 0 if lst is None else lst.st_size, applies)
        return uidList

    def _reload(self, copy):
        """
        L{_load} without what was kept: the log went or was replaced.
        """
        self._parsed.pop(self.path, None)
        return self._load(copy)

    def _write(self, uidList, syncs=None):
        """
        Save a transaction's changes: appended to the log and synced (or
        left to C{syncs}) when it applies to the index and stays below
        L{LOG_COMPACT_SIZE}, else the index is written whole
        (L{_writeWhole}).  A log whose end a crash cut short is cut back
        first to its last complete transaction, so nothing after it is
        ever read.
        """
        logIno, offset, size, applies = uidList.log
        record = uidList.logRecord() if applies and not uidList.rebuilt else None
        if record is None or offset + len(record) > LOG_COMPACT_SIZE:
            self._writeWhole(uidList)
            return
        try:
            fd = os.open(self._logPath, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._writeWhole(uidList)
            return
        try:
            if os.fstat(fd).st_ino != logIno:
                raise OSError("log %s replaced under the lock" % (LOG_NAME,))
            if size > offset:
                os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            writeAll(fd, record)
            if syncs is None:
                os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            raise
        if syncs is None:
            os.close(fd)
        else:
            syncs.files.append(fd)
        end = offset + len(record)
        uidList.log = (logIno, end, end, True)
        self._remember(uidList, logIno, end, True)

    def _writeWhole(self, uidList):
        """
        Fold the log into a new index: the index of the next generation is
        written and its name synced before a new, empty log of that
        generation replaces the old one, so a crash between the two leaves
        the new index with the old log, which no longer applies to it.
        """
        uidList.generation += 1
        path = self._indexPath
        replaceFile(path, uidList.serialise())
        fsyncDirectory(self.path)
        header = b"L1 %d %d\n" % (uidList.uidValidity, uidList.generation)
        replaceFile(self._logPath, header)
        uidList.unsynced.add(self.path)
        st = os.stat(path)
        logIno = os.stat(self._logPath).st_ino
        uidList.log = (logIno, len(header), len(header), True)
        self._remember(uidList, logIno, len(header), True, (st.st_ino, st.st_mtime_ns, st.st_size))

    def _remember(self, uidList, logIno, offset, applies, baseId=None):
        """
        Keep the index a transaction wrote for the next reader.

        @param baseId: the index file's identity, when it was written.
        """
        if baseId is None:
            cached = self._parsed.get(self.path)
            if cached is None:
                return
            baseId = cached.baseId
        self._parsed[self.path] = _Parsed(
            baseId, logIno, offset, applies, uidList.uidValidity, uidList.uidNext,
            uidList.highestModSeq, dict(uidList.entries), uidList.recentThreshold, uidList.generation,
        )

    def _read(self, lock):
        try:
            uidList = self._load(copy=True)
        except FileNotFoundError:
            old = None
        except _Damaged as e:
            old = parseHeader(e.text.partition("\n")[0])
            _log.warn("rebuilding corrupt index {path}", path=os.path.join(self.path, INDEX_NAME))
        else:
            last = lock.lastHeader()
            if last and last[0] == uidList.uidValidity and (
                    last[1] > uidList.uidNext or last[2] > uidList.highestModSeq):
                # Older than the last transaction (its log lost): UIDs and
                # modification sequences given out are never given again.
                _log.warn("index {path} is older than its last change; going on from there",
                          path=os.path.join(self.path, INDEX_NAME))
                uidList.uidNext = max(uidList.uidNext, last[1])
                uidList.highestModSeq = max(uidList.highestModSeq, last[2])
                uidList.dirty = True
            return uidList
        known = [header for header in (old, lock.lastHeader()) if header]
        uidList = UidList(
            allocateUidValidity(
                self._accountPath, max([h[0] for h in known], default=0) + 1, self._storeRoot
            ),
            max([h[1] for h in known], default=1),
            max([h[2] for h in known], default=0),
            _Entries(),
        )
        if known:
            # Set once the messages found are taken in (L{transact}); a
            # folder indexed for the first time keeps what was delivered
            # to it new.
            uidList.recentThreshold = None
        uidList.dirty = uidList.rebuilt = True
        return uidList

    def _scan(self):
        """
        Move C{new/} into C{cur/} and list C{cur/}.

        @return: C{{basename: filename}}.
        """
        self._takeNew({})
        return self._listCur()

    def _listCur(self):
        """
        @return: C{{basename: filename}} of the messages in C{cur/}.
        """
        names = os.listdir(self._cur)
        files = {name.partition(":")[0]: name for name in names}
        joined = "\0" + "\0".join(names)
        if len(files) == len(names) and "\0." not in joined and "\n" not in joined and "\r" not in joined:
            return files  # as usual: a file for each key, none hidden
        files = {}
        for name in names:
            if name.startswith(".") or "\n" in name or "\r" in name:
                continue
            key = name.partition(":")[0]
            if key not in files or name > files[key]:
                files[key] = name
        return files

    def _wireSize(self, key, name):
        """
        @return: the size with CR LF line endings of a file first seen now:
            from its C{,W=} field, else counted once here and kept in the
            index (files of other programs may have bare LF line endings).
        """
        match = _WIRE_SIZE.search(key)
        if match:
            return int(match.group(1))
        try:
            with open(os.path.join(self.path, "cur", name), "rb") as file:
                return normalisedFileSize(file)
        except OSError:
            return None

    def _reconcile(self, uidList, files, keys=None):
        """
        Make the index agree with the listing C{files}: entries of files
        gone are removed, changed info suffixes raise the modification
        sequence, new files get UIDs.

        @param keys: the only keys that may disagree, when known (the index
            agreed with the listing but for what changed of these);
            L{None} for all.
        """
        entries = uidList.entries
        if keys is None:
            gone = [key for key in entries if key not in files]
            keys = files
        else:
            gone = sorted((key for key in keys if key not in files and key in entries),
                          key=lambda key: entries[key][0])
            keys = sorted(key for key in keys if key in files)
        for key in gone:
            uidList.remove(key)
        fresh = []
        for key in keys:
            name = files[key]
            entry = entries.get(key)
            info = name.partition(":")[2]
            if entry is None:
                fresh.append(key)
            elif entry[2] != info:
                entries[key] = (entry[0], uidList.nextModSeq(), info, entry[3])
        if len(fresh) > 1:
            cur = os.path.join(self.path, "cur")

            def age(key):
                # The file time first; files written within one tick of the
                # kernel's coarse clock are ordered by the time and counter
                # in their names (<seconds>.M<usec>P<pid>Q<n>), numerically.
                try:
                    mtime = os.stat(os.path.join(cur, files[key])).st_mtime_ns
                except FileNotFoundError:
                    mtime = 0
                match = _NAME_ORDER.match(key)
                numbers = tuple(int(n) for n in match.groups()) if match else ()
                return (mtime, numbers, key)

            fresh.sort(key=age)
        for key in fresh:
            uidList.add(key, files[key].partition(":")[2], self._wireSize(key, files[key]))
