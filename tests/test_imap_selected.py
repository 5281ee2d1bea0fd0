"""
Tests of L{mdpy.imap.selected.SelectedMailbox}: what a session tells of
changes, found by comparing the mailbox's messages with those it compared
last.
"""

from mdpy.imap.selected import SelectedMailbox


class Message:
    def __init__(self, uid, flags=frozenset(), modSeq=1):
        self.uid = uid
        self.flags = frozenset(flags)
        self.modSeq = modSeq


class Mailbox:
    uidValidity = 7
    highestModSeq = 1

    def __init__(self, messages):
        self.current = list(messages)

    def messages(self):
        return list(self.current)

    def changed(self, index, flags):
        old = self.current[index]
        self.current[index] = Message(old.uid, flags, old.modSeq + 1)


def updates(view):
    return view.updates(allowExpunge=True, claimRecent=lambda uids: [])


def test_changedMessagesAreTold():
    mailbox = Mailbox(Message(uid) for uid in range(1, 6))
    view = SelectedMailbox(mailbox, readOnly=False)
    mailbox.changed(1, ["\\Seen"])
    mailbox.changed(3, ["\\Flagged"])
    assert updates(view) == [b"* 2 FETCH (FLAGS (\\Seen))\r\n", b"* 4 FETCH (FLAGS (\\Flagged))\r\n"]
    assert updates(view) == []


def test_messagesComparedByIdentity(monkeypatch):
    """
    When no message left, only those that are not the objects compared
    last are looked at: a message left as it was is not.
    """
    mailbox = Mailbox(Message(uid) for uid in range(1, 6))
    view = SelectedMailbox(mailbox, readOnly=False)
    looked = []
    flags = view.flags

    class Watched(dict):
        def get(self, uid, default=None):
            looked.append(uid)
            return dict.get(self, uid, default)

    view.flags = Watched(flags)
    mailbox.changed(2, ["\\Seen"])
    mailbox.current.append(Message(6))
    assert updates(view) == [b"* 3 FETCH (FLAGS (\\Seen))\r\n", b"* 6 EXISTS\r\n", b"* 0 RECENT\r\n"]
    assert looked == [3]


def test_expungeAndChangeTogether():
    """
    Messages gone since the last comparison: every message is looked at,
    and both the expunges and the flag changes are told.
    """
    mailbox = Mailbox(Message(uid) for uid in range(1, 6))
    view = SelectedMailbox(mailbox, readOnly=False)
    del mailbox.current[1]
    mailbox.changed(2, ["\\Deleted"])
    assert updates(view) == [b"* 2 EXPUNGE\r\n", b"* 3 FETCH (FLAGS (\\Deleted))\r\n"]
    assert view.uids == [1, 3, 4, 5]


def test_flagsNotedOtherThanTheMessagesAreToldAgain():
    """
    Flags a session reported that are not its message's (a store change
    raced with another) are corrected by the next comparison, though the
    message is the object compared last.
    """
    mailbox = Mailbox(Message(uid) for uid in range(1, 4))
    view = SelectedMailbox(mailbox, readOnly=False)
    message = mailbox.current[1]
    view.noteFlags(message, frozenset(["\\Seen"]))
    assert updates(view) == [b"* 2 FETCH (FLAGS ())\r\n"]
    assert updates(view) == []
