# -*- test-case-name: tests.test_imap_mime -*-
"""
The MIME structure of a message as IMAP4rev1 shows it: IMAP strings,
BODYSTRUCTURE, BODY and ENVELOPE (RFC 3501 sections 7.4.2 and 9), and the
part numbers of C{BODY[section]} (RFC 3501 section 6.4.5), over the part
tree that L{mdpy.mail.mime} parses.

Limits (hardening): only the first L{MAX_ADDRESS_TEXT} octets of the address
fields of an ENVELOPE are read.
"""

import re
from urllib.parse import quote_from_bytes

from mdpy.mail.addresslist import parseAddressList
from mdpy.mail.headers import parseFields
from mdpy.mail.mime import MESSAGE_RFC822, encodeText, parseMessage

MAX_ADDRESS_TEXT = 256 * 1024


# --- IMAP strings ----------------------------------------------------------------

_NEEDS_LITERAL = re.compile(rb"[\x00\r\n\x80-\xff]")
_NEEDS_LITERAL_UTF8 = re.compile(rb"[\x00\r\n]")


def quoteString(value, utf8=False):
    """
    Render an IMAP string (RFC 3501 section 9: C{string}).

    @param value: L{bytes}, or L{str} (encoded as UTF-8; lone surrogates from
        C{surrogateescape} decoding give back the original octets).
    @param utf8: whether the client ENABLEd UTF8=ACCEPT, so that UTF-8 may
        be quoted (RFC 6855 section 3); C{value} is then valid UTF-8.
    @return: a quoted string with C{"} and C{\\} escaped, or a literal
        C{{n}\\r\\n...} when the value holds CR, LF, NUL or 8-bit octets.  NUL
        is allowed in neither (C{CHAR8} excludes it), so it is replaced by
        U+FFFD, as Dovecot does.
    """
    value = encodeText(value)
    if (_NEEDS_LITERAL_UTF8 if utf8 else _NEEDS_LITERAL).search(value) is not None:
        value = value.replace(b"\x00", b"\xef\xbf\xbd")
        return b"{%d}\r\n%s" % (len(value), value)
    if b"\\" in value or b'"' in value:
        value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + value + b'"'


def nstring(value):
    """
    @return: C{NIL} for L{None}, else L{quoteString} of C{value}
        (RFC 3501 section 9: C{nstring}).
    """
    return b"NIL" if value is None else quoteString(value)


# --- BODYSTRUCTURE and BODY (RFC 3501 section 7.4.2) ------------------------------------


def _renderParams(params, defaultCharset=False):
    """
    Render C{body-fld-param}.  A value that is not ASCII but was decoded
    (RFC 2231) is sent encoded again as C{name*} C{utf-8''...}, keeping the
    response 7-bit; raw 8-bit octets as written go in a literal.
    """
    items = []
    for name, value in params:
        if not value.isascii() and not name.endswith("*") and not _hasSurrogates(value):
            name += "*"
            value = "utf-8''" + quote_from_bytes(value.encode("utf-8"), safe="")
        items.append(quoteString(name) + b" " + quoteString(value))
    if defaultCharset:
        items.append(b'"charset" "us-ascii"')
    if not items:
        return b"NIL"
    return b"(" + b" ".join(items) + b")"


def _hasSurrogates(value):
    return any("\udc80" <= c <= "\udcff" for c in value)


def _extension(part, multipart):
    """
    Render the extension data after a part (RFC 3501 section 9:
    C{body-ext-1part}, C{body-ext-mpart}).
    """
    if multipart:
        first = _renderParams(part.rawParams)
    else:
        first = nstring(part.md5)
    if part.disposition is None:
        disposition = b"NIL"
    else:
        kind, params = part.disposition
        disposition = b"(" + quoteString(kind) + b" " + _renderParams(params) + b")"
    if part.language is None:
        language = b"NIL"
    else:
        language = b"(" + b" ".join(quoteString(tag) for tag in part.language) + b")"
    return b" ".join((first, disposition, language, nstring(part.location)))


def _renderBody(part, extended, out):
    if part.contentType[0] == "multipart" and part.children:
        out.append(b"(")
        for child in part.children:
            _renderBody(child, extended, out)
        out.append(b" " + quoteString(part.mediaType[1]))
        if extended:
            out.append(b" " + _extension(part, True))
        out.append(b")")
        return
    text = part.contentType[0] == "text"
    defaultCharset = text and not any(n.lower() == "charset" for n, _ in part.rawParams)
    out.append(b"(%s %s %s %s %s %s %d" % (
        quoteString(part.mediaType[0]),
        quoteString(part.mediaType[1]),
        _renderParams(part.rawParams, defaultCharset),
        nstring(part.id),
        nstring(part.description),
        quoteString(part.encoding or "7bit"),
        part.end - part.bodyStart,
    ))
    if part.contentType == MESSAGE_RFC822 and part.children:
        child = part.children[0]
        out.append(b" " + (child.renderedEnvelope or _EMPTY_ENVELOPE) + b" ")
        _renderBody(child, extended, out)
        out.append(b" %d" % (part.lines or 0,))
    elif text:
        out.append(b" %d" % (part.lines or 0,))
    if extended:
        out.append(b" " + _extension(part, False))
    out.append(b")")


