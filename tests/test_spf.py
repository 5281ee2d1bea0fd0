"""
Tests of the SPF evaluator (L{mdpy.mailauth.spf}, RFC 7208) with in-process
fake lookups.  The tests of L{mdpy.mailauth.authresults} run it over real
DNS.
"""

import pytest
from twisted.internet import defer

from mdpy.mailauth.spf import checkSPF
from mdpy.errors import PermanentFailure, TemporaryFailure


class FakeDNS:
    """
    Answers from dictionaries; names in C{broken} fail with
    L{TemporaryFailure}, names in C{missing} with L{PermanentFailure}, and
    names in C{hanging} never answer.

    @ivar pointers: the PTR records of IP addresses, for L{lookupPointer}.
    """

    def __init__(self):
        self.txt = {}
        self.addresses = {}
        self.mx = {}
        self.pointers = {}
        self.broken = set()
        self.missing = set()
        self.hanging = set()
        self.queries = []

    def _answer(self, table, name):
        name = name.lower().rstrip(".")
        self.queries.append(name)
        if name in self.broken:
            return defer.fail(TemporaryFailure("SERVFAIL for " + name))
        if name in self.missing:
            return defer.fail(PermanentFailure("NXDOMAIN for " + name))
        if name in self.hanging:
            return defer.Deferred()
        return defer.succeed(list(table.get(name, [])))

    def lookupTXT(self, name):
        return self._answer(self.txt, name)

    def lookupAddresses(self, name):
        return self._answer(self.addresses, name)

    def lookupMX(self, name):
        return self._answer(self.mx, name)

    def lookupPointer(self, address):
        return self._answer(self.pointers, address)


@pytest.fixture
def dns():
    return FakeDNS()


def spf(dns, client="192.0.2.10", helo="mail.example.com", sender="alice@example.com",
        pointers=False):
    """
    Run L{checkSPF}, which the fake lookups make finish at once.

    @param pointers: whether to give it C{dns.lookupPointer}.
    @return: the result.
    """
    d = defer.ensureDeferred(
        checkSPF(client, helo, sender, dns.lookupTXT, dns.lookupAddresses, dns.lookupMX,
                 dns.lookupPointer if pointers else None)
    )
    outcomes = []
    d.addBoth(outcomes.append)
    (outcome,) = outcomes
    result, reason = outcome
    assert (reason is not None) == (result in ("temperror", "permerror")), outcome
    return result


def test_pass(dns):
    dns.txt["example.com"] = [b"google-site-verification=x", b"v=spf1 ip4:192.0.2.0/24 -all"]
    assert spf(dns) == "pass"


def test_fail(dns):
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.0/24 -all"]
    assert spf(dns, client="198.51.100.1") == "fail"


def test_softfailAndNeutral(dns):
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.0/24 ~all"]
    assert spf(dns, client="198.51.100.1") == "softfail"
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.0/24 ?all"]
    assert spf(dns, client="198.51.100.1") == "neutral"
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.0/24"]
    assert spf(dns, client="198.51.100.1") == "neutral"


def test_none(dns):
    dns.txt["example.com"] = [b"v=spf10 -all", b"some other text"]
    assert spf(dns) == "none"
    dns.missing.add("example.com")
    assert spf(dns) == "none"


def test_includeChain(dns):
    dns.txt["example.com"] = [b"v=spf1 include:_spf.provider.test -all"]
    dns.txt["_spf.provider.test"] = [b"v=spf1 include:_netblocks.provider.test ~all"]
    dns.txt["_netblocks.provider.test"] = [b"v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::/32 -all"]
    assert spf(dns, client="203.0.113.5") == "pass"
    assert spf(dns, client="2001:db8::25") == "pass"
    # The included domain's ~all is no match: the outer -all decides.
    assert spf(dns, client="192.0.2.10") == "fail"


def test_includeWithoutRecord(dns):
    dns.txt["example.com"] = [b"v=spf1 include:nothing.example.org -all"]
    assert spf(dns) == "permerror"


def test_aAndMX(dns):
    dns.txt["example.com"] = [b"v=spf1 a mx/24 -all"]
    dns.addresses["example.com"] = ["198.51.100.7", "2001:db8::7"]
    dns.mx["example.com"] = ["mx1.example.com.", "mx2.example.com"]
    dns.addresses["mx1.example.com"] = ["203.0.113.1"]
    dns.addresses["mx2.example.com"] = ["192.0.2.1"]
    assert spf(dns, client="198.51.100.7") == "pass"
    assert spf(dns, client="2001:db8::7") == "pass"
    assert spf(dns, client="::ffff:198.51.100.7") == "pass"
    assert spf(dns, client="192.0.2.200") == "pass"  # mx2 within /24
    assert spf(dns, client="198.51.100.8") == "fail"


def test_redirectAndMacros(dns):
    dns.txt["example.com"] = [b"v=spf1 redirect=_spf.%{d}"]
    dns.txt["_spf.example.com"] = [b"v=spf1 exists:%{ir}.%{l1r-}.allow.%{d2} -all"]
    dns.addresses["10.2.0.192.alice.allow.example.com"] = ["127.0.0.2"]
    assert spf(dns, client="192.0.2.10") == "pass"
    assert spf(dns, client="192.0.2.11") == "fail"
    assert "11.2.0.192.alice.allow.example.com" in dns.queries


