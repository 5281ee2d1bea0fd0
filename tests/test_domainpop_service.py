"""
Tests of L{mdpy.domainpop.service} and L{mdpy.multipop.service}: whole
collection cycles against mdpy's own POP3 server on loopback playing the
ISP, delivering through the real pipeline into a Maildir store.
"""

import os

from twisted.internet import defer, reactor
from twisted.protocols import portforward

from mdpy import errors

from mdpy.directory.sqlite import SQLiteDirectory
from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.domainpop.recipients import RoutingRules
from mdpy.domainpop.service import Collector, CollectorSettings
from mdpy.multipop.service import MultiPOPAccounts, MultiPOPService
from mdpy.pop3.fetch import POP3Account
from mdpy.pop3.server import POP3Factory
from mdpy.store.maildir import MaildirStore
from mdpy.store.memory import MemoryStore
from mdpy.testing import TempDirTestCase, memoryPortal, synchronousRunner

BOX = "box@isp.test"
LOCAL = ["alice", "bob", "carol", "postmaster"]


def message(headers, body=b"Hello.\r\n", received=()):
    head = b"".join(b"Received: " + r + b"\r\n" for r in received)
    return head + headers.replace(b"\n", b"\r\n") + b"\r\n" + body


# The corpus: (name, message) as the ISP holds it, one copy per SMTP
# recipient, the envelope lost.
TO_CC_A = message(b"From: x@far.test\nTo: alice@example.test\nCc: bob@example.test\n"
                  b"Message-ID: <m1@far.test>\nSubject: to+cc\n")
TO_CC_B = TO_CC_A  # the second copy, for the other recipient
BCC_BARE = message(b"From: x@far.test\nTo: x@far.test\nMessage-ID: <m2@far.test>\nSubject: bcc\n")
BCC_HEADER = message(b"X-Rcpt-To: carol@example.test\nFrom: x@far.test\nTo: x@far.test\n"
                     b"Message-ID: <m3@far.test>\nSubject: bcc with header\n")
LIST = message(b"Delivered-To: alice@example.test\nFrom: x@far.test\nTo: list@lists.far.test\n"
               b"List-Id: <list.far.test>\nMessage-ID: <m4@far.test>\nSubject: list\n")
NO_ID = message(b"From: x@far.test\nTo: bob@example.test\nSubject: no id\n", body=b"Same body.\r\n")
NO_ID_COPY = message(b"From: x@far.test\nTo: bob@example.test\nSubject: no id\n", body=b"Same body.\r\n",
                     received=[b"from relay by mx.isp.test for <bob@example.test>; Mon, 1 Jan 2024 00:00:00 +0000"])
LOOP = message(b"From: x@far.test\nTo: alice@example.test\nMessage-ID: <m6@far.test>\nSubject: loop\n",
               received=[b"from a by b; Mon, 1 Jan 2024 00:00:00 +0000"] * 40)
UNKNOWN = message(b"From: x@far.test\nTo: nobody@example.test\nMessage-ID: <m7@far.test>\nSubject: unknown\n")
SAME_ID_OTHER = message(b"From: x@far.test\nTo: carol@example.test\nMessage-ID: <m1@far.test>\n"
                        b"Subject: same id, other person\n")
TEAM = message(b"From: x@far.test\nTo: team@example.test\nMessage-ID: <m9@far.test>\nSubject: alias\n")

CORPUS = [TO_CC_A, TO_CC_B, BCC_BARE, BCC_HEADER, LIST, NO_ID, NO_ID_COPY, LOOP, UNKNOWN, SAME_ID_OTHER, TEAM]
# What each mailbox gets from CORPUS: subjects.
EXPECTED = {
    "alice": ["alias", "list", "to+cc"],
    "bob": ["alias", "no id", "to+cc"],
    "carol": ["bcc with header", "same id, other person"],
    "postmaster": ["bcc", "unknown"],
}


