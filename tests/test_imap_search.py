"""
Tests of L{mdpy.imap.search}.
"""

import base64
import time

import pytest

from mdpy.errors import NotFound
from mdpy.imap import search
from mdpy.imap.parser import Atom, ParseError, tokenize
from mdpy.imap.search import (
    BadCharset,
    formatSearchResponse,
    parseCriteria,
    parseSearchCommand,
    textOf,
)


def localTime(year, month, day, hour=0, minute=0, second=0):
    """Seconds since the epoch of a wall-clock time in the local zone."""
    return time.mktime((year, month, day, hour, minute, second, 0, 0, -1))


NOON = localTime(2024, 3, 10, 12)


class FakeMessage:
    def __init__(self, uid, data=b"Subject: x\r\n\r\nbody\r\n", flags=(), internalDate=NOON, modSeq=1, size=None):
        self.uid = uid
        self.data = data
        self.flags = frozenset(flags)
        self.internalDate = internalDate
        self.modSeq = modSeq
        self.size = len(data) if size is None else size


class FakeContext:
    """The session's view: messages in sequence order."""

    def __init__(self, messages, recent=(), now=NOON, expunged=()):
        self.messages = list(messages)
        self.recent = set(recent)
        self.expunged = set(expunged)
        self.now = now
        self.count = len(self.messages)
        self.largestUid = self.messages[-1].uid if self.messages else 0
        self.reads = []

    def sequence(self, message):
        return self.messages.index(message) + 1

    def isRecent(self, message):
        return message.uid in self.recent

    def content(self, message):
        self.reads.append(message.uid)
        if message.uid in self.expunged:
            raise NotFound(message.uid)
        return message.data


def parse(line, *literals):
    """Parse the arguments of SEARCH as they arrive: a line and literals."""
    segments = []
    parts = line.split("{}")
    assert len(parts) == len(literals) + 1
    for part, literal in zip(parts, literals):
        segments += [("%s{%d}" % (part, len(literal))).encode("utf-8"), literal]
    segments.append(parts[-1].encode("utf-8"))
    return parseSearchCommand(tokenize(segments))


def found(line, messages, *literals, **kw):
    """@return: the UIDs of C{messages} matching SEARCH C{line}."""
    ctx = FakeContext(messages, **kw)
    criteria = parse(line, *literals).criteria
    return [m.uid for m in messages if criteria.match(m, ctx)]


def mail(*headers, body=b"body\r\n"):
    return b"".join(h.encode("utf-8") + b"\r\n" for h in headers) + b"\r\n" + body


# --- flags and state -----------------------------------------------------------


@pytest.mark.parametrize(
    "key, flag",
    [("ANSWERED", "\\Answered"), ("DELETED", "\\Deleted"), ("DRAFT", "\\Draft"), ("FLAGGED", "\\Flagged"), ("SEEN", "\\Seen")],
)
def test_flagKeys(key, flag):
    other = "\\Seen" if flag == "\\Draft" else "\\Draft"
    messages = [FakeMessage(1, flags=[flag, "$Junk"]), FakeMessage(2, flags=[other]), FakeMessage(3)]
    assert found(key, messages) == [1]
    assert found("UN" + key, messages) == [2, 3]
    assert found(key.lower(), messages) == [1]


def test_allRecentNewOld():
    messages = [FakeMessage(1), FakeMessage(2, flags=["\\Seen"]), FakeMessage(3), FakeMessage(4, flags=["\\Seen"])]
    assert found("ALL", messages, recent={3, 4}) == [1, 2, 3, 4]
    assert found("RECENT", messages, recent={3, 4}) == [3, 4]
    assert found("NEW", messages, recent={3, 4}) == [3]
    assert found("OLD", messages, recent={3, 4}) == [1, 2]
    assert found("New", messages, recent=()) == []


