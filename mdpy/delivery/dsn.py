# -*- test-case-name: tests.test_dsn -*-
"""
Delivery status notifications (RFC 3464) laid out as Postfix's bounce daemon
writes them: a C{multipart/report} (RFC 6522) of a human-readable
explanation, a C{message/delivery-status} part, and the original message or
its header section.

The original is handled as octets from end to end: it is never decoded, only
its bare LFs become CRLF.  The caller sends the result with the null reverse
path (RFC 3464 section 2; RFC 5321 section 4.5.5), with C{BODY=8BITMIME}
when it holds 8-bit octets and C{SMTPUTF8} when it holds UTF-8 addresses.

Unlike twisted.mail's C{generateBounce}, this writes the fields RFC 3464
requires, the closing boundary, and the original as C{message/rfc822}, and
a large original is cut to its header section.
"""

import io
import re
import secrets
import textwrap
import time
from email.utils import formatdate, make_msgid

from mdpy.mail.headers import findHeaderEnd

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")

# RFC 3464 section 2.3.4; RFC 3463 section 2 gives the syntax of a status.
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")
# An address or diagnostic type (RFC 3464 section 2.1.2) before ";".
_TYPED = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*[ \t]*;")
_CONTROLS = re.compile(r"[\x00-\x20\x7f]+")
_BARE_LF = re.compile(rb"(?<!\r)\n")

HEADER_LIMIT = 256 * 1024
_CHUNK = 64 * 1024
_WIDTH = 78


class RecipientStatus:
    """
    What happened to one recipient: the per-recipient fields of RFC 3464
    section 2.3.

    @ivar address: the final recipient address (RFC 3464 section 2.3.2).
    @ivar action: one of L{ACTIONS} (section 2.3.3).
    @ivar status: an RFC 3463 status code such as C{"5.1.1"} (section 2.3.4).
    @ivar diagnostic: C{"type; text"} such as C{"smtp; 550 5.1.1 User
        unknown"} (section 2.3.6), or L{None}; text without a type gets the
        type C{X-mdpy}.
    @ivar remoteMTA: the host name of the MTA that gave the diagnostic
        (section 2.3.5), or L{None}.
    @ivar lastAttempt: seconds since the epoch (section 2.3.7), or L{None}.
    @ivar willRetryUntil: seconds since the epoch; written for C{delayed}
        only (section 2.3.9).
    @ivar originalRecipient: the address as the client gave it, or the
        RFC 3461 C{ORCPT} value C{"type;address"} with its xtext decoded
        (section 2.3.1), or L{None}.
    """

    def __init__(
        self,
        address,
        action,
        status,
        diagnostic=None,
        remoteMTA=None,
        lastAttempt=None,
        willRetryUntil=None,
        originalRecipient=None,
    ):
        action = action.lower()
        if action not in ACTIONS:
            raise ValueError("unknown DSN action: %r" % (action,))
        if not _STATUS.match(status):
            raise ValueError("bad status code: %r" % (status,))
        self.address = address
        self.action = action
        self.status = status
        self.diagnostic = diagnostic
        self.remoteMTA = remoteMTA
        self.lastAttempt = lastAttempt
        self.willRetryUntil = willRetryUntil
        self.originalRecipient = originalRecipient

    def __repr__(self):
        return "<RecipientStatus %s %s %s>" % (self.address, self.action, self.status)


def statusForReply(code, enhanced=None):
    """
    The status of an SMTP reply for the C{Status} field.

    @param code: the three-digit reply code.
    @param enhanced: the RFC 3463 code the reply carried (RFC 2034), or
        L{None}.
    @return: C{enhanced} when it is well formed and of the same class as
        C{code} (RFC 3463 section 2 and RFC 3464 section 2.3.4 say the
        classes agree); else C{"2.0.0"}, C{"4.0.0"} or C{"5.0.0"} by the
        class of C{code}, where a code that is neither 2xx nor 4xx counts as
        a permanent failure.
    """
    kind = int(code) // 100
    if kind not in (2, 4):
        kind = 5
    if enhanced and _STATUS.match(enhanced) and enhanced[0] == str(kind):
        return enhanced
    return "%d.0.0" % (kind,)


