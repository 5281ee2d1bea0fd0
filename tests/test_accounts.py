"""
Tests for L{mdpy.auth.accounts}: a login carries the id of the account it
was verified against, and an IMAP, POP3 or SMTP session whose account was
deleted, made again under the same address or disabled meanwhile (by the
C{mdpy} command, through another directory instance on the same file) ends
instead of reaching the account's mail; transcripts over an in-memory
transport, the in-memory store and a real SQLite directory.
"""

import base64
import hmac

import pytest
from twisted.cred.credentials import CramMD5Credentials, UsernamePassword
from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher

from mdpy import errors
from mdpy.auth.accounts import Account, AccountCheck
from mdpy.auth.checkers import DirectoryChecker, makePortal
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.imap.server import IMAP4Factory
from mdpy.pop3.server import POP3Factory
from mdpy.smtp.server import MODE_SUBMISSION, SMTPFactory
from mdpy.backends.memory import MemoryStore
from mdpy.testing import RecordingTarget, Transcript, synchronousRunner, resultOf

TLS = object()
BOB = "bob@example.test"
PASSWORD = "old-secret"
NEW_PASSWORD = "new-secret"
OLD_MAIL = b"Subject: for the old bob\r\n\r\nold\r\n"
NEW_MAIL = b"Subject: for the new bob\r\n\r\nnew and private\r\n"


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "directory.sqlite")


@pytest.fixture
def directory(path):
    """
    The server's directory, with the user L{BOB}.
    """
    d = SQLiteDirectory(path)
    d.addDomain("example.test")
    d.addUser(BOB, PASSWORD)
    yield d
    d.close()


@pytest.fixture
def admin(path, directory):
    """
    Another directory instance on the same file: the C{mdpy} command.
    """
    d = SQLiteDirectory(path)
    yield d
    d.close()


@pytest.fixture
def store():
    store = MemoryStore()
    store.createAccount(BOB)
    store.deliver([(BOB, "INBOX", [OLD_MAIL])])
    return store


@pytest.fixture
def logged():
    """
    @return: the formatted log events of the test.
    """
    events = []

    def observer(event):
        events.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def remakeBob(admin, store):
    """
    What C{mdpy user del --yes bob@...}, C{mdpy user add bob@...} and a
    delivery to the new bob do.
    """
    admin.removeUser(BOB)
    store.deleteAccount(BOB, archive=True)
    admin.addUser(BOB, NEW_PASSWORD)
    store.createAccount(BOB)
    store.deliver([(BOB, "INBOX", [NEW_MAIL])])


def newBobInbox(store):
    return [resultOf(m.read()) for m in store.openMailbox(BOB).messages()]


def factoryArguments(directory, clock):
    return dict(
        portal=makePortal(directory, runInThread=synchronousRunner),
        tlsOptions=TLS,
        accountCheck=AccountCheck(directory),
        clock=clock,
    )


class CountingDirectory:
    """
    A directory wrapper counting L{getUser} calls, and failing them on
    demand.
    """

    def __init__(self, directory):
        self.directory = directory
        self.lookups = 0
        self.failure = None

    def getUser(self, address):
        self.lookups += 1
        if self.failure is not None:
            raise self.failure
        return self.directory.getUser(address)


# --- the login's identity and the check ---------------------------------------


def loggedIn(d):
    results = []
    d.addBoth(results.append)
    [avatar] = results
    assert not isinstance(avatar, Exception), avatar
    return avatar


def test_accountIsItsAddress():
    account = Account(BOB, "00ff")
    assert account == BOB and isinstance(account, str) and hash(account) == hash(BOB)
    assert account.accountId == "00ff"
    assert Account(BOB).accountId is None


def test_loginCarriesTheAccountId(directory):
    """
    Password and CRAM-MD5 logins, verified or taken from the cache of
    verified passwords, name the account their credentials belong to; once
    the user is made again, the same password logs in to the new account.
    """
    checker = DirectoryChecker(directory, runInThread=synchronousRunner)
    first = directory.getUser(BOB).accountId
    for _ in range(2):  # verified, then from the cache
        avatar = loggedIn(checker.requestAvatarId(UsernamePassword(b"Bob@Example.test", PASSWORD.encode())))
        assert avatar == BOB and avatar.accountId == first
    cram = CramMD5Credentials()
    cram.challenge = b"<1.2@mx.example.test>"
    cram.username = BOB.encode()
    cram.response = hmac.new(PASSWORD.encode(), cram.challenge, "md5").hexdigest().encode()
    assert loggedIn(checker.requestAvatarId(cram)).accountId == first

    directory.removeUser(BOB)
    directory.addUser(BOB, PASSWORD)
    avatar = loggedIn(checker.requestAvatarId(UsernamePassword(BOB.encode(), PASSWORD.encode())))
    assert avatar.accountId == directory.getUser(BOB).accountId != first


