"""
Transcript tests of L{mdpy.smtp.server}: the protocol over an in-memory
transport, with a recording delivery target.
"""

import base64
import errno
import hmac
import os

import pytest
from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher

from mdpy import errors
from mdpy.auth.senders import SenderPolicy
from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.backends.files.queue import SpoolQueue
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.smtp.server import MODE_MTA, MODE_SMTPS, MODE_SUBMISSION, SMTPFactory
from mdpy.backends.files.maildir import MaildirStore
from mdpy.testing import RecordingTarget, Transcript, memoryPortal, synchronousRunner

TLS = object()  # stands for server TLS options: TLSStringTransport only records it


class Session:
    def __init__(self, mode=MODE_MTA, tls=True, portal=True, peer="192.0.2.1", **kwargs):
        self.clock = task.Clock()
        self.target = RecordingTarget()
        self.factory = SMTPFactory(
            "mx.example.org",
            self.target,
            portal=memoryPortal(**{"alice@example.org": "secret"}) if portal else None,
            tlsOptions=TLS if tls else None,
            mode=mode,
            clock=self.clock,
            **kwargs,
        )
        self.t = Transcript(self.factory.buildProtocol(None), peer=peer)
        self.t.expect("220 mx.example.org ESMTP mdpy")

    def __getattr__(self, name):
        return getattr(self.t, name)

    def ehlo(self):
        self.t.send("EHLO client.example")
        return self.t.lines()

    def starttls(self):
        self.ehlo()
        self.t.send("STARTTLS")
        self.t.expect("220 2.0.0 Ready to start TLS")
        assert self.t.transport.tlsOptions is TLS
        return self.ehlo()

    def login(self):
        self.starttls()
        self.t.send("AUTH PLAIN " + b64("\0alice@example.org\0secret"))
        self.t.expect("235 2.7.0 *")

    def transaction(self, body=b"Subject: hi\r\n\r\nHello\r\n", rcpt="bob@example.org"):
        self.t.send("MAIL FROM:<alice@example.org>", "RCPT TO:<%s>" % rcpt, "DATA")
        self.t.expect("250 2.1.0 Ok", "250 2.1.5 Ok", "354 *")
        self.t.sendRaw(body + b".\r\n")
        return self.t.lines()


def b64(text):
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def stored(session, index=-1):
    """The body as stored, after the Received header the server adds."""
    data = session.target.messages[index].data
    assert data.startswith(b"Received: from client.example ([192.0.2.1])\r\n")
    return data.split(b"\r\n", 3)[3]


# --- greeting, EHLO, simple commands ------------------------------------------


def test_ehloOffersExtensionsButNoAuthBeforeTLS():
    s = Session()
    lines = s.ehlo()
    assert lines[0] == "250-mx.example.org"
    keywords = [line[4:] for line in lines[1:]]
    assert keywords == [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "STARTTLS",
    ]
    assert lines[-1].startswith("250 ")


def test_authOfferedAfterSTARTTLS():
    s = Session()
    lines = s.starttls()
    assert "250 AUTH PLAIN LOGIN CRAM-MD5" in lines
    assert not any("STARTTLS" in line for line in lines)


def test_implicitTLSOffersAuthAtOnce():
    s = Session(mode=MODE_SMTPS)
    lines = s.ehlo()
    assert "250 AUTH PLAIN LOGIN CRAM-MD5" in lines
    assert not any("STARTTLS" in line for line in lines)


def test_heloNeedsArgument():
    s = Session()
    s.send("HELO")
    s.expect("501 5.5.4 *")
    s.send("HELO client.example")
    s.expect("250 mx.example.org")


def test_simpleCommands():
    s = Session()
    s.send("NOOP", "RSET", "VRFY bob", "EXPN list", "HELP", "FOO bar")
    s.expect("250 2.0.0 Ok", "250 2.0.0 Ok", "502 5.5.1 *", "502 5.5.1 *", "214 2.0.0 *", "500 5.5.2 *")
    s.send("QUIT")
    s.expect("221 2.0.0 Bye")
    assert s.closed


# --- the transaction -----------------------------------------------------------


def test_deliveryAndReceivedHeader():
    s = Session()
    s.ehlo()
    assert s.transaction() == ["250 2.0.0 Ok: queued as " + s.target.messages[0].envelope.messageId]
    message = s.target.messages[0]
    assert message.recipients == ["bob@example.org"]
    assert message.envelope.sender == "alice@example.org"
    assert message.envelope.protocol == "ESMTP"
    assert stored(s) == b"Subject: hi\r\n\r\nHello\r\n"
    assert b"by mx.example.org (mdpy) with ESMTP id " in message.data


