# -*- test-case-name: tests.test_smtp_server -*-
"""
The ESMTP server of ports 25 (MTA), 587 (submission) and 465 (SMTPS).

This module is a little past ~800 lines on purpose: L{SMTPServer} is one
state machine, and the invariants below hold across all of its commands.

Standards: RFC 5321 (SMTP), RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 2920
(PIPELINING), RFC 2034/3463 (ENHANCEDSTATUSCODES), RFC 3207 (STARTTLS),
RFC 4954 (AUTH), RFC 6531 (SMTPUTF8), RFC 3030 (CHUNKING), RFC 8314 (implicit
TLS on 465).

Invariants (besides those of L{mdpy.session}: one command at a time,
bounded lines, STARTTLS discarding pipelined plaintext):
 - Only CR LF "." CR LF ends DATA.  A bare CR or LF inside a line is stored as
   CR LF (as Postfix's C{smtpd_forbid_bare_newline = normalize} does) and never
   ends the message, so SMTP smuggling sequences stay inside the one message.
 - A data line longer than L{SMTPServer.maxDataLineLength} is refused with
   C{500 5.5.2} and a message over the size limit with C{552 5.3.4}; both are
   discarded as they arrive.  A bare CR or LF ends a line for this limit, so
   a body of bare-LF lines of any length is stored (with CR LF), and the
   input kept back unread is never more than about one line.
 - After STARTTLS the session starts over (RFC 3207 section 4.2).
 - A message is acknowledged with 250 only after L{IDelivery.commit} fired,
   that is after it is on disk.
"""

import re
import time

from twisted.cred import error as credError
from twisted.internet import defer, interfaces as iinternet

from mdpy import address as addresslib, errors
from mdpy.auth import sasl
from mdpy.dotstuffing import normaliseLineEndings
from mdpy.envelope import Envelope
from mdpy.errors import InvalidInput
from mdpy.mail.received import receivedField
from mdpy.session import CommandSession, SessionFactory
from mdpy.smtp import codes

_MAIL = re.compile(rb"FROM:\s*(<[^>]*>)(.*)\Z", re.I | re.S)
_RCPT = re.compile(rb"TO:\s*(<[^>]*>)(.*)\Z", re.I | re.S)
_BDAT = re.compile(rb"(\d{1,15})(?:\s+(LAST))?\s*\Z", re.I)
_DATA_END = b"\r\n.\r\n"

MODE_MTA = "mta"
MODE_SUBMISSION = "submission"
MODE_SMTPS = "smtps"


class SMTPFactory(SessionFactory):
    """
    Builds L{SMTPServer}s for one listener.  Subclass it and set C{protocol}
    to change the protocol; everything the sessions share lives here.

    @ivar target: the L{mdpy.interfaces.IDeliveryTarget} every message goes to.
    @ivar mode: L{MODE_MTA} (25), L{MODE_SUBMISSION} (587) or L{MODE_SMTPS}
        (465, the transport is TLS from the start).
    @ivar defaultDomain: the domain of a bare C{<Postmaster>}.
    @ivar senderPolicy: the L{mdpy.auth.senders.SenderPolicy} that says
        which envelope senders and C{From} addresses an authenticated client
        may use, or L{None} for any.  Unauthenticated clients (port 25) are
        not subject to it.
    @ivar receivedAuth: whether the C{Received} field names the login of an
        authenticated client (else it says only that it authenticated).

    See L{SessionFactory} for the rest.
    """

    def __init__(
        self,
        hostname,
        target,
        mode=MODE_MTA,
        defaultDomain=None,
        maxMessageSize=50 * 1024 * 1024,
        maxRecipients=1000,
        maxHeaderSize=1024 * 1024,
        senderPolicy=None,
        receivedAuth=False,
        **kwargs,
    ):
        SessionFactory.__init__(self, hostname, implicitTLS=mode == MODE_SMTPS, **kwargs)
        self.target = target
        self.mode = mode
        self.senderPolicy = senderPolicy
        self.receivedAuth = receivedAuth
        self.defaultDomain = defaultDomain or hostname
        self.maxMessageSize = maxMessageSize
        self.maxHeaderSize = maxHeaderSize
        self.maxRecipients = maxRecipients

    @property
    def authRequired(self):
        """
        Whether MAIL needs AUTH first (submission ports, RFC 6409).
        """
        return self.mode != MODE_MTA


