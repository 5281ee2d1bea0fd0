"""
Transcript tests of C{\\Recent} (RFC 3501 section 2.3.2): a message is
recent to exactly one session, the first to select its mailbox read-write
after it arrived, or the session that has the mailbox selected when it
arrives; EXAMINE and STATUS show which messages no session has been told of
yet and claim none.  Claims are kept by the store, so they hold for
sessions of another server (a new factory) and after a restart (a new
store object on the same files).
"""

import pytest

from mdpy.backends.files.maildir import MaildirStore
from mdpy.backends.files.maildirindex import FolderIndex
from mdpy.backends.memory import MemoryStore
from mdpy.testing import synchronousRunner
from tests.test_imap_server import MESSAGES, USER, Session


@pytest.fixture(params=["memory", "files"])
def stores(request, tmp_path):
    """
    @return: a function giving the store after a restart: the same one in
        memory, a new store object on the same Maildir tree.
    """
    if request.param == "memory":
        store = MemoryStore()
        restart = lambda: store
    else:
        restart = lambda: MaildirStore(str(tmp_path), runInThread=synchronousRunner)
        store = restart()
    store.createAccount(USER)
    for data in MESSAGES:
        store.deliver([(USER, "INBOX", [data])])
    return restart


def selected(store, command="SELECT"):
    """
    @return: a session of a server of its own on C{store}, with INBOX
        selected (or examined), and the responses to that.
    """
    s = Session(store=store)
    s.login()
    s.send("x %s INBOX" % (command,))
    return s, s.lines()


def test_firstSelectGetsRecentAndTheNextNone(stores):
    one, got = selected(stores())
    assert "* 3 RECENT" in got
    one.send("a FETCH 1:* (FLAGS)", "b SEARCH RECENT")
    one.expect("* 1 FETCH (FLAGS (\\Recent))", "* 2 FETCH (FLAGS (\\Recent))", "* 3 FETCH (FLAGS (\\Recent))",
               "a OK Fetch completed.", "* SEARCH 1 2 3", "b OK Search completed.")
    two, got = selected(stores())
    assert "* 0 RECENT" in got
    two.send("a FETCH 1:* (FLAGS)", "b SEARCH RECENT")
    two.expect("* 1 FETCH (FLAGS ())", "* 2 FETCH (FLAGS ())", "* 3 FETCH (FLAGS ())",
               "a OK Fetch completed.", "* SEARCH", "b OK Search completed.")
    # The first session keeps its own.
    one.send("c SEARCH RECENT")
    one.expect("* SEARCH 1 2 3", "c OK Search completed.")


def test_examineShowsRecentAndClaimsNothing(stores):
    """
    EXAMINE shows as recent what no session was told of, and takes it from
    no one (RFC 3501 section 6.3.2); CLOSE after it neither.
    """
    examining, got = selected(stores(), "EXAMINE")
    assert "* 3 RECENT" in got
    examining.send("a FETCH 2 (FLAGS)", "b CLOSE", "c EXAMINE INBOX")
    got = examining.lines()
    assert got[:2] == ["* 2 FETCH (FLAGS (\\Recent))", "a OK Fetch completed."]
    assert "* 3 RECENT" in got
    one, got = selected(stores())
    assert "* 3 RECENT" in got
    later, got = selected(stores(), "EXAMINE")
    assert "* 0 RECENT" in got


def test_statusRecent(stores):
    """
    STATUS RECENT counts what no session was told of; for the session that
    has the mailbox selected, also its own recent messages.
    """
    looking = Session(store=stores())
    looking.login()
    looking.send("a STATUS INBOX (MESSAGES RECENT)")
    looking.expect('* STATUS "INBOX" (MESSAGES 3 RECENT 3)', "a OK Status completed.")
    one, _ = selected(stores())
    looking.send("b STATUS INBOX (RECENT)")
    looking.expect('* STATUS "INBOX" (RECENT 0)', "b OK Status completed.")
    one.send("c STATUS INBOX (RECENT)")
    one.expect('* STATUS "INBOX" (RECENT 3)', "c OK Status completed.")
    store = stores()
    store.deliver([(USER, "INBOX", [b"Subject: four\r\n\r\n4\r\n"])])
    looking.send("d STATUS INBOX (RECENT)")
    looking.expect('* STATUS "INBOX" (RECENT 1)', "d OK Status completed.")