class Crash(errors.TemporaryFailure):
    """
    Stands for the process dying at a step of the cycle.
    """


class CrashingCollector(Collector):
    crashAt = None
    crashAfter = 0  # occurrences of the step to let pass first

    def checkpoint(self, step):
        if step == self.crashAt:
            if self.crashAfter == 0:
                self.crashAt = None
                raise Crash(step)
            self.crashAfter -= 1


class ISP:
    """
    mdpy's POP3 server on 127.0.0.1 serving one catch-all mailbox.
    """

    def __init__(self, testCase, messages):
        self.store = MemoryStore()
        self.store.createAccount(BOX)
        for data in messages:
            self.store.deliver([(BOX, "INBOX", [data])])
        factory = POP3Factory(
            "pop.isp.test", self.store, allowPlaintext=True, runInThread=synchronousRunner,
            portal=memoryPortal(**{BOX: "secret"}),
        )
        self.factory = factory
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        testCase.addCleanup(self.port.stopListening)

    def account(self, **kwargs):
        return POP3Account("127.0.0.1", self.port.getHost().port, tls="none", username=BOX,
                           password="secret", timeout=10, **kwargs)

    def remaining(self):
        return len(self.store.openMailbox(BOX).messages())


class CollectorTestCase(TempDirTestCase):
    def setUp(self):
        self.root = self.tempDir()
        self.directory = SQLiteDirectory(os.path.join(self.root, "directory.sqlite"))
        self.directory.addDomain("example.test")
        for name in LOCAL:
            self.directory.addUser(name + "@example.test", "pw")
        self.directory.addAlias("team@example.test", ["alice@example.test", "bob@example.test"])
        self.store = MaildirStore(os.path.join(self.root, "mail"), runInThread=synchronousRunner)
        for name in LOCAL:
            self.store.createAccount(name + "@example.test")
        self.pipeline = DeliveryPipeline(self.directory, self.store, spoolDir=self.root)
        self.stateDir = os.path.join(self.root, "state")
        os.makedirs(self.stateDir)
        self.now = [1700000000.0]

    def collector(self, isp, cls=Collector, **settings):
        collector = cls(
            "domainpop/isp", isp.account(), CollectorSettings(**settings), self.pipeline, self.directory,
            self.stateDir, "mx.example.test", "postmaster@example.test", reactor=reactor,
            runInThread=synchronousRunner, clock=lambda: self.now[0],
        )
        self.addCleanup(collector.close)
        return collector

    def subjects(self, name):
        found = []
        mailbox = self.store.openMailbox(name + "@example.test")
        for m in mailbox.messages():
            data = m.open().read()
            for line in data.split(b"\r\n"):
                if line.startswith(b"Subject: "):
                    found.append(line[9:].decode())
                    break
        return sorted(found)

    def everything(self):
        return {name: self.subjects(name) for name in LOCAL}


