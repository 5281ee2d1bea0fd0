"""
Tests of the relay (L{mdpy.delivery.relay}): the queue delivered over
loopback to mdpy's own SMTP server and to misbehaving ones, with a real DNS
server (L{tests.dnsserver}) for MX lookups and a L{Clock} for retries.
"""

import email
import email.policy
import os
import re
import socket

from twisted.internet import defer, protocol, reactor, task
from twisted.logger import formatEvent, globalLogPublisher

from mdpy import errors
from mdpy.delivery.mx import MXResolver, makeResolver
from mdpy.backends.files.queue import BOUNCED, FAILED, PENDING, SpoolQueue
from mdpy.delivery.relay import Relay, RelaySettings
from mdpy.envelope import Envelope
from mdpy.smtp import codes
from mdpy.smtp.server import MODE_SUBMISSION, SMTPFactory, SMTPServer
from mdpy.testing import RecordingTarget, TempDirTestCase, capturedLogs, loggedLines, memoryPortal
from mdpy.tls import ensureSelfSigned, serverOptions
from tests.dnsserver import TestDNSServer

MESSAGE = b"From: joe@example.test\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingSMTPFactory(SMTPFactory):
    """
    mdpy's SMTP server, counting its connections.
    """

    built = 0

    def buildProtocol(self, addr):
        self.built += 1
        return SMTPFactory.buildProtocol(self, addr)


class ServerSessions(SMTPServer):
    """
    mdpy's SMTP server, remembering its sessions in C{factory.sessions};
    the first C{factory.dropAtMail} sessions drop the connection, with no
    reply, when MAIL arrives (as a server that went away meanwhile).
    """

    def connectionMade(self):
        self.factory.sessions.append(self)
        SMTPServer.connectionMade(self)

    dropped = False

    def lineReceived(self, line):
        if not self.dropped:
            return SMTPServer.lineReceived(self, line)

    def do_MAIL(self, argument):
        if self.factory.dropAtMail:
            self.factory.dropAtMail -= 1
            self.dropped = True  # the pipelined RCPT and DATA get no reply
            self.transport.abortConnection()
            return None
        return SMTPServer.do_MAIL(self, argument)


class BrokenTLSServer(SMTPServer):
    """
    Offers STARTTLS, answers 220, then sends no TLS at all.
    """

    def do_STARTTLS(self, argument):
        self.reply(codes.C220TLSReady)
        self.transport.write(b"this is not TLS\r\n" * 10)
        self.transport.loseConnection()


class Misbehaving(protocol.Protocol):
    """
    A server that says C{greeting} and then whatever C{script} maps the
    received bytes to.
    """

    def connectionMade(self):
        self.factory.built += 1
        self.factory.connections += 1
        if self.factory.greeting:
            self.transport.write(self.factory.greeting)

    def connectionLost(self, reason):
        self.factory.connections -= 1

    def dataReceived(self, data):
        answer = self.factory.script(self, data)
        if answer:
            self.transport.write(answer)


class MisbehavingFactory(protocol.ServerFactory):
    protocol = Misbehaving
    built = 0
    connections = 0

    def __init__(self, greeting, script=lambda proto, data: None):
        self.greeting = greeting
        self.script = script


