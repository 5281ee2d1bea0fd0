# -*- test-case-name: tests.test_minger -*-
"""
A Minger server (draft-hathcock-minger-06) answering from an
L{mdpy.interfaces.IDirectory}.

UDP answers whoever the source address claims to be, so the server is built
not to help a reflection attack:
 - a reply is never longer than its query, but for a bare query (no
   C{d=}) by the two octets of the status.  It echoes the mailbox as the
   query sent it, plus C{" 5"}: a query with a digest is always longer.  A
   bare query is answered whatever the settings (2 when C{anonymous} is
   off: a server refusing anonymous queries must answer them 2, draft
   section 4): two octets more is no amplification worth a forged
   source, and the rate limits below still apply to it;
 - a malformed datagram gets no reply at all (status 0 is never sent), nor
   does a datagram over the rate limits.
"""

import hmac
from collections import OrderedDict

from twisted.application import internet
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol

from mdpy.address import normaliseDomain, splitAddress
from mdpy.errors import Disabled, InvalidInput, NotFound
from mdpy.logs import Logger
from mdpy.networks import NetworkList, clientHost
from mdpy.minger.protocol import (
    STATUS_ACCESS_DENIED,
    STATUS_ACTIVE,
    STATUS_BAD_CREDENTIALS,
    STATUS_NOT_ACTIVE,
    STATUS_NOT_FOUND,
    MalformedQuery,
    digest,
    formatReply,
    parseQuery,
)

log = Logger()


def mailboxStatus(directory, address):
    """
    What Minger says of C{address} (draft section 3.1).

    A local account, an alias or a catch-all that expands to at least one
    enabled account or remote address is active (5); an alias or account
    that leads only to disabled accounts is not active (4); anything else,
    an address of a domain the directory does not have included, is not
    found (3).  Domains compare case-insensitively.

    @return: L{STATUS_ACTIVE}, L{STATUS_NOT_ACTIVE} or L{STATUS_NOT_FOUND}.
    @raise Exception: whatever else the directory raises (say
        L{mdpy.errors.TemporaryFailure}): there is no answer to give now.
    """
    try:
        resolution = directory.resolve(address)
        if resolution.local:
            return STATUS_ACTIVE
        # Only remote addresses: a forward from a local domain, or an
        # address of a domain that is not ours.
        local, domain = splitAddress(address)
        if directory.hasDomain(normaliseDomain(domain)):
            return STATUS_ACTIVE
    except Disabled:
        return STATUS_NOT_ACTIVE
    except (NotFound, InvalidInput):
        pass
    return STATUS_NOT_FOUND


class _Bucket:
    """
    A token bucket: C{tokens} left at time C{stamp}.
    """

    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens, stamp):
        self.tokens = tokens
        self.stamp = stamp

    def fill(self, now, rate, burst):
        if now > self.stamp:
            self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
            self.stamp = now


class LogThrottle:
    """
    Which of a kind of warnings are written: at most one per key (say, a
    source address) per C{interval} seconds, and at most C{limit} per
    interval in all.  The others are counted, and the count is given with
    the next line written.

    @ivar suppressed: lines held back since the last one written.
    """

    def __init__(self, interval=60.0, limit=10, maxKeys=1024):
        self.interval = interval
        self.limit = limit
        self.maxKeys = maxKeys
        self.suppressed = 0
        self._last = OrderedDict()
        self._windowStart = None
        self._written = 0

    def allow(self, key, now):
        """
        @return: L{None} when this line is to be held back; else how many
            were held back before it.
        """
        if self._windowStart is None or now - self._windowStart >= self.interval:
            self._windowStart = now
            self._written = 0
        last = self._last.get(key)
        if (last is not None and now - last < self.interval) or self._written >= self.limit:
            self.suppressed += 1
            return None
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.maxKeys:
            self._last.popitem(last=False)
        self._written += 1
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


