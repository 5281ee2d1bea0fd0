# -*- test-case-name: tests.test_pop3_client -*-
"""
The one POP3 client, which DomainPOP and MultiPOP collect mail with: connect,
TLS, log in, list, retrieve into a file, delete, quit.

This module is a little past ~800 lines on purpose: the protocol and the
session it serves keep the invariants below together.

Standards: RFC 1939 (POP3), RFC 2449 (CAPA), RFC 2595 section 4 (STLS),
RFC 8314 (implicit TLS on 995), RFC 6125 via service_identity (the server's
name in its certificate).

    session = await connect(POP3Account("pop.isp.test", username="joe", password="..."))
    try:
        for message in await session.listing():
            with open(path, "wb") as f:
                await session.retrieve(message.number, f, maxSize=limit)
            await session.delete(message.number)
        await session.quit()            # deletions are committed here
    except BaseException:
        session.abort()                 # nothing is deleted
        raise

It is Twisted's L{AdvancedPOP3Client} (its command queue, reply state machine,
CAPA, STLS and APOP), with what makes that class unsafe replaced: its line
reader (one limit, and lines after C{+OK} to STLS were still read as
plaintext), its login (APOP first, before any TLS), its TLS context (no
certificate check), its always-on or absent timeout, its LIST/UIDL parsers
(an exception out of C{dataReceived}, a list padded to any message number)
and its silence about a refused greeting.

Invariants:
 - When C{tls} is C{starttls}, nothing secret is sent before the server said
   C{+OK} to STLS, the handshake completed with a verified certificate (unless
   C{verify} is off) and CAPA was answered over TLS.  No STLS in CAPA, a
   refused STLS or a failed handshake ends the session; there is no fallback
   to plaintext.
 - Whatever came in the read that carried C{+OK} to STLS, after that line, is
   discarded (response injection, RFC 2595 section 4 / CVE-2011-0411's mirror).
 - While a command is outstanding a timer runs: its reply must begin within
   C{timeout} seconds, and each further line must follow within C{timeout}
   of the one before.  When it fires, the connection is aborted.  No timer
   runs while the caller holds an idle session.
 - Between reads at most one partial line is buffered: L{STATUS_LINE} octets
   for status lines, LIST, UIDL and CAPA, L{MESSAGE_LINE} inside RETR; a
   longer line aborts the connection.  RETR is written to the caller's file
   in chunks of at most L{CHUNK} octets, never held whole.
 - The first failure (bad input, timeout, lost connection, L{FetchSession.abort})
   fails every pending command with that L{FetchError}, and every later one
   at once; nothing is raised out of C{dataReceived}.
 - Deletions are committed only by C{+OK} to QUIT (RFC 1939 section 6).
"""

import re

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.mail.pop3 import AdvancedPOP3Client, ServerErrorResponse
from twisted.python.failure import Failure

from mdpy.logs import Logger
from mdpy.tls import TLS_MODES, accountClientOptions, clientEndpoint

log = Logger()


STATUS_LINE = 4096
MESSAGE_LINE = 65536
CHUNK = 65536
MAX_CAPABILITIES = 200
MAX_MESSAGES = 200000

_OK = b"+OK"
_ERR = b"-ERR"

# RFC 1939 section 5 (LIST): "a scan listing consists of the message-number
# of the message, followed by a single space and the exact size of the
# message in octets ... no requirement on what follows the message size".
_LIST_LINE = re.compile(rb"([1-9][0-9]{0,8}) ([0-9]{1,15})(?: .*)?\Z", re.S)
# RFC 1939 section 7 (UIDL): message-number, one space, a unique-id of 1 to
# 70 characters in the range 0x21 to 0x7E.
_UIDL_LINE = re.compile(rb"([1-9][0-9]{0,8}) ([\x21-\x7e]{1,70})\Z")


class FetchError(Exception):
    """
    A POP3 collection failed; C{str(e)} is a one-line reason for the log,
    naming the host and the step (C{"pop.isp.test:110: server offers no STLS;
    not logging in"}).
    """


class _Refused(FetchError):
    """
    The server answered C{-ERR}; the session itself is still usable.

    @ivar reply: the server's text after C{-ERR}, printable.
    """

    def __init__(self, message, reply):
        FetchError.__init__(self, message)
        self.reply = reply


