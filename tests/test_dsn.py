"""
Tests of L{mdpy.delivery.dsn}: RFC 3464 delivery status notifications, read
back with the stdlib C{email} package and, where octets matter, split at the
boundary by hand.
"""

import email
import email.policy
import io
import re
from email.utils import parsedate_to_datetime

import pytest

from mdpy.delivery import dsn
from mdpy.delivery.dsn import HEADER_LIMIT, RecipientStatus, buildDSN, statusForReply

HOST = "mx.example.org"
NOW = 1700000000
ARRIVAL = NOW - 3 * 3600

HEADER = b"From: Alice <alice@example.org>\r\nTo: bob@remote.test\r\nSubject: Hello\r\n"
ORIGINAL = HEADER + b"\r\nHi Bob,\r\n\r\nsee you.\r\n"


def failed(address="bob@remote.test", **kwargs):
    kwargs.setdefault("diagnostic", "smtp; 550 5.1.1 <bob@remote.test>: User unknown")
    kwargs.setdefault("remoteMTA", "mx.remote.test")
    return RecipientStatus(address, "failed", "5.1.1", **kwargs)


def delayed(address="carol@slow.test", **kwargs):
    kwargs.setdefault("diagnostic", "smtp; 451 4.4.1 Try again later")
    kwargs.setdefault("willRetryUntil", ARRIVAL + 5 * 86400)
    return RecipientStatus(address, "delayed", "4.4.1", **kwargs)


def build(recipients=None, original=ORIGINAL, **kwargs):
    if recipients is None:
        recipients = [failed()]
    kwargs.setdefault("now", NOW)
    return buildDSN(HOST, "alice@example.org", "Q1234", ARRIVAL, recipients, original, **kwargs)


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.default)


def rawParts(raw):
    """
    @return: C{[(head, content)]} of the top-level parts, split at the
        boundary by hand so that their octets are exactly as written.
    """
    boundary = parse(raw).get_boundary().encode("ascii")
    pieces = raw.split(b"\r\n--" + boundary)
    assert pieces[-1] == b"--\r\n"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n")
        head, separator, content = piece[2:].partition(b"\r\n\r\n")
        assert separator
        parts.append((head, content))
    return parts


def fields(block):
    """
    @return: the fields of a block of RFC 3464 fields as a list of
        C{(name, value)}, unfolded.
    """
    unfolded = re.sub(rb"\r\n(?=[ \t])", b"", block)
    result = []
    for line in unfolded.split(b"\r\n"):
        if line:
            name, colon, value = line.decode("utf-8").partition(":")
            assert colon
            result.append((name, value.strip()))
    return result


def statusBlocks(raw):
    """
    @return: the field lists of the delivery-status part: the per-message
        block first, then one per recipient.
    """
    content = rawParts(raw)[1][1]
    assert content.endswith(b"\r\n")
    return [fields(block) for block in content[:-2].split(b"\r\n\r\n")]


def field(block, name):
    values = [value for key, value in block if key.lower() == name.lower()]
    assert len(values) <= 1, values
    return values[0] if values else None


def epoch(date):
    return parsedate_to_datetime(date).timestamp()


# The report as a whole


def test_failureReportStructure():
    message = parse(build())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = message.get_payload()
    assert [part.get_content_type() for part in parts] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]


def test_headers():
    message = parse(build())
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    assert message["To"] == "alice@example.org"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert epoch(message["Date"]) == NOW
    assert re.fullmatch(r"<[^<>@\s]+@mx\.example\.org>", message["Message-ID"])


def test_freshMessageId():
    assert parse(build())["Message-ID"] != parse(build())["Message-ID"]


def test_crlfEverywhere():
    raw = build(original=b"From: a@b\nSubject: lf\n\nline\nline\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")


def test_closingBoundary():
    raw = build()
    boundary = parse(raw).get_boundary()
    assert raw.endswith(b"\r\n--" + boundary.encode("ascii") + b"--\r\n")
    assert raw.count(b"\r\n--" + boundary.encode("ascii")) == 4


def test_boundaryNotInContent(monkeypatch):
    """
    A boundary found in the content is not used: the next one is tried.
    """
    tokens = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(dsn, "_newToken", lambda: next(tokens))
    original = HEADER + b"\r\n--aaaa/mx.example.org\r\nContent-Type: text/plain\r\n\r\nfake\r\n"
    raw = build(original=original)
    message = parse(raw)
    assert message.get_boundary() == "bbbb/mx.example.org"
    assert len(message.get_payload()) == 3
    assert rawParts(raw)[2][1] == original


def test_firstBoundaryUsedWhenFree(monkeypatch):
    tokens = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(dsn, "_newToken", lambda: next(tokens))
    assert parse(build()).get_boundary() == "aaaa/mx.example.org"