class SMTPServer(CommandSession):
    """
    One ESMTP session.

    Hooks for a subclass (stable names; set it as the C{protocol} of an
    L{SMTPFactory} subclass and name that in C{[smtp] factory =
    package.module:Class}, and the ODMR customer's released sessions use it
    too):

     - C{do_VERB(self, argument)}: the command C{VERB} (letters only, any
       case), its argument the rest of the line as L{bytes}, stripped.
       Return L{None} or a L{Deferred}; no other command is read until it
       fires.  Answer with C{self.reply((code, enhanced, text))} (tuples in
       L{mdpy.smtp.codes}) or C{self.sendLines(code, lines)}.  Override one
       to change it, add one to add a command.
     - C{extensions(self)}: the EHLO keywords offered now; a subclass
       adding a command appends its keyword to the base list.
     - C{messageAccepted(self, envelope, recipients, size)}: a message was
       stored and answered C{250}.
     - C{greet(self)}: the C{220} greeting.

    Example, a command C{XHELLO} advertised in EHLO::

        class Greeter(SMTPServer):
            def extensions(self):
                return SMTPServer.extensions(self) + ["XHELLO"]

            def do_XHELLO(self, argument):
                self.reply((250, "2.0.0", "hello"))

        class GreeterFactory(SMTPFactory):
            protocol = Greeter

    @ivar helo: the HELO/EHLO argument, or L{None} before it.
    @ivar esmtp: whether the client said EHLO.
    @ivar authenticatedAs: the account that logged in, or L{None}.
    """

    service = "smtp"
    maxLineLength = 12288  # RFC 4954 section 4: AUTH lines up to 12288 octets
    maxDataLineLength = 65536
    mechanisms = sasl.MECHANISMS
    # Mechanisms allowed without TLS: none, as no password may travel in
    # plaintext (the ODMR port allows CRAM-MD5, which RFC 2645 requires).
    plaintextMechanisms = ()

    def __init__(self):
        CommandSession.__init__(self)
        self.helo = None
        self.esmtp = False
        self.authenticatedAs = None
        self._resetTransaction()

    # --- CommandSession --------------------------------------------------------

    def greet(self):
        self.send(b"220 %s ESMTP mdpy\r\n" % (self.factory.hostname.encode("idna"),))

    def refuse(self):
        self.reply(codes.C421TooManyConnections)

    def lineTooLong(self):
        self.reply(codes.C500LineTooLong)

    def internalError(self):
        self.reply(codes.C451LocalError)

    @property
    def rawMode(self):
        return self._dataMode is not None

    def rawInput(self):
        return self._dataInput()

    def connectionLost(self, reason=None):
        CommandSession.connectionLost(self, reason)
        self._abortTransaction()

    def accountLost(self, reason):
        """
        See L{CommandSession.accountLost}: the login sends nothing more.
        """
        self.reply(codes.C421AccountDisabled if isinstance(reason, errors.Disabled) else codes.C421AccountGone)

    def timeoutConnection(self):
        state = "DATA" if self._dataMode is not None else "command"
        self.log.info("smtp: timeout in {state} from {ip}", state=state, ip=self._ip)
        self.reply(codes.C421Timeout)
        self.close()

    # --- output ----------------------------------------------------------------

    def reply(self, reply, text=None):
        """
        Send a reply tuple from L{codes}; error replies count toward the limit.
        """
        code, enhanced, default = reply
        text = default if text is None else text
        if enhanced:
            line = "%d %s %s\r\n" % (code, enhanced, text)
        else:
            line = "%d %s\r\n" % (code, text)
        self.send(line.encode("utf-8"))
        if code >= 400 and code != 421 and self.countError():
            self.log.info("smtp: too many errors from {ip}", ip=self._ip)
            self.reply(codes.C421TooManyErrors)
            self.close()

    def sendLines(self, code, lines):
        """
        Send a multi-line reply.
        """
        out = []
        for i, line in enumerate(lines):
            sep = "-" if i < len(lines) - 1 else " "
            out.append("%d%s%s\r\n" % (code, sep, line))
        self.send("".join(out).encode("utf-8"))

    def lineReceived(self, line):
        verb, _, argument = line.partition(b" ")
        try:
            name = verb.decode("ascii").upper()
        except UnicodeDecodeError:
            name = ""
        method = getattr(self, "do_" + name, None) if name.isalpha() else None
        if method is None:
            self.log.debug("smtp: unknown command from {ip}", ip=self._ip)
            self.reply(codes.C500Unrecognised)
            return None
        return method(argument.strip())

    # --- session commands ------------------------------------------------------

    def do_HELO(self, argument):
        return self._greet(argument, esmtp=False)

    def do_EHLO(self, argument):
        return self._greet(argument, esmtp=True)

    def _greet(self, argument, esmtp):
        if not argument or b" " in argument:
            self.reply(codes.C501HeloSyntax)
            return
        self.helo = argument.decode("utf-8", "replace")
        self.esmtp = esmtp
        self._abortTransaction()
        hostname = self.factory.hostname
        if not esmtp:
            self.send(b"250 %s\r\n" % (hostname.encode("idna"),))
            return
        self.sendLines(250, [hostname] + self.extensions())

    def extensions(self):
        """
        @return: the EHLO keywords this session offers now.
        """
        factory = self.factory
        offered = [
            "PIPELINING",
            "SIZE %d" % (factory.maxMessageSize,),
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "CHUNKING",
        ]
        if factory.tlsOptions is not None and not self.tls:
            offered.append("STARTTLS")
        if self._authOffered():
            offered.append("AUTH " + " ".join(m.decode() for m in self.mechanisms))
        return offered

    def _authOffered(self):
        return (
            self.factory.portal is not None
            and self.tls
            and self.authenticatedAs is None
        )

    def do_NOOP(self, argument):
        self.reply(codes.C250OK)

    def do_RSET(self, argument):
        self._abortTransaction()
        self.reply(codes.C250OK)

    def do_QUIT(self, argument):
        self.reply(codes.C221Bye)
        self.close()

    def do_HELP(self, argument):
        self.reply(codes.C211Help)

    def do_VRFY(self, argument):
        self.reply(codes.C502VrfyDisabled)

    do_EXPN = do_VRFY

    def do_STARTTLS(self, argument):
        """
        RFC 3207: upgrade, drop what was pipelined, forget the session.
        """
        if argument:
            self.reply(codes.C501Syntax)
            return
        if self.tls:
            self.reply(codes.C503AlreadyTLS)
            return
        if self.factory.tlsOptions is None or not iinternet.ITLSTransport.providedBy(
            self.transport
        ):
            self.reply(codes.C454TLSUnavailable)
            return
        self.reply(codes.C220TLSReady)
        self.startTLS()
        self.helo = None
        self.esmtp = False
        self.authenticatedAs = None
        self._abortTransaction()

    # --- AUTH (RFC 4954) -------------------------------------------------------

    def do_AUTH(self, argument):
        if self.helo is None or not self.esmtp:
            self.reply(codes.C503NeedHelo)
            return None
        if self.factory.portal is None:
            self.reply(codes.C502NotImplemented)
            return None
        if self.authenticatedAs is not None:
            self.reply(codes.C503AlreadyAuthenticated)
            return None
        if self._envelope is not None:
            self.reply(codes.C503AuthInTransaction)
            return None
        mechanism, _, initial = argument.partition(b" ")
        mechanism = mechanism.upper()
        if not self.tls and mechanism not in self.plaintextMechanisms:
            self.reply(codes.C538EncryptionRequired)
            return None
        tracker = self.factory.loginTracker
        if tracker is not None and tracker.isBanned(self._ip):
            self.log.warn("{service}: authentication refused, banned client {ip}", service=self.service, ip=self._ip)
            self.reply(codes.C421Banned)
            self.close()
            return None
        if mechanism not in self.mechanisms:
            self.reply(codes.C504UnknownMechanism)
            return None
        return self.authenticate(
            mechanism,
            initial.strip() or None,
            b"334 ",
            self._cbAuthenticated,
            self._ebAuthenticated,
        )

    def _cbAuthenticated(self, avatar):
        self.authenticatedAs = avatar
        self.reply(codes.C235AuthOK)

    def _ebAuthenticated(self, failure):
        if self.closing:
            return
        if failure.check(sasl.Cancelled):
            self.reply(codes.C501AuthCancelled)
        elif failure.check(sasl.Malformed):
            self.reply(codes.C501BadBase64)
        else:
            failure.trap(credError.UnauthorizedLogin)
            self.reply(codes.C535AuthFailed)

    # --- the mail transaction ---------------------------------------------------

    def _resetTransaction(self):
        self._envelope = None
        self._delivery = None
        self._acceptedRecipients = []
        self._dataMode = None
        self._size = 0
        self._tooBig = False
        self._headerTooBig = False
        self._inHeader = True
        self._headerSize = 0
        self._headerTail = b""
        self._lineTooLong = False
        self._atLineStart = True
        self._pendingCR = False
        self._chunked = False
        # The header section as received, kept when its From field is to
        # be checked (bounded by factory.maxHeaderSize).
        self._header = None

    def _abortTransaction(self):
        delivery = self._delivery
        self._resetTransaction()
        if delivery is not None:
            try:
                delivery.abort()
            except Exception:
                self.log.failure("smtp: abort failed")

    def _protocolName(self):
        """
        @return: the RFC 3848 / RFC 6531 protocol name for Received.
        """
        name = "ESMTP" if self.esmtp else "SMTP"
        if self._envelope is not None and self._envelope.smtputf8:
            name = "UTF8SMTP" if self.esmtp else name
        if self.tls:
            name += "S"
        if self.authenticatedAs is not None:
            name += "A"
        return name

    def do_MAIL(self, argument):
        if self.helo is None:
            self.reply(codes.C503NeedHelo)
            return None
        if self._envelope is not None:
            self.reply(codes.C503NestedMail)
            return None
        if self.factory.authRequired and self.authenticatedAs is None:
            self.reply(codes.C530AuthRequired)
            return None
        if not self.accountRemains(self.authenticatedAs, fresh=True):
            return None
        parsed = self._parsePathAndParameters(_MAIL, argument)
        if parsed is None:
            return None
        rawPath, params = parsed
        size, body, smtputf8 = None, None, False
        for key, value in params:
            if key == "SIZE" and value is not None and value.isdigit():
                size = int(value)
            elif key == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
                body = value.upper()
            elif key == "SMTPUTF8" and value is None:
                smtputf8 = True
            elif key == "AUTH" and value is not None:
                pass  # RFC 4954 section 5: accepted, not trusted
            else:
                self.reply(codes.C555UnknownParameter)
                return None
        if size is not None and size > self.factory.maxMessageSize:
            self.reply(codes.C552TooBig)
            return None
        try:
            path = rawPath.decode("utf-8" if smtputf8 else "ascii")
            sender = addresslib.parsePath(path, utf8=smtputf8)
        except (UnicodeDecodeError, InvalidInput):
            self.reply(codes.C501BadSender)
            return None
        envelope = Envelope(
            sender,
            helo=self.helo,
            clientAddress=self._ip,
            authenticatedAs=self.authenticatedAs,
            size=size,
            body=body,
            smtputf8=smtputf8,
        )
        self._envelope = envelope
        envelope.protocol = self._protocolName()
        policy = self._senderPolicy()
        if policy is None:
            d = defer.maybeDeferred(self.factory.target.startDelivery, envelope)
        else:
            d = defer.maybeDeferred(policy.check, self.authenticatedAs, sender)
            d.addCallback(lambda _: self.factory.target.startDelivery(envelope))
        d.addCallbacks(self._cbStarted, self._ebStarted, errbackArgs=(envelope,))
        return d

    def _senderPolicy(self):
        """
        @return: the L{mdpy.auth.senders.SenderPolicy} this session's
            senders are held to, or L{None} (not authenticated, or no policy).
        """
        if self.authenticatedAs is None:
            return None
        return self.factory.senderPolicy

    def _cbStarted(self, delivery):
        self._delivery = delivery
        policy = self._senderPolicy()
        if policy is not None and policy.checksHeader:
            self._header = []
        self.reply(codes.C250SenderOK)

    def _ebStarted(self, failure, envelope):
        self._envelope = None
        self.log.info(
            "smtp: sender <{sender}> refused from {ip}{login}: {why}",
            sender=envelope.sender,
            ip=self._ip,
            login=_saslUsername(envelope),
            why=failure.getErrorMessage(),
        )
        self.reply(codes.replyForError(failure.value))

    def _parsePathAndParameters(self, pattern, argument):
        """
        Split the argument of MAIL or RCPT.

        @return: C{(path, [(KEY, value or None)])} with the path still in its
            angle brackets, or L{None} after replying to malformed input.
        """
        match = pattern.match(argument)
        if match is None:
            self.reply(codes.C501Syntax)
            return None
        params = []
        for item in match.group(2).split():
            try:
                item = item.decode("ascii")
            except UnicodeDecodeError:
                self.reply(codes.C501Syntax)
                return None
            key, eq, value = item.partition("=")
            params.append((key.upper(), value if eq else None))
        return match.group(1), params

    def do_RCPT(self, argument):
        if self._envelope is None or self._delivery is None:
            self.reply(codes.C503NeedMail)
            return None
        if len(self._acceptedRecipients) >= self.factory.maxRecipients:
            self.reply(codes.C452TooManyRecipients)
            return None
        parsed = self._parsePathAndParameters(_RCPT, argument)
        if parsed is None:
            return None
        rawPath, params = parsed
        if params:
            self.reply(codes.C555UnknownParameter)
            return None
        smtputf8 = self._envelope.smtputf8
        try:
            path = rawPath.decode("utf-8" if smtputf8 else "ascii")
            if path[1:-1].lower() == "postmaster":
                # RFC 5321 section 4.5.1: <Postmaster> with no domain.
                recipient = "postmaster@" + self.factory.defaultDomain
            else:
                recipient = addresslib.parsePath(path, utf8=smtputf8)
        except (UnicodeDecodeError, InvalidInput):
            self.reply(codes.C501BadRecipient)
            return None
        if not recipient:
            self.reply(codes.C501BadRecipient)
            return None
        d = defer.maybeDeferred(self._delivery.addRecipient, recipient)
        d.addCallbacks(
            self._cbRecipient,
            self._ebRecipient,
            callbackArgs=(recipient,),
            errbackArgs=(recipient,),
        )
        return d

    def _cbRecipient(self, ignored, recipient):
        self._acceptedRecipients.append(recipient)
        self.reply(codes.C250RecipientOK)

    def _ebRecipient(self, failure, recipient):
        self.log.info(
            "smtp: recipient <{rcpt}> refused for <{sender}> from {ip}: {why}",
            rcpt=recipient,
            sender=self._envelope.sender if self._envelope else "",
            ip=self._ip,
            why=failure.getErrorMessage(),
        )
        self.reply(codes.replyForError(failure.value, recipient=True))

    def _checkReadyForData(self):
        if self._envelope is None or self._delivery is None:
            self.reply(codes.C503NeedMail)
            return False
        if not self._acceptedRecipients:
            self.reply(codes.C554NoValidRecipients)
            return False
        return True

    def _receivedHeader(self):
        envelope = self._envelope
        # RFC 5321 section 4.4: the client's address as an address literal
        # (section 4.1.3), [192.0.2.1] or [IPv6:2001:db8::1].
        address = envelope.clientAddress
        comment = None
        if self.authenticatedAs is not None:
            if self.factory.receivedAuth:
                comment = "authenticated as %s" % (self.authenticatedAs,)
            else:
                comment = "authenticated sender"
        return receivedField(
            "%s ([%s%s])" % (envelope.helo, "IPv6:" if ":" in address else "", address),
            self.factory.hostname,
            self._protocolName(),
            envelope.messageId,
            envelope.receivedAt,
            comment=comment,
        )

    def do_DATA(self, argument):
        if argument:
            self.reply(codes.C501Syntax)
            return None
        if self._chunked:
            self.reply(codes.C503BadSequence)
            return None
        if not self._checkReadyForData():
            return None
        if self._buffer:
            # RFC 2920 section 3.1: DATA ends a pipelined group; content sent
            # before 354 is a client that does not wait (or smuggles).
            self.log.warn("smtp: input pipelined after DATA from {ip}", ip=self._ip)
            self.reply(codes.C554Sync)
            self.close()
            return None
        self._envelope.receivedAt = time.time()
        self._delivery.write(self._receivedHeader())
        self._dataMode = "data"
        self._atLineStart = True
        self.reply(codes.C354Data)
        return None

    def _dataInput(self):
        """
        Consume message input (DATA or BDAT) from the buffer.

        @return: whether progress was made (else more input is needed).
        """
        if self._dataMode == "bdat":
            return self._dataInputBDAT()
        return self._dataInputDATA()

    def _dataInputDATA(self):
        """
        Consume DATA input from the buffer.

        @return: whether progress was made (else more input is needed).
        """
        buf = self._buffer
        end = -1
        if self._atLineStart and buf.startswith(b".\r\n"):
            end = 0
        else:
            found = buf.find(_DATA_END)
            if found >= 0:
                end = found + 2
        if end >= 0:
            self._dataContent(buf[:end])
            self._buffer = buf[end + 3 :]
            self._dataMode = None
            self.run(self._endOfMessage)
            return True
        cut = buf.rfind(b"\r\n")
        if cut > 0:
            # Keep the last CR LF: it may begin CR LF "." CR LF.
            self._dataContent(buf[:cut])
            self._buffer = buf[cut:]
            self._atLineStart = False
            return True
        # What follows the last CR LF (if any) has no CR LF: bare line ends
        # at most, or one line still arriving.
        if len(buf) <= self.maxDataLineLength:
            return False
        # Keep a final CR: it may start the CR LF of the next read.
        keep = 1 if buf.endswith(b"\r") else 0
        start = 2 if cut == 0 else 0
        bare = max(buf.rfind(b"\n", start), buf.rfind(b"\r", start, len(buf) - keep))
        if bare < 0:
            self._lineTooLong = True
            self._buffer = buf[len(buf) - keep :]
        else:
            # Lines ended by a bare CR or LF: stored (as CR LF) up to the
            # last of them, so a run of them is not taken for one long line.
            self._dataContent(buf[: bare + 1])
            self._buffer = buf[bare + 1 :]
        self._atLineStart = False
        return True

    def _dataContent(self, content):
        """
        Unstuff and store complete lines of DATA (C{content} starts at a line
        start unless L{_atLineStart} is false, and holds whole lines).
        """
        if not content or self._tooBig or self._lineTooLong:
            return
        if self._atLineStart and content.startswith(b"."):
            content = content[1:]
        content = content.replace(b"\r\n.", b"\r\n")
        if len(content) > self.maxDataLineLength and re.search(
            rb"[^\r\n]{%d}" % (self.maxDataLineLength + 1,), content
        ):
            self._lineTooLong = True
            return
        self._storeBody(normaliseLineEndings(content))

    def _storeBody(self, content):
        self._size += len(content)
        if self._size > self.factory.maxMessageSize:
            self._tooBig = True
            return
        if self._inHeader:
            self._scanHeader(content)
            if self._tooBig:
                return
        self._delivery.write(content)

    def _scanHeader(self, content):
        """
        Follow the header section (up to the first empty line) through the
        body's chunks, and refuse the message when it exceeds
        C{factory.maxHeaderSize}: a parser later reading a 50 MB header, or
        500,000 To lines, is a known attack on mail servers.
        """
        tail = self._headerTail
        probe = tail + content
        if self._headerSize == 0 and probe.startswith(b"\r\n"):
            end = 0
        else:
            end = probe.find(b"\r\n\r\n")
        if end >= 0:
            self._inHeader = False
            self._headerSize += end - len(tail)
        else:
            self._headerSize += len(content)
            self._headerTail = probe[-3:]
        if self._headerSize > self.factory.maxHeaderSize:
            self._tooBig = self._headerTooBig = True
        elif self._header is not None:
            self._header.append(content if end < 0 else content[: max(0, end + 2 - len(tail))])

    def _tooBigReply(self):
        return codes.C552HeaderTooBig if self._headerTooBig else codes.C552TooBig

    def _endOfMessage(self):
        envelope = self._envelope
        if self._tooBig or self._lineTooLong:
            reply = self._tooBigReply() if self._tooBig else codes.C500LineTooLong
            why = "line too long"
            if self._tooBig:
                why = "header section too big" if self._headerTooBig else "too big"
            self.log.info(
                "smtp: message {id} from <{sender}> refused: {why}",
                id=envelope.messageId,
                sender=envelope.sender,
                why=why,
            )
            self._abortTransaction()
            self.reply(reply)
            return None
        # The commit owns the delivery now: a connection lost meanwhile must
        # not abort it under the store's feet.
        delivery = self._delivery
        recipients = self._acceptedRecipients
        size = self._size
        header = self._header
        self._resetTransaction()
        if header is None:
            d = defer.maybeDeferred(delivery.commit)
        else:
            # RFC 5322 section 3.6.2: the From field names the author; the
            # login must own it as it owns the envelope sender.
            d = defer.maybeDeferred(
                self.factory.senderPolicy.checkHeader, envelope.authenticatedAs, b"".join(header)
            )
            d.addCallback(lambda _: delivery.commit())
        d.addCallbacks(
            self._cbCommitted,
            self._ebCommitted,
            callbackArgs=(envelope, recipients, size),
            errbackArgs=(envelope, delivery),
        )
        return d

    def _cbCommitted(self, ignored, envelope, recipients, size):
        self.log.info(
            "smtp: accepted {id} from <{sender}> to {rcpts} size={size} client={ip} proto={proto}{login}",
            id=envelope.messageId,
            sender=envelope.sender,
            rcpts=",".join("<%s>" % (r,) for r in recipients),
            size=size,
            ip=self._ip,
            proto=envelope.protocol,
            login=_saslUsername(envelope),
        )
        self.reply(codes.C250OK, "Ok: queued as %s" % (envelope.messageId,))
        self.messageAccepted(envelope, recipients, size)

    def messageAccepted(self, envelope, recipients, size):
        """
        A message was stored and answered with 250; a subclass may act on it
        (the ODMR customer counts what it released).

        @param recipients: the accepted recipients.
        @param size: its size in octets, as received.
        """

    def _ebCommitted(self, failure, envelope, delivery):
        refused = failure.check(errors.SenderNotOwned, errors.CheckRefused, errors.CheckRefusedForNow)
        log = self.log.info if refused else self.log.error
        log(
            "smtp: message {id} from <{sender}> not stored{login}: {why}",
            id=envelope.messageId,
            sender=envelope.sender,
            login=_saslUsername(envelope),
            why=getattr(failure.value, "detail", failure.getErrorMessage()),
        )
        delivery.abort()
        self.reply(codes.replyForError(failure.value))

    # --- CHUNKING (RFC 3030) ---------------------------------------------------

    def do_BDAT(self, argument):
        match = _BDAT.match(argument)
        if match is None:
            self.reply(codes.C501Syntax)
            return None
        size, last = int(match.group(1)), bool(match.group(2))
        ready = self._dataMode is None and (
            self._chunked or self._checkReadyForData()
        )
        self._bdatRemaining = size
        self._bdatLast = last
        if not ready:
            # RFC 3030 section 2: the chunk is read and thrown away.
            self._abortTransaction()
            self._bdatDiscard = True
        else:
            self._bdatDiscard = False
            if not self._chunked:
                self._chunked = True
                self._envelope.receivedAt = time.time()
                self._delivery.write(self._receivedHeader())
        self._dataMode = "bdat"
        if size == 0:
            return self._bdatChunkDone()
        return None

    def _dataInputBDAT(self):
        take = self._buffer[: self._bdatRemaining]
        self._buffer = self._buffer[len(take) :]
        self._bdatRemaining -= len(take)
        if not self._bdatDiscard and not self._tooBig:
            if self._pendingCR:
                take = b"\r" + take
                self._pendingCR = False
            if take.endswith(b"\r") and (self._bdatRemaining or not self._bdatLast):
                take = take[:-1]
                self._pendingCR = True
            self._storeBody(normaliseLineEndings(take))
        if self._bdatRemaining == 0:
            self.run(self._bdatChunkDone)
        return True

    def _bdatChunkDone(self):
        self._dataMode = None
        if self._bdatDiscard:
            self._bdatDiscard = False
            self._resetTransaction()
            return None
        if not self._bdatLast:
            if self._tooBig:
                reply = self._tooBigReply()
                self._abortTransaction()
                self.reply(reply)
                return None
            self.reply(codes.C250OK, "Ok: %d octets received" % (self._size,))
            return None
        if self._pendingCR:
            self._pendingCR = False
            self._storeBody(b"\r\n")
        return self._endOfMessage()


def _saslUsername(envelope):
    """
    @return: the log suffix naming the login of an authenticated client
        (Postfix's C{sasl_username=}), or C{""}.
    """
    if envelope.authenticatedAs is None:
        return ""
    return " sasl_username=%s" % (envelope.authenticatedAs,)


SMTPFactory.protocol = SMTPServer
