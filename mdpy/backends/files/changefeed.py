# -*- test-case-name: tests.test_changefeed -*-
"""
Change feeds: who hears that a mailbox changed.

L{MaildirChangeFeed} carries the changes one process makes to its
subscribers, as L{mdpy.backends.local.ChangeFeed} does, and also hears
the changes other processes make in the Maildir folders someone subscribed to (another mdpy process, a program
that drops a file into C{new/}): through inotify on Linux, by looking at
the folders' directories every second elsewhere, or past L{MAX_WATCHES}.

Invariants: subscribers are called on the reactor thread; the changes a
folder sees during one reactor turn make one call to each of its
subscribers.
"""

import fcntl
import os
import struct
import termios

from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from mdpy.backends.local import ChangeFeed
from mdpy.backends.files.maildir import SUBSCRIPTIONS_NAME
from mdpy.backends.files.maildirindex import MADE, REMOVED, WRITTEN, ChangesHeard
from mdpy.errors import MailError

try:
    from twisted.internet import inotify
except ImportError:  # not Linux
    inotify = None

# Two inotify watches (new/ and cur/) per folder: 256 watched folders by
# default, far below the usual per-user limit (fs.inotify.max_user_watches,
# 8192 and up), which the other programs of the user share.
MAX_WATCHES = 512
POLL_INTERVAL = 1.0
# What a change in new/ or cur/ looks like: a file renamed in (delivered,
# or its flags changed), renamed out, removed, linked in, or written in
# place by a program that does not go through tmp/.
_EVENTS = (
    inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_DELETE | inotify.IN_CREATE
    | inotify.IN_CLOSE_WRITE
    if inotify is not None else 0
)
_SUBDIRS = ("new", "cur")
# What a change of an account's folders looks like in its directory: a
# folder's directory made, deleted or renamed, or the subscriptions file
# replaced.
_ACCOUNT_EVENTS = (
    inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO
    if inotify is not None else 0
)


_EVENT = struct.Struct("=LLLL")


class _EventPath:
    """
    What a watch's callbacks get as the path of an event: the name of the
    file in the watched directory alone.  Twisted's reader makes a
    L{FilePath} of it, which cost more than all the rest of reading an
    event, and the feed's callbacks only need the name.
    """

    __slots__ = ("_name",)

    def __init__(self, name):
        self._name = name

    def basename(self):
        return self._name