def test_keyword():
    messages = [FakeMessage(1, flags=["$Forwarded"]), FakeMessage(2, flags=["Work", "\\Seen"]), FakeMessage(3)]
    assert found("KEYWORD $Forwarded", messages) == [1]
    assert found("KEYWORD $forwarded", messages) == [1]
    assert found("KEYWORD WORK", messages) == [2]
    assert found("KEYWORD Seen", messages) == []
    assert found("UNKEYWORD work", messages) == [1, 3]
    assert found('KEYWORD "Work"', messages) == [2]


@pytest.mark.parametrize("line", ["KEYWORD \\Seen", "KEYWORD", "KEYWORD (a)", 'KEYWORD "a b"', 'KEYWORD ""', "UNKEYWORD \\Flagged"])
def test_badKeyword(line):
    with pytest.raises(ParseError):
        parse(line)


def test_largerSmaller():
    messages = [FakeMessage(1, size=99), FakeMessage(2, size=100), FakeMessage(3, size=101)]
    assert found("LARGER 100", messages) == [3]
    assert found("SMALLER 100", messages) == [1]
    assert found("NOT LARGER 100 NOT SMALLER 100", messages) == [2]
    assert found("LARGER 0", messages) == [1, 2, 3]


# --- headers -------------------------------------------------------------------


def test_addressHeaders():
    data = mail(
        "From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <jm@example.org>",
        "To: Alice <alice@example.com>",
        "To: bob@example.net",
        "Cc: carol@Example.ORG",
        "Bcc: dave@example.com",
        "Subject: hi",
    )
    messages = [FakeMessage(1, data), FakeMessage(2, mail("From: other@example.com", "Subject: hi"))]
    assert found("FROM jürgen", messages) == [1]
    assert found('FROM "MÜLLER <JM@"', messages) == [1]
    assert found("FROM example.com", messages) == [2]
    assert found("TO alice", messages) == [1]
    assert found("TO bob@example.net", messages) == [1]
    assert found("CC carol@example.org", messages) == [1]
    assert found("BCC dave", messages) == [1]
    assert found("BCC carol", messages) == []
    assert found('TO ""', messages) == [1]


def test_subjectEncodedWords():
    messages = [
        FakeMessage(1, mail("Subject: =?ISO-8859-1?Q?Caf=E9_?= =?UTF-8?B?w6AgbGEgY3LDqG1l?=")),
        FakeMessage(2, mail("Subject: Plain cafe")),
        FakeMessage(3, mail("X-Other: café")),
    ]
    assert found("SUBJECT café", messages) == [1]
    assert found("SUBJECT CAFÉ", messages) == [1]
    assert found('SUBJECT "café à la crème"', messages) == [1]
    assert found("SUBJECT cafe", messages) == [2]
    assert found("SUBJECT =?ISO", messages) == []


def test_foldedSubject():
    messages = [FakeMessage(1, b"Subject: a long\r\n\tfolded subject\r\n\r\nx")]
    assert found('SUBJECT "long folded"', messages) == [1]


def test_header():
    messages = [
        FakeMessage(1, mail("X-Spam-Flag: YES", "List-Id: <dev.example.org>")),
        FakeMessage(2, mail("x-spam-flag: no")),
        FakeMessage(3, mail("Subject: X-Spam-Flag: yes")),
    ]
    assert found("HEADER X-Spam-Flag yes", messages) == [1]
    assert found('HEADER "x-spam-flag" ""', messages) == [1, 2]
    assert found('HEADER List-Id ""', messages) == [1]
    assert found('HEADER Received ""', messages) == []
    assert found("HEADER list-id dev.example", messages) == [1]
    with pytest.raises(ParseError):
        parse('HEADER "" x')
    with pytest.raises(ParseError):
        parse("HEADER Subject")


def test_headerNotInBody():
    messages = [FakeMessage(1, mail("Subject: a", body=b"Subject: b\r\n"))]
    assert found("SUBJECT b", messages) == []
    assert found("BODY b", messages) == [1]


# --- body and text --------------------------------------------------------------


