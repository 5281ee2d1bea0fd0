"""
End-to-end test of C{\\Recent} (RFC 3501 section 2.3.2) with two real
C{twistd mdpy} servers on one data directory (C{[server] shared_data_dir =
yes}) and imaplib: a new message is recent to exactly one session, whichever
server it is connected to, and the claims outlive a server killed and
started again.
"""

import imaplib
import os
import smtplib

from tests.server import HOST, MdpyServer, makeMessage, waitForBanner, waitUntil

SHARED = "shared_data_dir = yes\n"
PLAINTEXT = "allow_plaintext_auth = yes\n"
ADDRESS = "alice@example.test"
PASSWORD = "pw-secret-1"


def login(server):
    client = imaplib.IMAP4(HOST, server.imap, timeout=30)
    client.login(ADDRESS, PASSWORD)
    return client


def ok(result):
    typ, data = result
    assert typ == "OK", data
    return data


def recentOf(client, command, *args):
    """
    @return: what C{* n RECENT} said in the reply to C{command}.
    """
    ok(getattr(client, command)(*args))
    return client.response("RECENT")[1]


def deliver(server, subject):
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as smtp:
        smtp.sendmail("sender@remote.test", [ADDRESS], makeMessage(subject))


def test_newMailIsRecentToOneSessionOfTwoServers(tmp_path):
    os.makedirs(tmp_path / "first")
    os.makedirs(tmp_path / "second")
    first = MdpyServer(tmp_path / "first", serverExtra=SHARED, imapExtra=PLAINTEXT)
    second = MdpyServer(tmp_path / "second", serverExtra=SHARED, imapExtra=PLAINTEXT, dataDir=first.dataDir)
    assert first.cli("domain", "add", "example.test").returncode == 0
    assert first.cli("user", "add", ADDRESS, "--password", PASSWORD).returncode == 0
    servers = [first.start(), second.start()]
    try:
        for server in servers:
            waitForBanner(server.imap, process=server.process)
        deliver(first, "one")
        deliver(first, "two")

        # EXAMINE and STATUS on the second server show both and claim none.
        seconds = login(second)
        assert recentOf(seconds, "select", "INBOX", True) == [b"2"]
        ok(seconds.close())
        assert ok(seconds.status("INBOX", "(MESSAGES RECENT)")) == [b'"INBOX" (MESSAGES 2 RECENT 2)']
        # Its SELECT claims them; a session of the first server gets none.
        assert recentOf(seconds, "select", "INBOX") == [b"2"]
        assert ok(seconds.search(None, "RECENT")) == [b"1 2"]
        firsts = login(first)
        assert recentOf(firsts, "select", "INBOX") == [b"0"]
        assert ok(firsts.search(None, "NEW")) == [b""]
        assert ok(firsts.search(None, "OLD")) == [b"1 2"]
        assert ok(firsts.fetch("1", "(FLAGS)")) == [b"1 (FLAGS ())"]

        # Mail accepted by the second server is recent to the session that
        # hears of it first, here the one on the first server.
        deliver(second, "three")

        def heard():
            ok(firsts.noop())
            return firsts.response("EXISTS")[1][-1:] == [b"3"]

        waitUntil(heard, what="EXISTS in the first server's session")
        assert ok(firsts.search(None, "RECENT")) == [b"3"]
        ok(seconds.noop())
        assert seconds.response("EXISTS")[1][-1:] == [b"3"]
        assert ok(seconds.search(None, "RECENT")) == [b"1 2"]
        assert ok(seconds.fetch("3", "(FLAGS)")) == [b"3 (FLAGS ())"]
        seconds.logout()

        # Killed and started again, the first server knows what was claimed.
        first.kill()
        first.start()
        waitForBanner(first.imap, process=first.process)
        again = login(first)
        assert ok(again.status("INBOX", "(RECENT)")) == [b'"INBOX" (RECENT 0)']
        assert recentOf(again, "select", "INBOX") == [b"0"]
        again.logout()
    finally:
        for server in reversed(servers):
            server.stop()
        for server in servers:
            assert "Traceback" not in server.logText(), server.logText()[-5000:]