def test_searchNewOldRecent(stores):
    """
    NEW is RECENT UNSEEN, OLD is NOT RECENT (RFC 3501 section 6.4.4), as
    imaptest's C{search-flags} checks.
    """
    one, _ = selected(stores())
    one.send("a STORE 2 +FLAGS.SILENT (\\Seen)", "b SEARCH NEW", "c SEARCH OLD", "d SEARCH RECENT",
             "e SEARCH RECENT SEEN")
    one.expect("a OK Store completed.", "* SEARCH 1 3", "b OK Search completed.", "* SEARCH",
               "c OK Search completed.", "* SEARCH 1 2 3", "d OK Search completed.", "* SEARCH 2",
               "e OK Search completed.")
    one.send("f FETCH 2 FLAGS")
    one.expect("* 2 FETCH (FLAGS (\\Seen \\Recent))", "f OK Fetch completed.")
    two, _ = selected(stores())
    two.send("a SEARCH NEW", "b SEARCH OLD")
    two.expect("* SEARCH", "a OK Search completed.", "* SEARCH 1 2 3", "b OK Search completed.")


def test_newMailIsRecentToOneSelectedSession(stores):
    """
    Mail arriving while two sessions have the mailbox selected is recent
    to the one that hears of it first, and only to it.
    """
    one, _ = selected(stores())
    two, _ = selected(stores())
    stores().deliver([(USER, "INBOX", [b"Subject: four\r\n\r\n4\r\n"])])
    one.send("a NOOP")
    one.expect("* 4 EXISTS", "* 4 RECENT", "a OK NOOP completed.")
    two.send("b NOOP")
    two.expect("* 4 EXISTS", "* 0 RECENT", "b OK NOOP completed.")
    two.send("c FETCH 4 FLAGS")
    two.expect("* 4 FETCH (FLAGS ())", "c OK Fetch completed.")
    one.send("d FETCH 4 FLAGS")
    one.expect("* 4 FETCH (FLAGS (\\Recent))", "d OK Fetch completed.")


def test_appendToTheSelectedMailboxIsRecentToTheAppender(stores):
    one, _ = selected(stores())
    two, _ = selected(stores())
    one.send("a APPEND INBOX {7}")
    one.expect("+ OK")
    one.send("Hello\r\n")
    got = one.lines()
    assert got[:2] == ["* 4 EXISTS", "* 4 RECENT"] and got[2].startswith("a OK [APPENDUID ")
    two.send("b NOOP")
    two.expect("* 4 EXISTS", "* 0 RECENT", "b OK NOOP completed.")


def test_appendToTheSelectedMailboxIsOneTransaction(tmp_path, monkeypatch):
    """
    APPEND into the selected mailbox goes through the session's view: the
    locked transaction that adds the message also claims it for the
    session, so no second one is needed to take it in.
    """
    store = MaildirStore(str(tmp_path), runInThread=synchronousRunner)
    store.createAccount(USER)
    one, _ = selected(store)
    transactions = []
    transact = FolderIndex.transact

    def counted(self, *args, **kwargs):
        transactions.append(self.path)
        return transact(self, *args, **kwargs)

    monkeypatch.setattr(FolderIndex, "transact", counted)
    one.send("a APPEND INBOX {7}")
    one.expect("+ OK")
    one.send("Hello\r\n")
    got = one.lines()
    assert got[:2] == ["* 1 EXISTS", "* 1 RECENT"] and got[2].startswith("a OK [APPENDUID ")
    assert len(transactions) == 1


def test_appendIntoTheSelectedMailboxDeletedMeanwhile(tmp_path):
    """
    The selected folder deleted by another session: APPEND into it says
    TRYCREATE (RFC 3501 section 6.3.11), as for any missing mailbox.
    """
    store = MaildirStore(str(tmp_path), runInThread=synchronousRunner)
    store.createAccount(USER)
    store.createMailbox(USER, "Work")
    s = Session(store=store)
    s.login()
    s.send("a SELECT Work")
    s.lines()
    store.deleteMailbox(USER, "Work")
    s.send("b APPEND Work {7}")
    s.expect("+ OK")
    s.send("Hello\r\n")
    got = s.lines()
    assert got[-1].startswith("b NO [TRYCREATE]"), got


def test_claimsOutliveARestart(stores):
    """
    What a session was told of stays claimed for the sessions of a server
    started again on the same store; mail that came meanwhile is recent to
    the first of them.
    """
    one, got = selected(stores())
    assert "* 3 RECENT" in got
    one.send("a LOGOUT")
    one.lines()
    store = stores()
    store.deliver([(USER, "INBOX", [b"Subject: four\r\n\r\n4\r\n"])])
    two, got = selected(stores())
    assert "* 1 RECENT" in got
    two.send("b SEARCH RECENT")
    two.expect("* SEARCH 4", "b OK Search completed.")
    three, got = selected(stores())
    assert "* 0 RECENT" in got
