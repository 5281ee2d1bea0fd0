# -*- test-case-name: tests.test_minger -*-
"""
The Minger wire format of draft-hathcock-minger-06: one UDP datagram carries
a query, one carries its reply.

Query (section 2)::

    query-string  = mailbox [SP %x64 "=" digest] [SP tag-list]
    digest        = base64 of MD5(shared-secret ":" mailbox)
    tag-spec      = tag-name "=" tag-value      ; 1*(ALPHA / DIGIT / "_") each

Reply (section 3)::

    response-string = mailbox status             ; status: one digit, 0 to 5

The reply's ABNF has no space between the two, but every example in the draft
has one, as has the one open-source server (mingerd); so L{formatReply} sends
one and L{parseReply} takes the last character as the status.  Neither side
ends a datagram with CR LF; trailing white space is stripped when parsing.

The draft does not limit a query's size; L{MAX_QUERY} is mingerd's buffer.
"""

import base64
import hashlib
import re

from mdpy.address import parseMailbox
from mdpy.errors import InvalidInput

DEFAULT_PORT = 4069

# Status codes, draft section 3.1.
STATUS_BAD_REQUEST = 0
STATUS_ACCESS_DENIED = 1
STATUS_BAD_CREDENTIALS = 2
STATUS_NOT_FOUND = 3
STATUS_NOT_ACTIVE = 4
STATUS_ACTIVE = 5
STATUSES = range(STATUS_BAD_REQUEST, STATUS_ACTIVE + 1)

# The longest query read (mingerd's buffer) and the longest mailbox (RFC 5321
# section 4.5.3.1.3: a 256-octet path, less its angle brackets).
MAX_QUERY = 1024
MAX_MAILBOX = 254

_TRAILING = b" \t\r\n"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_TAG = re.compile("[A-Za-z0-9_]+")
# MD5 gives 16 octets: 22 base64 characters and "==" of padding.
_DIGEST = re.compile("[A-Za-z0-9+/]{22}==")


class MalformedQuery(InvalidInput):
    """
    A datagram that is not a Minger query.

    @ivar mailbox: the first token of the datagram when a status-0 reply may
        echo it (printable text of at most L{MAX_MAILBOX} octets), else
        L{None}.
    @ivar reason: what is wrong, for the log.
    """

    def __init__(self, mailbox, reason):
        InvalidInput.__init__(self, reason)
        self.mailbox = mailbox
        self.reason = reason


class Query:
    """
    A parsed query.

    @ivar mailbox: the address exactly as sent.
    @type mailbox: L{str}
    @ivar digest: the text after C{d=}, or L{None} for an anonymous query.
    @ivar tags: the other tags, C{{name: value}}; none is defined by the draft.
    """

    def __init__(self, mailbox, digest=None, tags=None):
        self.mailbox = mailbox
        self.digest = digest
        self.tags = dict(tags or {})

    def __eq__(self, other):
        if not isinstance(other, Query):
            return NotImplemented
        return (self.mailbox, self.digest, self.tags) == (
            other.mailbox,
            other.digest,
            other.tags,
        )

    __hash__ = None

    def __repr__(self):
        return "Query(%r, digest=%r, tags=%r)" % (self.mailbox, self.digest, self.tags)


def _bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else value


def digest(secret, mailbox):
    """
    The credential of a query, draft section 2.2.

    @param secret: the shared secret, L{str} (sent as UTF-8) or L{bytes}.
    @param mailbox: the address exactly as it goes in the query.
    @return: base64 (with padding) of MD5(C{secret ":" mailbox}): 24
        characters.
    """
    md5 = hashlib.md5(_bytes(secret) + b":" + _bytes(mailbox)).digest()
    return base64.b64encode(md5).decode("ascii")


def _mailboxProblem(mailbox):
    """
    @return: why C{mailbox} cannot be the mailbox of a query, or L{None}.
    """
    if not mailbox:
        return "no mailbox"
    if len(mailbox.encode("utf-8")) > MAX_MAILBOX:
        return "mailbox longer than %d octets" % (MAX_MAILBOX,)
    if " " in mailbox or _CONTROL.search(mailbox):
        return "space or control character in the mailbox"
    try:
        parseMailbox(mailbox, utf8=True)
    except InvalidInput as e:
        return str(e)
    return None


