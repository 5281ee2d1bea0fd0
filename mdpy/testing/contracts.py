# -*- test-case-name: tests.contract -*-
"""
The contract suites of the backend seams: what every implementation of
L{IMailStore}, L{IOutboundQueue}, L{IDirectory}, L{IDedupeCache},
L{ICollectorStates}, L{IMaildropLocks}, L{ILoginFailures},
L{IRemoteAccounts}, L{IChangeFeed} and L{IDeliveryTarget} keeps, as pytest
test classes.  A
backend author subclasses each and says how to make the object under test;
mdpy runs them against its own backends in C{tests/contract/}.

This module is past ~800 lines on purpose: it is the specification of a
backend in executable form, one suite per seam, shipped whole so that an
outside backend runs exactly the suites mdpy's own backends run.

Each suite works through the interface only, and takes every result
through L{resultOf}: the object must be built so that its Deferreds have
fired when they are returned (the files backend before its thread pool
starts, the memory backend always).
"""

import io

import pytest
from twisted.internet import defer
from zope.interface.verify import verifyObject

from mdpy.envelope import Envelope
from mdpy.errors import Exists, InvalidInput, LimitExceeded, MailError, NotFound
from mdpy.interfaces import (
    IChangeFeed,
    ICollectorStates,
    IDedupeCache,
    IDelivery,
    IDeliveryTarget,
    IDirectory,
    ILoginFailures,
    IMailbox,
    IMaildropLocks,
    IMailStore,
    IOutboundQueue,
    IRemoteAccounts,
    IStoredMessage,
    ITwoPhaseDelivery,
)
from mdpy import mailbox as mailboxRules
from mdpy.mailbox import ADD, REMOVE, REPLACE
from mdpy.quota import Quota, Usage
from mdpy.testing import resultOf

ALICE = "alice@example.com"
BOB = "bob@example.org"
MESSAGE = b"From: a@b\r\nSubject: hi\r\n\r\nhello\r\n"


