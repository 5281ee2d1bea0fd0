# -*- test-case-name: tests.test_domainpop_recipients -*-
"""
Who a collected message is for: its header section read, and the recipient
addresses found in the fields a DomainPOP source is told to trust.

A DomainPOP mailbox at an ISP holds copies of mail for a whole domain with the
SMTP envelope thrown away.  What is left to route on is the header section:
either a field the ISP adds with the envelope recipient of each copy
(C{X-Rcpt-To}, C{Delivered-To}, C{X-Original-To}...; the reliable way), the
C{for} clause of the ISP's own C{Received} line (RFC 5321 section 4.4), or,
failing both, every mailbox in C{To}, C{Cc} and the like (which cannot find
Bcc recipients and finds the other recipients of every copy: duplicates the
dedupe cache of L{mdpy.domainpop.state} then removes).

Everything here is pure: bytes in, values out, never an exception for a
malformed message.  The header section is read up to L{MAX_HEAD} octets and
at most L{MAX_ADDRESSES} recipients are taken from one message, so a hostile
message costs bounded time.

Header injection: a field value holding a bare CR, a NUL or another control
character is refused whole (its contents go to L{Discovery.rejected}), and
an address is taken only when L{mdpy.address.normalise} accepts it and it
holds no control, format or non-ASCII space character, so nothing taken
here can break a header line or an SMTP command that later quotes it.
"""

import re

from mdpy.address import normaliseDomain
from mdpy.errors import InvalidInput
from mdpy.mail.addresslist import checkAddress, mailboxesIn, printable
from mdpy.mail.headers import decodeText, findHeaderEnd, parseFields

DEFAULT_HEADERS = (
    "to",
    "cc",
    "bcc",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "apparently-to",
    "envelope-to",
    "x-envelope-to",
    "delivered-to",
    "x-delivered-to",
    "x-original-to",
    "x-rcpt-to",
    "x-mdrcpt-to",
)

# The fields that may hold the envelope recipient of one copy, best first
# (what L{mdpy.domainpop.probe} considers, besides Received).
ENVELOPE_HEADERS = (
    "x-rcpt-to",
    "x-mdrcpt-to",
    "x-delivered-to",
    "delivered-to",
    "x-original-to",
    "envelope-to",
    "x-envelope-to",
)

MAX_HEAD = 256 * 1024
MAX_ADDRESSES = 1000



class Head:
    """
    The header section of a message: fields in order, names lowercased
    (L{str}), raw values (L{bytes}, unfolded: each line break of a folded
    field and the white space around it become one space; RFC 5322 section
    2.2.3).  Built by L{parseHead}.

    @ivar fields: C{[(name, rawValue)]}, top first.
    @ivar truncated: the header section was longer than L{MAX_HEAD} octets;
        the rest of it is ignored.
    @ivar size: octets of the header section including the empty line that
        ends it (or L{MAX_HEAD} when truncated): the body starts there.
    """

    def __init__(self, fields, truncated, size):
        self.fields = fields
        self.truncated = truncated
        self.size = size

    def __repr__(self):
        return "<Head %d fields, %d octets%s>" % (
            len(self.fields),
            self.size,
            ", truncated" if self.truncated else "",
        )

    def raw(self, name):
        """
        @return: the raw values of every field called C{name} (any case), top
            first.
        """
        name = name.lower()
        return [raw for fieldName, raw in self.fields if fieldName == name]

    def values(self, name):
        """
        @return: the text of every field called C{name} (any case), top
            first: RFC 2047 encoded words decoded, other octets read as UTF-8
            (invalid sequences replaced by U+FFFD).
        """
        return [decodeText(_text(raw).encode("utf-8")) for raw in self.raw(name)]

    def count(self, name):
        """
        @return: how many fields are called C{name} (any case).
        """
        name = name.lower()
        return sum(1 for fieldName, raw in self.fields if fieldName == name)


def _text(raw):
    """
    @return: C{raw} read as UTF-8, invalid sequences replaced; RFC 2047
        encoded words are left as they are.
    """
    return raw.decode("utf-8", "replace")