class _INotify(inotify.INotify if inotify is not None else object):
    """
    Twisted's inotify reader, telling its owner when it closed (it does
    when a watched directory is deleted) and when the kernel dropped
    events (its queue overflowed).  Its callbacks get an L{_EventPath}.
    """

    def _doRead(self, data):
        """
        See C{twisted.internet.inotify.INotify._doRead} (without its
        C{autoAdd}, which the feed does not use).
        """
        buffer = self._buffer + data
        offset = 0
        while len(buffer) - offset >= _EVENT.size:
            wd, mask, _, size = _EVENT.unpack_from(buffer, offset)
            end = offset + _EVENT.size + size
            if end > len(buffer):
                break
            name = buffer[offset + _EVENT.size:end].rstrip(b"\0")
            offset = end
            watch = self._watchpoints.get(wd)
            if watch is None:
                if mask & inotify.IN_Q_OVERFLOW:
                    self._overflowed()
                continue
            path = _EventPath(name)
            for callback in watch.callbacks:
                callback(watch, path, mask)
            if mask & inotify.IN_DELETE_SELF:
                self._rmWatch(wd)
                self.loseConnection()
        self._buffer = buffer[offset:]

    # How many reads are under way (the reactor's, a drain): the events
    # they took from the kernel may not have been handed on yet.
    _reading = 0

    def pending(self):
        """
        @return: whether the kernel may have events this reader did not
            hand on yet (it has some to read, a read is handing some on,
            or one was read only in part); true when that cannot be known.
            Reads nothing, so any thread may ask.
        """
        try:
            waiting = struct.unpack("i", fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except (OSError, TypeError):
            return True
        return waiting > 0 or self._reading > 0 or bool(self._buffer)

    def doRead(self):
        self._reading += 1
        try:
            return inotify.INotify.doRead(self)
        finally:
            self._reading -= 1

    def drain(self):
        """
        Read and hand on every event the kernel has for this reader now,
        without waiting for the reactor to.

        @return: whether it could (else the reactor finds why soon).
        """
        self._reading += 1
        try:
            while True:
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    return True
                except OSError:
                    return False
                if not data:
                    return False
                self._doRead(data)
        finally:
            self._reading -= 1

    def __init__(self, reactor, lost, overflowed):
        inotify.INotify.__init__(self, reactor)
        self._lost = lost
        self._overflowed = overflowed

    def connectionLost(self, reason):
        """
        Close the descriptor once: a second call (from a reactor stopping,
        which closes every reader it held when it began) finds C{fileno()}
        -1 and closes nothing, neither EBADF nor another file that took the
        number since.
        """
        if self._fd < 0:
            return
        inotify.INotify.connectionLost(self, reason)
        self._fd = -1
        self._lost(self)


class MaildirChangeFeed(ChangeFeed):
    """
    The changes made by any process in the Maildir folders that have
    subscribers: their C{new/} and C{cur/} directories are watched by
    inotify, or looked at every C{pollInterval} seconds where inotify is
    not available or past C{maxWatches}.  A subscriber of a whole account
    (folder L{None}) hears this process's changes and those other processes
    make in folders someone subscribed to, and, with folder L{None}, that
    another process made, deleted or renamed a folder or changed the
    subscriptions: the account's directory is watched (or polled) too.

    Invariants: once an inotify reader was made, the reactor's C{before
    shutdown} trigger ends the watching (L{_stopHearing}) before the
    reactor closes the connections, whose sessions then unsubscribe, and
    its readers; nothing is watched again after it.

    The folders watched by inotify are kept in C{heard} (a
    L{ChangesHeard}): which they are, and which events are not the
    changes of this process's own transactions, which they expect and
    which are not reported again.

    @ivar polled: the C{(account, folder)} pairs looked at by polling.
    """

    def __init__(self, folderPath, reactor=None, accountKey=str, maxWatches=MAX_WATCHES,
                 pollInterval=POLL_INTERVAL, useINotify=True, heard=None):
        """
        @param folderPath: C{folderPath(account, folder)} returns the
            directory of a folder (L{mdpy.backends.files.maildir.MaildirStore.folderPath}).
        @param maxWatches: the most inotify watches held (two a folder).
        @param useINotify: L{False} polls every folder.
        @param heard: the L{ChangesHeard} of the store whose folders these
            are (L{mdpy.backends.files.maildir.MaildirStore.changesHeard}).
        """
        ChangeFeed.__init__(self, reactor, accountKey)
        self._folderPath = folderPath
        self._maxWatches = maxWatches
        self._pollInterval = pollInterval
        self._useINotify = useINotify and inotify is not None
        self._inotify = None
        self._watched = {}  # (account, folder): watched paths
        self._folders = {}  # (account, folder) watched: its directory
        self._changesHeard = ChangesHeard() if heard is None else heard
        self._changesHeard.drain = self._drain
        self._changesHeard.pending = self._unread
        self.polled = {}  # (account, folder): what the directories looked like
        self._poller = None
        self._hearing = True  # until the reactor stops
        self._stopsWithReactor = False

    def startWatching(self, account, folder):
        """
        See L{ChangeFeed.startWatching}.
        """
        if not self._hearing:
            return
        key = (account, folder)
        if not self._watch(key):
            self.polled[key] = self._look(key)
            self._startPolling()

    def stopWatching(self, account, folder):
        """
        See L{ChangeFeed.stopWatching}.
        """
        key = (account, folder)
        if key in self._folders:
            self._changesHeard.unwatch(self._folders.pop(key))
        for path in self._watched.pop(key, ()):
            try:
                self._inotify.ignore(path)
            except KeyError:
                pass  # gone with its directory
        self.polled.pop(key, None)
        if not self.polled and self._poller is not None:
            self._poller.stop()
            self._poller = None
        self._closeIdleReader()

    def close(self):
        """
        Stop hearing other processes, as when the reactor stops: the
        inotify reader is closed and the polling ends; the subscribers
        still hear this process's own changes.
        """
        self._stopHearing()

    def _stopHearing(self):
        """
        The reactor is stopping: stop hearing other processes, closing the
        inotify reader and the polling before the reactor closes every
        connection (the sessions' subscriptions end with them, with nothing
        left to stop) and every reader.  The subscribers still hear this
        process's own changes (L{notify}).
        """
        self._hearing = False
        self._watched.clear()
        self._folders.clear()
        self._changesHeard.unwatchAll()
        self.polled.clear()
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        self._closeIdleReader()

    def _closeIdleReader(self):
        """
        Close the inotify reader when it watches nothing, so that a feed
        nobody subscribes to holds no file descriptor.
        """
        if self._inotify is not None and not self._watched:
            reader, self._inotify = self._inotify, None
            reader.connectionLost(Failure(ConnectionDone()))

    # inotify

    def _watch(self, key):
        """
        Watch a folder's directories with inotify.

        @return: whether it is watched.
        """
        if not self._useINotify or 2 * (len(self._watched) + 1) > self._maxWatches:
            return False
        watched = []
        try:
            if self._inotify is None:
                self._inotify = _INotify(self._reactor, self._inotifyLost, self._overflowed)
                self._inotify.startReading()
                if not self._stopsWithReactor:
                    self._stopsWithReactor = True
                    self._reactor.addSystemEventTrigger("before", "shutdown", self._stopHearing)
            if key[1] is None:
                path = FilePath(self._folderPath(key[0], "INBOX"))
                self._inotify.watch(path, _ACCOUNT_EVENTS, callbacks=[
                    lambda watch, path, mask: self._accountChanged(key[0], path, mask)])
                watched.append(path)
            if key[1] is not None:
                folderPath = self._folderPath(*key)
            for sub in _SUBDIRS if key[1] is not None else ():
                directory = os.path.join(folderPath, sub)
                path = FilePath(directory)
                self._inotify.watch(path, _EVENTS, callbacks=[
                    lambda watch, path, mask, directory=directory: self._folderChanged(
                        key, folderPath, directory, path, mask)])
                watched.append(path)
        except Exception:
            # No such folder (yet), no inotify here, or the user's limit
            # reached: polled instead.
            for path in watched:
                self._inotify.ignore(path)
            self._closeIdleReader()
            return False
        self._watched[key] = watched
        if key[1] is not None:
            self._folders[key] = folderPath
            self._changesHeard.watch(folderPath)
        return True

    def _folderChanged(self, key, folderPath, directory, path, mask=0):
        """
        Something happened in a watched folder's C{new/} or C{cur/}: report
        it, unless a transaction of this process said it would do it.
        """
        if mask & (inotify.IN_MOVED_TO | inotify.IN_CREATE):
            what = MADE
        elif mask & (inotify.IN_MOVED_FROM | inotify.IN_DELETE):
            what = REMOVED
        else:
            what = WRITTEN
        if self._changesHeard.heard(folderPath, directory, os.fsdecode(path.basename()), what):
            self.changed(*key)

    def _overflowed(self):
        """
        The kernel dropped events: every watched folder may have changed.
        """
        self._changesHeard.lost()
        for key in list(self._watched):
            self.changed(*key)

    def _drain(self):
        """
        Take in the events the kernel has now (L{ChangesHeard.drain}).
        """
        if self._inotify is not None and not self._inotify.drain():
            self._changesHeard.lost()

    def _unread(self):
        """
        Whether the kernel may have events not taken in yet
        (L{ChangesHeard.pending}); any thread.
        """
        reader = self._inotify
        return reader is None or reader.pending()

    def _accountChanged(self, account, path, mask):
        """
        Something happened in an account's directory: report a folder's
        directory made, deleted or renamed, or the subscriptions replaced,
        to the subscribers of the whole account (folder L{None}).  A folder
        being made is reported again a polling interval later, when its
        Maildir directories are there.
        """
        name = os.fsdecode(path.basename())
        if name == SUBSCRIPTIONS_NAME or mask & inotify.IN_ISDIR and name.startswith(".") and name[1:2] != ".":
            self.changed(account, None)
            if mask & inotify.IN_CREATE:
                self._reactor.callLater(self._pollInterval, self.changed, account, None)

    def _inotifyLost(self, lost):
        """
        A watched directory was deleted and the inotify reader closed: the
        folders it watched are watched again by a new one (or polled), and
        reported changed in case something was missed meanwhile.
        """
        if lost is not self._inotify:
            return
        self._inotify = None
        keys, self._watched = list(self._watched), {}
        self._folders.clear()
        self._changesHeard.unwatchAll()
        for key in keys:
            self.startWatching(*key)
            self.changed(*key)

    # polling

    def _look(self, key):
        """
        @return: what the folder's directories look like now (their
            modification times); L{False} if they cannot be read.
        """
        look = []
        try:
            if key[1] is None:  # the account's directory: its folders
                st = os.stat(self._folderPath(key[0], "INBOX"))
                return st.st_ino, st.st_mtime_ns
            path = self._folderPath(*key)
            for sub in _SUBDIRS:
                st = os.stat(os.path.join(path, sub))
                look.append((st.st_ino, st.st_mtime_ns))
        except (OSError, MailError):
            return False
        return tuple(look)

    def _startPolling(self):
        if self._poller is None:
            self._poller = task.LoopingCall(self._poll)
            self._poller.clock = self._reactor
            self._poller.start(self._pollInterval, now=False)

    def _poll(self):
        for key, before in list(self.polled.items()):
            now = self._look(key)
            if now != before:
                self.polled[key] = now
                self.changed(*key)
