"""
Tests of CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 section 4) and of
RETURN (PARTIAL) (RFC 5267 section 4.4, RFC 9394): L{mdpy.imap.contexts}
alone, and transcripts of L{mdpy.imap.server} over the in-memory store.
"""

import pytest

from mdpy.backends.memory import recordReads
from mdpy.imap import contexts, partial
from mdpy.imap.parser import Atom, ParseError
from tests.test_imap_server import USER, Session, twoSessions
from tests.test_imap_sort import SORTED, storeOf


# --- alone -------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("1:1", (1, 1)),
    ("2:4", (2, 4)),
    ("4:2", (2, 4)),
    ("-1:-10", (-1, -10)),
    ("-10:-1", (-1, -10)),
])
def test_parsePartialRange(text, expected):
    assert partial.parsePartialRange(Atom(text)) == expected


@pytest.mark.parametrize("text", ["1", "1:*", "*:1", "0:3", "-1:2", "1:-2", "1:2:3", "99999999999:1"])
def test_parsePartialRange_refuses(text):
    with pytest.raises(ParseError):
        partial.parsePartialRange(Atom(text))


def test_parsePartialRange_refuses_a_string():
    with pytest.raises(ParseError):
        partial.parsePartialRange(b"1:2")


@pytest.mark.parametrize("pageRange, part", [
    ((1, 1), [10]),
    ((2, 4), [20, 30, 40]),
    ((4, 9), [40, 50]),
    ((6, 6), []),
    ((-1, -1), [50]),
    ((-1, -2), [40, 50]),
    ((-4, -9), [10, 20]),
    ((-6, -9), []),
])
def test_partialOf(pageRange, part):
    assert partial.partialOf([10, 20, 30, 40, 50], pageRange) == part


class Sorted:
    """
    A stand-in for a L{contexts.Context} of a sort.
    """

    tag = b"C01"
    uid = True
    sortKeys = [("ARRIVAL", False)]


def test_changes_of_a_sort_keep_the_order():
    # RFC 5267 section 4.3.3: three forms that make 2731:2735 of 2734:2735;
    # the last, one pair, is the preferred one.
    before, after = contexts.contextChanges(
        Sorted, [2734, 2735], [2731, 2732, 2733, 2734, 2735], set(), int, int
    )
    assert (before, after) == (b"", b'* ESEARCH (TAG "C01") UID ADDTO (1 2731:2733)\r\n')
    # Removals are placed where they are when the pairs are done in order;
    # those of messages expunged go first, numbered as before.
    before, after = contexts.contextChanges(
        Sorted, [9, 3, 4, 7, 8], [4, 5, 8, 1], {3}, lambda uid: uid * 10, int
    )
    assert before == b'* ESEARCH (TAG "C01") UID REMOVEFROM (2 30)\r\n'
    assert after == (
        b'* ESEARCH (TAG "C01") UID REMOVEFROM (1 9) REMOVEFROM (2 7) ADDTO (2 5) ADDTO (4 1)\r\n'
    )


def test_changes_of_a_search_are_in_mailbox_order():
    class Searched(Sorted):
        tag = b'a"b'
        uid = False
        sortKeys = None

    before, after = contexts.contextChanges(Searched, [2, 4, 6], [1, 2, 3, 6], {4}, int, lambda uid: uid + 1)
    assert before == b'* ESEARCH (TAG "a\\"b") REMOVEFROM (0 4)\r\n'
    assert after == b'* ESEARCH (TAG "a\\"b") ADDTO (0 2,4)\r\n'
    assert contexts.contextChanges(Searched, [2, 4], [2, 4], set(), int, int) == (b"", b"")


# --- transcripts -------------------------------------------------------------


def selected(**options):
    s = Session(**options)
    s.select()
    return s


def test_capabilities():
    s = selected()
    s.send("a CAPABILITY")
    [caps, _] = s.lines()
    assert " CONTEXT=SEARCH " in caps + " " and " CONTEXT=SORT " in caps + " " and " ESORT " in caps + " "


def test_search_update_follows_own_stores():
    s = selected()
    s.send("a SEARCH RETURN (ALL UPDATE) UNSEEN")
    s.expect('* ESEARCH (TAG "a") ALL 1:3', "a OK Search completed.")
    s.send("b STORE 2 +FLAGS (\\Seen)")
    s.expect("* 2 FETCH (FLAGS (\\Seen))", '* ESEARCH (TAG "a") REMOVEFROM (0 2)', "b OK Store completed.")
    s.send("c STORE 1:3 -FLAGS.SILENT (\\Seen)")
    s.expect('* ESEARCH (TAG "a") ADDTO (0 2)', "c OK Store completed.")
    # A change that leaves the result as it is says nothing.
    s.send("d STORE 1 +FLAGS (\\Flagged)")
    s.expect("* 1 FETCH (FLAGS (\\Flagged))", "d OK Store completed.")


