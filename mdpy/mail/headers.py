# -*- test-case-name: tests.test_mail_headers -*-
"""
Message header blocks as IMAP needs them: split from the body, unfolded into
fields, RFC 2047 encoded words decoded for SEARCH.  Bytes in, never an
exception out: broken headers are read as well as they can be.

Limits: at most L{MAX_FIELDS} fields are read from one header block, and a
header block ends at L{MAX_HEADER} octets (the rest counts as body), so a
header bomb costs bounded time (hardening-vectors section 4).
"""

import base64
import binascii
import email.utils
import quopri
import re

MAX_FIELDS = 10000
MAX_HEADER = 8 * 1024 * 1024

_BLANK_LINE = re.compile(rb"\n(\r?\n)")


def findHeaderEnd(data, start=0, limit=None):
    """
    Find the empty line that ends the header section of the entity starting
    at C{start} (RFC 5322 section 2.1; RFC 2045 section 2.4 for a MIME
    part).  Lines may end in CR LF or in a bare LF.

    @param limit: look no further than this offset (by default, the end of
        C{data}).
    @return: C{(fieldsEnd, bodyStart)}: the offset just past the last field
        (its line end included) and the offset just past the empty line; both
        are C{start} and the end of that line when the first line is empty.
        L{None} when no empty line ends before C{limit}.
    """
    if data.startswith(b"\r\n", start):
        return start, start + 2
    if data.startswith(b"\n", start):
        return start, start + 1
    match = _BLANK_LINE.search(data, start, len(data) if limit is None else min(limit, len(data)))
    if match is None:
        return None
    return match.start() + 1, match.end()


def headerEnd(data, start=0):
    """
    @return: the offset where the body of the entity starting at C{start}
        begins (just after the empty line), or C{len(data)} if there is no
        empty line.  A block of no header at all (an empty first line) gives
        C{start} plus that line.  A header section is at most L{MAX_HEADER}
        octets: the body of one without an empty line by then starts there.
    """
    found = findHeaderEnd(data, start, start + MAX_HEADER)
    if found is None:
        return min(len(data), start + MAX_HEADER)
    return found[1]


def splitFields(block):
    """
    Split a header block into its fields as written.

    @param block: the header octets (up to and perhaps including the empty
        line, where reading stops).
    @return: a list of C{(name, start, end)}, one per field, at most
        L{MAX_FIELDS}: C{block[start:end]} is the field as written, line
        ends and folding (RFC 5322 section 2.2.3) included, and C{name} the
        octets before its colon as written, or L{None} for a line that is no
        field (no colon, or starting with white space).  A line starting
        with white space continues the entry above it.
    """
    fields = []
    pos, size = 0, len(block)
    while pos < size:
        newline = block.find(b"\n", pos)
        end = size if newline < 0 else newline + 1
        first = block[pos : pos + 1]
        if first in (b" ", b"\t"):
            if fields:
                fields[-1][2] = end
                pos = end
                continue
        elif first in (b"\r", b"\n") and block[pos:end].rstrip(b"\r\n") == b"":
            break
        if len(fields) >= MAX_FIELDS:
            break
        colon = block.find(b":", pos, end)
        name = block[pos:colon] if colon > pos and first not in (b" ", b"\t") else None
        fields.append([name, pos, end])
        pos = end
    return [tuple(field) for field in fields]


def parseFields(block):
    """
    Split a header block into fields.

    @param block: the header octets (up to and perhaps including the empty
        line).
    @return: a list of C{(name, raw)} where C{name} is the field name as
        L{str} (as written) and C{raw} the unfolded value as L{bytes} with
        leading and trailing white space removed.  Lines that are not fields
        (no colon) are skipped.
    """
    fields = []
    for name, start, end in splitFields(block):
        if name is None:
            continue
        value = block[start + len(name) + 1 : end]
        fields.append((name.strip().decode("latin-1"), b" ".join(line.strip() for line in value.split(b"\n")).strip()))
    return fields


def fieldValue(fields, name):
    """
    @return: the raw value of the first field called C{name} (any case), or
        L{None}.
    """
    name = name.lower()
    for fieldName, raw in fields:
        if fieldName.lower() == name:
            return raw
    return None


def fieldValues(fields, name):
    """
    @return: the raw values of every field called C{name} (any case).
    """
    name = name.lower()
    return [raw for fieldName, raw in fields if fieldName.lower() == name]


def parseDateField(raw):
    """
    Read the value of a C{Date:} field (RFC 5322 section 3.3, and the
    obsolete forms Python's L{email.utils.parsedate_tz} knows).

    @param raw: the raw value, or L{None}.
    @return: the 10-tuple of L{email.utils.parsedate_tz} (its last item the
        zone's offset in seconds, or L{None}), or L{None} when there is no
        date that can be read.
    """
    if raw is None:
        return None
    try:
        parsed = email.utils.parsedate_tz(raw.decode("latin-1"))
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    if parsed is None or not 1 <= parsed[1] <= 12 or not 1 <= parsed[2] <= 31:
        return None
    return parsed


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)\s+(?==\?)")


def _decodeWord(match):
    charset, encoding, text = match.groups()
    charset = charset.partition("*")[0]  # RFC 2231 language suffix
    try:
        if encoding in "bB":
            data = base64.b64decode(text + "=" * (-len(text) % 4))
        else:
            data = quopri.decodestring(text.replace("_", " ").encode("ascii"), header=True)
        return data.decode(charset, "replace")
    except (LookupError, ValueError, UnicodeError, binascii.Error):
        return match.group(0)


def decodeText(raw):
    """
    Decode a raw header value for comparison: RFC 2047 encoded words in any
    charset Python knows (white space between two of them dropped), other
    octets as UTF-8, or Latin-1 where they are not UTF-8.

    @type raw: L{bytes}
    @rtype: L{str}
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if "=?" not in text:
        return text
    return _ENCODED_WORD.sub(_decodeWord, _BETWEEN_WORDS.sub(r"\1", text))
