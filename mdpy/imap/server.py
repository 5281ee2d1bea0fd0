# -*- test-case-name: tests.test_imap_server -*-
"""
The IMAP4rev1 and IMAP4rev2 server of ports 143 (STARTTLS) and 993 (implicit TLS).

Standards: RFC 3501 (IMAP4rev1), RFC 9051 (IMAP4rev2, L{mdpy.imap.revision}),
RFC 2177 (IDLE), RFC 4315 (UIDPLUS),
RFC 6851 (MOVE), RFC 2342 (NAMESPACE), RFC 2971 (ID), RFC 5161 (ENABLE),
RFC 3691 (UNSELECT), RFC 3348 (CHILDREN), RFC 5258 (LIST-EXTENDED),
RFC 5819 (LIST-STATUS), RFC 6154 (SPECIAL-USE), RFC 7888 (LITERAL+),
RFC 4959 (SASL-IR), RFC 4731 (ESEARCH), RFC 5182 (SEARCHRES),
RFC 7162 (CONDSTORE, QRESYNC: L{mdpy.imap.resync}),
RFC 7889 (APPENDLIMIT), RFC 5530 (response codes), RFC 8314 (implicit TLS),
RFC 5256 (SORT, THREAD), RFC 5267 (ESORT; CONTEXT=SEARCH and CONTEXT=SORT,
L{mdpy.imap.contexts}), RFC 9394 (PARTIAL results), RFC 5957 (SORT=DISPLAY),
RFC 3502 (MULTIAPPEND), RFC 4469 (CATENATE), RFC 3516 (BINARY),
RFC 4978 (COMPRESS=DEFLATE, L{mdpy.imap.compress}), RFC 6855 (UTF8=ACCEPT),
RFC 5465 (NOTIFY, L{mdpy.imap.notify}).

Commands are C{do_VERB(tag, arguments)} methods taking the parsed tokens
(L{mdpy.imap.parser}); which verbs each state accepts is in L{_COMMANDS}.
Each command ends through L{IMAP4Server.complete}, which first sends what
the selected mailbox's view owes the client (L{mdpy.imap.selected}).

Invariants (besides those of L{mdpy.session}):
 - Passwords are taken only over TLS unless the listener allows plaintext
   (C{LOGINDISABLED} is advertised before).
 - A literal's size is checked against its limits before the C{+}
   continuation is sent; a literal too large for a non-synchronising
   marker is read and thrown away as it arrives, never buffered.
 - A literal past L{mdpy.imap.literals.SPOOL_THRESHOLD} goes to a spool
   file as it arrives and is stored from there, never held in memory
   whole; the literal octets an account has under way are bounded over
   all its connections (L{mdpy.imap.literals.PendingLiterals}).
 - A tagged C{OK} to APPEND, COPY, MOVE, STORE and EXPUNGE is sent only
   once the store has made the change durable.
 - A logged-in session runs a command only while its account is the one it
   logged in to, enabled (L{CommandSession.accountRemains}); else it ends
   with C{BYE} and never reaches an account made again under the address.
"""

from bisect import bisect_right

from twisted.cred import error as credError
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer

from mdpy import __version__ as VERSION
from mdpy import errors
from mdpy.auth import sasl
from mdpy.imap import fetch as fetching
from mdpy.imap.append import AppendCommands
from mdpy.imap.literals import CommandInput, PendingLiterals
from mdpy.imap.compress import DeflateTransport
from mdpy.imap.contexts import CAPABILITIES as CONTEXT_CAPABILITIES, ContextCommands
from mdpy.imap.mailboxes import InvalidName, MailboxCommands, decodeName
from mdpy.imap.messages import MessageCommands
from mdpy.imap.notify import NotifyCommands
from mdpy.imap import resync as resyncing
from mdpy.imap.quota import QuotaCommands
from mdpy.imap.revision import EnableCommands
from mdpy.imap import sort as sorting
from mdpy.imap.sorting import CAPABILITIES as SORT_CAPABILITIES, SortCommands
from mdpy.imap.structure import quoteString
from mdpy.imap.parser import Atom, ParseError, astring, isAtom, tokenize
from mdpy.imap.selected import SYSTEM_FLAGS, SelectedMailbox, UidValidityChanged, recentAmong
from mdpy.session import CommandSession, SessionFactory
from mdpy.mailbox import DELETED

