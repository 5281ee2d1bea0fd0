# -*- test-case-name: tests.test_smtp_server,tests.test_pop3_server -*-
"""
What every command/response server of mdpy (SMTP, POP3, later IMAP) shares:
bounded line input, one command at a time, connection limits, idle timeout,
STARTTLS buffer discarding, SASL exchanges and the failed-login policy.

Invariants:
 - One command runs at a time.  While a command waits on a L{Deferred}
   (a login, a store operation, a commit), input is buffered, not parsed;
   past L{CommandSession.pauseAt} octets the transport is paused.  So
   pipelined commands always see the results of the commands before them.
 - A line longer than L{CommandSession.maxLineLength} is answered once (by
   L{CommandSession.lineTooLong}) and discarded as it arrives.
 - L{CommandSession.startTLS} discards whatever plaintext was pipelined after
   the command that started TLS (CVE-2011-0411).
 - Credentials are checked only once the factory's login tracker admits
   them, and every admitted check is ended (succeeded, failed or abandoned),
   so the checks under way always count against the limits.
"""

import base64
import socket
from contextlib import contextmanager

from twisted.cred import error as credError
from twisted.internet import defer, tcp
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.protocols.policies import TimeoutMixin

from mdpy import errors
from mdpy.auth import IAccount
from mdpy.auth import sasl
from mdpy.auth.checkers import BANNED_ADDRESS, LoginRefused
from mdpy.logs import Logger
from mdpy.networks import clientHost


# A TLS session being closed is dropped once what was written has left:
# checked every TLS_CLOSE_POLL seconds, for TLS_CLOSE_LIMIT seconds at most.
TLS_CLOSE_POLL = 0.1
TLS_CLOSE_LIMIT = 30


def outputPending(transport):
    """
    @return: whether C{transport} holds octets written to it that it has
        not handed to the socket yet (the buffers of
        L{twisted.internet.tcp.Connection}; other transports have none).
    """
    return bool(getattr(transport, "dataBuffer", b"") or getattr(transport, "_tempDataBuffer", None))


def writesThrough(transport):
    """
    @return: whether L{writeThrough} would try the socket itself now: a
        plain TCP connection (L{twisted.internet.tcp.Connection}), connected,
        with nothing buffered and no producer.
    """
    return (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and not outputPending(transport)
        and not transport.disconnecting
        and transport.connected
        and transport.producer is None
    )


def writeThrough(transport, data):
    """
    Write C{data} to C{transport}, straight to the socket when nothing is
    waiting in the transport's buffer.

    A reply is usually the only thing to send, and the socket can take it at
    once; going through Twisted's buffer would cost two C{epoll_ctl} calls
    and a reactor iteration per reply.  This relies on the attributes of
    L{twisted.internet.tcp.Connection}; any other transport (TLS, tests) is
    written to as usual.
    """
    if not writesThrough(transport):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(data)  # let the transport notice and report it
        return
    if sent < len(data):
        transport.write(data[sent:])


def disableNagle(transport):
    """
    Send small writes at once on C{transport} (TCP_NODELAY).  Both ends of a
    mail protocol wait for each other's short replies, so Nagle's algorithm
    would only hold the last segment of each back for a delayed ACK (about
    40 ms on Linux).
    """
    setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setTcpNoDelay is not None:
        try:
            setTcpNoDelay(True)
        except OSError:
            pass


