"""
Tests for L{mdpy.domainpop.recipients}.
"""

import pytest

from mdpy.domainpop.recipients import (
    DEFAULT_HEADERS,
    MAX_ADDRESSES,
    MAX_HEAD,
    Discovery,
    RoutingRules,
    discover,
    parseHead,
    receivedFor,
)
from mdpy.mail.addresslist import mailboxesIn


def message(*lines, body=b"body\r\n"):
    """
    @return: a message of header C{lines} (L{str} or L{bytes}) and C{body},
        lines ending in CRLF.
    """
    head = b"".join((line.encode("utf-8") if isinstance(line, str) else line) + b"\r\n" for line in lines)
    return head + b"\r\n" + body


def found(*lines, **rules):
    return discover(parseHead(message(*lines)), RoutingRules(**rules))


# --- parseHead --------------------------------------------------------------


def test_fieldsInOrderNamesLowercased():
    head = parseHead(message("From: a@x.test", "To: b@y.test", "Subject: hi"))
    assert head.fields == [("from", b"a@x.test"), ("to", b"b@y.test"), ("subject", b"hi")]
    assert not head.truncated


def test_sizeIsTheHeaderSectionWithItsEmptyLine():
    data = message("To: b@y.test", body=b"the body\r\n")
    head = parseHead(data)
    assert data[head.size :] == b"the body\r\n"


def test_lfLineEnds():
    data = b"To: a@x.test\nSubject: one\n two\n\nbody\n"
    head = parseHead(data)
    assert head.fields == [("to", b"a@x.test"), ("subject", b"one two")]
    assert data[head.size :] == b"body\n"


def test_foldedFieldIsUnfolded():
    head = parseHead(message("To: Alice <a@x.test>,", "\tBob", "   <b@x.test>", "Cc: c@x.test"))
    assert head.values("to") == ["Alice <a@x.test>, Bob <b@x.test>"]
    assert [a for a in found("To: Alice <a@x.test>,", "\tBob", "   <b@x.test>").addresses] == [
        "a@x.test",
        "b@x.test",
    ]


def test_lineWithoutColonIsSkipped():
    head = parseHead(message("To: a@x.test", "garbage line", "Cc: c@x.test"))
    assert head.fields == [("to", b"a@x.test"), ("cc", b"c@x.test")]


def test_noHeaderAtAll():
    head = parseHead(b"\r\nbody")
    assert head.fields == [] and head.size == 2


def test_headerWithoutBody():
    data = b"To: a@x.test\r\nSubject: x\r\n"
    head = parseHead(data)
    assert head.size == len(data) and not head.truncated
    assert head.count("subject") == 1


def test_encodedWordsDecodedInValues():
    head = parseHead(message("Subject: =?utf-8?q?J=C3=B6rg?= =?utf-8?b?w7w=?= x"))
    assert head.values("Subject") == ["Jörgü x"]


def test_eightBitHeaderReadAsUtf8():
    head = parseHead(message("Subject: Jörg".encode("utf-8"), b"X-Bad: a\xffb"))
    assert head.values("subject") == ["Jörg"]
    assert head.values("x-bad") == ["a\ufffdb"]


def test_valuesAndCountTopFirstAnyCase():
    head = parseHead(message("Received: one", "Subject: s", "RECEIVED: two"))
    assert head.values("Received") == ["one", "two"]
    assert head.count("received") == 2
    assert head.count("cc") == 0


def test_hugeHeaderTruncated():
    filler = ["X-Filler-%d: %s" % (i, "y" * 1000) for i in range(400)]
    data = message("To: a@x.test", *filler, "Cc: late@x.test")
    assert len(data) > MAX_HEAD
    head = parseHead(data)
    assert head.truncated and head.size == MAX_HEAD
    assert head.values("to") == ["a@x.test"]
    assert head.count("cc") == 0
    # No field is cut short: the last one read is whole.
    assert head.fields[-1][1] == b"y" * 1000
    assert found("To: a@x.test", *filler, "Cc: late@x.test").addresses == ["a@x.test"]


