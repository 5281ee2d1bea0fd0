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

The checks of inbound mail ask DNS through the same resolver:
L{MXResolver.lookupTXT}, L{MXResolver.lookupAddresses},
L{MXResolver.lookupMX} and L{MXResolver.lookupPointer} are the lookups SPF
(RFC 7208 section 5) and DKIM (RFC 6376 section 3.6.2.2) need, uncached.
They answer an empty list for a name that does not exist or has no such
records, and fail with L{TemporaryDNSFailure} when DNS cannot answer.
"""

import collections
import dataclasses
import ipaddress
import itertools
import socket
from random import Random

import idna
from twisted.internet import defer
from twisted.names import client, dns, error

from mdpy.errors import PermanentFailure, TemporaryFailure, describe

# RFC 3463 enhanced status codes; 5.1.10 is RFC 7505 section 4.2.
STATUS_DNS_TEMPORARY = "4.4.3"
STATUS_NO_DOMAIN = "5.1.2"
STATUS_NULL_MX = "5.1.10"
STATUS_NO_ROUTE = "5.4.4"

DEFAULT_TIMEOUT = (1, 3, 11)
RESOLV_CONF = "/etc/resolv.conf"
MAX_CNAME_CHAIN = 8
MAX_NAME = 253
MAX_LABEL = 63

_LOOKUP_METHODS = {
    dns.MX: "lookupMailExchange",
    dns.A: "lookupAddress",
    dns.AAAA: "lookupIPV6Address",
    dns.TXT: "lookupText",
    dns.PTR: "lookupPointer",
    dns.SRV: "lookupService",
    dns.CNAME: "lookupCanonicalName",
}


class TemporaryDNSFailure(TemporaryFailure):
    """
    DNS could not answer now: a timeout, SERVFAIL, REFUSED or another resolver
    error.  The caller retries later.

    @ivar status: the RFC 3463 enhanced status code, C{"4.4.3"} (directory
        server failure) unless given.
    """

    def __init__(self, message, status=STATUS_DNS_TEMPORARY):
        super().__init__(message)
        self.status = status


class PermanentDNSFailure(PermanentFailure):
    """
    DNS answered that the domain takes no mail from us: it does not exist
    (C{"5.1.2"}), it has a null MX (C{"5.1.10"}, RFC 7505 section 4.2), or no
    MX host has an address (C{"5.4.4"}).

    @ivar status: the RFC 3463 enhanced status code.
    """

    def __init__(self, message, status=STATUS_NO_DOMAIN):
        super().__init__(message)
        self.status = status


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


class _NoSuchName(Exception):
    """
    The name does not exist (NXDOMAIN, RFC 1035 section 4.1.1 RCODE 3).
    """


def _parseNameserver(text):
    """
    Parse C{"host"}, C{"host:port"}, C{"[v6]"}, C{"[v6]:port"} or a bare IPv6
    address.

    @return: C{(host, port)}, the port 53 unless given.
    @raise ValueError: C{text} is not an IP address with an optional port.
    """
    port = dns.PORT
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError("bad nameserver: %r" % (text,))
        if rest:
            port = int(rest[1:])
        ipaddress.IPv6Address(host)
    elif text.count(":") > 1:
        host = str(ipaddress.IPv6Address(text))
    else:
        host, colon, portText = text.partition(":")
        if colon:
            port = int(portText)
        ipaddress.IPv4Address(host)
    if not 0 < port < 65536:
        raise ValueError("bad nameserver port: %r" % (text,))
    return host, port


def makeResolver(reactor, nameservers=None, timeout=DEFAULT_TIMEOUT):
    """
    Make the DNS client L{MXResolver} asks.

    It keeps no cache of its own (L{MXResolver} caches what it needs) and does
    not read C{/etc/hosts}: mail routing is DNS only (RFC 5321 section 5.1).

    @param nameservers: a list of C{"host"}, C{"host:port"}, C{"[v6]"} or
        C{"[v6]:port"} strings, hosts being IP addresses; L{None} or an empty
        list (the unset C{[dns] nameservers}) for the servers of
        C{/etc/resolv.conf}, re-read when it changes.
    @param timeout: the seconds to wait for each try; a query fails with a
        timeout after the last one.
    @return: an L{twisted.internet.interfaces.IResolver}.
    @raise ValueError: a nameserver is malformed.
    """
    if not nameservers:
        return client.Resolver(resolv=RESOLV_CONF, reactor=reactor, timeout=timeout)
    servers = [_parseNameserver(text) for text in nameservers]
    return client.Resolver(servers=servers, reactor=reactor, timeout=timeout)


def _queryName(domain):
    """
    The name to ask DNS for: lowercase A-labels without the final dot.  A
    domain in U-labels (RFC 6531 allows them with SMTPUTF8) is converted
    with IDNA 2008 and the UTS 46 mapping (RFC 5891 section 4).

    @raise PermanentDNSFailure: C{domain} is not a valid domain name.
    """
    name = domain[:-1] if domain.endswith(".") else domain
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as e:
            raise PermanentDNSFailure("bad domain %r: %s" % (domain, e)) from e
    name = name.lower()
    if len(name) > MAX_NAME or not all(
        0 < len(label) <= MAX_LABEL for label in name.split(".")
    ):
        raise PermanentDNSFailure("bad domain %r" % (domain,))
    return name


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


def _addressText(record):
    """
    @return: the address of an A or AAAA record as text.
    """
    if record.TYPE == dns.A:
        return record.dottedQuad()
    return socket.inet_ntop(socket.AF_INET6, record.address)


class MXResolver:
    """
    Find where mail for a domain goes (RFC 5321 section 5.1, RFC 7505).

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
            usually from L{makeResolver}.
        @param clock: the L{twisted.internet.interfaces.IReactorTime} for the
            cache; the global reactor by default.
        @param cacheTime: the longest time a result is cached, in seconds.
        @param random: the L{Random} that orders MX hosts of equal preference.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.resolver = resolver
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

    def lookupTXT(self, name):
        """
        Look up the TXT records of C{name}, for SPF (RFC 7208 section 4.4) and
        DKIM (RFC 6376 section 3.6.2.2).  Not cached.

        @return: a L{defer.Deferred} firing with a list holding the strings of
            each record joined into one L{bytes}; an empty list when the name
            does not exist or has no TXT record.  It fails with
            L{TemporaryDNSFailure} when DNS does not answer, or with
            L{PermanentDNSFailure} when C{name} is not a valid domain name.
        """
        return defer.ensureDeferred(self._lookupTXT(name))

    def lookupAddresses(self, name):
        """
        Look up the A and AAAA records of C{name}, for SPF (RFC 7208 sections
        5.3, 5.4 and 5.7).  Not cached.

        @return: a L{defer.Deferred} firing with a list of the addresses as
            text, the IPv4 ones first; an empty list when the name does not
            exist or has neither record.  It fails with
            L{TemporaryDNSFailure} when either lookup fails (a partial answer
            could turn an SPF C{pass} into a C{fail}), or with
            L{PermanentDNSFailure} when C{name} is not a valid domain name.
        """
        return defer.ensureDeferred(self._lookupAddresses(name))

    async def _lookupAddresses(self, name):
        exchange = await self._lookupExchange(0, _queryName(name))
        if exchange.temporary:
            raise TemporaryDNSFailure("%s: address lookup failed" % (name,))
        return list(exchange.addresses)

    def lookupMX(self, name):
        """
        Look up the MX hosts of C{name}, for the SPF C{mx} mechanism (RFC
        7208 section 5.4).  Not cached; no implicit MX.

        @return: a L{defer.Deferred} firing with the host names, lowercase
            without the final dot, in order of preference, each once; the
            root of a null MX (RFC 7505) is left out.  An empty list when the
            name does not exist or has no MX record.  Failures are those of
            L{lookupTXT}.
        """
        return defer.ensureDeferred(self._lookupMX(name))

    async def _lookupMX(self, name):
        records = await self._records(name, dns.MX)
        return [host for preference, host in _exchangeHosts(records)]

    def lookupPointer(self, address):
        """
        Look up the PTR records of an IP address, under C{in-addr.arpa} or
        C{ip6.arpa} (RFC 1035 section 3.5, RFC 3596 section 2.5), for the SPF
        C{ptr} mechanism and C{%{p}} macro (RFC 7208 section 5.5).  CNAMEs
        are followed, as classless delegation (RFC 2317) needs.  Not cached.

        @param address: an IPv4 or IPv6 address, as text.
        @return: a L{defer.Deferred} firing with the names, without the
            final dot; an empty list when there is no PTR record.  It fails
            with L{PermanentDNSFailure} when C{address} is not an IP address,
            else as L{lookupTXT} does.
        """
        return defer.ensureDeferred(self._lookupPointer(address))

    async def _lookupPointer(self, address):
        try:
            name = ipaddress.ip_address(address).reverse_pointer
        except ValueError as e:
            raise PermanentDNSFailure("bad address %r" % (address,)) from e
        records = await self._records(name, dns.PTR)
        return [record.name.name.decode("ascii", "replace") for record in records]

    def lookupRecords(self, name, recordType):
        """
        Look up the records of one type of C{name} as they are published,
        for C{mdpy dns --check}.  CNAMEs are followed unless C{recordType}
        is C{dns.CNAME}.  Not cached.

        @param recordType: C{dns.MX}, C{dns.TXT}, C{dns.SRV}, C{dns.CNAME},
            C{dns.A}, C{dns.AAAA} or C{dns.PTR}.
        @return: a L{defer.Deferred} firing with the record payloads
            (C{twisted.names.dns.Record_MX} ...); an empty list when the
            name does not exist or has no such record.  Failures are those of
            L{lookupTXT}.
        """
        return defer.ensureDeferred(self._records(name, recordType))

    async def _lookupTXT(self, name):
        records = await self._records(name, dns.TXT)
        return [b"".join(record.data) for record in records]

    async def _records(self, name, recordType):
        """
        Look up the records of one type of C{name}, in any case, A- or
        U-labels.

        @return: the payloads; empty for NXDOMAIN and NODATA.
        @raise PermanentDNSFailure: C{name} is not a valid domain name.
        @raise TemporaryDNSFailure: DNS did not answer.
        """
        try:
            records, _ = await self._lookup(_queryName(name), recordType)
        except _NoSuchName:
            return []
        return records

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
        outcomes = await defer.DeferredList(
            [
                defer.ensureDeferred(self._lookup(hostname, recordType))
                for recordType in (dns.A, dns.AAAA)
            ],
            consumeErrors=True,
        )
        addresses = []
        ttls = []
        temporary = False
        for succeeded, outcome in outcomes:
            if succeeded:
                records, ttl = outcome
                addresses.extend(_addressText(record) for record in records)
                if records:
                    ttls.append(ttl)
            elif outcome.check(TemporaryDNSFailure):
                temporary = True
            elif not outcome.check(_NoSuchName):
                outcome.raiseException()
        return _Exchange(
            preference, hostname, tuple(addresses), min(ttls, default=None), temporary
        )

    async def _lookup(self, name, recordType):
        """
        Look up the records of one type, following CNAMEs: within the answer
        as a recursive server gives them, with a new query when the answer
        ends at an alias whose target it does not hold.

        @param name: the query name in A-labels.
        @return: C{(payloads, ttl)}: the records of the final name, empty for
            NODATA, and the smallest TTL of them and of the CNAMEs followed.
        @raise _NoSuchName: NXDOMAIN.
        @raise TemporaryDNSFailure: any other failure, or a CNAME chain longer
            than L{MAX_CNAME_CHAIN} or looping.
        """
        current = dns.Name(name)
        queried = set()
        aliases = []
        answers = []
        while True:
            if current.name.lower() not in queried and not _owned(answers, current):
                queried.add(current.name.lower())
                answers = await self._query(current, recordType)
            records = [r for r in _owned(answers, current) if r.type == recordType]
            if records:
                ttl = min(r.ttl for r in aliases + records)
                return [r.payload for r in records], ttl
            cnames = [r for r in _owned(answers, current) if r.type == dns.CNAME]
            if not cnames:
                return [], None
            if len(aliases) >= MAX_CNAME_CHAIN:
                raise TemporaryDNSFailure("%s: CNAME chain too long" % (name,))
            aliases.append(cnames[0])
            current = cnames[0].payload.name

    async def _query(self, name, recordType):
        """
        Ask the resolver once.

        @return: the answer section.
        @raise _NoSuchName: NXDOMAIN.
        @raise TemporaryDNSFailure: any other failure.
        """
        lookup = getattr(self.resolver, _LOOKUP_METHODS[recordType])
        text = name.name.decode("ascii", "replace")
        try:
            answers, authority, additional = await lookup(name.name)
        except (error.DNSNameError, error.AuthoritativeDomainError) as e:
            raise _NoSuchName(text) from e
        except error.DomainError as e:
            # Other subclasses are error RCODEs; the bare class is a resolver
            # (hosts file, chain) that has no such name.
            if type(e) is error.DomainError:
                raise _NoSuchName(text) from e
            raise TemporaryDNSFailure(
                "%s %s lookup failed: %s" % (text, dns.QUERY_TYPES[recordType], _rcodeName(e))
            ) from e
        except defer.CancelledError:
            raise
        except defer.TimeoutError as e:
            # Every server, every try (twisted.names gives the queries as
            # its argument, which is no text for people).
            raise TemporaryDNSFailure("DNS lookup of %s timed out" % (text,)) from e
        except Exception as e:
            raise TemporaryDNSFailure(
                "%s %s lookup failed: %s" % (text, dns.QUERY_TYPES[recordType], describe(e))
            ) from e
        return answers

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


