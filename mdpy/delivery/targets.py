# -*- test-case-name: tests.test_pipeline_targets -*-
"""
The delivery targets the pipeline (L{mdpy.delivery.pipeline}) routes
recipients to: the local store, the outbound queue, the hold of an ODMR
gateway domain, and forwarded copies.  Each is an L{IDeliveryTarget} of its
own and can be used alone; the queue's transactions are two-phase
(L{ITwoPhaseDelivery}), so that the pipeline commits over all of them at
once.

A target whose class attribute C{checkResults} is true is given the
message with the header fields of the pipeline's checks in front of it (and
without the C{Authentication-Results} fields that claim to be this
server's, RFC 8601 section 5); the others get it as received.
"""

import copy
import re
import tempfile

from twisted.internet import defer
from zope.interface import implementer

from mdpy import errors
from mdpy.address import normalise, splitAddress
from mdpy.envelope import newMessageId
from mdpy.interfaces import IDelivery, IDeliveryTarget, ITwoPhaseDelivery
from mdpy.logs import Logger
from mdpy.mail.headers import findHeaderEnd

SPILL_SIZE = 1024 * 1024
HEAD_SIZE = 256 * 1024

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


class Region:
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


def originalRecipient(recipient, original):
    """
    @return: the C{orig_to=} part of a delivery log line: the address
        C{original} the client gave, when it is not C{recipient} itself, or
        C{""}.
    """
    if original.lower() == recipient.lower():
        return ""
    return " orig_to=<%s>" % (original,)


def spoolIn(directory):
    """
    @return: a file that keeps up to L{SPILL_SIZE} octets in memory and
        spills the rest to C{directory} (L{None}: the system's).
    """
    return tempfile.SpooledTemporaryFile(max_size=SPILL_SIZE, dir=directory)


# --- the local store -----------------------------------------------------------------


@implementer(IDeliveryTarget)
class LocalStoreTarget:
    """
    The local accounts of an L{mdpy.interfaces.IMailStore}: one copy per
    account, each with its own trace headers, C{Return-Path} and MDaemon's
    C{X-MDRcpt-To} and C{X-Rcpt-To} holding the address the copy was sent
    to (so that a downstream DomainPOP can route it); copies of those three
    that arrived in the message are removed, so each stored copy carries
    exactly one of each.

    Its transactions are plain (not two-phase): the store's commit is all
    or nothing, but its copies are visible at once.

    Accounts are held to their quotas (L{mdpy.quota}): at L{addRecipient}
    with the size the client declared, at the commit with the message's.

    @ivar store: the L{mdpy.interfaces.IMailStore}.
    @ivar spoolDir: where messages larger than L{SPILL_SIZE} are spooled.
    @ivar quotas: the L{mdpy.quota.QuotaPolicy} of the accounts, or
        L{None} for no quotas.
    """

    checkResults = True
    MAX_KNOWN_ACCOUNTS = 100000

    def __init__(self, store, spoolDir=None, quotas=None):
        self.store = store
        self.spoolDir = spoolDir
        self.quotas = quotas
        self._knownAccounts = set()

    def startDelivery(self, envelope):
        """
        See L{IDeliveryTarget.startDelivery}.
        """
        return LocalDelivery(self, envelope)

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


