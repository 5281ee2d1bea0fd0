# -*- test-case-name: tests.test_smtp_client -*-
"""
The ESMTP client of the outbound relay: delivers queued messages to an MX
host or a smarthost, several over one connection.  Replies are read by
L{mdpy.smtp.replies}.

This module is past ~800 lines on purpose: L{ESMTPClient} is one state
machine, and the invariants below hold across all of its methods.

Standards: RFC 5321 (SMTP), RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 2920
(PIPELINING), RFC 2034 and RFC 3463 (enhanced status codes), RFC 3207
(STARTTLS), RFC 4954 (AUTH) with RFC 4616 (PLAIN), RFC 6531 (SMTPUTF8),
RFC 3464 (the Diagnostic-Code of a delivery status notification).

    d = deliverOver(reactor, endpoint, "relay.example.org", queue.next, queue.done,
                    tlsOptions=CertificateOptions(verify=False))
    d.addCallback(sessionOver)   # a SessionResult; the Deferred never fails

Invariants:
 - Every message C{nextMessage} hands out gets exactly one C{messageDone},
   with one L{RecipientResult} per recipient in order, whatever becomes of
   the connection.  L{ESMTPClient.finished} fires once, after the last
   C{messageDone}, and never fails.
 - Replies are matched to commands in the order the commands were sent
   (RFC 2920 section 3.1).  A reply nobody waits for, a malformed line, a
   line over C{maxReplyLine} octets or a reply over C{maxReplyLines} lines
   aborts the connection; between reads at most C{maxReplyLine} octets of a
   partial line stay buffered.
 - The body goes out only after C{354}, through one L{DotStuffer} for the
   whole message: bare CR and LF become CR LF and leading dots are doubled
   across chunk boundaries, so nothing in a body ends DATA early (SMTP
   smuggling).  A body that cannot be read aborts the connection rather than
   end DATA on a truncated message.
 - After C{220} to STARTTLS nothing is read or sent in plaintext again: what
   came with the C{220} is discarded (response injection), EHLO is sent
   again (RFC 3207 section 4.2), and a failed handshake ends the connection
   with C{tlsFailed}, never a fallback to plaintext on the same connection.
 - Credentials are only ever sent over TLS.
 - A connection the server closes while the client waits for
   C{nextMessage} (an idle connection kept for mail still to come) cancels
   the Deferred C{nextMessage} gave, and ends without an error.  A message
   whose connection was lost before any of its data went out gets results
   marked L{RecipientResult.unsent}: the server cannot have it, so it may go
   at once over another connection.
"""

import base64
from collections import deque
from functools import partial

from twisted.internet import defer
from twisted.internet.interfaces import INegotiated, IPullProducer, ISSLTransport, ITLSTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from zope.interface import implementer

from mdpy.dotstuffing import DotStuffer
from mdpy.errors import PermanentFailure, TemporaryFailure
from mdpy.logs import Logger
from mdpy.session import disableNagle, writesThrough, writeThrough
from mdpy.smtp.replies import CONTROL_CHARACTERS, ReplyError, ReplyReader, formatReply

# Results this client makes up (remote=False); RFC 3463 section 3 codes.
C451ConnectionProblem = (451, "4.4.2", "connection problem")
C451UnreadableMessage = (451, "4.3.0", "cannot read the queued message")
C552TooBig = (552, "5.3.4", "message larger than the server accepts (SIZE %d)")
C553NeedsSMTPUTF8 = (553, "5.6.7", "the server does not support SMTPUTF8")
C553BadSender = (553, "5.1.7", "sender address cannot be sent in SMTP")
C553BadRecipient = (553, "5.1.3", "recipient address cannot be sent in SMTP")

_INTERMEDIATE_OK = ("DATA", "AUTH")  # the only commands a 3xx may answer


