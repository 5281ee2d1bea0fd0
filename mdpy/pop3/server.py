# -*- test-case-name: tests.test_pop3_server -*-
"""
The POP3 server of ports 110 (STLS) and 995 (implicit TLS).

Standards: RFC 1939 (POP3), RFC 2449 (CAPA, RESP-CODES, PIPELINING, EXPIRE,
LOGIN-DELAY, IMPLEMENTATION), RFC 2595 (STLS), RFC 5034 (SASL), RFC 3206
(the AUTH and SYS response codes), RFC 8314 (implicit TLS on 995).

Invariants (besides those of L{mdpy.session}):
 - Passwords are taken only over TLS unless the listener allows plaintext.
 - A maildrop has at most one session in TRANSACTION state in this process;
   the lock goes with the connection.
 - Messages marked deleted are removed only at QUIT, and C{+OK} is sent only
   once the removal is durable; a connection that drops deletes nothing.
 - The message list is a snapshot taken at login.
"""

from twisted.cred import error as credError
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, interfaces as iinternet
from zope.interface import implementer

from mdpy import errors
from mdpy.auth import sasl
from mdpy.dotstuffing import DotStuffer, stuff
from mdpy.backends.local import MaildropLocks
from mdpy.mail.headers import findHeaderEnd
from mdpy.pop3.maildrop import Maildrop, uidlFor
from mdpy.session import CommandSession, SessionFactory

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"

CHUNK = 65536

_COMMANDS = {
    AUTHORIZATION: {"CAPA", "USER", "PASS", "AUTH", "STLS", "QUIT", "APOP"},
    TRANSACTION: {
        "CAPA", "STAT", "LIST", "RETR", "TOP", "DELE", "RSET", "NOOP", "UIDL", "QUIT",
    },
}


class POP3Factory(SessionFactory):
    """
    Builds L{POP3Server}s for one listener.

    @ivar store: the L{mdpy.interfaces.IMailStore} whose INBOXes are served.
    @ivar locks: the L{mdpy.interfaces.IMaildropLocks} shared by every
        POP3 listener (the backend's).
    @ivar allowPlaintext: whether USER/PASS and AUTH work before STLS.
    """

    def __init__(
        self,
        hostname,
        store,
        locks=None,
        allowPlaintext=False,
        maxErrors=20,
        timeout=600,
        **kwargs,
    ):
        SessionFactory.__init__(self, hostname, maxErrors=maxErrors, timeout=timeout, **kwargs)
        self.store = store
        self.locks = MaildropLocks() if locks is None else locks
        self.allowPlaintext = allowPlaintext


class _Read:
    """
    A message being read whole.  Its octets are in L{data} as soon as the
    store has them, which is at once when it reads them from memory, so a
    reply can be sent without waiting on a L{Deferred}.

    @ivar message: the L{mdpy.interfaces.IStoredMessage}.
    @ivar data: its octets once read, else L{None}.
    """

    def __init__(self, message):
        self.message = message
        self.data = None
        self._failure = None
        # A failure is kept as a value: an error only if the message is
        # asked for (a read ahead may never be).
        self._reading = message.read().addCallbacks(self._cbRead, self._ebRead)

    def _cbRead(self, data):
        self.data = data

    def _ebRead(self, failure):
        self._failure = failure

    def wait(self):
        """
        @return: a L{Deferred} firing with the octets, or failing as the
            read did.
        """
        return self._reading.addCallback(self._result)

    def _result(self, ignored):
        return self.data if self._failure is None else self._failure


@implementer(iinternet.IPullProducer)
class _MessageStreamer:
    """
    Send a large message from its file as the reader takes it.
    """

    def __init__(self, transport, file, stuffer):
        self.transport = transport
        self.file = file
        self.stuffer = stuffer
        self.done = defer.Deferred()

    def start(self):
        self.transport.registerProducer(self, False)
        return self.done

    def resumeProducing(self):
        chunk = self.file.read(CHUNK)
        data = self.stuffer.feed(chunk)
        if len(chunk) == CHUNK:
            self.transport.write(data)
            return
        # The end: the last data and the closing line go out together.
        self.transport.write(data + self.stuffer.finish())
        self._end()

    def stopProducing(self):
        self._end()

    def _end(self):
        if not self.done.called:
            self.file.close()
            self.transport.unregisterProducer()
            self.done.callback(None)