class RelayTestCase(TempDirTestCase):
    """
    A queue, a relay with a L{Clock}, a DNS server, and receivers on
    127.0.0.2 and 127.0.0.3 at one port (the relay's C{remotePort}).
    """

    def setUp(self):
        self.dns = TestDNSServer(reactor)
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.clock = task.Clock()
        self.clock.advance(1000000)
        self.port = freePort()
        self.bounces = RecordingTarget()
        self.queueDir = self.tempDir()
        self.queue = SpoolQueue(self.queueDir, reactor=reactor, clock=self.clock)
        self.settings = RelaySettings(
            remotePort=self.port, retry=[60, 120], lifetime=600, delayWarning=0, connectionIdle=0
        )
        self.relay = None
        self.dns.setMX("dest.test", [(10, "mx1.dest.test"), (20, "mx2.dest.test")])
        self.dns.setA("mx1.dest.test", ["127.0.0.2"])
        self.dns.setA("mx2.dest.test", ["127.0.0.3"])

    def startRelay(self, **settings):
        for name, value in settings.items():
            setattr(self.settings, name, value)
        resolver = MXResolver(makeResolver(reactor, [self.dns.nameserver], timeout=(2,)), clock=self.clock)
        self.relay = Relay(
            self.queue, resolver, self.bounces, "relay.example.test", self.settings, reactor, self.clock
        )
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.addCleanup(
            lambda: defer.ensureDeferred(self.until(lambda: not self.relay._sessions, "sessions to end"))
        )
        return self.relay

    def receiver(self, interface="127.0.0.3", factory=None, **kwargs):
        if factory is None:
            target = RecordingTarget()
            factory = CountingSMTPFactory("mx.dest.test", target, **kwargs)
            factory.target = target
        port = reactor.listenTCP(self.port, factory, interface=interface)
        self.addCleanup(port.stopListening)
        self.addCleanup(
            lambda: defer.ensureDeferred(self.until(lambda: not factory.connections, "closed connections"))
        )
        return factory

    def enqueue(self, recipients=("a@dest.test",), sender="joe@example.test", data=MESSAGE):
        envelope = Envelope(sender, authenticatedAs=sender or None)
        return self.queue.enqueue(envelope, list(recipients), [data])

    async def until(self, condition, what="condition"):
        """
        Let the reactor run until C{condition()} is true.
        """
        for _ in range(2000):
            if condition():
                return
            await task.deferLater(reactor, 0.005, lambda: None)
        self.fail("gave up waiting for " + what)

    def idle(self):
        entries = list(self.queue.entries.values())
        return (
            not any(r.active for entry in entries for r in entry.recipients)
            and not self.relay._sessions
            and not any(entry.lock.locked for entry in entries)  # a state file being saved
        )

    def dsn(self, index=0):
        message = self.bounces.messages[index]
        self.assertEqual(message.envelope.sender, "")
        self.assertTrue(message.envelope.trusted)
        parsed = email.message_from_bytes(message.data, policy=email.policy.default)
        self.assertEqual(parsed.get_content_type(), "multipart/report")
        report = parsed.get_payload()[1]
        blocks = [dict(block.items()) for block in report.get_payload()]
        return message, parsed, blocks


