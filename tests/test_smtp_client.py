"""
Tests of L{mdpy.smtp.client}: transcripts over an in-memory transport, and
whole sessions against mdpy's own SMTP server over L{twisted.test.iosim},
with real TLS.
"""

import base64
import io

import pytest
from OpenSSL import SSL
from twisted.internet import defer, error as ierror, ssl, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import INegotiated
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import directlyProvides

from mdpy import errors
from mdpy.dotstuffing import stuff
from mdpy.smtp.client import (
    ESMTPClient,
    OutboundMessage,
    RecipientResult,
    SessionResult,
    deliverOver,
)
from mdpy.smtp.server import MODE_SUBMISSION, SMTPFactory
from mdpy.testing import RecordingTarget, TLSStringTransport, Transcript, memoryPortal
from mdpy.tls import ensureSelfSigned, serverOptions

EXTENSIONS = ["PIPELINING", "SIZE 10000000", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
TLS_OPTIONS = object()  # stands for client TLS options: TLSStringTransport records them


class BodyFile(io.BytesIO):
    """A message file that remembers the sizes it was asked to read."""

    def __init__(self, data):
        io.BytesIO.__init__(self, data)
        self.reads = []

    def read(self, size=-1):
        self.reads.append(size)
        return io.BytesIO.read(self, size)


def message(messageId="M1", recipients=("a@remote.example",), body=b"Subject: hi\r\n\r\nHello\r\n",
            sender="alice@example.org", **kwargs):
    files = []

    def openBody():
        files.append(BodyFile(body))
        return files[-1]

    m = OutboundMessage(messageId, sender, list(recipients), len(body), openBody, **kwargs)
    m.files = files
    return m


class WriteRecordingTransport(TLSStringTransport):
    """Remembers each write, to tell a pipelined group from single commands."""

    def __init__(self, *args, **kwargs):
        TLSStringTransport.__init__(self, *args, **kwargs)
        self.writes = []

    def write(self, data):
        self.writes.append(data)
        TLSStringTransport.write(self, data)


class Session:
    """
    An L{ESMTPClient} over a string transport; C{send} plays the server,
    C{expect} checks what the client wrote.
    """

    def __init__(self, *messages, implicitTLS=False, **kwargs):
        self.clock = task.Clock()
        self.queue = list(messages)
        self.asked = 0
        self.done = []
        self.client = ESMTPClient(
            "relay.example.org", self.nextMessage, self.messageDone, clock=self.clock, **kwargs
        )
        self.results = []
        self.client.finished.addCallback(self.results.append)
        self.transport = WriteRecordingTransport(peerAddress=IPv4Address("TCP", "192.0.2.25", 25))
        if implicitTLS:
            directlyProvides(self.transport, INegotiated)  # as a TLSMemoryBIOProtocol is
        self.t = Transcript(self.client, self.transport)

    def nextMessage(self):
        self.asked += 1
        return self.queue.pop(0) if self.queue else None

    def messageDone(self, message, results):
        self.done.append((message, results))

    def send(self, *lines):
        self.t.send(*lines)

    def expect(self, *patterns):
        return self.t.expect(*patterns)

    def greet(self, extensions=EXTENSIONS):
        self.send("220 mx.remote.example ESMTP")
        self.expect("EHLO relay.example.org")
        self.send(*ehloReply(extensions))

    def pumpBody(self):
        """Let the transport take the whole body, as a drained socket would."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()

    def lose(self, reason=None):
        self.client.connectionLost(Failure(reason or ierror.ConnectionDone()))

    def quit(self):
        self.expect("QUIT")
        self.send("221 2.0.0 Bye")
        assert self.transport.disconnecting
        self.lose()
        return self.result

    @property
    def result(self):
        assert len(self.results) == 1
        return self.results[0]

    def resultsOf(self, index=0):
        return [(r.address, r.code, r.enhanced, r.remote) for r in self.done[index][1]]


def ehloReply(extensions):
    lines = ["mx.remote.example"] + list(extensions)
    return ["250%s%s" % ("-" if i < len(lines) - 1 else " ", line) for i, line in enumerate(lines)]


# --- results ---------------------------------------------------------------------


def test_recipientResult():
    r = RecipientResult("a@x", 550, "5.1.1", "User unknown")
    assert (r.delivered, r.temporary, r.permanent) == (False, False, True)
    assert r.diagnostic() == "smtp; 550 5.1.1 User unknown"
    assert r.status() == "5.1.1"
    r = RecipientResult("a@x", 451, None, "later")
    assert r.temporary and r.status() == "4.0.0"
    assert r.diagnostic() == "smtp; 451 later"
    r = RecipientResult("a@x", 451, "4.4.2", "connection lost", remote=False)
    assert r.diagnostic() is None and r.status() == "4.4.2"
    assert RecipientResult("a@x", 250, None, "").delivered


# --- sessions ---------------------------------------------------------------------


def test_pipelinedSessionOfTwoMessages():
    first = message("M1", ["a@remote.example", "b@remote.example", "c@remote.example"])
    second = message("M2", ["d@remote.example"], body=b"second\r\n", sender="")
    s = Session(first, second)
    s.greet()
    group = s.transport.writes[-1]
    s.expect(
        "MAIL FROM:<alice@example.org> SIZE=%d" % (first.size,),
        "RCPT TO:<a@remote.example>",
        "RCPT TO:<b@remote.example>",
        "RCPT TO:<c@remote.example>",
        "DATA",
    )
    assert group.startswith(b"MAIL FROM:") and group.endswith(b"\r\nDATA\r\n")  # RFC 2920: one write
    s.send("250 2.1.0 Ok", "250 2.1.5 Ok", "550 5.1.1 User unknown", "451 4.2.0 Try later", "354 Go")
    s.pumpBody()
    s.expect("Subject: hi", "", "Hello", ".")
    assert not s.done
    s.send("250 2.0.0 Ok: queued as X")
    assert s.resultsOf(0) == [
        ("a@remote.example", 250, "2.0.0", True),
        ("b@remote.example", 550, "5.1.1", True),
        ("c@remote.example", 451, "4.2.0", True),
    ]
    assert s.done[0][1][1].diagnostic() == "smtp; 550 5.1.1 User unknown"
    assert s.done[0][1][0].text == "Ok: queued as X"
    assert first.files[0].closed
    # The second message follows on the same connection, without RSET.
    s.expect("MAIL FROM:<> SIZE=8", "RCPT TO:<d@remote.example>", "DATA")
    s.send("250 2.1.0 Ok", "250 2.1.5 Ok", "354 Go")
    s.pumpBody()
    s.expect("second", ".")
    s.send("250 2.0.0 Ok")
    assert s.resultsOf(1) == [("d@remote.example", 250, "2.0.0", True)]
    result = s.quit()
    assert (result.messagesAttempted, result.error, result.tls, result.tlsFailed) == (2, None, False, False)
    assert s.asked == 3


def test_nonPipeliningServerGetsOneCommandAtATime():
    s = Session(message("M1", ["a@remote.example", "b@remote.example"]), message("M2"))
    s.greet(["SIZE", "8BITMIME"])
    s.expect("MAIL FROM:<alice@example.org> SIZE=22")
    s.send("250 Ok")
    s.expect("RCPT TO:<a@remote.example>")
    s.send("550 No such user")
    s.expect("RCPT TO:<b@remote.example>")
    s.send("250 Ok")
    s.expect("DATA")
    s.send("354 Go")
    s.pumpBody()
    s.expect("Subject: hi", "", "Hello", ".")
    s.send("250 Ok")
    assert s.resultsOf(0) == [("a@remote.example", 550, None, True), ("b@remote.example", 250, None, True)]
    # No recipient accepted: no DATA, RSET, then the next message (or QUIT).
    s.expect("MAIL FROM:<alice@example.org> SIZE=22")
    s.send("250 Ok")
    s.expect("RCPT TO:<a@remote.example>")
    s.send("450 4.2.1 Mailbox busy")
    s.expect("RSET")
    s.send("250 Ok")
    assert s.resultsOf(1) == [("a@remote.example", 450, "4.2.1", True)]
    s.quit()


def test_mailRefusedGivesItsReplyToEveryRecipientThenRSET():
    s = Session(message("M1", ["a@remote.example", "b@remote.example"]), message("M2"))
    s.greet(["PIPELINING"])
    s.expect("MAIL FROM:<alice@example.org>", "RCPT TO:<a@remote.example>", "RCPT TO:<b@remote.example>", "DATA")
    s.send("553 5.7.1 Sender rejected", "503 5.5.1 need MAIL", "503 5.5.1 need MAIL", "503 5.5.1 need MAIL")
    assert s.resultsOf(0) == [
        ("a@remote.example", 553, "5.7.1", True),
        ("b@remote.example", 553, "5.7.1", True),
    ]
    s.expect("RSET")
    s.send("250 2.0.0 Ok")
    s.expect("MAIL FROM:<alice@example.org>", "RCPT TO:<a@remote.example>", "DATA")


def test_354WithNoRecipientSendsAnEmptyMessageOnly():
    s = Session(message("M1", ["a@remote.example"], body=b"secret body\r\n"))
    s.greet(["PIPELINING"])
    s.expect("MAIL FROM:<alice@example.org>", "RCPT TO:<a@remote.example>", "DATA")
    s.send("250 Ok", "550 5.1.1 Unknown", "354 Go ahead anyway")
    s.expect(".")
    assert s.transport.producer is None
    s.send("554 5.5.1 No valid recipients")
    s.expect("RSET")
    s.send("250 Ok")
    assert s.resultsOf() == [("a@remote.example", 550, "5.1.1", True)]
    s.quit()


def test_dataRefusedGoesToAcceptedRecipients():
    s = Session(message("M1", ["a@remote.example", "b@remote.example"]))
    s.greet(["PIPELINING"])
    s.expect("MAIL FROM:<alice@example.org>", "RCPT TO:<a@remote.example>", "RCPT TO:<b@remote.example>", "DATA")
    s.send("250 Ok", "250 Ok", "550 5.1.1 Unknown", "451 4.3.0 Queue full")
    assert s.resultsOf() == [("a@remote.example", 451, "4.3.0", True), ("b@remote.example", 550, "5.1.1", True)]
    s.expect("RSET")


def test_sizeRefusedLocally():
    big = message("M1", ["a@remote.example", "b@remote.example"], body=b"x" * 5000)
    s = Session(big)
    s.greet(["PIPELINING", "SIZE 1000"])
    s.expect("QUIT")
    assert s.resultsOf() == [("a@remote.example", 552, "5.3.4", False), ("b@remote.example", 552, "5.3.4", False)]
    result = s.done[0][1][0]
    assert result.permanent and result.diagnostic() is None and result.status() == "5.3.4"
    assert big.files == []  # not even opened


def test_sizeZeroMeansNoLimit():
    s = Session(message(body=b"x" * 5000))
    s.greet(["SIZE 0"])
    s.expect("MAIL FROM:<alice@example.org> SIZE=5000")


def test_smtputf8RefusedWhenNotOffered():
    s = Session(message("M1", ["jörg@bücher.example"], sender="ünï@example.org", smtputf8=True), message("M2"))
    s.greet(["PIPELINING", "8BITMIME"])
    assert s.resultsOf() == [("jörg@bücher.example", 553, "5.6.7", False)]
    s.expect("MAIL FROM:<alice@example.org>", "RCPT TO:<a@remote.example>", "DATA")


def test_smtputf8SentWhenOffered():
    s = Session(message("M1", ["jörg@bücher.example"], sender="ünï@example.org", smtputf8=True, eightBit=True))
    s.greet()
    s.expect("MAIL FROM:<ünï@example.org> SIZE=22 BODY=8BITMIME SMTPUTF8", "RCPT TO:<jörg@bücher.example>", "DATA")


def test_nonAsciiAddressWithoutSmtputf8IsNotSent():
    s = Session(message("M1", ["jörg@bücher.example", "a@remote.example"]))
    s.greet(["PIPELINING"])
    s.expect("MAIL FROM:<alice@example.org>", "RCPT TO:<a@remote.example>", "DATA")


def test_addressCannotInjectCommands():
    s = Session(message("M1", ["a@x>\r\nRCPT TO:<evil@x", "b@remote.example"]))
    s.greet(["PIPELINING"])
    s.expect("MAIL FROM:<alice@example.org>", "RCPT TO:<b@remote.example>", "DATA")
    s.send("250 Ok", "250 Ok", "354 Go")
    s.pumpBody()
    s.t.lines()
    s.send("250 Ok")
    assert [r[1:3] for r in s.resultsOf()] == [(553, "5.1.3"), (250, None)]


def test_8bitmime():
    s = Session(message(eightBit=True), message("M2", eightBit=True))
    s.greet(["8BITMIME"])
    s.expect("MAIL FROM:<alice@example.org> BODY=8BITMIME")
    s.send("451 later")
    s.expect("RSET")
    s.client.extensions.pop("8BITMIME")
    s.send("250 Ok")
    # Without 8BITMIME the message goes anyway, without the parameter.
    s.expect("MAIL FROM:<alice@example.org>")


def test_dotStuffingAcrossChunksAndBareLineEnds():
    # A line starting with "." right at the 64 KiB boundary, bare LFs, a
    # bare CR LF split over the boundary, and smuggling attempts.
    head = b"Subject: t\n\n" + b"x" * (65536 - 13) + b"\n"
    assert len(head) == 65536
    body = (
        head
        + b".starts the second chunk\n"
        + b"text\n.\r\nMAIL FROM:<smuggle@example.net>\r\n"
        + b"bare\r.\rcr\n..two\r\n"
        + b"z" * (65536 - 24) + b"\r"
        + b"\n.\nlast line without end"
    )
    m = message("M1", body=body)
    s = Session(m)
    s.greet()
    s.t.lines()
    s.send("250 Ok", "250 Ok", "354 Go")
    s.pumpBody()
    wire = s.transport.value()
    assert wire == stuff(body)
    assert wire.endswith(b"\r\nlast line without end\r\n.\r\n")
    assert wire.count(b"\r\n.\r\n") == 1  # DATA ends only at the end
    assert b"\r\n..starts the second chunk\r\n" in wire
    assert b"\ntext\r\n..\r\nMAIL FROM:<smuggle@example.net>\r\n" in wire
    assert b"\r\nbare\r\n..\r\ncr\r\n...two\r\n" in wire
    assert b"\n" not in wire.replace(b"\r\n", b"") and b"\r" not in wire.replace(b"\r\n", b"")
    assert m.files[0].reads[0] == 65536 and len(m.files[0].reads) == 4


def test_emptyBody():
    s = Session(message(body=b""))
    s.greet()
    s.t.lines()
    s.send("250 Ok", "250 Ok", "354 Go")
    s.pumpBody()
    s.expect(".")


# --- STARTTLS and AUTH -------------------------------------------------------------


def test_starttlsThenEhloAgain():
    s = Session(message(), tlsOptions=TLS_OPTIONS)
    s.greet(EXTENSIONS + ["STARTTLS"])
    s.expect("STARTTLS")
    # Plaintext sent with the 220 must not be taken as the reply to EHLO.
    s.send("220 2.0.0 Ready", "250-injected", "250 PIPELINING")
    assert s.transport.tlsOptions is TLS_OPTIONS
    s.expect("EHLO relay.example.org")
    assert s.asked == 0
    s.send(*ehloReply(["SIZE 100000"]))  # over TLS: other extensions now
    s.expect("MAIL FROM:<alice@example.org> SIZE=22")
    assert s.client.extensions == {"SIZE": ["100000"]}
    s.send("250 Ok")
    s.expect("RCPT TO:<a@remote.example>")
    s.send("421 4.3.2 Shutting down")
    s.lose()
    assert s.result.tls and not s.result.tlsFailed


def test_tlsRequiredButNotOffered():
    s = Session(message(), tlsOptions=TLS_OPTIONS, tlsRequired=True)
    s.greet()
    s.expect("QUIT")
    s.send("221 Bye")
    s.lose()
    assert isinstance(s.result.error, errors.TemporaryFailure)
    assert "TLS required" in str(s.result.error)
    assert s.result.reply is None
    assert s.asked == 0 and s.transport.tlsOptions is None


def test_starttlsNotOfferedGoesOnInPlaintext():
    s = Session(message(), tlsOptions=TLS_OPTIONS)
    s.greet(["PIPELINING"])
    s.expect("MAIL FROM:<alice@example.org>", "RCPT TO:<a@remote.example>", "DATA")


def test_starttls454():
    s = Session(message(), tlsOptions=TLS_OPTIONS)
    s.greet(["PIPELINING", "STARTTLS"])
    s.expect("STARTTLS")
    s.send("454 4.7.0 TLS not available")
    # No handshake happened: plaintext is fine when TLS is optional.
    s.expect("MAIL FROM:<alice@example.org>", "RCPT TO:<a@remote.example>", "DATA")
    assert s.transport.tlsOptions is None

    s = Session(message(), tlsOptions=TLS_OPTIONS, tlsRequired=True)
    s.greet(["PIPELINING", "STARTTLS"])
    s.expect("STARTTLS")
    s.send("454 4.7.0 TLS not available")
    s.quit()
    assert isinstance(s.result.error, errors.TemporaryFailure)
    assert s.result.reply == (454, "4.7.0", "TLS not available")
    assert s.asked == 0 and not s.result.tlsFailed


def test_tlsHandshakeFailure():
    s = Session(message(), tlsOptions=TLS_OPTIONS)
    s.greet(["STARTTLS"])
    s.expect("STARTTLS")
    s.send("220 Go ahead")
    s.expect("EHLO relay.example.org")
    s.lose(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    assert s.result.tlsFailed and not s.result.tls
    assert isinstance(s.result.error, errors.TemporaryFailure)
    assert s.asked == 0


def test_authNeverInPlaintext():
    s = Session(message(), credentials=("alice", "secret"))
    s.greet(["PIPELINING", "AUTH PLAIN LOGIN"])
    s.expect("QUIT")
    s.send("221 Bye")
    s.lose()
    assert b"secret" not in b"".join(s.transport.writes)
    assert b"c2VjcmV0" not in b"".join(s.transport.writes)
    assert isinstance(s.result.error, errors.TemporaryFailure)
    assert s.asked == 0


def startTLS(s, extensions):
    s.greet(["STARTTLS", "AUTH PLAIN LOGIN"])
    s.expect("STARTTLS")
    s.send("220 Go ahead")
    s.expect("EHLO relay.example.org")
    s.send(*ehloReply(extensions))


def test_authPlainOverTLS():
    s = Session(message(), tlsOptions=TLS_OPTIONS, credentials=("alice@example.org", "sécret"))
    startTLS(s, ["PIPELINING", "AUTH LOGIN PLAIN CRAM-MD5"])
    response = base64.b64encode("\0alice@example.org\0sécret".encode("utf-8")).decode()
    s.expect("AUTH PLAIN " + response)
    assert s.asked == 0
    s.send("235 2.7.0 Authentication successful")
    s.expect("MAIL FROM:<alice@example.org>", "RCPT TO:<a@remote.example>", "DATA")


def test_authLoginOverTLS():
    s = Session(message(), tlsOptions=TLS_OPTIONS, credentials=("alice", "secret"))
    startTLS(s, ["AUTH LOGIN"])
    s.expect("AUTH LOGIN")
    s.send("334 VXNlcm5hbWU6")
    s.expect("YWxpY2U=")
    s.send("334 UGFzc3dvcmQ6")
    s.expect("c2VjcmV0")
    s.send("235 2.7.0 Ok")
    s.expect("MAIL FROM:<alice@example.org>")


def test_authRefused():
    s = Session(message(), tlsOptions=TLS_OPTIONS, credentials=("alice", "wrong"))
    startTLS(s, ["AUTH PLAIN"])
    s.t.lines()
    s.send("535 5.7.8 Authentication credentials invalid")
    result = s.quit()
    assert isinstance(result.error, errors.TemporaryFailure)
    assert result.reply == (535, "5.7.8", "Authentication credentials invalid")
    assert s.asked == 0 and result.tls


def test_implicitTLSAllowsAuthWithoutSTARTTLS():
    s = Session(message(), implicitTLS=True, credentials=("alice", "secret"))
    s.greet(["AUTH PLAIN"])
    s.expect("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
    s.send("235 2.7.0 Ok")
    s.expect("MAIL FROM:<alice@example.org>")
    s.send("421 4.3.2 Bye")
    s.lose()
    assert s.result.tls and s.transport.tlsOptions is None


def test_authNotOffered():
    s = Session(message(), tlsOptions=TLS_OPTIONS, credentials=("alice", "secret"))
    startTLS(s, ["PIPELINING"])
    result = s.quit()
    assert isinstance(result.error, errors.TemporaryFailure) and s.asked == 0


# --- failures ----------------------------------------------------------------------


def test_greeting554():
    s = Session(message())
    s.send("554 5.7.1 You are not welcome")
    result = s.quit()
    assert isinstance(result.error, errors.PermanentFailure)
    assert result.reply == (554, "5.7.1", "You are not welcome")
    assert s.asked == 0 and s.done == []


def test_greeting421():
    s = Session(message())
    s.send("421 4.7.0 Too many connections")
    assert s.transport.disconnecting
    s.expect()
    s.lose()
    assert isinstance(s.result.error, errors.TemporaryFailure)
    assert s.result.reply == (421, "4.7.0", "Too many connections")


def test_ehloRefusedFallsBackToHelo():
    s = Session(message())
    s.send("220 old.example SMTP")
    s.expect("EHLO relay.example.org")
    s.send("502 Command not implemented")
    s.expect("HELO relay.example.org")
    s.send("250 old.example")
    s.expect("MAIL FROM:<alice@example.org>")  # no SIZE, no pipelining


def test_ehloAndHeloRefused():
    s = Session(message())
    s.send("220 old.example SMTP")
    s.expect("EHLO relay.example.org")
    s.send("500 What?")
    s.expect("HELO relay.example.org")
    s.send("550 5.7.1 Go away")
    result = s.quit()
    assert isinstance(result.error, errors.PermanentFailure) and result.reply[0] == 550


def test_421MidSession():
    s = Session(message("M1", ["a@remote.example", "b@remote.example", "c@remote.example"]), message("M2"))
    s.greet()
    s.t.lines()
    s.send("250 Ok", "250 Ok", "550 5.1.1 Unknown", "421 4.4.2 Timeout, closing")
    assert s.resultsOf() == [
        ("a@remote.example", 421, "4.4.2", True),
        ("b@remote.example", 550, "5.1.1", True),
        ("c@remote.example", 421, "4.4.2", True),
    ]
    assert s.transport.disconnecting
    s.expect()  # no QUIT, no further command
    s.lose()
    assert isinstance(s.result.error, errors.TemporaryFailure)
    assert s.result.reply == (421, "4.4.2", "Timeout, closing")
    assert s.asked == 1 and len(s.done) == 1


@pytest.mark.parametrize(
    "lines",
    [
        ["hello there"],
        ["25O Ok"],
        ["250-mx.remote.example", "550 mixed codes"],
        ["199 too low"],
    ],
)
def test_garbageReplyAborts(lines):
    s = Session(message())
    s.send("220 mx.remote.example ESMTP")
    s.expect("EHLO relay.example.org")
    s.send(*lines)
    assert s.transport.disconnected  # aborted, not closed politely
    s.send("250 more")  # ignored
    s.expect()
    s.lose()
    assert isinstance(s.result.error, errors.TemporaryFailure)
    assert "protocol error" in str(s.result.error)
    assert s.asked == 0


def test_tooManyReplyLinesAborts():
    s = Session(message(), maxReplyLines=5)
    s.send("220 mx.remote.example ESMTP")
    s.expect("EHLO relay.example.org")
    s.send(*["250-X%d" % i for i in range(5)])
    assert not s.transport.disconnected
    s.send("250-X5")
    assert s.transport.disconnected
    s.lose()
    assert "5 lines" in str(s.result.error)


def test_unexpectedReplyAborts():
    s = Session()
    s.client.nextMessage = lambda: defer.Deferred()
    s.greet()
    s.send("250 unsolicited")
    assert s.transport.disconnected


def test_hugeReplyLineAbortsWithBoundedBuffer():
    s = Session(message("M1", ["a@remote.example", "b@remote.example"]))
    s.greet()
    s.t.lines()
    s.send("250 Ok")
    chunk = b"250 " + b"x" * 65532
    s.t.sendRaw(chunk)
    assert s.transport.disconnected
    assert len(s.client._replies.buffer) == 0
    for i in range(9):  # 600 KB in all, never a line end
        s.t.sendRaw(b"x" * 65536)
        assert len(s.client._replies.buffer) == 0
    assert s.resultsOf() == [("a@remote.example", 451, "4.4.2", False), ("b@remote.example", 451, "4.4.2", False)]
    s.lose()
    assert "longer than 4096" in str(s.result.error)


def test_longLineWithinOneReadAborts():
    s = Session(message())
    s.t.sendRaw(b"220 " + b"x" * 5000 + b"\r\n")
    assert s.transport.disconnected


def test_timeout():
    s = Session(message("M1", ["a@remote.example"]))
    s.greet()
    s.t.lines()
    s.clock.advance(200)
    s.send("250 Ok")  # input resets the timer
    s.clock.advance(299)
    assert not s.transport.disconnected and not s.done
    s.clock.advance(1)
    assert s.transport.disconnected
    (result,) = s.done[0][1]
    assert (result.code, result.enhanced, result.remote) == (451, "4.4.2", False)
    assert "timed out after 300 s waiting for the reply to RCPT" in result.text
    s.lose()
    assert isinstance(s.result.error, errors.TemporaryFailure)
    assert not s.clock.getDelayedCalls()


def test_inputAfter221IsIgnored():
    s = Session()
    s.greet()
    s.expect("QUIT")
    s.send("221 Bye", "250 junk")
    assert s.transport.disconnecting and not s.transport.disconnected
    s.lose()
    assert s.result.error is None and not s.clock.getDelayedCalls()


def test_logLinesForTheAdministrator():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        s = Session(message("M7", ["a@remote.example", "b@remote.example"]), tlsOptions=TLS_OPTIONS)
        s.greet(["PIPELINING", "STARTTLS"])
        s.send("220 Go ahead")
        s.send(*ehloReply(["PIPELINING"]))
        s.send("250 Ok", "250 Ok", "550 5.1.1 User unknown", "354 Go")
        s.pumpBody()
        s.send("250 2.0.0 Queued")
        s.send("221 Bye")
        s.lose()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [
        (e["log_level"].name, formatEvent(e))
        for e in events
        if e.get("log_namespace", "").startswith("mdpy.smtp.client")
    ]
    # Connecting, a session that ended well and each message's replies are
    # debug lines (not written at the default level): the relay logs each
    # recipient.
    assert lines == [
        ("info", "smtp-client: TLS started with 192.0.2.25:25"),
    ]


def test_timeoutWhileQuittingIsNoError():
    s = Session()
    s.greet()
    s.expect("QUIT")
    s.clock.advance(300)
    assert s.transport.disconnected
    s.lose()
    assert s.result.error is None


def test_noTimerWhileWaitingForNextMessage():
    d = defer.Deferred()
    s = Session()
    s.client.nextMessage = lambda: d
    s.greet()
    assert not s.clock.getDelayedCalls()
    d.callback(None)
    s.expect("QUIT")
    assert s.clock.getDelayedCalls()


def test_connectionLostMidData():
    m = message("M1", ["a@remote.example", "b@remote.example"], body=b"x" * 200000)
    s = Session(m, message("M2"))
    s.greet()
    s.t.lines()
    s.send("250 Ok", "250 Ok", "550 5.1.1 Unknown", "354 Go")
    s.transport.producer.resumeProducing()  # one chunk only
    assert len(s.transport.value()) == 65536
    s.lose(ierror.ConnectionLost("Connection reset by peer"))
    assert s.resultsOf() == [("a@remote.example", 451, "4.4.2", False), ("b@remote.example", 550, "5.1.1", True)]
    assert "connection lost" in s.done[0][1][0].text
    assert m.files[0].closed and s.transport.producer is None
    assert isinstance(s.result.error, errors.TemporaryFailure)
    assert s.result.messagesAttempted == 1 and s.asked == 1


def test_unreadableBodyAbortsRatherThanEndData():
    m = message("M1", body=b"x" * 100)
    s = Session(m)
    s.greet()
    s.t.lines()
    s.send("250 Ok", "250 Ok", "354 Go")
    m.files[0].read = lambda size: 1 / 0
    s.pumpBody()
    assert s.transport.disconnected
    s.expect()  # never the closing "."
    assert s.resultsOf() == [("a@remote.example", 451, "4.3.0", False)]


def test_lostWhileWaitingForNextMessage():
    """
    The server closes a connection that waits for mail: the wait is
    cancelled and the session ends at once, without an error.
    """
    cancelled = []
    d = defer.Deferred(cancelled.append)
    s = Session()
    s.client.nextMessage = lambda: d
    s.greet()
    s.lose(ierror.ConnectionDone())
    assert cancelled == [d]
    assert s.done == []
    assert s.result.messagesAttempted == 0 and s.result.error is None


def test_421WhileWaitingForNextMessage():
    cancelled = []
    s = Session(message())
    s.greet()
    s.t.lines()
    s.send("250 Ok", "250 Ok", "354 Go")
    s.pumpBody()
    s.t.lines()
    d = defer.Deferred(cancelled.append)
    s.client.nextMessage = lambda: d
    s.send("250 2.0.0 Ok: queued")
    s.send("421 4.4.2 Error: timeout exceeded")
    assert s.transport.disconnecting
    s.lose()
    assert cancelled == [d]
    assert s.resultsOf() == [("a@remote.example", 250, "2.0.0", True)]
    assert s.result.messagesAttempted == 1 and s.result.error is None


def test_messageHandedOutAfterTheConnectionWentIsUnsent():
    """
    A wait that hands out a message all the same (its canceller did): the
    message is reported unsent, to go over another connection.
    """
    m = message()
    d = defer.Deferred(lambda d: d.callback(m))
    s = Session()
    s.client.nextMessage = lambda: d
    s.greet()
    s.lose(ierror.ConnectionLost())
    assert s.resultsOf() == [("a@remote.example", 451, "4.4.2", False)]
    assert s.done[0][1][0].unsent
    assert s.result.messagesAttempted == 1


@pytest.mark.parametrize("replies", [[], ["250 Ok"], ["250 Ok", "250 Ok"]])
def test_lostBeforeDataIsUnsent(replies):
    """
    The server went away before it said 354: the message never left, so
    its results say it is unsent.
    """
    s = Session(message("M1", ["a@remote.example", "b@remote.example"]))
    s.greet()
    s.expect("MAIL FROM:<alice@example.org> SIZE=*", "RCPT TO:<a@remote.example>",
             "RCPT TO:<b@remote.example>", "DATA")
    s.send(*replies)
    s.lose(ierror.ConnectionLost("Connection reset by peer"))
    results = s.done[0][1]
    assert [(r.code, r.remote, r.unsent) for r in results] == [(451, False, True)] * 2
    assert isinstance(s.result.error, errors.TemporaryFailure)


def test_lostAfter354IsNotUnsent():
    s = Session(message())
    s.greet()
    s.t.lines()
    s.send("250 Ok", "250 Ok", "354 Go")
    s.pumpBody()
    s.lose(ierror.ConnectionLost())
    assert [(r.code, r.unsent) for r in s.done[0][1]] == [(451, False)]


def test_failingCallbacksAreContained():
    s = Session(message(), message("M2"))
    s.client.messageDone = lambda message, results: 1 / 0
    s.greet(["SIZE 1"])  # both refused locally; messageDone raises each time
    assert s.asked == 3
    s.expect("QUIT")

    s = Session()
    s.client.nextMessage = lambda: 1 / 0
    s.greet()
    s.expect("QUIT")
    s.send("221 Bye")
    s.lose()
    assert s.result.error is None


def test_deliverOverCannotConnect():
    class Refusing:
        def connect(self, factory):
            return defer.fail(ierror.ConnectionRefusedError("refused"))

    results = []
    deliverOver(task.Clock(), Refusing(), "relay.example.org", lambda: None, None).addCallback(results.append)
    (result,) = results
    assert isinstance(result, SessionResult)
    assert isinstance(result.error, errors.TemporaryFailure) and result.messagesAttempted == 0


# --- against mdpy's own server, over iosim with real TLS ------------------------------


class RawTransport:
    """What the TLS layer writes to: the iosim transport, under the TLS."""

    def __init__(self, transport):
        self._transport = transport

    def write(self, data):
        iosim.FakeTransport.write(self._transport, data)

    def writeSequence(self, data):
        self.write(b"".join(data))

    def loseConnection(self):
        self._transport.loseConnection()

    abortConnection = loseConnection

    def getPeer(self):
        return self._transport.getPeer()

    def getHost(self):
        return self._transport.getHost()


class RealTLSTransport(iosim.FakeTransport):
    """
    An iosim transport whose C{startTLS} runs real TLS in memory, as
    L{twisted.internet._newtls} does over TCP.
    """

    clock = None
    _tlsProtocol = None

    def startTLS(self, options):
        factory = TLSMemoryBIOFactory(options, not self.isServer, None, clock=self.clock)
        self._tlsProtocol = TLSMemoryBIOProtocol(factory, self.protocol, False)
        self.protocol = self._tlsProtocol
        self._tlsProtocol.makeConnection(RawTransport(self))

    def write(self, data):
        if self._tlsProtocol is not None:
            self._tlsProtocol.write(data)
        else:
            iosim.FakeTransport.write(self, data)


def realTLSTransports(isServer, clock):
    """@return: a C{transportFactory} for L{iosim.connectedServerAndClient}."""

    def make(protocol):
        transport = RealTLSTransport(protocol, isServer=isServer)
        transport.clock = clock
        return transport

    return make


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    certificatePath, keyPath, _ = ensureSelfSigned(str(directory), "mx.example.org")
    with open(certificatePath, "rb") as f:
        return serverOptions(certificatePath, keyPath), ssl.Certificate.loadPEM(f.read())


class Pair:
    """An L{ESMTPClient} and mdpy's L{SMTPServer}, connected in memory."""

    def __init__(self, messages, serverTLS, clientTLS, target=None, mode="mta", **kwargs):
        self.clock = task.Clock()
        self.target = target or RecordingTarget()
        self.factory = SMTPFactory(
            "mx.example.org",
            self.target,
            tlsOptions=serverTLS,
            clock=self.clock,
            portal=memoryPortal(**{"alice@example.org": "secret"}),
            mode=mode,
        )
        self.queue = list(messages)
        self.done = []
        self.results = []

        def makeClient():
            client = ESMTPClient(
                "relay.example.org",
                lambda: self.queue.pop(0) if self.queue else None,
                lambda message, results: self.done.append((message, results)),
                tlsOptions=clientTLS,
                clock=self.clock,
                **kwargs,
            )
            client.finished.addCallback(self.results.append)
            return client

        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: self.factory.buildProtocol(None),
            makeClient,
            clientTransportFactory=realTLSTransports(False, self.clock),
            serverTransportFactory=realTLSTransports(True, self.clock),
            clock=self.clock,
        )
        self.pump.flush()


