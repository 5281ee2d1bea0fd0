# -*- test-case-name: tests.test_imap_server -*-
"""
FETCH (RFC 3501 section 6.4.5 and 7.4.2): which data items a client asked
for, and the octets of each item for one message.

Body sections are served from byte ranges of the message found by its
MIME structure (L{mdpy.mail.mime}), which is computed once per message and
cached (L{StructureCache}), never per FETCH.  The header blocks of the
messages used most recently are kept in memory too (L{HeaderCache}), so a
FETCH of header fields, as clients list a folder with, reads no file.

BINARY sections (RFC 3516) are the same byte ranges decoded from their
Content-Transfer-Encoding by L{mdpy.mail.mime.decodeTransfer}.

Messages with bare LF line endings (copied in by another program) are
served with CR LF, so every section's size agrees with C{RFC822.SIZE}.
NUL octets, which may have come in by SMTP, are served as 0x80, as Dovecot
does: RFC 3501 section 9 allows no NUL in a literal (C{CHAR8}), and the
octet count stays the same.  The stored message is left as it is.
"""

from collections import OrderedDict

from mdpy.errors import NotFound
from mdpy.interfaces import IMessageCache
from mdpy.imap.structure import bodyStructure, encapsulated, envelope, findSection, parseStructure
from mdpy.mail import mime
from mdpy.mail.headers import MAX_HEADER, headerEnd, splitFields
from mdpy.imap.parser import Atom, ParseError, astring, formatDateTime, tokenize

_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE = frozenset(
    ["FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE",
     "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ"]
)
_NEED_STRUCTURE = frozenset(["ENVELOPE", "BODY", "BODYSTRUCTURE"])
_NEED_CONTENT = frozenset(["RFC822", "RFC822.HEADER", "RFC822.TEXT"])
_HEADER_SECTIONS = frozenset(["HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"])
# The octets of header blocks kept in memory per process (L{HeaderCache}):
# those of a few thousand messages.
HEADER_CACHE_OCTETS = 4 * 1024 * 1024
# What an item of a message expunged meanwhile is answered with when its
# data is gone with the message: Dovecot's values (imap-fetch.c), which
# clients such as imaptest know for what they are.  Body sections are NIL.
_BODY_NIL = b'"text" "plain" NIL NIL NIL "7bit" 0 0'
_EXPUNGED_ITEMS = {
    "INTERNALDATE": b'"01-Jan-1970 00:00:00 +0000"',
    "RFC822.SIZE": b"0",
    "ENVELOPE": b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
    "BODY": b"(" + _BODY_NIL + b")",
    "BODYSTRUCTURE": b"(" + _BODY_NIL + b" NIL NIL NIL NIL)",
    "RFC822": b"NIL",
    "RFC822.HEADER": b"NIL",
    "RFC822.TEXT": b"NIL",
}


class Section:
    """
    One C{BODY[...]<...>} item.

    @ivar path: the part numbers (C{[1, 2]} for C{1.2}).
    @ivar text: C{""}, C{"HEADER"}, C{"HEADER.FIELDS"}, C{"HEADER.FIELDS.NOT"},
        C{"TEXT"} or C{"MIME"}.
    @ivar fields: the header field names of C{HEADER.FIELDS[.NOT]}.
    @ivar partial: C{(origin, count)} or L{None}.
    @ivar peek: whether C{\\Seen} is left alone.
    @ivar label: the item's name in the response, without C{<...>}.
    """

    def __init__(self, path, text, fields, partial, peek, label):
        self.path = path
        self.text = text
        self.fields = fields
        self.partial = partial
        self.peek = peek
        self.label = label