class RoutingTests(CollectorTestCase):
    async def test_corpusByHeaders(self):
        """
        The default rules: every local address in the standard headers gets
        one copy; To+Cc copies and copies without Message-ID are deduplicated
        per person; a loop is held; unknown and unaddressed mail goes to the
        postmaster; the mailbox at the ISP ends empty.
        """
        isp = ISP(self, CORPUS)
        archive = os.path.join(self.root, "archive")
        report = await self.collector(isp, archiveDir=archive).collect()
        self.assertIsNone(report.error)
        self.assertEqual(self.everything(), EXPECTED)
        self.assertEqual(isp.remaining(), 0)
        self.assertEqual((report.listed, report.downloaded, report.deleted), (11, 11, 11))
        self.assertEqual(report.duplicates, 3)  # to+cc copy B (alice, bob) and the second no-id copy
        self.assertEqual(report.held, 1)
        [held] = os.listdir(os.path.join(self.stateDir, "held"))
        with open(os.path.join(self.stateDir, "held", held), "rb") as f:
            self.assertEqual(f.read(), LOOP)
        # The archive keeps the raw bytes of every download.
        archived = []
        for name in sorted(os.listdir(archive)):
            with open(os.path.join(archive, name), "rb") as f:
                archived.append(f.read())
        self.assertEqual(sorted(archived), sorted(CORPUS))
        # Each copy carries its own recipient and our Received line.
        [copy] = [m.open().read() for m in self.store.openMailbox("carol@example.test").messages()
                  if b"bcc with header" in m.open().read()]
        self.assertIn(b"X-Rcpt-To: carol@example.test\r\n", copy)
        self.assertEqual(copy.count(b"X-Rcpt-To:"), 1)
        self.assertIn(b"with POP3", copy)

    async def test_envelopeHeaderOnly(self):
        """
        With parse_headers naming the ISP's envelope header, each copy goes
        to exactly the recipient it names, To and Cc are ignored.
        """
        copies = [
            message(b"X-Rcpt-To: %s@example.test\nTo: alice@example.test\nCc: bob@example.test\n"
                    b"Message-ID: <e1@far.test>\nSubject: to+cc\n" % name.encode())
            for name in ("alice", "bob")
        ] + [message(b"X-Rcpt-To: carol@example.test\nTo: x@far.test\nMessage-ID: <e2@far.test>\n"
                     b"Subject: bcc\n")]
        isp = ISP(self, copies)
        await self.collector(isp, rules=RoutingRules(parseHeaders=["X-Rcpt-To"])).collect()
        self.assertEqual(self.everything(), {"alice": ["to+cc"], "bob": ["to+cc"], "carol": ["bcc"],
                                             "postmaster": []})

    async def test_receivedForTrustsOnlyTheISP(self):
        """
        Received-for routing takes only lines whose by-host is the ISP's; a
        forged line below names another user in vain.
        """
        forged = message(
            b"From: x@far.test\nTo: x@far.test\nMessage-ID: <r1@far.test>\nSubject: received\n",
            received=[b"from relay.far.test by mx.isp.test with ESMTP id 1\r\n\tfor <bob@example.test>;"
                      b" Mon, 1 Jan 2024 00:00:00 +0000",
                      b"from evil by evil.test for <alice@example.test>; Mon, 1 Jan 2024 00:00:00 +0000"],
        )
        isp = ISP(self, [forged])
        rules = RoutingRules(parseHeaders=["Received"], trustedReceivedHosts=["mx.isp.test"])
        await self.collector(isp, rules=rules).collect()
        self.assertEqual(self.subjects("bob"), ["received"])
        self.assertEqual(self.subjects("alice"), [])

    async def test_foreignAndUnknownPolicies(self):
        isp = ISP(self, [UNKNOWN, BCC_BARE])
        report = await self.collector(isp, unknownRecipient="drop").collect()
        self.assertEqual(self.everything(), {name: [] for name in LOCAL})
        self.assertEqual(report.dropped, 2)
        self.assertEqual(isp.remaining(), 0)

    async def test_bounceToTheSenderOrElseThePostmaster(self):
        """
        unknown_recipient = bounce: a DSN to the Return-Path; when there is
        none, or it cannot be delivered (no outbound queue here), the
        message goes to the postmaster instead of being lost.
        """
        local = b"Return-Path: <carol@example.test>\r\n" + UNKNOWN
        remote = b"Return-Path: <x@far.test>\r\n" + UNKNOWN.replace(b"m7@", b"m8@")
        isp = ISP(self, [local, remote, BCC_BARE])
        report = await self.collector(isp, unknownRecipient="bounce").collect()
        self.assertIsNone(report.error)
        [dsn] = [m.open().read() for m in self.store.openMailbox("carol@example.test").messages()]
        self.assertIn(b"multipart/report", dsn)
        self.assertIn(b"Final-Recipient: rfc822; nobody@example.test", dsn)
        self.assertIn(b"Status: 5.1.1", dsn)
        self.assertEqual(self.subjects("postmaster"), ["bcc", "unknown"])
        self.assertEqual(isp.remaining(), 0)

    async def test_tooBigSkippedOrDeletedWithANotice(self):
        isp = ISP(self, [LIST, TEAM + b"x" * 5000])
        report = await self.collector(isp, maxSize=2000).collect()
        self.assertEqual((report.skipped, isp.remaining()), (1, 1))
        self.assertEqual(self.subjects("alice"), ["list"])
        report = await self.collector(isp, maxSize=2000, sizeAction="delete").collect()
        self.assertEqual(isp.remaining(), 0)
        self.assertEqual(self.subjects("postmaster"), ["DomainPOP domainpop/isp deleted a message larger than max_size"])
        self.assertEqual(self.subjects("bob"), [])

    async def test_dedupeSurvivesRestartsAndCycles(self):
        """
        The second copy of a To+Cc message arriving in a later cycle, with a
        new collector (a restart), is still recognised.
        """
        isp = ISP(self, [TO_CC_A])
        await self.collector(isp).collect()
        isp.store.deliver([(BOX, "INBOX", [TO_CC_B])])
        report = await self.collector(isp).collect()
        self.assertEqual(report.duplicates, 2)
        self.assertEqual(self.subjects("alice"), ["to+cc"])
        self.assertEqual(self.subjects("bob"), ["to+cc"])