def test_dotUnstuffing():
    s = Session()
    s.ehlo()
    s.transaction(b"..leading\r\n.\r\n...\r\nend\r\n")
    assert stored(s) == b".leading\r\n"  # "." alone ended the message
    s = Session()
    s.ehlo()
    s.transaction(b"..leading\r\n..\r\n...x\r\nend\r\n")
    assert stored(s) == b".leading\r\n.\r\n..x\r\nend\r\n"


def test_emptyBody():
    s = Session()
    s.ehlo()
    s.transaction(b"")
    assert stored(s) == b""


def test_sequenceErrors():
    s = Session()
    s.send("MAIL FROM:<a@example.org>")
    s.expect("503 5.5.1 *")
    s.ehlo()
    s.send("RCPT TO:<b@example.org>", "DATA")
    s.expect("503 5.5.1 *", "503 5.5.1 *")
    s.send("MAIL FROM:<a@example.org>", "MAIL FROM:<a@example.org>", "DATA")
    s.expect("250 2.1.0 Ok", "503 5.5.1 Error: nested MAIL command", "554 5.5.1 *")


def test_badAddresses():
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a b@example.org>", "MAIL FROM:a@example.org", "MAIL FROM:<jörg@example.org>")
    s.expect("501 5.1.7 *", "501 5.5.4 *", "501 5.1.7 *")
    s.send("MAIL FROM:<jörg@example.org> SMTPUTF8", "RCPT TO:<bad@@x>", "RCPT TO:<björn@example.org>")
    s.expect("250 2.1.0 Ok", "501 5.1.3 *", "250 2.1.5 Ok")


def test_nullSenderAndPostmaster():
    s = Session(defaultDomain="example.org")
    s.ehlo()
    s.send("MAIL FROM:<>", "RCPT TO:<Postmaster>", "DATA")
    s.expect("250 2.1.0 Ok", "250 2.1.5 Ok", "354 *")
    s.sendRaw(b"x\r\n.\r\n")
    s.expect("250 2.0.0 *")
    assert s.target.messages[0].envelope.sender == ""
    assert s.target.messages[0].recipients == ["postmaster@example.org"]


def test_unknownParameters():
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@example.org> FOO=BAR", "MAIL FROM:<a@example.org> BODY=8BITMIME SIZE=100")
    s.expect("555 5.5.4 *", "250 2.1.0 Ok")
    s.send("RCPT TO:<b@example.org> NOTIFY=NEVER")
    s.expect("555 5.5.4 *")


def test_sizeDeclaredTooBig():
    s = Session(maxMessageSize=1000)
    s.ehlo()
    s.send("MAIL FROM:<a@example.org> SIZE=1001")
    s.expect("552 5.3.4 *")


def test_messageTooBigIsDiscardedNotStored():
    s = Session(maxMessageSize=10000)
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA")
    s.expect("250 *", "250 *", "354 *")
    for i in range(100):
        s.sendRaw(b"x" * 500 + b"\r\n")
    s.sendRaw(b".\r\n")
    s.expect("552 5.3.4 Message size exceeds fixed limit")
    assert s.target.messages == []
    assert s.target.aborted == 1
    assert len(s.protocol._buffer) == 0
    s.send("MAIL FROM:<a@example.org>")
    s.expect("250 2.1.0 Ok")


def test_headerBombIsRefused():
    """
    A header section over maxHeaderSize is refused with 552 5.3.4 and not
    stored, however it is cut into reads; the body does not count, and a
    header just under the limit is accepted.
    """
    s = Session(maxHeaderSize=2000)
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA")
    s.expect("250 *", "250 *", "354 *")
    for i in range(100):
        s.sendRaw(b"To: user%d@example.org\r\n" % (i,))
    s.sendRaw(b"\r\nbody\r\n.\r\n")
    s.expect("552 5.3.4 Message header size exceeds limit")
    assert s.target.messages == []
    header = b"".join(b"X-H%d: v\r\n" % (i,) for i in range(190))
    assert 1900 < len(header) <= 2000
    # The end of the header split between reads, and a large body.
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA")
    s.expect("250 *", "250 *", "354 *")
    s.sendRaw(header + b"\r")
    s.sendRaw(b"\n" + b"y" * 60000 + b"\r\n.\r\n")
    s.expect("250 2.0.0 Ok: queued as *")
    assert stored(s).startswith(header + b"\r\nyyy")
    # A message with no header section at all.
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA")
    s.expect("250 *", "250 *", "354 *")
    s.sendRaw(b"\r\n" + b"z: " * 1000 + b"\r\n.\r\n")
    s.expect("250 2.0.0 Ok: queued as *")


def test_headerBombOverBDAT():
    s = Session(maxHeaderSize=100)
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>")
    s.expect("250 *", "250 *")
    s.sendRaw(b"BDAT 200\r\n" + b"X: " + b"a" * 195 + b"\r\n")
    s.expect("552 5.3.4 Message header size exceeds limit")
    assert s.target.messages == []