def test_headerEndingExactlyAtMaxHead():
    line = b"X-A: " + b"z" * (MAX_HEAD - 9) + b"\r\n"
    data = line + b"\r\n" + b"body"
    assert len(line) + 2 == MAX_HEAD
    head = parseHead(data)
    assert not head.truncated and head.size == MAX_HEAD


# --- receivedFor ------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (
            "from mail.ext.test (mail.ext.test [192.0.2.1]) by MX.ISP.TEST (Postfix) with ESMTPS id 4AB"
            " for <Bob@Example.test>; Mon, 1 Jan 2024 00:00:00 +0000",
            ("mx.isp.test", "Bob@Example.test"),
        ),
        (
            "from ext.test by mx.isp.test with esmtp (Exim 4.96) id 1r-000 for bob@example.test;"
            " Mon, 1 Jan 2024 00:00:00 +0000",
            ("mx.isp.test", "bob@example.test"),
        ),
        (
            "from a by inbound-smtp.us-east-1.amazonaws.com with SMTP id x\r\n for bob@example.test;\r\n"
            " Mon, 1 Jan 2024 00:00:00 +0000",
            ("inbound-smtp.us-east-1.amazonaws.com", "bob@example.test"),
        ),
        (
            "from a (for <fake@evil.test>) by mx.isp.test (comment (nested for <x@y.test>)) id 1;"
            " Mon, 1 Jan 2024 00:00:00 +0000",
            ("mx.isp.test", None),
        ),
        ("from a by mx.isp.test. with SMTP for <@r1.test,@r2.test:bob@example.test>; date", ("mx.isp.test", "bob@example.test")),
        ("from a by mx.isp.test id 1; Mon, 1 Jan 2024 for <late@example.test>", ("mx.isp.test", None)),
        ("(qmail 1234 invoked from network); 1 Jan 2024 00:00:00 -0000", (None, None)),
        ("from a by mx.isp.test for <bob@example.test>", ("mx.isp.test", "bob@example.test")),
        ('from a by mx.isp.test for <"a b"@example.test>; d', ("mx.isp.test", '"a b"@example.test')),
        ("from for.example by mx.isp.test for <bob@example.test>; d", ("mx.isp.test", "bob@example.test")),
    ],
)
def test_receivedFor(value, expected):
    assert receivedFor(value) == expected


def test_receivedForOnlyAfterBy():
    # A "for" in the from part (a HELO name) is not the recipient.
    assert receivedFor("from for bob@evil.test by mx.isp.test id 1; d") == ("mx.isp.test", None)


# --- discover: default fields -----------------------------------------------


def test_defaultHeaders():
    assert RoutingRules().parseHeaders == DEFAULT_HEADERS
    d = found(
        "From: f@ext.test",
        'To: "Alice" <alice@example.test>, bob@example.test',
        "Cc: Carol <carol@example.test>",
        "Subject: x",
        "X-Rcpt-To: dave@example.test",
    )
    assert d.addresses == ["alice@example.test", "bob@example.test", "carol@example.test", "dave@example.test"]
    assert d.sources == {
        "alice@example.test": "to",
        "bob@example.test": "to",
        "carol@example.test": "cc",
        "dave@example.test": "x-rcpt-to",
    }
    assert d.rejected == []
    assert "f@ext.test" not in d.addresses


def test_duplicatesAndCaseCollapse():
    d = found("To: Alice@Example.TEST, alice@example.test", "Cc: <ALICE@example.test>", "Delivered-To: alice@example.test")
    assert d.addresses == ["alice@example.test"]
    assert d.sources == {"alice@example.test": "to"}


def test_groupsGiveTheirMembersOrNothing():
    assert found("To: undisclosed-recipients:;").addresses == []
    assert found("To: team: a@example.test, b@example.test;").addresses == ["a@example.test", "b@example.test"]


