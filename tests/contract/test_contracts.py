"""
Every backend mdpy ships keeps the contract suites of
L{mdpy.testing.contracts}, which a backend written elsewhere runs the same
way: subclass each suite and give it the object under test.
"""

import json
import os
import subprocess
import sys

import pytest

from mdpy.backends.files import FilesBackend
from mdpy.backends.files.collectorstate import CollectorState
from mdpy.backends.memory import MemoryBackend
from mdpy.delivery.targets import LocalStoreTarget, QueueTarget
from mdpy.errors import TemporaryFailure
from mdpy.testing import (
    ChangeFeedContract,
    CollectorStatesContract,
    DedupeContract,
    DeliveryTargetContract,
    DirectoryContract,
    LocksContract,
    LoginFailuresContract,
    QueueContract,
    RemoteAccountsContract,
    StoreContract,
    TwoPhaseTargetContract,
    resultOf,
)
from mdpy.testing.contracts import ALICE, BOB
from tests.contract.conftest import UnstartedPool
from tests.server import OtherProcess, checkoutFirst


class TestStore(StoreContract):
    @pytest.fixture
    def store(self, backend):
        resultOf(backend.store.createAccount(ALICE))
        return backend.store


class TestQueue(QueueContract):
    @pytest.fixture
    def queue(self, backend):
        return backend.queue


class TestDirectory(DirectoryContract):
    @pytest.fixture
    def directory(self, backend):
        return backend.directory


class TestLocks(LocksContract):
    @pytest.fixture
    def locks(self, backend):
        return backend.maildropLocks


class TestLoginFailures(LoginFailuresContract):
    @pytest.fixture
    def failures(self, backend):
        return backend.loginFailures


class TestRemoteAccounts(RemoteAccountsContract):
    @pytest.fixture
    def accounts(self, backend):
        return backend.remoteAccounts


class TestCollectorStates(CollectorStatesContract):
    @pytest.fixture
    def states(self, backend):
        return backend.dedupe


class TestChangeFeed(ChangeFeedContract):
    @pytest.fixture
    def feed(self, backend):
        return backend.changeFeed

    def test_theStoreSpeaksThroughIt(self, backend):
        """
        What the store changes is published on the backend's feed.
        """
        heard = []
        backend.changeFeed.subscribe(ALICE, None, lambda *args: heard.append(args))
        resultOf(backend.store.createAccount(ALICE))
        resultOf(backend.store.deliver([(ALICE, "INBOX", [b"Subject: x\r\n\r\nx\r\n"])]))
        assert heard == [(ALICE, "INBOX")]


class TestDedupe(DedupeContract):
    """
    The collectors' dedupe cache, on disk and in an SQLite database in
    memory.
    """

    @pytest.fixture(params=["file", "memory"])
    def dedupe(self, request, tmp_path, clock):
        path = str(tmp_path / "state.sqlite") if request.param == "file" else ":memory:"
        state = CollectorState(path, clock=lambda: clock[0])
        yield state
        state.close()


def failingFsync(monkeypatch):
    """
    Make every fsync fail, as a failing disk does.
    """
    import errno
    import os

    def fail(*args):
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fsync", fail)


class TestLocalStoreTarget(DeliveryTargetContract):
    """
    The pipeline's target of local accounts, over each backend's store.
    """

    recipients = [ALICE]

    @pytest.fixture
    def target(self, backend, tmp_path):
        resultOf(backend.store.createAccount(ALICE))
        target = LocalStoreTarget(backend.store, spoolDir=str(tmp_path))
        target.backend = backend
        return target

    def visible(self, target):
        mailbox = resultOf(target.store.openMailbox(ALICE))
        return [resultOf(message.read()) for message in mailbox.messages()]

    def failCommits(self, target, monkeypatch):
        if isinstance(target.backend, MemoryBackend):
            target.store.failDeliver = TemporaryFailure("injected")
        else:
            failingFsync(monkeypatch)

    def test_copiesCarryTheirRecipient(self, target):
        """
        Each copy starts with its own trace headers.
        """
        resultOf(self.start(target).commit())
        [stored] = self.visible(target)
        assert stored.startswith(b"Return-Path: <sender@remote.example>\r\nX-MDRcpt-To: %s\r\n"
                                 % (ALICE.encode(),))