class POP3Account:
    """
    Where and how to collect.

    @ivar host: the server's name (checked against its certificate) or address.
    @ivar tls: C{"none"}, C{"starttls"} (STLS, RFC 2595) or C{"implicit"}
        (TLS from the start, RFC 8314).
    @ivar verify: whether the certificate and the name in it are checked.
    @ivar caFile: a PEM file of the CA certificates to trust, or L{None} (or
        C{""}) for the platform's.
    @ivar apop: log in with APOP (RFC 1939 section 7) instead of USER/PASS.
    @ivar timeout: seconds to wait for each reply (and each line of it).
    """

    def __init__(
        self,
        host,
        port=110,
        tls="starttls",
        verify=True,
        caFile=None,
        username="",
        password="",
        apop=False,
        timeout=60,
    ):
        if tls not in TLS_MODES:
            raise ValueError("tls must be one of %s, not %r" % (", ".join(TLS_MODES), tls))
        if not timeout or timeout <= 0:
            raise ValueError("timeout must be positive, not %r" % (timeout,))
        self.host = host
        self.port = int(port)
        self.tls = tls
        self.verify = verify
        self.caFile = caFile or None
        self.username = username
        self.password = password
        self.apop = apop
        self.timeout = timeout

    @property
    def label(self):
        """
        C{host:port} for messages.
        """
        host = "[%s]" % (self.host,) if ":" in self.host else self.host
        return "%s:%d" % (host, self.port)

    def __repr__(self):
        return "<POP3Account %s@%s tls=%s>" % (self.username, self.label, self.tls)


class RemoteMessage:
    """
    One message of a server's listing.

    @ivar number: its message number in this session (1-based).
    @ivar size: its size in octets, as LIST says.
    @ivar uid: its unique-id from UIDL as text, or L{None} if the server has
        no UIDL.
    """

    def __init__(self, number, size, uid=None):
        self.number = number
        self.size = size
        self.uid = uid

    def __repr__(self):
        return "<RemoteMessage %d size=%d uid=%r>" % (self.number, self.size, self.uid)


def _show(data, limit=200):
    """
    @return: server text C{data}, printable and short, for a log line.
    """
    text = data.decode("ascii", "backslashreplace").strip()
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _isStatus(line):
    """
    @return: whether C{line} is a POP3 status line (RFC 1939 section 3).
    """
    return any(line == code or line.startswith(code + b" ") for code in (_OK, _ERR))


def _credential(value, what, label):
    """
    @return: C{value} as bytes fit for one command line.
    """
    if isinstance(value, str):
        value = value.encode("utf-8")
    if any(c in value for c in b"\r\n\0"):
        raise FetchError("%s: the %s contains a line break or NUL; not logging in" % (label, what))
    return value


def _dotUnstuff(line):
    """
    RFC 1939 section 3: a line of a multi-line response that begins with
    the termination octet has had one more prepended.
    """
    return line[1:] if line.startswith(b"..") else line


def clientTLSOptions(account):
    """
    @return: the client TLS options for C{account} (see
        L{accountClientOptions}).
    @raise FetchError: C{caFile} cannot be read or holds no certificate.
    """
    try:
        return accountClientOptions("pop3 fetch: " + account.label, account.host, account.verify, account.caFile)
    except ValueError as e:
        raise FetchError("%s: %s" % (account.label, e))


class _MessageWriter:
    """
    The consumer of one RETR: unstuffed lines, CR LF restored, written to
    C{fileobj} in chunks; too many octets abort the session.
    """

    def __init__(self, protocol, number, fileobj, maxSize):
        self.protocol = protocol
        self.number = number
        self.fileobj = fileobj
        self.maxSize = maxSize
        self.octets = 0
        self._chunk = []
        self._chunkSize = 0

    def line(self, line):
        if self.protocol.failure is not None:
            return
        size = len(line) + 2
        if self.maxSize is not None and self.octets + size > self.maxSize:
            self.protocol.fail(
                "message %d is larger than %d octets; RETR abandoned" % (self.number, self.maxSize)
            )
            return
        self.octets += size
        self._chunk.append(line)
        self._chunk.append(b"\r\n")
        self._chunkSize += size
        if self._chunkSize >= CHUNK:
            try:
                self.flush()
            except Exception as e:
                self.protocol.fail(self._writeError(e))

    def flush(self):
        chunk, self._chunk, self._chunkSize = b"".join(self._chunk), [], 0
        if chunk:
            self.fileobj.write(chunk)

    def finish(self, ignored):
        try:
            self.flush()
        except Exception as e:
            raise self._writeError(e)
        return self.octets

    def _writeError(self, e):
        error = FetchError(
            "%s: cannot write message %d: %s" % (self.protocol.account.label, self.number, e)
        )
        error.__cause__ = e
        return error


