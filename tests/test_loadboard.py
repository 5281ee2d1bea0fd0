"""
Tests of L{mdpy.tap.loadboard}: the board of the workers' connections, as
the supervisor and two workers see it.  That the workers share a burst of
connections evenly through it is shown end to end in
C{tests/test_e2e_workers.py}.
"""

import os

import pytest

from mdpy.tap.loadboard import GONE, STARTUP_WAIT, LoadBoard


def workerBoard(supervisor, slot):
    return LoadBoard.fromArgument("%d:%d:%d" % (os.dup(supervisor.fileno()), slot, supervisor.count))


def test_workersSeeEachOthersCounts():
    supervisor = LoadBoard.create(2)
    first = workerBoard(supervisor, 0)
    # The other has not started: none yields to it.
    first.add(3)
    assert not first.busier()
    second = workerBoard(supervisor, 1)
    assert first.busier() and not second.busier()
    second.add(3)
    assert not first.busier() and not second.busier()
    first.add(-1)
    assert second.busier()
    # A worker that ended is not waited for.
    supervisor.gone(0)
    assert not second.busier()
    # Started again, it counts from nothing.
    again = workerBoard(supervisor, 0)
    assert again.held == 0 and second.busier() and not again.busier()


def test_boardOfOneWorker():
    supervisor = LoadBoard.create(1)
    only = workerBoard(supervisor, 0)
    only.add(100)
    assert not only.busier()


@pytest.mark.parametrize("argument", ["3", "3:1", "x:0:2", "3:2:2", "3:-1:2", "999:0:2"])
def test_badArgument(argument):
    with pytest.raises((ValueError, OSError)):
        LoadBoard.fromArgument(argument)


def test_goneIsAboveAnyCount():
    supervisor = LoadBoard.create(2)
    board = workerBoard(supervisor, 1)
    board.add(1 << 40)
    assert not board.busier()
    assert GONE > board.held


def test_workerStartingWaitsForTheOthers():
    """
    A worker that just started leaves the connections to the others until
    they are on the board too, or until STARTUP_WAIT has passed.
    """
    now = [100.0]
    supervisor = LoadBoard.create(3)
    first = LoadBoard(os.dup(supervisor.fileno()), 3, 0, clock=lambda: now[0])
    assert first.othersStarting()
    LoadBoard(os.dup(supervisor.fileno()), 3, 1)
    assert first.othersStarting()
    third = LoadBoard(os.dup(supervisor.fileno()), 3, 2)
    assert not first.othersStarting()
    # Once every worker was there, one that ends later is not waited for.
    supervisor.gone(2)
    assert not first.othersStarting()
    # Nor past STARTUP_WAIT.
    late = LoadBoard(os.dup(supervisor.fileno()), 3, 0, clock=lambda: now[0])
    assert late.othersStarting()
    now[0] += STARTUP_WAIT
    assert not late.othersStarting()
    assert third.slot == 2
