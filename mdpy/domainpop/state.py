# -*- test-case-name: tests.test_domainpop_state -*-
"""
The keys of the dedupe cache of DomainPOP and MultiPOP sources
(L{mdpy.interfaces.IDedupeCache}, which the backend keeps:
L{mdpy.interfaces.IBackend.dedupe}).

Why a dedupe cache: without an envelope header every copy of a message sent
To one local user and Cc another is delivered to both, once per copy (the
ISP holds one copy per envelope recipient).  The cache remembers which
message each local user already got, keyed on (message key, recipient), and
keeps it across runs for a time to live, since the copies may be collected
in different runs.  Keying on the pair and not the message alone matters:
two copies give one delivery per person, but a message that shares its
Message-ID with one already delivered to someone else (a list's copy, a
resend, a client reusing IDs) still reaches its own recipient (as Cyrus
C{deliver} keys on message-id and mailbox; davmail PR #437).

The message key (L{dedupeKey}) comes from one field, C{Message-ID} being
the safe choice: it is made to be unique.  Some clients send no
Message-ID; for such mail the content L{fingerprint} is the safer fallback.
Keying on C{Date} instead is a risk: two different messages sent in the
same second, from the same time zone, to the same person have the same key
and the second is dropped as a duplicate, lost without a trace.  The
fingerprint hashes every field that copies of one message share (Date,
From, Subject, Message-ID if any...) and the body, leaving out only the
trace fields (L{TRACE_HEADERS}) that the path of each copy adds, so two
messages that differ anywhere else have different fingerprints.
"""

import hashlib
import re

DEDUPE_FINGERPRINT = "fingerprint"

# Fields that differ between the copies of one message: added on the way
# to each recipient (RFC 5321 section 4.4, RFC 9228, RFC 8601, RFC 8617,
# RFC 7208 section 9.1) or by a POP3 server or mail client on the mailbox.
TRACE_HEADERS = (
    "received",
    "delivered-to",
    "x-delivered-to",
    "x-rcpt-to",
    "x-mdrcpt-to",
    "x-original-to",
    "return-path",
    "envelope-to",
    "x-envelope-to",
    "x-uidl",
    "status",
    "x-status",
    "authentication-results",
    "arc-authentication-results",
    "arc-message-signature",
    "arc-seal",
    "received-spf",
    "x-received",
    "x-spam-status",
    "x-spam-score",
    "x-spam-level",
    "x-spam-flag",
    "x-virus-scanned",
)

# A field value longer than this is hashed in its dedupe key.
MAX_KEY_VALUE = 512

_WHITE_SPACE = re.compile(r"\s+")
_WHITE_SPACE_BYTES = re.compile(rb"[ \t\r\n]+")


# --- message keys -----------------------------------------------------------


def dedupeKey(head, headerName):
    """
    The dedupe key of a message from one of its fields.

    @param head: the message's L{mdpy.domainpop.recipients.Head}.
    @param headerName: the field, e.g. C{Message-ID} (see the module
        docstring on C{Date}).
    @return: C{"h:<name lowercased>:<value>"}, the value of the topmost
        field of that name decoded, its white space runs made one space (a
        value longer than L{MAX_KEY_VALUE} replaced by C{sha256:} and its
        hex digest); L{None} when the field is missing or empty.
    @raise ValueError: C{headerName} is L{DEDUPE_FINGERPRINT}, which needs
        the body: see L{fingerprint}.
    """
    name = headerName.strip().lower()
    if name == DEDUPE_FINGERPRINT:
        raise ValueError("the fingerprint is not a header: use fingerprint()")
    values = head.values(name)
    if not values:
        return None
    value = _WHITE_SPACE.sub(" ", values[0]).strip()
    if not value:
        return None
    if len(value) > MAX_KEY_VALUE:
        value = "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return "h:%s:%s" % (name, value)


def fingerprint(head, bodyChunks):
    """
    The content key of a message, the same for every copy of it however
    they travelled.

    @param head: the message's L{mdpy.domainpop.recipients.Head}.
    @param bodyChunks: an iterable of L{bytes}: the message after its header
        section (from C{head.size}).
    @return: C{"f:"} and the SHA-256 hex digest of each field not in
        L{TRACE_HEADERS} (name lowercased, raw value with its white space
        runs made one space), in order, then the body octets.
    """
    digest = hashlib.sha256()
    for name, raw in head.fields:
        if name in TRACE_HEADERS:
            continue
        value = _WHITE_SPACE_BYTES.sub(b" ", raw).strip()
        digest.update(name.encode("utf-8") + b":" + value + b"\r\n")
    digest.update(b"\r\n")
    for chunk in bodyChunks:
        digest.update(chunk)
    return "f:" + digest.hexdigest()