def bodyStructure(part, extended=True):
    """
    Render the BODYSTRUCTURE of C{part} (RFC 3501 section 7.4.2), or with
    C{extended=False} the BODY form without extension data.

    Types, subtypes, parameter names and encodings are sent as written,
    defaults in lower case (C{"text" "plain"}, C{"7bit"}), and a text part
    without a charset gets C{("charset" "us-ascii")} (RFC 2046 section 4.1.2),
    as Dovecot sends them.

    @rtype: L{bytes}
    """
    out = []
    _renderBody(part, extended, out)
    return b"".join(out)

# --- ENVELOPE (RFC 3501 section 7.4.2, RFC 5322 section 3.4) ---------------------------

_EMPTY_ENVELOPE = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def _renderAddresses(values):
    addresses = []
    for raw in values:
        addresses.extend(parseAddressList(raw))
    if not addresses:
        return b"NIL"
    return b"(" + b"".join(
        b"(" + b" ".join(nstring(field) for field in address) + b")" for address in addresses
    ) + b")"


_ENVELOPE_TEXT = ("date", "subject", "in-reply-to", "message-id")
_ENVELOPE_ADDRESSES = ("from", "sender", "reply-to", "to", "cc", "bcc")


def _renderEnvelope(fields):
    """
    Render an ENVELOPE from header fields (RFC 3501 section 7.4.2).  Text
    fields are sent as written (encoded words too) from the first field of
    that name, present but empty as C{""}; address fields of every field of
    that name are joined (as Dovecot does); an empty or missing Sender or
    Reply-To is the From.
    """
    text = {}
    addresses = {name: [] for name in _ENVELOPE_ADDRESSES}
    budget = MAX_ADDRESS_TEXT
    for name, raw in fields:
        key = name.lower()
        if key in addresses:
            addresses[key].append(raw[:budget])
            budget -= len(addresses[key][-1])
        elif key in _ENVELOPE_TEXT and key not in text:
            text[key] = raw
    rendered = {name: _renderAddresses(values) for name, values in addresses.items()}
    for name in ("sender", "reply-to"):
        if rendered[name] == b"NIL":
            rendered[name] = rendered["from"]
    return b"(" + b" ".join((
        nstring(text.get("date")),
        nstring(text.get("subject")),
        rendered["from"],
        rendered["sender"],
        rendered["reply-to"],
        rendered["to"],
        rendered["cc"],
        rendered["bcc"],
        nstring(text.get("in-reply-to")),
        nstring(text.get("message-id")),
    )) + b")"


def envelope(part, data):
    """
    Render the ENVELOPE (RFC 3501 section 7.4.2) of the message whose header
    is C{part}: the top of L{parseMessage} or an encapsulated message.

    @param data: the octets of the whole message.
    @rtype: L{bytes}
    """
    if part.renderedEnvelope is not None:
        return part.renderedEnvelope
    return _renderEnvelope(parseFields(data[part.start : part.bodyStart]))



def parseStructure(data):
    """
    Parse the MIME structure of a message (L{mdpy.mail.mime.parseMessage})
    with the ENVELOPE of every encapsulated message rendered, as
    BODYSTRUCTURE shows it.

    @type data: L{bytes}
    @rtype: L{mdpy.mail.mime.Part}
    """
    return parseMessage(data, _renderEnvelope)


# --- sections (RFC 3501 section 6.4.5) --------------------------------------------------


def findSection(part, path):
    """
    Find the part numbered C{path} (RFC 3501 section 6.4.5) in the message
    C{part}.  Part 1 of a message that is not multipart is its body (the
    message's own L{Part}); the numbers after a message/rfc822 part number
    the parts of the message it encapsulates.

    @param path: part numbers, e.g. C{[2, 1]} for C{2.1}.
    @return: the L{Part} whose body is C{BODY[path]} and whose header is
        C{BODY[path.MIME]}, or L{None} if there is no such part.
    """
    node = part
    message = True
    for number in path:
        if not message:
            if node.contentType == MESSAGE_RFC822 and node.children:
                node = node.children[0]
            elif node.contentType[0] != "multipart" or not node.children:
                return None
        if node.contentType[0] == "multipart" and node.children:
            if not 1 <= number <= len(node.children):
                return None
            node = node.children[number - 1]
        elif number != 1:
            return None
        message = False
    return node


def encapsulated(part):
    """
    @return: the message that C{part} encapsulates, whose header and body
        are C{BODY[path.HEADER]} and C{BODY[path.TEXT]}, or L{None} when
        C{part} is not message/rfc822.
    """
    if part.contentType == MESSAGE_RFC822 and part.children:
        return part.children[0]
    return None