class LeaveOnServerTests(CollectorTestCase):
    async def test_leftMailIsNotDeliveredTwiceAndDeletedWhenDue(self):
        isp = ISP(self, [LIST, TEAM])
        collector = self.collector(isp, leaveOnServerDays=7)
        await collector.collect()
        self.assertEqual(isp.remaining(), 2)
        report = await self.collector(isp, leaveOnServerDays=7).collect()
        self.assertEqual((report.downloaded, report.deleted), (0, 0))
        self.assertEqual(self.subjects("alice"), ["alias", "list"])
        self.now[0] += 7 * 86400
        report = await self.collector(isp, leaveOnServerDays=7).collect()
        self.assertEqual((report.downloaded, report.deleted), (0, 2))
        self.assertEqual(isp.remaining(), 0)
        self.assertEqual(self.subjects("alice"), ["alias", "list"])


class CrashTests(CollectorTestCase):
    """
    The collector dies at each step of a cycle (on the third message); the
    next cycle, by a new collector, ends with every message delivered
    exactly once and the ISP mailbox empty.
    """

    async def crashAt(self, step, after=2, batchSize=1):
        isp = ISP(self, CORPUS)
        crashing = self.collector(isp, cls=CrashingCollector)
        crashing.crashAt, crashing.crashAfter = step, after
        crashing.batchSize = batchSize
        report = await crashing.collect()
        self.assertIn(step, report.error)
        self.assertFalse(crashing.running)
        self.assertEqual(isp.remaining(), len(CORPUS))  # no QUIT: nothing deleted
        crashing.close()
        report = await self.collector(isp).collect()
        self.assertIsNone(report.error)
        self.assertEqual(self.everything(), EXPECTED)
        self.assertEqual(isp.remaining(), 0)

    def test_crashAfterRetrieve(self):
        return defer.ensureDeferred(self.crashAt("retrieved"))

    def test_crashWhilePending(self):
        return defer.ensureDeferred(self.crashAt("pending"))

    def test_crashAfterDeliveryBeforeRecording(self):
        return defer.ensureDeferred(self.crashAt("delivered"))

    def test_crashAfterRecording(self):
        return defer.ensureDeferred(self.crashAt("recorded"))

    def test_crashAfterDele(self):
        return defer.ensureDeferred(self.crashAt("deleted"))

    def test_crashAfterABatchWasDelivered(self):
        return defer.ensureDeferred(self.crashAt("delivered", after=0, batchSize=50))

    def test_crashWhileABatchIsPending(self):
        return defer.ensureDeferred(self.crashAt("pending", after=0, batchSize=4))

    def test_crashBeforeQuit(self):
        return defer.ensureDeferred(self.crashAt("quit", after=0))