def test_update_alone_returns_no_result_but_updates():
    s = selected()
    s.send("a UID SEARCH RETURN (UPDATE) SEEN")
    s.expect('* ESEARCH (TAG "a") UID', "a OK Search completed.")
    s.send("b UID STORE 1,3 +FLAGS.SILENT (\\Seen)")
    s.expect('* ESEARCH (TAG "a") UID ADDTO (0 1,3)', "b OK Store completed.")


def test_other_return_options_are_honoured():
    s = selected()
    s.send("a SEARCH RETURN (UPDATE COUNT MIN) UNSEEN")
    s.expect('* ESEARCH (TAG "a") MIN 1 COUNT 3', "a OK Search completed.")


def test_new_mail_is_added_after_exists():
    _, one, two = twoSessions()
    one.send("a SEARCH RETURN (UPDATE) UNSEEN")
    one.expect('* ESEARCH (TAG "a")', "a OK Search completed.")
    one.store.deliver([(USER, "INBOX", [b"Subject: new\r\n\r\nnew\r\n"])])
    two.send("b APPEND INBOX (\\Seen) {14}", "Subject: x\r\n\r\n")
    two.lines()
    one.send("c NOOP")
    # Session two took both new messages in first (its APPEND): they are
    # recent to it alone.
    one.expect("* 5 EXISTS", "* 0 RECENT", '* ESEARCH (TAG "a") ADDTO (0 4)', "c OK NOOP completed.")


def test_expunged_results_are_removed_before_the_expunge():
    _, one, two = twoSessions()
    one.send("a SEARCH RETURN (UPDATE) ALL")
    one.lines()
    two.send("b STORE 2 +FLAGS.SILENT (\\Deleted)", "c EXPUNGE")
    two.lines()
    one.send("d NOOP")
    lines = one.lines()
    assert lines[-1] == "d OK NOOP completed."
    assert lines.index('* ESEARCH (TAG "a") REMOVEFROM (0 2)') < lines.index("* 2 EXPUNGE")
    # No EXPUNGE while a SEARCH is answered: the message stays in the
    # result until it is reported expunged.
    one.send("e SEARCH RETURN (UPDATE ALL) UNDELETED")
    one.expect('* ESEARCH (TAG "e") ALL 1:2', "e OK Search completed.")
    two.send("f STORE 1 +FLAGS.SILENT (\\Deleted)", "g EXPUNGE")
    two.lines()
    one.send("h SEARCH 1")
    one.expect("* SEARCH 1", "h OK Search completed.")
    one.send("i NOOP")
    one.expect('* ESEARCH (TAG "a") REMOVEFROM (0 1)', '* ESEARCH (TAG "e") REMOVEFROM (0 1)',
               "* 1 EXPUNGE", "i OK NOOP completed.")


def test_sequence_keys_follow_renumbering():
    _, one, two = twoSessions()
    one.send("a SEARCH RETURN (ALL UPDATE) 2:3")
    one.expect('* ESEARCH (TAG "a") ALL 2:3', "a OK Search completed.")
    two.send("b STORE 1 +FLAGS.SILENT (\\Deleted)", "c EXPUNGE")
    two.lines()
    one.send("d NOOP")
    # Message 2 is message 1 now, and no longer in 2:3.
    one.expect("* 1 EXPUNGE", '* ESEARCH (TAG "a") REMOVEFROM (0 1)', "d OK NOOP completed.")


def test_updates_during_idle():
    _, one, two = twoSessions()
    one.send("a UID SEARCH RETURN (UPDATE) FLAGGED", "s SORT RETURN (UPDATE) (SUBJECT) US-ASCII BODY new")
    one.lines()
    one.send("b IDLE")
    one.expect("+ idling")
    two.send("c STORE 3 +FLAGS (\\Flagged)")
    two.lines()
    one.expect("* 3 FETCH (FLAGS (\\Flagged))", '* ESEARCH (TAG "a") UID ADDTO (0 3)')
    # Read before the sort's update is sent: its body, its subject.
    one.store.deliver([(USER, "INBOX", [b"Subject: new\r\n\r\nnew\r\n"])])
    one.expect("* 4 EXISTS", "* 1 RECENT", '* ESEARCH (TAG "s") ADDTO (1 4)')
    one.store.deliver([(USER, "INBOX", [b"Subject: a new one\r\n\r\nnew\r\n"])])
    one.expect("* 5 EXISTS", "* 2 RECENT", '* ESEARCH (TAG "s") ADDTO (1 5)')
    one.send("DONE")
    one.expect("b OK Idle completed.")


