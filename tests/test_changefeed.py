"""
Tests of L{mdpy.backends.local.ChangeFeed} and L{mdpy.backends.files.changefeed}: subscriptions, coalescing, the inotify
watches and their limit, polling, and IMAP IDLE hearing a change made
outside the process.  The inotify reader is driven by hand on a
L{MemoryReactorClock}; the end-to-end tests are in
C{tests/test_e2e_changefeed.py}.
"""

import os
import shutil
import struct

import pytest

from twisted.internet import inotify, task
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from mdpy.interfaces import IChangeFeed
from mdpy.backends.files import changefeed
from mdpy.backends.files.changefeed import MaildirChangeFeed
from mdpy.backends.local import ChangeFeed
from mdpy.backends.files.blocking import DeferredStore
from mdpy.backends.files.maildir import MaildirStore
from mdpy.mailbox import ADD, accountKey
from mdpy.testing import capturedLogs, loggedLines, resultOf, synchronousRunner
from tests.test_imap_server import USER, Session

ALICE = "alice@example.test"
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"
_dropped = iter(range(1, 1000000))


def recorder():
    calls = []
    return calls, lambda account, folder: calls.append((account, folder))


def maildirStore(tmp_path, *accounts):
    store = MaildirStore(str(tmp_path), runInThread=synchronousRunner)
    for account in accounts or (ALICE,):
        store.createAccount(account)
    return store


def drop(store, account=ALICE, folder="INBOX", count=1):
    """
    Put C{count} files into a folder's C{new/} the way another program
    would: written in C{tmp/}, renamed into C{new/}.
    """
    path = store.folderPath(account, folder)
    for _ in range(count):
        name = "1700000000.M%dP1.elsewhere" % (next(_dropped),)
        with open(os.path.join(path, "tmp", name), "wb") as f:
            f.write(MESSAGE)
        os.rename(os.path.join(path, "tmp", name), os.path.join(path, "new", name))


def watchingFeed(tmp_path, **options):
    """
    @return: a L{MemoryReactorClock}, a Maildir store with the account
        L{ALICE}, and a L{MaildirChangeFeed} of that store on that reactor.
    """
    reactor = MemoryReactorClock()
    store = maildirStore(tmp_path)
    options.setdefault("heard", store.changesHeard)
    return reactor, store, MaildirChangeFeed(store.folderPath, reactor, accountKey, **options)


def readINotify(reactor):
    """
    Let the feed's inotify reader read what the kernel has for it, as the
    reactor would when its descriptor is readable.
    """
    for reader in reactor.getReaders():
        reader.doRead()


def settle(reactor):
    """
    L{readINotify}, then end the reactor turn.
    """
    readINotify(reactor)
    reactor.advance(0)


def poll(clock):
    """
    Let one polling interval pass, and end the turn.
    """
    clock.advance(1.0)
    clock.advance(0)


def test_interface(tmp_path):
    assert verifyObject(IChangeFeed, ChangeFeed(task.Clock()))
    assert verifyObject(IChangeFeed, MaildirChangeFeed(maildirStore(tmp_path).folderPath, task.Clock()))
    assert isinstance(maildirStore(tmp_path).changeFeed, ChangeFeed)


# --- in process ------------------------------------------------------------------


def test_notifyReachesTheFolderAndTheAccount():
    feed = ChangeFeed(task.Clock(), accountKey)
    inbox, onInbox = recorder()
    everything, onEverything = recorder()
    feed.subscribe("Alice@Example.TEST", "INBOX", onInbox)
    feed.subscribe(ALICE, None, onEverything)
    feed.notify(ALICE, "INBOX")
    feed.notify("ALICE@example.test", "Sent")
    feed.notify("bob@example.test", "INBOX")
    assert inbox == [(ALICE, "INBOX")]
    assert everything == [(ALICE, "INBOX"), (ALICE, "Sent")]


def test_unsubscribe():
    feed = ChangeFeed(task.Clock())
    calls, callback = recorder()
    one = feed.subscribe(ALICE, "INBOX", callback)
    two = feed.subscribe(ALICE, "INBOX", callback)
    one.unsubscribe()
    one.unsubscribe()
    feed.notify(ALICE, "INBOX")
    assert calls == [(ALICE, "INBOX")]
    assert feed.watchedFolders() == [(ALICE, "INBOX")]
    two.unsubscribe()
    feed.notify(ALICE, "INBOX")
    assert len(calls) == 1
    assert feed.watchedFolders() == []


def test_failingSubscriberIsLogged():
    feed = ChangeFeed(task.Clock())
    calls, callback = recorder()

    def broken(account, folder):
        raise RuntimeError("boom")

    feed.subscribe(ALICE, "INBOX", broken)
    feed.subscribe(ALICE, "INBOX", callback)
    with capturedLogs() as events:
        feed.notify(ALICE, "INBOX")
    assert calls == [(ALICE, "INBOX")]
    [line] = loggedLines(events, "mailbox listener", LogLevel.critical)
    assert "broken" in line and ALICE in line


def test_changesOfOneTurnMakeOneNotificationPerFolder():
    clock = task.Clock()
    feed = ChangeFeed(clock)
    calls, callback = recorder()
    feed.subscribe(ALICE, None, callback)
    for _ in range(50):
        feed.changed(ALICE, "INBOX")
    feed.changed(ALICE, "Sent")
    assert calls == []
    clock.advance(0)
    assert sorted(calls) == [(ALICE, "INBOX"), (ALICE, "Sent")]
    clock.advance(0)
    assert len(calls) == 2
    feed.changed(ALICE, "INBOX")
    clock.advance(0)
    assert calls[2:] == [(ALICE, "INBOX")]


