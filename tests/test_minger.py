"""
Tests for L{mdpy.minger}: the wire format, the server, the client and the
SMTP recipient check.
"""

import random

from twisted.application import internet
from twisted.internet import defer, reactor, task
from twisted.internet.error import CannotListenError, DNSLookupError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.dns import PermanentDNSFailure
from mdpy.errors import (
    InvalidInput,
    NotFound,
    TemporaryFailure,
    Unavailable,
)
from mdpy.logs import Logger
from mdpy.minger import protocol
from mdpy.minger.client import MingerClient, MingerVerifier
from mdpy.minger.protocol import (
    MAX_QUERY,
    MalformedQuery,
    Query,
    digest,
    formatQuery,
    formatReply,
    parseQuery,
    parseReply,
)
from mdpy.minger.server import MingerServer, mailboxStatus, makeMingerService
from mdpy.testing import TempDirTestCase, capturedLogs

SECRET = "0123456789abcdef"
GOOD_DIGEST = "A7E/WJtlUbO5NWDjZba+bw=="

# What the directory of makeDirectory says of each address.
EXPECTED = {
    "alice@example.com": 5,  # a user
    "ALICE@Example.COM": 5,  # the same, in other case
    "bob@example.com": 4,  # a disabled user
    "info@example.com": 5,  # an alias of alice
    "forward@example.com": 5,  # an alias of a remote address
    "asleep@example.com": 4,  # an alias of bob only
    "nobody@example.com": 3,  # nothing
    "anyone@catch.example": 5,  # the catch-all of catch.example
    "alice@elsewhere.example": 3,  # a domain not ours
    "a@[192.0.2.7]": 3,  # an address literal
    "alice+news@example.com": 5,  # a subaddress of alice
    "bob+news@example.com": 4,  # a subaddress of bob
    "info+x@example.com": 5,  # a subaddress of an alias of alice
    "nobody+x@example.com": 3,  # a subaddress of no one
}


def makeDirectory(testCase):
    """
    @return: a L{SQLiteDirectory} in a temporary directory with the
        addresses of L{EXPECTED}.
    """
    directory = SQLiteDirectory(testCase.tempDir() + "/directory.sqlite")
    testCase.addCleanup(directory.close)
    directory.addDomain("example.com")
    directory.addDomain("catch.example")
    directory.addUser("alice@example.com", "wonderland")
    directory.addUser("bob@example.com", "builder")
    directory.setEnabled("bob@example.com", False)
    directory.addAlias("info@example.com", ["alice@example.com"])
    directory.addAlias("forward@example.com", ["someone@remote.example"])
    directory.addAlias("asleep@example.com", ["bob@example.com"])
    directory.setCatchAll("catch.example", "alice@example.com")
    return directory


def captureLogs(testCase):
    """
    @return: a list receiving every log event until the test ends.
    """
    return testCase.enterContext(capturedLogs())


def warnings(events, text):
    """
    @return: the formatted warnings among C{events} that contain C{text}.
    """
    found = []
    for event in events:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            line = formatEvent(event)
            if text in line:
                found.append(line)
    return found


# --- the wire format -------------------------------------------------------


class DigestTests(unittest.SynchronousTestCase):
    def test_workedExample(self):
        """
        The digest is base64(MD5(secret ":" mailbox)), with padding: the
        worked example of the research notes.
        """
        self.assertEqual(digest(SECRET, "arvel@example.com"), GOOD_DIGEST)
        self.assertEqual(digest(SECRET.encode(), b"arvel@example.com"), GOOD_DIGEST)

    def test_dependsOnSecretAndMailbox(self):
        self.assertNotEqual(digest(SECRET, "Arvel@example.com"), GOOD_DIGEST)
        self.assertNotEqual(digest(SECRET + "x", "arvel@example.com"), GOOD_DIGEST)
        self.assertEqual(len(digest("s", "a@b.c")), 24)