class _FetchProtocol(AdvancedPOP3Client):
    """
    L{AdvancedPOP3Client} made safe; see the module's invariants.  The
    public face is L{FetchSession}.

    @ivar failure: the L{FetchError} that ended the session, or L{None}.
    @ivar greeted: fires once the greeting was read (with its challenge in
        C{serverChallenge}).
    """

    def __init__(self, account, clock, tlsAtStart):
        self.account = account
        self.label = account.label
        self.timeout = account.timeout
        self.callLater = clock.callLater
        self.greeted = defer.Deferred()
        self.failure = None
        self._lineBuffer = b""
        self._verb = "greeting"
        self._discardRest = False
        self._tlsPending = tlsAtStart
        self._closedWaiters = []
        self._lost = False

    # --- input ------------------------------------------------------------------

    def _lineLimit(self):
        if self.state == "LONG" and self._verb == "RETR":
            return MESSAGE_LINE
        return STATUS_LINE

    def dataReceived(self, data):
        """
        Split input into CR LF lines, at most one partial line buffered.
        """
        if self.failure is not None:
            return
        self._tlsPending = False
        lines = (self._lineBuffer + data).split(b"\r\n")
        self._lineBuffer = lines.pop()
        for index, line in enumerate(lines):
            if self.failure is not None:
                return
            if len(line) > self._lineLimit():
                self.fail("reply line of more than %d octets to %s" % (self._lineLimit(), self._verb))
                return
            self.lineReceived(line)
            if self._discardRest:
                self._discardRest = False
                rest = sum(len(l) + 2 for l in lines[index + 1 :]) + len(self._lineBuffer)
                self._lineBuffer = b""
                if rest:
                    log.warn(
                        "pop3 fetch: {label}: discarded {n} octets sent with +OK to STLS",
                        label=self.label,
                        n=rest,
                    )
                return
        if self.failure is None and len(self._lineBuffer) > self._lineLimit():
            self.fail("reply line of more than %d octets to %s" % (self._lineLimit(), self._verb))

    def lineReceived(self, line):
        try:
            AdvancedPOP3Client.lineReceived(self, line)
        except Exception:
            log.failure("pop3 fetch: {label}: internal error", label=self.label)
            self.fail("internal error reading the reply to %s" % (self._verb,))
            return
        self._armTimer()

    def lineLengthExceeded(self, line):
        self.fail("reply line too long")

    def state_WELCOME(self, line):
        if not _isStatus(line):
            self.fail("malformed greeting: %s" % (_show(line),))
            return "WAITING"
        if not line.startswith(_OK):
            self.fail("server refused the session: %s" % (_show(line),))
            return "WAITING"
        self.setTimeout(None)  # answered; whoever is told may send at once
        return AdvancedPOP3Client.state_WELCOME(self, line)

    def serverGreeting(self, greeting):
        self.greeted.callback(None)

    # Each state stops the timer before a complete reply fires a Deferred,
    # so a caller that waits and goes on synchronously finds it stopped, or
    # rearmed by its next command.

    def state_SHORT(self, line):
        if not _isStatus(line):
            return self._malformed(line)
        self.setTimeout(None)
        return AdvancedPOP3Client.state_SHORT(self, line)

    def state_LONG_INITIAL(self, line):
        if not _isStatus(line):
            return self._malformed(line)
        if not line.startswith(_OK):
            self.setTimeout(None)
        return AdvancedPOP3Client.state_LONG_INITIAL(self, line)

    def state_LONG(self, line):
        if line == b".":
            self.setTimeout(None)
        return AdvancedPOP3Client.state_LONG(self, line)

    def _malformed(self, line):
        self.fail("malformed reply to %s: %s" % (self._verb, _show(line)))
        return "WAITING"

    def state_WAITING(self, line):
        self.fail("unexpected line from the server: %s" % (_show(line),))

    # --- commands ---------------------------------------------------------------

    def sendShort(self, cmd, args):
        if self.failure is not None:
            return defer.fail(self.failure)
        queued = self._blockedQueue is not None
        d = AdvancedPOP3Client.sendShort(self, cmd, args)
        if not queued:
            self._sent(cmd)
        return d

    def sendLong(self, cmd, args, consumer, xform):
        if self.failure is not None:
            return defer.fail(self.failure)
        queued = self._blockedQueue is not None
        d = AdvancedPOP3Client.sendLong(self, cmd, args, consumer, xform)
        if not queued:
            self._sent(cmd)
        return d

    def _sent(self, cmd):
        self._verb = cmd.decode("ascii")
        self._armTimer()

    def command(self, d, what):
        """
        @return: C{d}, failing with L{FetchError} only: L{_Refused} for
            C{-ERR}, saying C{what} was refused.
        """
        return d.addErrback(self._ebCommand, what)

    def _ebCommand(self, failure, what):
        if failure.check(FetchError):
            return failure
        if failure.check(ServerErrorResponse):
            text = _show(failure.value.args[0])
            password = self.account.password
            if password and isinstance(password, str) and password in text:
                text = text.replace(password, "***")
            raise _Refused("%s: %s refused: -ERR %s" % (self.label, what, text), text)
        log.failure("pop3 fetch: {label}: {what} failed", failure, label=self.label, what=what)
        raise FetchError("%s: %s failed: %s" % (self.label, what, failure.getErrorMessage()))

    def capabilities(self, useCache=True):
        """
        CAPA (RFC 2449), at most L{MAX_CAPABILITIES} lines; C{-ERR} gives
        no capabilities.  See L{AdvancedPOP3Client.capabilities}.
        """
        if useCache and self._capCache is not None:
            return defer.succeed(self._capCache)
        found = {}
        seen = [0]

        def consume(line):
            seen[0] += 1
            if seen[0] > MAX_CAPABILITIES:
                self.fail("more than %d CAPA lines" % (MAX_CAPABILITIES,))
                return
            words = line.split()
            if words:
                found[words[0].upper()] = words[1:] or None

        def ebCapa(failure):
            failure.trap(ServerErrorResponse)
            return None

        def cbCapa(ignored):
            self._capCache = found
            return found

        return self.sendLong(b"CAPA", None, consume, None).addErrback(ebCapa).addCallback(cbCapa)

    def _startedTLS(self, result, context, tls):
        # Called from within the +OK line of STLS: the rest of this read is
        # plaintext the server had no business sending.
        self._discardRest = True
        self._tlsPending = True
        return AdvancedPOP3Client._startedTLS(self, result, context, tls)

    # --- timer, failure and the end -----------------------------------------------

    def _armTimer(self):
        if self.failure is None and (self._waiting is not None or self.state == "WELCOME"):
            self.setTimeout(self.timeout)
        else:
            self.setTimeout(None)

    def timeoutConnection(self):
        self.fail("no reply to %s within %s seconds" % (self._verb, self.timeout))

    def fail(self, reason, drop=True):
        """
        End the session: fail what waits with C{reason} (a L{FetchError},
        or text to make one of) and, if C{drop}, abort the connection.
        """
        if self.failure is not None:
            return
        if not isinstance(reason, FetchError):
            reason = FetchError("%s: %s" % (self.label, reason))
        self.failure = reason
        self.setTimeout(None)
        self._lineBuffer = b""
        waiting = []
        if self._waiting is not None:
            waiting.append(self._waiting)
            self._waiting = None
        if self._blockedQueue:
            waiting.extend(d for (d, f, a) in self._blockedQueue)
        self._blockedQueue = None
        self._consumer = self._xform = None
        if drop and not self._lost and self.transport is not None:
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                self.transport.loseConnection()
        if not self.greeted.called:
            self.greeted.errback(reason)
        for d in waiting:
            d.errback(reason)

    def finish(self):
        """
        QUIT was answered C{+OK}: close, and refuse any further command.
        """
        self.fail(FetchError("%s: the session has ended (QUIT)" % (self.label,)), drop=False)
        if not self._lost:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self._lost = True
        self.setTimeout(None)
        if self.failure is None:
            if self._tlsPending:
                what = "TLS handshake failed"
            elif self._waiting is not None or self.state == "WELCOME":
                what = "connection lost waiting for the reply to %s" % (self._verb,)
            else:
                what = "connection lost"
            self.fail("%s: %s" % (what, _show(reason.getErrorMessage().encode("utf-8", "replace"))), drop=False)
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            d.callback(None)

    def whenClosed(self):
        if self._lost:
            return defer.succeed(None)
        d = defer.Deferred()
        self._closedWaiters.append(d)
        return d


