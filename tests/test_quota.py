"""
Tests of account quotas (L{mdpy.quota}): sizes as people write them, the
directory's schema migration, SMTP transcripts over the delivery pipeline,
the warning at 90%, Minger's answer 4 and the C{mdpy} command.
"""

import email
import sqlite3

import pytest
from twisted.internet import task

from mdpy import errors
from mdpy.backends.files.directory import _MIGRATIONS, SQLiteDirectory
from mdpy.backends.memory import MemoryStore
from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.minger.server import MingerServer
from mdpy.quota import Quota, QuotaPolicy, Usage, formatSize, parseCount, parseSize
from mdpy.smtp.server import SMTPFactory
from mdpy.testing import Transcript, resultOf
from tests.test_cli import CLI
from tests.test_minger import RecordingTransport

JOE, ANN = "joe@example.test", "ann@example.test"
BODY = b"Subject: x\r\n\r\n" + b"0123456789" * 10 + b"\r\n"


# --- sizes -------------------------------------------------------------------


@pytest.mark.parametrize("text, octets", [
    ("2G", 2 * 1024 ** 3), ("500M", 500 * 1024 ** 2), ("500m", 500 * 1024 ** 2),
    ("64K", 65536), ("1048576", 1048576), ("none", None), ("None", None),
])
def test_parseSize(text, octets):
    assert parseSize(text) == octets


@pytest.mark.parametrize("text", ["", "2X", "-1", "0", "1.5G", "lots"])
def test_parseSizeRefuses(text):
    with pytest.raises(errors.InvalidInput):
        parseSize(text)


def test_parseCountAndFormatSize():
    assert parseCount("100") == 100 and parseCount("none") is None
    for bad in ("0", "-3", "ten"):
        with pytest.raises(errors.InvalidInput):
            parseCount(bad)
    assert [formatSize(n) for n in (2 * 1024 ** 3, 1536 * 1024, 1500000, 12)] == ["2G", "1536K", "1.4M", "12"]


# --- the directory -------------------------------------------------------------


def test_directoryFileOfTheLastVersionIsMigrated(tmp_path):
    """
    A directory file made before quotas keeps its users and gets no limits.
    """
    path = str(tmp_path / "directory.sqlite")
    db = sqlite3.connect(path)
    for statement in _MIGRATIONS[0] + _MIGRATIONS[1]:
        db.execute(statement)
    db.execute("INSERT INTO domains (name) VALUES ('example.test')")
    db.execute("INSERT INTO users (address, domain, localpart, enabled, account_id)"
               " VALUES ('joe@example.test', 'example.test', 'joe', 1, 'abc')")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    directory = SQLiteDirectory(path)
    assert directory.getUser(JOE).accountId == "abc"
    assert not directory.getQuota(JOE)
    directory.setUserQuota(JOE, Quota(100))
    assert directory.getQuota(JOE) == Quota(100)


# --- SMTP and the pipeline -------------------------------------------------------


class Server:
    """
    An SMTP session over a pipeline to a L{MemoryStore} with the accounts
    L{JOE} and L{ANN}.
    """

    def __init__(self, joe=None, ann=None, warnPercent=90):
        self.directory = SQLiteDirectory(":memory:")
        self.directory.addDomain("example.test")
        self.store = MemoryStore()
        for address, quota in ((JOE, joe), (ANN, ann)):
            self.directory.addUser(address, "pw")
            self.directory.setUserQuota(address, quota)
            self.store.createAccount(address)
        self.quotas = QuotaPolicy(self.directory, self.store, "postmaster@example.test", warnPercent)
        self.pipeline = DeliveryPipeline(self.directory, self.store, quotas=self.quotas)
        self.factory = SMTPFactory("mx.example.test", self.pipeline, clock=task.Clock())

    def session(self):
        t = Transcript(self.factory.buildProtocol(None))
        t.expect("220 *")
        t.send("EHLO client.test")
        t.lines()
        return t

    def inbox(self, address):
        return [resultOf(m.read()) for m in self.store.openMailbox(address).messages()]

    def mail(self, address):
        """
        @return: the messages of C{address}'s INBOX but the quota warnings.
        """
        return [m for m in self.inbox(address) if b"\r\nSubject: Your mailbox is " not in m]

    def fill(self, address, *sizes):
        for size in sizes:
            self.store.deliver([(address, "INBOX", [b"x" * size])])


def send(t, recipients, body=BODY, mailParameters=""):
    """
    Send one message; @return: the replies to each RCPT and the last one.
    """
    t.send("RSET", "MAIL FROM:<a@remote.test>" + mailParameters)
    t.expect("250 *", "250 *")
    replies = []
    for recipient in recipients:
        t.send("RCPT TO:<%s>" % (recipient,))
        replies.extend(t.lines())
    t.send("DATA")
    reply = t.lines()
    if not reply[0].startswith("354"):
        return replies, reply[0]
    t.sendRaw(body + b".\r\n")
    return replies, t.lines()[0]