def test_body():
    messages = [
        FakeMessage(1, mail("Subject: needle")),
        FakeMessage(2, mail("Subject: x", body=b"a NEEDLE here\r\n")),
    ]
    assert found("BODY needle", messages) == [2]
    assert found("TEXT needle", messages) == [1, 2]
    assert found("TEXT subject:", messages) == [1, 2]
    assert found("BODY subject", messages) == []
    assert found('BODY ""', messages) == [1, 2]


def test_bodyTransferEncodings():
    encoded = base64.encodebytes("Grüße aus Köln".encode("utf-8"))
    messages = [
        FakeMessage(1, mail("Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64", body=encoded)),
        FakeMessage(2, mail("Content-Type: text/plain; charset=iso-8859-1", "Content-Transfer-Encoding: quoted-printable", body=b"Gr=FC=DFe aus K=\r\n=F6ln\r\n")),
        FakeMessage(3, mail("Content-Type: text/plain; charset=iso-8859-1", body=b"Gr\xfc\xdfe aus K\xf6ln\r\n")),
        FakeMessage(4, mail("Content-Type: image/png", "Content-Transfer-Encoding: base64", body=encoded)),
        FakeMessage(5, mail(body="Grüße aus Köln".encode("utf-8"))),
    ]
    assert found("CHARSET UTF-8 BODY {}", messages, "GRÜßE AUS KÖLN".encode("utf-8")) == [1, 2, 3, 5]
    # Case folding: sharp s is "ss".
    assert found("CHARSET UTF-8 BODY {}", messages, "GRÜSSE".encode("utf-8")) == [1, 2, 3, 5]
    assert found("BODY %s" % encoded[:8].decode("ascii"), messages) == []
    assert textOf(messages[0].data).strip() == "Grüße aus Köln"
    assert textOf(messages[3].data) == ""


def test_bodyBrokenInput():
    messages = [
        FakeMessage(1, mail("Content-Transfer-Encoding: base64", body=b"!!!not base64 at all===\r\n")),
        FakeMessage(2, mail("Content-Type: text/plain; charset=x-no-such-charset", body=b"caf\xc3\xa9")),
        FakeMessage(3, b"Subject: no body"),
    ]
    assert found("CHARSET UTF-8 BODY {}", messages, "café".encode("utf-8")) == [2]
    assert found('TEXT "no body"', messages) == [3]
    assert found('BODY "no body"', messages) == []


def test_bodyMultipart():
    data = mail(
        "Content-Type: multipart/mixed; boundary=XX",
        body=(
            b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes("naïve text".encode("utf-8"))
            + b"--XX\r\nContent-Type: application/octet-stream\r\n\r\nsecret binary\r\n"
            + b"--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner subject\r\n\r\ninner body\r\n"
            + b"--XX--\r\n"
        ),
    )
    messages = [FakeMessage(1, data)]
    assert found("CHARSET UTF-8 BODY {}", messages, "NAÏVE".encode("utf-8")) == [1]
    assert found("BODY secret", messages) == []
    assert found('BODY "inner subject"', messages) == [1]
    assert found('BODY "inner body"', messages) == [1]


class FakePart:
    """What L{textOf} reads of an L{mdpy.mail.mime} part."""

    def __init__(self, data, header, contentType, params=(), children=()):
        self.start = data.index(header)
        self.bodyStart = self.start + len(header) + 2
        self.end = data.find(b"\r\n--XX", self.bodyStart) % (len(data) + 1)
        self.contentType = contentType
        self.params = list(params)
        self.children = list(children)


INNER = b"Subject: attached\r\n\r\nattached body\r\n"
TEXT_HEADER = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"
BINARY_HEADER = b"Content-Type: application/octet-stream\r\n"
ATTACHED_HEADER = b"Content-Type: message/rfc822\r\n"
MULTIPART = (
    b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
    + b"--XX\r\n" + TEXT_HEADER + b"\r\n" + base64.encodebytes("naïve text".encode("utf-8"))
    + b"--XX\r\n" + BINARY_HEADER + b"\r\nsecret binary"
    + b"\r\n--XX\r\n" + ATTACHED_HEADER + b"\r\n" + INNER
    + b"--XX--\r\n"
)


