# -*- test-case-name: tests.test_odmr_customer -*-
"""
The ODMR customer (RFC 2645): a site without a fixed address asks its
provider to release the mail held for its domains, and receives it over the
same connection.

    report = await release(ODMRAccount("isp", "odmr.isp.test", username="example.org",
                                       password="...", domains=["example.org"]),
                           SMTPFactory(hostname, pipeline), reactor, hostname)
    print(report.summary())       # "odmr/isp: released, 3 messages received"

One release: connect to port 366 (in TLS from the start with C{tls =
implicit}), read the C{220} greeting, EHLO (then STARTTLS and EHLO again
with C{tls = starttls}), AUTH (CRAM-MD5, or PLAIN over TLS), then
C{ATRN dom1,dom2} (RFC 2645 section 5.2.1).  A C{250} reverses the roles on
the same connection, TLS kept (section 5.3): from then on an
L{mdpy.smtp.server.SMTPServer}, the one mdpy runs on port 25 (the
C{protocol} of C{[smtp] factory}), sends its
C{220} greeting, takes the provider's EHLO, MAIL, RCPT and DATA, hands every
message to the delivery pipeline like any inbound unauthenticated session
does, and answers C{221} to the provider's QUIT.  A C{453} means no mail is
waiting; every other reply fails the release (section 7).

Invariants:
 - L{release} never fails: every outcome, error or not, is in the
   L{ReleaseReport} it fires with, once the connection is closed and every
   message the reversed session was storing is settled.
 - Before the turnaround replies are read as the SMTP client reads them
   (L{mdpy.smtp.replies.ReplyReader}), one command at a time, no pipelining.  Input that
   came before the command it would answer, a malformed line, a line over
   L{MAX_REPLY_LINE} octets, a reply over L{MAX_REPLY_LINES} lines or a reply
   nobody asked for aborts the connection; at most one partial line stays
   buffered.  Each reply must come within C{timeout} seconds, the one to
   ATRN within C{atrnTimeout} (Exim and RFC 2645 ask for a long one while
   the provider scans its queue).
 - A password never crosses the wire in plaintext: CRAM-MD5 (RFC 2195) sends a digest;
   PLAIN is used only over TLS.  With C{tls = starttls} nothing is
   authenticated before the server said C{220} to STARTTLS, the handshake
   verified its certificate (unless C{verify} is off) and EHLO was answered
   over TLS; no STARTTLS in EHLO, a refused STARTTLS or a failed handshake
   ends the release, never a fallback to plaintext.
 - Whatever came with the C{220} to STARTTLS after its line is discarded
   (response injection); whatever came with the C{250} to ATRN after its
   line is the provider's first SMTP input and goes to the reversed session.
 - After the turnaround this module only forwards: input and the end of
   the connection go to the reversed session, which writes to the
   transport itself and has its own idle timeout (the SMTP factory's).
"""

import base64
import binascii
import hashlib
import hmac
import re
from functools import partial

from twisted.internet import defer
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone

from mdpy.collect.periodic import CycleBusy, PeriodicCollection
from mdpy.errors import InvalidInput
from mdpy.logs import Logger
from mdpy.odmr.gateway import checkATRNDomain
from mdpy.session import disableNagle
from mdpy.smtp.replies import ReplyError, ReplyReader
from mdpy.smtp.server import SMTPServer
from mdpy.tls import TLS_MODES, accountClientOptions, clientEndpoint

log = Logger()

ODMR_PORT = 366
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100

_UNSAFE = re.compile(rb"[\r\n\0]")  # in a credential

# What RFC 2645 section 7 says a reply to ATRN means.
ATRN_TURNAROUND = 250
ATRN_NO_MAIL = 453


class ODMRError(Exception):
    """
    A release cannot be tried as configured; C{str(e)} is one line.
    """


def _atrnDomain(domain):
    """
    @return: C{domain} as ATRN sends it: lower case, IDNA, checked.
    @raise ValueError: not a domain name RFC 2645 allows.
    """
    try:
        return checkATRNDomain(domain.strip().encode("idna").decode("ascii"))
    except (UnicodeError, InvalidInput):
        raise ValueError("not a domain name for ATRN: %r" % (domain,))


