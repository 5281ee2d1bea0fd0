# -*- test-case-name: tests.test_mx -*-
"""
The DNS side of outbound delivery: where mail for a domain goes.

L{MXResolver.resolve} turns the domain of a recipient into the ordered list of
L{Route}s to try, following RFC 5321 section 5.1: all MX hosts in preference
order, equal preferences in random order, each host's IPv4 addresses before
its IPv6 ones, the implicit MX of a domain without MX records, and the null MX
of RFC 7505.  Failures are L{TemporaryDNSFailure} (try again later) or
L{PermanentDNSFailure} (bounce), each with the RFC 3463 enhanced status code a
delivery status notification reports.

twisted.mail's C{MXCalculator} gives only the single best MX and knows neither
AAAA records nor the null MX, hence this module.

L{MXResolver} is a L{mdpy.dns.Resolver}: the checks of inbound mail ask
DNS through the same object, and so through the same cache.
"""

import collections
import dataclasses
import ipaddress
import itertools
from random import Random

from twisted.internet import defer
from twisted.names import dns

from mdpy.dns import (
    DEFAULT_TIMEOUT,
    STATUS_DNS_TEMPORARY,
    STATUS_NO_DOMAIN,
    PermanentDNSFailure,
    Resolver,
    TemporaryDNSFailure,
    _exchangeHosts,
    _NoSuchName,
    _queryName,
    makeResolver,
)

# The DNS names are imported from here too.
__all__ = [
    "DEFAULT_TIMEOUT",
    "MXResolver",
    "PermanentDNSFailure",
    "Route",
    "STATUS_DNS_TEMPORARY",
    "STATUS_NO_DOMAIN",
    "STATUS_NO_ROUTE",
    "STATUS_NULL_MX",
    "TemporaryDNSFailure",
    "makeResolver",
]

# RFC 3463 enhanced status codes; 5.1.10 is RFC 7505 section 4.2.
STATUS_NULL_MX = "5.1.10"
STATUS_NO_ROUTE = "5.4.4"


@dataclasses.dataclass(frozen=True)
class Route:
    """
    One address to try when delivering to a domain.

    @ivar hostname: the MX host name (in A-labels); the domain itself for the
        implicit MX of RFC 5321 section 5.1; the address literal as given for
        a domain literal.  A TLS client checks the certificate against it.
    @ivar address: the IPv4 or IPv6 address, in its normal text form.
    @ivar preference: the MX preference; 0 for an implicit MX or a literal.
    """

    hostname: str
    address: str
    preference: int


@dataclasses.dataclass(frozen=True)
class _Exchange:
    """
    An MX host and what its address lookups gave.

    @ivar addresses: IPv4 addresses, then IPv6 ones.
    @ivar ttl: the smallest TTL of the records behind C{addresses}, or L{None}
        when there are none.
    @ivar temporary: whether a lookup failed temporarily, so that
        C{addresses} may be incomplete.
    """

    preference: int
    hostname: str
    addresses: tuple[str, ...]
    ttl: int | None
    temporary: bool


def _addressLiteral(domain):
    """
    The address of an RFC 5321 section 4.1.3 address literal.

    @return: the address in its normal text form, or L{None} when C{domain}
        is not a literal.
    @raise PermanentDNSFailure: a malformed literal, or one of a kind other
        than IPv4 and IPv6.
    """
    if not domain.startswith("["):
        return None
    inner = domain[1:-1] if domain.endswith("]") else ""
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError as e:
        raise PermanentDNSFailure("bad address literal %r" % (domain,)) from e