class StoreContract:
    """
    Tests of L{IMailStore} that any store passes, whether its methods
    return values or Deferreds (each result goes through L{resultOf}, so
    a Deferred must have fired: build the store so that its work runs at
    once).  A subclass defines C{makeStore(tmp_path)}, or overrides the
    C{store} fixture.
    """

    def makeStore(self, tmp_path):
        raise NotImplementedError()

    @pytest.fixture
    def store(self, tmp_path):
        store = self.makeStore(tmp_path)
        resultOf(store.createAccount(ALICE))
        return store

    def deliver(self, store, *messages, account=ALICE, folder="INBOX"):
        resultOf(store.deliver([(account, folder, [m]) for m in messages]))

    def test_interfaces(self, store):
        self.deliver(store, MESSAGE)
        mailbox = resultOf(store.openMailbox(ALICE))
        assert verifyObject(IMailStore, store)
        assert verifyObject(IMailbox, mailbox)
        assert verifyObject(IStoredMessage, mailbox.messages()[0])

    def test_createAccount(self, store):
        assert resultOf(store.accountExists(ALICE))
        assert not resultOf(store.accountExists(BOB))
        resultOf(store.createAccount(ALICE))
        expected = ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
        assert resultOf(store.listMailboxes(ALICE)) == expected
        assert resultOf(store.accountExists("Alice@EXAMPLE.com"))

    def test_deliverAndRead(self, store):
        body = io.BytesIO(b"XXXXbody\r\n")
        body.read(4)
        resultOf(store.deliver([(ALICE, "INBOX", [b"Subject: x\r\n\r\n", body])]))
        [message] = resultOf(store.openMailbox(ALICE)).messages()
        with resultOf(message.open()) as f:
            assert f.read() == b"Subject: x\r\n\r\nbody\r\n"
        assert message.size == len(b"Subject: x\r\n\r\nbody\r\n")
        assert message.flags == frozenset()
        assert message.uid == 1
        assert isinstance(message.internalDate, float)

    def test_deliverToSeveral(self, store):
        resultOf(store.createAccount(BOB))
        resultOf(store.deliver([
            (ALICE, "INBOX", [MESSAGE]),
            (BOB, "Junk", [MESSAGE + b"2"]),
            ("ALICE@example.com", "INBOX", [MESSAGE + b"3"]),
        ]))
        inbox = resultOf(store.openMailbox(ALICE)).messages()
        assert [resultOf(m.read()) for m in inbox] == [MESSAGE, MESSAGE + b"3"]
        assert inbox[0].key != inbox[1].key
        [junk] = resultOf(store.openMailbox(BOB, "Junk")).messages()
        assert resultOf(junk.read()) == MESSAGE + b"2"
        assert resultOf(store.openMailbox(BOB)).messages() == []

    def test_deliverMissingAccount(self, store):
        with pytest.raises(NotFound):
            resultOf(store.deliver([(BOB, "INBOX", [MESSAGE])]))

    def test_deliverMissingFolder(self, store):
        with pytest.raises(NotFound):
            resultOf(store.deliver([(ALICE, "Nope", [MESSAGE])]))
        assert resultOf(store.openMailbox(ALICE)).messages() == []

    def test_deliverAllOrNothing(self, store):
        with pytest.raises(NotFound):
            resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE]), (BOB, "INBOX", [MESSAGE])]))
        assert resultOf(store.openMailbox(ALICE)).messages() == []

    def test_deliverBadFolderName(self, store):
        with pytest.raises(InvalidInput):
            resultOf(store.deliver([(ALICE, "a..b", [MESSAGE])]))

    def test_viewChangesOnlyOnSync(self, store):
        mailbox = resultOf(store.openMailbox(ALICE))
        uidNext = mailbox.uidNext
        self.deliver(store, MESSAGE)
        assert mailbox.messages() == []
        assert mailbox.uidNext == uidNext
        resultOf(mailbox.sync())
        assert len(mailbox.messages()) == 1
        assert mailbox.uidNext == uidNext + 1

    def test_uidsIncrease(self, store):
        self.deliver(store, b"1", b"2")
        self.deliver(store, b"3")
        mailbox = resultOf(store.openMailbox(ALICE))
        assert [m.uid for m in mailbox.messages()] == [1, 2, 3]
        assert [resultOf(m.read()) for m in mailbox.messages()] == [b"1", b"2", b"3"]
        assert mailbox.uidNext == 4
        assert mailbox.uidValidity > 0
        again = resultOf(store.openMailbox(ALICE))
        assert again.uidValidity == mailbox.uidValidity
        assert [m.key for m in again.messages()] == [m.key for m in mailbox.messages()]

    def test_append(self, store):
        mailbox = resultOf(store.openMailbox(ALICE, "Sent"))
        uid = resultOf(mailbox.append(MESSAGE, ["\\Seen", "\\flagged", "\\Recent"], 1000000000))
        [message] = mailbox.messages()
        assert message.uid == uid
        assert message.flags == {"\\Seen", "\\Flagged"}
        assert message.internalDate == 1000000000
        assert resultOf(message.read()) == MESSAGE
        assert message.modSeq <= mailbox.highestModSeq
        assert mailbox.uidNext == uid + 1

    def test_appendFromFile(self, store):
        """
        A message may be given as a binary file, read from its current
        position to its end (a large IMAP APPEND spooled to disk).
        """
        body = b"".join(b"line %d\r\n" % n for n in range(20000))
        source = io.BytesIO(b"skipped" + MESSAGE + body)
        source.seek(len(b"skipped"))
        mailbox = resultOf(store.openMailbox(ALICE, "Sent"))
        uid = resultOf(mailbox.append(source, ["\\Seen"]))
        [message] = mailbox.messages()
        assert message.uid == uid and message.flags == {"\\Seen"}
        assert message.size == len(MESSAGE + body)
        assert resultOf(message.read()) == MESSAGE + body

    def test_appendDefaultDate(self, store):
        import time

        before = time.time()
        mailbox = resultOf(store.openMailbox(ALICE))
        resultOf(mailbox.append(MESSAGE))
        assert mailbox.messages()[0].internalDate >= before - 1

    def test_appendMany(self, store):
        """
        Several messages are stored in one call, in order, with ascending
        UIDs; a message may be given as parts, bytes and files (IMAP
        CATENATE).
        """
        mailbox = resultOf(store.openMailbox(ALICE, "Sent"))
        uids = resultOf(mailbox.appendMany([
            (MESSAGE, ["\\Seen"], 1000000000),
            ([b"From: c@d\r\n\r\n", io.BytesIO(b"body"), b"\r\n"], (), None),
        ]))
        messages = mailbox.messages()
        assert [m.uid for m in messages] == uids and uids[0] < uids[1]
        assert messages[0].flags == {"\\Seen"} and messages[0].internalDate == 1000000000
        assert [resultOf(m.read()) for m in messages] == [MESSAGE, b"From: c@d\r\n\r\nbody\r\n"]

    def test_appendManyAllOrNothing(self, store):
        """
        When one message of an L{IMailbox.appendMany} cannot be stored (its
        file fails to read), none is: not in this view, not in a new one,
        and no UID is used up in a way another view sees a message.
        """

        class Failing(io.RawIOBase):
            def readable(self):
                return True

            def readinto(self, buffer):
                raise OSError(5, "Input/output error")

        mailbox = resultOf(store.openMailbox(ALICE, "Sent"))
        d = mailbox.appendMany([(MESSAGE, (), None), (Failing(), (), None), (MESSAGE, (), None)])
        failures = []
        d.addErrback(failures.append)
        assert len(failures) == 1
        resultOf(mailbox.sync())
        assert mailbox.messages() == []
        assert resultOf(store.openMailbox(ALICE, "Sent")).messages() == []
        uid = resultOf(mailbox.append(MESSAGE))
        assert [m.uid for m in mailbox.messages()] == [uid]

    def test_keyedDeliveryIsNotRepeated(self, store):
        """
        A keyed delivery made again (after a crash) skips the copies it
        stored before, even once they are read; other keys, accounts and
        folders are delivered.
        """
        resultOf(store.createAccount(BOB))
        key = (1700000000, "domainpop/isp/uid-1")
        copies = [(ALICE, "INBOX", [b"one\r\n"]), (ALICE, "Sent", [b"one\r\n"])]
        resultOf(store.deliver(copies, key))
        mailbox = resultOf(store.openMailbox(ALICE))
        resultOf(mailbox.setFlags(mailbox.messages()[0].uid, ["\\Seen"]))
        resultOf(store.deliver(copies + [(BOB, "INBOX", [b"one\r\n"])], key, again=True))
        resultOf(store.deliver([(ALICE, "INBOX", [b"two\r\n"])], (1700000000, "domainpop/isp/uid-2"), again=True))
        assert len(resultOf(store.openMailbox(ALICE)).messages()) == 2
        assert len(resultOf(store.openMailbox(ALICE, "Sent")).messages()) == 1
        assert len(resultOf(store.openMailbox(BOB)).messages()) == 1

    def test_setFlags(self, store):
        self.deliver(store, b"1", b"2")
        mailbox = resultOf(store.openMailbox(ALICE))
        before = mailbox.highestModSeq
        modSeq = resultOf(mailbox.setFlags(2, ["\\Seen", "\\Answered"]))
        assert modSeq > before
        assert mailbox.highestModSeq == modSeq
        first, second = mailbox.messages()
        assert second.flags == {"\\Seen", "\\Answered"}
        assert second.modSeq == modSeq
        assert first.flags == frozenset()
        assert first.modSeq < modSeq
        again = resultOf(mailbox.setFlags(2, []))
        assert again > modSeq
        assert mailbox.messages()[1].flags == frozenset()
        assert resultOf(store.openMailbox(ALICE)).messages()[1].flags == frozenset()

    def test_changedMessageIsANewObject(self, store):
        """
        A message whose flags changed is given as a new object; those given
        before are left as they were (a session compares them by identity).
        """
        self.deliver(store, b"1", b"2")
        mailbox = resultOf(store.openMailbox(ALICE))
        before = mailbox.messages()
        resultOf(mailbox.setFlags(2, ["\\Seen"]))
        after = mailbox.messages()
        assert after[0] is before[0]
        assert after[1] is not before[1]
        assert before[1].flags == frozenset() and after[1].flags == {"\\Seen"}

    def test_setFlagsUnknownUid(self, store):
        mailbox = resultOf(store.openMailbox(ALICE))
        with pytest.raises(NotFound):
            resultOf(mailbox.setFlags(42, ["\\Seen"]))

    def test_changeFlagsStaleViewDoesNotClobber(self, store):
        """
        Two views of one folder, neither synced after the other's change:
        C{+FLAGS} through one and C{-FLAGS} through the other both hold.
        """
        self.deliver(store, MESSAGE)
        resultOf(resultOf(store.openMailbox(ALICE)).changeFlags([1], ["\\Seen"], ADD))
        one, two = resultOf(store.openMailbox(ALICE)), resultOf(store.openMailbox(ALICE))
        assert one.messages()[0].flags == two.messages()[0].flags == {"\\Seen"}
        added = resultOf(one.changeFlags([1], ["\\Answered"], ADD))
        assert added[1].flags == {"\\Seen", "\\Answered"} and added[1].changed
        removed = resultOf(two.changeFlags([1], ["\\Seen"], REMOVE))
        assert removed[1].flags == {"\\Answered"}
        assert removed[1].modSeq > added[1].modSeq
        assert two.messages()[0].flags == {"\\Answered"}
        resultOf(one.changeFlags([1], ["$Junk"], ADD))
        resultOf(two.changeFlags([1], ["\\Flagged"], ADD))
        assert resultOf(store.openMailbox(ALICE)).messages()[0].flags == {"\\Answered", "$Junk", "\\Flagged"}

    def test_changeFlagsModes(self, store):
        self.deliver(store, b"1", b"2")
        mailbox = resultOf(store.openMailbox(ALICE))
        results = resultOf(mailbox.changeFlags([1, 2, 99], ["\\seen", "$Junk", "\\Recent"], REPLACE))
        assert sorted(results) == [1, 2]
        assert results[1].flags == results[2].flags == {"\\Seen", "$Junk"}
        modSeq = results[1].modSeq
        assert mailbox.highestModSeq == modSeq
        same = resultOf(mailbox.changeFlags([1], ["$junk", "\\SEEN"], ADD))
        assert same == {1: (frozenset({"\\Seen", "$Junk"}), modSeq, False)}
        assert mailbox.highestModSeq == modSeq
        removed = resultOf(mailbox.changeFlags([2], ["$JUNK"], REMOVE))
        assert removed[2].flags == {"\\Seen"} and removed[2].changed and removed[2].modSeq > modSeq
        assert [m.flags for m in resultOf(store.openMailbox(ALICE)).messages()] == [{"\\Seen", "$Junk"}, {"\\Seen"}]
        assert resultOf(mailbox.changeFlags([], ["\\Seen"], ADD)) == {}
        with pytest.raises(ValueError):
            resultOf(mailbox.changeFlags([1], ["\\Seen"], "toggle"))

    def test_changeFlagsUnchangedSince(self, store):
        """
        RFC 7162 section 3.1.3: a message changed after the given
        modification sequence is left alone, by whichever view changed it.
        """
        self.deliver(store, b"1", b"2")
        one, two = resultOf(store.openMailbox(ALICE)), resultOf(store.openMailbox(ALICE))
        known = two.highestModSeq
        resultOf(one.changeFlags([1], ["\\Flagged"], ADD))
        results = resultOf(two.changeFlags([1, 2], ["\\Seen"], ADD, unchangedSince=known))
        assert not results[1].changed and results[1].flags == {"\\Flagged"}
        assert results[1].modSeq > known
        assert results[2].changed and results[2].flags == {"\\Seen"}
        again = resultOf(two.changeFlags([2], ["\\Seen"], ADD, unchangedSince=results[2].modSeq))
        assert again[2].changed and again[2].modSeq > results[2].modSeq

    def test_expungeDeletedOnly(self, store):
        """
        An expunge of what a stale view believes is C{\\Deleted} spares a
        message another view took the flag from meanwhile.
        """
        self.deliver(store, b"1", b"2")
        one, two = resultOf(store.openMailbox(ALICE)), resultOf(store.openMailbox(ALICE))
        resultOf(one.changeFlags([1, 2], ["\\Deleted"], ADD))
        resultOf(two.sync())
        resultOf(one.changeFlags([1], ["\\Deleted"], REMOVE))
        doomed = [m.uid for m in two.messages() if "\\Deleted" in m.flags]
        assert doomed == [1, 2]
        assert resultOf(two.expunge(doomed, deletedOnly=True)) == [2]
        assert [m.uid for m in resultOf(store.openMailbox(ALICE)).messages()] == [1]

    def test_keywords(self, store):
        self.deliver(store, MESSAGE)
        mailbox = resultOf(store.openMailbox(ALICE))
        resultOf(mailbox.setFlags(1, ["$Junk", "work", "\\Seen", "$Forwarded"]))
        fresh = resultOf(store.openMailbox(ALICE))
        assert fresh.messages()[0].flags == {"$Junk", "work", "\\Seen", "$Forwarded"}

    def test_expunge(self, store):
        self.deliver(store, b"1", b"2", b"3")
        mailbox = resultOf(store.openMailbox(ALICE))
        first = mailbox.messages()[0]
        before = mailbox.highestModSeq
        assert resultOf(mailbox.expunge([3, 1, 99])) == [1, 3]
        assert [m.uid for m in mailbox.messages()] == [2]
        assert mailbox.highestModSeq > before
        with pytest.raises(NotFound):
            resultOf(first.open())
        self.deliver(store, b"4")
        resultOf(mailbox.sync())
        assert [m.uid for m in mailbox.messages()] == [2, 4]
        assert resultOf(mailbox.expunge([2, 4])) == [2, 4]
        self.deliver(store, b"5")
        assert [m.uid for m in resultOf(store.openMailbox(ALICE)).messages()] == [5]

    def test_expungedSince(self, store):
        """
        The store remembers which UIDs left the folder after a
        modification sequence, whichever view removed them, and a flag
        change leaves no trace there (RFC 7162 section 3.2.5).
        """
        self.deliver(store, b"1", b"2", b"3", b"4")
        one, two = resultOf(store.openMailbox(ALICE)), resultOf(store.openMailbox(ALICE))
        start = one.highestModSeq
        assert resultOf(one.expungedSince(start)) == []
        resultOf(one.expunge([2]))
        middle = one.highestModSeq
        resultOf(two.expunge([4, 1]))
        resultOf(two.setFlags(3, ["\\Seen"]))
        assert resultOf(one.expungedSince(middle)) == [1, 4]
        resultOf(one.sync())
        assert resultOf(one.expungedSince(start)) == [1, 2, 4]
        assert resultOf(one.expungedSince(one.highestModSeq)) == []
        fresh = resultOf(store.openMailbox(ALICE))
        assert resultOf(fresh.expungedSince(start)) == [1, 2, 4]

    def test_expungedSinceIsBounded(self, store, monkeypatch):
        """
        Past L{mdpy.mailbox.EXPUNGES_KEPT} UIDs the oldest are forgotten,
        and a question reaching back past them is answered L{None}.
        """
        monkeypatch.setattr(mailboxRules, "EXPUNGES_KEPT", 3)
        self.deliver(store, b"1", b"2", b"3", b"4", b"5")
        mailbox = resultOf(store.openMailbox(ALICE))
        start = mailbox.highestModSeq
        resultOf(mailbox.expunge([1, 2]))
        first = mailbox.highestModSeq
        resultOf(mailbox.expunge([3]))
        assert resultOf(mailbox.expungedSince(start)) == [1, 2, 3]
        resultOf(mailbox.expunge([4]))
        assert resultOf(mailbox.expungedSince(start)) is None
        assert resultOf(mailbox.expungedSince(first)) == [3, 4]

    def test_claimRecentOnce(self, store):
        """
        The first view to claim gets every message no view claimed; a
        second one gets none of them.  Views that do not claim change
        nothing.
        """
        self.deliver(store, b"1", b"2")
        looking = resultOf(store.openMailbox(ALICE))
        assert looking.recentThreshold == 0
        resultOf(looking.sync())
        first, second = resultOf(store.openMailbox(ALICE)), resultOf(store.openMailbox(ALICE))
        assert first.recentThreshold == 0
        assert resultOf(first.claimRecent()) == [1, 2]
        assert first.claimedUids() == {1, 2}
        assert first.recentThreshold == 2
        assert resultOf(second.claimRecent()) == []
        assert second.claimedUids() == frozenset()
        assert resultOf(store.openMailbox(ALICE)).recentThreshold == 2
        assert resultOf(store.openMailbox(ALICE, "Sent")).recentThreshold == 0

    def test_aClaimingViewClaimsWhatAnotherViewTookIn(self, store):
        """
        A message a view that does not claim took in first (EXAMINE, POP3)
        is still claimed by the next sync of a claiming view.
        """
        claiming = resultOf(store.openMailbox(ALICE))
        assert resultOf(claiming.claimRecent()) == []
        looking = resultOf(store.openMailbox(ALICE))
        self.deliver(store, b"1")
        resultOf(looking.sync())
        assert [m.uid for m in looking.messages()] == [1]
        resultOf(claiming.sync())
        assert claiming.claimedUids() == {1}

    def test_aClaimingViewClaimsWhatItTakesIn(self, store):
        """
        After L{IMailbox.claimRecent}, a view claims the new messages it
        takes in, by a sync or by its own append, unless another claiming
        view took them in first.
        """
        first, second = resultOf(store.openMailbox(ALICE)), resultOf(store.openMailbox(ALICE))
        assert resultOf(first.claimRecent()) == []
        assert resultOf(second.claimRecent()) == []
        self.deliver(store, b"1")
        resultOf(first.sync())
        resultOf(second.sync())
        self.deliver(store, b"2")
        resultOf(second.sync())
        resultOf(first.sync())
        uid = resultOf(first.append(b"3"))
        resultOf(second.sync())
        assert first.claimedUids() == {1, uid}
        assert second.claimedUids() == {2}
        assert resultOf(store.openMailbox(ALICE)).recentThreshold == uid
        self.deliver(store, b"4")
        other = resultOf(store.openMailbox(ALICE))
        assert other.recentThreshold == uid
        assert [m.uid for m in other.messages()][-1] == uid + 1

    def test_claimRecentSkipsExpunged(self, store):
        """
        A message expunged before anyone claimed it is not claimed, and
        the threshold still passes it.
        """
        self.deliver(store, b"1", b"2")
        resultOf(resultOf(store.openMailbox(ALICE)).expunge([2]))
        mailbox = resultOf(store.openMailbox(ALICE))
        assert resultOf(mailbox.claimRecent()) == [1]
        assert mailbox.recentThreshold == 2

    def test_folders(self, store):
        resultOf(store.createMailbox(ALICE, "Lists"))
        resultOf(store.createMailbox(ALICE, "Lists/Work"))
        assert "Lists/Work" in resultOf(store.listMailboxes(ALICE))
        with pytest.raises(Exists):
            resultOf(store.createMailbox(ALICE, "Lists/Work"))
        with pytest.raises(Exists):
            resultOf(store.createMailbox(ALICE, "inbox"))
        self.deliver(store, MESSAGE, folder="Lists/Work")
        resultOf(store.renameMailbox(ALICE, "Lists", "Groups"))
        names = resultOf(store.listMailboxes(ALICE))
        assert "Groups" in names and "Groups/Work" in names
        assert "Lists" not in names and "Lists/Work" not in names
        [message] = resultOf(store.openMailbox(ALICE, "Groups/Work")).messages()
        assert resultOf(message.read()) == MESSAGE
        resultOf(store.deleteMailbox(ALICE, "Groups"))
        names = resultOf(store.listMailboxes(ALICE))
        assert "Groups" not in names and "Groups/Work" in names
        with pytest.raises(NotFound):
            resultOf(store.openMailbox(ALICE, "Groups"))

    def test_folderErrors(self, store):
        with pytest.raises(NotFound):
            resultOf(store.deleteMailbox(ALICE, "Nope"))
        with pytest.raises(NotFound):
            resultOf(store.renameMailbox(ALICE, "Nope", "Other"))
        with pytest.raises(Exists):
            resultOf(store.renameMailbox(ALICE, "Sent", "Trash"))
        with pytest.raises(InvalidInput):
            resultOf(store.deleteMailbox(ALICE, "INBOX"))
        with pytest.raises(InvalidInput):
            resultOf(store.renameMailbox(ALICE, "Sent", "Sent/Old"))
        with pytest.raises(NotFound):
            resultOf(store.openMailbox(ALICE, "Nope"))
        with pytest.raises(NotFound):
            resultOf(store.openMailbox(BOB))
        with pytest.raises(NotFound):
            resultOf(store.createMailbox(BOB, "Folder"))
        with pytest.raises(NotFound):
            resultOf(store.listMailboxes(BOB))

    @pytest.mark.parametrize(
        "name", ["", "/a", "a/", "a//b", "..", "a..b", "a/../b", "a.b", ".hidden", "a\0b"]
    )
    def test_invalidNames(self, store, name):
        with pytest.raises(InvalidInput):
            resultOf(store.createMailbox(ALICE, name))
        with pytest.raises(InvalidInput):
            resultOf(store.openMailbox(ALICE, name))
        with pytest.raises(InvalidInput):
            resultOf(store.renameMailbox(ALICE, "Sent", name))

    def test_folderNameLimits(self, store):
        """
        A folder name whose stored name (C{.A.B} in modified UTF-7, see
        L{mdpy.mailbox.normaliseFolderName}) would pass 255 octets, or deeper than 32 levels, is refused before
        anything changes, by every operation that takes a name.
        """
        before = resultOf(store.listMailboxes(ALICE))
        for name in ["x" * 255, "x" * 300, "\u00e4" * 100, "/".join(["a"] * 33), "a/" + "b" * 253]:
            for call in (store.createMailbox, store.deleteMailbox, store.openMailbox):
                with pytest.raises(LimitExceeded):
                    resultOf(call(ALICE, name))
            with pytest.raises(LimitExceeded):
                resultOf(store.renameMailbox(ALICE, "Sent", name))
        assert resultOf(store.listMailboxes(ALICE)) == before
        longest, deepest = "x" * 254, "/".join(["a"] * 32)
        resultOf(store.createMailbox(ALICE, longest))
        resultOf(store.createMailbox(ALICE, deepest))
        assert {longest, deepest} <= set(resultOf(store.listMailboxes(ALICE)))

    def test_renameRefusedWhenAChildWouldBeTooLong(self, store):
        child = "P/" + "c" * 240
        resultOf(store.createMailbox(ALICE, "P"))
        resultOf(store.createMailbox(ALICE, child))
        with pytest.raises(LimitExceeded):
            resultOf(store.renameMailbox(ALICE, "P", "Q" * 20))
        assert {"P", child} <= set(resultOf(store.listMailboxes(ALICE)))
        assert not [name for name in resultOf(store.listMailboxes(ALICE)) if name.startswith("Q")]

    def test_unicodeFolderName(self, store):
        resultOf(store.createMailbox(ALICE, "Entwürfe & Co/日本"))
        assert "Entwürfe & Co/日本" in resultOf(store.listMailboxes(ALICE))
        self.deliver(store, MESSAGE, folder="Entwürfe & Co/日本")
        assert len(resultOf(store.openMailbox(ALICE, "Entwürfe & Co/日本")).messages()) == 1

    def test_renameInbox(self, store):
        self.deliver(store, b"1", b"2")
        inbox = resultOf(store.openMailbox(ALICE))
        resultOf(store.renameMailbox(ALICE, "INBOX", "Old"))
        moved = resultOf(store.openMailbox(ALICE, "Old")).messages()
        assert sorted(resultOf(m.read()) for m in moved) == [b"1", b"2"]
        resultOf(inbox.sync())
        assert inbox.messages() == []
        self.deliver(store, b"3")
        resultOf(inbox.sync())
        assert [m.uid for m in inbox.messages()] == [3]

    def test_listeners(self, store):
        calls = []
        listener = lambda *args: calls.append(args)
        store.addListener("Alice@Example.com", listener)
        self.deliver(store, MESSAGE)
        assert calls == [(ALICE, "INBOX")]
        mailbox = resultOf(store.openMailbox(ALICE, "Sent"))
        resultOf(mailbox.append(MESSAGE))
        resultOf(mailbox.setFlags(1, ["\\Seen"]))
        resultOf(mailbox.expunge([1]))
        assert calls == [(ALICE, "INBOX")] + [(ALICE, "Sent")] * 3
        store.removeListener(ALICE, listener)
        store.removeListener(ALICE, listener)
        self.deliver(store, MESSAGE)
        assert len(calls) == 4

    def test_listenersHearFolderChanges(self, store):
        """
        Making, renaming and deleting a folder and changing its
        subscription are heard by the account's listeners (renaming: both
        names).
        """
        calls = []
        store.addListener(ALICE, lambda *args: calls.append(args))
        resultOf(store.createMailbox(ALICE, "Work"))
        resultOf(store.setSubscribed(ALICE, "Work", True))
        resultOf(store.renameMailbox(ALICE, "Work", "Play"))
        resultOf(store.setSubscribed(ALICE, "Work", False))
        resultOf(store.deleteMailbox(ALICE, "Play"))
        assert calls == [(ALICE, name) for name in ("Work", "Work", "Work", "Play", "Work", "Play")]

    def test_failingListener(self, store):
        def broken(*args):
            raise RuntimeError("boom")

        store.addListener(ALICE, broken)
        self.deliver(store, MESSAGE)
        assert len(resultOf(store.openMailbox(ALICE)).messages()) == 1

    def test_deleteAccount(self, store):
        self.deliver(store, MESSAGE)
        where, keptAt = resultOf(store.deleteAccount(ALICE))
        assert keptAt is None
        assert not resultOf(store.accountExists(ALICE))
        with pytest.raises(NotFound):
            resultOf(store.openMailbox(ALICE))
        assert resultOf(store.deleteAccount(ALICE)) is None
        resultOf(store.createAccount(ALICE))
        assert resultOf(store.openMailbox(ALICE)).messages() == []

    def test_deleteAccountArchives(self, store):
        """
        An archived account is gone from the store as a removed one is, and
        an account made again under its address starts empty, with a new
        UIDVALIDITY for every mailbox, even within the same second.
        """
        self.deliver(store, MESSAGE)
        resultOf(store.createMailbox(ALICE, "Lists/Work"))
        old = {name: resultOf(store.openMailbox(ALICE, name)).uidValidity for name in resultOf(store.listMailboxes(ALICE))}
        where, keptAt = resultOf(store.deleteAccount(ALICE, archive=True))
        assert keptAt and keptAt != where
        assert not resultOf(store.accountExists(ALICE))
        with pytest.raises(NotFound):
            resultOf(store.deliver([(ALICE, "INBOX", [MESSAGE])]))
        resultOf(store.createAccount(ALICE))
        inbox = resultOf(store.openMailbox(ALICE))
        assert inbox.messages() == []
        assert resultOf(store.listMailboxes(ALICE)) == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
        assert inbox.uidValidity > max(old.values())

    def test_viewOfADeletedAccountChangesNothingOfItsSuccessor(self, store):
        """
        A mailbox view opened before its account was deleted and made again
        (an old POP3 or IMAP session) expunges and flags no message of the
        new account by its old UIDs, which the new one gives out again.
        """
        self.deliver(store, MESSAGE)
        old = resultOf(store.openMailbox(ALICE))
        [uid] = [m.uid for m in old.messages()]
        resultOf(store.deleteAccount(ALICE))
        resultOf(store.createAccount(ALICE))
        self.deliver(store, MESSAGE)
        assert [m.uid for m in resultOf(store.openMailbox(ALICE)).messages()] == [uid]
        for change in (lambda: old.changeFlags([uid], ["\\Deleted"], ADD), lambda: old.expunge([uid])):
            d = defer.maybeDeferred(change)
            d.addErrback(lambda failure: failure.trap(NotFound))
            resultOf(d)
        [message] = resultOf(store.openMailbox(ALICE)).messages()
        assert message.uid == uid and message.flags == frozenset()

    def test_deleteDomain(self, store):
        resultOf(store.createAccount(BOB))
        resultOf(store.createAccount("carol@example.com"))
        self.deliver(store, MESSAGE)
        self.deliver(store, MESSAGE, account=BOB)
        where, keptAt = resultOf(store.deleteDomain("Example.COM", archive=True))
        assert keptAt
        assert not resultOf(store.accountExists(ALICE)) and not resultOf(store.accountExists("carol@example.com"))
        assert len(resultOf(store.openMailbox(BOB)).messages()) == 1
        assert resultOf(store.deleteDomain("example.com")) is None
        resultOf(store.createAccount(ALICE))
        assert resultOf(store.openMailbox(ALICE)).messages() == []
        assert resultOf(store.deleteDomain("example.org"))[1] is None
        assert not resultOf(store.accountExists(BOB))

    def test_usage(self, store):
        """
        L{IMailStore.usage} counts the messages of every folder and their
        octets, and follows expunges.
        """
        assert resultOf(store.usage(ALICE)) == Usage(0, 0)
        self.deliver(store, MESSAGE, MESSAGE + b"2")
        self.deliver(store, MESSAGE, folder="Sent")
        assert resultOf(store.usage(ALICE)) == Usage(3 * len(MESSAGE) + 1, 3)
        mailbox = resultOf(store.openMailbox(ALICE, "Sent"))
        resultOf(mailbox.expunge([mailbox.messages()[0].uid]))
        assert resultOf(store.usage("Alice@Example.COM")) == Usage(2 * len(MESSAGE) + 1, 2)
        assert resultOf(store.usage(BOB)) == Usage(0, 0)


