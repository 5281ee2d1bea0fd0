# -*- test-case-name: tests.test_checkers -*-
"""
The C{twisted.cred} pieces every protocol shares: a checker over an
L{IDirectory}, a realm whose avatar is the account address, and a tracker of
failed logins that slows down and bans password guessers.
"""

import hashlib
import hmac
import os
from collections import OrderedDict, deque

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import implementer

from mdpy.address import normalise
from mdpy.auth import IAccount
from mdpy.auth.accounts import Account
from mdpy.auth.passwords import verifyCramMD5, verifyPassword
from mdpy.backends.local import LoginFailures
from mdpy.errors import InvalidInput, MailError
from mdpy.logs import Logger

# Verified when the user is unknown (or has no password), so that a failed
# login costs the same scrypt time whether or not the account exists.
_DUMMY_HASH = (
    "$scrypt$ln=14,r=8,p=1$NABL4xN/Biy/byrJEvB2YA"
    "$X3Ujo6TQeMOrQ+L8W4aCO9ka84zdbdXCNympdXb4B7A"
)
_DUMMY_CRAM_MD5 = "00" * 32


def _username(username):
    """
    @return: the normalised address of a login name given as L{bytes} (UTF-8)
        or L{str}, or L{None} if it is not a valid address.
    """
    try:
        if isinstance(username, bytes):
            username = username.decode("utf-8")
        if not isinstance(username, str):
            return None
        return normalise(username)
    except (UnicodeDecodeError, InvalidInput):
        return None


