"""
Tests of the inbound checks (L{mdpy.delivery.authresults}): SPF and DKIM
results recorded as an C{Authentication-Results:} field, with in-process
fake lookups.
"""

import re

import pytest
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from mdpy.delivery.authresults import InboundChecker
from mdpy.delivery.dkim import DKIMKeys
from mdpy.errors import PermanentFailure, TemporaryFailure

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"See you at noon.\r\n"
)


class FakeDNS:
    """
    Answers from dictionaries; names in C{broken} fail with
    L{TemporaryFailure}, names in C{missing} with L{PermanentFailure}, and
    names in C{hanging} never answer.
    """

    def __init__(self):
        self.txt = {}
        self.addresses = {}
        self.mx = {}
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


def runInThisThread(f, *args, **kwargs):
    return defer.maybeDeferred(f, *args, **kwargs)


@pytest.fixture
def dns():
    return FakeDNS()


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def checker(dns, clock):
    return InboundChecker(
        "mx.example.net",
        dns.lookupTXT,
        dns.lookupAddresses,
        dns.lookupMX,
        reactor=clock,
        runInThread=runInThisThread,
    )


def fired(d):
    """
    @return: the result C{d} has already fired with.
    """
    results = []
    d.addBoth(results.append)
    assert results, "the check has not finished"
    assert isinstance(results[0], bytes), results[0]
    return results[0]


def uncomment(text):
    """
    Remove RFC 5322 comments (nested, with quoted-pairs) outside quoted
    strings.
    """
    out, depth, i, quoted = [], 0, 0, False
    while i < len(text):
        c = text[i]
        if c == "\\" and (depth or quoted):
            if not depth:
                out.append(text[i : i + 2])
            i += 2
            continue
        if c == '"' and not depth:
            quoted = not quoted
        elif c == "(" and not quoted:
            depth += 1
        elif c == ")" and depth:
            depth -= 1
            i += 1
            continue
        if not depth:
            out.append(c)
        i += 1
    assert depth == 0 and not quoted, text
    return "".join(out)


def parseField(field):
    """
    Parse an C{Authentication-Results:} field (RFC 8601 section 2.2).

    @return: C{(authservID, [(method, result, {property: value})])}.
    """
    assert field.endswith(b"\r\n")
    lines = field[:-2].split(b"\r\n")
    assert all(line.startswith(b"\t") for line in lines[1:])
    assert all(len(line) < 998 for line in lines)
    text = field.decode("ascii")
    name, colon, value = text.partition(":")
    assert name == "Authentication-Results"
    value = re.sub(r"\r\n[ \t]", " ", value[:-2])
    quoted = r'"(?:[^"\\]|\\.)*"'
    tokens = re.findall(
        r'[^\s;"=]+=(?:%s|[^\s;"]*)|%s|;|[^\s;"]+' % (quoted, quoted), uncomment(value)
    )
    clauses, current = [], []
    for token in tokens:
        if token == ";":
            clauses.append(current)
            current = []
        else:
            current.append(token)
    clauses.append(current)
    (authservID,) = clauses[0]
    results = []
    for clause in clauses[1:]:
        method, result = clause[0].split("=")
        properties = dict(item.split("=", 1) for item in clause[1:])
        results.append((method, result, properties))
    return authservID, results


def check(checker, client="192.0.2.10", helo="mail.example.com", sender="alice@example.com",
          message=MESSAGE):
    return parseField(fired(checker.check(client, helo, sender, message)))


def spf(checker, **kwargs):
    authservID, results = check(checker, **kwargs)
    assert authservID == "mx.example.net"
    (found,) = [r for r in results if r[0] == "spf"]
    return found


# -- SPF ---------------------------------------------------------------------


def test_spfPass(checker, dns):
    dns.txt["example.com"] = [b"google-site-verification=x", b"v=spf1 ip4:192.0.2.0/24 -all"]
    assert spf(checker) == ("spf", "pass", {"smtp.mailfrom": "alice@example.com"})