def _oneLine(text):
    """
    @return: C{text} with every run of white space and control characters
        made one space, so that text from a remote server cannot start a
        field, a line or a part of its own.
    """
    return _CONTROLS.sub(" ", text).strip()


def _fold(name, value):
    """
    Write one field, folded at spaces (RFC 5322 section 2.2.3) so that its
    lines stay within 78 characters where the words allow.

    @param value: text without line ends or runs of spaces (see
        L{_oneLine}).
    @return: the field with its final CRLF.
    """
    lines = []
    line = name + ":"
    for word in value.split(" "):
        if len(line) + 1 + len(word) > _WIDTH and line != name + ":":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _isASCII(text):
    return text is None or text.isascii()


def _typedAddress(address):
    """
    @return: an address with its type (RFC 3464 section 2.1.2): C{rfc822},
        or C{utf-8} for one with non-ASCII characters (RFC 6533 section 3),
        which only a C{message/global-delivery-status} part may hold as it
        is.
    """
    address = _oneLine(address)
    if address.isascii():
        return "rfc822; " + address
    return "utf-8; " + address


def _originalRecipient(value):
    """
    @return: the C{Original-Recipient} value: C{value} as given when it
        has a type already, else typed by L{_typedAddress}.
    """
    value = _oneLine(value)
    if _TYPED.match(value):
        return value
    return _typedAddress(value)


def _diagnostic(value):
    """
    @return: the C{Diagnostic-Code} value, typed C{X-mdpy} when it has no
        type (RFC 3464 section 2.3.6).
    """
    value = _oneLine(value)
    if _TYPED.match(value):
        return value
    return "X-mdpy; " + value


def _date(seconds):
    """
    @return: an RFC 5322 section 3.3 date-time.
    """
    return formatdate(seconds, localtime=True)


def _recipientBlock(recipient):
    """
    @return: the per-recipient fields of RFC 3464 section 2.3, in the order
        of its section 2.1 grammar.
    """
    fields = []
    if recipient.originalRecipient:
        fields.append(_fold("Original-Recipient", _originalRecipient(recipient.originalRecipient)))
    fields.append(_fold("Final-Recipient", _typedAddress(recipient.address)))
    fields.append(_fold("Action", recipient.action))
    fields.append(_fold("Status", recipient.status))
    if recipient.remoteMTA:
        fields.append(_fold("Remote-MTA", "dns; " + _oneLine(recipient.remoteMTA)))
    if recipient.diagnostic:
        fields.append(_fold("Diagnostic-Code", _diagnostic(recipient.diagnostic)))
    if recipient.lastAttempt is not None:
        fields.append(_fold("Last-Attempt-Date", _date(recipient.lastAttempt)))
    if recipient.action == "delayed" and recipient.willRetryUntil is not None:
        fields.append(_fold("Will-Retry-Until", _date(recipient.willRetryUntil)))
    return "".join(fields)


def _deliveryStatus(reportingMTA, queueId, arrivalDate, recipients, envelopeId):
    """
    @return: the body of the C{message/delivery-status} part (RFC 3464
        section 2.1): the per-message fields, then each recipient's fields
        after an empty line.  The queue ID is an extension field (section
        2.4), so it follows the standard per-message fields.
    """
    fields = []
    if envelopeId:
        fields.append(_fold("Original-Envelope-Id", _oneLine(envelopeId)))
    fields.append(_fold("Reporting-MTA", "dns; " + _oneLine(reportingMTA)))
    fields.append(_fold("Arrival-Date", _date(arrivalDate)))
    fields.append(_fold("X-mdpy-Queue-ID", _oneLine(queueId)))
    blocks = ["".join(fields)]
    blocks.extend(_recipientBlock(recipient) for recipient in recipients)
    return "\r\n".join(blocks)


def _wrap(text, indent=""):
    """
    @return: C{text} as lines of at most 76 characters where the words
        allow, continued lines starting with C{indent}, each with its CRLF.
    """
    lines = textwrap.wrap(
        text, 76, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
    )
    return "".join(line + "\r\n" for line in lines)