class POP3Server(CommandSession):
    """
    One POP3 session.

    Hooks for a subclass (stable names; set it as the C{protocol} of a
    L{POP3Factory} subclass and name that in C{[pop3] factory =
    package.module:Class}, or C{[pop3s]}):

     - C{commands}: the command table, C{{state: set of verbs}}, for
       L{AUTHORIZATION} and L{TRANSACTION}; other verbs get C{-ERR}.
     - C{do_VERB(self, argument)}: the command C{VERB}, its argument the
       rest of the line as text.  Answer with C{self.ok(text)} or
       C{self.error(text)}; return L{None} or a L{Deferred}.
     - C{capabilities(self)}: the CAPA lines now (RFC 2449).

    For example C{XHELLO} in both states::

        class Greeter(POP3Server):
            commands = {state: verbs | {"XHELLO"} for state, verbs in POP3Server.commands.items()}

            def capabilities(self):
                return POP3Server.capabilities(self) + ["XHELLO"]

            def do_XHELLO(self, argument):
                self.ok("hello")

        class GreeterFactory(POP3Factory):
            protocol = Greeter

    @ivar state: L{AUTHORIZATION} or L{TRANSACTION}.
    @ivar account: the account logged in, or L{None}.
    @ivar maildrop: the L{Maildrop} of the session, or L{None}.
    """

    service = "pop3"
    maxLineLength = 8192
    commands = _COMMANDS
    mechanisms = sasl.MECHANISMS

    def __init__(self):
        CommandSession.__init__(self)
        self.state = AUTHORIZATION
        self.account = None
        self.maildrop = None
        self._user = None
        self._retrieved = set()
        self._nextRead = None  # the _Read of the message expected next

    # --- CommandSession -----------------------------------------------------

    def greet(self):
        self.send(b"+OK mdpy ready.\r\n")

    def refuse(self):
        self.error("[SYS/TEMP] Too many connections.")

    def lineTooLong(self):
        self.error("Line too long.")

    def internalError(self):
        self.error("[SYS/TEMP] Internal error occurred. Refer to server log for more information.")

    def timeoutConnection(self):
        self.log.info("pop3: timeout in {state} from {ip}", state=self.state, ip=self._ip)
        self.send(b"-ERR Disconnected for inactivity.\r\n")
        self.close()

    def connectionLost(self, reason=None):
        CommandSession.connectionLost(self, reason)
        self._release()

    def _release(self):
        if self.account is not None:
            self.factory.locks.release(self.account, self)

    # --- output -------------------------------------------------------------

    def ok(self, text=""):
        self.send(b"+OK " + text.encode("utf-8") + b"\r\n" if text else b"+OK\r\n")

    def error(self, text):
        """
        Send C{-ERR text}; too many errors end the session.
        """
        self.send(b"-ERR " + text.encode("utf-8") + b"\r\n")
        if self.countError():
            self.log.info("pop3: too many errors from {ip}", ip=self._ip)
            self.send(b"-ERR Too many bad commands.\r\n")
            self.close()

    def lineReceived(self, line):
        verb, _, argument = line.partition(b" ")
        try:
            name = verb.decode("ascii").upper()
            argument = argument.strip().decode("utf-8", "surrogateescape")
        except UnicodeDecodeError:
            self.error("Unknown command.")
            return None
        if name not in self.commands[self.state]:
            known = any(name in verbs for verbs in self.commands.values())
            self.error("Command not valid in this state." if known else "Unknown command.")
            return None
        # Every command of the TRANSACTION state asks afresh: they are few,
        # and one lookup is cheap next to any of them.
        if self.state == TRANSACTION and not self.accountRemains(self.account, fresh=True):
            return None
        return getattr(self, "do_" + name)(argument)

    def accountLost(self, reason):
        """
        See L{CommandSession.accountLost}.  Nothing is updated: the
        deletion marks die with the session.
        """
        if isinstance(reason, errors.Disabled):
            self.send(b"-ERR [SYS/PERM] Account disabled.\r\n")
        else:
            self.send(b"-ERR [SYS/PERM] Account no longer exists.\r\n")
        self._release()

    # --- AUTHORIZATION --------------------------------------------------------

    def _loginAllowed(self):
        return self.factory.portal is not None and (self.tls or self.factory.allowPlaintext)

    def capabilities(self):
        """
        @return: the CAPA lines for this session now (RFC 2449).
        """
        lines = [
            "TOP",
            "UIDL",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "EXPIRE NEVER",
            "LOGIN-DELAY 0",
            "IMPLEMENTATION mdpy",
        ]
        if self.state == AUTHORIZATION:
            if self._loginAllowed():
                lines.append("USER")
                lines.append("SASL " + " ".join(m.decode() for m in self.mechanisms))
            if not self.tls and self.factory.tlsOptions is not None:
                lines.append("STLS")
        return lines

    def do_CAPA(self, argument):
        self.send(
            ("+OK Capability list follows\r\n" + "".join(line + "\r\n" for line in self.capabilities()) + ".\r\n").encode()
        )

    def do_QUIT(self, argument):
        if self.state == TRANSACTION:
            return self._update()
        self.ok("Logging out.")
        self.close()
        return None

    def do_STLS(self, argument):
        """
        RFC 2595 section 4: C{STLS} takes no argument.
        """
        if argument:
            self.error("STLS takes no argument.")
            return
        if self.tls:
            self.error("TLS is already active.")
            return
        if self.factory.tlsOptions is None or not iinternet.ITLSTransport.providedBy(self.transport):
            self.error("[SYS/PERM] STLS is not available.")
            return
        self.ok("Begin TLS negotiation now.")
        self.startTLS()
        self._user = None

    def _refusePlaintext(self):
        if self._loginAllowed():
            return False
        if self.factory.portal is None:
            self.error("[SYS/PERM] Logins are not available.")
        else:
            self.error("[AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.")
        return True

    def do_APOP(self, argument):
        # APOP needs the plaintext password, which mdpy does not keep.
        self.error("[AUTH] APOP is not available; use USER/PASS or AUTH over TLS.")

    def do_USER(self, argument):
        if self._refusePlaintext():
            return
        if not argument:
            self.error("No username given.")
            return
        self._user = _raw(argument)
        self.ok()

    def do_PASS(self, argument):
        if self._refusePlaintext():
            return None
        if self._user is None:
            self.error("No username given.")
            return None
        user, self._user = self._user, None
        d = self.login(UsernamePassword(user, _raw(argument)), user)
        return d.addCallbacks(self._cbLoggedIn, self._ebLoggedIn)

    def do_AUTH(self, argument):
        if not argument:
            # RFC 1734 clients ask for the list this way; it names what can
            # be used now, as the SASL capability does (none before STLS
            # unless plaintext logins are allowed).
            usable = self.mechanisms if self._loginAllowed() else ()
            self.send(b"+OK\r\n" + b"".join(m + b"\r\n" for m in usable) + b".\r\n")
            return None
        if self._refusePlaintext():
            return None
        mechanism, _, initial = _raw(argument).partition(b" ")
        mechanism = mechanism.upper()
        if mechanism not in self.mechanisms:
            self.error("Unsupported authentication mechanism.")
            return None
        return self.authenticate(
            mechanism, initial.strip() or None, b"+ ", self._cbLoggedIn, self._ebLoggedIn
        )

    def _ebLoggedIn(self, failure):
        if self.closing:
            return None
        if failure.check(sasl.Cancelled):
            self.error("Authentication cancelled.")
        elif failure.check(sasl.Malformed):
            self.error("Invalid base64 data in continued response.")
        else:
            failure.trap(credError.UnauthorizedLogin)
            self.error("[AUTH] Authentication failed.")
        return None

    def _cbLoggedIn(self, account):
        if self.closing:
            return None
        if not self.factory.locks.acquire(account, self):
            self.log.info("pop3: {user} in use, refused from {ip}", user=account, ip=self._ip)
            self.error("[IN-USE] Mailbox is locked by another POP3 session.")
            return None
        self.account = account
        if not self.accountRemains(account, fresh=True):
            # Deleted while its password was checked: make no tree for it.
            return None
        d = defer.ensureDeferred(self._openMailbox(account))
        d.addCallbacks(self._cbOpened, self._ebOpened)
        return d

    async def _openMailbox(self, account):
        """
        Open the INBOX of C{account}, first making its mailbox tree if it
        has none yet (a user added before any mail came): one round trip
        to the store when it is there.
        """
        store = self.factory.store
        try:
            return await defer.maybeDeferred(store.openMailbox, account)
        except errors.NotFound:
            await defer.maybeDeferred(store.createAccount, account)
        return await defer.maybeDeferred(store.openMailbox, account)

    def _cbOpened(self, mailbox):
        self.maildrop = Maildrop(mailbox)
        if self.closing:
            return
        self.state = TRANSACTION
        self.ok("Logged in.")

    def _ebOpened(self, failure):
        self.log.failure("pop3: cannot open the mailbox of {user}", failure, user=self.account)
        self._release()
        self.account = None
        if not self.closing:
            self.error("[SYS/TEMP] Mailbox cannot be opened; try again later.")

    # --- TRANSACTION ----------------------------------------------------------

    def _message(self, number):
        """
        @return: the message, or L{None} after answering a bad number.
        """
        try:
            return self.maildrop.get(number)
        except errors.InvalidInput as e:
            self.error(str(e))
            return None

    def do_STAT(self, argument):
        count, size = self.maildrop.stat()
        self.ok("%d %d" % (count, size))

    def _scan(self, argument, value):
        if argument:
            message = self._message(argument)
            if message is not None:
                self.send(b"+OK %s %s\r\n" % (argument.encode(), value(message)))
            return
        lines = [b"%d %s\r\n" % (number, value(message)) for number, message in self.maildrop.listing()]
        self.send(b"+OK\r\n" + b"".join(lines) + b".\r\n")

    def do_LIST(self, argument):
        self._scan(argument, lambda message: b"%d" % (message.size,))

    def do_UIDL(self, argument):
        self._scan(argument, uidlFor)

    def do_RETR(self, argument):
        """
        Send the message: read whole by the store when small, else streamed
        from the file the store opened.  A small message read ahead (see
        L{_readAhead}) or read from memory is sent at once.
        """
        message = self._message(argument)
        if message is None:
            return None
        if message.size > CHUNK:
            d = message.open()
            return d.addCallbacks(self._cbOpenedForRetr, self._ebGone, callbackArgs=(message,))
        read, self._nextRead = self._nextRead, None
        if read is None or read.message is not message:
            read = _Read(message)
        if read.data is not None:
            self._sendRetrieved(read.data, message, int(argument))
            return None
        return read.wait().addCallbacks(
            self._sendRetrieved, self._ebGone, callbackArgs=(message, int(argument))
        )

    def _sendRetrieved(self, data, message, number):
        self._retrieved.add(message)
        self.send(b"+OK %d octets\r\n%s" % (message.size, stuff(data)))
        self._readAhead(number)

    def _cbOpenedForRetr(self, file, message):
        self._retrieved.add(message)
        self.send(b"+OK %d octets\r\n" % (message.size,))
        return _MessageStreamer(self.transport, file, DotStuffer()).start()

    def _ebGone(self, failure):
        failure.trap(errors.MailError)
        self.error("[SYS/TEMP] Message is gone.")

    def _readAhead(self, number):
        """
        Start reading the message after message C{number} if it is small:
        clients that download everything ask for it next, so the store's
        round trip overlaps the client's.
        """
        messages = self.maildrop.messages
        if number < len(messages) and number not in self.maildrop.deleted and messages[number].size <= CHUNK:
            self._nextRead = _Read(messages[number])

    def do_TOP(self, argument):
        number, _, lines = argument.partition(" ")
        if not lines.strip().isdigit():
            self.error("Invalid number of lines.")
            return None
        message = self._message(number)
        if message is None:
            return None
        d = message.open()

        def cbOpened(file):
            with file:
                self.send(b"+OK\r\n" + stuff(_top(file, int(lines))))

        return d.addCallbacks(cbOpened, self._ebGone)

    def do_DELE(self, argument):
        if self._message(argument) is not None:
            self.maildrop.delete(argument)
            self.ok("Marked to be deleted.")

    def do_RSET(self, argument):
        self.maildrop.reset()
        self.ok()

    def do_NOOP(self, argument):
        self.ok()

    def _update(self):
        """
        RFC 1939 section 6: remove what was marked, mark what was retrieved
        as seen (so IMAP shows it read, as Dovecot does), then say goodbye.
        """
        deleted = len(self.maildrop.deleted)
        d = defer.maybeDeferred(self.maildrop.commit, self._retrieved)

        def cbDone(ignored):
            self.log.info(
                "pop3: {user} logged out from {ip}: retrieved={retrieved} deleted={deleted}",
                user=self.account,
                ip=self._ip,
                retrieved=len(self._retrieved),
                deleted=deleted,
            )
            self.ok("Logging out, messages deleted." if deleted else "Logging out.")

        def ebDone(failure):
            if failure.check(defer.FirstError):
                failure = failure.value.subFailure
            if failure.check(errors.NotFound):
                # The account was deleted during the session.
                self.log.info("pop3: the mailbox of {user} is gone; nothing updated", user=self.account)
                self.send(b"-ERR [SYS/PERM] Mailbox no longer exists.\r\n")
                return
            self.log.failure("pop3: deleting for {user} failed", failure, user=self.account)
            self.send(b"-ERR [SYS/TEMP] Messages could not be deleted; try again later.\r\n")

        def release(result):
            # Before the answer: a client told it logged out may log in
            # again at once, in another worker too.
            self._release()
            return result

        d.addBoth(release)
        d.addCallbacks(cbDone, ebDone)
        d.addBoth(lambda ignored: self.close())
        return d


def _raw(argument):
    """
    @return: the bytes the client sent for C{argument}.
    """
    return argument.encode("utf-8", "surrogateescape")


def _top(file, lines):
    """
    @return: the header of the message in C{file}, the blank line, and the
        first C{lines} lines of the body (RFC 1939 TOP), reading no more of
        the file than that takes.
    """
    data = b""
    while True:
        chunk = file.read(CHUNK)
        data += chunk
        found = findHeaderEnd(data)
        if found is not None:
            end = found[1]
            body = data[end:]
            cut = 0
            for _ in range(lines):
                newline = body.find(b"\n", cut)
                if newline < 0:
                    break
                cut = newline + 1
            else:
                return data[: end + cut]
            if not chunk:
                return data
        elif not chunk:
            return data


POP3Factory.protocol = POP3Server
