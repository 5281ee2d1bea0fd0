"""
Tests for L{mdpy.dns}: the cache in front of the name servers, in memory
with a L{Clock}, and over loopback UDP to a L{TestDNSServer}.
"""

import os

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IResolver
from twisted.internet.task import Clock
from twisted.names import dns, error
from twisted.trial import unittest
from zope.interface.verify import verifyObject

import mdpy.dns
from mdpy.dns import (
    DNSCache,
    PermanentDNSFailure,
    Resolver,
    TemporaryDNSFailure,
    makeResolver,
    negativeTTL,
)
from mdpy.testing import TempDirTestCase
from tests.dnsserver import TestDNSServer


def txt(name, text, ttl):
    return dns.RRHeader(name, dns.TXT, dns.IN, ttl, dns.Record_TXT(text, ttl=ttl))


def soa(name, ttl, minimum):
    record = dns.Record_SOA(mname=b"ns." + name, rname=b"hostmaster." + name, minimum=minimum, ttl=ttl)
    return dns.RRHeader(name, dns.SOA, dns.IN, ttl, record)


class ScriptedResolver:
    """
    The resolver behind the cache: records each query and answers it with
    the Deferred the test fires.

    @ivar asked: C{(name, type, Deferred)} of each query, in order.
    """

    def __init__(self):
        self.asked = []

    def query(self, query, timeout=None):
        d = defer.Deferred()
        self.asked.append((query.name.name, query.type, d))
        return d


def nameError(authority=()):
    """
    @return: the failure twisted.names' client gives for NXDOMAIN.
    """
    message = dns.Message(rCode=dns.ENAME)
    message.authority = list(authority)
    return error.DNSNameError(message)


class DNSCacheTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.servers = ScriptedResolver()
        self.cache = DNSCache(self.servers, clock=self.clock)

    def lookup(self, name=b"example.test"):
        return self.cache.lookupText(name)

    def answer(self, result, index=-1):
        d = self.servers.asked[index][2]
        if isinstance(result, Exception):
            d.errback(result)
        else:
            d.callback(result)

    def test_interface(self):
        self.assertTrue(verifyObject(IResolver, self.cache))

    def test_positiveKeptForItsTTL(self):
        """
        An answer is kept for the smallest TTL of its records, and given back
        with the TTLs lowered by its age.
        """
        first = self.lookup()
        self.answer(([txt(b"example.test", b"a", 300), txt(b"example.test", b"b", 60)], [], []))
        answers, _, _ = self.successResultOf(first)
        self.assertEqual([r.payload.data for r in answers], [[b"a"], [b"b"]])
        self.clock.advance(59)
        answers, _, _ = self.successResultOf(self.lookup(b"EXAMPLE.test"))
        self.assertEqual([r.ttl for r in answers], [241, 1])
        self.assertEqual(len(self.servers.asked), 1)
        self.clock.advance(1)
        self.lookup()
        self.assertEqual(len(self.servers.asked), 2)
        self.assertEqual(self.cache.queries, 2)

    def test_ttlBounded(self):
        """
        No answer is kept past L{DNSCache.maxTTL}, whatever its TTL; a TTL
        of 0 is not kept.
        """
        self.lookup()
        self.answer(([txt(b"example.test", b"a", 2 ** 31 - 1)], [], []))
        self.clock.advance(self.cache.maxTTL - 1)
        self.lookup()
        self.assertEqual(len(self.servers.asked), 1)
        self.clock.advance(1)
        self.lookup()
        self.assertEqual(len(self.servers.asked), 2)
        self.answer(([txt(b"example.test", b"a", 0)], [], []))
        self.lookup()
        self.assertEqual(len(self.servers.asked), 3)

    def test_nxdomainKeptForTheSOAMinimum(self):
        """
        NXDOMAIN is kept for the smaller of the SOA's TTL and its MINIMUM
        (RFC 2308 section 5), and given again as L{error.DNSNameError}.
        """
        first = self.lookup(b"missing.example.test")
        self.answer(nameError([soa(b"example.test", 3600, 120)]))
        self.failureResultOf(first, error.DNSNameError)
        self.clock.advance(119)
        self.failureResultOf(self.lookup(b"missing.example.test"), error.DNSNameError)
        self.assertEqual(len(self.servers.asked), 1)
        self.clock.advance(1)
        second = self.lookup(b"missing.example.test")
        self.assertEqual(len(self.servers.asked), 2)
        self.answer(nameError([soa(b"example.test", 30, 120)]))
        self.failureResultOf(second, error.DNSNameError)
        self.clock.advance(29)
        self.failureResultOf(self.lookup(b"missing.example.test"), error.DNSNameError)
        self.assertEqual(len(self.servers.asked), 2)

    def test_nodataKeptForTheSOAMinimum(self):
        first = self.lookup()
        self.answer(([], [soa(b"example.test", 3600, 300)], []))
        self.assertEqual(self.successResultOf(first)[0], [])
        self.clock.advance(299)
        self.assertEqual(self.successResultOf(self.lookup())[0], [])
        self.assertEqual(len(self.servers.asked), 1)
        self.clock.advance(1)
        self.lookup()
        self.assertEqual(len(self.servers.asked), 2)

    def test_negativeBounded(self):
        first = self.lookup()
        self.answer(nameError([soa(b"example.test", 86400, 86400)]))
        self.failureResultOf(first, error.DNSNameError)
        self.clock.advance(self.cache.maxNegativeTTL)
        self.lookup()
        self.assertEqual(len(self.servers.asked), 2)

    def test_negativeWithoutSOANotKept(self):
        """
        A negative answer without an SOA record is not cached (RFC 2308
        section 5).
        """
        first = self.lookup()
        self.answer(nameError())
        self.failureResultOf(first, error.DNSNameError)
        self.lookup()
        self.answer(([], [], []))
        self.lookup()
        self.assertEqual(len(self.servers.asked), 3)

    def test_failuresNotKept(self):
        for failure in [
            error.DNSServerError(dns.Message(rCode=dns.ESERVER)),
            error.DNSQueryRefusedError(dns.Message(rCode=dns.EREFUSED)),
            defer.TimeoutError("timed out"),
        ]:
            d = self.lookup()
            self.answer(failure)
            self.failureResultOf(d, type(failure))
        self.lookup()
        self.assertEqual(len(self.servers.asked), 4)

    def test_inFlightShared(self):
        """
        Identical lookups made while a query is under way wait for it; a
        lookup of another type or name makes its own.
        """
        waiting = [self.lookup(), self.lookup(b"Example.Test."[:-1]), self.lookup()]
        other = self.cache.lookupAddress(b"example.test")
        self.assertEqual(len(self.servers.asked), 2)
        self.answer(([txt(b"example.test", b"a", 300)], [], []), index=0)
        for d in waiting:
            answers, _, _ = self.successResultOf(d)
            self.assertEqual(answers[0].payload.data, [b"a"])
        self.assertNoResult(other)

    def test_inFlightFailureShared(self):
        waiting = [self.lookup(), self.lookup()]
        self.answer(error.DNSServerError(dns.Message(rCode=dns.ESERVER)))
        for d in waiting:
            self.failureResultOf(d, error.DNSServerError)
        self.assertEqual(len(self.servers.asked), 1)

    def test_cancelOneWaiter(self):
        """
        A lookup cancelled (a check past its deadline) leaves the query to
        the others, and its answer is still cached.
        """
        cancelled, kept = self.lookup(), self.lookup()
        cancelled.cancel()
        self.failureResultOf(cancelled, defer.CancelledError)
        self.answer(([txt(b"example.test", b"a", 300)], [], []))
        self.successResultOf(kept)
        self.successResultOf(self.lookup())
        self.assertEqual(len(self.servers.asked), 1)

    def test_bounded(self):
        """
        The cache keeps the L{DNSCache.maxEntries} most recently used
        answers.
        """
        self.cache.maxEntries = 2
        for name in [b"a.test", b"b.test", b"c.test"]:
            self.lookup(name)
            self.answer(([txt(name, b"x", 300)], [], []))
        self.assertEqual(len(self.cache), 2)
        self.lookup(b"b.test")
        self.lookup(b"c.test")
        self.assertEqual(len(self.servers.asked), 3)
        self.lookup(b"a.test")
        self.assertEqual(len(self.servers.asked), 4)

    def test_negativeTTL(self):
        self.assertIsNone(negativeTTL([]))
        self.assertEqual(negativeTTL([soa(b"x.test", 100, 300)]), 100)
        self.assertEqual(negativeTTL([soa(b"x.test", 900, 300)]), 300)


