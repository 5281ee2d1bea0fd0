# -*- test-case-name: tests.test_relay -*-
"""
The relay: delivers the outbound queue to MX hosts or a smarthost, retries
what failed temporarily, and tells senders what failed for good.

This module is past ~800 lines on purpose: L{Relay} is one scheduler, and
its limits and retry rules, below, hold across all of its methods.

Per destination (a recipient domain, or the smarthost for everything) up to
L{RelaySettings.maxPerDestination} connections run, and up to
L{RelaySettings.maxConnections} in all.  Each connection carries messages
from its destination's ready list until the list is empty or
L{RelaySettings.maxMessagesPerConnection} were sent; all recipients of one
message in one domain go in one transaction.

Routes are tried in order (MX preference, then each host's addresses, as
L{mdpy.delivery.mx.MXResolver} gives them); a route that cannot be reached or
refuses the session passes the destination on to the next one.  With
C{mx_tls = may}, STARTTLS is used when offered, without verifying the
certificate (RFC 7435 opportunistic security); when its handshake fails the
same host is tried again at once in plain text, never on the same
connection.  A smarthost's certificate is verified (service_identity), and
its password is only ever sent over TLS.

Results (RFC 5321 section 4.5.4): a recipient accepted with 2xx is done; a
5xx fails it for good; a 4xx, a lost connection or a DNS timeout defers it
to the next slot of C{[relay] retry}, until C{[relay] lifetime} has passed
since it was queued, when it fails too.  Once no route of a destination
could be reached, its mail arriving before the first retry slot is deferred
without a connection of its own ("delivery temporarily suspended"; a flush
lifts that), and no new connection replaces one that failed while others to
the destination still run.  Mail of a domain on hold (a gateway domain,
released by ODMR's ATRN) is never tried; it fails when it has waited
C{[relay] lifetime}.  Every failure is reported to the
envelope sender in one RFC 3464 DSN per message and attempt, sent with the
null sender; mail from the null sender is never bounced.  A DSN its sender
cannot take (an unknown local address) goes to the postmaster instead, as
Postfix's "double bounce"; one that cannot be delivered for now is tried
again after the first retry delay, and dropped, with a log line, when it
has waited C{[relay] lifetime} or even the postmaster refuses it.  A delay
warning goes out once when a message has waited C{[relay] delay_warning}.

Invariants:
 - A recipient is in at most one transaction at a time
   (L{QueuedRecipient.active}); a held domain's recipients are never started.
 - A recipient's new state is saved (L{SpoolQueue.save}) as soon as its
   result is known, before the connection goes on to the next message.
 - A recipient marked failed is kept (state C{failed}) until its DSN is
   committed, so a crash in between sends the DSN after the restart.
"""

import collections
import heapq
import itertools

from twisted.application import service
from twisted.internet import defer, ssl

from mdpy import errors
from mdpy.delivery import dsn
from mdpy.envelope import Envelope
from mdpy.interfaces import BOUNCED, FAILED, PENDING, SENT
from mdpy.logs import Logger
from mdpy.smtp.client import OutboundMessage, SessionResult, deliverOver
from mdpy.tls import clientEndpoint, verifyingClientOptions

log = Logger()


class RelaySettings:
    """
    The tunables of L{Relay}, with the defaults of C{[relay]}.

    @ivar smarthost: C{(host, port)} or L{None} for MX delivery.
    @ivar smarthostTLS: C{"none"}, C{"starttls"} or C{"implicit"}.
    @ivar smarthostTrust: a PEM file of CA certificates, or L{None} for the
        platform's trust store.
    @ivar smarthostCredentials: C{(username, password)} or L{None}.
    @ivar connectionIdle: seconds a connection whose destination has nothing
        ready waits for new mail before it quits (as Postfix's connection
        cache does); 0 quits at once.
    """

    def __init__(
        self,
        smarthost=None,
        smarthostTLS="starttls",
        smarthostTrust=None,
        smarthostCredentials=None,
        remotePort=25,
        mxTLS=True,
        retry=(300, 900, 1800, 3600, 7200, 14400, 28800),
        lifetime=5 * 86400,
        delayWarning=4 * 3600,
        maxConnections=100,
        maxPerDestination=20,
        maxMessagesPerConnection=100,
        connectTimeout=30,
        commandTimeout=300,
        connectionIdle=2,
    ):
        self.smarthost = smarthost
        self.smarthostTLS = smarthostTLS
        self.smarthostTrust = smarthostTrust
        self.smarthostCredentials = smarthostCredentials
        self.remotePort = remotePort
        self.mxTLS = mxTLS
        self.retry = list(retry) or [300]
        self.lifetime = lifetime
        self.delayWarning = delayWarning
        self.maxConnections = max(1, maxConnections)
        self.maxPerDestination = max(1, maxPerDestination)
        self.maxMessagesPerConnection = max(1, maxMessagesPerConnection)
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.connectionIdle = connectionIdle


