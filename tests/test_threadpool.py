"""
Tests of L{mdpy.threadpool.ThreadPool}, the pool the backend's blocking
calls run in.
"""

import threading

import pytest

from mdpy.testing import capturedLogs
from mdpy.backends.threadpool import ThreadPool


def collect(pool, func, *args):
    """
    @return: an event set once C{func(*args)} ran in C{pool}, and the list
        its C{(ok, result, thread)} is put in.
    """
    done, got = threading.Event(), []

    def onResult(ok, result):
        got.append((ok, result, threading.current_thread()))
        done.set()

    pool.callInThreadWithCallback(onResult, func, *args)
    return done, got


def test_resultsAndFailuresInAThreadOfThePool():
    pool = ThreadPool(maxthreads=2, name="test")
    pool.start()
    try:
        done, got = collect(pool, lambda a, b: a + b, 2, 3)
        assert done.wait(5)
        assert got[0][:2] == (True, 5)
        assert got[0][2] is not threading.current_thread()
        assert got[0][2].name == "PoolThread-test-0"
        done, got = collect(pool, lambda: 1 / 0)
        assert done.wait(5)
        assert got[0][0] is False
        assert got[0][1].check(ZeroDivisionError)
    finally:
        pool.stop()


def test_threadsGrowToTheLimitAndAreKept():
    """
    Calls that wait for a thread get a new one, up to maxthreads; the
    others wait for one of those.
    """
    pool = ThreadPool(maxthreads=3)
    pool.start()
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold():
        started.release()
        release.wait(5)
        return threading.current_thread()

    try:
        results = [collect(pool, hold) for _ in range(5)]
        for _ in range(3):
            assert started.acquire(timeout=5)
        assert not started.acquire(timeout=0.2)  # the 4th waits
        assert len(pool.threads) == 3
        release.set()
        for done, _ in results:
            assert done.wait(5)
        assert {got[0][1] for _, got in results} == set(pool.threads)
        # An idle thread takes the next call: none is added.
        done, _ = collect(pool, lambda: None)
        assert done.wait(5)
        assert len(pool.threads) == 3
    finally:
        pool.stop()


def test_callsBeforeStartRunOnceStarted():
    pool = ThreadPool(maxthreads=4)
    done, got = collect(pool, lambda: "early")
    assert not done.wait(0.1)
    assert pool.threads == []
    pool.start()
    try:
        assert done.wait(5)
        assert got[0][:2] == (True, "early")
    finally:
        pool.stop()


def test_stopRunsWhatIsQueuedThenEndsTheThreads():
    pool = ThreadPool(maxthreads=1)
    pool.start()
    ran = []
    gate = threading.Event()
    pool.callInThread(gate.wait, 5)
    for n in range(3):
        pool.callInThread(ran.append, n)
    threads = list(pool.threads)
    gate.set()
    pool.stop()
    assert ran == [0, 1, 2]
    assert not pool.started and pool.threads == []
    assert not any(thread.is_alive() for thread in threads)


def test_failingResultHandlerIsLoggedAndThePoolGoesOn():
    pool = ThreadPool(maxthreads=1, name="test")
    pool.start()
    try:
        with capturedLogs() as events:
            done = threading.Event()
            pool.callInThreadWithCallback(lambda ok, result: 1 / 0, lambda: None)
            pool.callInThreadWithCallback(lambda ok, result: done.set(), lambda: None)
            assert done.wait(5)
        assert any("result handler failed" in str(e.get("log_format")) for e in events)
    finally:
        pool.stop()


@pytest.mark.parametrize("maxthreads", [1, 8])
def test_deferToThreadPool(maxthreads):
    """
    Twisted's deferToThreadPool takes it, as backends use the pool.
    """
    from twisted.internet import threads

    class Reactor:
        def callFromThread(self, f, *args):
            f(*args)

    pool = ThreadPool(maxthreads=maxthreads)
    pool.start()
    try:
        results = []
        done = threading.Event()
        d = threads.deferToThreadPool(Reactor(), pool, lambda: 42)
        d.addCallback(results.append)
        d.addCallback(lambda _: done.set())
        assert done.wait(5)
        assert results == [42]
    finally:
        pool.stop()