def test_severalMessagesOverSTARTTLSToMdpy(certificate):
    serverTLS, caCertificate = certificate
    bodies = [
        b"Subject: one\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n",
        b"Subject: two\n\nbare LF body\n.\nMAIL FROM:<smuggled@example.net>\n",
        b"Subject: three\r\n\r\n" + (b"y" * 70 + b"\r\n.dotted\r\n") * 3000,
    ]
    messages = [
        message("M1", ["bob@example.org", "nobody@example.org"], body=bodies[0]),
        message("M2", ["carol@example.org"], body=bodies[1], sender=""),
        message("M3", ["dave@example.org"], body=bodies[2], eightBit=True),
    ]
    clientTLS = ssl.optionsForClientTLS("mx.example.org", trustRoot=caCertificate)
    target = RecordingTarget()
    target.recipientErrors["nobody@example.org"] = errors.NotFound("no such user")
    p = Pair(messages, serverTLS, clientTLS, target=target)
    (result,) = p.results
    assert result.error is None and result.tls and not result.tlsFailed
    assert result.messagesAttempted == 3
    assert [[(r.address, r.code, r.enhanced) for r in results] for _, results in p.done] == [
        [("bob@example.org", 250, "2.0.0"), ("nobody@example.org", 550, "5.1.1")],
        [("carol@example.org", 250, "2.0.0")],
        [("dave@example.org", 250, "2.0.0")],
    ]
    stored = p.target.messages
    assert [m.envelope.protocol for m in stored] == ["ESMTPS"] * 3
    assert [m.envelope.sender for m in stored] == ["alice@example.org", "", "alice@example.org"]
    assert [m.recipients for m in stored] == [["bob@example.org"], ["carol@example.org"], ["dave@example.org"]]
    assert stored[2].envelope.body == "8BITMIME" and stored[2].envelope.size == len(bodies[2])
    expected = [bodies[0], bodies[1].replace(b"\n", b"\r\n"), bodies[2]]
    for m, body in zip(stored, expected):
        assert m.data.split(b"\r\n", 3)[3] == body  # after the Received header
    assert p.server.tls


