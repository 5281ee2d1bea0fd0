# -*- test-case-name: tests.contract -*-
"""
The files backend, mdpy's embedded default: everything in the data
directory of one machine (see L{mdpy.datadir} for the layout, unchanged by
this backend).

    mail/          the Maildir++ store (L{mdpy.backends.files.maildir})
    directory.sqlite   the directory (L{mdpy.backends.files.directory})
    queue/         the outbound queue spool (L{mdpy.backends.files.queue})
    locks/         the POP3 maildrop locks (L{mdpy.backends.files.locks})
    logins.sqlite  the failed logins (L{mdpy.backends.files.logins})
    multipop/accounts.json   the MultiPOP accounts
                   (L{mdpy.backends.files.remoteaccounts})
    domainpop/NAME/state.sqlite, multipop/ID/state.sqlite   what each
                   collected source remembers
                   (L{mdpy.backends.files.collectorstate})

Its parts block on the disk; they run in the thread pool the server hands
the backend (L{mdpy.backends.files.blocking}), so what the protocols call
returns Deferreds.  Built without a thread pool (the C{mdpy} command), the
store and the directory answer synchronously.
"""

import os

from zope.interface import implementer

from mdpy.backends.files.blocking import Blocking, DeferredCalls, DeferredStore, deferToReactorThreadPool
from mdpy.backends.files.changefeed import MaildirChangeFeed
from mdpy.backends.files.collectorstate import CollectorStates
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.backends.files.kernelsync import kernelSyncs
from mdpy.backends.files.locks import FileMaildropLocks
from mdpy.backends.files.logins import SQLiteLoginFailures
from mdpy.backends.files.maildir import MaildirStore, removeStaleTmpFiles
from mdpy.backends.files.queue import SpoolQueue
from mdpy.backends.files.remoteaccounts import RemoteAccountsFile
from mdpy.datadir import DataDir
from mdpy.interfaces import IBackend, IRemoteAccounts
from mdpy.mailbox import accountKey
from mdpy.logs import Logger

_log = Logger()


def openDirectory(datadir, recipientDelimiter="+"):
    """
    @param datadir: a L{DataDir}.
    @param recipientDelimiter: see L{SQLiteDirectory.recipientDelimiter}.
    @return: the L{SQLiteDirectory} of C{datadir}.
    """
    datadir.prepare()
    # It holds password hashes: private to the server's user, and SQLite
    # gives its -wal and -shm files the same mode.
    os.close(os.open(datadir.directoryPath, os.O_WRONLY | os.O_CREAT, 0o600))
    return SQLiteDirectory(datadir.directoryPath, recipientDelimiter)


@implementer(IBackend)
class FilesBackend:
    """
    See L{IBackend} and the module docstring.

    @ivar datadir: the L{DataDir}.
    @ivar mailStore: the L{MaildirStore} itself (synchronous and
        thread-safe); L{store} is what the protocols get.
    """

    def __init__(self, dataDir, reactor=None, threadPool=None, recipientDelimiter="+",
                 groupCommit=True):
        """
        @param dataDir: the data directory.
        @param threadPool: the thread pool blocking work runs in, started
            and stopped by the caller; L{None} for a synchronous backend
            (the C{mdpy} command).
        @param groupCommit: whether new messages and queue entries are
            written by group commit (L{mdpy.backends.files.committer}, its
            own writer threads) rather than in C{threadPool}.
        """
        self.datadir = DataDir(dataDir)
        self.datadir.prepare()
        os.makedirs(self.datadir.mailRoot, mode=0o700, exist_ok=True)
        self.maildropLocks = FileMaildropLocks(os.path.join(self.datadir.root, "locks"))
        self._loginFailures = None
        self.dedupe = CollectorStates(self.datadir.root)
        self.directory = openDirectory(self.datadir, recipientDelimiter)
        if threadPool is None:
            self._blocking = None
            runInThread = None
        else:
            self._blocking = Blocking(reactor, threadPool)
            runInThread = self._blocking.run
        self.mailStore = MaildirStore(
            self.datadir.mailRoot, runInThread=runInThread, reactor=reactor,
            archiveRoot=self.datadir.deletedDir, groupCommit=groupCommit,
            transactsOnCaller=runInThread is not None,
        )
        if runInThread is not None:
            self.mailStore.kernelSyncs = kernelSyncs(reactor, self.datadir.mailRoot)
        # Hears the changes other processes make to the same data directory.
        self.changeFeed = MaildirChangeFeed(self.mailStore.folderPath, reactor, accountKey,
                                            heard=self.mailStore.changesHeard)
        self.mailStore.changeFeed = self.changeFeed
        self.store = self.mailStore if runInThread is None else DeferredStore(self.mailStore, runInThread)
        self.queue = SpoolQueue(self.datadir.queueDir, reactor=reactor, runInThread=runInThread,
                                groupCommit=groupCommit)
        accounts = RemoteAccountsFile(os.path.join(self.datadir.root, "multipop", "accounts.json"))
        if runInThread is not None:
            accounts = DeferredCalls(accounts, IRemoteAccounts, runInThread)
        self.remoteAccounts = accounts

    @classmethod
    def fromConfig(cls, config, reactor=None, threadPool=None):
        """
        @return: the backend of C{config}'s C{[server] data_dir}.
        """
        server = config["server"]
        return cls(server["data_dir"], reactor, threadPool, server["recipient_delimiter"])

    def __repr__(self):
        return "<FilesBackend %s>" % (self.datadir.root,)

    @property
    def loginFailures(self):
        """
        The L{SQLiteLoginFailures} of the data directory, opened when first
        used (by the server, not by the C{mdpy} command).
        """
        if self._loginFailures is None:
            self._loginFailures = SQLiteLoginFailures(os.path.join(self.datadir.root, "logins.sqlite"))
        return self._loginFailures

    def start(self):
        """
        Tidy what a crash left: message files in C{tmp/} for over 36 hours.

        @return: the paths removed.
        """
        stale = removeStaleTmpFiles(self.datadir.mailRoot)
        if stale:
            _log.info("maildir: removed {n} files left in tmp/ folders for over 36 hours", n=len(stale))
        return stale

    def runBlocking(self, f, *args, **kwargs):
        """
        See L{IBackend.runBlocking}.
        """
        if self._blocking is None:
            return deferToReactorThreadPool(f, *args, **kwargs)
        return self._blocking.run(f, *args, **kwargs)

    def close(self):
        """
        See L{IBackend.close}.
        """
        self.directory.close()
        self.changeFeed.close()
        if self.mailStore.kernelSyncs is not None:
            self.mailStore.kernelSyncs.close()
            self.mailStore.kernelSyncs = None
        if self._loginFailures is not None:
            self._loginFailures.close()
        self.maildropLocks.close()
        self.dedupe.close()