class DeliveryTests(RelayTestCase):
    async def test_mxFallbackAndOneConnectionForSeveralMessages(self):
        receiver = self.receiver()  # mx2 only: mx1 (127.0.0.2) refuses
        self.startRelay()
        entries = [await self.enqueue(["a@dest.test", "b@dest.test"]) for _ in range(3)]
        await self.until(lambda: len(receiver.target.messages) == 3, "3 messages")
        await self.until(lambda: not self.queue.entries, "an empty queue")
        for message in receiver.target.messages:
            self.assertEqual(message.recipients, ["a@dest.test", "b@dest.test"])
            self.assertEqual(message.envelope.sender, "joe@example.test")
            self.assertTrue(message.data.endswith(MESSAGE))
        self.assertLessEqual(receiver.built, 3)
        self.assertEqual(os.listdir(os.path.join(self.queueDir, "env")), [])
        self.assertEqual(os.listdir(os.path.join(self.queueDir, "msg")), [])
        self.assertTrue(all(e.removed for e in entries))

    async def test_preferredMXTakesTheMail(self):
        first = self.receiver("127.0.0.2")
        second = self.receiver("127.0.0.3")
        self.startRelay()
        await self.enqueue()
        await self.until(lambda: first.target.messages, "delivery")
        self.assertEqual(second.built, 0)

    async def test_temporaryFailureRetriedThenDelivered(self):
        receiver = self.receiver()
        receiver.target.recipientErrors["a@dest.test"] = errors.TemporaryFailure("busy")
        self.startRelay()
        entry = await self.enqueue(["a@dest.test", "b@dest.test"])
        await self.until(self.idle, "the first attempt")
        a, b = entry.recipients
        self.assertEqual((a.state, a.attempts, a.due), (PENDING, 1, self.clock.seconds() + 60))
        self.assertIn("451", a.diagnostic)
        self.assertEqual(b.state, "sent")
        del receiver.target.recipientErrors["a@dest.test"]
        self.clock.advance(59)
        await self.until(self.idle)
        self.assertEqual(len(receiver.target.messages), 1)
        self.clock.advance(1)
        await self.until(lambda: len(receiver.target.messages) == 2, "the retry")
        self.assertEqual(receiver.target.messages[1].recipients, ["a@dest.test"])
        await self.until(lambda: entry.removed)
        self.assertEqual(self.bounces.messages, [])

    async def test_eachRecipientIsLoggedAsPostfixDoes(self):
        """
        One line per recipient and attempt: the queue id, the host tried,
        the time since it was queued, the status code, the outcome and the
        reply; C{relay=none} when DNS gave no host to try.
        """
        receiver = self.receiver()
        receiver.target.recipientErrors["a@dest.test"] = errors.TemporaryFailure("busy")
        receiver.target.recipientErrors["bad@dest.test"] = errors.NotFound("no")
        self.dns.failWith("other.test", "servfail")
        events = self.enterContext(capturedLogs())
        self.startRelay()
        entry = await self.enqueue(["a@dest.test", "b@dest.test", "bad@dest.test"])
        other = await self.enqueue(["c@other.test"])
        await self.until(self.idle, "the first attempts")
        del receiver.target.recipientErrors["a@dest.test"]
        self.clock.advance(60)
        await self.until(lambda: entry.removed and self.idle(), "the retry")
        lines = sorted(loggedLines(events, "relay: %s to=" % (entry.id,)))
        mx2 = "relay=mx2.dest.test[127.0.0.3]:%d" % (self.port,)
        self.assertEqual(len(lines), 4, lines)
        self.assertRegex(lines[0], r"relay: %s to=<a@dest\.test> %s delay=0\.00 dsn=4\.3\.0 status=deferred"
                         r" \(451 4\.3\.0 Error: local error in processing" % (entry.id, re.escape(mx2)))
        self.assertRegex(lines[1], r"relay: %s to=<a@dest\.test> %s delay=60 dsn=2\.0\.0 status=sent \(250 "
                         % (entry.id, re.escape(mx2)))
        self.assertRegex(lines[2], r"relay: %s to=<b@dest\.test> %s delay=0\.00 dsn=2\.0\.0 status=sent \(250 "
                         % (entry.id, re.escape(mx2)))
        self.assertRegex(lines[3], r"relay: %s to=<bad@dest\.test> %s delay=0\.00 dsn=5\.1\.1 status=bounced"
                         r" \(550 5\.1\.1 " % (entry.id, re.escape(mx2)))
        self.assertEqual(
            loggedLines(events, "relay: %s to=" % (other.id,))[:1],
            ["relay: %s to=<c@other.test> relay=none delay=0.00 dsn=4.4.3 status=deferred"
             " (other.test MX lookup failed: SERVFAIL)" % (other.id,)],
        )

    async def test_permanentFailureBouncesWithAValidDSN(self):
        receiver = self.receiver()
        receiver.target.recipientErrors["bad@dest.test"] = errors.NotFound("no")
        self.startRelay()
        entry = await self.enqueue(["bad@dest.test", "good@dest.test"])
        await self.until(lambda: entry.removed, "the bounce")
        self.assertEqual(receiver.target.messages[0].recipients, ["good@dest.test"])
        message, parsed, blocks = self.dsn()
        self.assertEqual(message.recipients, ["joe@example.test"])
        self.assertEqual(parsed["To"], "joe@example.test")
        self.assertEqual(blocks[0]["Reporting-MTA"], "dns; relay.example.test")
        [recipient] = blocks[1:]
        self.assertEqual(recipient["Final-Recipient"], "rfc822; bad@dest.test")
        self.assertEqual(recipient["Action"], "failed")
        self.assertEqual(recipient["Status"], "5.1.1")
        self.assertEqual(recipient["Remote-MTA"], "dns; mx2.dest.test")
        self.assertTrue(recipient["Diagnostic-Code"].startswith("smtp; 550 5.1.1"))
        original = parsed.get_payload()[2]
        self.assertEqual(original.get_content_type(), "message/rfc822")
        self.assertIn(b".leading dot", message.data)

    async def test_expiryBouncesWithTheLastError(self):
        receiver = self.receiver()
        receiver.target.recipientErrors["a@dest.test"] = errors.TemporaryFailure("busy")
        self.startRelay(retry=[200], lifetime=500)
        entry = await self.enqueue()
        for _ in range(3):
            await self.until(self.idle)
            self.assertEqual(self.bounces.messages, [])
            self.clock.advance(200)
        await self.until(lambda: entry.removed, "expiry")
        self.assertEqual(entry.recipients[0].attempts, 4)
        message, parsed, [perMessage, recipient] = self.dsn()
        self.assertEqual(recipient["Action"], "failed")
        self.assertEqual(recipient["Status"], "4.3.0")
        self.assertIn("451", recipient["Diagnostic-Code"])
        self.assertEqual(parsed["Subject"], "Undelivered Mail Returned to Sender")

    async def test_refusedDSNGoesToThePostmaster(self):
        """
        A DSN its sender cannot take (an unknown local address) goes to the
        postmaster as a double bounce, once; the message leaves the queue.
        """
        receiver = self.receiver()
        receiver.target.recipientErrors["bad@dest.test"] = errors.NotFound("no")
        self.bounces.recipientErrors["ghost@example.test"] = errors.NotFound("no such user")
        self.startRelay()
        entry = await self.enqueue(["bad@dest.test"], sender="ghost@example.test")
        await self.until(lambda: entry.removed, "the double bounce")
        [message] = self.bounces.messages
        self.assertEqual(message.recipients, ["postmaster@relay.example.test"])
        self.assertEqual(message.envelope.sender, "")
        parsed = email.message_from_bytes(message.data, policy=email.policy.default)
        self.assertEqual(parsed["To"], "postmaster@relay.example.test")
        self.assertEqual(parsed["Subject"], "Postmaster Copy: Undelivered Mail Returned to Sender")
        text = " ".join(parsed.get_payload()[0].get_content().split())
        self.assertIn("This report could not be delivered to the sender, ghost@example.test: no such user."
                      " It is sent to you, the postmaster, instead.", text)
        blocks = [dict(block.items()) for block in parsed.get_payload()[1].get_payload()]
        self.assertEqual(blocks[1]["Final-Recipient"], "rfc822; bad@dest.test")
        self.assertEqual(entry.recipients[0].state, BOUNCED)

    async def test_doubleBounceRefusedTooIsDropped(self):
        receiver = self.receiver()
        receiver.target.recipientErrors["bad@dest.test"] = errors.NotFound("no")
        self.bounces.recipientErrors["ghost@example.test"] = errors.NotFound("no such user")
        self.bounces.recipientErrors["postmaster@relay.example.test"] = errors.NotFound("no such user")
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.startRelay()
        entry = await self.enqueue(["bad@dest.test"], sender="ghost@example.test")
        await self.until(lambda: entry.removed, "the DSN to be dropped")
        self.assertEqual(self.bounces.messages, [])
        self.assertEqual(self.relay._reporting, {})
        lines = [formatEvent(e) for e in events if "double bounce" in formatEvent(e)]
        self.assertEqual(lines[-1], "relay: %s: the double bounce was refused by <postmaster@relay.example.test>"
                         " too (no such user); the DSN is dropped" % (entry.id,))

    async def test_undeliverableDSNIsRetriedThenDroppedAfterTheLifetime(self):
        """
        A DSN that cannot be delivered for now is tried again after the
        first retry delay, not only at the next start, and dropped with a
        log line once it has waited the lifetime.
        """
        receiver = self.receiver()
        receiver.target.recipientErrors["bad@dest.test"] = errors.NotFound("no")
        self.bounces.commitError = errors.TemporaryFailure("disk full")
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.startRelay(retry=[60], lifetime=200)
        entry = await self.enqueue(["bad@dest.test"])
        await self.until(lambda: entry.id in self.relay._reporting and self.relay._reporting[entry.id], "a retry")
        self.assertEqual(entry.recipients[0].state, FAILED)
        self.bounces.commitError = None
        self.clock.advance(60)
        await self.until(lambda: entry.removed, "the DSN")
        self.assertEqual(len(self.bounces.messages), 1)
        # Now one whose DSN never goes out.
        self.bounces.commitError = errors.TemporaryFailure("disk full")
        other = await self.enqueue(["bad@dest.test"])
        for _ in range(4):
            await self.until(lambda: self.relay._reporting.get(other.id), "a retry")
            self.clock.advance(60)
        await self.until(lambda: other.removed, "the DSN to be dropped")
        self.assertEqual(len(self.bounces.messages), 1)
        texts = [formatEvent(e) for e in events]
        self.assertIn("relay: %s: the DSN to <joe@example.test> could not be delivered within the lifetime;"
                      " dropped (disk full)" % (other.id,), texts)

    async def test_nullSenderIsNeverBounced(self):
        receiver = self.receiver()
        receiver.target.recipientErrors["bad@dest.test"] = errors.NotFound("no")
        self.startRelay()
        entry = await self.enqueue(["bad@dest.test"], sender="")
        await self.until(lambda: entry.removed)
        self.assertEqual(entry.recipients[0].state, BOUNCED)
        self.assertEqual(self.bounces.messages, [])

    async def test_delayWarningOnce(self):
        receiver = self.receiver()
        receiver.target.recipientErrors["a@dest.test"] = errors.TemporaryFailure("busy")
        self.startRelay(retry=[60], lifetime=10000, delayWarning=100)
        entry = await self.enqueue()
        for _ in range(4):
            await self.until(self.idle)
            self.clock.advance(60)
        await self.until(self.idle)
        self.assertTrue(entry.warned)
        self.assertEqual(len(self.bounces.messages), 1)
        message, parsed, [perMessage, recipient] = self.dsn()
        self.assertEqual(recipient["Action"], "delayed")
        self.assertIn("Will-Retry-Until", recipient)
        self.assertEqual(parsed["Subject"], "Delayed Mail (still being retried)")
        self.assertFalse(entry.removed)

    async def test_nullMXFailsAtOnce(self):
        self.dns.setNullMX("nomail.test")
        self.startRelay()
        entry = await self.enqueue(["x@nomail.test"])
        await self.until(lambda: entry.removed)
        message, parsed, [perMessage, recipient] = self.dsn()
        self.assertEqual(recipient["Status"], "5.1.10")

    async def test_dnsServfailIsRetried(self):
        receiver = self.receiver()
        self.dns.failWith("dest.test", "servfail")
        self.startRelay()
        entry = await self.enqueue()
        await self.until(self.idle)
        [recipient] = entry.recipients
        self.assertEqual((recipient.state, recipient.status), (PENDING, "4.4.3"))
        self.dns.clear("dest.test")
        self.dns.setMX("dest.test", [(10, "mx2.dest.test")])
        self.clock.advance(60)
        await self.until(lambda: entry.removed)
        self.assertEqual(len(receiver.target.messages), 1)

    async def test_heldDomainWaitsForRelease(self):
        receiver = self.receiver()
        self.queue.hold("dest.test")
        self.startRelay()
        entry = await self.enqueue()
        await self.until(self.idle)
        self.assertEqual(receiver.built, 0)
        self.assertEqual(self.queue.release("dest.test"), [entry.id])
        await self.until(lambda: entry.removed)
        self.assertEqual(len(receiver.target.messages), 1)

    async def test_restartDeliversWhatIsQueued(self):
        receiver = self.receiver()
        entry = await self.enqueue()
        again = SpoolQueue(self.queueDir, reactor=reactor, clock=self.clock)
        self.assertEqual(again.load(), 1)
        self.queue = again
        self.startRelay()
        await self.until(lambda: not again.entries)
        self.assertEqual(len(receiver.target.messages), 1)
        self.assertEqual(receiver.target.messages[0].envelope.sender, entry.sender)

    async def test_unreadableBodyIsQuarantinedAndTheRestFlows(self):
        receiver = self.receiver()
        self.queue.hold("dest.test")
        broken = await self.enqueue(["x@dest.test"])
        fine = await self.enqueue(["y@dest.test"])
        os.unlink(self.queue.bodyPath(broken.id))
        self.startRelay()
        self.queue.release("dest.test")
        await self.until(lambda: fine.removed and broken.removed)
        self.assertEqual([m.recipients for m in receiver.target.messages], [["y@dest.test"]])
        self.assertEqual([i for i, why in self.queue.quarantined], [broken.id])
        self.assertIn(broken.id + ".env", os.listdir(os.path.join(self.queueDir, "corrupt")))


