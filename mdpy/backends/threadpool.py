# -*- test-case-name: tests.test_threadpool -*-
"""
The thread pool the backend's blocking calls run in.

It is used as Twisted's L{twisted.python.threadpool.ThreadPool} is (and
L{twisted.internet.threads.deferToThreadPool} takes it): L{start},
L{stop}, L{callInThread}, L{callInThreadWithCallback}.  Each call goes
through one queue written in C to a thread waiting on it, where Twisted's
passes it through a coordinator, a lock-protected worker and a Python
queue, and runs it in a copy of the caller's logging context: a mail
session makes one or two such calls per command, and that path cost as
much as the work of a small one.

Threads are started as calls wait for one, up to C{maxthreads}, and kept.
"""

import queue
import threading

from twisted.python.failure import Failure

from mdpy.logs import Logger

log = Logger()

_STOP = object()


class ThreadPool:
    """
    @ivar started: whether L{start} was called and L{stop} not yet.
    @ivar threads: the threads started.
    """

    def __init__(self, maxthreads=32, name="pool"):
        self.maxthreads = maxthreads
        self.name = name
        self.started = False
        self.threads = []
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0  # calls queued that no thread took yet
        self._idle = 0  # threads waiting for a call

    def start(self):
        """
        Let calls run; the calls made before wait until now.
        """
        self.started = True
        with self._lock:
            for _ in range(min(self._waiting, self.maxthreads)):
                self._startThread()

    def callInThread(self, func, *args, **kwargs):
        self.callInThreadWithCallback(None, func, *args, **kwargs)

    def callInThreadWithCallback(self, onResult, func, *args, **kwargs):
        """
        Run C{func(*args, **kwargs)} in a thread of the pool, then
        C{onResult(True, result)} or C{onResult(False, failure)} in that
        thread.
        """
        self._queue.put((onResult, func, args, kwargs))
        with self._lock:
            self._waiting += 1
            if self.started and self._waiting > self._idle and len(self.threads) < self.maxthreads:
                self._startThread()

    def _startThread(self):
        thread = threading.Thread(target=self._work, name="PoolThread-%s-%d" % (self.name, len(self.threads)),
                                  daemon=True)
        self.threads.append(thread)
        self._idle += 1
        thread.start()

    def _work(self):
        get, lock = self._queue.get, self._lock
        while True:
            job = get()
            with lock:
                self._idle -= 1
                if job is not _STOP:
                    self._waiting -= 1
            if job is _STOP:
                return
            onResult, func, args, kwargs = job
            del job
            try:
                result = func(*args, **kwargs)
                ok = True
            except BaseException:
                result = Failure()
                ok = False
            del func, args, kwargs
            if onResult is not None:
                try:
                    onResult(ok, result)
                except BaseException:
                    log.failure("thread pool {name}: result handler failed", name=self.name)
            elif not ok:
                log.failure("thread pool {name}: call failed", result, name=self.name)
            del onResult, result
            with lock:
                self._idle += 1

    def stop(self):
        """
        Let the calls queued run, then end every thread and wait for it.
        """
        self.started = False
        threads, self.threads = self.threads, []
        for _ in threads:
            self._queue.put(_STOP)
        for thread in threads:
            thread.join()