class QueueContract:
    """
    Tests of L{IOutboundQueue} that any outbound queue passes.  A subclass
    overrides the C{queue} fixture.
    """

    @pytest.fixture
    def queue(self):
        raise NotImplementedError()

    def enqueue(self, queue, recipients=("bob@remote.example",), body=MESSAGE, sender="alice@example.com"):
        delivery = queue.startDelivery(Envelope(sender))
        for address in recipients:
            resultOf(defer.maybeDeferred(delivery.addRecipient, address))
        delivery.write(body)
        resultOf(defer.maybeDeferred(delivery.commit))
        return delivery

    def test_interface(self, queue):
        assert verifyObject(IOutboundQueue, queue)

    def test_committedMessageIsListed(self, queue):
        self.enqueue(queue, ["bob@remote.example", "carol@remote.example"])
        [entry] = queue.list()
        assert entry.sender == "alice@example.com"
        assert sorted(r.address for r in entry.recipients) == ["bob@remote.example", "carol@remote.example"]
        entries, held, unreadable = queue.inspect()
        assert [e.id for e in entries] == [entry.id] and unreadable == []

    def test_abortedMessageIsNot(self, queue):
        delivery = queue.startDelivery(Envelope("alice@example.com"))
        resultOf(defer.maybeDeferred(delivery.addRecipient, "bob@remote.example"))
        delivery.write(MESSAGE)
        delivery.abort()
        assert queue.list() == []
        assert queue.inspect()[0] == []

    def test_removeUnknown(self, queue):
        with pytest.raises(NotFound):
            resultOf(defer.maybeDeferred(queue.remove, "no-such-id"))

    def test_discard(self, queue):
        self.enqueue(queue)
        [entry] = queue.inspect()[0]
        queue.discard(entry.id)
        assert queue.inspect()[0] == []
        with pytest.raises(NotFound):
            queue.discard(entry.id)

    def test_holdAndRelease(self, queue):
        queue.hold("remote.example")
        assert "remote.example" in queue.inspect()[1]
        self.enqueue(queue)
        [entry] = queue.list()
        assert entry.id in resultOf(defer.maybeDeferred(queue.release, "remote.example"))
        assert "remote.example" not in queue.inspect()[1]

    def test_stageAdmitWithdraw(self, queue):
        envelope = Envelope("alice@example.com")
        staged = resultOf(queue.stage(envelope, ["bob@remote.example"], [MESSAGE]))
        assert queue.list() == []
        queue.admit(staged)
        assert [e.id for e in queue.list()] == [staged.id]
        other = resultOf(queue.stage(Envelope("alice@example.com"), ["carol@remote.example"], [MESSAGE]))
        resultOf(queue.withdraw(other))
        assert [e.id for e in queue.inspect()[0]] == [staged.id]