class FetchRequest:
    """
    The data items of one FETCH.

    @ivar items: the simple item names, in order (C{FLAGS}, C{UID}, ...).
    @ivar sections: the L{Section}s.
    @ivar setsSeen: whether serving it sets C{\\Seen} (a non-PEEK body
        section, C{RFC822} or C{RFC822.TEXT}).
    @ivar needsContent: whether the message's octets are read.
    @ivar needsStructure: whether its MIME structure is needed.
    @ivar headerOnly: whether, of the message's octets, only its header
        block is needed (C{RFC822.HEADER}, C{BODY[HEADER]},
        C{BODY[HEADER.FIELDS (...)]}, C{BODY[HEADER.FIELDS.NOT (...)]}),
        which L{StructureCache.inMemory} may hold.
    """

    def __init__(self, items, sections):
        self.items = items
        self.sections = sections
        self.setsSeen = any(not s.peek for s in sections) or bool(
            {"RFC822", "RFC822.TEXT"} & set(items)
        )
        self.needsContent = bool(sections) or bool(_NEED_CONTENT & set(items))
        self.needsStructure = bool(_NEED_STRUCTURE & set(items)) or any(
            s.path or s.text not in ("", "HEADER") for s in sections
        )
        self.headerOnly = self.needsContent and _NEED_CONTENT & set(items) <= {"RFC822.HEADER"} and all(
            not s.path and s.text in _HEADER_SECTIONS for s in sections
        )

    def ensure(self, name):
        """
        Add a simple item if missing (C{UID} for UID FETCH, C{FLAGS} after
        \\Seen was set, C{MODSEQ} with CONDSTORE).
        """
        if name not in self.items:
            self.items.append(name)


def parseFetchItems(token):
    """
    @param token: a macro atom, one item atom, or a list of item atoms.
    @return: a L{FetchRequest}.
    @raise ParseError: an unknown or malformed item.
    """
    if isinstance(token, Atom) and token.upper() in _MACROS:
        return FetchRequest(list(_MACROS[token.upper()]), [])
    tokens = token if isinstance(token, list) else [token]
    if not tokens:
        raise ParseError("Empty FETCH item list")
    items, sections = [], []
    for item in tokens:
        if not isinstance(item, Atom):
            raise ParseError("Invalid FETCH item")
        upper = item.upper()
        if "[" in item:
            sections.append(_parseSection(item))
        elif upper in _SIMPLE:
            if upper not in items:
                items.append(upper)
        else:
            raise ParseError("Unknown FETCH item %s" % (item[:40],))
    return FetchRequest(items, sections)


def _parseSection(item):
    head, _, rest = item.partition("[")
    head = head.upper()
    if head in _BINARY_ITEMS:
        return _parseBinarySection(head, rest)
    if head not in ("BODY", "BODY.PEEK"):
        raise ParseError("Invalid FETCH item")
    close = rest.rfind("]")
    if close < 0:
        raise ParseError("Missing ']'")
    spec, tail = rest[:close], rest[close + 1 :]
    partial = _parsePartial(tail)
    path, text, fields = _parseSectionSpec(spec)
    label = "BODY[%s]" % (spec,)
    if text.startswith("HEADER.FIELDS"):
        prefix = ".".join(str(n) for n in path)
        label = "BODY[%s%s (%s)]" % (
            prefix + "." if prefix else "",
            text,
            " ".join(f.decode("utf-8", "replace") for f in fields),
        )
    return Section(path, text, fields, partial, head == "BODY.PEEK", label)


def _parsePartial(tail):
    """
    @return: C{(origin, count)} of a C{<origin.count>} (RFC 3501 section
        6.4.5), or L{None} for C{""}.
    """
    if not tail:
        return None
    if not (tail.startswith("<") and tail.endswith(">")):
        raise ParseError("Invalid partial")
    origin, dot, count = tail[1:-1].partition(".")
    if not dot or not origin.isdigit() or not count.isdigit() or not origin.isascii() or not count.isascii():
        raise ParseError("Invalid partial")
    if int(count) == 0:
        raise ParseError("Invalid partial")
    return int(origin), int(count)


