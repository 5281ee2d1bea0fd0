"""
End-to-end delivery over loopback with smtplib against C{twistd mdpy}: the
copies a catch-all keeps for a downstream DomainPOP, and a delivery to local
and remote recipients that is all or nothing when the queue fails.
"""

import email
import os
import smtplib

import pytest

from tests.server import HOST, MdpyServer

DOWNSTREAM_USERS = ("alice", "bob", "team")


def run(server, *args):
    done = server.cli(*args)
    assert done.returncode == 0, done.stderr
    return done


def recipientsOf(messages):
    return sorted(email.message_from_bytes(m)["X-Rcpt-To"] for m in messages)


def test_catchAllCopiesReachEachRecipientDownstream(tmp_path):
    """
    mdpy as the ISP keeps the mail of example.test in one catch-all mailbox;
    a second mdpy collects it with DomainPOP routing by C{X-Rcpt-To}.  The
    To, Cc and Bcc recipients each get exactly one copy downstream.
    """
    os.makedirs(tmp_path / "isp")
    os.makedirs(tmp_path / "site")
    isp = MdpyServer(tmp_path / "isp", domain="isp.test", pop3Extra="allow_plaintext_auth = yes\n")
    run(isp, "domain", "add", "isp.test")
    run(isp, "domain", "add", "example.test")
    run(isp, "user", "add", "box@isp.test", "--password", "box-secret")
    run(isp, "domain", "catchall", "example.test", "box@isp.test")
    isp.start()
    site = None
    try:
        message = (
            b"From: sender@remote.test\r\nTo: alice@example.test\r\nCc: bob@example.test\r\n"
            b"Subject: to three\r\nMessage-ID: <three@remote.test>\r\n\r\nhello\r\n"
        )
        recipients = ["alice@example.test", "bob@example.test", "team@example.test"]
        with smtplib.SMTP(HOST, isp.smtp, timeout=30) as client:
            client.sendmail("sender@remote.test", recipients, message)
        stored = isp.messages("box@isp.test")
        assert recipientsOf(stored) == recipients
        for data in stored:
            parsed = email.message_from_bytes(data)
            assert parsed.get_all("X-Rcpt-To") == parsed.get_all("X-MDRcpt-To") == [parsed["X-Rcpt-To"]]

        site = MdpyServer(
            tmp_path / "site",
            extra=(
                "[domainpop:isp]\nhost = %s\nport = %d\ntls = none\nusername = box@isp.test\n"
                "password = box-secret\ninterval = 1h\nparse_headers = X-Rcpt-To\n"
                "[multipop]\nenabled = no\n" % (HOST, isp.pop3)
            ),
        )
        run(site, "domain", "add", "example.test")
        for name in DOWNSTREAM_USERS:
            run(site, "user", "add", "%s@example.test" % (name,), "--password", "pw-" + name)
        site.start()
        done = run(site, "domainpop", "run", "isp")
        assert "3 on the server, 3 downloaded" in done.stdout, done.stdout
        for name in DOWNSTREAM_USERS:
            [copy] = site.messages("%s@example.test" % (name,))
            assert b"Subject: to three\r\n" in copy
            assert recipientsOf([copy]) == ["%s@example.test" % (name,)]
        assert isp.messages("box@isp.test") == []
    finally:
        isp.stop()
        if site is not None:
            site.stop()
