"""
End-to-end tests of the log of a real C{twistd mdpy --logfile} on loopback:
what an administrator greps for one message, and what never goes there.
"""

import os
import re
import smtplib
import stat

import pytest

from tests.server import MdpyServer, makeMessage, newAccount, waitForBanner, waitUntil


@pytest.fixture
def server(tmp_path):
    """
    A server started with the usual umask 022 (twistd itself would make its
    log file 0644), with C{sales@} an alias of an account.
    """
    server = MdpyServer(tmp_path)
    done = server.cli("domain", "add", "example.test")
    assert done.returncode == 0, done.stderr
    umask = os.umask(0o022)
    try:
        server.start()
    finally:
        os.umask(umask)
    waitForBanner(server.imap, process=server.process)
    yield server
    server.stop()
    assert "Traceback" not in server.logText()


def logLines(server, pattern):
    """
    @return: the matches of C{pattern} in the server's log, once there is
        one.
    """
    found = []

    def matched():
        found[:] = list(re.finditer(pattern, server.logText(), re.M))
        return found

    waitUntil(matched, what="a log line matching %r" % (pattern,))
    return found


def test_aMessageCanBeFollowedByItsId(server):
    """
    A message to an alias: the SMTP accepted line and the deliver line of
    the copy share its id, the deliver line names the account and the
    alias; a submitted message's accepted line names the login, and its
    relay line says where it went.
    """
    bob, password = newAccount(server, "bob")
    done = server.cli("alias", "add", "sales@example.test", bob)
    assert done.returncode == 0, done.stderr
    with smtplib.SMTP(server.host, server.smtp, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("alice@remote.test")
        client.rcpt("sales@example.test")
        code, reply = client.data(makeMessage("to sales"))
    assert code == 250
    [messageId] = re.findall(r"queued as (\S+)", reply.decode())  # what the client is told
    [accepted] = logLines(server, r"smtp: accepted (\S+) from <alice@remote\.test> to <sales@example\.test> "
                                  r"size=\d+ client=127\.0\.0\.1 proto=ESMTP$")
    assert accepted.group(1) == messageId
    [delivered] = logLines(server, r"deliver: (\S+) to=<%s> orig_to=<sales@example\.test> folder=INBOX "
                                   r"status=stored$" % (re.escape(bob),))
    assert delivered.group(1) == messageId
    assert len(server.messages(bob)) == 1

    with smtplib.SMTP(server.host, server.submission, timeout=30) as client:
        client.starttls()
        client.login(bob, password)
        client.sendmail(bob, ["joe@far.test"], makeMessage("out", sender=bob))
    [submitted] = logLines(server, r"smtp: accepted (\S+) from <%s> to <joe@far\.test> size=\d+ "
                                   r"client=127\.0\.0\.1 proto=ESMTPSA sasl_username=%s$"
                                   % (re.escape(bob), re.escape(bob)))
    # The smarthost of the test configuration refuses connections.
    [relayed] = logLines(server, r"relay: %s to=<joe@far\.test> relay=none delay=[0-9.]+ dsn=4\.4\.1 "
                                 r"status=deferred \(cannot connect: .*\)$" % (submitted.group(1),))
    assert relayed


def test_noReprNoPasswordAndAPrivateLogFile(server):
    """
    No line carries an object's repr or the generated postmaster password
    (the log names the file holding it), and the log file twistd made is
    0640 although the umask allowed 0644.
    """
    with open(os.path.join(server.dataDir, "postmaster.password")) as f:
        address, password = f.read().split()
    with smtplib.SMTP(server.host, server.smtp, timeout=30) as client:
        client.sendmail("alice@remote.test", [address], makeMessage("hello"))
    logLines(server, r"deliver: \S+ to=<%s> folder=INBOX status=stored$" % (re.escape(address),))
    server.stop()
    log = server.logText()
    assert "created the postmaster account %s of example.test; its password is in %s" % (
        address, os.path.join(server.dataDir, "postmaster.password")) in log
    assert password not in log
    assert [line for line in log.splitlines() if " object at 0x" in line] == []
    assert stat.S_IMODE(os.stat(server.log).st_mode) == 0o640