class SessionFactory(ServerFactory):
    """
    What the sessions of one listener share.

    @ivar hostname: the name in greetings.
    @ivar portal: a cred portal for logins, or L{None} to offer none.
    @ivar tlsOptions: server TLS options for STARTTLS/STLS, or L{None}.
    @ivar implicitTLS: whether the transport is TLS from the start.
    @ivar loginTracker: a L{mdpy.auth.checkers.FailedLoginTracker} or L{None}.
    @ivar accountCheck: an L{mdpy.auth.accounts.AccountCheck} telling
        sessions whether their account is still there, or L{None} (not
        checked).
    @ivar clock: the reactor (for timeouts and login delays).
    """

    protocol = None
    noisy = False  # no "Starting factory <repr>" lines: the listener is logged

    def __init__(
        self,
        hostname,
        portal=None,
        tlsOptions=None,
        implicitTLS=False,
        maxErrors=20,
        timeout=300,
        maxConnections=5000,
        maxConnectionsPerIP=1000,
        loginTracker=None,
        accountCheck=None,
        clock=None,
    ):
        if clock is None:
            from twisted.internet import reactor as clock
        self.hostname = hostname
        self.portal = portal
        self.tlsOptions = tlsOptions
        self.implicitTLS = implicitTLS
        self.maxErrors = maxErrors
        self.timeout = timeout
        self.maxConnections = maxConnections
        self.maxConnectionsPerIP = maxConnectionsPerIP
        self.loginTracker = loginTracker
        self.accountCheck = accountCheck
        self.clock = clock
        self.connections = 0
        self.connectionsByIP = {}

    def connectionOpened(self, ip):
        """
        Count a session in.  @return: whether it is within the limits.
        """
        self.connections += 1
        count = self.connectionsByIP.get(ip, 0) + 1
        self.connectionsByIP[ip] = count
        return (
            self.connections <= self.maxConnections
            and count <= self.maxConnectionsPerIP
        )

    def connectionClosed(self, ip):
        self.connections -= 1
        count = self.connectionsByIP.get(ip, 1) - 1
        if count:
            self.connectionsByIP[ip] = count
        else:
            self.connectionsByIP.pop(ip, None)

    def reconfigure(self, **settings):
        """
        Take new limits and settings (a reload of the configuration): they
        apply to the sessions opened from now on, and to what the sessions
        under way check from now on; no session is closed.

        @param settings: attributes of this factory and their new values,
            e.g. C{maxConnections=100}.
        @raise AttributeError: one is not an attribute of this factory.
        """
        for name in settings:
            if not hasattr(self, name):
                raise AttributeError("%s has no setting %s" % (type(self).__name__, name))
        for name, value in settings.items():
            setattr(self, name, value)