class DirectoryContract:
    """
    Tests of L{IDirectory} that any directory passes.  A subclass
    overrides the C{directory} fixture.
    """

    @pytest.fixture
    def directory(self):
        raise NotImplementedError()

    def test_interface(self, directory):
        assert verifyObject(IDirectory, directory)

    def test_domains(self, directory):
        directory.addDomain("Example.COM")
        assert directory.hasDomain("example.com")
        assert directory.listDomains() == ["example.com"]
        with pytest.raises(Exists):
            directory.addDomain("example.com")
        directory.removeDomain("example.com")
        assert not directory.hasDomain("example.com")
        with pytest.raises(NotFound):
            directory.removeDomain("example.com")

    def test_usersResolveAndKeepTheirId(self, directory):
        directory.addDomain("example.com")
        directory.addUser(ALICE, "wonderland")
        assert directory.resolve("Alice@Example.com").local == [ALICE]
        user = directory.getUser(ALICE)
        assert user is not None
        directory.setPassword(ALICE, "looking-glass")
        assert directory.getUser(ALICE).accountId == user.accountId
        directory.removeUser(ALICE)
        assert directory.getUser(ALICE) is None
        directory.addUser(ALICE, "again")
        assert directory.getUser(ALICE).accountId != user.accountId

    def test_userOfAnUnknownDomain(self, directory):
        with pytest.raises(NotFound):
            directory.addUser(ALICE, "wonderland")

    def test_aliases(self, directory):
        directory.addDomain("example.com")
        directory.addUser(ALICE, "wonderland")
        directory.addAlias("team@example.com", [ALICE, "bob@remote.example"])
        resolution = directory.resolve("team@example.com")
        assert resolution.local == [ALICE] and resolution.remote == ["bob@remote.example"]
        directory.removeAlias("team@example.com")
        assert directory.listAliases() == []

    def test_subaddress(self, directory):
        directory.addDomain("example.com")
        directory.addUser(ALICE, "wonderland")
        assert directory.resolve("alice+lists@example.com").local == [ALICE]

    def test_quotas(self, directory):
        """
        An account's own quota replaces its domain's, which applies to the
        accounts without one.
        """
        directory.addDomain("example.com")
        directory.addUser(ALICE, "wonderland")
        directory.addUser("carol@example.com", "wonderland")
        assert not directory.getQuota(ALICE)
        directory.setDomainQuota("example.com", Quota(1000, 10))
        assert directory.getQuota(ALICE) == Quota(1000, 10)
        directory.setUserQuota("Alice@example.com", Quota(None, 3))
        assert directory.getQuota(ALICE) == Quota(None, 3)
        assert directory.getUserQuota(ALICE) == Quota(None, 3)
        assert directory.getQuota("carol@example.com") == Quota(1000, 10)
        assert directory.getDomainQuota("example.com") == Quota(1000, 10)
        directory.setUserQuota(ALICE, None)
        assert directory.getQuota(ALICE) == Quota(1000, 10)
        directory.setDomainQuota("example.com", Quota())
        assert not directory.getQuota(ALICE)
        assert not directory.getQuota("nobody@example.com")
        with pytest.raises(NotFound):
            directory.setUserQuota("nobody@example.com", Quota(1))
        with pytest.raises(NotFound):
            directory.setDomainQuota("example.net", Quota(1))
        with pytest.raises(InvalidInput):
            directory.setUserQuota(ALICE, Quota(-1))

    def test_quotaWarned(self, directory):
        directory.addDomain("example.com")
        directory.addUser(ALICE, "wonderland")
        assert not directory.quotaWarned(ALICE)
        directory.setQuotaWarned(ALICE, True)
        assert directory.quotaWarned(ALICE)
        directory.setQuotaWarned(ALICE, False)
        assert not directory.quotaWarned(ALICE)


