"""
An authoritative DNS server on loopback for tests.

In a test, under the running reactor::

    server = TestDNSServer()
    server.setMX("example.test", [(10, "mx1.example.test")])
    server.setA("mx1.example.test", ["127.0.0.2"])
    host, port = server.start()
    self.addCleanup(server.stop)
    resolver = makeResolver(reactor, [server.nameserver])

As a separate process, for end-to-end tests::

    python tests/dnsserver.py --port 0 --zone zone.json

prints C{ready PORT} once it listens on UDP and TCP.  The zone file holds the
JSON form of L{TestDNSServer.zone} and is read again when it changes; replace
it whole (write a new file, then C{os.replace}) so that no query sees half of
it.

The zone maps a lowercase name in A-labels to its entry::

    {"example.test": {"MX": [[10, "mx1.example.test"]], "ttl": 300},
     "mx1.example.test": {"A": ["127.0.0.2"], "AAAA": ["::2"]},
     "alias.test": {"CNAME": "mx1.example.test"},
     "_imaps._tcp.example.test": {"SRV": [[0, 1, 993, "mx1.example.test"]]},
     "txt.test": {"TXT": ["v=spf1 -all", ["two ", "strings"]]},
     "2.0.0.127.in-addr.arpa": {"PTR": ["mx1.example.test"]},
     "nomail.test": {"MX": [[0, "."]]},
     "broken.test": {"fail": "servfail"},
     "neg.test": {"SOA": 300, "ttl": 600}}

A name missing from the zone, with no name below it, is NXDOMAIN (RCODE 3);
a name present without records of the asked type is NODATA.  Both carry in
their authority section the SOA record of the nearest enclosing name that
has C{"SOA"} (its MINIMUM field), if any, as RFC 2308 section 3 asks.  C{"fail"} makes
every query of that name get SERVFAIL (2), REFUSED (5) or, for
C{"timeout"}, no answer at all.
"""

import argparse
import ipaddress
import json
import os
import subprocess
import sys

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.names import common, dns, server

DEFAULT_TTL = 3600
HOST = "127.0.0.1"
FAILURES = {"servfail": dns.ESERVER, "refused": dns.EREFUSED, "timeout": None}
MAX_CNAME_CHAIN = 8
MAX_STRING = 255

_TYPES = {
    "A": dns.A,
    "AAAA": dns.AAAA,
    "MX": dns.MX,
    "TXT": dns.TXT,
    "PTR": dns.PTR,
    "CNAME": dns.CNAME,
    "SRV": dns.SRV,
}


def zoneKey(name):
    """
    The key of C{name} in a zone: lowercase A-labels without the final dot.

    @param name: L{str} or L{bytes}, in A- or U-labels.
    """
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    name = name[:-1] if name.endswith(".") else name
    if not name.isascii():
        import idna

        name = idna.encode(name, uts46=True).decode("ascii")
    return name.lower()


def _typeName(recordType):
    return dns.QUERY_TYPES.get(recordType) or dns.EXT_QUERIES.get(
        recordType, str(recordType)
    )


def _txtStrings(value):
    """
    The character strings of one TXT record (RFC 1035 section 3.3.14): a list
    is taken as they are, a single string is cut into pieces of 255 bytes.
    """
    if isinstance(value, list):
        return [part.encode("utf-8") for part in value]
    data = value.encode("utf-8")
    return [data[i : i + MAX_STRING] for i in range(0, len(data), MAX_STRING)] or [b""]


def _payloads(entry, typeName, ttl):
    """
    @return: the record payloads of one type in a zone entry.
    """
    values = entry.get(typeName)
    if values is None:
        return []
    if typeName == "A":
        return [dns.Record_A(address, ttl) for address in values]
    if typeName == "AAAA":
        return [dns.Record_AAAA(address, ttl) for address in values]
    if typeName == "MX":
        return [
            dns.Record_MX(preference, zoneKey(host) if host != "." else b"", ttl)
            for preference, host in values
        ]
    if typeName == "TXT":
        return [dns.Record_TXT(*_txtStrings(value), ttl=ttl) for value in values]
    if typeName == "PTR":
        return [dns.Record_PTR(zoneKey(host), ttl) for host in values]
    if typeName == "SRV":
        return [
            dns.Record_SRV(priority, weight, port, zoneKey(host) if host != "." else b"", ttl)
            for priority, weight, port, host in values
        ]
    return [dns.Record_CNAME(zoneKey(values), ttl)]


