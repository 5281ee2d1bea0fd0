# -*- test-case-name: tests.test_minger -*-
"""
A Minger client (draft-hathcock-minger-06), and the SMTP recipient check
built on it: a gateway or backup MX asks the server holding the mailboxes
whether an address exists before it accepts a C{RCPT}, as MDaemon's Domain
Gateway verification does.

The draft says nothing of timeouts, retries or caching.  Here a query is
sent up to C{attempts} times, C{timeout / attempts} seconds apart, so
C{timeout} bounds the whole wait (Halon's C{minger_lookup} waits 5 seconds);
answers that say something of the address (3, 4, 5) are cached.
"""

import ipaddress
from collections import OrderedDict

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from mdpy.errors import InvalidInput, NotFound, TemporaryFailure, Unavailable
from mdpy.interfaces import IRecipientVerifier
from mdpy.logs import Logger
from mdpy.minger.protocol import (
    DEFAULT_PORT,
    STATUS_ACTIVE,
    STATUS_NOT_ACTIVE,
    STATUS_NOT_FOUND,
    formatQuery,
    parseReply,
)

log = Logger()

# How long a name resolved for the server is used before it is resolved again.
RESOLVE_TTL = 300

_MEANINGS = {
    0: "bad request",
    1: "access denied",
    2: "bad credentials",
    3: "not found",
    4: "not active",
    5: "active",
}


def _canonical(ip):
    """
    @return: the usual text form of the IP address C{ip}, to compare it.
    """
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


class _Query:
    """
    One query under way: the callers waiting for it, where it goes, how
    often it was sent.
    """

    def __init__(self, key, datagram, waiting):
        self.key = key
        self.datagram = datagram
        self.waiting = waiting
        self.target = None
        self.sent = 0
        self.timer = None
        self.finished = False


class _ReplyReceiver(DatagramProtocol):
    noisy = False

    def __init__(self, client):
        self.client = client

    def datagramReceived(self, datagram, addr):
        self.client._replyReceived(datagram, addr)


