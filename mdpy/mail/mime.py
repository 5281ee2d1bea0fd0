# -*- test-case-name: tests.test_imap_mime -*-
"""
The MIME structure of a message (RFC 2045, RFC 2046): the tree of its
entities, their Content-* fields, and the byte offsets of every part, so
that a part is served by reading a range of the stored file.  IMAP renders
it as BODYSTRUCTURE and ENVELOPE in L{mdpy.imap.structure}.

Bytes in, never an exception out: broken messages are read the way Dovecot
reads them where that is sane (its output was compared part by part).  Sizes
and line counts are of the octets as stored, bare LF or CR LF.

Limits (hardening): entities nest at most L{MAX_DEPTH} deep and a message
has at most L{MAX_PARTS} parts, past which multiparts and messages are
leaves of type application/octet-stream, as in Dovecot; only the first
L{MAX_FIELD} octets of a Content-* field are read.  Parsing is linear in the
size of the message.

Invariants: a L{Part} only holds offsets and header values, so it can be
cached (L{toCache}) and the message file read again for its octets.
"""

import base64
import binascii
import json
import re
from urllib.parse import unquote_to_bytes

from mdpy.mail.headers import MAX_HEADER, headerEnd, parseFields, splitFields

MAX_DEPTH = 100
MAX_PARTS = 10000
MAX_FIELD = 64 * 1024

TEXT_PLAIN = ("text", "plain")
MESSAGE_RFC822 = ("message", "rfc822")
OCTET_STREAM = ("application", "octet-stream")
_CACHE_VERSION = 1


def encodeText(value):
    """
    @return: C{value} if it is L{bytes}, else C{value} encoded as UTF-8
        (lone surrogates from C{surrogateescape} decoding give back the
        original octets).
    """
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace")


# --- the part tree -----------------------------------------------------------------


class Part:
    """
    One MIME entity (RFC 2045 section 2.4) of a message.

    @ivar start: offset of the first octet of its header (0 at the top).
    @ivar bodyStart: offset of the first octet of its body.
    @ivar end: offset just past its body; for a child of a multipart, the
        CR LF before the next delimiter is not included (RFC 2046 5.1.1).
    @ivar contentType: C{(type, subtype)} lowercased; C{("text", "plain")}
        when missing or unparsable, C{("message", "rfc822")} by default in a
        multipart/digest, C{("application", "octet-stream")} for a container
        past the limits.
    @ivar mediaType: C{(type, subtype)} as written, for BODYSTRUCTURE.
    @ivar rawParams: C{[(name, value)]} of the Content-Type with names as
        written (see L{params}).
    @ivar encoding: Content-Transfer-Encoding token as written, or L{None}.
    @ivar id: Content-ID (RFC 2045 7), or L{None}; likewise C{description}
        (RFC 2045 8), C{md5} (RFC 1864) and C{location} (RFC 2557 4.1).
    @ivar disposition: C{(type, [(name, value)])} (RFC 2183) or L{None}.
    @ivar language: list of language tags (RFC 3282) or L{None}.
    @ivar lines: number of lines of the body for text/* and message/rfc822,
        else L{None}.
    @ivar children: the parts of a multipart, or the one encapsulated message
        of a message/rfc822 part (a L{Part} starting at its header).
    @ivar renderedEnvelope: what the C{describeMessage} of L{parseMessage}
        made of the header fields of an encapsulated message (IMAP: its
        ENVELOPE), or L{None}.
    """

    __slots__ = (
        "start", "bodyStart", "end", "contentType", "mediaType", "rawParams",
        "encoding", "id", "description", "md5", "disposition", "language",
        "location", "lines", "children", "renderedEnvelope",
    )

    def __init__(self, start=0, bodyStart=0, end=0, contentType=TEXT_PLAIN,
                 mediaType=None, rawParams=(), encoding=None, id=None,
                 description=None, md5=None, disposition=None, language=None,
                 location=None, lines=None, children=(), renderedEnvelope=None):
        self.start = start
        self.bodyStart = bodyStart
        self.end = end
        self.contentType = contentType
        self.mediaType = contentType if mediaType is None else mediaType
        self.rawParams = list(rawParams)
        self.encoding = encoding
        self.id = id
        self.description = description
        self.md5 = md5
        self.disposition = disposition
        self.language = language
        self.location = location
        self.lines = lines
        self.children = list(children)
        self.renderedEnvelope = renderedEnvelope

    @property
    def params(self):
        """
        Content-Type parameters: C{[(name, value)]}, names lowercased, values
        as written (unquoted, RFC 2231 continuations joined and decoded).
        """
        return [(name.lower(), value) for name, value in self.rawParams]

    def __eq__(self, other):
        if not isinstance(other, Part):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None

    def __repr__(self):
        return "<Part %s/%s %d:%d:%d %d children>" % (
            self.contentType + (self.start, self.bodyStart, self.end, len(self.children)))