class NoSuchName(dns.AuthoritativeDomainError):
    """
    NXDOMAIN, with the authority section to answer it with.
    """

    def __init__(self, name, authority):
        dns.AuthoritativeDomainError.__init__(self, name)
        self.authority = authority


def soaAuthority(zone, key):
    """
    The authority section of a negative answer for C{key}: the SOA record of
    the nearest enclosing name with C{"SOA"} (RFC 2308 section 3), or none.
    """
    labels = key.split(".")
    for i in range(len(labels)):
        owner = ".".join(labels[i:])
        entry = zone.get(owner, {})
        if "SOA" in entry:
            ttl = entry.get("ttl", DEFAULT_TTL)
            soa = dns.Record_SOA(
                mname="ns." + owner, rname="hostmaster." + owner, minimum=entry["SOA"], ttl=ttl
            )
            return [dns.RRHeader(owner, dns.SOA, dns.IN, ttl, soa, auth=True)]
    return []


def answer(zone, name, recordType, chaseCNAME=True):
    """
    Answer a query from C{zone} as an authoritative server.

    @param chaseCNAME: whether to add the records an alias leads to when they
        are in the zone (RFC 1034 section 4.3.2 step 3.a), as most servers
        do; else the answer holds the CNAME only.
    @return: C{(answers, authority, additional)}.
    @raise NoSuchName: the name does not exist.
    """
    key = zoneKey(name)
    if key not in zone and not any(other.endswith("." + key) for other in zone):
        raise NoSuchName(key, soaAuthority(zone, key))
    answers = []
    for _ in range(MAX_CNAME_CHAIN):
        entry = zone.get(key)
        if entry is None:
            break
        ttl = entry.get("ttl", DEFAULT_TTL)
        types = list(_TYPES) if recordType == dns.ALL_RECORDS else [_typeName(recordType)]
        found = [
            dns.RRHeader(key, _TYPES[t], dns.IN, ttl, payload, auth=True)
            for t in types
            if t in _TYPES
            for payload in _payloads(entry, t, ttl)
        ]
        answers.extend(found)
        if found or "CNAME" not in entry or not chaseCNAME:
            if not found and "CNAME" in entry:
                answers.extend(
                    dns.RRHeader(key, dns.CNAME, dns.IN, ttl, payload, auth=True)
                    for payload in _payloads(entry, "CNAME", ttl)
                )
            break
        target = zoneKey(entry["CNAME"])
        answers.append(
            dns.RRHeader(
                key, dns.CNAME, dns.IN, ttl, dns.Record_CNAME(target, ttl), auth=True
            )
        )
        key = target
    if not answers:
        return [], soaAuthority(zone, zoneKey(name)), []
    return answers, [], []


class _ZoneAuthority(common.ResolverBase):
    """
    The records of a L{TestDNSServer}'s zone, as an
    L{twisted.internet.interfaces.IResolver} for L{server.DNSServerFactory}.
    """

    def __init__(self, dnsServer):
        common.ResolverBase.__init__(self)
        self._dnsServer = dnsServer

    def _lookup(self, name, cls, type, timeout=None):
        return defer.maybeDeferred(
            answer, self._dnsServer.currentZone(), name, type, self._dnsServer.chaseCNAME
        )


class _FailingDNSServerFactory(server.DNSServerFactory):
    """
    A L{server.DNSServerFactory} that records each query and fails those for
    names marked with C{"fail"}.
    """

    def __init__(self, dnsServer):
        server.DNSServerFactory.__init__(self, authorities=[_ZoneAuthority(dnsServer)])
        self._dnsServer = dnsServer

    def handleQuery(self, message, protocol, address):
        query = message.queries[0]
        key = zoneKey(query.name.name)
        self._dnsServer.recordQuery(key, _typeName(query.type))
        failure = self._dnsServer.currentZone().get(key, {}).get("fail")
        if failure is None:
            return server.DNSServerFactory.handleQuery(self, message, protocol, address)
        rCode = FAILURES[failure]
        if rCode is not None:
            response = self._responseFromMessage(message=message, rCode=rCode)
            self.sendReply(protocol, response, address)

    def gotResolverError(self, failure, protocol, message, address):
        authority = getattr(failure.value, "authority", None)
        if not authority:
            return server.DNSServerFactory.gotResolverError(self, failure, protocol, message, address)
        response = self._responseFromMessage(message=message, rCode=dns.ENAME, authority=authority)
        self.sendReply(protocol, response, address)


