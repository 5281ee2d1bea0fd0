# -*- test-case-name: tests.test_imap_sort -*-
"""
SORT (RFC 5256 section 3), its ESORT return options (RFC 5267 sections 3.1
and 3.2) and the DISPLAYFROM and DISPLAYTO keys of SORT=DISPLAY (RFC 5957):
what a message is sorted by, and the order of a set of messages.

This module does no I/O.  The header fields sorting and threading look at
are read once per message into L{SortFields} and kept in a
L{SortFieldCache} (shared by the sessions), so sorting a mailbox again
reads no message; L{parseSortCommand} reads a command, L{sortMessages}
orders the messages a search matched and L{formatSortResponse} writes the
reply.

Strings are compared by the C{i18n;unicode-casemap} collation (RFC 5051,
L{collationKey}); messages equal under every key stay in mailbox order
(RFC 5256 section 3), C{REVERSE} included.

Limits (hardening): only the first L{MAX_SUBJECT} octets of a subject are
read, and of a C{References:} field only the first and the last
L{MAX_REFERENCES} identifiers are kept (RFC 5322 section 3.6.4 has a long
one cut the same way).
"""

import email.utils
import re
import unicodedata
from collections import OrderedDict

from mdpy.imap.parser import Atom, ParseError, formatSequence, isAtom
from mdpy.imap.partial import formatPartial
from mdpy.imap.search import parseSearchCommand
from mdpy.mail.addresslist import MISSING_DOMAIN, MISSING_MAILBOX, parseAddressList
from mdpy.mail.headers import decodeText, fieldValue, headerEnd, parseDateField, parseFields

# Hardening: what is read of a Subject field, and how many message
# identifiers of a References field are kept (the first and the last).
MAX_SUBJECT = 2048
MAX_REFERENCES = 100

SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")


# --- collation and base subject (RFC 5051, RFC 5256 section 2.1) ---------------------


def collationKey(text):
    """
    The C{i18n;unicode-casemap} collation (RFC 5051 section 2): each
    character mapped to its titlecase, then decomposed (NFKD); strings
    compare as the sequences of code points of their keys.

    @type text: L{str}
    @rtype: L{str}
    """
    return unicodedata.normalize("NFKD", "".join(char.title() for char in text))


_WSP_RUN = re.compile(r"[ \t\r\n]+")
# subj-leader: *subj-blob subj-refwd, or WSP (white space is single by now).
_LEADER = re.compile(r"(?:\[[^\[\]]*\] ?)*(?:re|fwd?) ?(?:\[[^\[\]]*\] ?)?:| ", re.I)
_BLOB = re.compile(r"\[[^\[\]]*\] ?")


def baseSubject(raw):
    """
    Extract the base subject (RFC 5256 section 2.1).

    Only the first L{MAX_SUBJECT} octets of the field are read.  The
    subject is cut down by moving its two ends, never copied until the end,
    so a subject of many leaders costs time in proportion to its length.

    @param raw: the raw value of the C{Subject:} field, or L{None}.
    @return: C{(subject, isReplyOrForward)}: the base subject (not yet
        collated), and whether a C{Re:}, C{Fwd:}, C{(fwd)} or C{[fwd: ...]}
        was removed on the way, which the REFERENCES algorithm asks
        (RFC 5256 section 4, step 5).
    """
    if raw is None:
        return "", False
    # (1) encoded words decoded, runs of white space made one space.
    subject = _WSP_RUN.sub(" ", decodeText(raw[:MAX_SUBJECT]))
    start, end = 0, len(subject)
    replied = False
    while True:
        # (2) trailing "(fwd)" and white space.
        while end > start:
            if subject[end - 1] == " ":
                end -= 1
            elif end - start >= 5 and subject[end - 5 : end].lower() == "(fwd)":
                end -= 5
                replied = True
            else:
                break
        # (3) and (4): leaders and leading blobs, until neither changes it.
        while True:
            match = _LEADER.match(subject, start, end)
            if match is not None:
                replied = replied or match.group() != " "
                start = match.end()
                continue
            match = _BLOB.match(subject, start, end)
            if match is not None and match.end() < end:
                start = match.end()
                continue
            break
        # (5) "[fwd: ...]" wrapped around all of it.
        if end - start >= 6 and subject[start : start + 5].lower() == "[fwd:" and subject[end - 1] == "]":
            start, end = start + 5, end - 1
            replied = True
            continue
        return subject[start:end], replied


