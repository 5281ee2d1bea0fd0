"""
Tests of L{mdpy.odmr.customer}: transcripts over an in-memory transport for
each reply a provider can give, and whole releases over loopback against a
scripted provider playing RFC 2645's side (plaintext, STARTTLS and implicit
TLS with verified certificates), delivering through the real pipeline.
"""

import base64
import hashlib
import hmac

from twisted.internet import defer, error as ierror, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.collect.periodic import CycleBusy
from mdpy.logs import Logger
from mdpy.odmr.customer import (
    ODMRAccount,
    ODMRClientService,
    ODMRCustomer,
    ReleaseReport,
    cramMD5Response,
    release,
)
from mdpy.smtp.server import SMTPFactory
from mdpy.backends.memory import MemoryStore
from mdpy.testing import LoopbackTestCase, RecordingTarget, TempDirTestCase, TLSStringTransport, Transcript, resultOf
from mdpy.tls import ensureSelfSigned, serverOptions
from tests.test_pop3_client import LoopbackReactor

HOST = "customer.example.org"
USER = "example.org"
PASSWORD = "tanstaaf-s3cret"
CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
TLS_OPTIONS = object()  # stands for client TLS options: TLSStringTransport records them

MESSAGE_1 = b"From: Lester.Tester@dot.foo.bar\r\nSubject: first\r\n\r\nHello joe.\r\n..a dot\r\n"
MESSAGE_2 = b"From: Lester.Tester@dot.foo.bar\r\nSubject: second\r\n\r\nHello ann.\r\n"


def expectedResponse(challenge=CHALLENGE):
    # RFC 2195, computed here independently of the module.
    digest = hmac.new(PASSWORD.encode(), challenge, hashlib.md5).hexdigest()
    return base64.b64encode(("%s %s" % (USER, digest)).encode()).decode()


def makePipeline(directory):
    users = SQLiteDirectory(directory + "/directory.sqlite")
    users.addDomain("example.org")
    users.addDomain("example.com")
    users.addUser("joe@example.org", "pw")
    users.addUser("ann@example.com", "pw")
    return DeliveryPipeline(users, MemoryStore(), spoolDir=directory)


def inbox(pipeline, address):
    return [resultOf(m.read()) for m in pipeline.store.openMailbox(address).messages()]


def account(host="odmr.isp.test", **kwargs):
    settings = dict(tls="none", username=USER, password=PASSWORD, domains=("example.org", "example.com"))
    settings.update(kwargs)
    return ODMRAccount("isp", host, **settings)


class RecordingTransport(TLSStringTransport):
    """Keeps everything ever written, to check no secret went out."""

    def __init__(self, *args, **kwargs):
        TLSStringTransport.__init__(self, *args, **kwargs)
        self.everything = b""

    def write(self, data):
        self.everything += data
        TLSStringTransport.write(self, data)


