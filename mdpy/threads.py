"""
Blocking work off the reactor thread: the one default of every
C{runInThread} parameter (stores, checkers, protocol factories).
"""


def deferToReactorThreadPool(f, *args, **kwargs):
    """
    Run C{f(*args, **kwargs)} in the global reactor's thread pool.

    @return: a L{Deferred} firing with its result.
    """
    from twisted.internet import reactor, threads

    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)
