# -*- test-case-name: tests.test_errors -*-
"""
Protocol-neutral failures.

Backends raise these; each protocol maps them to its own replies in one table
(for SMTP, L{mdpy.smtp.codes.replyForError}).  The message of an exception is
for the log; the text a client sees is chosen by the protocol and stays generic.
"""

import errno


class MailError(Exception):
    """
    Base of every failure a backend reports to a protocol.

    @cvar temporary: whether trying again later may succeed.
    """

    temporary = False

    @property
    def detail(self):
        """
        The text for the log.
        """
        return str(self) or self.__class__.__name__


class TemporaryFailure(MailError):
    """
    Try again later: disk full, I/O error, lock held, a backend not reachable.
    """

    temporary = True


class InsufficientStorage(TemporaryFailure):
    """
    The disk (or the server's share of it) is full: try again later
    (RFC 3463 X.3.1, "mail system full").
    """


def storageFailure(what, error):
    """
    @param what: what was being written, for the log.
    @param error: the L{OSError} that stopped it.
    @return: the failure to raise for it: L{InsufficientStorage} when the
        disk or a disk quota is full, else L{TemporaryFailure}.
    """
    kind = TemporaryFailure
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        kind = InsufficientStorage
    return kind("%s: %s" % (what, error.strerror or error))


class PermanentFailure(MailError):
    """
    Will never succeed as asked.
    """


class NotFound(PermanentFailure):
    """
    No such user, mailbox or message.
    """


class Disabled(PermanentFailure):
    """
    The account exists but does not take mail.
    """


class RelayDenied(PermanentFailure):
    """
    The recipient is not local and the sender may not relay.
    """


class RemoteUnavailable(TemporaryFailure):
    """
    The recipient is remote and the sender may relay, but no outbound path can
    take the message now.
    """


class Unavailable(TemporaryFailure):
    """
    The mailbox exists but cannot take mail now (a gateway's verification
    said so).
    """


class QuotaExceeded(TemporaryFailure):
    """
    The mailbox is over its quota.
    """


class TooBig(PermanentFailure):
    """
    The message is larger than allowed.
    """


class InUse(TemporaryFailure):
    """
    The resource is locked by another session.
    """


class SenderNotOwned(PermanentFailure):
    """
    An authenticated client named a sender address that is not its own.
    """


class InvalidInput(PermanentFailure):
    """
    A name, address or value is malformed.
    """


class LimitExceeded(InvalidInput):
    """
    A name, a value or a count is beyond what the backend can hold (a
    mailbox name longer or deeper than its storage allows, one keyword too
    many for a folder).
    """


class Exists(PermanentFailure):
    """
    The object to create is there already.
    """
