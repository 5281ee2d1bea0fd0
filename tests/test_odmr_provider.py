"""
Tests of the ODMR provider (L{mdpy.odmr.provider}) and gateway domains
(L{mdpy.odmr.gateway}): transcripts of the provider's side, held mail
released over the reversed connection, and gateway mail entering through
the pipeline and staying held.
"""

import email
import hashlib
import hmac

from twisted.cred import credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor, task
from zope.interface import implementer

from mdpy import errors
from mdpy.auth.checkers import DirectoryChecker, FailedLoginTracker, Realm
from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.backends.files.queue import BOUNCED, PENDING, SENT, SpoolQueue
from mdpy.delivery.relay import Relay, RelaySettings
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.envelope import Envelope
from mdpy.minger.client import MingerClient, MingerVerifier
from mdpy.minger.server import MingerServer
from mdpy.odmr.gateway import GatewayChecker, GatewayDomain, Gateways, parseDomainList
from mdpy.odmr.provider import ODMRFactory
from mdpy.smtp.server import SMTPFactory
from mdpy.backends.memory import MemoryStore
from mdpy.testing import RecordingTarget, TempDirTestCase, Transcript, synchronousRunner

MESSAGE = b"From: Lester.Tester@dot.foo.bar\r\nSubject: held\r\n\r\n.dot line\r\nbody\r\n"


def b64(data):
    import base64

    return base64.b64encode(data).decode("ascii")


def cramResponse(username, password, challengeLine):
    import base64

    challenge = base64.b64decode(challengeLine.split(" ", 1)[1])
    digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
    return b64(("%s %s" % (username, digest)).encode())


@implementer(ICredentialsChecker)
class RFCExampleChecker:
    """
    Accepts exactly the CRAM-MD5 response of RFC 2645's example session.
    """

    credentialInterfaces = (IUsernameHashedPassword,)

    def requestAvatarId(self, creds):
        if creds.username == b"foobar.net" and creds.response.strip() == b"b913a602c7eda7a495b4e6e7334d3890":
            return defer.succeed("foobar.net")
        return defer.fail(UnauthorizedLogin())


class UnusedResolver:
    """
    Fails the test if the relay looks up a held domain's MX.
    """

    def __init__(self):
        self.asked = []

    def resolve(self, domain):
        self.asked.append(domain)
        return defer.fail(errors.TemporaryFailure("no DNS in this test"))