class Customer:
    """
    An L{ODMRCustomer} over a string transport; C{send} plays the provider,
    C{expect} checks what the customer (and, after the turnaround, its SMTP
    server) wrote.
    """

    def __init__(self, target=None, **kwargs):
        self.clock = task.Clock()
        self.account = account(**kwargs)
        self.target = target if target is not None else RecordingTarget()
        self.factory = SMTPFactory(HOST, self.target, clock=self.clock)
        tlsOptions = TLS_OPTIONS if self.account.tls == "starttls" else None
        self.customer = ODMRCustomer(self.account, self.factory, HOST, self.clock, tlsOptions=tlsOptions)
        self.reports = []
        self.customer.finished.addCallback(self.reports.append)
        self.transport = RecordingTransport(peerAddress=IPv4Address("TCP", "192.0.2.66", 366))
        self.t = Transcript(self.customer, self.transport)

    def send(self, *lines):
        self.t.send(*lines)

    def sendRaw(self, data):
        self.t.sendRaw(data)

    def expect(self, *patterns):
        return self.t.expect(*patterns)

    def ehlo(self, *keywords):
        lines = ["EXAMPLE.NET"] + list(keywords)
        self.send(*("250%s%s" % ("-" if i < len(lines) - 1 else " ", line) for i, line in enumerate(lines)))

    def greet(self, *keywords):
        self.send("220 EXAMPLE.NET on-demand mail relay server ready")
        self.expect("EHLO " + HOST)
        self.ehlo(*keywords)

    def login(self, *keywords):
        """Greeting, EHLO, CRAM-MD5: up to the ATRN command (returned)."""
        self.greet(*(keywords or ("AUTH CRAM-MD5 EXTERNAL", "ATRN")))
        self.expect("AUTH CRAM-MD5")
        self.send("334 " + base64.b64encode(CHALLENGE).decode())
        self.expect(expectedResponse())
        self.send("235 now authenticated as example.org")
        return self.t.lines()

    def turnAround(self, *pipelined):
        self.login()
        self.send("250 OK now reversing the connection", *pipelined)

    def lose(self, reason=None):
        self.customer.connectionLost(Failure(reason or ierror.ConnectionDone()))

    @property
    def report(self):
        assert len(self.reports) == 1, self.reports
        return self.reports[0]

    def quitAndClose(self):
        self.expect("QUIT")
        self.send("221 2.0.0 Bye")
        assert self.transport.disconnecting
        self.lose()
        return self.report