class LoopbackCacheTests(unittest.TestCase):
    """
    A L{Resolver} on a L{DNSCache} asking a L{TestDNSServer} over UDP.
    """

    def setUp(self):
        self.server = TestDNSServer(reactor)
        self.server.start()
        self.addCleanup(self.server.stop)
        self.clock = Clock()
        self.resolver = Resolver(
            DNSCache(makeResolver(reactor, [self.server.nameserver], timeout=(2,)), clock=self.clock)
        )

    async def test_oneQueryPerName(self):
        """
        An SPF record, a NODATA and an NXDOMAIN under an SOA: each asked once
        however often it is looked up, until its TTL passes.
        """
        self.server.setSOA("example.test", 300)
        self.server.setTXT("example.test", ["v=spf1 -all"], ttl=600)
        for _ in range(3):
            self.assertEqual(await self.resolver.lookupTXT("example.test"), [b"v=spf1 -all"])
            self.assertEqual(await self.resolver.lookupMX("example.test"), [])
            self.assertEqual(await self.resolver.lookupTXT("missing.example.test"), [])
        self.assertEqual(
            sorted(self.server.queries),
            [("example.test", "MX"), ("example.test", "TXT"), ("missing.example.test", "TXT")],
        )
        self.clock.advance(300)
        await self.resolver.lookupTXT("example.test")
        await self.resolver.lookupTXT("missing.example.test")
        self.assertEqual(len(self.server.queries), 4)
        self.clock.advance(300)
        await self.resolver.lookupTXT("example.test")
        self.assertEqual(len(self.server.queries), 5)

    async def test_servfailAskedAgain(self):
        self.server.failWith("broken.test", "servfail")
        for _ in range(2):
            with self.assertRaises(TemporaryDNSFailure):
                await self.resolver.lookupTXT("broken.test")
        self.assertEqual(self.server.queries, [("broken.test", "TXT")] * 2)


class LookupHostTests(TempDirTestCase):
    """
    L{Resolver.lookupHost}: the hosts file, then DNS.
    """

    def setUp(self):
        self.server = TestDNSServer(reactor)
        self.server.start()
        self.addCleanup(self.server.stop)
        self.resolver = Resolver(makeResolver(reactor, [self.server.nameserver], timeout=(2,)))
        hostsFile = os.path.join(self.tempDir(), "hosts")
        with open(hostsFile, "w") as f:
            f.write("# comment\n::7 listed.test\n127.0.0.7 listed.test Other.Test\n")
        self.patch(mdpy.dns, "HOSTS_FILE", hostsFile)

    async def test_hostsFileFirst(self):
        self.server.setA("listed.test", ["127.0.0.9"])
        self.assertEqual(await self.resolver.lookupHost("listed.test"), "127.0.0.7")
        self.assertEqual(await self.resolver.lookupHost("other.test"), "127.0.0.7")
        self.assertEqual(self.server.queries, [])

    async def test_dns(self):
        self.server.setAAAA("mx.test", ["::2"])
        self.assertEqual(await self.resolver.lookupHost("mx.test"), "::2")
        self.server.setA("mx.test", ["127.0.0.2"])
        self.assertEqual(await self.resolver.lookupHost("MX.test"), "127.0.0.2")

    async def test_address(self):
        self.assertEqual(await self.resolver.lookupHost("::0:1"), "::1")
        self.assertEqual(self.server.queries, [])

    async def test_noAddress(self):
        with self.assertRaises(PermanentDNSFailure) as caught:
            await self.resolver.lookupHost("missing.test")
        self.assertEqual(str(caught.exception), "missing.test has no address")
        self.server.failWith("broken.test", "servfail")
        with self.assertRaises(TemporaryDNSFailure):
            await self.resolver.lookupHost("broken.test")
