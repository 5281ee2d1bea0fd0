"""
End-to-end tests of crash recovery: a real C{twistd mdpy} killed with
C{kill -9} and started again.
"""

import os
import subprocess

from tests.server import MdpyServer, twistdCommand


def lockPath(server):
    return os.path.join(server.dataDir, "queue", "control.sock.lock")


def flushAnswers(server):
    done = server.cli("queue", "flush")
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_restartAfterKillWithAReusedPIDInTheLock(tmp_path):
    """
    After C{kill -9}, a lock file naming a live process (a reused PID), in
    the file or as the symbolic link older releases made, keeps neither the
    server nor its control socket from starting.
    """
    server = MdpyServer(tmp_path)
    server.start()
    try:
        assert flushAnswers(server) == ""
        for stale in ("file", "link"):
            server.kill()
            os.unlink(lockPath(server))
            if stale == "file":
                with open(lockPath(server), "w") as f:
                    f.write("%d\n" % (os.getpid(),))
            else:
                os.symlink("1", lockPath(server))  # as twisted.python.lockfile wrote it
            assert os.path.exists(os.path.join(server.dataDir, "queue", "control.sock"))
            server.start()
            assert flushAnswers(server) == "", stale
        with open(lockPath(server)) as f:
            assert f.read() == "%d\n" % (server.process.pid,)
        assert "Unhandled Error" not in server.logText()
        assert "Traceback" not in server.logText()
    finally:
        server.stop()


def test_secondServerOnTheSameDataDirIsRefused(tmp_path):
    """
    While a server runs, another on the same data directory stops at once
    with one line naming the first; the first goes on working.
    """
    server = MdpyServer(tmp_path)
    server.start()
    try:
        second = subprocess.run(
            twistdCommand() + ["-n", "--pidfile=", "mdpy", "--config", server.config],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        lines = (second.stdout + second.stderr).strip().splitlines()
        assert lines == [
            "twistd mdpy: another mdpy (pid %d) is running on this data directory (it holds %s)"
            % (server.process.pid, lockPath(server))
        ]
        assert flushAnswers(server) == ""
    finally:
        server.stop()