class MingerServer(DatagramProtocol):
    """
    Answers Minger queries from an L{IDirectory}.

    Each datagram goes through, in order:
      1. the rate limits: a token bucket per source address (C{rate} queries
         a second, bursts of C{burst}; the C{maxSources} most recently heard
         sources are tracked) and one for all sources (C{globalRate}, bursts
         of one second's worth).  Over either, the datagram is dropped
         without a reply: a reply would only help a flood with forged
         sources;
      2. parsing (L{parseQuery}): a malformed query gets no reply (counted
         and logged at debug level);
      3. the C{allow} list: another source gets status 1;
      4. credentials (draft section 2.2): a query with C{d=} gets status 2
         unless a C{secret} is set and the digest matches; one without gets
         status 2 unless C{anonymous};
      5. L{mailboxStatus}, and then, for an active address whose every
         local account is over its quota (L{mdpy.quota}), status 4 (the
         address cannot take mail now).  When the directory or the store
         fails, nothing is answered (the client will retry or time out):
         there is no status for "try later".

    Invariants: a reply is the mailbox as the query sent it, one space and
    one digit, and never longer than the query, except by those two octets
    for a bare query, whatever its status (2 when C{anonymous} is off); a
    reply that would be longer is not sent.  Every reply has
    passed the rate limits.  Nothing raised while answering leaves
    L{datagramReceived}.

    Logs: every answer at debug level; warnings, each kind throttled by a
    L{LogThrottle}, for dropped datagrams, bad digests and directory
    failures.  Never one line per datagram above debug level.

    @ivar answered: replies sent.
    @ivar dropped: datagrams dropped over the rate limits, or whose reply
        would have been longer than they were.
    @ivar malformed: datagrams that were not queries (never answered).
    @ivar failed: queries left unanswered because the directory (or the
        server) failed.
    """

    noisy = False

    def __init__(
        self,
        directory,
        quotas=None,
        secret="",
        anonymous=False,
        allow=(),
        rate=20.0,
        burst=40,
        globalRate=20000.0,
        maxSources=10000,
        clock=None,
    ):
        """
        @param directory: an L{IDirectory}.
        @param quotas: the L{mdpy.quota.QuotaPolicy} of the accounts, or
            L{None}: quotas are not looked at.
        @param secret: the shared secret (L{str} or L{bytes}); empty: every
            query with a digest gets status 2.
        @param anonymous: whether queries without a digest are answered.
        @param allow: the sources that may ask: networks or addresses, as
            text (C{"10.0.0.0/8"}, C{"::1"}) or L{ipaddress} networks; empty
            for any source.
        @param rate: queries a second one source may send, on average.
        @param burst: queries one source may send at once.
        @param globalRate: queries a second answered from all sources.
        @param maxSources: source addresses whose rate is tracked.
        @param clock: an C{IReactorTime}; the reactor by default.
        @raise ValueError: an entry of C{allow} is not a network.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.directory = directory
        self.quotas = quotas
        self.secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        self.anonymous = anonymous
        self.allow = NetworkList(allow)
        self.rate = rate
        self.burst = burst
        self.globalRate = globalRate
        self.globalBurst = max(burst, globalRate)
        self.maxSources = maxSources
        self.clock = clock
        self.answered = 0
        self.dropped = 0
        self.malformed = 0
        self.failed = 0
        self._sources = OrderedDict()
        self._global = _Bucket(self.globalBurst, clock.seconds())
        self._overLimit = LogThrottle()
        self._badDigest = LogThrottle()
        self._failures = LogThrottle()

    def datagramReceived(self, datagram, addr):
        """
        Answer one query; see the class docstring.
        """
        now = self.clock.seconds()
        # A dual-stack socket reports an IPv4 source as ::ffff:a.b.c.d; it
        # is limited, allowed and logged as a.b.c.d, and answered at addr.
        source = clientHost(addr[0])
        try:
            self._answer(datagram, addr, source, now)
        except Exception:
            self.failed += 1
            suppressed = self._failures.allow("internal", now)
            if suppressed is not None:
                log.failure(
                    "minger: internal error answering {source}"
                    " ({suppressed} similar suppressed)",
                    source=source,
                    suppressed=suppressed,
                )

    def _answer(self, datagram, addr, source, now):
        if not self._admit(source, now):
            return
        try:
            query = parseQuery(datagram)
        except MalformedQuery as e:
            self.malformed += 1
            log.debug(
                "minger: {source}: malformed query ({reason})",
                source=source,
                reason=e.reason,
            )
            return
        if not self._allowed(source):
            status = STATUS_ACCESS_DENIED
        elif not self._authentic(query, source, now):
            status = STATUS_BAD_CREDENTIALS
        else:
            try:
                status = mailboxStatus(self.directory, query.mailbox)
            except Exception:
                self._lookupFailed(query, now)
                return
            if status == STATUS_ACTIVE and self.quotas is not None:
                d = defer.ensureDeferred(self._quotaStatus(query.mailbox))
                d.addCallbacks(self._replyTo, lambda f: self._lookupFailed(query, now, f),
                               callbackArgs=(datagram, addr, source, query))
                return
        self._replyTo(status, datagram, addr, source, query)

    def _replyTo(self, status, datagram, addr, source, query):
        # Answering a bare query takes the two octets of the status, whether
        # it is allowed or refused (draft section 4); nothing else may be
        # longer than what asked for it.
        slack = 2 if query.digest is None else 0
        self._reply(datagram, addr, source, query.mailbox, status, slack)

    def _lookupFailed(self, query, now, failure=None):
        self.failed += 1
        suppressed = self._failures.allow("directory", now)
        if suppressed is not None:
            log.failure(
                "minger: directory lookup of {mailbox} failed; not answering"
                " ({suppressed} similar suppressed)",
                failure,
                mailbox=query.mailbox,
                suppressed=suppressed,
            )

    async def _quotaStatus(self, address):
        """
        @return: L{STATUS_NOT_ACTIVE} when C{address}, which is active,
            leads only to local accounts that are all over their quotas;
            else L{STATUS_ACTIVE}.
        """
        resolution = self.directory.resolve(address)
        if resolution.remote or not resolution.local:
            return STATUS_ACTIVE
        for account in resolution.local:
            if not await self.quotas.isFull(account):
                return STATUS_ACTIVE
        return STATUS_NOT_ACTIVE

    def _admit(self, source, now):
        """
        Take a token from the bucket of C{source} and from the global one.

        @return: whether both had one; if not, the datagram is counted as
            dropped.
        """
        bucket = self._sources.get(source)
        if bucket is None:
            bucket = self._sources[source] = _Bucket(self.burst, now)
            if len(self._sources) > self.maxSources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
            bucket.fill(now, self.rate, self.burst)
        self._global.fill(now, self.globalRate, self.globalBurst)
        if bucket.tokens >= 1 and self._global.tokens >= 1:
            bucket.tokens -= 1
            self._global.tokens -= 1
            return True
        self.dropped += 1
        overall = self._global.tokens < 1
        suppressed = self._overLimit.allow("*" if overall else source, now)
        if suppressed is not None:
            log.warn(
                "minger: {what}; dropping queries without reply"
                " ({dropped} dropped so far, {suppressed} similar warnings suppressed)",
                what=(
                    "over the global rate limit (%g/s)" % (self.globalRate,)
                    if overall
                    else "%s is over the rate limit (%g/s)" % (source, self.rate)
                ),
                dropped=self.dropped,
                suppressed=suppressed,
            )
        return False

    def _allowed(self, source):
        return not self.allow or source in self.allow

    def _authentic(self, query, source, now):
        """
        @return: whether C{query} has the credentials this server asks for.
        """
        if query.digest is None:
            return self.anonymous
        if self.secret:
            expected = digest(self.secret, query.mailbox).encode("ascii")
            if hmac.compare_digest(query.digest.encode("ascii"), expected):
                return True
        suppressed = self._badDigest.allow(source, now)
        if suppressed is not None:
            log.warn(
                "minger: {problem} from {source} (asking for {mailbox});"
                " answered 2 ({suppressed} similar warnings suppressed)",
                problem="bad digest" if self.secret else "a digest but no secret set",
                source=source,
                mailbox=query.mailbox,
                suppressed=suppressed,
            )
        return False

    def _reply(self, datagram, addr, source, mailbox, status, slack=0):
        reply = formatReply(mailbox, status)
        if len(reply) > len(datagram) + slack:
            # Never amplify (a reply to a query with a digest is always
            # shorter than it: this is a guard).
            self.dropped += 1
            log.debug("minger: {source}: no reply {status}, longer than the query",
                      source=source, status=status)
            return
        try:
            self.transport.write(reply, addr)
        except OSError as e:
            log.debug("minger: cannot answer {source}: {error}", source=source, error=e)
            return
        self.answered += 1
        log.debug(
            "minger: {source} asked for {mailbox}: {status}",
            source=source,
            mailbox=mailbox,
            status=status,
        )


def makeMingerService(port, interface, server):
    """
    @param server: a L{MingerServer}.
    @return: a service listening on UDP C{port} of C{interface} (C{""}: all
        IPv4 addresses; C{"::"}: all addresses).
    """
    return internet.UDPServer(port, server, interface=interface)
