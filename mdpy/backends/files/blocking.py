# -*- test-case-name: tests.contract.test_store -*-
"""
The one place the files backend turns blocking work into Deferreds.

The Maildir store, the SQLite files and the queue spool block on the disk.
What may wait (a lock, an fsync, a write, a walk of a whole tree) runs in
one thread pool that the server hands the backend
(L{mdpy.backends.files.FilesBackend}), and what the protocols see of it
returns Deferreds fired on the reactor thread (see "Threading" in
L{mdpy.interfaces}).  What only reads a directory listing or a small file
runs at once on the reactor thread: on a local disk that costs less than
the two hand-offs between threads it would take, which, with many sessions
at work, cost more in wake-ups than the reads themselves.  For the same
reason, a flag change, an expunge and an append of a message held in
memory run their locked transaction on the reactor thread when the folder
lock is free, and only their syncs wait elsewhere: in the kernel where it
can run them (L{mdpy.backends.files.kernelsync}), else in the pool.  Nothing outside
C{mdpy.backends} starts a thread.
"""

import functools

from twisted.internet import defer, threads
from zope.interface import implementer, directlyProvides, providedBy
from zope.interface.interface import Method

from mdpy.interfaces import IMailStore
from mdpy.mailbox import normaliseFolderName


def deferToReactorThreadPool(f, *args, **kwargs):
    """
    Run C{f(*args, **kwargs)} in the global reactor's thread pool: the
    default of the files backend's parts when they are used on their own
    (the C{mdpy} command, tests).

    @return: a L{Deferred} firing with its result.
    """
    from twisted.internet import reactor

    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)


class Blocking:
    """
    Blocking calls, run in one thread pool.

    @ivar reactor: the reactor the results are delivered on.
    @ivar threadPool: a started L{mdpy.backends.threadpool.ThreadPool} (or Twisted's).
    """

    def __init__(self, reactor, threadPool):
        self.reactor = reactor
        self.threadPool = threadPool

    def run(self, f, *args, **kwargs):
        """
        Run C{f(*args, **kwargs)} in the pool; before the pool starts (the
        server is being built and serves nobody yet: the first start, the
        queue's load), at once on the calling thread.

        @return: a L{Deferred} firing, on the reactor thread, with its
            result.
        """
        if not self.threadPool.started:
            return defer.maybeDeferred(f, *args, **kwargs)
        return threads.deferToThreadPool(self.reactor, self.threadPool, f, *args, **kwargs)


# IMailStore methods that write or may wait (for a lock, fsync, a whole
# tree's walk): run in the pool.
_BLOCKING_STORE_METHODS = (
    "createAccount",
    "deleteAccount",
    "deleteDomain",
    "createMailbox",
    "deleteMailbox",
    "renameMailbox",
    "setSubscribed",
    "usage",
)
# IMailStore methods that read a directory or a small file and never wait:
# run at once on the calling thread, where they cost less than the hand-off
# to the pool and back.  The others (deliver, addListener, removeListener)
# return Deferreds or are in memory.
_QUICK_STORE_METHODS = (
    "accountExists",
    "listMailboxes",
    "listSubscriptions",
)

# IMailStore methods that make, delete or rename folders or change their
# subscription: the folders they touch, from their arguments after the
# address, told to the change feed once done.
_FOLDER_CHANGES = {
    "createMailbox": lambda name: (name,),
    "deleteMailbox": lambda name: (name,),
    "renameMailbox": lambda old, new: (old, new),
    "setSubscribed": lambda name, subscribed: (name,),
}


def _runNow(f):
    return functools.partial(defer.maybeDeferred, f)


