"""
End-to-end test of the Maildir index log (L{mdpy.backends.files.maildirindex})
with a real C{twistd mdpy} and imaplib: flags acknowledged by a tagged OK
survive the server killed, also when the kill left a transaction of the log
cut short, and the UIDs stay those the client knows.
"""

import imaplib
import os
import smtplib

from mdpy.backends.files import maildirindex
from tests.server import HOST, MdpyServer, makeMessage, waitForBanner

PLAINTEXT = "allow_plaintext_auth = yes\n"
ADDRESS = "alice@example.test"
PASSWORD = "pw-secret-1"


def ok(result):
    typ, data = result
    assert typ == "OK", data
    return data


def selected(server):
    client = imaplib.IMAP4(HOST, server.imap, timeout=30)
    client.login(ADDRESS, PASSWORD)
    ok(client.select("INBOX"))
    return client


def test_flagsSurviveAKillAndALogCutShort(tmp_path):
    server = MdpyServer(tmp_path, imapExtra=PLAINTEXT)
    assert server.cli("domain", "add", "example.test").returncode == 0
    assert server.cli("user", "add", ADDRESS, "--password", PASSWORD).returncode == 0
    server.start()
    try:
        waitForBanner(server.imap, process=server.process)
        with smtplib.SMTP(HOST, server.smtp, timeout=30) as smtp:
            for subject in ("one", "two"):
                smtp.sendmail("sender@remote.test", [ADDRESS], makeMessage(subject))
        client = selected(server)
        validity = client.response("UIDVALIDITY")[1]
        ok(client.uid("STORE", "1", "+FLAGS", "(\\Flagged)"))
        ok(client.uid("STORE", "2", "+FLAGS", "(\\Answered $Work)"))
        server.kill()

        # What a crash while the next transaction was written leaves.
        inbox = os.path.join(server.dataDir, "mail", "example.test", "alice")
        with open(os.path.join(inbox, maildirindex.LOG_NAME), "ab") as log:
            log.write(b"T 9 99 0 1 00000000\n+ 1 99 2,S")
        server.start()
        waitForBanner(server.imap, process=server.process)
        client = selected(server)
        assert client.response("UIDVALIDITY")[1] == validity
        flags = ok(client.uid("FETCH", "1:*", "(FLAGS)"))
        assert flags == [b"1 (UID 1 FLAGS (\\Flagged))", b"2 (UID 2 FLAGS ($Work \\Answered))"]
        ok(client.uid("STORE", "1", "-FLAGS", "(\\Flagged)"))
        server.kill()
        server.start()
        waitForBanner(server.imap, process=server.process)
        client = selected(server)
        assert ok(client.uid("FETCH", "1", "(FLAGS)")) == [b"1 (UID 1 FLAGS ())"]
        client.logout()
    finally:
        server.stop()
        assert "Traceback" not in server.logText(), server.logText()[-5000:]