class TranscriptTests(TempDirTestCase):
    def test_cramMD5OfRFC2195(self):
        self.assertEqual(
            cramMD5Response(b"tim", b"tanstaaftanstaaf", CHALLENGE),
            b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw",
        )

    def test_noMail(self):
        c = Customer()
        self.assertEqual(c.login(), ["ATRN example.org,example.com"])
        c.send("453 You have no mail")
        report = c.quitAndClose()
        self.assertEqual((report.outcome, report.error, report.messages), ("no mail", None, 0))
        self.assertEqual(report.summary(), "odmr/isp: no mail waiting")
        self.assertNotIn(PASSWORD.encode(), c.transport.everything)

    def test_refusedATRN(self):
        for reply in ("450 ATRN request refused", "451 Unable to process ATRN request now",
                      "502 5.5.1 Command not implemented", "530 5.7.0 Authentication required",
                      "554 what"):
            c = Customer()
            c.login()
            c.send(reply)
            report = c.quitAndClose()
            self.assertEqual(report.error, "ATRN refused: " + reply)
            self.assertIsNone(report.outcome)
            self.assertEqual(report.summary(), "odmr/isp: failed: ATRN refused: " + reply)
            self.assertEqual(c.target.messages, [])

    def test_bareATRNWithoutDomains(self):
        c = Customer(domains=())
        self.assertEqual(c.login(), ["ATRN"])

    def test_ehloWithoutATRNOrAUTH(self):
        for keywords, why in ((["AUTH CRAM-MD5", "SIZE"], "server does not offer ATRN"),
                              (["ATRN"], "server does not offer AUTH, which RFC 2645 requires")):
            c = Customer()
            c.greet(*keywords)
            self.assertEqual(c.quitAndClose().error, why)

    def test_greetingOrEhloRefused(self):
        c = Customer()
        c.send("554 5.7.1 go away")
        self.assertEqual(c.quitAndClose().error, "greeting refused: 554 5.7.1 go away")
        c = Customer()
        c.send("220 hi")
        c.expect("EHLO " + HOST)
        c.send("502 no EHLO here")
        self.assertEqual(c.quitAndClose().error, "EHLO refused: 502 no EHLO here")

    def test_authenticationRefused(self):
        c = Customer()
        c.greet("AUTH CRAM-MD5", "ATRN")
        c.expect("AUTH CRAM-MD5")
        c.send("334 " + base64.b64encode(CHALLENGE).decode())
        c.expect(expectedResponse())
        c.send("535 5.7.8 Error: authentication failed")
        self.assertEqual(c.quitAndClose().error, "authentication failed: 535 5.7.8 Error: authentication failed")

    def test_malformedChallengeAborts(self):
        c = Customer()
        c.greet("AUTH CRAM-MD5", "ATRN")
        c.expect("AUTH CRAM-MD5")
        c.send("334 not base64!")
        c.expect()
        self.assertTrue(c.transport.disconnected)  # aborted
        c.lose()
        self.assertEqual(c.report.error, "malformed CRAM-MD5 challenge")

    def test_starttlsNotOfferedSendsNoCredentials(self):
        c = Customer(tls="starttls")
        c.greet("AUTH CRAM-MD5 PLAIN", "ATRN")
        report = c.quitAndClose()
        self.assertEqual(report.error, "server offers no STARTTLS; not authenticating")
        self.assertNotIn(b"AUTH", c.transport.everything)
        self.assertIsNone(c.transport.tlsOptions)

    def test_starttlsRefused(self):
        c = Customer(tls="starttls")
        c.greet("STARTTLS")
        c.expect("STARTTLS")
        c.send("454 4.7.0 TLS not available")
        self.assertEqual(c.quitAndClose().error,
                         "STARTTLS refused: 454 4.7.0 TLS not available; not authenticating")

    def test_starttlsDiscardsInjectedReplies(self):
        c = Customer(tls="starttls")
        c.greet("STARTTLS", "AUTH CRAM-MD5", "ATRN")
        c.expect("STARTTLS")
        # A forged EHLO reply (offering PLAIN only) rides with the 220.
        c.sendRaw(b"220 2.0.0 Ready to start TLS\r\n250-EXAMPLE.NET\r\n250-AUTH PLAIN\r\n250 ATRN\r\n")
        self.assertIs(c.transport.tlsOptions, TLS_OPTIONS)
        c.expect("EHLO " + HOST)
        # The real one, over TLS: PLAIN is fine now.
        c.ehlo("AUTH PLAIN", "ATRN")
        plain = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD.encode()).decode()
        c.expect("AUTH PLAIN " + plain)
        c.send("235 2.7.0 ok")
        c.expect("ATRN example.org,example.com")
        c.send("453 You have no mail")
        self.assertEqual(c.quitAndClose().outcome, "no mail")

    def test_plainOnlyWithoutTLSSendsNothing(self):
        c = Customer()
        c.greet("AUTH PLAIN LOGIN", "ATRN")
        report = c.quitAndClose()
        self.assertEqual(report.error, "no AUTH mechanism usable without TLS (offered: PLAIN LOGIN)")
        self.assertNotIn(b"AUTH", c.transport.everything)
        self.assertNotIn(PASSWORD.encode(), c.transport.everything)

    def test_badReplies(self):
        cases = [
            (b"hello there\r\n", "protocol error: malformed reply 'hello there'"),
            (b"220 " + b"x" * 5000, "protocol error: reply line longer than 4096 octets"),
            (b"220 " + b"x" * 4200 + b"\r\n", "protocol error: reply line longer than 4096 octets"),
            (b"220-a\r\n" * 100 + b"220 b\r\n", "protocol error: reply longer than 100 lines"),
            (b"220-a\r\n250 b\r\n", "protocol error: codes 220 and 250 in one reply"),
            (b"220 hi\r\n250 early\r\n", "protocol error: input before EHLO was sent"),
            (b"354 go on\r\n", "protocol error: reply 354 go on to greeting"),
        ]
        for data, why in cases:
            c = Customer()
            c.sendRaw(data)
            c.t.lines()
            self.assertTrue(c.transport.disconnected, why)  # aborted, no QUIT
            self.assertNotIn(b"QUIT", c.transport.everything)
            c.sendRaw(b"220 more\r\n")  # ignored
            self.assertEqual(c.t.lines(), [])
            c.lose()
            self.assertEqual(c.report.error, why)

    def test_longestAcceptedReply(self):
        c = Customer()
        c.sendRaw(b"220-" + b"x" * 4092 + b"\r\n" + b"220-a\r\n" * 98 + b"220 ok\r\n")
        c.expect("EHLO " + HOST)

    def test_atrnReplyNeverComes(self):
        c = Customer()
        c.login()
        c.clock.advance(599)
        self.assertFalse(c.transport.disconnecting)
        c.clock.advance(1)
        self.assertTrue(c.transport.disconnected)
        c.lose()
        self.assertEqual(c.report.error, "timed out after 600 s waiting for the reply to ATRN")
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_otherRepliesTimeOutSooner(self):
        c = Customer()
        c.clock.advance(60)
        self.assertTrue(c.transport.disconnected)
        c.lose()
        self.assertEqual(c.report.error, "timed out after 60 s waiting for the greeting")
        c = Customer(timeout=30)
        c.send("220 hi")
        c.clock.advance(30)
        c.lose()
        self.assertEqual(c.report.error, "timed out after 30 s waiting for the reply to EHLO")

    def test_connectionLostBeforeTurnaround(self):
        c = Customer()
        c.login()
        c.lose(ierror.ConnectionLost("gone"))
        self.assertTrue(c.report.error.startswith("connection lost: "))
        self.assertIsNone(c.report.outcome)

    def test_turnaroundTakesPipelinedInput(self):
        c = Customer()
        c.turnAround("EHLO EXAMPLE.NET")
        lines = c.t.lines()
        self.assertEqual(lines[0], "220 %s ESMTP mdpy" % (HOST,))
        self.assertEqual(lines[1], "250-" + HOST)
        self.assertTrue(lines[-1].startswith("250 "))
        self.assertNotIn("AUTH", " ".join(lines))  # an MTA session with no portal
        session = c.customer.session
        self.assertEqual((session.helo, session.tls, session.clientAddress), ("EXAMPLE.NET", False, "192.0.2.66"))
        self.assertEqual(c.factory.connections, 1)
        c.send("QUIT")
        c.expect("221 2.0.0 Bye")
        c.lose()
        self.assertEqual(c.factory.connections, 0)
        self.assertEqual(c.report.summary(), "odmr/isp: released, 0 messages received")
        self.assertEqual(c.report.lines, [])
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_relayAttemptIsRefused(self):
        pipeline = makePipeline(self.tempDir())
        c = Customer(pipeline)
        c.turnAround()
        c.expect("220 *")
        c.send("EHLO EXAMPLE.NET")
        c.t.lines()
        c.send("MAIL FROM:<spammer@dot.foo.bar>", "RCPT TO:<victim@elsewhere.test>",
               "RCPT TO:<joe@example.org>", "RCPT TO:<nobody@example.org>")
        c.expect("250 2.1.0 Ok", "550 5.7.1 Relay access denied", "250 2.1.5 Ok",
                 "550 5.1.1 Recipient address rejected: user unknown")
        c.send("DATA")
        c.expect("354 *")
        c.sendRaw(MESSAGE_1 + b".\r\n")
        c.expect("250 2.0.0 Ok: queued as *")
        c.send("QUIT")
        c.expect("221 *")
        c.lose()
        self.assertEqual(c.report.messages, 1)
        [stored] = inbox(pipeline, "joe@example.org")
        self.assertIn(b"\r\nX-Rcpt-To: joe@example.org\r\n", stored)

    def test_providerDropsInTheMiddleOfAMessage(self):
        pipeline = makePipeline(self.tempDir())
        c = Customer(pipeline)
        c.turnAround("EHLO EXAMPLE.NET")
        c.t.lines()
        c.send("MAIL FROM:<a@dot.foo.bar>", "RCPT TO:<joe@example.org>", "DATA")
        c.expect("250 *", "250 *", "354 *")
        c.sendRaw(MESSAGE_1 + b".\r\n")
        [queued] = c.expect("250 2.0.0 Ok: queued as *")
        c.send("MAIL FROM:<a@dot.foo.bar>", "RCPT TO:<ann@example.com>", "DATA")
        c.expect("250 *", "250 *", "354 *")
        c.sendRaw(MESSAGE_2[:30])
        self.assertEqual(c.reports, [])
        c.lose(ierror.ConnectionLost("provider crashed"))
        report = c.report
        self.assertEqual((report.outcome, report.messages, report.error), ("released", 1, None))
        messageId = queued.rsplit(" ", 1)[1]
        self.assertEqual(report.lines, [
            "received %s from <a@dot.foo.bar> for 1 recipient" % (messageId,),
            "the provider left without QUIT, in the middle of a message (not accepted)",
        ])
        self.assertEqual(len(inbox(pipeline, "joe@example.org")), 1)
        self.assertEqual(inbox(pipeline, "ann@example.com"), [])
        self.assertEqual(c.factory.connections, 0)

    def test_reportWaitsForACommitInProgress(self):
        target = RecordingTarget()
        c = Customer(target)
        c.turnAround("EHLO EXAMPLE.NET")
        c.t.lines()
        c.send("MAIL FROM:<a@dot.foo.bar>", "RCPT TO:<joe@example.org>", "DATA")
        c.expect("250 *", "250 *", "354 *")
        target.hold = True
        c.sendRaw(MESSAGE_1 + b".\r\n")
        c.lose()
        self.assertEqual(c.reports, [])
        target.release()
        self.assertEqual(c.report.messages, 1)
        self.assertEqual(len(target.messages), 1)

    def test_account(self):
        a = ODMRAccount("isp", "odmr.isp.test", password="hidden", domains="Example.ORG, example.com.")
        self.assertEqual((a.port, a.tls, a.verify, a.timeout, a.atrnTimeout), (366, "starttls", True, 60, 600))
        self.assertEqual(a.domains, ("example.org", "example.com"))
        self.assertEqual(a.label, "isp (odmr.isp.test:366)")
        self.assertEqual(ODMRAccount("v6", "::1", 1366).label, "v6 ([::1]:1366)")
        self.assertNotIn("hidden", repr(a))
        self.assertEqual(ODMRAccount("i", "h", domains=["bücher.example"]).domains, ("xn--bcher-kva.example",))
        for kwargs in (dict(tls="ssl"), dict(timeout=0), dict(atrnTimeout=-1), dict(port=0),
                       dict(domains=["nodot"]), dict(domains=["a b.example"]), dict(domains=["-x.example"])):
            self.assertRaises(ValueError, ODMRAccount, "n", "h", **kwargs)

    def test_reportSummary(self):
        report = ReleaseReport("odmr/x")
        self.assertEqual(report.summary(), "odmr/x: not run")
        report.outcome, report.messages = "released", 1
        self.assertEqual(report.summary(), "odmr/x: released, 1 message received")

    def test_configurationErrorsNeedNoConnection(self):
        loopback = LoopbackReactor(task.Clock())
        factory = SMTPFactory(HOST, RecordingTarget(), clock=task.Clock())
        for kwargs, why in ((dict(username=""), "no username configured"),
                            (dict(password="a\r\nQUIT"), "the password contains a line break or NUL"),
                            (dict(tls="implicit", caFile=self.tempDir() + "/missing.pem"),
                             "cannot read ca_file")):
            report = self.successResultOf(release(account(**kwargs), factory, loopback, HOST))
            self.assertTrue(report.error.startswith(why), report.error)
        self.assertEqual(loopback.connectors, [])