class RemoteFaultTests(RelayTestCase):
    async def deferredBy(self, factory, **settings):
        self.receiver(factory=factory)
        self.startRelay(**settings)
        entry = await self.enqueue()
        await self.until(self.idle)
        [recipient] = entry.recipients
        self.assertEqual(recipient.state, PENDING)
        self.assertEqual(recipient.attempts, 1)
        return recipient

    async def test_hangingServerTimesOut(self):
        factory = MisbehavingFactory(None)
        self.receiver(factory=factory)
        self.startRelay(commandTimeout=30)
        entry = await self.enqueue()
        await self.until(lambda: factory.built == 1)
        self.clock.advance(30)
        await self.until(self.idle)
        self.assertEqual(entry.recipients[0].state, PENDING)
        self.assertIn("timed out", entry.recipients[0].reason)

    async def test_hugeReplyLine(self):
        recipient = await self.deferredBy(MisbehavingFactory(b"220 " + b"x" * 600 * 1024))
        self.assertIsNotNone(recipient.reason)

    async def test_garbageGreeting(self):
        recipient = await self.deferredBy(MisbehavingFactory(b"hello there\r\n"))
        self.assertIsNotNone(recipient.reason)

    async def test_closedMidData(self):
        def script(proto, data):
            if data.startswith(b"EHLO"):
                return b"250-mx\r\n250 PIPELINING\r\n"
            if data.startswith(b"MAIL"):
                return b"250 ok\r\n250 ok\r\n354 go\r\n"
            proto.transport.loseConnection()

        recipient = await self.deferredBy(MisbehavingFactory(b"220 mx\r\n", script))
        self.assertIsNotNone(recipient.reason)

    async def test_brokenSTARTTLSIsRetriedInPlainText(self):
        target = RecordingTarget()
        cert, key, _ = ensureSelfSigned(self.tempDir(), "mx2.dest.test")
        factory = CountingSMTPFactory("mx2.dest.test", target, tlsOptions=serverOptions(cert, key))
        factory.protocol = BrokenTLSServer
        factory.target = target
        self.receiver(factory=factory)
        self.startRelay()
        entry = await self.enqueue()
        await self.until(lambda: entry.removed)
        self.assertEqual(factory.built, 2)
        self.assertEqual(len(target.messages), 1)
        self.assertEqual(target.messages[0].envelope.protocol, "ESMTP")

    async def test_opportunisticTLSIsUsed(self):
        target = RecordingTarget()
        cert, key, _ = ensureSelfSigned(self.tempDir(), "mx2.dest.test")
        factory = CountingSMTPFactory("mx2.dest.test", target, tlsOptions=serverOptions(cert, key))
        factory.target = target
        self.receiver(factory=factory)
        self.startRelay()
        entry = await self.enqueue()
        await self.until(lambda: entry.removed)
        self.assertEqual(target.messages[0].envelope.protocol, "ESMTPS")