def test_check(directory, admin):
    check = AccountCheck(directory)
    account = Account(BOB, directory.getUser(BOB).accountId)
    check.check(account)
    admin.setEnabled(BOB, False)
    with pytest.raises(errors.Disabled):
        check.check(account)
    admin.setEnabled(BOB, True)
    check.check(account)
    admin.removeUser(BOB)
    with pytest.raises(errors.NotFound, match="was deleted$"):
        check.check(account)
    admin.addUser(BOB, PASSWORD)
    with pytest.raises(errors.NotFound, match="was deleted and made again"):
        check.check(account)
    check.check(Account(BOB, admin.getUser(BOB).accountId))


def test_checkPassesNamesWithoutAccountId(directory):
    """
    A login the directory did not verify (an ODMR gateway domain, another
    checker's plain name) is not asked for.
    """
    counting = CountingDirectory(directory)
    check = AccountCheck(counting)
    check.check("example.test")
    check.check("nobody@example.test")
    check.check(Account("nobody@example.test"))
    assert counting.lookups == 0


# --- IMAP ---------------------------------------------------------------------


class IMAPSession:
    def __init__(self, directory, store, clock=None):
        self.clock = clock or task.Clock()
        self.factory = IMAP4Factory("mx.example.test", store, **factoryArguments(directory, self.clock))
        self.t = Transcript(self.factory.buildProtocol(None))
        self.t.lines()

    def __getattr__(self, name):
        return getattr(self.t, name)

    def login(self, password=PASSWORD):
        self.send("s STARTTLS")
        self.expect("s OK Begin TLS negotiation now.")
        self.send("l LOGIN %s %s" % (BOB, password))
        return self.lines()


def loggedInIMAP(directory, store, clock=None):
    session = IMAPSession(directory, store, clock)
    [ok] = session.login()
    assert ok.startswith("l OK [CAPABILITY ")
    return session


@pytest.mark.parametrize("command", [
    "a SELECT INBOX",
    "a EXAMINE INBOX",
    "a STATUS INBOX (MESSAGES UNSEEN)",
    'a LIST "" *',
    'a LSUB "" *',
    "a CREATE Planted",
    "a DELETE Trash",
    "a RENAME Trash Bin",
    "a SUBSCRIBE INBOX",
    "a NOOP",
    "a APPEND INBOX {18+}\r\nSubject: planted\r\n",
])
def test_imapSessionNeverReachesTheAccountMadeAgain(directory, admin, store, command, logged):
    """
    A session logged in before its account was deleted and made again
    under the same address ends with BYE at its next command that opens a
    mailbox, polls or writes, at once (not a second later), and the new
    account is left as it was; a new login sees the new mail.
    """
    old = loggedInIMAP(directory, store)
    remakeBob(admin, store)
    old.send(command)
    old.expect("* BYE Account no longer exists.")
    assert old.closed
    assert newBobInbox(store) == [NEW_MAIL]
    assert sorted(store.listMailboxes(BOB)) == ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    assert any(
        "imap: account %s was deleted and made again; session of %s from 192.0.2.1 closed" % (BOB, BOB) in line
        for line in logged
    )

    assert IMAPSession(directory, store).login() == ["l NO [AUTHENTICATIONFAILED] Authentication failed."]
    new = IMAPSession(directory, store)
    new.login(NEW_PASSWORD)
    new.send("b STATUS INBOX (MESSAGES)")
    new.expect('* STATUS "INBOX" (MESSAGES 1)', "b OK Status completed.")


