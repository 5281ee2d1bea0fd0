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
from mdpy.errors import InvalidInput
from mdpy.threads import deferToReactorThreadPool

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
            L{Deferred} (or the value).  Default: the global reactor's thread
            pool.
        """
        self.directory = directory
        self._runInThread = runInThread or deferToReactorThreadPool
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


class FailedLoginTracker:
    """
    Failed logins per client address, shared by SMTP, POP3 and IMAP, to slow
    down and then refuse password guessing.

    A protocol calls L{recordFailure} when a login fails and answers after
    L{delayFor} seconds; L{recordSuccess} on success; and refuses to even try
    a login while L{isBanned}.  As Dovecot does, the same username and
    password tried again (a client retrying a stale password) counts once.

    Memory is bounded: failures older than C{window} are forgotten, each
    address keeps at most C{max(banThreshold, 32)} of them, and at most
    C{maxAddresses} addresses are kept (the longest quiet ones go first).

    @ivar clock: an C{IReactorTime}.
    """

    def __init__(
        self,
        clock,
        baseDelay=2.0,
        maxDelay=15.0,
        window=600,
        banThreshold=10,
        maxAddresses=100000,
    ):
        """
        @param clock: an C{IReactorTime} (the reactor, or a L{task.Clock}).
        @param baseDelay: seconds of delay after one failure; it doubles with
            each further failure.
        @param maxDelay: the delay never exceeds this.
        @param window: seconds after which a failure is forgotten.
        @param banThreshold: this many distinct failures within C{window} ban
            the address until they age out.
        @param maxAddresses: how many client addresses are tracked at most.
        """
        self.clock = clock
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.window = window
        self.banThreshold = banThreshold
        self.maxAddresses = maxAddresses
        self._maxEvents = max(banThreshold, 32)
        self._key = os.urandom(32)
        # clientAddress -> deque of (time, (username, digest)); ordered by the
        # time of the last recorded failure, oldest first.
        self._failures = OrderedDict()

    def __len__(self):
        """
        @return: how many client addresses are tracked.
        """
        return len(self._failures)

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

    def _expire(self, now):
        horizon = now - self.window
        while self._failures:
            address, events = next(iter(self._failures.items()))
            if events and events[-1][0] > horizon:
                break
            del self._failures[address]

    def _recent(self, clientAddress):
        """
        @return: the number of failures of C{clientAddress} within the window.
        """
        events = self._failures.get(clientAddress)
        if not events:
            return 0
        horizon = self.clock.seconds() - self.window
        while events and events[0][0] <= horizon:
            events.popleft()
        return len(events)

    def recordFailure(self, clientAddress, username, passwordDigest=None):
        """
        Count a failed login.

        @param clientAddress: the client's IP address (any hashable value).
        @param username: the login name tried, or L{None}.
        @param passwordDigest: L{digestPassword} of the password tried, or
            L{None} (then every call counts).
        """
        now = self.clock.seconds()
        self._expire(now)
        self._recent(clientAddress)
        events = self._failures.get(clientAddress)
        if events is None:
            events = deque(maxlen=self._maxEvents)
            self._failures[clientAddress] = events
            while len(self._failures) > self.maxAddresses:
                self._failures.popitem(last=False)
        key = (username, passwordDigest)
        if passwordDigest is not None and any(k == key for _, k in events):
            return
        events.append((now, key))
        self._failures.move_to_end(clientAddress)

    def recordSuccess(self, clientAddress):
        """
        Forget the failures of C{clientAddress}.
        """
        self._failures.pop(clientAddress, None)

    def delayFor(self, clientAddress):
        """
        @return: the seconds to wait before answering a failed login from
            C{clientAddress}: 0 when none failed within the window, else
            C{baseDelay} doubled for each recent failure after the first, at
            most C{maxDelay}.
        @rtype: L{float}
        """
        count = self._recent(clientAddress)
        if not count:
            return 0
        return min(self.baseDelay * 2 ** min(count - 1, 64), self.maxDelay)

    def isBanned(self, clientAddress):
        """
        @return: whether C{clientAddress} failed C{banThreshold} distinct
            times within the window.
        """
        return self._recent(clientAddress) >= self.banThreshold
