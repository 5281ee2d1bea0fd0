# -*- test-case-name: tests.test_kernelsync -*-
"""
Syncs the kernel runs while the reactor goes on: Linux's asynchronous I/O
(C{io_submit(2)} with C{IOCB_CMD_FSYNC} and C{IOCB_CMD_FDSYNC}, Linux 4.18
and later), its completions told through an C{eventfd} the reactor watches.

A transaction that made its changes on the reactor thread leaves their
syncs (L{mdpy.backends.files.maildirindex.Syncs}) to L{KernelSyncs.sync}
instead of a worker thread: no thread wakes up, and no thread waits for
Python's interpreter lock after each call, which under load costs more
than the syncs themselves.  The kernel runs each C{fsync} in one of its
own workers, as C{fsync(2)} would; nothing is told as done before every
one of them succeeded.

Where the kernel has no such calls (another system, a kernel without
them, a limit on contexts reached), L{kernelSyncs} returns L{None} and the
caller keeps its worker thread.
"""

import ctypes
import errno
import os
import platform

from twisted.internet import defer
from twisted.python.failure import Failure

from mdpy.logs import Logger

_log = Logger()

# System call numbers of the Linux AIO calls.
# (io_setup, io_destroy, io_submit, io_getevents)
_NUMBERS = {
    "x86_64": (206, 207, 209, 208),
    "aarch64": (0, 1, 2, 4),
}
_IOCB_CMD_FSYNC = 2
_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1
# Requests in flight at most; more wait in L{KernelSyncs} for a slot.
_DEPTH = 256


class _IOCB(ctypes.Structure):
    # struct iocb of <linux/aio_abi.h>, little-endian.
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    # struct io_event.
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Batch:
    """
    The syncs of one call to L{KernelSyncs.sync}: fired when the last is
    done, with the first error met.
    """

    def __init__(self, count):
        self.left = count
        self.error = None
        self.deferred = defer.Deferred()

    def done(self, error):
        if error is not None and self.error is None:
            self.error = error
        self.left -= 1
        if self.left == 0:
            if self.error is None:
                self.deferred.callback(None)
            else:
                self.deferred.errback(Failure(self.error))


