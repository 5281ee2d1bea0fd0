# -*- test-case-name: tests.test_serverlock -*-
"""
One primary server per data directory: C{queue/control.sock.lock}, held
with C{flock(2)} for the server's lifetime.  Its holder runs the outbound
queue and the control socket; other servers on the same data directory are
refused, or, with C{[server] shared_data_dir}, serve their listeners and
take the lock when it is free (see L{mdpy.tap}).

The kernel releases the lock when its holder dies, even by C{kill -9}, so a
lock left behind never keeps a server from starting, whatever process now
has the PID written in it (PIDs are reused).  The PID in the file is for
people only; the lock itself is the truth.  A symbolic link at the same path
(the C{FilesystemLock} of older releases, naming a PID) means nothing now
and is replaced.

Holding the lock, a server knows that a C{control.sock} left in the queue
folder belongs to no one, and removes it before it listens there.
"""

import errno
import fcntl
import os


class AlreadyRunning(Exception):
    """
    Another server holds the lock; the message is one line for the
    administrator.

    @ivar holder: the PID written in the lock file, as text, or L{None}.
    """

    def __init__(self, message, holder=None):
        Exception.__init__(self, message)
        self.holder = holder


class ServerLock:
    """
    The lock of one data directory.

    @ivar path: the lock file.
    """

    def __init__(self, path):
        self.path = path
        self._fd = None

    def acquire(self):
        """
        Take the lock and write this process's PID into the file.

        @raise AlreadyRunning: another process holds it.
        @raise OSError: the file cannot be made.
        """
        while self._fd is None:
            if os.path.islink(self.path):
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    continue  # a link made meanwhile
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _readPID(fd)
                os.close(fd)
                raise AlreadyRunning(
                    "another mdpy%s is running on this data directory (it holds %s)"
                    % (" (pid %s)" % (holder,) if holder else "", self.path),
                    holder,
                ) from None
            # Another server may have replaced the file between the open and
            # the flock: then the lock taken is on a file nobody else sees.
            try:
                current = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                self._fd = fd
            else:
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, b"%d\n" % (os.getpid(),), 0)

    def release(self):
        """
        Give the lock up (the file stays: removing it could race a server
        taking it).
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @property
    def held(self):
        return self._fd is not None


def _readPID(fd):
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None
