"""
Tests for L{mdpy.mail.headers} (where a header section ends, its fields)
and L{mdpy.mail.received}: the one reading of a header section that IMAP,
POP3, DomainPOP, the delivery pipeline and DSNs share, and the one
C{Received} field of SMTP and DomainPOP.
"""

import email.utils

import pytest

from mdpy.mail.headers import (
    MAX_FIELDS,
    MAX_HEADER,
    findHeaderEnd,
    headerEnd,
    parseDateField,
    parseFields,
    splitFields,
)
from mdpy.mail.received import receivedField


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody", (12, 14)),
        (b"A: 1\nB: 2\n\nbody", (10, 11)),
        (b"A: 1\r\n\nbody", (6, 7)),
        (b"A: 1\n\r\nbody", (5, 7)),
        (b"\r\nbody", (0, 2)),
        (b"\nbody", (0, 1)),
        (b"A: 1\r\nB: 2\r\n", None),
        (b"A: 1\r\n\r", None),
        (b"", None),
    ],
)
def test_findHeaderEnd(data, expected):
    """
    The header section ends at the first empty line, in CR LF or bare LF;
    a message of no fields has its empty line first; without an empty line
    the end is not found yet.
    """
    assert findHeaderEnd(data) == expected


def test_findHeaderEndFromAnOffsetWithinALimit():
    """
    A part's header is looked for from its start and no further than the
    limit: an empty line that ends past the limit is not found.
    """
    data = b"preamble\r\nX: y\r\n\r\nbody"
    assert findHeaderEnd(data, 10) == (16, 18)
    assert findHeaderEnd(data, 10, 17) is None
    assert findHeaderEnd(data, 10, 18) == (16, 18)
    assert findHeaderEnd(data, 16) == (16, 18)


def test_headerEndOfAHeaderWithoutEmptyLine():
    """
    Without an empty line the whole message is header, up to L{MAX_HEADER}
    octets: past them the body starts.
    """
    assert headerEnd(b"A: 1\r\nB: 2") == 10
    huge = b"X: " + b"a" * MAX_HEADER + b"\r\n\r\nbody"
    assert headerEnd(huge) == MAX_HEADER


def test_splitFieldsKeepsFieldsAsWritten():
    """
    Each field is given with its folding and line ends; a line without a
    colon has no name, the lines folded under it stay with it; reading
    stops at the empty line.
    """
    block = b"Subject: a\r\n b\r\nnot a field\r\n\tstill not\r\nTo: c\r\n\r\nX: body\r\n"
    fields = splitFields(block)
    assert [(name, block[start:end]) for name, start, end in fields] == [
        (b"Subject", b"Subject: a\r\n b\r\n"),
        (None, b"not a field\r\n\tstill not\r\n"),
        (b"To", b"To: c\r\n"),
    ]


def test_splitFieldsLeadingContinuationIsNoField():
    """
    A first line starting with white space continues nothing: it is no
    field, even with a colon.
    """
    assert splitFields(b" X: y\r\nA: b\r\n") == [(None, 0, 7), (b"A", 7, 13)]


def test_splitFieldsStopsAtTheFieldLimit():
    """
    A header bomb costs at most L{MAX_FIELDS} fields.
    """
    block = b"X: y\r\n" * (MAX_FIELDS + 5)
    assert len(splitFields(block)) == MAX_FIELDS


def test_parseFieldsUnfolds():
    """
    L{parseFields} gives each field's name as written and its value
    unfolded, lines that are no field skipped.
    """
    block = b"Subject:  a\r\n\tb \r\nbogus\r\n folded bogus\r\n:empty name\r\nTo : c\n\n"
    assert parseFields(block) == [("Subject", b"a b"), ("To", b"c")]


def test_receivedFieldOfSMTP():
    """
    The field names where the message came from, this host, the protocol
    and the message's identifier, and the date (RFC 5321 section 4.4).
    """
    field = receivedField("client.example ([192.0.2.1])", "mx.example.org", "ESMTPSA", "id1", 0)
    head, date = field.split(b";\r\n\t")
    assert head == b"Received: from client.example ([192.0.2.1])\r\n\tby mx.example.org (mdpy) with ESMTPSA id id1"
    assert date.endswith(b"\r\n")
    assert email.utils.parsedate_to_datetime(date.decode()).timestamp() == 0


def test_receivedFieldRecipientAndQuotedComment():
    """
    A single recipient is named in a C{for} clause; a comment has its
    parentheses and backslashes quoted, so it cannot end early.
    """
    field = receivedField("pop.isp.test", "mx.example.org", "POP3", "id2", 0,
                          recipient="bob@example.org", comment="evil) (x\\")
    assert b"with POP3 id id2\r\n\tfor <bob@example.org>\r\n\t(evil\\) \\(x\\\\);\r\n\t" in field


def test_parseDateField():
    assert parseDateField(b"Fri, 22 Feb 2008 22:00:10 +0200")[:3] == (2008, 2, 22)
    assert parseDateField(b"Fri, 22 Feb 2008 22:00:10 +0200")[9] == 7200
    for raw in (None, b"", b"not a date", b"Fri, 32 Feb 2008 22:00:10 +0200"):
        assert parseDateField(raw) is None
