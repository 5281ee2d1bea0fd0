# -*- test-case-name: tests.test_imap_server -*-
"""
The IMAP4rev1 server of ports 143 (STARTTLS) and 993 (implicit TLS).

Standards: RFC 3501 (IMAP4rev1), RFC 2177 (IDLE), RFC 4315 (UIDPLUS),
RFC 6851 (MOVE), RFC 2342 (NAMESPACE), RFC 2971 (ID), RFC 5161 (ENABLE),
RFC 3691 (UNSELECT), RFC 3348 (CHILDREN), RFC 5258 (LIST-EXTENDED),
RFC 5819 (LIST-STATUS), RFC 6154 (SPECIAL-USE), RFC 7888 (LITERAL+),
RFC 4959 (SASL-IR), RFC 4731 (ESEARCH), RFC 7162 (CONDSTORE),
RFC 7889 (APPENDLIMIT), RFC 5530 (response codes), RFC 8314 (implicit TLS).

Commands are C{do_VERB(tag, arguments)} methods taking the parsed tokens
(L{mdpy.imap.parser}); which verbs each state accepts is in L{_COMMANDS}.
Each command ends through L{IMAP4Server.complete}, which first sends what
the selected mailbox's view owes the client (L{mdpy.imap.selected}).

Invariants (besides those of L{mdpy.session}):
 - Passwords are taken only over TLS unless the listener allows plaintext
   (C{LOGINDISABLED} is advertised before).
 - A literal's size is checked against its limit before the C{+}
   continuation is sent; a literal too large for a non-synchronising
   marker is read and thrown away as it arrives, never buffered.
 - A tagged C{OK} to APPEND, COPY, MOVE, STORE and EXPUNGE is sent only
   once the store has made the change durable.
"""

from twisted.cred import error as credError
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, interfaces as iinternet
from twisted.python.failure import Failure
from zope.interface import implementer

from mdpy import __version__ as VERSION
from mdpy import errors, mutf7
from mdpy.auth import sasl
from mdpy.imap import fetch as fetching
from mdpy.imap import search as searching
from mdpy.imap.mailboxes import (
    SEPARATOR, Listing, decodeName, encodeName, listLine, patternMatcher,
)
from mdpy.imap.mime import quoteString
from mdpy.imap.parser import (
    LITERAL_MARKER, Atom, ParseError, SequenceSet, astring, isAtom, formatSequence,
    number64, parseDateTime, tokenize,
)
from mdpy.imap.selected import RecentTracker, SelectedMailbox, UidValidityChanged
from mdpy.session import CommandSession, SessionFactory
from mdpy.store.maildirindex import storableFlags

NOT_AUTHENTICATED = "not authenticated"
AUTHENTICATED = "authenticated"
SELECTED = "selected"

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
MAX_LITERAL = 64 * 1024
MAX_LITERALS = 1000
MAX_LITERAL_TOTAL = 1024 * 1024
MAX_PREAUTH_LITERAL = 8192
CHUNK = 64 * 1024

_SYSTEM_FLAGS_LOWER = {flag.lower() for flag in SYSTEM_FLAGS}

_ANY = {"CAPABILITY", "NOOP", "LOGOUT", "ID"}
_AUTH = _ANY | {
    "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
    "LIST", "LSUB", "STATUS", "APPEND", "NAMESPACE", "ENABLE", "IDLE",
}
_COMMANDS = {
    NOT_AUTHENTICATED: _ANY | {"STARTTLS", "AUTHENTICATE", "LOGIN"},
    AUTHENTICATED: _AUTH,
    SELECTED: _AUTH | {
        "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID",
    },
}
_UID_COMMANDS = {"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"}
_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE")


class _TryCreate(errors.PermanentFailure):
    """
    An APPEND to a mailbox that doesn't exist.
    """


def _codeFor(failure):
    """
    @return: C{(response code, text)} of a NO for a store failure
        (RFC 5530 codes).
    """
    if failure.check(_TryCreate):
        return b"TRYCREATE", b"Mailbox doesn't exist."
    if failure.check(errors.NotFound):
        return b"NONEXISTENT", b"Mailbox doesn't exist."
    if failure.check(errors.Exists):
        return b"ALREADYEXISTS", b"Mailbox already exists."
    if failure.check(errors.QuotaExceeded):
        return b"OVERQUOTA", b"Quota exceeded."
    if failure.check(errors.TooBig):
        return b"TOOBIG", b"Message too large."
    if failure.check(errors.InvalidInput):
        return b"CANNOT", b"Invalid mailbox name or operation."
    if failure.check(errors.InUse):
        return b"INUSE", b"Mailbox is in use."
    return b"UNAVAILABLE", b"Temporary failure; try again later."


class IMAP4Factory(SessionFactory):
    """
    Builds L{IMAP4Server}s for one listener; subclass it (and set
    C{protocol}) to add commands.

    @ivar store: the L{mdpy.interfaces.IMailStore} whose mailboxes are served.
    @ivar allowPlaintext: whether LOGIN and AUTHENTICATE work before STARTTLS.
    @ivar maxMessageSize: the largest APPEND (advertised as APPENDLIMIT).
    @ivar runInThread: C{runInThread(f, *args)} for directory scans and
        file reads off the reactor thread.
    @ivar structures: the L{fetching.StructureCache} (shared by listeners).
    @ivar recent: the L{RecentTracker} (shared by listeners).
    @ivar idleKeepAlive: seconds between C{* OK Still here} while idling.
    @ivar idlePoll: seconds between checks for changes made by other
        programs while idling.
    """

    def __init__(
        self,
        hostname,
        store,
        allowPlaintext=False,
        runInThread=None,
        maxMessageSize=50 * 1024 * 1024,
        structures=None,
        recent=None,
        idleKeepAlive=120,
        idlePoll=30,
        maxErrors=20,
        timeout=1800,
        **kwargs,
    ):
        SessionFactory.__init__(self, hostname, maxErrors=maxErrors, timeout=timeout, **kwargs)
        if runInThread is None:
            from twisted.internet import reactor
            from twisted.internet.threads import deferToThreadPool

            def runInThread(f, *args):
                return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

        self.store = store
        self.allowPlaintext = allowPlaintext
        self.runInThread = runInThread
        self.maxMessageSize = maxMessageSize
        self.structures = fetching.StructureCache() if structures is None else structures
        self.recent = RecentTracker() if recent is None else recent
        self.idleKeepAlive = idleKeepAlive
        self.idlePoll = idlePoll


