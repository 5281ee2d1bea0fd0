"""
End-to-end tests of deleting users and domains (their mail leaves the store,
and an account made again starts empty with a new UIDVALIDITY), and of the
role addresses postmaster@ and abuse@ of every local domain (RFC 5321
section 4.5.1, RFC 2142): a real C{twistd mdpy} on loopback, mail sent with
smtplib, read with imaplib, and the C{mdpy} command run beside the server,
on a pseudo-terminal where it asks for confirmation.
"""

import imaplib
import os
import poplib
import pty
import re
import smtplib
import ssl
import subprocess
import time

import pytest

from tests.server import HOST, MdpyServer, makeMessage, mdpyCommand, readTerminal

PASSWORD = "pw-deletion-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """
    One server whose data directory got the domain x.test with the
    C{mdpy} command before the server's first start.
    """
    server = MdpyServer(tmp_path_factory.mktemp("mdpy-deletion"))
    done = server.cli("domain", "add", "x.test")
    assert done.returncode == 0, done.stderr
    server.start()
    yield server
    server.stop()
    log = server.logText()
    assert "Traceback" not in log, log[-5000:]


def cli(server, *args):
    done = server.cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def send(server, recipients, subject):
    """
    Send one message over SMTP; every recipient must be accepted.
    """
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as client:
        refused = client.sendmail("sender@remote.test", recipients, makeMessage(subject))
    assert refused == {}


def refusedRecipient(server, recipient):
    """
    @return: the reply to C{RCPT TO:<recipient>}.
    """
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as client:
        client.ehlo()
        client.mail("sender@remote.test")
        return client.rcpt(recipient)


def imap(server, address):
    """
    @return: an imaplib client logged in over STARTTLS.
    """
    client = imaplib.IMAP4(HOST, server.imap, timeout=30)
    context = ssl.create_default_context(cafile=os.path.join(server.dataDir, "tls", "cert.pem"))
    client.starttls(ssl_context=context)
    client.login(address, PASSWORD)
    return client


def selectInbox(client):
    """
    @return: C{(number of messages, UIDVALIDITY)} of the INBOX.
    """
    status, data = client.select("INBOX")
    assert status == "OK", data
    [validity] = client.response("UIDVALIDITY")[1]
    return int(data[0]), int(validity)


def deletedDir(server):
    return os.path.join(server.dataDir, "deleted")


def keptTrees(server, domain):
    """
    @return: each C{deleted/<time>/<domain>} path.
    """
    root = deletedDir(server)
    if not os.path.isdir(root):
        return []
    return sorted(
        os.path.join(root, stamp, domain)
        for stamp in os.listdir(root)
        if os.path.isdir(os.path.join(root, stamp, domain))
    )


def test_userDelMovesMailAndTheNewAccountStartsEmpty(server):
    """
    Mail of a deleted user goes to C{deleted/<time>/<domain>/<localpart>};
    the address is refused at once; the user's open IMAP session ends
    cleanly; the same address made again (within the same second, as
    here) has an empty INBOX with a greater UIDVALIDITY.
    """
    address = "bob@example.test"
    cli(server, "user", "add", address, "--password", PASSWORD)
    send(server, [address], "one")
    send(server, [address], "two")
    old = imap(server, address)
    count, oldValidity = selectInbox(old)
    assert count == 2

    out = cli(server, "user", "del", address, "--yes")
    [kept] = keptTrees(server, "example.test")
    kept = os.path.join(kept, "bob")
    assert out == "deleted user %s\nmoved %s to %s\n" % (address, server.maildir(address).rstrip("/"), kept)
    assert len(os.listdir(os.path.join(kept, "cur")) + os.listdir(os.path.join(kept, "new"))) == 2
    assert not os.path.exists(server.maildir(address))
    assert refusedRecipient(server, address)[0] == 550
    # The deleted user's open session ends with a BYE (no traceback in the
    # log, checked when the server stops) and makes no new tree.
    with pytest.raises(imaplib.IMAP4.abort, match="Account no longer exists"):
        old.noop()
    assert "imap: account %s was deleted; session of %s from 127.0.0.1 closed" % (address, address) in server.logText()
    assert not os.path.exists(server.maildir(address))

    cli(server, "user", "add", address, "--password", PASSWORD)
    new = imap(server, address)
    count, validity = selectInbox(new)
    assert count == 0
    assert validity > oldValidity
    send(server, [address], "three")
    assert len(server.messages(address)) == 1
    new.logout()


def pop3WithTwoMessages(server, address):
    """
    Add the user C{address}, send it two messages, and log in over POP3.

    @return: the L{poplib.POP3} client, in the TRANSACTION state.
    """
    cli(server, "user", "add", address, "--password", PASSWORD)
    send(server, [address], "one")
    send(server, [address], "two")
    client = poplib.POP3(HOST, server.pop3, timeout=30)
    client.stls(ssl.create_default_context(cafile=os.path.join(server.dataDir, "tls", "cert.pem")))
    client.user(address)
    client.pass_(PASSWORD)
    return client


def test_userDelDuringPOP3Session(server):
    """
    A POP3 session of a user deleted meanwhile ends cleanly at its next
    command, saying the account no longer exists, and no tree is made
    again.
    """
    address = "popper@example.test"
    client = pop3WithTwoMessages(server, address)
    assert client.stat()[0] == 2
    client.retr(1)
    cli(server, "user", "del", address, "--yes")
    with pytest.raises(poplib.error_proto, match=r"\[SYS/PERM\] Account no longer exists"):
        client.retr(2)
    client.close()
    assert not os.path.exists(server.maildir(address))


def test_userDisableDuringPOP3Session(server):
    """
    The account check before each POP3 command, answered from memory while
    the directory file is unchanged, sees C{user disable} (which touches no
    mail) made by the C{mdpy} command at the next command.
    """
    address = "paused@example.test"
    client = pop3WithTwoMessages(server, address)
    client.retr(1)
    client.noop()
    cli(server, "user", "disable", address)
    with pytest.raises(poplib.error_proto, match=r"\[SYS/PERM\] Account disabled"):
        client.retr(2)
    client.close()
    assert len(server.messages(address)) == 2


def test_sessionsOfAnAccountMadeAgainNeverReachIt(server):
    """
    IMAP sessions (logged in, nothing selected), a POP3 session and an
    SMTP submission session of bob, opened before C{user del} and C{user
    add} made bob again (the command runs as another process), do not
    reach the new bob's mail: the IMAP sessions end with BYE at SELECT,
    STATUS, LIST or APPEND, the POP3 session with -ERR at LIST (its
    earlier DELE removes nothing), the submission session with 421 at
    MAIL; new logins see the new mail.
    """
    address = "rebob@example.test"
    cli(server, "user", "add", address, "--password", PASSWORD)
    send(server, [address], "for the old rebob")
    olds = [imap(server, address) for _ in range(4)]
    context = ssl.create_default_context(cafile=os.path.join(server.dataDir, "tls", "cert.pem"))
    pop = poplib.POP3(HOST, server.pop3, timeout=30)
    pop.stls(context)
    pop.user(address)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 1
    pop.dele(1)
    submission = smtplib.SMTP(HOST, server.submission, timeout=30)
    submission.starttls(context=context)
    submission.login(address, PASSWORD)

    cli(server, "user", "del", "--yes", address)
    newPassword = "pw-the-new-rebob"
    cli(server, "user", "add", address, "--password", newPassword)
    send(server, [address], "private to the new rebob")

    select, status, listing, append = olds
    with pytest.raises(imaplib.IMAP4.abort, match="Account no longer exists"):
        select.select("INBOX")
    with pytest.raises(imaplib.IMAP4.abort, match="Account no longer exists"):
        status.status("INBOX", "(MESSAGES)")
    with pytest.raises(imaplib.IMAP4.abort, match="Account no longer exists"):
        listing.list()
    with pytest.raises(imaplib.IMAP4.abort, match="Account no longer exists"):
        append.append("INBOX", None, None, makeMessage("planted by the old rebob"))
    with pytest.raises(poplib.error_proto, match=r"\[SYS/PERM\] Account no longer exists"):
        pop.list()
    pop.close()
    assert submission.mail(address) == (421, b"4.7.0 Error: account no longer exists")
    submission.close()

    [stored] = server.messages(address)
    assert b"Subject: private to the new rebob" in stored
    client = imaplib.IMAP4(HOST, server.imap, timeout=30)
    client.starttls(ssl_context=context)
    client.login(address, newPassword)
    assert selectInbox(client)[0] == 1
    client.logout()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap(server, address)
    log = server.logText()
    for service in ("imap", "pop3", "smtp"):
        assert "%s: account %s was deleted and made again; session of %s" % (service, address, address) in log


def test_userDisableEndsSessions(server):
    """
    C{user disable} ends the account's sessions at their next command that
    reaches its mail, as Dovecot's C{doveadm kick} would, and refuses new
    logins; C{user enable} lets it log in again.
    """
    address = "kicked@example.test"
    cli(server, "user", "add", address, "--password", PASSWORD)
    session = imap(server, address)
    cli(server, "user", "disable", address)
    with pytest.raises(imaplib.IMAP4.abort, match="Account disabled"):
        session.select("INBOX")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap(server, address)
    cli(server, "user", "enable", address)
    session = imap(server, address)
    assert selectInbox(session)[0] == 0
    session.logout()


def test_userDelPurge(server):
    address = "purged@example.test"
    cli(server, "user", "add", address, "--password", PASSWORD)
    send(server, [address], "doomed")
    before = keptTrees(server, "example.test")
    out = cli(server, "user", "del", "--purge", "--yes", address)
    assert out == "deleted user %s\nremoved %s\n" % (address, server.maildir(address).rstrip("/"))
    assert not os.path.exists(server.maildir(address))
    assert keptTrees(server, "example.test") == before
    cli(server, "user", "add", address, "--password", PASSWORD)
    client = imap(server, address)
    assert selectInbox(client)[0] == 0
    client.logout()


@pytest.mark.parametrize("purge", [False, True])
def test_domainDel(server, purge):
    """
    Deleting a domain deletes its users and aliases; its mail tree is moved
    (or removed with C{--purge}); the domain and the user made again start
    empty, with a new UIDVALIDITY.
    """
    domain = "gone%d.test" % (purge,)
    address = "carol@" + domain
    cli(server, "domain", "add", domain)
    cli(server, "user", "add", address, "--password", PASSWORD)
    cli(server, "alias", "add", "team@" + domain, address)
    send(server, [address, "team@" + domain], "for carol")
    client = imap(server, address)
    count, oldValidity = selectInbox(client)
    assert count == 1
    client.logout()

    out = cli(server, "domain", "del", domain, "--yes", *(["--purge"] if purge else []))
    tree = os.path.join(server.dataDir, "mail", domain)
    if purge:
        assert out == "deleted domain %s and its 1 users\nremoved %s\n" % (domain, tree)
        assert keptTrees(server, domain) == []
    else:
        [kept] = keptTrees(server, domain)
        assert out == "deleted domain %s and its 1 users\nmoved %s to %s\n" % (domain, tree, kept)
        assert os.listdir(kept) == ["carol"]
    assert not os.path.exists(tree)
    assert domain not in cli(server, "domain", "list").split()
    assert domain not in cli(server, "alias", "list")
    assert refusedRecipient(server, address)[0] == 550

    cli(server, "domain", "add", domain)
    cli(server, "user", "add", address, "--password", PASSWORD)
    client = imap(server, address)
    count, validity = selectInbox(client)
    assert count == 0 and validity > oldValidity
    client.logout()


def runOnTerminal(server, answer, *args):
    """
    Run C{mdpy args...} with a pseudo-terminal as its standard input and
    output, and answer its question with C{answer}.

    @return: C{(exit status, what it printed)}.
    """
    master, slave = pty.openpty()
    process = subprocess.Popen(
        mdpyCommand() + ["-c", server.config] + list(args),
        stdin=slave, stdout=slave, stderr=slave,
    )
    os.close(slave)
    deadline = time.monotonic() + 60
    try:
        output = readTerminal(master, deadline, b"[y/N]", answer)
        status = process.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    return status, output.decode().replace("\r\n", "\n")


def test_confirmationOnATerminal(server):
    """
    On a terminal, C{user del} and C{domain del} ask first; C{n} deletes
    nothing and exits 1, C{y} deletes.
    """
    address = "asked@example.test"
    cli(server, "user", "add", address, "--password", PASSWORD)
    send(server, [address], "keep me")
    status, output = runOnTerminal(server, b"n", "user", "del", address)
    question = "Delete user %s and move its mail to %s/? [y/N] " % (address, deletedDir(server))
    assert output.startswith(question), output
    assert "not confirmed; nothing was deleted" in output
    assert status == 1
    assert len(server.messages(address)) == 1
    assert address in cli(server, "user", "list").split()

    cli(server, "domain", "add", "asked.test")
    status, output = runOnTerminal(server, b"", "domain", "del", "asked.test", "--purge")
    assert "Delete domain asked.test with its 0 users and its aliases, and remove its mail for good? [y/N]" in output
    assert status == 1
    assert "asked.test" in cli(server, "domain", "list").split()

    status, output = runOnTerminal(server, b"y", "user", "del", address)
    assert status == 0, output
    assert "deleted user %s\n" % (address,) in output
    assert not os.path.exists(server.maildir(address))


def test_roleAddressesOfEveryDomain(server):
    """
    The first start made the postmaster account even though x.test had
    been added before it; x.test and a domain added while the server runs
    take mail for postmaster@ and abuse@, which reaches that account.
    """
    with open(os.path.join(server.dataDir, "postmaster.password")) as f:
        postmaster, password = f.read().split()
    assert postmaster == "postmaster@example.test"
    out = cli(server, "domain", "add", "other.test")
    assert out == (
        "added domain other.test\n"
        "added alias postmaster@other.test postmaster@example.test\n"
        "added alias abuse@other.test postmaster@example.test\n"
    )
    aliases = cli(server, "alias", "list").splitlines()
    for line in (
        "abuse@example.test postmaster@example.test",
        "abuse@x.test postmaster@example.test",
        "postmaster@x.test postmaster@example.test",
        "abuse@other.test postmaster@example.test",
        "postmaster@other.test postmaster@example.test",
    ):
        assert line in aliases
    before = len(server.messages(postmaster))
    recipients = ["postmaster@other.test", "abuse@other.test", "abuse@x.test", "Postmaster@X.TEST"]
    for recipient in recipients:
        send(server, [recipient], "role mail for " + recipient)
    stored = server.messages(postmaster)[before:]
    assert sorted(re.search(rb"^X-Rcpt-To: (.*)\r$", m, re.M).group(1) for m in stored) == sorted(
        r.encode() for r in recipients
    )
    client = imaplib.IMAP4(HOST, server.imap, timeout=30)
    client.starttls(ssl_context=ssl.create_default_context(
        cafile=os.path.join(server.dataDir, "tls", "cert.pem")))
    client.login(postmaster, password)
    assert selectInbox(client)[0] == before + len(recipients)
    client.logout()