class QueryFormatTests(unittest.SynchronousTestCase):
    def test_formatQuery(self):
        self.assertEqual(formatQuery("arvel@example.com"), b"arvel@example.com")
        self.assertEqual(formatQuery("arvel@example.com", ""), b"arvel@example.com")
        self.assertEqual(
            formatQuery("arvel@example.com", SECRET),
            b"arvel@example.com d=" + GOOD_DIGEST.encode(),
        )

    def test_formatQueryRefusesBadMailboxes(self):
        for bad in ["", "arvel", "arvel@", "a b@example.com", '"a b"@example.com',
                    "a@example.com d=x", "a\x00@example.com", "a" * 250 + "@example.com"]:
            self.assertRaises(InvalidInput, formatQuery, bad, SECRET)

    def test_roundTrip(self):
        for mailbox in ["arvel@example.com", "Arvel.Q+tag@Example.COM",
                        "j\u00fcrgen@m\u00fcnchen.example", '"odd"@example.com',
                        "a@[192.0.2.1]"]:
            for secret in [None, SECRET]:
                query = parseQuery(formatQuery(mailbox, secret))
                self.assertEqual(query.mailbox, mailbox)
                self.assertEqual(query.digest, digest(secret, mailbox) if secret else None)
                self.assertEqual(query.tags, {})

    def test_trailingWhiteSpace(self):
        self.assertEqual(
            parseQuery(b"arvel@example.com d=" + GOOD_DIGEST.encode() + b" \r\n"),
            Query("arvel@example.com", GOOD_DIGEST),
        )
        self.assertEqual(parseQuery(b"arvel@example.com\n"), Query("arvel@example.com"))

    def test_unknownTagsKept(self):
        query = parseQuery(b"arvel@example.com d=" + GOOD_DIGEST.encode() + b" x_1=ab X_1=9")
        self.assertEqual(query.digest, GOOD_DIGEST)
        self.assertEqual(query.tags, {"x_1": "ab", "X_1": "9"})
        self.assertEqual(parseQuery(b"a@example.com v=2").tags, {"v": "2"})

    def test_uppercaseDIsATag(self):
        """
        Tag names are case-sensitive in -06 (C{%x64}): C{D=} is a tag, not
        the digest; the query is anonymous.
        """
        query = parseQuery(b"arvel@example.com D=abc")
        self.assertIsNone(query.digest)
        self.assertEqual(query.tags, {"D": "abc"})
        # A digest under D= is not a valid tag value.
        error = self.assertRaises(
            MalformedQuery, parseQuery, b"arvel@example.com D=" + GOOD_DIGEST.encode()
        )
        self.assertEqual(error.mailbox, "arvel@example.com")

    def assertMalformed(self, datagram, mailbox):
        error = self.assertRaises(MalformedQuery, parseQuery, datagram)
        self.assertEqual(error.mailbox, mailbox, datagram[:80])
        self.assertIsInstance(error, InvalidInput)
        self.assertTrue(error.reason)
        return error

    def test_malformed(self):
        """
        Every kind of malformed query raises L{MalformedQuery}, with the
        first token to echo when it is printable and short enough.
        """
        good = b" d=" + GOOD_DIGEST.encode()
        cases = [
            (b"", None),
            (b"\r\n", None),
            (b" a@example.com", None),
            (b"a@example.com " + b"x" * 65536, "a@example.com"),
            (b"a@example.com" + good + b" " * (MAX_QUERY - 30) + b"x=1", "a@example.com"),
            (b"x" * 65536, None),
            (b"\x00\x01\x02\xff" * 16, None),
            (b"a@example.com\x00", None),
            (b"a@exa\x00mple.com d=x", None),
            (b"a@example.com\td=x", None),
            (b"a@example.com d=\xff", "a@example.com"),
            (b"\xffa@example.com", None),
            (b"a@example.com\rx", None),
            (b"arvel", "arvel"),
            (b"arvel@", "arvel@"),
            (b"@example.com", "@example.com"),
            (b"a@@example.com", "a@@example.com"),
            (b"a@-example.com", "a@-example.com"),
            (b"a..b@example.com", "a..b@example.com"),
            (b"a" * 243 + b"@example.com", None),  # 255 octets
            (b"." + b"a" * 241 + b"@example.com", "." + "a" * 241 + "@example.com"),  # 254
            (b"a@example.com x=1 x=2", "a@example.com"),
            (b"a@example.com" + good + good, "a@example.com"),
            (b"a@example.com x=1" + good, "a@example.com"),
            (b"a@example.com d=abc", "a@example.com"),
            (b"a@example.com d=" + GOOD_DIGEST[:-1].encode(), "a@example.com"),
            (b"a@example.com d=" + GOOD_DIGEST.encode() + b"=", "a@example.com"),
            (b"a@example.com d=" + b"!" * 22 + b"==", "a@example.com"),
            (b"a@example.com d=", "a@example.com"),
            (b"a@example.com  d=" + GOOD_DIGEST.encode(), "a@example.com"),
            (b"a@example.com x", "a@example.com"),
            (b"a@example.com x=", "a@example.com"),
            (b"a@example.com =1", "a@example.com"),
            (b"a@example.com x=a-b", "a@example.com"),
            (b"a@example.com x\xc3\xa9=1", "a@example.com"),
        ]
        for datagram, mailbox in cases:
            self.assertMalformed(datagram, mailbox)

    def test_longestQuery(self):
        """
        A query of exactly L{MAX_QUERY} octets is read; one more is not.  A
        mailbox may have 254 octets, not 255.
        """
        longest = "a" * 242 + "@example.com"
        self.assertEqual(parseQuery(formatQuery(longest, SECRET)).mailbox, longest)
        self.assertRaises(InvalidInput, formatQuery, "a" + longest)
        self.assertMalformed(b"a" + longest.encode(), None)
        head = b"a@example.com d=" + GOOD_DIGEST.encode() + b" "
        tag = b"x=" + b"y" * (MAX_QUERY - len(head) - 2)
        self.assertEqual(len(head + tag), MAX_QUERY)
        self.assertEqual(parseQuery(head + tag).tags["x"], "y" * (MAX_QUERY - len(head) - 2))
        self.assertMalformed(head + tag + b"y", "a@example.com")