# --- structured header fields (RFC 2045, 2183, 2231, 3282) --------------------------

_COMMENT = r"\((?:[^()\\]|\\.|\((?:[^()\\]|\\.)*\))*\)"
_CFWS = re.compile(r"(?:[ \t\r\n]|%s)*" % (_COMMENT,), re.S)
_SEPARATORS = re.compile(r"(?:[ \t\r\n;]|%s)*" % (_COMMENT,), re.S)
_TOKEN = re.compile(r'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"?', re.S)
_BARE = re.compile(r'[^\x00-\x20\x7f;"(]+')
_JUNK = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|\((?:[^()\\]|\\.)*\)?|[^;"(])*', re.S)
_ESCAPE = re.compile(r"\\(.)", re.S)
_SECTION = re.compile(r"(\d{1,3})(\*?)\Z")


def _text(raw):
    return raw[:MAX_FIELD].decode("utf-8", "surrogateescape")


def _params(text, pos):
    """
    Parameters after C{pos} (RFC 2045 section 5.1, leniently): a parameter
    without C{=} or with an unparsable name is dropped, an unquoted value
    runs to white space or C{;}, junk up to the next C{;} is skipped.

    @return: C{[(name, value)]} with RFC 2231 parameters joined.
    """
    out = []
    n = len(text)
    while True:
        pos = _CFWS.match(text, pos).end()
        if pos >= n:
            break
        if text[pos] != ";":
            pos = max(_JUNK.match(text, pos).end(), pos + 1)
            continue
        pos = _SEPARATORS.match(text, pos + 1).end()
        name = _TOKEN.match(text, pos)
        if name is None:
            continue
        pos = _CFWS.match(text, name.end()).end()
        if not text.startswith("=", pos):
            continue
        pos = _CFWS.match(text, pos + 1).end()
        if text.startswith('"', pos):
            value = _QUOTED.match(text, pos)
            out.append((name.group(), _ESCAPE.sub(r"\1", value.group(1))))
        else:
            value = _BARE.match(text, pos)
            out.append((name.group(), value.group() if value else ""))
        pos = value.end() if value else pos
    if any("*" in name for name, _ in out):
        out = _joinContinuations(out)
    return out


def _decodeExtended(segments):
    """
    Join RFC 2231 segments C{[(value, extended)]} in order.

    @return: the decoded value, or L{None} when its charset is unknown or
        the octets are not in it.
    """
    charset = ""
    octets = []
    for i, (value, extended) in enumerate(segments):
        if extended:
            if i == 0 and value.count("'") >= 2:
                charset, _, value = value.partition("'")
                value = value.partition("'")[2]
            octets.append(unquote_to_bytes(encodeText(value)))
        else:
            octets.append(encodeText(value))
    try:
        return b"".join(octets).decode(charset or "utf-8")
    except (LookupError, UnicodeError, ValueError):
        return None


def _joinContinuations(raw):
    """
    Apply RFC 2231 sections 3 and 4: C{name*0}, C{name*1*}... are joined,
    C{name*} values decoded from their charset.  A parameter so built
    replaces a plain one of the same name; one that cannot be decoded stays
    as C{name*} with its joined raw value (as Dovecot sends it).
    """
    out = []
    groups = {}
    for name, value in raw:
        base, star, rest = name.partition("*")
        match = _SECTION.match(rest) if rest else None
        if not star or (rest and match is None):
            out.append((name, value))
            continue
        number, extended = (int(match.group(1)), bool(match.group(2))) if match else (0, True)
        key = base.lower()
        if key not in groups:
            groups[key] = (base, {})
            out.append((key, None))
        groups[key][1].setdefault(number, (value, extended))
    joined = []
    for name, value in out:
        if value is not None:
            if name.lower() not in groups:
                joined.append((name, value))
            continue
        base, segments = groups[name]
        ordered = [segments[k] for k in sorted(segments)]
        if any(extended for _, extended in ordered):
            decoded = _decodeExtended(ordered)
            if decoded is None:
                joined.append((base + "*", "".join(v for v, _ in ordered)))
                joined.extend((n, v) for n, v in raw if n.lower() == name)
                continue
            joined.append((base, decoded))
        else:
            joined.append((base, "".join(v for v, _ in ordered)))
    return joined


def _contentType(raw):
    """
    Parse a Content-Type value (RFC 2045 section 5.1).

    @return: C{(mediaType, params)}: C{mediaType} is C{(type, subtype)} as
        written or L{None} when unparsable; parameters are read either way.
    """
    text = _text(raw)
    pos = _CFWS.match(text).end()
    mediaType = None
    major = _TOKEN.match(text, pos)
    if major is not None:
        slash = _CFWS.match(text, major.end()).end()
        if text.startswith("/", slash):
            minor = _TOKEN.match(text, _CFWS.match(text, slash + 1).end())
            if minor is not None:
                mediaType = (major.group(), minor.group())
                pos = minor.end()
    return mediaType, _params(text, pos)


def _singleToken(raw):
    """
    @return: the one token of a field such as Content-Transfer-Encoding
        (RFC 2045 section 6.1) with comments around it, or L{None} when the
        field holds anything else (Dovecot then says 7bit).
    """
    text = _text(raw)
    token = _TOKEN.match(text, _CFWS.match(text).end())
    if token is None or _CFWS.match(text, token.end()).end() != len(text):
        return None
    return token.group()


def _disposition(raw):
    """
    @return: C{(type, params)} of a Content-Disposition (RFC 2183 section 2),
        or L{None} when it has no type.
    """
    text = _text(raw)
    token = _TOKEN.match(text, _CFWS.match(text).end())
    if token is None:
        return None
    return token.group(), _params(text, token.end())


def _languages(raw):
    """
    @return: the language tags of a Content-Language (RFC 3282 section 2),
        or L{None} when there are none; quoted strings and junk are skipped.
    """
    text = _text(raw).replace(",", ";")
    tags = []
    pos = 0
    while pos < len(text):
        tag = _TOKEN.match(text, _CFWS.match(text, pos).end())
        if tag is not None:
            tags.append(tag.group())
            pos = tag.end()
        pos = _JUNK.match(text, pos).end() + 1
    return tags or None


# --- the parser ----------------------------------------------------------------------

_HEADER_STOP = re.compile(rb"\n(?:\r?\n|--)")


class _Parser:
    """
    One pass over a message: entities are parsed in order, the boundaries of
    the enclosing multiparts kept on a stack.  A line starting with C{--} and
    an active boundary is a delimiter (RFC 2046 section 5.1.1: no other line
    may start so); the innermost multipart is matched first, as in Dovecot.

    Invariants: every octet is scanned for delimiters once, by the innermost
    open entity; offsets only move forward.
    """

    def __init__(self, data, describeMessage=None):
        self.data = data
        self.describeMessage = describeMessage
        self.stack = []      # [(boundary, shadowed level)]
        self.levels = {}     # boundary -> innermost level using it
        self.lengths = ()
        self.count = 0
        self.exhausted = False

    def _push(self, boundary):
        self.stack.append((boundary, self.levels.get(boundary)))
        self.levels[boundary] = len(self.stack) - 1
        self.lengths = sorted({len(b) for b, _ in self.stack})

    def _pop(self):
        boundary, shadowed = self.stack.pop()
        if shadowed is None:
            del self.levels[boundary]
        else:
            self.levels[boundary] = shadowed
        self.lengths = sorted({len(b) for b, _ in self.stack})

    def _match(self, line):
        """
        @return: C{(lineStart, level, close, afterLine)} if the line at
            C{line} is a delimiter, else L{None}.
        """
        data = self.data
        best = -1
        for length in self.lengths:
            level = self.levels.get(data[line + 2 : line + 2 + length])
            if level is not None and level > best:
                best, size = level, length
        if best < 0:
            return None
        close = data.startswith(b"--", line + 2 + size)
        newline = data.find(b"\n", line + 2 + size)
        return line, best, close, len(data) if newline < 0 else newline + 1

    def _next(self, pos):
        """
        @return: the next delimiter at or after C{pos} (see L{_match}), or
            L{None} for the end of the message.
        """
        if not self.stack or self.exhausted:
            return None
        data = self.data
        if data.startswith(b"--", pos) and (pos == 0 or data[pos - 1] == 10):
            event = self._match(pos)
            if event is not None:
                return event
        while True:
            found = data.find(b"\n--", pos)
            if found < 0:
                return None
            event = self._match(found + 1)
            if event is not None:
                return event
            pos = found + 1

    def _before(self, event, floor):
        """
        @return: where an entity ends that is followed by C{event}: before
            the line break preceding the delimiter, at least C{floor}.
        """
        if event is None:
            return len(self.data)
        end = event[0]
        if end > 0 and self.data[end - 1] == 10:
            end -= 1
            if end > 0 and self.data[end - 1] == 13:
                end -= 1
        return max(end, floor)

    def _headerEnd(self, start):
        """
        @return: C{(bodyStart, cut)}: where the body of the entity at
            C{start} begins, after the empty line, and whether a delimiter
            cut the header short instead (the body is then empty).
        """
        if not self.stack or self.exhausted:
            return headerEnd(self.data, start), False
        data = self.data
        if data.startswith(b"\n", start) or data.startswith(b"\r\n", start):
            return headerEnd(data, start), False
        if data.startswith(b"--", start) and self._match(start) is not None:
            return start, True
        limit = min(len(data), start + MAX_HEADER)
        pos = start
        while True:
            stop = _HEADER_STOP.search(data, pos, limit)
            if stop is None:
                return limit, False
            if stop.end() - stop.start() == 3 and data[stop.end() - 1] == 45:
                event = self._match(stop.start() + 1)
                if event is not None:
                    return self._before(event, start), True
                pos = stop.start() + 1
                continue
            return stop.end(), False

    def entity(self, start, depth, default, message):
        """
        Parse the entity at C{start} and whatever it contains.

        @param default: its type when it has no Content-Type (RFC 2046
            section 5.1.5 for multipart/digest).
        @param message: whether it is an encapsulated message (given to
            C{describeMessage}).
        @return: C{(part, event)}, C{event} being the delimiter that ended
            it (L{None} at the end of the message).
        """
        self.count += 1
        data = self.data
        bodyStart, cut = self._headerEnd(start)
        fields = parseFields(data[start:bodyStart]) if bodyStart > start else []
        part = Part(start, bodyStart, bodyStart, default)
        boundary = _describe(part, fields)
        if message and self.describeMessage is not None:
            part.renderedEnvelope = self.describeMessage(fields)
        major = part.contentType[0]
        if major == "multipart" or part.contentType == MESSAGE_RFC822:
            if depth + 1 >= MAX_DEPTH or self.count >= MAX_PARTS:
                part.contentType = part.mediaType = OCTET_STREAM
            elif major == "multipart":
                return part, self._multipart(part, boundary, depth)
            elif cut:
                self.count += 1
                empty = Part(bodyStart, bodyStart, bodyStart, lines=0)
                if self.describeMessage is not None:
                    empty.renderedEnvelope = self.describeMessage([])
                part.children = [empty]
                part.lines = 0
                return part, self._next(bodyStart)
            else:
                child, event = self.entity(bodyStart, depth + 1, TEXT_PLAIN, True)
                part.children = [child]
                part.end = child.end
                part.lines = data.count(b"\n", bodyStart, part.end)
                return part, event
        event = self._next(bodyStart)
        part.end = self._before(event, bodyStart)
        if part.contentType[0] == "text":
            part.lines = data.count(b"\n", bodyStart, part.end)
        return part, event

    def _multipart(self, part, boundary, depth):
        """
        Parse the body of a multipart (RFC 2046 section 5.1.1): preamble,
        parts, close delimiter, epilogue.  One without a boundary or without
        any part gets a single headerless text/plain part of its whole body,
        so nothing is hidden (Dovecot shows an empty one).

        @return: the event that ended it.
        """
        children = []
        if boundary is None:
            event = self._next(part.bodyStart)
        else:
            self._push(boundary)
            level = len(self.stack) - 1
            default = MESSAGE_RFC822 if part.contentType[1] == "digest" else TEXT_PLAIN
            event = self._next(part.bodyStart)
            while event is not None and event[1] == level and not event[2]:
                if self.count >= MAX_PARTS:
                    self.exhausted = True
                    event = None
                    break
                child, event = self.entity(event[3], depth + 1, default, False)
                children.append(child)
            self._pop()
            if event is not None and event[1] == level:
                event = self._next(event[3])
        part.end = self._before(event, part.bodyStart)
        if not children:
            self.count += 1
            lines = self.data.count(b"\n", part.bodyStart, part.end)
            children.append(Part(part.bodyStart, part.bodyStart, part.end, lines=lines))
        part.children = children
        return event


def _describe(part, fields):
    """
    Set the Content-* values of C{part} from its header fields (the first
    of each name counts).

    @return: the multipart boundary as L{bytes}, or L{None}.
    """
    seen = {}
    for name, raw in fields:
        key = name.lower()
        if key.startswith("content-") and key not in seen:
            seen[key] = raw
    raw = seen.get("content-type")
    if raw is not None:
        mediaType, part.rawParams = _contentType(raw)
        if mediaType is None:
            part.contentType = part.mediaType = TEXT_PLAIN
        else:
            part.mediaType = mediaType
            part.contentType = (mediaType[0].lower(), mediaType[1].lower())
    raw = seen.get("content-transfer-encoding")
    if raw is not None:
        part.encoding = _singleToken(raw)
    for key, attribute in _VERBATIM:
        raw = seen.get(key)
        if raw is not None:
            setattr(part, attribute, _text(raw))
    raw = seen.get("content-disposition")
    if raw is not None:
        part.disposition = _disposition(raw)
    raw = seen.get("content-language")
    if raw is not None:
        part.language = _languages(raw)
    if part.contentType[0] != "multipart":
        return None
    for name, value in part.rawParams:
        if name.lower() == "boundary" and value:
            return encodeText(value)
    return None


_VERBATIM = (
    ("content-id", "id"),
    ("content-description", "description"),
    ("content-md5", "md5"),
    ("content-location", "location"),
)


def parseMessage(data, describeMessage=None):
    """
    Parse the MIME structure of a message (RFC 2045, RFC 2046).

    Never raises: whatever cannot be parsed is read as text/plain.

    @type data: L{bytes}
    @param describeMessage: L{None}, or a callable given the header fields
        (as L{mdpy.mail.headers.parseFields} gives them) of every
        encapsulated message; what it returns is kept as the
        L{Part.renderedEnvelope} of that message.
    @rtype: L{Part}
    """
    data = bytes(data)
    try:
        return _Parser(data, describeMessage).entity(0, 0, TEXT_PLAIN, False)[0]
    except Exception:
        bodyStart = headerEnd(data)
        return Part(0, bodyStart, len(data), lines=data.count(b"\n", bodyStart))

# --- content transfer encodings (RFC 2045 section 6) -----------------------------------------

IDENTITY_ENCODINGS = frozenset(["7bit", "8bit", "binary"])
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_LINE = re.compile(rb"([^\r\n]*)(\r?\n|\r(?!\n)|\Z)")
_BASE64_LINE = 76


class UnknownEncoding(ValueError):
    """
    A Content-Transfer-Encoding this module cannot decode (IMAP answers
    C{[UNKNOWN-CTE]}, RFC 3516 section 4.3).
    """


def decodeTransfer(body, encoding):
    """
    Decode a body from its Content-Transfer-Encoding, leniently: in base64
    what is not of the alphabet is skipped (RFC 2045 section 6.8); in
    quoted-printable the white space ending a line is dropped, C{=} ending
    one (white space after it allowed) joins it to the next, and an C{=}
    not followed by two hex digits is kept as it is (section 6.7).

    @param encoding: the field's token, or L{None} (7bit).
    @return: the decoded octets.
    @raise UnknownEncoding: neither an identity encoding, base64 nor
        quoted-printable.
    """
    encoding = (encoding or "7bit").strip().lower()
    if encoding in IDENTITY_ENCODINGS:
        return body
    if encoding == "base64":
        compact = _NOT_BASE64.sub(b"", body)
        if len(compact) % 4 == 1:
            compact = compact[:-1]
        try:
            return base64.b64decode(compact + b"=" * (-len(compact) % 4))
        except (ValueError, binascii.Error):
            return b""
    if encoding == "quoted-printable":
        out = []
        for match in _LINE.finditer(body):
            text, ending = match.groups()
            if not text and not ending:
                break
            text = text.rstrip(b" \t")
            soft = text.endswith(b"=")
            out.append(binascii.a2b_qp(text[:-1] if soft else text))
            if not soft:
                out.append(ending)
        return b"".join(out)
    raise UnknownEncoding(encoding)


def binaryAsBase64(data, root):
    """
    Rewrite the leaf parts of a message whose Content-Transfer-Encoding is
    C{binary} as base64 (RFC 3516 section 4.4: a message appended as
    binary is kept in a form every IMAP client can fetch), the other
    octets left as they are.

    @param root: the message's L{Part} (L{parseMessage} of C{data}).
    @return: the new octets, or C{data} itself when no part is binary.
    """
    pieces, pos = [], 0
    stack = [root]
    while stack:
        part = stack.pop()
        if part.children:
            stack.extend(reversed(part.children))
            continue
        if (part.encoding or "").strip().lower() != "binary":
            continue
        header = data[part.start : part.bodyStart]
        fields = splitFields(header)
        kept = [
            header[start:end] for name, start, end in fields
            if name is None or name.strip().lower() != b"content-transfer-encoding"
        ]
        rest = header[fields[-1][2]:] if fields else header
        encoded = base64.b64encode(data[part.bodyStart : part.end])
        lines = [encoded[i : i + _BASE64_LINE] for i in range(0, len(encoded), _BASE64_LINE)]
        pieces += [
            data[pos : part.start], b"".join(kept), b"Content-Transfer-Encoding: base64\r\n", rest,
            b"\r\n".join(lines), b"\r\n" if part.end == len(data) and lines else b"",
        ]
        pos = part.end
    if not pieces:
        return data
    pieces.append(data[pos:])
    return b"".join(pieces)


# --- the cache -----------------------------------------------------------------------------


def _dump(part):
    return [
        part.start, part.bodyStart, part.end, list(part.contentType),
        list(part.mediaType), [list(p) for p in part.rawParams], part.encoding,
        part.id, part.description, part.md5,
        None if part.disposition is None else [part.disposition[0], [list(p) for p in part.disposition[1]]],
        part.language, part.location, part.lines,
        None if part.renderedEnvelope is None else part.renderedEnvelope.decode("latin-1"),
        [_dump(child) for child in part.children],
    ]


def toCache(part):
    """
    @return: C{part} and all it contains as compact bytes (JSON) for
        L{fromCache}.
    """
    return json.dumps([_CACHE_VERSION, _dump(part)], separators=(",", ":")).encode("ascii")


def _check(condition):
    if not condition:
        raise ValueError("corrupt MIME structure cache entry")


def _strings(value, size=None):
    _check(isinstance(value, list) and (size is None or len(value) == size))
    _check(all(isinstance(v, str) for v in value))
    return tuple(value)


def _optional(value):
    _check(value is None or isinstance(value, str))
    return value


def _pairs(value):
    _check(isinstance(value, list))
    return [_strings(pair, 2) for pair in value]


def _load(item, depth, count):
    _check(isinstance(item, list) and len(item) == 16 and depth <= MAX_DEPTH)
    count[0] += 1
    _check(count[0] <= MAX_PARTS + 1)
    (start, bodyStart, end, contentType, mediaType, params, encoding, id_,
     description, md5, disposition, language, location, lines, rendered, children) = item
    for offset in (start, bodyStart, end):
        _check(type(offset) is int and offset >= 0)
    _check(start <= bodyStart <= end)
    _check(lines is None or (type(lines) is int and lines >= 0))
    if disposition is not None:
        _check(isinstance(disposition, list) and len(disposition) == 2 and isinstance(disposition[0], str))
        disposition = (disposition[0], _pairs(disposition[1]))
    if language is not None:
        language = list(_strings(language))
    if rendered is not None:
        _check(isinstance(rendered, str))
        rendered = rendered.encode("latin-1")
    _check(isinstance(children, list))
    return Part(
        start, bodyStart, end, _strings(contentType, 2), _strings(mediaType, 2),
        _pairs(params), _optional(encoding), _optional(id_), _optional(description),
        _optional(md5), disposition, language, _optional(location), lines,
        [_load(child, depth + 1, count) for child in children], rendered,
    )


def fromCache(blob):
    """
    @return: the L{Part} that L{toCache} gave C{blob} for.
    @raise ValueError: C{blob} is not such an entry (corrupted or of
        another version).
    """
    try:
        version, tree = json.loads(blob)
        _check(version == _CACHE_VERSION)
        return _load(tree, 0, [0])
    except ValueError:
        raise
    except (TypeError, RecursionError, UnicodeError) as e:
        raise ValueError("corrupt MIME structure cache entry: %s" % (e,)) from e