def _echoable(datagram):
    """
    @return: the first token of C{datagram} if a reply may echo it: printable
        UTF-8 of at most L{MAX_MAILBOX} octets; else L{None}.
    """
    head = datagram[: MAX_MAILBOX + 3]
    token, space, _ = head.partition(b" ")
    if not space:
        if len(datagram) > len(head):
            return None
        token = token.rstrip(_TRAILING)
    if not token or len(token) > MAX_MAILBOX:
        return None
    try:
        text = token.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def parseQuery(datagram):
    """
    Parse a query datagram.  Trailing white space (CR LF included) is
    ignored, and so are tags other than C{d} (none is defined; -06 says tag
    names are case-sensitive, so C{D=...} is such a tag, not a digest).

    @type datagram: L{bytes}
    @rtype: L{Query}
    @raise MalformedQuery: empty, longer than L{MAX_QUERY}, not UTF-8, a
        control character, a bad mailbox, a digest not of 24 base64
        characters, a tag other than C{d=} not of the form C{name=value},
        a C{d} tag out of place or any tag repeated.
    """
    if len(datagram) > MAX_QUERY:
        raise MalformedQuery(
            _echoable(datagram), "longer than %d octets" % (MAX_QUERY,)
        )
    data = datagram.rstrip(_TRAILING)
    if not data:
        raise MalformedQuery(None, "empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedQuery(_echoable(data), "not UTF-8")
    if _CONTROL.search(text):
        raise MalformedQuery(_echoable(data), "control character")
    mailbox, *fields = text.split(" ")
    problem = _mailboxProblem(mailbox)
    if problem is not None:
        raise MalformedQuery(_echoable(data), problem)
    secret = None
    tags = {}
    for position, field in enumerate(fields):
        name, equals, value = field.partition("=")
        if position == 0 and name == "d" and equals:
            if not _DIGEST.fullmatch(value):
                raise MalformedQuery(mailbox, "digest is not 24 base64 characters")
            secret = value
            continue
        if name == "d":
            raise MalformedQuery(mailbox, "d= is not right after the mailbox")
        if not (equals and _TAG.fullmatch(name) and _TAG.fullmatch(value)):
            raise MalformedQuery(mailbox, "bad tag %r" % (field[:40],))
        if name in tags:
            raise MalformedQuery(mailbox, "tag %s repeated" % (name,))
        tags[name] = value
    return Query(mailbox, secret, tags)


def formatQuery(mailbox, secret=None):
    """
    @param mailbox: the address to ask about.
    @param secret: the shared secret; L{None} or empty for an anonymous query.
    @return: the query datagram, C{mailbox} or C{mailbox d=DIGEST}.
    @raise InvalidInput: C{mailbox} cannot be sent in a query.
    """
    problem = _mailboxProblem(mailbox)
    if problem is not None:
        raise InvalidInput("minger: cannot ask about %r: %s" % (mailbox, problem))
    if secret:
        return ("%s d=%s" % (mailbox, digest(secret, mailbox))).encode("utf-8")
    return mailbox.encode("utf-8")


def formatReply(mailbox, status):
    """
    @param mailbox: the mailbox as the query sent it (L{str} or L{bytes}).
    @param status: one of L{STATUSES}.
    @return: the reply datagram, C{mailbox SP digit}, no CR LF.
    """
    if status not in STATUSES:
        raise ValueError("not a Minger status: %r" % (status,))
    return _bytes(mailbox) + b" %d" % (status,)


def parseReply(datagram):
    """
    Parse a reply: trailing white space is stripped, the last character is
    the status, what comes before it (less trailing spaces) the mailbox.

    @return: C{(mailbox, status)}: L{str} and L{int}.
    @raise ValueError: not a reply.
    """
    try:
        text = datagram.decode("utf-8").rstrip(" \t\r\n")
    except UnicodeDecodeError:
        raise ValueError("Minger reply not UTF-8")
    mailbox = text[:-1].rstrip(" ")
    if not text or text[-1] not in "012345" or not mailbox or _CONTROL.search(mailbox):
        raise ValueError("not a Minger reply: %r" % (text[:80],))
    return mailbox, int(text[-1])