_DURATION_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def formatDuration(seconds):
    """
    Say how long something took as people write it: C{"30 minutes"},
    C{"4 hours"}, C{"1 day 2 hours"}: the largest unit that fits, and the
    next smaller one when it is not zero; the rest is dropped.

    @param seconds: a duration; a negative one counts as none.
    @return: the text, C{"0 seconds"} for none.
    """
    seconds = max(0, int(seconds))
    for index, (name, size) in enumerate(_DURATION_UNITS):
        if seconds >= size or size == 1:
            parts = [(seconds // size, name)]
            if index + 1 < len(_DURATION_UNITS):
                smallerName, smallerSize = _DURATION_UNITS[index + 1]
                parts.append(((seconds % size) // smallerSize, smallerName))
            return " ".join(
                "%d %s%s" % (count, unit, "" if count == 1 else "s")
                for i, (count, unit) in enumerate(parts)
                if count or i == 0
            )


def _recipientLine(recipient, mainAction):
    """
    @return: one paragraph of the human-readable part saying what happened
        to C{recipient}, as Postfix's C{<addr>: host X said: ...}.
    """
    who = "<%s>" % (_oneLine(recipient.address),)
    if recipient.action != mainAction:
        who += " (%s)" % (recipient.action,)
    detail = "status %s" % (recipient.status,)
    if recipient.diagnostic:
        detail = _diagnostic(recipient.diagnostic).split(";", 1)[1].strip()
    if recipient.remoteMTA:
        detail = "host %s said: %s" % (_oneLine(recipient.remoteMTA), detail)
    return _wrap("%s: %s" % (who, detail), "    ")


def _explanation(kind, reportingMTA, queueId, arrivalDate, recipients, now, postmaster, headersOnly, note=None):
    """
    @return: the text of the human-readable first part (RFC 6522 section
        3), with CRLF line ends.
    """
    paragraphs = ["This is the mail system at host %s." % (_oneLine(reportingMTA),)]
    if note:
        paragraphs.append(note)
    if kind == "failed":
        attached = "Its header section is attached below." if headersOnly else "It is attached below."
        paragraphs.append(
            "I'm sorry to have to inform you that your message could not be "
            "delivered to one or more recipients. " + attached
        )
        paragraphs.append(
            "For further assistance, please send mail to %s. If you do so, "
            "please include this problem report." % (_oneLine(postmaster),)
        )
    elif kind == "delayed":
        paragraphs.append("THIS IS A WARNING ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE.")
        paragraphs.append(
            "Your message could not be delivered for %s to the "
            "recipients below. Delivery will be retried." % (formatDuration(now - arrivalDate),)
        )
        until = [r.willRetryUntil for r in recipients if r.willRetryUntil is not None]
        if until:
            paragraphs.append("It will be retried until %s." % (_date(max(until)),))
    else:
        paragraphs.append(
            "Your message was delivered to the destinations listed below. "
            "This is a report of that, sent because you asked for it."
        )
    paragraphs.append("The message has queue ID %s." % (_oneLine(queueId),))
    text = "".join(_wrap(paragraph) + "\r\n" for paragraph in paragraphs)
    text += "                   The mail system\r\n"
    for recipient in recipients:
        text += "\r\n" + _recipientLine(recipient, kind)
    return text


def _normaliseLineEnds(data):
    """
    @return: C{data} with every LF not after a CR made CRLF (RFC 5322
        section 2.3).
    """
    return _BARE_LF.sub(b"\r\n", data)


def _readAtMost(read, size):
    """
    @return: C{size} octets from C{read}, or all there are if fewer.
    """
    chunks = []
    while size > 0:
        chunk = read(min(size, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _headerSection(read, data):
    """
    The header section of the message that starts with C{data} and goes on
    in C{read}: the fields up to the empty line (RFC 5322 section 2.1),
    without it, reading no more than needed and at most L{HEADER_LIMIT}
    octets; one longer is cut after its last complete line.

    @return: the header section, line ends normalised, ending in CRLF (or
        empty when the message has no fields).
    """
    while True:
        normal = _normaliseLineEnds(data)
        found = findHeaderEnd(normal, 0, HEADER_LIMIT + 2)
        if found is not None:
            return normal[: found[0]]
        if len(data) >= HEADER_LIMIT:
            cut = normal.rfind(b"\r\n", 0, HEADER_LIMIT)
            if cut < 0:
                return normal[:HEADER_LIMIT] + b"\r\n"
            return normal[: cut + 2]
        chunk = read(_CHUNK)
        if not chunk:
            if normal and not normal.endswith(b"\r\n"):
                normal += b"\r\n"
            return normal
        data += chunk


def _original(original, maxOriginal, headersOnly):
    """
    Read what to return of the original.

    @param original: a binary file object at the start of the message, or
        L{bytes}.
    @return: C{(content, complete)}: the whole message when C{headersOnly}
        is false and it is at most C{maxOriginal} octets (C{complete} true),
        else its header section.
    """
    if isinstance(original, (bytes, bytearray, memoryview)):
        original = io.BytesIO(original)
    if headersOnly:
        return _headerSection(original.read, b""), False
    data = _readAtMost(original.read, maxOriginal + 1)
    if len(data) <= maxOriginal:
        return _normaliseLineEnds(data), True
    return _headerSection(original.read, data), False


def _newToken():
    return secrets.token_hex(12)


def _boundary(reportingMTA, contents):
    """
    @return: a boundary (RFC 2046 section 5.1.1) that occurs in none of
        C{contents}, so no line of them can be taken for a delimiter.
    """
    host = re.sub(r"[^A-Za-z0-9.-]", "", reportingMTA)
    while True:
        boundary = ("%s/%s" % (_newToken(), host))[:70]
        marker = boundary.encode("ascii")
        if not any(marker in content for content in contents):
            return boundary


def _part(fields, content):
    """
    @return: a body part: its C{fields} (C{(name, value)}), the empty line
        and C{content}.
    """
    head = "".join("%s: %s\r\n" % field for field in fields)
    return head.encode("utf-8") + b"\r\n" + content


def _transferEncoding(content):
    """
    @return: the C{Content-Transfer-Encoding} field for content sent as it
        is (RFC 2045 section 6.2; RFC 2046 section 5.2.1 allows only the
        identity encodings in C{message/rfc822}), or nothing for 7-bit.
    """
    if content.isascii():
        return []
    return [("Content-Transfer-Encoding", "8bit")]


def buildDSN(
    reportingMTA,
    sender,
    queueId,
    arrivalDate,
    recipients,
    original,
    now=None,
    maxOriginal=100 * 1024,
    postmaster=None,
    envelopeId=None,
    returnHeaders=False,
    doubleBounce=None,
):
    """
    Write the delivery status notification for one message.

    The kind of report follows from the actions:
      - any C{failed}: a failure report, with the original as
        C{message/rfc822} when it is at most C{maxOriginal} octets and
        C{returnHeaders} is false, else its header section as
        C{text/rfc822-headers} (RFC 6522 section 4);
      - else any C{delayed}: a delay warning;
      - else (C{delivered}, C{relayed}, C{expanded}): a success report.
    The last two carry only the header section, as RFC 3461 section 4.3
    asks of reports with no failure in them.

    When an address is not ASCII, the report is internationalised (RFC 6533
    section 6): the status part is C{message/global-delivery-status} and the
    returned message C{message/global} or C{message/global-headers}; the
    returned message is so too when its header section is not ASCII
    (RFC 6532 section 3.7).

    @param reportingMTA: our host name.
    @param sender: the envelope sender of the original, to whom the report
        goes; not the null sender.
    @param queueId: our identifier of the original.
    @param arrivalDate: when the original arrived, seconds since the epoch.
    @param recipients: L{RecipientStatus} of each recipient to report.
    @param original: the original message: a binary file object at its
        start, or L{bytes}.
    @param now: seconds since the epoch; the current time if L{None}.
    @param maxOriginal: the largest original returned whole, in octets.
    @param postmaster: whom the text tells the sender to write to.
    @param envelopeId: the RFC 3461 C{ENVID} of the original, xtext decoded,
        or L{None} (RFC 3464 section 2.2.1).
    @param returnHeaders: return only the header section (RFC 3461
        C{RET=HDRS}).
    @param doubleBounce: C{(postmaster, why)} when the report could not be
        delivered to C{sender} (C{why}) and goes to C{postmaster} instead,
        as Postfix's "double bounce": addressed to the postmaster, with a
        C{Postmaster Copy:} subject and a first paragraph that says so.
    @return: the message, with CRLF line ends.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    if now is None:
        now = time.time()
    if postmaster is None:
        postmaster = "postmaster"
    actions = {recipient.action for recipient in recipients}
    if "failed" in actions:
        kind, subject = "failed", "Undelivered Mail Returned to Sender"
    elif "delayed" in actions:
        kind, subject = "delayed", "Delayed Mail (still being retried)"
    else:
        kind, subject = "delivered", "Successful Mail Delivery Report"
    headersOnly = returnHeaders or kind != "failed"
    returned, complete = _original(original, maxOriginal, headersOnly)

    status = _deliveryStatus(reportingMTA, queueId, arrivalDate, recipients, envelopeId)
    international = not status.isascii()
    to, note = sender, None
    if doubleBounce is not None:
        to, why = doubleBounce
        subject = "Postmaster Copy: " + subject
        note = "This report could not be delivered to the sender, %s: %s. It is sent to you, the postmaster, instead." % (
            _oneLine(sender), _oneLine(why))
    text = _explanation(kind, reportingMTA, queueId, arrivalDate, recipients, now, postmaster, not complete, note)
    textBytes = text.encode("utf-8")
    statusBytes = status.encode("utf-8")

    if complete:
        head = _headerSection(io.BytesIO().read, returned)
        returnedGlobal = international or not head.isascii()
        returnedType = "message/global" if returnedGlobal else "message/rfc822"
        description = "Undelivered Message"
    else:
        returnedGlobal = international or not returned.isascii()
        returnedType = "message/global-headers" if returnedGlobal else "text/rfc822-headers"
        description = "Undelivered Message Headers" if kind == "failed" else "Message Headers"
    statusType = "message/global-delivery-status" if international else "message/delivery-status"

    boundary = _boundary(reportingMTA, [textBytes, statusBytes, returned])
    parts = [
        _part(
            [
                ("Content-Description", "Notification"),
                ("Content-Type", "text/plain; charset=%s" % ("us-ascii" if text.isascii() else "utf-8",)),
            ]
            + _transferEncoding(textBytes),
            textBytes,
        ),
        _part(
            [("Content-Description", "Delivery report"), ("Content-Type", statusType)]
            + _transferEncoding(statusBytes),
            statusBytes,
        ),
        _part(
            [("Content-Description", description), ("Content-Type", returnedType)]
            + _transferEncoding(returned),
            returned,
        ),
    ]
    eightBit = not all(part.isascii() for part in parts)

    fields = [
        ("From", "Mail Delivery System <MAILER-DAEMON@%s>" % (_oneLine(reportingMTA),)),
        ("To", _oneLine(to)),
        ("Subject", subject),
        ("Date", _date(now)),
        ("Message-ID", make_msgid(re.sub(r"[^A-Za-z0-9]", "", queueId) or None, _oneLine(reportingMTA))),
        ("Auto-Submitted", "auto-replied"),
        ("MIME-Version", "1.0"),
        (
            "Content-Type",
            'multipart/report; report-type=%s;\r\n\tboundary="%s"' % (statusType.split("/")[1], boundary),
        ),
    ]
    if eightBit:
        fields.append(("Content-Transfer-Encoding", "8bit"))
    head = "".join("%s: %s\r\n" % field for field in fields).encode("utf-8")
    delimiter = b"\r\n--" + boundary.encode("ascii")
    body = b"This is a MIME-encapsulated message.\r\n"
    for part in parts:
        body += delimiter + b"\r\n" + part
    body += delimiter + b"--\r\n"
    return head + b"\r\n" + body