def _parseSectionSpec(spec):
    """
    @return: C{(path, text, fields)} of an RFC 3501 C{section-spec}.
    """
    if not spec:
        return [], "", ()
    head, space, listText = spec.partition(" ")
    path = []
    levels = head.split(".")
    while levels and levels[0].isdigit() and levels[0].isascii():
        value = int(levels.pop(0))
        if value == 0 or len(path) >= 100:
            raise ParseError("Invalid section")
        path.append(value)
    text = ".".join(levels).upper()
    if text not in ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
        raise ParseError("Invalid section")
    if text == "MIME" and not path:
        raise ParseError("MIME needs a part number")
    fields = ()
    if text.startswith("HEADER.FIELDS"):
        if not space:
            raise ParseError("Missing header field list")
        tokens = tokenize([listText.encode("utf-8")], maxDepth=1)
        if len(tokens) != 1 or not isinstance(tokens[0], list) or not tokens[0]:
            raise ParseError("Invalid header field list")
        fields = tuple(astring(t) for t in tokens[0])
    elif space:
        raise ParseError("Invalid section")
    return path, text, fields


# --- BINARY (RFC 3516) ------------------------------------------------------

_BINARY_ITEMS = frozenset(["BINARY", "BINARY.PEEK", "BINARY.SIZE"])


class BinarySection(Section):
    """
    One C{BINARY[part]<...>}, C{BINARY.PEEK[part]<...>} or
    C{BINARY.SIZE[part]} item (RFC 3516 section 4.2): a part's body decoded
    from its Content-Transfer-Encoding, or its decoded size.

    @ivar sizeOnly: whether only the decoded size is asked (C{BINARY.SIZE}).
    """

    def __init__(self, path, partial, peek, label, sizeOnly):
        Section.__init__(self, path, "", (), partial, peek, label)
        self.sizeOnly = sizeOnly


def _parseBinarySection(head, rest):
    """
    @param rest: what follows the C{[} of the item.
    @return: the L{BinarySection} of C{section-binary} (RFC 3516 section
        5: part numbers only), after C{head} (C{BINARY}, C{BINARY.PEEK} or
        C{BINARY.SIZE}).
    """
    spec, close, tail = rest.partition("]")
    if not close:
        raise ParseError("Missing ']'")
    path, text, _ = _parseSectionSpec(spec)
    if text:
        raise ParseError("Invalid BINARY section")
    sizeOnly = head == "BINARY.SIZE"
    partial = _parsePartial(tail)
    if sizeOnly and partial is not None:
        raise ParseError("Invalid BINARY.SIZE item")
    label = "%s[%s]" % ("BINARY.SIZE" if sizeOnly else "BINARY", spec)
    return BinarySection(path, partial, head != "BINARY", label, sizeOnly)


def binaryData(section, data, structure):
    """
    @return: the octets of a L{BinarySection} before C{<partial>}: the
        whole message as it is for C{BINARY[]}, else the part's body
        decoded (L{mdpy.mail.mime.decodeTransfer}); L{None} when the part
        does not exist.
    @raise mdpy.mail.mime.UnknownEncoding: the part's encoding is unknown
        (RFC 3516 section 4.3, C{[UNKNOWN-CTE]}).
    """
    if not section.path:
        return data
    part = findSection(structure.root, section.path)
    if part is None:
        return None
    return mime.decodeTransfer(data[part.bodyStart : part.end], part.encoding)


def _renderBinary(section, data, structure):
    """
    @return: C{BINARY[part]<origin> literal} or C{BINARY.SIZE[part] n}; a
        body holding NUL goes as a binary literal C{~{n}} (RFC 3516
        section 4.2).
    """
    octets = binaryData(section, data, structure)
    label = section.label.encode("utf-8")
    if section.sizeOnly:
        return label + b" %d" % (len(octets or b""),)
    if section.partial is not None:
        origin, count = section.partial
        octets = (octets or b"")[origin : origin + count]
        label += b"<%d>" % (origin,)
    if not octets:
        return label + b' ""'
    if b"\x00" in octets:
        return label + b" ~{%d}\r\n%s" % (len(octets), octets)
    return label + b" {%d}\r\n%s" % (len(octets), octets)


