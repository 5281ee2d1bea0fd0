# -*- test-case-name: tests.test_store_maildir -*-
"""
Group commit of new message files.

Deliveries are queued to a few writer threads.  A writer takes every delivery
waiting when it wakes, writes and fsyncs each file in C{tmp/}, renames them
into C{new/}, fsyncs each directory once for the whole batch, and hands all
the results back to the reactor in one call.  Under load this replaces one
thread hand-off, one reactor wake-up and one directory fsync per message by
one per batch, which is where a Python server spends its time when every
message must be on disk before its 250.

Invariants: each delivery stays all-or-nothing on its own (a failure of one
delivery does not fail the others of its batch, unless it is the directory
fsync they share); a delivery's Deferred fires on the reactor thread only
after its files and their directories are fsynced.
"""

import os
import queue
import threading

from twisted.python.failure import Failure

from mdpy.durable import fsyncDirectory, unlinkQuietly
from mdpy.errors import TemporaryFailure

MAX_BATCH = 64


class Committer:
    """
    @ivar threads: how many writer threads run (each fsyncs in parallel with
        the others).
    """

    def __init__(self, reactor, prepare, threads=4):
        """
        @param prepare: C{prepare(targets)} writes and fsyncs the files of one
            delivery in C{tmp/} and returns C{[(tmpPath, finalPath)]}; it
            raises (having removed what it wrote) if it cannot.
        """
        self._reactor = reactor
        self._prepare = prepare
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
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)
                    break
                batch.append(job)
            results = self._commitBatch(batch)
            self._reactor.callFromThread(_fire, results)

    def _commitBatch(self, batch):
        """
        @return: C{[(deferred, None or Failure)]}, in the order of C{batch}.
        """
        results = self._commitFiles(batch)
        outcome = {id(deferred): failure for deferred, failure in results}
        return [(deferred, outcome[id(deferred)]) for targets, deferred in batch]

    def _commitFiles(self, batch):
        results, prepared = [], []
        for targets, deferred in batch:
            try:
                prepared.append((deferred, self._prepare(targets)))
            except BaseException:
                results.append((deferred, Failure()))
        renamed, directories = [], {}
        for deferred, files in prepared:
            done = []
            try:
                for tmpPath, finalPath in files:
                    os.rename(tmpPath, finalPath)
                    done.append(finalPath)
            except OSError as e:
                for tmpPath, finalPath in files:
                    unlinkQuietly(tmpPath)
                for path in done:
                    unlinkQuietly(path)
                results.append((deferred, Failure(TemporaryFailure("rename: %s" % (e.strerror,)))))
                continue
            renamed.append((deferred, done))
            for path in done:
                directories.setdefault(path.rpartition("/")[0], []).append(deferred)
        failed = {}
        for directory, deferreds in directories.items():
            try:
                fsyncDirectory(directory)
            except OSError as e:
                for deferred in deferreds:
                    failed[id(deferred)] = "fsync %s: %s" % (directory, e.strerror)
        for deferred, done in renamed:
            why = failed.get(id(deferred))
            if why is None:
                results.append((deferred, None))
            else:
                for path in done:
                    unlinkQuietly(path)
                results.append((deferred, Failure(TemporaryFailure(why))))
        return results


def _fire(results):
    for deferred, failure in results:
        if failure is None:
            deferred.callback(None)
        else:
            deferred.errback(failure)