def test_recipientErrorsAreMappedPerRecipient():
    s = Session()
    s.ehlo()
    s.target.recipientErrors = {
        "nobody@example.org": errors.NotFound("x"),
        "far@remote.example": errors.RelayDenied("x"),
        "full@example.org": errors.QuotaExceeded("x"),
        "off@example.org": errors.Disabled("x"),
        "later@example.org": errors.TemporaryFailure("x"),
    }
    s.send(
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<nobody@example.org>",
        "RCPT TO:<far@remote.example>",
        "RCPT TO:<full@example.org>",
        "RCPT TO:<off@example.org>",
        "RCPT TO:<later@example.org>",
        "RCPT TO:<bob@example.org>",
    )
    s.expect(
        "250 2.1.0 Ok",
        "550 5.1.1 *",
        "550 5.7.1 Relay access denied",
        "452 4.2.2 *",
        "550 5.2.1 *",
        "451 4.3.0 *",
        "250 2.1.5 Ok",
    )


def test_tooManyRecipients():
    s = Session(maxRecipients=2)
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "RCPT TO:<c@example.org>", "RCPT TO:<d@example.org>")
    s.expect("250 *", "250 *", "250 *", "452 4.5.3 Error: too many recipients")


def test_storeFailureGives451AndNothingStored():
    s = Session()
    s.ehlo()
    s.target.commitError = errors.TemporaryFailure("disk full")
    assert s.transaction() == ["451 4.3.0 Error: local error in processing; try again later"]
    assert s.target.messages == []
    assert s.target.aborted == 1


def test_unexpectedExceptionIsNotATraceback():
    s = Session()
    s.ehlo()
    s.target.commitError = ZeroDivisionError("boom")
    assert s.transaction() == ["451 4.3.0 Error: local error in processing; try again later"]
    assert not s.closed


def test_senderRefused():
    s = Session()
    s.ehlo()
    s.target.startError = errors.PermanentFailure("no")
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>")
    s.expect("554 5.0.0 *", "503 5.5.1 *")


# --- pipelining --------------------------------------------------------------------