def _owned(answers, name):
    """
    @return: the records of C{answers} whose owner is C{name}.
    """
    return [record for record in answers if record.name == name]


def _exchangeHosts(records):
    """
    The hosts of MX records in order of preference, without the root (a null
    MX next to other MX records is ignored) and each host once, at its best
    preference.  A host name that is not ASCII cannot be looked up and is
    left out.

    @return: a list of C{(preference, hostname)}.
    """
    best = {}
    for record in records:
        try:
            host = record.name.name.decode("ascii").lower()
        except UnicodeDecodeError:
            continue
        if host and (host not in best or record.preference < best[host]):
            best[host] = record.preference
    return sorted(((preference, host) for host, preference in best.items()))


_RCODE_NAMES = {
    dns.EFORMAT: "FORMERR",
    dns.ESERVER: "SERVFAIL",
    dns.ENAME: "NXDOMAIN",
    dns.ENOTIMP: "NOTIMP",
    dns.EREFUSED: "REFUSED",
}


def _rcodeName(e):
    """
    @return: the RCODE of a L{twisted.names.error.DomainError} for a log line
        or a DSN (C{"SERVFAIL"}), not the message object it carries.
    """
    message = e.args[0] if e.args else None
    rCode = getattr(message, "rCode", None)
    if rCode is None:
        return type(e).__name__
    return _RCODE_NAMES.get(rCode, "RCODE %d" % (rCode,))