class TestDNSServer:
    """
    An authoritative DNS server on loopback, UDP and TCP on one port.

    @ivar zone: the records served, a L{dict} of names (see L{zoneKey}) to
        entries (see the module docstring); edit it directly or with the
        C{set} methods.  Changes show in the next answer.
    @ivar queries: C{(name, type)} of every query received, in order, for
        instance C{("example.test", "MX")}.
    @ivar chaseCNAME: whether answers add the records an alias leads to.
    @ivar zoneFile: the JSON file the zone is read from, or L{None}.
    @ivar queryLog: an open file each query is written to as a line
        C{NAME TYPE}, or L{None}.
    """

    __test__ = False

    def __init__(self, reactor=None, zoneFile=None, queryLog=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.zone = {}
        self.queries = []
        self.queryLog = queryLog
        self.chaseCNAME = True
        self.zoneFile = zoneFile
        self._zoneVersion = None
        self._ports = []
        self._factory = None
        self.host = HOST
        self.port = None

    @property
    def nameserver(self):
        """
        C{"127.0.0.1:PORT"}, for L{mdpy.delivery.mx.makeResolver}.
        """
        return "%s:%d" % (self.host, self.port)

    def currentZone(self):
        """
        @return: L{zone}, read again first from L{zoneFile} if that changed.
        """
        if self.zoneFile is not None:
            stat = os.stat(self.zoneFile)
            version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if version != self._zoneVersion:
                try:
                    with open(self.zoneFile, encoding="utf-8") as f:
                        loaded = json.load(f)
                except ValueError as e:
                    # Half written: keep the old zone, read it at the next query.
                    print("bad zone file: %s" % (e,), file=sys.stderr)
                    return self.zone
                self.zone = {zoneKey(name): entry for name, entry in loaded.items()}
                self._zoneVersion = version
        return self.zone

    def recordQuery(self, name, typeName):
        self.queries.append((name, typeName))
        if self.queryLog is not None:
            self.queryLog.write("%s %s\n" % (name, typeName))
            self.queryLog.flush()

    def _entry(self, name, ttl):
        entry = self.zone.setdefault(zoneKey(name), {})
        if ttl is not None:
            entry["ttl"] = ttl
        return entry

    def setMX(self, name, exchanges, ttl=None):
        """
        @param exchanges: C{(preference, hostname)} pairs; hostname C{"."} is
            the root.
        """
        self._entry(name, ttl)["MX"] = [[pref, host] for pref, host in exchanges]

    def setNullMX(self, name, ttl=None):
        """
        Publish the null MX of RFC 7505 section 3: one MX, preference 0, ".".
        """
        self.setMX(name, [(0, ".")], ttl)

    def setA(self, name, addresses, ttl=None):
        self._entry(name, ttl)["A"] = list(addresses)

    def setAAAA(self, name, addresses, ttl=None):
        self._entry(name, ttl)["AAAA"] = list(addresses)

    def setTXT(self, name, texts, ttl=None):
        """
        @param texts: one item per record: a L{str} (cut into strings of 255
            bytes) or a list of L{str}, the record's strings.
        """
        self._entry(name, ttl)["TXT"] = list(texts)

    def setSOA(self, name, minimum, ttl=None):
        """
        Make C{name} a zone apex: negative answers for it and the names below
        it carry its SOA record, with C{minimum} as its MINIMUM field (RFC
        2308 section 4).
        """
        self._entry(name, ttl)["SOA"] = minimum

    def setSRV(self, name, services, ttl=None):
        """
        @param services: C{(priority, weight, port, target)} tuples; target
            C{"."} is the root (RFC 2782: the service is not available).
        """
        self._entry(name, ttl)["SRV"] = [list(service) for service in services]

    def setPTR(self, address, names, ttl=None):
        """
        Publish the PTR records of an IP address, under C{in-addr.arpa} or
        C{ip6.arpa}.

        @param address: an IPv4 or IPv6 address, as text.
        @param names: the host names it points to.
        """
        reverse = ipaddress.ip_address(address).reverse_pointer
        self._entry(reverse, ttl)["PTR"] = list(names)

    def setCNAME(self, name, target, ttl=None):
        """
        Make C{name} an alias of C{target}, dropping its other records (RFC
        1034 section 3.6.2).
        """
        self.zone[zoneKey(name)] = {"CNAME": target}
        self._entry(name, ttl)

    def failWith(self, name, mode):
        """
        @param mode: C{"servfail"}, C{"refused"} or C{"timeout"} (no answer).
        """
        if mode not in FAILURES:
            raise ValueError("unknown failure %r" % (mode,))
        self._entry(name, None)["fail"] = mode

    def clear(self, name):
        """
        Remove C{name} and its records: it becomes NXDOMAIN.
        """
        self.zone.pop(zoneKey(name), None)

    def start(self, port=0, host=HOST):
        """
        Listen on UDP and TCP.

        @param port: the port, or 0 for a free one (the same for both).
        @return: C{(host, port)}.
        """
        factory = self._factory = _FailingDNSServerFactory(self)
        for _ in range(100):
            tcp = self.reactor.listenTCP(port, factory, interface=host)
            chosen = tcp.getHost().port
            try:
                udp = self.reactor.listenUDP(
                    chosen, dns.DNSDatagramProtocol(factory), interface=host
                )
            except CannotListenError:
                tcp.stopListening()
                if port:
                    raise
                continue
            self._ports = [udp, tcp]
            self.host, self.port = host, chosen
            return host, chosen
        raise CannotListenError(host, port, "no port free for both UDP and TCP")

    def stop(self):
        """
        Stop listening and close the TCP connections clients left open.

        @return: a L{defer.Deferred} that fires when both ports are closed.
        """
        ports, self._ports = self._ports, []
        if self._factory is not None:
            for protocol in list(self._factory.connections):
                protocol.transport.loseConnection()
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])


