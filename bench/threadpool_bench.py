#!/usr/bin/env python3
"""The hand-off of a blocking call to the backend's thread pool and back:
mdpy's pool (mdpy.backends.threadpool) beside Twisted's ThreadPool, the
one it replaces, in the same run.

    python bench/threadpool_bench.py [--calls 20000] [--callers 4] [--repeat 3]

Each pool runs --calls calls of a trivial function through
twisted.internet.threads.deferToThreadPool, from --callers callers at once
on a running reactor (as sessions do, each waiting for its call), after
1,000 calls to start its threads.  Printed per pool: microseconds of
wall-clock time and of the process's CPU time per call (the median of
--repeat rounds, the pools taking turns), and the ratio.  Exit status: 0.
See bench/README.rst.
"""

import argparse
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import defer, reactor, threads  # noqa: E402
from twisted.python.threadpool import ThreadPool as TwistedPool  # noqa: E402

from mdpy.backends.threadpool import ThreadPool as MdpyPool  # noqa: E402


def cpuSeconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def calls(pool, count):
    for _ in range(count):
        await threads.deferToThreadPool(reactor, pool, len, "abc")


@defer.inlineCallbacks
def measure(poolClass, args):
    pool = poolClass(maxthreads=32, name="bench")
    pool.start()
    try:
        yield defer.ensureDeferred(calls(pool, 1000))
        wall, cpu = time.perf_counter(), cpuSeconds()
        each = args.calls // args.callers
        yield defer.gatherResults([defer.ensureDeferred(calls(pool, each)) for _ in range(args.callers)])
        n = each * args.callers
        return (time.perf_counter() - wall) / n * 1e6, (cpuSeconds() - cpu) / n * 1e6
    finally:
        pool.stop()


@defer.inlineCallbacks
def main(args):
    rounds = {"mdpy": [], "twisted": []}
    try:
        for _ in range(args.repeat):
            for name, cls in (("twisted", TwistedPool), ("mdpy", MdpyPool)):
                rounds[name].append((yield measure(cls, args)))
        print("thread pool hand-off: %d calls from %d callers, median of %d rounds"
              % (args.calls, args.callers, args.repeat))
        print("%-10s | %14s | %14s" % ("pool", "wall us/call", "CPU us/call"))
        print("-" * 45)
        medians = {}
        for name in ("mdpy", "twisted"):
            wall = sorted(r[0] for r in rounds[name])[len(rounds[name]) // 2]
            cpu = sorted(r[1] for r in rounds[name])[len(rounds[name]) // 2]
            medians[name] = (wall, cpu)
            print("%-10s | %14.1f | %14.1f" % (name, wall, cpu))
        print("mdpy/Twisted CPU per call: %.2f" % (medians["mdpy"][1] / medians["twisted"][1]))
    finally:
        reactor.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    reactor.callWhenRunning(main, arguments)
    reactor.run()
