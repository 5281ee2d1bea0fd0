"""
Tests for L{mdpy.auth.checkers}.
"""

import hmac
import sys

import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import (
    CramMD5Credentials,
    IUsernameHashedPassword,
    IUsernamePassword,
    UsernamePassword,
)
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.mail.pop3 import APOPCredentials
from twisted.python.failure import Failure
from zope.interface import Interface
from zope.interface.verify import verifyObject

from mdpy.auth import IAccount, checkers
from mdpy.auth.checkers import (
    DirectoryChecker,
    FailedLoginTracker,
    Realm,
    makePortal,
)
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.backends.local import LoginFailures
from mdpy.errors import TemporaryFailure


class SynchronousRunner:
    """
    A C{runInThread} that runs at once and records what it ran.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, f, *args):
        self.calls.append((f, args))
        return defer.succeed(f(*args))


@pytest.fixture
def directory(tmp_path):
    d = SQLiteDirectory(str(tmp_path / "directory.sqlite"))
    d.addDomain("example.com")
    d.addUser("alice@example.com", "wonderland")
    d.addUser("bob@example.com", "builder")
    d.setEnabled("bob@example.com", False)
    yield d
    d.close()


@pytest.fixture
def runner():
    return SynchronousRunner()


@pytest.fixture
def checker(directory, runner):
    return DirectoryChecker(directory, runInThread=runner)


def result(d):
    """
    @return: the result of an already fired L{Deferred}; a L{Failure} if it
        failed.
    """
    results = []
    d.addBoth(results.append)
    assert results, "Deferred did not fire"
    return results[0]


def assertUnauthorized(d):
    outcome = result(d)
    assert isinstance(outcome, Failure)
    assert outcome.check(UnauthorizedLogin)
    return outcome


def cramCredentials(username, password, host=b"mail.example.com"):
    """
    Build CRAM-MD5 credentials as C{twisted.mail}'s servers do.
    """
    credentials = CramMD5Credentials(host)
    challenge = credentials.getChallenge()
    digest = hmac.new(password, challenge, "md5").hexdigest().encode("ascii")
    credentials.setResponse(username + b" " + digest)
    return credentials


# --- checker ----------------------------------------------------------------


def test_interface(checker):
    assert verifyObject(ICredentialsChecker, checker)
    assert IUsernamePassword in checker.credentialInterfaces
    assert IUsernameHashedPassword in checker.credentialInterfaces


def test_password(checker, runner):
    d = checker.requestAvatarId(UsernamePassword(b"alice@example.com", b"wonderland"))
    assert result(d) == "alice@example.com"
    assert len(runner.calls) == 1


def test_passwordNormalisesUsername(checker):
    d = checker.requestAvatarId(UsernamePassword("Alice@EXAMPLE.com", "wonderland"))
    assert result(d) == "alice@example.com"


def test_wrongPassword(checker):
    assertUnauthorized(
        checker.requestAvatarId(UsernamePassword(b"alice@example.com", b"wrong"))
    )


def test_unknownAndDisabledFailAlike(checker, runner):
    """
    An unknown user, a disabled user (with its right password) and a wrong
    password give the same failure, each after one scrypt verification.
    """
    outcomes = [
        assertUnauthorized(checker.requestAvatarId(UsernamePassword(name, pw)))
        for name, pw in [
            (b"nobody@example.com", b"wonderland"),
            (b"bob@example.com", b"builder"),
            (b"alice@example.com", b"builder"),
            (b"not an address", b"x"),
            (b"\xff\xfe@example.com", b"x"),
        ]
    ]
    assert {(type(o.value), str(o.value)) for o in outcomes} == {
        (UnauthorizedLogin, "bad login")
    }
    assert len(runner.calls) == 5
    for f, args in runner.calls:
        assert f is checkers.verifyPassword
        assert args[1].startswith("$scrypt$ln=14,")


def test_unknownUserSpendsScryptTime(checker, runner):
    assertUnauthorized(
        checker.requestAvatarId(UsernamePassword(b"nobody@example.com", b"x"))
    )
    [(f, (password, stored))] = runner.calls
    assert stored == checkers._DUMMY_HASH
    # The dummy hash is a real scrypt hash, so verifying it costs as much.
    assert checkers.verifyPassword(b"x", stored) is False


def test_cramMD5(checker):
    credentials = cramCredentials(b"alice@example.com", b"wonderland")
    assert result(checker.requestAvatarId(credentials)) == "alice@example.com"


def test_cramMD5DoesNotUseCheckPassword(checker, monkeypatch):
    """
    CRAM-MD5 is checked against the stored secret, not through
    C{checkPassword}, which would need the plaintext.
    """
    credentials = cramCredentials(b"alice@example.com", b"wonderland")
    monkeypatch.setattr(
        credentials, "checkPassword", lambda password: pytest.fail("called")
    )
    assert result(checker.requestAvatarId(credentials)) == "alice@example.com"


def test_cramMD5Failures(checker):
    for credentials in [
        cramCredentials(b"alice@example.com", b"wrong"),
        cramCredentials(b"bob@example.com", b"builder"),
        cramCredentials(b"nobody@example.com", b"wonderland"),
        cramCredentials(b"nobody", b"wonderland"),
    ]:
        failure = assertUnauthorized(checker.requestAvatarId(credentials))
        assert str(failure.value) == "bad login"


def test_cramMD5WithoutStoredSecret(directory, runner):
    """
    A user whose record has no CRAM-MD5 secret cannot use CRAM-MD5, even with
    the all-zero response of the dummy secret.
    """
    directory._db.execute("UPDATE users SET cram_md5 = NULL")
    checker = DirectoryChecker(directory, runInThread=runner)
    credentials = cramCredentials(b"alice@example.com", b"wonderland")
    assertUnauthorized(checker.requestAvatarId(credentials))


def test_cramMD5AfterPasswordChange(checker, directory):
    directory.setPassword("alice@example.com", "looking glass")
    assertUnauthorized(
        checker.requestAvatarId(cramCredentials(b"alice@example.com", b"wonderland"))
    )
    credentials = cramCredentials(b"alice@example.com", b"looking glass")
    assert result(checker.requestAvatarId(credentials)) == "alice@example.com"


def test_apopRefused(checker):
    """
    APOP needs the plaintext password, which is not stored.
    """
    credentials = APOPCredentials(b"<1.2@example.com>", b"alice@example.com", b"0" * 32)
    assertUnauthorized(checker.requestAvatarId(credentials))


def test_directoryFailurePassedOn(runner):
    class BrokenDirectory:
        def getSecrets(self, address):
            raise TemporaryFailure("database is locked")

    checker = DirectoryChecker(BrokenDirectory(), runInThread=runner)
    outcome = result(
        checker.requestAvatarId(UsernamePassword(b"alice@example.com", b"x"))
    )
    assert isinstance(outcome, Failure)
    assert outcome.check(TemporaryFailure)


def test_defaultRunnerRunsAtOnceWithoutAThreadPool(directory, monkeypatch):
    """
    Without C{runInThread}, scrypt runs at once: no thread pool is used
    outside the backend (the server passes the backend's C{runBlocking}).
    """
    calls = []

    def fakeDeferToThreadPool(reactor, pool, f, *args):
        calls.append((reactor, pool, f))
        return defer.succeed(f(*args))

    monkeypatch.setattr(
        "twisted.internet.threads.deferToThreadPool", fakeDeferToThreadPool
    )
    checker = DirectoryChecker(directory)
    d = checker.requestAvatarId(UsernamePassword(b"alice@example.com", b"wonderland"))
    assert result(d) == "alice@example.com"
    assert calls == []


# --- realm and portal -------------------------------------------------------


def test_realm():
    realm = Realm()
    assert verifyObject(IRealm, realm)
    interface, avatar, logout = realm.requestAvatar("alice@example.com", None, IAccount)
    assert interface is IAccount
    assert avatar == "alice@example.com"
    assert logout() is None


def test_realmOtherInterface():
    class IOther(Interface):
        pass

    with pytest.raises(NotImplementedError):
        Realm().requestAvatar("alice@example.com", None, IOther)


def test_portal(directory, runner):
    portal = makePortal(directory, runInThread=runner)
    d = portal.login(
        UsernamePassword(b"alice@example.com", b"wonderland"), None, IAccount
    )
    interface, avatar, logout = result(d)
    assert (interface, avatar) == (IAccount, "alice@example.com")
    credentials = cramCredentials(b"alice@example.com", b"wonderland")
    d = portal.login(credentials, None, IAccount)
    assert result(d)[1] == "alice@example.com"
    assertUnauthorized(
        portal.login(UsernamePassword(b"alice@example.com", b"no"), None, IAccount)
    )


# --- failed login tracker ---------------------------------------------------


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tracker(clock):
    return FailedLoginTracker(clock)


def test_noFailuresNoDelay(tracker):
    assert tracker.delayFor("192.0.2.1") == 0
    assert not tracker.isBanned("192.0.2.1")
    assert len(tracker) == 0


def test_delayDoubles(tracker):
    delays = []
    for i in range(6):
        tracker.recordFailure("192.0.2.1", "alice", tracker.digestPassword("pw%d" % i))
        delays.append(tracker.delayFor("192.0.2.1"))
    assert delays == [2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert tracker.delayFor("192.0.2.2") == 0


def test_repeatedPasswordCountsOnce(tracker):
    digest = tracker.digestPassword("stale")
    for _ in range(20):
        tracker.recordFailure("192.0.2.1", "alice", digest)
    assert tracker.delayFor("192.0.2.1") == 2.0
    assert not tracker.isBanned("192.0.2.1")
    # The same password for another user is another guess.
    tracker.recordFailure("192.0.2.1", "bob", digest)
    assert tracker.delayFor("192.0.2.1") == 4.0


def test_noDigestAlwaysCounts(tracker):
    tracker.recordFailure("192.0.2.1", "alice", None)
    tracker.recordFailure("192.0.2.1", "alice", None)
    assert tracker.delayFor("192.0.2.1") == 4.0


def test_digestPassword(tracker):
    assert tracker.digestPassword("pw") == tracker.digestPassword(b"pw")
    assert tracker.digestPassword("pw") != tracker.digestPassword("pw2")
    assert b"pw" not in tracker.digestPassword("pw")
    other = FailedLoginTracker(Clock())
    assert other.digestPassword("pw") != tracker.digestPassword("pw")


def test_successClears(tracker):
    for i in range(3):
        tracker.recordFailure("192.0.2.1", "alice@example.com", tracker.digestPassword(str(i)))
    tracker.recordSuccess("192.0.2.1", "Alice@Example.COM")
    assert tracker.delayFor("192.0.2.1") == 0
    assert len(tracker) == 0
    tracker.recordSuccess("192.0.2.99", "alice@example.com")


def test_successClearsOnlyThatAccount(tracker):
    """
    A guesser who owns one account cannot wipe its failures on others by
    logging in to it.
    """
    for i in range(9):
        tracker.recordFailure("192.0.2.1", "victim@example.com", tracker.digestPassword(str(i)))
    tracker.recordFailure("192.0.2.1", "own@example.com", tracker.digestPassword("typo"))
    tracker.recordSuccess("192.0.2.1", "own@example.com")
    assert tracker.delayFor("192.0.2.1") == 15.0
    assert not tracker.isBanned("192.0.2.1")
    tracker.recordFailure("192.0.2.1", "victim@example.com", tracker.digestPassword("9"))
    assert tracker.isBanned("192.0.2.1")
    # The victim's failures from other addresses stay, too.
    tracker.recordFailure("192.0.2.2", "victim@example.com", tracker.digestPassword("x"))
    tracker.recordSuccess("192.0.2.1", "victim@example.com")
    assert not tracker.isBanned("192.0.2.1")
    assert tracker.delayFor("192.0.2.2") == 2.0


def test_ban(tracker, clock):
    for i in range(9):
        tracker.recordFailure("192.0.2.1", "u%d" % i, tracker.digestPassword("x"))
        clock.advance(10)
    assert not tracker.isBanned("192.0.2.1")
    tracker.recordFailure("192.0.2.1", "u9", tracker.digestPassword("x"))
    assert tracker.isBanned("192.0.2.1")
    assert not tracker.isBanned("192.0.2.2")
    # The oldest failure ages out of the window: no longer banned.
    clock.advance(600 - 90)
    assert not tracker.isBanned("192.0.2.1")
    assert tracker.delayFor("192.0.2.1") == 15.0


def test_windowForgets(tracker, clock):
    tracker.recordFailure("192.0.2.1", "alice", tracker.digestPassword("a"))
    clock.advance(599)
    assert tracker.delayFor("192.0.2.1") == 2.0
    clock.advance(1)
    assert tracker.delayFor("192.0.2.1") == 0
    # Another address's failure sweeps the expired entry from the table.
    tracker.recordFailure("192.0.2.2", "alice", tracker.digestPassword("a"))
    assert len(tracker) == 1


def test_repeatCountsAgainAfterWindow(tracker, clock):
    digest = tracker.digestPassword("stale")
    tracker.recordFailure("192.0.2.1", "alice", digest)
    clock.advance(601)
    tracker.recordFailure("192.0.2.1", "alice", digest)
    assert tracker.delayFor("192.0.2.1") == 2.0


def test_customSettings(clock):
    tracker = FailedLoginTracker(
        clock, baseDelay=1.0, maxDelay=3.0, window=60, banThreshold=2
    )
    tracker.recordFailure("h", "a", b"1")
    assert tracker.delayFor("h") == 1.0
    assert not tracker.isBanned("h")
    tracker.recordFailure("h", "a", b"2")
    assert tracker.delayFor("h") == 2.0
    assert tracker.isBanned("h")
    tracker.recordFailure("h", "a", b"3")
    assert tracker.delayFor("h") == 3.0
    clock.advance(60)
    assert tracker.delayFor("h") == 0


def test_boundedAddresses(clock):
    tracker = FailedLoginTracker(clock, maxAddresses=100)
    for i in range(1000):
        tracker.recordFailure("10.0.%d.%d" % (i // 256, i % 256), "a", b"x")
    assert len(tracker) == 100
    # The most recent addresses are the ones kept.
    assert tracker.delayFor("10.0.3.231") == 2.0
    assert tracker.delayFor("10.0.0.0") == 0


def test_boundedFailuresPerAddress(tracker):
    for i in range(10000):
        tracker.recordFailure("192.0.2.1", "alice", str(i).encode())
    now = tracker.clock.seconds()
    assert len(tracker._byAddress.recent("192.0.2.1", now)) <= max(tracker.banThreshold, 32)
    assert len(tracker._byAccount.recent("alice", now)) <= max(tracker.accountThreshold, 32)
    assert tracker.isBanned("192.0.2.1")
    assert tracker.delayFor("192.0.2.1") == 15.0


def test_defaultLimit():
    assert FailedLoginTracker(Clock()).maxAddresses == 100000


def test_successfulVerificationIsCached(checker, runner, directory):
    """A second login with the same password costs no scrypt run."""
    good = UsernamePassword(b"alice@example.com", b"wonderland")
    assert result(checker.requestAvatarId(good)) == "alice@example.com"
    assert result(checker.requestAvatarId(good)) == "alice@example.com"
    assert len(runner.calls) == 1
    # A wrong password is never answered from the cache.
    assertUnauthorized(checker.requestAvatarId(UsernamePassword(b"alice@example.com", b"nope")))
    assert len(runner.calls) == 2
    # A changed password invalidates what was cached.
    directory.setPassword("alice@example.com", "looking-glass")
    assertUnauthorized(checker.requestAvatarId(good))
    assert result(checker.requestAvatarId(UsernamePassword(b"alice@example.com", b"looking-glass"))) == "alice@example.com"
    # A disabled account is refused whatever the cache holds.
    directory.setEnabled("alice@example.com", False)
    assertUnauthorized(checker.requestAvatarId(UsernamePassword(b"alice@example.com", b"looking-glass")))


def test_cacheIsBounded(checker, directory):
    checker.cacheSize = 3
    for i in range(6):
        directory.addUser("u%d@example.com" % i, "pw%d" % i)
        assert result(checker.requestAvatarId(UsernamePassword(b"u%d@example.com" % i, b"pw%d" % i)))
    assert len(checker._verified) == 3


def test_identical_logins_together_verify_once():
    from twisted.cred.credentials import UsernamePassword
    from twisted.internet import defer as _defer

    from mdpy.auth.checkers import DirectoryChecker
    from mdpy.auth.passwords import hashPassword

    calls = []
    pending = []

    def runInThread(f, *args):
        calls.append(args)
        d = _defer.Deferred()
        pending.append((d, f, args))
        return d

    stored = hashPassword("pw")

    class Directory:
        def getSecrets(self, address):
            return {"password": stored, "cram-md5": None}

    checker = DirectoryChecker(Directory(), runInThread=runInThread)
    results = []
    for _ in range(5):
        checker.requestAvatarId(UsernamePassword(b"a@b.test", b"pw")).addBoth(results.append)
    assert len(calls) == 1 and results == []
    d, f, args = pending.pop()
    d.callback(f(*args))
    assert results == ["a@b.test"] * 5


# --- limits that parallel logins cannot beat --------------------------------


class Started:
    """
    What L{FailedLoginTracker.start} gave: L{result} is the
    L{checkers.LoginAttempt}, the L{checkers.LoginRefused}, or L{None} while
    the login waits.
    """

    def __init__(self, d):
        self.result = None
        d.addBoth(self._done)

    def _done(self, result):
        if isinstance(result, Failure):
            result.trap(checkers.LoginRefused)
            result = result.value
        self.result = result

    @property
    def admitted(self):
        return isinstance(self.result, checkers.LoginAttempt)

    @property
    def refused(self):
        return isinstance(self.result, checkers.LoginRefused)

    @property
    def waiting(self):
        return self.result is None


def _start(tracker, address, user, password):
    return Started(tracker.start(address, user, tracker.digestPassword(password)))


def test_checkUnderWayCountsAsFailure(tracker):
    """
    100 logins at once from one address: only C{banThreshold} are checked
    at a time; once they fail, the rest (the right password as the 90th
    among them) are refused unchecked.
    """
    started = [
        _start(tracker, "192.0.2.1", "alice@example.com", "right" if i == 89 else "guess%d" % i)
        for i in range(100)
    ]
    admitted = [s for s in started if s.admitted]
    assert len(admitted) == tracker.banThreshold == 10
    assert all(s.waiting for s in started[10:])
    assert tracker.waitingLogins() == 90
    assert not tracker.isBanned("192.0.2.1")
    # Another address is not held up.
    assert _start(tracker, "192.0.2.2", "alice@example.com", "pw").admitted
    for s in admitted:
        s.result.failed()
    assert all(s.refused for s in started[10:])
    assert started[89].result.why == checkers.BANNED_ADDRESS
    assert tracker.isBanned("192.0.2.1")
    assert tracker.delayFor("192.0.2.1") == 15.0
    assert _start(tracker, "192.0.2.1", "alice@example.com", "right").refused
    assert tracker.waitingLogins() == 0


def test_parallelGoodLoginsWaitTheirTurn(tracker):
    """
    50 users logging in at once from one address (a load test): each is
    checked in turn, none refused.
    """
    started = [_start(tracker, "192.0.2.1", "u%d@example.com" % i, "pw") for i in range(50)]
    assert sum(s.admitted for s in started) == 10
    done = set()
    while len(done) < 50:
        ready = [s for s in started if s.admitted and id(s) not in done]
        assert ready
        for s in ready:
            done.add(id(s))
            s.result.succeeded()
    assert tracker.waitingLogins() == 0 and tracker._pendingByAddress == {}
    assert tracker.delayFor("192.0.2.1") == 0


def test_waitingLoginAdmittedWhenAFailureLeavesRoom(tracker):
    started = [_start(tracker, "192.0.2.1", "alice@example.com", "guess%d" % i) for i in range(11)]
    assert started[10].waiting
    started[0].result.failed()
    assert started[10].waiting
    started[1].result.succeeded()
    assert started[10].admitted


def test_abandonedCountsNothing(tracker):
    attempt = _start(tracker, "192.0.2.1", "alice@example.com", "pw").result
    attempt.abandoned()
    attempt.failed()
    assert tracker.delayFor("192.0.2.1") == 0
    assert tracker._pendingByAddress == {} and tracker._pendingByAccount == {}


def test_attemptEndsOnce(tracker):
    attempt = _start(tracker, "192.0.2.1", "alice@example.com", "pw").result
    attempt.failed()
    attempt.failed()
    attempt.succeeded()
    assert tracker.delayFor("192.0.2.1") == 2.0
    assert ("alice@example.com", "192.0.2.1") not in tracker._loggedIn


def test_identicalLoginsUnderWayCountOnce(tracker):
    """
    A client opening many connections at once with one password is one
    guess, not many: none waits.
    """
    started = [_start(tracker, "192.0.2.1", "alice@example.com", "pw") for _ in range(1000)]
    assert all(s.admitted for s in started)
    for s in started:
        s.result.failed()
    assert tracker.delayFor("192.0.2.1") == 2.0
    assert tracker._pendingByAddress == {} and tracker._pendingByAccount == {}


def test_checksUnderWayWithoutDigestEachCount(tracker):
    started = [Started(tracker.start("192.0.2.1", "alice@example.com")) for _ in range(11)]
    assert [s.admitted for s in started] == [True] * 10 + [False]


def _failFrom(tracker, address, user, password):
    started = _start(tracker, address, user, password)
    started.result.failed()


def test_accountLimit(clock):
    """
    20 guesses for one account from 20 addresses limit it for the window:
    a new address is refused even with the right password, an address the
    account logged in from before is not.  One warning is logged.
    """
    tracker = FailedLoginTracker(clock)
    _start(tracker, "198.51.100.1", "bob@example.com", "right").result.succeeded()
    with capturedWarnings() as warnings:
        for i in range(20):
            _failFrom(tracker, "203.0.113.%d" % i, "Bob@example.com", "guess%d" % i)
            clock.advance(1)
        refused = _start(tracker, "203.0.113.200", "bob@example.com", "right")
        assert refused.refused and refused.result.why == checkers.LIMITED_ACCOUNT
        assert _start(tracker, "203.0.113.201", "bob@example.com", "right").refused
    assert len(warnings) == 1
    assert "bob@example.com" in warnings[0] and "20 failed logins from 20 addresses" in warnings[0]
    assert tracker.isLimited("bob@example.com", "203.0.113.200")
    assert not tracker.isLimited("bob@example.com", "198.51.100.1")
    assert not tracker.isLimited("carol@example.com", "203.0.113.200")
    known = _start(tracker, "198.51.100.1", "bob@example.com", "right")
    assert known.admitted
    known.result.succeeded()
    # A known address's success does not lift the limit for others.
    assert tracker.isLimited("bob@example.com", "203.0.113.200")
    # The limit lasts the window from the 20th failure (a second ago), then
    # it is gone.
    clock.advance(600 - 2)
    assert tracker.isLimited("bob@example.com", "203.0.113.200")
    clock.advance(1)
    assert not tracker.isLimited("bob@example.com", "203.0.113.200")
    assert _start(tracker, "203.0.113.200", "bob@example.com", "right").admitted


def test_accountLimitCountsChecksUnderWay(clock):
    """
    200 addresses guessing one account at once: no more than
    C{accountThreshold} guesses are checked; the owner's known address is
    not held up.
    """
    tracker = FailedLoginTracker(clock)
    _start(tracker, "198.51.100.1", "bob@example.com", "right").result.succeeded()
    started = [
        _start(tracker, "203.0.113.%d" % (i % 200), "bob@example.com", "guess%d" % i) for i in range(600)
    ]
    admitted = [s for s in started if s.admitted]
    assert len(admitted) == tracker.accountThreshold == 20
    known = _start(tracker, "198.51.100.1", "bob@example.com", "right")
    assert known.admitted
    known.result.succeeded()
    for s in admitted:
        s.result.failed()
    assert all(s.refused for s in started[20:])
    assert {s.result.why for s in started[20:]} == {checkers.LIMITED_ACCOUNT}


def test_accountLimitIgnoresRepeatedPassword(clock):
    """
    A phone with a stale password, roaming between addresses, does not
    lock its owner out.
    """
    tracker = FailedLoginTracker(clock)
    for i in range(50):
        _failFrom(tracker, "203.0.113.%d" % i, "bob@example.com", "stale")
    assert not tracker.isLimited("bob@example.com", "203.0.113.99")


def test_successForgetsAccountFailuresFromThatAddress(clock):
    tracker = FailedLoginTracker(clock, accountThreshold=3)
    _failFrom(tracker, "192.0.2.1", "bob@example.com", "a")
    _failFrom(tracker, "192.0.2.1", "bob@example.com", "b")
    _start(tracker, "192.0.2.1", "bob@example.com", "right").result.succeeded()
    _failFrom(tracker, "192.0.2.2", "bob@example.com", "c")
    _failFrom(tracker, "192.0.2.2", "bob@example.com", "d")
    assert not tracker.isLimited("bob@example.com", "192.0.2.3")
    _failFrom(tracker, "192.0.2.3", "bob@example.com", "e")
    assert tracker.isLimited("bob@example.com", "192.0.2.3")


def test_limitsOff(clock):
    tracker = FailedLoginTracker(clock, banThreshold=0, accountThreshold=0)
    started = [_start(tracker, "192.0.2.1", "bob@example.com", "guess%d" % i) for i in range(100)]
    assert all(s.admitted for s in started)
    for s in started:
        s.result.failed()
    assert not tracker.isBanned("192.0.2.1")
    assert not tracker.isLimited("bob@example.com", "192.0.2.1")
    assert tracker.delayFor("192.0.2.1") == 15.0


def test_boundedLoggedInPairs(clock):
    tracker = FailedLoginTracker(clock, maxAddresses=10)
    for i in range(100):
        tracker.recordSuccess("192.0.2.%d" % i, "bob@example.com")
    assert len(tracker._loggedIn) == 10
    assert ("bob@example.com", "192.0.2.99") in tracker._loggedIn


def test_accountName():
    assert checkers.accountName(b"Alice@Example.COM") == "alice@example.com"
    assert checkers.accountName("Example.ORG") == "example.org"
    assert checkers.accountName(b"\xff") == "\ufffd"
    assert checkers.accountName(None) == ""


class capturedWarnings:
    """
    Collect the text of the warnings L{FailedLoginTracker} logs.
    """

    def __enter__(self):
        from twisted.logger import formatEvent, globalLogPublisher

        self.texts = []

        def observer(event):
            if event.get("log_namespace", "").startswith("mdpy.auth.checkers"):
                self.texts.append(formatEvent(event))

        self._observer = observer
        globalLogPublisher.addObserver(observer)
        return self.texts

    def __exit__(self, *exc):
        from twisted.logger import globalLogPublisher

        globalLogPublisher.removeObserver(self._observer)


def test_manyWaitingLoginsCheckedAtOnceDoNotRecurse(tracker):
    """
    1000 logins wait behind 10 checks under way; each, once admitted, ends
    at once (a cached password): they are all admitted, one after the
    other, without the stack growing with the queue.
    """
    held = [_start(tracker, "192.0.2.1", "slow%d@example.com" % i, "pw") for i in range(10)]
    depths = []

    def succeedAtOnce(attempt):
        frame, depth = sys._getframe(), 0
        while frame is not None:
            frame, depth = frame.f_back, depth + 1
        depths.append(depth)
        attempt.succeeded()

    for i in range(1000):
        tracker.start("192.0.2.1", "u%d@example.com" % i, tracker.digestPassword("pw")).addCallback(succeedAtOnce)
    assert depths == []
    held[0].result.succeeded()
    assert len(depths) == 1000
    assert max(depths) - min(depths) < 10 < sys.getrecursionlimit()
    assert tracker.waitingLogins() == 0


def test_waitingLoginWaitsForAddressThenAccount(clock):
    """
    A login held up by its address's checks, then by its account's, is
    decided when they end.
    """
    tracker = FailedLoginTracker(clock, banThreshold=2, accountThreshold=2)
    first = _start(tracker, "192.0.2.1", "bob@example.com", "g1")
    second = _start(tracker, "192.0.2.2", "bob@example.com", "g2")
    other = _start(tracker, "192.0.2.1", "alice@example.com", "right")
    assert first.admitted and second.admitted and other.admitted
    waiting = _start(tracker, "192.0.2.1", "bob@example.com", "g4")
    assert waiting.waiting
    other.result.succeeded()
    assert waiting.waiting and tracker.waitingLogins() == 1
    second.result.failed()
    assert waiting.waiting
    first.result.failed()
    assert waiting.refused and waiting.result.why == checkers.LIMITED_ACCOUNT
    assert tracker.waitingLogins() == 0


# --- counts shared by the processes of a backend ----------------------------


def test_trackersSharingCountsApplyOneAnothersLimits(clock):
    """
    Two trackers (two processes) counting in one L{LoginFailures} (the
    backend's): the guesses made at one ban the address and limit the
    account at the other, whose own policy (thresholds, delays) decides;
    the account's limit is announced once, by the tracker that set it.
    """
    failures = LoginFailures()
    one = FailedLoginTracker(clock, banThreshold=3, accountThreshold=4, failures=failures)
    two = FailedLoginTracker(clock, banThreshold=3, accountThreshold=4, failures=failures)
    with capturedWarnings() as warnings:
        for n in range(3):
            _failFrom(one, "192.0.2.1", "bob@example.com", "guess%d" % (n,))
        refused = _start(two, "192.0.2.1", "alice@example.com", "right")
        assert refused.refused and refused.result.why == checkers.BANNED_ADDRESS
        assert two.delayFor("192.0.2.1") == 8.0
        _failFrom(two, "192.0.2.2", "bob@example.com", "guess3")
        refused = _start(one, "192.0.2.3", "bob@example.com", "right")
        assert refused.refused and refused.result.why == checkers.LIMITED_ACCOUNT
        assert one.isLimited("bob@example.com", "192.0.2.9")
        assert two.isLimited("bob@example.com", "192.0.2.9")
    assert len([text for text in warnings if "logins for bob@example.com refused" in text]) == 1
    clock.advance(600)
    assert not two.isBanned("192.0.2.1") and not two.isLimited("bob@example.com", "192.0.2.9")


def test_aRepeatAtAnotherTrackerCountsAgain(clock):
    """
    Password digests are keyed by each process: the same stale password
    tried at two processes counts once at each, never more.
    """
    failures = LoginFailures()
    one = FailedLoginTracker(clock, failures=failures)
    two = FailedLoginTracker(clock, failures=failures)
    for tracker in (one, two, one, two):
        _failFrom(tracker, "192.0.2.1", "bob@example.com", "stale")
    assert one.delayFor("192.0.2.1") == 4.0


class BrokenFailures(LoginFailures):
    """
    Counts that cannot be read or written: a backend's database that fails.
    """

    def _broken(self, *args):
        raise TemporaryFailure("logins.sqlite: disk I/O error")

    record = recent = forget = keys = _broken


def test_countsThatCannotBeReadRefuseEveryLogin(clock):
    """
    While the backend cannot give the counts, no login is let through
    uncounted: each is refused (and the failure logged), the delay is the
    longest, an address is taken as banned; recording does not raise.
    """
    tracker = FailedLoginTracker(clock, failures=BrokenFailures())
    with capturedWarnings() as logged:
        refused = _start(tracker, "192.0.2.1", "bob@example.com", "right")
        tracker.recordFailure("192.0.2.1", "bob@example.com")
        tracker.recordSuccess("192.0.2.1", "bob@example.com")
        assert tracker.delayFor("192.0.2.1") == tracker.maxDelay
        assert tracker.isBanned("192.0.2.1")
        assert tracker.isLimited("alice@example.com", "192.0.2.1")
    assert refused.refused and refused.result.why == checkers.UNCOUNTED
    assert logged and all("disk I/O error" in text for text in logged)