def test_uppercaseMacroIsEscaped(dns):
    """
    An uppercase macro is URL-escaped (RFC 7208 section 7.3).
    """
    dns.txt["example.com"] = [b"v=spf1 exists:%{L}.%{l}.users.example.com -all"]
    dns.addresses["a%2bb.a+b.users.example.com"] = ["127.0.0.2"]
    assert spf(dns, sender="a+b@example.com") == "pass"


def test_nullSenderUsesHelo(dns):
    dns.txt["mail.example.com"] = [b"v=spf1 ip4:192.0.2.10 -all"]
    assert spf(dns, sender="") == "pass"
    assert spf(dns, sender="", helo="[192.0.2.10]") == "none"


def test_noLocalPart(dns):
    dns.txt["example.com"] = [b"v=spf1 exists:%{l}.users.example.com -all"]
    dns.addresses["postmaster.users.example.com"] = ["127.0.0.2"]
    assert spf(dns, sender="@example.com") == "pass"


def test_temperror(dns):
    dns.txt["example.com"] = [b"v=spf1 include:_spf.provider.test -all"]
    dns.broken.add("_spf.provider.test")
    assert spf(dns) == "temperror"
    dns.broken.add("example.com")
    assert spf(dns) == "temperror"


def test_temperrorInMechanism(dns):
    dns.txt["example.com"] = [b"v=spf1 a:mail.example.com -all"]
    dns.broken.add("mail.example.com")
    assert spf(dns) == "temperror"


def test_tooManyLookups(dns):
    dns.txt["example.com"] = [b"v=spf1 " + b" ".join(b"a:h%d.example.com" % i for i in range(11))
                              + b" ip4:192.0.2.10 -all"]
    for i in range(11):
        dns.addresses["h%d.example.com" % i] = ["203.0.113.%d" % i]
    assert spf(dns) == "permerror"
    # Ten are allowed.
    dns.txt["example.com"] = [b"v=spf1 " + b" ".join(b"a:h%d.example.com" % i for i in range(10))
                              + b" ip4:192.0.2.10 -all"]
    assert spf(dns) == "pass"


def test_includeLoop(dns):
    dns.txt["example.com"] = [b"v=spf1 include:example.org -all"]
    dns.txt["example.org"] = [b"v=spf1 include:example.com -all"]
    assert spf(dns) == "permerror"


def test_voidLookups(dns):
    dns.txt["example.com"] = [b"v=spf1 a:nx1.example.com a:nx2.example.com ip4:192.0.2.10 -all"]
    assert spf(dns) == "pass"
    dns.txt["example.com"] = [
        b"v=spf1 a:nx1.example.com a:nx2.example.com a:nx3.example.com ip4:192.0.2.10 -all"
    ]
    assert spf(dns) == "permerror"


@pytest.mark.parametrize(
    "record",
    [
        b"v=spf1 ip4:192.0.2.10 -all moo",
        b"v=spf1 ip4:192.0.2.300 -all",
        b"v=spf1 ip4:192.0.2.10/33 -all",
        b"v=spf1 a:example -all",
        b"v=spf1 exists:%{x}.example.com -all",
        b"v=spf1 redirect=a.example.org redirect=b.example.org",
        b"v=spf1 ip4:192.0.2.10 \xef\xbb\xbfall",
    ],
)
def test_syntaxErrors(dns, record):
    """
    A syntax error anywhere is a permerror, even after a match (RFC 7208
    section 4.6).
    """
    dns.txt["example.com"] = [record]
    assert spf(dns) == "permerror"


def test_twoRecords(dns):
    dns.txt["example.com"] = [b"v=spf1 -all", b"V=SPF1 +all"]
    assert spf(dns) == "permerror"


def test_pointer(dns):
    """
    C{ptr} matches a validated name of the client (RFC 7208 section 5.5)
    when a PTR lookup is given, and never without one.
    """
    dns.pointers["192.0.2.10"] = ["mail.example.com.", "forged.example.com"]
    dns.txt["example.com"] = [b"v=spf1 ptr -all"]
    dns.addresses["mail.example.com"] = ["192.0.2.10"]
    dns.addresses["forged.example.com"] = ["203.0.113.1"]
    assert spf(dns, pointers=True) == "pass"
    dns.pointers["192.0.2.10"] = ["forged.example.com"]
    assert spf(dns, pointers=True) == "fail"
    dns.pointers["192.0.2.10"] = ["mail.example.com"]
    assert spf(dns) == "fail"


def test_pointerMacro(dns):
    """
    C{%{p}} is a validated name of the client, one in the domain when there
    is one (RFC 7208 section 7.3), else C{unknown}.
    """
    dns.pointers["192.0.2.10"] = ["other.example.org", "mail.example.com"]
    dns.addresses["other.example.org"] = ["192.0.2.10"]
    dns.addresses["mail.example.com"] = ["192.0.2.10"]
    dns.addresses["mail.example.com.hosts.example.com"] = ["127.0.0.2"]
    dns.txt["example.com"] = [b"v=spf1 exists:%{p}.hosts.%{d} -all"]
    assert spf(dns, pointers=True) == "pass"
    assert spf(dns) == "fail"
    assert "unknown.hosts.example.com" in dns.queries


def test_invalidSender(dns):
    assert spf(dns, sender="alice@[192.0.2.1]") == "none"
    assert spf(dns, client="not an address") == "none"