def test_content_is_read_once(monkeypatch):
    s = selected()
    reads = recordReads(monkeypatch)
    s.send("a SEARCH RETURN (UPDATE ALL) OR SEEN BODY second")
    s.expect('* ESEARCH (TAG "a") ALL 2', "a OK Search completed.")
    assert sorted(reads) == [1, 2, 3]
    del reads[:]
    s.send("b STORE 1:3 +FLAGS.SILENT (\\Seen)")
    s.expect('* ESEARCH (TAG "a") ADDTO (0 1,3)', "b OK Store completed.")
    s.send("c STORE 1:3 -FLAGS.SILENT (\\Seen)")
    s.expect('* ESEARCH (TAG "a") REMOVEFROM (0 1,3)', "c OK Store completed.")
    assert reads == []
    # A new message is read once, before the update.
    s.store.deliver([(USER, "INBOX", [b"Subject: new\r\n\r\nsecond again\r\n"])])
    s.store.deliver([(USER, "INBOX", [b"Subject: x\r\n\r\nno\r\n"])])
    s.send("d NOOP")
    s.expect("* 5 EXISTS", "* 2 RECENT", '* ESEARCH (TAG "a") ADDTO (0 4)', "d OK NOOP completed.")
    assert sorted(reads) == [4, 5]


def test_cancelupdate():
    s = selected()
    s.send("a SEARCH RETURN (UPDATE) SEEN", "b SEARCH RETURN (UPDATE) FLAGGED")
    s.lines()
    s.send('c CANCELUPDATE "a"')
    s.expect("c OK Updates cancelled.")
    s.send("d STORE 1 +FLAGS.SILENT (\\Seen \\Flagged)")
    s.expect('* ESEARCH (TAG "b") ADDTO (0 1)', "d OK Store completed.")
    s.send('e CANCELUPDATE "a"', 'f CANCELUPDATE "b" "zz"', "g CANCELUPDATE b", "h CANCELUPDATE")
    s.expect("e NO Unknown tag.", "f NO Unknown tag.",
             "g BAD Error in IMAP command CANCELUPDATE: Expected quoted tags.",
             "h BAD Error in IMAP command CANCELUPDATE: Expected quoted tags.")
    s.send("i STORE 1 -FLAGS.SILENT (\\Seen \\Flagged)")
    s.expect("i OK Store completed.")


def test_tag_reuse_is_bad():
    s = selected()
    s.send("a SEARCH RETURN (UPDATE) SEEN")
    s.lines()
    s.send("a SORT RETURN (UPDATE) (ARRIVAL) US-ASCII ALL", "a SEARCH RETURN (UPDATE) ALL")
    s.expect("a BAD Error in IMAP command SORT: Tag reuse.", "a BAD Error in IMAP command SEARCH: Tag reuse.")
    # Without UPDATE the tag may be used again.
    s.send("a SEARCH RETURN (COUNT) ALL")
    s.expect('* ESEARCH (TAG "a") COUNT 3', "a OK Search completed.")


def test_too_many_contexts():
    s = selected()
    for n in range(contexts.MAX_CONTEXTS):
        s.send("t%d SEARCH RETURN (UPDATE) SEEN" % (n,))
        s.lines()
    s.send("over SEARCH RETURN (UPDATE COUNT) SEEN")
    s.expect('* NO [NOUPDATE "over"] Too many updating searches.', '* ESEARCH (TAG "over") COUNT 0',
             "over OK Search completed.")
    s.send("x STORE 2 +FLAGS.SILENT (\\Seen)")
    lines = s.lines()
    assert lines[-1] == "x OK Store completed."
    assert len(lines) == 1 + contexts.MAX_CONTEXTS and not any('"over"' in line for line in lines)


def test_bad_charset_makes_no_context():
    s = selected()
    s.send("a SEARCH RETURN (UPDATE) CHARSET KOI8-R ALL")
    s.expect("a NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset.")
    s.send('b CANCELUPDATE "a"')
    s.expect("b NO Unknown tag.")


