"""
Transcript tests of L{mdpy.pop3.server} over an in-memory transport and the
in-memory store.
"""

import base64
import hmac

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, task

from mdpy import errors
from mdpy.auth.checkers import FailedLoginTracker
from mdpy.backends.local import MaildropLocks
from mdpy.pop3.maildrop import uidlFor
from mdpy.pop3.server import POP3Factory
from mdpy.backends.memory import MemoryMessage, MemoryStore, recordReads
from mdpy.mailbox import ADD
from mdpy.testing import AddressRealm, Transcript, memoryPortal, resultOf

TLS = object()
USER = "joe@example.test"

MESSAGES = [
    b"Subject: one\r\n\r\nfirst\r\n",
    b"Subject: two\r\n\r\n.leading dot\r\n..two dots\r\nlast\r\n",
    b"Subject: three\r\nX-Long: folded\r\n  header\r\n\r\nl1\r\nl2\r\nl3\r\nl4\r\n",
]


class Session:
    def __init__(self, store=None, tls=True, plaintext=False, implicit=False, locks=None, tracker=False):
        self.clock = task.Clock()
        self.store = store or filledStore()
        self.factory = POP3Factory(
            "mx.example.test",
            self.store,
            locks=locks,
            allowPlaintext=plaintext,
            portal=memoryPortal(**{USER: "secret", "ann@example.test": "pw"}),
            tlsOptions=TLS if tls else None,
            implicitTLS=implicit,
            loginTracker=FailedLoginTracker(self.clock) if tracker else None,
            clock=self.clock,
        )
        self.t = Transcript(self.factory.buildProtocol(None))
        self.t.expect("+OK mdpy ready.")

    def __getattr__(self, name):
        return getattr(self.t, name)

    def raw(self):
        data = self.t.transport.value()
        self.t.transport.clear()
        return data

    def stls(self):
        self.send("STLS")
        self.expect("+OK Begin TLS negotiation now.")

    def login(self, user=USER, password="secret"):
        self.stls()
        self.send("USER " + user, "PASS " + password)
        self.expect("+OK", "+OK Logged in.")


def filledStore(messages=MESSAGES):
    store = MemoryStore()
    store.createAccount(USER)
    store.createAccount("ann@example.test")
    for data in messages:
        store.deliver([(USER, "INBOX", [data])])
    return store


def inbox(store, account=USER):
    return [resultOf(m.read()) for m in store.openMailbox(account).messages()]


def b64(text):
    return base64.b64encode(text.encode()).decode()


# --- AUTHORIZATION ---------------------------------------------------------------


def test_capaBeforeAndAfterTLS():
    s = Session()
    s.send("CAPA")
    lines = s.lines()
    assert lines[0] == "+OK Capability list follows" and lines[-1] == "."
    assert "STLS" in lines and "USER" not in lines and not any(l.startswith("SASL") for l in lines)
    for capability in ("TOP", "UIDL", "RESP-CODES", "PIPELINING", "EXPIRE NEVER", "LOGIN-DELAY 0", "IMPLEMENTATION mdpy"):
        assert capability in lines
    s.stls()
    s.send("CAPA")
    lines = s.lines()
    assert "USER" in lines and "SASL PLAIN LOGIN CRAM-MD5" in lines and "STLS" not in lines


def test_plaintextLoginRefusedBeforeSTLS():
    s = Session()
    s.send("USER " + USER, "PASS secret", "AUTH PLAIN " + b64("\0%s\0secret" % USER))
    s.expect(*["-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."] * 3)


def test_plaintextAllowedWhenConfigured():
    s = Session(plaintext=True)
    s.send("USER " + USER, "PASS secret", "STAT")
    s.expect("+OK", "+OK Logged in.", "+OK 3 %d" % sum(map(len, MESSAGES)))


def test_implicitTLS():
    s = Session(implicit=True)
    s.send("CAPA")
    assert "STLS" not in s.lines()
    s.send("USER " + USER, "PASS secret")
    s.expect("+OK", "+OK Logged in.")


