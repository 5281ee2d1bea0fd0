"""
End-to-end quotas against a real C{twistd mdpy}: limits set with the
C{mdpy} command, a full mailbox refused over SMTP (smtplib) with 452 4.2.2,
IMAP APPEND (imaplib) with C{NO [OVERQUOTA]} and GETQUOTAROOT, Minger
answering 4, the warning at 90% arriving once, and a DomainPOP collection
holding the message for a full account and telling the postmaster.
"""

import email
import imaplib
import os
import smtplib

import pytest

from tests.server import HOST, makeMessage, newAccount, runningServer, waitUntil
from tests.test_e2e_domainpop import isp, mdpy  # noqa: F401 (the fixture)
from tests.test_e2e_odmr import minger
from tests.test_domainpop_service import TO_CC_A

WARNING_SUBJECT = "Your mailbox is 90% full"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(
        tmp_path_factory.mktemp("mdpy-quota"),
        imapExtra="allow_plaintext_auth = yes\n",
        mingerExtra="anonymous = yes\n",
    )


def quota(server, *args):
    done = server.cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def send(server, recipient, subject="hello"):
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as client:
        client.sendmail("sender@remote.test", [recipient], makeMessage(subject))


def test_fullMailboxIsRefusedOverSMTP(server):
    address, _ = newAccount(server, "smtp")
    quota(server, "user", "quota", address, "1M", "--messages", "2")
    send(server, address)
    send(server, address)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(server, address)
    code, text = refused.value.recipients[address]
    assert (code, text) == (452, b"4.2.2 Mailbox full; try again later")
    # Two messages and the warning that the second filled it.
    assert quota(server, "user", "quota", address).endswith(" in 3 messages\n")
    # Minger says the account cannot take mail now.
    assert minger(server.minger, address) == address + " 4"
    quota(server, "user", "quota", address, "--messages", "none")
    assert minger(server.minger, address) == address + " 5"
    send(server, address)
    assert len(server.messages(address)) == 4


def test_appendOverQuotaIsOverquota(server):
    address, password = newAccount(server, "imap")
    quota(server, "user", "quota", address, "4K")
    client = imaplib.IMAP4(HOST, server.imap)
    try:
        client.login(address, password)
        caps = b" ".join(client.capability()[1]).split()
        assert {b"QUOTA", b"QUOTA=RES-STORAGE", b"QUOTA=RES-MESSAGE"} <= set(caps)
        typ, data = client.append("INBOX", None, None, makeMessage("small"))
        assert typ == "OK", data
        typ, data = client.getquotaroot("INBOX")
        assert typ == "OK"
        assert data[0] == [b'"INBOX" "User quota"']
        assert data[1][0].startswith(b'"User quota" (STORAGE 1 4)')
        typ, data = client.append("INBOX", None, None, makeMessage("big", body=b"x" * 5000 + b"\r\n"))
        assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]"), data
        typ, data = client.status("INBOX", "(MESSAGES)")
        assert data == [b'"INBOX" (MESSAGES 1)']
    finally:
        client.logout()


def test_warningArrivesOnce(server):
    address, _ = newAccount(server, "warned")
    quota(server, "user", "quota", address, "--messages", "10")
    for n in range(8):
        send(server, address, "message %d" % (n,))
    subjects = [email.message_from_bytes(m)["Subject"] for m in server.messages(address)]
    assert WARNING_SUBJECT not in subjects
    send(server, address, "the ninth")
    waitUntil(lambda: len(server.messages(address)) == 10, what="the warning")
    warnings = [email.message_from_bytes(m) for m in server.messages(address)
                if email.message_from_bytes(m)["Subject"] == WARNING_SUBJECT]
    assert len(warnings) == 1
    assert warnings[0]["From"] == "Postmaster <postmaster@example.test>"
    # The quota is full now (the warning counts): no second warning.
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(server, address, "one too many")
    assert len(server.messages(address)) == 10


def test_domainpopHoldsForAFullAccountAndTellsThePostmaster(tmp_path, isp):  # noqa: F811
    """
    alice is full: the collected message for alice and bob reaches bob, is
    held for alice (C{mdpy domainpop held} lists it), and the postmaster
    gets a notice.
    """
    isp.fill([TO_CC_A])
    collector = mdpy(tmp_path, isp)
    # alice is full before the server starts (its own first collection may
    # come before the command's).
    with open(os.path.join(collector.maildir("alice@example.test", "new"), "1.M1P1.host,S=6"), "wb") as f:
        f.write(b"full\r\n")
    assert collector.cli("user", "quota", "alice@example.test", "--messages", "1").returncode == 0
    collector.start()
    try:
        done = collector.cli("domainpop", "run", "isp")
        assert done.returncode == 0, done.stderr
        waitUntil(lambda: isp.remaining() == 0 and "held in " in collector.logText(), what="the collection")
        held = collector.cli("domainpop", "held", "isp")
        [line] = held.stdout.splitlines()
        assert " | over quota: alice@example.test is over its quota (1 of 1 messages) | " in line, line
        assert collector.messages("alice@example.test") == [b"full\r\n"]
        [bobs] = collector.messages("bob@example.test")
        assert b"Subject: to+cc" in bobs
        notices = [m for m in collector.messages("postmaster@example.test")
                   if b"held a message for a mailbox over its quota" in m]
        assert len(notices) == 1 and b"for alice@example.test was held" in notices[0]
        assert os.listdir(os.path.join(collector.dataDir, "domainpop", "isp", "held"))
    finally:
        collector.stop()
    assert "Traceback" not in collector.logText()