class MingerClient:
    """
    Asks one Minger server about addresses.

    All queries go from one UDP port, bound when the first is sent.  A
    reply is taken only from the server's address and port, and only for a
    mailbox (compared case-insensitively) a query is waiting for; any other
    datagram is ignored.  Queries for the same address while one is under
    way wait for its answer instead of sending another datagram.

    @cvar cacheSize: addresses whose answer is kept at most (the least
        recently used go first).
    @ivar sent: datagrams sent.
    """

    cacheSize = 10000

    def __init__(
        self,
        reactor,
        host,
        port=DEFAULT_PORT,
        secret="",
        timeout=5.0,
        attempts=2,
        cacheTTL=600,
        negativeTTL=600,
        clock=None,
        maxPending=1000,
        resolve=None,
    ):
        """
        @param reactor: provides C{listenUDP}, and C{resolve} unless
            C{resolve} is given.
        @param host: the server: an IP address, or a name resolved with
            C{resolve} and kept L{RESOLVE_TTL} seconds.
        @param secret: the shared secret; empty: anonymous queries.
        @param timeout: seconds to wait for an answer in all (resolving the
            name, when it is one, may take as long again).
        @param attempts: datagrams sent per query, C{timeout / attempts}
            seconds apart.
        @param cacheTTL: seconds an active (5) answer is kept.
        @param negativeTTL: seconds a not found (3) or not active (4) answer
            is kept.
        @param clock: an C{IReactorTime}; C{reactor} by default.
        @param maxPending: the most queries under way at once; past it a
            query is answered L{None} at once (a flood of RCPTs for random
            addresses must not grow the table of queries without end).
        @param resolve: C{name -> Deferred[str]}, the address of a host name,
            usually L{mdpy.dns.Resolver.lookupHost}; by default
            C{reactor.resolve} (IPv4).
        """
        self.reactor = reactor
        self._resolve = resolve
        self.clock = reactor if clock is None else clock
        self.host = host
        self.port = port
        self.secret = secret
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.cacheTTL = cacheTTL
        self.negativeTTL = negativeTTL
        self.maxPending = maxPending
        self.sent = 0
        self._literal = isIPAddress(host) or isIPv6Address(host)
        self._address = None
        self._resolving = None
        self._port = None
        self._pending = {}
        self._cache = OrderedDict()

    @property
    def server(self):
        """
        The server as C{host:port}, for logs.
        """
        if ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)

    def query(self, address):
        """
        Ask about C{address}.

        @return: a L{Deferred} firing with the status (an L{int}, 0 to 5), or
            with L{None} when no answer came within the timeout or the
            server's name could not be resolved.  It fails with
            L{InvalidInput} when C{address} cannot be put in a query.
        """
        try:
            datagram = formatQuery(address, self.secret)
        except InvalidInput as e:
            return defer.fail(e)
        key = address.lower()
        cached = self._cache.get(key)
        if cached is not None:
            status, expires = cached
            if expires > self.clock.seconds():
                self._cache.move_to_end(key)
                return defer.succeed(status)
            del self._cache[key]
        d = defer.Deferred()
        pending = self._pending.get(key)
        if pending is not None:
            pending.waiting.append(d)
            return d
        if len(self._pending) >= self.maxPending:
            return defer.succeed(None)
        pending = self._pending[key] = _Query(key, datagram, [d])
        sending = self._serverAddress()
        sending.addCallback(self._cbSend, pending)
        sending.addErrback(self._ebSend, pending)
        return d

    def close(self):
        """
        Answer L{None} to the queries under way and stop listening.

        @return: a L{Deferred} firing when the port is closed, or L{None}.
        """
        for pending in list(self._pending.values()):
            self._finish(pending, None)
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        return None

    # --- sending ------------------------------------------------------------

    def _serverAddress(self):
        """
        @return: a L{Deferred} firing with the server's IP address, or with
            L{None} when its name cannot be resolved (which is logged).
        """
        if self._literal:
            return defer.succeed(_canonical(self.host))
        if self._address is not None and self._address[1] > self.clock.seconds():
            return defer.succeed(self._address[0])
        d = defer.Deferred()
        if self._resolving is None:
            self._resolving = [d]
            if self._resolve is None:
                resolving = self.reactor.resolve(self.host, timeout=(self.timeout,))
            else:
                resolving = defer.maybeDeferred(self._resolve, self.host)
            resolving.addBoth(self._resolved)
        else:
            self._resolving.append(d)
        return d

    def _resolved(self, result):
        waiting, self._resolving = self._resolving, None
        if isinstance(result, str):
            self._address = (result, self.clock.seconds() + RESOLVE_TTL)
            for d in waiting:
                d.callback(result)
        else:
            log.warn(
                "minger: cannot resolve {host}: {error}",
                host=self.host,
                error=result.getErrorMessage(),
            )
            for d in waiting:
                d.callback(None)

    def _cbSend(self, ip, pending):
        if pending.finished:
            return
        if ip is None:
            self._finish(pending, None)
            return
        if self._port is None:
            try:
                self._port = self.reactor.listenUDP(
                    0, _ReplyReceiver(self), interface="::" if ":" in ip else ""
                )
            except CannotListenError as e:
                log.warn("minger: cannot open a UDP port: {error}", error=e)
                self._finish(pending, None)
                return
        pending.target = (ip, self.port)
        self._send(pending)

    def _ebSend(self, failure, pending):
        log.failure("minger: cannot query {server}", failure, server=self.server)
        self._finish(pending, None)

    def _send(self, pending):
        pending.sent += 1
        try:
            self._port.write(pending.datagram, pending.target)
            self.sent += 1
        except OSError as e:
            # Lost like a datagram on the way: the next attempt may pass.
            log.debug("minger: cannot send to {server}: {error}", server=self.server, error=e)
        pending.timer = self.clock.callLater(
            self.timeout / self.attempts, self._timedOut, pending
        )

    def _timedOut(self, pending):
        pending.timer = None
        if pending.sent < self.attempts:
            self._send(pending)
        else:
            self._finish(pending, None)

    # --- receiving ----------------------------------------------------------

    def _replyReceived(self, datagram, addr):
        try:
            mailbox, status = parseReply(datagram)
        except ValueError as e:
            log.debug("minger: ignored from {source}: {error}", source=addr[0], error=e)
            return
        pending = self._pending.get(mailbox.lower())
        if (
            pending is None
            or pending.target is None
            or (_canonical(addr[0]), addr[1]) != pending.target
        ):
            log.debug(
                "minger: ignored a reply from {source} port {port} about {mailbox}",
                source=addr[0],
                port=addr[1],
                mailbox=mailbox,
            )
            return
        self._finish(pending, status)

    def _finish(self, pending, status):
        """
        Give C{status} to every caller waiting for C{pending}, caching it
        when it says something of the address.
        """
        if pending.finished:
            return
        pending.finished = True
        if self._pending.get(pending.key) is pending:
            del self._pending[pending.key]
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = None
        if status in (STATUS_NOT_FOUND, STATUS_NOT_ACTIVE, STATUS_ACTIVE):
            ttl = self.cacheTTL if status == STATUS_ACTIVE else self.negativeTTL
            if ttl > 0:
                self._cache[pending.key] = (status, self.clock.seconds() + ttl)
                self._cache.move_to_end(pending.key)
                while len(self._cache) > self.cacheSize:
                    self._cache.popitem(last=False)
        for d in pending.waiting:
            if not d.called:
                d.callback(status)


