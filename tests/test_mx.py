"""
Tests for L{mdpy.delivery.mx}: real queries over loopback UDP to a
L{TestDNSServer}, and L{TestDNSServer} itself.
"""

import json
import os
import subprocess
import sys
import tempfile
from random import Random

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IResolver
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns, error
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mdpy.delivery.mx import (
    MXResolver,
    PermanentDNSFailure,
    Route,
    TemporaryDNSFailure,
    makeResolver,
)
from mdpy.errors import PermanentFailure, TemporaryFailure
from tests.dnsserver import TestDNSServer

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dnsserver.py")
QUICK_TIMEOUT = (0.2,)


class DNSTestCase(unittest.TestCase):
    """
    A L{TestDNSServer} on loopback with an L{MXResolver} asking it.
    """

    def setUp(self):
        self.server = TestDNSServer(reactor)
        self.server.start()
        self.addCleanup(self.server.stop)
        self.clock = Clock()
        self.resolver = self.makeMXResolver()

    def makeMXResolver(self, timeout=(2,), **kwargs):
        kwargs.setdefault("clock", self.clock)
        return MXResolver(
            makeResolver(reactor, [self.server.nameserver], timeout=timeout), **kwargs
        )

    async def failure(self, d, kind):
        """
        @return: the exception C{d} fails with, which must be a C{kind}.
        """
        try:
            result = await d
        except kind as e:
            return e
        self.fail("expected %s, got %r" % (kind.__name__, result))

    def queriedTypes(self):
        return sorted(set(self.server.queries))