def test_fullAccountIsRefusedAtRcpt():
    """
    RFC 3463 X.2.2 and RFC 5321 section 4.2.5: an account at its limit is
    a temporary 452 at RCPT.
    """
    server = Server(joe=Quota(None, 2))
    server.fill(JOE, 10, 10)
    t = server.session()
    t.send("MAIL FROM:<a@remote.test>", "RCPT TO:<joe@example.test>")
    t.expect("250 *", "452 4.2.2 Mailbox full; try again later")
    assert len(server.inbox(JOE)) == 2


def test_declaredSizeIsCheckedAtRcpt():
    server = Server(joe=Quota(1000))
    server.fill(JOE, 600)
    t = server.session()
    t.send("MAIL FROM:<a@remote.test> SIZE=500", "RCPT TO:<joe@example.test>")
    t.expect("250 *", "452 4.2.2 *")
    t.send("RSET", "MAIL FROM:<a@remote.test> SIZE=5000", "RCPT TO:<joe@example.test>")
    t.expect("250 *", "250 *", "552 5.2.2 Mailbox full: message larger than its quota")
    t.send("RSET", "MAIL FROM:<a@remote.test> SIZE=300", "RCPT TO:<joe@example.test>")
    t.expect("250 *", "250 *", "250 *")


def test_messageThatDoesNotFitIsRefusedAtData():
    server = Server(joe=Quota(1000))
    server.fill(JOE, 900)
    replies, last = send(server.session(), [JOE])
    assert replies[0].startswith("250 ")
    assert last.startswith("452 4.2.2 ")
    assert len(server.inbox(JOE)) == 1


def test_messageLargerThanTheQuotaIsPermanent():
    server = Server(joe=Quota(50))
    replies, last = send(server.session(), [JOE])
    assert last.startswith("552 5.2.2 ")
    assert server.inbox(JOE) == []


def test_fullRecipientIsRefusedAndTheOthersGetTheMessage():
    server = Server(joe=Quota(None, 1))
    server.fill(JOE, 10)
    replies, last = send(server.session(), [JOE, ANN])
    assert replies[0].startswith("452 4.2.2 ")
    assert replies[1].startswith("250 ")
    assert last.startswith("250 ")
    assert len(server.inbox(JOE)) == 1
    assert len(server.inbox(ANN)) == 1


def test_recipientPutOverItsQuotaAtDataTakesItWithTheOthers():
    """
    At the end of DATA, one reply speaks for all recipients: an account the
    message puts over its quota takes it with the others, and is full for
    the next message.
    """
    server = Server(ann=Quota(300))
    server.fill(ANN, 250)
    t = server.session()
    replies, last = send(t, [JOE, ANN])
    assert replies == ["250 2.1.5 Ok", "250 2.1.5 Ok"]
    assert last.startswith("250 ")
    assert len(server.inbox(JOE)) == 1
    assert len(server.mail(ANN)) == 2
    replies, last = send(t, [ANN])
    assert replies[0].startswith("452 4.2.2 ")


def test_aliasTakesTheMessageWhenOneOfItsAccountsFits():
    """
    An alias is refused only when every account it leads to is full; else
    each of them takes the message (see L{mdpy.quota}).
    """
    server = Server(joe=Quota(None, 1), ann=Quota(None, 1))
    server.directory.addAlias("team@example.test", [JOE, ANN])
    server.fill(JOE, 10)
    replies, last = send(server.session(), ["team@example.test"])
    assert replies[0].startswith("250 ") and last.startswith("250 ")
    assert len(server.mail(ANN)) == 1
    assert len(server.mail(JOE)) == 2
    replies, last = send(server.session(), ["team@example.test"])
    assert replies[0].startswith("452 4.2.2 ")


def test_noQuotaNoLimit():
    server = Server()
    server.fill(JOE, 100000)
    assert send(server.session(), [JOE])[1].startswith("250 ")


def test_warningOncePerCrossing():
    """
    The postmaster writes to an account that reaches 90% of a limit, once;
    after it went below again and reaches it anew, once more.
    """
    server = Server(joe=Quota(None, 10))
    server.fill(JOE, *[10] * 7)
    t = server.session()
    send(t, [JOE])
    assert len(server.inbox(JOE)) == 8
    send(t, [JOE])
    inbox = server.inbox(JOE)
    assert len(inbox) == 10
    warning = email.message_from_bytes(inbox[-1])
    assert warning["From"] == "Postmaster <postmaster@example.test>"
    assert warning["Subject"] == "Your mailbox is 90% full"
    assert "messages: 9 of 10" in warning.get_payload()
    assert server.directory.quotaWarned(JOE)
    # Full now (the warning counts): no second warning for the refusal.
    replies, _ = send(t, [JOE])
    assert replies[0].startswith("452 ")
    mailbox = server.store.openMailbox(JOE)
    resultOf(mailbox.expunge([m.uid for m in mailbox.messages()[:5]]))
    send(t, [JOE])
    assert not server.directory.quotaWarned(JOE)
    assert len(server.inbox(JOE)) == 6
    for _ in range(3):
        send(t, [JOE])
    subjects = [email.message_from_bytes(m)["Subject"] for m in server.inbox(JOE)]
    assert subjects.count("Your mailbox is 90% full") == 2


