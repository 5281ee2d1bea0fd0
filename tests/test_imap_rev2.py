"""
Transcript tests of IMAP4rev2 (RFC 9051) beside IMAP4rev1: both are
advertised; a session that sends C{ENABLE IMAP4rev2} has no C{\\Recent} and
no C{RECENT} response, gets C{* ESEARCH} for SEARCH, C{OK [CLOSED]} when it
selects another mailbox and UTF-8 mailbox names, while an IMAP4rev1 session
on the same store is answered as before.
"""

from mdpy.backends.memory import MemoryStore
from tests.test_imap_server import MESSAGES, USER, Session


def freshStore():
    """
    @return: a store whose INBOX holds L{MESSAGES}, none told to a session
        yet (all of them would be C{\\Recent} to an IMAP4rev1 session).
    """
    store = MemoryStore()
    store.createAccount(USER)
    for data in MESSAGES:
        store.deliver([(USER, "INBOX", [data])])
    return store


def rev2(store):
    """
    @return: a logged-in session on C{store} that ENABLEd IMAP4rev2.
    """
    s = Session(store=store)
    s.login()
    s.send("e ENABLE IMAP4rev2")
    s.expect("* ENABLED IMAP4rev2", "e OK Enabled.")
    return s


def test_advertisedBesideRev1BeforeAndAfterLogin():
    s = Session()
    assert s.greeting[0].startswith("* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    s.login()
    s.send("c CAPABILITY")
    assert s.lines()[0].startswith("* CAPABILITY IMAP4rev1 IMAP4rev2 ")


def test_enabledOnceAndBesideOthers():
    s = Session(store=freshStore())
    s.login()
    s.send("e ENABLE CONDSTORE IMAP4rev2 X-UNKNOWN")
    s.expect("* ENABLED CONDSTORE IMAP4rev2", "e OK Enabled.")
    s.send("f ENABLE imap4rev2")
    s.expect("* ENABLED", "f OK Enabled.")


def test_enableRefusedOutsideTheAuthenticatedState():
    s = Session(store=freshStore())
    s.send("a ENABLE IMAP4rev2")
    s.expect("a BAD *")
    s.login()
    s.send("b SELECT INBOX")
    assert "* 3 RECENT" in s.lines()
    s.send("c ENABLE IMAP4rev2")
    s.expect("c BAD ENABLE IMAP4rev2 is valid only in the authenticated state.")
    # Still IMAP4rev1: \Recent and SEARCH as before.
    s.send("d SEARCH RECENT")
    s.expect("* SEARCH 1 2 3", "d OK Search completed.")
    # Other extensions may still be enabled while selected.
    s.send("e ENABLE CONDSTORE")
    s.expect("* OK [HIGHESTMODSEQ *] Highest.", "* ENABLED CONDSTORE", "e OK Enabled.")


def test_noRecentFlagOrResponse():
    store = freshStore()
    s = rev2(store)
    s.send("a SELECT INBOX")
    got = s.lines()
    assert "* 3 EXISTS" in got
    assert '* LIST (\\HasNoChildren) "/" "INBOX"' in got
    assert not [line for line in got if "RECENT" in line], got
    s.send("b FETCH 1:* (FLAGS)")
    s.expect("* 1 FETCH (FLAGS ())", "* 2 FETCH (FLAGS ())", "* 3 FETCH (FLAGS ())", "b OK Fetch completed.")
    store.deliver([(USER, "INBOX", [MESSAGES[0]])])
    s.send("d NOOP")
    s.expect("* 4 EXISTS", "d OK NOOP completed.")
    s.send("e FETCH 4 (FLAGS)")
    s.expect("* 4 FETCH (FLAGS ())", "e OK Fetch completed.")
    # It claimed none of them: they stay recent to an IMAP4rev1 session.
    legacy = Session(store=store)
    legacy.login()
    legacy.send("x SELECT INBOX")
    assert "* 4 RECENT" in legacy.lines()


def test_rev1SessionUnchanged():
    store = freshStore()
    s = Session(store=store)
    s.login()
    s.send("a SELECT INBOX")
    assert "* 3 RECENT" in s.lines()
    s.send("b SEARCH SUBJECT t", "c UID SEARCH ALL")
    s.expect("* SEARCH 2 3", "b OK Search completed.", "* SEARCH 1 2 3", "c OK Search completed.")
    s.send("d SELECT INBOX")
    got = s.lines()
    assert not [line for line in got if "CLOSED" in line], got
    store.deliver([(USER, "INBOX", [MESSAGES[0]])])
    s.send("e NOOP")
    s.expect("* 4 EXISTS", "* 1 RECENT", "e OK NOOP completed.")


def test_searchAnsweredWithEsearch():
    s = rev2(freshStore())
    s.send("a SELECT INBOX")
    s.lines()
    s.send("b SEARCH SUBJECT t", "c UID SEARCH ALL", "d SEARCH SUBJECT nothing-like-this")
    s.expect('* ESEARCH (TAG "b") ALL 2:3', "b OK Search completed.",
             '* ESEARCH (TAG "c") UID ALL 1:3', "c OK Search completed.",
             '* ESEARCH (TAG "d")', "d OK Search completed.")
    s.send("e SEARCH RETURN (COUNT) ALL")
    s.expect('* ESEARCH (TAG "e") COUNT 3', "e OK Search completed.")
    # SORT is no part of IMAP4rev2: its answer stays * SORT.
    s.send("f SORT (SUBJECT) UTF-8 ALL")
    s.expect("* SORT 1 3 2", "f OK Sort completed.")


def test_selectListsTheMailboxAndSaysClosed():
    s = rev2(freshStore())
    s.send("a SELECT INBOX")
    s.lines()
    s.send("b EXAMINE INBOX")
    got = s.lines()
    assert got[0] == "* OK [CLOSED] Previous mailbox closed."
    s.send("c CREATE Archiv/Grüße", "d SELECT Archiv")
    got = s.lines()
    assert got[:3] == ["c OK Create completed.", "* OK [CLOSED] Previous mailbox closed.",
                       '* LIST (\\HasChildren) "/" "Archiv"'], got
    s.send("e EXAMINE Archiv/Grüße")
    got = s.lines()
    assert '* LIST (\\HasNoChildren) "/" "Archiv/Grüße"' in got
    assert got[-1] == "e OK [READ-ONLY] Examine completed."
    assert not [line for line in got if "RECENT" in line], got


def test_listAndStatus():
    s = rev2(freshStore())
    s.send("a CREATE Archiv/Grüße", 'b LIST "" "Archiv"', 'c LIST "" "Archiv/*"')
    s.expect("a OK Create completed.",
             '* LIST (\\HasChildren) "/" "Archiv"', "b OK List completed.",
             '* LIST (\\HasNoChildren) "/" "Archiv/Grüße"', "c OK List completed.")
    s.send("d SUBSCRIBE Gone", 'e LIST (SUBSCRIBED) "" "Gone"')
    s.expect("d OK Subscribe completed.", '* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "/" "Gone"',
             "e OK List completed.")
    s.send("f STATUS INBOX (MESSAGES SIZE DELETED UIDNEXT)")
    size = sum(len(m) for m in MESSAGES)
    s.expect("* STATUS \"INBOX\" (MESSAGES 3 SIZE %d DELETED 0 UIDNEXT 4)" % (size,), "f OK Status completed.")
    s.send("g RENAME Nowhere Elsewhere", "h RENAME INBOX Archiv/Grüße")
    s.expect("g NO [NONEXISTENT] *", "h NO [ALREADYEXISTS] *")


def test_statusRecentRefused():
    """
    RECENT is no STATUS item in IMAP4rev2 (RFC 9051 section 6.3.11 and
    appendix E): C{BAD} for STATUS and for LIST C{RETURN (STATUS ...)}, as
    Dovecot answers; an IMAP4rev1 session on the same store still has it.
    """
    store = freshStore()
    s = rev2(store)
    s.send("a STATUS INBOX (MESSAGES RECENT)", 'b LIST "" INBOX RETURN (STATUS (recent))')
    s.expect("a BAD Error in IMAP command STATUS: RECENT is no status item in IMAP4rev2.",
             "b BAD Error in IMAP command LIST: RECENT is no status item in IMAP4rev2.")
    s.send("c STATUS INBOX (MESSAGES)")
    s.expect('* STATUS "INBOX" (MESSAGES 3)', "c OK Status completed.")
    legacy = Session(store=store)
    legacy.login()
    legacy.send("x STATUS INBOX (MESSAGES RECENT)")
    legacy.expect('* STATUS "INBOX" (MESSAGES 3 RECENT 3)', "x OK Status completed.")


def test_searchKeysOfRecentRefused():
    """
    RECENT, NEW and OLD are no search keys in IMAP4rev2 (RFC 9051 appendix
    E): C{BAD} for SEARCH, SORT and THREAD, and a SEARCH that would have
    saved its result leaves C{$} empty (RFC 5182 section 2.1); an
    IMAP4rev1 session still has them.
    """
    store = freshStore()
    s = rev2(store)
    s.send("s SELECT INBOX")
    s.lines()
    s.send("a SEARCH RETURN (SAVE) ALL", "b SEARCH RETURN (SAVE) NOT OLD", "c FETCH $ FLAGS")
    s.expect("a OK Search completed.",
             "b BAD Error in IMAP command SEARCH: RECENT, NEW and OLD are no search keys in IMAP4rev2.",
             "c OK Fetch completed.")
    s.send("d UID SORT (ARRIVAL) UTF-8 NEW", "e THREAD REFERENCES UTF-8 OR RECENT SEEN")
    s.expect("d BAD Error in IMAP command UID SORT: RECENT, NEW and OLD are no search keys in IMAP4rev2.",
             "e BAD Error in IMAP command THREAD: RECENT, NEW and OLD are no search keys in IMAP4rev2.")
    s.send("f SEARCH ALL")
    s.expect("* ESEARCH (TAG \"f\") ALL 1:3", "f OK Search completed.")
    legacy = Session(store=store)
    legacy.login()
    legacy.send("x SELECT INBOX")
    legacy.lines()
    legacy.send("y SEARCH RECENT")
    legacy.expect("* SEARCH 1 2 3", "y OK Search completed.")


def test_searchResultSavedAndUsedAsDollar():
    """
    SEARCHRES (RFC 5182), folded into IMAP4rev2: C{RETURN (SAVE)} alone
    answers no ESEARCH; C{$} then names the saved messages in FETCH, STORE,
    COPY, SEARCH and their UID forms; MIN/MAX alone save only those.
    """
    s = Session(store=freshStore())
    s.login()
    s.send("c CAPABILITY")
    assert " SEARCHRES " in s.lines()[0]
    s.send("a SELECT INBOX")
    s.lines()
    s.send("b FETCH $ (UID)")
    s.expect("b OK Fetch completed.")
    s.send("c SEARCH RETURN (SAVE) SUBJECT t", "d FETCH $ (UID)", "e UID FETCH $ (UID)")
    s.expect("c OK Search completed.",
             "* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)", "d OK Fetch completed.",
             "* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)", "e OK Fetch completed.")
    s.send("f SEARCH NOT $", "g UID SEARCH UID $ SUBJECT three")
    s.expect("* SEARCH 1", "f OK Search completed.", "* SEARCH 3", "g OK Search completed.")
    s.send("h STORE $ +FLAGS (\\Flagged)", "i COPY $ Trash")
    s.expect("* 2 FETCH (FLAGS (\\Flagged \\Recent))", "* 3 FETCH (FLAGS (\\Flagged \\Recent))", "h OK Store completed.",
             "i OK [COPYUID * 2:3 1:2] Copy completed.")
    s.send("j SEARCH RETURN (SAVE MAX COUNT) ALL", "k FETCH $ (UID)")
    s.expect('* ESEARCH (TAG "j") MAX 3 COUNT 3', "j OK Search completed.",
             "* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)", "k OK Fetch completed.")
    s.send("l SEARCH RETURN (MIN SAVE) ALL", "m FETCH $ (UID)")
    s.expect('* ESEARCH (TAG "l") MIN 1', "l OK Search completed.", "* 1 FETCH (UID 1)", "m OK Fetch completed.")
    # A SEARCH with SAVE that fails empties it.
    s.send("n SEARCH RETURN (SAVE) NO-SUCH-KEY", "o FETCH $ (UID)")
    s.expect("n BAD *", "o OK Fetch completed.")
    s.send("p SORT RETURN (SAVE) (ARRIVAL) UTF-8 ALL")
    s.expect("p BAD *")


def test_savedResultForgottenOnSelect():
    s = rev2(freshStore())
    s.send("a SELECT INBOX")
    s.lines()
    s.send("b SEARCH RETURN (SAVE) ALL")
    s.expect("b OK Search completed.")
    s.send("c SELECT INBOX")
    s.lines()
    s.send("d FETCH $ (UID)", "e UID SEARCH $")
    s.expect("d OK Fetch completed.", '* ESEARCH (TAG "e") UID', "e OK Search completed.")