class ODMRAccount:
    """
    One provider to ask for the mail of C{domains}; C{[odmr-client:NAME]}.

    @ivar name: the account's name, in reports and logs (C{odmr/NAME}).
    @ivar tls: C{"none"}, C{"starttls"} (RFC 3207) or C{"implicit"} (TLS
        from the start, as RFC 8314 for SMTP).
    @ivar domains: the domains ATRN asks for; none asks for the provider's
        default for the account (RFC 2645 section 5.2.1).
    @ivar verify: whether the certificate and the host name in it are checked.
    @ivar caFile: a PEM file of the CA certificates to trust, or L{None} for
        the platform's.
    @ivar timeout: seconds to wait for each reply (and to connect).
    @ivar atrnTimeout: seconds to wait for the reply to ATRN.
    """

    def __init__(
        self,
        name,
        host,
        port=ODMR_PORT,
        tls="starttls",
        username="",
        password="",
        domains=(),
        verify=True,
        caFile=None,
        timeout=60,
        atrnTimeout=600,
    ):
        if tls not in TLS_MODES:
            raise ValueError("tls must be one of %s, not %r" % (", ".join(TLS_MODES), tls))
        for value, what in ((timeout, "timeout"), (atrnTimeout, "atrn_timeout")):
            if not value or value <= 0:
                raise ValueError("%s must be positive, not %r" % (what, value))
        port = int(port)
        if not 0 < port < 65536:
            raise ValueError("port out of range: %r" % (port,))
        if not host:
            raise ValueError("no host")
        if isinstance(domains, str):
            domains = domains.replace(",", " ").split()
        self.name = name
        self.host = host
        self.port = port
        self.tls = tls
        self.username = username
        self.password = password
        self.domains = tuple(_atrnDomain(domain) for domain in domains)
        self.verify = verify
        self.caFile = caFile or None
        self.timeout = timeout
        self.atrnTimeout = atrnTimeout

    @property
    def label(self):
        """
        C{name (host:port)} for messages.
        """
        host = "[%s]" % (self.host,) if ":" in self.host else self.host
        return "%s (%s:%d)" % (self.name, host, self.port)

    def __repr__(self):
        return "<ODMRAccount %s tls=%s domains=%s>" % (self.label, self.tls, ",".join(self.domains))


def _plural(count, noun):
    return "%d %s%s" % (count, noun, "" if count == 1 else "s")


class ReleaseReport:
    """
    What one release did, for the log and C{COLLECT} on the control socket.

    @ivar outcome: C{"released"} (the provider turned the connection
        around), C{"no mail"} (C{453}), or L{None} when the release failed.
    @ivar messages: how many messages the reversed session stored and
        answered C{250} to.
    @ivar lines: one line per message received, and a note when the
        provider left without QUIT.
    @ivar error: why the release failed, one line, or L{None}.
    """

    def __init__(self, name):
        self.name = name
        self.outcome = None
        self.messages = 0
        self.lines = []
        self.error = None

    def summary(self):
        if self.error is not None:
            return "%s: failed: %s" % (self.name, self.error)
        if self.outcome == "released":
            return "%s: released, %s received" % (self.name, _plural(self.messages, "message"))
        if self.outcome == "no mail":
            return "%s: no mail waiting" % (self.name,)
        return "%s: not run" % (self.name,)

    def __repr__(self):
        return "<ReleaseReport %s>" % (self.summary(),)


def credentials(account):
    """
    @return: C{(username, password)} of C{account} as bytes fit for SASL.
    @raise ODMRError: no username, or a line break or NUL in either.
    """
    values = []
    for value, what in ((account.username, "username"), (account.password, "password")):
        if isinstance(value, str):
            value = value.encode("utf-8")
        if _UNSAFE.search(value):
            raise ODMRError("the %s contains a line break or NUL" % (what,))
        values.append(value)
    if not values[0]:
        raise ODMRError("no username configured")
    return tuple(values)


def clientTLSOptions(account):
    """
    @return: the client TLS options for C{account} (see
        L{accountClientOptions}).
    @raise ODMRError: C{caFile} cannot be read or holds no certificate.
    """
    try:
        return accountClientOptions("odmr-client: " + account.label, account.host, account.verify, account.caFile)
    except ValueError as e:
        raise ODMRError(str(e))


