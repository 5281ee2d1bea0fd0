# -*- test-case-name: tests.test_store_maildir,tests.test_committer -*-
"""
Group commit of new message files.

Deliveries are queued to a few writer threads.  A writer takes every delivery
waiting when it wakes, writes and fsyncs each file in C{tmp/}, renames them
into C{new/}, fsyncs each directory once for the whole batch, and hands all
the results back to the reactor in one call.  Under load this replaces one
thread hand-off, one reactor wake-up and one directory fsync per message by
one per batch, which is where a Python server spends its time when every
message must be on disk before its 250.  Deliveries queued while a batch is
being written join it, rather than wait for its fsyncs and then their own.

A delivery may leave its files written but not yet fsynced (see
L{Committer.__init__}; with L{mdpy.durable.startWriteback}): they are
fsynced once every delivery of the batch was written, so that their writes
go to the disk together and each fsync finds little left to wait for.

Invariants: each delivery stays all-or-nothing on its own (a failure of one
delivery does not fail the others of its batch, unless it is the directory
fsync they share); a delivery's Deferred fires on the reactor thread only
after its files and their directories are fsynced.
"""

import os
import queue
import threading

from twisted.python.failure import Failure

from mdpy.backends.files.blocking import deferToReactorThreadPool
from mdpy.durable import fsyncDirectory, unlinkQuietly
from mdpy.errors import storageFailure

MAX_BATCH = 64


class Committer:
    """
    @ivar threads: how many writer threads run (each fsyncs in parallel with
        the others).
    """

    def __init__(self, reactor, prepare, threads=4, joinWhileWriting=False):
        """
        @param prepare: C{prepare(targets)} writes and fsyncs the files of one
            delivery in C{tmp/} and returns C{[(tmpPath, finalPath)]}; it
            raises (having removed what it wrote) if it cannot.  An item may
            instead be C{(tmpPath, finalPath, fd)}: the file is written but
            not fsynced, and C{fd} is left open for the batch to fsync and
            close before the rename.
        @param joinWhileWriting: whether deliveries arriving while a batch is
            prepared join it; worth it when C{prepare} leaves the fsyncs to
            the batch (it is then quick), not when it fsyncs itself (each
            newcomer would hold the whole batch back).
        """
        self._reactor = reactor
        self._prepare = prepare
        self._joinWhileWriting = joinWhileWriting
        self._queue = queue.SimpleQueue()
        self._threads = []
        self._count = threads
        self._lock = threading.Lock()

    def _start(self):
        with self._lock:
            if self._threads:
                return
            for i in range(self._count):
                thread = threading.Thread(
                    target=self._work, name="mdpy-committer-%d" % (i,), daemon=True
                )
                thread.start()
                self._threads.append(thread)
            self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def stop(self):
        """
        Let the writers finish what they hold and end.
        """
        for thread in self._threads:
            self._queue.put(None)
        self._threads = []

    def commit(self, targets, deferred):
        """
        Queue one delivery; C{deferred} fires with L{None} or fails.
        """
        if not self._threads:
            self._start()
        self._queue.put((targets, deferred))

    def _work(self):
        jobs = self._queue
        while True:
            job = jobs.get()
            if job is None:
                return
            batch = [job]
            if not self._joinWhileWriting:
                batch += self._available(MAX_BATCH - 1)
            prepared = []
            while len(prepared) < len(batch):
                prepared.append(_prepareOne(self._prepare, batch[len(prepared)][0]))
                if self._joinWhileWriting and len(prepared) == len(batch) < MAX_BATCH:
                    # Deliveries that came while the batch was written join
                    # it: they would otherwise wait for its fsyncs, then for
                    # their own.
                    batch += self._available(1)
            failures = finishBatch(prepared)
            results = [(deferred, failure) for (targets, deferred), failure in zip(batch, failures)]
            self._reactor.callFromThread(_fire, results)

    def _available(self, limit):
        """
        @return: up to C{limit} deliveries waiting now.
        """
        taken = []
        while len(taken) < limit:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            taken.append(job)
        return taken

    def _commitBatch(self, batch):
        """
        @return: C{[(deferred, None or Failure)]}, in the order of C{batch}.
        """
        failures = commitBatch(self._prepare, [targets for targets, deferred in batch])
        return [(deferred, failure) for (targets, deferred), failure in zip(batch, failures)]