@implementer(ICredentialsChecker)
class DirectoryChecker:
    """
    Check logins against an L{IDirectory}.

    Plain passwords (C{IUsernamePassword}: PLAIN, LOGIN, USER/PASS) are
    verified against the scrypt hash; CRAM-MD5 (L{CramMD5Credentials}, an
    C{IUsernameHashedPassword} with C{challenge} and C{response}) against the
    stored HMAC-MD5 states.  Other hashed credentials (APOP) always fail; see
    L{mdpy.auth.passwords}.

    Unknown user, disabled user and wrong password all fail with the same
    L{UnauthorizedLogin}, after the same amount of work.

    @ivar directory: the L{IDirectory}.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    cacheSize = 10000

    def __init__(self, directory, runInThread=None):
        """
        @param directory: an L{IDirectory}.
        @param runInThread: C{runInThread(f, *args)} runs the scrypt
            verification away from the reactor thread and returns a
            L{Deferred} (or the value): the server passes its backend's
            L{mdpy.interfaces.IBackend.runBlocking}.  Default: at once, on
            the calling thread.
        """
        self.directory = directory
        self._runInThread = runInThread or defer.maybeDeferred
        # scrypt takes 16 MiB and a core for ~50 ms: at most one run per
        # core at a time (a burst of logins must not fill the thread pool
        # and the heap), and one run for identical logins that arrive
        # together (a client opening ten connections at once).
        self._hashing = defer.DeferredSemaphore(os.cpu_count() or 2)
        self._inFlight = {}
        # Successful verifications, as Dovecot's auth cache keeps them: a
        # keyed digest of user and password maps to the stored hash it was
        # verified against.  A phone polling every few minutes then costs one
        # scrypt run, not one per login; a changed password (another stored
        # hash) misses the cache.  Nothing here helps a guesser: a key is
        # only found with the right password.
        self._cacheKey = os.urandom(32)
        self._verified = OrderedDict()

    def requestAvatarId(self, credentials):
        """
        See L{ICredentialsChecker.requestAvatarId}.

        @return: a L{Deferred} firing with the normalised address of the
            account (an L{Account}, with the id of the account the
            credentials belong to), or failing with L{UnauthorizedLogin}; a
            directory failure
            (L{mdpy.errors.TemporaryFailure}) is passed on as it is.
        """
        try:
            address = _username(getattr(credentials, "username", None))
            secrets = None
            if address is not None:
                secrets = self.directory.getSecrets(address)
            if secrets is not None:
                address = Account(address, secrets.get("account-id"))
            if IUsernamePassword.providedBy(credentials):
                return self._checkPassword(address, secrets, credentials.password)
            challenge = getattr(credentials, "challenge", None)
            response = getattr(credentials, "response", None)
            if challenge is not None and response is not None:
                return self._checkCramMD5(address, secrets, challenge, response)
            return defer.fail(UnauthorizedLogin("unsupported credentials"))
        except Exception:
            return defer.fail()

    def _checkPassword(self, address, secrets, password):
        stored = secrets and secrets.get("password")
        if isinstance(password, str):
            password = password.encode("utf-8")
        key = hmac.new(
            self._cacheKey, (address or "").encode("utf-8") + b"\0" + password, hashlib.sha256
        ).digest()
        if stored and self._verified.get(key) == stored:
            self._verified.move_to_end(key)
            return defer.succeed(address)

        def _cbVerified(matches):
            if matches and stored:
                self._verified[key] = stored
                if len(self._verified) > self.cacheSize:
                    self._verified.popitem(last=False)
                return address
            raise UnauthorizedLogin("bad login")

        pending = self._inFlight.get(key)
        if pending is not None and pending[0] == stored:
            waiter = defer.Deferred()
            pending[1].append(waiter)
            return waiter.addCallback(_cbVerified)
        waiters = []
        self._inFlight[key] = (stored, waiters)

        def share(result):
            if self._inFlight.get(key, (None, None))[1] is waiters:
                del self._inFlight[key]
            for waiter in waiters:
                waiter.callback(result)
            return result

        d = self._hashing.run(
            lambda: defer.maybeDeferred(self._runInThread, verifyPassword, password, stored or _DUMMY_HASH)
        )
        return d.addCallback(share).addCallback(_cbVerified)

    def _checkCramMD5(self, address, secrets, challenge, response):
        secret = secrets and secrets.get("cram-md5")
        matches = verifyCramMD5(secret or _DUMMY_CRAM_MD5, challenge, response)
        if matches and secret:
            return defer.succeed(address)
        return defer.fail(UnauthorizedLogin("bad login"))


@implementer(IRealm)
class Realm:
    """
    The avatar of a login is its account address (an L{Account}), for
    L{IAccount}.
    """

    def requestAvatar(self, avatarId, mind, *interfaces):
        """
        See L{IRealm.requestAvatar}.
        """
        if IAccount in interfaces:
            return IAccount, avatarId, lambda: None
        raise NotImplementedError("only IAccount avatars: %r" % (interfaces,))


def makePortal(directory, runInThread=None):
    """
    @param directory: an L{IDirectory}.
    @param runInThread: see L{DirectoryChecker.__init__}.
    @return: a L{Portal} over a L{Realm} with a L{DirectoryChecker}.
    """
    return Portal(Realm(), [DirectoryChecker(directory, runInThread)])


def accountName(username):
    """
    @param username: a login name as the client gave it (L{bytes} in UTF-8
        or L{str}).
    @return: the name its failed logins are counted under: the normalised
        address, or the name lowercased when it is no address (an ODMR
        gateway domain).
    """
    address = _username(username)
    if address is not None:
        return address
    if isinstance(username, bytes):
        username = username.decode("utf-8", "replace")
    return (username or "").strip().lower()


class LoginRefused(UnauthorizedLogin):
    """
    L{FailedLoginTracker.start} refused a login without checking it.

    @ivar why: for the log: L{BANNED_ADDRESS} or L{LIMITED_ACCOUNT}.
    """

    def __init__(self, why):
        UnauthorizedLogin.__init__(self, why)
        self.why = why


BANNED_ADDRESS = "too many failed logins from this address"
LIMITED_ACCOUNT = "too many failed logins for this account"
UNCOUNTED = "the failed logins cannot be read"


class _FailureTable:
    """
    Failures per key (a client address, an account) within a sliding
    window: the policy of one table of the backend's counts
    (L{mdpy.interfaces.ILoginFailures}), which every process sharing the
    backend sees.  A key keeps at most C{maxEvents} failures, the table at
    most C{maxKeys} keys (the longest quiet go first), and a failure older
    than C{window} seconds is forgotten.

    A failure is C{(time, source, tag)}: C{source} is what L{forget}
    removes by, C{tag} (L{bytes}) what makes a repeat count once (L{None}:
    never a repeat).
    """

    def __init__(self, failures, name, clock, window, maxKeys, maxEvents):
        self.failures = failures
        self.name = name
        self.clock = clock
        self.window = window
        self.maxKeys = maxKeys
        self.maxEvents = maxEvents

    def __len__(self):
        return self.failures.keys(self.name, self.clock.seconds() - self.window)

    def recent(self, key, now):
        """
        @return: the failures of C{key} within the window, as a sequence of
            C{(time, source, tag)}.
        """
        return self.failures.recent(self.name, key, now - self.window)

    def record(self, key, source, tag, now):
        """
        Count a failure of C{key}, unless C{tag} is one of its recent ones.

        @return: whether it was counted.
        """
        return self.failures.record(self.name, key, source, tag, now, now - self.window,
                                    self.maxEvents, self.maxKeys)

    def forget(self, key, source):
        """
        Forget the failures of C{key} that came from C{source}.
        """
        self.failures.forget(self.name, key, source)


def _addressTag(account, passwordDigest):
    """
    @return: the tag of a failure of a client address: the account and the
        password tried.
    """
    return account.encode("utf-8", "surrogatepass") + b"\0" + passwordDigest


# The tag of the one event of the table of limited accounts while the limit
# lasts.
_LIMITED = b"limited"


class LoginAttempt:
    """
    A login whose credentials are being checked.  Its L{FailedLoginTracker}
    counts it as a failure, of its client address and of its account, until
    it ends with L{succeeded}, L{failed} or L{abandoned} (only the first of
    them counts).

    @ivar clientAddress: the client's IP address.
    @ivar account: the L{accountName} tried.
    """

    def __init__(self, tracker, clientAddress, account, passwordDigest):
        self.tracker = tracker
        self.clientAddress = clientAddress
        self.account = account
        self.passwordDigest = passwordDigest
        # What makes a concurrent login the same guess: the same account
        # and password from one address, the same password for one account.
        # Without a digest every attempt is a guess of its own.
        unique = passwordDigest is None
        self.addressTag = self if unique else _addressTag(account, passwordDigest)
        self.accountTag = self if unique else passwordDigest
        self._ended = False

    def succeeded(self):
        """
        The credentials were right: see L{FailedLoginTracker.recordSuccess}.
        """
        self._end(self.tracker.recordSuccess, self.clientAddress, self.account)

    def failed(self):
        """
        The credentials were wrong: see L{FailedLoginTracker.recordFailure}.
        """
        self._end(self.tracker.recordFailure, self.clientAddress, self.account, self.passwordDigest)

    def abandoned(self):
        """
        The credentials could not be checked (the directory failed): count
        nothing.
        """
        self._end(None)

    def _end(self, record, *args):
        if self._ended:
            return
        self._ended = True
        self.tracker._release(self)
        if record is not None:
            record(*args)
        self.tracker._admitWaiting(self.clientAddress, self.account)


class FailedLoginTracker:
    """
    Failed logins per client address and per account, shared by every
    protocol (SMTP AUTH, POP3, IMAP, ODMR), to slow down and then refuse
    password guessing however many connections the guesser opens.

    A protocol calls L{start} before checking credentials: it refuses the
    login (L{LoginRefused}) or gives a L{LoginAttempt}, which counts as a
    failure while the check runs, so parallel logins cannot get past the
    limits (those that could wait their turn); the protocol ends it with
    L{LoginAttempt.succeeded} or L{LoginAttempt.failed} and answers a
    failure after L{delayFor} seconds.

    Limits, all over the last C{window} seconds:
     - an address with C{banThreshold} distinct failures (or checks under
       way) is banned;
     - an account with C{accountThreshold} distinct failures from any
       addresses is limited for C{window} seconds: its logins are refused,
       except from addresses it has logged in from before (Dovecot's
       C{auth_penalty}, MDaemon's Dynamic Screening), so its owner keeps
       working while a password sprayer is shut out.
    As Dovecot does, a password tried again (a client retrying a stale
    password) counts once.  A success forgets the failures of that account
    from that address only.

    The failures and the limited accounts are counted in the backend's
    L{mdpy.interfaces.ILoginFailures}, so every process sharing it applies
    the limits to the guesses made at any of them.  Three things stay in
    this process: the checks under way (a login waits for those of its own
    process, which wake it when they end; one of a process that died must
    not count), the addresses each account logged in from, and the key of
    the password digests (a repeat of one password counts once in each
    process: a digest that could be compared across processes would be
    kept, with its key, where wrong passwords could be guessed from it).

    Memory is bounded: see L{_FailureTable}; at most C{maxAddresses}
    addresses, accounts, and account-address pairs that logged in are kept.

    @ivar clock: an C{IReactorTime}.
    """

    log = Logger()

    def __init__(
        self,
        clock,
        baseDelay=2.0,
        maxDelay=15.0,
        window=600,
        banThreshold=10,
        accountThreshold=20,
        maxAddresses=100000,
        failures=None,
    ):
        """
        @param clock: an C{IReactorTime} (the reactor, or a L{task.Clock}).
        @param failures: the L{mdpy.interfaces.ILoginFailures} the counts
            are kept in (the backend's); by default this process's memory.
        @param baseDelay: seconds of delay after one failure; it doubles with
            each further failure.
        @param maxDelay: the delay never exceeds this.
        @param window: seconds after which a failure is forgotten, and for
            which an account is limited.
        @param banThreshold: this many distinct failures of one address
            within C{window} ban it until they age out; 0 for no ban.
        @param accountThreshold: this many distinct failures of one account
            within C{window} limit it; 0 for no limit.
        @param maxAddresses: how many client addresses (and accounts, and
            accounts' known addresses) are tracked at most.
        """
        self.clock = clock
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.window = window
        self.banThreshold = banThreshold
        self.accountThreshold = accountThreshold
        self.maxAddresses = maxAddresses
        self._key = os.urandom(32)
        if failures is None:
            failures = LoginFailures()
        self._byAddress = _FailureTable(failures, "address", clock, window, maxAddresses,
                                        max(banThreshold, 32))
        self._byAccount = _FailureTable(failures, "account", clock, window, maxAddresses,
                                        max(accountThreshold, 32))
        # The accounts limited: one event each while the limit lasts.
        self._limited = _FailureTable(failures, "limited", clock, window, maxAddresses, 1)
        # Checks under way: address -> {addressTag: count}, account ->
        # {accountTag: count}.
        self._pendingByAddress = {}
        self._pendingByAccount = {}
        # (account, address) pairs that logged in, least recent first.
        self._loggedIn = OrderedDict()
        # (LoginAttempt, Deferred) of the logins waiting for the checks
        # under way of their address or account to end, in order of arrival:
        # reason -> ({address or account: deque}, what the key is).
        self._waiting = {
            _WAIT_FOR_ADDRESS: ({}, lambda attempt: attempt.clientAddress),
            _WAIT_FOR_ACCOUNT: ({}, lambda attempt: attempt.account),
        }
        # (address, account) of the checks ended while deciding.
        self._ended = deque()
        self._deciding = False

    def reconfigure(self, baseDelay, maxDelay, window, banThreshold, accountThreshold):
        """
        Take new limits (a reload of the configuration), keeping the
        failures counted so far: a reload never lifts a ban.  See
        L{__init__} for the parameters.
        """
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.window = window
        self.banThreshold = banThreshold
        self.accountThreshold = accountThreshold
        self._byAddress.window = self._byAccount.window = self._limited.window = window
        self._byAddress.maxEvents = max(banThreshold, 32)
        self._byAccount.maxEvents = max(accountThreshold, 32)

    def __len__(self):
        """
        @return: how many client addresses are tracked.
        """
        return len(self._byAddress)

    def waitingLogins(self):
        """
        @return: how many logins wait for checks under way to end.
        """
        return sum(len(queue) for queues, _ in self._waiting.values() for queue in queues.values())

    def digestPassword(self, password):
        """
        @param password: L{bytes} or L{str}.
        @return: a keyed digest of C{password} for L{recordFailure}: failed
            passwords are never kept, and the digests are useless outside this
            process.
        """
        if isinstance(password, str):
            password = password.encode("utf-8")
        return hmac.new(self._key, password, hashlib.sha256).digest()

    @staticmethod
    def _load(table, pending, key, now):
        """
        @return: the failures of C{key} in C{table} plus its checks under way
            that would be new failures.
        """
        events = table.recent(key, now)
        recorded = {tag for _, _, tag in events}
        waiting = pending.get(key, ())
        return len(events) + sum(1 for tag in waiting if tag not in recorded)

    @classmethod
    def _full(cls, threshold, table, pending, key, tag, now):
        """
        @return: whether one more check of C{key} (with C{tag}) would pass
            C{threshold} if every check under way failed; one the same as a
            check under way adds nothing.
        """
        return (
            bool(threshold)
            and tag not in pending.get(key, ())
            and cls._load(table, pending, key, now) >= threshold
        )

    def _verdict(self, attempt, now):
        """
        @return: the L{LoginRefused} for C{attempt}; L{_WAIT_FOR_ADDRESS} or
            L{_WAIT_FOR_ACCOUNT} while it would pass the limit of its address
            or account if the checks under way all failed; or L{None} when
            it may be checked now.  While the counts cannot be read (the
            backend fails), every login is refused (L{UNCOUNTED}): the limits
            are never lifted by a failure.
        """
        try:
            return self._limitsVerdict(attempt, now)
        except MailError as e:
            self._countsFailed(e)
            return LoginRefused(UNCOUNTED)

    def _countsFailed(self, error):
        self.log.error("auth: the failed logins cannot be counted: {why}", why=error.detail)

    def _limitsVerdict(self, attempt, now):
        address, account = attempt.clientAddress, attempt.account
        if self._banned(address, now):
            return LoginRefused(BANNED_ADDRESS)
        trusted = (account, address) in self._loggedIn
        if not trusted and self._isLimitedNow(account, now):
            return LoginRefused(LIMITED_ACCOUNT)
        if self._full(self.banThreshold, self._byAddress, self._pendingByAddress,
                      address, attempt.addressTag, now):
            return _WAIT_FOR_ADDRESS
        if not trusted and self._full(self.accountThreshold, self._byAccount,
                                      self._pendingByAccount, account, attempt.accountTag, now):
            return _WAIT_FOR_ACCOUNT
        return None

    def start(self, clientAddress, username, passwordDigest=None):
        """
        Admit a login to be checked.

        A login that would pass a limit if the checks under way (of its
        address, or of its account) all failed waits for them to end: then
        it is refused or admitted.  So many logins at once are checked a few
        at a time, and never more guesses than the limits allow.

        @param clientAddress: the client's IP address (any hashable value).
        @param username: the login name tried (L{bytes} or L{str}).
        @param passwordDigest: L{digestPassword} of the secret tried, or
            L{None} (then it is never taken for a repeat).
        @return: a L{Deferred} firing with the L{LoginAttempt}, to be ended
            when the check is done; or failing with L{LoginRefused}: the
            address is banned, or the account limited and the address not
            one it has logged in from.
        """
        attempt = LoginAttempt(self, clientAddress, accountName(username), passwordDigest)
        verdict = self._verdict(attempt, self.clock.seconds())
        if verdict in _WAITS:
            d = defer.Deferred()
            self._wait(verdict, attempt, d)
            return d
        if verdict is not None:
            return defer.fail(verdict)
        self._reserve(attempt)
        return defer.succeed(attempt)

    def _reserve(self, attempt):
        _increment(self._pendingByAddress, attempt.clientAddress, attempt.addressTag)
        _increment(self._pendingByAccount, attempt.account, attempt.accountTag)

    def _admitWaiting(self, clientAddress, account):
        """
        Decide again, in order of arrival, the waiting logins of
        C{clientAddress} or C{account}, now that a check of theirs ended.

        A login admitted here may be checked and ended at once (a cached
        password), which calls this again: that call only queues its
        addresses, for the loop already running, so a long queue of waiting
        logins never recurses.
        """
        self._ended.append((clientAddress, account))
        if self._deciding:
            return
        self._deciding = True
        try:
            while self._ended:
                clientAddress, account = self._ended.popleft()
                self._decideWaiting(clientAddress, account)
        finally:
            self._deciding = False

    def _wait(self, reason, attempt, d):
        """
        Queue C{attempt} behind the checks of its address or account.
        """
        queues, key = self._waiting[reason]
        queues.setdefault(key(attempt), deque()).append((attempt, d))

    def _decideWaiting(self, clientAddress, account):
        now = self.clock.seconds()
        decided = []
        self._decideQueue(_WAIT_FOR_ADDRESS, clientAddress, now, decided)
        self._decideQueue(_WAIT_FOR_ACCOUNT, account, now, decided)
        # Fired last: a callback may start or end another login.
        for d, result in decided:
            if isinstance(result, LoginRefused):
                d.errback(result)
            else:
                d.callback(result)

    def _decideQueue(self, reason, key, now, decided):
        """
        Decide the logins waiting behind the checks of C{key} (an address or
        an account, as C{reason} says), in order, up to the first that still
        has to wait for the same reason (so are all after it that would be
        new guesses).  One that now waits for the other reason moves to that
        queue.
        """
        queues = self._waiting[reason][0]
        queue = queues.get(key)
        if queue is None:
            return
        while queue:
            attempt, d = queue.popleft()
            verdict = self._verdict(attempt, now)
            if verdict is reason:
                queue.appendleft((attempt, d))
                break
            if verdict in _WAITS:
                self._wait(verdict, attempt, d)
                continue
            if verdict is None:
                self._reserve(attempt)
            decided.append((d, verdict or attempt))
        if not queue:
            del queues[key]

    def _release(self, attempt):
        _decrement(self._pendingByAddress, attempt.clientAddress, attempt.addressTag)
        _decrement(self._pendingByAccount, attempt.account, attempt.accountTag)

    def recordFailure(self, clientAddress, username, passwordDigest=None):
        """
        Count a failed login.

        @param clientAddress: the client's IP address (any hashable value).
        @param username: the login name tried, or L{None}.
        @param passwordDigest: L{digestPassword} of the password tried, or
            L{None} (then every call counts).
        """
        try:
            self._recordFailure(clientAddress, accountName(username), passwordDigest, self.clock.seconds())
        except MailError as e:
            self._countsFailed(e)

    def _recordFailure(self, clientAddress, account, passwordDigest, now):
        tag = None if passwordDigest is None else _addressTag(account, passwordDigest)
        self._byAddress.record(clientAddress, account, tag, now)
        self._byAccount.record(account, clientAddress, passwordDigest, now)
        failures = self._byAccount.recent(account, now)
        if (
            self.accountThreshold
            and len(failures) >= self.accountThreshold
            and self._limited.record(account, "", _LIMITED, now)
        ):
            self.log.warn(
                "auth: logins for {account} refused for {window}s except from addresses"
                " it logged in from before: {count} failed logins from {addresses} addresses",
                account=account,
                window=self.window,
                count=len(failures),
                addresses=len({source for _, source, _ in failures}),
            )

    def recordSuccess(self, clientAddress, username):
        """
        Forget the failures of account C{username} from C{clientAddress}
        (not those of other accounts, nor from other addresses), and
        remember that it logged in from there.
        """
        account = accountName(username)
        try:
            self._byAddress.forget(clientAddress, account)
            self._byAccount.forget(account, clientAddress)
        except MailError as e:
            self._countsFailed(e)
        pair = (account, clientAddress)
        self._loggedIn[pair] = True
        self._loggedIn.move_to_end(pair)
        while len(self._loggedIn) > self.maxAddresses:
            self._loggedIn.popitem(last=False)

    def delayFor(self, clientAddress):
        """
        @return: the seconds to wait before answering a failed login from
            C{clientAddress}: 0 when none failed within the window, else
            C{baseDelay} doubled for each recent failure after the first, at
            most C{maxDelay} (also while the counts cannot be read).
        @rtype: L{float}
        """
        try:
            count = len(self._byAddress.recent(clientAddress, self.clock.seconds()))
        except MailError as e:
            self._countsFailed(e)
            return self.maxDelay
        if not count:
            return 0
        return min(self.baseDelay * 2 ** min(count - 1, 64), self.maxDelay)

    def isBanned(self, clientAddress):
        """
        @return: whether C{clientAddress} failed C{banThreshold} distinct
            times within the window (and L{True} while the counts cannot be
            read).
        """
        try:
            return self._banned(clientAddress, self.clock.seconds())
        except MailError as e:
            self._countsFailed(e)
            return True

    def _banned(self, clientAddress, now):
        count = len(self._byAddress.recent(clientAddress, now))
        return bool(self.banThreshold) and count >= self.banThreshold

    def isLimited(self, username, clientAddress=None):
        """
        @param username: a login name.
        @param clientAddress: the address a login comes from, or L{None}.
        @return: whether a login of C{username} from C{clientAddress} is
            refused by the account limit: the account is limited and has not
            logged in from C{clientAddress} before.
        """
        account = accountName(username)
        if (account, clientAddress) in self._loggedIn:
            return False
        try:
            return self._isLimitedNow(account, self.clock.seconds())
        except MailError as e:
            self._countsFailed(e)
            return True

    def _isLimitedNow(self, account, now):
        """
        @return: whether C{account} is limited now, from any address.
        """
        return bool(self._limited.recent(account, now))


_WAIT_FOR_ADDRESS = "wait for the address"
_WAIT_FOR_ACCOUNT = "wait for the account"
_WAITS = (_WAIT_FOR_ADDRESS, _WAIT_FOR_ACCOUNT)


def _increment(counts, key, tag):
    tags = counts.setdefault(key, {})
    tags[tag] = tags.get(tag, 0) + 1


def _decrement(counts, key, tag):
    tags = counts.get(key)
    if tags is None or tag not in tags:
        return
    tags[tag] -= 1
    if not tags[tag]:
        del tags[tag]
        if not tags:
            del counts[key]
