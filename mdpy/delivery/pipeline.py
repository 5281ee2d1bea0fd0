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

An account reached through a catch-all gets one copy per recipient that
reached it so, not one in all: a catch-all mailbox is typically collected by a
downstream DomainPOP routing by C{X-Rcpt-To}, which would otherwise lose every
recipient but the first (Postfix keeps a copy per original recipient for the
same reason).  Recipients that name an account (itself, or an alias of it)
share its one copy.

Remote recipients go to the outbound queue: those a sender names directly
only when the sender may relay (authenticated, or the server itself), those
reached through a local alias or forward always.  A forwarded copy is queued
with its envelope sender rewritten by SRS (when configured), so that it
passes SPF at the destination and its bounces come back here, where
L{SRS.reverse} routes them to the original sender.

The queued message is the message as received; local copies get their trace
headers and the header fields of the checks (L{mdpy.interfaces.ICheck}, run
in order when the sender is given, at each recipient or at the end of the
message, as each says; by default SPF and DKIM, which write an
C{Authentication-Results} field, RFC 8601, for mail from unauthenticated
clients).  A check's refusal refuses the sender, the recipient or the
message.

Invariants: a commit is all or nothing across the store and the queue.  The
queued copies are staged first (L{mdpy.interfaces.IOutboundQueue.stage}: on
disk, fsynced, but not handed to delivery), then the local copies are
committed (all or nothing, L{mdpy.interfaces.IMailStore.deliver}), and only
then are the staged copies admitted to delivery.  If staging or the local
commit fails, whatever was staged is withdrawn (removed from the disk) and
the commit fails: no local copy was ever visible and nothing was sent, so the
client's retry stores and queues each copy once.  The local copies come last
because they alone are visible at once (to POP3 and IMAP) and cannot be taken
back; a staged entry can, until it is admitted.  A crash between staging and
the local commit leaves the staged entry on disk, and the next start loads it
as queued: its remote recipients may then get the message twice, once more
from the client's retry (the duplicate RFC 5321 section 6.1 accepts for a
reply lost in a crash), and its local ones once; nothing is lost.  A
withdrawal that fails is logged: the entry would be delivered after the next
start, again a duplicate and never a loss.
"""

import re
import tempfile

from twisted.internet import defer
from zope.interface import implementer

from mdpy import errors
from mdpy.address import normalise, splitAddress
from mdpy.mailauth.authresults import stripForgedResults
from mdpy.checks import DATA, MAIL, RCPT, AuthenticationResultsCheck, runChecks
from mdpy.envelope import Envelope, newMessageId
from mdpy.interfaces import IDelivery, IDeliveryTarget
from mdpy.logs import Logger
from mdpy.mail.headers import findHeaderEnd

SPILL_SIZE = 1024 * 1024
HEAD_SIZE = 256 * 1024
CHECK_SIZE = 10 * 1024 * 1024
_SRS_PREFIXES = ("srs0=", "srs1=")

log = Logger()

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
    found = findHeaderEnd(head)
    if found is None:
        return head, False
    section = head[: found[0]]
    lowered = b"\n" + section.lower()
    if not any(b"\n" + name in lowered for name in _TRACE_HEADERS):
        return head, True
    return _TRACE_LINE.sub(b"", section) + head[found[0] :], True


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


def _originalRecipient(recipient, original):
    """
    @return: the C{orig_to=} part of a delivery log line: the address
        C{original} the client gave, when it is not C{recipient} itself, or
        C{""}.
    """
    if original.lower() == recipient.lower():
        return ""
    return " orig_to=<%s>" % (original,)


@implementer(IDeliveryTarget)
class DeliveryPipeline:
    """
    Route recipients to the local store or the outbound queue.

    @ivar directory: an L{mdpy.interfaces.IDirectory}.
    @ivar store: an L{mdpy.interfaces.IMailStore}.
    @ivar queue: an L{mdpy.interfaces.IOutboundQueue}, or L{None} when there is no outbound delivery (remote recipients then
        get a temporary refusal).
    @ivar spoolDir: where bodies larger than L{SPILL_SIZE} are spooled.
    @ivar srs: an L{mdpy.mailauth.srs.SRS} for forwarded mail, or L{None} to
        keep the original sender.
    @ivar checks: the L{mdpy.interfaces.ICheck}s every message goes
        through, in order.
    @ivar gateways: the L{mdpy.odmr.gateway.Gateways} whose mail is queued
        from any sender (the queue holds it until ATRN), each recipient
        verified first when the gateway says so; or L{None}.
    """

    MAX_KNOWN_ACCOUNTS = 100000

    def __init__(self, directory, store, queue=None, spoolDir=None, srs=None, checker=None,
                 gateways=None, checks=()):
        """
        @param checker: an L{mdpy.mailauth.authresults.InboundChecker},
            run after C{checks} (as an L{AuthenticationResultsCheck}); or
            L{None}.
        """
        self._knownAccounts = set()
        self.gateways = gateways
        self.directory = directory
        self.store = store
        self.queue = queue
        self.spoolDir = spoolDir
        self.srs = srs
        self.checks = list(checks)
        if checker is not None:
            self.checks.append(AuthenticationResultsCheck(checker))

    @property
    def checker(self):
        """
        The L{mdpy.mailauth.authresults.InboundChecker} of the built-in
        C{spf} and C{dkim} checks, or L{None}; setting it replaces them.
        """
        for check in self.checks:
            if isinstance(check, AuthenticationResultsCheck):
                return check.checker
        return None

    @checker.setter
    def checker(self, checker):
        checks = [check for check in self.checks if not isinstance(check, AuthenticationResultsCheck)]
        if checker is not None:
            checks.append(AuthenticationResultsCheck(checker))
        self.checks = checks

    def _runs(self, stage):
        return any(check.stage == stage for check in self.checks)

    def startDelivery(self, envelope):
        """
        See L{IDeliveryTarget.startDelivery}: after the checks of the sender
        (L{mdpy.checks.MAIL}) accepted it.
        """
        delivery = PipelineDelivery(self, envelope)
        if not self._runs(MAIL):
            return delivery
        d = runChecks(self.checks, MAIL, envelope)
        d.addCallback(delivery._checked)
        d.addCallbacks(lambda _: delivery, delivery._ebRefused)
        return d

    def ensureAccount(self, account):
        """
        Make the mailbox tree of a directory user that has none yet (a user
        added by another tool).  Accounts seen to exist are remembered, so the
        check costs nothing on the next message.

        @return: L{None} for an account known to exist, else a L{Deferred}
            firing once it does.
        """
        if account in self._knownAccounts:
            return None
        d = defer.maybeDeferred(self.store.accountExists, account)

        def cbExists(exists):
            if not exists:
                return self.store.createAccount(account)

        def cbKnown(_):
            if len(self._knownAccounts) >= self.MAX_KNOWN_ACCOUNTS:
                self._knownAccounts.clear()
            self._knownAccounts.add(account)

        return d.addCallback(cbExists).addCallback(cbKnown)

    def mayRelay(self, envelope):
        """
        @return: whether the sender of C{envelope} may send to remote
            recipients: authenticated clients and the server itself only.
            Never an open relay.
        """
        return envelope.authenticatedAs is not None or envelope.trusted

    def reverseSRS(self, address):
        """
        @return: the original sender an SRS address of a local domain stands
            for, or L{None} when C{address} is not one.
        @raise errors.NotFound: an SRS address that does not verify.
        """
        if self.srs is None or not address[:5].lower().startswith(_SRS_PREFIXES):
            return None
        if not self.directory.hasDomain(splitAddress(address)[1]):
            return None
        original = self.srs.reverse(address)
        if not original:
            raise errors.NotFound("bad SRS address <%s>" % (address,))
        return original


@implementer(IDelivery)
class PipelineDelivery:
    """
    One transaction of L{DeliveryPipeline}.
    """

    def __init__(self, pipeline, envelope):
        self.pipeline = pipeline
        self.envelope = envelope
        self.copies = []  # (account, address as given, caught), see addRecipient
        self.relayed = []  # remote addresses the sender named
        self.forwarded = []  # remote addresses reached through local ones
        self._forwardedFrom = {}  # each of those: the local address that reached it
        self._forwarder = None  # the local domain of the first of those
        self._forwardedId = None  # the queue id of the forwarded copies
        self._accounts = set()
        self._staged = []  # queue entries staged by commit
        self._verdicts = []  # of the checks: their headers go into the local copies
        self._spool = tempfile.SpooledTemporaryFile(
            max_size=SPILL_SIZE, dir=pipeline.spoolDir
        )

    def _checked(self, verdict):
        self._verdicts.append(verdict)

    def _ebRefused(self, failure):
        self.abort()
        return failure

    def addRecipient(self, address):
        """
        See L{IDelivery.addRecipient}: after the checks of the recipient
        (L{mdpy.checks.RCPT}) accepted it.
        """
        if not self.pipeline._runs(RCPT):
            return self._route(address)
        d = runChecks(self.pipeline.checks, RCPT, self.envelope, recipient=address)
        d.addCallback(self._routeChecked, address)
        return d

    def _routeChecked(self, verdict, address):
        """
        Route C{address}, which the checks accepted; their headers are kept
        once it is.
        """
        d = defer.maybeDeferred(self._route, address)
        return d.addCallback(lambda _: self._checked(verdict))

    def _route(self, address):
        pipeline = self.pipeline
        gateway = pipeline.gateways.forAddress(address) if pipeline.gateways else None
        if gateway is not None:
            return self._addHeld(gateway, address)
        original = pipeline.reverseSRS(address)
        if original is not None:
            self._addRemote([original], self.relayed)
            return
        resolution = pipeline.directory.resolve(address)
        if resolution.remote:
            domain = splitAddress(address)[1]
            if pipeline.directory.hasDomain(domain):
                self._addRemote(resolution.remote, self.forwarded)
                for remote in resolution.remote:
                    self._forwardedFrom.setdefault(remote, address)
                self._forwarder = self._forwarder or domain
            elif not pipeline.mayRelay(self.envelope):
                raise errors.RelayDenied("relaying to <%s> denied" % (address,))
            else:
                self._addRemote(resolution.remote, self.relayed)
        added, made = [], []
        for account in resolution.local:
            caught = account in resolution.caught
            # One copy per account, but one per recipient for an account
            # reached through a catch-all (see the module docstring).
            key = (account, normalise(address)) if caught else account
            if key in self._accounts:
                continue
            copy = (account, address, caught)
            self._accounts.add(key)
            self.copies.append(copy)
            added.append((key, copy))
            made.append(pipeline.ensureAccount(account))
        made = [d for d in made if d is not None]
        if not made:
            return None

        def ebRefused(failure):
            # A mailbox that cannot be made refuses the recipient: none of
            # its copies stays.
            for key, copy in added:
                self._accounts.discard(key)
                self.copies.remove(copy)
            return failure.value.subFailure

        d = defer.gatherResults(made, consumeErrors=True)
        return d.addCallbacks(lambda _: None, ebRefused)

    def _addHeld(self, gateway, address):
        """
        Queue C{address} of a gateway domain, once its check (if any)
        accepted it; the queue holds the domain's mail.
        """
        d = gateway.verify(address)
        if d is None:
            self._addRemote([address], self.relayed)
            return None
        return d.addCallback(lambda _: self._addRemote([address], self.relayed))

    def _addRemote(self, addresses, into):
        if self.pipeline.queue is None:
            raise errors.RemoteUnavailable(
                "no outbound delivery for %s" % (", ".join(addresses),)
            )
        for address in addresses:
            if address not in into:
                into.append(address)

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
        See L{IDelivery.commit}: the queued copies staged, the local ones
        committed, the queued ones admitted (see the module's invariants);
        one after the other since they read the same spool.
        """
        if not (self.copies or self.relayed or self.forwarded):
            return defer.fail(errors.PermanentFailure("no recipients"))
        d = self._check()
        if self.relayed:
            d.addCallback(self._stage, self.envelope, self.relayed, b"")
        if self.forwarded:
            d.addCallback(self._stageForwarded)
        d.addCallback(self._commitLocal)
        d.addCallbacks(self._admitStaged, self._withdrawStaged)
        d.addCallback(self._logCopies)
        d.addBoth(self._cbClose)
        return d

    def _logCopies(self, ignored):
        """
        Log one line per stored or forwarded copy, as Postfix's local
        delivery agent does: C{orig_to} is the address the client gave when
        an alias or a catch-all led to another.
        """
        messageId = self.envelope.messageId
        for account, address, caught in self.copies:
            log.info(
                "deliver: {id} to=<{to}>{orig} folder=INBOX status=stored",
                id=messageId,
                to=account,
                orig=_originalRecipient(account, address),
            )
        for address in self.forwarded:
            log.info(
                "deliver: {id} to=<{to}>{orig} status=forwarded (queued as {queueId})",
                id=messageId,
                to=address,
                orig=_originalRecipient(address, self._forwardedFrom[address]),
                queueId=self._forwardedId,
            )

    def _check(self):
        """
        Run the checks of the message (L{mdpy.checks.DATA}).

        @return: a L{Deferred} firing with the header fields the checks
            add, or C{b""}; or failing with the error of one that refused.
        """
        checks = self.pipeline.checks
        if not (self.copies or self.forwarded):
            # Only local and forwarded copies get the results of SPF and
            # DKIM: the checks' lookups would be for nothing.
            checks = [check for check in checks if not isinstance(check, AuthenticationResultsCheck)]
        if any(check.stage == DATA for check in checks):
            spool = self._spool
            spool.seek(0)
            message = spool.read(CHECK_SIZE + 1)
            d = runChecks(checks, DATA, self.envelope, message=message)
            d.addCallback(self._checked)
        else:
            d = defer.succeed(None)
        return d.addCallback(lambda _: b"".join(verdict.headers for verdict in self._verdicts))

    def _commitLocal(self, results):
        if not self.copies:
            return results
        spool = self._spool
        spool.seek(0)
        head = spool.read(HEAD_SIZE)
        complete = len(head) < HEAD_SIZE
        head, _ = stripTraceHeaders(head)
        for verdict in self._verdicts:
            for authservId in verdict.authservIds:
                # RFC 8601 section 5: results claiming to be ours that came
                # with the message are forged.
                head = stripForgedResults(head, authservId)
        copies = []
        for account, address, caught in self.copies:
            parts = [self._traceHeaders(address), results, head]
            if not complete:
                parts.append(_Region(spool, HEAD_SIZE))
            # A catch-all copy is told apart from the account's others by
            # its recipient (in the name of a keyed copy).
            copies.append((account, "INBOX", parts, address) if caught else (account, "INBOX", parts))
        envelope = self.envelope
        if envelope.deliveryKey is None:
            d = defer.maybeDeferred(self.pipeline.store.deliver, copies)
        else:
            key = (envelope.receivedAt, envelope.deliveryKey)
            d = defer.maybeDeferred(self.pipeline.store.deliver, copies, key, envelope.again)
        d.addCallbacks(lambda _: results, self._ebAccountGone)
        return d

    def _ebAccountGone(self, failure):
        """
        An account accepted at RCPT lost its mailbox before the commit (the
        administrator deleted it meanwhile: see L{IMailStore.deleteAccount}).
        That is a temporary failure, so that the client tries again and then
        learns at RCPT that the address is gone, while the other recipients
        still get their copies.
        """
        failure.trap(errors.NotFound)
        raise errors.TemporaryFailure("a mailbox was deleted during the delivery: %s" % (failure.value,))

    def _stage(self, results, envelope, recipients, extra):
        d = self.pipeline.queue.stage(envelope, recipients, [extra, _Region(self._spool, 0)])
        d.addCallback(self._staged.append)
        d.addCallback(lambda _: results)
        return d

    def _admitStaged(self, ignored):
        for entry in self._staged:
            self.pipeline.queue.admit(entry)

    def _withdrawStaged(self, failure):
        """
        Take back what was staged, since the commit failed.

        @return: a L{Deferred} failing with C{failure} once that is done.
        """
        withdrawals = [self._withdraw(entry) for entry in self._staged]
        d = defer.DeferredList(withdrawals)
        d.addCallback(lambda _: failure)
        return d

    def _withdraw(self, entry):
        d = defer.maybeDeferred(self.pipeline.queue.withdraw, entry)
        d.addErrback(
            lambda f: log.error(
                "queue: {id} could not be withdrawn after a failed delivery ({why});"
                " it will be sent after the next start",
                id=entry.id,
                why=f.getErrorMessage(),
            )
        )
        return d

    def _stageForwarded(self, results):
        """
        Queue the forwarded copies under their own id, with the sender
        rewritten by SRS when it is configured.
        """
        envelope, srs = self.envelope, self.pipeline.srs
        sender = envelope.sender
        if srs is not None and sender:
            sender = srs.forward(sender, self._forwarder)
        forwarded = Envelope(
            sender,
            helo=envelope.helo,
            clientAddress=envelope.clientAddress,
            authenticatedAs=envelope.authenticatedAs,
            protocol=envelope.protocol,
            size=envelope.size,
            body=envelope.body,
            smtputf8=envelope.smtputf8,
            messageId=envelope.messageId if not self.relayed else newMessageId(),
            receivedAt=envelope.receivedAt,
            trusted=envelope.trusted,
        )
        self._forwardedId = forwarded.messageId
        return self._stage(results, forwarded, self.forwarded, results)

    def _cbClose(self, result):
        self._spool.close()
        return result

    def abort(self):
        """
        See L{IDelivery.abort}.
        """
        self._spool.close()

