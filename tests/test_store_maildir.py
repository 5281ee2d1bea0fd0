"""
Tests for L{mdpy.backends.files.maildir} and L{mdpy.backends.files.maildirindex}.
"""

import errno
import fcntl
import io
import json
import os
import re
import subprocess
import sys
import time
import zlib

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from mdpy import mutf7
from mdpy.errors import InvalidInput, LimitExceeded, NotFound, TemporaryFailure
from mdpy import mailbox
from mdpy.mailbox import ADD, REMOVE, REPLACE
from mdpy.backends.files import maildir, maildirindex
from mdpy.backends.files.blocking import DeferredStore
from mdpy.backends.files.maildir import MaildirStore
from mdpy.testing import resultOf
from mdpy.testing.contracts import ALICE, BOB, MESSAGE, StoreContract

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = re.compile(r"[0-9]+\.M[0-9]+P[0-9]+Q[0-9]+\.[^/:,]+,S=([0-9]+),W=\1\Z")


def runNow(f, *args, **kwargs):
    return defer.maybeDeferred(f, *args, **kwargs)


class QueuedRunner:
    """
    A C{runInThread} that runs nothing until told, as a busy thread pool.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.calls.append((f, args, d))
        return d

    def runOne(self):
        f, args, d = self.calls.pop(0)
        defer.maybeDeferred(f, *args).chainDeferred(d)

    def runAll(self):
        while self.calls:
            self.runOne()


def listing(path):
    return sorted(os.listdir(path))


class TestMaildirContract(StoreContract):
    """
    The Maildir store keeps the store contract, as the protocols see it
    (L{DeferredStore}, which also tells the change feed of folders made,
    deleted, renamed and subscribed).
    """

    def makeStore(self, tmp_path):
        return DeferredStore(MaildirStore(str(tmp_path / "mail"), runInThread=runNow), runNow)


class TestMaildirStore:
    @pytest.fixture
    def store(self, tmp_path):
        store = MaildirStore(str(tmp_path / "mail"), runInThread=runNow)
        store.createAccount(ALICE)
        return store

    @pytest.fixture
    def inbox(self, store):
        return os.path.join(store.root, "example.com", "alice")

    def test_layout(self, store, inbox):
        assert store.accountPath("Alice@Example.COM") == inbox
        for sub in ("cur", "new", "tmp"):
            assert os.path.isdir(os.path.join(inbox, sub))
        for name in mailbox.SPECIAL_FOLDERS:
            folder = os.path.join(inbox, "." + name)
            assert listing(folder) == ["cur", "maildirfolder", "new", "tmp"]
        with open(os.path.join(inbox, "subscriptions")) as f:
            assert f.read() == "Drafts\nSent\nTrash\nJunk\nArchive\n"
        store.createMailbox(ALICE, "Lists/Work")
        assert os.path.isfile(os.path.join(inbox, ".Lists.Work", "maildirfolder"))
        store.createMailbox(ALICE, "Entwürfe & Co")
        assert os.path.isdir(os.path.join(inbox, ".Entw&APw-rfe &- Co"))

    def test_escapedAccountPaths(self, store):
        path = store.accountPath('"../x/y"@example.com')
        assert os.path.dirname(path) == os.path.join(store.root, "example.com")
        assert os.path.basename(path) == '"..%2Fx%2Fy"'
        assert os.path.basename(store.accountPath(".x@example.com")) == "%2Ex"

    def test_deliverWritesNew(self, store, inbox):
        resultOf(store.deliver([(ALICE, "INBOX", [b"Subject: x\r\n", b"\r\nbody\r\n"])]))
        [name] = listing(os.path.join(inbox, "new"))
        assert NAME.match(name), name
        size = len(b"Subject: x\r\n\r\nbody\r\n")
        assert name.endswith(",S=%d,W=%d" % (size, size))
        with open(os.path.join(inbox, "new", name), "rb") as f:
            assert f.read() == b"Subject: x\r\n\r\nbody\r\n"
        assert listing(os.path.join(inbox, "tmp")) == []
        assert os.stat(os.path.join(inbox, "new", name)).st_mode & 0o777 == 0o600
        assert not os.path.exists(os.path.join(inbox, "mdpy-uidlist"))

    def test_deliverLargeFile(self, store, inbox, tmp_path):
        data = os.urandom(300000)
        with open(tmp_path / "spool", "wb+") as spool:
            spool.write(b"junk" + data)
            spool.seek(4)
            resultOf(store.deliver([(ALICE, "INBOX", [b"X: 1\r\n", spool])]))
        [message] = store.openMailbox(ALICE).messages()
        assert resultOf(message.read()) == b"X: 1\r\n" + data
        assert message.size == len(data) + 6

    def test_uniqueName(self, monkeypatch):
        monkeypatch.setattr(maildir, "_HOST", maildir._escapeHost("a/b:c,d"))
        monkeypatch.setattr(maildir.os, "getpid", lambda: 4242)
        name = maildir.uniqueName(1700000000.25)
        assert re.match(r"1700000000\.M250000P4242Q[0-9]+\.a\\057b\\072c\\054d\Z", name), name
        assert maildir.uniqueName(1.0) != maildir.uniqueName(1.0)

    def test_folderOperationErrorsAreStoreErrors(self, store, inbox, monkeypatch):
        """
        A file system with a shorter name limit than 255 octets (ENAMETOOLONG)
        makes a folder operation fail with L{LimitExceeded}, another I/O
        error with L{TemporaryFailure}: never a bare L{OSError}.
        """
        failures = iter([OSError(errno.ENAMETOOLONG, "File name too long"), OSError(errno.EIO, "I/O error")])

        def failingMkdir(path, mode=0o777):
            raise next(failures)

        monkeypatch.setattr(maildir.os, "mkdir", failingMkdir)
        with pytest.raises(LimitExceeded):
            store.createMailbox(ALICE, "x" * 200)
        with pytest.raises(TemporaryFailure):
            store.createMailbox(ALICE, "Other")
        monkeypatch.undo()
        monkeypatch.setattr(maildir.os, "rename", failingMkdir)
        failures = iter([OSError(errno.ENAMETOOLONG, "File name too long"), OSError(errno.EACCES, "denied")])
        with pytest.raises(LimitExceeded):
            store.renameMailbox(ALICE, "Sent", "y" * 200)
        with pytest.raises(TemporaryFailure):
            store.deleteMailbox(ALICE, "Sent")
        monkeypatch.undo()
        assert store.listMailboxes(ALICE) == ["INBOX"] + sorted(mailbox.SPECIAL_FOLDERS)

    def test_fsyncFailure(self, store, inbox, monkeypatch):
        def failingFsync(fd):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(maildir.os, "fsync", failingFsync)
        with pytest.raises(TemporaryFailure) as caught:
            resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE]), (ALICE, "Sent", [MESSAGE])]))
        assert "fsync" in caught.value.detail
        for folder in (inbox, os.path.join(inbox, ".Sent")):
            assert listing(os.path.join(folder, "new")) == []
            assert listing(os.path.join(folder, "tmp")) == []

    def test_directoryFsyncFailure(self, store, inbox, monkeypatch):
        realFsync = os.fsync

        def fsync(fd):
            if os.path.isdir("/proc/self/fd/%d" % fd):
                raise OSError(errno.EIO, "Input/output error")
            realFsync(fd)

        monkeypatch.setattr(maildir.os, "fsync", fsync)
        with pytest.raises(TemporaryFailure):
            resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        assert listing(os.path.join(inbox, "new")) == []
        assert listing(os.path.join(inbox, "tmp")) == []

    def test_readFailure(self, store, inbox):
        class BrokenFile:
            calls = 0

            def read(self, n):
                self.calls += 1
                if self.calls > 1:
                    raise OSError(errno.EIO, "spool unreadable")
                return b"partial"

        with pytest.raises(TemporaryFailure) as caught:
            resultOf(store.deliver([
                (ALICE, "INBOX", [MESSAGE]),
                (ALICE, "INBOX", [b"head", BrokenFile()]),
            ]))
        assert "write" in caught.value.detail
        assert listing(os.path.join(inbox, "new")) == []
        assert listing(os.path.join(inbox, "tmp")) == []

    def test_missingAccountCleansUp(self, store, inbox):
        with pytest.raises(NotFound):
            resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE]), (BOB, "INBOX", [MESSAGE])]))
        assert listing(os.path.join(inbox, "tmp")) == []
        assert listing(os.path.join(inbox, "new")) == []

    def test_listenersAfterDeferredFires(self, tmp_path):
        runner = QueuedRunner()
        store = MaildirStore(str(tmp_path), runInThread=runner)
        store.createAccount(ALICE)
        calls = []
        store.addListener(ALICE, lambda *args: calls.append(args))
        d = store.deliver([(ALICE, "INBOX", [MESSAGE])])
        assert len(runner.calls) == 1
        assert calls == []
        runner.runAll()
        assert resultOf(d) is None
        assert calls == [(ALICE, "INBOX")]

    def test_syncMovesToCur(self, store, inbox):
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"])]))
        names = listing(os.path.join(inbox, "new"))
        mailbox = store.openMailbox(ALICE)
        assert listing(os.path.join(inbox, "new")) == []
        assert listing(os.path.join(inbox, "cur")) == [n + ":2," for n in names]
        assert [m.key for m in mailbox.messages()] == names
        assert [m.uid for m in mailbox.messages()] == [1, 2]

    def test_uidsSurviveRestart(self, store, inbox):
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"])]))
        first = store.openMailbox(ALICE)
        restarted = MaildirStore(store.root, runInThread=runNow)
        resultOf(restarted.deliver([(ALICE, "INBOX", [b"3"])]))
        second = restarted.openMailbox(ALICE)
        assert second.uidValidity == first.uidValidity
        assert [(m.uid, m.key) for m in second.messages()[:2]] == [
            (m.uid, m.key) for m in first.messages()
        ]
        assert second.messages()[2].uid == 3
        lines = maildirindex.readIndex(inbox).serialise().decode().splitlines()
        # No session claimed the messages: all three are above R0.
        assert lines[0].startswith("V2 %d 4 %d R0 G" % (second.uidValidity, second.highestModSeq))
        assert [line.split(" ")[0] for line in lines[1:]] == ["1", "2", "3"]
        key = first.messages()[0].key
        assert lines[1].split(" ", 4)[2:] == ["2,", key.rpartition(",W=")[2], key]

    def test_foreignFilePickedUp(self, store, inbox):
        foreign = "1600000000.12345.oldserver"
        with open(os.path.join(inbox, "new", foreign), "wb") as f:
            f.write(b"Subject: migrated\n\nhi\n")
        with open(os.path.join(inbox, "cur", "1500000000.1.old:2,S"), "wb") as f:
            f.write(b"Subject: read\n\nhi\n")
        with open(os.path.join(inbox, "new", ".hidden"), "wb") as f:
            f.write(b"ignored")
        mailbox = store.openMailbox(ALICE)
        keys = [m.key for m in mailbox.messages()]
        assert sorted(keys) == ["1500000000.1.old", foreign]
        byKey = {m.key: m for m in mailbox.messages()}
        # The size is counted with CR LF line endings, as POP3 sends it.
        assert byKey[foreign].size == len(b"Subject: migrated\r\n\r\nhi\r\n")
        assert resultOf(byKey[foreign].read()) == b"Subject: migrated\r\n\r\nhi\r\n"
        assert byKey["1500000000.1.old"].flags == {"\\Seen"}
        assert os.path.exists(os.path.join(inbox, "cur", foreign + ":2,"))
        # Counted once: the index keeps it for the next session.
        with open(os.path.join(inbox, "mdpy-uidlist")) as f:
            assert "1 1 2, 25 %s\n" % (foreign,) in f.read()

    def test_newFilesOrderedByMtime(self, store, inbox):
        for name, mtime in [("b", 300), ("a", 200), ("c", 100)]:
            path = os.path.join(inbox, "new", name)
            with open(path, "wb") as f:
                f.write(name.encode())
            os.utime(path, (mtime, mtime))
        mailbox = store.openMailbox(ALICE)
        assert [(m.uid, m.key) for m in mailbox.messages()] == [(1, "c"), (2, "a"), (3, "b")]
        assert mailbox.messages()[0].internalDate == 100

    def test_rebuildAfterIndexLoss(self, store, inbox):
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"])]))
        old = store.openMailbox(ALICE)
        resultOf(old.expunge([1]))
        os.unlink(os.path.join(inbox, "mdpy-uidlist"))
        rebuilt = store.openMailbox(ALICE)
        assert rebuilt.uidValidity != old.uidValidity
        assert rebuilt.uidValidity > old.uidValidity
        assert rebuilt.uidNext >= old.uidNext
        assert [m.uid for m in rebuilt.messages()] == [old.uidNext]
        assert rebuilt.highestModSeq >= old.highestModSeq
        # A view from before the rebuild changes nothing by its old UIDs.
        assert resultOf(old.changeFlags([2, old.uidNext], ["\\Seen"], ADD)) == {}
        assert store.openMailbox(ALICE).messages()[0].flags == frozenset()

    def test_tombstonesBesideTheIndex(self, store, inbox):
        """
        Each transaction that removes messages leaves a line in
        C{mdpy-expunged}, also for a file another program removed, and a
        store started afresh reads it.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"]), (ALICE, "INBOX", [b"3"])]))
        mailbox = store.openMailbox(ALICE)
        start = mailbox.highestModSeq
        resultOf(mailbox.expunge([1, 3]))
        removed = mailbox.highestModSeq
        os.unlink(os.path.join(inbox, "cur", mailbox.messages()[0].filename))
        mailbox.sync()
        with open(os.path.join(inbox, "mdpy-expunged")) as f:
            assert f.read() == "E1 %d 0\n%d 1,3\n%d 2\n" % (mailbox.uidValidity, removed, mailbox.highestModSeq)
        restarted = MaildirStore(store.root, runInThread=runNow).openMailbox(ALICE)
        assert resultOf(restarted.expungedSince(start)) == [1, 2, 3]
        assert resultOf(restarted.expungedSince(removed)) == [2]

    def test_tombstonesAreAppendedInPlace(self, store, inbox):
        """
        A removal appends its line to C{mdpy-expunged}: the file is not
        written anew.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"%d" % i]) for i in range(3)]))
        mailbox = store.openMailbox(ALICE)
        resultOf(mailbox.expunge([1]))
        path = os.path.join(inbox, "mdpy-expunged")
        inode = os.stat(path).st_ino
        resultOf(mailbox.expunge([2]))
        assert os.stat(path).st_ino == inode
        assert resultOf(mailbox.expungedSince(0)) == [1, 2]

    def test_tombstoneLineCutShortByACrash(self, store, inbox):
        """
        A line a crash left incomplete is not read, and the next removal
        writes the file again without it.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"%d" % i]) for i in range(3)]))
        mailbox = store.openMailbox(ALICE)
        resultOf(mailbox.expunge([1]))
        first = mailbox.highestModSeq
        path = os.path.join(inbox, "mdpy-expunged")
        with open(path, "a") as f:
            f.write("%d 3," % (first + 1,))
        assert resultOf(mailbox.expungedSince(0)) == [1]
        resultOf(mailbox.expunge([2]))
        with open(path) as f:
            assert f.read() == "E1 %d 0\n%d 1\n%d 2\n" % (mailbox.uidValidity, first, mailbox.highestModSeq)
        assert resultOf(mailbox.expungedSince(first)) == [2]

    def test_tombstonesAreCompacted(self, store, inbox, monkeypatch):
        """
        Past L{maildirindex.EXPUNGED_COMPACT_SIZE} octets the file is
        rewritten with the UIDs kept only, and the history says where it
        stops being complete.
        """
        monkeypatch.setattr(maildirindex, "EXPUNGED_COMPACT_SIZE", 40)
        monkeypatch.setattr(mailbox, "EXPUNGES_KEPT", 2)
        resultOf(store.deliver([(ALICE, "INBOX", [b"%d" % i]) for i in range(6)]))
        view = store.openMailbox(ALICE)
        start = view.highestModSeq
        for uid in range(1, 7):
            resultOf(view.expunge([uid]))
        path = os.path.join(inbox, "mdpy-expunged")
        assert os.path.getsize(path) <= 40 + len("%d 6\n" % view.highestModSeq)
        assert resultOf(view.expungedSince(start)) is None
        assert resultOf(view.expungedSince(view.highestModSeq - 1)) == [6]

    def test_indexWithoutTombstones(self, store, inbox):
        """
        An index from before tombstones were kept still works: the history
        starts at the modification sequence the folder has when the first
        removal is recorded, and before it the store says it does not know.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"]), (ALICE, "INBOX", [b"3"])]))
        mailbox = store.openMailbox(ALICE)
        os.unlink(os.path.join(inbox, "mdpy-expunged"))
        before = mailbox.highestModSeq
        assert resultOf(mailbox.expungedSince(0)) is None
        resultOf(mailbox.expunge([2]))
        assert [m.uid for m in mailbox.messages()] == [1, 3]
        assert resultOf(mailbox.expungedSince(before - 1)) is None
        assert resultOf(mailbox.expungedSince(before)) == [2]

    def test_tombstonesOfAnotherUidValidity(self, store, inbox):
        """
        Tombstones name UIDs of one UIDVALIDITY: after the index is rebuilt
        they are not answered, and the history starts again.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"])]))
        old = store.openMailbox(ALICE)
        resultOf(old.expunge([1]))
        assert resultOf(old.expungedSince(0)) == [1]
        os.unlink(os.path.join(inbox, "mdpy-uidlist"))
        rebuilt = store.openMailbox(ALICE)
        assert resultOf(old.expungedSince(0)) is None
        assert resultOf(rebuilt.expungedSince(rebuilt.highestModSeq)) == []
        with open(os.path.join(inbox, "mdpy-expunged")) as f:
            marker, validity, pruned = f.read().split("\n")[0].split()
        assert (marker, int(validity)) == ("E1", rebuilt.uidValidity)
        assert old.highestModSeq <= int(pruned) <= rebuilt.highestModSeq

    @pytest.mark.parametrize("garbage", [b"", b"garbage\n", b"V1 1 5 3\n9 1 - x\n", b"V1 1 5 3\n1 1 - x"])
    def test_rebuildCorruptIndex(self, store, inbox, garbage):
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"])]))
        old = store.openMailbox(ALICE)
        with open(os.path.join(inbox, "mdpy-uidlist"), "wb") as f:
            f.write(garbage)
        rebuilt = MaildirStore(store.root, runInThread=runNow).openMailbox(ALICE)
        assert rebuilt.uidValidity > old.uidValidity
        assert rebuilt.uidNext >= old.uidNext
        assert len(rebuilt.messages()) == 1

    def test_recreatedFolderGetsNewUidValidity(self, store):
        first = store.openMailbox(ALICE, "Trash").uidValidity
        store.deleteMailbox(ALICE, "Trash")
        store.createMailbox(ALICE, "Trash")
        assert store.openMailbox(ALICE, "Trash").uidValidity > first

    def test_concurrentSyncAcrossProcesses(self, store, inbox, tmp_path):
        script = (
            "import json, os, sys\n"
            "from twisted.internet import defer\n"
            "from mdpy.backends.files.maildir import MaildirStore\n"
            "store = MaildirStore(sys.argv[1], runInThread=lambda f, *a: defer.maybeDeferred(f, *a))\n"
            "seen = {}\n"
            "for i in range(25):\n"
            "    store.deliver([('alice@example.com', 'INBOX', [b'from %d' % os.getpid()])])\n"
            "    mailbox = store.openMailbox('alice@example.com')\n"
            "    for m in mailbox.messages():\n"
            "        seen.setdefault(m.key, set()).add((mailbox.uidValidity, m.uid))\n"
            "print(json.dumps({k: sorted(v) for k, v in seen.items()}))\n"
        )
        for i in range(40):
            with open(os.path.join(inbox, "new", "pre%02d" % i), "wb") as f:
                f.write(b"x")
        workers = [
            subprocess.Popen([sys.executable, "-c", script, store.root], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err.decode()
            results.append(json.loads(out))
        final = store.openMailbox(ALICE)
        assert len(final.messages()) == 40 + 4 * 25
        finalUid = {m.key: m.uid for m in final.messages()}
        assert len(set(finalUid.values())) == len(finalUid)
        for result in results:
            for key, pairs in result.items():
                assert pairs == [[final.uidValidity, finalUid[key]]], key

    def test_flagsInFileName(self, store, inbox):
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        mailbox = store.openMailbox(ALICE)
        key = mailbox.messages()[0].key
        resultOf(mailbox.setFlags(1, ["\\Seen", "\\Flagged"]))
        assert listing(os.path.join(inbox, "cur")) == [key + ":2,FS"]
        resultOf(mailbox.setFlags(1, ["\\Seen", "\\Flagged", "\\Draft", "\\Answered", "\\Deleted", "$Forwarded"]))
        assert listing(os.path.join(inbox, "cur")) == [key + ":2,DFPRST"]
        assert resultOf(mailbox.messages()[0].read()) == MESSAGE

    def test_flagsChangedByAnotherProgram(self, store, inbox):
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        mailbox = store.openMailbox(ALICE)
        message = mailbox.messages()[0]
        before = mailbox.highestModSeq
        cur = os.path.join(inbox, "cur")
        os.rename(os.path.join(cur, message.key + ":2,"), os.path.join(cur, message.key + ":2,RSX"))
        assert resultOf(message.read()) == MESSAGE
        mailbox.sync()
        [changed] = mailbox.messages()
        assert changed.flags == {"\\Answered", "\\Seen"}
        assert changed.modSeq > before
        resultOf(mailbox.setFlags(1, ["\\Flagged"]))
        assert listing(cur) == [message.key + ":2,FX"]

    def test_keywordsFile(self, store, inbox):
        with open(os.path.join(inbox, "dovecot-keywords"), "w") as f:
            f.write("0 $Junk\n1 Work\n")
        with open(os.path.join(inbox, "cur", "1.foreign:2,Sb"), "wb") as f:
            f.write(b"x")
        mailbox = store.openMailbox(ALICE)
        assert mailbox.messages()[0].flags == {"\\Seen", "Work"}
        resultOf(mailbox.setFlags(1, ["$junk", "Personal", "\\Seen"]))
        assert listing(os.path.join(inbox, "cur")) == ["1.foreign:2,Sac"]
        with open(os.path.join(inbox, "dovecot-keywords")) as f:
            assert f.read() == "0 $Junk\n1 Work\n2 Personal\n"
        assert store.openMailbox(ALICE).messages()[0].flags == {"$Junk", "Personal", "\\Seen"}

    def test_setFlagsBatched(self, tmp_path):
        runner = QueuedRunner()
        store = MaildirStore(str(tmp_path), runInThread=runner)
        store.createAccount(ALICE)
        d = store.deliver([(ALICE, "INBOX", [b"%d" % i]) for i in range(3)])
        runner.runAll()
        resultOf(d)
        mailbox = store.openMailbox(ALICE)
        ds = [mailbox.setFlags(uid, ["\\Seen"]) for uid in (1, 2, 3, 7)]
        assert len(runner.calls) == 1
        runner.runOne()
        assert len(runner.calls) == 1  # the three queued meanwhile, in one job
        runner.runOne()
        assert not runner.calls
        modSeqs = [resultOf(d) for d in ds[:3]]
        assert modSeqs[1] == modSeqs[2] > modSeqs[0]
        with pytest.raises(NotFound):
            resultOf(ds[3])
        assert all(m.flags == {"\\Seen"} for m in mailbox.messages())

    def test_changeFlagsReadsFileNameUnderLock(self, store, inbox):
        """
        A flag another program put in the file name since the view's last
        sync is kept by a change through the view; the file name says what
        is stored.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        mailbox = store.openMailbox(ALICE)
        key = mailbox.messages()[0].key
        cur = os.path.join(inbox, "cur")
        os.rename(os.path.join(cur, key + ":2,"), os.path.join(cur, key + ":2,RS"))
        assert mailbox.messages()[0].flags == frozenset()
        results = resultOf(mailbox.changeFlags([1], ["\\Seen"], REMOVE))
        assert results[1].flags == {"\\Answered"}
        assert listing(cur) == [key + ":2,R"]
        resultOf(mailbox.changeFlags([1], ["\\Flagged"], ADD))
        assert listing(cur) == [key + ":2,FR"]

    def test_changeFlagsBatchedInOrder(self, tmp_path):
        """
        Changes queued while a job runs are applied one after the other in
        one transaction, each to what the one before left.
        """
        runner = QueuedRunner()
        store = MaildirStore(str(tmp_path), runInThread=runner)
        store.createAccount(ALICE)
        d = store.deliver([(ALICE, "INBOX", [MESSAGE])])
        runner.runAll()
        resultOf(d)
        one, two = store.openMailbox(ALICE), store.openMailbox(ALICE)
        first = one.changeFlags([1], ["\\Seen"], ADD)
        runner.runAll()
        resultOf(first)
        added = one.changeFlags([1], ["\\Answered"], ADD)
        removed = one.changeFlags([1], ["\\Seen"], REMOVE)  # queued behind it
        other = two.changeFlags([1], ["\\Flagged"], ADD)  # another view's own job
        assert len(runner.calls) == 2
        runner.runAll()
        assert resultOf(added)[1].flags == {"\\Seen", "\\Answered"}
        assert resultOf(other)[1].flags == {"\\Seen", "\\Answered", "\\Flagged"}
        assert resultOf(removed)[1].flags == {"\\Answered", "\\Flagged"}
        assert store.openMailbox(ALICE).messages()[0].flags == {"\\Answered", "\\Flagged"}

    def test_keywordLimitChangesNothing(self, store, inbox):
        """
        A change that needs a 27th keyword is refused before any file is
        renamed; a keyword letter missing from C{dovecot-keywords} is kept.
        """
        with open(os.path.join(inbox, "dovecot-keywords"), "w") as f:
            f.write("".join("%d k%d\n" % (i, i) for i in range(25)))
        with open(os.path.join(inbox, "cur", "1.foreign:2,az"), "wb") as f:
            f.write(b"x")
        mailbox = store.openMailbox(ALICE)
        assert mailbox.messages()[0].flags == {"k0"}
        with pytest.raises(InvalidInput):
            resultOf(mailbox.changeFlags([1], ["\\Seen", "new1", "new2"], ADD))
        assert listing(os.path.join(inbox, "cur")) == ["1.foreign:2,az"]
        resultOf(mailbox.changeFlags([1], ["\\Seen"], REPLACE))
        assert listing(os.path.join(inbox, "cur")) == ["1.foreign:2,Sz"]

    def test_expungeRemovesFiles(self, store, inbox):
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"])]))
        mailbox = store.openMailbox(ALICE)
        keep = mailbox.messages()[1].key
        assert resultOf(mailbox.expunge([1])) == [1]
        assert listing(os.path.join(inbox, "cur")) == [keep + ":2,"]
        restarted = MaildirStore(store.root, runInThread=runNow)
        resultOf(restarted.deliver([(ALICE, "INBOX", [b"3"])]))
        assert [m.uid for m in restarted.openMailbox(ALICE).messages()] == [2, 3]

    def test_fileRemovedByAnotherProgram(self, store, inbox):
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"])]))
        mailbox = store.openMailbox(ALICE)
        message = mailbox.messages()[0]
        os.unlink(os.path.join(inbox, "cur", message.filename))
        with pytest.raises(NotFound):
            resultOf(message.open())
        mailbox.sync()
        assert mailbox.messages() == []

    def test_appendIntoCur(self, store, inbox):
        mailbox = store.openMailbox(ALICE, "Sent")
        uid = resultOf(mailbox.append(MESSAGE, ["\\Seen"], 1234567890))
        [name] = listing(os.path.join(inbox, ".Sent", "cur"))
        assert name.endswith(",S=%d,W=%d:2,S" % (len(MESSAGE), len(MESSAGE)))
        path = os.path.join(inbox, ".Sent", "cur", name)
        assert os.stat(path).st_mtime == 1234567890
        assert listing(os.path.join(inbox, ".Sent", "tmp")) == []
        assert listing(os.path.join(inbox, ".Sent", "new")) == []
        assert [m.uid for m in store.openMailbox(ALICE, "Sent").messages()] == [uid]

    def test_appendFromFileIsCopiedInChunks(self, store, inbox):
        """
        A file is copied as it is, in chunks; the name's W= counts its line
        ends as CR LF even when a CR LF is split between two chunks.
        """
        data = MESSAGE + b"y" * (maildir._CHUNK - len(MESSAGE) - 1) + b"\r\nbare\nend\r"
        assert data[maildir._CHUNK - 1 : maildir._CHUNK + 1] == b"\r\n"
        mailbox = store.openMailbox(ALICE)
        resultOf(mailbox.append(io.BytesIO(data)))
        [name] = listing(os.path.join(inbox, "cur"))
        assert ",S=%d,W=%d:2," % (len(data), len(data) + 2) in name
        with open(os.path.join(inbox, "cur", name), "rb") as f:
            assert f.read() == data
        assert listing(os.path.join(inbox, "tmp")) == []

    def test_appendFailure(self, store, inbox, monkeypatch):
        def failingFsync(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        mailbox = store.openMailbox(ALICE)
        monkeypatch.setattr(maildir.os, "fsync", failingFsync)
        with pytest.raises(TemporaryFailure):
            resultOf(mailbox.append(MESSAGE))
        monkeypatch.undo()
        for sub in ("tmp", "new", "cur"):
            assert listing(os.path.join(inbox, sub)) == []

    def test_syncOfDeletedFolder(self, store):
        mailbox = store.openMailbox(ALICE, "Junk")
        store.deleteMailbox(ALICE, "Junk")
        with pytest.raises(NotFound):
            mailbox.sync()
        with pytest.raises(NotFound):
            resultOf(mailbox.append(MESSAGE))

    def test_syncWithoutLockWhenIndexAgrees(self, store, monkeypatch):
        """
        A sync of a folder whose files are as its index says takes in
        another view's changes without the folder lock, so it never waits
        for another writer.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        reader = store.openMailbox(ALICE)
        writer = store.openMailbox(ALICE)
        resultOf(writer.changeFlags([1], ["\\Seen", "$Work"], ADD))
        resultOf(writer.append(b"Subject: two\r\n\r\n2\r\n"))

        def locked(lock):
            raise AssertionError("folder lock taken")

        monkeypatch.setattr(maildirindex.FolderLock, "__enter__", locked)
        reader.sync()
        assert [(m.uid, m.flags) for m in reader.messages()] == [
            (1, {"\\Seen", "$Work"}), (2, frozenset())]
        assert reader.highestModSeq == writer.highestModSeq

    def test_syncTakesLockForNewFiles(self, store, inbox):
        """
        New mail in new/, a file another program renamed or removed, or a
        damaged index make the sync a locked transaction that takes them in.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        mailbox = store.openMailbox(ALICE)
        index = maildirindex.FolderIndex(inbox, inbox, "INBOX")
        assert index.snapshot(lambda *a: a) is not None
        resultOf(store.deliver([(ALICE, "INBOX", [b"2"])]))
        assert index.snapshot(lambda *a: a) is None
        mailbox.sync()
        assert [m.uid for m in mailbox.messages()] == [1, 2]
        assert index.snapshot(lambda *a: a) is not None
        cur = os.path.join(inbox, "cur")
        key = mailbox.messages()[0].key
        os.rename(os.path.join(cur, key + ":2,"), os.path.join(cur, key + ":2,F"))
        assert index.snapshot(lambda *a: a) is None
        mailbox.sync()
        assert mailbox.messages()[0].flags == {"\\Flagged"}
        os.unlink(os.path.join(cur, key + ":2,F"))
        assert index.snapshot(lambda *a: a) is None
        mailbox.sync()
        assert [m.uid for m in mailbox.messages()] == [2]
        with open(os.path.join(inbox, "mdpy-uidlist"), "a") as f:
            f.write("garbage")
        assert index.snapshot(lambda *a: a) is None
        old = mailbox.uidValidity
        mailbox.sync()
        assert mailbox.uidValidity > old

    def _restarted(self, store):
        """
        @return: INBOX of Alice as a store started afresh reads it.
        """
        return MaildirStore(store.root, runInThread=runNow).openMailbox(ALICE)

    def test_changesAppendedToTheLog(self, store, inbox):
        """
        A transaction appends its changes to the index's log (one
        transaction line and the lines of what it changed); the index
        itself is not written again, and a store started afresh reads both.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"])]))
        mailbox = store.openMailbox(ALICE)
        index = os.path.join(inbox, maildirindex.INDEX_NAME)
        log = os.path.join(inbox, maildirindex.LOG_NAME)
        before = os.stat(index)
        with open(log, "rb") as f:
            start = f.read()
        resultOf(mailbox.changeFlags([2], ["\\Flagged"], ADD))
        resultOf(mailbox.expunge([1]))
        after = os.stat(index)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        with open(log, "rb") as f:
            added = f.read()[len(start):].decode().splitlines()
        kept = store.openMailbox(ALICE).messages()[0].key
        # UIDNEXT 3, the modification sequence, no UID claimed, one line.
        assert re.match(r"T 3 %d 0 1 [0-9a-f]{8}\Z" % (mailbox.highestModSeq - 1,), added[0])
        assert added[1] == "+ 2 %d 2,F 1 %s" % (mailbox.highestModSeq - 1, kept)
        assert re.match(r"T 3 %d 0 1 [0-9a-f]{8}\Z" % (mailbox.highestModSeq,), added[2])
        assert added[3].startswith("- ") and len(added) == 4
        again = self._restarted(store)
        assert [(m.uid, m.flags) for m in again.messages()] == [(2, {"\\Flagged"})]
        assert (again.uidNext, again.highestModSeq) == (mailbox.uidNext, mailbox.highestModSeq)

    @pytest.mark.parametrize("tail", [
        b"T 9 99 0 1 00000000\n+ 1 99 2,S 1 x",  # cut short
        b"T 9 99 0 2 %08x\n+ 1 99 2,S 1 x\n",  # fewer lines than it says
        b"T 9 99 0 1 00000000\n+ 1 99 2,S 1 x\n",  # its checksum wrong
        b"\0\0\0\0\0\0\0\0",  # blocks of zeros after a crash
    ])
    def test_logCutShortByACrash(self, store, inbox, tail):
        """
        A transaction a crash cut short at the end of the log is not read,
        and the next writer cuts it away before appending, so nothing
        after it is ever read either.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"])]))
        mailbox = store.openMailbox(ALICE)
        resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
        log = os.path.join(inbox, maildirindex.LOG_NAME)
        size = os.path.getsize(log)
        if b"%08x" in tail:
            tail = tail.replace(b"%08x", b"%08x" % (zlib.crc32(b"+ 1 99 2,S 1 x\n"),))
        with open(log, "ab") as f:
            f.write(tail)
        again = self._restarted(store)
        assert [(m.uid, m.flags) for m in again.messages()] == [(1, {"\\Seen"})]
        assert again.highestModSeq == mailbox.highestModSeq
        resultOf(again.changeFlags([1], ["\\Answered"], ADD))
        with open(log, "rb") as f:
            after = f.read()[size:]
        assert after.startswith(b"T ") and tail not in after
        third = self._restarted(store)
        assert third.messages()[0].flags == {"\\Seen", "\\Answered"}

    def test_logFoldedIntoTheIndex(self, store, inbox, monkeypatch):
        """
        Past L{maildirindex.LOG_COMPACT_SIZE}, a transaction writes the index
        whole, with the next generation, and starts an empty log of it.
        """
        monkeypatch.setattr(maildirindex, "LOG_COMPACT_SIZE", 400)
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"])]))
        mailbox = store.openMailbox(ALICE)
        log = os.path.join(inbox, maildirindex.LOG_NAME)
        generations = set()
        for n in range(12):
            resultOf(mailbox.changeFlags([1], ["\\Flagged"], ADD if n % 2 == 0 else REMOVE))
            assert os.path.getsize(log) <= 400
            generations.add(maildirindex.readIndex(inbox).generation)
        assert len(generations) > 1
        again = self._restarted(store)
        assert again.messages()[0].flags == frozenset()
        assert again.highestModSeq == mailbox.highestModSeq

    def test_logOfAnOlderIndexIgnored(self, store, inbox):
        """
        A crash after an index of the next generation was written but before
        the log was replaced leaves the old log beside it: what it holds is
        in that index already, and it is not applied again.  Neither is a
        log of another UIDVALIDITY.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"])]))
        mailbox = store.openMailbox(ALICE)
        resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
        log = os.path.join(inbox, maildirindex.LOG_NAME)
        with open(log, "rb") as f:
            old = f.read()
        os.unlink(log)  # the next transaction writes the index whole
        resultOf(mailbox.changeFlags([1], ["\\Flagged"], ADD))
        index = maildirindex.readIndex(inbox)
        assert index.generation == int(old.split()[2]) + 1
        with open(log, "wb") as f:
            f.write(old)
        again = self._restarted(store)
        assert again.messages()[0].flags == {"\\Seen", "\\Flagged"}
        assert again.highestModSeq == mailbox.highestModSeq
        with open(log, "wb") as f:
            f.write(b"L1 %d %d\n" % (index.uidValidity + 1, index.generation) + old.partition(b"\n")[2])
        assert self._restarted(store).messages()[0].flags == {"\\Seen", "\\Flagged"}
        # The next transaction starts a log that applies.
        resultOf(again.changeFlags([1], ["\\Seen"], REMOVE))
        assert self._restarted(store).messages()[0].flags == {"\\Flagged"}

    def test_syncOfAnUnchangedFolderKeepsTheView(self, store):
        """
        A sync that finds the index as the view last saw it (the same
        UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, claims and keywords) keeps the
        view's state rather than building it again, and a view opened then
        takes it too; any change, here another view's flag change, makes a
        new one.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"])]))
        mailbox = store.openMailbox(ALICE)
        state = mailbox._state
        mailbox.sync()
        assert mailbox._state is state
        # Another view of the folder as it is takes the same state.
        assert store.openMailbox(ALICE)._state is state
        resultOf(store.openMailbox(ALICE).changeFlags([2], ["\\Seen"], ADD))
        mailbox.sync()
        assert mailbox._state is not state
        assert [m.flags for m in mailbox.messages()] == [frozenset(), {"\\Seen"}]

    def _ageFolder(self, inbox, seconds=60):
        past = time.time() - seconds
        for sub in ("new", "cur"):
            os.utime(os.path.join(inbox, sub), (past, past))

    def _countListings(self, monkeypatch):
        listed = []
        listdir = os.listdir

        def counting(path):
            listed.append(os.path.basename(path))
            return listdir(path)

        monkeypatch.setattr(os, "listdir", counting)
        return listed

    def test_folderLeftAloneIsNotListedAgain(self, store, inbox, monkeypatch):
        """
        Once C{new/} and C{cur/} were last changed longer ago than
        L{maildirindex.LOOK_MARGIN}, a sync that finds them and the index as
        they were lists neither again.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"])]))
        mailbox = store.openMailbox(ALICE)
        self._ageFolder(inbox)
        listed = self._countListings(monkeypatch)
        mailbox.sync()
        assert sorted(listed) == ["cur", "new"]
        del listed[:]
        for _ in range(3):
            mailbox.sync()
            store.openMailbox(ALICE)
        assert listed == []
        assert [m.uid for m in mailbox.messages()] == [1, 2]

    def test_changesAfterALookAreSeen(self, store, inbox, monkeypatch):
        """
        A change by another program after the folder was looked at gives
        its directory a later time: the next sync lists it and sees the
        change.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"])]))
        mailbox = store.openMailbox(ALICE)
        self._ageFolder(inbox)
        mailbox.sync()
        cur = os.path.join(inbox, "cur")
        [name] = os.listdir(cur)
        os.rename(os.path.join(cur, name), os.path.join(cur, name.partition(":")[0] + ":2,F"))
        mailbox.sync()
        assert mailbox.messages()[0].flags == {"\\Flagged"}
        self._ageFolder(inbox)
        mailbox.sync()
        with open(os.path.join(inbox, "new", "1700000000.1.other"), "wb") as f:
            f.write(b"Subject: dropped\n\nhi\n")
        mailbox.sync()
        assert [m.uid for m in mailbox.messages()] == [1, 2]

    def test_folderChangedLatelyIsListedEachTime(self, store, inbox, monkeypatch):
        """
        Within L{maildirindex.LOOK_MARGIN} of its last change, a change in
        the same tick of the clock could leave a directory's time as it
        was: each sync lists the folder.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"])]))
        mailbox = store.openMailbox(ALICE)
        listed = self._countListings(monkeypatch)
        mailbox.sync()
        mailbox.sync()
        assert sorted(listed) == ["cur", "cur", "new", "new"]

    def test_listingOfCur(self, store, inbox):
        """
        The listing of C{cur/} keys each file by its name before C{:};
        of two files of one key the later name counts, and hidden files
        and names with line breaks are left out.
        """
        cur = os.path.join(inbox, "cur")
        index = maildirindex.FolderIndex(inbox, inbox, "INBOX")
        for name in ("1.a:2,S", "2.b:2,", "3.c"):
            open(os.path.join(cur, name), "wb").close()
        assert index._listCur() == {"1.a": "1.a:2,S", "2.b": "2.b:2,", "3.c": "3.c"}
        for name in ("1.a:2,ST", ".hidden:2,", "4.d\n:2,"):
            open(os.path.join(cur, name), "wb").close()
        assert index._listCur() == {"1.a": "1.a:2,ST", "2.b": "2.b:2,", "3.c": "3.c"}

    def test_lostLogNeverLowersUidNextOrModSeq(self, store, inbox):
        """
        The log lost (removed by hand, or the disk lost it), the index goes
        on from the last change remembered beside it: no UID and no
        modification sequence is given out twice.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"])]))
        mailbox = store.openMailbox(ALICE)
        resultOf(mailbox.append(b"2"))
        resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
        before = (mailbox.uidNext, mailbox.highestModSeq)
        os.unlink(os.path.join(inbox, maildirindex.LOG_NAME))
        again = self._restarted(store)
        assert again.uidValidity == mailbox.uidValidity
        assert (again.uidNext, again.highestModSeq) > before
        assert again.uidNext >= before[0] and again.highestModSeq > before[1]
        # The message the lost log had taken in is found again, as new.
        assert [m.uid for m in again.messages()][-1] >= before[0]

    def test_readersFollowTheLogOfAnotherProcess(self, store, inbox, monkeypatch):
        """
        A store reading the index after another store appended to its log
        reads on from where it stopped; after the log was folded into a
        new index, it reads that.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"])]))
        reader = self._restarted(store)
        writer = self._restarted(store)
        resultOf(writer.changeFlags([1], ["\\Seen"], ADD))
        reader.sync()
        assert [m.flags for m in reader.messages()] == [{"\\Seen"}, frozenset()]
        monkeypatch.setattr(maildirindex, "LOG_COMPACT_SIZE", 0)
        resultOf(writer.changeFlags([2], ["\\Draft"], ADD))
        monkeypatch.undo()
        assert maildirindex.readIndex(inbox).generation == 2
        reader.sync()
        assert [m.flags for m in reader.messages()] == [{"\\Seen"}, {"\\Draft"}]
        resultOf(writer.expunge([1]))
        reader.sync()
        assert [m.uid for m in reader.messages()] == [2]

    def test_cacheEntriesOfExpungedMessagesDropped(self, store):
        """
        Expunging a message drops its entry in the folder's cache, through
        the view's own connection when SQLite lets threads share it.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [b"1"]), (ALICE, "INBOX", [b"2"])]))
        mailbox = store.openMailbox(ALICE)
        first, second = [m.key for m in mailbox.messages()]
        mailbox.cacheData(first, b"one")
        mailbox.cacheData(second, b"two")
        resultOf(mailbox.expunge([1]))
        other = store.openMailbox(ALICE)
        assert (other.cachedData(first), other.cachedData(second)) == (None, b"two")
        assert mailbox.cachedData(second) == b"two"

    def test_flagChangeOnTheCallingThread(self, tmp_path, monkeypatch):
        """
        With C{transactsOnCaller}, a flag change runs its transaction at
        once on the calling thread and hands only its syncs (the log, then
        cur/) to a worker thread; its result comes once they ran.  While
        another transaction holds the folder lock, the whole change waits
        in a worker thread instead.
        """
        runner = QueuedRunner()
        store = MaildirStore(str(tmp_path / "mail"), runInThread=runner, transactsOnCaller=True)
        store.createAccount(ALICE)
        for _ in range(2):
            d = store.deliver([(ALICE, "INBOX", [MESSAGE])])
            runner.runAll()
            resultOf(d)
        mailbox = store.openMailbox(ALICE)
        assert len(mailbox.messages()) == 2
        synced = []
        monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(os.readlink("/proc/self/fd/%d" % fd)))
        monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink("/proc/self/fd/%d" % fd)))
        d = mailbox.changeFlags([1], ["\\Seen"], ADD)
        # Done, not yet durable: on disk, not told.
        assert [f.__name__ for f, _, _ in runner.calls] == ["runSyncs"]
        assert maildirindex.readIndex(mailbox.path).entries
        assert any(name.endswith(":2,S") for name in os.listdir(os.path.join(mailbox.path, "cur")))
        assert synced == [] and not d.called
        opened = set(os.listdir("/proc/self/fd"))
        runner.runAll()
        assert synced == [os.path.join(mailbox.path, maildirindex.LOG_NAME), os.path.join(mailbox.path, "cur")]
        # The log and cur/, open for the syncs, are closed once they ran.
        assert len(set(os.listdir("/proc/self/fd"))) == len(opened) - 2
        assert resultOf(d)[1].flags == {"\\Seen"}
        assert mailbox.messages()[0].flags == {"\\Seen"}
        # The lock held elsewhere: the change waits for it in a thread.
        with maildirindex.FolderLock(mailbox.path):
            d = mailbox.changeFlags([2], ["\\Flagged"], ADD)
            assert [f.__name__ for f, _, _ in runner.calls] == ["_transact"]
        runner.runAll()
        assert resultOf(d)[2].flags == {"\\Flagged"}

    def test_flagChangeWhoseSyncFailsFails(self, tmp_path, monkeypatch):
        """
        A flag change made on the calling thread whose log cannot be synced
        fails as one made in a thread does, and leaves no descriptor open.
        """
        store = MaildirStore(str(tmp_path / "mail"), runInThread=runNow, transactsOnCaller=True)
        store.createAccount(ALICE)
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        mailbox = store.openMailbox(ALICE)
        before = len(os.listdir("/proc/self/fd"))

        def failing(fd):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", failing)
        with pytest.raises(TemporaryFailure):
            resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
        assert len(os.listdir("/proc/self/fd")) == before

    def test_folderBeingMadeIsNotListed(self, store, inbox):
        """
        A folder's directory whose new/ is not made yet (new/ is made last)
        is not listed: it could not be opened yet.
        """
        listed = store.listMailboxes(ALICE)
        os.makedirs(os.path.join(inbox, ".Work", "cur"))
        assert store.listMailboxes(ALICE) == listed
        with pytest.raises(NotFound):
            store.openMailbox(ALICE, "Work")
        os.mkdir(os.path.join(inbox, ".Work", "new"))
        assert store.listMailboxes(ALICE) == ["INBOX"] + sorted(listed[1:] + ["Work"])
        assert store.openMailbox(ALICE, "Work").messages() == []

    def test_parsedIndexesAreBounded(self, store):
        """
        The indexes a process keeps parsed hold at most
        L{maildirindex.ParsedIndexes.limit} messages in all: the least
        recently used folder goes first, and a folder whose index went is
        read again, as it is on disk.
        """
        kept = store._parsedIndexes
        kept.limit = 25  # two folders of ten messages: 22
        names = ["F%d" % i for i in range(5)]
        for name in names:
            store.createMailbox(ALICE, name)
            resultOf(store.deliver([(ALICE, name, [MESSAGE])] * 10))
            resultOf(store.openMailbox(ALICE, name).sync())
        paths = [os.path.join(store.root, "example.com", "alice", "." + name) for name in names]
        assert [path in kept for path in paths] == [False, False, False, True, True]
        assert kept.weight == 22
        first = store.openMailbox(ALICE, names[0])
        assert [m.uid for m in first.messages()] == list(range(1, 11))
        assert [path in kept for path in paths] == [True, False, False, False, True]
        # One folder larger than the limit is still kept, alone.
        resultOf(store.deliver([(ALICE, names[1], [MESSAGE])] * 50))
        assert len(store.openMailbox(ALICE, names[1]).messages()) == 60
        assert paths[1] in kept and len([path for path in paths if path in kept]) == 1

    def test_olderStateNeverInstalled(self, store):
        """
        A state read without the lock before another transaction wrote may
        arrive after that transaction's: the view keeps the newer one.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        mailbox = store.openMailbox(ALICE)
        stale = mailbox._index.snapshot(mailbox._buildState)
        resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
        fresh = mailbox._index.snapshot(mailbox._buildState)
        assert stale.serial < fresh.serial
        mailbox._install(((fresh, None), None), sync=True)
        later = mailbox._index.snapshot(mailbox._buildState)
        mailbox._install(((stale, None), None), sync=True)
        assert mailbox.messages()[0].flags == {"\\Seen"}
        # Built after, from an older index: still not taken.
        stale.serial = later.serial + 1
        mailbox._install(((stale, None), None), sync=True)
        assert mailbox.messages()[0].flags == {"\\Seen"}

    def test_directoriesSyncedAfterLockBeforeResult(self, store, inbox, monkeypatch):
        """
        A transaction's directories reach the disk once the folder lock is
        released, so other transactions go on meanwhile, and before its
        result: a change whose names cannot be made durable fails.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        mailbox = store.openMailbox(ALICE)
        synced = []

        def fsyncDirectory(path):
            fd = os.open(os.path.join(inbox, maildirindex.LOCK_NAME), os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                synced.append(("locked", path))
            else:
                synced.append(path)
            finally:
                os.close(fd)

        monkeypatch.setattr(maildirindex, "fsyncDirectory", fsyncDirectory)
        # The index's changes go to its log, synced under the lock: only
        # the names changed in cur/ are left to sync.
        resultOf(mailbox.changeFlags([1], ["\\Seen"], ADD))
        assert synced == [os.path.join(inbox, "cur")]
        del synced[:]
        resultOf(mailbox.append(MESSAGE))
        assert synced == [os.path.join(inbox, "cur")]
        del synced[:]
        resultOf(mailbox.expunge([1]))
        assert synced == [os.path.join(inbox, "cur")]
        del synced[:]
        # An index written whole (here, its log due to be folded in) has
        # its name synced under the lock, before its new log replaces the
        # old one; the log's name after it.
        monkeypatch.setattr(maildirindex, "LOG_COMPACT_SIZE", 0)
        resultOf(mailbox.changeFlags([2], ["\\Seen"], ADD))
        assert synced == [("locked", inbox), inbox, os.path.join(inbox, "cur")]

        def failing(path):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(maildirindex, "fsyncDirectory", failing)
        with pytest.raises(TemporaryFailure):
            resultOf(mailbox.changeFlags([2], ["\\Flagged"], ADD))
        with pytest.raises(TemporaryFailure):
            resultOf(mailbox.expunge([2]))

    def test_cacheWritesKeepTheirJournal(self, store, inbox):
        """
        Writes to the cache empty its rollback journal rather than make
        and remove one file per entry.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE]), (ALICE, "INBOX", [b"2"])]))
        mailbox = store.openMailbox(ALICE)
        first, second = [m.key for m in mailbox.messages()]
        journal = os.path.join(inbox, maildir.CACHE_NAME + "-journal")
        mailbox.cacheData(first, b"one")
        before = os.stat(journal)
        mailbox.cacheData(second, b"two")
        after = os.stat(journal)
        assert (after.st_ino, after.st_size) == (before.st_ino, 0)
        assert mailbox.cachedData(second) == b"two"

    def test_expungeForgetsCachedData(self, store):
        """
        The cache entries of expunged messages are dropped.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE]), (ALICE, "INBOX", [b"2"])]))
        mailbox = store.openMailbox(ALICE)
        first, second = [m.key for m in mailbox.messages()]
        mailbox.cacheData(first, b"one")
        mailbox.cacheData(second, b"two")
        assert resultOf(mailbox.expunge([1])) == [1]
        other = store.openMailbox(ALICE)
        assert other.cachedData(first) is None
        assert other.cachedData(second) == b"two"

    def test_cacheWritesOnTheReactorAreMadeTogether(self, tmp_path, inbox, monkeypatch):
        """
        On the reactor thread, entries set and removed wait in memory,
        where every view of the folder reads them, for
        L{maildir.CACHE_WRITE_DELAY} seconds; then they are written in one
        transaction.
        """
        clock = Clock()
        store = MaildirStore(str(tmp_path / "mail"), runInThread=runNow, reactor=clock)
        resultOf(store.deliver([(ALICE, "INBOX", [b"%d" % i]) for i in range(3)]))
        mailbox = store.openMailbox(ALICE)
        first, second, third = [m.key for m in mailbox.messages()]
        # On a thread of the pool: written at once.
        monkeypatch.setattr(maildir, "isInIOThread", lambda: False)
        mailbox.cacheData(first, b"one")
        monkeypatch.setattr(maildir, "isInIOThread", lambda: True)
        mailbox.cacheData(second, b"two")
        mailbox.cacheData(third, b"three")
        mailbox._forgetCached([first, third])
        other = store.openMailbox(ALICE)
        for view in (mailbox, other):
            assert [view.cachedData(key) for key in (first, second, third)] == [None, b"two", None]
        elsewhere = MaildirStore(str(tmp_path / "mail"), runInThread=runNow).openMailbox(ALICE)
        assert [elsewhere.cachedData(key) for key in (first, second, third)] == [b"one", None, None]
        statements = []
        opened = maildir._openCache

        def traced(path):
            connection = opened(path)
            connection.set_trace_callback(statements.append)
            return connection

        monkeypatch.setattr(maildir, "_openCache", traced)
        clock.advance(maildir.CACHE_WRITE_DELAY)
        assert [elsewhere.cachedData(key) for key in (first, second, third)] == [None, b"two", None]
        assert [s.split()[0] for s in statements] == ["BEGIN", "INSERT", "DELETE", "DELETE", "COMMIT"]
        assert clock.getDelayedCalls() == [] and store._cacheWrites == {}

    def test_renameMovesDirectories(self, store, inbox):
        store.createMailbox(ALICE, "Lists")
        store.createMailbox(ALICE, "Lists/Work")
        store.createMailbox(ALICE, "Listserv")
        store.renameMailbox(ALICE, "Lists", "Archive/Lists")
        entries = listing(inbox)
        assert ".Archive.Lists" in entries and ".Archive.Lists.Work" in entries
        assert ".Listserv" in entries
        assert ".Lists" not in entries and ".Lists.Work" not in entries

    def test_listIgnoresOtherDirectories(self, store, inbox):
        os.mkdir(os.path.join(inbox, ".notAFolder"))
        os.mkdir(os.path.join(inbox, "..mdpy-deleted.x"))
        assert store.listMailboxes(ALICE) == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]

    def test_deleteAccountRemovesTree(self, store, inbox):
        assert store.deleteAccount(ALICE) == (inbox, None)
        assert not os.path.exists(inbox)
        assert os.listdir(os.path.dirname(inbox)) == []
        assert [name for name in os.listdir(store.root) if name.startswith(".deleting")] == []
        assert not os.path.exists(store.archiveRoot)

    def test_deleteAccountArchivesTree(self, store, inbox, tmp_path):
        """
        The archived tree is the whole Maildir++ tree, moved to
        C{deleted/<UTC time>/<domain>/<localpart>} beside the store's root;
        a second one within the same second gets its own time folder.
        """
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        where, keptAt = store.deleteAccount(ALICE, archive=True)
        assert where == inbox
        assert re.fullmatch(
            re.escape(str(tmp_path / "deleted")) + r"/[0-9]{8}T[0-9]{6}Z/example\.com/alice", keptAt
        ), keptAt
        assert len(os.listdir(os.path.join(keptAt, "new"))) == 1
        assert os.path.isdir(os.path.join(keptAt, ".Sent", "cur"))
        assert not os.path.exists(inbox)
        store.createAccount(ALICE)
        again = store.deleteAccount(ALICE, archive=True)[1]
        assert again != keptAt and os.path.isdir(again)

    def test_archiveOnAnotherFileSystemIsCopied(self, store, inbox, monkeypatch):
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        rename = os.rename

        def crossDevice(source, target):
            if target.startswith(store.archiveRoot):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            rename(source, target)

        monkeypatch.setattr(os, "rename", crossDevice)
        keptAt = store.deleteAccount(ALICE, archive=True)[1]
        assert len(os.listdir(os.path.join(keptAt, "new"))) == 1
        assert sorted(os.listdir(store.root)) == [".mdpy-uidvalidity", "example.com"]
        assert os.listdir(os.path.join(store.root, "example.com")) == []

    def test_deleteDomainArchivesTree(self, store, inbox):
        store.createAccount("bob@example.com")
        where, keptAt = store.deleteDomain("example.com", archive=True)
        assert where == os.path.dirname(inbox)
        assert sorted(os.listdir(keptAt)) == ["alice", "bob"]
        assert not os.path.exists(where)
        assert store.deleteDomain("example.com") is None
        with pytest.raises(InvalidInput):
            store.deleteDomain("..")

    def test_deliveryAfterDeleteFails(self, store, inbox):
        """
        A delivery that took its path before the tree left fails with
        L{NotFound} and makes no new tree at the old path.
        """
        store.deleteAccount(ALICE, archive=True)
        with pytest.raises(NotFound):
            resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        assert not os.path.exists(inbox)

    def test_uidValidityAboveDeletedAccount(self, store, inbox):
        """
        UIDVALIDITYs of an old tree that were ahead of the clock (many
        mailboxes made at once), or an old tree brought from elsewhere, are
        never given out again to its successor.
        """
        with open(os.path.join(inbox, maildirindex.UIDVALIDITY_NAME), "w") as f:
            f.write("%d\n" % (2 ** 31,))
        store.deleteAccount(ALICE)
        store.createAccount(ALICE)
        assert store.openMailbox(ALICE).uidValidity == 2 ** 31 + 1
        assert store.openMailbox(ALICE, "Sent").uidValidity == 2 ** 31 + 2


class TestIndexFormat:
    def test_roundTrip(self):
        uidList = maildirindex.UidList(7, 1, 0, {})
        uidList.add("a b", "2,S", 120)
        uidList.add("c", "")
        uidList.add("d", "2,a-b %", 7)
        text = uidList.serialise().decode()
        assert text.splitlines() == [
            "V2 7 4 1 R0", "1 1 2,S 120 a b", "2 1 - - c", "3 1 2,a%2Db%20%25 7 d",
        ]
        parsed = maildirindex.UidList.parse(text)
        assert parsed.entries == uidList.entries
        assert (parsed.uidValidity, parsed.uidNext, parsed.highestModSeq) == (7, 4, 1)
        assert parsed.recentThreshold == 0

    def test_claimRecent(self):
        """
        Claiming takes every UID above the threshold and raises it to the
        last UID given out; once all are claimed, the header is as it was
        before claims were kept.
        """
        uidList = maildirindex.UidList.parse("V2 7 6 1 R2\n1 1 - - a\n4 1 - - b\n5 1 - - c\n")
        assert uidList.recentThreshold == 2
        assert uidList.claimRecent() == (4, 5)
        assert (uidList.recentThreshold, uidList.claimed, uidList.dirty) == (5, (4, 5), True)
        assert uidList.header() == "V2 7 6 1\n"
        assert uidList.claimRecent() == ()
        uidList.add("d", "")
        assert uidList.header() == "V2 7 7 2 R5\n"

    def test_indexWithoutClaimsHasNothingNew(self):
        """
        An index written before claims were kept: every message in it
        counts as claimed.
        """
        uidList = maildirindex.UidList.parse("V2 7 4 1\n1 1 - - a\n3 1 - - b\n")
        assert uidList.recentThreshold == 3
        assert uidList.claimRecent() == ()
        assert not uidList.dirty

    @pytest.mark.parametrize("text", [
        "V1 7 4 1\n2 1 - a\n1 1 - b\n",   # UIDs out of order
        "V1 7 2 1\n2 1 - a\n",            # UID not below uidnext
        "V1 7 4 1\n1 2 - a\n",            # modseq above the highest
        "V1 7 4 1\n1 1 - a\n2 1 - a\n",   # one name twice
        "V1 0 1 0\n",                     # no uidvalidity
        "V3 7 4 1\n",
        "V1 7 4 1\n1 1 -\n",
        "V2 7 4 1\n1 1 - x a\n",           # size not a number
        "V2 7 4 1 R4\n",                    # claimed beyond UIDNEXT
        "V2 7 4 1 R\n",
    ])
    def test_inconsistent(self, text):
        with pytest.raises(ValueError):
            maildirindex.UidList.parse(text)

    def test_version1IndexIsRead(self):
        """An index written before sizes were kept still loads."""
        parsed = maildirindex.UidList.parse("V1 7 3 1\n1 1 2,S a b\n2 1 - c\n")
        assert parsed.entries == {"a b": (1, 1, "2,S", None), "c": (2, 1, "", None)}

    def test_folderNames(self):
        assert mailbox.normaliseFolderName("inbox") == "INBOX"
        assert mailbox.normaliseFolderName("Inbox/Sub") == "INBOX/Sub"
        assert maildir._folderDirName("Lists/Work") == ".Lists.Work"
        for name in ["Entwürfe", "a&b", "日本語/x", "~peter/mail/台北"]:
            assert maildir._folderNameFromDir(maildir._folderDirName(name)) == name
        assert mutf7.encode("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"


def poolRecordingStore(tmp_path):
    """
    @return: a L{MaildirStore} with the account L{ALICE}, and the list of
        the functions it runs in its thread pool from now on.
    """
    pooled = []

    def recordingRunner(f, *args):
        pooled.append(f)
        return defer.maybeDeferred(f, *args)

    store = MaildirStore(str(tmp_path / "mail"), runInThread=recordingRunner)
    store.createAccount(ALICE)
    return store, pooled


def test_readFromThePageCacheAtOnceElseInThePool(tmp_path, monkeypatch):
    """
    A message the kernel can read without waiting for the disk is read at
    once; one it cannot (C{RWF_NOWAIT} fails) is read in the store's
    thread pool.  Both give the octets with CR LF line endings.
    """
    store, pooled = poolRecordingStore(tmp_path)
    resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
    [message] = store.openMailbox(ALICE).messages()
    pooled.clear()
    assert resultOf(message.read()) == MESSAGE
    assert pooled == []

    def wouldBlock(*args):
        raise BlockingIOError(errno.EAGAIN, "would block")

    monkeypatch.setattr(maildir.os, "preadv", wouldBlock)
    assert resultOf(message.read()) == MESSAGE
    assert pooled == [message.readFile]


def test_readOfAFileMovedOrRemovedSinceTheSync(tmp_path):
    """
    A message file renamed by another program since the last sync is
    found again, and one removed fails the read's Deferred with
    L{NotFound}; both searches list directories, which happens in the
    store's thread pool, never in the caller's thread.
    """
    store, pooled = poolRecordingStore(tmp_path)
    for data in (MESSAGE, MESSAGE + b"2"):
        resultOf(store.deliver([(ALICE, "INBOX", [data])]))
    moved, removed = store.openMailbox(ALICE).messages()
    cur = os.path.join(store.folderPath(ALICE), "cur")
    os.rename(os.path.join(cur, moved.filename), os.path.join(cur, moved.key + ":2,S"))
    os.unlink(os.path.join(cur, removed.filename))
    pooled.clear()
    assert resultOf(moved.read()) == MESSAGE
    d = removed.read()
    assert isinstance(d, defer.Deferred)
    with pytest.raises(NotFound):
        resultOf(d)
    assert pooled == [moved.readFile, removed.readFile]


def test_stateAfterAChangeIsAsIfMadeAnew(tmp_path, monkeypatch):
    """
    A view's state after its own flag changes and appends (made from its
    previous state) is the one a new view of the folder makes; also after
    another process changed the folder meanwhile.
    """
    madeFromPrevious = []
    changedMessages = maildir.MaildirMailbox._changedMessages

    def spy(self, *args):
        result = changedMessages(self, *args)
        madeFromPrevious.append(result is not None)
        return result

    monkeypatch.setattr(maildir.MaildirMailbox, "_changedMessages", spy)
    store = MaildirStore(str(tmp_path / "mail"), runInThread=runNow)
    store.createAccount(ALICE)
    for n in range(5):
        resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE + b"%d\r\n" % n])]))
    mailbox = store.openMailbox(ALICE)

    def seen(view):
        return [(m.uid, m.key, m.filename, m.flags, m.modSeq, m.size) for m in view.messages()]

    def fresh():
        return seen(MaildirStore(str(tmp_path / "mail"), runInThread=runNow).openMailbox(ALICE))

    before = mailbox._state
    resultOf(mailbox.changeFlags([2, 4], ["\\Seen"], ADD))
    assert seen(mailbox) == fresh()
    assert mailbox.messages()[0] is before.messages[0]  # unchanged: kept
    resultOf(mailbox.changeFlags([4], ["$Label1"], ADD))  # a new keyword
    assert seen(mailbox) == fresh()
    resultOf(mailbox.append(MESSAGE, ["\\Flagged"]))
    assert seen(mailbox) == fresh()
    assert madeFromPrevious.count(True) == 2  # the first change and the append
    elsewhere = MaildirStore(str(tmp_path / "mail"), runInThread=runNow).openMailbox(ALICE)
    resultOf(elsewhere.changeFlags([1], ["\\Answered"], ADD))
    resultOf(elsewhere.append(MESSAGE))
    resultOf(mailbox.changeFlags([3], ["\\Draft"], ADD))
    assert seen(mailbox) == fresh()
    resultOf(mailbox.expunge([2]))
    resultOf(mailbox.changeFlags([5], ["\\Seen"], ADD))
    assert seen(mailbox) == fresh()
    assert [uid for uid, *_ in seen(mailbox)] == [1, 3, 4, 5, 6, 7]
    assert mailbox._state.byUid == {m.uid: m for m in mailbox.messages()}