def test_notifyCoversAChangeNotYetReported():
    clock = task.Clock()
    feed = ChangeFeed(clock)
    calls, callback = recorder()
    feed.subscribe(ALICE, "INBOX", callback)
    feed.changed(ALICE, "INBOX")
    feed.notify(ALICE, "INBOX")
    clock.advance(0)
    assert calls == [(ALICE, "INBOX")]


def test_storeListenersAreFeedSubscribers(tmp_path):
    store = maildirStore(tmp_path)
    calls, listener = recorder()
    store.addListener("Alice@Example.test", listener)
    store.deliver([(ALICE, "INBOX", [MESSAGE])])
    assert calls == [(ALICE, "INBOX")]
    store.changeFeed.notify(ALICE, "Sent")
    assert calls[1:] == [(ALICE, "Sent")]
    store.removeListener(ALICE, listener)
    store.removeListener(ALICE, listener)
    store.deliver([(ALICE, "INBOX", [MESSAGE])])
    assert len(calls) == 2


# --- other processes: inotify --------------------------------------------------------


def test_burstOfDeliveriesMakesOneNotification(tmp_path):
    reactor, store, feed = watchingFeed(tmp_path)
    calls, callback = recorder()
    feed.subscribe(ALICE, "INBOX", callback)
    assert feed.polled == {}
    drop(store, count=20)
    readINotify(reactor)
    assert calls == []
    reactor.advance(0)
    assert calls == [(ALICE, "INBOX")]
    # A flag change in cur/ by another program is a change too.
    mailbox = store.openMailbox(ALICE)
    reactor.advance(0)
    settle(reactor)
    del calls[:]
    name = os.listdir(os.path.join(mailbox.path, "cur"))[0]
    os.rename(os.path.join(mailbox.path, "cur", name), os.path.join(mailbox.path, "cur", name + "S"))
    settle(reactor)
    assert calls == [(ALICE, "INBOX")]


def test_onlySubscribedFoldersAreWatched(tmp_path):
    reactor, store, feed = watchingFeed(tmp_path)
    calls, callback = recorder()
    feed.subscribe(ALICE, None, callback)
    feed.subscribe(ALICE, "Sent", recorder()[1])
    drop(store, folder="INBOX")
    drop(store, folder="Drafts")
    settle(reactor)
    assert calls == []
    drop(store, folder="Sent")
    settle(reactor)
    assert calls == [(ALICE, "Sent")]


def test_watchRemovedWithTheLastSubscriber(tmp_path):
    reactor, store, feed = watchingFeed(tmp_path)
    calls, callback = recorder()
    one = feed.subscribe(ALICE, "INBOX", callback)
    everything = feed.subscribe(ALICE, None, callback)
    two = feed.subscribe(ALICE, "INBOX", recorder()[1])
    one.unsubscribe()
    drop(store)
    settle(reactor)
    assert calls == [(ALICE, "INBOX")]
    two.unsubscribe()
    drop(store)
    settle(reactor)
    assert calls == [(ALICE, "INBOX")]
    everything.unsubscribe()


def test_pastTheWatchLimitFoldersArePolled(tmp_path):
    reactor, store, feed = watchingFeed(tmp_path, maxWatches=2, pollInterval=1.0)
    calls, callback = recorder()
    inbox = feed.subscribe(ALICE, "INBOX", callback)
    sent = feed.subscribe(ALICE, "Sent", callback)
    assert list(feed.polled) == [(ALICE, "Sent")]
    drop(store, folder="Sent")
    settle(reactor)
    assert calls == []
    poll(reactor)
    assert calls == [(ALICE, "Sent")]
    poll(reactor)
    assert len(calls) == 1
    drop(store, folder="INBOX")
    settle(reactor)
    assert calls[1:] == [(ALICE, "INBOX")]
    # The watch freed, the next folder gets it.
    inbox.unsubscribe()
    feed.subscribe(ALICE, "Drafts", callback)
    assert list(feed.polled) == [(ALICE, "Sent")]
    sent.unsubscribe()
    assert feed.polled == {}
    assert reactor.getDelayedCalls() == []


def test_deletedFolderIsPolledOthersStillWatched(tmp_path):
    """
    Deleting a watched directory closes Twisted's inotify reader: the
    folders it watched are watched by a new one, the deleted one polled
    until it is back, and every one reported changed.
    """
    reactor, store, feed = watchingFeed(tmp_path)
    calls, callback = recorder()
    feed.subscribe(ALICE, "INBOX", callback)
    feed.subscribe(ALICE, "Trash", callback)
    shutil.rmtree(store.folderPath(ALICE, "Trash"))
    settle(reactor)
    assert sorted(set(calls)) == [(ALICE, "INBOX"), (ALICE, "Trash")]
    assert list(feed.polled) == [(ALICE, "Trash")]
    del calls[:]
    drop(store)
    settle(reactor)
    assert calls == [(ALICE, "INBOX")]
    store.createMailbox(ALICE, "Trash")
    poll(reactor)
    assert calls[1:] == [(ALICE, "Trash")]