class MXResolver(Resolver):
    """
    Find where mail for a domain goes (RFC 5321 section 5.1, RFC 7505), and
    the lookups of L{Resolver}.

    Positive results are cached per domain for the smallest TTL of the records
    used, at most C{cacheTime} seconds; failures are not cached, nor results
    where some address lookup failed.  The cache keeps the
    C{maxCacheEntries} most recently used domains.

    @ivar maxCacheEntries: the bound of the cache.
    """

    maxCacheEntries = 10000

    def __init__(self, resolver, clock=None, cacheTime=300, random=None):
        """
        @param resolver: the L{twisted.internet.interfaces.IResolver} to ask,
            usually a L{mdpy.dns.DNSCache} in front of L{makeResolver}'s.
        @param clock: the L{twisted.internet.interfaces.IReactorTime} for the
            cache; the global reactor by default.
        @param cacheTime: the longest time a result is cached, in seconds.
        @param random: the L{Random} that orders MX hosts of equal preference.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        Resolver.__init__(self, resolver)
        self.cacheTime = cacheTime
        self._clock = clock
        self._random = Random() if random is None else random
        self._cache = collections.OrderedDict()

    def resolve(self, domain):
        """
        Find the addresses to deliver mail for C{domain} to, best first.

        A domain literal (C{[192.0.2.1]}, C{[IPv6:2001:db8::1]}) is its one
        address; DNS is not asked.  Otherwise the MX hosts are taken in order
        of preference, hosts of equal preference in random order (RFC 5321
        section 5.1), each host's IPv4 addresses before its IPv6 ones.  An MX
        host without an address is skipped.  Without MX records the domain is
        its own MX of preference 0 (the implicit MX).

        @param domain: the domain of a recipient, in A- or U-labels, any case.
        @return: a L{defer.Deferred} firing with a non-empty list of L{Route}s,
            or failing with L{TemporaryDNSFailure} (status C{"4.4.3"}) or
            L{PermanentDNSFailure}: C{"5.1.2"} when the domain does not exist
            or has neither MX nor address, C{"5.1.10"} for a null MX (RFC 7505
            section 3), C{"5.4.4"} when no MX host has an address.
        """
        return defer.ensureDeferred(self._resolve(domain))

    async def _resolve(self, domain):
        address = _addressLiteral(domain)
        if address is not None:
            return [Route(domain, address, 0)]
        name = _queryName(domain)
        exchanges = self._cached(name)
        if exchanges is None:
            exchanges, ttl, complete = await self._lookupExchanges(name)
            if complete:
                self._store(name, exchanges, ttl)
        return self._routes(exchanges)

    async def _lookupExchanges(self, name):
        """
        @return: C{(exchanges, ttl, complete)}: the L{_Exchange}s that have
            addresses in order of preference, the smallest TTL of the records
            used, and whether no lookup failed.
        """
        try:
            records, mxTTL = await self._lookup(name, dns.MX)
        except _NoSuchName:
            raise PermanentDNSFailure("%s: no such domain" % (name,), STATUS_NO_DOMAIN)
        if not records:
            # RFC 5321 section 5.1: no MX, the domain is its own MX.
            implicit = await self._lookupExchange(0, name)
            if implicit.addresses:
                return [implicit], implicit.ttl, not implicit.temporary
            if implicit.temporary:
                raise TemporaryDNSFailure("%s: address lookup failed" % (name,))
            raise PermanentDNSFailure(
                "%s: neither MX nor address records" % (name,), STATUS_NO_DOMAIN
            )
        if all(not record.name.name for record in records):
            # RFC 7505 section 3: the only MX is ".", the domain takes no mail.
            raise PermanentDNSFailure(
                "%s: null MX, accepts no mail" % (name,), STATUS_NULL_MX
            )
        exchanges = await defer.gatherResults(
            [
                defer.ensureDeferred(self._lookupExchange(preference, host))
                for preference, host in _exchangeHosts(records)
            ]
        )
        usable = [exchange for exchange in exchanges if exchange.addresses]
        temporary = any(exchange.temporary for exchange in exchanges)
        if not usable:
            if temporary:
                raise TemporaryDNSFailure("%s: MX host lookups failed" % (name,))
            raise PermanentDNSFailure(
                "%s: no MX host has an address" % (name,), STATUS_NO_ROUTE
            )
        ttl = min([mxTTL] + [exchange.ttl for exchange in usable])
        return usable, ttl, not temporary
    async def _lookupExchange(self, preference, hostname):
        """
        Look up the A and AAAA records of C{hostname} at once.

        @return: an L{_Exchange}; this never fails.
        """
        addresses, ttl, temporary = await self._addressRecords(hostname)
        return _Exchange(preference, hostname, tuple(addresses), ttl, temporary)

    def _routes(self, exchanges):
        """
        Order the routes of C{exchanges}, shuffling hosts of equal preference
        (RFC 5321 section 5.1).  An address reached through several hosts is
        listed once, for the first.
        """
        routes = []
        seen = set()
        for preference, group in itertools.groupby(
            exchanges, key=lambda exchange: exchange.preference
        ):
            group = list(group)
            self._random.shuffle(group)
            for exchange in group:
                for address in exchange.addresses:
                    if address not in seen:
                        seen.add(address)
                        routes.append(Route(exchange.hostname, address, preference))
        return routes

    def _cached(self, name):
        """
        @return: the cached exchanges of C{name}, or L{None}.
        """
        entry = self._cache.get(name)
        if entry is None:
            return None
        expires, exchanges = entry
        if self._clock.seconds() >= expires:
            del self._cache[name]
            return None
        self._cache.move_to_end(name)
        return exchanges

    def _store(self, name, exchanges, ttl):
        ttl = min(ttl, self.cacheTime)
        if ttl <= 0:
            return
        self._cache[name] = (self._clock.seconds() + ttl, exchanges)
        self._cache.move_to_end(name)
        while len(self._cache) > self.maxCacheEntries:
            self._cache.popitem(last=False)
