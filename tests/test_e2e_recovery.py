"""
End-to-end tests of crash recovery: a real C{twistd mdpy} killed with
C{kill -9} and started again.
"""

import email
import email.policy
import os
import smtplib
import subprocess
import time

from tests.server import MdpyServer, makeMessage, twistdCommand

POSTMASTER = "postmaster@example.test"


def lockPath(server):
    return os.path.join(server.dataDir, "queue", "control.sock.lock")


# What C{queue flush} says when the running server took the command.
FLUSHED = "the server is retrying every queued message now\n"


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
        assert flushAnswers(server) == FLUSHED
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
            assert flushAnswers(server) == FLUSHED, stale
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
        assert flushAnswers(server) == FLUSHED
    finally:
        server.stop()


def test_bounceToAnUnknownLocalSenderGoesToThePostmaster(tmp_path):
    """
    A message from an unknown local address that cannot be delivered: its
    DSN is refused, so it reaches the postmaster as a double bounce, once,
    and the queue is left empty rather than retrying it at each start.
    """
    server = MdpyServer(
        tmp_path,
        relayExtra=(
            "smarthost = 127.0.0.1:9\nsmarthost_tls = none\nretry = 1s\nlifetime = 2s\n"
            "delay_warning = 0\nsrs = no\n"
        ),
    )
    server.start()  # the first start makes example.test and its postmaster
    try:
        done = server.cli("alias", "add", "fwd@example.test", "someone@remote.test")
        assert done.returncode == 0, done.stderr
        with smtplib.SMTP(server.host, server.smtp, timeout=30) as client:
            refused = client.sendmail("ghost@example.test", ["fwd@example.test"], makeMessage("doomed"))
        assert refused == {}
        until(lambda: server.messages(POSTMASTER), "the double bounce", server)
        until(lambda: not os.listdir(os.path.join(server.dataDir, "queue", "env")), "an empty queue", server)
        [raw] = server.messages(POSTMASTER)
        report = email.message_from_bytes(raw, policy=email.policy.default)
        assert report["Subject"] == "Postmaster Copy: Undelivered Mail Returned to Sender"
        assert report["To"] == POSTMASTER
        text = " ".join(report.get_payload()[0].get_content().split())
        assert "could not be delivered to the sender, ghost@example.test" in text
        status = [dict(block.items()) for block in report.get_payload()[1].get_payload()]
        assert status[1]["Final-Recipient"] == "rfc822; someone@remote.test"
        assert status[1]["Action"] == "failed"
        returned = report.get_payload()[2].get_payload()[0]
        assert returned["Subject"] == "doomed"
        log = server.logText()
        assert "sent to <%s> as a double bounce" % (POSTMASTER,) in log
        assert "Traceback" not in log
    finally:
        server.stop()


def until(condition, what, server, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("gave up waiting for %s\n%s" % (what, server.logText()[-4000:]))
        time.sleep(0.05)