NOT_AUTHENTICATED = "not authenticated"
AUTHENTICATED = "authenticated"
SELECTED = "selected"

_SYSTEM_FLAGS_LOWER = {flag.lower() for flag in SYSTEM_FLAGS}

_ANY = {"CAPABILITY", "NOOP", "LOGOUT", "ID"}
_AUTH = _ANY | {
    "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
    "LIST", "LSUB", "STATUS", "APPEND", "NAMESPACE", "ENABLE", "IDLE", "COMPRESS",
    "GETQUOTAROOT", "GETQUOTA", "SETQUOTA", "NOTIFY",
}
# Commands that open, make or change a mailbox by name, and polls: the
# account is asked for afresh (see CommandSession.accountRemains); the others
# may go on from an answer up to a second old, as they touch only the mailbox
# selected already.
_FRESH_CHECK = {
    "SELECT", "EXAMINE", "STATUS", "APPEND", "LIST", "LSUB", "CREATE", "DELETE", "RENAME",
    "SUBSCRIBE", "UNSUBSCRIBE", "COPY", "MOVE", "NOOP", "CHECK", "IDLE",
}
_COMMANDS = {
    NOT_AUTHENTICATED: _ANY | {"STARTTLS", "AUTHENTICATE", "LOGIN"},
    AUTHENTICATED: _AUTH,
    SELECTED: _AUTH | {
        "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID",
        "SORT", "THREAD", "CANCELUPDATE",
    },
}


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
    if failure.check(errors.QuotaExceeded, errors.LargerThanQuota):
        return b"OVERQUOTA", b"Quota exceeded."
    if failure.check(errors.TooBig):
        return b"TOOBIG", b"Message too large."
    if failure.check(errors.LimitExceeded):
        return b"LIMIT", b"Beyond a limit of this server."
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
    @ivar maxPendingLiterals: the literal octets one account may have
        under way at once, over all its connections.
    @ivar pendingLiterals: the L{PendingLiterals} (shared by listeners).
    @ivar spoolDir: where large literals are spooled; L{None}: the system's
        temporary folder.
    @ivar structures: the L{fetching.StructureCache} (shared by listeners).
    @ivar sortFields: the L{sorting.SortFieldCache} (shared by listeners).
    @ivar idleKeepAlive: seconds between C{* OK Still here} while idling.
    @ivar idlePoll: seconds between checks for changes made by other
        programs while idling.
    @ivar changeFeed: the L{mdpy.interfaces.IChangeFeed} a session
        subscribes its selected folder to; L{None}: the session listens to
        the store (L{mdpy.interfaces.IMailStore.addListener}).
    @ivar quotas: the L{mdpy.quota.QuotaPolicy} of the accounts (IMAP
        QUOTA, RFC 9208), or L{None} for none.
    """

    def __init__(
        self,
        hostname,
        store,
        allowPlaintext=False,
        maxMessageSize=50 * 1024 * 1024,
        maxPendingLiterals=256 * 1024 * 1024,
        pendingLiterals=None,
        spoolDir=None,
        structures=None,
        sortFields=None,
        idleKeepAlive=120,
        idlePoll=30,
        changeFeed=None,
        quotas=None,
        maxErrors=20,
        timeout=1800,
        **kwargs,
    ):
        SessionFactory.__init__(self, hostname, maxErrors=maxErrors, timeout=timeout, **kwargs)
        self.store = store
        self.allowPlaintext = allowPlaintext
        self.maxMessageSize = maxMessageSize
        self.maxPendingLiterals = maxPendingLiterals
        self.pendingLiterals = PendingLiterals() if pendingLiterals is None else pendingLiterals
        self.spoolDir = spoolDir
        self.structures = fetching.StructureCache() if structures is None else structures
        self.sortFields = sorting.SortFieldCache() if sortFields is None else sortFields
        self.idleKeepAlive = idleKeepAlive
        self.idlePoll = idlePoll
        self.changeFeed = changeFeed
        self.quotas = quotas


class IMAP4Server(CommandInput, MailboxCommands, MessageCommands, SortCommands, AppendCommands,
                  ContextCommands, QuotaCommands, EnableCommands, NotifyCommands, CommandSession):
    """
    One IMAP session.

    Hooks for a subclass (stable names; set it as the C{protocol} of an
    L{IMAP4Factory} subclass and name that in C{[imap] factory =
    package.module:Class}, or C{[imaps]}):

     - C{commands}: the command table, C{{state: set of verbs}}, for the
       states L{NOT_AUTHENTICATED}, L{AUTHENTICATED} and L{SELECTED}; a
       verb not in the set of the current state gets C{BAD}.
     - C{do_VERB(self, tag, args)}: the command C{VERB}, its arguments
       parsed (atoms, strings, literals, lists).  Answer with
       C{self.untagged(data)} and C{self.complete(tag, b"OK", text)} (or
       C{self.no(tag, text)}, C{self.bad(tag, text)}); return L{None} or a
       L{Deferred}.
     - C{capabilities(self)}: the CAPABILITY list now, as L{bytes}.

    A command needs all three; for example C{XHELLO} in every state::

        class Greeter(IMAP4Server):
            commands = {state: verbs | {"XHELLO"} for state, verbs in IMAP4Server.commands.items()}

            def capabilities(self):
                return IMAP4Server.capabilities(self) + b" XHELLO"

            def do_XHELLO(self, tag, args):
                self.untagged(b"XHELLO hello")
                return self.complete(tag, b"OK", b"XHELLO completed.")

        class GreeterFactory(IMAP4Factory):
            protocol = Greeter

    @ivar state: L{NOT_AUTHENTICATED}, L{AUTHENTICATED} or L{SELECTED}.
    @ivar account: the account logged in, or L{None}.
    @ivar selected: the L{SelectedMailbox}, or L{None}.
    @ivar enabled: the extensions the client ENABLEd (L{EnableCommands}).
    """

    service = "imap"
    maxLineLength = 65536
    commands = _COMMANDS
    mechanisms = sasl.MECHANISMS

    def __init__(self):
        CommandSession.__init__(self)
        CommandInput.__init__(self)
        self.state = NOT_AUTHENTICATED
        self.account = None
        self.selected = None
        self.enabled = set()
        self._tag = b"*"
        self._idleTag = None
        self._idleCalls = []
        self._pushing = False
        self._listening = False
        self._subscription = None
        self._deflate = None

    # --- CommandSession -----------------------------------------------------

    def greet(self):
        self.send(b"* OK [CAPABILITY " + self.capabilities() + b"] mdpy ready.\r\n")

    def refuse(self):
        self.send(b"* BYE [UNAVAILABLE] Too many connections.\r\n")

    def lineTooLong(self):
        self._dropCommand()
        self.send(b"* BAD [TOOBIG] Command line too long.\r\n")
        self._countError()

    def internalError(self):
        self.send(self._tag + b" NO [SERVERBUG] Internal error occurred. Refer to server log for more information.\r\n")

    def timeoutConnection(self):
        self.log.info("imap: timeout in {state} from {ip}", state=self.state, ip=self._ip)
        self.send(b"* BYE Disconnected for inactivity.\r\n")
        self.close()

    def dataReceived(self, data):
        if self._deflate is not None:
            self._deflate.receive(data)
        else:
            CommandSession.dataReceived(self, data)

    def connectionLost(self, reason=None):
        CommandSession.connectionLost(self, reason)
        if self._deflate is not None:
            self._deflate.stop()
        self._stopIdleTimers()
        self.dropInput()
        self._unsubscribe()
        self._stopNotify()
        if self._listening:
            self._listening = False
            self.factory.store.removeListener(self.account, self._mailboxChanged)

    # --- output -------------------------------------------------------------

    def capabilities(self):
        """
        @return: the capability list for the current state, as L{bytes}.
        """
        caps = [b"IMAP4rev1", b"IMAP4rev2", b"SASL-IR", b"LITERAL+", b"ID", b"ENABLE", b"IDLE"]
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
                b"LIST-STATUS", b"SPECIAL-USE", b"ESEARCH", b"SEARCHRES", b"CONDSTORE", b"QRESYNC",
                b"MULTIAPPEND", b"CATENATE", b"BINARY",
                b"APPENDLIMIT=%d" % (self.factory.maxMessageSize,), b"COMPRESS=DEFLATE", b"UTF8=ACCEPT",
                b"NOTIFY",
            ])
            caps.extend(SORT_CAPABILITIES)
            caps.extend(CONTEXT_CAPABILITIES)
            caps.extend(self.quotaCapabilities())
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

    def no(self, tag, text, code=None, expunge=True):
        """
        Answer C{NO} (after the updates the view owes).

        @param expunge: see L{complete}.
        """
        return self.complete(tag, b"NO", text, code, expunge)

    def complete(self, tag, status, text, code=None, expunge=True, responses=b""):
        """
        End a command: send the untagged updates of the selected mailbox,
        then the tagged reply.

        @param expunge: whether EXPUNGE responses may be sent (not after
            FETCH, STORE or SEARCH by sequence number, RFC 3501 7.4.1).
        @param responses: the command's own untagged responses, sent first;
            with the rest in one write unless the view is synced in the
            thread pool first (every write to a socket wakes the client).
        @return: L{None}, or a Deferred when the mailbox is synced first.
        """
        with self.coalesced():
            if responses:
                self.send(responses)
            return self._complete(tag, status, text, code, expunge)

    def _complete(self, tag, status, text, code, expunge):
        if isinstance(text, str):
            text = text.encode("utf-8")
        selected = self.selected
        if selected is None or self.closing:
            self._reply(tag, status, text, code)
            return None
        if selected.dirty:
            d = defer.maybeDeferred(selected.mailbox.sync)
            d.addErrback(self._ebSync)
            d.addCallback(self.prepareContexts)
            d.addCallback(lambda _: self._finish(tag, status, text, code, expunge))
            return d
        self._finish(tag, status, text, code, expunge)
        return None

    def accountLost(self, reason):
        """
        See L{CommandSession.accountLost}: C{BYE} (RFC 3501 section 7.1.5).
        """
        if isinstance(reason, errors.Disabled):
            self.send(b"* BYE Account disabled.\r\n")
        else:
            self.send(b"* BYE Account no longer exists.\r\n")

    def _ebSync(self, failure):
        mailbox = getattr(self.selected, "mailbox", None)
        if failure.check(errors.NotFound):
            # The selected folder was deleted under the session, or the
            # whole account by the administrator: end the session (RFC
            # 3501 section 7.1.5) rather than serve a view of nothing.
            self.log.info("imap: {mailbox} of {user} is gone; session closed",
                          mailbox=mailbox, user=self.account)
            if not self.closing:
                self.send(b"* BYE Selected mailbox no longer exists.\r\n")
                self.close()
            return
        self.log.failure("imap: cannot sync {mailbox} of {user}", failure,
                         mailbox=mailbox, user=self.account)

    def _finish(self, tag, status, text, code, expunge):
        if self.closing:
            return
        with self.coalesced():
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
        before = list(selected.uids) if self._liveContexts() is not None else None
        largest = selected.largestUid
        try:
            lines = selected.updates(
                expunge,
                self._recentAmong,
                modSeqs="CONDSTORE" in self.enabled,
                vanished="QRESYNC" in self.enabled,
            )
        except UidValidityChanged:
            self.send(b"* BYE [UIDVALIDITY] Mailbox UIDVALIDITY changed.\r\n")
            self.close()
            return
        lines = self.withContextUpdates(before, lines)
        if lines:
            self.send(b"".join(lines))
        if self.notification is not None and selected.largestUid > largest:
            self.newMessagesFetched(selected, selected.uids[bisect_right(selected.uids, largest):])

    def _recentAmong(self, uids):
        selected = self.selected
        return recentAmong(selected.mailbox, selected.readOnly, uids)

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
        # What an error names: UID with the command it carries.
        named = verb
        if verb == "UID" and len(tokens) > 2 and isinstance(tokens[2], Atom):
            named = "UID " + tokens[2].upper()
        if self.state != NOT_AUTHENTICATED and verb != "LOGOUT":
            fresh = verb in _FRESH_CHECK or verb == "UID" and named[4:] in _FRESH_CHECK
            if not self.accountRemains(self.account, fresh):
                return None
        self.commandStarted()
        try:
            result = getattr(self, "do_" + verb)(tag, tokens[2:])
        except ParseError as e:
            result = self.bad(tag, "Error in IMAP command %s: %s." % (named, e))
        except BaseException:
            self.commandEnded()
            raise
        if isinstance(result, defer.Deferred):
            return result.addBoth(self._commandEnded)
        self.commandEnded()
        return result

    def _commandEnded(self, result):
        self.commandEnded()
        return result

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
        if self.factory.changeFeed is None:
            self.factory.store.addListener(account, self._mailboxChanged)
            self._listening = True
        self._reply(self._authTag, b"OK", b"Logged in.", b"CAPABILITY " + self.capabilities())
        return None

    # --- authenticated -------------------------------------------------------

    def _storeCall(self, f, *args):
        """
        Call a store method for the logged-in account.

        @return: a L{Deferred} of its result.
        """
        return defer.maybeDeferred(f, self.account, *args)

    def _noFromFailure(self, failure, tag, expunge=True):
        """
        Answer C{NO} for a store failure (logged).

        @param expunge: see L{complete}.
        """
        if self.closing:
            return None
        if not failure.check(errors.MailError):
            self.log.failure("imap: store failure for {user}", failure, user=self.account)
        elif failure.check(errors.TemporaryFailure):
            self.log.warn("imap: {user}: {error}", user=self.account, error=failure.getErrorMessage())
        code, text = _codeFor(failure)
        return self.no(tag, text, code, expunge)

    def _simpleMailboxCommand(self, tag, call, okText):
        d = call
        d.addCallbacks(lambda _: self.complete(tag, b"OK", okText), self._noFromFailure, errbackArgs=(tag,))
        return d

    def do_NAMESPACE(self, tag, args):
        self.untagged(b'NAMESPACE (("" "/")) NIL NIL')
        return self.complete(tag, b"OK", b"Namespace completed.")

    def do_COMPRESS(self, tag, args):
        """
        RFC 4978 section 3: compress both directions from after the tagged
        C{OK} on; once only.
        """
        if len(args) != 1 or not isinstance(args[0], Atom):
            raise ParseError("Expected a compression mechanism")
        if self._deflate is not None:
            return self.no(tag, b"DEFLATE active via COMPRESS.", b"COMPRESSIONACTIVE")
        if args[0].upper() != "DEFLATE":
            return self.no(tag, b"Unknown compression mechanism.")
        self._reply(tag, b"OK", b"DEFLATE active.")
        self._deflate = DeflateTransport(
            self.transport,
            lambda data: CommandSession.dataReceived(self, data),
            self._compressedInputCorrupt,
            self.callLater,
            received=self.takeBuffered(),
        )
        self.transport = self._deflate
        return None

    def _compressedInputCorrupt(self):
        self.log.info("imap: invalid compressed data from {ip}", ip=self._ip)
        self.send(b"* BYE Invalid compressed data.\r\n")
        self.close()

    # SELECT, EXAMINE, CLOSE, UNSELECT

    def _deselect(self):
        self._unsubscribe()
        self.selected = None
        self.state = AUTHENTICATED

    def _unsubscribe(self):
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None

    def do_SELECT(self, tag, args, readOnly=False):
        if not args or len(args) > 2:
            raise ParseError("Expected a mailbox name")
        try:
            name = decodeName(args[0], self.utf8)
        except InvalidName:
            # A mailbox with that name cannot exist (answered as Dovecot
            # does, rather than as a syntax error).
            self._closeForSelect()
            return self.no(tag, b"Mailbox doesn't exist.", b"NONEXISTENT")
        condstore, resync = False, None
        if len(args) == 2:
            condstore, resync = resyncing.parseSelectParameters(args[1])
            if resync is not None and "QRESYNC" not in self.enabled:
                raise ParseError("QRESYNC must be enabled first")  # RFC 7162 section 3.2.5
        self._closeForSelect()
        if condstore:
            self.enabled.add("CONDSTORE")
        d = self._storeCall(self.factory.store.openMailbox, name)
        if self.rev2:
            d.addCallback(self.listSelected)
        elif not readOnly:
            d.addCallback(self._claimRecent)
        d.addCallbacks(self._cbSelected, self._ebSelect, callbackArgs=(tag, readOnly, resync), errbackArgs=(tag,))
        return d

    def _claimRecent(self, mailbox):
        """
        Claim for this session the messages no session was told of yet:
        they are C{\\Recent} to it alone (RFC 3501 section 2.3.2), and so
        are those its view takes in later.

        @return: a L{Deferred} firing with C{mailbox}.
        """
        d = defer.maybeDeferred(mailbox.claimRecent)
        return d.addCallback(lambda _: mailbox)

    def _closeForSelect(self):
        """
        Close the selected mailbox for a SELECT or EXAMINE, saying so with
        C{OK [CLOSED]} once QRESYNC or IMAP4rev2 is enabled (RFC 7162
        section 3.2.11, RFC 9051 section 6.3.2): the responses after it are
        of the mailbox selected next.
        """
        if self.selected is not None and ("QRESYNC" in self.enabled or self.rev2):
            self.send(b"* OK [CLOSED] Previous mailbox closed.\r\n")
        self._deselect()

    def do_EXAMINE(self, tag, args):
        return self.do_SELECT(tag, args, readOnly=True)

    def _ebSelect(self, failure, tag):
        return self._noFromFailure(failure, tag)

    def _cbSelected(self, mailbox, tag, readOnly, resync=None):
        if self.closing:
            return None
        recent = () if self.rev2 else recentAmong(mailbox, readOnly, [m.uid for m in mailbox.messages()])
        selected = SelectedMailbox(mailbox, readOnly, recent, reportsRecent=not self.rev2)
        lines = [selected.flagsResponses(), b"* %d EXISTS\r\n" % (selected.count,)]
        if selected.reportsRecent:
            lines.append(b"* %d RECENT\r\n" % (len(selected.recent),))
        unseen = selected.firstUnseen()
        if unseen is not None:
            lines.append(b"* OK [UNSEEN %d] First unseen.\r\n" % (unseen,))
        lines.append(b"* OK [UIDVALIDITY %d] UIDs valid.\r\n" % (mailbox.uidValidity,))
        lines.append(b"* OK [UIDNEXT %d] Predicted next UID.\r\n" % (mailbox.uidNext,))
        # RFC 7162 section 7: at least 1, also for a mailbox never changed.
        lines.append(b"* OK [HIGHESTMODSEQ %d] Highest.\r\n" % (max(1, mailbox.highestModSeq),))
        self.send(b"".join(lines))
        self.selected = selected
        self.state = SELECTED
        if self.factory.changeFeed is not None:
            self._subscription = self.factory.changeFeed.subscribe(
                self.account, mailbox.name, self._mailboxChanged
            )
        code = b"READ-ONLY" if readOnly else b"READ-WRITE"
        text = b"Select completed." if not readOnly else b"Examine completed."
        if resync is None or resync.uidValidity != mailbox.uidValidity:
            # RFC 7162 section 3.2.5.2: another UIDVALIDITY, a full resync.
            self._reply(tag, b"OK", text, code)
            return None
        d = defer.maybeDeferred(mailbox.expungedSince, resync.modSeq)
        d.addErrback(self._ebExpungedSince)
        d.addCallback(self._cbResync, selected, resync, tag, text, code)
        return d

    def _ebExpungedSince(self, failure):
        self.log.failure("imap: no expunge history of {mailbox} for {user}", failure,
                         mailbox=getattr(self.selected, "mailbox", None), user=self.account)
        return None  # as if the history did not go back far enough

    def _cbResync(self, removed, selected, resync, tag, text, code):
        if self.closing:
            return None
        if self.selected is selected:
            self.send(resyncing.resyncResponses(selected, resync, removed))
        self._reply(tag, b"OK", text, code)
        return None

    def do_CLOSE(self, tag, args):
        selected = self.selected
        self._deselect()
        if selected.readOnly:
            return self.complete(tag, b"OK", b"Close completed.")
        doomed = [m.uid for m in selected.mailbox.messages() if DELETED in m.flags]
        if not doomed:
            return self.complete(tag, b"OK", b"Close completed.")
        d = defer.maybeDeferred(selected.mailbox.expunge, doomed, deletedOnly=True)
        d.addCallbacks(lambda _: self.complete(tag, b"OK", b"Close completed."),
                       self._noFromFailure, errbackArgs=(tag,))
        return d

    def do_UNSELECT(self, tag, args):
        self._deselect()
        return self.complete(tag, b"OK", b"Unselect completed.")

    # APPEND

    def _ebTryCreate(self, failure):
        failure.trap(errors.NotFound)
        raise _TryCreate()

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
        if self._idleTag is None or self.closing or not self.accountRemains(self.account, fresh=True):
            return
        if self.selected is not None:
            self.selected.dirty = True
            self._pushUpdates()
        self._idleCalls[1] = self.factory.clock.callLater(self.factory.idlePoll, self._idlePoll)

    def _mailboxChanged(self, account, folder):
        selected = self.selected
        if selected is None or folder != selected.mailbox.name:
            self._notifyHeard(account, folder)
            return
        selected.dirty = True
        # A change of a new account made under the same address is reported
        # to the listeners of that address too.
        if self._idleTag is not None and self.accountRemains(self.account, fresh=True):
            self._pushUpdates()
        elif self.notifiesSelected():
            self.flushNotifications()

    def _pushUpdates(self):
        """
        Sync and send updates while idling, or between commands when NOTIFY
        asked for the selected mailbox's (several notifications while one
        sync runs make one more sync).
        """
        if self._pushing:
            return
        self._pushing = True
        selected = self.selected
        d = defer.maybeDeferred(selected.mailbox.sync)
        d.addErrback(self._ebSync)
        d.addCallback(self.prepareContexts)

        def push(_):
            self._pushing = False
            idling = self._idleTag is not None
            if self.selected is not selected or self.closing or not (
                idling or self.notifiesSelected() and not self._commandRunning
            ):
                return
            # RFC 5465 section 5.2: no EXPUNGE outside a command with
            # SELECTED-DELAYED.
            self.sendUpdates(expunge=idling or not self.notification.delayed)
            if selected.dirty:
                self._pushUpdates()

        d.addCallback(push)


IMAP4Factory.protocol = IMAP4Server