class _FetchFactory(Factory):
    """
    Builds the one L{_FetchProtocol} of a connection.
    """

    noisy = False

    def __init__(self, account, clock, tlsAtStart):
        self.account = account
        self.clock = clock
        self.tlsAtStart = tlsAtStart

    def buildProtocol(self, addr):
        protocol = _FetchProtocol(self.account, self.clock, self.tlsAtStart)
        protocol.factory = self
        return protocol


class FetchSession:
    """
    A logged-in POP3 session (RFC 1939 TRANSACTION state).  Commands may be
    issued without waiting for earlier ones; they go out one at a time.
    Every Deferred fails only with L{FetchError}.

    @ivar capabilities: the server's CAPA answer (over TLS when TLS is used)
        as C{{"NAME": ["arg", ...] or None}}, names upper-case; empty if the
        server has no CAPA.
    """

    def __init__(self, protocol, capabilities):
        self._protocol = protocol
        self.capabilities = capabilities

    @property
    def account(self):
        return self._protocol.account

    def listing(self):
        """
        LIST and UIDL (RFC 1939 sections 5 and 7).

        @return: a Deferred firing with the L{RemoteMessage}s in message
            number order.  A server answering C{-ERR} to UIDL gives them
            C{uid} L{None}.  A malformed LIST or UIDL line, a number listed
            twice, a UIDL for a number LIST did not give or missing for one
            it did, or a unique-id given twice fail it with L{FetchError}.
        """
        return defer.ensureDeferred(self._listing())

    async def _listing(self):
        protocol = self._protocol
        label = protocol.label
        sizes = {}
        problem = []

        def note(text):
            if not problem:
                problem.append(text)

        def tooMany(count):
            if count > MAX_MESSAGES:
                protocol.fail("more than %d messages listed" % (MAX_MESSAGES,))
                return True
            return False

        seen = [0]

        def consumeList(line):
            seen[0] += 1
            if tooMany(seen[0]):
                return
            match = _LIST_LINE.match(line)
            if match is None:
                note("malformed LIST line: %s" % (_show(line),))
                return
            number = int(match.group(1))
            if number in sizes:
                note("LIST gives message %d twice" % (number,))
                return
            sizes[number] = int(match.group(2))

        await protocol.command(protocol.sendLong(b"LIST", None, consumeList, None), "LIST")
        if problem:
            raise FetchError("%s: %s" % (label, problem[0]))
        uids = {}
        byUid = {}
        if sizes:

            def consumeUIDL(line):
                seen[0] += 1
                if tooMany(seen[0]):
                    return
                match = _UIDL_LINE.match(line)
                if match is None:
                    note("malformed UIDL line: %s" % (_show(line),))
                    return
                number, uid = int(match.group(1)), match.group(2).decode("ascii")
                if number not in sizes:
                    note("UIDL gives message %d, which LIST does not" % (number,))
                elif number in uids:
                    note("UIDL gives message %d twice" % (number,))
                elif uid in byUid:
                    note("UIDL gives messages %d and %d the same unique-id %s" % (byUid[uid], number, uid))
                else:
                    uids[number] = uid
                    byUid[uid] = number

            seen[0] = 0
            try:
                await protocol.command(protocol.sendLong(b"UIDL", None, consumeUIDL, None), "UIDL")
            except _Refused:
                uids = None
            if problem:
                raise FetchError("%s: %s" % (label, problem[0]))
            if uids is not None:
                missing = sorted(set(sizes) - set(uids))
                if missing:
                    raise FetchError("%s: UIDL gives no unique-id for message %d" % (label, missing[0]))
        return [
            RemoteMessage(number, size, None if uids is None else uids[number])
            for number, size in sorted(sizes.items())
        ]

    def retrieve(self, number, fileobj, maxSize=None):
        """
        RETR (RFC 1939 section 5): write message C{number}, dot-unstuffed,
        every line ending CR LF, to C{fileobj} (only its C{write} is used),
        in chunks as it arrives.

        @param maxSize: the most octets to accept, or L{None}.  A server
            sending more (whatever LIST said) fails the Deferred with
            L{FetchError} and the connection is dropped, as the rest of the
            reply cannot be skipped safely.
        @return: a Deferred firing with the number of octets written.
        """
        protocol = self._protocol
        writer = _MessageWriter(protocol, number, fileobj, maxSize)
        d = protocol.sendLong(b"RETR", b"%d" % (_number(number),), writer.line, _dotUnstuff)
        d.addCallback(writer.finish)
        return protocol.command(d, "RETR %d" % (number,))

    def delete(self, number):
        """
        DELE (RFC 1939 section 5): mark message C{number}; it is removed
        only by a successful L{quit}.

        @return: a Deferred firing with L{None}.
        """
        protocol = self._protocol
        d = protocol.sendShort(b"DELE", b"%d" % (_number(number),))
        d.addCallback(lambda ignored: None)
        return protocol.command(d, "DELE %d" % (number,))

    def quit(self):
        """
        QUIT (RFC 1939 section 6): the server removes the marked messages
        and says C{+OK}; only then are they gone.

        @return: a Deferred firing with L{None} on C{+OK}, or failing with
            L{FetchError} (deletions not committed) otherwise.
        """
        protocol = self._protocol

        def cbQuit(ignored):
            protocol.finish()

        def ebQuit(failure):
            failure.trap(FetchError)
            protocol.fail(failure.value)
            raise FetchError("%s (deletions not confirmed)" % (failure.value,))

        d = protocol.command(protocol.sendShort(b"QUIT", None), "QUIT")
        return d.addCallbacks(cbQuit, ebQuit)

    def abort(self):
        """
        Drop the connection without QUIT: nothing marked is deleted (RFC 1939
        section 6).  Pending commands fail with L{FetchError}.
        """
        self._protocol.fail(FetchError("%s: session aborted" % (self._protocol.label,)))

    def whenClosed(self):
        """
        @return: a Deferred firing once the connection is closed.
        """
        return self._protocol.whenClosed()