# --- over loopback, against a scripted provider -------------------------------------------


class FakeProvider(protocol.Protocol):
    """
    RFC 2645's provider, scripted by its factory: greeting, EHLO, STARTTLS,
    AUTH CRAM-MD5 or PLAIN against a known password, ATRN; after C{250} to
    ATRN it is the SMTP client, sending the next item of C{script} after
    each complete reply of the customer.
    """

    def connectionMade(self):
        self.factory.open += 1
        self.buffer = b""
        self.tls = self.factory.implicit
        self.reversed = False
        self.cram = False
        self.script = list(self.factory.script)
        self.transport.write(b"220 EXAMPLE.NET on-demand mail relay server ready\r\n")

    def connectionLost(self, reason):
        self.factory.open -= 1

    def dataReceived(self, data):
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if self.reversed:
                self.replyReceived(line)
            else:
                self.commandReceived(line)

    def commandReceived(self, line):
        factory = self.factory
        factory.received.append(line)
        if self.cram:
            self.cram = False
            user, _, digest = base64.b64decode(line).rpartition(b" ")
            good = hmac.new(PASSWORD.encode(), CHALLENGE, hashlib.md5).hexdigest().encode()
            self.authenticated(user == USER.encode() and hmac.compare_digest(digest, good))
            return
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        if verb == b"EHLO":
            keywords = factory.ehloTLS if self.tls else factory.ehlo
            lines = [b"EXAMPLE.NET"] + keywords
            self.transport.write(b"".join(
                b"250" + (b"-" if i < len(lines) - 1 else b" ") + l + b"\r\n" for i, l in enumerate(lines)))
        elif verb == b"STARTTLS":
            self.transport.write(b"220 2.0.0 Ready to start TLS\r\n")
            self.transport.startTLS(factory.tlsOptions)
            self.tls = True
        elif verb == b"AUTH" and argument.upper() == b"CRAM-MD5":
            self.cram = True
            self.transport.write(b"334 " + base64.b64encode(CHALLENGE) + b"\r\n")
        elif verb == b"AUTH" and argument[:6].upper() == b"PLAIN ":
            self.authenticated(self.tls and base64.b64decode(argument[6:]) == b"\0%s\0%s" % (
                USER.encode(), PASSWORD.encode()))
        elif verb == b"ATRN":
            if not factory.authenticated:
                self.transport.write(b"530 5.7.0 Authentication required\r\n")
                return
            self.transport.write(factory.atrnReply)
            self.reversed = factory.atrnReply.startswith(b"250")
        elif verb == b"QUIT":
            self.transport.write(b"221 EXAMPLE.NET closing connection\r\n")
            self.transport.loseConnection()
        else:
            self.transport.write(b"502 5.5.1 Command not implemented\r\n")

    def authenticated(self, good):
        self.factory.authenticated = good
        self.transport.write(b"235 now authenticated as example.org\r\n" if good else b"535 5.7.8 no\r\n")

    def replyReceived(self, line):
        self.factory.replies.append(line)
        if line[3:4] != b"-" and self.script:
            self.transport.write(self.script.pop(0))


