# -*- test-case-name: tests.test_loadboard -*-
"""
How many connections each worker holds, so that they share the clients
evenly: the kernel wakes every worker for a connection on the listening
sockets they share, and the first to call C{accept()} takes it, which under
a burst of connections is rarely the one with fewest.  Mail clients keep
their connections for hours, so a worker that took too many at the start
keeps them, and with them a whole core's work, while the other idles.

The board is a small file the supervisor makes and every worker maps: one
signed 64-bit slot per worker, which only that worker writes (its count)
and the supervisor sets to L{GONE} while the worker is not running.  A
worker that holds more than another lets it take the next connection
(L{mdpy.dualstack.OneAtATimePort}).
"""

import mmap
import os
import struct
import tempfile
import time

# The count of a worker that is not running: none yields to it.
GONE = 1 << 62
# How long a worker that just started leaves the connections to the others
# that are starting too (not yet on the board), so that the clients of a
# server just (re)started are not all taken by the first worker up.
STARTUP_WAIT = 5.0
_SLOT = struct.Struct("=q")


class LoadBoard:
    """
    One process's view of the board.

    @ivar slot: this worker's slot (its number - 1), or L{None} for the
        supervisor, which only marks workers gone.
    @ivar held: the connections this worker holds.
    """

    def __init__(self, fd, count, slot=None, clock=time.monotonic):
        self._map = mmap.mmap(fd, _SLOT.size * count)
        self.count = count
        self.slot = slot
        self.held = 0
        self._clock = clock
        self._startedUntil = clock() + STARTUP_WAIT
        if slot is not None:
            self._write(slot, 0)

    def _write(self, slot, value):
        _SLOT.pack_into(self._map, _SLOT.size * slot, value)

    def _read(self, slot):
        return _SLOT.unpack_from(self._map, _SLOT.size * slot)[0]

    def add(self, change):
        """
        This worker took (C{change} > 0) or lost connections.
        """
        self.held += change
        self._write(self.slot, self.held)

    def busier(self):
        """
        @return: whether this worker holds more connections than another.
        """
        held = self.held
        return any(self._read(slot) < held for slot in range(self.count) if slot != self.slot)

    def othersStarting(self):
        """
        @return: whether this worker started less than L{STARTUP_WAIT}
            seconds ago and another is not on the board yet.
        """
        if self._startedUntil is None:
            return False
        if self._clock() >= self._startedUntil or all(
                self._read(slot) != GONE for slot in range(self.count) if slot != self.slot):
            self._startedUntil = None
            return False
        return True

    def gone(self, slot):
        """
        The worker of C{slot} is not running (the supervisor's call).
        """
        self._write(slot, GONE)

    @classmethod
    def create(cls, count):
        """
        @return: the supervisor's board of C{count} workers, every slot
            L{GONE}, in an unlinked file passed to the workers by its
            descriptor (L{fileno}).
        """
        file = tempfile.TemporaryFile()
        file.write(_SLOT.pack(GONE) * count)
        file.flush()
        board = cls(file.fileno(), count)
        board._file = file
        return board

    def fileno(self):
        return self._file.fileno()

    @classmethod
    def fromArgument(cls, value):
        """
        @param value: C{FD:SLOT:COUNT}, as the supervisor passes it.
        @raise ValueError: not that, or the descriptor cannot be mapped.
        """
        fd, slot, count = (int(part) for part in value.split(":"))
        if not 0 <= slot < count:
            raise ValueError("slot %d of %d" % (slot, count))
        try:
            return cls(fd, count, slot)
        finally:
            os.close(fd)