def test_pipelinedCommandsWaitForSlowChecks():
    """
    Replies come in order even when the target answers later (RFC 2920).
    """
    s = Session()
    s.ehlo()
    s.target.hold = True
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "RCPT TO:<c@example.org>", "DATA")
    assert s.lines() == []
    s.target.release()
    s.expect("250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "354 *")
    s.sendRaw(b"body\r\n.\r\nMAIL FROM:<x@example.org>\r\n")
    assert s.lines() == []  # the commit is held; MAIL waits for it
    s.target.release()
    s.expect("250 2.0.0 Ok: *", "250 2.1.0 Ok")
    assert stored(s) == b"body\r\n"


def test_contentBefore354IsASyncError():
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA", "Subject: early")
    s.expect("250 *", "250 *", "554 5.5.0 Error: SMTP protocol synchronization")
    assert s.closed
    assert s.target.messages == []


def test_bufferIsPausedWhileBusy():
    s = Session()
    s.ehlo()
    s.target.hold = True
    s.send("MAIL FROM:<a@example.org>")
    s.sendRaw(b"NOOP\r\n" * 60000)
    assert s.transport.producerState == "paused"
    s.target.release()
    assert s.transport.producerState == "producing"
    assert s.lines().count("250 2.0.0 Ok") >= 1


# --- smuggling and line endings -------------------------------------------------------

SMUGGLING = [
    b"\n.\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n.\n",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
]


@pytest.mark.parametrize("marker", SMUGGLING, ids=repr)
def test_smugglingSequencesDoNotEndData(marker):
    s = Session()
    s.ehlo()
    body = (
        b"Subject: one\r\n\r\nTesting"
        + marker
        + b"MAIL FROM:<smuggled@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nNO SMUGGLING\r\n"
    )
    replies = s.transaction(body)
    assert len(replies) == 1 and replies[0].startswith("250 2.0.0 Ok")
    assert len(s.target.messages) == 1
    data = stored(s)
    assert b"NO SMUGGLING" in data
    assert b"MAIL FROM:<smuggled@example.org>" in data
    # Every line ending stored is CR LF.
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")


def storedWhenSplit(payload):
    """
    @return: for each way of cutting C{payload} in two reads, the one message
        stored.
    """
    for cut in range(1, len(payload)):
        s = Session()
        s.ehlo()
        s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA")
        s.lines()
        s.sendRaw(payload[:cut])
        s.sendRaw(payload[cut:])
        assert len(s.target.messages) == 1, cut
        yield stored(s)


def test_noSmugglingAcrossReads():
    """The aiosmtpd case, split at every position."""
    for data in storedWhenSplit(b"Testing\n.\r\nNO SMUGGLING\r\n.\r\n"):
        assert data == b"Testing\r\n.\r\nNO SMUGGLING\r\n"


def test_endOfDataSplitAcrossReads():
    for data in storedWhenSplit(b"a\r\n..b\r\nc\r\n.\r\n"):
        assert data == b"a\r\n.b\r\nc\r\n"


def test_bareLineFeedsAreNormalised():
    s = Session()
    s.ehlo()
    s.transaction(b"a\nb\rc\r\n")
    assert stored(s) == b"a\r\nb\r\nc\r\n"


def sendInReads(s, data, size=8192):
    for i in range(0, len(data), size):
        s.sendRaw(data[i : i + size])


@pytest.mark.parametrize("ending", [b"\n", b"\r"], ids=repr)
def test_longBodyOfBareLineEndsIsStoredWithCRLF(ending):
    """
    A body whose lines end in bare LF (or bare CR), far longer in all than a
    line may be, is no one long line: it is stored with CR LF.
    """
    line = b"a line of text ending in a bare line end" + ending
    body = b"Subject: bare" + ending + ending + line * 5000
    assert len(body) > 200 * 1024
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA")
    s.lines()
    sendInReads(s, body + b"\r\n.\r\n")
    s.expect("250 2.0.0 Ok: queued as *")
    want = body.replace(ending, b"\r\n") + b"\r\n"
    assert stored(s) == want
    assert len(s.protocol._buffer) == 0


def test_longBareLineFeedRunAfterCRLFIsStored():
    """
    Bare LF lines after a CR LF (the last CR LF kept back as the possible
    start of the end of data) are stored too, and do not pile up unread.
    """
    body = b"Subject: mixed\r\n\r\nfirst\r\n" + (b"w" * 100 + b"\n") * 2000
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA")
    s.lines()
    for i in range(0, len(body), 8192):
        s.sendRaw(body[i : i + 8192])
        assert len(s.protocol._buffer) <= s.protocol.maxDataLineLength + 8192
    s.sendRaw(b"\r\n.\r\n")
    s.expect("250 2.0.0 Ok: queued as *")
    assert stored(s) == b"Subject: mixed\r\n\r\nfirst\r\n" + (b"w" * 100 + b"\r\n") * 2000 + b"\r\n"


def test_bareLineEndsStillSplitAnOverlongLine():
    """
    A line of more than maxDataLineLength octets among bare-LF lines is
    still refused.
    """
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA")
    s.lines()
    sendInReads(s, b"short\n" * 1000 + b"L" * 70000 + b"\nshort\n\r\n.\r\n")
    s.expect("500 5.5.2 Error: line too long")
    assert s.target.messages == []


# --- line limits ------------------------------------------------------------------------


def test_overlongCommandLine():
    s = Session()
    s.ehlo()
    s.send("NOOP " + "x" * 20000)
    s.expect("500 5.5.2 Error: line too long")
    s.send("NOOP")
    s.expect("250 2.0.0 Ok")


def test_overlongLineWithoutNewlineIsNotBuffered():
    s = Session()
    s.ehlo()
    for i in range(100):
        s.sendRaw(b"x" * 65536)
    assert len(s.protocol._buffer) <= s.protocol.maxLineLength + 65536
    s.sendRaw(b"\r\nNOOP\r\n")
    lines = s.lines()
    assert lines[-1] == "250 2.0.0 Ok"
    assert set(lines[:-1]) == {"500 5.5.2 Error: line too long"}


@pytest.mark.parametrize("before", [b"", b"Subject: long\r\n\r\n"], ids=["first", "after CR LF"])
def test_overlongDataLine(before):
    """
    An overlong line is refused, and not kept unread meanwhile: neither the
    first line nor one after a CR LF (kept back as the possible start of the
    end of data).
    """
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA")
    s.lines()
    s.sendRaw(before)
    for i in range(40):
        s.sendRaw(b"y" * 8192)
        assert len(s.protocol._buffer) <= s.protocol.maxDataLineLength + 8192
    s.sendRaw(b"\r\nmore\r\n.\r\n")
    s.expect("500 5.5.2 Error: line too long")
    assert s.target.messages == []
    s.send("NOOP")
    s.expect("250 2.0.0 Ok")


def test_longDataLineWithinLimitIsKept():
    s = Session()
    s.ehlo()
    line = b"z" * 5000
    s.transaction(line + b"\r\n")
    assert stored(s) == line + b"\r\n"


# --- errors, timeouts, connection limits --------------------------------------------------


def test_tooManyErrorsCloses():
    s = Session(maxErrors=3)
    s.send("BAD1", "BAD2", "BAD3", "NOOP")
    s.expect("500 *", "500 *", "500 *", "421 4.7.0 Error: too many errors")
    assert s.closed


def test_idleTimeout():
    s = Session(timeout=300)
    s.ehlo()
    s.clock.advance(299)
    assert not s.closed
    s.send("NOOP")
    s.lines()
    s.clock.advance(301)
    s.expect("421 4.4.2 Error: timeout exceeded")
    assert s.closed


def test_connectionLimitPerAddress():
    s1 = Session(maxConnectionsPerIP=1)
    factory = s1.factory
    t2 = Transcript(factory.buildProtocol(None))
    t2.expect("421 4.7.0 Error: too many connections")
    assert t2.closed
    t2.protocol.connectionLost(None)
    s1.protocol.connectionLost(None)
    assert factory.connections == 0 and factory.connectionsByIP == {}
    t3 = Transcript(factory.buildProtocol(None))
    t3.expect("220 *")


# --- STARTTLS ---------------------------------------------------------------------------------


def test_plaintextPipelinedAfterSTARTTLSIsDiscarded():
    s = Session()
    s.ehlo()
    s.send("STARTTLS", "EHLO injected", "MAIL FROM:<evil@example.org>")
    s.expect("220 2.0.0 Ready to start TLS")
    assert s.protocol.helo is None
    s.send("MAIL FROM:<a@example.org>")
    s.expect("503 5.5.1 Error: send HELO/EHLO first")


def test_starttlsResetsTheSession():
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>")
    s.expect("250 *")
    s.send("STARTTLS")
    s.expect("220 *")
    assert s.protocol._envelope is None
    s.send("STARTTLS")
    s.expect("503 5.5.1 Error: TLS already active")


def test_starttlsWithoutCertificate():
    s = Session(tls=False)
    lines = s.ehlo()
    assert not any("STARTTLS" in line for line in lines)
    s.send("STARTTLS")
    s.expect("454 4.7.0 TLS not available")


# --- AUTH -----------------------------------------------------------------------------------


def test_authRequiresTLS():
    s = Session()
    s.ehlo()
    s.send("AUTH PLAIN " + b64("\0alice@example.org\0secret"))
    s.expect("538 5.7.11 *")


def test_submissionRequiresAuthBeforeMail():
    s = Session(mode=MODE_SUBMISSION)
    s.starttls()
    s.send("MAIL FROM:<alice@example.org>")
    s.expect("530 5.7.0 Authentication required")
    s.send("AUTH PLAIN " + b64("\0alice@example.org\0secret"))
    s.expect("235 2.7.0 Authentication successful")
    s.send("MAIL FROM:<alice@example.org>", "RCPT TO:<x@remote.example>")
    s.expect("250 2.1.0 Ok", "250 2.1.5 Ok")
    assert s.protocol._envelope.authenticatedAs == "alice@example.org"
    assert s.protocol._envelope.protocol == "ESMTPSA"


def test_authPlainInTwoSteps():
    s = Session()
    s.starttls()
    s.send("AUTH PLAIN")
    s.expect("334 ")
    s.send(b64("\0alice@example.org\0secret"))
    s.expect("235 2.7.0 *")
    s.send("AUTH PLAIN")
    s.expect("503 5.5.1 Error: already authenticated")


def test_authPlainMalformed():
    s = Session()
    s.starttls()
    s.send("AUTH PLAIN !!!notbase64", "AUTH PLAIN " + b64("no-nuls-here"), "AUTH PLAIN " + b64("\0\0"))
    s.expect("501 5.5.2 *", "501 5.5.2 *", "501 5.5.2 *")
    s.send("AUTH PLAIN")
    s.expect("334 ")
    s.send("*")
    s.expect("501 5.0.0 Authentication cancelled")
    s.send("AUTH KERBEROS_V4")
    s.expect("504 5.5.4 *")
    assert not s.closed


def test_authPlainWrongPasswordAndForeignAuthzid():
    s = Session()
    s.starttls()
    s.send("AUTH PLAIN " + b64("\0alice@example.org\0wrong"))
    s.expect("535 5.7.8 *")
    s.send("AUTH PLAIN " + b64("bob@example.org\0alice@example.org\0secret"))
    s.expect("535 5.7.8 *")


def test_authLogin():
    s = Session()
    s.starttls()
    s.send("AUTH LOGIN")
    s.expect("334 VXNlcm5hbWU6")
    s.send(b64("alice@example.org"))
    s.expect("334 UGFzc3dvcmQ6")
    s.send(b64("secret"))
    s.expect("235 2.7.0 *")


def test_authCramMD5():
    s = Session()
    s.starttls()
    s.send("AUTH CRAM-MD5")
    challenge = base64.b64decode(s.lines()[0][4:])
    digest = hmac.new(b"secret", challenge, "md5").hexdigest()
    s.send(b64("alice@example.org " + digest))
    s.expect("235 2.7.0 *")


def test_failedLoginsAreDelayed():
    from mdpy.auth.checkers import FailedLoginTracker

    s = Session()
    s.factory.loginTracker = FailedLoginTracker(s.clock)
    s.starttls()
    s.send("AUTH PLAIN " + b64("\0alice@example.org\0wrong1"))
    assert s.lines() == []
    s.clock.advance(2)
    s.expect("535 5.7.8 *")
    s.send("AUTH PLAIN " + b64("\0alice@example.org\0wrong2"))
    s.clock.advance(3.9)
    assert s.lines() == []
    s.clock.advance(0.1)
    s.expect("535 5.7.8 *")
    # The same wrong password again is not a new guess: still 4 s, not 8.
    s.send("AUTH PLAIN " + b64("\0alice@example.org\0wrong2"))
    s.clock.advance(4)
    s.expect("535 5.7.8 *")


def test_ipv4MappedClientIsItsIPv4Address():
    """
    An IPv4 client of a dual-stack listener, reported as
    C{::ffff:192.0.2.1}, is C{192.0.2.1} in the Received field, the
    envelope (which SPF checks) and the failed-login counts.
    """
    from mdpy.auth.checkers import FailedLoginTracker

    s = Session(peer="::ffff:192.0.2.1")
    tracker = s.factory.loginTracker = FailedLoginTracker(s.clock)
    s.starttls()
    s.send("AUTH PLAIN " + b64("\0alice@example.org\0wrong"))
    s.clock.advance(2)
    s.expect("535 5.7.8 *")
    assert tracker.delayFor("192.0.2.1") > 0
    s.transaction()
    stored(s)
    assert s.target.messages[-1].envelope.clientAddress == "192.0.2.1"


def test_ipv6ClientInReceived():
    """
    An IPv6 client is named in the Received field by an RFC 5321 IPv6
    address literal.
    """
    s = Session(peer="2001:db8::7")
    s.ehlo()
    s.transaction()
    assert s.target.messages[-1].data.startswith(b"Received: from client.example ([IPv6:2001:db8::7])\r\n")


# --- CHUNKING -----------------------------------------------------------------------------


def test_bdat():
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>")
    s.expect("250 *", "250 *")
    s.sendRaw(b"BDAT 12\r\nSubject: x\r\n")
    s.expect("250 2.0.0 Ok: 12 octets received")
    s.sendRaw(b"BDAT 8 LAST\r\n\r\n.body\n")
    s.expect("250 2.0.0 Ok: queued as *")
    assert stored(s) == b"Subject: x\r\n\r\n.body\r\n"


def test_bdatSplitCarriageReturn():
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>")
    s.lines()
    s.sendRaw(b"BDAT 2\r\na\r")
    s.sendRaw(b"BDAT 3 LAST\r\n\nb\r")
    s.expect("250 *", "250 2.0.0 Ok: queued as *")
    assert stored(s) == b"a\r\nb\r\n"


def test_bdatWithoutRecipientsIsDiscarded():
    s = Session()
    s.ehlo()
    s.sendRaw(b"BDAT 12 LAST\r\nRSET\r\nQUIT\r\nNOOP\r\n")
    s.expect("503 5.5.1 *", "250 2.0.0 Ok")
    assert not s.closed
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>")
    s.sendRaw(b"BDAT 3\r\nabc")
    s.send("DATA")
    s.expect("250 *", "250 *", "250 *", "503 5.5.1 Error: bad sequence of commands")


def test_connectionLostDuringCommitDoesNotAbortIt():
    s = Session()
    s.ehlo()
    s.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA")
    s.lines()
    s.target.hold = True
    s.sendRaw(b"x\r\n.\r\n")
    s.protocol.connectionLost(None)
    assert s.target.aborted == 0
    s.target.release()
    assert len(s.target.messages) == 1


# --- a full disk ----------------------------------------------------------------------------


def fullDisk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def realPipeline(tmp_path):
    """
    The delivery pipeline over a Maildir store and a spool queue, both
    writing in this thread.
    """
    directory = SQLiteDirectory(str(tmp_path / "directory.sqlite"))
    directory.addDomain("example.org")
    directory.addUser("bob@example.org", "pw")
    store = MaildirStore(str(tmp_path / "mail"), runInThread=synchronousRunner)
    store.createAccount("bob@example.org")
    queue = SpoolQueue(str(tmp_path / "queue"), runInThread=synchronousRunner)
    yield DeliveryPipeline(directory, store, queue=queue, spoolDir=str(tmp_path))
    directory.close()


@pytest.mark.parametrize(
    "where, recipient",
    [("mdpy.backends.files.maildir.writeParts", "bob@example.org"), ("mdpy.backends.files.queue.writeAll", "x@remote.example")],
    ids=["store", "queue"],
)
def test_fullDiskGives452InsufficientStorage(realPipeline, monkeypatch, where, recipient):
    """
    A store or queue that runs out of disk space answers 452 4.3.1 (RFC 3463:
    mail system full), not the 451 of other local errors; nothing is kept.
    """
    s = Session(mode=MODE_SUBMISSION)
    s.factory.target = realPipeline
    s.login()
    monkeypatch.setattr(where, fullDisk)
    replies = s.transaction(rcpt=recipient)
    assert replies == ["452 4.3.1 Insufficient system storage"]
    assert realPipeline.queue.entries == {}
    assert list(realPipeline.store.openMailbox("bob@example.org").messages()) == []
    monkeypatch.undo()
    assert s.transaction(rcpt=recipient)[0].startswith("250 2.0.0 Ok: queued as ")


# --- the sender bound to the login ---------------------------------------------------------


@pytest.fixture
def owners(tmp_path):
    """
    A directory: alice with the aliases sales (to her) and team (to her and
    bob), ceo and bob of example.org, carol of other.org.
    """
    directory = SQLiteDirectory(str(tmp_path / "owners.sqlite"))
    directory.addDomain("example.org")
    directory.addDomain("other.org")
    for address in ("alice@example.org", "bob@example.org", "ceo@example.org", "carol@other.org"):
        directory.addUser(address, "pw")
    directory.addAlias("sales@example.org", ["alice@example.org"])
    directory.addAlias("team@example.org", ["alice@example.org", "bob@example.org"])
    directory.addAlias("alice@other.org", ["alice@example.org"])
    yield directory
    directory.close()


def loggedIn(owners, policy="login", mode=MODE_SUBMISSION, **kwargs):
    s = Session(mode=mode, senderPolicy=SenderPolicy(owners, policy), **kwargs)
    s.login()
    return s


def mailFrom(s, *senders):
    """
    @return: the reply to MAIL FROM of each sender, each in its own
        transaction.
    """
    replies = []
    for sender in senders:
        s.send("MAIL FROM:<%s>" % (sender,), "RSET")
        reply, reset = s.lines()
        assert reset == "250 2.0.0 Ok"
        replies.append(reply)
    return replies


REFUSED = "553 5.7.1 Sender address not owned by authenticated user"
OK = "250 2.1.0 Ok"


def test_loginPolicyTakesTheLoginItsAliasesAndSubaddresses(owners):
    s = loggedIn(owners)
    assert mailFrom(
        s,
        "alice@example.org",
        "Alice@Example.ORG",
        "sales@example.org",
        "team@example.org",
        "alice@other.org",
        "alice+tag@example.org",
        "sales+lists@example.org",
    ) == [OK] * 7


def test_loginPolicyRefusesOthers(owners):
    s = loggedIn(owners)
    assert mailFrom(
        s,
        "ceo@example.org",
        "ceo+alice@example.org",
        "bob@example.org",
        "nobody@example.org",
        "carol@other.org",
        "alice@remote.example",
        "+alice@example.org",
        "",
    ) == [REFUSED] * 8
    assert s.target.messages == [] and not s.closed


def test_catchAllOwnsOnlyAddressesOfNoOne(owners):
    owners.setCatchAll("example.org", "alice@example.org")
    s = loggedIn(owners)
    assert mailFrom(s, "nobody@example.org", "ceo@example.org", "ceo+x@example.org") == [OK, REFUSED, REFUSED]


def test_domainPolicyTakesAnyAddressOfTheLoginsDomain(owners):
    s = loggedIn(owners, "domain")
    assert mailFrom(s, "ceo@example.org", "nobody@example.org", "alice@other.org") == [OK] * 3
    assert mailFrom(s, "carol@other.org", "x@remote.example", "") == [REFUSED] * 3


def test_anyPolicyTakesAnySenderAndFrom(owners):
    s = loggedIn(owners, "any")
    assert mailFrom(s, "", "ceo@example.org", "x@remote.example") == [OK] * 3
    s.send("MAIL FROM:<>", "RCPT TO:<bob@example.org>", "DATA")
    s.expect(OK, "250 2.1.5 Ok", "354 *")
    s.sendRaw(b"From: ceo@example.org\r\n\r\nhi\r\n.\r\n")
    s.expect("250 2.0.0 Ok: queued as *")


def test_smtpsAndAuthenticatedPort25AreBound(owners):
    for mode in (MODE_SMTPS, MODE_MTA):
        s = Session(mode=mode, senderPolicy=SenderPolicy(owners, "login"))
        s.starttls() if mode == MODE_MTA else s.ehlo()
        s.send("AUTH PLAIN " + b64("\0alice@example.org\0secret"))
        s.expect("235 2.7.0 *")
        assert mailFrom(s, "ceo@example.org", "alice@example.org") == [REFUSED, OK]


def test_unauthenticatedPort25IsNotBound(owners):
    s = Session(senderPolicy=SenderPolicy(owners, "login"))
    s.ehlo()
    s.send("MAIL FROM:<ceo@example.org>", "RCPT TO:<bob@example.org>", "DATA")
    s.expect(OK, "250 2.1.5 Ok", "354 *")
    s.sendRaw(b"From: The CEO <ceo@example.org>\r\n\r\nhi\r\n.\r\n")
    s.expect("250 2.0.0 Ok: queued as *")


def submit(s, header, sender="alice@example.org", split=None):
    s.send("MAIL FROM:<%s>" % (sender,), "RCPT TO:<bob@example.org>", "DATA")
    s.expect(OK, "250 2.1.5 Ok", "354 *")
    data = header + b"\r\n" + b"body\r\n" * 100 + b".\r\n"
    if split is None:
        s.sendRaw(data)
    else:
        sendInReads(s, data, split)
    [reply] = s.lines()
    return reply


FOREIGN_FROM = [
    b"From: The CEO <ceo@example.org>\r\n",
    b"From: alice@example.org, ceo@example.org\r\nSender: alice@example.org\r\n",
    b"From: alice@example.org\r\nFROM : ceo@example.org\r\n",
    b"Subject: folded\r\nfrom:\r\n =?utf-8?q?Alice?=\r\n <ceo@example.org>\r\n",
    b"From: \"alice@example.org\" <ceo@example.org>\r\n",
    b"From: carol@other.org\r\n",
    b"X-Padding: " + b"p" * 5000 + b"\r\nFrom: ceo@example.org\r\n",
]


@pytest.mark.parametrize("header", FOREIGN_FROM, ids=lambda h: repr(h[-40:]))
def test_foreignFromIsRefusedAfterData(owners, header):
    s = loggedIn(owners)
    assert submit(s, header) == REFUSED
    assert s.target.messages == []
    assert s.target.aborted == 1
    # The session goes on.
    assert submit(s, b"From: Alice <alice@example.org>\r\n").startswith("250 2.0.0 Ok: queued as ")


def test_foreignFromSplitAcrossReads(owners):
    s = loggedIn(owners)
    header = b"Subject: x\r\n" * 50 + b"From: Someone\r\n <ceo@example.org>\r\n"
    for size in (1, 7, 64):
        assert submit(s, header, split=size) == REFUSED
    assert s.target.messages == []


OWN_FROM = [
    b"From: Alice <alice@example.org>\r\n",
    b"From: \"ceo@example.org\" <alice@example.org>\r\n",
    b"From: sales@example.org, Alice <alice+news@example.org>\r\n",
    b"Subject: no From field\r\n",
    b"",
]


@pytest.mark.parametrize("header", OWN_FROM, ids=repr)
def test_ownFromIsAccepted(owners, header):
    s = loggedIn(owners)
    assert submit(s, header).startswith("250 2.0.0 Ok: queued as ")
    assert len(s.target.messages) == 1


def test_fromBodyLineIsNotAField(owners):
    s = loggedIn(owners)
    assert submit(s, b"From: alice@example.org\r\n\r\nFrom: ceo@example.org\r\n").startswith("250 ")


def test_domainPolicyChecksFromToo(owners):
    s = loggedIn(owners, "domain")
    assert submit(s, b"From: ceo@example.org\r\n").startswith("250 ")
    assert submit(s, b"From: carol@other.org\r\n") == REFUSED


def test_foreignFromOverBDAT(owners):
    s = loggedIn(owners)
    s.send("MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.org>")
    s.expect(OK, "250 2.1.5 Ok")
    first = b"Subject: chunked\r\nFrom: Ali"
    last = b"ce <ceo@example.org>\r\n\r\nbody\r\n"
    s.sendRaw(b"BDAT %d\r\n" % len(first) + first)
    s.expect("250 2.0.0 Ok: *")
    s.sendRaw(b"BDAT %d LAST\r\n" % len(last) + last)
    s.expect(REFUSED)
    assert s.target.messages == []


def test_acceptedLogLineNamesTheLogin(owners):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        s = loggedIn(owners)
        submit(s, b"From: alice@example.org\r\n")
        submit(s, b"From: ceo@example.org\r\n")
        mailFrom(s, "ceo@example.org")
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("mdpy.smtp")]
    [accepted] = [line for line in lines if "accepted" in line]
    assert accepted.endswith(" proto=ESMTPSA sasl_username=alice@example.org")
    [notStored] = [line for line in lines if "not stored" in line]
    assert "sasl_username=alice@example.org: From <ceo@example.org> is not owned by alice@example.org" in notStored
    [refused] = [line for line in lines if "sender <ceo@example.org> refused" in line]
    assert "sasl_username=alice@example.org" in refused


def test_receivedNamesTheLoginOnlyWhenAsked(owners):
    s = loggedIn(owners)
    submit(s, b"From: alice@example.org\r\n")
    data = s.target.messages[0].data
    assert b"(authenticated sender);" in data
    assert b"alice" not in data.split(b"\r\n\r\n")[0].split(b"From:")[0]
    s = loggedIn(owners, receivedAuth=True)
    submit(s, b"From: alice@example.org\r\n")
    assert b"\r\n\t(authenticated as alice@example.org);\r\n" in s.target.messages[0].data
