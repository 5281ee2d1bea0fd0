# -*- test-case-name: tests.test_smtp_server -*-
"""
Named SMTP replies (RFC 5321 section 4.2, RFC 3463 enhanced status codes) and
the one table mapping L{mdpy.errors} to them.

A reply is a C{(code, enhanced, text)} tuple; the server writes it as
C{"code enhanced text"}.  Client text stays generic: detail goes to the log.
"""

from mdpy import errors

C211Help = (214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT STARTTLS AUTH")
C221Bye = (221, "2.0.0", "Bye")
C235AuthOK = (235, "2.7.0", "Authentication successful")
C250OK = (250, "2.0.0", "Ok")
C250SenderOK = (250, "2.1.0", "Ok")
C250RecipientOK = (250, "2.1.5", "Ok")
C220TLSReady = (220, "2.0.0", "Ready to start TLS")
C354Data = (354, None, "End data with <CR><LF>.<CR><LF>")

C421Timeout = (421, "4.4.2", "Error: timeout exceeded")
C421TooManyErrors = (421, "4.7.0", "Error: too many errors")
C421TooManyConnections = (421, "4.7.0", "Error: too many connections")
C421Banned = (421, "4.7.0", "Error: too many failed logins; try later")
C421Shutdown = (421, "4.3.2", "Service shutting down")
C421AccountGone = (421, "4.7.0", "Error: account no longer exists")
C421AccountDisabled = (421, "4.7.0", "Error: account disabled")
C450Unavailable = (450, "4.2.1", "Recipient address rejected: mailbox unavailable; try again later")
C451LocalError = (451, "4.3.0", "Error: local error in processing; try again later")
C451RemoteUnavailable = (451, "4.4.0", "Relay to remote domains is not available now; try later")
C452QuotaExceeded = (452, "4.2.2", "Mailbox full; try again later")
# RFC 3463 X.2.2: the message is larger than the whole quota of a mailbox.
C552LargerThanQuota = (552, "5.2.2", "Mailbox full: message larger than its quota")
C452InsufficientStorage = (452, "4.3.1", "Insufficient system storage")
C452TooManyRecipients = (452, "4.5.3", "Error: too many recipients")
C454TLSUnavailable = (454, "4.7.0", "TLS not available")

C500Unrecognised = (500, "5.5.2", "Error: command not recognized")
C500LineTooLong = (500, "5.5.2", "Error: line too long")
C501Syntax = (501, "5.5.4", "Error: syntax error in parameters or arguments")
C501HeloSyntax = (501, "5.5.4", "Syntax: EHLO hostname")
C501BadSender = (501, "5.1.7", "Error: bad sender address syntax")
C501BadRecipient = (501, "5.1.3", "Error: bad recipient address syntax")
C501BadBase64 = (501, "5.5.2", "Error: cannot decode response")
C501AuthCancelled = (501, "5.0.0", "Authentication cancelled")
C502NotImplemented = (502, "5.5.1", "Error: command not implemented")
C502VrfyDisabled = (502, "5.5.1", "VRFY command is disabled")
C503NeedHelo = (503, "5.5.1", "Error: send HELO/EHLO first")
C503NestedMail = (503, "5.5.1", "Error: nested MAIL command")
C503NeedMail = (503, "5.5.1", "Error: need MAIL command")
C503NeedRecipient = (503, "5.5.1", "Error: need RCPT command")
C503AlreadyAuthenticated = (503, "5.5.1", "Error: already authenticated")
C503AuthInTransaction = (503, "5.5.1", "Error: MAIL transaction in progress")
C503AlreadyTLS = (503, "5.5.1", "Error: TLS already active")
C503BadSequence = (503, "5.5.1", "Error: bad sequence of commands")
C504UnknownMechanism = (504, "5.5.4", "Unrecognized authentication type")
C530AuthRequired = (530, "5.7.0", "Authentication required")
C535AuthFailed = (535, "5.7.8", "Error: authentication failed")
C538EncryptionRequired = (538, "5.7.11", "Encryption required for requested authentication mechanism")
C550UnknownUser = (550, "5.1.1", "Recipient address rejected: user unknown")
C550Disabled = (550, "5.2.1", "Recipient address rejected: mailbox disabled")
C550RelayDenied = (550, "5.7.1", "Relay access denied")
C552TooBig = (552, "5.3.4", "Message size exceeds fixed limit")
C552HeaderTooBig = (552, "5.3.4", "Message header size exceeds limit")
# Postfix's reject_sender_login_mismatch; also the answer to DATA when a
# From address is not the login's.
C553SenderNotOwned = (553, "5.7.1", "Sender address not owned by authenticated user")
C554NoValidRecipients = (554, "5.5.1", "Error: no valid recipients")
C554Failed = (554, "5.0.0", "Error: transaction failed")
C554Sync = (554, "5.5.0", "Error: SMTP protocol synchronization")
C555UnknownParameter = (555, "5.5.4", "Error: unsupported parameter")
C550Rejected = (550, "5.0.0", "Error: rejected")
# A check's refusal (RFC 3463 X.7.1: delivery not authorized, message
# refused); the check's own text replaces the one here.
C550CheckRefused = (550, "5.7.1", "Message refused")
C451CheckRefusedForNow = (451, "4.7.1", "Try again later")

_RECIPIENT_ERRORS = [
    (errors.NotFound, C550UnknownUser),
    (errors.Disabled, C550Disabled),
    (errors.RelayDenied, C550RelayDenied),
    (errors.RemoteUnavailable, C451RemoteUnavailable),
    (errors.QuotaExceeded, C452QuotaExceeded),
    (errors.LargerThanQuota, C552LargerThanQuota),
    (errors.Unavailable, C450Unavailable),
    (errors.InsufficientStorage, C452InsufficientStorage),
    (errors.InvalidInput, C501BadRecipient),
    (errors.TooBig, C552TooBig),
    (errors.TemporaryFailure, C451LocalError),
    (errors.PermanentFailure, C550Rejected),
]

_MESSAGE_ERRORS = [
    (errors.TooBig, C552TooBig),
    (errors.QuotaExceeded, C452QuotaExceeded),
    (errors.LargerThanQuota, C552LargerThanQuota),
    (errors.InsufficientStorage, C452InsufficientStorage),
    (errors.TemporaryFailure, C451LocalError),
    (errors.SenderNotOwned, C553SenderNotOwned),
    (errors.PermanentFailure, C554Failed),
]


def replyForError(error, recipient=False):
    """
    Map a failure to its reply.

    @param error: any exception; what is not a L{errors.MailError} is an
        internal error and gets C{451 4.3.0}.  A check's refusal
        (L{errors.CheckRefused}) is answered with the check's text.
    @param recipient: whether the error answers RCPT (else MAIL or the end of
        the message).
    """
    if isinstance(error, (errors.CheckRefused, errors.CheckRefusedForNow)):
        code, enhanced, _ = C451CheckRefusedForNow if error.temporary else C550CheckRefused
        return (code, enhanced, error.text)
    for kind, reply in _RECIPIENT_ERRORS if recipient else _MESSAGE_ERRORS:
        if isinstance(error, kind):
            return reply
    return C451LocalError