def stopReactor(reactor):
    """
    Stop C{reactor} in the order a real one does: the C{before shutdown}
    triggers, then every reader and writer it still has is closed
    (L{twisted.internet.base.ReactorBase.disconnectAll}), the inotify
    reader taken last, after the sessions whose subscriptions end with
    their connections.

    @return: the events logged meanwhile.
    """
    with capturedLogs() as events:
        for trigger, args, kwargs in reactor.triggers.get("before", {}).get("shutdown", []):
            trigger(*args, **kwargs)
        selectables = sorted(set(reactor.getReaders()) | set(reactor.getWriters()),
                             key=lambda selectable: not isinstance(selectable, Connection))
        for selectable in selectables:
            reactor.removeReader(selectable)
            reactor.removeWriter(selectable)
        for selectable in selectables:
            selectable.connectionLost(Failure(ConnectionLost()))
    return events


class Connection:
    """
    A client connection the reactor closes when it stops, ending the
    subscription of its session.
    """

    def __init__(self, subscription):
        self.subscription = subscription

    def connectionLost(self, reason):
        self.subscription.unsubscribe()


def test_reactorStopClosesTheReaderOnce(tmp_path):
    """
    A reactor that stops while a folder is watched: the feed closes its
    inotify reader before the reactor closes the connections, and watches
    nothing afterwards (the subscriptions that end with the connections
    find nothing to stop), so nothing fails and no descriptor is closed
    twice.
    """
    reactor, store, feed = watchingFeed(tmp_path)
    calls, callback = recorder()
    reactor.addReader(Connection(feed.subscribe(ALICE, "INBOX", callback)))
    reactor.addReader(Connection(feed.subscribe(ALICE, "Sent", callback)))
    [reader] = [r for r in reactor.getReaders() if not isinstance(r, Connection)]
    events = stopReactor(reactor)
    assert loggedLines(events) == []
    assert reader.fileno() == -1
    assert reactor.getReaders() == [] and feed.polled == {}
    # A session that still subscribes hears this process's changes only.
    feed.subscribe(ALICE, "INBOX", callback)
    assert reactor.getReaders() == [] and feed.polled == {}
    feed.notify(ALICE, "INBOX")
    assert calls == [(ALICE, "INBOX")]


def test_readerClosedTwiceClosesItsDescriptorOnce(tmp_path):
    """
    The inotify reader, closed by the feed when nothing is watched any
    more, and then by someone else still holding it: its descriptor is not
    closed again (it may be another file's by then).
    """
    reactor, store, feed = watchingFeed(tmp_path)
    subscription = feed.subscribe(ALICE, "INBOX", recorder()[1])
    [reader] = reactor.getReaders()
    subscription.unsubscribe()
    assert reactor.getReaders() == []
    with capturedLogs() as events:
        reader.connectionLost(Failure(ConnectionLost()))
    assert loggedLines(events) == []


def test_accountSubscribersHearFoldersChangedOutside(tmp_path):
    """
    A subscriber of the whole account hears, with folder None, that another
    process made, renamed or deleted a folder or changed the
    subscriptions; a folder being made is reported again a polling
    interval later, once its Maildir directories are surely there.
    Deliveries to unwatched folders are not heard.
    """
    reactor, store, feed = watchingFeed(tmp_path, pollInterval=1.0)
    calls, callback = recorder()
    everything = feed.subscribe(ALICE, None, callback)
    assert feed.watchedFolders() == []
    store.createMailbox(ALICE, "Work")
    settle(reactor)
    assert calls == [(ALICE, None)]
    reactor.advance(1.0)
    reactor.advance(0)
    assert calls == [(ALICE, None)] * 2
    for change in (lambda: store.setSubscribed(ALICE, "Work", True),
                   lambda: store.renameMailbox(ALICE, "Work", "Play"),
                   lambda: store.deleteMailbox(ALICE, "Play")):
        del calls[:]
        change()
        settle(reactor)
        assert calls == [(ALICE, None)]
    del calls[:]
    drop(store, folder="Drafts")
    drop(store)
    settle(reactor)
    assert calls == []
    everything.unsubscribe()
    assert feed._watched == {}


# --- other platforms: polling ---------------------------------------------------------


def test_polling(tmp_path):
    clock = task.Clock()
    store = maildirStore(tmp_path)
    feed = MaildirChangeFeed(store.folderPath, clock, accountKey, pollInterval=1.0, useINotify=False)
    calls, callback = recorder()
    subscription = feed.subscribe(ALICE, "INBOX", callback)
    poll(clock)
    assert calls == []
    drop(store, count=3)
    poll(clock)
    assert calls == [(ALICE, "INBOX")]
    poll(clock)
    assert len(calls) == 1
    subscription.unsubscribe()
    assert clock.getDelayedCalls() == []


def test_pollingHearsFoldersChanged(tmp_path):
    clock = task.Clock()
    store = maildirStore(tmp_path)
    feed = MaildirChangeFeed(store.folderPath, clock, accountKey, pollInterval=1.0, useINotify=False)
    calls, callback = recorder()
    subscription = feed.subscribe(ALICE, None, callback)
    poll(clock)
    assert calls == []
    store.createMailbox(ALICE, "Work")
    poll(clock)
    assert calls == [(ALICE, None)]
    subscription.unsubscribe()
    assert clock.getDelayedCalls() == []


# --- IMAP --------------------------------------------------------------------------------