class FakeProviderFactory(protocol.ServerFactory):
    protocol = FakeProvider
    noisy = False

    def __init__(self, ehlo=(b"AUTH CRAM-MD5 EXTERNAL", b"ATRN"), ehloTLS=None, atrnReply=b"453 You have no mail\r\n",
                 script=(), tlsOptions=None, implicit=False):
        self.ehlo = list(ehlo)
        self.ehloTLS = list(ehloTLS or ehlo)
        self.atrnReply = atrnReply
        self.script = list(script)
        self.tlsOptions = tlsOptions
        self.implicit = implicit
        self.received = []
        self.replies = []
        self.authenticated = False
        self.open = 0


def deliveryScript(*messages):
    """
    @return: what the provider sends after the customer's 220: EHLO, each
        C{(sender, [recipients], data)}, QUIT.
    """
    script = [b"EHLO EXAMPLE.NET\r\n"]
    for sender, recipients, data in messages:
        script.append(b"MAIL FROM:<%s>\r\n" % (sender,))
        script.extend(b"RCPT TO:<%s>\r\n" % (r,) for r in recipients)
        script.extend([b"DATA\r\n", data + b".\r\n"])
    script.append(b"QUIT\r\n")
    return script


class LoopbackTests(LoopbackTestCase):
    def setUp(self):
        self.reactor = LoopbackReactor()
        self.pipeline = makePipeline(self.tempDir())
        self.serverFactory = SMTPFactory(HOST, self.pipeline)
        self.addCleanup(lambda: defer.ensureDeferred(self.until(
            lambda: all(c.state == "disconnected" for c in self.reactor.connectors), "connections to close")))

    def listen(self, factory, tlsOptions=None):
        return LoopbackTestCase.listen(self, factory, tlsOptions, lambda: factory.open)

    def certificate(self, hostname="odmr.test"):
        """@return: (serverOptions, caFile) of a new self-signed certificate."""
        directory = self.tempDir()
        certPath, keyPath, _ = ensureSelfSigned(directory, hostname)
        return serverOptions(certPath, keyPath), certPath

    def release(self, port, **kwargs):
        return release(account(port=port, **kwargs), self.serverFactory, self.reactor, HOST)

    def captureLog(self):
        events = []
        previous = Logger.minimum
        Logger.minimum = LogLevel.debug
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.addCleanup(setattr, Logger, "minimum", previous)
        return events

    async def test_releaseIntoThePipeline(self):
        events = self.captureLog()
        provider = FakeProviderFactory(
            atrnReply=b"250 OK now reversing the connection\r\n",
            script=deliveryScript((b"Lester.Tester@dot.foo.bar", [b"joe@example.org"], MESSAGE_1),
                                  (b"Lester.Tester@dot.foo.bar", [b"ann@example.com"], MESSAGE_2)),
        )
        report = await self.release(self.listen(provider), host="127.0.0.1")
        self.assertEqual(provider.received, [
            b"EHLO " + HOST.encode(),
            b"AUTH CRAM-MD5",
            expectedResponse().encode(),
            b"ATRN example.org,example.com",
        ])
        self.assertTrue(provider.replies[0].startswith(b"220 " + HOST.encode()))
        self.assertEqual(provider.replies[-1], b"221 2.0.0 Bye")
        self.assertEqual(len([r for r in provider.replies if r.startswith(b"250 2.0.0 Ok: queued as")]), 2)
        self.assertEqual((report.outcome, report.messages, report.error), ("released", 2, None))
        self.assertEqual(report.summary(), "odmr/isp: released, 2 messages received")
        self.assertEqual(len(report.lines), 2)
        self.assertTrue(all(line.endswith(" from <Lester.Tester@dot.foo.bar> for 1 recipient")
                            for line in report.lines))
        [joe] = inbox(self.pipeline, "joe@example.org")
        [ann] = inbox(self.pipeline, "ann@example.com")
        self.assertTrue(joe.startswith(b"Return-Path: <Lester.Tester@dot.foo.bar>\r\n"
                                       b"X-MDRcpt-To: joe@example.org\r\nX-Rcpt-To: joe@example.org\r\n"
                                       b"Received: from EXAMPLE.NET ([127.0.0.1])\r\n\tby customer.example.org"
                                       b" (mdpy) with ESMTP id "))
        self.assertTrue(joe.endswith(MESSAGE_1.replace(b"..a dot", b".a dot")))
        self.assertIn(b"\r\nX-Rcpt-To: ann@example.com\r\n", ann)
        self.assertTrue(ann.endswith(MESSAGE_2))
        self.assertEqual(self.serverFactory.connections, 0)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("turns the connection around", text)
        self.assertNotIn(PASSWORD, text)
        self.assertNotIn(expectedResponse(), text)

    async def test_starttlsWithVerifiedCertificate(self):
        options, caFile = self.certificate()
        provider = FakeProviderFactory(
            ehlo=[b"STARTTLS"], ehloTLS=[b"AUTH PLAIN", b"ATRN"], tlsOptions=options,
            atrnReply=b"250 OK now reversing the connection\r\n",
            script=deliveryScript((b"a@dot.foo.bar", [b"joe@example.org"], MESSAGE_1)),
        )
        report = await self.release(self.listen(provider), host="odmr.test", tls="starttls", caFile=caFile)
        self.assertEqual(report.summary(), "odmr/isp: released, 1 message received")
        plain = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD.encode())
        self.assertEqual(provider.received, [
            b"EHLO " + HOST.encode(), b"STARTTLS", b"EHLO " + HOST.encode(),
            b"AUTH PLAIN " + plain, b"ATRN example.org,example.com",
        ])
        [joe] = inbox(self.pipeline, "joe@example.org")
        self.assertIn(b" (mdpy) with ESMTPS id ", joe)  # the TLS of the connection is kept

    async def test_starttlsUnverifiedNeverAuthenticates(self):
        options, caFile = self.certificate()
        otherOptions, otherCA = self.certificate()
        for host, ca in (("other.test", caFile), ("odmr.test", otherCA)):
            provider = FakeProviderFactory(ehlo=[b"STARTTLS"], ehloTLS=[b"AUTH PLAIN", b"ATRN"],
                                           tlsOptions=options)
            report = await self.release(self.listen(provider), host=host, tls="starttls", caFile=ca)
            self.assertTrue(report.error.startswith("TLS handshake failed: "), report.error)
            self.assertIsNone(report.outcome)
            await self.until(lambda: not provider.open)
            self.assertEqual(provider.received, [b"EHLO " + HOST.encode(), b"STARTTLS"])

    async def test_unverifiedWhenConfigured(self):
        options, caFile = self.certificate()
        provider = FakeProviderFactory(ehlo=[b"STARTTLS"], ehloTLS=[b"AUTH CRAM-MD5", b"ATRN"], tlsOptions=options)
        report = await self.release(self.listen(provider), host="other.test", tls="starttls", verify=False)
        self.assertEqual(report.summary(), "odmr/isp: no mail waiting")

    async def test_implicitTLS(self):
        options, caFile = self.certificate()
        provider = FakeProviderFactory(
            ehlo=[b"AUTH PLAIN", b"ATRN"], implicit=True,
            atrnReply=b"250 OK now reversing the connection\r\n",
            script=deliveryScript((b"a@dot.foo.bar", [b"ann@example.com"], MESSAGE_2)),
        )
        port = self.listen(provider, options)
        report = await self.release(port, host="odmr.test", tls="implicit", caFile=caFile)
        self.assertEqual(report.summary(), "odmr/isp: released, 1 message received")
        self.assertEqual(provider.received[1][:11], b"AUTH PLAIN ")
        [ann] = inbox(self.pipeline, "ann@example.com")
        self.assertIn(b" with ESMTPS id ", ann)

        provider.received = []
        otherOptions, otherCA = self.certificate()
        report = await self.release(port, host="odmr.test", tls="implicit", caFile=otherCA)
        self.assertTrue(report.error.startswith("TLS handshake failed: "), report.error)
        self.assertEqual(provider.received, [])

    async def test_cannotConnect(self):
        listening = reactor.listenTCP(0, protocol.ServerFactory(), interface="127.0.0.1")
        closedPort = listening.getHost().port
        await listening.stopListening()
        report = await self.release(closedPort, host="127.0.0.1")
        self.assertTrue(report.error.startswith("cannot connect: "), report.error)
        self.assertIsNone(report.outcome)

    async def test_serviceRunsOneReleaseAtATime(self):
        provider = FakeProviderFactory()
        events = self.captureLog()
        service = ODMRClientService(account(port=self.listen(provider), host="127.0.0.1"),
                                    self.serverFactory, HOST, 3600, reactor=self.reactor)
        first = service.runNow()
        self.failureResultOf(service.runNow(), CycleBusy)
        self.assertEqual((await first).summary(), "odmr/isp: no mail waiting")
        report = await service.runNow()
        self.assertEqual(report.outcome, "no mail")
        self.assertEqual(provider.received.count(b"ATRN example.org,example.com"), 2)
        summaries = [(e["log_level"], formatEvent(e)) for e in events
                     if formatEvent(e).startswith("odmr-client: odmr/")]
        self.assertEqual(summaries, [(LogLevel.info, "odmr-client: odmr/isp: no mail waiting")] * 2)


class ServiceLoggingTests(unittest.SynchronousTestCase):
    def test_failedReleaseIsLoggedAsWarning(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = ODMRClientService(account(username=""), SMTPFactory(HOST, RecordingTarget(), clock=task.Clock()),
                                    HOST, 60, reactor=LoopbackReactor(task.Clock()))
        report = self.successResultOf(service.runNow())
        self.assertEqual(report.summary(), "odmr/isp: failed: no username configured")
        [event] = [e for e in events if "odmr/isp" in formatEvent(e)]
        self.assertEqual(event["log_level"], LogLevel.warn)
