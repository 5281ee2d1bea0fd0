# -*- test-case-name: tests.test_pipeline -*-
"""
The delivery pipeline: the one entry of every message, whichever protocol
brought it, and the router of its recipients to the delivery targets of
L{mdpy.delivery.targets}.

It runs the checks (L{mdpy.interfaces.ICheck}, in order: when the sender is
given, at each recipient or at the end of the message, as each says; by
default SPF and DKIM, which write an C{Authentication-Results} field, RFC
8601, for mail from unauthenticated clients); a check's refusal refuses the
sender, the recipient or the message.  It resolves each recipient through
the directory (aliases, catch-all) and hands it to a target
(L{DeliveryPipeline.route}): local accounts to the local store
(L{LocalStoreTarget}: one copy per account with its own trace headers),
remote addresses the sender names to the outbound queue (L{QueueTarget}),
addresses of an ODMR gateway domain to the gateway's hold
(L{GatewayHoldTarget}), and remote addresses a local alias reaches to
forwarding (L{ForwardTarget}: a copy queued under its own id, its sender
rewritten by SRS).  Each target involved gets one transaction of its own.

Remote recipients a sender names are taken only when the sender may relay
(authenticated, or the server itself); those reached through a local alias
or forward always, and those of a gateway domain from any sender.

The queued message is the message as received; the local and forwarded
copies (the targets whose C{checkResults} is true) get the header fields of
the checks in front of it.

Invariants: a commit is all or nothing across the targets, by the two-phase
protocol of L{mdpy.interfaces.ITwoPhaseDelivery}.  The queued copies are
prepared first (L{mdpy.interfaces.IOutboundQueue.stage}: on disk, fsynced,
but not handed to delivery), then the local copies are committed (all or
nothing, L{mdpy.interfaces.IMailStore.deliver}), and only then are the
prepared copies committed (admitted to delivery).  If a preparation or the
local commit fails, whatever was prepared is aborted (withdrawn: removed
from the disk) and the commit fails: no local copy was ever visible and
nothing was sent, so the client's retry stores and queues each copy once.
The local copies come last because they alone are visible at once (to POP3
and IMAP) and cannot be taken back; a staged entry can, until it is
admitted.  A crash between staging and the local commit leaves the staged
entry on disk, and the next start loads it as queued: its remote recipients
may then get the message twice, once more from the client's retry (the
duplicate RFC 5321 section 6.1 accepts for a reply lost in a crash), and
its local ones once; nothing is lost.  A withdrawal that fails is logged:
the entry would be delivered after the next start, again a duplicate and
never a loss.
"""

from twisted.internet import defer
from zope.interface import implementer

from mdpy import errors
from mdpy.address import splitAddress
from mdpy.checks import DATA, MAIL, RCPT, AuthenticationResultsCheck, runChecks
from mdpy.delivery.targets import (  # noqa: F401 (public names of this module)
    HEAD_SIZE,
    SPILL_SIZE,
    ForwardTarget,
    GatewayHoldTarget,
    LocalStoreTarget,
    QueueTarget,
    Region,
    spoolIn,
    stripTraceHeaders,
)
from mdpy.interfaces import IDelivery, IDeliveryTarget, ITwoPhaseDelivery
from mdpy.logs import Logger
from mdpy.mailauth.authresults import stripForgedResults

CHECK_SIZE = 10 * 1024 * 1024
_SRS_PREFIXES = ("srs0=", "srs1=")
_CHUNK = 64 * 1024

log = Logger()


class Route:
    """
    Where one recipient goes: a target, the address to add to its
    transaction, and keyword arguments for that transaction's
    C{addRecipient}.

    @ivar target: an L{IDeliveryTarget}.
    @ivar address: the address given to C{addRecipient}.
    @ivar keywords: a L{dict} of further arguments to C{addRecipient}.
    """

    def __init__(self, target, address, **keywords):
        self.target = target
        self.address = address
        self.keywords = keywords

    def __repr__(self):
        return "<Route %s to %r>" % (self.address, self.target)