def test_spfFail(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.0/24 -all"]
    assert spf(checker, client="198.51.100.1")[1] == "fail"


def test_spfSoftfailAndNeutral(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.0/24 ~all"]
    assert spf(checker, client="198.51.100.1")[1] == "softfail"
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.0/24 ?all"]
    assert spf(checker, client="198.51.100.1")[1] == "neutral"
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.0/24"]
    assert spf(checker, client="198.51.100.1")[1] == "neutral"


def test_spfNone(checker, dns):
    dns.txt["example.com"] = [b"v=spf10 -all", b"some other text"]
    assert spf(checker)[1] == "none"
    dns.missing.add("example.com")
    assert spf(checker)[1] == "none"


def test_spfIncludeChain(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 include:_spf.provider.test -all"]
    dns.txt["_spf.provider.test"] = [b"v=spf1 include:_netblocks.provider.test ~all"]
    dns.txt["_netblocks.provider.test"] = [b"v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::/32 -all"]
    assert spf(checker, client="203.0.113.5")[1] == "pass"
    assert spf(checker, client="2001:db8::25")[1] == "pass"
    # The included domain's ~all is no match: the outer -all decides.
    assert spf(checker, client="192.0.2.10")[1] == "fail"


def test_spfIncludeWithoutRecord(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 include:nothing.example.org -all"]
    result = spf(checker)
    assert result[1] == "permerror"


def test_spfAAndMX(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 a mx/24 -all"]
    dns.addresses["example.com"] = ["198.51.100.7", "2001:db8::7"]
    dns.mx["example.com"] = ["mx1.example.com.", "mx2.example.com"]
    dns.addresses["mx1.example.com"] = ["203.0.113.1"]
    dns.addresses["mx2.example.com"] = ["192.0.2.1"]
    assert spf(checker, client="198.51.100.7")[1] == "pass"
    assert spf(checker, client="2001:db8::7")[1] == "pass"
    assert spf(checker, client="::ffff:198.51.100.7")[1] == "pass"
    assert spf(checker, client="192.0.2.200")[1] == "pass"  # mx2 within /24
    assert spf(checker, client="198.51.100.8")[1] == "fail"


def test_spfRedirectAndMacros(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 redirect=_spf.%{d}"]
    dns.txt["_spf.example.com"] = [b"v=spf1 exists:%{ir}.%{l1r-}.allow.%{d2} -all"]
    dns.addresses["10.2.0.192.alice.allow.example.com"] = ["127.0.0.2"]
    assert spf(checker, client="192.0.2.10")[1] == "pass"
    assert spf(checker, client="192.0.2.11")[1] == "fail"
    assert "11.2.0.192.alice.allow.example.com" in dns.queries


def test_spfUppercaseMacroIsEscaped(checker, dns):
    """
    An uppercase macro is URL-escaped (RFC 7208 section 7.3).
    """
    dns.txt["example.com"] = [b"v=spf1 exists:%{L}.%{l}.users.example.com -all"]
    dns.addresses["a%2bb.a+b.users.example.com"] = ["127.0.0.2"]
    assert spf(checker, sender="a+b@example.com")[1] == "pass"


def test_spfNullSenderUsesHelo(checker, dns):
    dns.txt["mail.example.com"] = [b"v=spf1 ip4:192.0.2.10 -all"]
    assert spf(checker, sender="") == ("spf", "pass", {"smtp.helo": "mail.example.com"})
    assert spf(checker, sender="", helo="[192.0.2.10]")[1] == "none"


def test_spfNoLocalPart(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 exists:%{l}.users.example.com -all"]
    dns.addresses["postmaster.users.example.com"] = ["127.0.0.2"]
    assert spf(checker, sender="@example.com")[1] == "pass"


def test_spfTemperror(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 include:_spf.provider.test -all"]
    dns.broken.add("_spf.provider.test")
    assert spf(checker)[1] == "temperror"
    dns.broken.add("example.com")
    assert spf(checker)[1] == "temperror"


def test_spfTemperrorInMechanism(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 a:mail.example.com -all"]
    dns.broken.add("mail.example.com")
    assert spf(checker)[1] == "temperror"


def test_spfTooManyLookups(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 " + b" ".join(b"a:h%d.example.com" % i for i in range(11))
                              + b" ip4:192.0.2.10 -all"]
    for i in range(11):
        dns.addresses["h%d.example.com" % i] = ["203.0.113.%d" % i]
    assert spf(checker)[1] == "permerror"
    # Ten are allowed.
    dns.txt["example.com"] = [b"v=spf1 " + b" ".join(b"a:h%d.example.com" % i for i in range(10))
                              + b" ip4:192.0.2.10 -all"]
    assert spf(checker)[1] == "pass"


def test_spfIncludeLoop(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 include:example.org -all"]
    dns.txt["example.org"] = [b"v=spf1 include:example.com -all"]
    assert spf(checker)[1] == "permerror"


def test_spfVoidLookups(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 a:nx1.example.com a:nx2.example.com ip4:192.0.2.10 -all"]
    assert spf(checker)[1] == "pass"
    dns.txt["example.com"] = [
        b"v=spf1 a:nx1.example.com a:nx2.example.com a:nx3.example.com ip4:192.0.2.10 -all"
    ]
    assert spf(checker)[1] == "permerror"


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
def test_spfSyntaxErrors(checker, dns, record):
    """
    A syntax error anywhere is a permerror, even after a match (RFC 7208
    section 4.6).
    """
    dns.txt["example.com"] = [record]
    assert spf(checker)[1] == "permerror"


def test_spfTwoRecords(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 -all", b"V=SPF1 +all"]
    assert spf(checker)[1] == "permerror"


def test_spfWithoutAddressLookup(dns, clock):
    checker = InboundChecker("mx.example.net", dns.lookupTXT, reactor=clock,
                             runInThread=runInThisThread)
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.10 a -all"]
    assert spf(checker)[1] == "pass"
    assert spf(checker, client="192.0.2.11")[1] == "temperror"


def test_spfPointer(dns, clock):
    """
    C{ptr} matches a validated name of the client (RFC 7208 section 5.5)
    when a PTR lookup is given, and never without one.
    """
    pointers = {"192.0.2.10": ["mail.example.com.", "forged.example.com"]}

    def lookupPointer(name):
        return defer.succeed(pointers.get(name, []))

    dns.txt["example.com"] = [b"v=spf1 ptr -all"]
    dns.addresses["mail.example.com"] = ["192.0.2.10"]
    dns.addresses["forged.example.com"] = ["203.0.113.1"]
    checker = InboundChecker("mx.example.net", dns.lookupTXT, dns.lookupAddresses,
                             dns.lookupMX, reactor=clock, runInThread=runInThisThread,
                             lookupPointer=lookupPointer)
    assert spf(checker)[1] == "pass"
    pointers["192.0.2.10"] = ["forged.example.com"]
    assert spf(checker)[1] == "fail"
    checker = InboundChecker("mx.example.net", dns.lookupTXT, dns.lookupAddresses,
                             dns.lookupMX, reactor=clock, runInThread=runInThisThread)
    pointers["192.0.2.10"] = ["mail.example.com"]
    assert spf(checker)[1] == "fail"


def test_spfInvalidSender(checker, dns):
    assert spf(checker, sender="alice@[192.0.2.1]") == (
        "spf", "none", {"smtp.mailfrom": '"alice@[192.0.2.1]"'})
    assert spf(checker, client="not an address")[1] == "none"


# -- DKIM --------------------------------------------------------------------


@pytest.fixture
def signed(tmp_path, dns):
    """
    C{example.com}'s key, published in C{dns}; returns its signer.
    """
    keys = DKIMKeys(str(tmp_path / "dkim"))
    record = keys.generate("example.com", bits=1024)
    dns.txt["mdpy._domainkey.example.com"] = [record.encode("ascii")]
    return keys.signerFor("example.com")


def dkimResults(checker, message):
    return [r for r in check(checker, message=message)[1] if r[0] == "dkim"]


def test_dkimPass(checker, signed):
    message = signed.sign(MESSAGE) + MESSAGE
    assert dkimResults(checker, message) == [
        ("dkim", "pass", {"header.d": "example.com", "header.s": "mdpy",
                          "header.i": "@example.com"})
    ]


def test_dkimBodyAltered(checker, signed):
    message = signed.sign(MESSAGE) + MESSAGE.replace(b"noon", b"one")
    assert [r[1] for r in dkimResults(checker, message)] == ["fail"]


def test_dkimHeaderAltered(checker, signed):
    message = signed.sign(MESSAGE) + MESSAGE.replace(b"Lunch", b"Dinner")
    (result,) = dkimResults(checker, message)
    assert result[1:] == ("fail", {"header.d": "example.com", "header.s": "mdpy",
                                   "header.i": "@example.com"})


def test_dkimNone(checker, dns):
    assert dkimResults(checker, MESSAGE) == [("dkim", "none", {})]
    assert not any("_domainkey" in name for name in dns.queries)


def test_dkimTemperror(checker, signed, dns):
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.10 -all"]
    dns.broken.add("mdpy._domainkey.example.com")
    authservID, results = check(checker, message=signed.sign(MESSAGE) + MESSAGE)
    assert [r[:2] for r in results] == [("spf", "pass"), ("dkim", "temperror")]


def test_dkimNoKey(checker, signed, dns):
    del dns.txt["mdpy._domainkey.example.com"]
    message = signed.sign(MESSAGE) + MESSAGE
    assert [r[1] for r in dkimResults(checker, message)] == ["permerror"]
    dns.missing.add("mdpy._domainkey.example.com")
    assert [r[1] for r in dkimResults(checker, message)] == ["permerror"]


def test_dkimBadKeyRecord(checker, signed, dns):
    dns.txt["mdpy._domainkey.example.com"] = [b"v=DKIM1; k=rsa; p=bm90IGEga2V5"]
    message = signed.sign(MESSAGE) + MESSAGE
    assert [r[1] for r in dkimResults(checker, message)] == ["permerror"]


def test_dkimMalformedSignature(checker, signed):
    message = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com\r\n" + MESSAGE
    assert [r[1] for r in dkimResults(checker, message)] == ["neutral"]


def test_dkimSeveralSignatures(checker, signed, tmp_path, dns):
    """
    Each signature gets its own result.
    """
    other = DKIMKeys(str(tmp_path / "other"))
    other.generate("example.org", selector="s1", bits=1024)
    message = signed.sign(MESSAGE) + MESSAGE
    message = other.signerFor("example.org").sign(message) + message
    results = dkimResults(checker, message)
    assert [(r[1], r[2]["header.d"], r[2]["header.s"]) for r in results] == [
        ("permerror", "example.org", "s1"),
        ("pass", "example.com", "mdpy"),
    ]


def test_dkimTooLarge(checker, signed, dns):
    message = signed.sign(MESSAGE) + MESSAGE
    checker.maxDKIMSize = len(message) - 1
    field = fired(checker.check("192.0.2.10", "mail.example.com", "alice@example.com", message))
    assert b"dkim=none (message too large to verify)" in field
    assert not any("_domainkey" in name for name in dns.queries)


# -- The field and the checker -------------------------------------------------


def test_fieldFormat(checker, signed, dns):
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.10 -all"]
    field = fired(checker.check("192.0.2.10", "mail.example.com", "alice@example.com",
                                signed.sign(MESSAGE) + MESSAGE))
    assert field == (
        b"Authentication-Results: mx.example.net;\r\n"
        b"\tspf=pass smtp.mailfrom=alice@example.com;\r\n"
        b"\tdkim=pass header.d=example.com header.s=mdpy header.i=@example.com\r\n"
    )


def test_hostileValuesAreQuoted(checker, dns):
    """
    Text from the message and from DNS cannot break the field's syntax.
    """
    dns.txt["example.com"] = [b"v=spf1 foo(bar)\\baz -all"]
    message = b'DKIM-Signature: v=1; d=exa"mple.com; s=x;y\r\n' + MESSAGE
    field = fired(checker.check("192.0.2.10", "mail.example.com", '"a;b(c"@example.com', message))
    authservID, results = parseField(field)
    assert results == [
        ("spf", "permerror", {"smtp.mailfrom": '"\\"a;b(c\\"@example.com"'}),
        ("dkim", "neutral", {}),
    ]


def test_timeout(dns, clock):
    checker = InboundChecker("mx.example.net", dns.lookupTXT, dns.lookupAddresses,
                             dns.lookupMX, reactor=clock, runInThread=runInThisThread,
                             timeout=10)
    dns.txt["example.com"] = [b"v=spf1 a:slow.example.com -all"]
    dns.hanging.add("slow.example.com")
    d = checker.check("192.0.2.10", "mail.example.com", "alice@example.com", MESSAGE)
    results = []
    d.addBoth(results.append)
    clock.advance(9.9)
    assert results == []
    clock.advance(0.2)
    authservID, parsed = parseField(results[0])
    assert parsed == [
        ("spf", "temperror", {"smtp.mailfrom": "alice@example.com"}),
        ("dkim", "none", {}),
    ]
    assert clock.getDelayedCalls() == []


def test_dkimTimeout(checker, signed, dns, clock):
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.10 -all"]
    dns.hanging.add("mdpy._domainkey.example.com")
    d = checker.check("192.0.2.10", "mail.example.com", "alice@example.com",
                      signed.sign(MESSAGE) + MESSAGE)
    results = []
    d.addBoth(results.append)
    clock.advance(10)
    authservID, parsed = parseField(results[0])
    assert [r[:2] for r in parsed] == [("spf", "pass"), ("dkim", "temperror")]


def test_internalErrorIsLogged(dns, clock, signed):
    """
    A bug in a check gives temperror and a log event, never a failed
    L{Deferred}.
    """
    def brokenThread(f, *args):
        return defer.fail(ZeroDivisionError("bug"))

    checker = InboundChecker("mx.example.net", dns.lookupTXT, dns.lookupAddresses,
                             dns.lookupMX, reactor=clock, runInThread=brokenThread)
    dns.txt["example.com"] = [b"v=spf1 a -all"]
    dns.addresses["example.com"] = ["not an address"]
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        field = fired(checker.check("192.0.2.10", "mail.example.com", "alice@example.com",
                                    signed.sign(MESSAGE) + MESSAGE))
    finally:
        globalLogPublisher.removeObserver(events.append)
    authservID, parsed = parseField(field)
    assert parsed == [
        ("spf", "temperror", {"smtp.mailfrom": "alice@example.com"}),
        ("dkim", "temperror", {}),
    ]
    failures = [e["log_failure"].value for e in events if "log_failure" in e]
    assert {type(f) for f in failures} == {ValueError, ZeroDivisionError}