class DedupeContract:
    """
    Tests of L{IDedupeCache} that any dedupe cache passes.  A subclass
    overrides the C{dedupe} fixture, made with the clock C{clock} (a
    one-item list: the time now).
    """

    @pytest.fixture
    def clock(self):
        return [1000000.0]

    @pytest.fixture
    def dedupe(self, clock):
        raise NotImplementedError()

    def test_interface(self, dedupe):
        assert verifyObject(IDedupeCache, dedupe)

    def test_deliveredPairsAreDuplicates(self, dedupe):
        assert not resultOf(defer.maybeDeferred(dedupe.isDuplicate, "<1@x>", ALICE))
        resultOf(defer.maybeDeferred(dedupe.markDelivered, "uid1", [("<1@x>", ALICE)]))
        assert resultOf(defer.maybeDeferred(dedupe.isDuplicate, "<1@x>", ALICE))
        assert not resultOf(defer.maybeDeferred(dedupe.isDuplicate, "<1@x>", BOB))

    def test_expire(self, dedupe, clock):
        resultOf(defer.maybeDeferred(dedupe.markDelivered, "uid1", [("<1@x>", ALICE)]))
        clock[0] += 100
        assert resultOf(defer.maybeDeferred(dedupe.isDuplicate, "<1@x>", ALICE, 200))
        assert not resultOf(defer.maybeDeferred(dedupe.isDuplicate, "<1@x>", ALICE, 50))
        assert resultOf(defer.maybeDeferred(dedupe.expire, 50)) == 1
        assert not resultOf(defer.maybeDeferred(dedupe.isDuplicate, "<1@x>", ALICE))