@implementer(IDelivery)
class LocalDelivery:
    """
    One transaction of L{LocalStoreTarget}.

    An account reached through a catch-all gets one copy per recipient that
    reached it so, not one in all: a catch-all mailbox is typically
    collected by a downstream DomainPOP routing by C{X-Rcpt-To}, which would
    otherwise lose every recipient but the first (Postfix keeps a copy per
    original recipient for the same reason).  Recipients that name an
    account (itself, or an alias of it) share its one copy.

    @ivar copies: C{(account, address as given, separate)} of each copy.
    """

    def __init__(self, target, envelope):
        self.target = target
        self.envelope = envelope
        self.copies = []
        self._keys = set()
        self._spool = spoolIn(target.spoolDir)

    def addRecipient(self, address, accounts=None):
        """
        See L{IDelivery.addRecipient}: a copy for each account C{address}
        stands for, named by C{address} in its trace headers.  An account
        without a mailbox tree gets one; if that fails, or if every account
        is over its quota (or the size the client declared does not fit),
        the recipient is refused and none of its copies stays.

        @param accounts: the C{(account, separate)} pairs C{address} reaches
            (C{separate}: a copy of its own for this address, as for a
            catch-all); by default C{address} is an account.
        """
        if accounts is None:
            accounts = [(address, False)]
        added, made = [], []
        for account, separate in accounts:
            key = (account, normalise(address)) if separate else account
            if key in self._keys:
                continue
            copy = (account, address, separate)
            self._keys.add(key)
            self.copies.append(copy)
            added.append((key, copy))
            made.append(self.target.ensureAccount(account))
        made = [d for d in made if d is not None]
        quotas = self.target.quotas
        if quotas is not None and added:
            accounts = [copy[0] for _, copy in added]
            made.append(defer.ensureDeferred(self._checkQuotas(accounts, self.envelope.size)))
        if not made:
            return None

        def ebRefused(failure):
            for key, copy in added:
                self._keys.discard(key)
                self.copies.remove(copy)
            return failure.value.subFailure

        d = defer.gatherResults(made, consumeErrors=True)
        return d.addCallbacks(lambda _: None, ebRefused)

    async def _checkQuotas(self, accounts, size):
        """
        Refuse a message of C{size} octets (L{None}: not known) when it
        fits the quota of none of C{accounts}; when it fits one, every one
        takes it (see L{mdpy.quota}).

        @raise mdpy.errors.QuotaExceeded: it does not fit.
        @raise mdpy.errors.LargerThanQuota: it is larger than every one's
            whole quota.
        """
        quotas = self.target.quotas
        refusal = None
        for account in dict.fromkeys(accounts):
            try:
                await quotas.check(account, size)
            except (errors.QuotaExceeded, errors.LargerThanQuota) as e:
                refusal = refusal or e
            else:
                return
        raise refusal

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
        See L{IDelivery.commit}: every copy in one call of
        L{mdpy.interfaces.IMailStore.deliver} (all or nothing); one
        C{deliver:} line is logged per copy once they are stored.

        With quotas, the message is refused when it fits no account's
        quota; when it fits one, every account takes it, as one reply
        answers for all of them (L{mdpy.quota}).  Each account is then
        warned as it nears its quota.
        """
        if not self.copies:
            self.abort()
            return defer.fail(errors.PermanentFailure("no recipients"))
        if self.target.quotas is None:
            return self._commit()
        self._spool.seek(0, 2)
        accounts = [account for account, _, _ in self.copies]
        d = defer.ensureDeferred(self._checkQuotas(accounts, self._spool.tell()))
        d.addCallback(lambda _: self._commit())
        d.addErrback(self._cbClose)
        d.addCallback(lambda result: self.target.quotas.delivered(dict.fromkeys(accounts)))
        return d

    def _commit(self):
        spool = self._spool
        spool.seek(0)
        head = spool.read(HEAD_SIZE)
        complete = len(head) < HEAD_SIZE
        head, _ = stripTraceHeaders(head)
        copies = []
        for account, address, separate in self.copies:
            parts = [self._traceHeaders(address), head]
            if not complete:
                parts.append(Region(spool, HEAD_SIZE))
            # A catch-all copy is told apart from the account's others by
            # its recipient (in the name of a keyed copy).
            copies.append((account, "INBOX", parts, address) if separate else (account, "INBOX", parts))
        envelope = self.envelope
        store = self.target.store
        if envelope.deliveryKey is None:
            d = defer.maybeDeferred(store.deliver, copies)
        else:
            key = (envelope.receivedAt, envelope.deliveryKey)
            d = defer.maybeDeferred(store.deliver, copies, key, envelope.again)
        d.addCallbacks(self._logCopies, self._ebAccountGone)
        d.addBoth(self._cbClose)
        return d

    def _logCopies(self, ignored):
        """
        Log one line per stored copy, as Postfix's local delivery agent
        does: C{orig_to} is the address the client gave when an alias or a
        catch-all led to another.
        """
        for account, address, separate in self.copies:
            log.info(
                "deliver: {id} to=<{to}>{orig} folder=INBOX status=stored",
                id=self.envelope.messageId,
                to=account,
                orig=originalRecipient(account, address),
            )

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

    def _cbClose(self, result):
        self._spool.close()
        return result

    def abort(self):
        """
        See L{IDelivery.abort}.
        """
        self._spool.close()


# --- the outbound queue --------------------------------------------------------------


@implementer(IDeliveryTarget)
class QueueTarget:
    """
    Remote recipients, through the stages of an
    L{mdpy.interfaces.IOutboundQueue}: a transaction is prepared by
    L{IOutboundQueue.stage}, committed by L{IOutboundQueue.admit} and
    aborted by L{IOutboundQueue.withdraw}.

    Each transaction is one queued message, named by its envelope's message
    id; when several transactions of one message are prepared (the
    relayed copy, the held one and the forwarded one), the first keeps the
    message id and each other is queued under an id of its own.

    @ivar queue: the L{mdpy.interfaces.IOutboundQueue}.
    """

    checkResults = False

    def __init__(self, queue, spoolDir=None):
        self.queue = queue
        self.spoolDir = spoolDir
        self._prepared = set()  # message ids of prepared transactions

    def startDelivery(self, envelope):
        """
        See L{IDeliveryTarget.startDelivery}.
        """
        return QueuedDelivery(self, envelope)

    def _claim(self, envelope):
        """
        @return: C{envelope}, or a copy of it under a new message id when a
            prepared transaction holds its id.
        """
        if envelope.messageId in self._prepared:
            envelope = copy.copy(envelope)
            envelope.messageId = newMessageId()
        self._prepared.add(envelope.messageId)
        return envelope


@implementer(ITwoPhaseDelivery)
class QueuedDelivery:
    """
    One transaction of L{QueueTarget}: one queued message.

    @ivar envelope: the envelope the message is queued with.
    @ivar entry: once prepared and until committed or aborted, the staged
        queue entry (its C{id} names the queued message); else L{None}.
    @ivar committed: once committed, the admitted queue entry; else
        L{None}.
    """

    committed = None

    def __init__(self, target, envelope):
        self.target = target
        self.envelope = envelope
        self.recipients = []
        self.entry = None
        self._claimed = None
        self._spool = spoolIn(target.spoolDir)

    def addRecipient(self, address):
        """
        See L{IDelivery.addRecipient}.
        """
        if address not in self.recipients:
            self.recipients.append(address)

    def write(self, data):
        """
        See L{IDelivery.write}.
        """
        self._spool.write(data)

    def prepare(self):
        """
        See L{ITwoPhaseDelivery.prepare}: L{IOutboundQueue.stage}.
        """
        envelope = self._claimed = self.target._claim(self.envelope)
        d = self.target.queue.stage(envelope, self.recipients, [Region(self._spool, 0)])
        d.addCallbacks(self._cbStaged, self._ebStage)
        return d

    def _cbStaged(self, entry):
        self.entry = entry
        self._spool.close()

    def _ebStage(self, failure):
        self._release()
        return failure

    def _release(self):
        if self._claimed is not None:
            self.target._prepared.discard(self._claimed.messageId)
            self._claimed = None

    def commit(self):
        """
        See L{ITwoPhaseDelivery.commit}: L{IOutboundQueue.admit}, after
        L{prepare} if it was not.
        """
        if self.entry is None:
            d = self.prepare()
            d.addCallback(lambda _: self.commit())
            d.addErrback(self._ebCommit)
            return d
        self._release()
        entry, self.entry = self.entry, None
        self.target.queue.admit(entry)
        self.committed = entry
        return defer.succeed(None)

    def _ebCommit(self, failure):
        self.abort()
        return failure

    def abort(self):
        """
        See L{ITwoPhaseDelivery.abort}: L{IOutboundQueue.withdraw} of what
        was staged.  A withdrawal that fails is logged: the entry would be
        delivered after the next start, a duplicate and never a loss.
        """
        self._spool.close()
        self._release()
        entry, self.entry = self.entry, None
        if entry is None:
            return None
        d = defer.maybeDeferred(self.target.queue.withdraw, entry)
        d.addErrback(
            lambda f: log.error(
                "queue: {id} could not be withdrawn after a failed delivery ({why});"
                " it will be sent after the next start",
                id=entry.id,
                why=f.getErrorMessage(),
            )
        )
        return d


class _QueueingDelivery:
    """
    The L{ITwoPhaseDelivery} steps of a transaction that queues through
    one of L{QueueTarget} (C{self.queued}).
    """

    def write(self, data):
        """
        See L{IDelivery.write}.
        """
        self.queued.write(data)

    def prepare(self):
        """
        See L{ITwoPhaseDelivery.prepare}.
        """
        return self.queued.prepare()

    def commit(self):
        """
        See L{ITwoPhaseDelivery.commit}.
        """
        return self.queued.commit()

    def abort(self):
        """
        See L{ITwoPhaseDelivery.abort}.
        """
        return self.queued.abort()


# --- ODMR gateway domains ------------------------------------------------------------


@implementer(IDeliveryTarget)
class GatewayHoldTarget:
    """
    The domains of ODMR gateways (L{mdpy.odmr.gateway.Gateways}): their mail
    is queued from any sender, each recipient verified first when its
    gateway says so, and the queue holds it until the customer asks for it
    with ATRN (RFC 2645).

    @ivar gateways: the L{mdpy.odmr.gateway.Gateways}.
    @ivar queueTarget: the L{QueueTarget} the mail is queued through.
    """

    checkResults = False

    def __init__(self, gateways, queueTarget):
        self.gateways = gateways
        self.queueTarget = queueTarget

    def startDelivery(self, envelope):
        """
        See L{IDeliveryTarget.startDelivery}.
        """
        return HeldDelivery(self, self.queueTarget.startDelivery(envelope))


@implementer(ITwoPhaseDelivery)
class HeldDelivery(_QueueingDelivery):
    """
    One transaction of L{GatewayHoldTarget}.
    """

    def __init__(self, target, queued):
        self.target = target
        self.queued = queued

    def addRecipient(self, address):
        """
        See L{IDelivery.addRecipient}: queued once its gateway's verifier
        (if any) accepted it.

        @raise errors.NotFound: C{address} is of no gateway domain.
        """
        gateway = self.target.gateways.forAddress(address)
        if gateway is None:
            raise errors.NotFound("<%s> is of no gateway domain" % (address,))
        d = gateway.verify(address)
        if d is None:
            return self.queued.addRecipient(address)
        return d.addCallback(lambda _: self.queued.addRecipient(address))


# --- forwarded copies ----------------------------------------------------------------


@implementer(IDeliveryTarget)
class ForwardTarget:
    """
    Remote addresses reached through a local alias.  A forwarded copy is
    queued under its own queue id, with its envelope sender rewritten by
    SRS (when configured), so that it passes SPF at the destination and its
    bounces come back here, where L{mdpy.mailauth.srs.SRS.reverse} routes
    them to the original sender.  It carries the header fields of the
    checks.

    @ivar queueTarget: the L{QueueTarget} the copies are queued through.
    @ivar srs: an L{mdpy.mailauth.srs.SRS}, or L{None} to keep the original
        sender.
    """

    checkResults = True

    def __init__(self, queueTarget, srs=None):
        self.queueTarget = queueTarget
        self.srs = srs

    def startDelivery(self, envelope):
        """
        See L{IDeliveryTarget.startDelivery}.
        """
        return ForwardedDelivery(self, envelope)


@implementer(ITwoPhaseDelivery)
class ForwardedDelivery(_QueueingDelivery):
    """
    One transaction of L{ForwardTarget}: one queued message for every
    forwarded copy.
    """

    def __init__(self, target, envelope):
        self.target = target
        self.envelope = envelope
        # Its own envelope, whose sender prepare rewrites.
        self.queued = target.queueTarget.startDelivery(copy.copy(envelope))
        self._forwardedFrom = {}  # each remote address: the local one that reached it
        self._forwarder = None  # the local domain of the first of those

    def addRecipient(self, address, forwardedFrom=None):
        """
        See L{IDelivery.addRecipient}.

        @param forwardedFrom: the local address whose alias led to
            C{address}; its domain signs the SRS sender.
        """
        forwardedFrom = forwardedFrom or address
        self._forwardedFrom.setdefault(address, forwardedFrom)
        self._forwarder = self._forwarder or splitAddress(forwardedFrom)[1]
        return self.queued.addRecipient(address)

    def prepare(self):
        """
        See L{ITwoPhaseDelivery.prepare}: the sender is rewritten by SRS.
        """
        sender, srs = self.envelope.sender, self.target.srs
        if srs is not None and sender:
            self.queued.envelope.sender = srs.forward(sender, self._forwarder)
        return self.queued.prepare()

    def commit(self):
        """
        See L{ITwoPhaseDelivery.commit}: one C{deliver:} line is logged per
        forwarded copy, with the id it is queued under.
        """
        if self.queued.entry is None:
            d = self.prepare()
            d.addCallback(lambda _: self.commit())
            d.addErrback(self.queued._ebCommit)
            return d
        return self.queued.commit().addCallback(self._logCopies)

    def _logCopies(self, ignored):
        for address in self.queued.recipients:
            log.info(
                "deliver: {id} to=<{to}>{orig} status=forwarded (queued as {queueId})",
                id=self.envelope.messageId,
                to=address,
                orig=originalRecipient(address, self._forwardedFrom[address]),
                queueId=self.queued.committed.id,
            )