class ReplyFormatTests(unittest.SynchronousTestCase):
    def test_formatReply(self):
        self.assertEqual(formatReply("arvel@example.com", 5), b"arvel@example.com 5")
        self.assertEqual(formatReply(b"arvel@example.com", 0), b"arvel@example.com 0")
        self.assertEqual(formatReply("j\u00fcrgen@example.com", 3), "j\u00fcrgen@example.com 3".encode())
        self.assertRaises(ValueError, formatReply, "a@example.com", 6)
        self.assertRaises(ValueError, formatReply, "a@example.com", None)

    def test_roundTrip(self):
        for status in protocol.STATUSES:
            for mailbox in ["arvel@example.com", "j\u00fcrgen@example.com"]:
                self.assertEqual(parseReply(formatReply(mailbox, status)), (mailbox, status))

    def test_parseReplyLeniency(self):
        """
        Trailing white space goes; the status is the last character, with or
        without a space before it (the ABNF has none).
        """
        self.assertEqual(parseReply(b"arvel@example.com 3\r\n"), ("arvel@example.com", 3))
        self.assertEqual(parseReply(b"arvel@example.com3"), ("arvel@example.com", 3))
        self.assertEqual(parseReply(b"arvel@example.com   5 "), ("arvel@example.com", 5))

    def test_parseReplyErrors(self):
        for bad in [b"", b"5", b" 5", b"\r\n", b"arvel@example.com", b"arvel@example.com 6",
                    b"arvel@example.com x", b"\xff\xfe 5", b"a\x00b 5"]:
            self.assertRaises(ValueError, parseReply, bad)

    def test_constants(self):
        self.assertEqual(
            [protocol.STATUS_BAD_REQUEST, protocol.STATUS_ACCESS_DENIED,
             protocol.STATUS_BAD_CREDENTIALS, protocol.STATUS_NOT_FOUND,
             protocol.STATUS_NOT_ACTIVE, protocol.STATUS_ACTIVE],
            [0, 1, 2, 3, 4, 5],
        )
        self.assertEqual(protocol.DEFAULT_PORT, 4069)


# --- the server ------------------------------------------------------------


class RecordingTransport:
    """
    A UDP transport that records what is written.
    """

    def __init__(self):
        self.written = []
        self.error = None

    def write(self, data, addr):
        if self.error is not None:
            raise self.error
        self.written.append((data, addr))


class FailingDirectory:
    """
    A directory whose every lookup fails.
    """

    def __init__(self, error):
        self.error = error

    def resolve(self, address):
        raise self.error

    def hasDomain(self, name):
        raise self.error


class MailboxStatusTests(TempDirTestCase):
    def test_statuses(self):
        directory = makeDirectory(self)
        for address, status in EXPECTED.items():
            self.assertEqual(mailboxStatus(directory, address), status, address)

    def test_catchAllToDisabled(self):
        directory = makeDirectory(self)
        directory.setCatchAll("catch.example", "bob@example.com")
        self.assertEqual(mailboxStatus(directory, "anyone@catch.example"), 4)

    def test_directoryFailurePropagates(self):
        directory = FailingDirectory(TemporaryFailure("database locked"))
        self.assertRaises(TemporaryFailure, mailboxStatus, directory, "a@example.com")


