"""
End-to-end tests of one data directory served by several processes on one
machine: a real C{twistd mdpy} with an IMAP client idling in it (imaplib),
and mail delivered by another process, C{mdpy domainpop run} collecting
from a private Dovecot (the ISP), or a second C{twistd mdpy} with
C{[server] shared_data_dir = yes} accepting it by SMTP on its own ports;
mail for a remote address accepted by that second server leaves through
the queue of the first, and the second takes the queue over when the first
is killed.

The measured latencies are printed (C{pytest -s}); the bound asserted is
the generous one of L{tests.test_e2e_changefeed}.
"""

import os
import re
import smtplib
import subprocess
import time

import pytest

from tests.server import HOST, MdpyServer, freePorts, makeMessage, mdpyCommand, twistdCommand, waitForBanner
from tests.test_e2e_changefeed import BOUND, arrival, done, idling
from tests.test_e2e_domainpop import isp  # noqa: F401 (a fixture)
from tests.test_e2e_relay import HoldingReceiver, until

SHARED = "shared_data_dir = yes\n"
PASSWORD = "pw-secret-1"


def addUser(server, name):
    address = "%s@example.test" % (name,)
    added = server.cli("user", "add", address, "--password", PASSWORD)
    assert added.returncode == 0, added.stderr
    return address


@pytest.fixture
def sink():
    """
    An SMTP server on loopback that accepts every message: the smarthost
    of the servers below.
    """
    port, = freePorts(1)
    receiver = HoldingReceiver(HOST, port, None)
    receiver.port = port
    yield receiver
    receiver.close()


def pair(tmp_path, sink=None):
    """
    Two servers on one data directory, the first started (the primary) and
    the second built on ports of its own; a forwarding alias to a remote
    address goes through C{sink} when given.

    @return: C{(primary, secondary)}.
    """
    relay = (
        "smarthost = 127.0.0.1:%d\nsmarthost_tls = none\nretry = 1s\n" % (sink.port,)
        if sink is not None else "smarthost = 127.0.0.1:9\nsmarthost_tls = none\n"
    )
    os.makedirs(tmp_path / "first")
    os.makedirs(tmp_path / "second")
    primary = MdpyServer(tmp_path / "first", serverExtra=SHARED, imapExtra="allow_plaintext_auth = yes\n",
                         relayExtra=relay)
    secondary = MdpyServer(tmp_path / "second", serverExtra=SHARED, dataDir=primary.dataDir, relayExtra=relay)
    assert primary.cli("domain", "add", "example.test").returncode == 0
    assert primary.cli("alias", "add", "fwd@example.test", "far@remote.test").returncode == 0
    primary.start()
    waitForBanner(primary.imap, process=primary.process)
    return primary, secondary


def stopAll(*servers):
    for server in servers:
        server.stop()
    for server in servers:
        assert "Traceback" not in server.logText(), server.logText()[-5000:]


def newFile(base):
    """
    @return: the path of the one message file in the Maildir C{base}.
    """
    found = [os.path.join(base, sub, name) for sub in ("new", "cur") for name in os.listdir(os.path.join(base, sub))]
    assert len(found) == 1, found
    return found[0]