class OutboundMessage:
    """
    One queued message to deliver.

    @ivar sender: the reverse-path without brackets; C{""} for the null sender.
    @ivar recipients: the forward-paths, as text.
    @ivar size: the size of the body file in octets (for SIZE, RFC 1870).
    @ivar openBody: returns a binary file positioned at the start of the
        message; the client reads it in chunks and closes it.
    @ivar eightBit: whether the body has 8-bit data (BODY=8BITMIME, RFC 6152).
    @ivar smtputf8: whether the message needs SMTPUTF8 (RFC 6531).
    """

    def __init__(self, messageId, sender, recipients, size, openBody, eightBit=False, smtputf8=False):
        self.messageId = messageId
        self.sender = sender
        self.recipients = list(recipients)
        self.size = size
        self.openBody = openBody
        self.eightBit = eightBit
        self.smtputf8 = smtputf8


class RecipientResult:
    """
    What became of one recipient.

    @ivar code: the reply code (RFC 5321 section 4.2).
    @ivar enhanced: the enhanced status code (RFC 3463), or L{None}.
    @ivar remote: whether the server said so; else this client made the
        result up (for a lost connection, say).
    @ivar unsent: whether the connection was lost before any of the
        message's data went out (no C{354} to DATA): the server cannot have
        it, and trying it again at once on a new connection is no attempt
        of its own.
    """

    def __init__(self, address, code, enhanced, text, remote=True, unsent=False):
        self.address = address
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.remote = remote
        self.unsent = unsent

    @property
    def delivered(self):
        return 200 <= self.code < 300

    @property
    def temporary(self):
        return 400 <= self.code < 500

    @property
    def permanent(self):
        return 500 <= self.code < 600

    def diagnostic(self):
        """
        @return: the Diagnostic-Code of a DSN (RFC 3464 section 2.3.6),
            C{"smtp; 550 5.1.1 text"}, or L{None} when the server did not
            say it.
        """
        return "smtp; " + self.reply() if self.remote else None

    def reply(self):
        """
        @return: the reply as logs show it, C{"550 5.1.1 text"}.
        """
        return formatReply(self.code, self.enhanced, self.text)

    def status(self):
        """
        @return: the Status of a DSN (RFC 3464 section 2.3.4): the enhanced
            code, else the class of the reply code (C{"4.0.0"}).
        """
        return self.enhanced or "%d.0.0" % (self.code // 100,)

    def __repr__(self):
        return "<RecipientResult %s %s%s>" % (self.address, self.reply(), "" if self.remote else " (local)")


class SessionResult:
    """
    What became of one connection as a whole.

    @ivar messagesAttempted: how many messages C{nextMessage} handed out.
    @ivar tlsFailed: whether STARTTLS was agreed but the handshake failed, so
        the caller may connect to the same host again without STARTTLS.
    @ivar tls: whether the session was encrypted (STARTTLS or implicit TLS).
    @ivar error: L{None}, or a L{TemporaryFailure} or L{PermanentFailure} for
        a failure of the session itself, before or between messages
        (greeting, EHLO, TLS, AUTH, a broken or lost connection, a timeout).
    @ivar reply: the C{(code, enhanced, text)} behind C{error}, if a reply was.
    """

    def __init__(self, messagesAttempted=0, tlsFailed=False, tls=False, error=None, reply=None):
        self.messagesAttempted = messagesAttempted
        self.tlsFailed = tlsFailed
        self.tls = tls
        self.error = error
        self.reply = reply

    def __repr__(self):
        return "<SessionResult messages=%d tls=%s tlsFailed=%s error=%r>" % (
            self.messagesAttempted, self.tls, self.tlsFailed, self.error)


def _encodePath(address, utf8):
    # Raises UnicodeEncodeError for non-ASCII without utf8, ValueError for
    # what could break the command line.
    if "<" in address or ">" in address or CONTROL_CHARACTERS.search(address):
        raise ValueError("unsafe character in %r" % (address,))
    return address.encode("utf-8" if utf8 else "ascii")


def _remoteResult(reply):
    return lambda address: RecipientResult(address, reply.code, reply.enhanced, reply.text, True)


def _localResult(reply, text=None, unsent=False):
    code, enhanced, default = reply
    return lambda address: RecipientResult(address, code, enhanced, text or default, False, unsent)


@implementer(IPullProducer)
class _BodyProducer:
    """
    Write a message to the transport as fast as it takes it: C{chunkSize}
    octets read at a time, dot-stuffed, the last chunk with the closing line.

    Over plain TCP, L{start} writes the first chunk straight to the socket
    (see L{writeThrough}): a message of one chunk, the usual case, goes out
    in one write, without a round through the reactor.  The rest, or all of
    it over any other transport, is pulled by the transport as it drains (a
    registered L{IPullProducer}).
    """

    def __init__(self, client, body, chunkSize):
        self._client = client
        self._body = body
        self._chunkSize = chunkSize
        self._stuffer = DotStuffer()
        self._stopped = False
        self._next = None  # a chunk read ahead, to know the last one
        self.registered = False

    def start(self):
        """
        Write the first chunk if it can go straight out; register with the
        transport for the rest.
        """
        transport = self._client.transport
        if writesThrough(transport):
            self.resumeProducing()
            if self._stopped:
                return
        self.registered = True
        transport.registerProducer(self, False)

    def resumeProducing(self):
        if self._stopped:
            return
        client = self._client
        body = self._body
        try:
            chunk = self._next if self._next is not None else body.read(self._chunkSize)
            self._next = body.read(self._chunkSize) if chunk else b""
        except Exception as e:
            self._stopped = True
            client._bodyUnreadable(e)
            return
        stuffer = self._stuffer
        if self._next:
            writeThrough(client.transport, stuffer.feed(chunk))
            client._resetTimeout()
        else:
            self._stopped = True
            writeThrough(client.transport, stuffer.feed(chunk) + stuffer.finish())
            client._bodySent()

    def stopProducing(self):
        self._stopped = True


class _Transaction:
    """
    One message on the wire.

    @ivar results: a L{RecipientResult} per recipient, L{None} while
        undecided (not answered yet, or accepted and waiting for DATA).
    @ivar accepted: the indexes of the recipients RCPT accepted.
    @ivar queue: without PIPELINING, the commands still to send.
    """

    def __init__(self, message, pipelined):
        self.message = message
        self.pipelined = pipelined
        self.results = [None] * len(message.recipients)
        self.accepted = []
        self.queue = []
        self.body = None
        self.mailRefused = False
        self.dataStarted = False  # the server said 354: the body may be on its way

    def decide(self, makeResult, indexes=None):
        # Give the undecided recipients among indexes (default all) a result.
        for i in range(len(self.results)) if indexes is None else indexes:
            if self.results[i] is None:
                self.results[i] = makeResult(self.message.recipients[i])

    def closeBody(self):
        body, self.body = self.body, None
        if body is not None:
            body.close()


class ESMTPClient(Protocol):
    """
    One outbound SMTP session: greeting, EHLO, STARTTLS, AUTH, then the
    messages of C{nextMessage} until it gives L{None}, then QUIT.

    @ivar finished: a L{Deferred} firing with a L{SessionResult} once the
        connection is over; it never fails.
    @ivar extensions: C{{KEYWORD: [parameter, ...]}} from the last EHLO.
    """

    log = Logger()
    bodyChunkSize = 65536

    def __init__(self, heloName, nextMessage, messageDone, tlsOptions=None, tlsRequired=False,
                 credentials=None, clock=None, timeout=300, maxReplyLine=4096, maxReplyLines=100):
        """
        @param heloName: this host's name, for EHLO and HELO.
        @param nextMessage: called when the session is ready for a message;
            returns an L{OutboundMessage}, L{None} for no more, or a Deferred
            of either.
        @param messageDone: called as C{messageDone(message, results)} once
            per message handed out, C{results} a list of L{RecipientResult}.
        @param tlsOptions: client TLS options for STARTTLS (certificate
            checks are the caller's choice), or L{None}.
        @param tlsRequired: whether to give up when STARTTLS is not possible.
        @param credentials: C{(username, password)} for AUTH, or L{None}.
        @param clock: the L{IReactorTime} for the timeout; the reactor.
        @param timeout: seconds to wait for a reply, or for the server to
            take more of the body.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.heloName = heloName
        self.nextMessage = nextMessage
        self.messageDone = messageDone
        self.tlsOptions = tlsOptions
        self.tlsRequired = tlsRequired
        self.credentials = credentials
        self.clock = clock
        self.timeout = timeout
        self.maxReplyLine = maxReplyLine
        self.maxReplyLines = maxReplyLines
        self.finished = defer.Deferred()
        self.extensions = {}
        self._result = SessionResult()
        self._replies = ReplyReader(maxReplyLine, maxReplyLines)
        self._waiting = deque()  # (command name, callback), a reply each
        self._txn = None
        self._producer = None
        self._timeoutCall = None
        self._peer = "?"
        self._connected = False
        self._ending = False  # nothing more to send: QUIT, abort, 421 or lost
        self._quitting = False
        self._ignoreInput = False
        self._tlsPending = False  # from startTLS to the first reply over TLS
        self._startTLSRefused = False
        self._awaitingMessage = False
        self._pendingMessage = None  # the Deferred of nextMessage while it waits

    # --- the connection ---------------------------------------------------------------

    def connectionMade(self):
        self._connected = True
        disableNagle(self.transport)
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        self._peer = "%s:%s" % (host, getattr(peer, "port", "")) if host else str(peer)
        if INegotiated.providedBy(self.transport) or ISSLTransport.providedBy(self.transport):
            self._result.tls = True  # implicit TLS (RFC 8314)
        tls = " with TLS" if self._result.tls else ""
        self.log.debug("smtp-client: connected to {peer}{tls}", peer=self._peer, tls=tls)
        self._waiting.append(("greeting", self._gotGreeting))
        self._resetTimeout()

    def connectionLost(self, reason=connectionDone):
        idle = self._idle()
        self._connected = False
        self._ending = self._ignoreInput = True
        self._waiting.clear()
        self._resetTimeout()
        if self._tlsPending and self._result.error is None:
            self._result.tlsFailed = True
        why = "TLS handshake failed: " if self._tlsPending else "connection lost: "
        why += reason.getErrorMessage()
        if idle:
            # The server closed a connection kept for mail still to come
            # (its idle timeout, a restart): no message suffers from that.
            self.log.info("smtp-client: {peer} closed the idle connection", peer=self._peer)
        elif not self._quitting:
            self._setError(TemporaryFailure("%s: %s" % (self._peer, why)))
        unsent = self._txn is not None and not self._txn.dataStarted
        self._closeTransaction(_localResult(C451ConnectionProblem, why, unsent))
        if self._pendingMessage is not None:
            self._pendingMessage.cancel()  # its outcome ends the session
        elif not self._awaitingMessage:
            self._finish()

    def _idle(self):
        # Whether the session waits for nextMessage, with nothing on the wire.
        return self._awaitingMessage and self._txn is None and not self._ending

    def _finish(self):
        result = self._result
        tls = "failed" if result.tlsFailed else ("yes" if result.tls else "no")
        error = "" if result.error is None else " error: %s" % (result.error,)
        # The messages were logged one by one; a session is news only when
        # it failed.
        emit = self.log.debug if result.error is None else self.log.info
        emit("smtp-client: session with {peer} over: messages={n} tls={tls}{error}",
             peer=self._peer, n=result.messagesAttempted, tls=tls, error=error)
        self.finished.callback(result)

    def _setError(self, error, reply=None):
        # The first failure of the session is the one it reports.
        if self._result.error is None:
            self.log.warn("smtp-client: {error}", error=error)
            self._result.error = error
            self._result.reply = None if reply is None else reply.asTuple()

    def _resetTimeout(self):
        # The idle timer runs while a reply is awaited or the body is going
        # out, not while nextMessage thinks.
        call, self._timeoutCall = self._timeoutCall, None
        if call is not None and call.active():
            call.cancel()
        if self._connected and self.timeout and (self._waiting or self._producer is not None):
            self._timeoutCall = self.clock.callLater(self.timeout, self._timedOut)

    def _timedOut(self):
        self._timeoutCall = None
        what = "the reply to " + self._waiting[0][0] if self._waiting else "the server to take the body"
        why = "timed out after %d s waiting for %s" % (self.timeout, what)
        if self._tlsPending:
            self._result.tlsFailed = True
            why = "TLS handshake " + why
        self._abort(why)

    def _abort(self, why):
        # Drop a session beyond repair at once; after QUIT only, no harm done.
        if not (self._quitting and self._txn is None):
            self._setError(TemporaryFailure("%s: %s" % (self._peer, why)))
        self._ending = self._ignoreInput = True
        self._replies.clear()
        self._waiting.clear()
        self._resetTimeout()
        self._closeTransaction(_localResult(C451ConnectionProblem, why))
        self.transport.abortConnection()

    def _guarded(self, function, *args):
        # A bug aborts the session and is logged, never raised to the reactor.
        try:
            function(*args)
        except Exception:
            self.log.failure("smtp-client: internal error with {peer}", peer=self._peer)
            if self._connected:
                self._abort("internal error in the SMTP client")

    # --- replies (RFC 5321 section 4.2) --------------------------------------------------

    def dataReceived(self, data):
        if self._ignoreInput:
            return
        self._replies.feed(data)
        self._guarded(self._readReplies)
        self._resetTimeout()

    def _readReplies(self):
        while not self._ignoreInput:
            try:
                reply = self._replies.next()
            except ReplyError as e:
                self._abort("protocol error: %s" % (e,))
                return
            if reply is None:
                return
            self._replyReceived(reply)

    def _replyReceived(self, reply):
        self.log.debug("smtp-client: {peer} said: {reply}", peer=self._peer, reply=reply)
        if self._tlsPending:
            self._tlsPending = False
            self._result.tls = True
            self.log.info("smtp-client: TLS started with {peer}", peer=self._peer)
        if reply.code == 421:
            self._serverClosing(reply)
        elif not self._waiting:
            self._abort("protocol error: reply nobody asked for: %s" % (reply,))
        else:
            name, callback = self._waiting.popleft()
            if reply.code // 100 == 3 and name not in _INTERMEDIATE_OK:
                self._abort("protocol error: reply %s to %s" % (reply, name))
            else:
                callback(reply)

    def _serverClosing(self, reply):
        # A 421 (RFC 5321 section 3.8): the server is going away.  The
        # undecided recipients of the message on the wire get its reply.
        if self._idle():
            self.log.info("smtp-client: {peer} closed the idle connection: {reply}", peer=self._peer, reply=reply)
            self._quitting = True  # nothing was under way: no error
        self._ending = self._ignoreInput = True
        self._waiting.clear()
        if not (self._quitting and self._txn is None):
            self._setError(TemporaryFailure("%s: closing the session: %s" % (self._peer, reply)), reply)
            self._closeTransaction(_remoteResult(reply))
        self._resetTimeout()
        self.transport.loseConnection()

    def _send(self, *commands):
        # Send commands, (line, name, callback) each, in one write, and give
        # each reply, in order, to the callback of its command.
        writeThrough(self.transport, b"".join(line + b"\r\n" for line, _, _ in commands))
        self._waiting.extend((name, callback) for _, name, callback in commands)
        self._resetTimeout()

    def _failSession(self, why, reply=None, kind=TemporaryFailure):
        # Give up on a session that cannot go on, politely.
        self._setError(kind("%s: %s" % (self._peer, why)), reply)
        self._quit()

    def _refused(self, reply, what):
        # A 5xx is permanent, as far as this host goes.
        kind = PermanentFailure if reply.code >= 500 else TemporaryFailure
        self._failSession("%s refused: %s" % (what, reply), reply, kind)

    def _quit(self):
        self._ending = self._quitting = True
        self._send((b"QUIT", "QUIT", self._gotQuit))

    def _gotQuit(self, reply):
        self._ignoreInput = True  # whatever follows changes nothing
        self.transport.loseConnection()

    # --- the session ---------------------------------------------------------------------

    def _gotGreeting(self, reply):
        if reply.code != 220:
            self._refused(reply, "session")
        else:
            self._hello(b"EHLO")

    def _hello(self, verb):
        line = verb + b" " + self.heloName.encode("idna")
        self._send((line, verb.decode(), partial(self._gotHello, verb)))

    def _gotHello(self, verb, reply):
        if reply.code // 100 == 2:
            # RFC 5321 section 4.1.1.1; "AUTH=LOGIN" is a pre-RFC form.
            keywords = [line.split() for line in reply.lines[1:]] if verb == b"EHLO" else []
            self.extensions = {k[0].upper(): k[1:] for k in keywords if k and "=" not in k[0]}
            self._afterHello()
        elif reply.code >= 500 and verb == b"EHLO":
            self._hello(b"HELO")  # RFC 5321 section 3.2: an old server
        else:
            self._refused(reply, verb.decode())

    def _afterHello(self):
        if not self._result.tls and not self._startTLSRefused:
            canStart = ITLSTransport.providedBy(self.transport) and "STARTTLS" in self.extensions
            if self.tlsOptions is not None and canStart:
                self._send((b"STARTTLS", "STARTTLS", self._gotStartTLS))
                return
            if self.tlsRequired:
                self._failSession("TLS required but STARTTLS not offered")
                return
            if self.tlsOptions is not None:
                self.log.info("smtp-client: {peer} offers no STARTTLS; plaintext", peer=self._peer)
        if self.credentials is not None:
            self._authenticate()
        else:
            self._askNextMessage()

    def _gotStartTLS(self, reply):
        if reply.code != 220:
            if self.tlsRequired:
                self._failSession("TLS required but STARTTLS refused: %s" % (reply,), reply)
                return
            # No handshake happened: the plaintext session is still sound.
            self.log.info("smtp-client: {peer} refused STARTTLS: {reply}", peer=self._peer, reply=reply)
            self._startTLSRefused = True
            self._afterHello()
            return
        if self._replies.buffer:  # plaintext that came with the 220 must not pass for TLS replies
            self.log.warn("smtp-client: {peer} sent {n} octets with its 220 to STARTTLS; discarded",
                          peer=self._peer, n=len(self._replies.buffer))
            self._replies.clear()
        self.extensions = {}
        self._tlsPending = True
        self.transport.startTLS(self.tlsOptions)
        self._hello(b"EHLO")

    # --- AUTH (RFC 4954) -----------------------------------------------------------------

    def _authenticate(self):
        if not self._result.tls:
            self._failSession("credentials not sent without TLS")
            return
        mechanisms = {m.upper() for m in self.extensions.get("AUTH", [])}
        username, password = (v.encode("utf-8") if isinstance(v, str) else v for v in self.credentials)
        if b"\0" in username + password:
            self._failSession("credentials contain NUL")
        elif "PLAIN" in mechanisms:
            # RFC 4616 section 2: authzid NUL authcid NUL passwd.
            response = base64.b64encode(b"\0" + username + b"\0" + password)
            self._send((b"AUTH PLAIN " + response, "AUTH", self._gotAuthReply))
        elif "LOGIN" in mechanisms:
            steps = [base64.b64encode(username), base64.b64encode(password)]
            self._send((b"AUTH LOGIN", "AUTH", partial(self._gotLoginChallenge, steps)))
        else:
            self._failSession("no AUTH PLAIN or LOGIN offered")

    def _gotLoginChallenge(self, steps, reply):
        if reply.code != 334:
            self._authFailed(reply)
            return
        then = partial(self._gotLoginChallenge, steps[1:]) if steps[1:] else self._gotAuthReply
        self._send((steps[0], "AUTH", then))

    def _gotAuthReply(self, reply):
        if reply.code // 100 != 2:
            self._authFailed(reply)
        else:
            self.log.info("smtp-client: authenticated to {peer}", peer=self._peer)
            self._askNextMessage()

    def _authFailed(self, reply):
        if reply.code == 334:
            self._send((b"*", "AUTH", lambda reply: None))  # cancel the exchange
        self._failSession("authentication failed: %s" % (reply,), reply)

    # --- messages ------------------------------------------------------------------------

    def _askNextMessage(self):
        self._awaitingMessage = True
        self._resetTimeout()
        d = defer.maybeDeferred(self.nextMessage)
        if not d.called:
            self._pendingMessage = d  # cancelled should the connection go
        d.addErrback(self._ebNextMessage)
        d.addCallback(lambda message: self._guarded(self._cbNextMessage, message))

    def _ebNextMessage(self, failure):
        if not failure.check(defer.CancelledError):
            self.log.failure("smtp-client: nextMessage failed", failure)

    def _cbNextMessage(self, message):
        self._awaitingMessage = False
        self._pendingMessage = None
        if message is not None:
            self._result.messagesAttempted += 1
        if not self._ending:
            if message is None:
                self._quit()
            else:
                self._startTransaction(message)
            return
        if message is not None:
            makeResult = _localResult(C451ConnectionProblem, "connection closed before sending", unsent=True)
            self._reportMessage(message, [makeResult(address) for address in message.recipients])
        if not self._connected:
            self._finish()

    def _startTransaction(self, message):
        txn = self._txn = _Transaction(message, "PIPELINING" in self.extensions)
        if message.smtputf8 and "SMTPUTF8" not in self.extensions:
            txn.decide(_localResult(C553NeedsSMTPUTF8))
        limit = self._sizeLimit()
        if limit and message.size > limit:
            txn.decide(_localResult(C552TooBig, C552TooBig[2] % (limit,)))  # RFC 1870 section 6
        try:
            sender = _encodePath(message.sender, message.smtputf8)
        except ValueError as e:
            txn.decide(_localResult(C553NeedsSMTPUTF8 if isinstance(e, UnicodeError) else C553BadSender))
        commands = []
        for i, address in enumerate(message.recipients):
            if txn.results[i] is not None:
                continue
            try:
                path = _encodePath(address, message.smtputf8)
            except ValueError as e:
                reply = C553NeedsSMTPUTF8 if isinstance(e, UnicodeError) else C553BadRecipient
                txn.decide(_localResult(reply), [i])
                continue
            commands.append((b"RCPT TO:<" + path + b">", "RCPT", partial(self._gotRecipient, i)))
        if not commands:
            self._endTransaction(rset=False)
            return
        try:
            txn.body = message.openBody()
        except Exception as e:
            self.log.error("smtp-client: cannot open {id}: {why}", id=message.messageId, why=e)
            txn.decide(_localResult(C451UnreadableMessage))
            self._endTransaction(rset=False)
            return
        mail = (self._mailCommand(message, sender), "MAIL", self._gotMail)
        if txn.pipelined:
            self._send(mail, *commands, (b"DATA", "DATA", self._gotData))  # RFC 2920 section 3.1
        else:
            txn.queue = commands
            self._send(mail)

    def _sizeLimit(self):
        # The server's SIZE (RFC 1870 section 4; 0 for no limit), or None.
        params = self.extensions.get("SIZE")
        return None if params is None else int(params[0]) if params and params[0].isdigit() else 0

    def _mailCommand(self, message, sender):
        # An 8-bit message goes to a server without 8BITMIME all the same, as
        # RFC 6152 section 3 allows: nearly all take it, and converting it
        # would break its signatures.
        line = b"MAIL FROM:<" + sender + b">"
        if self._sizeLimit() is not None:
            line += b" SIZE=%d" % (message.size,)
        if message.eightBit and "8BITMIME" in self.extensions:
            line += b" BODY=8BITMIME"
        if message.smtputf8:
            line += b" SMTPUTF8"
        return line

    def _sendNext(self):
        # Without PIPELINING: the next RCPT, else DATA if a recipient was
        # accepted, else the end of the transaction.
        txn = self._txn
        if txn.queue:
            self._send(txn.queue.pop(0))
        elif txn.accepted:
            self._send((b"DATA", "DATA", self._gotData))
        else:
            self._endTransaction(rset=True)

    def _gotMail(self, reply):
        txn = self._txn
        if reply.code // 100 != 2:
            txn.mailRefused = True
            txn.decide(_remoteResult(reply))
            if not txn.pipelined:
                self._endTransaction(rset=True)
        elif not txn.pipelined:
            self._sendNext()

    def _gotRecipient(self, index, reply):
        txn = self._txn
        if txn.mailRefused:
            pass  # pipelined after a refused MAIL: the MAIL reply stands
        elif reply.code // 100 == 2:
            txn.accepted.append(index)
        else:
            txn.decide(_remoteResult(reply), [index])
        if not txn.pipelined:
            self._sendNext()

    def _gotData(self, reply):
        txn = self._txn
        if reply.code == 354 and txn.accepted and not txn.mailRefused:
            txn.dataStarted = True
            self._producer = _BodyProducer(self, txn.body, self.bodyChunkSize)
            self._producer.start()
            self._resetTimeout()
        elif reply.code == 354:
            # RFC 2920 section 3.1: 354 with no recipient accepted; end the
            # empty message at once, its reply means nothing.
            self.log.warn("smtp-client: {peer} said 354 with no recipient", peer=self._peer)
            self._send((b".", "end of data", lambda reply: self._endTransaction(rset=True)))
        elif reply.code < 400:
            self._abort("protocol error: reply %s to DATA" % (reply,))
        else:
            txn.decide(_remoteResult(reply), txn.accepted)
            self._endTransaction(rset=True)

    def _stopBody(self):
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
            if producer.registered:
                try:
                    self.transport.unregisterProducer()
                except RuntimeError:
                    pass  # the transport dropped it already

    def _bodySent(self):
        self._stopBody()
        self._waiting.append(("end of data", self._gotFinal))
        self._resetTimeout()

    def _bodyUnreadable(self, e):
        txn = self._txn
        self.log.error("smtp-client: cannot read {id}: {why}", id=txn.message.messageId, why=e)
        self._stopBody()
        txn.decide(_localResult(C451UnreadableMessage), txn.accepted)
        self._abort("cannot read message %s" % (txn.message.messageId,))

    def _gotFinal(self, reply):
        txn = self._txn
        txn.decide(_remoteResult(reply), txn.accepted)
        self._endTransaction(rset=False)

    def _endTransaction(self, rset):
        # Report the message and go on; RSET after a transaction that ended
        # before the end of its data (RFC 5321 section 4.1.1.5).
        self._closeTransaction(_localResult(C451ConnectionProblem, "no reply"))  # never undecided
        if self._ending:
            return
        if rset:
            self._send((b"RSET", "RSET", self._gotRset))
        else:
            self._askNextMessage()

    def _gotRset(self, reply):
        if reply.code // 100 != 2:
            self._refused(reply, "RSET")
        else:
            self._askNextMessage()

    def _closeTransaction(self, makeResult):
        # Report the message on the wire, if any, its undecided recipients
        # getting a result from makeResult.
        txn, self._txn = self._txn, None
        if txn is not None:
            self._stopBody()
            txn.closeBody()
            txn.decide(makeResult)
            self._reportMessage(txn.message, txn.results)

    def _reportMessage(self, message, results):
        outcomes = "; ".join(
            "<%s> %s (%s%s)" % (
                r.address,
                "sent" if r.delivered else "deferred" if r.temporary else "bounced",
                "" if r.remote else "local: ",
                r.reply(),
            )
            for r in results
        )
        # Debug: the caller logs each recipient (the relay's lines).
        self.log.debug("smtp-client: {id} via {peer}: {outcomes}", id=message.messageId, peer=self._peer,
                       outcomes=outcomes)
        try:
            self.messageDone(message, results)
        except Exception:
            self.log.failure("smtp-client: messageDone failed for {id}", id=message.messageId)


def deliverOver(reactor, endpoint, heloName, nextMessage, messageDone, **kwargs):
    """
    Connect with C{endpoint} and run an L{ESMTPClient} over the connection.

    @param reactor: the clock for the client's timeout.
    @param endpoint: an L{IStreamClientEndpoint} with its own connect
        timeout; wrapped in TLS for an implicit-TLS smarthost (RFC 8314).
    @param kwargs: the other arguments of L{ESMTPClient}.
    @return: a Deferred firing with the L{SessionResult}, one with a
        L{TemporaryFailure} when no connection could be made; it never fails.
    """
    kwargs.setdefault("clock", reactor)
    factory = Factory.forProtocol(partial(ESMTPClient, heloName, nextMessage, messageDone, **kwargs))
    factory.noisy = False  # the relay logs what each connection did

    def notConnected(failure):
        why = failure.getErrorMessage()
        ESMTPClient.log.debug("smtp-client: cannot connect with {endpoint}: {why}",
                             endpoint=endpoint, why=why)
        return SessionResult(error=TemporaryFailure("cannot connect: %s" % (why,)))

    d = defer.maybeDeferred(endpoint.connect, factory)
    d.addCallbacks(lambda client: client.finished, notConnected)
    return d