class TestQueueTarget(TwoPhaseTargetContract):
    """
    The pipeline's target of remote recipients, over each backend's queue.
    """

    recipients = ["bob@remote.example"]

    @pytest.fixture
    def target(self, backend, tmp_path):
        return QueueTarget(backend.queue, spoolDir=str(tmp_path))

    def visible(self, target):
        bodies = []
        for entry in target.queue.list():
            with entry.openBody() as f:
                bodies.append(f.read())
        return bodies

    def stored(self, target):
        bodies = []
        for entry in target.queue.inspect()[0]:
            with open(target.queue.bodyPath(entry.id), "rb") as f:
                bodies.append(f.read())
        return bodies

    def failCommits(self, target, monkeypatch):
        failingFsync(monkeypatch)


# --- the files backend shared by processes ----------------------------------


def filesBackend(tmp_path):
    backend = FilesBackend(str(tmp_path / "data"), threadPool=UnstartedPool(), groupCommit=False)
    return backend


@pytest.fixture
def files(tmp_path):
    backend = filesBackend(tmp_path)
    yield backend
    backend.close()


def test_aMaildropLockHoldsAcrossProcesses(tmp_path, files):
    """
    A POP3 session of another process holds Alice's maildrop: no session
    here gets it (C{[IN-USE]}), Bob's is free; once that process is killed
    with C{kill -9} the kernel has released its lock and the maildrop can
    be taken here.
    """
    other = OtherProcess(tmp_path / "data", "assert backend.maildropLocks.acquire(%r, object())" % (ALICE,))
    try:
        session = object()
        assert not files.maildropLocks.acquire(ALICE, session)
        assert files.maildropLocks.acquire(BOB, session)
    finally:
        other.kill()
    assert files.maildropLocks.acquire(ALICE, session)


def test_aMaildropLockOfThisProcessStopsAnother(tmp_path, files):
    """
    The other way round: a lock taken here keeps another process out until
    it is released.
    """
    session = object()
    assert files.maildropLocks.acquire(ALICE, session)
    script = "print(backend.maildropLocks.acquire(%r, object()))" % (ALICE,)
    other = OtherProcess(tmp_path / "data", script)
    other.kill()
    assert other.output == ["False"]
    files.maildropLocks.release(ALICE, session)
    other = OtherProcess(tmp_path / "data", script)
    other.kill()
    assert other.output == ["True"]


def test_failedLoginsAreCountedAcrossProcesses(tmp_path, files):
    """
    Failures another process counted (another worker) are seen here, and
    one forgotten here is gone for it.
    """
    other = OtherProcess(
        tmp_path / "data",
        "for n in range(3):\n"
        "    backend.loginFailures.record('address', '192.0.2.1', %r, None, 1000.0 + n, 400.0, 32, 100)" % (ALICE,),
    )
    other.kill()
    assert [when for when, _, _ in files.loginFailures.recent("address", "192.0.2.1", 400.0)] == [
        1000.0, 1001.0, 1002.0]
    files.loginFailures.forget("address", "192.0.2.1", ALICE)
    again = filesBackend(tmp_path)
    try:
        assert again.loginFailures.recent("address", "192.0.2.1", 0) == ()
    finally:
        again.close()