def fakeParseMessage(attachedAsChild):
    """
    A stand-in for L{mdpy.mail.mime.parseMessage} knowing two messages: the
    attached message is a child of its part, or left to be read apart.
    """

    def parseMessage(data):
        if data.startswith(b"Subject: attached"):
            return FakePart(data, b"Subject: attached\r\n", ("text", "plain"))
        inner = [FakePart(MULTIPART, b"Subject: attached\r\n", ("text", "plain"))] if attachedAsChild else []
        return FakePart(
            data,
            b"Content-Type: multipart/mixed; boundary=XX\r\n",
            ("multipart", "mixed"),
            children=[
                FakePart(data, TEXT_HEADER, ("text", "plain"), [("CHARSET", "utf-8")]),
                FakePart(data, BINARY_HEADER, ("application", "octet-stream")),
                FakePart(data, ATTACHED_HEADER, ("message", "rfc822"), children=inner),
            ],
        )

    return parseMessage


@pytest.mark.parametrize("attachedAsChild", [True, False])
def test_textOfParts(monkeypatch, attachedAsChild):
    """
    With L{mdpy.mail.mime}, text parts are decoded, other parts left out,
    and attached messages searched with their header.
    """
    monkeypatch.setattr(search, "parseMessage", fakeParseMessage(attachedAsChild))
    text = textOf(MULTIPART)
    assert "naïve text" in text
    assert "secret" not in text
    assert "Subject: attached" in text
    assert "attached body" in text
    assert text.index("naïve") < text.index("attached body")
    messages = [FakeMessage(1, MULTIPART)]
    assert found("CHARSET UTF-8 BODY {}", messages, "NAÏVE".encode("utf-8")) == [1]
    assert found("BODY secret", messages) == []
    assert found("TEXT multipart/mixed", messages) == [1]


# --- dates ---------------------------------------------------------------------------


def test_internalDates():
    messages = [
        FakeMessage(1, internalDate=localTime(2024, 3, 9, 23, 59, 59)),
        FakeMessage(2, internalDate=localTime(2024, 3, 10, 0, 0, 0)),
        FakeMessage(3, internalDate=localTime(2024, 3, 10, 23, 59, 59)),
        FakeMessage(4, internalDate=localTime(2024, 3, 11, 0, 0, 0)),
    ]
    assert found("BEFORE 10-Mar-2024", messages) == [1]
    assert found("ON 10-mar-2024", messages) == [2, 3]
    assert found('SINCE "10-MAR-2024"', messages) == [2, 3, 4]
    assert found("SINCE 11-Mar-2024", messages) == [4]
    assert found("BEFORE 1-Jan-2000", messages) == []


def test_sentDates():
    messages = [
        # Late in its own zone, already the 11th in UTC: still the 10th.
        FakeMessage(1, mail("Date: Sun, 10 Mar 2024 23:30:00 -0800"), internalDate=localTime(2024, 3, 12)),
        FakeMessage(2, mail("Date: Mon, 11 Mar 2024 00:00:01 +1400"), internalDate=localTime(2024, 3, 1)),
        # No Date, or one that cannot be read: the internal date counts.
        FakeMessage(3, mail("Subject: undated"), internalDate=localTime(2024, 3, 9, 23, 59)),
        FakeMessage(4, mail("Date: garbage"), internalDate=localTime(2024, 3, 10, 0, 1)),
    ]
    assert found("SENTON 10-Mar-2024", messages) == [1, 4]
    assert found("SENTBEFORE 10-Mar-2024", messages) == [3]
    assert found("SENTSINCE 11-Mar-2024", messages) == [2]
    assert found("SENTSINCE 10-Mar-2024", messages) == [1, 2, 4]


@pytest.mark.parametrize(
    "line",
    ["BEFORE", "ON 2024-03-10", "SINCE 10-Foo-2024", "SENTON 32-Mar-2024", "SENTBEFORE (10-Mar-2024)", "ON 10-Mar-24"],
)
def test_badDates(line):
    with pytest.raises(ParseError):
        parse(line)