def test_encodedDisplayNames():
    d = found("To: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jorg@example.test>", "Cc: =?utf-8?q?Smith=2C_John?= <john@example.test>")
    assert d.addresses == ["jorg@example.test", "john@example.test"]
    assert d.rejected == []


def test_encodedWordCannotMakeAnAddress():
    d = found("To: =?utf-8?q?Bob_=3Cceo=40example=2Etest=3E?= <bob@example.test>")
    assert d.addresses == ["bob@example.test"]


def test_eightBitAddresses():
    d = found("To: Jörg <jörg@example.test>".encode("utf-8"))
    assert d.addresses == ["jörg@example.test"]
    d = found(b"To: j\xf6rg@example.test")
    assert d.addresses == []
    assert d.rejected


def test_bareAddress():
    assert found("X-Rcpt-To: bob@example.test", parseHeaders=["X-RCPT-TO"]).addresses == ["bob@example.test"]


def test_explicitHeadersOnly():
    d = found(
        "To: alice@example.test",
        "X-Rcpt-To: bob@example.test",
        "Delivered-To: carol@example.test",
        parseHeaders=["X-Rcpt-To", "delivered-to"],
    )
    assert d.addresses == ["bob@example.test", "carol@example.test"]
    assert d.sources["carol@example.test"] == "delivered-to"


def test_customHeader():
    d = found("X-Envelope-Recipient: bob@example.test", parseHeaders=["X-Envelope-Recipient"])
    assert d.addresses == ["bob@example.test"]


# --- discover: injection and limits -------------------------------------------


def test_nulInValueRefusesTheField():
    d = found(b"To: a@b.test\x00evil@x.test", b"Cc: c@b.test")
    assert d.addresses == ["c@b.test"]
    assert d.rejected == ["a@b.test\\x00evil@x.test"]


def test_bareCarriageReturnRefusesTheField():
    d = found(b"To: a@b.test\rBcc: evil@x.test")
    assert d.addresses == []
    assert len(d.rejected) == 1 and "\r" not in d.rejected[0]


def test_foldingIsNotInjection():
    # CRLF and a space is folding: the continuation is part of the To field.
    d = found("To: <a@b.test>", " evil")
    assert d.addresses == ["a@b.test"]


def test_spacesWhereNotAllowed():
    d = found("To: bob@example.test evil@x.test")
    assert "evil@x.test" not in d.addresses
    d = found("To: <bob\u00a0x@example.test>, <ok@example.test>")
    assert d.addresses == ["ok@example.test"]
    assert d.rejected == ["bob\\xa0x@example.test"]


def test_quotedLocalPartWithSpaceIsValid():
    d = found('To: <"a b"@example.test>')
    assert d.addresses == ['"a b"@example.test']


def test_longLocalPartRejected():
    local = "x" * 600
    d = found("To: %s@example.test, ok@example.test" % (local,))
    assert d.addresses == ["ok@example.test"]
    assert len(d.rejected) == 1 and d.rejected[0].startswith("xxx") and len(d.rejected[0]) <= 200


def test_malformedAddressesRejected():
    d = found("To: a@@b.test, <x@-bad-.test>, good@example.test, plain words")
    assert d.addresses == ["good@example.test"]
    assert len(d.rejected) == 2


def test_mailboxesInKeepsRepeats():
    assert mailboxesIn("a@x.test, A@X.test") == (["a@x.test", "a@x.test"], [])


def test_atMostMaxAddresses():
    many = ", ".join("u%d@example.test" % i for i in range(MAX_ADDRESSES + 50))
    d = found("To: " + many, "Cc: late@example.test")
    assert len(d.addresses) == MAX_ADDRESSES
    assert d.addresses[-1] == "u%d@example.test" % (MAX_ADDRESSES - 1,)
    assert "late@example.test" not in d.addresses
    assert d.rejected == ["51 more addresses ignored (limit %d)" % (MAX_ADDRESSES,)]


# --- discover: Received -------------------------------------------------------