class SmarthostTests(RelayTestCase):
    def smarthost(self):
        directory = self.tempDir()
        cert, key, _ = ensureSelfSigned(directory, "localhost")
        target = RecordingTarget()
        factory = CountingSMTPFactory(
            "localhost",
            target,
            mode=MODE_SUBMISSION,
            tlsOptions=serverOptions(cert, key),
            portal=memoryPortal(relayuser="s3cret"),
        )
        factory.target = target
        self.receiver("127.0.0.1", factory=factory)
        return factory, cert

    async def test_verifiedTLSAndAuth(self):
        factory, cert = self.smarthost()
        self.startRelay(
            smarthost=("localhost", self.port),
            smarthostTrust=cert,
            smarthostCredentials=("relayuser", "s3cret"),
        )
        entry = await self.enqueue(["a@anywhere.test", "b@elsewhere.test"])
        await self.until(lambda: entry.removed)
        [message] = factory.target.messages
        self.assertEqual(message.recipients, ["a@anywhere.test", "b@elsewhere.test"])
        self.assertEqual(message.envelope.authenticatedAs, "relayuser")
        self.assertEqual(message.envelope.protocol, "ESMTPSA")

    async def test_untrustedCertificateIsNeverFollowedByPlainText(self):
        factory, cert = self.smarthost()
        other, _, _ = ensureSelfSigned(self.tempDir(), "localhost")
        self.startRelay(
            smarthost=("localhost", self.port),
            smarthostTrust=other,
            smarthostCredentials=("relayuser", "s3cret"),
        )
        entry = await self.enqueue(["a@anywhere.test"])
        await self.until(self.idle)
        self.assertEqual(factory.target.messages, [])
        self.assertEqual(factory.built, 1)
        self.assertEqual(entry.recipients[0].state, PENDING)