# --- structure cache --------------------------------------------------------


class Structure:
    """
    What FETCH needs of a message's MIME structure, computed once.
    """

    __slots__ = ("root", "bodyStructure", "body", "envelope", "_headerFields")

    def __init__(self, root, data):
        self.root = root
        self.bodyStructure = bodyStructure(root, True)
        self.body = bodyStructure(root, False)
        self.envelope = envelope(root, data)
        self._headerFields = None

    def headerFields(self, block):
        """
        @param block: the message's header block (its octets up to the
            body).
        @return: L{namedFields} of C{block}, split once per message.
        """
        if self._headerFields is None:
            self._headerFields = namedFields(block)
        return self._headerFields


class HeaderCache:
    """
    The header blocks of messages (their octets up to the body, as
    L{sectionData} serves them) by message key, the most recently used
    first.  A key names unchanging content in the whole store, so an entry
    is never stale.

    Invariants: C{size}, the octets of the blocks held plus
    L{ENTRY_OVERHEAD} for each, never exceeds C{limit}; the least recently
    used blocks are dropped first, and a block alone larger than C{limit}
    is not kept.

    @ivar limit: the octets that may be held.
    @ivar size: the octets held.
    """

    # What an entry costs beyond its octets: the bytes object, its key,
    # its place in the ordered dict.
    ENTRY_OVERHEAD = 160

    def __init__(self, limit=HEADER_CACHE_OCTETS):
        self.limit = limit
        self.size = 0
        self._blocks = OrderedDict()

    def __len__(self):
        return len(self._blocks)

    def get(self, key):
        """
        @return: the header block of the message C{key} names, or L{None}
            when it is not held.
        """
        block = self._blocks.get(key)
        if block is not None:
            self._blocks.move_to_end(key)
        return block

    def keep(self, key, data, end):
        """
        Hold C{data[:end]}, the header block of the message C{key} names
        (whose octets are C{data}), dropping the least recently used
        blocks past the limit.
        """
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return
        if end + self.ENTRY_OVERHEAD > self.limit:
            return
        block = self._blocks[key] = data[:end]
        self.size += len(block) + self.ENTRY_OVERHEAD
        while self.size > self.limit:
            _, dropped = self._blocks.popitem(last=False)
            self.size -= len(dropped) + self.ENTRY_OVERHEAD


class StructureCache:
    """
    Structures by message key (keys are unique in the whole store): the
    most recently used in memory (past C{size} entries the oldest are
    dropped), and every one in the mailbox's own cache when it provides
    L{IMessageCache}, so a restart does not parse every message again.
    The header blocks of the messages whose structure was asked last are
    held too, in a L{HeaderCache} of C{headerOctets}.

    @ivar headers: the L{HeaderCache}.
    """

    def __init__(self, size=20000, headerOctets=HEADER_CACHE_OCTETS):
        self._size = size
        self._entries = OrderedDict()
        self.headers = HeaderCache(headerOctets)

    def inMemory(self, message):
        """
        @return: C{(header, structure)}: the header block of C{message} and
            its L{Structure} if both are in memory, so that what
            L{FetchRequest.headerOnly} asks is answered without reading
            the message; else L{None}.  L{renderItems} serves those items
            from C{header} as from the whole message.
        """
        header = self.headers.get(message.key)
        if header is None:
            return None
        structure = self.cached(message)
        if structure is None:
            return None
        return header, structure

    def cached(self, message):
        """
        @return: the L{Structure} of C{message} if it is in memory, so its
            octets need not be read; else L{None}.
        """
        entry = self._entries.get(message.key)
        if entry is not None:
            self._entries.move_to_end(message.key)
        return entry

    def get(self, message, data, mailbox=None):
        """
        @return: the L{Structure} of C{message}, whose (normalised) octets are
            C{data}, in C{mailbox}; its header block is held in L{headers}.
        """
        entry = self.cached(message)
        if entry is None:
            entry = self._parse(message, data, mailbox)
        self.headers.keep(message.key, data, entry.root.bodyStart)
        return entry

    def _parse(self, message, data, mailbox):
        """
        @return: the L{Structure} of C{message} from the mailbox's cache,
            else parsed from C{data}, now held in memory.
        """
        key = message.key
        root = None
        persistent = IMessageCache(mailbox, None)
        if persistent is not None:
            blob = persistent.cachedData(key)
            if blob is not None:
                try:
                    root = mime.fromCache(blob)
                except ValueError:
                    root = None
        if root is None:
            root = parseStructure(data)
            if persistent is not None:
                persistent.cacheData(key, mime.toCache(root))
        entry = self._entries[key] = Structure(root, data)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return entry