def test_contexts_end_with_the_mailbox():
    s = selected()
    s.send("a SEARCH RETURN (UPDATE) SEEN")
    s.lines()
    s.send("b SELECT INBOX")
    s.lines()
    s.send("c STORE 1 +FLAGS.SILENT (\\Seen)", 'd CANCELUPDATE "a"')
    s.expect("c OK Store completed.", "d NO Unknown tag.")
    s.send("e UNSELECT", 'f CANCELUPDATE "a"')
    s.expect("e OK Unselect completed.", "f BAD Command not valid in this state.")


def test_search_partial():
    s = selected()
    s.send(
        "a SEARCH RETURN (PARTIAL 3:2) ALL",
        "b SEARCH RETURN (PARTIAL -1:-2 COUNT) ALL",
        "c UID SEARCH RETURN (PARTIAL 4:9) ALL",
        "d SEARCH RETURN (MIN PARTIAL 1:1 CONTEXT) 2:3",
    )
    s.expect(
        '* ESEARCH (TAG "a") PARTIAL (2:3 2:3)', "a OK Search completed.",
        '* ESEARCH (TAG "b") COUNT 3 PARTIAL (-1:-2 2:3)', "b OK Search completed.",
        '* ESEARCH (TAG "c") UID PARTIAL (4:9 NIL)', "c OK Search completed.",
        '* ESEARCH (TAG "d") MIN 2 PARTIAL (1:1 2)', "d OK Search completed.",
    )
    s.send("e SEARCH RETURN (PARTIAL 1:*) ALL", "f SEARCH RETURN (ALL PARTIAL 1:2) ALL")
    s.expect(
        "e BAD Error in IMAP command SEARCH: Invalid PARTIAL range.",
        "f BAD Error in IMAP command SEARCH: PARTIAL conflicts with ALL.",
    )


def sortSession(**options):
    s = Session(store=storeOf(SORTED), **options)
    s.select()
    return s


def test_sort_partial_is_in_sort_order():
    # SIZE orders them 2 4 1 3.
    s = sortSession()
    s.send("a SORT RETURN (PARTIAL 2:3) (SIZE) US-ASCII ALL", "b UID SORT RETURN (PARTIAL -1:-3) (SIZE) UTF-8 ALL")
    s.expect('* ESEARCH (TAG "a") PARTIAL (2:3 4,1)', "a OK Sort completed.",
             '* ESEARCH (TAG "b") UID PARTIAL (-1:-3 4,1,3)', "b OK Sort completed.")


def test_sort_update_gives_positions():
    # SIZE orders them 2 4 1 3.
    s = sortSession()
    s.send("a SORT RETURN (UPDATE ALL) (SIZE) US-ASCII UNSEEN")
    s.expect('* ESEARCH (TAG "a") ALL 2,4,1,3', "a OK Sort completed.")
    s.send("b STORE 4 +FLAGS.SILENT (\\Seen)")
    s.expect('* ESEARCH (TAG "a") REMOVEFROM (2 4)', "b OK Store completed.")
    s.send("c STORE 2,1 +FLAGS.SILENT (\\Seen)")
    s.expect('* ESEARCH (TAG "a") REMOVEFROM (1 2,1)', "c OK Store completed.")
    s.send("d STORE 1:4 -FLAGS.SILENT (\\Seen)")
    s.expect('* ESEARCH (TAG "a") ADDTO (1 2,4,1)', "d OK Store completed.")
    # The smallest message yet goes first, after EXISTS.
    s.store.deliver([(USER, "INBOX", [b"Subject: s\r\n\r\n"])])
    s.send("e NOOP")
    # Every message is recent to this session, the first to select them.
    s.expect("* 5 EXISTS", "* 5 RECENT", '* ESEARCH (TAG "a") ADDTO (1 5)', "e OK NOOP completed.")
    # Expunged: taken out at its position before the EXPUNGE.
    s.send("f STORE 4 +FLAGS.SILENT (\\Deleted)", "g EXPUNGE")
    s.expect("f OK Store completed.", '* ESEARCH (TAG "a") REMOVEFROM (3 4)', "* 4 EXPUNGE",
             "g OK Expunge completed.")
    s.send("h UID SORT RETURN (UPDATE) (REVERSE SIZE) US-ASCII ALL")
    s.expect('* ESEARCH (TAG "h") UID', "h OK Sort completed.")
    s.store.deliver([(USER, "INBOX", [b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n"])])
    s.send("i NOOP")
    s.expect("* 5 EXISTS", "* 5 RECENT", '* ESEARCH (TAG "a") ADDTO (5 5)',
             '* ESEARCH (TAG "h") UID ADDTO (1 6)', "i OK NOOP completed.")