def test_remoteAccountsAreSharedByProcesses(tmp_path, files):
    """
    An account added by one process (the C{mdpy} command) is listed by
    another (the server) and kept in C{multipop/accounts.json}, 0600.
    """
    accountId = resultOf(files.remoteAccounts.add(ALICE, "pop.isp.test", password="secret"))
    other = filesBackend(tmp_path)
    try:
        assert [a["id"] for a in resultOf(other.remoteAccounts.list())] == [accountId]
    finally:
        other.close()
    path = tmp_path / "data" / "multipop" / "accounts.json"
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_collectorStatesKeepTheirFiles(tmp_path, files):
    """
    The state of each source is where it always was,
    C{data_dir/<kind>/<name>/state.sqlite}, and outlives the backend.
    """
    state = files.dedupe.stateOf("domainpop/isp")
    state.markDelivered("uid1", [("<1@x>", ALICE)])
    path = tmp_path / "data" / "domainpop" / "isp" / "state.sqlite"
    assert path.exists()
    reopened = CollectorState(str(path))
    try:
        assert reopened.isDuplicate("<1@x>", ALICE)
    finally:
        reopened.close()


def test_aLockFileThatCannotBeMadeRefusesTheMaildrop(tmp_path):
    """
    When the lock file cannot be made (here its folder is a file), the
    maildrop is refused, never served without its lock.
    """
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "locks").write_text("not a folder")
    backend = filesBackend(tmp_path)
    try:
        assert not backend.maildropLocks.acquire(ALICE, object())
    finally:
        backend.close()


# --- new messages claimed once, across processes ----------------------------

# A script's backend whose work runs at once, as in the tests here.
_AT_ONCE = (
    "class AtOnce:\n"
    "    started = False\n"
    "backend = FilesBackend(sys.argv[1], threadPool=AtOnce(), groupCommit=False)\n"
)


def test_claimsHoldAcrossProcessesAndRestarts(tmp_path, files):
    """
    Messages another process claimed (another server on the data
    directory) are not claimed here, those claimed here are not claimed
    again after a restart, and what arrives later is claimed by one view.
    """
    resultOf(files.store.createAccount(ALICE))
    resultOf(files.store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"])]))
    other = OtherProcess(
        tmp_path / "data",
        _AT_ONCE + "backend.store.openMailbox(%r).addCallback(lambda m: m.claimRecent()).addCallback(print)"
        % (ALICE,),
    )
    other.kill()
    assert other.output == ["[1, 2]"]
    mailbox = resultOf(files.store.openMailbox(ALICE))
    assert mailbox.recentThreshold == 2
    assert resultOf(mailbox.claimRecent()) == []
    resultOf(files.store.deliver([(ALICE, "INBOX", [b"3"])]))
    resultOf(mailbox.sync())
    assert mailbox.claimedUids() == {3}
    again = filesBackend(tmp_path)
    try:
        restarted = resultOf(again.store.openMailbox(ALICE))
        assert restarted.recentThreshold == 3
        assert resultOf(restarted.claimRecent()) == []
    finally:
        again.close()


def test_processesRacingNeverClaimAMessageTwice(tmp_path, files):
    """
    Two processes, each delivering messages and claiming what it takes
    in, at the same time (both start when both are ready): every message
    is claimed, and by one of them.
    """
    resultOf(files.store.createAccount(ALICE))
    script = (
        "import sys\n"
        "from mdpy.backends.files import FilesBackend\n"
        + _AT_ONCE +
        "mailbox = []\n"
        "backend.store.openMailbox(%r).addCallback(mailbox.append)\n"
        "[mailbox] = mailbox\n"
        "mailbox.claimRecent()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "for n in range(25):\n"
        "    backend.store.deliver([(%r, 'INBOX', [b'x'])])\n"
        "    mailbox.sync()\n"
        "print(sorted(mailbox.claimedUids()))\n"
    ) % (ALICE, ALICE)
    runs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=checkoutFirst(os.environ.get("PYTHONPATH"))))
        for _ in range(2)
    ]
    assert [run.stdout.readline() for run in runs] == [b"ready\n"] * 2
    for run in runs:
        run.stdin.write(b"go\n")
        run.stdin.flush()
    claims = [set(json.loads(run.communicate(timeout=60)[0])) for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert not claims[0] & claims[1]
    assert claims[0] | claims[1] == set(range(1, 51))