def test_pipelinedAfterSTLSIsDiscarded():
    s = Session()
    s.send("STLS", "USER " + USER, "PASS secret")
    s.expect("+OK Begin TLS negotiation now.")
    s.send("STAT")
    s.expect("-ERR Command not valid in this state.")


def test_stlsTwiceAndWithoutCertificate():
    s = Session()
    s.stls()
    s.send("STLS")
    s.expect("-ERR TLS is already active.")
    s = Session(tls=False)
    s.send("STLS")
    s.expect("-ERR [SYS/PERM] STLS is not available.")


def test_stlsWithArgumentIsRefused():
    """
    RFC 2595 section 4: STLS takes no argument; with one it is an error and
    the session stays in plaintext.
    """
    s = Session()
    s.send("STLS x", "STLS ")
    s.expect("-ERR STLS takes no argument.", "+OK Begin TLS negotiation now.")
    assert s.t.protocol.tls


def test_authListBeforeSTLSNamesOnlyUsableMechanisms():
    """
    AUTH without a mechanism lists what could be used now: nothing before
    STLS, as CAPA has no SASL line then; every mechanism after it, or
    before it when plaintext logins are allowed.
    """
    s = Session()
    s.send("AUTH")
    s.expect("+OK", ".")
    s.send("AUTH PLAIN " + b64("\0%s\0secret" % USER))
    s.expect("-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.")
    s.stls()
    s.send("AUTH")
    s.expect("+OK", "PLAIN", "LOGIN", "CRAM-MD5", ".")
    s = Session(plaintext=True)
    s.send("AUTH")
    s.expect("+OK", "PLAIN", "LOGIN", "CRAM-MD5", ".")


def test_wrongPassword():
    s = Session()
    s.stls()
    s.send("USER " + USER, "PASS wrong", "PASS secret", "USER nobody@example.test", "PASS x")
    s.expect("+OK", "-ERR [AUTH] Authentication failed.", "-ERR No username given.", "+OK", "-ERR [AUTH] Authentication failed.")


def test_failedLoginsAreDelayed():
    s = Session(tracker=True)
    s.stls()
    s.send("USER " + USER, "PASS wrong1")
    s.expect("+OK")
    s.clock.advance(2)
    s.expect("-ERR [AUTH] Authentication failed.")
    s.send("USER " + USER, "PASS wrong2", "NOOP")
    s.expect("+OK")
    s.clock.advance(3.9)
    assert s.lines() == []
    s.clock.advance(0.1)
    s.expect("-ERR [AUTH] Authentication failed.", "-ERR Command not valid in this state.")


