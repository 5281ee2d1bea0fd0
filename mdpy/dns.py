# -*- test-case-name: tests.test_dns -*-
"""
The one DNS resolver of a server: every lookup (the MX and address lookups
of outbound delivery, SPF and DKIM checks of inbound mail, C{mdpy dns
--check}) goes through the L{Resolver} that C{tap} builds from C{[dns]
nameservers}, with a L{DNSCache} in front of the name servers.

L{DNSCache} keeps answers for their TTL (at most L{MAX_TTL}) and negative
answers, NXDOMAIN and NODATA, for the TTL their SOA record gives (RFC 2308
section 5, at most L{MAX_NEGATIVE_TTL}); failures (SERVFAIL, REFUSED, a
timeout) are not cached, so the next message asks again, but identical
queries under way at once share one query.  So 2,000 messages from one
sender domain cost one SPF lookup, not 2,000.

L{Resolver} gives the lookups SPF (RFC 7208 section 5) and DKIM (RFC 6376
section 3.6.2.2) need, L{Resolver.lookupTXT}, L{Resolver.lookupAddresses},
L{Resolver.lookupMX} and L{Resolver.lookupPointer}, and the raw
L{Resolver.lookupRecords}, and L{Resolver.lookupHost} for the servers the
configuration names (a gateway's Minger server).  They answer an empty list for a name that does
not exist or has no such records, and fail with L{TemporaryDNSFailure} when
DNS cannot answer.  L{mdpy.delivery.mx.MXResolver} builds mail routes on it.
"""

import collections
import ipaddress
import socket

import idna
from twisted.internet import defer
from twisted.names import client, common, dns, error, hosts
from twisted.python.filepath import FilePath

from mdpy.errors import PermanentFailure, TemporaryFailure, describe

# RFC 3463 enhanced status codes.
STATUS_DNS_TEMPORARY = "4.4.3"
STATUS_NO_DOMAIN = "5.1.2"

DEFAULT_TIMEOUT = (1, 3, 11)
RESOLV_CONF = "/etc/resolv.conf"
HOSTS_FILE = "/etc/hosts"
MAX_CNAME_CHAIN = 8
MAX_NAME = 253
MAX_LABEL = 63

# The bounds of the cache: entries, and the longest a positive (one day) and
# a negative (one hour, RFC 2308 section 5 suggests one to three) answer is
# kept whatever its TTL.
MAX_CACHE_ENTRIES = 10000
MAX_TTL = 86400
MAX_NEGATIVE_TTL = 3600

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
    Make the DNS client that asks the name servers, without a cache (see
    L{DNSCache}).

    It does not read C{/etc/hosts}: mail routing is DNS only (RFC 5321
    section 5.1).

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


class _CacheEntry:
    """
    A cached answer.

    @ivar stored: when it was stored, in the clock's seconds.
    @ivar expires: when it must no longer be used.
    @ivar sections: C{(answers, authority, additional)} as received, for a
        positive answer or NODATA.
    @ivar noSuchName: the L{error.DNSNameError} of an NXDOMAIN, else
        L{None}.
    """

    __slots__ = ("stored", "expires", "sections", "noSuchName")

    def __init__(self, stored, expires, sections, noSuchName):
        self.stored = stored
        self.expires = expires
        self.sections = sections
        self.noSuchName = noSuchName

    def result(self, now):
        """
        @return: a L{defer.Deferred} with the answer as the name servers gave
            it, each TTL lowered by the time spent in the cache.
        """
        if self.noSuchName is not None:
            return defer.fail(error.DNSNameError(*self.noSuchName.args))
        elapsed = int(now - self.stored)
        return defer.succeed(
            tuple(
                [
                    dns.RRHeader(
                        record.name.name, record.type, record.cls,
                        max(0, record.ttl - elapsed), record.payload, record.auth,
                    )
                    for record in section
                ]
                for section in self.sections
            )
        )