def _number(number):
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise ValueError("a message number is a positive integer, not %r" % (number,))
    return number


def connect(account, reactor=None):
    """
    Connect to C{account}'s server, start TLS as configured and log in.

    @param reactor: the reactor (TCP, name resolution, and the clock for
        timeouts).
    @return: a Deferred firing with a L{FetchSession}, or failing with
        L{FetchError}.
    """
    if reactor is None:
        from twisted.internet import reactor
    tlsOptions = None
    try:
        if account.tls != "none":
            tlsOptions = clientTLSOptions(account)
        username = _credential(account.username, "username", account.label)
        password = _credential(account.password, "password", account.label)
        if not username:
            raise FetchError("%s: no username configured" % (account.label,))
    except FetchError as e:
        return defer.fail(e)
    implicit = account.tls == "implicit"
    factory = _FetchFactory(account, reactor, implicit)
    endpoint = clientEndpoint(reactor, account.host, account.port, account.timeout,
                              tlsOptions if implicit else None)
    d = endpoint.connect(factory)

    def ebConnect(failure):
        raise FetchError("%s: cannot connect: %s" % (account.label, failure.getErrorMessage()))

    def cbConnected(protocol):
        d = defer.ensureDeferred(_logIn(protocol, account, tlsOptions, username, password))
        d.addErrback(_ebLogIn, protocol)
        return d

    return d.addCallbacks(cbConnected, ebConnect)