# --- what a message is sorted and threaded by ----------------------------------------------


_MESSAGE_ID = re.compile(rb"<([^<>]*)>")


def messageIds(raw):
    """
    @param raw: the raw value of a C{References:}, C{In-Reply-To:} or
        C{Message-ID:} field, or L{None}.
    @return: the message identifiers in it, in order, without angle
        brackets and white space (RFC 5256 section 4, step 1).
    @rtype: L{list} of L{bytes}
    """
    if not raw:
        return []
    ids = []
    for match in _MESSAGE_ID.finditer(raw):
        value = re.sub(rb"\s+", b"", match.group(1))
        if value:
            ids.append(value)
    return ids


def _sentDate(raw):
    """
    @return: the C{Date:} field as seconds since the epoch, or L{None} if
        it is missing or unreadable (the INTERNALDATE is used then, RFC
        5256 section 2.2).
    """
    parsed = parseDateField(raw)
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (ValueError, OverflowError):
        return None


def _firstAddress(raw):
    """
    @return: C{(mailbox, display)} of the first address of an address
        field, collated: the addr-mailbox (RFC 5256 section 3: FROM, TO,
        CC) and the display name, or the addr-spec when it has none
        (RFC 5957 section 3.1); a group stands for itself by its name, as
        in Dovecot.  C{("", "")} without one.
    """
    if raw is None:
        return "", ""
    addresses = parseAddressList(raw)
    if not addresses:
        return "", ""
    name, _, mailbox, host = addresses[0]
    if mailbox in (None, MISSING_MAILBOX):
        mailbox = ""
    if host in (None, MISSING_DOMAIN) or not mailbox:
        spec = mailbox
    else:
        spec = mailbox + "@" + host
    display = decodeText(name.encode("utf-8", "surrogateescape")).strip() if name else ""
    return (
        collationKey(decodeText(mailbox.encode("utf-8", "surrogateescape"))),
        collationKey(display or decodeText(spec.encode("utf-8", "surrogateescape"))),
    )


class SortFields:
    """
    What SORT and THREAD look at in a message's header, read once.

    @ivar sentDate: the C{Date:} field as seconds since the epoch, or
        L{None} (see L{sentDate}).
    @ivar subject: the collated base subject (L{baseSubject}).
    @ivar replied: whether the subject marked a reply or forward.
    @ivar fromMailbox: the collated addr-mailbox of the first From
        address; C{toMailbox} and C{ccMailbox} likewise.
    @ivar displayFrom: the collated display name of the first From address
        (RFC 5957); C{displayTo} likewise.
    @ivar messageId: the first identifier of C{Message-ID:}, or L{None}.
    @ivar references: the identifiers of C{References:} (past
        L{MAX_REFERENCES}, the first and the last), or without any, the
        first of C{In-Reply-To:} (RFC 5256 section 4, step 1).
    """

    __slots__ = (
        "sentDate", "subject", "replied", "fromMailbox", "toMailbox", "ccMailbox",
        "displayFrom", "displayTo", "messageId", "references",
    )

    @classmethod
    def fromMessage(cls, data):
        """
        @param data: the octets of a message (its header is enough).
        @rtype: L{SortFields}
        """
        fields = parseFields(data[: headerEnd(data)])
        self = cls()
        self.sentDate = _sentDate(fieldValue(fields, "Date"))
        subject, self.replied = baseSubject(fieldValue(fields, "Subject"))
        self.subject = collationKey(subject)
        self.fromMailbox, self.displayFrom = _firstAddress(fieldValue(fields, "From"))
        self.toMailbox, self.displayTo = _firstAddress(fieldValue(fields, "To"))
        self.ccMailbox, _ = _firstAddress(fieldValue(fields, "Cc"))
        ids = messageIds(fieldValue(fields, "Message-ID"))
        self.messageId = ids[0] if ids else None
        references = messageIds(fieldValue(fields, "References"))
        if len(references) > MAX_REFERENCES:
            references = references[:1] + references[1 - MAX_REFERENCES :]
        self.references = tuple(references or messageIds(fieldValue(fields, "In-Reply-To"))[:1])
        return self