def negativeTTL(authority):
    """
    How long a negative answer may be cached: the smaller of the TTL of the
    SOA record in its authority section and that record's MINIMUM field (RFC
    2308 section 5).

    @param authority: the authority section, L{dns.RRHeader}s.
    @return: the seconds, or L{None} when there is no SOA record: such an
        answer is not cached (RFC 2308 section 5).
    """
    ttls = [
        min(record.ttl, record.payload.minimum)
        for record in authority
        if record.type == dns.SOA
    ]
    return min(ttls, default=None)


class DNSCache(common.ResolverBase):
    """
    An L{twisted.internet.interfaces.IResolver} in front of another that
    keeps answers for their TTL.

      - A positive answer is kept for the smallest TTL of its answer
        section, at most L{maxTTL} seconds.
      - NXDOMAIN and NODATA are kept for L{negativeTTL} of the answer, at
        most L{maxNegativeTTL} seconds; without an SOA record, not at all
        (RFC 2308 section 5).
      - Failures (SERVFAIL, REFUSED, a timeout, ...) are not kept: the next
        lookup asks again.  Lookups of the same name, class and type made
        while a query is under way share it, which is what stops a storm of
        queries when the servers are slow or failing.
      - A TTL of 0 is not kept (RFC 1035 section 3.2.1).  The
        L{maxEntries} most recently used answers are kept.

    Names are compared without regard to case (RFC 4343).

    @ivar queries: how many queries were passed on to the resolver behind.
    """

    maxEntries = MAX_CACHE_ENTRIES
    maxTTL = MAX_TTL
    maxNegativeTTL = MAX_NEGATIVE_TTL

    def __init__(self, resolver, clock=None):
        """
        @param resolver: the L{twisted.internet.interfaces.IResolver} asked
            on a miss, usually from L{makeResolver}.
        @param clock: the L{twisted.internet.interfaces.IReactorTime} TTLs
            are counted on; the global reactor by default.
        """
        common.ResolverBase.__init__(self)
        if clock is None:
            from twisted.internet import reactor as clock
        self.resolver = resolver
        self.queries = 0
        self._clock = clock
        self._entries = collections.OrderedDict()
        self._inFlight = {}

    def __len__(self):
        return len(self._entries)

    def _lookup(self, name, cls, type, timeout):
        key = (name.lower(), cls, type)
        now = self._clock.seconds()
        entry = self._entries.get(key)
        if entry is not None:
            if now < entry.expires:
                self._entries.move_to_end(key)
                return entry.result(now)
            del self._entries[key]
        # Each caller gets a Deferred of its own: one cancelling its lookup
        # (a check past its deadline) leaves the query to the others.
        waiting = self._inFlight.get(key)
        first = waiting is None
        if first:
            waiting = self._inFlight[key] = []
        d = defer.Deferred(lambda d: waiting.remove(d))
        waiting.append(d)
        if first:
            self.queries += 1
            asking = self.resolver.query(dns.Query(name, type, cls), timeout)
            asking.addBoth(self._answered, key, now)
        return d

    def _answered(self, result, key, asked):
        """
        Keep C{result} if it may be kept, and give it to every caller that
        waits for it.
        """
        waiting = self._inFlight.pop(key)
        if isinstance(result, defer.Failure) and result.check(error.DNSNameError):
            ttl = negativeTTL(result.value.args[0].authority if result.value.args else [])
            self._keep(key, asked, ttl, self.maxNegativeTTL, None, result.value)
        elif not isinstance(result, defer.Failure):
            answers, authority, additional = result
            if answers:
                ttl = min(record.ttl for record in answers)
                self._keep(key, asked, ttl, self.maxTTL, result, None)
            else:
                self._keep(key, asked, negativeTTL(authority), self.maxNegativeTTL, result, None)
        for d in waiting:
            if isinstance(result, defer.Failure):
                d.errback(result)
            else:
                d.callback(tuple(list(section) for section in result))
        if isinstance(result, defer.Failure):
            # Every waiter has had it; none left means no one to report to.
            return None
        return result

    def _keep(self, key, asked, ttl, bound, sections, noSuchName):
        if ttl is None:
            return
        ttl = min(max(ttl, 0), bound)
        if ttl <= 0:
            return
        self._entries[key] = _CacheEntry(asked, asked + ttl, sections, noSuchName)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxEntries:
            self._entries.popitem(last=False)


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


