"""
Tests of the inbound checks (L{mdpy.mailauth.authresults}): SPF and DKIM
results recorded as an C{Authentication-Results:} field, with in-process
fake lookups and over real DNS (L{MXResolver} asking a L{TestDNSServer});
and the removal of forged fields.
"""

import re

import pytest
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher

from mdpy.mailauth.authresults import InboundChecker, stripForgedResults
from mdpy.mailauth.dkim import DKIMKeys
from mdpy.delivery.mx import MXResolver, makeResolver
from mdpy.testing import TempDirTestCase
from tests.dnsserver import TestDNSServer
from tests.test_spf import FakeDNS

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"See you at noon.\r\n"
)


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


# -- SPF (the evaluator has its tests in test_spf) ----------------------------


def test_spfIdentity(checker, dns):
    """
    The identity checked is C{smtp.mailfrom}, C{smtp.helo} for the null
    sender (RFC 8601 section 2.7.2).
    """
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.0/24 -all"]
    dns.txt["mail.example.com"] = [b"v=spf1 ip4:192.0.2.10 -all"]
    assert spf(checker) == ("spf", "pass", {"smtp.mailfrom": "alice@example.com"})
    assert spf(checker, sender="@example.com") == ("spf", "pass", {"smtp.mailfrom": "example.com"})
    assert spf(checker, sender="") == ("spf", "pass", {"smtp.helo": "mail.example.com"})


def test_spfInvalidSender(checker, dns):
    assert spf(checker, sender="alice@[192.0.2.1]") == (
        "spf", "none", {"smtp.mailfrom": '"alice@[192.0.2.1]"'})
    assert spf(checker, client="not an address")[1] == "none"


def test_spfErrorReason(checker, dns):
    dns.txt["example.com"] = [b"v=spf1 -all", b"v=spf1 +all"]
    field = fired(checker.check("192.0.2.10", "mail.example.com", "alice@example.com", MESSAGE))
    assert b"spf=permerror (2 SPF records for example.com) smtp.mailfrom=" in field


def test_spfWithoutAddressLookup(dns, clock):
    checker = InboundChecker("mx.example.net", dns.lookupTXT, reactor=clock,
                             runInThread=runInThisThread)
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.10 a -all"]
    assert spf(checker)[1] == "pass"
    assert spf(checker, client="192.0.2.11")[1] == "temperror"


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


