# -*- test-case-name: tests.test_errors -*-
"""
Protocol-neutral failures.

Backends raise these; each protocol maps them to its own replies in one table
(for SMTP, L{mdpy.smtp.codes.replyForError}).  The message of an exception is
for the log; the text a client sees is chosen by the protocol and stays generic.
"""

import errno
import re


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


def describe(error):
    """
    Say what went wrong, for people: a queue listing, a DSN, a log line, a
    command's error.  Never a Python repr.

    @param error: an exception, or a L{twisted.python.failure.Failure}.
    @return: a L{MailError}'s detail, "DNS lookup of example.org timed out"
        for a resolver that gave up, an L{OSError}'s own text, else the
        exception's message, or its class name in words when it has none
        that people can read.
    """
    error = getattr(error, "value", error)
    if isinstance(error, MailError):
        return error.detail
    names = _queriedNames(error)
    if names:
        return "DNS lookup of %s timed out" % (", ".join(names),)
    if isinstance(error, OSError) and error.strerror:
        where = error.filename
        return "%s: %s" % (where, error.strerror) if where else error.strerror
    text = str(error).strip()
    if text and not _REPR_WHOLE.match(text):
        return text
    return _className(type(error).__name__)


def _queriedNames(error):
    """
    @return: the names a DNS timeout from L{twisted.names} was about (its
        argument is the list of queries), or C{[]} for any other error.
    """
    from twisted.internet.defer import TimeoutError

    if not isinstance(error, TimeoutError) or not error.args:
        return []
    queries = error.args[0] if isinstance(error.args[0], (list, tuple)) else error.args
    names = []
    for query in queries:
        name = getattr(getattr(query, "name", None), "name", None)
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names


# The message of an exception whose argument is no text: "[Query(...)]".
_REPR_WHOLE = re.compile(r"[\[({<].*[\])}>]\Z|[A-Za-z_][\w.]*\(.*\)\Z", re.S)
# A repr in text: "TimeoutError([Query(b'example.org', 15, 1)])".
_REPR = re.compile(r"\b([A-Z][A-Za-z0-9_]*)\((.*)\)")
_QUOTED = re.compile(r"""b?(["'])(.*)\1\Z""", re.S)
_OLD_DNS_TIMEOUT = re.compile(
    r"(?P<name>\S+) [A-Z]+ lookup failed: (?:timeout|TimeoutError\(.*\)|DNSQueryTimeoutError\(.*\))\Z"
)


def _className(name):
    """
    @return: an exception class name in words: C{"connection refused"} for
        C{ConnectionRefusedError}.
    """
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+", name)
    if len(words) > 2 and words[-1] in ("Error", "Exception", "Failure"):
        words.pop()
    return " ".join(word if word.isupper() else word.lower() for word in words) or name


def withoutReprs(text):
    """
    Read text written by earlier versions, which kept the repr of some
    exceptions in the queue's state files: each repr becomes words, the
    resolver's timeout the sentence L{describe} gives for it.

    @param text: a stored reason, or L{None}.
    @return: C{text} as people read it (L{None} stays L{None}).
    """
    if not text:
        return text
    oldTimeout = _OLD_DNS_TIMEOUT.search(text)
    if oldTimeout:
        return text[:oldTimeout.start()] + "DNS lookup of %s timed out" % (oldTimeout.group("name"),)

    def words(match):
        quoted = _QUOTED.match(match.group(2).strip())
        if quoted and quoted.group(2):
            return quoted.group(2)
        return _className(match.group(1))

    return _REPR.sub(words, text)


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


class LargerThanQuota(PermanentFailure):
    """
    The message alone is larger than the mailbox's whole quota.
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


_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")


def clientText(text, limit=200):
    """
    @return: C{text} as one line a client may be shown: control characters
        (CR, LF among them) become spaces, and it is cut at C{limit}
        characters.
    """
    return " ".join(_CONTROLS.sub(" ", str(text)).split())[:limit]


class CheckRefused(PermanentFailure):
    """
    A check (L{mdpy.interfaces.ICheck}) refused a sender, a recipient or a
    message for good.  Unlike other errors, its text is meant for the
    client: each protocol sends it with its refusal.

    @ivar text: that text, one line (L{clientText}).
    """

    def __init__(self, text):
        self.text = clientText(text) or "Message refused"
        PermanentFailure.__init__(self, self.text)


class CheckRefusedForNow(TemporaryFailure):
    """
    A check refused for now (greylisting, a scanner not reachable): the
    client may try again later.  See L{CheckRefused}.
    """

    def __init__(self, text):
        self.text = clientText(text) or "Try again later"
        TemporaryFailure.__init__(self, self.text)
