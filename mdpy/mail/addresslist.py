# -*- test-case-name: tests.test_imap_mime,tests.test_domainpop_recipients -*-
"""
Address lists of header fields (RFC 5322 section 3.4): C{From}, C{To},
C{Cc} and the like.  L{parseAddressList} reads every part of them
leniently, a syntax error costing only the mailbox where it is (for IMAP's
ENVELOPE); L{mailboxesIn} gives the addresses mail may be sent to and that
the sender policy checks, and is the stricter of the two: an address written
as a display name counts too (a mail reader may show it as the sender), and
an address-like string it cannot read is refused rather than skipped.

Header injection: a field value holding a bare CR, a NUL or another control
character is refused whole by L{mailboxesIn}, and an address is taken only
when L{mdpy.address.normalise} accepts it and it holds no control, format
or non-ASCII space character, so nothing taken here can break a header line
or an SMTP command that later quotes it.
"""

import re
import unicodedata
from email.utils import getaddresses

from mdpy.address import normalise
from mdpy.errors import InvalidInput

# Placeholders where an address lacks a part; a NIL host would mean a group
# (RFC 3501 section 7.4.2), so Dovecot's names are used instead.
MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"

# How much of a refused string is kept for the log.
_REJECTED_LENGTH = 200

_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_ADDRESS_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\n]+)
      | "(?P<quoted>(?:[^"\\]|\\.)*)"?
      | \[(?P<literal>(?:[^\[\]\\]|\\.)*)\]?
      | (?P<atom>[^ \t\r\n"()\[\]<>@,;:\\.]+)
      | (?P<special>.)""",
    re.S | re.X,
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_DOT_ATOM = re.compile(r"[^\x00-\x20\x7f()<>\[\]:;@\\,.\"]+(?:\.[^\x00-\x20\x7f()<>\[\]:;@\\,.\"]+)*\Z")


def _addressTokens(text):
    """
    @return: C{[(kind, value, spaced)]}: kind C{atom}, C{quoted}, C{literal},
        C{comment} or C{special}; C{spaced} tells if white space came before.
    """
    tokens = []
    pos, size, spaced = 0, len(text), False
    while pos < size:
        if text[pos] == "(":
            depth, end = 0, pos
            while end < size:
                char = text[end]
                if char == "\\":
                    end += 1
                elif char == "(":
                    depth += 1
                elif char == ")":
                    depth -= 1
                    if not depth:
                        break
                end += 1
            tokens.append(("comment", _QUOTED_PAIR.sub(r"\1", text[pos + 1 : end]), spaced))
            pos, spaced = end + 1, True
            continue
        match = _ADDRESS_TOKEN.match(text, pos)
        kind = match.lastgroup
        if kind == "ws":
            spaced = True
        else:
            value = match.group(kind)
            if kind == "quoted":
                value = _QUOTED_PAIR.sub(r"\1", value)
            tokens.append((kind, value, spaced))
            spaced = False
        pos = match.end()
    return tokens


def _phrase(words):
    """
    @return: a display name: its words with one space where there was white
        space, quoted strings unquoted, encoded words left as written; or
        L{None} when empty.
    """
    text = "".join((" " if spaced and i else "") + value for i, (_, value, spaced) in enumerate(words))
    return text.strip() or None


def _addrSpec(words):
    """
    @return: C{(mailbox, host)} of C{local@domain} tokens, white space and
        comments dropped; a local part that is no dot-atom is quoted again.
    """
    at = max((i for i, w in enumerate(words) if w[0] == "special" and w[1] == "@"), default=-1)
    local = words[:at] if at >= 0 else words
    domain = words[at + 1 :] if at >= 0 else []
    mailbox = "".join(value for _, value, _ in local)
    if mailbox and any(kind == "quoted" for kind, _, _ in local) and not _DOT_ATOM.match(mailbox):
        mailbox = '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'
    host = "".join("[%s]" % (value,) if kind == "literal" else value for kind, value, _ in domain)
    return mailbox or MISSING_MAILBOX, host or MISSING_DOMAIN


def _mailbox(segment):
    """
    @return: C{(name, adl, mailbox, host)} of one mailbox (RFC 5322 section
        3.4), read leniently, or L{None} for an empty one.
    """
    words = [t for t in segment if t[0] != "comment"]
    if not words:
        return None
    comments = [t[1].strip() for t in segment if t[0] == "comment" and t[1].strip()]
    comment = comments[0] if comments else None
    opening = next((i for i, w in enumerate(words) if w[:2] == ("special", "<")), None)
    if opening is not None:
        name = _phrase(words[:opening])
        inner = words[opening + 1 :]
        closing = next((i for i, w in enumerate(inner) if w[:2] == ("special", ">")), len(inner))
        inner = inner[:closing]
        adl = None
        if inner and inner[0][:2] == ("special", "@"):
            colon = next((i for i, w in enumerate(inner) if w[:2] == ("special", ":")), None)
            if colon is not None:
                adl = "".join(value for _, value, _ in inner[:colon])
                inner = inner[colon + 1 :]
        return (name, adl) + _addrSpec(inner)
    if any(w[:2] == ("special", "@") for w in words):
        return (comment, None) + _addrSpec(words)
    if words[0][0] != "quoted" and not any(spaced for _, _, spaced in words[1:]):
        return (comment, None, "".join(value for _, value, _ in words), MISSING_DOMAIN)
    return (_phrase(words), None, MISSING_MAILBOX, MISSING_DOMAIN)


def parseAddressList(raw):
    """
    Parse an address list with groups (RFC 5322 section 3.4): a syntax
    error costs only the mailbox where it is.

    @return: C{[(name, adl, mailbox, host)]} with group markers as RFC 3501
        section 7.4.2 writes them: C{(None, None, groupName, None)} ...
        C{(None, None, None, None)}.
    """
    out = []
    segment = []
    inGroup = angle = False
    for token in _addressTokens(raw.decode("utf-8", "surrogateescape")) + [None]:
        if token is not None and token[0] == "special":
            char = token[1]
            if char == "<":
                angle = True
            elif char == ">":
                angle = False
            elif not angle and char in ",;":
                address = _mailbox(segment)
                if address is not None:
                    out.append(address)
                segment = []
                if char == ";" and inGroup:
                    out.append((None, None, None, None))
                    inGroup = False
                continue
            elif not angle and char == ":" and not inGroup:
                name = _phrase([t for t in segment if t[0] != "comment"])
                if name is not None and not any(t[0] == "special" for t in segment):
                    out.append((None, None, name, None))
                    segment = []
                    inGroup = True
                    continue
        if token is None:
            address = _mailbox(segment)
            if address is not None:
                out.append(address)
            if inGroup:
                out.append((None, None, None, None))
            return out
        segment.append(token)


# --- mailboxes to deliver to ----------------------------------------------------------


def printable(text):
    """
    @return: C{text} cut to a length fit for a log line, control characters
        escaped.
    """
    out = []
    for ch in text[:_REJECTED_LENGTH]:
        if ch != " " and unicodedata.category(ch)[0] in "CZ":
            ch = ascii(ch)[1:-1]
        out.append(ch)
    return "".join(out)


def _safe(address):
    """
    @return: whether C{address} holds nothing that could break a header line
        or a protocol command quoting it: no control, format, surrogate,
        unassigned or separator character other than the ASCII space (which
        L{normalise} allows only inside a quoted local part), and no U+FFFD
        standing for octets that were not UTF-8.
    """
    for ch in address:
        if ch == " ":
            continue
        if ch == "\ufffd" or unicodedata.category(ch)[0] in "CZ":
            return False
    return True


def checkAddress(candidate):
    """
    @param candidate: an address as found in a message.
    @return: its normal form.
    @raise InvalidInput: it is malformed or unsafe.
    """
    if not _safe(candidate):
        raise InvalidInput("unsafe characters in address")
    return normalise(candidate)


def mailboxesIn(text):
    """
    The mailboxes of an address-list field value (RFC 5322 section 3.4):
    C{name <addr>}, bare C{addr}, groups (C{undisclosed-recipients:;} gives
    nothing).

    The value is parsed before RFC 2047 encoded words are decoded (section
    5 of RFC 2047 forbids them in an addr-spec), so a display name cannot
    make up or split an address.

    @param text: the value as L{str}, encoded words not decoded.
    @return: C{(addresses, rejected)}: the normal forms of the valid ones in
        order (with repeats), and the address-like strings refused, made
        printable.
    """
    if _UNSAFE_VALUE.search(text):
        return [], [printable(text)]
    addresses, rejected = [], []
    for name, address in getaddresses([text]):
        if "@" not in address:
            continue
        try:
            addresses.append(checkAddress(address))
        except InvalidInput:
            rejected.append(printable(address))
    return addresses, rejected