def test_youngerOlder():
    now = localTime(2024, 3, 10, 12)
    messages = [FakeMessage(1, internalDate=now - 3600), FakeMessage(2, internalDate=now - 60), FakeMessage(3, internalDate=now - 59)]
    assert found("YOUNGER 60", messages, now=now) == [2, 3]
    assert found("OLDER 60", messages, now=now) == [1, 2]
    assert found("OLDER 7200", messages, now=now) == []
    with pytest.raises(ParseError):
        parse("YOUNGER 0")


# --- sequence sets -----------------------------------------------------------------------


def test_sequenceSets():
    messages = [FakeMessage(uid) for uid in (3, 7, 9, 20, 21)]
    assert found("1", messages) == [3]
    assert found("2:4", messages) == [7, 9, 20]
    assert found("*", messages) == [21]
    assert found("4:*", messages) == [20, 21]
    assert found("*:4", messages) == [20, 21]
    assert found("1,3,5:6", messages) == [3, 9, 21]
    assert found("6:100", messages) == []
    assert found("1:4294967295", messages) == [3, 7, 9, 20, 21]


def test_uidSets():
    messages = [FakeMessage(uid) for uid in (3, 7, 9, 20, 21)]
    assert found("UID 7", messages) == [7]
    assert found("UID 1:9", messages) == [3, 7, 9]
    assert found("UID *", messages) == [21]
    assert found("UID 9999:*", messages) == [21]
    assert found("UID 8,20:21,2:3", messages) == [3, 20, 21]
    assert found("uid 10:19", messages) == []


@pytest.mark.parametrize("line", ["UID", "UID 0", "UID 1:x", "UID $1", "0", "1:", "UID 4294967296", 'UID "1"'])
def test_badSets(line):
    with pytest.raises(ParseError):
        parse(line)


# --- combinations ---------------------------------------------------------------------


def test_orNotAnd():
    messages = [FakeMessage(1, flags=["\\Seen"]), FakeMessage(2, flags=["\\Flagged"]), FakeMessage(3, flags=["\\Seen", "\\Flagged"]), FakeMessage(4)]
    assert found("SEEN FLAGGED", messages) == [3]
    assert found("OR SEEN FLAGGED", messages) == [1, 2, 3]
    assert found("NOT SEEN", messages) == [2, 4]
    assert found("NOT NOT SEEN", messages) == [1, 3]
    assert found("NOT OR SEEN FLAGGED", messages) == [4]
    assert found("OR NOT SEEN NOT FLAGGED", messages) == [1, 2, 4]
    assert found("(SEEN FLAGGED)", messages) == [3]
    assert found("NOT (SEEN FLAGGED)", messages) == [1, 2, 4]
    assert found("OR (SEEN FLAGGED) (NOT SEEN NOT FLAGGED)", messages) == [3, 4]
    assert found("OR OR 1 2 UID 4", messages) == [1, 2, 4]
    assert found("((SEEN)) ((UNFLAGGED))", messages) == [1]


def test_longChains():
    """
    Long chains of NOT and OR, and deeply nested lists, cost no recursion.
    """
    messages = [FakeMessage(1, flags=["\\Seen"]), FakeMessage(2)]
    assert found("NOT " * 10000 + "SEEN", messages) == [1]
    assert found("NOT " * 10001 + "SEEN", messages) == [2]
    assert found("OR SEEN " * 10000 + "UID 5", messages) == [1]
    assert found("OR " * 10000 + "UID 5" + " UID 9" * 10000, messages) == []
    assert found("OR " * 10000 + "UID 2" + " UID 9" * 10000, messages) == [2]
    nested = [Atom("SEEN")]
    for _ in range(10000):
        nested = [nested]
    assert [m.uid for m in messages if parseCriteria(nested).match(m, FakeContext(messages))] == [1]
    nested = [Atom("SEEN")]
    for _ in range(10001):
        nested = [Atom("NOT"), nested]
    assert [m.uid for m in messages if parseCriteria(nested).match(m, FakeContext(messages))] == [2]


