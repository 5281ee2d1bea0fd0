# -*- test-case-name: tests.test_imap_headers -*-
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
import quopri
import re

MAX_FIELDS = 10000
MAX_HEADER = 8 * 1024 * 1024

_END = re.compile(rb"\r?\n\r?\n")


def headerEnd(data, start=0):
    """
    @return: the offset where the body of the entity starting at C{start}
        begins (just after the empty line), or C{len(data)} if there is no
        empty line.  A block of no header at all (an empty first line) gives
        C{start} plus that line.
    """
    if data.startswith(b"\r\n", start):
        return start + 2
    if data.startswith(b"\n", start):
        return start + 1
    match = _END.search(data, start, min(len(data), start + MAX_HEADER))
    if match is None:
        return min(len(data), start + MAX_HEADER) if len(data) - start > MAX_HEADER else len(data)
    return match.end()


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
    name = None
    value = []
    for line in block.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                value.append(line)
            continue
        if name is not None:
            fields.append((name, b" ".join(v.strip() for v in value).strip()))
            if len(fields) >= MAX_FIELDS:
                return fields
        colon = line.find(b":")
        if colon <= 0:
            name = None
            continue
        name = line[:colon].strip().decode("latin-1")
        value = [line[colon + 1 :]]
    if name is not None and len(fields) < MAX_FIELDS:
        fields.append((name, b" ".join(v.strip() for v in value).strip()))
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