def test_authAgainstMdpySubmission(certificate):
    serverTLS, caCertificate = certificate
    clientTLS = ssl.optionsForClientTLS("mx.example.org", trustRoot=caCertificate)
    p = Pair([message("M1", ["bob@example.org"])], serverTLS, clientTLS,
             credentials=("alice@example.org", "secret"), mode=MODE_SUBMISSION)
    (result,) = p.results
    assert result.error is None and result.tls
    assert p.target.messages[0].envelope.authenticatedAs == "alice@example.org"
    assert p.target.messages[0].envelope.protocol == "ESMTPSA"

    p = Pair([message("M1", ["bob@example.org"])], serverTLS, clientTLS,
             credentials=("alice@example.org", "wrong"), mode=MODE_SUBMISSION)
    (result,) = p.results
    assert isinstance(result.error, errors.TemporaryFailure) and result.reply[0] == 535
    assert p.done == [] and p.target.messages == []


def test_tlsHandshakeFailureAgainstMdpy(certificate):
    serverTLS, caCertificate = certificate
    clientTLS = ssl.optionsForClientTLS("other.example", trustRoot=caCertificate)
    p = Pair([message("M1", ["bob@example.org"])], serverTLS, clientTLS)
    (result,) = p.results
    assert result.tlsFailed and not result.tls
    assert isinstance(result.error, errors.TemporaryFailure)
    assert result.messagesAttempted == 0 and p.done == []
    assert p.target.messages == []