def test_idleHearsAChangeMadeOutside(tmp_path):
    """
    A session subscribes the folder it selects: a file dropped into its
    C{new/} by another program is pushed while idling; the subscription
    ends with the selection and with the connection.
    """
    store = maildirStore(tmp_path, USER)
    s = Session(store=store)
    feed = MaildirChangeFeed(store.folderPath, s.clock, accountKey, useINotify=False)
    store.changeFeed = feed
    s.factory.changeFeed = feed
    s.select()
    assert feed.watchedFolders() == [(USER, "INBOX")]
    s.send("a IDLE")
    s.expect("+ idling")
    drop(store, USER)
    s.clock.advance(1.0)
    s.clock.advance(0)
    s.expect("* 1 EXISTS", "* 1 RECENT")
    s.send("DONE")
    s.expect("a OK Idle completed.")
    s.send("b SELECT Sent")
    s.lines()
    assert feed.watchedFolders() == [(USER, "Sent")]
    s.send("c CLOSE")
    s.expect("c OK Close completed.")
    assert feed.watchedFolders() == []
    s.send("d EXAMINE INBOX")
    s.lines()
    s.t.protocol.connectionLost(None)
    assert feed.watchedFolders() == []


def test_closeLeavesNoReader(tmp_path):
    """
    A feed closed (as its backend is) holds no reader in the reactor, also
    after a subscription to a whole account, whose directory is watched;
    its subscribers still hear this process's changes.
    """
    reactor, store, feed = watchingFeed(tmp_path)
    calls, callback = recorder()
    feed.subscribe(ALICE, None, callback)
    assert reactor.getReaders() != []
    feed.close()
    assert reactor.getReaders() == []
    feed.notify(ALICE, "INBOX")
    assert calls == [(ALICE, "INBOX")]


def test_inotifyEventsReadWholeAcrossReads():
    """
    The feed's inotify reader hands each event to its watch's callbacks
    with the name of the file, once the whole event is read, however the
    reads cut the events; events of a watch no longer held are dropped.
    """
    reader = changefeed._INotify.__new__(changefeed._INotify)
    reader._buffer = b""
    got = []

    class Watch:
        callbacks = [lambda watch, path, mask: got.append((path.basename(), mask))]

    reader._watchpoints = {7: Watch()}
    moved = struct.pack("=LLLL", 7, inotify.IN_MOVED_TO, 0, 16) + b"123.M1P2Q3:2,S".ljust(16, b"\0")
    gone = struct.pack("=LLLL", 8, inotify.IN_DELETE, 0, 16) + b"other".ljust(16, b"\0")
    reader._doRead(moved[:10])
    reader._doRead(moved[10:20])
    assert got == []
    reader._doRead(moved[20:] + gone + moved)
    assert got == [(b"123.M1P2Q3:2,S", inotify.IN_MOVED_TO)] * 2
    assert reader._buffer == b""


# --- views that know they are current ------------------------------------


def watchedInbox(tmp_path, **options):
    """
    @return: C{(reactor, store, feed, calls, mailbox)}: a feed watching
        L{ALICE}'s INBOX, which holds 3 messages, for a recorder, and a
        view of it, read.
    """
    reactor, store, feed = watchingFeed(tmp_path, **options)
    drop(store, count=3)
    calls, callback = recorder()
    feed.subscribe(ALICE, "INBOX", callback)
    mailbox = store.openMailbox(ALICE)
    settle(reactor)
    del calls[:]
    assert mailbox.syncFromSnapshot()
    return reactor, store, feed, calls, mailbox


def test_ownChangesAreNotHeardAgain(tmp_path):
    """
    A view that changed flags, appended or expunged is current after: the
    events of its own renames are not reported, and it needs no read.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    assert mailbox.isCurrent()
    resultOf(mailbox.changeFlags([1, 2], ["\\Seen"], ADD))
    resultOf(mailbox.append(MESSAGE))
    resultOf(mailbox.changeFlags([3], ["\\Deleted"], ADD))
    resultOf(mailbox.expunge([3], deletedOnly=True))
    settle(reactor)
    assert calls == []
    assert mailbox.isCurrent()
    assert [m.uid for m in mailbox.messages()] == [1, 2, 4]
    # A change that changes nothing keeps it so.
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    assert mailbox.isCurrent()


def test_changesOfOthersAreHeardAtOnce(tmp_path):
    """
    A view is not current once another program delivered to the folder or
    renamed one of its files, even before the reactor read the events: the
    view takes in what the kernel has first.  A sync makes it current again.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    drop(store)
    assert not mailbox.isCurrent()
    assert not mailbox.syncFromSnapshot()  # new/ holds a file: the lock is needed
    mailbox.sync()
    assert len(mailbox.messages()) == 4
    settle(reactor)
    assert calls == [(ALICE, "INBOX")]
    assert mailbox.isCurrent()
    cur = os.path.join(mailbox.path, "cur")
    name = sorted(os.listdir(cur))[0]
    os.rename(os.path.join(cur, name), os.path.join(cur, name + "F"))
    assert not mailbox.isCurrent()
    mailbox.sync()
    assert mailbox.isCurrent()
    assert mailbox.messages()[0].flags == {"\\Flagged"}


def test_anotherViewsChangeReachesAView(tmp_path):
    """
    Of two views of one folder in this process, the one that did not make
    a change takes the state of the one that did, which is current,
    without reading the folder.
    """
    reactor, store, feed, calls, first = watchedInbox(tmp_path)
    second = store.openMailbox(ALICE)
    assert second.syncFromSnapshot() and second.isCurrent()
    resultOf(first.changeFlags([1], ["\\Answered"], ADD))
    assert first.isCurrent()
    assert second.messages()[0].flags == set()
    assert second.isCurrent()
    assert second.messages()[0].flags == {"\\Answered"}
    # Not so once another process changed the folder.
    elsewhere = MaildirStore(str(tmp_path), runInThread=synchronousRunner).openMailbox(ALICE)
    resultOf(elsewhere.changeFlags([2], ["\\Seen"], ADD))
    assert not second.isCurrent() and not first.isCurrent()
    assert second.syncFromSnapshot() and second.isCurrent()
    assert second.messages()[1].flags == {"\\Seen"}