def commitBatch(prepare, deliveries):
    """
    Commit several deliveries: prepare (write) each one's files, fsync those
    C{prepare} left unsynced, rename them all into place, and fsync each
    directory once.

    @param prepare: see L{Committer.__init__}.
    @param deliveries: a list of what C{prepare} takes.
    @return: for each delivery, in order, L{None} or the L{Failure} that
        undid it.
    """
    return finishBatch([_prepareOne(prepare, targets) for targets in deliveries])


def _prepareOne(prepare, targets):
    """
    @return: C{(files, None)} from C{prepare}, or C{(None, failure)}.
    """
    try:
        return prepare(targets), None
    except BaseException:
        return None, Failure()


def finishBatch(prepared):
    """
    Fsync the files C{prepare} left unsynced, rename every file into place,
    and fsync each directory once.

    @param prepared: C{[(files, failure)]} of L{_prepareOne}, a delivery
        each.
    @return: for each delivery, in order, L{None} or the L{Failure} that
        undid it.
    """
    failures = [failure for files, failure in prepared]
    synced = [
        (index, _syncPrepared(files))
        for index, (files, failure) in enumerate(prepared)
        if failure is None
    ]
    renamed, directories = [], {}
    for index, (files, error) in synced:
        if error is not None:
            failures[index] = Failure(error)
            continue
        done = []
        try:
            for tmpPath, finalPath in files:
                os.rename(tmpPath, finalPath)
                done.append(finalPath)
        except OSError as e:
            for path in [tmpPath for tmpPath, finalPath in files] + done:
                unlinkQuietly(path)
            failures[index] = Failure(storageFailure("rename", e))
            continue
        renamed.append((index, done))
        for path in done:
            directories.setdefault(path.rpartition("/")[0], set()).add(index)
    for directory, indices in directories.items():
        try:
            fsyncDirectory(directory)
        except OSError as e:
            for index in indices:
                failures[index] = Failure(storageFailure("fsync " + directory, e))
    for index, done in renamed:
        if failures[index] is not None:
            for path in done:
                unlinkQuietly(path)
    return failures


def _syncPrepared(files):
    """
    Fsync and close the descriptors C{prepare} left open in C{files}.

    @return: C{([(tmpPath, finalPath)], error)}: C{error} is L{None}, or a
        L{TemporaryFailure} after which the temporary files were removed.
    """
    error = None
    for item in files:
        if len(item) == 3:
            fd = item[2]
            try:
                if error is None:
                    os.fsync(fd)
            except OSError as e:
                error = storageFailure("fsync " + item[0], e)
            finally:
                os.close(fd)
    paths = [item[:2] for item in files]
    if error is not None:
        for tmpPath, finalPath in paths:
            unlinkQuietly(tmpPath)
    return paths, error


def _fire(results):
    for deferred, failure in results:
        if failure is None:
            deferred.callback(None)
        else:
            deferred.errback(failure)


def writerFor(reactor, prepare, threads, runInThread=None, groupCommit=None, **options):
    """
    How a part of the files backend (the Maildir store, the queue) writes
    new files: through a L{Committer} of its own, or one at a time in the
    thread pool it is given.

    @param runInThread: the backend's runner of blocking calls; L{None}:
        the global reactor's thread pool.
    @param groupCommit: whether a L{Committer} writes; L{None}: when no
        runner is given.
    @param options: further arguments of L{Committer}.
    @return: C{(committer or None, runInThread)}.
    """
    if groupCommit is None:
        groupCommit = runInThread is None
    if runInThread is None:
        runInThread = deferToReactorThreadPool
    committer = None
    if groupCommit:
        if reactor is None:
            from twisted.internet import reactor
        committer = Committer(reactor, prepare, threads, **options)
    return committer, runInThread