class ServerTests(TempDirTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.directory = makeDirectory(self)

    def makeServer(self, **kwargs):
        kwargs.setdefault("clock", self.clock)
        server = MingerServer(self.directory, **kwargs)
        server.transport = RecordingTransport()
        return server

    def ask(self, server, datagram, source="192.0.2.1", port=40000):
        """
        @return: the replies to one datagram, as L{bytes}.
        """
        before = len(server.transport.written)
        server.datagramReceived(datagram, (source, port))
        replies = server.transport.written[before:]
        slack = 2 if b" d=" not in datagram else 0
        for data, addr in replies:
            self.assertEqual(addr, (source, port))
            self.assertLessEqual(len(data), len(datagram) + slack)
        return [data for data, addr in replies]

    def test_authenticated(self):
        """
        With the right digest each address gets the status the directory
        gives it, and the reply echoes the mailbox as sent.
        """
        server = self.makeServer(secret=SECRET)
        for address, status in EXPECTED.items():
            self.assertEqual(
                self.ask(server, formatQuery(address, SECRET)),
                [("%s %d" % (address, status)).encode()],
            )
        self.assertEqual(server.answered, len(EXPECTED))
        self.assertEqual((server.dropped, server.malformed, server.failed), (0, 0, 0))

    def test_badCredentials(self):
        """
        A wrong digest, a digest made for another spelling of the mailbox, a
        digest to a server without a secret and a missing digest all get 2,
        whatever the address (a bare query, padded or not: draft section
        4); a truncated digest is malformed and gets nothing.
        """
        server = self.makeServer(secret=SECRET, rate=1e9, burst=10**9)
        for address in EXPECTED:
            wrong = "%s d=%s" % (address, digest("another secret", address))
            self.assertEqual(self.ask(server, wrong.encode()), [("%s 2" % address).encode()])
            self.assertEqual(self.ask(server, address.encode() + b"\r\n"), [("%s 2" % address).encode()])
            self.assertEqual(self.ask(server, address.encode()), [("%s 2" % address).encode()])
            truncated = "%s d=%s" % (address, digest(SECRET, address)[:-1])
            self.assertEqual(self.ask(server, truncated.encode()), [])
        otherCase = "Alice@example.com d=" + digest(SECRET, "alice@example.com")
        self.assertEqual(self.ask(server, otherCase.encode()), [b"Alice@example.com 2"])
        noSecret = self.makeServer()
        self.assertEqual(
            self.ask(noSecret, formatQuery("alice@example.com", SECRET)),
            [b"alice@example.com 2"],
        )

    def test_anonymous(self):
        """
        Anonymous queries get 2 unless allowed, even when the reply is two
        octets longer than the query; a query with a digest must still
        carry the right one.
        """
        refused = self.makeServer(secret=SECRET)
        self.assertEqual(self.ask(refused, b"alice@example.com\r\n"), [b"alice@example.com 2"])
        self.assertEqual(self.ask(refused, b"alice@example.com"), [b"alice@example.com 2"])
        self.assertEqual(self.ask(refused, b"nobody@example.com"), [b"nobody@example.com 2"])
        self.assertEqual((refused.answered, refused.dropped), (3, 0))
        allowed = self.makeServer(secret=SECRET, anonymous=True)
        for address, status in EXPECTED.items():
            self.assertEqual(self.ask(allowed, address.encode()), [("%s %d" % (address, status)).encode()])
        self.assertEqual(self.ask(allowed, b"alice@example.com D=x"), [b"alice@example.com 5"])
        wrong = "alice@example.com d=" + digest("wrong", "alice@example.com")
        self.assertEqual(self.ask(allowed, wrong.encode()), [b"alice@example.com 2"])
        anonymousOnly = self.makeServer(anonymous=True)
        self.assertEqual(self.ask(anonymousOnly, b"bob@example.com"), [b"bob@example.com 4"])

    def test_bareRefusalsRateLimited(self):
        """
        Refusals of bare queries, two octets longer than what asked for
        them, come under the per-source rate limit like every reply: a
        source forging a flood of them gets C{burst} answers, then nothing
        until its bucket refills.
        """
        server = self.makeServer(secret=SECRET, rate=2.0, burst=5)
        answers = [self.ask(server, b"alice@example.com") for i in range(50)]
        self.assertEqual(answers, [[b"alice@example.com 2"]] * 5 + [[]] * 45)
        self.assertEqual((server.answered, server.dropped), (5, 45))
        self.assertEqual(self.ask(server, b"alice@example.com", "192.0.2.2"), [b"alice@example.com 2"])
        self.clock.advance(0.5)
        self.assertEqual(self.ask(server, b"alice@example.com"), [b"alice@example.com 2"])
        self.assertEqual(self.ask(server, b"alice@example.com"), [])

    def test_allowList(self):
        """
        A source outside the allow list gets 1, after parsing and before
        the credentials are checked; IPv4-mapped IPv6 sources count as IPv4.
        """
        server = self.makeServer(secret=SECRET, allow=["10.0.0.0/8", "::1", "192.0.2.9"])
        query = formatQuery("alice@example.com", SECRET)
        for source in ["10.1.2.3", "::1", "192.0.2.9", "::ffff:10.0.0.1"]:
            self.assertEqual(self.ask(server, query, source), [b"alice@example.com 5"], source)
        for source in ["192.0.2.1", "11.0.0.1", "::2", "::ffff:192.0.2.1"]:
            self.assertEqual(self.ask(server, query, source), [b"alice@example.com 1"], source)
        self.assertEqual(self.ask(server, b"alice@example.com  ", "192.0.2.1"), [b"alice@example.com 1"])
        self.assertEqual(self.ask(server, b"alice@example.com", "192.0.2.1"), [b"alice@example.com 1"])
        self.assertEqual(self.ask(server, b"alice@ d=x", "192.0.2.1"), [])

    def test_ipv4MappedSourceIsItsIPv4Address(self):
        """
        A dual-stack socket reports an IPv4 source as C{::ffff:a.b.c.d}: it
        is answered at that address, but limited and logged as C{a.b.c.d},
        sharing one bucket with it.
        """
        events = captureLogs(self)
        server = self.makeServer(secret=SECRET, rate=1.0, burst=2)
        query = formatQuery("alice@example.com", SECRET)
        self.assertEqual(self.ask(server, query, "::ffff:192.0.2.1"), [b"alice@example.com 5"])
        self.assertEqual(self.ask(server, query, "192.0.2.1"), [b"alice@example.com 5"])
        self.assertEqual(self.ask(server, query, "::ffff:192.0.2.1"), [])
        self.assertEqual(len(warnings(events, "192.0.2.1 is over the rate limit")), 1)
        self.assertEqual(warnings(events, "::ffff:"), [])

    def test_badAllowList(self):
        self.assertRaises(ValueError, MingerServer, self.directory, allow=["10.0.0.0/33"], clock=self.clock)
        self.assertRaises(ValueError, MingerServer, self.directory, allow=["example.com"], clock=self.clock)

    def test_rateLimitPerSource(self):
        """
        A source gets C{burst} answers at once, then its datagrams are
        dropped without reply until its bucket refills at C{rate} a second;
        other sources are not affected.
        """
        events = captureLogs(self)
        server = self.makeServer(secret=SECRET, rate=2.0, burst=5)
        query = formatQuery("alice@example.com", SECRET)
        answers = [self.ask(server, query) for i in range(5)]
        self.assertEqual(answers, [[b"alice@example.com 5"]] * 5)
        for i in range(100):
            self.assertEqual(self.ask(server, query), [])
        self.assertEqual(server.dropped, 100)
        self.assertEqual(self.ask(server, query, "192.0.2.2"), [b"alice@example.com 5"])
        self.clock.advance(0.5)
        self.assertEqual(self.ask(server, query), [b"alice@example.com 5"])
        self.assertEqual(self.ask(server, query), [])
        self.clock.advance(10)
        self.assertEqual(sum(len(self.ask(server, query)) for i in range(10)), 5)
        self.assertEqual(server.answered, 5 + 1 + 1 + 5)
        # One warning for the source in the minute, not one per datagram.
        self.assertEqual(len(warnings(events, "192.0.2.1 is over the rate limit")), 1)
        self.clock.advance(60)
        for i in range(50):
            self.ask(server, query)
        lines = warnings(events, "192.0.2.1 is over the rate limit")
        self.assertEqual(len(lines), 2)
        self.assertIn("similar warnings suppressed", lines[-1])

    def test_spoofedFlood(self):
        """
        A flood from forged sources, each new, is bounded by the global
        rate; no more than C{maxSources} sources are tracked.
        """
        events = captureLogs(self)
        server = self.makeServer(secret=SECRET, globalRate=100.0, maxSources=50)
        query = formatQuery("alice@example.com", SECRET)
        for i in range(5000):
            source = "10.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255)
            server.datagramReceived(query, (source, 1024 + i % 60000))
        self.assertEqual(server.answered, 100)
        self.assertEqual(server.dropped, 4900)
        self.assertLessEqual(len(server._sources), 50)
        self.clock.advance(0.5)
        for i in range(200):
            server.datagramReceived(query, ("172.16.0.%d" % (i % 250), 1024))
        self.assertEqual(server.answered, 150)
        self.assertLessEqual(len(warnings(events, "rate limit")), 10)
        self.assertEqual(len(warnings(events, "global rate limit")), 1)

    def test_garbage(self):
        """
        Oversized, empty, binary and random datagrams raise nothing and get
        no reply (malformed queries are dropped silently).
        """
        server = self.makeServer(secret=SECRET, anonymous=True, rate=1e9, burst=10**9,
                                 globalRate=1e9)
        self.assertEqual(self.ask(server, b"a@example.com " + b"x" * 65536), [])
        self.assertEqual(self.ask(server, b"x" * 65536), [])
        self.assertEqual(self.ask(server, b""), [])
        self.assertEqual(self.ask(server, b"\r\n"), [])
        self.assertEqual(self.ask(server, b"\x00" * 100), [])
        self.assertEqual(self.ask(server, b"\xff\xfe\xfd"), [])
        self.assertEqual(self.ask(server, b"alice@example.com\x00"), [])
        self.assertEqual(self.ask(server, b"alice@example.com d=\xff"), [])
        self.assertEqual(self.ask(server, b"nonsense"), [])
        self.assertEqual(self.ask(server, b"alice@example.com\r\n"), [b"alice@example.com 5"])
        rng = random.Random(4069)
        alphabet = b"ab@. d=\r\n\x00\xff\xc3\xa9xyz0123456789+/"
        for i in range(2000):
            size = rng.choice([1, 2, 5, 20, 60, 300, 1100])
            datagram = bytes(rng.choice(alphabet) for j in range(size))
            self.ask(server, datagram)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(server.failed, 0)
        self.assertGreater(server.malformed, 1900)

    def test_directoryFailure(self):
        """
        When the directory fails nothing is answered, and the failure is
        logged (not once per datagram).
        """
        self.directory = FailingDirectory(TemporaryFailure("database locked"))
        server = self.makeServer(secret=SECRET)
        query = formatQuery("alice@example.com", SECRET)
        for i in range(20):
            self.assertEqual(self.ask(server, query), [])
        self.assertEqual(server.failed, 20)
        self.assertEqual(len(self.flushLoggedErrors(TemporaryFailure)), 1)
        # The checks before the directory still answer.
        self.assertEqual(self.ask(server, b"alice@example.com\r\n"), [b"alice@example.com 2"])

    def test_unexpectedError(self):
        """
        Nothing raised while answering leaves C{datagramReceived}.
        """
        server = self.makeServer(secret=SECRET)
        server.transport.error = RuntimeError("boom")
        server.datagramReceived(formatQuery("alice@example.com", SECRET), ("192.0.2.1", 1))
        self.assertEqual(server.failed, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        server.transport.error = OSError("network unreachable")
        server.datagramReceived(formatQuery("alice@example.com", SECRET), ("192.0.2.1", 1))
        self.assertEqual((server.failed, server.answered), (1, 0))

    def test_badDigestWarningsThrottled(self):
        events = captureLogs(self)
        server = self.makeServer(secret=SECRET, rate=1e9, burst=10**9)
        wrong = ("alice@example.com d=" + digest("wrong", "alice@example.com")).encode()
        for i in range(30):
            self.ask(server, wrong)
        for i in range(30):
            self.ask(server, wrong, "192.0.2.%d" % (i + 2))
        lines = warnings(events, "bad digest")
        self.assertEqual(len(lines), 10)
        self.assertIn("192.0.2.1", lines[0])
        self.assertEqual(server.answered, 60)

    def test_makeMingerService(self):
        server = self.makeServer()
        service = makeMingerService(4069, "127.0.0.1", server)
        self.assertIsInstance(service, internet.UDPServer)
        self.assertEqual(service.args, (4069, server))
        self.assertEqual(service.kwargs, {"interface": "127.0.0.1"})


# --- the client over loopback ---------------------------------------------


class RecordingServer(MingerServer):
    """
    A L{MingerServer} that keeps the datagrams it received.
    """

    def __init__(self, *args, **kwargs):
        MingerServer.__init__(self, *args, **kwargs)
        self.received = []

    def datagramReceived(self, datagram, addr):
        self.received.append((datagram, addr))
        MingerServer.datagramReceived(self, datagram, addr)


class SilentServer(DatagramProtocol):
    """
    Receives queries and answers nothing unless told to.
    """

    def __init__(self):
        self.received = []
        self.waiting = []

    def datagramReceived(self, datagram, addr):
        self.received.append((datagram, addr))
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(addr)

    def nextQuery(self):
        d = defer.Deferred()
        self.waiting.append(d)
        return d


class ResolvingReactor:
    """
    The real reactor, with names resolved from a table.
    """

    def __init__(self, names):
        self.names = names
        self.resolved = []

    def resolve(self, name, timeout=None):
        self.resolved.append(name)
        if name in self.names:
            return defer.succeed(self.names[name])
        return defer.fail(DNSLookupError(name))

    def __getattr__(self, name):
        return getattr(reactor, name)


def pause(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class ClientTests(TempDirTestCase):
    def setUp(self):
        self.directory = makeDirectory(self)
        self.server = RecordingServer(self.directory, secret=SECRET)
        port = reactor.listenUDP(0, self.server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def makeClient(self, host="127.0.0.1", port=None, **kwargs):
        kwargs.setdefault("secret", SECRET)
        kwargs.setdefault("timeout", 2.0)
        client = MingerClient(kwargs.pop("reactor", reactor), host,
                              self.port if port is None else port, **kwargs)
        self.addCleanup(client.close)
        return client

    def listenSilent(self):
        silent = SilentServer()
        port = reactor.listenUDP(0, silent, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return silent, port.getHost().port

    @defer.inlineCallbacks
    def test_statuses(self):
        """
        The client sends the query with its digest and gets the status.
        """
        client = self.makeClient()
        for address in ["alice@example.com", "nobody@example.com", "bob@example.com",
                        "info@example.com", "anyone@catch.example"]:
            status = yield client.query(address)
            self.assertEqual(status, EXPECTED[address], address)
        self.assertEqual(
            self.server.received[0][0],
            b"alice@example.com d=" + digest(SECRET, "alice@example.com").encode(),
        )
        self.assertEqual(parseQuery(self.server.received[0][0]).digest,
                         digest(SECRET, "alice@example.com"))

    @defer.inlineCallbacks
    def test_badCredentials(self):
        wrong = self.makeClient(secret="another secret")
        self.assertEqual((yield wrong.query("alice@example.com")), 2)
        # 2 is not cached: asking again sends again.
        self.assertEqual((yield wrong.query("alice@example.com")), 2)
        self.assertEqual(self.server.answered, 2)
        # A bare anonymous query over a real socket to a server refusing
        # them gets 2 (draft section 4), two octets longer than the query.
        anonymous = self.makeClient(secret="")
        self.assertEqual((yield anonymous.query("alice@example.com")), 2)
        self.assertEqual(self.server.received[-1][0], b"alice@example.com")
        self.assertEqual(self.server.answered, 3)

    def test_pendingQueriesAreBounded(self):
        """
        Past C{maxPending} queries under way, a new one is answered L{None}
        at once instead of growing the table.
        """
        silent, port = self.listenSilent()
        clock = task.Clock()
        client = self.makeClient(port=port, clock=clock, maxPending=3)
        waiting = [client.query("u%d@example.com" % (i,)) for i in range(3)]
        self.assertEqual([d.called for d in waiting], [False] * 3)
        self.assertIsNone(self.successResultOf(client.query("u3@example.com")))
        # The same address as one under way still shares it.
        self.assertNoResult(client.query("u0@example.com"))
        clock.pump([1] * 10)
        self.assertEqual([self.successResultOf(d) for d in waiting], [None] * 3)

    @defer.inlineCallbacks
    def test_cache(self):
        """
        Answers 3, 4 and 5 are kept for their TTL (case-insensitively): a
        second query sends no datagram.
        """
        clock = task.Clock()
        client = self.makeClient(clock=clock, cacheTTL=100, negativeTTL=10)
        for address in ["alice@example.com", "nobody@example.com", "bob@example.com"]:
            self.assertEqual((yield client.query(address)), EXPECTED[address])
        self.assertEqual(self.server.answered, 3)
        self.assertEqual((yield client.query("ALICE@example.com")), 5)
        self.assertEqual((yield client.query("nobody@example.com")), 3)
        self.assertEqual((yield client.query("bob@example.com")), 4)
        self.assertEqual((self.server.answered, client.sent), (3, 3))
        clock.advance(11)
        self.assertEqual((yield client.query("alice@example.com")), 5)
        self.assertEqual((yield client.query("nobody@example.com")), 3)
        self.assertEqual(self.server.answered, 4)
        clock.advance(90)
        self.assertEqual((yield client.query("alice@example.com")), 5)
        self.assertEqual(self.server.answered, 5)

    @defer.inlineCallbacks
    def test_cacheBounded(self):
        """
        The cache keeps the C{cacheSize} addresses used last.
        """
        client = self.makeClient()
        client.cacheSize = 2
        for address in ["u1@example.com", "u2@example.com", "u3@example.com",
                        "u3@example.com", "u2@example.com"]:
            self.assertEqual((yield client.query(address)), 3)
        self.assertEqual(self.server.answered, 3)
        self.assertEqual((yield client.query("u1@example.com")), 3)
        self.assertEqual(self.server.answered, 4)
        self.assertEqual(len(client._cache), 2)

    @defer.inlineCallbacks
    def test_concurrentQueriesShareOne(self):
        client = self.makeClient()
        results = yield defer.gatherResults(
            [client.query("alice@example.com"), client.query("Alice@example.com"),
             client.query("alice@example.com")]
        )
        self.assertEqual(results, [5, 5, 5])
        self.assertEqual((client.sent, self.server.answered), (1, 1))

    @defer.inlineCallbacks
    def test_timeoutRealReactor(self):
        """
        A server that never answers: each attempt is sent, then the query
        fires with L{None}, which is not cached.
        """
        silent, port = self.listenSilent()
        client = self.makeClient(port=port, timeout=0.2, attempts=2)
        started = reactor.seconds()
        self.assertIsNone((yield client.query("alice@example.com")))
        self.assertGreaterEqual(reactor.seconds() - started, 0.19)
        yield pause(0.05)
        self.assertEqual(len(silent.received), 2)
        self.assertEqual(client._cache, {})

    def test_timeoutClock(self):
        clock = task.Clock()
        silent, port = self.listenSilent()
        client = self.makeClient(port=port, timeout=3.0, attempts=3, clock=clock)
        results = []
        client.query("alice@example.com").addCallback(results.append)
        self.assertEqual(client.sent, 1)
        clock.advance(0.99)
        self.assertEqual(client.sent, 1)
        clock.advance(0.01)
        self.assertEqual(client.sent, 2)
        clock.advance(1)
        self.assertEqual((client.sent, results), (3, []))
        clock.advance(1)
        self.assertEqual(results, [None])
        self.assertEqual(clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_foreignRepliesIgnored(self):
        """
        A reply from another address or port, for another mailbox, or not a
        reply at all is ignored; the server's reply for the mailbox (in any
        case) is taken.
        """
        silent, port = self.listenSilent()
        impostor, _ = self.listenSilent()
        client = self.makeClient(port=port, timeout=5.0)
        heard = silent.nextQuery()
        d = client.query("alice@example.com")
        clientAddress = yield heard
        impostor.transport.write(b"alice@example.com 5", clientAddress)
        silent.transport.write(b"bob@example.com 5", clientAddress)
        silent.transport.write(b"\xff\xfe 5", clientAddress)
        silent.transport.write(b"alice@example.com 9", clientAddress)
        yield pause(0.1)
        self.assertFalse(d.called)
        silent.transport.write(b"ALICE@Example.com 4", clientAddress)
        self.assertEqual((yield d), 4)

    @defer.inlineCallbacks
    def test_resolvesNames(self):
        """
        A name is resolved once for queries close together; a name that
        cannot be resolved gives L{None}, with a warning.
        """
        events = captureLogs(self)
        fake = ResolvingReactor({"minger.example": "127.0.0.1"})
        client = self.makeClient(host="minger.example", reactor=fake)
        self.assertEqual((yield client.query("alice@example.com")), 5)
        self.assertEqual((yield client.query("bob@example.com")), 4)
        self.assertEqual(fake.resolved, ["minger.example"])
        self.assertEqual(client.server, "minger.example:%d" % (self.port,))
        lost = self.makeClient(host="gone.example", reactor=fake)
        self.assertIsNone((yield lost.query("alice@example.com")))
        self.assertEqual(len(warnings(events, "cannot resolve gone.example")), 1)

    @defer.inlineCallbacks
    def test_resolvesWithTheResolverGiven(self):
        """
        Given C{resolve} (the server's L{mdpy.dns.Resolver.lookupHost}), the
        client finds its server's address with it, not with the reactor.
        """
        events = captureLogs(self)
        asked = []

        def resolve(name):
            asked.append(name)
            if name == "minger.example":
                return defer.succeed("127.0.0.1")
            return defer.fail(PermanentDNSFailure("%s has no address" % (name,)))

        fake = ResolvingReactor({})
        client = self.makeClient(host="minger.example", reactor=fake, resolve=resolve)
        self.assertEqual((yield client.query("alice@example.com")), 5)
        self.assertEqual(asked, ["minger.example"])
        lost = self.makeClient(host="gone.example", reactor=fake, resolve=resolve)
        self.assertIsNone((yield lost.query("alice@example.com")))
        self.assertEqual(fake.resolved, [])
        self.assertEqual(
            len(warnings(events, "cannot resolve gone.example: gone.example has no address")), 1
        )

    def test_invalidAddress(self):
        client = self.makeClient()
        self.failureResultOf(client.query("not an address"), InvalidInput)
        self.failureResultOf(client.query("a@example.com d=x"), InvalidInput)
        self.assertEqual(client.sent, 0)

    def test_closeAnswersPending(self):
        clock = task.Clock()
        silent, port = self.listenSilent()
        client = self.makeClient(port=port, clock=clock)
        d = client.query("alice@example.com")
        closed = client.close()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(MingerClient(reactor, "127.0.0.1").close())
        return closed

    @defer.inlineCallbacks
    def test_bigDatagramOverLoopback(self):
        """
        A 64 KB datagram and an empty one over a real socket get nothing;
        the query that follows them is answered.
        """
        silent, port = self.listenSilent()
        heard = silent.nextQuery()
        target = ("127.0.0.1", self.port)
        silent.transport.write(b"", target)
        silent.transport.write(b"alice@example.com " + b"x" * 65000, target)
        silent.transport.write(formatQuery("alice@example.com", SECRET), target)
        yield heard
        yield pause(0.1)
        self.assertEqual([data for data, addr in silent.received], [b"alice@example.com 5"])
        # The reactor reads at most 8 KB of a datagram: still malformed.
        self.assertEqual([len(data) > 1024 for data, addr in self.server.received][:2], [False, True])
        self.assertEqual(self.server.malformed, 2)

    @defer.inlineCallbacks
    def test_bareQueryOverLoopback(self):
        """
        A bare query from a real socket to a server refusing anonymous
        queries is answered 2, the reply two octets longer than the query.
        """
        silent, port = self.listenSilent()
        heard = silent.nextQuery()
        silent.transport.write(b"alice@example.com", ("127.0.0.1", self.port))
        yield heard
        [(reply, addr)] = silent.received
        self.assertEqual(reply, b"alice@example.com 2")
        self.assertEqual(addr, ("127.0.0.1", self.port))

    @defer.inlineCallbacks
    def test_ipv6(self):
        server = MingerServer(self.directory, secret=SECRET)
        try:
            port = reactor.listenUDP(0, server, interface="::1")
        except CannotListenError:
            raise unittest.SkipTest("no IPv6 loopback")
        self.addCleanup(port.stopListening)
        client = self.makeClient(host="::1", port=port.getHost().port)
        self.assertEqual(client.server, "[::1]:%d" % (port.getHost().port,))
        self.assertEqual((yield client.query("alice@example.com")), 5)


# --- the SMTP recipient check ---------------------------------------------


class FixedClient:
    """
    A client whose every query fires with C{status}.
    """

    server = "192.0.2.1:4069"

    def __init__(self, status):
        self.status = status
        self.asked = []

    def query(self, address):
        self.asked.append(address)
        if isinstance(self.status, Exception):
            return defer.fail(self.status)
        return defer.succeed(self.status)


class VerifierTests(TempDirTestCase):
    def verifier(self, status, fallback="accept"):
        events = []
        log = Logger(observer=events.append)
        return MingerVerifier(FixedClient(status), fallback, log=log), events

    def test_interface(self):
        from zope.interface.verify import verifyObject

        from mdpy.interfaces import IRecipientVerifier

        self.assertTrue(verifyObject(IRecipientVerifier, self.verifier(5)[0]))

    def test_active(self):
        verifier, events = self.verifier(5)
        self.assertIsNone(self.successResultOf(verifier.verify("a@example.com")))
        self.assertEqual(verifier.client.asked, ["a@example.com"])
        self.assertEqual(events, [])

    def test_notFound(self):
        for fallback in ["accept", "tempfail"]:
            verifier, events = self.verifier(3, fallback)
            failure = self.failureResultOf(verifier.verify("a@example.com"), NotFound)
            self.assertIn("a@example.com", failure.value.detail)
            self.assertEqual(events, [])

    def test_notActive(self):
        for fallback in ["accept", "tempfail"]:
            verifier, events = self.verifier(4, fallback)
            self.failureResultOf(verifier.verify("a@example.com"), Unavailable)
            self.assertEqual(events, [])

    def test_fallbackAccept(self):
        expected = {
            None: "minger: no answer from 192.0.2.1:4069 for <a@b.example>; accepting (fallback)",
            0: "minger: 192.0.2.1:4069 answered 0 (bad request) for <a@b.example>; accepting (fallback)",
            1: "minger: 192.0.2.1:4069 answered 1 (access denied) for <a@b.example>; accepting (fallback)",
            2: "minger: 192.0.2.1:4069 answered 2 (bad credentials) for <a@b.example>; accepting (fallback)",
        }
        for status, line in expected.items():
            verifier, events = self.verifier(status)
            self.assertIsNone(self.successResultOf(verifier.verify("a@b.example")))
            self.assertEqual([formatEvent(e) for e in events], [line])
            self.assertEqual(events[0]["log_level"].name, "warn")

    def test_fallbackTempfail(self):
        for status in [None, 0, 1, 2]:
            verifier, events = self.verifier(status, "tempfail")
            failure = self.failureResultOf(verifier.verify("a@b.example"), TemporaryFailure)
            self.assertIn("a@b.example", failure.value.detail)
            self.assertNotIsInstance(failure.value, Unavailable)
            self.assertEqual(len(events), 1)
            self.assertIn("for <a@b.example>; try again later (fallback)", formatEvent(events[0]))

    def test_badFallback(self):
        self.assertRaises(ValueError, MingerVerifier, FixedClient(5), "reject")

    def test_invalidAddressPassesThrough(self):
        verifier, events = self.verifier(InvalidInput("bad"))
        self.failureResultOf(verifier.verify("x"), InvalidInput)

    @defer.inlineCallbacks
    def test_endToEnd(self):
        """
        The verifier with a real client and server over loopback.
        """
        server = MingerServer(makeDirectory(self), secret=SECRET)
        port = reactor.listenUDP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = MingerClient(reactor, "127.0.0.1", port.getHost().port, secret=SECRET)
        self.addCleanup(client.close)
        verifier = MingerVerifier(client, "tempfail")
        self.assertIsNone((yield verifier.verify("info@example.com")))
        yield self.assertFailure(verifier.verify("nobody@example.com"), NotFound)
        yield self.assertFailure(verifier.verify("bob@example.com"), Unavailable)