def test_logWrittenElsewhereMakesAViewRead(tmp_path):
    """
    A transaction of another process that renames nothing (it only claims
    new messages as recent) is seen by the index log's size.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    elsewhere = MaildirStore(str(tmp_path), runInThread=synchronousRunner)
    other = elsewhere.openMailbox(ALICE)
    resultOf(other.claimRecent())
    settle(reactor)
    assert calls == []
    assert not mailbox.isCurrent()
    mailbox.sync()
    assert mailbox.isCurrent()


def test_changeOfAnotherProcessIsHeard(tmp_path):
    """
    The renames of another process's transactions are not this process's
    own: they are reported, and the view is not current.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    elsewhere = MaildirStore(str(tmp_path), runInThread=synchronousRunner)
    other = elsewhere.openMailbox(ALICE)
    resultOf(other.changeFlags([2], ["\\Seen"], ADD))
    assert not mailbox.isCurrent()
    settle(reactor)
    assert calls == [(ALICE, "INBOX")]
    mailbox.sync()
    assert mailbox.messages()[1].flags == {"\\Seen"}
    assert mailbox.isCurrent()


def test_lostEventsMakeEveryViewRead(tmp_path):
    """
    When the kernel's event queue overflowed, every watched folder is
    reported changed and its views read it again.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    overflow = struct.pack("=LLLL", 0xFFFFFFFF, inotify.IN_Q_OVERFLOW, 0, 0)
    feed._inotify._doRead(overflow)
    assert not mailbox.isCurrent()
    reactor.advance(0)
    assert calls == [(ALICE, "INBOX")]
    assert mailbox.syncFromSnapshot()
    assert mailbox.isCurrent()


def test_viewsOfFoldersNotWatchedAlwaysRead(tmp_path):
    """
    A folder polled, no longer watched, or watched anew is read by a view's
    next sync: nothing can be known of what happened meanwhile.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path, useINotify=False)
    assert not mailbox.isCurrent()
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path / "watched")
    assert mailbox.isCurrent()
    subscription = feed.subscribe(ALICE, "INBOX", recorder()[1])
    feed._unsubscribe(subscription)
    assert mailbox.isCurrent()
    feed.close()
    assert not mailbox.isCurrent()
    assert mailbox.syncFromSnapshot()
    assert not mailbox.isCurrent()


def test_failedRenameIsNotExpected(tmp_path):
    """
    A rename a transaction announced but could not make is not taken as
    its own: the same event from another program is a change.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    cur = os.path.join(mailbox.path, "cur")
    with pytest.raises(FileNotFoundError):
        mailbox._index.rename(os.path.join(cur, "missing:2,"), os.path.join(cur, "missing:2,S"))
    with open(os.path.join(cur, "missing:2,S"), "wb") as f:
        f.write(MESSAGE)
    assert not mailbox.isCurrent()
    settle(reactor)
    assert calls == [(ALICE, "INBOX")]


def test_nothingExpectedOfFoldersNotWatched(tmp_path):
    """
    Transactions in a folder nobody watches leave nothing expected behind
    (no event of theirs is ever read), and what a folder expected goes
    when it is no longer watched: it cannot hide a later change.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    store.createMailbox(ALICE, "Notes")
    sent = store.openMailbox(ALICE, "Notes")
    resultOf(sent.append(MESSAGE))
    resultOf(sent.changeFlags([1], ["\\Seen"], ADD))
    assert store.changesHeard._expected == {}
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    assert store.changesHeard._expected  # not read yet
    feed.close()
    assert store.changesHeard._expected == {}