def test_imapSelectedSessionOfADeletedAccount(directory, admin, store):
    """
    A session with a mailbox selected goes on from an answer for up to a
    second for commands on that mailbox, then ends; the directory is asked
    at most once a second for them.
    """
    counting = CountingDirectory(directory)
    old = loggedInIMAP(directory, store)
    old.factory.accountCheck = AccountCheck(counting)
    old.send("a SELECT INBOX")
    assert old.lines()[-1] == "a OK [READ-WRITE] Select completed."
    assert counting.lookups == 1
    # The first session to select INBOX: its message is \Recent to it.
    for n in range(5):
        old.send("f%d FETCH 1 (FLAGS)" % (n,))
        old.expect("* 1 FETCH (FLAGS (\\Recent))", "f%d OK Fetch completed." % (n,))
    assert counting.lookups == 1
    old.clock.advance(1)
    old.send("g FETCH 1 (FLAGS)")
    old.expect("* 1 FETCH (FLAGS (\\Recent))", "g OK Fetch completed.")
    assert counting.lookups == 2

    admin.removeUser(BOB)
    old.clock.advance(1)
    old.send("h UID FETCH 1 (FLAGS)")
    old.expect("* BYE Account no longer exists.")
    assert old.closed


def test_imapCopyIsCheckedAtOnce(directory, admin, store):
    """
    COPY and MOVE (also as UID commands) write into a mailbox named by the
    client: the account is asked for at once.
    """
    for command in ("c COPY 1 Trash", "c UID MOVE 1 Trash"):
        session = loggedInIMAP(directory, store)
        session.send("a SELECT INBOX")
        session.lines()
        remakeBob(admin, store)
        session.send(command)
        session.expect("* BYE Account no longer exists.")
        assert store.openMailbox(BOB, "Trash").messages() == []
        admin.removeUser(BOB)
        admin.addUser(BOB, PASSWORD)


def test_imapDisabledAccount(directory, admin, store):
    """
    C{user disable} ends the account's sessions (as Dovecot's C{doveadm
    kick}) and refuses new logins; LOGOUT is answered as usual.
    """
    old = loggedInIMAP(directory, store)
    other = loggedInIMAP(directory, store)
    admin.setEnabled(BOB, False)
    old.send("a SELECT INBOX")
    old.expect("* BYE Account disabled.")
    assert old.closed
    other.send("z LOGOUT")
    other.expect("* BYE Logging out.", "z OK Logout completed.")
    assert IMAPSession(directory, store).login() == ["l NO [AUTHENTICATIONFAILED] Authentication failed."]


def test_imapIdleSessionEnds(directory, admin, store):
    """
    An IDLE session learns of the deletion at its next poll for changes.
    """
    old = loggedInIMAP(directory, store)
    old.send("a SELECT INBOX")
    old.lines()
    old.send("i IDLE")
    old.expect("+ idling")
    admin.removeUser(BOB)
    admin.addUser(BOB, NEW_PASSWORD)
    old.clock.advance(old.factory.idlePoll)
    old.expect("* BYE Account no longer exists.")
    assert old.closed


def test_imapIdleSessionNotToldOfTheNewAccountsMail(directory, admin, store):
    """
    The store reports a change of the new account to the listeners of its
    address, among them an idling session of the old one: that session
    ends instead of looking.
    """
    old = loggedInIMAP(directory, store)
    old.send("a SELECT INBOX")
    old.lines()
    old.send("i IDLE")
    old.expect("+ idling")
    remakeBob(admin, store)
    old.expect("* BYE Account no longer exists.")
    assert old.closed


def test_imapDirectoryFailureKeepsTheSession(directory, store, logged):
    """
    A directory that cannot answer (a locked file) does not end sessions:
    the command runs, a warning is logged, and the next command that
    needs a fresh answer asks again.
    """
    counting = CountingDirectory(directory)
    counting.failure = errors.TemporaryFailure("database is locked")
    session = loggedInIMAP(directory, store)
    session.factory.accountCheck = AccountCheck(counting)
    session.send("a STATUS INBOX (MESSAGES)")
    session.expect('* STATUS "INBOX" (MESSAGES 1)', "a OK Status completed.")
    assert any("imap: cannot check the account of %s: database is locked" % (BOB,) in line for line in logged)
    session.send("b NOOP")
    session.expect("b OK NOOP completed.")
    assert counting.lookups == 2


# --- POP3 ---------------------------------------------------------------------


class POP3Session:
    def __init__(self, directory, store, runner=synchronousRunner):
        self.clock = task.Clock()
        arguments = factoryArguments(directory, self.clock)
        arguments["portal"] = makePortal(directory, runInThread=runner)
        self.factory = POP3Factory("mx.example.test", store, **arguments)
        self.t = Transcript(self.factory.buildProtocol(None))
        self.t.expect("+OK mdpy ready.")

    def __getattr__(self, name):
        return getattr(self.t, name)

    def login(self, password=PASSWORD):
        self.send("STLS")
        self.expect("+OK Begin TLS negotiation now.")
        self.send("USER " + BOB, "PASS " + password)
        return self.lines()