@implementer(iinternet.IPushProducer)
class _Output:
    """
    Flow control for a long response: the transport says when its buffer is
    full, and L{wait} holds the response until it has drained.
    """

    def __init__(self, transport):
        self.transport = transport
        self.paused = False
        self._waiting = None
        transport.registerProducer(self, True)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    stopProducing = resumeProducing

    def wait(self):
        self._waiting = defer.Deferred()
        return self._waiting

    def finish(self):
        self.transport.unregisterProducer()


class _SearchContext:
    """
    What a SEARCH criterion may ask of the session (L{mdpy.imap.search}).
    """

    def __init__(self, selected, now):
        self.selected = selected
        self.count = selected.count
        self.largestUid = selected.largestUid
        self.now = now

    def sequence(self, message):
        return self.selected.sequence(message)

    def isRecent(self, message):
        return self.selected.isRecent(message)

    def content(self, message):
        return fetching.readMessage(message)


class IMAP4Server(CommandSession):
    """
    One IMAP session.

    @ivar state: L{NOT_AUTHENTICATED}, L{AUTHENTICATED} or L{SELECTED}.
    @ivar account: the account logged in, or L{None}.
    @ivar selected: the L{SelectedMailbox}, or L{None}.
    @ivar enabled: the extensions the client ENABLEd.
    """

    service = "imap"
    maxLineLength = 65536
    commands = _COMMANDS
    mechanisms = sasl.MECHANISMS

    def __init__(self):
        CommandSession.__init__(self)
        self.state = NOT_AUTHENTICATED
        self.account = None
        self.selected = None
        self.enabled = set()
        self._segments = []
        self._literalCount = 0
        self._literalTotal = 0
        self._literalWanted = 0
        self._literalParts = []
        self._discarding = 0
        self._tag = b"*"
        self._idleTag = None
        self._idleCalls = []
        self._pushing = False
        self._listening = False

    # --- CommandSession -----------------------------------------------------

    def greet(self):
        self.send(b"* OK [CAPABILITY " + self.capabilities() + b"] mdpy ready.\r\n")

    def refuse(self):
        self.send(b"* BYE [UNAVAILABLE] Too many connections.\r\n")

    def lineTooLong(self):
        self._resetCommand()
        self.send(b"* BAD [TOOBIG] Command line too long.\r\n")
        self._countError()

    def internalError(self):
        self.send(self._tag + b" NO [SERVERBUG] Internal error occurred. Refer to server log for more information.\r\n")

    def timeoutConnection(self):
        self.log.info("imap: timeout in {state} from {ip}", state=self.state, ip=self._ip)
        self.send(b"* BYE Disconnected for inactivity.\r\n")
        self.close()

    def connectionLost(self, reason=None):
        CommandSession.connectionLost(self, reason)
        self._stopIdleTimers()
        if self._listening:
            self._listening = False
            self.factory.store.removeListener(self.account, self._mailboxChanged)

    # --- output -------------------------------------------------------------

    def capabilities(self):
        """
        @return: the capability list for the current state, as L{bytes}.
        """
        caps = [b"IMAP4rev1", b"SASL-IR", b"LITERAL+", b"ID", b"ENABLE", b"IDLE"]
        if self.state == NOT_AUTHENTICATED:
            if not self.tls and self.factory.tlsOptions is not None:
                caps.append(b"STARTTLS")
            if self._loginAllowed():
                caps.extend(b"AUTH=" + m for m in self.mechanisms)
            else:
                caps.append(b"LOGINDISABLED")
        else:
            caps.extend([
                b"NAMESPACE", b"UIDPLUS", b"MOVE", b"UNSELECT", b"CHILDREN", b"LIST-EXTENDED",
                b"LIST-STATUS", b"SPECIAL-USE", b"ESEARCH", b"CONDSTORE",
                b"APPENDLIMIT=%d" % (self.factory.maxMessageSize,),
            ])
        return b" ".join(caps)

    def untagged(self, data):
        self.send(b"* " + data + b"\r\n")

    def _reply(self, tag, status, text, code=None):
        line = tag + b" " + status + b" "
        if code:
            line += b"[" + code + b"] "
        self.send(line + text + b"\r\n")

    def _countError(self):
        if self.countError():
            self.log.info("imap: too many errors from {ip}", ip=self._ip)
            self.send(b"* BYE Too many invalid commands.\r\n")
            self.close()

    def bad(self, tag, text):
        """
        Answer C{BAD}; too many end the session.
        """
        self._reply(tag, b"BAD", text.encode("utf-8") if isinstance(text, str) else text)
        self._countError()
        return None

    def no(self, tag, text, code=None):
        """
        Answer C{NO} (after the updates the view owes).
        """
        return self.complete(tag, b"NO", text, code)

    def complete(self, tag, status, text, code=None, expunge=True):
        """
        End a command: send the untagged updates of the selected mailbox,
        then the tagged reply.

        @param expunge: whether EXPUNGE responses may be sent (not after
            FETCH, STORE or SEARCH by sequence number, RFC 3501 7.4.1).
        @return: L{None}, or a Deferred when the mailbox is synced first.
        """
        if isinstance(text, str):
            text = text.encode("utf-8")
        selected = self.selected
        if selected is None or self.closing:
            self._reply(tag, status, text, code)
            return None
        if selected.dirty:
            d = self.factory.runInThread(selected.mailbox.sync)
            d.addErrback(self._ebSync)
            d.addCallback(lambda _: self._finish(tag, status, text, code, expunge))
            return d
        self._finish(tag, status, text, code, expunge)
        return None

    def _ebSync(self, failure):
        self.log.failure("imap: cannot sync {mailbox} of {user}", failure,
                         mailbox=getattr(self.selected, "mailbox", None), user=self.account)

    def _finish(self, tag, status, text, code, expunge):
        if self.closing:
            return
        self.sendUpdates(expunge)
        self._reply(tag, status, text, code)

    def sendUpdates(self, expunge=True):
        """
        Send what the selected mailbox's view owes the client (already
        synced).
        """
        selected = self.selected
        if selected is None or self.closing:
            return
        mailbox = selected.mailbox
        if (
            not selected.gone
            and mailbox.highestModSeq == selected.reportedModSeq
            and mailbox.uidNext == selected.largestUid + 1
        ):
            selected.dirty = False
            return
        try:
            lines = selected.updates(
                expunge,
                self._claimRecent,
                modSeqs="CONDSTORE" in self.enabled,
            )
        except UidValidityChanged:
            self.send(b"* BYE [UIDVALIDITY] Mailbox UIDVALIDITY changed.\r\n")
            self.close()
            return
        if lines:
            self.send(b"".join(lines))

    def _claimRecent(self, uids):
        selected = self.selected
        if selected.readOnly:
            return []
        return self.factory.recent.claim(self.account, selected.mailbox.name, selected.uidValidity, uids)

    # --- input: lines and literals ---------------------------------------------

    def _resetCommand(self):
        self._segments = []
        self._literalCount = 0
        self._literalTotal = 0

    def lineReceived(self, line):
        self._segments.append(line)
        match = LITERAL_MARKER.search(line)
        if match is None:
            segments = self._segments
            self._resetCommand()
            return self._command(segments)
        size = int(match.group(1))
        nonSynchronising = bool(match.group(2))
        refusal = self._checkLiteral(size)
        if refusal is not None:
            tag = self._guessTag(self._segments[0])
            self._resetCommand()
            if nonSynchronising:
                self._discarding = size
                self.rawMode = True
            code, text = refusal
            self._reply(tag, b"NO" if code == b"TOOBIG" else b"BAD", text, code)
            self._countError()
            return None
        self._literalCount += 1
        self._literalTotal += size
        self._literalWanted = size
        self._literalParts = []
        self.rawMode = True
        if not nonSynchronising:
            self.send(b"+ OK\r\n")
        return None

    def _checkLiteral(self, size):
        """
        @return: L{None} if a literal of C{size} octets may come now, else
            C{(code, text)} of the refusal.
        """
        first = self._segments[0].split(b" ", 2)
        verb = first[1].upper() if len(first) > 1 else b""
        if self.state == NOT_AUTHENTICATED:
            if size > MAX_PREAUTH_LITERAL or self._literalCount >= 4:
                return b"TOOBIG", b"Literal too large before authentication."
            return None
        if self._literalCount >= MAX_LITERALS:
            return b"TOOBIG", b"Too many literals."
        if verb == b"APPEND":
            if size > self.factory.maxMessageSize:
                return b"TOOBIG", b"Message too large (APPENDLIMIT=%d)." % (self.factory.maxMessageSize,)
            if self._literalTotal + size > self.factory.maxMessageSize + MAX_LITERAL_TOTAL:
                return b"TOOBIG", b"Too much literal data."
            return None
        if size > MAX_LITERAL or self._literalTotal + size > MAX_LITERAL_TOTAL:
            return b"TOOBIG", b"Literal too large."
        return None

    def rawInput(self):
        data = self.takeBuffered()
        if self._discarding:
            used = min(len(data), self._discarding)
            self._discarding -= used
            if not self._discarding:
                self.rawMode = False
            self.setBuffered(data[used:])
            return True
        wanted = self._literalWanted
        piece = data[:wanted]
        self._literalParts.append(piece)
        self._literalWanted -= len(piece)
        self.setBuffered(data[len(piece):])
        if not self._literalWanted:
            self._segments.append(b"".join(self._literalParts))
            self._literalParts = []
            self.rawMode = False
        return True

    @staticmethod
    def _guessTag(line):
        tag = line.split(b" ", 1)[0]
        if not tag or len(tag) > 64 or not all(33 <= c < 127 and c not in b'(){%*"\\+' for c in tag):
            return b"*"
        return tag

    def _command(self, segments):
        tag = self._guessTag(segments[0])
        self._tag = tag
        try:
            tokens = tokenize(segments, maxDepth=2 if self.state == NOT_AUTHENTICATED else 32)
        except ParseError as e:
            return self.bad(tag, "Error in IMAP command: %s." % (e,))
        if not tokens:
            return self.bad(b"*", "Empty command line.")
        if tag == b"*" or not isinstance(tokens[0], Atom):
            return self.bad(b"*", "Error in IMAP command received by server.")
        if len(tokens) < 2 or not isinstance(tokens[1], Atom):
            return self.bad(tag, "Error in IMAP command received by server.")
        verb = tokens[1].upper()
        if verb not in self.commands[self.state]:
            known = any(verb in verbs for verbs in self.commands.values())
            return self.bad(tag, "Command not valid in this state." if known else "Unknown command.")
        try:
            return getattr(self, "do_" + verb)(tag, tokens[2:])
        except ParseError as e:
            return self.bad(tag, "Error in IMAP command %s: %s." % (verb, e))

    # --- any state ------------------------------------------------------------

    def do_CAPABILITY(self, tag, args):
        self.untagged(b"CAPABILITY " + self.capabilities())
        return self.complete(tag, b"OK", b"Capability completed.")

    def do_NOOP(self, tag, args):
        if self.selected is not None:
            self.selected.dirty = True
        return self.complete(tag, b"OK", b"NOOP completed.")

    do_CHECK = do_NOOP

    def do_LOGOUT(self, tag, args):
        self.send(b"* BYE Logging out.\r\n" + tag + b" OK Logout completed.\r\n")
        self.close()

    def do_ID(self, tag, args):
        """
        RFC 2971: log what the client says of itself, say who we are.
        """
        if len(args) != 1 or not (isAtom(args[0], "NIL") or isinstance(args[0], list)):
            raise ParseError("Expected NIL or a list")
        if isinstance(args[0], list):
            fields = args[0]
            if len(fields) % 2 or len(fields) > 60:
                raise ParseError("Invalid ID list")
            described = []
            for key, value in zip(fields[::2], fields[1::2]):
                if not isinstance(key, bytes) or not (isinstance(value, bytes) or isAtom(value, "NIL")):
                    raise ParseError("Invalid ID list")
                described.append("%s=%s" % (key[:30].decode("utf-8", "replace"),
                                            bytes(value)[:60].decode("utf-8", "replace")
                                            if isinstance(value, bytes) else "NIL"))
            self.log.info("imap: client id from {ip}: {id}", ip=self._ip, id=", ".join(described))
        self.untagged(b'ID ("name" "mdpy" "version" ' + quoteString(VERSION) + b")")
        return self.complete(tag, b"OK", b"ID completed.")

    # --- not authenticated ------------------------------------------------------

    def _loginAllowed(self):
        return self.factory.portal is not None and (self.tls or self.factory.allowPlaintext)

    def do_STARTTLS(self, tag, args):
        if args:
            raise ParseError("STARTTLS takes no arguments")
        if self.tls:
            return self.bad(tag, "TLS is already active.")
        if self.factory.tlsOptions is None:
            return self.bad(tag, "TLS is not available.")
        self._reply(tag, b"OK", b"Begin TLS negotiation now.")
        self.startTLS()
        return None

    def do_LOGIN(self, tag, args):
        if len(args) != 2:
            raise ParseError("Expected user name and password")
        user, password = astring(args[0]), astring(args[1])
        if not self._loginAllowed():
            self._reply(tag, b"NO", b"Plaintext authentication disallowed on non-secure connections.",
                        b"PRIVACYREQUIRED")
            return None
        self._authTag = tag
        return self.login(UsernamePassword(user, password), user).addCallbacks(
            self._cbLoggedIn, self._ebLoggedIn
        )

    def do_AUTHENTICATE(self, tag, args):
        if not args or len(args) > 2 or not isinstance(args[0], Atom):
            raise ParseError("Expected a mechanism")
        mechanism = args[0].upper().encode("ascii", "replace")
        initial = astring(args[1]) if len(args) == 2 else None
        if not self._loginAllowed():
            self._reply(tag, b"NO", b"Plaintext authentication disallowed on non-secure connections.",
                        b"PRIVACYREQUIRED")
            return None
        if mechanism not in self.mechanisms:
            self._reply(tag, b"NO", b"Unsupported authentication mechanism.")
            return None
        self._authTag = tag
        return self.authenticate(mechanism, initial, b"+ ", self._cbLoggedIn, self._ebLoggedIn)

    def _ebLoggedIn(self, failure):
        if self.closing:
            return None
        tag = self._authTag
        if failure.check(sasl.Cancelled):
            self.bad(tag, "Authentication aborted by client.")
        elif failure.check(sasl.Malformed):
            self.bad(tag, "Invalid base64 data in response.")
        else:
            failure.trap(credError.UnauthorizedLogin)
            self._reply(tag, b"NO", b"Authentication failed.", b"AUTHENTICATIONFAILED")
        return None

    def _cbLoggedIn(self, account):
        if self.closing:
            return None
        self.account = account
        self.state = AUTHENTICATED
        self.factory.store.addListener(account, self._mailboxChanged)
        self._listening = True
        self._reply(self._authTag, b"OK", b"Logged in.", b"CAPABILITY " + self.capabilities())
        return None

    # --- authenticated: mailboxes ----------------------------------------------

    def _storeCall(self, f, *args):
        """
        Call a store method in a thread.
        """
        return self.factory.runInThread(f, self.account, *args)

    def _noFromFailure(self, failure, tag):
        if self.closing:
            return None
        if not failure.check(errors.MailError):
            self.log.failure("imap: store failure for {user}", failure, user=self.account)
        elif failure.check(errors.TemporaryFailure):
            self.log.warn("imap: {user}: {error}", user=self.account, error=failure.getErrorMessage())
        code, text = _codeFor(failure)
        return self.no(tag, text, code)

    def _simpleMailboxCommand(self, tag, call, okText):
        d = call
        d.addCallbacks(lambda _: self.complete(tag, b"OK", okText), self._noFromFailure, errbackArgs=(tag,))
        return d

    def do_CREATE(self, tag, args):
        if len(args) != 1:
            raise ParseError("Expected a mailbox name")
        name = decodeName(args[0])
        if name == "INBOX":
            return self.no(tag, b"Mailbox already exists.", b"ALREADYEXISTS")
        return self._simpleMailboxCommand(tag, self.factory.runInThread(self._create, name), b"Create completed.")

    def _create(self, name):
        store = self.factory.store
        levels = name.split(SEPARATOR)
        existing = set(store.listMailboxes(self.account))
        if name in existing:
            raise errors.Exists(name)
        for depth in range(1, len(levels)):
            parent = SEPARATOR.join(levels[:depth])
            if parent not in existing:
                store.createMailbox(self.account, parent)
        store.createMailbox(self.account, name)

    def do_DELETE(self, tag, args):
        if len(args) != 1:
            raise ParseError("Expected a mailbox name")
        name = decodeName(args[0])
        if name == "INBOX":
            return self.no(tag, b"INBOX can't be deleted.", b"CANNOT")
        if self.selected is not None and self.selected.mailbox.name == name:
            self._deselect()
        return self._simpleMailboxCommand(
            tag, self._storeCall(self.factory.store.deleteMailbox, name), b"Delete completed."
        )

    def do_RENAME(self, tag, args):
        if len(args) != 2:
            raise ParseError("Expected two mailbox names")
        old, new = decodeName(args[0]), decodeName(args[1])
        return self._simpleMailboxCommand(
            tag, self._storeCall(self.factory.store.renameMailbox, old, new), b"Rename completed."
        )

    def do_SUBSCRIBE(self, tag, args, subscribed=True):
        if len(args) != 1:
            raise ParseError("Expected a mailbox name")
        name = decodeName(args[0])
        return self._simpleMailboxCommand(
            tag,
            self._storeCall(self.factory.store.setSubscribed, name, subscribed),
            b"Subscribe completed." if subscribed else b"Unsubscribe completed.",
        )

    def do_UNSUBSCRIBE(self, tag, args):
        return self.do_SUBSCRIBE(tag, args, subscribed=False)

    def do_NAMESPACE(self, tag, args):
        self.untagged(b'NAMESPACE (("" "/")) NIL NIL')
        return self.complete(tag, b"OK", b"Namespace completed.")

    def do_ENABLE(self, tag, args):
        if not args or not all(isinstance(a, Atom) for a in args):
            raise ParseError("Expected capability names")
        enabled = []
        for name in args:
            upper = name.upper()
            if upper == "CONDSTORE" and upper not in self.enabled:
                self.enabled.add(upper)
                enabled.append(upper)
        self.untagged(b"ENABLED" + b"".join(b" " + n.encode("ascii") for n in enabled))
        return self.complete(tag, b"OK", b"Enabled.")

    # LIST, LSUB

    def do_LIST(self, tag, args, verb=b"LIST"):
        args = list(args)
        selection = []
        if verb == b"LIST" and args and isinstance(args[0], list):
            selection = [self._optionName(o) for o in args.pop(0)]
        if len(args) < 2:
            raise ParseError("Expected reference and mailbox name")
        reference = self._pattern(args[0])
        patterns = args[1] if isinstance(args[1], list) and verb == b"LIST" else [args[1]]
        patterns = [self._pattern(p) for p in patterns]
        returns, statusItems = [], None
        rest = args[2:]
        if rest:
            if verb != b"LIST" or not isAtom(rest[0], "RETURN") or len(rest) != 2 or not isinstance(rest[1], list):
                raise ParseError("Invalid LIST arguments")
            options = rest[1]
            index = 0
            while index < len(options):
                option = self._optionName(options[index])
                if option == "STATUS":
                    index += 1
                    if index >= len(options) or not isinstance(options[index], list):
                        raise ParseError("STATUS needs a list")
                    statusItems = self._statusItems(options[index])
                elif option not in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE"):
                    raise ParseError("Unknown LIST return option")
                returns.append(option)
                index += 1
        for option in selection:
            if option not in ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"):
                raise ParseError("Unknown LIST selection option")
        if "RECURSIVEMATCH" in selection and len(set(selection) - {"REMOTE", "RECURSIVEMATCH"}) == 0:
            raise ParseError("RECURSIVEMATCH needs another selection option")
        if patterns == [""] and verb == b"LIST" and not selection:
            self.send(b'* LIST (\\Noselect) "/" ""\r\n')
            return self.complete(tag, b"OK", b"List completed.")
        d = self.factory.runInThread(self._listing)
        d.addCallback(self._cbList, tag, verb, reference, patterns, selection, returns, statusItems)
        d.addErrback(self._noFromFailure, tag)
        return d

    def do_LSUB(self, tag, args):
        return self.do_LIST(tag, args, verb=b"LSUB")

    @staticmethod
    def _optionName(token):
        if not isinstance(token, Atom):
            raise ParseError("Expected an option name")
        return token.upper()

    @staticmethod
    def _pattern(token):
        """
        @return: a LIST reference or pattern, decoded but otherwise as given.
        """
        raw = astring(token)
        try:
            return mutf7.decode(raw.decode("ascii"))
        except UnicodeDecodeError:
            return raw.decode("utf-8", "replace")

    def _listing(self):
        store = self.factory.store
        return Listing(store.listMailboxes(self.account), store.listSubscriptions(self.account))

    def _cbList(self, listing, tag, verb, reference, patterns, selection, returns, statusItems):
        matchers = [patternMatcher(reference, p) for p in patterns]

        def matches(name):
            return any(m(name) for m in matchers)

        lines = []
        statusNames = []
        subscribedOnly = verb == b"LSUB" or "SUBSCRIBED" in selection
        specialOnly = "SPECIAL-USE" in selection
        showSubscribed = "SUBSCRIBED" in returns or "SUBSCRIBED" in selection
        candidates = sorted(
            set(listing.names) | set(listing.implied) | (listing.subscribed if subscribedOnly else set()),
            key=lambda n: (n != "INBOX", n),
        )
        for name in candidates:
            extra = b""
            if subscribedOnly:
                if name not in listing.subscribed:
                    if "RECURSIVEMATCH" in selection and matches(name) and any(
                        s.startswith(name + SEPARATOR) for s in listing.subscribed
                    ):
                        attrs = listing.attributes(name, subscribedFlag=showSubscribed)
                        lines.append(listLine(b"LIST", attrs, name, b' ("CHILDINFO" ("SUBSCRIBED"))'))
                    continue
            if not matches(name):
                continue
            attrs = listing.attributes(name, subscribedFlag=showSubscribed and verb == b"LIST")
            if specialOnly and not any(a in ("\\Drafts", "\\Sent", "\\Trash", "\\Junk", "\\Archive") for a in attrs):
                continue
            if verb == b"LSUB":
                attrs = [a for a in attrs if a == "\\Noselect" or a == "\\NonExistent"]
                attrs = ["\\Noselect"] if attrs else []
            lines.append(listLine(verb, attrs, name, extra))
            if statusItems is not None and name in listing.existing:
                statusNames.append(name)
        self.send(b"".join(lines))
        if statusItems and statusNames:
            d = self.factory.runInThread(self._statusMany, statusNames, statusItems)
            d.addCallback(lambda replies: self.send(b"".join(replies)))
            d.addCallback(lambda _: self.complete(tag, b"OK", b"List completed."))
            return d
        return self.complete(tag, b"OK", b"List completed.")

    # STATUS

    def _statusItems(self, token):
        if not isinstance(token, list) or not token:
            raise ParseError("Expected status items")
        items = []
        for item in token:
            name = self._optionName(item)
            if name not in _STATUS_ITEMS:
                raise ParseError("Unknown status item")
            items.append(name)
        return items

    def do_STATUS(self, tag, args):
        if len(args) != 2:
            raise ParseError("Expected mailbox name and status items")
        name = decodeName(args[0])
        items = self._statusItems(args[1])
        d = self.factory.runInThread(self._statusMany, [name], items)
        d.addCallback(lambda replies: self.send(b"".join(replies)))
        d.addCallbacks(lambda _: self.complete(tag, b"OK", b"Status completed."),
                       self._noFromFailure, errbackArgs=(tag,))
        return d

    def _statusMany(self, names, items):
        """
        @return: C{* STATUS} lines.  Runs in a thread.
        """
        out = []
        for name in names:
            mailbox = self.factory.store.openMailbox(self.account, name)
            messages = mailbox.messages()
            values = []
            for item in items:
                if item == "MESSAGES":
                    value = len(messages)
                elif item == "RECENT":
                    value = 0
                    if self.selected is not None and self.selected.mailbox.name == name:
                        value = len(self.selected.recent)
                elif item == "UIDNEXT":
                    value = mailbox.uidNext
                elif item == "UIDVALIDITY":
                    value = mailbox.uidValidity
                elif item == "UNSEEN":
                    value = sum(1 for m in messages if "\\Seen" not in m.flags)
                elif item == "HIGHESTMODSEQ":
                    value = mailbox.highestModSeq
                else:
                    value = sum(m.size for m in messages)
                values.append(b"%s %d" % (item.encode("ascii"), value))
            out.append(b"* STATUS %s (%s)\r\n" % (encodeName(name), b" ".join(values)))
        return out

    # SELECT, EXAMINE, CLOSE, UNSELECT

    def _deselect(self):
        self.selected = None
        self.state = AUTHENTICATED

    def do_SELECT(self, tag, args, readOnly=False):
        if not args or len(args) > 2:
            raise ParseError("Expected a mailbox name")
        name = decodeName(args[0])
        condstore = False
        if len(args) == 2:
            if not isinstance(args[1], list) or not all(isAtom(o, "CONDSTORE") for o in args[1]):
                raise ParseError("Unknown SELECT parameter")
            condstore = True
        self._deselect()
        if condstore:
            self.enabled.add("CONDSTORE")
        d = self._storeCall(self.factory.store.openMailbox, name)
        d.addCallbacks(self._cbSelected, self._ebSelect, callbackArgs=(tag, readOnly), errbackArgs=(tag,))
        return d

    def do_EXAMINE(self, tag, args):
        return self.do_SELECT(tag, args, readOnly=True)

    def _ebSelect(self, failure, tag):
        return self._noFromFailure(failure, tag)

    def _cbSelected(self, mailbox, tag, readOnly):
        if self.closing:
            return None
        uids = [m.uid for m in mailbox.messages()]
        recent = [] if readOnly else self.factory.recent.claim(
            self.account, mailbox.name, mailbox.uidValidity, uids
        )
        selected = SelectedMailbox(mailbox, readOnly, recent)
        keywords = sorted({flag for m in mailbox.messages() for flag in m.flags if not flag.startswith("\\")})
        flags = " ".join(list(SYSTEM_FLAGS) + ["$Forwarded"] + [k for k in keywords if k != "$Forwarded"])
        lines = [
            b"* FLAGS (%s)\r\n" % (flags.encode("utf-8"),),
            b"* OK [PERMANENTFLAGS (%s \\*)] Flags permitted.\r\n" % (flags.encode("utf-8"),)
            if not readOnly else b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n",
            b"* %d EXISTS\r\n" % (selected.count,),
            b"* %d RECENT\r\n" % (len(selected.recent),),
        ]
        unseen = selected.firstUnseen()
        if unseen is not None:
            lines.append(b"* OK [UNSEEN %d] First unseen.\r\n" % (unseen,))
        lines.append(b"* OK [UIDVALIDITY %d] UIDs valid.\r\n" % (mailbox.uidValidity,))
        lines.append(b"* OK [UIDNEXT %d] Predicted next UID.\r\n" % (mailbox.uidNext,))
        lines.append(b"* OK [HIGHESTMODSEQ %d] Highest.\r\n" % (mailbox.highestModSeq,))
        self.send(b"".join(lines))
        self.selected = selected
        self.state = SELECTED
        code = b"READ-ONLY" if readOnly else b"READ-WRITE"
        self._reply(tag, b"OK", b"Select completed." if not readOnly else b"Examine completed.", code)
        return None

    def do_CLOSE(self, tag, args):
        selected = self.selected
        self._deselect()
        if selected.readOnly:
            return self.complete(tag, b"OK", b"Close completed.")
        doomed = [m.uid for m in selected.mailbox.messages() if "\\Deleted" in m.flags]
        if not doomed:
            return self.complete(tag, b"OK", b"Close completed.")
        d = defer.maybeDeferred(selected.mailbox.expunge, doomed)
        d.addCallbacks(lambda _: self.complete(tag, b"OK", b"Close completed."),
                       self._noFromFailure, errbackArgs=(tag,))
        return d

    def do_UNSELECT(self, tag, args):
        self._deselect()
        return self.complete(tag, b"OK", b"Unselect completed.")

    # APPEND

    def do_APPEND(self, tag, args):
        if len(args) < 2:
            raise ParseError("Expected mailbox name and message")
        name = decodeName(args[0])
        rest = list(args[1:])
        flags = ()
        internalDate = None
        if isinstance(rest[0], list):
            flags = self._flagList(rest.pop(0))
        if len(rest) == 2:
            internalDate = parseDateTime(rest.pop(0))
        if len(rest) != 1 or not isinstance(rest[0], bytes):
            raise ParseError("Expected a message literal")
        data = rest[0]
        if len(data) > self.factory.maxMessageSize:
            return self.no(tag, b"Message too large.", b"TOOBIG")
        d = self._storeCall(self.factory.store.openMailbox, name)
        d.addErrback(self._ebTryCreate)
        d.addCallback(self._cbAppendTo, data, flags, internalDate)
        d.addCallbacks(self._cbAppended, self._noFromFailure, callbackArgs=(tag, name), errbackArgs=(tag,))
        return d

    def _ebTryCreate(self, failure):
        failure.trap(errors.NotFound)
        raise _TryCreate()

    def _cbAppendTo(self, mailbox, data, flags, internalDate):
        d = defer.maybeDeferred(mailbox.append, data, flags, internalDate)
        d.addCallback(lambda uid: (mailbox.uidValidity, uid))
        return d

    def _cbAppended(self, result, tag, name):
        validity, uid = result
        if self.selected is not None and self.selected.mailbox.name == name:
            self.selected.dirty = True
        return self.complete(tag, b"OK", b"Append completed.", b"APPENDUID %d %d" % (validity, uid))

    def _flagList(self, tokens):
        flags = []
        for token in tokens:
            if not isinstance(token, Atom) or not token:
                raise ParseError("Invalid flag")
            if token.startswith("\\") and token.lower() not in _SYSTEM_FLAGS_LOWER:
                raise ParseError("Invalid system flag %s" % (token[:30],))
            flags.append(str(token))
        return frozenset(flags)

    # IDLE

    def do_IDLE(self, tag, args):
        if args:
            raise ParseError("IDLE takes no arguments")
        self._idleTag = tag
        self.send(b"+ idling\r\n")
        self.expectLine(self._idleLine)
        clock = self.factory.clock
        self._idleCalls = [
            clock.callLater(self.factory.idleKeepAlive, self._idleKeepAlive),
            clock.callLater(self.factory.idlePoll, self._idlePoll),
        ]
        if self.selected is not None and self.selected.dirty:
            self._pushUpdates()
        return None

    def _idleLine(self, line):
        tag, self._idleTag = self._idleTag, None
        self._stopIdleTimers()
        if line.strip().upper() != b"DONE":
            return self.bad(tag, "Expected DONE.")
        return self.complete(tag, b"OK", b"Idle completed.")

    def _stopIdleTimers(self):
        for call in self._idleCalls:
            if call.active():
                call.cancel()
        self._idleCalls = []

    def _idleKeepAlive(self):
        if self._idleTag is None or self.closing:
            return
        self.send(b"* OK Still here\r\n")
        self._idleCalls[0] = self.factory.clock.callLater(self.factory.idleKeepAlive, self._idleKeepAlive)

    def _idlePoll(self):
        if self._idleTag is None or self.closing:
            return
        if self.selected is not None:
            self.selected.dirty = True
            self._pushUpdates()
        self._idleCalls[1] = self.factory.clock.callLater(self.factory.idlePoll, self._idlePoll)

    def _mailboxChanged(self, account, folder):
        selected = self.selected
        if selected is None or folder != selected.mailbox.name:
            return
        selected.dirty = True
        if self._idleTag is not None:
            self._pushUpdates()

    def _pushUpdates(self):
        """
        Sync and send updates while idling (several notifications while one
        sync runs make one more sync).
        """
        if self._pushing:
            return
        self._pushing = True
        selected = self.selected
        d = self.factory.runInThread(selected.mailbox.sync)
        d.addErrback(self._ebSync)

        def push(_):
            self._pushing = False
            if self._idleTag is None or self.selected is not selected or self.closing:
                return
            self.sendUpdates(expunge=True)
            if selected.dirty:
                self._pushUpdates()

        d.addCallback(push)

    # --- selected: message sets -------------------------------------------------

    def _resolve(self, token, uid):
        """
        @return: the messages of the view a sequence set names.
        """
        sequence = SequenceSet.parse(token)
        selected = self.selected
        if uid:
            indexes = sequence.selectSorted(selected.uids)
        else:
            # RFC 3501 section 9: a number past the last message (or "*" in
            # an empty mailbox) is an error.
            for low, high in sequence.ranges:
                if max(low or 0, high or 0) > selected.count or (selected.count == 0):
                    raise ParseError("Invalid messageset")
            indexes = sequence.indexes(selected.count)
        return selected.messagesAt(indexes)

    def do_UID(self, tag, args):
        if not args or not isinstance(args[0], Atom) or args[0].upper() not in _UID_COMMANDS:
            raise ParseError("Unknown UID command")
        verb = args[0].upper()
        return getattr(self, "do_" + verb)(tag, args[1:], uid=True)

    # FETCH

    def do_FETCH(self, tag, args, uid=False):
        if len(args) not in (2, 3):
            raise ParseError("Expected a message set and data items")
        messages = self._resolve(args[0], uid)
        request = fetching.parseFetchItems(args[1])
        changedSince = None
        if len(args) == 3:
            modifiers = args[2]
            if not isinstance(modifiers, list) or len(modifiers) != 2 or not isAtom(modifiers[0], "CHANGEDSINCE"):
                raise ParseError("Unknown FETCH modifier")
            changedSince = number64(modifiers[1])
            self.enabled.add("CONDSTORE")
        if uid and "UID" not in request.items:
            request.items.insert(0, "UID")
        if changedSince is not None:
            request.ensure("MODSEQ")
            messages = [m for m in messages if m.modSeq > changedSince]
        return defer.ensureDeferred(self._fetch(tag, messages, request, uid))

    async def _fetch(self, tag, messages, request, uid):
        selected = self.selected
        gone = False
        seenNow = set()
        if request.setsSeen and not selected.readOnly:
            unseen = [m for m in messages if "\\Seen" not in m.flags and m.uid not in selected.gone]
            if unseen:
                results = await defer.DeferredList(
                    [defer.maybeDeferred(selected.mailbox.setFlags, m.uid, m.flags | {"\\Seen"}) for m in unseen],
                    consumeErrors=True,
                )
                current = {m.uid: m for m in selected.mailbox.messages()}
                for message, (ok, _) in zip(unseen, results):
                    if ok:
                        seenNow.add(message.uid)
                messages = [current.get(m.uid, m) if m.uid in seenNow else m for m in messages]
        output = _Output(self.transport) if len(messages) > 64 or request.needsContent else None
        structures = self.factory.structures
        withFlags = None
        try:
            pending = []
            size = 0
            for message in messages:
                if self.closing:
                    return None
                data = structure = None
                try:
                    if request.needsContent or request.needsStructure:
                        data = fetching.readMessage(message)
                        if request.needsStructure:
                            structure = structures.get(message.key, data)
                except (errors.NotFound, OSError):
                    gone = True
                    continue
                items = request
                if message.uid in seenNow and "FLAGS" not in request.items:
                    if withFlags is None:
                        withFlags = fetching.FetchRequest(request.items + ["FLAGS"], request.sections)
                    items = withFlags
                if "FLAGS" in items.items:
                    selected.noteFlags(message)
                body = fetching.renderItems(items, message, message.flags, selected.isRecent(message), data, structure)
                pending.append(b"* %d FETCH %s\r\n" % (selected.sequence(message), body))
                size += len(body)
                if size >= CHUNK:
                    self.transport.write(b"".join(pending))
                    pending, size = [], 0
                    if output is not None and output.paused:
                        await output.wait()
            if pending:
                self.transport.write(b"".join(pending))
        finally:
            if output is not None:
                output.finish()
        if gone:
            return self.complete(tag, b"NO", b"Some messages were expunged meanwhile.", b"EXPUNGEISSUED", expunge=uid)
        return self.complete(tag, b"OK", b"Fetch completed.", expunge=uid)

    # STORE

    def do_STORE(self, tag, args, uid=False):
        if len(args) < 3:
            raise ParseError("Expected message set, item and flags")
        messages = self._resolve(args[0], uid)
        rest = list(args[1:])
        unchangedSince = None
        if isinstance(rest[0], list):
            modifier = rest.pop(0)
            if len(modifier) != 2 or not isAtom(modifier[0], "UNCHANGEDSINCE"):
                raise ParseError("Unknown STORE modifier")
            unchangedSince = number64(modifier[1])
            self.enabled.add("CONDSTORE")
        if len(rest) < 2 or not isinstance(rest[0], Atom):
            raise ParseError("Expected item and flags")
        item = rest[0].upper()
        silent = item.endswith(".SILENT")
        if silent:
            item = item[: -len(".SILENT")]
        if item not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise ParseError("Invalid STORE item")
        flagTokens = rest[1] if len(rest) == 2 and isinstance(rest[1], list) else rest[1:]
        flags = storableFlags(self._flagList(flagTokens))
        if self.selected.readOnly:
            return self.no(tag, b"Mailbox is read-only.", b"READ-ONLY")
        return defer.ensureDeferred(self._store(tag, messages, item, flags, silent, unchangedSince, uid))

    async def _store(self, tag, messages, item, flags, silent, unchangedSince, uid):
        selected = self.selected
        mailbox = selected.mailbox
        modified, changes, unchanged = [], [], []
        for message in messages:
            if message.uid in selected.gone:
                continue
            if unchangedSince is not None and message.modSeq > unchangedSince:
                modified.append(message.uid)
                continue
            if item == "FLAGS":
                new = flags
            elif item == "+FLAGS":
                new = message.flags | flags
            else:
                new = message.flags - flags
            if new != message.flags or unchangedSince is not None:
                changes.append((message, new))
            else:
                unchanged.append(message)
        failed = False
        if changes:
            results = await defer.DeferredList(
                [defer.maybeDeferred(mailbox.setFlags, m.uid, new) for m, new in changes], consumeErrors=True
            )
            for (ok, result) in results:
                if not ok:
                    failed = True
                    self.log.warn("imap: STORE failed for {user}: {error}", user=self.account,
                                  error=result.getErrorMessage())
        if self.closing:
            return None
        current = {m.uid: m for m in mailbox.messages()}
        condstore = "CONDSTORE" in self.enabled
        lines = []
        reported = [m for m, _ in changes] + ([] if silent else unchanged)
        reported.sort(key=lambda m: m.uid)
        for old in reported:
            message = current.get(old.uid)
            if message is None:
                continue
            selected.noteFlags(message)
            if silent and not condstore:
                continue
            items = []
            if uid:
                items.append(b"UID %d" % (message.uid,))
            if not silent:
                items.append(b"FLAGS " + fetching.formatFlags(message.flags, selected.isRecent(message)))
            if condstore:
                items.append(b"MODSEQ (%d)" % (message.modSeq,))
            lines.append(b"* %d FETCH (%s)\r\n" % (selected.sequence(message), b" ".join(items)))
        if lines:
            self.send(b"".join(lines))
        if failed:
            return self.no(tag, b"Some flags could not be stored.", b"LIMIT")
        if modified:
            numbers = modified if uid else [selected.sequence(current.get(u) or selected.messages[u]) for u in modified]
            return self.complete(tag, b"OK", b"Conditional store failed.",
                                 b"MODIFIED " + formatSequence(sorted(numbers)), expunge=uid)
        return self.complete(tag, b"OK", b"Store completed.", expunge=uid)

    # SEARCH

    def do_SEARCH(self, tag, args, uid=False):
        try:
            command = searching.parseSearchCommand(args)
        except searching.BadCharset:
            return self.no(tag, b"Unsupported charset.", b"BADCHARSET (US-ASCII UTF-8)")
        selected = self.selected
        if command.criteria.usesModSeq:
            self.enabled.add("CONDSTORE")
        messages = selected.messagesAt(range(selected.count))
        context = _SearchContext(selected, self.factory.clock.seconds())

        def run():
            matches = []
            for message in messages:
                try:
                    if command.criteria.match(message, context):
                        matches.append((context.sequence(message), message.uid, message.modSeq))
                except errors.NotFound:
                    continue
            return matches

        d = self.factory.runInThread(run) if command.criteria.needsContent else defer.succeed(run())
        d.addCallback(self._cbSearched, tag, uid, command)
        return d

    def _cbSearched(self, matches, tag, uid, command):
        if self.closing:
            return None
        self.send(searching.formatSearchResponse(tag, uid, command, matches))
        return self.complete(tag, b"OK", b"Search completed.", expunge=uid)

    # EXPUNGE

    def do_EXPUNGE(self, tag, args, uid=False):
        selected = self.selected
        restrict = None
        if uid:
            if len(args) != 1:
                raise ParseError("Expected a UID set")
            restrict = {m.uid for m in self._resolve(args[0], True)}
        elif args:
            raise ParseError("EXPUNGE takes no arguments")
        if selected.readOnly:
            return self.no(tag, b"Mailbox is read-only.", b"READ-ONLY")
        doomed = [
            m.uid for m in selected.mailbox.messages()
            if "\\Deleted" in m.flags and (restrict is None or m.uid in restrict)
        ]
        if not doomed:
            return self.complete(tag, b"OK", b"Expunge completed.")
        d = defer.maybeDeferred(selected.mailbox.expunge, doomed)
        d.addCallbacks(lambda _: self.complete(tag, b"OK", b"Expunge completed."),
                       self._noFromFailure, errbackArgs=(tag,))
        return d

    # COPY, MOVE

    def do_COPY(self, tag, args, uid=False, move=False):
        if len(args) != 2:
            raise ParseError("Expected message set and mailbox name")
        messages = self._resolve(args[0], uid)
        name = decodeName(args[1])
        if move and self.selected.readOnly:
            return self.no(tag, b"Mailbox is read-only.", b"READ-ONLY")
        return defer.ensureDeferred(self._copy(tag, messages, name, uid, move))

    def do_MOVE(self, tag, args, uid=False):
        return self.do_COPY(tag, args, uid, move=True)

    async def _copy(self, tag, messages, name, uid, move):
        selected = self.selected
        try:
            target = await self._storeCall(self.factory.store.openMailbox, name)
        except errors.NotFound:
            return self.no(tag, b"Mailbox doesn't exist.", b"TRYCREATE")
        except Exception:
            return self._noFromFailure(Failure(), tag)
        pairs = []
        try:
            for message in messages:
                if message.uid in selected.gone:
                    continue
                data = await self.factory.runInThread(fetching.readMessage, message)
                newUid = await defer.maybeDeferred(
                    target.append, data, message.flags, message.internalDate
                )
                pairs.append((message.uid, newUid))
        except Exception:
            return self._noFromFailure(Failure(), tag)
        if self.closing:
            return None
        if target.name == selected.mailbox.name:
            selected.dirty = True
        if not pairs:
            return self.complete(tag, b"OK", b"No messages found.", expunge=uid or move)
        # Messages are copied in UID order and get ascending UIDs, so both
        # sets list them in the same order (RFC 4315 section 3).
        code = b"COPYUID %d %s %s" % (
            target.uidValidity,
            formatSequence([p[0] for p in pairs]),
            formatSequence([p[1] for p in pairs]),
        )
        if not move:
            return self.complete(tag, b"OK", b"Copy completed.", code, expunge=uid)
        self.send(b"* OK [" + code + b"] Moved UIDs.\r\n")
        try:
            await defer.maybeDeferred(selected.mailbox.expunge, [p[0] for p in pairs])
        except Exception:
            return self._noFromFailure(Failure(), tag)
        return self.complete(tag, b"OK", b"Move completed.")



IMAP4Factory.protocol = IMAP4Server