def test_viewOpenedTakesACurrentStateWithoutReading(tmp_path, monkeypatch):
    """
    A view opened while another view of the folder is current (as STATUS
    or SELECT of a folder a session has selected) takes that view's state
    without listing the folder; once the folder changed, it reads.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    assert mailbox.isCurrent()
    deferred = DeferredStore(store, synchronousRunner)
    listed = []
    listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: listed.append(path) or listdir(path))
    opened = resultOf(deferred.openMailbox(ALICE))
    assert listed == []
    assert opened.messages() == mailbox.messages()
    assert opened.isCurrent()
    drop(store)
    opened = resultOf(deferred.openMailbox(ALICE))
    assert listed != []
    assert len(opened.messages()) == 4


def test_viewIsNotTakenAsCurrentForLong(tmp_path, monkeypatch):
    """
    However little was heard, a view is read again once CURRENT_FOR
    seconds passed since it was: a change the feed cannot hear (another
    host of a network filesystem) is seen by IDLE's poll.
    """
    from mdpy.backends.files import maildirindex

    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    assert mailbox.isCurrent()
    now = maildirindex.time.monotonic() + maildirindex.CURRENT_FOR + 1
    monkeypatch.setattr(maildirindex.time, "monotonic", lambda: now)
    assert not mailbox.isCurrent()
    assert mailbox.syncFromSnapshot()
    assert mailbox.isCurrent()


def test_viewIsNotCurrentWhileATransactionChangesTheFolder(tmp_path):
    """
    From the first rename of a transaction of this process on, the other
    views of the folder are not current (the transaction has not ended,
    and the feed takes the rename's event as its own): a reader on another
    thread never takes the folder as it was for the folder as it is.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    other = store.openMailbox(ALICE)
    assert other.syncFromSnapshot() and other.isCurrent()
    during = []
    rename = mailbox._index.rename

    def renameAndLook(source, target):
        rename(source, target)
        during.append(other.isCurrent())

    mailbox._index.rename = renameAndLook
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    assert during == [False]
    assert mailbox.isCurrent()
    assert other.isCurrent() and other.messages()[0].flags == {"\\Seen"}


# --- transactions that need not list the folder ----------------------------


def countListings(monkeypatch, mailbox, method="_scan"):
    """
    @param method: the L{FolderIndex} method counted: C{_scan}, a
        transaction listing the folder, or C{_listCur}, a transaction or a
        reader listing C{cur/}.
    @return: a list that gets one item each time C{method} lists
        C{mailbox}'s folder.
    """
    listings = []
    listing = getattr(type(mailbox._index), method)

    def counted(index):
        if index.path == mailbox.path:
            listings.append(index.path)
        return listing(index)

    monkeypatch.setattr(type(mailbox._index), method, counted)
    return listings


def test_transactionAfterOwnChangesListsNothing(tmp_path, monkeypatch):
    """
    A transaction that follows this process's own, with nothing else heard
    in between, takes the listing that one left instead of listing the
    folder: flag changes, appends and expunges cost what they change.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    settle(reactor)
    listings = countListings(monkeypatch, mailbox)
    resultOf(mailbox.changeFlags([2], ["\\Flagged"], ADD))
    settle(reactor)
    resultOf(mailbox.append(MESSAGE))
    settle(reactor)
    resultOf(mailbox.changeFlags([3], ["\\Deleted"], ADD))
    settle(reactor)
    resultOf(mailbox.expunge([3], deletedOnly=True))
    assert listings == []
    assert [(m.uid, m.flags) for m in mailbox.messages()] == [
        (1, {"\\Seen"}), (2, {"\\Flagged"}), (4, set())]
    assert sorted(name.partition(":")[2] for name in os.listdir(os.path.join(mailbox.path, "cur"))) == [
        "2,", "2,F", "2,S"]
    mailbox.sync()
    assert [(m.uid, m.flags) for m in mailbox.messages()] == [
        (1, {"\\Seen"}), (2, {"\\Flagged"}), (4, set())]


@pytest.mark.parametrize("read", [False, True], ids=["events unread", "events read"])
@pytest.mark.parametrize("change", ["renamed", "removed", "delivered", "linked"])
def test_transactionTakesInAChangeOfAnotherProgram(tmp_path, monkeypatch, change, read):
    """
    A change of another program between two transactions of this process
    is in the second's result: a flag changed by a rename, a file removed,
    a message delivered to C{new/}, or linked into C{cur/}.  Heard by the
    feed, it is made to the listing kept; while the kernel still has its
    event for the feed, the folder is listed.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    settle(reactor)
    listings = countListings(monkeypatch, mailbox)
    cur = os.path.join(mailbox.path, "cur")
    second = mailbox.messages()[1].filename
    if change == "renamed":
        os.rename(os.path.join(cur, second), os.path.join(cur, second + "F"))
    elif change == "removed":
        os.unlink(os.path.join(cur, second))
    elif change == "delivered":
        drop(store)
    else:
        outside = os.path.join(str(tmp_path), "outside")
        with open(outside, "wb") as f:
            f.write(MESSAGE)
        os.link(outside, os.path.join(cur, "1700000000.M99P9.linked:2,"))
    if read:
        readINotify(reactor)
    resultOf(mailbox.changeFlags([3], ["\\Answered"], ADD))
    assert listings == ([] if read else [mailbox.path])
    expected = {
        "renamed": [(1, {"\\Seen"}), (2, {"\\Flagged"}), (3, {"\\Answered"})],
        "removed": [(1, {"\\Seen"}), (3, {"\\Answered"})],
        "delivered": [(1, {"\\Seen"}), (2, set()), (3, {"\\Answered"}), (4, set())],
        "linked": [(1, {"\\Seen"}), (2, set()), (3, {"\\Answered"}), (4, set())],
    }[change]
    assert [(m.uid, m.flags) for m in mailbox.messages()] == expected


def test_transactionAfterAnotherProcessTransacted(tmp_path, monkeypatch):
    """
    A transaction of another process that renames nothing (it only claims
    new messages as recent, so only the index's log shows it) changes no
    name: the next transaction of this one lists nothing and has it.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    drop(store)
    settle(reactor)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    settle(reactor)
    listings = countListings(monkeypatch, mailbox)
    elsewhere = MaildirStore(str(tmp_path), runInThread=synchronousRunner)
    assert resultOf(elsewhere.openMailbox(ALICE).claimRecent()) == [1, 2, 3, 4]
    settle(reactor)
    del listings[:]  # the other process's own
    resultOf(mailbox.changeFlags([2], ["\\Seen"], ADD))
    assert listings == []
    assert [m.uid for m in mailbox.messages()] == [1, 2, 3, 4]
    assert mailbox.recentThreshold == 4


def test_changesOfAnotherProcessAreTakenFromTheFeed(tmp_path, monkeypatch):
    """
    The flag changes, expunges and appends of another process, heard by
    the feed, are made to the listing kept: the next transaction of this
    one lists nothing, and its result is what a listing would give.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    settle(reactor)
    listings = countListings(monkeypatch, mailbox)
    elsewhere = MaildirStore(str(tmp_path), runInThread=synchronousRunner)
    other = elsewhere.openMailbox(ALICE)
    resultOf(other.changeFlags([2], ["\\Flagged"], ADD))
    resultOf(other.expunge([1]))
    resultOf(other.append(MESSAGE, ["\\Draft"]))
    drop(store)
    settle(reactor)
    del listings[:]  # the other process's own
    resultOf(mailbox.changeFlags([3], ["\\Answered"], ADD))
    assert listings == []
    assert [(m.uid, m.flags) for m in mailbox.messages()] == [
        (2, {"\\Flagged"}), (3, {"\\Answered"}), (4, {"\\Draft"}), (5, set())]
    fresh = MaildirStore(str(tmp_path), runInThread=synchronousRunner).openMailbox(ALICE)
    assert [(m.uid, m.flags, m.filename) for m in fresh.messages()] == [
        (m.uid, m.flags, m.filename) for m in mailbox.messages()]


@pytest.mark.parametrize("trouble", ["out of order", "too many", "watched anew", "another folder"])
def test_transactionListsWhenTheChangesHeardCannotBeTrusted(tmp_path, monkeypatch, trouble):
    """
    The folder is listed when the changes heard do not fit the listing
    kept (one was not heard in order), when more were heard than are
    kept, when the folder was watched anew (nothing was heard meanwhile),
    and when the index is another folder's (deleted and made again).
    """
    from mdpy.backends.files import maildirindex

    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    settle(reactor)
    listings = countListings(monkeypatch, mailbox)
    heard = store.changesHeard
    cur = os.path.join(mailbox.path, "cur")
    second = mailbox.messages()[1].filename
    if trouble == "out of order":
        heard.heard(mailbox.path, cur, second + "F", maildirindex.REMOVED)
    elif trouble == "too many":
        monkeypatch.setattr(maildirindex, "HEARD_KEPT", 2)
        for _ in range(3):
            drop(store)
        settle(reactor)
    elif trouble == "watched anew":
        heard.watch(mailbox.path)
    else:
        kept = store._parsedIndexes.pop((mailbox.path, "listing"))
        store._parsedIndexes[(mailbox.path, "listing")] = (kept[0], kept[1], kept[2] + 1) + kept[3:]
    resultOf(mailbox.changeFlags([2], ["\\Seen"], ADD))
    assert listings == [mailbox.path]
    assert [(m.uid, m.flags) for m in mailbox.messages()][:3] == [
        (1, {"\\Seen"}), (2, {"\\Seen"}), (3, set())]


def test_transactionListsWhenNotSureOfTheFeed(tmp_path, monkeypatch):
    """
    A folder is listed by each transaction when it is not watched, when
    the kernel dropped events, and once L{CURRENT_FOR} seconds passed since
    the listing kept (a change the feed cannot hear, on a network
    filesystem).
    """
    from mdpy.backends.files import maildirindex

    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path, useINotify=False)
    listings = countListings(monkeypatch, mailbox)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    resultOf(mailbox.changeFlags([2], ["\\Seen"], ADD))
    assert len(listings) == 2

    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path / "watched")
    listings = countListings(monkeypatch, mailbox)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    settle(reactor)
    assert listings == []
    feed._inotify._doRead(struct.pack("=LLLL", 0xFFFFFFFF, inotify.IN_Q_OVERFLOW, 0, 0))
    resultOf(mailbox.changeFlags([2], ["\\Seen"], ADD))
    assert len(listings) == 1
    settle(reactor)
    now = maildirindex.time.monotonic() + maildirindex.CURRENT_FOR + 1
    monkeypatch.setattr(maildirindex.time, "monotonic", lambda: now)
    resultOf(mailbox.changeFlags([3], ["\\Seen"], ADD))
    assert len(listings) == 2