class SortFieldCache:
    """
    L{SortFields} by message key (keys are unique in the whole store, and a
    stored message never changes), the most recently used kept: past
    C{size} entries the oldest are dropped.
    """

    def __init__(self, size=20000):
        self._size = size
        self._entries = OrderedDict()

    def cached(self, message):
        """
        @return: the L{SortFields} of C{message} if known, so its octets
            need not be read; else L{None}.
        """
        entry = self._entries.get(message.key)
        if entry is not None:
            self._entries.move_to_end(message.key)
        return entry

    def get(self, message, data):
        """
        @return: the L{SortFields} of C{message}, whose octets are C{data}.
        """
        entry = self.cached(message)
        if entry is None:
            entry = self._entries[message.key] = SortFields.fromMessage(data)
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return entry


class Sortable:
    """
    One message of a SORT or THREAD: its number in the reply, its place in
    the mailbox and its L{SortFields}.

    @ivar sequence: its sequence number, which breaks ties.
    @ivar number: what the reply names it by: its sequence number or UID.
    @ivar modSeq: its mod-sequence.
    """

    __slots__ = ("sequence", "number", "size", "internalDate", "modSeq", "fields")

    def __init__(self, sequence, number, message, fields):
        self.sequence = sequence
        self.number = number
        self.size = message.size
        self.internalDate = message.internalDate
        self.modSeq = message.modSeq
        self.fields = fields

    @property
    def sentDate(self):
        """
        The sent date (RFC 5256 section 2.2): the C{Date:} field, or the
        INTERNALDATE when it has none that can be read.
        """
        sent = self.fields.sentDate
        return self.internalDate if sent is None else sent


_KEY_VALUES = {
    "ARRIVAL": lambda item: item.internalDate,
    "CC": lambda item: item.fields.ccMailbox,
    "DATE": lambda item: item.sentDate,
    "FROM": lambda item: item.fields.fromMailbox,
    "SIZE": lambda item: item.size,
    "SUBJECT": lambda item: item.fields.subject,
    "TO": lambda item: item.fields.toMailbox,
    "DISPLAYFROM": lambda item: item.fields.displayFrom,
    "DISPLAYTO": lambda item: item.fields.displayTo,
}


# --- commands ------------------------------------------------------------------------------


class SortCommand:
    """
    A parsed SORT or UID SORT command.

    @ivar keys: C{[(name, reverse)]}, most significant first.
    @ivar search: the L{mdpy.imap.search.SearchCommand} of its charset,
        criteria and C{RETURN} options.
    """

    def __init__(self, keys, search):
        self.keys = keys
        self.search = search