# --- rendering ----------------------------------------------------------------


def _literal(data):
    """
    @return: C{data} as an IMAP literal, each NUL sent as 0x80 (RFC 3501
        section 9: C{literal} is made of C{CHAR8}, which excludes NUL).
    """
    if b"\x00" in data:
        data = data.replace(b"\x00", b"\x80")
    return b"{%d}\r\n%s" % (len(data), data)


def namedFields(block):
    """
    @return: the fields of a header block (its first L{MAX_HEADER} octets)
        as C{(name, start, end)}: C{name} stripped and lower-cased, L{None}
        for a line that is no field (see L{splitFields}).
    """
    return [
        (None if name is None else name.strip().lower(), start, end)
        for name, start, end in splitFields(block[:MAX_HEADER])
    ]


def _filterHeader(block, fields, negate, named=None):
    """
    @param named: L{namedFields} of C{block} if known.
    @return: the fields of a header block named in C{fields} (or, with
        C{negate}, those not named), as written, and the empty line
        (RFC 3501 section 6.4.5: C{HEADER.FIELDS}, C{HEADER.FIELDS.NOT}).
    """
    wanted = {f.lower() for f in fields}
    if named is None:
        named = namedFields(block)
    kept = [block[start:end] for name, start, end in named if (name is not None and name in wanted) != negate]
    return b"".join(kept) + b"\r\n"


def sectionData(section, data, structure):
    """
    @return: the octets of C{section} of a message (before C{<partial>}),
        or L{None} when the part does not exist (RFC 3501: an empty string
        is sent).
    """
    if not section.path:
        entity = structure.root if structure is not None else None
        if section.text == "":
            return data
        if entity is None:
            bodyStart, start, end = headerEnd(data), 0, len(data)
        else:
            bodyStart, start, end = entity.bodyStart, entity.start, entity.end
    else:
        part = findSection(structure.root, section.path)
        if part is None:
            return None
        if section.text == "":
            return data[part.bodyStart : part.end]
        if section.text == "MIME":
            return data[part.start : part.bodyStart]
        entity = encapsulated(part)
        if entity is None:
            return None
        bodyStart, start, end = entity.bodyStart, entity.start, entity.end
    if section.text == "TEXT":
        return data[bodyStart:end]
    block = data[start:bodyStart]
    if section.text == "HEADER":
        return block
    named = None
    if not section.path and structure is not None:
        named = structure.headerFields(block)
    return _filterHeader(block, section.fields, section.text == "HEADER.FIELDS.NOT", named)


def _responseName(section):
    """
    @return: the name of C{section} in a FETCH response: its label, and
        C{<origin>} for a partial fetch.
    """
    name = section.label.encode("utf-8")
    if section.partial is not None:
        name += b"<%d>" % (section.partial[0],)
    return name