class KernelSyncs:
    """
    Runs syncs through one Linux AIO context; used on the reactor thread
    only.

    @ivar inFlight: requests submitted and not yet complete.
    """

    def __init__(self, reactor, libc, numbers, context, eventFd):
        self._reactor = reactor
        self._syscall = libc.syscall
        self._destroyNumber, self._submitNumber, self._getEventsNumber = numbers
        self._context = ctypes.c_ulong(context)
        self._eventFd = eventFd
        self._serial = 0
        self._pending = {}  # serial: (iocb, batch, fd)
        self._waiting = []  # (fd, datasync, batch), beyond _DEPTH
        self._events = (_Event * _DEPTH)()
        self._noWait = _Timespec(0, 0)
        # The submission, all in one call, of the syncs asked for in this
        # turn of the reactor while others were in flight.
        self._gathering = None
        self.inFlight = 0

    def fileno(self):
        return self._eventFd

    def logPrefix(self):
        return "kernel-syncs"

    def connectionLost(self, reason):
        pass

    def close(self):
        """
        Stop reading completions and free the context; the syncs in flight
        are left to the kernel and never told of.
        """
        if self._gathering is not None:
            self._gathering.cancel()
            self._gathering = None
        self._reactor.removeReader(self)
        self._syscall(self._destroyNumber, self._context)
        os.close(self._eventFd)

    def probe(self, path):
        """
        Sync directory C{path} as L{sync} would and wait for it here.

        @return: whether the kernel ran it (a kernel before Linux 4.18
            refuses).
        """
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            iocb = _IOCB(aio_data=0, aio_lio_opcode=_IOCB_CMD_FSYNC, aio_fildes=fd)
            pointer = ctypes.pointer(iocb)
            if self._syscall(self._submitNumber, self._context, ctypes.c_long(1), ctypes.byref(pointer)) != 1:
                return False
            wait = _Timespec(10, 0)
            while True:
                n = self._syscall(self._getEventsNumber, self._context, ctypes.c_long(1), ctypes.c_long(1),
                                  self._events, ctypes.byref(wait))
                if n >= 0 or ctypes.get_errno() != errno.EINTR:
                    break
            return n == 1 and self._events[0].res == 0
        finally:
            os.close(fd)

    def sync(self, fds):
        """
        Sync each of C{fds}: C{(fd, datasync)}, C{fdatasync} when datasync
        is true, else C{fsync}.  The descriptors must stay open until the
        result fires.

        @return: a Deferred firing with L{None} once all are durable, or
            failing with the L{OSError} of the first that failed.
        """
        if not fds:
            return defer.succeed(None)
        batch = _Batch(len(fds))
        for fd, datasync in fds:
            self._waiting.append((fd, datasync, batch))
        if self.inFlight == 0 and self._gathering is None:
            self._submit()
        elif self._gathering is None:
            self._gathering = self._reactor.callLater(0, self._submitGathered)
        return batch.deferred

    def _submitGathered(self):
        self._gathering = None
        self._submit()

    def _submit(self):
        room = _DEPTH - self.inFlight
        if room <= 0 or not self._waiting:
            return
        taken, self._waiting = self._waiting[:room], self._waiting[room:]
        iocbs = []
        for fd, datasync, batch in taken:
            self._serial += 1
            iocb = _IOCB()
            iocb.aio_data = self._serial
            iocb.aio_lio_opcode = _IOCB_CMD_FDSYNC if datasync else _IOCB_CMD_FSYNC
            iocb.aio_fildes = fd
            iocb.aio_flags = _IOCB_FLAG_RESFD
            iocb.aio_resfd = self._eventFd
            self._pending[self._serial] = (iocb, batch, fd)
            iocbs.append(iocb)
        pointers = (ctypes.POINTER(_IOCB) * len(iocbs))(*[ctypes.pointer(i) for i in iocbs])
        done = 0
        while done < len(iocbs):
            n = self._syscall(self._submitNumber, self._context, ctypes.c_long(len(iocbs) - done),
                              ctypes.byref(pointers, done * ctypes.sizeof(ctypes.c_void_p)))
            if n < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                # Refused: each left runs as fsync(2) would, here.
                for iocb in iocbs[done:]:
                    _, batch, fd = self._pending.pop(iocb.aio_data)
                    batch.done(self._syncNow(fd, iocb.aio_lio_opcode == _IOCB_CMD_FDSYNC))
                break
            done += n
            self.inFlight += n

    @staticmethod
    def _syncNow(fd, datasync):
        try:
            (os.fdatasync if datasync else os.fsync)(fd)
        except OSError as e:
            return e
        return None

    def doRead(self):
        """
        The eventfd counts completions: take them, and tell each batch
        whose syncs are all done.
        """
        try:
            os.eventfd_read(self._eventFd)
        except BlockingIOError:
            return
        while True:
            n = self._syscall(self._getEventsNumber, self._context, ctypes.c_long(0),
                              ctypes.c_long(_DEPTH), self._events, ctypes.byref(self._noWait))
            if n < 0:
                if ctypes.get_errno() == errno.EINTR:
                    continue
                _log.error("kernel syncs: io_getevents failed: {error}",
                           error=os.strerror(ctypes.get_errno()))
                return
            for event in self._events[:n]:
                entry = self._pending.pop(event.data, None)
                if entry is None:
                    continue
                self.inFlight -= 1
                _, batch, fd = entry
                res = event.res
                batch.done(None if res >= 0 else OSError(-res, "%s: %s" % (
                    "sync failed", os.strerror(-res))))
            if n < _DEPTH:
                break
        self._submit()


def _numbers():
    return _NUMBERS.get(platform.machine())


def kernelSyncs(reactor, path):
    """
    @param path: a directory of the filesystem the syncs will be of,
        synced once to see that the kernel can.
    @return: a L{KernelSyncs} whose completions C{reactor} reads, or
        L{None} when this system cannot run syncs so.
    """
    numbers = _numbers()
    if numbers is None or not hasattr(os, "eventfd") or not hasattr(reactor, "addReader"):
        return None
    setup, destroy, submit, getEvents = numbers
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    libc.syscall.restype = ctypes.c_long
    context = ctypes.c_ulong(0)
    if libc.syscall(setup, ctypes.c_long(_DEPTH), ctypes.byref(context)) < 0:
        return None
    eventFd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    syncs = KernelSyncs(reactor, libc, (destroy, submit, getEvents), context.value, eventFd)
    try:
        works = syncs.probe(path)
    except OSError:
        works = False
    if not works:
        libc.syscall(destroy, ctypes.c_ulong(context.value))
        os.close(eventFd)
        return None
    reactor.addReader(syncs)
    return syncs