def test_dkimEd25519(checker, dns):
    """
    Ed25519 signatures (RFC 8463) verify, with PyNaCl.
    """
    import base64

    import dkim
    import nacl.signing

    key = nacl.signing.SigningKey(b"k" * 32)
    dns.txt["ed._domainkey.example.com"] = [
        b"v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(key.verify_key))]
    signature = dkim.sign(MESSAGE, b"ed", b"example.com", base64.b64encode(bytes(key)),
                          signature_algorithm=b"ed25519-sha256")
    assert [r[:2] for r in dkimResults(checker, signature + MESSAGE)] == [("dkim", "pass")]
    tampered = signature + MESSAGE.replace(b"\r\n\r\n", b"\r\n\r\nchanged ", 1)
    assert [r[:2] for r in dkimResults(checker, tampered)] == [("dkim", "fail")]


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
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock.advance(0.2)
    finally:
        globalLogPublisher.removeObserver(events.append)
    authservID, parsed = parseField(results[0])
    assert parsed == [
        ("spf", "temperror", {"smtp.mailfrom": "alice@example.com"}),
        ("dkim", "none", {}),
    ]
    assert b"spf=temperror (DNS lookup of A/AAAA slow.example.com timed out after 10s)" in results[0]
    assert clock.getDelayedCalls() == []
    assert [(e["log_level"].name, formatEvent(e)) for e in events] == [
        ("warn", "inbound check of mail from <alice@example.com> (client 192.0.2.10): DNS lookup"
                 " of A/AAAA slow.example.com timed out after 10s; SPF result temperror"),
    ]


def test_dkimTimeout(checker, signed, dns, clock):
    dns.txt["example.com"] = [b"v=spf1 ip4:192.0.2.10 -all"]
    dns.hanging.add("mdpy._domainkey.example.com")
    d = checker.check("192.0.2.10", "mail.example.com", "alice@example.com",
                      signed.sign(MESSAGE) + MESSAGE)
    results = []
    d.addBoth(results.append)
    clock.advance(5)
    authservID, parsed = parseField(results[0])
    assert [r[:2] for r in parsed] == [("spf", "pass"), ("dkim", "temperror")]
    assert b"(DNS lookup of TXT mdpy._domainkey.example.com timed out after 5s)" in results[0]


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


# -- Forged fields (RFC 8601 section 5) ----------------------------------------


FORGED_HEAD = (
    b"Authentication-Results: mx.example.net;\r\n"
    b"\tspf=pass smtp.mailfrom=alice@example.com;\r\n"
    b"\tdkim=pass header.d=example.com\r\n"
    b"Received: from mail.example.com\r\n"
    b"Authentication-Results: mx.example.org; spf=fail\r\n"
    b"authentication-results : (forged) MX.Example.NET. 1; spf=pass\r\n"
    b'Authentication-Results:\r\n "mx.example.net" (quoted);\r\n spf=pass\r\n'
    b"X-Authentication-Results: mx.example.net; spf=pass\r\n"
)
KEPT_HEAD = (
    b"Received: from mail.example.com\r\n"
    b"Authentication-Results: mx.example.org; spf=fail\r\n"
    b"X-Authentication-Results: mx.example.net; spf=pass\r\n"
)
FORGED_BODY = b"\r\nAuthentication-Results: mx.example.net; spf=pass\r\n"


def test_stripForgedResults():
    """
    Every field claiming this server's authserv-id goes, with its
    continuation lines, however its name and authserv-id are written; other
    fields and the body stay.
    """
    stripped = stripForgedResults(FORGED_HEAD + MESSAGE + FORGED_BODY, "mx.example.net")
    assert stripped == KEPT_HEAD + MESSAGE + FORGED_BODY


@pytest.mark.parametrize(
    "field",
    [
        b"Authentication-Results: mx.example.net.evil; spf=pass\r\n",
        b"Authentication-Results: mx.example.network; spf=pass\r\n",
        b"Authentication-Results: other.example; dkim=pass header.d=mx.example.net\r\n",
        b"Authentication-Results: (mx.example.net) other.example; spf=pass\r\n",
        b"Authentication-Results: (unclosed mx.example.net; spf=pass\r\n",
        b"Authentication-Results: \xff mx.example.net; spf=pass\r\n",
        b"Authentication-Results-Foo: mx.example.net; spf=pass\r\n",
    ],
)
def test_stripForgedResultsKeepsOthers(field):
    head = field + MESSAGE
    assert stripForgedResults(head, "mx.example.net") is head


def test_stripForgedResultsLineFeeds():
    head = FORGED_HEAD.replace(b"\r\n", b"\n") + b"\nbody\n"
    assert stripForgedResults(head, "mx.example.net") == KEPT_HEAD.replace(b"\r\n", b"\n") + (
        b"\nbody\n"
    )


def test_stripForgedResultsNoHeaderSection():
    head = FORGED_BODY
    assert stripForgedResults(head, "mx.example.net") is head


def test_stripForgedResultsHeadCut():
    """
    When the header section goes on past C{head}, the fields that end
    within it are looked at, and the last one, which may go on, is kept.
    """
    ours = b"Authentication-Results: mx.example.net;\r\n\tspf=pass\r\n"
    assert stripForgedResults(ours + ours, "mx.example.net") == ours
    assert stripForgedResults(ours + ours[:-9], "mx.example.net") == ours[:-9]
    assert stripForgedResults(ours + ours[:30], "mx.example.net") == ours[:30]
    assert stripForgedResults(ours + KEPT_HEAD, "mx.example.net") == KEPT_HEAD


# -- Over real DNS ---------------------------------------------------------------


class LiveDNSTests(TempDirTestCase):
    """
    L{InboundChecker} with the lookups of an L{MXResolver} asking a
    L{TestDNSServer} over loopback UDP.
    """

    def setUp(self):
        self.server = TestDNSServer(reactor)
        self.server.start()
        self.addCleanup(self.server.stop)

    def makeChecker(self, resolverTimeout=(2,)):
        resolver = MXResolver(
            makeResolver(reactor, [self.server.nameserver], timeout=resolverTimeout),
            clock=reactor,
        )
        return InboundChecker(
            "mx.example.net",
            resolver.lookupTXT,
            resolver.lookupAddresses,
            resolver.lookupMX,
            reactor=reactor,
            lookupPointer=resolver.lookupPointer,
        )

    async def check(self, client, sender="alice@example.com", message=MESSAGE, checker=None):
        """
        @return: the C{(method, result, properties)} of the field.
        """
        checker = checker or self.makeChecker()
        field = await checker.check(client, "mail.example.com", sender, message)
        authservID, results = parseField(field)
        self.assertEqual(authservID, "mx.example.net")
        return results

    async def spf(self, client, **kwargs):
        (result,) = [r for r in await self.check(client, **kwargs) if r[0] == "spf"]
        return result[1]

    async def test_spfPassByAMXAndInclude(self):
        self.server.setTXT(
            "example.com", ["v=spf1 a mx/24 include:_spf.provider.test -all", "other text"]
        )
        self.server.setA("example.com", ["192.0.2.1"])
        self.server.setMX("example.com", [(20, "mx2.example.com"), (10, "mx1.example.com")])
        self.server.setA("mx1.example.com", ["198.51.100.25"])
        self.server.setAAAA("mx2.example.com", ["2001:db8::25"])
        self.server.setTXT("_spf.provider.test", ["v=spf1 a:out.provider.test ~all"])
        self.server.setA("out.provider.test", ["203.0.113.7"])
        self.assertEqual(await self.spf("192.0.2.1"), "pass")
        self.assertEqual(await self.spf("198.51.100.99"), "pass")
        self.assertEqual(await self.spf("2001:db8::25"), "pass")
        self.assertEqual(await self.spf("203.0.113.7"), "pass")
        self.assertIn(("_spf.provider.test", "TXT"), self.server.queries)

    async def test_spfPassByPointer(self):
        self.server.setTXT("example.com", ["v=spf1 ptr -all"])
        self.server.setPTR("192.0.2.10", ["mail.example.com"])
        self.server.setA("mail.example.com", ["192.0.2.10"])
        self.assertEqual(await self.spf("192.0.2.10"), "pass")

    async def test_spfFail(self):
        self.server.setTXT("example.com", ["v=spf1 ip4:192.0.2.0/24 mx -all"])
        self.server.setNullMX("example.com")
        self.assertEqual(await self.spf("198.51.100.1"), "fail")
        self.assertEqual(await self.spf("192.0.2.200"), "pass")

    async def test_spfNone(self):
        self.server.setA("example.com", ["192.0.2.1"])
        self.assertEqual(await self.spf("192.0.2.1"), "none")
        self.assertEqual(await self.spf("192.0.2.1", sender="alice@missing.test"), "none")

    async def test_dkimPass(self):
        """
        A signature verifies with a 2048-bit key, whose record DNS serves as
        two strings.
        """
        keys = DKIMKeys(self.tempDir())
        record = keys.generate("example.com")
        self.assertGreater(len(record), 255)
        self.server.setTXT("mdpy._domainkey.example.com", [record])
        self.server.setTXT("example.com", ["v=spf1 ip4:192.0.2.10 -all"])
        message = keys.signerFor("example.com").sign(MESSAGE) + MESSAGE
        results = await self.check("192.0.2.10", message=message)
        self.assertEqual(
            results,
            [
                ("spf", "pass", {"smtp.mailfrom": "alice@example.com"}),
                ("dkim", "pass", {"header.d": "example.com", "header.s": "mdpy",
                                  "header.i": "@example.com"}),
            ],
        )
        results = await self.check("192.0.2.10", message=message.replace(b"noon", b"one"))
        self.assertEqual([r[:2] for r in results], [("spf", "pass"), ("dkim", "fail")])

    async def test_temperrorWhenDNSTimesOut(self):
        keys = DKIMKeys(self.tempDir())
        keys.generate("example.com", bits=1024)
        message = keys.signerFor("example.com").sign(MESSAGE) + MESSAGE
        self.server.failWith("example.com", "timeout")
        self.server.failWith("mdpy._domainkey.example.com", "timeout")
        checker = self.makeChecker(resolverTimeout=(0.2,))
        field = await checker.check("192.0.2.10", "mail.example.com", "alice@example.com",
                                    message)
        self.assertEqual(
            [r[:2] for r in parseField(field)[1]], [("spf", "temperror"), ("dkim", "temperror")]
        )
        self.assertIn(b"spf=temperror (DNS error for example.com:", field)

    async def test_spfTemperrorWhenMechanismTimesOut(self):
        self.server.setTXT("example.com", ["v=spf1 ip4:198.51.100.0/24 a:slow.example.com -all"])
        self.server.failWith("slow.example.com", "timeout")
        checker = self.makeChecker(resolverTimeout=(0.2,))
        self.assertEqual(await self.spf("198.51.100.1", checker=checker), "pass")
        self.assertEqual(await self.spf("192.0.2.10", checker=checker), "temperror")
