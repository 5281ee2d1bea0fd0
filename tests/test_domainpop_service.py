"""
Tests of L{mdpy.collect} and L{mdpy.multipop.service}: whole
collection cycles against mdpy's own POP3 server on loopback playing the
ISP, delivering through the real pipeline into a Maildir store.
"""

import functools
import os
import re

from twisted.internet import defer, reactor
from twisted.logger import LogLevel, formatEvent
from twisted.protocols import portforward

from mdpy import errors

from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.domainpop.recipients import RoutingRules
from mdpy.collect.collector import Collector, CollectorSettings
from mdpy.collect.held import heldMessages
from mdpy.backends.files.collectorstate import CollectorStates
from mdpy.backends.files.remoteaccounts import RemoteAccountsFile
from mdpy.multipop.service import MultiPOPService
from mdpy.pop3.client import POP3Account
from mdpy.pop3.server import POP3Factory
from mdpy.backends.files.maildir import MaildirStore
from mdpy.backends.memory import MemoryStore
from mdpy.testing import RecordingTarget, TempDirTestCase, memoryPortal, synchronousRunner, resultOf
from tests.test_minger import captureLogs

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
            "pop.isp.test", self.store, allowPlaintext=True,
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
        self.now = [1700000000.0]
        # The states as the files backend keeps them.
        self.states = CollectorStates(self.root, clock=lambda: self.now[0])
        self.addCleanup(self.states.close)
        self.stateDir = os.path.join(self.root, "domainpop", "isp")
        self.openState = functools.partial(self.states.stateOf, "domainpop/isp")
        os.makedirs(self.stateDir)

    def collector(self, isp, cls=Collector, **settings):
        collector = cls(
            "domainpop/isp", isp.account(), CollectorSettings(**settings), self.pipeline, self.directory,
            self.stateDir, "mx.example.test", "postmaster@example.test", reactor=reactor,
            runInThread=synchronousRunner, clock=lambda: self.now[0], openState=self.openState,
        )
        self.addCleanup(collector.close)
        return collector

    def subjects(self, name):
        found = []
        mailbox = self.store.openMailbox(name + "@example.test")
        for m in mailbox.messages():
            data = resultOf(m.read())
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
        [copy] = [resultOf(m.read()) for m in self.store.openMailbox("carol@example.test").messages()
                  if b"bcc with header" in resultOf(m.read())]
        self.assertIn(b"X-Rcpt-To: carol@example.test\r\n", copy)
        self.assertEqual(copy.count(b"X-Rcpt-To:"), 1)
        self.assertIn(b"with POP3", copy)
        # The same Received layout as mail accepted over SMTP.
        self.assertRegex(
            copy,
            rb"Received: from \S+\r\n\tby \S+ \(mdpy\) with POP3 id \S+\r\n\t"
            rb"for <carol@example\.test>\r\n\t\([^()]+\);\r\n\t[^\r\n]+ [+-]\d{4}\r\n",
        )

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

    async def test_subaddressRoutedToItsUser(self):
        """
        A subaddress in the envelope header goes to its user, the copy
        naming the whole address; one of no user goes to the postmaster.
        """
        copies = [
            message(b"X-Rcpt-To: carol+lists@example.test\nMessage-ID: <s1@far.test>\nSubject: tagged\n"),
            message(b"X-Rcpt-To: nobody+x@example.test\nMessage-ID: <s2@far.test>\nSubject: unknown\n"),
        ]
        isp = ISP(self, copies)
        await self.collector(isp, rules=RoutingRules(parseHeaders=["X-Rcpt-To"])).collect()
        self.assertEqual(self.everything(), {"alice": [], "bob": [], "carol": ["tagged"], "postmaster": ["unknown"]})
        [copy] = [resultOf(m.read()) for m in self.store.openMailbox("carol@example.test").messages()]
        self.assertIn(b"X-Rcpt-To: carol+lists@example.test\r\n", copy)

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

    async def test_eachMessageGetsOneLineSayingWhereItWent(self):
        """
        One info line per downloaded message: its Message-ID and UIDL, the
        ISP mailbox, the local recipients with the id of the delivery that
        the pipeline's lines show, and what else became of it.
        """
        events = captureLogs(self)
        isp = ISP(self, [TO_CC_A, TO_CC_B, UNKNOWN])
        await self.collector(isp).collect()
        lines = logged(events, LogLevel.info, "domainpop/isp: <m")
        self.assertEqual(len(lines), 3, lines)
        pattern = (r"domainpop/isp: <%s> \(UIDL (\S+)\) from box@isp\.test at 127\.0\.0\.1: %s\Z")
        first = re.match(pattern % (r"m1@far\.test", r"delivered to <alice@example\.test>, <bob@example\.test>"
                                                    r" as (\S+)"), lines[0])
        self.assertTrue(first, lines[0])
        self.assertRegex(lines[1], pattern % (r"m1@far\.test", r"duplicate for <alice@example\.test>,"
                                                               r" <bob@example\.test>: dropped"))
        unknown = re.match(pattern % (r"m7@far\.test", r"to the postmaster <postmaster@example\.test> as (\S+):"
                                                      r" unknown nobody@example\.test"), lines[2])
        self.assertTrue(unknown, lines[2])
        # The ids are those of the pipeline's lines.
        deliveries = logged(events, LogLevel.info, "deliver: ")
        self.assertEqual(deliveries, [
            "deliver: %s to=<alice@example.test> folder=INBOX status=stored" % (first.group(2),),
            "deliver: %s to=<bob@example.test> folder=INBOX status=stored" % (first.group(2),),
            "deliver: %s to=<postmaster@example.test> folder=INBOX status=stored" % (unknown.group(2),),
        ])

    async def test_foreignAndUnknownPolicies(self):
        """
        unknown_recipient = drop drops, and says so in the log at info, one
        line per message naming it and why.
        """
        events = captureLogs(self)
        isp = ISP(self, [UNKNOWN, BCC_BARE])
        report = await self.collector(isp, unknownRecipient="drop").collect()
        self.assertEqual(self.everything(), {name: [] for name in LOCAL})
        self.assertEqual((report.dropped, report.held), (2, 0))
        self.assertEqual(isp.remaining(), 0)
        dropped = logged(events, LogLevel.info, "dropped: ")
        self.assertEqual(len(dropped), 2)
        self.assertRegex(dropped[0], r"^domainpop/isp: <m7@far\.test> \(UIDL \S+\) from box@isp\.test at 127\.0\.0\.1:"
                                     r" dropped: unknown nobody@example\.test \(unknown_recipient = drop\)$")
        self.assertIn("<m2@far.test>", dropped[1])
        self.assertIn("dropped: no recipient found", dropped[1])
        self.assertEqual(heldMessages(self.stateDir, self.openState), [])

    async def test_bounceToTheSenderOrElseThePostmaster(self):
        """
        unknown_recipient = bounce: a DSN to the Return-Path; when there is
        none, or it cannot be delivered (no outbound queue here), the
        message goes to the postmaster instead of being lost.
        """
        events = captureLogs(self)
        local = b"Return-Path: <carol@example.test>\r\n" + UNKNOWN
        remote = b"Return-Path: <x@far.test>\r\n" + UNKNOWN.replace(b"m7@", b"m8@")
        isp = ISP(self, [local, remote, BCC_BARE])
        report = await self.collector(isp, unknownRecipient="bounce").collect()
        self.assertIsNone(report.error)
        self.assertEqual((report.bounced, report.dropped, report.held), (1, 0, 0))
        self.assertIn("1 bounced", report.summary())
        [bounced] = logged(events, LogLevel.info, "domainpop/isp: <m7@far.test> (UIDL ")
        self.assertTrue(bounced.endswith(": bounced to <carol@example.test>: unknown nobody@example.test"
                                         " (unknown_recipient = bounce)"), bounced)
        [dsn] = [resultOf(m.read()) for m in self.store.openMailbox("carol@example.test").messages()]
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

    async def test_tooBigDeleteTellsThePostmasterAndTheLog(self):
        """
        size_action = delete: the message larger than max_size is deleted
        at the ISP without download, the postmaster gets a notice naming
        it, and the log says so at info.
        """
        events = captureLogs(self)
        isp = ISP(self, [TEAM + b"x" * 5000, LIST])
        report = await self.collector(isp, maxSize=2000, sizeAction="delete").collect()
        self.assertEqual((report.error, report.deleted, report.downloaded), (None, 2, 1))
        self.assertEqual(isp.remaining(), 0)
        [notice] = [resultOf(m.read()) for m in self.store.openMailbox("postmaster@example.test").messages()]
        self.assertIn(b"Message #1 (UIDL ", notice)
        self.assertIn(b", %d octets) was deleted at 127.0.0.1 without download." % (len(TEAM) + 5000,), notice)
        [line] = logged(events, LogLevel.info, "domainpop/isp: deleted message #1 (UIDL ")
        self.assertIn(" at 127.0.0.1 without download, larger than max_size 2000 (size_action = delete);"
                      " the postmaster postmaster@example.test was told", line)
        self.assertEqual((self.subjects("alice"), self.subjects("bob")), (["list"], []))

    async def test_tooBigDeleteNoticeFailingForNow(self):
        """
        size_action = delete and the notice to the postmaster fails for
        now: the cycle stops before QUIT, so nothing is deleted, and the
        next cycle deletes it once the notice is sent.
        """
        isp = ISP(self, [TEAM + b"x" * 5000, LIST])
        target = RecordingTarget()
        target.recipientErrors["postmaster@example.test"] = errors.TemporaryFailure("disk full")
        collector = self.collector(isp, maxSize=2000, sizeAction="delete")
        collector.pipeline = target
        report = await collector.collect()
        self.assertIn("disk full", report.error)
        self.assertEqual((isp.remaining(), target.messages), (2, []))
        del target.recipientErrors["postmaster@example.test"]
        report = await collector.collect()
        self.assertIsNone(report.error)
        self.assertEqual(isp.remaining(), 0)
        self.assertEqual([m.recipients for m in target.messages],
                         [["postmaster@example.test"], ["alice@example.test"]])

    async def test_tooBigToThePostmaster(self):
        """
        size_action = postmaster: the message larger than max_size is
        downloaded and delivered to the postmaster alone, not to its
        recipients; its second copy at the ISP (To+Cc) is a duplicate; the
        smaller ones are delivered as usual.
        """
        big = TO_CC_A.replace(b"Hello.", b"x" * 5000)
        isp = ISP(self, [big, LIST, big])
        report = await self.collector(isp, maxSize=2000, sizeAction="postmaster").collect()
        self.assertIsNone(report.error)
        self.assertEqual((report.downloaded, report.copies, report.duplicates, report.held), (3, 2, 1, 0))
        self.assertEqual(self.everything(), {"alice": ["list"], "bob": [], "carol": [], "postmaster": ["to+cc"]})
        self.assertEqual(isp.remaining(), 0)
        self.assertEqual(len([line for line in report.lines if line.startswith("#1 ") and line.endswith(
            ": %d octets, larger than max_size 2000: to the postmaster" % (len(big),))]), 1)
        # Neither a restart nor the same message again brings a second copy.
        isp.store.deliver([(BOX, "INBOX", [big])])
        report = await self.collector(isp, maxSize=2000, sizeAction="postmaster").collect()
        self.assertEqual((report.duplicates, report.copies), (1, 0))
        self.assertEqual(self.subjects("postmaster"), ["to+cc"])

    async def test_largerThanMaxMessageSizeLeftAtTheISP(self):
        """
        A message larger than the largest mdpy takes would be abandoned
        mid-download at every cycle; it is left at the ISP, logged at warn,
        and the messages after it are collected.
        """
        events = captureLogs(self)
        isp = ISP(self, [TEAM + b"x" * 5000, LIST])
        for cycle in range(2):
            report = await self.collector(isp, maxMessageSize=3000).collect()
            self.assertEqual((report.error, report.skipped), (None, 1))
            self.assertEqual(isp.remaining(), 1)
        self.assertEqual((self.subjects("alice"), self.subjects("bob")), (["list"], []))
        warned = logged(events, LogLevel.warn, "domainpop/isp: left message #1 (UIDL ")
        self.assertEqual(len(warned), 2)
        self.assertIn(", %d octets) at 127.0.0.1: larger than [smtp] max_message_size 3000, it cannot be"
                      " collected" % (len(TEAM) + 5000,), warned[0])

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