class _Released:
    """
    What makes an SMTP server session (L{SMTPServer} or a subclass) the
    reversed session: it also tells C{committed(envelope, recipients)} of
    each message it stored and answered C{250} to.

    @ivar quitReceived: whether the provider said QUIT.
    @ivar interrupted: whether the connection ended inside a mail
        transaction (that message was aborted, not stored).
    """

    def __init__(self, committed):
        super().__init__()
        self.committed = committed
        self.quitReceived = False
        self.interrupted = False
        self._storing = 0
        self._settledWaiters = []

    def do_QUIT(self, argument):
        self.quitReceived = True
        return super().do_QUIT(argument)

    def _endOfMessage(self):
        result = super()._endOfMessage()
        if isinstance(result, defer.Deferred) and not result.called:
            self._storing += 1
            result.addBoth(self._stored)
        return result

    def _stored(self, result):
        self._storing -= 1
        if not self._storing:
            waiters, self._settledWaiters = self._settledWaiters, []
            for d in waiters:
                d.callback(None)
        return result

    def messageAccepted(self, envelope, recipients, size):
        super().messageAccepted(envelope, recipients, size)
        self.committed(envelope, recipients)

    def connectionLost(self, reason=None):
        self.interrupted = self._envelope is not None
        super().connectionLost(reason)

    def whenSettled(self):
        """
        @return: a Deferred firing once no message is being stored (a commit
            may still run when the connection is gone).
        """
        if not self._storing:
            return defer.succeed(None)
        d = defer.Deferred()
        self._settledWaiters.append(d)
        return d


_releasedClasses = {}


def releasedSessionClass(protocol):
    """
    @param protocol: L{SMTPServer} or a subclass: the C{protocol} of the
        SMTP factory of port 25 (C{[smtp] factory}), so that mail released
        by ATRN meets the same server as mail sent to port 25.
    @return: C{protocol} made the reversed session (L{_Released}), taking
        C{committed} as its one argument.
    """
    released = _releasedClasses.get(protocol)
    if released is None:
        released = _releasedClasses[protocol] = type(
            "Released" + protocol.__name__, (_Released, protocol), {"__module__": __name__})
    return released


ReleasedSession = releasedSessionClass(SMTPServer)