@implementer(IRecipientVerifier)
class MingerVerifier:
    """
    Checks SMTP recipients with a L{MingerClient}.

    Status 5 accepts the address; 3 rejects it (L{NotFound}: SMTP answers
    550 5.1.1); 4 defers it (L{Unavailable}: 450 4.2.1).  Anything else, 0,
    1, 2 or no answer, tells nothing of the address: the C{fallback} policy
    decides, C{"accept"} or C{"tempfail"} (L{TemporaryFailure}), with one
    warning in the log.  (This mapping is not in the draft; it is section
    1.4 of the research notes.)
    """

    def __init__(self, client, fallback="accept", log=None):
        """
        @param client: a L{MingerClient}.
        @param fallback: C{"accept"} or C{"tempfail"}.
        @param log: the L{Logger} for the fallback warnings; this module's by
            default.
        @raise ValueError: another C{fallback}.
        """
        if fallback not in ("accept", "tempfail"):
            raise ValueError("minger fallback must be accept or tempfail: %r" % (fallback,))
        self.client = client
        self.fallback = fallback
        self.log = Logger() if log is None else log

    def verify(self, address):
        """
        @return: a L{Deferred} firing with L{None} when C{address} may be
            accepted, or failing with an L{mdpy.errors.MailError}.
        """
        d = self.client.query(address)
        d.addCallback(self._cbStatus, address)
        return d

    def _cbStatus(self, status, address):
        server = self.client.server
        if status == STATUS_ACTIVE:
            return None
        if status == STATUS_NOT_FOUND:
            raise NotFound("minger: %s says %s does not exist" % (server, address))
        if status == STATUS_NOT_ACTIVE:
            raise Unavailable("minger: %s says %s is not active" % (server, address))
        if status is None:
            what = "no answer from %s" % (server,)
        else:
            what = "%s answered %d (%s)" % (server, status, _MEANINGS.get(status, "?"))
        if self.fallback == "accept":
            self.log.warn(
                "minger: {what} for <{address}>; accepting (fallback)",
                what=what,
                address=address,
            )
            return None
        self.log.warn(
            "minger: {what} for <{address}>; try again later (fallback)",
            what=what,
            address=address,
        )
        raise TemporaryFailure("minger: %s for <%s>" % (what, address))