@implementer(IMailStore)
class DeferredStore:
    """
    A synchronous, thread-safe L{IMailStore} (the Maildir store) as the
    protocols see it: each method that touches the disk runs in the pool
    and returns a Deferred, and so does L{openMailbox}, whose mailbox
    takes in changes (L{DeferredMailbox.sync}) in the pool too.

    @ivar synchronous: the store itself, for the C{mdpy} command and the
        first start, which may block.
    """

    def __init__(self, store, runInThread):
        self.synchronous = store
        self._runInThread = runInThread
        for name in _BLOCKING_STORE_METHODS:
            setattr(self, name, functools.partial(runInThread, getattr(store, name)))
        for name in _QUICK_STORE_METHODS:
            setattr(self, name, _runNow(getattr(store, name)))
        for name, folders in _FOLDER_CHANGES.items():
            setattr(self, name, functools.partial(self._changeFolders, getattr(self, name), folders))

    def __repr__(self):
        return "<DeferredStore %r>" % (self.synchronous,)

    def _changeFolders(self, change, folders, address, *args):
        """
        Make a change to folders in the pool, then tell the change feed
        of each folder it touched, on the reactor thread.

        @param folders: C{folders(*args)} names those folders.
        """
        d = change(address, *args)

        def changed(result):
            for name in folders(*args):
                self.synchronous._notify(address, normaliseFolderName(name))
            return result

        return d.addCallback(changed)

    def deliver(self, copies, key=None, again=False):
        """
        See L{IMailStore.deliver}.
        """
        return self.synchronous.deliver(copies, key, again)

    def openMailbox(self, address, name="INBOX"):
        """
        See L{IMailStore.openMailbox}.

        @return: a L{Deferred} firing with a L{DeferredMailbox}: at once
            when another view's state is known current or the folder can be
            read without its lock
            (L{mdpy.backends.files.maildir.MaildirMailbox.syncFromSnapshot}), else from the pool.
        """
        try:
            mailbox = self.synchronous.openUnsynced(address, name)
            quick = mailbox.isCurrent() or mailbox.syncFromSnapshot()
        except Exception:
            return defer.fail()
        if quick:
            return defer.succeed(DeferredMailbox(mailbox, self._runInThread))
        d = self._runInThread(mailbox.sync)
        return d.addCallback(lambda _: DeferredMailbox(mailbox, self._runInThread))

    def addListener(self, address, listener):
        """
        See L{IMailStore.addListener}.
        """
        self.synchronous.addListener(address, listener)

    def removeListener(self, address, listener):
        """
        See L{IMailStore.removeListener}.
        """
        self.synchronous.removeListener(address, listener)


class DeferredMailbox:
    """
    A mailbox of a L{DeferredStore}: everything as the store's own mailbox,
    which it provides the interfaces of, except L{sync}, run in the pool.
    """

    def __init__(self, mailbox, runInThread):
        self._mailbox = mailbox
        self._runInThread = runInThread
        directlyProvides(self, providedBy(mailbox))

    def __getattr__(self, name):
        return getattr(self._mailbox, name)

    def __repr__(self):
        return "<DeferredMailbox %r>" % (self._mailbox,)

    def sync(self):
        """
        See L{mdpy.interfaces.IMailbox.sync}: nothing when the view is
        known current, at once when the folder can be read without its
        lock, else in the pool.
        """
        try:
            if self._mailbox.isCurrent() or self._mailbox.syncFromSnapshot():
                return defer.succeed(None)
        except Exception:
            return defer.fail()
        return self._runInThread(self._mailbox.sync)


class DeferredCalls:
    """
    A synchronous, thread-safe object as the protocols see it: each method
    of C{interface} runs in the pool and returns a Deferred.

    @ivar synchronous: the object itself.
    """

    def __init__(self, synchronous, interface, runInThread):
        self.synchronous = synchronous
        for name, description in interface.namesAndDescriptions(all=True):
            if isinstance(description, Method):
                setattr(self, name, functools.partial(runInThread, getattr(synchronous, name)))
        directlyProvides(self, interface)

    def __repr__(self):
        return "<DeferredCalls %r>" % (self.synchronous,)