class FaultTests(CollectorTestCase):
    async def test_starttlsRequiredButNotOffered(self):
        isp = ISP(self, [LIST])
        collector = self.collector(isp)
        collector.account.tls = "starttls"
        isp.factory.tlsOptions = None
        report = await collector.collect()
        self.assertIn("STLS", report.error)
        self.assertEqual(isp.remaining(), 1)
        self.assertEqual(self.subjects("alice"), [])

    async def test_dropMidRetrieveDeletesNothing(self):
        """
        The connection drops in the middle of the second RETR: the first
        message is delivered, nothing is deleted at the ISP, and the next
        cycle delivers the second without repeating the first.
        """
        isp = ISP(self, [LIST, TEAM])
        proxy = DroppingProxyFactory("127.0.0.1", isp.port.getHost().port)
        port = reactor.listenTCP(0, proxy, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        collector = self.collector(isp)
        collector.account.port = port.getHost().port
        report = await collector.collect()
        self.assertIsNotNone(report.error)
        self.assertEqual(isp.remaining(), 2)
        self.assertEqual(self.subjects("alice"), ["list"])
        collector.close()
        report = await self.collector(isp).collect()
        self.assertIsNone(report.error)
        self.assertEqual(self.subjects("alice"), ["alias", "list"])
        self.assertEqual(self.subjects("bob"), ["alias"])
        self.assertEqual(isp.remaining(), 0)


class _DroppingServer(portforward.ProxyServer):
    def dataReceived(self, data):
        if data.upper().startswith(b"RETR 2"):
            self.factory.dropping = True
        portforward.ProxyServer.dataReceived(self, data)


class _DroppingClient(portforward.ProxyClient):
    def dataReceived(self, data):
        if self.factory.server.factory.dropping:
            self.peer.transport.write(data[:20])
            self.peer.transport.loseConnection()
            self.transport.loseConnection()
            return
        portforward.ProxyClient.dataReceived(self, data)


class _DroppingClientFactory(portforward.ProxyClientFactory):
    protocol = _DroppingClient


class _DroppingServerWithClient(_DroppingServer):
    clientProtocolFactory = _DroppingClientFactory


class DroppingProxyFactory(portforward.ProxyFactory):
    """
    A proxy to a POP3 server that cuts the connection in the middle of the
    answer to C{RETR 2}.
    """

    protocol = _DroppingServerWithClient
    dropping = False


class MultiPOPTests(CollectorTestCase):
    async def test_accountsCollectedIntoTheUsersInbox(self):
        isp = ISP(self, [BCC_BARE, UNKNOWN])
        accounts = MultiPOPAccounts(os.path.join(self.root, "multipop", "accounts.json"))
        accountId = accounts.add("carol@example.test", "127.0.0.1", isp.port.getHost().port, "none", BOX, "secret")
        self.assertEqual(os.stat(accounts.path).st_mode & 0o777, 0o600)

        def make(account):
            pop3 = POP3Account(account["host"], account["port"], tls=account["tls"],
                               username=account["username"], password=account["password"], timeout=10)
            state = os.path.join(self.root, "multipop", account["id"])
            os.makedirs(state, exist_ok=True)
            collector = Collector(
                "multipop/carol/" + account["id"], pop3, CollectorSettings(recipient=account["user"]),
                self.pipeline, self.directory, state, "mx.example.test", "postmaster@example.test",
                reactor=reactor, runInThread=synchronousRunner,
            )
            self.addCleanup(collector.close)
            return collector

        service = MultiPOPService(accounts, make, 600)
        [report] = await service.runNow()
        self.assertIsNone(report.error)
        self.assertEqual(self.subjects("carol"), ["bcc", "unknown"])
        self.assertEqual(isp.remaining(), 0)
        accounts.remove(accountId)
        self.assertEqual(await service.runNow(), [])