class ResolveTests(DNSTestCase):
    async def test_preferenceOrder(self):
        self.server.setMX("example.test", [(20, "mx2.example.test"), (10, "mx1.example.test")])
        self.server.setA("mx1.example.test", ["127.0.0.2"])
        self.server.setA("mx2.example.test", ["127.0.0.3"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(
            routes,
            [
                Route("mx1.example.test", "127.0.0.2", 10),
                Route("mx2.example.test", "127.0.0.3", 20),
            ],
        )

    async def test_ipv4BeforeIPv6OfEachHost(self):
        self.server.setMX("example.test", [(10, "mx1.example.test"), (20, "mx2.example.test")])
        self.server.setA("mx1.example.test", ["127.0.0.2", "127.0.0.4"])
        self.server.setAAAA("mx1.example.test", ["2001:db8::0:2"])
        self.server.setAAAA("mx2.example.test", ["::1"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(
            [(r.hostname, r.address) for r in routes],
            [
                ("mx1.example.test", "127.0.0.2"),
                ("mx1.example.test", "127.0.0.4"),
                ("mx1.example.test", "2001:db8::2"),
                ("mx2.example.test", "::1"),
            ],
        )
        self.assertEqual(
            self.queriedTypes(),
            [
                ("example.test", "MX"),
                ("mx1.example.test", "A"),
                ("mx1.example.test", "AAAA"),
                ("mx2.example.test", "A"),
                ("mx2.example.test", "AAAA"),
            ],
        )

    async def test_equalPreferencesShuffled(self):
        """
        Hosts of equal preference come in an order the injected L{Random}
        decides, anew for each call (cached or not); lower preferences stay
        ahead.
        """
        hosts = ["mx%d.example.test" % (i,) for i in range(4)]
        self.server.setMX("example.test", [(10, h) for h in hosts[:3]] + [(20, hosts[3])])
        for i, host in enumerate(hosts):
            self.server.setA(host, ["127.0.1.%d" % (i,)])
            self.server.setAAAA(host, ["::%d" % (i + 1,)])

        async def orders(seed):
            resolver = self.makeMXResolver(random=Random(seed))
            result = []
            for _ in range(12):
                routes = await resolver.resolve("example.test")
                names = [r.hostname for r in routes]
                # Both addresses of a host stay together, IPv4 first.
                self.assertEqual(names[::2], names[1::2])
                self.assertEqual([":" in r.address for r in routes], [False, True] * 4)
                self.assertEqual(names[-1], hosts[3])
                self.assertEqual([r.preference for r in routes], [10] * 6 + [20] * 2)
                result.append(tuple(names[:6:2]))
            return result

        first = await orders(7)
        self.assertGreater(len(set(first)), 1)
        self.assertEqual({tuple(sorted(o)) for o in first}, {tuple(hosts[:3])})
        self.assertEqual(await orders(7), first)

    async def test_implicitMX(self):
        """
        Without MX records the domain is its own MX of preference 0 (RFC 5321
        section 5.1).
        """
        self.server.setA("example.test", ["127.0.0.5"])
        self.server.setAAAA("example.test", ["::5"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(
            routes,
            [Route("example.test", "127.0.0.5", 0), Route("example.test", "::5", 0)],
        )

    async def test_implicitMXWithoutAddress(self):
        self.server.setTXT("example.test", ["v=spf1 -all"])
        e = await self.failure(self.resolver.resolve("example.test"), PermanentDNSFailure)
        self.assertEqual(e.status, "5.1.2")

    async def test_nullMX(self):
        """
        A single MX of "." says the domain takes no mail (RFC 7505): no
        address is looked up.
        """
        self.server.setNullMX("example.test")
        self.server.setA("example.test", ["127.0.0.5"])
        e = await self.failure(self.resolver.resolve("example.test"), PermanentDNSFailure)
        self.assertEqual(e.status, "5.1.10")
        self.assertIsInstance(e, PermanentFailure)
        self.assertEqual(self.server.queries, [("example.test", "MX")])

    async def test_nullMXBesideOtherMXIgnored(self):
        self.server.setMX("example.test", [(0, "."), (10, "mx1.example.test")])
        self.server.setA("mx1.example.test", ["127.0.0.2"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(routes, [Route("mx1.example.test", "127.0.0.2", 10)])

    async def test_nxdomain(self):
        self.server.setA("other.test", ["127.0.0.2"])
        e = await self.failure(self.resolver.resolve("missing.test"), PermanentDNSFailure)
        self.assertEqual(e.status, "5.1.2")

    async def test_servfailIsTemporary(self):
        self.server.failWith("example.test", "servfail")
        e = await self.failure(self.resolver.resolve("example.test"), TemporaryDNSFailure)
        self.assertEqual(e.status, "4.4.3")
        self.assertIsInstance(e, TemporaryFailure)
        self.assertTrue(e.temporary)

    async def test_refusedIsTemporary(self):
        self.server.failWith("example.test", "refused")
        e = await self.failure(self.resolver.resolve("example.test"), TemporaryDNSFailure)
        self.assertEqual(e.status, "4.4.3")

    async def test_timeoutIsTemporary(self):
        self.server.failWith("example.test", "timeout")
        resolver = self.makeMXResolver(timeout=QUICK_TIMEOUT)
        e = await self.failure(resolver.resolve("example.test"), TemporaryDNSFailure)
        self.assertEqual(e.status, "4.4.3")
        self.assertEqual(e.detail, "DNS lookup of example.test timed out")
        self.assertEqual(self.server.queries, [("example.test", "MX")])

    async def test_mxHostWithoutAddressSkipped(self):
        self.server.setMX(
            "example.test",
            [(5, "gone.example.test"), (10, "empty.example.test"), (20, "mx2.example.test")],
        )
        self.server.setTXT("empty.example.test", ["no address here"])
        self.server.setA("mx2.example.test", ["127.0.0.3"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(routes, [Route("mx2.example.test", "127.0.0.3", 20)])

    async def test_noMXHostHasAddress(self):
        self.server.setMX("example.test", [(10, "gone1.example.test"), (20, "gone2.example.test")])
        e = await self.failure(self.resolver.resolve("example.test"), PermanentDNSFailure)
        self.assertEqual(e.status, "5.4.4")

    async def test_mxHostLookupsFailTemporarily(self):
        self.server.setMX("example.test", [(10, "gone.example.test"), (20, "bad.example.test")])
        self.server.failWith("bad.example.test", "servfail")
        e = await self.failure(self.resolver.resolve("example.test"), TemporaryDNSFailure)
        self.assertEqual(e.status, "4.4.3")

    async def test_oneAddressFamilyFailing(self):
        """
        When only the AAAA lookup fails, the IPv4 addresses are used, but the
        result is not cached.
        """
        self.server.setMX("example.test", [(10, "mx1.example.test"), (20, "mx2.example.test")])
        self.server.failWith("mx1.example.test", "refused")
        self.server.setA("mx2.example.test", ["127.0.0.3"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(routes, [Route("mx2.example.test", "127.0.0.3", 20)])
        del self.server.queries[:]
        await self.resolver.resolve("example.test")
        self.assertIn(("example.test", "MX"), self.server.queries)

    async def test_sameAddressListedOnce(self):
        self.server.setMX("example.test", [(10, "mx1.example.test"), (20, "mx2.example.test")])
        self.server.setA("mx1.example.test", ["127.0.0.2"])
        self.server.setA("mx2.example.test", ["127.0.0.2", "127.0.0.3"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(
            routes,
            [
                Route("mx1.example.test", "127.0.0.2", 10),
                Route("mx2.example.test", "127.0.0.3", 20),
            ],
        )

    async def test_caseInsensitive(self):
        self.server.setMX("example.test", [(10, "MX1.Example.Test")])
        self.server.setA("mx1.example.test", ["127.0.0.2"])
        routes = await self.resolver.resolve("EXAMPLE.Test.")
        self.assertEqual(routes, [Route("mx1.example.test", "127.0.0.2", 10)])
        del self.server.queries[:]
        self.assertEqual(await self.resolver.resolve("example.test"), routes)
        self.assertEqual(self.server.queries, [])

    async def test_idnDomain(self):
        self.server.setMX("xn--bcher-kva.test", [(10, "mx.xn--bcher-kva.test")])
        self.server.setA("mx.xn--bcher-kva.test", ["127.0.0.2"])
        routes = await self.resolver.resolve("B\u00fccher.test")
        self.assertEqual(routes, [Route("mx.xn--bcher-kva.test", "127.0.0.2", 10)])
        self.assertEqual(self.server.queries[0], ("xn--bcher-kva.test", "MX"))

    async def test_badDomainNames(self):
        for domain in ["", "a..test", "x" * 64 + ".test", "a." * 127 + "test", "bad\u2488.test"]:
            e = await self.failure(self.resolver.resolve(domain), PermanentDNSFailure)
            self.assertEqual(e.status, "5.1.2")
        self.assertEqual(self.server.queries, [])


class CNAMETests(DNSTestCase):
    async def test_mxHostAlias(self):
        """
        An MX host that is an alias keeps its name in the route; the
        addresses are those of the alias target.
        """
        self.server.setMX("example.test", [(10, "mail.example.test")])
        self.server.setCNAME("mail.example.test", "real.example.test")
        self.server.setA("real.example.test", ["127.0.0.7"])
        self.server.setAAAA("real.example.test", ["::7"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(
            routes,
            [
                Route("mail.example.test", "127.0.0.7", 10),
                Route("mail.example.test", "::7", 10),
            ],
        )

    async def test_aliasTargetNotInAnswer(self):
        """
        When the answer stops at the alias, the target is asked for.
        """
        self.server.chaseCNAME = False
        self.server.setMX("example.test", [(10, "mail.example.test")])
        self.server.setCNAME("mail.example.test", "real.example.test")
        self.server.setA("real.example.test", ["127.0.0.7"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(routes, [Route("mail.example.test", "127.0.0.7", 10)])
        self.assertIn(("real.example.test", "A"), self.server.queries)

    async def test_domainAlias(self):
        self.server.chaseCNAME = False
        self.server.setCNAME("example.test", "example.net")
        self.server.setMX("example.net", [(10, "mx.example.net")])
        self.server.setA("mx.example.net", ["127.0.0.8"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(routes, [Route("mx.example.net", "127.0.0.8", 10)])

    async def test_implicitMXThroughAlias(self):
        self.server.setCNAME("example.test", "host.example.net")
        self.server.setA("host.example.net", ["127.0.0.9"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(routes, [Route("example.test", "127.0.0.9", 0)])

    async def test_aliasToMissingName(self):
        self.server.setMX("example.test", [(10, "mail.example.test"), (20, "mx2.example.test")])
        self.server.setCNAME("mail.example.test", "gone.example.test")
        self.server.setA("mx2.example.test", ["127.0.0.3"])
        routes = await self.resolver.resolve("example.test")
        self.assertEqual(routes, [Route("mx2.example.test", "127.0.0.3", 20)])

    async def test_aliasLoop(self):
        self.server.setCNAME("example.test", "loop.example.test")
        self.server.setCNAME("loop.example.test", "example.test")
        e = await self.failure(self.resolver.resolve("example.test"), TemporaryDNSFailure)
        self.assertEqual(e.status, "4.4.3")


class LiteralTests(DNSTestCase):
    async def test_ipv4Literal(self):
        routes = await self.resolver.resolve("[127.0.0.1]")
        self.assertEqual(routes, [Route("[127.0.0.1]", "127.0.0.1", 0)])
        self.assertEqual(self.server.queries, [])

    async def test_ipv6Literal(self):
        self.assertEqual(
            await self.resolver.resolve("[IPv6:::1]"), [Route("[IPv6:::1]", "::1", 0)]
        )
        self.assertEqual(
            await self.resolver.resolve("[ipv6:2001:DB8:0::1]"),
            [Route("[ipv6:2001:DB8:0::1]", "2001:db8::1", 0)],
        )
        self.assertEqual(self.server.queries, [])

    async def test_badLiterals(self):
        literals = ["[999.0.0.1]", "[127.0.0.1", "[foo]", "[IPv6:127.0.0.1]", "[::1]", "[x:1]"]
        for literal in literals:
            e = await self.failure(self.resolver.resolve(literal), PermanentDNSFailure)
            self.assertEqual(e.status, "5.1.2")
        self.assertEqual(self.server.queries, [])


class CacheTests(DNSTestCase):
    def setUp(self):
        DNSTestCase.setUp(self)
        self.server.setMX("example.test", [(10, "mx1.example.test")], ttl=600)
        self.server.setA("mx1.example.test", ["127.0.0.2"], ttl=60)

    async def test_cacheHitSendsNoQuery(self):
        first = await self.resolver.resolve("example.test")
        self.assertEqual(len(self.server.queries), 3)
        self.server.setA("mx1.example.test", ["127.0.0.99"])
        self.assertEqual(await self.resolver.resolve("example.test"), first)
        self.assertEqual(len(self.server.queries), 3)

    async def test_expiresAfterSmallestTTL(self):
        await self.resolver.resolve("example.test")
        self.server.setA("mx1.example.test", ["127.0.0.99"])
        self.clock.advance(59)
        [route] = await self.resolver.resolve("example.test")
        self.assertEqual(route.address, "127.0.0.2")
        self.clock.advance(1)
        [route] = await self.resolver.resolve("example.test")
        self.assertEqual(route.address, "127.0.0.99")

    async def test_cacheTimeBoundsTTL(self):
        resolver = self.makeMXResolver(cacheTime=30)
        await resolver.resolve("example.test")
        self.server.setA("mx1.example.test", ["127.0.0.99"])
        self.clock.advance(29)
        [route] = await resolver.resolve("example.test")
        self.assertEqual(route.address, "127.0.0.2")
        self.clock.advance(1)
        [route] = await resolver.resolve("example.test")
        self.assertEqual(route.address, "127.0.0.99")

    async def test_zeroTTLNotCached(self):
        self.server.setA("mx1.example.test", ["127.0.0.2"], ttl=0)
        await self.resolver.resolve("example.test")
        del self.server.queries[:]
        await self.resolver.resolve("example.test")
        self.assertIn(("example.test", "MX"), self.server.queries)

    async def test_noNegativeCaching(self):
        self.server.clear("example.test")
        await self.failure(self.resolver.resolve("example.test"), PermanentDNSFailure)
        self.server.setMX("example.test", [(10, "mx1.example.test")])
        [route] = await self.resolver.resolve("example.test")
        self.assertEqual(route.address, "127.0.0.2")

    async def test_bounded(self):
        for name in ["a.test", "b.test", "c.test"]:
            self.server.setMX(name, [(10, "mx1.example.test")])
        self.resolver.maxCacheEntries = 2
        for name in ["a.test", "b.test", "a.test", "c.test"]:
            await self.resolver.resolve(name)
        del self.server.queries[:]
        await self.resolver.resolve("a.test")
        await self.resolver.resolve("c.test")
        self.assertEqual(self.server.queries, [])
        await self.resolver.resolve("b.test")
        self.assertIn(("b.test", "MX"), self.server.queries)


class LookupTXTTests(DNSTestCase):
    async def test_recordsJoined(self):
        long = "k=rsa; p=" + "A" * 400
        self.server.setTXT("sel._domainkey.example.test", [long, ["v=spf1 ", "-all"]])
        records = await self.resolver.lookupTXT("sel._domainkey.example.test")
        self.assertEqual(sorted(records), [long.encode(), b"v=spf1 -all"])

    async def test_nxdomainAndNodata(self):
        self.server.setA("example.test", ["127.0.0.2"])
        self.assertEqual(await self.resolver.lookupTXT("example.test"), [])
        self.assertEqual(await self.resolver.lookupTXT("missing.test"), [])

    async def test_failureIsTemporary(self):
        self.server.failWith("example.test", "servfail")
        e = await self.failure(self.resolver.lookupTXT("example.test"), TemporaryDNSFailure)
        self.assertEqual(e.status, "4.4.3")

    async def test_throughAlias(self):
        self.server.setCNAME("_dmarc.example.test", "_dmarc.example.net")
        self.server.setTXT("_dmarc.example.net", ["v=DMARC1; p=none"])
        self.assertEqual(
            await self.resolver.lookupTXT("_DMARC.example.test"), [b"v=DMARC1; p=none"]
        )


class LookupAddressesTests(DNSTestCase):
    async def test_ipv4First(self):
        self.server.setAAAA("host.example.test", ["2001:db8::1"])
        self.server.setA("host.example.test", ["127.0.0.2", "127.0.0.3"])
        addresses = await self.resolver.lookupAddresses("Host.Example.Test.")
        self.assertEqual(sorted(addresses[:2]), ["127.0.0.2", "127.0.0.3"])
        self.assertEqual(addresses[2:], ["2001:db8::1"])
        self.assertEqual(
            self.queriedTypes(), [("host.example.test", "A"), ("host.example.test", "AAAA")]
        )

    async def test_oneFamily(self):
        self.server.setAAAA("six.example.test", ["2001:db8::1"])
        self.assertEqual(await self.resolver.lookupAddresses("six.example.test"), ["2001:db8::1"])

    async def test_nxdomainAndNodata(self):
        self.server.setTXT("example.test", ["v=spf1 -all"])
        self.assertEqual(await self.resolver.lookupAddresses("example.test"), [])
        self.assertEqual(await self.resolver.lookupAddresses("missing.test"), [])

    async def test_throughAlias(self):
        self.server.setCNAME("www.example.test", "host.example.test")
        self.server.setA("host.example.test", ["127.0.0.2"])
        self.assertEqual(await self.resolver.lookupAddresses("www.example.test"), ["127.0.0.2"])

    async def test_failureIsTemporary(self):
        self.server.failWith("example.test", "servfail")
        e = await self.failure(self.resolver.lookupAddresses("example.test"), TemporaryDNSFailure)
        self.assertEqual(e.status, "4.4.3")

    async def test_timeoutIsTemporary(self):
        self.server.failWith("example.test", "timeout")
        resolver = self.makeMXResolver(timeout=QUICK_TIMEOUT)
        await self.failure(resolver.lookupAddresses("example.test"), TemporaryDNSFailure)

    async def test_badName(self):
        await self.failure(self.resolver.lookupAddresses("a..example.test"), PermanentDNSFailure)
        self.assertEqual(self.server.queries, [])


class LookupMXTests(DNSTestCase):
    async def test_preferenceOrder(self):
        self.server.setMX(
            "example.test",
            [(20, "MX2.example.test."), (10, "mx1.example.test"), (30, "mx1.example.test")],
        )
        self.assertEqual(
            await self.resolver.lookupMX("example.test"),
            ["mx1.example.test", "mx2.example.test"],
        )
        # No address lookups: the SPF evaluator counts those itself.
        self.assertEqual(self.queriedTypes(), [("example.test", "MX")])

    async def test_noImplicitMX(self):
        self.server.setA("example.test", ["127.0.0.2"])
        self.assertEqual(await self.resolver.lookupMX("example.test"), [])
        self.assertEqual(await self.resolver.lookupMX("missing.test"), [])

    async def test_nullMX(self):
        self.server.setNullMX("example.test")
        self.assertEqual(await self.resolver.lookupMX("example.test"), [])

    async def test_failureIsTemporary(self):
        self.server.failWith("example.test", "refused")
        await self.failure(self.resolver.lookupMX("example.test"), TemporaryDNSFailure)


class LookupPointerTests(DNSTestCase):
    async def test_ipv4(self):
        self.server.setPTR("127.0.0.2", ["mail.example.test", "other.example.test"])
        names = await self.resolver.lookupPointer("127.0.0.2")
        self.assertEqual(sorted(names), ["mail.example.test", "other.example.test"])
        self.assertEqual(self.server.queries, [("2.0.0.127.in-addr.arpa", "PTR")])

    async def test_ipv6(self):
        self.server.setPTR("2001:db8::25", ["mail.example.test"])
        self.assertEqual(await self.resolver.lookupPointer("2001:DB8::25"), ["mail.example.test"])
        ((name, recordType),) = self.server.queries
        self.assertEqual(name, "5.2" + ".0" * 22 + ".8.b.d.0.1.0.0.2.ip6.arpa")
        self.assertEqual(recordType, "PTR")

    async def test_classlessDelegation(self):
        """
        A CNAME into a delegated zone is followed (RFC 2317 section 4).
        """
        self.server.setCNAME("2.0.0.127.in-addr.arpa", "2.0/26.0.0.127.in-addr.arpa")
        self.server.zone["2.0/26.0.0.127.in-addr.arpa"] = {"PTR": ["mail.example.test"]}
        self.assertEqual(await self.resolver.lookupPointer("127.0.0.2"), ["mail.example.test"])

    async def test_nxdomainAndNodata(self):
        self.server.setTXT("2.0.0.127.in-addr.arpa", ["not a pointer"])
        self.assertEqual(await self.resolver.lookupPointer("127.0.0.2"), [])
        self.assertEqual(await self.resolver.lookupPointer("127.0.0.3"), [])

    async def test_failureIsTemporary(self):
        self.server.failWith("2.0.0.127.in-addr.arpa", "servfail")
        await self.failure(self.resolver.lookupPointer("127.0.0.2"), TemporaryDNSFailure)

    async def test_badAddress(self):
        e = await self.failure(self.resolver.lookupPointer("mail.example.test"), PermanentDNSFailure)
        self.assertIsInstance(e, PermanentFailure)
        self.assertEqual(self.server.queries, [])


class MakeResolverTests(unittest.SynchronousTestCase):
    def test_nameservers(self):
        resolver = makeResolver(
            MemoryReactorClock(),
            ["127.0.0.1:5353", "192.0.2.1", "[::1]:5300", "[2001:db8::1]", "2001:db8::2"],
        )
        verifyObject(IResolver, resolver)
        self.assertEqual(
            resolver.servers,
            [
                ("127.0.0.1", 5353),
                ("192.0.2.1", 53),
                ("::1", 5300),
                ("2001:db8::1", 53),
                ("2001:db8::2", 53),
            ],
        )

    def test_timeout(self):
        resolver = makeResolver(MemoryReactorClock(), ["127.0.0.1"], timeout=(5,))
        self.assertEqual(resolver.timeout, (5,))

    def test_badNameservers(self):
        bad = [["localhost"], ["127.0.0.1:0"], ["127.0.0.1:x"], ["[::1"], ["[::1]53"], ["[1.2.3.4]"]]
        for nameservers in bad:
            self.assertRaises(ValueError, makeResolver, MemoryReactorClock(), nameservers)

    def test_systemResolver(self):
        """
        Without nameservers, those of resolv.conf are used, read again later.
        """
        for nameservers in [None, []]:
            clock = MemoryReactorClock()
            resolver = makeResolver(clock, nameservers)
            verifyObject(IResolver, resolver)
            self.assertEqual(resolver.resolv, "/etc/resolv.conf")
            self.assertEqual(resolver.servers, [])
            self.assertEqual(len(clock.getDelayedCalls()), 1)


class TestDNSServerTests(DNSTestCase):
    """
    The server answers with the RCODEs a client expects.
    """

    def lookup(self, name):
        return makeResolver(reactor, [self.server.nameserver], timeout=(2,)).lookupAddress(name)

    async def test_rcodes(self):
        self.server.setA("here.test", ["127.0.0.2"])
        self.server.failWith("servfail.test", "servfail")
        self.server.failWith("refused.test", "refused")
        await self.failure(self.lookup("missing.test"), error.DNSNameError)
        await self.failure(self.lookup("servfail.test"), error.DNSServerError)
        await self.failure(self.lookup("refused.test"), error.DNSQueryRefusedError)
        answers, authority, additional = await self.lookup("here.test")
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["127.0.0.2"])
        self.assertTrue(all(a.auth for a in answers))

    async def test_nameWithChildrenIsNoData(self):
        self.server.setA("a.b.test", ["127.0.0.2"])
        answers, authority, additional = await self.lookup("b.test")
        self.assertEqual(answers, [])

    async def test_clear(self):
        self.server.setA("here.test", ["127.0.0.2"])
        self.server.clear("here.test")
        await self.failure(self.lookup("here.test"), error.DNSNameError)

    async def test_tcp(self):
        """
        TCP is served on the UDP port too.
        """
        self.server.setA("here.test", ["127.0.0.2"])
        resolver = makeResolver(reactor, [self.server.nameserver])
        message = await resolver.queryTCP([dns.Query("here.test")])
        [protocol] = resolver.connections
        lost = defer.Deferred()
        connectionLost = protocol.connectionLost
        protocol.connectionLost = lambda reason: (connectionLost(reason), lost.callback(None))
        protocol.transport.loseConnection()
        answers, authority, additional = resolver.filterAnswers(message)
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["127.0.0.2"])
        self.assertEqual(self.server.queries, [("here.test", "A")])
        await lost

    def test_badFailureMode(self):
        self.assertRaises(ValueError, self.server.failWith, "x.test", "slow")


class StandaloneServerTests(unittest.TestCase):
    """
    C{python tests/dnsserver.py} serves a JSON zone file and reads it again
    when it changes.
    """

    def writeZone(self, path, zone):
        with open(path + ".new", "w", encoding="utf-8") as f:
            json.dump(zone, f)
        os.replace(path + ".new", path)

    async def test_process(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        path = os.path.join(directory.name, "zone.json")
        self.writeZone(
            path,
            {
                "example.test": {"MX": [[10, "mx1.example.test"]], "ttl": 0},
                "mx1.example.test": {"A": ["127.0.0.2"], "ttl": 0},
            },
        )
        process = subprocess.Popen(
            [sys.executable, SERVER_SCRIPT, "--port", "0", "--zone", path],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(process.wait, 30)
        self.addCleanup(process.kill)
        line = process.stdout.readline()
        process.stdout.close()
        self.assertRegex(line, r"\Aready [0-9]+\n\Z")
        port = int(line.split()[1])
        resolver = MXResolver(makeResolver(reactor, ["127.0.0.1:%d" % (port,)]), clock=Clock())
        routes = await resolver.resolve("example.test")
        self.assertEqual(routes, [Route("mx1.example.test", "127.0.0.2", 10)])

        self.writeZone(
            path,
            {
                "example.test": {"MX": [[10, "mx1.example.test"], [20, "mx2.example.test"]]},
                "mx1.example.test": {"fail": "servfail"},
                "mx2.example.test": {"AAAA": ["::2"]},
            },
        )
        routes = await resolver.resolve("example.test")
        self.assertEqual(routes, [Route("mx2.example.test", "::2", 20)])