class CollectorStatesContract:
    """
    Tests of L{ICollectorStates} that any backend's passes: one state per
    source, found again by its name.  A subclass overrides the C{states}
    fixture.
    """

    @pytest.fixture
    def states(self):
        raise NotImplementedError()

    def test_interface(self, states):
        assert verifyObject(ICollectorStates, states)
        assert verifyObject(IDedupeCache, states.stateOf("domainpop/isp"))

    def test_oneStatePerSource(self, states):
        isp = states.stateOf("domainpop/isp")
        resultOf(defer.maybeDeferred(isp.markDelivered, "uid1", [("<1@x>", ALICE)]))
        again = states.stateOf("domainpop/isp")
        assert resultOf(defer.maybeDeferred(again.isDuplicate, "<1@x>", ALICE, 3600))
        other = states.stateOf("multipop/ab12cd34")
        assert not resultOf(defer.maybeDeferred(other.isDuplicate, "<1@x>", ALICE))

    def test_recentPairsStay(self, states):
        state = states.stateOf("domainpop/isp")
        resultOf(defer.maybeDeferred(state.markDelivered, "uid1", [("<1@x>", ALICE)]))
        assert resultOf(defer.maybeDeferred(state.expire, 3600)) == 0
        assert resultOf(defer.maybeDeferred(state.isDuplicate, "<1@x>", ALICE))

    @pytest.mark.parametrize("source", ["isp", "domainpop/", "domainpop/../x", "domainpop/a/b"])
    def test_badSourceNames(self, states, source):
        with pytest.raises(ValueError):
            states.stateOf(source)