def parseHostPort(text, defaultPort):
    """
    @return: C{(host, port)} from C{host}, C{host:port}, C{[host]:port} or
        C{[v6]:port}.
    @raise ValueError: a malformed value.
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError("expected [host]:port")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError("no host")
    port = int(port) if port else defaultPort
    if not 0 < port < 65536:
        raise ValueError("bad port")
    return host, port


class Route:
    """
    One place to try: C{hostname} (for logs, TLS and Remote-MTA) at
    C{address} (an IP address, or a name for a smarthost) and C{port}.
    """

    def __init__(self, hostname, address, port):
        self.hostname = hostname
        self.address = address
        self.port = port

    def __repr__(self):
        return "%s[%s]:%d" % (self.hostname, self.address, self.port)


class _Destination:
    """
    The ready messages of one domain (or of the smarthost), and its
    connections.
    """

    def __init__(self, key):
        self.key = key
        self.ready = collections.deque()
        self.sessions = 0
        self.idle = []  # Deferreds of connections waiting for mail
        self.failure = None  # why a connection found no route that works

    def wakeIdle(self, more):
        """
        Fire waiting connections: with C{True} while there is ready mail for
        them, or all with C{False} (quit).
        """
        while self.idle and (self.ready or not more):
            self.idle.pop(0).callback(more)


class Relay(service.Service):
    """
    Delivers a L{mdpy.backends.files.queue.SpoolQueue}.

    @ivar queue: the queue.
    @ivar resolver: an L{mdpy.delivery.mx.MXResolver} (unused with a
        smarthost).
    @ivar bounceTarget: the L{IDeliveryTarget} DSNs go to (the pipeline).
    @ivar clock: the L{IReactorTime} of retries and timeouts (the reactor
        unless a test gives a L{twisted.internet.task.Clock}).
    @ivar postmaster: where a DSN goes that its sender cannot take.
    """

    def __init__(self, queue, resolver, bounceTarget, hostname, settings=None,
                 reactor=None, clock=None, postmaster=None):
        if reactor is None:
            from twisted.internet import reactor
        self.clock = clock or reactor
        self.queue = queue
        self.resolver = resolver
        self.bounceTarget = bounceTarget
        self.hostname = hostname
        self.postmaster = postmaster or "postmaster@" + hostname
        self._reporting = {}  # entry id: None while its DSN goes out, or the timer of its next try
        self.settings = settings or RelaySettings()
        self.reactor = reactor
        self._destinations = {}
        self._sessions = 0
        self._waiting = []  # heap of (due, serial, entry, recipient)
        self._serial = itertools.count()
        self._timer = None
        self._tlsOptions = None
        self._suspended = {}  # destination key: (until, error)
        self._heldTimer = None
        queue.listeners.append(self._queued)

    # --- service ---------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        for entry in self.queue.list():
            if entry.inState(FAILED):
                self._report(entry)
        self._scheduleAll()
        self._expireHeld()

    def stopService(self):
        service.Service.stopService(self)
        for timer in [self._timer, self._heldTimer] + list(self._reporting.values()):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._heldTimer = None
        self._reporting = {}
        for destination in list(self._destinations.values()):
            destination.wakeIdle(False)

    # --- scheduling ------------------------------------------------------------

    def _now(self):
        return self.clock.seconds()

    def _destinationKey(self, recipient):
        if self.settings.smarthost is not None:
            return ""
        return recipient.domain

    def _queued(self, entry):
        """
        A queue listener: a new entry (or, with L{None}, a flush or release).
        """
        if not self.running:
            return
        if entry is None:
            self._scheduleAll()
        else:
            self._schedule([(entry, r) for r in entry.inState(PENDING)])

    def _scheduleAll(self):
        now = self._now()
        self._suspended.clear()
        self._waiting = []
        due = []
        for entry in self.queue.list():
            for recipient in entry.recipients:
                if recipient.state != PENDING or recipient.active:
                    continue
                if recipient.due <= now:
                    due.append((entry, recipient))
                else:
                    self._wait(entry, recipient)
        self._schedule(due)
        self._armTimer()

    def _schedule(self, pairs):
        """
        Put due recipients on their destinations' ready lists, one item per
        message and destination, and start connections.
        """
        groups = {}
        for entry, recipient in pairs:
            if entry.removed or recipient.state != PENDING or recipient.active:
                continue
            if self.queue.isHeld(recipient.domain):
                continue
            key = self._destinationKey(recipient)
            groups.setdefault((entry.id, key), (entry, key, []))[2].append(recipient)
        touched = {}
        for entry, key, recipients in groups.values():
            for recipient in recipients:
                recipient.active = True
            destination = self._destinations.get(key)
            if destination is None:
                destination = self._destinations[key] = _Destination(key)
            destination.ready.append((entry, recipients))
            touched[key] = destination
        for destination in touched.values():
            suspended = self._suspension(destination.key)
            if suspended is not None and not destination.sessions:
                self._deferReady(destination, suspended)
                continue
            destination.wakeIdle(True)
            self._startSessions(destination)

    def _suspension(self, key):
        """
        @return: the error that suspended delivery to C{key}, or L{None}
            when it may be tried.
        """
        until, error = self._suspended.get(key, (0, None))
        if error is not None and self._now() >= until:
            del self._suspended[key]
            return None
        return error

    def _suspend(self, destination, error):
        """
        No route of C{destination} could be reached: its mail arriving
        before the first retry is deferred at once, without a connection
        attempt per message (Postfix's "delivery temporarily suspended").
        """
        suspended = errors.TemporaryFailure("delivery temporarily suspended: " + error.detail)
        suspended.status = getattr(error, "status", None)
        self._suspended[destination.key] = (self._now() + self.settings.retry[0], suspended)

    def _startSessions(self, destination):
        settings = self.settings
        while (
            destination.failure is None
            and destination.ready
            and destination.sessions < settings.maxPerDestination
            and self._sessions < settings.maxConnections
            and destination.sessions < len(destination.ready)
        ):
            destination.sessions += 1
            self._sessions += 1
            d = self._runDestination(destination)
            d.addErrback(self._ebSession, destination)
            d.addBoth(self._sessionEnded, destination)

    def _ebSession(self, failure, destination):
        log.failure("relay: delivery to {key} failed", failure, key=destination.key or "smarthost")
        self._deferReady(destination, errors.TemporaryFailure("internal error"))

    def _sessionEnded(self, ignored, destination):
        destination.sessions -= 1
        self._sessions -= 1
        if destination.ready and not destination.sessions:
            # The last connection failed (or the relay stops): what it
            # left is deferred, and so is what arrives before the retry.
            failure = destination.failure or errors.TemporaryFailure("not delivered")
            if self.running:
                self._suspend(destination, failure)
            self._deferReady(destination, failure)
        if not destination.ready and not destination.sessions:
            self._destinations.pop(destination.key, None)
        if self.running:
            for other in list(self._destinations.values()):
                if other.ready:
                    self._startSessions(other)

    def _wait(self, entry, recipient):
        heapq.heappush(self._waiting, (recipient.due, next(self._serial), entry, recipient))

    def _armTimer(self):
        if not self.running or not self._waiting:
            return
        due = self._waiting[0][0]
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= due:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(max(0, due - self._now()), self._timerFired)

    def _timerFired(self):
        self._timer = None
        now = self._now()
        due = []
        while self._waiting and self._waiting[0][0] <= now:
            when, _, entry, recipient = heapq.heappop(self._waiting)
            if recipient.due == when:
                due.append((entry, recipient))
        self._schedule(due)
        self._armTimer()

    # --- ATRN: held mail over a connection the customer opened ---------------------

    def hasHeld(self, domains):
        """
        @return: whether mail waits for any of C{domains}, not under way.
        """
        domains = {d.lower() for d in domains}
        return any(
            r.state == PENDING and not r.active and r.domain in domains
            for entry in self.queue.entries.values()
            for r in entry.recipients
        )

    def _expireHeld(self):
        """
        Tell the senders of held mail that waited C{delay_warning} (once),
        and fail what waited longer than the lifetime without an ATRN
        taking it; then look again in an hour (or a lifetime, if shorter).
        """
        self._heldTimer = None
        now = self._now()
        lifetime = self.settings.lifetime
        for entry in self.queue.list():
            held = [
                r for r in entry.recipients
                if r.state == PENDING and not r.active and self.queue.isHeld(r.domain)
            ]
            expired = [r for r in held if now - entry.created >= lifetime]
            if held and not expired and self._delayWarningDue(entry):
                for recipient in held:
                    recipient.status = recipient.status or "4.4.1"
                    recipient.reason = recipient.reason or "held until its domain's ODMR customer collects it"
                self._warn(entry)
            for recipient in expired:
                recipient.state = FAILED
                recipient.status = "4.4.7"
                recipient.lastAttempt = now
                recipient.diagnostic = None
                recipient.reason = "held for its domain's ODMR customer, which did not release it in time"
                log.info("relay: {id} to <{rcpt}>: expired while held for ATRN", id=entry.id, rcpt=recipient.address)
            if expired:
                self._afterAttempt(entry)
        if self.running:
            self._heldTimer = self.clock.callLater(min(3600, lifetime), self._expireHeld)

    def release(self, domains, route):
        """
        Take the held mail of C{domains} for one ODMR turnaround (RFC 2645),
        whatever its retry schedule says.

        @param route: the L{Route} naming the customer, for logs and DSNs.
        @return: a L{HeldRelease} whose C{nextMessage} and C{messageDone}
            drive an L{mdpy.smtp.client.ESMTPClient}; call its C{close} when
            the connection is over.
        """
        domains = {d.lower() for d in domains}
        pairs = []
        for entry in self.queue.list():
            recipients = [
                r for r in entry.recipients
                if r.state == PENDING and not r.active and r.domain in domains
            ]
            for recipient in recipients:
                recipient.active = True
            if recipients:
                pairs.append((entry, recipients))
        return HeldRelease(self, pairs, route)

    # --- one connection --------------------------------------------------------

    @defer.inlineCallbacks
    def _runDestination(self, destination):
        """
        Deliver what C{destination} has ready over one connection at a time,
        trying its routes in order.
        """
        try:
            routes = yield self._routes(destination)
        except errors.MailError as e:
            if e.temporary:
                destination.failure = e
            else:
                self._failReady(destination, e)
            return
        lastError = errors.TemporaryFailure("no route")
        index = 0
        retried = False
        while destination.ready and index < len(routes) and self.running:
            route = routes[index]
            useTLS = self._tlsWanted()
            result = yield self._session(route, destination, useTLS)
            if result.tlsFailed and useTLS and not self._tlsRequired():
                log.info("relay: TLS handshake with {route} failed; trying it again without TLS", route=route)
                result = yield self._session(route, destination, False)
            if result.error is None:
                destination.failure = None
                if len(destination.ready) < destination.sessions:
                    # The other connections take what is ready: a new one
                    # here would have nothing to carry.
                    return
                continue  # connection reuse limit: the same route again
            lastError = result.error
            if result.messagesAttempted and not retried:
                # It worked for a while: one new connection to the same host.
                retried = True
                continue
            log.info("relay: {route}: {why}", route=route, why=result.error.detail)
            index += 1
        if destination.ready:
            # No new connection is started for the destination; those still
            # at work (or waiting idle) take what is ready, and what the last
            # one leaves is deferred (L{_sessionEnded}).
            destination.failure = lastError
            destination.wakeIdle(True)

    def _routes(self, destination):
        settings = self.settings
        if settings.smarthost is not None:
            host, port = settings.smarthost
            return defer.succeed([Route(host, host, port)])
        d = self.resolver.resolve(destination.key)
        d.addCallback(
            lambda found: [Route(r.hostname, r.address, settings.remotePort) for r in found]
        )
        return d

    def _tlsWanted(self):
        settings = self.settings
        if settings.smarthost is not None:
            return settings.smarthostTLS == "starttls"
        return settings.mxTLS

    def _tlsRequired(self):
        return self.settings.smarthost is not None and self.settings.smarthostTLS != "none"

    def _clientTLSOptions(self, route):
        """
        @return: the TLS options for C{route}: the smarthost's, verifying its
            name, or one shared set that verifies nothing, for MX hosts.
        """
        if self._tlsOptions is None:
            settings = self.settings
            if settings.smarthost is None:
                self._tlsOptions = ssl.CertificateOptions(verify=False)
            else:
                self._tlsOptions = verifyingClientOptions(route.hostname, settings.smarthostTrust)
        return self._tlsOptions

    def _endpoint(self, route):
        """
        @return: the endpoint of C{route}: an IP address straight away, a
            smarthost name through name resolution, in TLS for an
            implicit-TLS smarthost.
        """
        settings = self.settings
        tlsOptions = None
        if settings.smarthost is not None and settings.smarthostTLS == "implicit":
            tlsOptions = self._clientTLSOptions(route)
        return clientEndpoint(self.reactor, route.address, route.port, settings.connectTimeout, tlsOptions)

    def _session(self, route, destination, useTLS):
        """
        One connection to C{route}, carrying messages of C{destination}.

        @return: a L{Deferred} firing with the L{SessionResult}.
        """
        settings = self.settings
        sent = [0]

        def take():
            while destination.ready and sent[0] < settings.maxMessagesPerConnection:
                entry, recipients = destination.ready.popleft()
                message = self._outboundMessage(entry, recipients)
                if message is not None:
                    sent[0] += 1
                    return message
            return None

        def nextMessage():
            message = take()
            if (
                message is not None
                or not settings.connectionIdle
                or not self.running
                or sent[0] >= settings.maxMessagesPerConnection
            ):
                return message
            # Keep the connection a moment for mail still arriving.  Should
            # the server close it meanwhile, the client cancels the wait and
            # the connection leaves the cache at once.
            waiting = defer.Deferred(lambda waiting: self._idleOver(destination, waiting, timer))
            destination.idle.append(waiting)
            timer = self.reactor.callLater(settings.connectionIdle, self._idleOver, destination, waiting)
            waiting.addCallback(lambda more: (timer.active() and timer.cancel(), take() if more else None)[1])
            return waiting

        def messageDone(message, results):
            message.closeUnused()
            tried = [(r, result) for r, result in zip(message.queued, results) if not result.unsent]
            unsent = [r for r, result in zip(message.queued, results) if result.unsent]
            if unsent:
                # Lost with the connection before any of it went out: not an
                # attempt; the next connection (or one waiting idle) takes it.
                log.info(
                    "relay: {id} not sent before the connection to {route} was lost; trying again",
                    id=message.entry.id,
                    route=route,
                )
                destination.ready.appendleft((message.entry, unsent))
                destination.wakeIdle(True)
            if tried:
                self._recordResults(message.entry, *zip(*tried), route)

        credentials = settings.smarthostCredentials if settings.smarthost is not None else None
        try:
            endpoint = self._endpoint(route)
            tlsOptions = self._clientTLSOptions(route) if useTLS else None
        except Exception as e:
            log.error("relay: cannot connect to {route}: {why}", route=route, why=e)
            return defer.succeed(SessionResult(error=errors.TemporaryFailure(errors.describe(e))))
        return deliverOver(
            self.clock,
            endpoint,
            self.hostname,
            nextMessage,
            messageDone,
            tlsOptions=tlsOptions,
            tlsRequired=useTLS and self._tlsRequired(),
            credentials=credentials,
            timeout=settings.commandTimeout,
        )

    def _idleOver(self, destination, waiting, timer=None):
        """
        End the wait of an idle connection: its time is over, or (with
        C{timer}, cancelled) the connection was lost.
        """
        if waiting in destination.idle:
            destination.idle.remove(waiting)
            if timer is None:
                waiting.callback(False)
            elif timer.active():
                timer.cancel()

    def _outboundMessage(self, entry, recipients):
        """
        @return: the L{OutboundMessage} of C{entry} for C{recipients}, or
            L{None} (after taking it out of the queue) when its file cannot
            be read.
        """
        if entry.removed:
            for recipient in recipients:
                recipient.active = False
            return None
        try:
            body = entry.openBody()
        except OSError as e:
            for recipient in recipients:
                recipient.active = False
            self.queue.quarantine(entry, "cannot open its message file: %s" % (e.strerror,))
            return None
        opened = [body]

        def openBody():
            if opened:
                return opened.pop()
            return entry.openBody()

        message = OutboundMessage(
            entry.id,
            entry.sender,
            [r.address for r in recipients],
            entry.size,
            openBody,
            eightBit=entry.eightBit,
            smtputf8=entry.smtputf8,
        )
        message.entry = entry
        message.queued = recipients
        message.closeUnused = lambda: [f.close() for f in opened]
        return message

    # --- results ---------------------------------------------------------------

    def _recordResults(self, entry, recipients, results, route):
        now = self._now()
        for recipient, result in zip(recipients, results):
            recipient.active = False
            recipient.attempts += 1
            recipient.lastAttempt = now
            recipient.status = result.status()
            recipient.diagnostic = result.diagnostic()
            recipient.remoteMTA = route.hostname if result.remote else None
            recipient.reason = None if result.remote else result.text
            if result.delivered:
                recipient.state = SENT
                outcome = "sent"
            elif result.permanent:
                recipient.state = FAILED
                outcome = "bounced"
            else:
                outcome = self._deferRecipient(entry, recipient, now)
            self._logRecipient(entry, recipient, outcome, route, result.reply() if result.remote else result.text)
        self._afterAttempt(entry)

    def _logRecipient(self, entry, recipient, outcome, route, why):
        """
        Log what became of one recipient of one attempt, as Postfix's
        C{smtp} does: C{relay: ID to=<rcpt> relay=host[address]:port
        delay=seconds since queued dsn=X.Y.Z status=sent|deferred|bounced|expired
        (the reply, or why no server gave one)}.

        @param route: the L{Route} tried, or L{None} when none was reached.
        """
        log.info(
            "relay: {id} to=<{rcpt}> relay={route} delay={delay} dsn={status} status={outcome} ({why})",
            id=entry.id,
            rcpt=recipient.address,
            route=route if route is not None else "none",
            delay=_seconds(self._now() - entry.created),
            status=recipient.status,
            outcome=outcome,
            why=why,
        )

    def _deferRecipient(self, entry, recipient, now):
        """
        Schedule the next attempt of C{recipient}, or fail it when its
        lifetime is over.

        @return: C{"deferred"} or C{"expired"}.
        """
        settings = self.settings
        if now - entry.created >= settings.lifetime:
            recipient.state = FAILED
            if not recipient.status or not recipient.status.startswith("4."):
                recipient.status = "4.4.7"
            recipient.reason = "delivery time expired" + (
                "; last error: %s" % (recipient.reason,) if recipient.reason else ""
            )
            return "expired"
        delay = settings.retry[min(recipient.attempts, len(settings.retry)) - 1]
        recipient.due = now + delay
        self._wait(entry, recipient)
        self._armTimer()
        return "deferred"

    def _deferReady(self, destination, error):
        """
        Defer (or fail, past their lifetime) everything C{destination} has
        ready, after C{error} ended every attempt to reach it.
        """
        self._settleReady(destination, error, permanent=False)

    def _failReady(self, destination, error):
        """
        Fail everything C{destination} has ready: C{error} says it can never
        be reached (no such domain, a null MX).
        """
        self._settleReady(destination, error, permanent=True)

    def _settleReady(self, destination, error, permanent):
        now = self._now()
        status = getattr(error, "status", None) or ("5.4.4" if permanent else "4.4.1")
        stopping = not self.running and not permanent
        while destination.ready:
            entry, recipients = destination.ready.popleft()
            for recipient in recipients:
                recipient.active = False
                if stopping:
                    continue  # nothing was tried; the next start takes it up
                recipient.attempts += 1
                recipient.lastAttempt = now
                recipient.status = status
                recipient.diagnostic = None
                recipient.remoteMTA = None
                recipient.reason = errors.describe(error)
                if permanent:
                    recipient.state = FAILED
                    outcome = "bounced"
                else:
                    outcome = self._deferRecipient(entry, recipient, now)
                self._logRecipient(entry, recipient, outcome, None, error.detail)
            if not stopping:
                self._afterAttempt(entry)

    def _afterAttempt(self, entry):
        d = self.queue.save(entry)
        d.addErrback(self._ebSave, entry)
        if entry.inState(FAILED):
            self._report(entry)
        elif self._delayWarningDue(entry):
            self._warn(entry)

    def _ebSave(self, failure, entry):
        log.failure("relay: cannot save the state of {id}", failure, id=entry.id)

    # --- DSNs -----------------------------------------------------------------

    def _delayWarningDue(self, entry):
        settings = self.settings
        return (
            settings.delayWarning
            and not entry.warned
            and entry.sender
            and self._now() - entry.created >= settings.delayWarning
            and any(r.state == PENDING for r in entry.recipients)
        )

    def _statusFor(self, recipient, action):
        return dsn.RecipientStatus(
            recipient.address,
            action,
            recipient.status or ("5.0.0" if action == "failed" else "4.0.0"),
            diagnostic=recipient.diagnostic
            or ("x-mdpy; %s" % (recipient.reason,) if recipient.reason else None),
            remoteMTA=recipient.remoteMTA,
            lastAttempt=recipient.lastAttempt,
        )

    def _report(self, entry):
        """
        Send the DSN for the failed recipients of C{entry} (to the
        postmaster when the sender cannot take it), then mark them bounced.
        """
        if entry.id in self._reporting:
            return None  # under way, or waiting for its next try
        failed = entry.inState(FAILED)
        if not entry.sender:
            log.info("relay: {id} from the null sender: no DSN for {n} failed", id=entry.id, n=len(failed))
            return self._markBounced(entry, failed)
        if not failed:
            return None
        self._reporting[entry.id] = None
        statuses = [self._statusFor(r, "failed") for r in failed]
        d = self._sendDSN(entry, statuses)
        d.addErrback(self._ebReport, entry, statuses)

        def reported(done):
            if self._reporting.get(entry.id) is None:
                self._reporting.pop(entry.id, None)
            if done is not False:
                return self._markBounced(entry, failed)

        d.addCallback(reported)
        return d

    def _ebReport(self, failure, entry, statuses):
        """
        The DSN of C{entry} was not delivered: a sender that cannot take it
        gets it sent to the postmaster (a double bounce); a temporary
        failure is tried again later.

        @return: L{False} when the failed recipients stay failed for now.
        """
        why = errors.describe(failure)
        if not getattr(failure.value, "temporary", True):
            log.warn(
                "relay: {id}: DSN refused for <{sender}> ({why}); sent to <{postmaster}> as a double bounce",
                id=entry.id, sender=entry.sender, why=why, postmaster=self.postmaster,
            )
            d = self._sendDSN(entry, statuses, doubleBounce=(self.postmaster, why))
            d.addErrback(self._ebDoubleBounce, entry)
            return d
        return self._retryReport(entry, why)

    def _ebDoubleBounce(self, failure, entry):
        """
        The postmaster did not take the double bounce of C{entry} either:
        dropped when refused, tried again later on a temporary failure.
        """
        why = errors.describe(failure)
        if not getattr(failure.value, "temporary", True):
            log.error(
                "relay: {id}: the double bounce was refused by <{postmaster}> too ({why}); the DSN is dropped",
                id=entry.id, postmaster=self.postmaster, why=why,
            )
            return None
        return self._retryReport(entry, why)

    def _retryReport(self, entry, why):
        """
        Try the DSN of C{entry} again after the first retry delay, or drop
        it once it has waited the lifetime since its recipients failed.

        @return: L{False} while it is kept, L{None} when dropped.
        """
        if not self.running:
            self._reporting.pop(entry.id, None)
            return False  # the next start tries it again
        failedAt = max(r.lastAttempt or entry.created for r in entry.inState(FAILED))
        if self._now() - failedAt >= self.settings.lifetime:
            log.error(
                "relay: {id}: the DSN to <{sender}> could not be delivered within the lifetime; dropped ({why})",
                id=entry.id, sender=entry.sender, why=why,
            )
            return None
        delay = self.settings.retry[0]
        log.warn(
            "relay: {id}: cannot deliver the DSN to <{sender}> now ({why}); trying again in {delay} s",
            id=entry.id, sender=entry.sender, why=why, delay=delay,
        )
        self._reporting[entry.id] = self.clock.callLater(delay, self._reportAgain, entry)
        return False

    def _reportAgain(self, entry):
        self._reporting.pop(entry.id, None)
        if not entry.removed:
            self._report(entry)

    def _markBounced(self, entry, recipients):
        for recipient in recipients:
            if recipient.state == FAILED:
                recipient.state = BOUNCED
        d = self.queue.save(entry)
        d.addErrback(self._ebSave, entry)
        return d

    def _warn(self, entry):
        entry.warned = True
        until = entry.created + self.settings.lifetime
        statuses = []
        for recipient in entry.inState(PENDING):
            status = self._statusFor(recipient, "delayed")
            status.willRetryUntil = until
            statuses.append(status)
        d = self._sendDSN(entry, statuses)
        d.addCallback(lambda _: self.queue.save(entry))
        d.addErrback(self._ebDSN, entry)
        return d

    def _ebDSN(self, failure, entry):
        log.error(
            "relay: cannot send the DSN of {id} to <{sender}>: {why}",
            id=entry.id,
            sender=entry.sender,
            why=errors.describe(failure),
        )

    @defer.inlineCallbacks
    def _sendDSN(self, entry, statuses, doubleBounce=None):
        """
        Build the DSN for C{statuses} and hand it to the bounce target with
        the null sender.

        @param doubleBounce: C{(postmaster, why)} to send it to the
            postmaster, the sender having refused it (see
            L{dsn.buildDSN}).
        """
        with entry.openBody() as original:
            report = dsn.buildDSN(
                self.hostname,
                entry.sender,
                entry.id,
                entry.created,
                statuses,
                original,
                now=self._now(),
                doubleBounce=doubleBounce,
            )
        recipient = entry.sender if doubleBounce is None else doubleBounce[0]
        envelope = Envelope("", helo=self.hostname, protocol="local", trusted=True)
        delivery = yield defer.maybeDeferred(self.bounceTarget.startDelivery, envelope)
        try:
            yield defer.maybeDeferred(delivery.addRecipient, recipient)
            delivery.write(report)
            yield defer.maybeDeferred(delivery.commit)
        except BaseException:
            delivery.abort()
            raise
        log.info(
            "relay: {id}: {kind} DSN {dsnId} to <{sender}> for {rcpts}",
            id=entry.id,
            kind=statuses[0].action,
            dsnId=envelope.messageId,
            sender=recipient,
            rcpts=",".join("<%s>" % (s.address,) for s in statuses),
        )


def _seconds(delay):
    """
    @return: C{delay} for the C{delay=} of a log line: hundredths below
        10 seconds (C{"0.52"}), whole seconds above.
    """
    delay = max(delay, 0)
    return "%.2f" % (delay,) if delay < 10 else "%d" % (delay,)


class HeldRelease:
    """
    The held mail one ATRN releases: each message handed out gets its
    results recorded as the relay records its own (a 250 marks a recipient
    sent, a 4xx or a lost connection leaves it held for the next ATRN, a
    5xx bounces it); what was never handed out stays held.
    """

    def __init__(self, relay, pairs, route):
        self.relay = relay
        self.route = route
        self.ready = collections.deque(pairs)
        self.messages = 0

    def nextMessage(self):
        while self.ready:
            entry, recipients = self.ready.popleft()
            message = self.relay._outboundMessage(entry, recipients)
            if message is not None:
                self.messages += 1
                return message
        return None

    def messageDone(self, message, results):
        message.closeUnused()
        self.relay._recordResults(message.entry, message.queued, results, self.route)

    def close(self):
        while self.ready:
            for recipient in self.ready.popleft()[1]:
                recipient.active = False