def test_expungeKeepsTheOtherMessagesOfTheView(tmp_path):
    """
    The state an expunge leaves is the view's without the messages
    removed: the others are the same objects, not made again.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    before = mailbox.messages()
    resultOf(mailbox.changeFlags([2], ["\\Deleted"], ADD))
    kept = mailbox.messages()
    resultOf(mailbox.expunge([2], deletedOnly=True))
    after = mailbox.messages()
    assert [m.uid for m in after] == [1, 3]
    assert after[0] is before[0] and after[1] is kept[2]


def test_changesOfUidsTheViewDoesNotHold(tmp_path):
    """
    A flag change or an expunge of a UID the index has but the view does
    not hold yet (given after the view was read) still finds it.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    other = store.openMailbox(ALICE)
    drop(store)
    other.sync()
    assert [m.uid for m in other.messages()] == [1, 2, 3, 4]
    assert 4 not in mailbox._state.byUid
    assert resultOf(mailbox.changeFlags([4], ["\\Deleted"], ADD))[4].flags == {"\\Deleted"}
    resultOf(mailbox.changeFlags([1], ["\\Deleted"], ADD))
    assert 4 not in other.claimedUids()
    assert sorted(resultOf(mailbox.expunge([1, 4], deletedOnly=True))) == [1, 4]
    mailbox.sync()
    assert [m.uid for m in mailbox.messages()] == [2, 3]


def fakeMountInfo(tmp_path, monkeypatch, lines):
    from mdpy.backends.files import maildirindex

    path = tmp_path / "mountinfo"
    path.write_text("".join(line + "\n" for line in lines))
    monkeypatch.setattr(maildirindex, "MOUNTINFO", str(path))
    monkeypatch.setattr(maildirindex, "_localDevices", {})