def parseSortCommand(tokens):
    """
    Read the arguments of SORT or UID SORT:
    C{[RETURN (options)] (keys) charset key...} (RFC 5256 section 3,
    RFC 5267 section 3.1, RFC 5957 section 3).

    @param tokens: the tokens after C{SORT}.
    @rtype: L{SortCommand}
    @raise ParseError: not well formed, or an unknown key or option.
    @raise mdpy.imap.search.BadCharset: a charset other than US-ASCII and
        UTF-8.
    """
    returnTokens = []
    if tokens and isAtom(tokens[0], "RETURN"):
        returnTokens, tokens = tokens[:2], tokens[2:]
    if not tokens or not isinstance(tokens[0], list):
        raise ParseError("Expected a list of sort keys")
    keys = _sortKeys(tokens[0])
    if len(tokens) < 2:
        raise ParseError("Expected a charset")
    search = parseSearchCommand(returnTokens + [Atom("CHARSET")] + tokens[1:])
    if search.returnOptions and "SAVE" in search.returnOptions:
        raise ParseError("Unsupported RETURN option")  # SAVE is for SEARCH alone
    return SortCommand(keys, search)


def _sortKeys(tokens):
    keys = []
    reverse = False
    for token in tokens:
        if not isinstance(token, Atom) or token.upper() not in SORT_KEYS + ("REVERSE",):
            raise ParseError("Unknown sort key")
        name = token.upper()
        if name == "REVERSE":
            if reverse:
                raise ParseError("REVERSE twice")
            reverse = True
            continue
        keys.append((name, reverse))
        reverse = False
    if reverse:
        raise ParseError("REVERSE without a sort key")
    if not keys:
        raise ParseError("Empty sort key list")
    return keys


def sortMessages(items, keys):
    """
    Order messages by sort keys (RFC 5256 section 3).

    @param items: the L{Sortable}s, in mailbox order.
    @param keys: C{[(name, reverse)]}, most significant first.
    @return: a new list, in the requested order; those equal under every
        key in mailbox order.
    """
    ordered = sorted(items, key=lambda item: item.sequence)
    # Python's sort is stable, reversed too: sorting by the least
    # significant key first leaves ties to the more significant ones, and
    # equal messages in mailbox order.
    for name, reverse in reversed(keys):
        ordered.sort(key=_KEY_VALUES[name], reverse=reverse)
    return ordered


def formatSortResponse(tag, uid, command, ordered):
    """
    The untagged reply to a SORT.

    Without C{RETURN}, C{* SORT 2 5 7} (RFC 5256 section 4) followed by
    C{(MODSEQ n)} when the criteria had a MODSEQ key and something matched
    (RFC 7162 section 3.1.6).  With C{RETURN}, C{* ESEARCH (TAG "a1") UID
    MIN 7 MAX 2 COUNT 3 ALL 7,2,5} (RFC 5267 section 3.2: MIN and MAX are
    the first and last in sort order, ALL lists them in sort order, and so
    does PARTIAL, section 4.4).

    @param tag: the command's tag.
    @param uid: whether it was UID SORT.
    @param command: the L{SortCommand}.
    @param ordered: the L{Sortable}s, sorted.
    @return: the reply line with CRLF.
    """
    search = command.search
    numbers = [item.number for item in ordered]
    modSeq = max((item.modSeq for item in ordered), default=None) if search.criteria.usesModSeq else None
    if search.returnOptions is None:
        line = b"* SORT" + b"".join(b" %d" % n for n in numbers)
        if modSeq is not None:
            line += b" (MODSEQ %d)" % (modSeq,)
        return line + b"\r\n"
    options = set(search.returnOptions) or {"ALL"}
    quotedTag = tag.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    words = [b'* ESEARCH (TAG "%s")' % quotedTag]
    if uid:
        words.append(b"UID")
    if numbers and "MIN" in options:
        words.append(b"MIN %d" % numbers[0])
    if numbers and "MAX" in options:
        words.append(b"MAX %d" % numbers[-1])
    if "COUNT" in options:
        words.append(b"COUNT %d" % len(numbers))
    if numbers and "ALL" in options:
        words.append(b"ALL " + formatSequence(numbers))
    if search.partial is not None:
        words.append(formatPartial(search.partial, numbers))
    if modSeq is not None:
        words.append(b"MODSEQ %d" % (modSeq,))
    return b" ".join(words) + b"\r\n"