class ProviderTestCase(TempDirTestCase):
    """
    A queue holding example.org and example.com, a relay with a L{Clock},
    and an ODMR factory; C{example.org} logs in with C{secret}, and
    C{foobar.net} (the RFC's login) may release both.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000000)
        self.queue = SpoolQueue(self.tempDir(), reactor=reactor, clock=self.clock)
        self.gateways = Gateways([
            GatewayDomain("example.org", "secret", users=["foobar.net"]),
            GatewayDomain("example.com", "other", users=["foobar.net", "joe@local.test"]),
            GatewayDomain("elsewhere.test", "third"),
        ])
        for domain in self.gateways.domains():
            self.queue.hold(domain)
        self.bounces = RecordingTarget()
        self.resolver = UnusedResolver()
        self.relay = Relay(
            self.queue, self.resolver, self.bounces, "provider.test",
            RelaySettings(retry=[60], lifetime=86400, delayWarning=0, connectionIdle=0),
            reactor, self.clock,
        )
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        # Runs first: state files still being written before the directory goes.
        self.addCleanup(self.settle)
        self.directory = SQLiteDirectory(self.tempDir() + "/directory.sqlite")
        self.directory.addDomain("local.test")
        self.directory.addUser("joe@local.test", "joepw")
        self.tracker = FailedLoginTracker(self.clock)
        self.portal = Portal(Realm(), [GatewayChecker(
            self.gateways, DirectoryChecker(self.directory, runInThread=synchronousRunner))])

    def factory(self, **kwargs):
        options = dict(portal=self.portal, loginTracker=self.tracker, clock=self.clock, clientTimeout=60)
        options.update(kwargs)
        return ODMRFactory("provider.test", self.gateways, self.relay, **options)

    def session(self, **kwargs):
        factory = self.factory(**kwargs)
        t = Transcript(factory.buildProtocol(None))
        t.expect("220 provider.test ESMTP mdpy on-demand mail relay ready")
        return t

    def login(self, t, username="example.org", password="secret"):
        t.send("EHLO customer.test")
        t.lines()
        t.send("AUTH CRAM-MD5")
        [challenge] = t.lines()
        t.send(cramResponse(username, password, challenge))
        t.expect("235 2.7.0 Authentication successful")

    @defer.inlineCallbacks
    def hold(self, recipients, sender="Lester.Tester@dot.foo.bar", data=MESSAGE):
        entry = yield self.queue.enqueue(Envelope(sender), recipients, [data])
        return entry

    def pump(self, t):
        """
        Let the provider write the whole body (a pull producer).
        """
        while t.transport.producer is not None:
            t.transport.producer.resumeProducing()

    @defer.inlineCallbacks
    def waitFor(self, condition):
        for _ in range(500):
            if condition():
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("timed out")

    @defer.inlineCallbacks
    def settle(self):
        """
        Wait for the queue's state files being written (in threads).
        """
        for _ in range(3):
            yield defer.gatherResults([e.lock.run(lambda: None) for e in list(self.queue.entries.values())])
            yield task.deferLater(reactor, 0, lambda: None)


class CommandTests(ProviderTestCase):
    """
    The provider's side before the turnaround.
    """

    def test_ehloOffersCramMD5AndATRN(self):
        t = self.session(tlsOptions=object())
        t.send("EHLO customer.test")
        t.expect(
            "250-provider.test",
            "250-ENHANCEDSTATUSCODES",
            "250-STARTTLS",
            "250-AUTH CRAM-MD5",
            "250 ATRN",
        )

    def test_plainRefusedWithoutTLS(self):
        t = self.session()
        t.send("EHLO customer.test")
        t.lines()
        t.send("AUTH PLAIN " + b64(b"\0example.org\0secret"))
        t.expect("538 5.7.11 Encryption required for requested authentication mechanism")
        t.send("AUTH LOGIN")
        t.expect("538 5.7.11 *")
        self.assertEqual(len(self.tracker), 0)

    def test_plainAfterTLS(self):
        t = self.session(tlsOptions=object())
        t.send("EHLO customer.test", "STARTTLS")
        t.lines()
        t.send("EHLO customer.test")
        t.expect("250-provider.test", "250-ENHANCEDSTATUSCODES", "250-AUTH PLAIN LOGIN CRAM-MD5", "250 ATRN")
        t.send("AUTH PLAIN " + b64(b"\0example.org\0secret"))
        t.expect("235 2.7.0 Authentication successful")

    def test_otherCommandsRefused(self):
        t = self.session()
        for command in ("HELO customer.test", "MAIL FROM:<a@b.test>", "RCPT TO:<a@example.org>",
                        "DATA", "VRFY a", "NOOP", "RSET", "ETRN example.org", "TURN", "\x00\xff"):
            t.send(command)
            t.expect("502 5.5.1 Command not implemented: only EHLO, AUTH, STARTTLS, ATRN and QUIT")

    def test_atrnBeforeEhlo(self):
        t = self.session()
        t.send("ATRN example.org")
        t.expect("503 5.5.1 Error: send HELO/EHLO first")

    def test_atrnBeforeAuth(self):
        t = self.session()
        t.send("EHLO customer.test")
        t.lines()
        t.send("ATRN example.org")
        t.expect("530 5.7.0 Authentication required")

    def test_wrongPassword(self):
        t = self.session()
        t.send("EHLO customer.test", "AUTH CRAM-MD5")
        challenge = t.lines()[-1]
        t.send(cramResponse("example.org", "wrong", challenge))
        self.clock.advance(30)
        t.expect("535 5.7.8 Error: authentication failed")
        t.send("ATRN example.org")
        t.expect("530 5.7.0 Authentication required")

    def test_authFloodIsBanned(self):
        t = self.session(maxErrors=1000, timeout=10**6)
        t.send("EHLO customer.test")
        t.lines()
        for i in range(20):
            t.send("AUTH CRAM-MD5")
            [reply] = t.lines()
            if not reply.startswith("334 "):
                break
            t.send(cramResponse("example.org", "guess%d" % (i,), reply))
            self.clock.advance(16)
            t.expect("535 5.7.8 Error: authentication failed")
        self.assertEqual(reply, "421 4.7.0 Error: too many failed logins; try later")
        self.assertEqual(i, self.tracker.banThreshold)
        self.assertTrue(t.closed)

    def test_refusedDomain(self):
        t = self.session()
        self.login(t)
        t.send("ATRN example.org,elsewhere.test")
        t.expect("450 ATRN request refused")
        t.send("ATRN unknown.test")
        t.expect("450 ATRN request refused")

    def test_badDomainLists(self):
        t = self.session()
        self.login(t)
        many = ",".join("d%d.io" % (i,) for i in range(1000))
        for argument in (many, "example.org,,example.com", "exa mple.org", "[192.0.2.1]",
                         "localhost", "ex_ample.org", "example.org;rm", "\xe9.test"):
            t.send("ATRN " + argument)
            t.expect("501 5.5.4 Syntax: ATRN [domain[,domain...]]")
        self.assertFalse(t.closed)

    def test_parseDomainList(self):
        self.assertEqual(parseDomainList(b"Example.ORG, example.com,example.org.", 10),
                         ["example.org", "example.com"])
        self.assertRaises(errors.InvalidInput, parseDomainList, b"a.test,b.test", 1)

    def test_noMail(self):
        t = self.session()
        self.login(t)
        t.send("ATRN example.org")
        t.expect("453 You have no mail")
        t.send("QUIT")
        t.expect("221 2.0.0 Bye")

    def test_atrnOnlyFromListedHosts(self):
        """
        A gateway with C{hosts} is released only to customers connecting
        from them (Transcript's peer is 192.0.2.1).
        """
        self.gateways = Gateways([
            GatewayDomain("example.org", "secret", hosts=["198.51.100.0/24"]),
            GatewayDomain("example.com", "other", users=["example.org"], hosts=["192.0.2.0/24", "::1"]),
        ])
        self.portal = Portal(Realm(), [GatewayChecker(self.gateways)])
        t = self.session()
        self.login(t)
        t.send("ATRN example.org")
        t.expect("450 ATRN request refused")
        t.send("ATRN example.com")
        t.expect("453 You have no mail")
        gateway = self.gateways.get("example.org")
        self.assertTrue(gateway.releasableBy("example.org", "198.51.100.7"))
        self.assertTrue(gateway.releasableBy("example.org", "::ffff:198.51.100.7"))
        self.assertFalse(gateway.releasableBy("example.org", "not an address"))
        self.assertEqual(self.gateways.releasableBy("example.org", "192.0.2.1"), ["example.com"])
        self.assertRaises(ValueError, GatewayDomain, "x.test", "pw", hosts=["10.0.0.0/33"])

    def test_directoryUserLogin(self):
        t = self.session()
        self.login(t, "joe@local.test", "joepw")
        t.send("ATRN example.org")
        t.expect("450 ATRN request refused")
        t.send("ATRN example.com")
        t.expect("453 You have no mail")

    @defer.inlineCallbacks
    def test_bareATRNReleasesTheDefaultDomains(self):
        yield self.hold(["a@example.org"])
        t = self.session()
        self.login(t, "example.org", "secret")
        t.send("ATRN")
        t.expect("250 OK now reversing the connection")


class TurnaroundTests(ProviderTestCase):
    """
    Held mail delivered over the reversed connection.
    """

    def customer(self, t, ehlo=("250-example.org", "250 SIZE")):
        t.send("220 example.org ready to receive email")
        t.expect("EHLO provider.test")
        t.send(*ehlo)

    @defer.inlineCallbacks
    def test_rfc2645Example(self):
        """
        The example session of RFC 2645 section 6, line by line.
        """
        self.patch(credentials.CramMD5Credentials, "getChallenge",
                   lambda creds: setattr(creds, "challenge", b"1896.697170952@ISP.COM\n") or creds.challenge)
        entry = yield self.hold(["l.eva.msg@example.com"])
        self.portal = Portal(Realm(), [RFCExampleChecker()])
        t = self.session()
        t.send("EHLO example.org")
        t.expect("250-provider.test", "250-ENHANCEDSTATUSCODES", "250-AUTH CRAM-MD5", "250 ATRN")
        t.send("AUTH CRAM-MD5")
        t.expect("334 MTg5Ni42OTcxNzA5NTJASVNQLkNPTQo=")
        t.send("Zm9vYmFyLm5ldCBiOTEzYTYwMmM3ZWRhN2E0OTViNGU2ZTczMzRkMzg5MAo=")
        t.expect("235 2.7.0 Authentication successful")
        t.send("ATRN example.org,example.com")
        t.expect("250 OK now reversing the connection")
        self.customer(t)
        t.expect("MAIL FROM:<Lester.Tester@dot.foo.bar> SIZE=%d" % (entry.size,))
        t.send("250 OK")
        t.expect("RCPT TO:<l.eva.msg@example.com>")
        t.send("250 OK, recipient accepted")
        t.expect("DATA")
        t.send("354 go ahead")
        self.pump(t)
        body = t.lines()
        self.assertEqual(body, ["From: Lester.Tester@dot.foo.bar", "Subject: held", "", "..dot line", "body", "."])
        t.send("250 OK message accepted")
        t.expect("QUIT")
        t.send("221 example.org closing connection")
        self.assertTrue(t.closed)
        t.protocol.connectionLost(None)
        yield self.settle()
        self.assertNotIn(entry.id, self.queue.entries)
        self.assertEqual(entry.recipients[0].state, SENT)
        self.assertEqual(self.resolver.asked, [])

    @defer.inlineCallbacks
    def test_onlyTheReleasedDomains(self):
        org = yield self.hold(["a@example.org", "b@example.com"])
        other = yield self.hold(["c@elsewhere.test"])
        t = self.session()
        self.login(t)
        t.send("ATRN example.org")
        t.expect("250 OK now reversing the connection")
        self.customer(t)
        t.expect("MAIL FROM:<*")
        t.send("250 ok")
        t.expect("RCPT TO:<a@example.org>")
        t.send("250 ok")
        t.expect("DATA")
        t.send("354 go")
        self.pump(t)
        t.lines()
        t.send("250 ok")
        t.expect("QUIT")
        t.send("221 bye")
        t.protocol.connectionLost(None)
        yield self.settle()
        self.assertEqual([r.state for r in org.recipients], [SENT, PENDING])
        self.assertEqual([r.state for r in other.recipients], [PENDING])
        self.assertFalse(any(r.active for r in org.recipients + other.recipients))

    @defer.inlineCallbacks
    def test_droppedConnectionLeavesMailHeld(self):
        first = yield self.hold(["a@example.org"])
        second = yield self.hold(["b@example.org"])
        t = self.session()
        self.login(t)
        t.send("ATRN example.org")
        t.lines()
        self.customer(t)
        t.expect("MAIL FROM:<*")
        t.send("250 ok")
        t.lines()
        t.protocol.connectionLost(None)
        yield self.settle()
        for entry in (first, second):
            self.assertIn(entry.id, self.queue.entries)
            self.assertEqual(entry.recipients[0].state, PENDING)
            self.assertFalse(entry.recipients[0].active)
        self.assertTrue(self.relay.hasHeld(["example.org"]))
        self.assertEqual(self.resolver.asked, [])
        # The next ATRN gets both again.
        t = self.session()
        self.login(t)
        t.send("ATRN example.org")
        t.expect("250 OK now reversing the connection")

    @defer.inlineCallbacks
    def test_customerStopsReading(self):
        """
        A customer that goes silent in the middle of the reversed session is
        dropped after the client timeout; its mail stays held.
        """
        entry = yield self.hold(["a@example.org"])
        t = self.session()
        self.login(t)
        t.send("ATRN example.org")
        t.lines()
        self.customer(t)
        t.expect("MAIL FROM:<*")
        t.send("250 ok")
        t.expect("RCPT TO:<a@example.org>")
        self.clock.advance(61)
        self.assertTrue(t.transport.disconnecting or t.transport.disconnected)
        t.protocol.connectionLost(None)
        yield self.settle()
        self.assertEqual(entry.recipients[0].state, PENDING)
        self.assertIn(entry.id, self.queue.entries)

    @defer.inlineCallbacks
    def test_temporaryAndPermanentRefusals(self):
        entry = yield self.hold(["temp@example.org", "gone@example.org"])
        t = self.session()
        self.login(t)
        t.send("ATRN example.org")
        t.lines()
        self.customer(t, ehlo=("250-example.org", "250 PIPELINING"))
        t.expect("MAIL FROM:<*", "RCPT TO:<temp@example.org>", "RCPT TO:<gone@example.org>", "DATA")
        t.send("250 ok", "451 4.3.0 try later", "550 5.1.1 no such user", "554 no valid recipients")
        t.expect("RSET")
        t.send("250 ok")
        t.expect("QUIT")
        t.send("221 bye")
        t.protocol.connectionLost(None)
        yield self.settle()
        temp, gone = entry.recipients
        self.assertEqual(temp.state, PENDING)
        self.assertEqual(gone.state, BOUNCED)
        [dsn] = self.bounces.messages
        self.assertEqual(dsn.recipients, ["Lester.Tester@dot.foo.bar"])
        report = email.message_from_bytes(dsn.data)
        self.assertIn("gone@example.org", str(report))
        self.assertIn("550 5.1.1", str(report))
        self.assertIn("Remote-MTA: dns; 192.0.2.1", str(report))


class HeldExpiryTests(ProviderTestCase):
    """
    Held mail nobody releases fails after the relay's lifetime, with a DSN.
    """

    @defer.inlineCallbacks
    def test_expiresWithADSN(self):
        entry = yield self.hold(["a@example.org"])
        self.clock.advance(86400 - 3601)
        yield self.settle()
        self.assertEqual(entry.recipients[0].state, PENDING)
        self.assertEqual(self.bounces.messages, [])
        self.clock.advance(3601)
        yield self.settle()
        self.assertEqual(entry.recipients[0].state, BOUNCED)
        [dsn] = self.bounces.messages
        self.assertEqual(dsn.recipients, ["Lester.Tester@dot.foo.bar"])
        report = email.message_from_bytes(dsn.data)
        status = [part for part in report.walk() if part.get_content_type() == "message/delivery-status"]
        text = status[0].as_string()
        self.assertIn("Status: 4.4.7", text)
        self.assertIn("Action: failed", text)
        self.assertEqual(self.resolver.asked, [])
        self.assertNotIn(entry.id, self.queue.entries)

    @defer.inlineCallbacks
    def test_delayWarningForHeldMail(self):
        """
        With C{delay_warning} set, the sender of held mail hears once that
        it waits, before it expires.
        """
        self.relay.settings.delayWarning = 4 * 3600
        entry = yield self.hold(["a@example.org"])
        self.clock.pump([3600] * 3)
        yield self.settle()
        self.assertEqual(self.bounces.messages, [])
        self.clock.pump([3600] * 3)
        yield self.settle()
        [warning] = self.bounces.messages
        report = email.message_from_bytes(warning.data)
        status = [part for part in report.walk() if part.get_content_type() == "message/delivery-status"]
        text = status[0].as_string()
        self.assertIn("Action: delayed", text)
        self.assertIn("held until its domain's ODMR customer collects it", text)
        self.assertTrue(entry.warned)
        self.assertEqual(entry.recipients[0].state, PENDING)
        self.clock.pump([3600] * 6)
        yield self.settle()
        self.assertEqual(len(self.bounces.messages), 1)

    @defer.inlineCallbacks
    def test_queueListSaysHeld(self):
        from io import StringIO

        from mdpy.cli import formatEntry
        from mdpy.backends.files.queue import readHeld

        yield self.hold(["a@example.org", "b@remote.test"])
        [entry] = self.queue.list()
        held = readHeld(self.queue.path)
        self.assertEqual(held, {"example.org", "example.com", "elsewhere.test"})
        out = StringIO()
        out.write(formatEntry(entry, held))
        lines = out.getvalue().splitlines()
        self.assertTrue(lines[1].startswith("    <a@example.org> pending attempts=0 held for ATRN"), lines)
        self.assertIn(" next=", lines[2])


class GatewayPipelineTests(ProviderTestCase):
    """
    Mail for a gateway domain enters through SMTP on port 25 from anyone
    and is held, never delivered to the domain's MX.
    """

    @defer.inlineCallbacks
    def test_smtpAcceptsAndHolds(self):
        pipeline = DeliveryPipeline(self.directory, MemoryStore(), queue=self.queue,
                                    spoolDir=self.tempDir(), gateways=self.gateways)
        factory = SMTPFactory("provider.test", pipeline, clock=self.clock)
        t = Transcript(factory.buildProtocol(None))
        t.lines()
        t.send("EHLO sender.test", "MAIL FROM:<someone@sender.test>")
        t.lines()
        t.send("RCPT TO:<anyone@Example.ORG>")
        t.expect("250 2.1.5 Ok")
        t.send("RCPT TO:<stranger@not-a-gateway.test>")
        t.expect("550 5.7.1 Relay access denied")
        t.send("DATA")
        t.lines()
        t.send("Subject: for the gateway", "", "hello", ".")
        yield self.waitFor(lambda: b"queued" in t.transport.value())
        t.expect("250 2.0.0 Ok: queued as *")
        [entry] = self.queue.list()
        self.assertEqual([r.address for r in entry.recipients], ["anyone@Example.ORG"])
        self.clock.advance(3600)
        yield self.settle()
        self.assertEqual(entry.recipients[0].state, PENDING)
        self.assertEqual(self.resolver.asked, [])
        self.assertTrue(self.relay.hasHeld(["example.org"]))

    @defer.inlineCallbacks
    def test_mingerVerifiedRecipients(self):
        """
        RCPT for a gateway domain asks the domain's Minger server (here
        mdpy's, over loopback UDP): 5 accepts, 3 refuses with 550 5.1.1, 4
        with 450 4.2.1.
        """
        site = SQLiteDirectory(self.tempDir() + "/site.sqlite")
        site.addDomain("example.org")
        site.addUser("here@example.org", "pw")
        site.addUser("off@example.org", "pw")
        site.setEnabled("off@example.org", False)
        port = reactor.listenUDP(0, MingerServer(site, secret="minger-secret"), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = MingerClient(reactor, "127.0.0.1", port=port.getHost().port, secret="minger-secret", timeout=5)
        self.addCleanup(client.close)
        gateways = Gateways([GatewayDomain("example.org", "secret", verifier=MingerVerifier(client))])
        pipeline = DeliveryPipeline(self.directory, MemoryStore(), queue=self.queue,
                                    spoolDir=self.tempDir(), gateways=gateways)
        factory = SMTPFactory("provider.test", pipeline, clock=self.clock)
        t = Transcript(factory.buildProtocol(None))
        t.lines()
        t.send("EHLO sender.test", "MAIL FROM:<someone@sender.test>")
        t.lines()
        replies = []
        for rcpt in ("gone@example.org", "off@example.org", "Here@example.org"):
            t.send("RCPT TO:<%s>" % (rcpt,))
            yield self.waitFor(lambda: b"\r\n" in t.transport.value())
            replies += t.lines()
        self.assertEqual(replies, [
            "550 5.1.1 Recipient address rejected: user unknown",
            "450 4.2.1 Recipient address rejected: mailbox unavailable; try again later",
            "250 2.1.5 Ok",
        ])