def parseHead(data):
    """
    Read the header section at the start of a message.

    Lines may end in CRLF or LF; a line starting with white space continues
    the field above it (RFC 5322 section 2.2.3 and the obsolete folding of
    section 4.2); a line without a colon is skipped (and with it the lines
    that continue it), the header section goes on after it.

    @param data: the start of the message: at least its header section, or
        at least L{MAX_HEAD} octets of it.
    @rtype: L{Head}
    """
    window = data[:MAX_HEAD]
    end = findHeaderEnd(window)
    if end is not None:
        block, size, truncated = window[: end[0]], end[1], False
    elif len(data) > MAX_HEAD:
        # The last line may be cut short: read only whole lines.
        block, size, truncated = window[: window.rfind(b"\n") + 1], MAX_HEAD, True
    else:
        block, size, truncated = data, len(data), False
    fields = [(name.lower(), raw) for name, raw in parseFields(block)]
    return Head(fields, truncated, size)


# --- Received ---------------------------------------------------------------

_BY = re.compile(r"(?:^|\s)by\s+([^\s;]+)", re.I)
_FOR = re.compile(r'(?:^|\s)for\s+(<[^<>]*>|"(?:[^"\\]|\\.)*"@[^\s;<>]+|[^\s;<>]+)', re.I)


def _stripComments(text):
    """
    @return: C{text} with every (possibly nested) comment replaced by a
        space; quoted strings and quoted pairs are respected (RFC 5322
        section 3.2.2).
    """
    out = []
    depth = 0
    quoted = False
    escape = False
    for ch in text:
        if escape:
            escape = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escape = True
            if depth == 0:
                out.append(ch)
            continue
        if depth == 0 and ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
            if depth == 1:
                out.append(" ")
            continue
        elif not quoted and ch == ")" and depth:
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    return "".join(out)


def receivedFor(value):
    """
    Read the C{by} host and the C{for} recipient of a C{Received} field
    (RFC 5321 section 4.4: C{from X by HOST via .. with .. id .. for
    <addr>; date-time}).

    Comments are ignored, folding is allowed, C{for} may name a path
    (C{<addr>}, a source route dropped) or a bare mailbox (C{for addr;} as
    Exim and Amazon SES write it).  Only the part before the last C{;}, which
    starts the date, is looked at, and C{for} only after C{by}.

    @param value: the field's value, as L{str}.
    @return: C{(byHost, forAddress)}, each L{None} when missing; C{byHost}
        lowercased without a trailing dot, C{forAddress} as written.
    """
    text = _stripComments(value)
    semicolon = text.rfind(";")
    if semicolon >= 0:
        text = text[:semicolon]
    byHost = None
    start = 0
    by = _BY.search(text)
    if by is not None:
        start = by.end()
        if "@" not in by.group(1):
            byHost = normaliseDomain(by.group(1)) or None
    forAddress = None
    found = _FOR.search(text, start)
    if found is not None:
        forAddress = found.group(1)
        if forAddress.startswith("<"):
            forAddress = forAddress[1:-1].strip()
            if forAddress.startswith("@"):
                forAddress = forAddress.partition(":")[2]
        forAddress = forAddress or None
    return byHost, forAddress


# --- rules and discovery ----------------------------------------------------


class RoutingRules:
    """
    Which fields of a collected message name its recipients.

    @ivar parseHeaders: the field names, lowercased, in order.
    @ivar useReceived: the C{for} clauses of C{Received} fields are read.
    @ivar receivedSkip: how many C{Received} fields, from the top, are
        passed over before reading them.
    @ivar trustedReceivedHosts: lowercased host names; one starting with
        C{.} stands for every subdomain of what follows it.
    @ivar maxHops: more C{Received} fields than this and the message is
        taken as looping.
    """

    def __init__(self, parseHeaders=(), receivedSkip=0, trustedReceivedHosts=(), maxHops=30):
        """
        @param parseHeaders: field names, in any case; empty for
            L{DEFAULT_HEADERS}.  The name C{received} stands for the C{for}
            clauses of the C{Received} fields (see L{receivedAddresses}).
        @param receivedSkip: see L{receivedAddresses}.
        @param trustedReceivedHosts: see L{receivedAddresses}.
        @param maxHops: the loop limit.
        """
        names = []
        for name in parseHeaders or DEFAULT_HEADERS:
            name = name.strip().lower()
            if name and name not in names:
                names.append(name)
        self.parseHeaders = tuple(names)
        self.useReceived = "received" in names
        self.receivedSkip = max(0, int(receivedSkip))
        self.trustedReceivedHosts = tuple(
            host.strip().lower().rstrip(".") for host in trustedReceivedHosts if host.strip()
        )
        self.maxHops = maxHops

    def __repr__(self):
        return "<RoutingRules %s skip=%d trusted=%s maxHops=%d>" % (
            ",".join(self.parseHeaders),
            self.receivedSkip,
            ",".join(self.trustedReceivedHosts) or "*",
            self.maxHops,
        )

    def trusts(self, host):
        """
        @param host: a C{by} host as L{receivedFor} gives it, or L{None}.
        @return: whether a C{Received} field written by C{host} is trusted;
            every host is when no trusted host is configured.
        """
        if not self.trustedReceivedHosts:
            return True
        if host is None:
            return False
        for entry in self.trustedReceivedHosts:
            if entry.startswith("."):
                if host.endswith(entry):
                    return True
            elif host == entry:
                return True
        return False