def renderSection(section, data, structure):
    """
    @return: C{label<origin> literal} for one section.
    """
    if isinstance(section, BinarySection):
        return _renderBinary(section, data, structure)
    octets = sectionData(section, data, structure)
    name = _responseName(section)
    if octets is None:
        # RFC 3501 section 6.4.5: a part that does not exist is empty.
        return name + b' ""'
    if section.partial is not None:
        origin, count = section.partial
        octets = octets[origin : origin + count]
    return name + b" " + _literal(octets)


# Flag sets as sent, by (flags, recent): a folder has few distinct ones.
_formattedFlags = {}
_FORMATTED_FLAGS_KEPT = 4096


def formatFlags(flags, recent=False):
    """
    @return: C{(\\Seen kw)} for a flag set (C{\\Recent} added if asked).
    """
    try:
        return _formattedFlags[flags, recent]
    except KeyError:
        pass
    except TypeError:  # a mutable set
        flags = frozenset(flags)
    names = sorted(flags)
    if recent:
        names.append("\\Recent")
    formatted = b"(" + " ".join(names).encode("utf-8") + b")"
    if len(_formattedFlags) >= _FORMATTED_FLAGS_KEPT:
        _formattedFlags.clear()
    _formattedFlags[flags, recent] = formatted
    return formatted


def _available(name, message, data, structure):
    """
    @return: whether item C{name} of C{message} can be served: not when
        the message was expunged meanwhile and the octets, structure or
        file the item comes from are gone with it.
    """
    if name in _NEED_STRUCTURE:
        return structure is not None
    if name in _NEED_CONTENT:
        return data is not None
    try:
        message.internalDate if name == "INTERNALDATE" else message.size
    except (NotFound, OSError):
        return False
    return True


def renderItems(request, message, flags, recent, data, structure, lost=None):
    """
    Render the items of one message.  Of a message expunged meanwhile
    (RFC 2180 section 4.1.3) what is still known is served, and each item
    whose data is gone is answered with Dovecot's value for it (NIL for a
    body section).

    @param data: the octets of the message, when C{request} needs them;
        L{None} if they are gone.
    @param structure: its L{Structure}, when C{request} needs it; L{None}
        if it is gone.
    @param lost: a list the name of each item answered so is added to.
    @return: the parenthesised items of one C{* n FETCH} response, without
        the C{* n FETCH } prefix and the CR LF.
    """
    out = []
    for name in request.items:
        nil = _EXPUNGED_ITEMS.get(name)
        if nil is not None and not _available(name, message, data, structure):
            out.append(name.encode("ascii") + b" " + nil)
            if lost is not None:
                lost.append(name)
        elif name == "UID":
            out.append(b"UID %d" % (message.uid,))
        elif name == "FLAGS":
            out.append(b"FLAGS " + formatFlags(flags, recent))
        elif name == "INTERNALDATE":
            out.append(b"INTERNALDATE " + formatDateTime(message.internalDate))
        elif name == "RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % (message.size,))
        elif name == "MODSEQ":
            out.append(b"MODSEQ (%d)" % (message.modSeq,))
        elif name == "ENVELOPE":
            out.append(b"ENVELOPE " + structure.envelope)
        elif name == "BODYSTRUCTURE":
            out.append(b"BODYSTRUCTURE " + structure.bodyStructure)
        elif name == "BODY":
            out.append(b"BODY " + structure.body)
        elif name == "RFC822":
            out.append(b"RFC822 " + _literal(data))
        elif name == "RFC822.HEADER":
            end = structure.root.bodyStart if structure is not None else headerEnd(data)
            out.append(b"RFC822.HEADER " + _literal(data[:end]))
        elif name == "RFC822.TEXT":
            start = structure.root.bodyStart if structure is not None else headerEnd(data)
            out.append(b"RFC822.TEXT " + _literal(data[start:]))
    for section in request.sections:
        if data is None:
            out.append(_responseName(section) + b" NIL")
            if lost is not None:
                lost.append(section.label)
        else:
            out.append(renderSection(section, data, structure))
    return b"(" + b" ".join(out) + b")"

