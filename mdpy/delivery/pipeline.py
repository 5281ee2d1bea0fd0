# -*- test-case-name: tests.test_pipeline -*-
"""
The delivery pipeline: the one entry of every message, whichever protocol
brought it.

It resolves each recipient through the directory (aliases, catch-all), keeps
local accounts for the store and remote addresses for the outbound queue, and
on commit writes one copy per local account with its own trace headers:
C{Return-Path}, and MDaemon's C{X-MDRcpt-To} and C{X-Rcpt-To} holding the
address the copy was sent to, so that a downstream DomainPOP can route it.
Copies of those three headers that arrived in the message are removed, so each
stored copy carries exactly one of each.
"""

import re
import tempfile

from twisted.internet import defer
from zope.interface import implementer

from mdpy import errors
from mdpy.address import splitAddress
from mdpy.interfaces import IDelivery, IDeliveryTarget

SPILL_SIZE = 1024 * 1024
HEAD_SIZE = 256 * 1024

_TRACE_HEADERS = (b"return-path", b"x-mdrcpt-to", b"x-rcpt-to")
_TRACE_LINE = re.compile(
    rb"^(?:return-path|x-mdrcpt-to|x-rcpt-to)[ \t]*:.*\r\n(?:[ \t].*\r\n)*",
    re.I | re.M,
)


def stripTraceHeaders(head):
    """
    Remove C{Return-Path}, C{X-MDRcpt-To} and C{X-Rcpt-To} fields from the
    header section at the start of C{head}.

    @return: C{(newHead, found)}: C{found} is false when the header section
        does not end inside C{head} (nothing was changed then).
    """
    if head.startswith(b"\r\n"):
        return head, True
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return head, False
    section = head[: end + 2]
    lowered = b"\n" + section.lower()
    if not any(b"\n" + name in lowered for name in _TRACE_HEADERS):
        return head, True
    return _TRACE_LINE.sub(b"", section) + head[end + 2 :], True


class _Region:
    """
    A reader of C{file} from C{offset} to its end that keeps its own position,
    so that several copies can read one spooled body in turn.
    """

    def __init__(self, file, offset):
        self._file = file
        self._position = offset

    def read(self, size=-1):
        self._file.seek(self._position)
        data = self._file.read(size)
        self._position += len(data)
        return data


@implementer(IDeliveryTarget)
class DeliveryPipeline:
    """
    Route recipients to the local store or the outbound queue.

    @ivar directory: an L{mdpy.interfaces.IDirectory}.
    @ivar store: an L{mdpy.interfaces.IMailStore}.
    @ivar queue: an L{mdpy.interfaces.IOutboundQueue}, or L{None} while remote
        delivery is not available (remote recipients of senders allowed to
        relay then get a temporary refusal).
    @ivar spoolDir: where bodies larger than L{SPILL_SIZE} are spooled.
    """

    MAX_KNOWN_ACCOUNTS = 100000

    def __init__(self, directory, store, queue=None, spoolDir=None):
        self._knownAccounts = set()
        self.directory = directory
        self.store = store
        self.queue = queue
        self.spoolDir = spoolDir

    def startDelivery(self, envelope):
        """
        See L{IDeliveryTarget.startDelivery}.
        """
        return PipelineDelivery(self, envelope)

    def ensureAccount(self, account):
        """
        Make the mailbox tree of a directory user that has none yet (a user
        added by another tool).  Accounts seen to exist are remembered, so the
        check costs nothing on the next message.
        """
        if account in self._knownAccounts:
            return
        if not self.store.accountExists(account):
            self.store.createAccount(account)
        if len(self._knownAccounts) >= self.MAX_KNOWN_ACCOUNTS:
            self._knownAccounts.clear()
        self._knownAccounts.add(account)

    def mayRelay(self, envelope):
        """
        @return: whether the sender of C{envelope} may send to remote
            recipients: authenticated clients only.  Never an open relay.
        """
        return envelope.authenticatedAs is not None


@implementer(IDelivery)
class PipelineDelivery:
    """
    One transaction of L{DeliveryPipeline}.
    """

    def __init__(self, pipeline, envelope):
        self.pipeline = pipeline
        self.envelope = envelope
        self.copies = []  # (account, address as given), one per account
        self._accounts = set()
        self._spool = tempfile.SpooledTemporaryFile(
            max_size=SPILL_SIZE, dir=pipeline.spoolDir
        )

    def addRecipient(self, address):
        """
        See L{IDelivery.addRecipient}.
        """
        pipeline = self.pipeline
        resolution = pipeline.directory.resolve(address)
        if resolution.remote:
            domain = splitAddress(address)[1]
            relaying = not pipeline.directory.hasDomain(domain)
            if relaying and not pipeline.mayRelay(self.envelope):
                raise errors.RelayDenied("relaying to <%s> denied" % (address,))
            raise errors.RemoteUnavailable(
                "no outbound delivery for %s" % (", ".join(resolution.remote),)
            )
        for account in resolution.local:
            if account in self._accounts:
                continue
            pipeline.ensureAccount(account)
            self._accounts.add(account)
            self.copies.append((account, address))

    def write(self, data):
        """
        See L{IDelivery.write}.
        """
        self._spool.write(data)

    def _traceHeaders(self, address):
        sender = self.envelope.sender
        return (
            "Return-Path: <%s>\r\nX-MDRcpt-To: %s\r\nX-Rcpt-To: %s\r\n"
            % (sender, address, address)
        ).encode("utf-8")

    def commit(self):
        """
        See L{IDelivery.commit}.
        """
        if not self.copies:
            return defer.fail(errors.PermanentFailure("no recipients"))
        spool = self._spool
        spool.seek(0)
        head = spool.read(HEAD_SIZE)
        complete = len(head) < HEAD_SIZE
        head, _ = stripTraceHeaders(head)
        copies = []
        for account, address in self.copies:
            parts = [self._traceHeaders(address), head]
            if not complete:
                parts.append(_Region(spool, HEAD_SIZE))
            copies.append((account, "INBOX", parts))
        d = defer.maybeDeferred(self.pipeline.store.deliver, copies)
        d.addBoth(self._cbClose)
        return d

    def _cbClose(self, result):
        self._spool.close()
        return result

    def abort(self):
        """
        See L{IDelivery.abort}.
        """
        self._spool.close()