def receivedAddresses(head, rules):
    """
    The C{for} clauses of the C{Received} fields that C{rules} trust.

    The first C{rules.receivedSkip} C{Received} fields from the top are
    passed over.  With no trusted host configured every other field is read.
    Otherwise only the run of fields written by trusted hosts that starts
    at the top (after the skipped ones) is read: a field written by another
    host ends it, because every field below that one was written by someone
    else and may be forged, even one naming a trusted host (RFC 5321 section
    4.4: fields are prepended, so the top ones are the ISP's).  A field
    without a C{by} host (qmail's C{(qmail 123 invoked from network)})
    neither ends the run nor is read.

    @rtype: L{list} of C{(byHost, forAddress)} with C{forAddress} as written
        and not L{None}, top first.
    """
    found = []
    for value in head.raw("received")[rules.receivedSkip :]:
        byHost, forAddress = receivedFor(_text(value))
        if rules.trustedReceivedHosts:
            if byHost is None:
                continue
            if not rules.trusts(byHost):
                break
        if forAddress is not None:
            found.append((byHost, forAddress))
    return found


class Discovery:
    """
    The recipients found in one message.

    @ivar addresses: normal forms, each once, in the order found.
    @ivar sources: address -> the lowercased name of the first field it came
        from (C{received} for a C{Received} C{for} clause).
    @ivar hops: the number of C{Received} fields.
    @ivar loop: C{hops} is over the rules' C{maxHops}.
    @ivar rejected: address-like strings found and refused (made printable
        and cut short), and a note of how many were ignored past
        L{MAX_ADDRESSES}.
    """

    def __init__(self):
        self.addresses = []
        self.sources = {}
        self.hops = 0
        self.loop = False
        self.rejected = []
        self._ignored = 0

    def __repr__(self):
        return "<Discovery %s hops=%d%s>" % (self.addresses, self.hops, " loop" if self.loop else "")

    def _add(self, address, source):
        if address in self.sources:
            return
        if len(self.addresses) >= MAX_ADDRESSES:
            self._ignored += 1
            return
        self.addresses.append(address)
        self.sources[address] = source


def discover(head, rules):
    """
    Find the recipients of a message: the mailboxes in the fields of
    C{rules.parseHeaders}, in that order, each field top first, and for
    C{received} the C{for} clauses that L{receivedAddresses} reads.

    @type head: L{Head}
    @type rules: L{RoutingRules}
    @rtype: L{Discovery}
    """
    found = Discovery()
    found.hops = head.count("received")
    found.loop = found.hops > rules.maxHops
    for name in rules.parseHeaders:
        if name == "received":
            for byHost, candidate in receivedAddresses(head, rules):
                try:
                    address = checkAddress(candidate)
                except InvalidInput:
                    found.rejected.append(printable(candidate))
                else:
                    found._add(address, "received")
            continue
        for raw in head.raw(name):
            addresses, rejected = mailboxesIn(_text(raw))
            found.rejected.extend(rejected)
            for address in addresses:
                found._add(address, name)
    if found._ignored:
        found.rejected.append("%d more addresses ignored (limit %d)" % (found._ignored, MAX_ADDRESSES))
    return found
