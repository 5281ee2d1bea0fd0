"""
Tests of L{mdpy.serverlock}: one server per data directory, a lock that
dies with its holder and cannot be fooled by a reused PID.
"""

import os
import signal
import subprocess
import sys

import pytest

from mdpy.serverlock import AlreadyRunning, ServerLock

HOLDER = """
import sys
from mdpy.serverlock import ServerLock
ServerLock(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_aSecondHolderIsRefused(tmp_path):
    path = str(tmp_path / "control.sock.lock")
    first = ServerLock(path)
    first.acquire()
    with pytest.raises(AlreadyRunning) as caught:
        ServerLock(path).acquire()
    assert str(caught.value) == (
        "another mdpy (pid %d) is running on this data directory (it holds %s)" % (os.getpid(), path)
    )
    first.release()
    second = ServerLock(path)
    second.acquire()
    assert second.held
    second.release()


@pytest.mark.parametrize("stale", ["1", str(os.getpid()), "not a pid", ""])
def test_aStaleFileNamingAnyProcessIsTaken(tmp_path, stale):
    path = tmp_path / "control.sock.lock"
    path.write_text(stale)
    lock = ServerLock(str(path))
    lock.acquire()
    assert path.read_text() == "%d\n" % (os.getpid(),)
    lock.release()


def test_anOldSymbolicLinkIsReplaced(tmp_path):
    path = tmp_path / "control.sock.lock"
    os.symlink("1", str(path))
    lock = ServerLock(str(path))
    lock.acquire()
    assert not path.is_symlink()
    assert not (tmp_path / "1").exists()
    assert path.read_text() == "%d\n" % (os.getpid(),)
    lock.release()


def test_theLockDiesWithItsHolder(tmp_path):
    """
    A holder killed with SIGKILL leaves its PID in the file, and the lock
    free.
    """
    path = str(tmp_path / "control.sock.lock")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(AlreadyRunning, match="pid %d" % (holder.pid,)):
            ServerLock(path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
    with open(path) as f:
        assert f.read() == "%d\n" % (holder.pid,)
    lock = ServerLock(path)
    lock.acquire()
    lock.release()