class ODMRCustomer(Protocol):
    """
    One connection to a provider, up to the turnaround and through it.

    @ivar report: the L{ReleaseReport} being filled.
    @ivar finished: a Deferred firing with C{report} once the connection is
        over and every message settled; it never fails.
    @ivar session: the L{ReleasedSession} after the turnaround, else L{None}.
    @ivar extensions: C{{KEYWORD: [PARAMETER, ...]}} of the last EHLO, upper case.
    @ivar tls: whether the connection is encrypted (or its handshake under way).
    """

    def __init__(self, account, serverFactory, hostname, clock, report=None, tlsOptions=None):
        """
        @param serverFactory: the L{mdpy.smtp.server.SMTPFactory} of the
            reversed session; it is built as C{buildProtocol} would, of the
            factory's C{protocol} (L{releasedSessionClass}).
        @param hostname: this host's name, for EHLO.
        @param clock: the L{IReactorTime} for the reply timeouts.
        @param tlsOptions: the client TLS options for STARTTLS (C{tls =
            starttls}).
        """
        self.account = account
        self.serverFactory = serverFactory
        self.hostname = hostname
        self.clock = clock
        self.report = report if report is not None else ReleaseReport("odmr/" + account.name)
        self.tlsOptions = tlsOptions
        self.finished = defer.Deferred()
        self.extensions = {}
        self.session = None
        self.tls = False
        self._label = account.label
        self._replies = ReplyReader(MAX_REPLY_LINE, MAX_REPLY_LINES)
        self._waiting = None  # (what, callback) of the one reply awaited
        self._timeoutCall = None
        self._connected = False
        self._tlsPending = False  # from the start of TLS to the first reply over it
        self._quitting = False
        self._ignoreInput = False

    # --- the connection ---------------------------------------------------------------

    def connectionMade(self):
        self._connected = True
        disableNagle(self.transport)
        if self.account.tls == "implicit":
            self.tls = self._tlsPending = True
        log.debug("odmr-client: {label}: connected", label=self._label)
        self._expect("greeting", self._gotGreeting, self.account.timeout)

    def dataReceived(self, data):
        if self.session is not None:
            self.session.dataReceived(data)
            return
        if self._ignoreInput:
            return
        self._replies.feed(data)
        self._guarded(self._readReplies)

    def connectionLost(self, reason=connectionDone):
        self._connected = False
        self._cancelTimeout()
        self._waiting = None
        self._ignoreInput = True
        session = self.session
        if session is None:
            if not self._quitting:
                why = "TLS handshake failed: " if self._tlsPending else "connection lost: "
                self._setError(why + reason.getErrorMessage())
            self._finish()
            return
        try:
            session.connectionLost(reason)
        except Exception:
            log.failure("odmr-client: {label}: internal error closing the session", label=self._label)
        if not session.quitReceived:
            note = "the provider left without QUIT"
            if session.interrupted:
                note += ", in the middle of a message (not accepted)"
            self.report.lines.append(note)
            log.info("odmr-client: {label}: {note}", label=self._label, note=note)
        session.whenSettled().addBoth(lambda ignored: self._finish())

    def _finish(self):
        if not self.finished.called:
            self.finished.callback(self.report)

    def _setError(self, why):
        # The first failure is the one reported.
        if self.report.error is None:
            log.debug("odmr-client: {label}: {why}", label=self._label, why=why)
            self.report.error = why
            self.report.outcome = None

    def _fail(self, why):
        """
        Give up politely: report C{why}, QUIT, close.
        """
        self._setError(why)
        if self._quitting:
            self._abort(None)
        else:
            self._quit()

    def _abort(self, why):
        """
        Drop a connection beyond repair; after QUIT no harm is done.
        """
        if why is not None and not self._quitting:
            self._setError(why)
        self._ignoreInput = True
        self._replies.clear()
        self._waiting = None
        self._cancelTimeout()
        if self._connected:
            self.transport.abortConnection()

    def _guarded(self, function, *args):
        # A bug aborts the release and is logged, never raised to the reactor.
        try:
            function(*args)
        except Exception:
            log.failure("odmr-client: {label}: internal error", label=self._label)
            self._abort("internal error in the ODMR client")

    # --- commands and replies -----------------------------------------------------------

    def _send(self, line, what, callback, timeout=None, show=None):
        """
        Send one command line and wait for its reply; C{show} is what the
        debug log says instead of a line that must not be logged.
        """
        if self._replies.buffer:
            # Sent before the command, so it answers nothing: no pipelining here.
            self._abort("protocol error: input before %s was sent" % (what,))
            return
        log.debug("odmr-client: {label}: sent {line}", label=self._label,
                  line=show or line.decode("ascii", "replace"))
        self.transport.write(line + b"\r\n")
        self._expect(what, callback, timeout or self.account.timeout)

    def _expect(self, what, callback, timeout):
        self._waiting = (what, callback)
        self._cancelTimeout()
        self._timeoutCall = self.clock.callLater(timeout, self._timedOut, what, timeout)

    def _cancelTimeout(self):
        call, self._timeoutCall = self._timeoutCall, None
        if call is not None and call.active():
            call.cancel()

    def _timedOut(self, what, timeout):
        self._timeoutCall = None
        awaited = "the greeting" if what == "greeting" else "the reply to " + what
        why = "timed out after %d s waiting for %s" % (timeout, awaited)
        if self._tlsPending:
            why = "TLS handshake " + why
        self._abort(why)

    def _readReplies(self):
        while not self._ignoreInput and self.session is None:
            try:
                reply = self._replies.next()
            except ReplyError as e:
                self._abort("protocol error: %s" % (e,))
                return
            if reply is None:
                return
            self._replyReceived(reply)
        if self.session is not None:
            # Pipelined behind the 250 to ATRN: the provider's SMTP input.
            rest = self._replies.buffer
            self._replies.clear()
            if rest:
                self.session.dataReceived(rest)

    def _replyReceived(self, reply):
        self._cancelTimeout()
        if self._tlsPending:
            self._tlsPending = False
            log.debug("odmr-client: {label}: TLS started", label=self._label)
        waiting, self._waiting = self._waiting, None
        if waiting is None:
            self._abort("protocol error: reply nobody asked for: %s" % (reply,))
            return
        what, callback = waiting
        if reply.code // 100 == 3 and what != "AUTH":
            self._abort("protocol error: reply %s to %s" % (reply, what))
            return
        callback(reply)

    # --- the session up to ATRN ---------------------------------------------------------

    def _gotGreeting(self, reply):
        if reply.code != 220:
            self._fail("greeting refused: %s" % (reply,))
        else:
            self._ehlo()

    def _ehlo(self):
        self._send(b"EHLO " + self.hostname.encode("idna"), "EHLO", self._gotEhlo)

    def _gotEhlo(self, reply):
        if reply.code != 250:
            self._fail("EHLO refused: %s" % (reply,))
            return
        keywords = [line.upper().split() for line in reply.lines[1:]]
        self.extensions = {words[0]: words[1:] for words in keywords if words}
        if self.account.tls == "starttls" and not self.tls:
            if "STARTTLS" not in self.extensions or not ITLSTransport.providedBy(self.transport):
                self._fail("server offers no STARTTLS; not authenticating")
            else:
                self._send(b"STARTTLS", "STARTTLS", self._gotStartTLS)
            return
        # RFC 2645 section 5.1: the EHLO reply lists both.
        if "ATRN" not in self.extensions:
            self._fail("server does not offer ATRN")
        elif "AUTH" not in self.extensions:
            self._fail("server does not offer AUTH, which RFC 2645 requires")
        else:
            self._authenticate()

    def _gotStartTLS(self, reply):
        if reply.code != 220:
            self._fail("STARTTLS refused: %s; not authenticating" % (reply,))
            return
        if self._replies.buffer:  # plaintext that came with the 220 must not pass for TLS replies
            log.warn("odmr-client: {label}: discarded {n} octets sent with the 220 to STARTTLS",
                     label=self._label, n=len(self._replies.buffer))
            self._replies.clear()
        self.extensions = {}
        self.tls = self._tlsPending = True
        self.transport.startTLS(self.tlsOptions)
        self._ehlo()  # RFC 3207 section 4.2

    def _authenticate(self):
        try:
            username, password = credentials(self.account)
        except ODMRError as e:
            self._fail(str(e))
            return
        offered = self.extensions["AUTH"]
        if "CRAM-MD5" in offered:
            self._send(b"AUTH CRAM-MD5", "AUTH", partial(self._gotChallenge, username, password))
        elif "PLAIN" in offered and self.tls:
            # RFC 4616 section 2: authzid NUL authcid NUL passwd.
            response = base64.b64encode(b"\0" + username + b"\0" + password)
            self._send(b"AUTH PLAIN " + response, "AUTH", self._gotAuth, show="AUTH PLAIN (credentials)")
        elif not self.tls:
            self._fail("no AUTH mechanism usable without TLS (offered: %s)" % (" ".join(offered),))
        else:
            self._fail("no AUTH mechanism in common (offered: %s)" % (" ".join(offered),))

    def _gotChallenge(self, username, password, reply):
        if reply.code != 334:
            self._gotAuth(reply)
            return
        try:
            challenge = base64.b64decode(reply.lines[0].strip(), validate=True)
        except (binascii.Error, ValueError):
            self._abort("malformed CRAM-MD5 challenge")
            return
        self._send(cramMD5Response(username, password, challenge), "AUTH", self._gotAuth,
                   show="(CRAM-MD5 response)")

    def _gotAuth(self, reply):
        if reply.code == 334:
            # More challenges than the mechanism has: QUIT would be taken
            # for a SASL response, so drop the connection.
            self._abort("authentication failed: unexpected challenge %s" % (reply,))
        elif reply.code // 100 != 2:
            self._fail("authentication failed: %s" % (reply,))
        else:
            log.debug("odmr-client: {label}: authenticated", label=self._label)
            line = b"ATRN"
            if self.account.domains:
                line += b" " + ",".join(self.account.domains).encode("ascii")
            self._send(line, "ATRN", self._gotATRN, self.account.atrnTimeout)

    def _gotATRN(self, reply):
        if reply.code == ATRN_TURNAROUND:
            self._turnAround(reply)
        elif reply.code == ATRN_NO_MAIL:
            self.report.outcome = "no mail"
            log.debug("odmr-client: {label}: no mail waiting: {reply}", label=self._label, reply=reply)
            self._quit()
        else:
            self._fail("ATRN refused: %s" % (reply,))

    def _quit(self):
        self._quitting = True
        self._send(b"QUIT", "QUIT", self._gotQuit)

    def _gotQuit(self, reply):
        self._ignoreInput = True  # whatever follows changes nothing
        self.transport.loseConnection()

    # --- the turnaround (RFC 2645 section 5.3) ---------------------------------------------

    def _turnAround(self, reply):
        """
        Become the SMTP server on this connection: the reversed session takes
        the transport, sends its C{220} first, and reads everything from now on.
        """
        self.report.outcome = "released"
        log.debug("odmr-client: {label}: the provider turns the connection around: {reply}",
                  label=self._label, reply=reply)
        session = releasedSessionClass(self.serverFactory.protocol)(self._committed)
        session.factory = self.serverFactory
        self.session = session
        session.makeConnection(self.transport)
        if self.tls:
            session.tls = True  # for the Received header (ESMTPS)

    def _committed(self, envelope, recipients):
        self.report.messages += 1
        self.report.lines.append("received %s from <%s> for %s" % (
            envelope.messageId, envelope.sender, _plural(len(recipients), "recipient")))