class DNSProcess:
    """
    This module run as a process of its own, serving a JSON zone file
    that L{set} replaces whole; for end-to-end tests, whose servers and
    commands are processes too.

    @ivar nameserver: C{"127.0.0.1:PORT"}, for C{[dns] nameservers}.
    """

    def __init__(self, root, zone):
        self.path = os.path.join(str(root), "zone.json")
        self.queryLog = os.path.join(str(root), "queries.log")
        self.zone = dict(zone)
        self._write()
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--port", "0", "--zone", self.path,
             "--query-log", self.queryLog],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        line = self.process.stdout.readline().decode()
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError("dnsserver.py: %r %s" % (line, self.process.stderr.read().decode()))
        self.nameserver = "127.0.0.1:%d" % (int(line.split()[1]),)

    def _write(self):
        new = self.path + ".new"
        with open(new, "w") as f:
            json.dump(self.zone, f)
        os.replace(new, self.path)

    def set(self, name, entry):
        self.zone[name] = entry
        self._write()

    def queries(self):
        """
        @return: C{(name, type)} of every query received so far, in order.
        """
        with open(self.queryLog, encoding="utf-8") as f:
            return [tuple(line.split()) for line in f]

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.process.stdout.close()
        self.process.stderr.close()


def main(argv=None):
    """
    Serve a JSON zone file until killed; print C{ready PORT} when listening.
    """
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 for a free port")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--zone", required=True, help="JSON zone file")
    parser.add_argument("--query-log", help="file to write each query to, as NAME TYPE")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    queryLog = None if args.query_log is None else open(args.query_log, "a", encoding="utf-8")
    dnsServer = TestDNSServer(reactor, zoneFile=args.zone, queryLog=queryLog)
    dnsServer.currentZone()
    host, port = dnsServer.start(args.port, args.host)
    print("ready %d" % (port,), flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