def test_noWarningWhenTurnedOff():
    server = Server(joe=Quota(None, 3), warnPercent=0)
    server.fill(JOE, 10)
    send(server.session(), [JOE])
    send(server.session(), [JOE])
    assert len(server.inbox(JOE)) == 3


def test_usageAndPolicy():
    server = Server(joe=Quota(100, 5))
    server.fill(JOE, 40, 20)
    assert resultOf(server.quotas.state(JOE)) == (Quota(100, 5), Usage(60, 2))
    assert resultOf(server.quotas.state(ANN)) == (Quota(), None)
    assert not resultOf(server.quotas.isFull(JOE))
    server.fill(JOE, 40)
    assert resultOf(server.quotas.isFull(JOE))


# --- Minger ---------------------------------------------------------------------


def test_mingerAnswers4ForAFullAccount():
    server = Server(joe=Quota(None, 1))
    server.directory.addAlias("team@example.test", [JOE, ANN])
    server.directory.addAlias("joeonly@example.test", [JOE])
    minger = MingerServer(server.directory, quotas=server.quotas, anonymous=True, clock=task.Clock())
    minger.transport = RecordingTransport()

    def ask(address):
        minger.datagramReceived(address.encode(), ("192.0.2.1", 4000))
        return minger.transport.written.pop()[0]

    assert ask(JOE) == b"joe@example.test 5"
    server.fill(JOE, 10)
    assert ask(JOE) == b"joe@example.test 4"
    assert ask("joeonly@example.test") == b"joeonly@example.test 4"
    assert ask("team@example.test") == b"team@example.test 5"
    assert ask(ANN) == b"ann@example.test 5"
    assert ask("nobody@example.test") == b"nobody@example.test 3"


# --- the mdpy command -------------------------------------------------------------


@pytest.fixture
def cli(tmp_path):
    cli = CLI(tmp_path)
    cli.ok("domain", "add", "example.test")
    cli.ok("user", "add", JOE, "--password", "pw-secret-1")
    return cli


def test_cliUserQuota(cli):
    assert cli.ok("user", "quota", JOE) == "joe@example.test: quota no limit; uses 0 in 0 messages\n"
    assert cli.ok("user", "quota", JOE, "2G", "--messages", "1000") == (
        "joe@example.test: quota 2G, 1000 messages; uses 0 in 0 messages\n")
    assert cli.ok("user", "quota", JOE, "500M") == (
        "joe@example.test: quota 500M, 1000 messages; uses 0 in 0 messages\n")
    assert cli.ok("user", "quota", JOE, "--messages", "none") == (
        "joe@example.test: quota 500M; uses 0 in 0 messages\n")
    assert cli.ok("user", "quota", JOE, "none") == "joe@example.test: quota no limit; uses 0 in 0 messages\n"


def test_cliDomainQuota(cli):
    assert cli.ok("domain", "quota", "example.test", "1G") == (
        "example.test: quota 1G for each account without its own\n")
    assert cli.ok("user", "quota", JOE) == (
        "joe@example.test: quota 1G (the quota of example.test); uses 0 in 0 messages\n")
    assert cli.ok("domain", "quota", "example.test") == (
        "example.test: quota 1G for each account without its own\n")
    cli.ok("domain", "quota", "example.test", "none")
    assert cli.ok("user", "quota", JOE).startswith("joe@example.test: quota no limit;")


def test_cliQuotaShowsUse(cli):
    from mdpy.backends.files.maildir import MaildirStore
    from mdpy.testing import synchronousRunner

    store = MaildirStore(cli.datadir.mailRoot, runInThread=synchronousRunner, groupCommit=False)
    resultOf(store.deliver([(JOE, "INBOX", [b"x" * 2048]), (JOE, "Sent", [b"y" * 1024])]))
    assert cli.ok("user", "quota", JOE, "1M") == "joe@example.test: quota 1M; uses 3K in 2 messages\n"


@pytest.mark.parametrize("args, message", [
    (("user", "quota", JOE, "2X"), "not a size: '2X'"),
    (("user", "quota", JOE, "0"), "a quota must be more than nothing"),
    (("user", "quota", JOE, "1G", "--messages", "many"), "not a number of messages: 'many'"),
    (("user", "quota", "nobody@example.test", "1G"), "no such user: nobody@example.test"),
    (("domain", "quota", "example.net", "1G"), "no such domain: example.net"),
])
def test_cliQuotaRefusesBadInput(cli, args, message):
    status, out, err = cli(*args)
    assert status == 1 and out == ""
    assert err.startswith("mdpy: error: ") and err.count("\n") == 1 and message in err, err