@pytest.mark.parametrize(
    "line",
    [
        "NOT OR SEEN " * 200 + "SEEN",
        "OR FLAGGED (SEEN " * 200 + "SEEN" + ")" * 200,
        "(SEEN OR SEEN " * 150 + "SEEN" + ")" * 150,
    ],
    ids=["NOT OR", "OR with lists", "lists with OR"],
)
def test_tooDeep(line):
    with pytest.raises(ParseError):
        parseCriteria(tokenize([line.encode("ascii")], maxDepth=1000))


def test_deepEnough():
    """
    Forty alternations of NOT and OR are within L{search.MAX_DEPTH}.
    """
    messages = [FakeMessage(1, flags=["\\Seen"]), FakeMessage(2)]
    assert found("NOT OR FLAGGED " * 40 + "SEEN", messages) == [1]
    assert found("NOT OR FLAGGED " * 41 + "SEEN", messages) == [2]


def test_tooDeepLists():
    tokens = [Atom("SEEN")]
    for _ in range(10000):
        tokens = [Atom("NOT"), [Atom("FLAGGED"), Atom("OR"), Atom("SEEN")] + tokens]
    with pytest.raises(ParseError):
        parseCriteria(tokens)
    with pytest.raises(ParseError):
        tokenize([b"(" * 10000 + b"SEEN" + b")" * 10000])


def test_cheapKeysFirst():
    messages = [FakeMessage(1, mail("Subject: a"), flags=["\\Seen"]), FakeMessage(2, mail("Subject: a"))]
    ctx = FakeContext(messages)
    criteria = parse("SUBJECT a BODY o SEEN").criteria
    assert criteria.needsContent
    assert [m.uid for m in messages if criteria.match(m, ctx)] == [1]
    assert ctx.reads == [1]


def test_needsContent():
    assert not parse("SEEN OR 1:3 UID 4 NOT LARGER 5 BEFORE 1-Jan-2020 MODSEQ 3 YOUNGER 5").criteria.needsContent
    for line in ["SUBJECT a", "HEADER a b", "BODY a", "TEXT a", "SENTON 1-Jan-2020", "NOT FROM a", "OR SEEN TO a"]:
        assert parse(line).criteria.needsContent, line


def test_expungedMeanwhile():
    messages = [FakeMessage(1)]
    with pytest.raises(NotFound):
        found("BODY x", messages, expunged={1})
    assert found("ALL", messages, expunged={1}) == [1]


# --- charsets ------------------------------------------------------------------------------


def test_charset():
    messages = [FakeMessage(1, mail("Subject: =?utf-8?B?" + base64.b64encode("Ångström".encode()).decode() + "?="))]
    assert found("CHARSET UTF-8 SUBJECT {}", messages, "ångström".encode("utf-8")) == [1]
    assert found('CHARSET "utf-8" SUBJECT {}', messages, "ÅNGSTRÖM".encode("utf-8")) == [1]
    assert found("SUBJECT {}", messages, "ångström".encode("utf-8")) == [1]
    assert found("charset us-ascii SUBJECT ngstr", messages) == [1]
    command = parse("CHARSET utf-8 ALL")
    assert command.charset == "UTF-8"
    assert parse("ALL").charset == "US-ASCII"


def test_badCharset():
    with pytest.raises(BadCharset):
        parse("CHARSET ISO-8859-1 SUBJECT x")
    with pytest.raises(BadCharset):
        parse("CHARSET {} SUBJECT x", b"\xff")
    assert search.SUPPORTED_CHARSETS == ("US-ASCII", "UTF-8")


def test_stringNotInCharset():
    with pytest.raises(ParseError):
        parse("CHARSET US-ASCII SUBJECT {}", "é".encode("utf-8"))
    with pytest.raises(ParseError):
        parse("CHARSET UTF-8 SUBJECT {}", b"\xe9t\xe9")
    with pytest.raises(ParseError):
        parse("CHARSET")
    with pytest.raises(ParseError):
        parse("SUBJECT x CHARSET UTF-8")