def test_plaintextAgainstMdpyWithoutTLS():
    p = Pair([message("M1", ["bob@example.org"]), message("M2", ["carol@example.org"])], None, None)
    (result,) = p.results
    assert result.error is None and not result.tls and result.messagesAttempted == 2
    assert [m.envelope.protocol for m in p.target.messages] == ["ESMTP", "ESMTP"]


def test_deliverOverAgainstMdpy(certificate):
    serverTLS, caCertificate = certificate
    clock = task.Clock()
    target = RecordingTarget()
    factory = SMTPFactory("mx.example.org", target, tlsOptions=serverTLS, clock=clock)
    pumps = []

    class MemoryEndpoint:
        def connect(self, clientFactory):
            client = clientFactory.buildProtocol(None)
            server = factory.buildProtocol(None)
            serverTransport = realTLSTransports(True, clock)(server)
            clientTransport = realTLSTransports(False, clock)(client)
            pumps.append(iosim.connect(server, serverTransport, client, clientTransport, greet=False, clock=clock))
            return defer.succeed(client)

    queue = [message("M1", ["bob@example.org"])]
    done, results = [], []
    d = deliverOver(clock, MemoryEndpoint(), "relay.example.org",
                    lambda: queue.pop(0) if queue else None,
                    lambda m, r: done.append(r),
                    tlsOptions=ssl.CertificateOptions(verify=False))
    d.addCallback(results.append)
    pumps[0].flush()
    (result,) = results
    assert result.error is None and result.tls and result.messagesAttempted == 1
    assert done[0][0].delivered and len(target.messages) == 1