ISP_TOP = "from filter.isp.test by store.isp.test (LMTP) id 2; Mon, 1 Jan 2024 00:00:02 +0000"
ISP_MX = "from mail.ext.test by mx.isp.test with ESMTP id 1 for <bob@example.test>; Mon, 1 Jan 2024 00:00:01 +0000"
SENDER = "from pc by mail.ext.test with ESMTPSA id 0 for <list@ext.test>; Mon, 1 Jan 2024 00:00:00 +0000"
FORGED = "from x by mx.isp.test with ESMTP id 9 for <ceo@example.test>; Mon, 1 Jan 2024 00:00:00 +0000"


def received(*rules_, **rules):
    return found(
        "Received: " + ISP_TOP,
        "Received: " + ISP_MX,
        "Received: " + SENDER,
        "Received: " + FORGED,
        "To: list@ext.test",
        parseHeaders=["Received"],
        **rules,
    )


def test_receivedAllWhenNoTrustedHost():
    d = received()
    assert d.addresses == ["bob@example.test", "list@ext.test", "ceo@example.test"]
    assert d.sources["bob@example.test"] == "received"
    assert d.hops == 4


def test_receivedTrustedHostsStopAtTheFirstOtherHost():
    # The forged line names mx.isp.test, but mail.ext.test wrote above it.
    d = received(trustedReceivedHosts=["store.isp.test", "MX.ISP.TEST."])
    assert d.addresses == ["bob@example.test"]


def test_receivedTrustedSubdomains():
    assert received(trustedReceivedHosts=[".isp.test"]).addresses == ["bob@example.test"]
    # An exact name does not match its subdomains, nor ".isp.test" the name itself.
    assert received(trustedReceivedHosts=["isp.test"]).addresses == []
    d = found("Received: from a by isp.test for <a@example.test>; d", parseHeaders=["received"],
              trustedReceivedHosts=[".isp.test"])
    assert d.addresses == []


def test_receivedUntrustedTopEndsEverything():
    assert received(trustedReceivedHosts=["mx.isp.test"]).addresses == []


def test_receivedSkip():
    assert received(receivedSkip=2).addresses == ["list@ext.test", "ceo@example.test"]
    assert received(receivedSkip=1, trustedReceivedHosts=["mx.isp.test"]).addresses == ["bob@example.test"]


def test_receivedWithoutByDoesNotEndTheRun():
    d = found(
        "Received: (qmail 1 invoked by uid 89); 1 Jan 2024",
        "Received: " + ISP_MX,
        parseHeaders=["received"],
        trustedReceivedHosts=["mx.isp.test"],
    )
    assert d.addresses == ["bob@example.test"]


def test_receivedBadForAddressRejected():
    d = found("Received: from a by mx.isp.test for <bad\x01@example.test>; d", parseHeaders=["received"])
    assert d.addresses == [] and d.rejected == ["bad\\x01@example.test"]


def test_receivedAndHeadersTogether():
    d = found("X-Rcpt-To: a@example.test", "Received: " + ISP_MX, parseHeaders=["x-rcpt-to", "received"])
    assert d.addresses == ["a@example.test", "bob@example.test"]
    assert d.sources == {"a@example.test": "x-rcpt-to", "bob@example.test": "received"}


def test_receivedNotReadByDefault():
    assert found("Received: " + ISP_MX).addresses == []


# --- hops -------------------------------------------------------------------


def test_hopsAndLoop():
    lines = ["Received: from a%d by b%d.test id %d; d" % (i, i, i) for i in range(31)]
    d = found(*lines, "To: a@example.test")
    assert d.hops == 31 and d.loop
    assert d.addresses == ["a@example.test"]
    d = found(*lines[:30], "To: a@example.test")
    assert d.hops == 30 and not d.loop
    d = found(*lines[:6], maxHops=5)
    assert d.loop


def test_emptyDiscovery():
    d = discover(parseHead(b"Subject: x\r\n\r\n"), RoutingRules())
    assert isinstance(d, Discovery)
    assert (d.addresses, d.sources, d.hops, d.loop, d.rejected) == ([], {}, 0, False, [])