def test_filesystemTypes(tmp_path, monkeypatch):
    """
    A filesystem is taken as this host's alone by its type in
    /proc/self/mountinfo, found by device numbers, else by the longest
    mount point holding the path; a network or FUSE filesystem, or one not
    found, is not.
    """
    from mdpy.backends.files.maildirindex import _filesystemType, onLocalFilesystem

    device = os.stat(str(tmp_path)).st_dev
    numbers = "%d:%d" % (os.major(device), os.minor(device))
    fakeMountInfo(tmp_path, monkeypatch, [
        "22 27 0:21 / /proc rw,relatime - proc proc rw",
        "30 27 %s / /srv/mail rw shared:1 - nfs4 host:/mail rw" % (numbers,),
    ])
    assert _filesystemType(device, str(tmp_path)) == "nfs4"
    assert not onLocalFilesystem(str(tmp_path))
    assert _filesystemType(os.makedev(250, 9), "/mnt/my disk/x") is None
    fakeMountInfo(tmp_path, monkeypatch, [
        "27 1 8:1 / / rw - ext4 /dev/sda1 rw",
        "31 27 0:99 / /mnt/my\\040disk rw - fuse.sshfs host: rw",
    ])
    assert _filesystemType(os.makedev(250, 9), "/mnt/my disk/x") == "fuse.sshfs"
    assert _filesystemType(os.makedev(250, 9), "/srv/x") == "ext4"
    assert onLocalFilesystem(str(tmp_path))  # by the root's ext4
    fakeMountInfo(tmp_path, monkeypatch, [])
    assert not onLocalFilesystem(str(tmp_path))


def test_transactionListsFoldersOtherHostsShare(tmp_path, monkeypatch):
    """
    On a filesystem other hosts share, whose changes there inotify does
    not hear, every transaction lists the folder.
    """
    device = os.stat(str(tmp_path)).st_dev
    fakeMountInfo(tmp_path, monkeypatch, [
        "30 27 %d:%d / /srv/mail rw - nfs host:/mail rw" % (os.major(device), os.minor(device))])
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    listings = countListings(monkeypatch, mailbox)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    settle(reactor)
    resultOf(mailbox.changeFlags([2], ["\\Seen"], ADD))
    assert len(listings) == 2


def test_eventsBeingHandedOnArePending(tmp_path):
    """
    While the reactor hands on events it read from the kernel (which then
    has none), a transaction in another thread is told some are pending:
    the listing kept is not taken as current before they are heard.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    heard = store.changesHeard
    during = []
    original = heard.heard

    def heardAndAsk(*args):
        during.append(heard.pending())
        return original(*args)

    heard.heard = heardAndAsk
    drop(store)
    assert heard.pending()
    readINotify(reactor)
    assert during == [True]
    assert not heard.pending()
    drop(store)
    feed._drain()
    assert during == [True, True]
    assert not heard.pending()


@pytest.mark.parametrize("change", ["flags", "expunge", "append"])
def test_readerTakesInChangesOfAnotherProcessFromTheFeed(tmp_path, monkeypatch, change):
    """
    A view read without the lock after another process changed the folder
    takes the listing a transaction of this process left, with the
    changes heard since made to it, rather than listing C{cur/}: its
    messages are those a fresh store reads.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    settle(reactor)
    elsewhere = MaildirStore(str(tmp_path), runInThread=synchronousRunner)
    other = elsewhere.openMailbox(ALICE)
    listings = countListings(monkeypatch, mailbox, "_listCur")
    if change == "flags":
        resultOf(other.changeFlags([2], ["\\Flagged"], ADD))
    elif change == "expunge":
        resultOf(other.expunge([3]))
    else:
        resultOf(other.append(MESSAGE, ["\\Draft"]))
    settle(reactor)
    del listings[:]  # the other process's own
    assert not mailbox.isCurrent()
    assert mailbox.syncFromSnapshot()
    assert listings == []
    fresh = MaildirStore(str(tmp_path), runInThread=synchronousRunner).openMailbox(ALICE)
    assert [(m.uid, m.flags, m.filename) for m in mailbox.messages()] == [
        (m.uid, m.flags, m.filename) for m in fresh.messages()]


def test_readerListsWhatTheIndexDoesNotShow(tmp_path, monkeypatch):
    """
    A change heard that the index does not show (another program renamed
    a file) makes the reader list the folder, and find that only the
    locked transaction can take it in.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    settle(reactor)
    listings = countListings(monkeypatch, mailbox, "_listCur")
    cur = os.path.join(mailbox.path, "cur")
    second = mailbox.messages()[1].filename
    os.rename(os.path.join(cur, second), os.path.join(cur, second + "F"))
    settle(reactor)
    assert not mailbox.syncFromSnapshot()
    assert listings == [mailbox.path]
    mailbox.sync()
    assert mailbox.messages()[1].flags == {"\\Flagged"}


def test_readerIgnoresAListingNewerThanTheIndexItRead(tmp_path):
    """
    A listing left by a transaction after the reader read the index is
    not the folder as of that index: the reader does not take it.
    """
    reactor, store, feed, calls, mailbox = watchedInbox(tmp_path)
    resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
    settle(reactor)
    index = mailbox._index
    read = index._readUnlocked()
    assert index._listingHeard(read) is not None
    resultOf(mailbox.changeFlags([2], ["\\Seen"], ADD))
    settle(reactor)
    assert index._listingHeard(read) is None
    assert index._listingHeard(index._readUnlocked()) is not None
