"""
Transcript tests of sessions sharing a mailbox (L{mdpy.imap.selected}): what
one session reports of the changes another made, and when (RFC 3501
sections 5.5 and 7.4.1, RFC 2180 section 4).
"""

from mdpy import errors
from mdpy.backends.files.maildir import MaildirStore
from mdpy.testing import synchronousRunner
from tests.test_imap_server import MESSAGES, USER, Session, filledStore, twoSessions


def maildirSessions(tmp_path):
    """
    @return: a Maildir store holding L{MESSAGES} and two sessions with its
        INBOX selected.
    """
    store = MaildirStore(str(tmp_path), runInThread=synchronousRunner)
    store.createAccount(USER)
    store.deliver([(USER, "INBOX", [data]) for data in MESSAGES])
    one, two = Session(store=store), Session(store=store)
    one.select()
    two.select()
    return store, one, two


def expungeFirst(other):
    """
    Have session C{other} expunge message 1 of its selected mailbox.
    """
    other.send("x1 STORE 1 +FLAGS.SILENT (\\Deleted)", "x2 EXPUNGE")
    assert other.lines()[-2:] == ["* 1 EXPUNGE", "x2 OK Expunge completed."]


# --- no EXPUNGE while answering FETCH, STORE or SEARCH ----------------------------


def test_store_on_a_message_another_session_expunged_succeeds_silently():
    """
    RFC 3501 section 7.4.1: no EXPUNGE while a STORE is answered; the
    message another session expunged keeps its sequence number until a
    command that may report it, and storing on it is no error (RFC 2180
    section 4.2.1, as Dovecot answers).
    """
    store, one, two = twoSessions()
    expungeFirst(two)
    one.send("a STORE 1:3 +FLAGS (\\Seen)")
    one.expect("* 2 FETCH (FLAGS (\\Seen))", "* 3 FETCH (FLAGS (\\Seen))", "a OK Store completed.")
    one.send("b FETCH 1:3 UID")
    one.expect("* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)", "b OK Fetch completed.")
    one.send("c NOOP")
    one.expect("* 1 EXPUNGE", "c OK NOOP completed.")
    assert [m.flags for m in store.openMailbox(USER).messages()] == [{"\\Seen"}, {"\\Seen"}]


def test_store_refused_on_a_read_only_mailbox_sends_no_expunge():
    store = filledStore()
    one, two = Session(store=store), Session(store=store)
    one.login()
    one.send("e EXAMINE INBOX")
    one.lines()
    two.select()
    expungeFirst(two)
    one.send("a STORE 2 +FLAGS (\\Seen)")
    one.expect("a NO [READ-ONLY] Mailbox is read-only.")
    one.send("b CHECK")
    one.expect("* 1 EXPUNGE", "b OK NOOP completed.")


def test_store_failure_sends_no_expunge(monkeypatch):
    """
    A STORE the store cannot do answers NO, and still no EXPUNGE comes
    before it.
    """
    store, one, two = twoSessions()
    expungeFirst(two)

    def fail(*args, **kwargs):
        raise errors.TemporaryFailure("disk trouble")

    monkeypatch.setattr(one.protocol.selected.mailbox, "changeFlags", fail)
    one.send("a STORE 2 +FLAGS (\\Seen)")
    one.expect("a NO [UNAVAILABLE] Temporary failure; try again later.")
    one.send("b UID STORE 2 +FLAGS (\\Seen)")
    one.expect("* 1 EXPUNGE", "b NO [UNAVAILABLE] Temporary failure; try again later.")


def test_search_refused_for_its_charset_sends_no_expunge():
    _, one, two = twoSessions()
    expungeFirst(two)
    one.send("a SEARCH CHARSET KOI8-R ALL")
    one.expect("a NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset.")
    one.send("b SEARCH ALL")
    one.expect("* SEARCH 1 2 3", "b OK Search completed.")
    one.send("c UID SEARCH ALL")
    one.expect("* SEARCH 1 2 3", "* 1 EXPUNGE", "c OK Search completed.")


# --- expunges balanced by new messages ---------------------------------------------


def test_move_into_the_selected_mailbox_reports_the_expunge():
    """
    RFC 6851 section 3.3: MOVE to the selected mailbox itself expunges the
    source message and reports the new one, as to any other mailbox.
    """
    s = Session()
    s.select()
    validity = s.store.openMailbox(USER).uidValidity
    s.send("a MOVE 2 INBOX")
    s.expect(
        "* OK [COPYUID %d 2 4] Moved UIDs." % (validity,),
        "* 2 EXPUNGE",
        "* 3 EXISTS",
        "* 1 RECENT",
        "a OK Move completed.",
    )
    s.send("b NOOP", "c FETCH 1:* UID")
    s.expect("b OK NOOP completed.", "* 1 FETCH (UID 1)", "* 2 FETCH (UID 3)", "* 3 FETCH (UID 4)",
             "c OK Fetch completed.")


def test_expunge_and_delivery_between_two_syncs_are_both_reported():
    """
    Another session expunges as many messages as arrive before this
    session's next sync: the count is the same, and still every expunge
    is reported, then the new messages.
    """
    store, one, two = twoSessions()
    expungeFirst(two)
    store.deliver([(USER, "INBOX", [MESSAGES[0]])])
    one.send("a NOOP")
    one.expect("* 1 EXPUNGE", "* 3 EXISTS", "* 1 RECENT", "a OK NOOP completed.")
    one.send("b FETCH 1:* UID")
    one.expect("* 1 FETCH (UID 2)", "* 2 FETCH (UID 3)", "* 3 FETCH (UID 4)", "b OK Fetch completed.")


# --- FETCH of a message another session expunged -------------------------------------