@implementer(IDeliveryTarget)
class DeliveryPipeline:
    """
    Route recipients to the local store, the outbound queue, a gateway's
    hold or forwarding, and commit over all of them at once.

    The targets are attributes that may be replaced (by one wrapping the
    original, say); setting C{store}, C{queue}, C{srs} or C{gateways}
    builds the targets again from them.  A subclass sends recipients to a
    target of its own by overriding L{route}.

    @ivar directory: an L{mdpy.interfaces.IDirectory}.
    @ivar spoolDir: where bodies larger than L{SPILL_SIZE} are spooled.
    @ivar checks: the L{mdpy.interfaces.ICheck}s every message goes
        through, in order.
    @ivar localTarget: the L{LocalStoreTarget} of C{store}.
    @ivar queueTarget: the L{QueueTarget} of C{queue}, or L{None}.
    @ivar gatewayTarget: the L{GatewayHoldTarget} of C{gateways}, or L{None}
        when there is no queue.
    @ivar forwardTarget: the L{ForwardTarget} of C{queue} and C{srs}, or
        L{None} when there is no queue.
    """

    MAX_KNOWN_ACCOUNTS = LocalStoreTarget.MAX_KNOWN_ACCOUNTS

    def __init__(self, directory, store, queue=None, spoolDir=None, srs=None, checker=None,
                 gateways=None, checks=(), quotas=None):
        """
        @param store: an L{mdpy.interfaces.IMailStore}.
        @param queue: an L{mdpy.interfaces.IOutboundQueue}, or L{None} when
            there is no outbound delivery (remote recipients then get a
            temporary refusal).
        @param srs: an L{mdpy.mailauth.srs.SRS} for forwarded mail, or
            L{None} to keep the original sender.
        @param checker: an L{mdpy.mailauth.authresults.InboundChecker},
            run after C{checks} (as an L{AuthenticationResultsCheck}); or
            L{None}.
        @param gateways: the L{mdpy.odmr.gateway.Gateways} whose mail is
            queued from any sender (the queue holds it until ATRN), each
            recipient verified first when the gateway says so; or L{None}.
        @param quotas: the L{mdpy.quota.QuotaPolicy} local accounts are
            held to, or L{None}.
        """
        self.directory = directory
        self.spoolDir = spoolDir
        self._store, self._queue, self._srs, self._gateways = store, queue, srs, gateways
        self.quotas = quotas
        self.localTarget = LocalStoreTarget(store, spoolDir, quotas)
        self._buildQueueTargets()
        self.checks = list(checks)
        if checker is not None:
            self.checks.append(AuthenticationResultsCheck(checker))

    def _buildQueueTargets(self):
        if self._queue is None:
            self.queueTarget = self.gatewayTarget = self.forwardTarget = None
            return
        self.queueTarget = QueueTarget(self._queue, self.spoolDir)
        self.gatewayTarget = GatewayHoldTarget(self._gateways, self.queueTarget)
        self.forwardTarget = ForwardTarget(self.queueTarget, self._srs)

    @property
    def store(self):
        """
        The L{mdpy.interfaces.IMailStore} of C{localTarget}.
        """
        return self._store

    @store.setter
    def store(self, store):
        self._store = store
        self.localTarget = LocalStoreTarget(store, self.spoolDir, self.quotas)

    @property
    def queue(self):
        """
        The L{mdpy.interfaces.IOutboundQueue}, or L{None}.
        """
        return self._queue

    @queue.setter
    def queue(self, queue):
        self._queue = queue
        self._buildQueueTargets()

    @property
    def srs(self):
        """
        The L{mdpy.mailauth.srs.SRS} of forwarded copies, or L{None}.
        """
        return self._srs

    @srs.setter
    def srs(self, srs):
        self._srs = srs
        self._buildQueueTargets()

    @property
    def gateways(self):
        """
        The L{mdpy.odmr.gateway.Gateways}, or L{None}.
        """
        return self._gateways

    @gateways.setter
    def gateways(self, gateways):
        self._gateways = gateways
        self._buildQueueTargets()

    @property
    def targets(self):
        """
        The pipeline's own targets, in the order their transactions are
        prepared and committed: the queue first, so that the copy relayed
        for the sender is queued under the message's id.
        """
        return [t for t in (self.queueTarget, self.gatewayTarget, self.forwardTarget, self.localTarget)
                if t is not None]

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

    def route(self, address, envelope):
        """
        Say where a recipient goes.  Synchronous.  A subclass overrides
        this to send some recipients to a target of its own, and calls it
        for the others; any target will do, but a message may hold only
        one transaction that is not an L{ITwoPhaseDelivery} (the local
        store's), so that its commit stays all or nothing.

        @param address: the recipient as given.
        @param envelope: the L{mdpy.envelope.Envelope} of the message.
        @return: a sequence of L{Route}s: the targets and the addresses
            their transactions are given.
        @raise mdpy.errors.MailError: the recipient is refused.
        """
        gateways = self.gateways
        if gateways and gateways.forAddress(address) is not None:
            return [Route(self._remoteTarget(self.gatewayTarget, [address]), address)]
        original = self.reverseSRS(address)
        if original is not None:
            return [Route(self._remoteTarget(self.queueTarget, [original]), original)]
        resolution = self.directory.resolve(address)
        routes = []
        if resolution.remote:
            if self.directory.hasDomain(splitAddress(address)[1]):
                target = self._remoteTarget(self.forwardTarget, resolution.remote)
                routes.extend(Route(target, remote, forwardedFrom=address) for remote in resolution.remote)
            elif not self.mayRelay(envelope):
                raise errors.RelayDenied("relaying to <%s> denied" % (address,))
            else:
                target = self._remoteTarget(self.queueTarget, resolution.remote)
                routes.extend(Route(target, remote) for remote in resolution.remote)
        if resolution.local:
            # One copy per account, but one per recipient for an account
            # reached through a catch-all (see L{LocalDelivery}).
            accounts = [(account, account in resolution.caught) for account in resolution.local]
            routes.append(Route(self.localTarget, address, accounts=accounts))
        return routes

    def _remoteTarget(self, target, addresses):
        if target is None:
            raise errors.RemoteUnavailable("no outbound delivery for %s" % (", ".join(addresses),))
        return target

    def ensureAccount(self, account):
        """
        See L{LocalStoreTarget.ensureAccount}.
        """
        return self.localTarget.ensureAccount(account)

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