def test_boundaryAvoidsDiagnostic(monkeypatch):
    tokens = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(dsn, "_newToken", lambda: next(tokens))
    raw = build([failed(diagnostic="smtp; 550 --aaaa/mx.example.org")])
    assert parse(raw).get_boundary() == "bbbb/mx.example.org"


# The delivery-status part


def test_perMessageFields():
    perMessage = statusBlocks(build())[0]
    assert [name for name, _ in perMessage] == ["Reporting-MTA", "Arrival-Date", "X-mdpy-Queue-ID"]
    assert field(perMessage, "Reporting-MTA") == "dns; mx.example.org"
    assert field(perMessage, "X-mdpy-Queue-ID") == "Q1234"
    assert epoch(field(perMessage, "Arrival-Date")) == ARRIVAL


def test_envelopeId():
    perMessage = statusBlocks(build(envelopeId="abc.123"))[0]
    assert perMessage[0] == ("Original-Envelope-Id", "abc.123")


def test_perRecipientFields():
    recipients = [
        failed(lastAttempt=NOW - 60, originalRecipient="Bob@Remote.test"),
        failed(
            "dave@remote.test",
            diagnostic="smtp; 552 5.2.2 Mailbox full",
            remoteMTA=None,
            originalRecipient="rfc822;Dave@remote.test",
        ),
    ]
    recipients[1].status = "5.2.2"
    blocks = statusBlocks(build(recipients))
    assert len(blocks) == 3
    bob, dave = blocks[1], blocks[2]
    assert [name for name, _ in bob] == [
        "Original-Recipient",
        "Final-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Diagnostic-Code",
        "Last-Attempt-Date",
    ]
    assert field(bob, "Original-Recipient") == "rfc822; Bob@Remote.test"
    assert field(bob, "Final-Recipient") == "rfc822; bob@remote.test"
    assert field(bob, "Action") == "failed"
    assert field(bob, "Status") == "5.1.1"
    assert field(bob, "Remote-MTA") == "dns; mx.remote.test"
    assert field(bob, "Diagnostic-Code") == "smtp; 550 5.1.1 <bob@remote.test>: User unknown"
    assert epoch(field(bob, "Last-Attempt-Date")) == NOW - 60
    assert field(dave, "Original-Recipient") == "rfc822;Dave@remote.test"
    assert field(dave, "Final-Recipient") == "rfc822; dave@remote.test"
    assert field(dave, "Status") == "5.2.2"
    assert field(dave, "Diagnostic-Code") == "smtp; 552 5.2.2 Mailbox full"
    assert field(dave, "Remote-MTA") is None
    assert field(dave, "Last-Attempt-Date") is None


def test_stdlibReadsRecipientBlocks():
    """
    The stdlib parser splits the part into the same blocks.
    """
    status = parse(build([failed(), delayed()])).get_payload()[1]
    blocks = status.get_payload()
    assert len(blocks) == 3
    assert blocks[0]["Reporting-MTA"] == "dns; mx.example.org"
    assert [b["Action"] for b in blocks[1:]] == ["failed", "delayed"]
    assert [b["Status"] for b in blocks[1:]] == ["5.1.1", "4.4.1"]


def test_willRetryUntilOnlyForDelayed():
    blocks = statusBlocks(build([failed(willRetryUntil=NOW + 10), delayed()]))
    assert field(blocks[1], "Will-Retry-Until") is None
    assert epoch(field(blocks[2], "Will-Retry-Until")) == ARRIVAL + 5 * 86400


def test_diagnosticWithoutType():
    blocks = statusBlocks(build([failed(diagnostic="mailbox is full", remoteMTA=None)]))
    assert field(blocks[1], "Diagnostic-Code") == "X-mdpy; mailbox is full"


def test_diagnosticCannotInjectFields():
    """
    Line ends in remote text become spaces: they cannot add fields, blocks or
    parts.
    """
    evil = "smtp; 550 no\r\nAction: delivered\r\n\r\nFinal-Recipient: rfc822; x@y\r\n--"
    blocks = statusBlocks(build([failed(diagnostic=evil)]))
    assert len(blocks) == 2
    assert field(blocks[1], "Action") == "failed"
    assert field(blocks[1], "Diagnostic-Code") == (
        "smtp; 550 no Action: delivered Final-Recipient: rfc822; x@y --"
    )


def test_longDiagnosticFolded():
    text = "smtp; 550 5.7.1 " + " ".join("word%d" % (i,) for i in range(60))
    raw = build([failed(diagnostic=text)])
    content = rawParts(raw)[1][1]
    assert all(len(line) <= 78 for line in content.split(b"\r\n"))
    assert field(statusBlocks(raw)[1], "Diagnostic-Code") == text