# --- MODSEQ (RFC 7162) ---------------------------------------------------------------------


def test_modSeq():
    messages = [FakeMessage(1, modSeq=5), FakeMessage(2, modSeq=10), FakeMessage(3, modSeq=11)]
    assert found("MODSEQ 10", messages) == [2, 3]
    assert found('MODSEQ "/flags/\\\\draft" all 11', messages) == [3]
    assert found('MODSEQ "/flags/$Work" priv 0', messages) == [1, 2, 3]
    assert found("NOT MODSEQ 10", messages) == [1]
    assert parse("OR SEEN MODSEQ 1").criteria.usesModSeq
    assert not parse("SEEN").criteria.usesModSeq
    assert found("MODSEQ 9223372036854775807", messages) == []


@pytest.mark.parametrize(
    "line",
    ["MODSEQ", "MODSEQ x", 'MODSEQ "/flags/x" 5', 'MODSEQ "/flags/x" mine 5', 'MODSEQ "/other/x" all 5', "MODSEQ 9223372036854775808", "MODSEQ -1"],
)
def test_badModSeq(line):
    with pytest.raises(ParseError):
        parse(line)


# --- malformed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "",
        "()",
        "SEEN ()",
        "NOT",
        "OR SEEN",
        "(NOT)",
        "(OR SEEN) FLAGGED",
        "SUBJECT",
        "(SUBJECT) x",
        "SUBJECT (x)",
        "LARGER",
        "LARGER x",
        "LARGER -1",
        "SMALLER 4294967296",
        "FOO",
        '"SEEN"',
        "RETURN",
        "RETURN ALL SEEN",
        "RETURN (SAVED) ALL",
        "RETURN (PARTIAL 1) ALL",
        "RETURN (PARTIAL 1:*) ALL",
        "RETURN (PARTIAL *:1) ALL",
        "RETURN (PARTIAL -1:2) ALL",
        "RETURN (PARTIAL 0:2) ALL",
        "RETURN (PARTIAL) ALL",
        "RETURN (ALL PARTIAL 1:2) ALL",
        "RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL",
        "RETURN (UPDATE UPDATE) ALL",
        "RETURN (MIN)",
        "CHARSET UTF-8",
        "ALL RETURN (MIN)",
    ],
)
def test_malformed(line):
    with pytest.raises(ParseError):
        parse(line)


# --- commands and responses -----------------------------------------------------------------------


def test_returnOptions():
    assert parse("ALL").returnOptions is None
    assert parse("RETURN () ALL").returnOptions == []
    assert parse("RETURN (min count Min) CHARSET UTF-8 ALL").returnOptions == ["MIN", "COUNT"]
    assert parse("RETURN (MAX ALL) ALL").returnOptions == ["MAX", "ALL"]


def respond(line, matches, uid=False):
    return formatSearchResponse(b"a1", uid, parse(line), matches)


MATCHES = [(2, 12, 7), (3, 13, 9), (5, 15, 4), (6, 16, 1)]


def test_searchResponse():
    assert respond("ALL", MATCHES) == b"* SEARCH 2 3 5 6\r\n"
    assert respond("ALL", MATCHES, uid=True) == b"* SEARCH 12 13 15 16\r\n"
    assert respond("ALL", []) == b"* SEARCH\r\n"
    assert respond("MODSEQ 1", MATCHES) == b"* SEARCH 2 3 5 6 (MODSEQ 9)\r\n"
    assert respond("MODSEQ 1", []) == b"* SEARCH\r\n"