class LocksContract:
    """
    Tests of L{IMaildropLocks} that any maildrop locks pass.  A subclass
    overrides the C{locks} fixture.
    """

    @pytest.fixture
    def locks(self):
        raise NotImplementedError()

    def test_interface(self, locks):
        assert verifyObject(IMaildropLocks, locks)

    def test_exclusive(self, locks):
        one, two = object(), object()
        assert locks.acquire(ALICE, one)
        assert locks.acquire(ALICE, one)
        assert not locks.acquire(ALICE, two)
        assert locks.acquire(BOB, two)
        locks.release(ALICE, two)
        assert not locks.acquire(ALICE, two)
        locks.release(ALICE, one)
        assert locks.acquire(ALICE, two)

    def test_releaseAndTakeAgain(self, locks):
        one, two = object(), object()
        assert locks.acquire(ALICE, one)
        locks.release(ALICE, one)
        locks.release(ALICE, one)
        assert locks.acquire(ALICE, two)
        assert not locks.acquire(ALICE, one)
        locks.release(ALICE, two)
        assert locks.acquire(ALICE, one)


class LoginFailuresContract:
    """
    Tests of L{ILoginFailures} that any backend's failed-login counts
    pass.  A subclass overrides the C{failures} fixture.
    """

    @pytest.fixture
    def failures(self):
        raise NotImplementedError()

    def record(self, failures, key, source, tag, now, window=600, maxEvents=32, maxKeys=100):
        return failures.record("address", key, source, tag, now, now - window, maxEvents, maxKeys)

    def test_interface(self, failures):
        assert verifyObject(ILoginFailures, failures)

    def test_recordAndRecent(self, failures):
        assert self.record(failures, "192.0.2.1", ALICE, b"pw1", 1000.0)
        assert self.record(failures, "192.0.2.1", BOB, None, 1001.0)
        assert list(failures.recent("address", "192.0.2.1", 400.0)) == [
            (1000.0, ALICE, b"pw1"), (1001.0, BOB, None)]
        assert list(failures.recent("address", "192.0.2.2", 400.0)) == []
        assert list(failures.recent("account", "192.0.2.1", 400.0)) == []
        assert list(failures.recent("address", "192.0.2.1", 1000.0)) == [(1001.0, BOB, None)]

    def test_aRepeatCountsOnce(self, failures):
        assert self.record(failures, "192.0.2.1", ALICE, b"pw1", 1000.0)
        assert not self.record(failures, "192.0.2.1", ALICE, b"pw1", 1001.0)
        assert self.record(failures, "192.0.2.1", ALICE, None, 1002.0)
        assert self.record(failures, "192.0.2.1", ALICE, None, 1003.0)
        assert len(failures.recent("address", "192.0.2.1", 0)) == 3
        # Once the first is older than the window, the tag counts again.
        assert self.record(failures, "192.0.2.1", ALICE, b"pw1", 1700.0)

    def test_forgetBySource(self, failures):
        self.record(failures, "192.0.2.1", ALICE, None, 1000.0)
        self.record(failures, "192.0.2.1", BOB, None, 1001.0)
        failures.forget("address", "192.0.2.1", ALICE)
        failures.forget("address", "192.0.2.9", ALICE)
        assert [source for _, source, _ in failures.recent("address", "192.0.2.1", 0)] == [BOB]
        failures.forget("address", "192.0.2.1", BOB)
        assert failures.keys("address", 0) == 0

    def test_boundedEvents(self, failures):
        for n in range(10):
            self.record(failures, "192.0.2.1", ALICE, None, 1000.0 + n, maxEvents=3)
        assert [when for when, _, _ in failures.recent("address", "192.0.2.1", 0)] == [1007.0, 1008.0, 1009.0]

    def test_boundedKeys(self, failures):
        for n in range(10):
            self.record(failures, "192.0.2.%d" % (n,), ALICE, None, 1000.0 + n, maxKeys=4)
        assert failures.keys("address", 0) == 4
        assert failures.recent("address", "192.0.2.5", 0) == ()
        assert len(failures.recent("address", "192.0.2.9", 0)) == 1

    def test_keysInWindow(self, failures):
        self.record(failures, "192.0.2.1", ALICE, None, 1000.0)
        self.record(failures, "192.0.2.2", ALICE, None, 1100.0)
        failures.record("account", ALICE, "192.0.2.1", None, 1100.0, 500.0, 32, 100)
        assert failures.keys("address", 999.0) == 2
        assert failures.keys("address", 1000.0) == 1
        assert failures.keys("account", 0) == 1


class RemoteAccountsContract:
    """
    Tests of L{IRemoteAccounts} that any backend's MultiPOP accounts pass.
    A subclass overrides the C{accounts} fixture.
    """

    @pytest.fixture
    def accounts(self):
        raise NotImplementedError()

    def test_interface(self, accounts):
        assert verifyObject(IRemoteAccounts, accounts)

    def test_addListRemove(self, accounts):
        assert resultOf(defer.maybeDeferred(accounts.list)) == []
        first = resultOf(defer.maybeDeferred(
            accounts.add, "Alice@Example.COM", "pop.isp.test", 995, "implicit", "alice", "secret", 7))
        second = resultOf(defer.maybeDeferred(accounts.add, BOB, "pop.other.test"))
        assert first != second
        assert resultOf(defer.maybeDeferred(accounts.list)) == [
            dict(id=first, user=ALICE, host="pop.isp.test", port=995, tls="implicit",
                 username="alice", password="secret", leave_on_server_days=7),
            dict(id=second, user=BOB, host="pop.other.test", port=110, tls="starttls",
                 username="", password="", leave_on_server_days=0),
        ]
        resultOf(defer.maybeDeferred(accounts.remove, first))
        assert [a["id"] for a in resultOf(defer.maybeDeferred(accounts.list))] == [second]
        with pytest.raises(NotFound):
            resultOf(defer.maybeDeferred(accounts.remove, first))

    @pytest.mark.parametrize("values", [
        dict(tls="ssl"), dict(host=""), dict(host="pop isp"), dict(host="a/b"),
        dict(port=0), dict(port=65536), dict(leaveOnServerDays=-1),
    ])
    def test_malformedValuesAreRefused(self, accounts, values):
        arguments = dict(user=ALICE, host="pop.isp.test")
        arguments.update(values)
        with pytest.raises(InvalidInput):
            resultOf(defer.maybeDeferred(accounts.add, **arguments))
        assert resultOf(defer.maybeDeferred(accounts.list)) == []