@pytest.mark.parametrize("command", ["STAT", "LIST", "UIDL", "RETR 1", "TOP 1 0", "DELE 1", "NOOP", "QUIT"])
def test_pop3SessionNeverReachesTheAccountMadeAgain(directory, admin, store, command):
    """
    Each command of a POP3 session whose account was deleted and made
    again is refused with C{-ERR [SYS/PERM]} and ends the session, which
    updates nothing (QUIT removes no message of the new account, whose
    UIDs may be the same).
    """
    old = POP3Session(directory, store)
    assert old.login() == ["+OK", "+OK Logged in."]
    old.send("DELE 1")
    old.expect("+OK Marked to be deleted.")
    remakeBob(admin, store)
    old.send(command)
    old.expect("-ERR [SYS/PERM] Account no longer exists.")
    assert old.closed
    assert newBobInbox(store) == [NEW_MAIL]
    new = POP3Session(directory, store)
    assert new.login(NEW_PASSWORD) == ["+OK", "+OK Logged in."]
    new.send("STAT")
    new.expect("+OK 1 %d" % (len(NEW_MAIL),))


def test_pop3DisabledAccount(directory, admin, store):
    old = POP3Session(directory, store)
    old.login()
    admin.setEnabled(BOB, False)
    old.send("STAT")
    old.expect("-ERR [SYS/PERM] Account disabled.")
    assert old.closed
    assert "bob@example.test" not in old.factory.locks


def test_pop3AccountDeletedWhileThePasswordIsChecked(directory, admin, store):
    """
    A POP3 login whose account is deleted while its password is verified
    ends without making a mail tree for it.
    """

    def deletingRunner(f, *args):
        if admin.getUser(BOB) is not None:
            admin.removeUser(BOB)
            store.deleteAccount(BOB)
        return synchronousRunner(f, *args)

    session = POP3Session(directory, store, runner=deletingRunner)
    assert session.login() == ["+OK", "-ERR [SYS/PERM] Account no longer exists."]
    assert session.closed
    assert not store.accountExists(BOB)


# --- SMTP submission ----------------------------------------------------------


class SubmissionSession:
    def __init__(self, directory):
        self.clock = task.Clock()
        self.target = RecordingTarget()
        arguments = factoryArguments(directory, self.clock)
        self.factory = SMTPFactory("mx.example.test", self.target, mode=MODE_SUBMISSION, **arguments)
        self.t = Transcript(self.factory.buildProtocol(None))
        self.t.expect("220 mx.example.test ESMTP mdpy")

    def __getattr__(self, name):
        return getattr(self.t, name)

    def login(self):
        self.send("EHLO client.example")
        self.lines()
        self.send("STARTTLS")
        self.lines()
        self.send("EHLO client.example")
        self.lines()
        plain = base64.b64encode(("\0%s\0%s" % (BOB, PASSWORD)).encode()).decode()
        self.send("AUTH PLAIN " + plain)
        self.expect("235 2.7.0 Authentication successful")


@pytest.mark.parametrize("change, reply", [
    (lambda admin: admin.removeUser(BOB), "421 4.7.0 Error: account no longer exists"),
    (lambda admin: (admin.removeUser(BOB), admin.addUser(BOB, PASSWORD)), "421 4.7.0 Error: account no longer exists"),
    (lambda admin: admin.setEnabled(BOB, False), "421 4.7.0 Error: account disabled"),
])
def test_submissionSessionOfAnAccountGone(directory, admin, change, reply):
    """
    A submission session sends as its login no more once the account was
    deleted, made again or disabled: its next MAIL gets 421 and the
    connection closes.
    """
    session = SubmissionSession(directory)
    session.login()
    session.send("MAIL FROM:<%s>" % (BOB,), "RCPT TO:<x@remote.test>", "DATA")
    session.expect("250 2.1.0 Ok", "250 2.1.5 Ok", "354 *")
    session.send("Subject: first", "", "sent before", ".")
    session.expect("250 2.0.0 *")
    change(admin)
    session.send("MAIL FROM:<%s>" % (BOB,))
    session.expect(reply)
    assert session.closed
    assert len(session.target.messages) == 1


def test_sessionsWithoutCheck(directory, store):
    """
    A factory given no account check never asks.
    """
    session = IMAPSession(directory, store)
    session.factory.accountCheck = None
    session.login()
    directory.removeUser(BOB)
    session.send("a LIST \"\" INBOX")
    assert session.lines()[-1] == "a OK List completed."