class ConnectionReuseTests(RelayTestCase):
    async def test_idleConnectionTakesMailThatArrivesLater(self):
        receiver = self.receiver()
        self.startRelay(connectionIdle=30)
        first = await self.enqueue(["a@dest.test"])
        await self.until(lambda: first.removed, "the first message")
        second = await self.enqueue(["b@dest.test"])
        await self.until(lambda: second.removed, "the second message")
        self.assertEqual(receiver.built, 1)
        self.assertEqual(self.relay._sessions, 1)
        # Stopping the relay lets the waiting connection quit.
        self.relay.stopService()
        await self.until(lambda: not self.relay._sessions, "the connection to quit")
        self.assertEqual(len(receiver.target.messages), 2)


    def sessionsReceiver(self, dropAtMail=0):
        receiver = self.receiver()
        receiver.protocol = ServerSessions
        receiver.sessions = []
        receiver.dropAtMail = dropAtMail
        return receiver

    async def test_idleConnectionClosedByTheServerLeavesTheCache(self):
        """
        The server closes a connection waiting idle for mail (it timed out,
        it restarts): the connection is gone at once, and the next message
        goes over a new one, not into the dead one to wait for a retry.
        """
        receiver = self.sessionsReceiver()
        self.startRelay(connectionIdle=30)
        first = await self.enqueue(["a@dest.test"])
        await self.until(lambda: first.removed, "the first message")
        self.assertEqual(self.relay._sessions, 1)
        receiver.sessions[0].transport.loseConnection()
        await self.until(lambda: not self.relay._sessions, "the idle connection to leave")
        self.assertEqual(self.relay._destinations, {})
        second = await self.enqueue(["b@dest.test"])
        await self.until(lambda: second.removed, "the second message")
        self.assertEqual(receiver.built, 2)
        self.assertEqual([m.recipients for m in receiver.target.messages], [["a@dest.test"], ["b@dest.test"]])
        self.relay.stopService()  # lets the new idle connection quit

    async def test_messageLostUnsentGoesAtOnceOverANewConnection(self):
        """
        The connection dies under a message before any of its data went out:
        it goes at once over a new connection, and that is its first attempt.
        """
        receiver = self.sessionsReceiver(dropAtMail=1)
        self.startRelay()
        entry = await self.enqueue(["a@dest.test"])
        await self.until(lambda: entry.removed, "the message")
        self.assertEqual(receiver.built, 2)
        self.assertEqual(entry.recipients[0].attempts, 1)
        self.assertEqual([m.recipients for m in receiver.target.messages], [["a@dest.test"]])

    async def test_unsentMessageOfADeadHostIsDeferredOnce(self):
        """
        A host that drops every connection at MAIL: the message is sent again
        once on a new connection, then deferred as one attempt; nothing loops.
        """
        self.dns.setMX("dest.test", [(10, "mx2.dest.test")])
        receiver = self.sessionsReceiver(dropAtMail=1000)
        self.startRelay()
        entry = await self.enqueue(["a@dest.test"])
        await self.until(lambda: entry.recipients[0].attempts, "the attempt")
        await self.until(self.idle)
        [recipient] = entry.recipients
        self.assertEqual((recipient.state, recipient.attempts), (PENDING, 1))
        self.assertEqual(recipient.due, self.clock.seconds() + 60)
        self.assertEqual(receiver.built, 2)