def _then(result, f, *args):
    """
    Call C{f(result, *args)} now, or once C{result} fires if it is a
    L{Deferred}.
    """
    if isinstance(result, defer.Deferred):
        return result.addCallback(f, *args)
    return f(result, *args)


@implementer(IDelivery)
class PipelineDelivery:
    """
    One transaction of L{DeliveryPipeline}: the router of one message.  It
    spools the message, starts one transaction per target its recipients
    go to, and at commit writes the message to each of them and commits
    over all of them (see the module's invariants).
    """

    def __init__(self, pipeline, envelope):
        self.pipeline = pipeline
        self.envelope = envelope
        self._deliveries = {}  # target: its transaction, in the order started
        self._accepted = set()  # the targets that accepted a recipient
        self._finished = []  # the transactions committed or aborted
        self._verdicts = []  # of the checks: their headers go into the copies
        self._spool = spoolIn(pipeline.spoolDir)

    def _checked(self, verdict):
        self._verdicts.append(verdict)

    def _ebRefused(self, failure):
        self.abort()
        return failure

    def addRecipient(self, address):
        """
        See L{IDelivery.addRecipient}: after the checks of the recipient
        (L{mdpy.checks.RCPT}) accepted it, added to the transaction of each
        target L{DeliveryPipeline.route} names.
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
        return self._addRoutes(list(self.pipeline.route(address, self.envelope)))

    def _addRoutes(self, routes):
        """
        Add each of C{routes} in turn, at once while no step waits.
        """
        while routes:
            route = routes.pop(0)
            result = _then(self._deliveryFor(route.target), self._addRoute, route)
            if isinstance(result, defer.Deferred):
                return result.addCallback(lambda _: self._addRoutes(routes))
        return None

    def _deliveryFor(self, target):
        """
        @return: the transaction of C{target}, started now if need be (or a
            L{Deferred} of it).
        @raise errors.TemporaryFailure: C{target} is a second one whose
            transactions are not two-phase.
        """
        delivery = self._deliveries.get(target)
        if delivery is not None:
            return delivery
        return _then(target.startDelivery(self.envelope), self._started, target)

    def _hasPlain(self):
        return any(not ITwoPhaseDelivery.providedBy(d) for d in self._deliveries.values())

    def _started(self, delivery, target):
        if not ITwoPhaseDelivery.providedBy(delivery) and self._hasPlain():
            delivery.abort()
            raise errors.TemporaryFailure(
                "the message goes to another target whose commit cannot be taken back already;"
                " this recipient needs a transaction of its own")
        self._deliveries[target] = delivery
        return delivery

    def _addRoute(self, delivery, route):
        d = delivery.addRecipient(route.address, **route.keywords)
        return _then(d, self._cbAdded, route.target)

    def _cbAdded(self, ignored, target):
        self._accepted.add(target)

    def write(self, data):
        """
        See L{IDelivery.write}.
        """
        self._spool.write(data)

    def commit(self):
        """
        See L{IDelivery.commit}: the checks of the message, then the
        message is written to each target's transaction, the two-phase ones
        are prepared, the plain one (the local store's) committed, and the
        prepared ones committed (see the module's invariants); one after
        the other, since they read the same spool.
        """
        deliveries = self._ordered()
        if not deliveries:
            self.abort()
            return defer.fail(errors.PermanentFailure("no recipients"))
        d = self._check(deliveries)
        d.addCallback(self._writeAndCommit, deliveries)
        d.addBoth(self._cbClose)
        return d

    def _writeAndCommit(self, results, deliveries):
        self._write(results, deliveries)
        return self._commitAll(deliveries)

    def _ordered(self):
        """
        @return: the transactions that accepted a recipient: those of the
            pipeline's own targets in the order of
            L{DeliveryPipeline.targets}, then the others in the order they
            were started.
        """
        own = self.pipeline.targets
        accepted = [t for t in self._deliveries if t in self._accepted]
        accepted.sort(key=lambda t: own.index(t) if t in own else len(own))
        return [(t, self._deliveries[t]) for t in accepted]

    def _check(self, deliveries):
        """
        Run the checks of the message (L{mdpy.checks.DATA}).

        @return: a L{Deferred} firing with the header fields the checks
            add, or C{b""}; or failing with the error of one that refused.
        """
        checks = self.pipeline.checks
        if not any(getattr(target, "checkResults", False) for target, _ in deliveries):
            # Only the copies that get the results of SPF and DKIM need
            # them: the checks' lookups would be for nothing.
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

    def _write(self, results, deliveries):
        """
        Write the message to each transaction: with C{results} in front of
        it for the targets that take the checks' results, as received for
        the others.
        """
        spool = self._spool
        spool.seek(0)
        head = spool.read(HEAD_SIZE)
        checked = head
        for verdict in self._verdicts:
            for authservId in verdict.authservIds:
                # RFC 8601 section 5: results claiming to be ours that came
                # with the message are forged.
                checked = stripForgedResults(checked, authservId)
        for target, delivery in deliveries:
            if getattr(target, "checkResults", False):
                delivery.write(results)
                delivery.write(checked)
            else:
                delivery.write(head)
            rest = Region(spool, len(head))
            for chunk in iter(lambda: rest.read(_CHUNK), b""):
                delivery.write(chunk)

    def _commitAll(self, deliveries):
        """
        The two-phase commit of L{ITwoPhaseDelivery} over C{deliveries}.
        """
        prepared = [d for _, d in deliveries if ITwoPhaseDelivery.providedBy(d)]
        plain = [d for _, d in deliveries if not ITwoPhaseDelivery.providedBy(d)]
        if not prepared:
            # The one plain transaction alone (the local store's, mostly).
            [delivery] = plain
            d = defer.maybeDeferred(delivery.commit)
            return d.addCallback(lambda _: self._finished.append(delivery))
        d = defer.succeed(None)
        for delivery in prepared:
            d.addCallback(lambda _, delivery=delivery: delivery.prepare())
        for delivery in plain:
            d.addCallback(lambda _, delivery=delivery: delivery.commit())
            d.addCallback(lambda _, delivery=delivery: self._finished.append(delivery))
        d.addCallbacks(self._commitPrepared, self._abortPrepared, callbackArgs=(prepared,),
                       errbackArgs=(prepared,))
        return d

    def _commitPrepared(self, ignored, prepared):
        """
        Make the prepared transactions visible, past the point of no return.
        A transaction that fails to is logged: it stays prepared.
        """
        d = defer.succeed(None)
        for delivery in prepared:
            self._finished.append(delivery)
            d.addCallback(lambda _, delivery=delivery: delivery.commit())
            d.addErrback(
                lambda f, delivery=delivery: log.failure(
                    "deliver: {id} a prepared copy could not be committed ({delivery!r})",
                    f, id=self.envelope.messageId, delivery=delivery))
        return d

    def _abortPrepared(self, failure, prepared):
        """
        Take back what was prepared, since the commit failed.

        @return: a L{Deferred} failing with C{failure} once that is done.
        """
        self._finished.extend(prepared)
        aborts = [defer.maybeDeferred(delivery.abort) for delivery in prepared]
        d = defer.DeferredList(aborts)
        d.addCallback(lambda _: failure)
        return d

    def _cbClose(self, result):
        self.abort()
        return result

    def abort(self):
        """
        See L{IDelivery.abort}: every target's transaction that was neither
        committed nor aborted yet is aborted.
        """
        self._spool.close()
        deliveries, self._deliveries = self._deliveries, {}
        for delivery in deliveries.values():
            if not any(delivery is finished for finished in self._finished):
                delivery.abort()