def test_esearchResponse():
    assert respond("RETURN (MIN MAX COUNT ALL) ALL", MATCHES, uid=True) == (
        b'* ESEARCH (TAG "a1") UID MIN 12 MAX 16 COUNT 4 ALL 12:13,15:16\r\n'
    )
    assert respond("RETURN () ALL", MATCHES) == b'* ESEARCH (TAG "a1") ALL 2:3,5:6\r\n'
    assert respond("RETURN (COUNT) ALL", MATCHES) == b'* ESEARCH (TAG "a1") COUNT 4\r\n'
    assert respond("RETURN (ALL MIN) ALL", MATCHES) == b'* ESEARCH (TAG "a1") MIN 2 ALL 2:3,5:6\r\n'
    assert respond("RETURN (MIN MAX COUNT ALL) ALL", []) == b'* ESEARCH (TAG "a1") COUNT 0\r\n'
    assert respond("RETURN (MIN) ALL", [], uid=True) == b'* ESEARCH (TAG "a1") UID\r\n'
    assert formatSearchResponse(b'x"\\', False, parse("RETURN (COUNT) ALL"), []) == b'* ESEARCH (TAG "x\\"\\\\") COUNT 0\r\n'


def test_esearchModSeq():
    """
    RFC 4731 section 3.2: MIN or MAX alone report their own message's
    mod-sequence, MIN and MAX the higher of theirs, anything else the
    highest of all matches.
    """
    assert respond("RETURN (MIN) MODSEQ 1", MATCHES) == b'* ESEARCH (TAG "a1") MIN 2 MODSEQ 7\r\n'
    assert respond("RETURN (MAX) MODSEQ 1", MATCHES) == b'* ESEARCH (TAG "a1") MAX 6 MODSEQ 1\r\n'
    assert respond("RETURN (MIN MAX) MODSEQ 1", MATCHES) == b'* ESEARCH (TAG "a1") MIN 2 MAX 6 MODSEQ 7\r\n'
    assert respond("RETURN (COUNT) MODSEQ 1", MATCHES) == b'* ESEARCH (TAG "a1") COUNT 4 MODSEQ 9\r\n'
    assert respond("RETURN () MODSEQ 1", MATCHES, uid=True) == b'* ESEARCH (TAG "a1") UID ALL 12:13,15:16 MODSEQ 9\r\n'
    assert respond("RETURN (COUNT) MODSEQ 1", []) == b'* ESEARCH (TAG "a1") COUNT 0\r\n'


def test_addressesAsParsed():
    """
    FROM, TO, CC and BCC match the addresses as parsed, written as C{name
    <mailbox@host>} and groups as C{name: ...;} (as Dovecot does): comments
    inside an address are dropped, a comment stands for a missing display
    name.
    """
    messages = [
        FakeMessage(1, mail("From: user-from@domain.org", "To: user-to@domain.org")),
        FakeMessage(2, mail("From: RealFrom <user-from@domain.org>", "To: RealTo <user-to@domain.org>")),
        FakeMessage(3, mail("From: <user-from (comment)@ (comment) domain.org>", "To: <user-to@domain.org>")),
        FakeMessage(4, mail("From: user-from@domain.org (RealFrom)", "To: user-to@domain.org (RealTo)")),
        FakeMessage(5, mail("From: user-from1@domain.org, user-from2@domain.org")),
        FakeMessage(6, mail("From: RealFrom <user-from@domain.org>",
                            "To: groupname: groupuser1@domain.org, groupuser2@domain.org;,\r\n"
                            "  groupname2: groupuser3@domain.org;")),
        FakeMessage(7, mail("From: RealFrom <user-from@domain.org>", "To: groupname:;")),
    ]
    assert found("FROM user-from@domain.org", messages) == [1, 2, 3, 4, 6, 7]
    assert found("FROM realfrom", messages) == [2, 4, 6, 7]
    assert found("FROM ser-fro", messages) == [1, 2, 3, 4, 5, 6, 7]
    assert found("FROM comment", messages) == []
    assert found("FROM user-from2", messages) == [5]
    assert found("TO ealt", messages) == [2, 4]
    assert found("TO groupname", messages) == [6, 7]
    assert found("TO groupuser3", messages) == [6]
    assert found("TO groupuser4", messages) == []
    assert found('TO ""', messages) == [1, 2, 3, 4, 6, 7]
