# -*- test-case-name: tests.test_mail_headers -*-
"""
The C{Received} trace field mdpy adds to every message it accepts, whether
from an SMTP client or from a POP3 mailbox it collects (RFC 5321 section
4.4).
"""

import re
from email.utils import formatdate

_COMMENT_SPECIALS = re.compile(r"([()\\])")


def receivedField(source, host, protocol, messageId, when, recipient=None, comment=None):
    """
    Build a C{Received} field: C{from SOURCE by HOST (mdpy) with PROTOCOL id
    ID [for <RECIPIENT>] [(COMMENT)]; DATE} (RFC 5321 section 4.4), folded
    before each clause.

    @param source: the C{From-domain}: the client's C{HELO} name and its
        address literal for SMTP (C{client.example ([192.0.2.1])}), the POP3
        server for mail collected from one.
    @param host: the name of this host (C{By-domain}).
    @param protocol: the C{With} keyword (C{ESMTP}, C{ESMTPSA}, C{POP3}...;
        RFC 3848).
    @param messageId: mdpy's identifier of the message, for the logs.
    @param when: when the message was received, seconds since the epoch;
        written in the local time zone (RFC 5322 section 3.3).
    @param recipient: the one envelope recipient, or L{None}.
    @param comment: text for a comment after the clauses, or L{None}; its
        parentheses and backslashes are quoted (RFC 5322 section 3.2.2).
    @rtype: L{bytes}
    """
    field = "Received: from %s\r\n\tby %s (mdpy) with %s id %s" % (source, host, protocol, messageId)
    if recipient is not None:
        field += "\r\n\tfor <%s>" % (recipient,)
    if comment is not None:
        field += "\r\n\t(%s)" % (_COMMENT_SPECIALS.sub(r"\\\1", comment),)
    field += ";\r\n\t%s\r\n" % (formatdate(when, localtime=True),)
    return field.encode("utf-8")