def test_utf8Recipient():
    raw = build([failed("jörg@bücher.test", diagnostic="smtp; 550 5.1.1 unknown")])
    message = parse(raw)
    assert message.get_param("report-type") == "global-delivery-status"
    assert [part.get_content_type() for part in message.get_payload()] == [
        "text/plain",
        "message/global-delivery-status",
        "message/global",
    ]
    assert field(statusBlocks(raw)[1], "Final-Recipient") == "utf-8; jörg@bücher.test"
    notification = message.get_payload()[0]
    assert notification.get_content_charset() == "utf-8"
    assert "<jörg@bücher.test>" in notification.get_content()


def test_utf8RecipientDelayHeadersGlobal():
    raw = build([delayed("jörg@bücher.test")])
    types = [part.get_content_type() for part in parse(raw).get_payload()]
    assert types[1:] == ["message/global-delivery-status", "message/global-headers"]
    assert rawParts(raw)[2][1] == HEADER


def test_utf8OriginalHeaderASCIIRecipient():
    """
    An original with UTF-8 in its header section is returned as
    C{message/global}; the status part stays plain.
    """
    original = "From: jörg@bücher.test\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode("utf-8")
    raw = build(original=original)
    types = [part.get_content_type() for part in parse(raw).get_payload()]
    assert types == ["text/plain", "message/delivery-status", "message/global"]
    assert parse(raw).get_param("report-type") == "delivery-status"
    assert rawParts(raw)[2][1] == original


# The human-readable part


def test_notification():
    message = parse(build([failed(), delayed()]))
    notification = message.get_payload()[0]
    assert notification.get_content_charset() == "us-ascii"
    text = " ".join(notification.get_content().split())
    assert "mx.example.org" in text
    assert "Q1234" in text
    assert "<bob@remote.test>: host mx.remote.test said: 550 5.1.1 <bob@remote.test>: User unknown" in text
    assert "<carol@slow.test> (delayed): 451 4.4.1 Try again later" in text


def test_notificationPostmaster():
    text = parse(build(postmaster="help@example.org")).get_payload()[0].get_content()
    assert "help@example.org" in text


# The returned message


def test_originalAttachedByteForByte():
    raw = build()
    head, content = rawParts(raw)[2]
    assert b"Content-Type: message/rfc822" in head
    assert b"Content-Transfer-Encoding" not in head
    assert content == ORIGINAL
    returned = parse(raw).get_payload()[2].get_payload()[0]
    assert returned["Subject"] == "Hello"


def test_originalFromFile():
    assert rawParts(build(original=io.BytesIO(ORIGINAL)))[2][1] == ORIGINAL


def test_originalWithoutFinalLineEnd():
    original = ORIGINAL + b"no newline"
    assert rawParts(build(original=original))[2][1] == original


def test_bareLFNormalised():
    original = b"From: a@b\nSubject: lf\n\nline one\r\nline two\n"
    content = rawParts(build(original=original))[2][1]
    assert content == b"From: a@b\r\nSubject: lf\r\n\r\nline one\r\nline two\r\n"


def test_eightBitOriginalPreserved():
    """
    8-bit octets, not even UTF-8, come back as they were, marked 8bit on
    the part and on the message.
    """
    original = HEADER + b"\r\ncaf\xe9 \xff\xfe \x80\r\n"
    raw = build(original=original)
    head, content = rawParts(raw)[2]
    assert content == original
    assert b"Content-Transfer-Encoding: 8bit" in head
    assert parse(raw)["Content-Transfer-Encoding"] == "8bit"


def test_sevenBitReportHasNoTransferEncoding():
    assert parse(build())["Content-Transfer-Encoding"] is None


def test_largeOriginalHeadersOnly():
    original = HEADER + b"\r\n" + b"x" * 200 + b"\r\n"
    raw = build(original=original, maxOriginal=100)
    message = parse(raw)
    assert message.get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert rawParts(raw)[2][1] == HEADER
    assert b"xxxx" not in raw
    assert "header section" in message.get_payload()[0].get_content()


def test_sizeLimitInclusive():
    exact = build(original=ORIGINAL, maxOriginal=len(ORIGINAL))
    assert parse(exact).get_payload()[2].get_content_type() == "message/rfc822"
    over = build(original=ORIGINAL, maxOriginal=len(ORIGINAL) - 1)
    assert parse(over).get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_largeFileNotReadWhole():
    """
    Of a large original only what is needed is read.
    """
    size = 4 * 1024 * 1024
    original = io.BytesIO(HEADER + b"\r\n" + b"y" * size)
    raw = build(original=original)
    assert rawParts(raw)[2][1] == HEADER
    assert original.tell() < 200 * 1024


