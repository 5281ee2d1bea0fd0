# -*- test-case-name: tests.contract.test_contracts -*-
"""
POP3 maildrop locks that hold across the processes sharing a data
directory (L{mdpy.interfaces.IMaildropLocks}): one lock file per account,
C{data_dir/locks/<digest of the account>.lock}, taken with C{flock}.

Invariants: a maildrop is held by at most one session of all the
processes; the kernel releases a process's locks when it ends, however it
ends (a crash, C{kill -9}), so no lock outlives its holder.  A lock file is
never removed (removing one while another process opens it would let two
holders lock two files of one name); there is one small file per account
that ever logged in over POP3.
"""

import fcntl
import hashlib
import os

from zope.interface import implementer

from mdpy.interfaces import IMaildropLocks
from mdpy.logs import Logger

_log = Logger()


def lockFileName(account):
    """
    @return: the name of C{account}'s lock file: a digest, so that any
        address makes a safe file name.
    """
    return hashlib.sha256(account.encode("utf-8", "surrogatepass")).hexdigest()[:32] + ".lock"


@implementer(IMaildropLocks)
class FileMaildropLocks:
    """
    See L{IMaildropLocks} and the module docstring.

    @ivar folder: where the lock files are.
    """

    def __init__(self, folder):
        self.folder = folder
        self._held = {}  # account: (holder, file descriptor)

    def __repr__(self):
        return "<FileMaildropLocks %s>" % (self.folder,)

    def acquire(self, account, holder):
        """
        See L{IMaildropLocks.acquire}.  A lock file that cannot be made
        (no space for it, no file descriptor left) is logged, and the
        maildrop taken as held: a session never runs without its lock.
        """
        held = self._held.get(account)
        if held is not None:
            return held[0] is holder
        path = os.path.join(self.folder, lockFileName(account))
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            _log.error("pop3: cannot lock the maildrop of {account}: {path}: {why}",
                       account=account, path=path, why=e.strerror or e)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._held[account] = (holder, fd)
        return True

    def release(self, account, holder):
        """
        See L{IMaildropLocks.release}.
        """
        held = self._held.get(account)
        if held is not None and held[0] is holder:
            del self._held[account]
            os.close(held[1])

    def __contains__(self, account):
        return account in self._held

    def close(self):
        """
        Release every lock this process holds.
        """
        held, self._held = self._held, {}
        for _, fd in held.values():
            os.close(fd)