class ChangeFeedContract:
    """
    Tests of L{IChangeFeed} that any change feed passes, within one
    process.  A subclass overrides the C{feed} fixture.
    """

    @pytest.fixture
    def feed(self):
        raise NotImplementedError()

    def test_interface(self, feed):
        assert verifyObject(IChangeFeed, feed)

    def test_subscribersOfTheAccountHear(self, feed):
        heard, other = [], []
        feed.subscribe(ALICE, None, lambda *args: heard.append(args))
        feed.subscribe(BOB, None, lambda *args: other.append(args))
        feed.notify(ALICE, "INBOX")
        assert heard == [(ALICE, "INBOX")] and other == []

    def test_subscribersOfAFolderHearOnlyIt(self, feed):
        inbox, sent = [], []
        subscriptions = [
            feed.subscribe(ALICE, "INBOX", lambda *args: inbox.append(args)),
            feed.subscribe(ALICE, "Sent", lambda *args: sent.append(args)),
        ]
        feed.notify(ALICE, "INBOX")
        for subscription in subscriptions:
            subscription.unsubscribe()
        assert inbox == [(ALICE, "INBOX")] and sent == []

    def test_unsubscribe(self, feed):
        heard = []
        subscription = feed.subscribe(ALICE, None, lambda *args: heard.append(args))
        subscription.unsubscribe()
        subscription.unsubscribe()
        feed.notify(ALICE, "INBOX")
        assert heard == []

    def test_aFailingListenerStopsNoOther(self, feed):
        heard = []

        def broken(*args):
            raise RuntimeError("boom")

        feed.subscribe(ALICE, None, broken)
        feed.subscribe(ALICE, None, lambda *args: heard.append(args))
        feed.notify(ALICE, "Sent")
        assert heard == [(ALICE, "Sent")]


class DeliveryTargetContract:
    """
    Tests of L{IDeliveryTarget} that any delivery target passes: what
    C{commit} says is durable, what fails or is aborted leaves nothing
    visible.  A subclass overrides the C{target} fixture and defines:

      - C{recipients}: addresses the target accepts;
      - C{visible(target)}: what readers see now (the messages delivered
        or handed on, as a L{list} of L{bytes} that contain each);
      - C{stored(target)}: what survives a restart, read from where the
        target keeps it (by default C{visible});
      - C{failCommits(target, monkeypatch)}: make the commits that follow
        fail as the storage would (an I/O error).
    """

    recipients = ()

    @pytest.fixture
    def target(self):
        raise NotImplementedError()

    def visible(self, target):
        raise NotImplementedError()

    def stored(self, target):
        return self.visible(target)

    def failCommits(self, target, monkeypatch):
        raise NotImplementedError()

    def start(self, target, body=MESSAGE):
        delivery = resultOf(defer.maybeDeferred(target.startDelivery, Envelope("sender@remote.example")))
        for address in self.recipients:
            resultOf(defer.maybeDeferred(delivery.addRecipient, address))
        delivery.write(body[:10])
        delivery.write(body[10:])
        return delivery

    def test_interfaces(self, target):
        assert verifyObject(IDeliveryTarget, target)
        delivery = resultOf(defer.maybeDeferred(target.startDelivery, Envelope("sender@remote.example")))
        assert verifyObject(IDelivery, delivery)
        delivery.abort()

    def test_commitFiresOnceDurable(self, target):
        """
        When C{commit} fires, the message is where a restart finds it, and
        visible.
        """
        seen = []
        d = defer.maybeDeferred(self.start(target).commit)
        d.addCallback(lambda _: seen.append(self.stored(target)))
        assert resultOf(d) is None
        [stored] = seen
        assert stored and all(MESSAGE in message for message in stored)
        visible = self.visible(target)
        assert visible and all(MESSAGE in message for message in visible)

    def test_abortLeavesNothing(self, target):
        delivery = self.start(target)
        resultOf(defer.maybeDeferred(delivery.abort))
        resultOf(defer.maybeDeferred(delivery.abort))
        assert self.visible(target) == [] and self.stored(target) == []

    def test_failedCommitLeavesNothing(self, target, monkeypatch):
        delivery = self.start(target)
        self.failCommits(target, monkeypatch)
        with pytest.raises(MailError):
            resultOf(defer.maybeDeferred(delivery.commit))
        resultOf(defer.maybeDeferred(delivery.abort))
        monkeypatch.undo()
        assert self.visible(target) == [] and self.stored(target) == []

    def test_noRecipientsCannotCommit(self, target):
        delivery = resultOf(defer.maybeDeferred(target.startDelivery, Envelope("sender@remote.example")))
        delivery.write(MESSAGE)
        with pytest.raises(MailError):
            resultOf(defer.maybeDeferred(delivery.commit))
        assert self.visible(target) == [] and self.stored(target) == []



class TwoPhaseTargetContract(DeliveryTargetContract):
    """
    L{DeliveryTargetContract} for a target whose transactions are
    L{ITwoPhaseDelivery}: prepared is durable but invisible, and an abort
    takes it back.
    """

    def twoPhase(self, target):
        delivery = self.start(target)
        assert verifyObject(ITwoPhaseDelivery, delivery)
        return delivery

    def test_preparedIsDurableButInvisible(self, target):
        """
        After C{prepare} the message survives a restart but nobody sees
        it; C{commit} makes it visible.
        """
        delivery = self.twoPhase(target)
        assert resultOf(defer.maybeDeferred(delivery.prepare)) is None
        assert self.visible(target) == []
        assert len(self.stored(target)) == 1
        assert resultOf(defer.maybeDeferred(delivery.commit)) is None
        assert len(self.visible(target)) == 1

    def test_abortAfterPrepareLeavesNothing(self, target):
        delivery = self.twoPhase(target)
        resultOf(defer.maybeDeferred(delivery.prepare))
        resultOf(defer.maybeDeferred(delivery.abort))
        resultOf(defer.maybeDeferred(delivery.abort))
        assert self.visible(target) == [] and self.stored(target) == []

    def test_failedPrepareLeavesNothing(self, target, monkeypatch):
        delivery = self.twoPhase(target)
        self.failCommits(target, monkeypatch)
        with pytest.raises(MailError):
            resultOf(defer.maybeDeferred(delivery.prepare))
        resultOf(defer.maybeDeferred(delivery.abort))
        monkeypatch.undo()
        assert self.visible(target) == [] and self.stored(target) == []