def _ebLogIn(failure, protocol):
    """
    Logging in failed: drop the connection, and report only L{FetchError}s.
    """
    if not failure.check(FetchError):
        log.failure("pop3 fetch: {label}: internal error logging in", failure, label=protocol.label)
        failure = Failure(FetchError("%s: internal error: %s" % (protocol.label, failure.getErrorMessage())))
    protocol.fail(failure.value)
    return failure


async def _logIn(protocol, account, tlsOptions, username, password):
    """
    Greeting, CAPA, STLS if configured, then APOP or USER/PASS.

    @return: the L{FetchSession}.
    """
    label = account.label
    await protocol.greeted
    capabilities = await protocol.command(protocol.capabilities(), "CAPA")
    if account.tls == "starttls":
        # RFC 2595 section 4: STLS is only valid if CAPA lists it.
        if b"STLS" not in capabilities:
            raise FetchError("%s: server offers no STLS; not logging in" % (label,))
        capabilities = await protocol.command(protocol.startTLS(tlsOptions), "STLS")
    if account.apop:
        challenge = protocol.serverChallenge
        if challenge is None:
            raise FetchError("%s: APOP configured but the greeting has no timestamp; not logging in" % (label,))
        await _authenticate(protocol, protocol._apop(username, password, challenge), "APOP")
    else:
        await _authenticate(protocol, protocol.user(username), "USER")
        await _authenticate(protocol, protocol.password(password), "PASS")
    return FetchSession(
        protocol,
        {
            name.decode("ascii", "replace"): None if args is None else [a.decode("ascii", "replace") for a in args]
            for name, args in capabilities.items()
        },
    )


async def _authenticate(protocol, d, verb):
    try:
        await protocol.command(d, verb)
    except _Refused as e:
        raise FetchError("%s: authentication failed (%s refused): -ERR %s" % (protocol.label, verb, e.reply))