def _addressText(record):
    """
    @return: the address of an A or AAAA record as text.
    """
    if record.TYPE == dns.A:
        return record.dottedQuad()
    return socket.inet_ntop(socket.AF_INET6, record.address)


class Resolver:
    """
    The DNS lookups of mail: names in any case, A- or U-labels; CNAMEs
    followed; NXDOMAIN and NODATA an empty answer; every other failure a
    L{TemporaryDNSFailure}.

    @ivar resolver: the L{twisted.internet.interfaces.IResolver} asked,
        a L{DNSCache} when the answers are to be cached.
    """

    def __init__(self, resolver):
        """
        @param resolver: the L{twisted.internet.interfaces.IResolver} to ask,
            usually a L{DNSCache} in front of L{makeResolver}'s.
        """
        self.resolver = resolver

    def lookupTXT(self, name):
        """
        Look up the TXT records of C{name}, for SPF (RFC 7208 section 4.4) and
        DKIM (RFC 6376 section 3.6.2.2).

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
        5.3, 5.4 and 5.7).

        @return: a L{defer.Deferred} firing with a list of the addresses as
            text, the IPv4 ones first; an empty list when the name does not
            exist or has neither record.  It fails with
            L{TemporaryDNSFailure} when either lookup fails (a partial answer
            could turn an SPF C{pass} into a C{fail}), or with
            L{PermanentDNSFailure} when C{name} is not a valid domain name.
        """
        return defer.ensureDeferred(self._lookupAddresses(name))

    async def _lookupAddresses(self, name):
        addresses, ttl, temporary = await self._addressRecords(_queryName(name))
        if temporary:
            raise TemporaryDNSFailure("%s: address lookup failed" % (name,))
        return addresses

    def lookupMX(self, name):
        """
        Look up the MX hosts of C{name}, for the SPF C{mx} mechanism (RFC
        7208 section 5.4).  No implicit MX.

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
        are followed, as classless delegation (RFC 2317) needs.

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

    def lookupHost(self, name):
        """
        The address of a server the configuration names by its host name (a
        gateway's Minger server): from the hosts file when it lists the
        name, as the system's resolver does, else from DNS.

        @param name: a host name, or an IP address (given back as it is).
        @return: a L{defer.Deferred} firing with one address as text, an
            IPv4 one if there is any.  It fails with L{PermanentDNSFailure}
            when the name has no address, else as L{lookupAddresses} does.
        """
        return defer.ensureDeferred(self._lookupHost(name))

    async def _lookupHost(self, name):
        try:
            return str(ipaddress.ip_address(name))
        except ValueError:
            pass
        listed = hosts.searchFileForAll(FilePath(HOSTS_FILE), name.encode("idna"))
        addresses = sorted(listed, key=lambda address: ":" in address)
        if not addresses:
            addresses = await self._lookupAddresses(name)
        if not addresses:
            raise PermanentDNSFailure("%s has no address" % (name,))
        return addresses[0]

    def lookupRecords(self, name, recordType):
        """
        Look up the records of one type of C{name} as they are published,
        for C{mdpy dns --check}.  CNAMEs are followed unless C{recordType}
        is C{dns.CNAME}.

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

    async def _addressRecords(self, hostname):
        """
        Look up the A and AAAA records of C{hostname} at once.

        @param hostname: the query name in A-labels.
        @return: C{(addresses, ttl, temporary)}: the IPv4 addresses, then
            the IPv6 ones, as text; the smallest TTL of the records behind
            them (L{None} without any); whether a lookup failed, so that
            C{addresses} may be incomplete.  This never fails.
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
        return addresses, min(ttls, default=None), temporary

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