def test_idleHearsMailDomainpopRunDelivers(tmp_path, isp):  # noqa: F811
    """
    C{mdpy domainpop run} with a configuration of its own on the server's
    data directory (the server has no such collection) collects in its own
    process; the client idling in the server gets C{* 1 EXISTS} at once.
    """
    isp.fill([b"To: alice@example.test\r\nFrom: x@far.test\r\nMessage-ID: <dp1@far.test>\r\n"
              b"Subject: collected\r\n\r\nbody\r\n"])
    os.makedirs(tmp_path / "server")
    os.makedirs(tmp_path / "command")
    server = MdpyServer(tmp_path / "server", imapExtra="allow_plaintext_auth = yes\n")
    command = MdpyServer(
        tmp_path / "command", dataDir=server.dataDir,
        extra="[domainpop:isp]\nhost = 127.0.0.1\nport = %d\ntls = none\nusername = box@isp.test\n"
              "password = secret\ninterval = 1h\n[multipop]\nenabled = no\n" % (isp.port,),
    )
    assert server.cli("domain", "add", "example.test").returncode == 0
    address = addUser(server, "alice")
    server.start()
    try:
        client, tag = idling(server, address, PASSWORD)
        collecting = subprocess.Popen(
            mdpyCommand() + ["-c", command.config, "domainpop", "run", "isp"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        arrived = arrival(client, b"* 1 EXISTS\r\n")
        out, err = collecting.communicate(timeout=60)
        assert collecting.returncode == 0, err
        assert "domainpop/isp: 1 on the server, 1 downloaded" in out
        # When the command wrote the file: a little before it delivered it.
        latency = arrived - os.stat(newFile(server.maildir(address))).st_mtime
        print("EXISTS %.1f ms after mdpy domainpop run wrote the message" % (latency * 1000,))
        assert latency < BOUND
        done(client, tag)
        assert isp.remaining() == 0
        # The server did not collect it: it has no such collection.
        assert "domainpop/isp" not in server.logText()
    finally:
        stopAll(server)


def test_idleHearsMailASecondServerAccepts(tmp_path):
    """
    A second server on the data directory starts as a secondary, saying
    which server is the primary; a message it accepts by SMTP reaches the
    client idling in the primary as C{* 1 EXISTS} at once.
    """
    primary, secondary = pair(tmp_path)
    try:
        address = addUser(primary, "bob")
        secondary.start()
        log = secondary.logText()
        assert (
            "another mdpy server (pid %d) is the primary of %s: it runs the queue and the control socket; "
            "this one serves its listeners only" % (primary.process.pid, primary.dataDir)
        ) in log
        client, tag = idling(primary, address, PASSWORD)
        with smtplib.SMTP(HOST, secondary.smtp, timeout=30) as smtp:
            smtp.sendmail("sender@remote.test", [address], makeMessage("through the second"))
            accepted = time.time()
        latency = arrival(client, b"* 1 EXISTS\r\n") - accepted
        print("EXISTS in the primary %.1f ms after the secondary's 250" % (latency * 1000,))
        assert latency < BOUND
        done(client, tag)
    finally:
        stopAll(secondary, primary)


def test_mailQueuedByTheSecondaryLeavesThroughThePrimary(tmp_path, sink):
    """
    Mail for a remote address accepted by the secondary is sent by the
    primary's queue, at once (the secondary names it on the control
    socket); when the primary is killed the secondary takes the queue over
    and sends what it accepts itself.
    """
    primary, secondary = pair(tmp_path, sink)
    try:
        secondary.start()
        with smtplib.SMTP(HOST, secondary.smtp, timeout=30) as smtp:
            smtp.sendmail("sender@remote.test", ["fwd@example.test"], makeMessage("relayed"))
        until(lambda: len(sink.accepted) == 1, "the primary to send it", server=primary)
        queueDir = os.path.join(primary.dataDir, "queue")
        until(lambda: not os.listdir(os.path.join(queueDir, "env")), "the queue to empty", server=primary)
        # The secondary has no relay: the primary sent it.
        assert re.search(r"relay: \S+ to=<far@remote\.test> .* status=sent", primary.logText())
        assert "relay:" not in secondary.logText()

        primary.kill()
        until(lambda: "this one now runs the queue and the control socket" in secondary.logText(),
              "the secondary to take over", server=secondary)
        flushed = secondary.cli("queue", "flush")
        assert flushed.returncode == 0, flushed.stderr
        with smtplib.SMTP(HOST, secondary.smtp, timeout=30) as smtp:
            smtp.sendmail("sender@remote.test", ["fwd@example.test"], makeMessage("after"))
        until(lambda: re.search(r"relay: \S+ to=<far@remote\.test> .* status=sent", secondary.logText()),
              "the new primary to send it", server=secondary)
        assert len(sink.accepted) == 2
    finally:
        stopAll(secondary, primary)


def test_aSecondServerWithoutTheKeyIsStillRefused(tmp_path):
    """
    Only C{shared_data_dir = yes} makes a second server a secondary: without
    it, the refusal of L{tests.test_e2e_recovery} stands.
    """
    primary, _ = pair(tmp_path)
    os.makedirs(tmp_path / "third")
    third = MdpyServer(tmp_path / "third", dataDir=primary.dataDir)
    try:
        refused = subprocess.run(
            twistdCommand() + ["-n", "--pidfile=", "mdpy", "--config", third.config],
            capture_output=True, text=True, timeout=60,
        )
        assert refused.returncode != 0
        assert (refused.stdout + refused.stderr).strip().splitlines() == [
            "twistd mdpy: another mdpy (pid %d) is running on this data directory (it holds %s)"
            % (primary.process.pid, os.path.join(primary.dataDir, "queue", "control.sock.lock"))
        ]
    finally:
        stopAll(primary)