def test_fetch_of_a_message_another_session_expunged_answers_from_the_view():
    """
    RFC 2180 section 4.1.3: until the expunge is reported, the message is
    served from what the session's view still knows (its UID, flags, date,
    size, and a structure parsed before); what only its octets could give
    is NIL, with the values Dovecot sends, and the FETCH succeeds with
    C{[EXPUNGEISSUED]} as Dovecot's does.
    """
    _, one, two = twoSessions()
    one.send("a FETCH 1 (ENVELOPE)")
    [envelope, _] = one.lines()
    expungeFirst(two)
    one.send("b FETCH 1 (UID FLAGS INTERNALDATE RFC822.SIZE)")
    one.expect('* 1 FETCH (UID 1 FLAGS () INTERNALDATE "*" RFC822.SIZE %d)' % (len(MESSAGES[0]),),
               "b OK Fetch completed.")
    one.send("c FETCH 1:2 (ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    one.expect(
        envelope[:-1] + " BODY[HEADER.FIELDS (SUBJECT)] NIL)",
        "* 2 FETCH (ENVELOPE * BODY[HEADER.FIELDS (SUBJECT)] {16}", "Subject: two", "", ")",
        "c OK [EXPUNGEISSUED] Some messages were already expunged.",
    )
    one.send("d FETCH 1 (BODYSTRUCTURE RFC822 RFC822.HEADER)")
    one.expect('* 1 FETCH (BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 7 1 NIL NIL NIL NIL) '
               "RFC822 NIL RFC822.HEADER NIL)",
               "d OK [EXPUNGEISSUED] Some messages were already expunged.")
    one.send("e FETCH 1 BODY[TEXT]")
    one.expect("* 1 FETCH (BODY[TEXT] NIL)", "e OK [EXPUNGEISSUED] Some messages were already expunged.")
    one.send("f NOOP")
    one.expect("* 1 EXPUNGE", "f OK NOOP completed.")


def test_fetch_of_a_maildir_message_another_session_expunged(tmp_path):
    """
    The Maildir store reads a message's INTERNALDATE from its file when
    first asked: for a file gone meanwhile it is the NIL date, never an
    internal error; its size, from the file name, is still known.
    """
    _, one, two = maildirSessions(tmp_path)
    one.send("a FETCH 2 INTERNALDATE")
    [dated, _] = one.lines()
    two.send("x1 STORE 1:2 +FLAGS.SILENT (\\Deleted)", "x2 EXPUNGE")
    assert two.lines()[-3:] == ["* 2 EXPUNGE", "* 1 EXPUNGE", "x2 OK Expunge completed."]
    one.send("b FETCH 1:3 (INTERNALDATE RFC822.SIZE)")
    one.expect(
        '* 1 FETCH (INTERNALDATE "01-Jan-1970 00:00:00 +0000" RFC822.SIZE %d)' % (len(MESSAGES[0]),),
        dated[:-1] + " RFC822.SIZE %d)" % (len(MESSAGES[1]),),
        '* 3 FETCH (INTERNALDATE "*" RFC822.SIZE %d)' % (len(MESSAGES[2]),),
        "b OK [EXPUNGEISSUED] Some messages were already expunged.",
    )
    one.send("c FETCH 1 (FLAGS BODYSTRUCTURE BODY[]<0.10>)")
    # Recent to this session, the first to select it.
    one.expect('* 1 FETCH (FLAGS (\\Recent) BODYSTRUCTURE ("text" "plain" NIL NIL NIL "7bit" 0 0 NIL NIL NIL NIL) '
               "BODY[]<0> NIL)", "c OK [EXPUNGEISSUED] Some messages were already expunged.")
    one.send("d UID FETCH 1:* UID")
    one.expect("* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)", "* 2 EXPUNGE", "* 1 EXPUNGE",
               "d OK Fetch completed.")
    one.send("e FETCH 1:* UID")
    one.expect("* 1 FETCH (UID 3)", "e OK Fetch completed.")


def test_copy_skips_a_message_another_session_expunged(tmp_path):
    """
    RFC 2180 section 4.4: COPY and MOVE copy the messages that are still
    there; one expunged meanwhile is no missing target mailbox.
    """
    store, one, two = maildirSessions(tmp_path)
    expungeFirst(two)
    one.send("a COPY 1:2 Archive", "b MOVE 1:3 Trash")
    archive, trash = store.openMailbox(USER, "Archive"), store.openMailbox(USER, "Trash")
    one.expect(
        "a OK [COPYUID %d 2 1] Copy completed." % (archive.uidValidity,),
        "* OK [COPYUID %d 2:3 1:2] Moved UIDs." % (trash.uidValidity,),
        "* 3 EXPUNGE",
        "* 2 EXPUNGE",
        "* 1 EXPUNGE",
        "b OK Move completed.",
    )
    assert [len(box.messages()) for box in (archive, trash, store.openMailbox(USER))] == [1, 2, 0]


def test_fetch_reading_ahead_past_a_maildir_message_another_session_expunged(tmp_path):
    """
    A message file gone meanwhile fails only its own read, also when it is
    read ahead of the message being answered.
    """
    _, one, two = maildirSessions(tmp_path)
    two.send("x1 STORE 2 +FLAGS.SILENT (\\Deleted)", "x2 EXPUNGE")
    assert two.lines()[-2:] == ["* 2 EXPUNGE", "x2 OK Expunge completed."]
    one.send("a FETCH 1:3 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    one.expect(
        "* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {16}", "Subject: one", "", ")",
        "* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] NIL)",
        "* 3 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}", "Subject: three", "", ")",
        "a OK [EXPUNGEISSUED] Some messages were already expunged.",
    )