class SuspensionTests(RelayTestCase):
    async def test_unreachableDestinationIsNotTriedPerMessage(self):
        """
        When every MX of a destination refused, mail for it arriving before
        the first retry is deferred without a connection of its own; the
        retry, or a flush, tries the destination again.
        """
        first = self.receiver("127.0.0.2", factory=MisbehavingFactory(b"421 busy\r\n"))
        second = self.receiver("127.0.0.3", factory=MisbehavingFactory(b"421 busy\r\n"))
        self.startRelay()
        entry = await self.enqueue()
        await self.until(self.idle)
        self.assertEqual((first.built, second.built), (1, 1))
        later = [await self.enqueue(["b@dest.test"]) for _ in range(5)]
        await self.until(self.idle)
        self.assertEqual((first.built, second.built), (1, 1))
        for queued in later:
            [recipient] = queued.recipients
            self.assertEqual((recipient.state, recipient.attempts), (PENDING, 1))
            self.assertTrue(recipient.reason.startswith("delivery temporarily suspended: "))
            self.assertEqual(recipient.due, self.clock.seconds() + 60)
        # Other destinations are not affected.
        self.dns.setMX("other.test", [(10, "mx2.dest.test")])
        await self.enqueue(["c@other.test"])
        await self.until(lambda: second.built == 2, "a connection for another domain")
        await self.until(self.idle)
        # The retry: at most one connection per message and MX host (and
        # one for other.test), then all are deferred again.
        self.clock.advance(60)
        await self.until(lambda: second.built >= 3, "the retry")
        await self.until(self.idle)
        self.assertLessEqual(first.built, 1 + 6)
        self.assertLessEqual(second.built, 2 + 6 + 1)
        self.assertEqual(entry.recipients[0].attempts, 2)
        self.assertTrue(all(q.recipients[0].attempts == 2 for q in later))
        built = first.built
        self.queue.flush()
        await self.until(lambda: first.built > built, "the flush")
        await self.until(self.idle)

    async def test_failingConnectionsDoNotMultiply(self):
        """
        Several connections to a destination that fails: each ends, none is
        replaced by a new one while the others still run, and the mail is
        deferred when the last has ended.
        """
        refusing = self.receiver("127.0.0.2", factory=MisbehavingFactory(b"421 busy\r\n"))
        self.dns.setMX("dest.test", [(10, "mx1.dest.test")])
        queued = [await self.enqueue() for _ in range(8)]
        self.startRelay(maxPerDestination=4)
        await self.until(self.idle)
        self.assertLessEqual(refusing.built, 4)
        self.assertTrue(all(q.recipients[0].attempts == 1 for q in queued))