class HeldChecker:
    """
    A checker whose answers the test gives: L{checks} holds a
    C{(username, password, Deferred)} per check asked for.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self):
        self.checks = []

    def requestAvatarId(self, credentials):
        d = defer.Deferred()
        self.checks.append((credentials.username, credentials.password, d))
        return d


def test_loginsAtOnceAreCheckedWithinTheLimit():
    """
    Three sessions from one address send PASS at once with an address
    limit of 2: two passwords are checked; the third, the right one, waits,
    and once the two have failed it is refused without being checked.
    """
    clock = task.Clock()
    checker = HeldChecker()
    factory = POP3Factory(
        "mx.example.test",
        filledStore(),
        allowPlaintext=True,
        portal=Portal(AddressRealm(), [checker]),
        loginTracker=FailedLoginTracker(clock, baseDelay=1, banThreshold=2),
        clock=clock,
    )
    sessions = []
    for password in ("guess1", "guess2", "secret"):
        t = Transcript(factory.buildProtocol(None))
        t.expect("+OK mdpy ready.")
        t.send("USER " + USER, "PASS " + password)
        t.expect("+OK")
        sessions.append(t)
    assert [password for _, password, _ in checker.checks] == [b"guess1", b"guess2"]
    for _, _, d in checker.checks:
        d.errback(UnauthorizedLogin())
    clock.advance(2)
    for t in sessions:
        t.expect("-ERR [AUTH] Authentication failed.")
    assert len(checker.checks) == 2


def test_waitingLoginOfAClosedSessionIsNotChecked():
    clock = task.Clock()
    checker = HeldChecker()
    factory = POP3Factory(
        "mx.example.test",
        filledStore(),
        allowPlaintext=True,
        portal=Portal(AddressRealm(), [checker]),
        loginTracker=FailedLoginTracker(clock, banThreshold=1),
        clock=clock,
    )
    sessions = []
    for password in ("guess1", "secret"):
        t = Transcript(factory.buildProtocol(None))
        t.send("USER " + USER, "PASS " + password)
        sessions.append(t)
    sessions[1].protocol.connectionLost(None)
    checker.checks[0][2].callback(USER)
    assert len(checker.checks) == 1
    assert factory.loginTracker.waitingLogins() == 0
    assert factory.loginTracker._pendingByAddress == {}


def test_saslPlainLoginAndCramMD5():
    s = Session()
    s.stls()
    s.send("AUTH PLAIN " + b64("\0%s\0secret" % USER))
    s.expect("+OK Logged in.")
    s = Session()
    s.stls()
    s.send("AUTH LOGIN")
    s.expect("+ VXNlcm5hbWU6")
    s.send(b64(USER))
    s.expect("+ UGFzc3dvcmQ6")
    s.send(b64("secret"))
    s.expect("+OK Logged in.")
    s = Session()
    s.stls()
    s.send("AUTH CRAM-MD5")
    challenge = base64.b64decode(s.lines()[0][2:])
    s.send(b64("%s %s" % (USER, hmac.new(b"secret", challenge, "md5").hexdigest())))
    s.expect("+OK Logged in.")


def test_saslErrors():
    s = Session()
    s.stls()
    s.send("AUTH")
    s.expect("+OK", "PLAIN", "LOGIN", "CRAM-MD5", ".")
    s.send("AUTH KERBEROS", "AUTH PLAIN !!!", "AUTH PLAIN " + b64("nonuls"))
    s.expect(
        "-ERR Unsupported authentication mechanism.",
        "-ERR Invalid base64 data in continued response.",
        "-ERR Invalid base64 data in continued response.",
    )
    s.send("AUTH PLAIN")
    s.expect("+ ")
    s.send("*")
    s.expect("-ERR Authentication cancelled.")
    s.send("AUTH PLAIN " + b64("ann@example.test\0%s\0secret" % USER))
    s.expect("-ERR [AUTH] Authentication failed.")
    assert not s.closed


def test_apopIsRefused():
    s = Session()
    s.send("APOP joe 0123456789abcdef0123456789abcdef")
    s.expect("-ERR [AUTH] *")


def test_commandsInTheWrongState():
    s = Session()
    s.send("STAT", "RETR 1", "NOOP", "FROB")
    s.expect(*["-ERR Command not valid in this state."] * 3 + ["-ERR Unknown command."])
    s.login()
    s.send("USER x", "STLS")
    s.expect("-ERR Command not valid in this state.", "-ERR Command not valid in this state.")


def test_tooManyErrorsClose():
    s = Session()
    s.send(*["FROB"] * 20)
    lines = s.lines()
    assert lines[-1] == "-ERR Too many bad commands."
    assert s.closed


def test_overlongLine():
    s = Session()
    s.sendRaw(b"X" * 20000 + b"\r\nCAPA\r\n")
    lines = s.lines()
    assert lines[0] == "-ERR Line too long."
    assert lines[1] == "+OK Capability list follows"


# --- TRANSACTION --------------------------------------------------------------------


def test_statListUidl():
    s = Session()
    s.login()
    s.send("STAT", "LIST", "LIST 2", "LIST 4", "LIST x", "LIST 0")
    sizes = [len(m) for m in MESSAGES]
    s.expect(
        "+OK 3 %d" % sum(sizes),
        "+OK",
        "1 %d" % sizes[0],
        "2 %d" % sizes[1],
        "3 %d" % sizes[2],
        ".",
        "+OK 2 %d" % sizes[1],
        "-ERR There's no message 4.",
        "-ERR Invalid message number",
        "-ERR There's no message 0.",
    )
    s.send("UIDL", "UIDL 3")
    lines = s.lines()
    messages = s.store.openMailbox(USER).messages()
    assert lines == ["+OK"] + ["%d %s" % (i + 1, uidlFor(m).decode()) for i, m in enumerate(messages)] + [
        ".",
        "+OK 3 %s" % uidlFor(messages[2]).decode(),
    ]
    assert len({uidlFor(m) for m in messages}) == 3


def test_retrIsByteExact():
    s = Session()
    s.login()
    s.send("RETR 2")
    assert s.raw() == (
        b"+OK %d octets\r\n" % len(MESSAGES[1])
        + b"Subject: two\r\n\r\n..leading dot\r\n...two dots\r\nlast\r\n.\r\n"
    )


def test_retrOfALargeMessageStreams():
    body = b"".join(b"%s line %06d\r\n" % (b"." if i % 7 == 0 else b"x", i) for i in range(20000))
    data = b"Subject: big\r\n\r\n" + body + b"\xff\xfe 8bit\r\n"
    s = Session(store=filledStore([data]))
    s.login()
    s.send("RETR 1", "NOOP")
    wire = s.raw()
    while s.protocol.transport.producer is not None:
        s.protocol.transport.producer.resumeProducing()
        wire += s.raw()
    wire += s.raw()
    header = b"+OK %d octets\r\n" % len(data)
    assert wire.startswith(header)
    assert wire.endswith(b"\r\n.\r\n+OK\r\n")
    content = wire[len(header) : -len(b".\r\n+OK\r\n")]
    assert content.replace(b"\r\n..", b"\r\n.") == data


def test_top():
    s = Session()
    s.login()
    s.send("TOP 3 0")
    assert s.raw() == b"+OK\r\nSubject: three\r\nX-Long: folded\r\n  header\r\n\r\n.\r\n"
    s.send("TOP 3 2")
    assert s.raw() == b"+OK\r\nSubject: three\r\nX-Long: folded\r\n  header\r\n\r\nl1\r\nl2\r\n.\r\n"
    s.send("TOP 3 100", "TOP 3", "TOP 3 -1", "TOP 9 1")
    assert s.lines() == [
        "+OK", "Subject: three", "X-Long: folded", "  header", "", "l1", "l2", "l3", "l4", ".",
        "-ERR Invalid number of lines.", "-ERR Invalid number of lines.", "-ERR There's no message 9.",
    ]


def test_deleteAppliesOnlyAtQuit():
    store = filledStore()
    s = Session(store=store)
    s.login()
    s.send("DELE 1", "DELE 1", "RETR 1", "LIST 1", "STAT")
    s.expect(
        "+OK Marked to be deleted.",
        "-ERR Message is deleted.",
        "-ERR Message is deleted.",
        "-ERR Message is deleted.",
        "+OK 2 %d" % (len(MESSAGES[1]) + len(MESSAGES[2])),
    )
    assert len(inbox(store)) == 3
    s.send("QUIT")
    s.expect("+OK Logging out, messages deleted.")
    assert s.closed
    assert inbox(store) == MESSAGES[1:]


def test_rsetUndoesDelete():
    store = filledStore()
    s = Session(store=store)
    s.login()
    s.send("DELE 1", "DELE 2", "RSET", "STAT", "QUIT")
    s.expect("+OK *", "+OK *", "+OK", "+OK 3 *", "+OK Logging out.")
    assert len(inbox(store)) == 3


def test_droppedConnectionDeletesNothingAndReleasesTheLock():
    store = filledStore()
    locks = MaildropLocks()
    s = Session(store=store, locks=locks)
    s.login()
    s.send("DELE 1", "DELE 2")
    s.lines()
    assert USER in locks
    s.protocol.connectionLost(None)
    assert USER not in locks
    assert len(inbox(store)) == 3


def test_maildropIsLocked():
    store = filledStore()
    locks = MaildropLocks()
    first = Session(store=store, locks=locks)
    first.login()
    second = Session(store=store, locks=locks)
    second.stls()
    second.send("USER " + USER, "PASS secret")
    second.expect("+OK", "-ERR [IN-USE] Mailbox is locked by another POP3 session.")
    first.send("QUIT")
    first.lines()
    first.protocol.connectionLost(None)
    second.send("USER " + USER, "PASS secret")
    second.expect("+OK", "+OK Logged in.")


def test_maildropReleasedBeforeTheLogoutIsAnswered():
    """
    A client told by QUIT's C{+OK} that it logged out may log in again at
    once (in another worker too): the maildrop is no longer locked by then.
    """
    store = filledStore()
    locks = MaildropLocks()
    s = Session(store=store, locks=locks)
    s.login()
    s.send("DELE 1")
    s.lines()
    answered = []
    release = locks.release

    def releaseSeen(account, holder):
        answered.append(b"Logging out" in s.t.transport.value())
        release(account, holder)

    locks.release = releaseSeen
    s.send("QUIT")
    assert s.lines() == ["+OK Logging out, messages deleted."]
    assert answered[0] is False and USER not in locks


def test_newMailDoesNotShiftNumbers():
    store = filledStore()
    s = Session(store=store)
    s.login()
    store.deliver([(USER, "INBOX", [b"Subject: four\r\n\r\nlate\r\n"])])
    s.send("STAT", "RETR 4")
    s.expect("+OK 3 *", "-ERR There's no message 4.")
    s.send("QUIT")
    s.lines()
    s = Session(store=store)
    s.login()
    s.send("STAT")
    s.expect("+OK 4 *")


def test_failedDeletionAtQuit():
    store = filledStore()
    s = Session(store=store)
    s.login()
    s.send("DELE 1")
    s.lines()
    mailbox = s.protocol.maildrop.mailbox

    def fail(uids):
        raise errors.TemporaryFailure("disk")

    mailbox.expunge = fail
    s.send("QUIT")
    s.expect("-ERR [SYS/TEMP] Messages could not be deleted; try again later.")
    assert s.closed
    assert len(inbox(store)) == 3


def test_accountDeletedDuringSession():
    """
    The account deleted by the administrator while a session is open: QUIT
    says the mailbox no longer exists, with no error logged and nothing
    made again.
    """
    store = filledStore()
    s = Session(store=store)
    s.login()
    s.send("RETR 1", "DELE 3")
    s.lines()
    store.deleteAccount(USER, archive=True)
    s.send("QUIT")
    s.expect("-ERR [SYS/PERM] Mailbox no longer exists.")
    assert s.closed
    assert not store.accountExists(USER)


def test_timeout():
    s = Session()
    s.clock.advance(599)
    assert not s.closed
    s.clock.advance(2)
    s.expect("-ERR Disconnected for inactivity.")
    assert s.closed


def test_uidlOfLongKeysIsAHash():
    class Message:
        key = "x" * 100

    uidl = uidlFor(Message())
    assert len(uidl) == 40 and uidl == uidlFor(Message())
    Message.key = "1732459.M1P2Q3.host"
    assert uidlFor(Message()) == b"1732459.M1P2Q3.host"


def test_retrievedMessagesAreMarkedSeenAtQuit():
    store = filledStore()
    s = Session(store=store)
    s.login()
    s.send("RETR 1", "TOP 2 0", "RETR 3", "DELE 3")
    s.lines()
    assert [m.flags for m in store.openMailbox(USER).messages()] == [frozenset()] * 3
    s.send("QUIT")
    s.lines()
    flags = [sorted(m.flags) for m in store.openMailbox(USER).messages()]
    assert flags == [["\\Seen"], []]


def test_droppedConnectionMarksNothingSeen():
    store = filledStore()
    s = Session(store=store)
    s.login()
    s.send("RETR 1")
    s.lines()
    s.protocol.connectionLost(None)
    assert [m.flags for m in store.openMailbox(USER).messages()] == [frozenset()] * 3


def test_retr_reads_the_next_message_ahead(monkeypatch):
    """
    After RETR n, the store is already reading message n + 1 (clients
    that download everything ask for it next); RETR n + 1 uses that read,
    and a deleted message is not read ahead.
    """
    reads = recordReads(monkeypatch)
    s = Session()
    s.login()
    s.send("DELE 3")
    s.lines()
    s.send("RETR 1")
    s.lines()
    assert reads == [1, 2]
    s.send("RETR 2")
    assert s.lines()[0].startswith("+OK")
    assert reads == [1, 2]


def test_retrOfAMessageRemovedMeanwhile():
    """
    A message removed by another session since the login is answered
    C{-ERR [SYS/TEMP]}, and the session goes on.
    """
    store = filledStore()
    s = Session(store=store)
    s.login()
    store.openMailbox(USER).expunge([2])
    s.send("RETR 2", "NOOP")
    s.expect("-ERR [SYS/TEMP] Message is gone.", "+OK")


def test_failedReadAheadIsAnErrorOnlyWhenAsked(monkeypatch):
    """
    A read ahead that fails leaves no unhandled error behind (the message
    may never be asked for); the RETR of its message gets the error.
    """
    reads = []
    monkeypatch.setattr(MemoryMessage, "read", lambda message: reads.append(defer.Deferred()) or reads[-1])
    s = Session()
    s.login()
    s.send("RETR 1")
    reads[0].callback(MESSAGES[0])
    s.lines()
    reads[1].errback(errors.NotFound("gone"))
    left = []
    reads[1].addBoth(left.append)
    assert left == [None]
    s.send("RETR 2")
    s.expect("-ERR [SYS/TEMP] Message is gone.")
    assert len(reads) == 2


def test_retrWaitsForASlowRead(monkeypatch):
    """
    A message the store reads later is sent when the read is done, and
    the commands pipelined behind the RETR wait for it.
    """
    reads = []
    monkeypatch.setattr(MemoryMessage, "read", lambda message: reads.append(defer.Deferred()) or reads[-1])
    s = Session()
    s.login()
    s.send("RETR 1", "NOOP")
    assert s.lines() == []
    reads[0].callback(MESSAGES[0])
    assert s.lines() == ["+OK %d octets" % len(MESSAGES[0]), "Subject: one", "", "first", ".", "+OK"]
    # The read ahead of message 2 is under way: RETR 2 waits for it.
    assert len(reads) == 2
    s.send("RETR 2")
    assert s.lines() == []
    reads[1].errback(errors.NotFound("gone"))
    s.expect("-ERR [SYS/TEMP] Message is gone.")


def test_quitAfterOnlyReadingSeenMailAsksNothingOfTheStore():
    """
    A session that marks nothing deleted and retrieves only messages
    already C{\\Seen} leaves the mailbox as it is, without a store write.
    """
    store = filledStore()
    mailbox = store.openMailbox(USER)
    resultOf(mailbox.changeFlags([1, 2, 3], ["\\Seen"], ADD))
    s = Session(store=store)
    s.login()
    s.send("RETR 1", "RETR 2")
    s.lines()

    def fail(*args, **kwargs):
        raise errors.TemporaryFailure("disk")

    s.protocol.maildrop.mailbox.changeFlags = s.protocol.maildrop.mailbox.expunge = fail
    s.send("QUIT")
    s.expect("+OK Logging out.")
    assert len(inbox(store)) == 3


def test_loginMakesTheMailboxTreeOfANewUser():
    """
    A user added to the directory before any mail came has no mailbox
    tree yet: the login makes it, and the maildrop is empty.
    """
    store = MemoryStore()
    s = Session(store=store)
    s.login()
    s.send("STAT")
    s.expect("+OK 0 0")
    assert store.accountExists(USER)