class CommandSession(Protocol, TimeoutMixin):
    """
    A line-oriented command session.  Subclasses implement L{greet},
    L{refuse}, L{lineReceived}, L{lineTooLong}, L{internalError} and
    L{timeoutConnection}; a subclass with a raw mode (SMTP DATA) sets
    L{rawMode} and implements L{rawInput}.

    @ivar tls: whether the session is encrypted.
    @ivar rawMode: whether input goes to L{rawInput} instead of lines.
    """

    log = Logger()
    service = "session"
    maxLineLength = 8192
    pauseAt = 256 * 1024
    rawMode = False

    def __init__(self):
        self.tls = False
        self.errors = 0
        self._buffer = b""
        self._busy = False
        self._processing = False
        self._paused = False
        self._closing = False
        self._skipLine = False
        self._counted = False
        self._ip = None
        self._lineHandler = None
        self._accountCheckedAt = None
        self._lost = False
        self._dropCall = None
        self._held = None

    # --- connection ------------------------------------------------------------

    def connectionMade(self):
        disableNagle(self.transport)
        peer = self.transport.getPeer()
        self._ip = clientHost(getattr(peer, "host", "127.0.0.1"))
        self.callLater = self.factory.clock.callLater
        self.tls = self.factory.implicitTLS
        self._counted = True
        if not self.factory.connectionOpened(self._ip):
            self.log.warn(
                "{service}: too many connections, refusing {ip}", service=self.service, ip=self._ip
            )
            self.refuse()
            self.close()
            return
        self.setTimeout(self.factory.timeout)
        self.greet()

    def connectionLost(self, reason=None):
        self.setTimeout(None)
        self._closing = True
        self._lost = True
        if self._dropCall is not None:
            self._dropCall.cancel()
            self._dropCall = None
        if self._counted:
            self._counted = False
            self.factory.connectionClosed(self._ip)

    @property
    def clientAddress(self):
        """
        The client's IP address, as text.
        """
        return self._ip

    def close(self):
        """
        Send what is queued and close; ignore further input.

        Over TLS, Twisted sends close_notify and then keeps the connection
        until the client answers with its own, which many clients never
        do (some wait for the server to close after LOGOUT or QUIT): the
        connection is dropped once what was written has left (RFC 8446
        section 6.1 lets the closing side not wait).
        """
        self._closing = True
        self._buffer = b""
        self.transport.loseConnection()
        if self.tls and not self._lost and self._dropCall is None:
            self._dropCall = self.callLater(
                TLS_CLOSE_POLL, self._dropWhenSent, int(TLS_CLOSE_LIMIT / TLS_CLOSE_POLL)
            )

    def _dropWhenSent(self, checks):
        """
        Close the TCP connection of a closed TLS session once its transport
        has handed what was written to the socket, or after C{checks} more
        checks: the socket is shut down, so the kernel still sends what it
        holds, then FIN (not the RST of an abort, which may make the client
        lose the last replies); the reactor then sees the connection end.
        A transport without a socket (in tests) is aborted.
        """
        self._dropCall = None
        if self._lost:
            return
        transport = self.transport
        if checks > 0 and outputPending(transport):
            self._dropCall = self.callLater(TLS_CLOSE_POLL, self._dropWhenSent, checks - 1)
            return
        try:
            transport.socket.shutdown(socket.SHUT_RDWR)
        except AttributeError:
            transport.abortConnection()
        except OSError:
            pass  # already gone: the reactor says so

    @property
    def closing(self):
        return self._closing

    def send(self, data):
        """
        Write C{data}; see L{writeThrough}.  Within L{coalesced}, held
        until its end.
        """
        if self._held is not None:
            self._held.append(data)
            return
        writeThrough(self.transport, data)

    @contextmanager
    def coalesced(self):
        """
        Send what the block sends in one write at its end, as one segment:
        a command's last untagged responses and its reply make one system
        call here and wake the client once.
        """
        if self._held is not None:
            yield
            return
        self._held = held = []
        try:
            yield
        finally:
            self._held = None
            if held:
                self.send(b"".join(held))

    def countError(self):
        """
        Count an error reply.  @return: whether the session is over the limit
        (the caller then says goodbye and L{close}s).
        """
        self.errors += 1
        return self.errors >= self.factory.maxErrors and not self._closing

    # --- input -----------------------------------------------------------------

    def dataReceived(self, data):
        if self._closing:
            return
        self.resetTimeout()
        self._buffer += data
        if self._busy:
            if len(self._buffer) > self.pauseAt and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        self._process()

    def _process(self):
        """
        Run buffered input until it is used up or a command waits.
        """
        if self._processing:
            return
        self._processing = True
        try:
            while self._buffer and not self._busy and not self._closing:
                if self.rawMode:
                    if not self.rawInput():
                        break
                    continue
                index = self._buffer.find(b"\n")
                if index < 0:
                    if len(self._buffer) > self.maxLineLength:
                        self._buffer = b""
                        if not self._skipLine:
                            self._skipLine = True
                            self.lineTooLong()
                    break
                line = self._buffer[:index]
                self._buffer = self._buffer[index + 1 :]
                if self._skipLine:
                    self._skipLine = False
                    continue
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > self.maxLineLength:
                    self.lineTooLong()
                    continue
                self.run(self._dispatchLine, line)
        finally:
            self._processing = False
        if self._paused and not self._busy:
            self._paused = False
            self.transport.resumeProducing()

    def takeBuffered(self):
        """
        @return: the unparsed input, removing it (for L{rawInput}).
        """
        data, self._buffer = self._buffer, b""
        return data

    def peekBuffered(self):
        return self._buffer

    def setBuffered(self, data):
        self._buffer = data

    def run(self, function, *args):
        """
        Call a command; a Deferred result holds further input until it fires.
        Any unexpected exception becomes L{internalError} and a log entry,
        never a traceback to the client.
        """
        try:
            result = function(*args)
        except Exception:
            self.log.failure("{service}: internal error from {ip}", service=self.service, ip=self._ip)
            self.internalError()
            return
        if isinstance(result, defer.Deferred):
            self._busy = True
            result.addErrback(self._ebInternal)
            result.addBoth(self._cbResume)

    def _ebInternal(self, failure):
        self.log.failure(
            "{service}: internal error from {ip}", failure, service=self.service, ip=self._ip
        )
        if not self._closing:
            self.internalError()

    def _cbResume(self, ignored):
        self._busy = False
        if not self._closing:
            self._process()

    # --- TLS ------------------------------------------------------------------------

    def startTLS(self):
        """
        Switch to TLS after the reply that allows it was sent, discarding any
        plaintext pipelined after the command (RFC 3207 section 4.2, RFC 2595
        section 3.1).
        """
        if self._buffer:
            self.log.warn(
                "{service}: discarded {n} octets pipelined after STARTTLS from {ip}",
                service=self.service,
                n=len(self._buffer),
                ip=self._ip,
            )
            self._buffer = b""
        self.transport.startTLS(self.factory.tlsOptions)
        self.tls = True

    # --- SASL and logins ------------------------------------------------------

    def expectLine(self, handler):
        """
        Pass the next input line to C{handler} instead of L{lineReceived}
        (a SASL response, say); its return value is treated like a
        command's.
        """
        self._lineHandler = handler

    def _dispatchLine(self, line):
        handler = self._lineHandler
        if handler is not None:
            self._lineHandler = None
            return handler(line)
        return self.lineReceived(line)

    def authenticate(self, mechanism, initial, challengePrefix, succeeded, refused):
        """
        Run a SASL exchange and log in.

        @param initial: the raw initial response (still base64), or L{None}.
        @param challengePrefix: what precedes a base64 challenge on its line
            (SMTP C{b"334 "}, POP3 and IMAP C{b"+ "}).
        @param succeeded: called with the avatar.
        @param refused: called with a L{Failure} of L{sasl.SASLError} (nothing
            was checked) or L{credError.UnauthorizedLogin} (after the
            failed-login delay).
        @return: L{None} while challenges are outstanding (the exchange goes
            on with the next lines), else a Deferred firing once answered.
        """
        exchange = sasl.Exchange(mechanism, self.factory.hostname)

        def done(d):
            return d.addCallbacks(succeeded, refused)

        def sendChallenge(challenge):
            self.send(challengePrefix + base64.b64encode(challenge) + b"\r\n")

        def step(challenge):
            if challenge is None:
                return done(self.login(exchange.credentials, exchange.username))
            sendChallenge(challenge)
            self.expectLine(receive)
            return None

        def receive(line):
            return guarded(lambda: step(exchange.respond(sasl.decodeResponse(line))))

        def guarded(function):
            try:
                return function()
            except sasl.ForeignAuthorization:
                return done(
                    self.loginFailed(exchange.username, "authorization identity differs", b"")
                )
            except sasl.SASLError as e:
                return done(defer.fail(e))

        return guarded(
            lambda: step(
                exchange.begin(None if initial is None else sasl.decodeResponse(initial))
            )
        )

    def login(self, creds, username):
        """
        Log in with cred credentials, within the limits of the factory's
        L{mdpy.auth.checkers.FailedLoginTracker}: a login it refuses is not
        checked, one it admits counts as a failure until the check is done.

        @return: a Deferred firing with the avatar (the account address), or
            failing with L{credError.UnauthorizedLogin} after the failed-login
            delay.
        """
        tracker = self.factory.loginTracker
        if tracker is None:
            return self._checkCredentials(None, creds, username)
        d = tracker.start(self._ip, username, tracker.digestPassword(sasl.secretOf(creds)))
        d.addCallbacks(
            self._checkCredentials,
            self._ebRefused,
            callbackArgs=(creds, username),
            errbackArgs=(username,),
        )
        return d

    def _ebRefused(self, failure, username):
        failure.trap(LoginRefused)
        # A banned address is news for fail2ban; a limited account was
        # announced once by the tracker, and its refusals may be many.
        emit = self.log.warn if failure.value.why == BANNED_ADDRESS else self.log.info
        emit(
            "{service}: login refused for user={user} from {ip}: {why}",
            service=self.service,
            user=_printable(username),
            ip=self._ip,
            why=failure.value.why,
        )
        # Never sooner than a first failure, so a refused client cannot
        # repeat its refused logins at full speed.
        tracker = self.factory.loginTracker
        return self._failLater(failure.value, max(tracker.baseDelay, tracker.delayFor(self._ip)))

    def _checkCredentials(self, attempt, creds, username):
        if self._closing and attempt is not None:
            # The client left while its login waited: nothing to check.
            attempt.abandoned()
            return defer.fail(credError.UnauthorizedLogin("connection closed"))
        d = self.factory.portal.login(creds, None, IAccount)
        d.addCallbacks(
            self._cbPortalLogin,
            self._ebPortalLogin,
            callbackArgs=(attempt,),
            errbackArgs=(username, attempt),
        )
        return d

    def _cbPortalLogin(self, result, attempt):
        interface, avatar, logout = result
        if attempt is not None:
            attempt.succeeded()
        # The login read the account as it is now.
        self._accountCheckedAt = self.factory.clock.seconds()
        self.log.info(
            "{service}: {user} logged in from {ip}", service=self.service, user=avatar, ip=self._ip
        )
        return avatar

    def _ebPortalLogin(self, failure, username, attempt):
        if not failure.check(credError.UnauthorizedLogin, credError.UnhandledCredentials):
            if attempt is not None:
                attempt.abandoned()
            return failure
        return self.loginFailed(username, "bad credentials", attempt=attempt)

    def loginFailed(self, username, why, secret=b"", attempt=None):
        """
        Log a failed login (a line fail2ban can match), count it, and fail
        after the delay this client has earned.

        @param secret: what was offered as the password, when no C{attempt}.
        @param attempt: the L{mdpy.auth.checkers.LoginAttempt} that failed,
            or L{None} if nothing was checked.
        @return: a Deferred failing with L{credError.UnauthorizedLogin}.
        """
        self.log.warn(
            "{service}: authentication failed for user={user} from {ip}: {why}",
            service=self.service,
            user=_printable(username),
            ip=self._ip,
            why=why,
        )
        tracker = self.factory.loginTracker
        # Counted first, so that even the first failure waits (2 s, as
        # Dovecot's auth_failure_delay), growing with each new one.
        if attempt is not None:
            attempt.failed()
        elif tracker is not None:
            tracker.recordFailure(self._ip, username, tracker.digestPassword(secret))
        delay = 0 if tracker is None else tracker.delayFor(self._ip)
        return self._failLater(credError.UnauthorizedLogin(why), delay)

    def _failLater(self, failure, delay):
        """
        @return: a Deferred failing with C{failure} after C{delay} seconds.
        """
        if not delay:
            return defer.fail(failure)
        d = defer.Deferred()
        self.factory.clock.callLater(delay, d.errback, failure)
        return d

    def accountRemains(self, account, fresh=False):
        """
        Tell whether the account this session logged in to is still there,
        as L{SessionFactory.accountCheck} says: not deleted, not made again
        (another account under the same address), not disabled.  A protocol
        asks before the commands that reach the account's mail; when the
        account is gone, the session is ended: L{accountLost} says goodbye,
        the reason is logged, and the connection closes.

        @param account: the avatar of the session's login.
        @param fresh: ask the directory now (before a command that opens a
            mailbox by name or writes); otherwise an answer given less than
            L{mdpy.auth.accounts.AccountCheck.maxAge} seconds ago (or the
            login itself) is taken again.
        @return: whether the session goes on; it does also when the
            directory cannot answer (that is logged, and a later command
            asks again).
        """
        check = self.factory.accountCheck
        if check is None or account is None:
            return True
        now = self.factory.clock.seconds()
        checkedAt = self._accountCheckedAt
        if not fresh and checkedAt is not None and 0 <= now - checkedAt < check.maxAge:
            return True
        try:
            check.check(account)
        except (errors.NotFound, errors.Disabled) as e:
            self.log.info(
                "{service}: {why}; session of {user} from {ip} closed",
                service=self.service, why=e, user=account, ip=self._ip,
            )
            self.accountLost(e)
            self.close()
            return False
        except errors.TemporaryFailure as e:
            self.log.warn(
                "{service}: cannot check the account of {user}: {error}",
                service=self.service, user=account, error=e,
            )
            return True
        self._accountCheckedAt = now
        return True

    def accountLost(self, reason):
        """
        Say goodbye to a client whose account is gone (see
        L{accountRemains}); the connection is closed after.

        @param reason: L{errors.NotFound} (deleted, or made again) or
            L{errors.Disabled}.
        """
        raise NotImplementedError()


def _printable(username):
    """
    @return: C{username} as text for a log line.
    """
    if isinstance(username, bytes):
        return username.decode("utf-8", "replace")
    return username