def cramMD5Response(username, password, challenge):
    """
    RFC 2195 section 2: the user name, a space, and the HMAC-MD5 of the
    challenge keyed with the password in lower-case hex; base64.
    """
    digest = hmac.new(password, challenge, hashlib.md5).hexdigest().encode("ascii")
    return base64.b64encode(username + b" " + digest)


def release(account, serverFactory, reactor, hostname):
    """
    Ask C{account}'s provider to release the held mail, and receive it.

    @param serverFactory: the L{mdpy.smtp.server.SMTPFactory} of the
        reversed session (the pipeline as target, L{MODE_MTA}, no portal, no
        TLS options); its C{timeout} is the idle timeout of that session.
    @param reactor: the reactor (TCP, name resolution, and the clock).
    @param hostname: this host's name, for EHLO.
    @return: a Deferred firing with a L{ReleaseReport}; it never fails.
    """
    report = ReleaseReport("odmr/%s" % (account.name,))

    def internalError(failure):
        log.failure("odmr-client: {label}: internal error", failure, label=account.label)
        if report.error is None:
            report.error = "internal error: %s" % (failure.getErrorMessage(),)
            report.outcome = None
        return report

    def notConnected(failure):
        report.error = "cannot connect: %s" % (failure.getErrorMessage(),)
        return report

    try:
        credentials(account)
        tlsOptions = clientTLSOptions(account) if account.tls != "none" else None
        implicit = account.tls == "implicit"
        factory = Factory.forProtocol(partial(
            ODMRCustomer, account, serverFactory, hostname, reactor, report,
            None if implicit else tlsOptions))
        factory.noisy = False
        endpoint = clientEndpoint(reactor, account.host, account.port, account.timeout,
                                  tlsOptions if implicit else None)
        d = endpoint.connect(factory)
    except ODMRError as e:
        report.error = str(e)
        return defer.succeed(report)
    except Exception:
        return defer.fail().addErrback(internalError)
    d.addCallbacks(lambda customer: customer.finished, notConnected)
    d.addErrback(internalError)
    return d


class ODMRClientService(PeriodicCollection):
    """
    Releases one account's mail every C{interval} seconds (and on
    C{runNow}, from C{COLLECT} on the control socket).
    """

    def __init__(self, account, serverFactory, hostname, interval, reactor=None, clock=None):
        if reactor is None:
            from twisted.internet import reactor
        PeriodicCollection.__init__(self, interval, clock or reactor)
        self.account = account
        self.serverFactory = serverFactory
        self.hostname = hostname
        self.reactor = reactor
        self._releasing = False

    def runNow(self):
        """
        See L{PeriodicCollection.runNow}: one L{release}, firing with its
        L{ReleaseReport}, or failing with L{CycleBusy} while one runs.
        """
        if self._releasing:
            return defer.fail(CycleBusy("a release of %s is under way" % (self.account.label,)))
        self._releasing = True
        d = release(self.account, self.serverFactory, self.reactor, self.hostname)

        def done(report):
            self._releasing = False
            if isinstance(report, ReleaseReport):
                emit = log.info if report.error is None else log.warn
                emit("odmr-client: {summary}", summary=report.summary())
            return report

        return d.addBoth(done)