def test_returnHeaders():
    raw = build(returnHeaders=True)
    assert parse(raw).get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert rawParts(raw)[2][1] == HEADER


def test_headerSectionWithoutBody():
    original = b"From: a@b\nSubject: only headers"
    raw = build(original=original, returnHeaders=True)
    assert rawParts(raw)[2][1] == b"From: a@b\r\nSubject: only headers\r\n"


def test_headerSectionCappedAtLastLine():
    original = b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"z" * 50) for i in range(10000))
    content = rawParts(build(original=original, returnHeaders=True))[2][1]
    assert len(content) <= HEADER_LIMIT
    assert content.endswith(b"\r\n")
    assert original.startswith(content)
    assert len(content) > HEADER_LIMIT - 100


# Delay warnings and success reports


def test_delayWarning():
    raw = build([delayed(), delayed("dan@slow.test")])
    message = parse(raw)
    assert message["Subject"] == "Delayed Mail (still being retried)"
    assert [part.get_content_type() for part in message.get_payload()] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert rawParts(raw)[2][1] == HEADER
    blocks = statusBlocks(raw)
    assert [field(b, "Action") for b in blocks[1:]] == ["delayed", "delayed"]
    assert all(field(b, "Will-Retry-Until") for b in blocks[1:])
    text = message.get_payload()[0].get_content()
    assert "WARNING" in text
    assert "could not be delivered for 3 hours to the" in " ".join(text.split())
    assert "hour(s)" not in text


@pytest.mark.parametrize("waited, text", [
    (0, "0 seconds"),
    (1, "1 second"),
    (45, "45 seconds"),
    (60, "1 minute"),
    (90, "1 minute 30 seconds"),
    (30 * 60, "30 minutes"),
    (30 * 60 + 59, "30 minutes 59 seconds"),
    (3600, "1 hour"),
    (4 * 3600 + 12, "4 hours"),
    (4 * 3600 + 30 * 60 + 12, "4 hours 30 minutes"),
    (86400, "1 day"),
    (86400 + 59 * 60, "1 day"),
    (2 * 86400 + 5 * 3600, "2 days 5 hours"),
    (-10, "0 seconds"),
])
def test_formatDuration(waited, text):
    """
    Durations read as people write them: the largest unit, the next one when
    it is not zero, singular for one.
    """
    assert dsn.formatDuration(waited) == text


@pytest.mark.parametrize("waited, text", [(30 * 60, "30 minutes"), (4 * 3600 + 5, "4 hours"), (86400, "1 day")])
def test_delayWarningSaysHowLong(waited, text):
    """
    A delay warning says how long the message has waited as people say it,
    never "0 hour(s)".
    """
    raw = buildDSN(HOST, "alice@example.org", "Q1234", NOW - waited, [delayed()], ORIGINAL, now=NOW)
    body = " ".join(parse(raw).get_payload()[0].get_content().split())
    assert "could not be delivered for %s to the recipients below" % (text,) in body


def test_delayWarningHeadersEvenWhenSmall():
    raw = build([delayed()], maxOriginal=10 * 1024 * 1024)
    assert parse(raw).get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_anyFailureMakesFailureReport():
    message = parse(build([delayed(), failed()]))
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message.get_payload()[2].get_content_type() == "message/rfc822"


def test_successReport():
    raw = build([RecipientStatus("bob@remote.test", "relayed", "2.0.0", remoteMTA="mx.remote.test")])
    message = parse(raw)
    assert message["Subject"] == "Successful Mail Delivery Report"
    assert message.get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert field(statusBlocks(raw)[1], "Action") == "relayed"


# Arguments


def test_noRecipients():
    with pytest.raises(ValueError):
        build([])


@pytest.mark.parametrize("action,status", [("bounced", "5.0.0"), ("failed", "5.1"), ("failed", "3.0.0")])
def test_badRecipientStatus(action, status):
    with pytest.raises(ValueError):
        RecipientStatus("a@b", action, status)


def test_actionCaseFolded():
    assert RecipientStatus("a@b", "FAILED", "5.0.0").action == "failed"


@pytest.mark.parametrize(
    "code,enhanced,status",
    [
        (550, "5.1.1", "5.1.1"),
        (550, None, "5.0.0"),
        (550, "4.2.2", "5.0.0"),
        (452, "4.2.2", "4.2.2"),
        (421, None, "4.0.0"),
        (450, "5.1.1", "4.0.0"),
        (250, "2.1.5", "2.1.5"),
        (250, None, "2.0.0"),
        (554, "5.x.1", "5.0.0"),
        (354, None, "5.0.0"),
        ("551", "5.7.1", "5.7.1"),
    ],
)
def test_statusForReply(code, enhanced, status):
    assert statusForReply(code, enhanced) == status