def logged(events, level, text):
    """
    @return: the formatted events of C{level} among C{events} that contain
        C{text}.
    """
    return [formatEvent(e) for e in events if e.get("log_level") == level and text in formatEvent(e)]


class HeldTests(CollectorTestCase):
    """
    A message whose policy's target cannot take it is kept in the held
    folder, the administrator told, and only then deleted at the ISP.
    """

    def setUp(self):
        CollectorTestCase.setUp(self)
        self.directory.removeUser("postmaster@example.test")
        self.events = captureLogs(self)

    def assertHeld(self, isp, expected):
        """
        The ISP is empty; the held folder has the messages C{expected}
        (C{[(data, reason)]}), listed with why, sender, subject and size,
        each logged at warn.
        """
        self.assertEqual(isp.remaining(), 0)
        held = {}
        for message in heldMessages(self.stateDir, self.openState):
            with open(message.path, "rb") as f:
                held[f.read()] = message
        self.assertEqual(sorted(held), sorted(data for data, reason in expected))
        warned = logged(self.events, LogLevel.warn, "held in ")
        self.assertEqual(len(warned), len(expected))
        for data, reason in expected:
            message = held[data]
            self.assertEqual(os.path.dirname(message.path), os.path.join(self.stateDir, "held"))
            self.assertEqual(message.reason, reason)
            self.assertEqual(message.size, len(data))
            self.assertEqual(message.heldAt, self.now[0])
            [line] = [line for line in warned if message.path in line]
            self.assertTrue(line.endswith(": " + reason), line)
        return [held[data] for data, reason in expected]

    async def test_unknownWithoutPostmaster(self):
        """
        unknown_recipient = postmaster with no postmaster account: held,
        not dropped; a second cycle finds nothing to do.
        """
        isp = ISP(self, [UNKNOWN, BCC_BARE])
        report = await self.collector(isp).collect()
        self.assertIsNone(report.error)
        self.assertEqual((report.held, report.dropped, report.deleted), (2, 0, 2))
        held = self.assertHeld(isp, [
            (UNKNOWN, "unknown nobody@example.test; the postmaster postmaster@example.test cannot take it:"
                      " no such user: postmaster@example.test"),
            (BCC_BARE, "no recipient found; the postmaster postmaster@example.test cannot take it:"
                       " no such user: postmaster@example.test"),
        ])
        self.assertEqual([(m.sender, m.subject) for m in held], [("x@far.test", "unknown"), ("x@far.test", "bcc")])
        self.assertEqual(len([line for line in logged(self.events, LogLevel.warn, "domainpop/isp: <m7@far.test> (UIDL ")
                              if "held in " in line and "unknown nobody@example.test" in line]), 1)
        self.assertEqual(self.everything(), {name: [] for name in LOCAL})
        report = await self.collector(isp).collect()
        self.assertEqual((report.listed, report.held), (0, 0))
        self.assertEqual(len(heldMessages(self.stateDir, self.openState)), 2)

    async def test_unknownAmongKnown(self):
        """
        Known recipients get their copy; the unknown one's is held.
        """
        mixed = message(b"From: x@far.test\nTo: alice@example.test, nobody@example.test\n"
                        b"Message-ID: <mixed@far.test>\nSubject: mixed\n")
        isp = ISP(self, [mixed])
        report = await self.collector(isp).collect()
        self.assertEqual((report.copies, report.held), (1, 1))
        self.assertEqual(self.subjects("alice"), ["mixed"])
        [held] = heldMessages(self.stateDir, self.openState)
        self.assertTrue(held.reason.startswith("unknown nobody@example.test; the postmaster"), held.reason)
        self.assertEqual(isp.remaining(), 0)

    async def test_bounceImpossibleWithoutPostmaster(self):
        """
        unknown_recipient = bounce: without a Return-Path, with a null one,
        or when the bounce cannot be sent (to an unknown local sender), and
        no postmaster to fall back on: held, saying why.
        """
        nullSender = b"Return-Path: <>\r\n" + UNKNOWN.replace(b"m7@", b"n1@")
        unknownSender = b"Return-Path: <ghost@example.test>\r\n" + UNKNOWN.replace(b"m7@", b"n2@")
        isp = ISP(self, [UNKNOWN, nullSender, unknownSender])
        report = await self.collector(isp, unknownRecipient="bounce").collect()
        self.assertIsNone(report.error)
        postmaster = ("; the postmaster postmaster@example.test cannot take it:"
                      " no such user: postmaster@example.test")
        held = self.assertHeld(isp, [
            (UNKNOWN, "unknown nobody@example.test; no Return-Path to bounce to" + postmaster),
            (nullSender, "unknown nobody@example.test; no Return-Path to bounce to" + postmaster),
            (unknownSender, "unknown nobody@example.test; no bounce to ghost@example.test:"
                            " no such user: ghost@example.test" + postmaster),
        ])
        self.assertEqual([m.sender for m in held], ["x@far.test", "x@far.test", "ghost@example.test"])

    async def test_permanentFailureOfThePostmaster(self):
        """
        Any permanent failure of the postmaster's delivery holds the
        message; a temporary one leaves it at the ISP for the next cycle.
        """
        isp = ISP(self, [UNKNOWN])
        target = RecordingTarget()
        collector = self.collector(isp)
        collector.pipeline = target
        target.recipientErrors["nobody@example.test"] = errors.NotFound("no such address")
        target.recipientErrors["postmaster@example.test"] = errors.TemporaryFailure("disk full")
        report = await collector.collect()
        self.assertIn("disk full", report.error)
        self.assertEqual((isp.remaining(), heldMessages(self.stateDir, self.openState)), (1, []))
        target.recipientErrors["postmaster@example.test"] = errors.TooBig("larger than 1 octet")
        report = await collector.collect()
        self.assertIsNone(report.error)
        self.assertHeld(isp, [(UNKNOWN, "unknown nobody@example.test; the postmaster postmaster@example.test"
                                        " cannot take it: larger than 1 octet")])
        self.assertEqual(target.messages, [])

    async def test_permanentFailureOfTheRecipients(self):
        """
        A delivery that fails permanently as a whole is held, not retried
        at every cycle in front of the rest of the mailbox.
        """
        isp = ISP(self, [LIST, TEAM])
        target = RecordingTarget()
        collector = self.collector(isp)
        collector.pipeline = target
        target.recipientErrors["alice@example.test"] = errors.TooBig("larger than the quota allows")
        report = await collector.collect()
        self.assertIsNone(report.error)
        self.assertHeld(isp, [(LIST, "delivery to alice@example.test failed: larger than the quota allows")])
        [delivered] = target.messages
        self.assertEqual(delivered.recipients, ["team@example.test"])

    async def test_overQuotaRecipientIsHeldAndThePostmasterTold(self):
        """
        A recipient whose account is full (L{mdpy.quota}) has the message
        held, and the postmaster a notice; the others get it.
        """
        isp = ISP(self, [TO_CC_A])
        target = RecordingTarget()
        collector = self.collector(isp)
        collector.pipeline = target
        target.recipientErrors["alice@example.test"] = errors.QuotaExceeded(
            "alice@example.test is over its quota (2 of 2 messages)")
        report = await collector.collect()
        self.assertIsNone(report.error)
        self.assertHeld(isp, [(TO_CC_A, "over quota: alice@example.test is over its quota (2 of 2 messages)")])
        delivered, notice = target.messages
        self.assertEqual(delivered.recipients, ["bob@example.test"])
        self.assertEqual(notice.recipients, ["postmaster@example.test"])
        self.assertIn(b"Subject: domainpop/isp held a message for a mailbox over its quota", notice.data)
        self.assertIn(b"for alice@example.test was held", notice.data)

    async def test_messageFittingNoQuotaIsHeld(self):
        """
        At the commit, a message that fits the quota of none of its
        accounts is held as a whole, not left at the server.
        """
        isp = ISP(self, [TO_CC_A])
        target = RecordingTarget()
        collector = self.collector(isp)
        collector.pipeline = target
        target.commitError = errors.LargerThanQuota("larger than the quota (1K)")
        report = await collector.collect()
        self.assertIsNone(report.error)
        self.assertHeld(isp, [(TO_CC_A, "over quota: larger than the quota (1K); larger than the quota (1K)")])

    async def test_tooBigDeletedWithoutPostmaster(self):
        """
        size_action = delete with no postmaster to tell: the message is
        deleted all the same, as configured, the log says so at warn, and
        the next message is collected in the same cycle, not held up
        behind it.
        """
        big = TEAM + b"x" * 5000
        isp = ISP(self, [big, LIST])
        report = await self.collector(isp, maxSize=2000, sizeAction="delete").collect()
        self.assertIsNone(report.error)
        self.assertEqual((report.deleted, report.held, isp.remaining()), (2, 0, 0))
        self.assertEqual(self.subjects("alice"), ["list"])
        [line] = logged(self.events, LogLevel.warn, "domainpop/isp: deleted message #1 (UIDL ")
        self.assertIn(", %d octets) at 127.0.0.1 without download, larger than max_size 2000"
                      " (size_action = delete); the postmaster postmaster@example.test cannot be told:"
                      " no such user: postmaster@example.test" % (len(big),), line)
        self.assertEqual(heldMessages(self.stateDir, self.openState), [])

    async def test_tooBigForAbsentPostmasterHeld(self):
        """
        size_action = postmaster with no postmaster: the message larger
        than max_size is held, not given to its recipients nor dropped.
        """
        big = TEAM + b"x" * 5000 + b"\r\n"
        isp = ISP(self, [big, LIST])
        report = await self.collector(isp, maxSize=2000, sizeAction="postmaster").collect()
        self.assertIsNone(report.error)
        self.assertHeld(isp, [(big, "%d octets, larger than max_size 2000; the postmaster postmaster@example.test"
                                    " cannot take it: no such user: postmaster@example.test" % (len(big),))])
        self.assertEqual((self.subjects("alice"), self.subjects("bob")), (["list"], []))

    async def test_loopHeld(self):
        isp = ISP(self, [LOOP])
        report = await self.collector(isp).collect()
        self.assertEqual(report.held, 1)
        self.assertHeld(isp, [(LOOP, "a loop: 40 Received headers, more than max_hops 30")])

    def test_listing(self):
        """
        The listing is oldest first; a file held before reasons were
        recorded is listed with its time and no reason; a file the
        administrator removed is gone; an empty or missing folder lists
        nothing; sender and subject are made printable.
        """
        self.assertEqual(heldMessages(os.path.join(self.root, "nowhere"), self.openState), [])
        held = os.path.join(self.stateDir, "held")
        os.makedirs(held)
        self.assertEqual(heldMessages(self.stateDir, self.openState), [])
        old = os.path.join(held, "old.eml")
        with open(old, "wb") as f:
            f.write(b"From: Someone <a@far.test>\r\nSubject: =?utf-8?q?caf=C3=A9?= \x1b[2J\r\n\r\nx\r\n")
        os.utime(old, (1600000000, 1600000000))
        state = self.openState()
        with open(os.path.join(held, "new.eml"), "wb") as f:
            f.write(BCC_BARE)
        state.recordHeld("new.eml", "uid-1", "why\nnot")
        state.recordHeld("gone.eml", "uid-2", "removed since")
        listed = heldMessages(self.stateDir, self.openState)
        self.assertEqual(
            [(m.heldAt, m.reason, m.sender, m.subject, os.path.basename(m.path)) for m in listed],
            [(1600000000, "no reason recorded", "a@far.test", "caf\u00e9 \\x1b[2J", "old.eml"),
             (self.now[0], "why\\nnot", "x@far.test", "bcc", "new.eml")],
        )


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
        # The loop held before the crash and again after it: one file.
        self.assertEqual(len(heldMessages(self.stateDir, self.openState)), 1)

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
    def service(self, isp, user):
        """
        @return: a L{MultiPOPService} collecting the ISP mailbox into
            C{user}'s INBOX, and the account's id.
        """
        accounts = RemoteAccountsFile(os.path.join(self.root, "multipop", "accounts.json"))
        accountId = accounts.add(user, "127.0.0.1", isp.port.getHost().port, "none", BOX, "secret")
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
                openState=functools.partial(self.states.stateOf, "multipop/" + account["id"]),
            )
            self.addCleanup(collector.close)
            return collector

        return MultiPOPService(accounts, make, 600), accountId

    async def test_accountsCollectedIntoTheUsersInbox(self):
        isp = ISP(self, [BCC_BARE, UNKNOWN])
        service, accountId = self.service(isp, "carol@example.test")
        [report] = await service.runNow()
        self.assertIsNone(report.error)
        self.assertEqual(self.subjects("carol"), ["bcc", "unknown"])
        self.assertEqual(isp.remaining(), 0)
        service.accounts.remove(accountId)
        self.assertEqual(await service.runNow(), [])

    async def test_userGoneAndNoPostmaster(self):
        """
        The user of an account was deleted and there is no postmaster:
        the mail is held in the account's held folder, not dropped.
        """
        events = captureLogs(self)
        self.directory.removeUser("carol@example.test")
        self.directory.removeUser("postmaster@example.test")
        isp = ISP(self, [BCC_BARE])
        service, accountId = self.service(isp, "carol@example.test")
        [report] = await service.runNow()
        self.assertIsNone(report.error)
        self.assertEqual((report.held, report.dropped), (1, 0))
        self.assertEqual(isp.remaining(), 0)
        [held] = heldMessages(os.path.join(self.root, "multipop", accountId),
                              functools.partial(self.states.stateOf, "multipop/" + accountId))
        self.assertEqual(held.reason, "unknown carol@example.test; the postmaster postmaster@example.test"
                                      " cannot take it: no such user: postmaster@example.test")
        with open(held.path, "rb") as f:
            self.assertEqual(f.read(), BCC_BARE)
        [line] = logged(events, LogLevel.warn, "held")
        self.assertTrue(line.startswith("multipop/carol/%s: <m2@far.test> (UIDL " % (accountId,)), line)
        self.assertIn(" from box@isp.test at 127.0.0.1: held in %s: unknown carol@example.test;" % (held.path,), line)
