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
            run(site, "user", "add", "%s@example.test" % (name,), "--password", "pw-secret-" + name)
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


@pytest.fixture
def mixed(tmp_path):
    """
    A running server with joe (local) and fwd (forwarded to a remote
    address, which stays queued: the smarthost refuses connections).
    """
    server = MdpyServer(tmp_path)
    run(server, "domain", "add", "example.test")
    run(server, "user", "add", "joe@example.test", "--password", "joe-secret")
    run(server, "alias", "add", "fwd@example.test", "someone@remote.test")
    server.start()
    yield server
    server.stop()


def sendMixed(server, subject):
    """
    @return: the SMTP reply to the message for joe and fwd.
    """
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as client:
        try:
            client.sendmail("a@remote.test", ["joe@example.test", "fwd@example.test"],
                            b"Subject: " + subject + b"\r\n\r\nbody\r\n")
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()
    return 250, "Ok"


def queuedFor(server, address):
    done = run(server, "queue", "list")
    return done.stdout.count(address)


def replaceByAFile(path):
    """
    Replace the directory C{path} by a file, which fails every write in it,
    root's included.  @return: a function that puts the directory back.
    """
    aside = path + ".aside"
    os.rename(path, aside)
    with open(path, "wb"):
        pass

    def restore():
        os.unlink(path)
        os.rename(aside, path)

    return restore


def test_queueFailureLeavesNoLocalCopy(mixed):
    """
    The queue fails on commit: 451, no local copy; the retry stores and
    queues each copy once.
    """
    server = mixed
    restore = replaceByAFile(os.path.join(server.dataDir, "queue", "msg"))
    try:
        code, text = sendMixed(server, b"first")
        assert code == 451, text
        assert server.messages("joe@example.test") == []
        assert os.listdir(server.maildir("joe@example.test", "tmp")) == []
    finally:
        restore()
    assert queuedFor(server, "someone@remote.test") == 0
    assert sendMixed(server, b"first")[0] == 250
    [copy] = server.messages("joe@example.test")
    assert b"Subject: first\r\n" in copy
    assert queuedFor(server, "someone@remote.test") == 1


def test_storeFailureLeavesNothingQueued(mixed):
    """
    The store fails after the queued copy was staged: 451, nothing queued;
    the retry stores and queues each copy once.
    """
    server = mixed
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as client:
        client.sendmail("a@remote.test", ["joe@example.test"], b"Subject: warm-up\r\n\r\nx\r\n")
    restore = replaceByAFile(server.maildir("joe@example.test", "tmp"))
    try:
        code, text = sendMixed(server, b"second")
        assert code == 451, text
    finally:
        restore()
    assert queuedFor(server, "someone@remote.test") == 0
    assert os.listdir(os.path.join(server.dataDir, "queue", "env")) == []
    assert sendMixed(server, b"second")[0] == 250
    assert [b"Subject: second\r\n" in m for m in server.messages("joe@example.test")] == [False, True]
    assert queuedFor(server, "someone@remote.test") == 1
