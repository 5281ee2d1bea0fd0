"""
Transcript tests of QRESYNC (RFC 7162 section 3.2, L{mdpy.imap.resync}):
ENABLE QRESYNC, SELECT and EXAMINE with the QRESYNC parameter, UID FETCH
(CHANGEDSINCE VANISHED), VANISHED in place of EXPUNGE, and OK [CLOSED].
"""

import pytest

from mdpy import mailbox as mailboxRules
from mdpy.imap.resync import parseFetchModifiers, parseSelectParameters
from mdpy.imap.parser import ParseError, tokenize
from tests.test_imap_server import USER, Session, filledStore

SIX = [b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(1, 7)]


def qresyncSession(store, select="INBOX"):
    """
    @return: a logged-in L{Session} that enabled QRESYNC, with C{select}
        selected unless L{None}.
    """
    s = Session(store=store)
    s.login()
    s.send("e ENABLE QRESYNC")
    s.expect("* ENABLED QRESYNC", "e OK Enabled.")
    if select:
        s.send("x SELECT " + select)
        assert s.lines()[-1] == "x OK [READ-WRITE] Select completed."
    return s


def known(store):
    """
    @return: C{(uidvalidity, highest modseq)} of the INBOX now, as a
        client leaving it would remember them.
    """
    inbox = store.openMailbox(USER)
    return inbox.uidValidity, inbox.highestModSeq


def change(store, expunge=(), seen=()):
    """
    Another client's changes: C{\\Seen} on UIDs C{seen}, then C{expunge}
    the UIDs C{expunge} (one transaction).
    """
    inbox = store.openMailbox(USER)
    if seen:
        inbox.changeFlags(list(seen), ["\\Seen"], mailboxRules.ADD)
    if expunge:
        inbox.expunge(list(expunge))
    return store.openMailbox(USER)


def modSeqOf(store, uid):
    return {m.uid: m.modSeq for m in store.openMailbox(USER).messages()}[uid]


def test_capability_and_enable_imply_condstore():
    """
    QRESYNC is advertised; ENABLE QRESYNC enables CONDSTORE as well (RFC
    7162 section 3.2.3): STORE replies carry UID and MODSEQ, and a FETCH
    by sequence number carries the UID.
    """
    s = qresyncSession(filledStore(SIX), select=None)
    s.send("c CAPABILITY")
    assert " QRESYNC " in s.lines()[0]
    s.send("x SELECT INBOX")
    assert s.lines()[-1] == "x OK [READ-WRITE] Select completed."
    s.send("a STORE 1 +FLAGS (\\Flagged)")
    s.expect("* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ (%d))" % (modSeqOf(s.store, 1),), "a OK Store completed.")
    s.send("b FETCH 2 (FLAGS)")
    s.expect("* 2 FETCH (UID 2 FLAGS ())", "b OK Fetch completed.")
    s.send("e ENABLE QRESYNC CONDSTORE")
    s.expect("* ENABLED", "e OK Enabled.")


@pytest.mark.parametrize("extension", ["CONDSTORE", "QRESYNC"])
def test_enable_in_selected_state_reports_highestmodseq(extension):
    """
    RFC 7162 section 3.1: CONDSTORE, or QRESYNC which implies it (section
    3.2.3), enabled while a mailbox is selected is answered with that
    mailbox's C{OK [HIGHESTMODSEQ]}; an ENABLE that turns nothing on sends
    none.
    """
    s = Session(store=filledStore(SIX))
    s.login()
    s.send("x SELECT INBOX")
    assert s.lines()[-1] == "x OK [READ-WRITE] Select completed."
    s.send("e ENABLE " + extension)
    s.expect("* OK [HIGHESTMODSEQ %d] Highest." % (known(s.store)[1],), "* ENABLED " + extension, "e OK Enabled.")
    s.send("f ENABLE CONDSTORE QRESYNC")
    s.expect("* ENABLED" + ("" if extension == "QRESYNC" else " QRESYNC"), "f OK Enabled.")


def test_select_qresync_needs_enable():
    """
    RFC 7162 section 3.2.5: BAD for the QRESYNC parameter before ENABLE
    QRESYNC.
    """
    store = filledStore(SIX)
    validity, modSeq = known(store)
    s = Session(store=store)
    s.login()
    s.send("x SELECT INBOX (QRESYNC (%d %d))" % (validity, modSeq))
    [line] = s.lines()
    assert line.startswith("x BAD ")
    s.send("y SELECT INBOX (QRESYNC (%d))" % (validity,), "z SELECT INBOX (FOO)")
    assert [line.split()[1] for line in s.lines()] == ["BAD", "BAD"]


def test_select_qresync_reports_vanished_and_changed():
    """
    RFC 7162 section 3.2.5.2 (the example of section 3.2.5): after the
    usual responses, the UIDs expunged since the client's modification
    sequence in C{VANISHED (EARLIER)}, then a FETCH of every message
    changed since, with UID, FLAGS and MODSEQ.
    """
    store = filledStore(SIX)
    validity, modSeq = known(store)
    change(store, expunge=[2, 4], seen=[3])
    after = known(store)[1]
    s = qresyncSession(store, select=None)
    s.send("x SELECT INBOX (QRESYNC (%d %d))" % (validity, modSeq))
    got = s.lines()
    assert got[2:] == [
        "* 4 EXISTS",
        "* 0 RECENT",
        "* OK [UNSEEN 1] First unseen.",
        "* OK [UIDVALIDITY %d] UIDs valid." % (validity,),
        "* OK [UIDNEXT 7] Predicted next UID.",
        "* OK [HIGHESTMODSEQ %d] Highest." % (after,),
        "* VANISHED (EARLIER) 2,4",
        "* 2 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (%d))" % (modSeqOf(store, 3),),
        "x OK [READ-WRITE] Select completed.",
    ]


def test_examine_qresync_known_uids():
    """
    With known-uids, only those UIDs are reported, gone or changed; a
    message the client does not know is not fetched.
    """
    store = filledStore(SIX)
    validity, modSeq = known(store)
    change(store, expunge=[2, 5], seen=[3, 6])
    s = qresyncSession(store, select=None)
    s.send("x EXAMINE INBOX (QRESYNC (%d %d 1:3))" % (validity, modSeq))
    got = s.lines()
    assert got[-3:] == [
        "* VANISHED (EARLIER) 2",
        "* 2 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (%d))" % (modSeqOf(store, 3),),
        "x OK [READ-ONLY] Examine completed.",
    ]


def test_select_qresync_nothing_changed():
    store = filledStore(SIX)
    validity, modSeq = known(store)
    s = qresyncSession(store, select=None)
    s.send("x SELECT INBOX (QRESYNC (%d %d 1:*))" % (validity, modSeq))
    got = s.lines()
    assert got[-2].startswith("* OK [HIGHESTMODSEQ ")
    assert got[-1] == "x OK [READ-WRITE] Select completed."


def test_select_qresync_other_uidvalidity_is_a_plain_select():
    """
    RFC 7162 section 3.2.5.2: a UIDVALIDITY that is not the mailbox's
    gets the responses of a SELECT without QRESYNC.
    """
    store = filledStore(SIX)
    validity, modSeq = known(store)
    change(store, expunge=[1], seen=[2])
    s = qresyncSession(store, select=None)
    s.send("x SELECT INBOX (QRESYNC (%d 1))" % (validity + 1,))
    got = s.lines()
    assert got[-2].startswith("* OK [HIGHESTMODSEQ ")
    assert got[-1] == "x OK [READ-WRITE] Select completed."


def test_select_qresync_past_the_history(monkeypatch):
    """
    When the store no longer remembers back to the client's modification
    sequence, every UID of the client's range that is not in the mailbox
    is reported (as Dovecot does), narrowed by the client's sample of
    sequence numbers and UIDs (seq-match-data, RFC 7162 section 3.2.5.2).
    """
    monkeypatch.setattr(mailboxRules, "EXPUNGES_KEPT", 1)
    store = filledStore(SIX)
    change(store, expunge=[2])
    validity, modSeq = known(store)
    change(store, expunge=[4])
    change(store, expunge=[5])
    s = qresyncSession(store, select=None)
    s.send("x SELECT INBOX (QRESYNC (%d %d))" % (validity, modSeq))
    got = s.lines()
    assert got[-2:] == ["* VANISHED (EARLIER) 2,4:5", "x OK [READ-WRITE] Select completed."]
    s.send("y SELECT INBOX (QRESYNC (%d %d 1:6 (1:3 1,3,4)))" % (validity, modSeq))
    got = s.lines()
    assert got[0] == "* OK [CLOSED] Previous mailbox closed."
    assert got[-2:] == ["* VANISHED (EARLIER) 4:5", "y OK [READ-WRITE] Select completed."]
    # Within the history: exactly what was expunged since.
    s.send("z UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % (known(store)[1],))
    s.expect("z OK Fetch completed.")


def test_uid_fetch_vanished():
    """
    RFC 7162 section 3.2.6: UID FETCH (CHANGEDSINCE n VANISHED) first
    reports the UIDs of the set expunged since n, then the messages of the
    set changed since.
    """
    store = filledStore(SIX)
    s = qresyncSession(store)
    modSeq = known(store)[1]
    change(store, expunge=[2, 5], seen=[3])
    s.send("n NOOP")
    s.expect("* VANISHED 2,5", "* 2 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (%d))" % (modSeqOf(store, 3),),
             "n OK NOOP completed.")
    s.send("a UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % (modSeq,))
    s.expect("* VANISHED (EARLIER) 2,5", "* 2 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (%d))" % (modSeqOf(store, 3),),
             "a OK Fetch completed.")
    s.send("b UID FETCH 3:4 (FLAGS) (VANISHED CHANGEDSINCE %d)" % (modSeq,))
    s.expect("* 2 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (%d))" % (modSeqOf(store, 3),), "b OK Fetch completed.")
    s.send("c UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % (known(store)[1],))
    s.expect("c OK Fetch completed.")


@pytest.mark.parametrize("command", [
    "FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)",
    "UID FETCH 1:* (FLAGS) (VANISHED)",
    "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED VANISHED)",
])
def test_fetch_vanished_invalid(command):
    """
    VANISHED only with UID FETCH and CHANGEDSINCE (RFC 7162 section 3.2.6).
    """
    s = qresyncSession(filledStore(SIX))
    s.send("a " + command)
    [line] = s.lines()
    assert line.startswith("a BAD ")


def test_uid_fetch_vanished_needs_enable():
    s = Session(store=filledStore(SIX))
    s.select()
    s.send("a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
    [line] = s.lines()
    assert line.startswith("a BAD ")


def test_own_expunges_are_vanished():
    """
    RFC 7162 section 3.2.10: once QRESYNC is enabled, EXPUNGE, UID EXPUNGE
    and MOVE report C{* VANISHED uids}, never C{* n EXPUNGE}.
    """
    store = filledStore(SIX)
    store.createMailbox(USER, "Archive/Old")
    s = qresyncSession(store)
    s.send("a STORE 1:4 +FLAGS.SILENT (\\Deleted)")
    assert s.lines()[-1] == "a OK Store completed."
    s.send("b UID EXPUNGE 3:4")
    s.expect("* VANISHED 3:4", "b OK Expunge completed.")
    s.send("c EXPUNGE")
    s.expect("* VANISHED 1:2", "c OK Expunge completed.")
    s.send("d UID MOVE 6 Archive/Old")
    got = s.lines()
    assert got[1:] == ["* VANISHED 6", "d OK Move completed."]
    s.send("e FETCH 1:* (UID)")
    s.expect("* 1 FETCH (UID 5)", "e OK Fetch completed.")


def test_idle_reports_vanished_for_other_session():
    """
    Another session expunges while this one idles: the idler hears
    C{* VANISHED} at once.
    """
    store = filledStore(SIX)
    one = qresyncSession(store)
    two = Session(store=store)
    two.select()
    one.send("i IDLE")
    one.expect("+ idling")
    two.send("b STORE 2,5 +FLAGS.SILENT (\\Deleted)", "c EXPUNGE")
    assert two.lines()[-3:] == ["* 5 EXPUNGE", "* 2 EXPUNGE", "c OK Expunge completed."]
    got = one.lines()
    assert got[-1] == "* VANISHED 2,5"
    assert all("EXPUNGE" not in line for line in got)
    one.send("DONE")
    one.expect("i OK Idle completed.")


def test_closed_when_select_replaces_a_mailbox():
    """
    RFC 7162 section 3.2.11: C{OK [CLOSED]} when SELECT or EXAMINE closes
    the selected mailbox (also when the new one cannot be opened), not on
    the first SELECT, and not without QRESYNC.
    """
    store = filledStore(SIX)
    s = qresyncSession(store, select=None)
    s.send("a SELECT INBOX")
    assert "CLOSED" not in " ".join(s.lines())
    s.send("b EXAMINE Drafts")
    got = s.lines()
    assert got[0] == "* OK [CLOSED] Previous mailbox closed."
    assert got[-1] == "b OK [READ-ONLY] Examine completed."
    s.send("c SELECT Nope")
    s.expect("* OK [CLOSED] Previous mailbox closed.", "c NO [NONEXISTENT] Mailbox doesn't exist.")
    s.send("d SELECT INBOX", "e UNSELECT")
    got = s.lines()
    assert "CLOSED" not in " ".join(got) and got[-1] == "e OK Unselect completed."
    plain = Session(store=store)
    plain.select()
    plain.send("f SELECT Drafts")
    assert "CLOSED" not in " ".join(plain.lines())


def test_parse_parameters():
    def tokens(text):
        return tokenize([text.encode()])

    assert parseSelectParameters(tokens("(CONDSTORE)")[0]) == (True, None)
    condstore, resync = parseSelectParameters(tokens("(QRESYNC (67890007 20050715194045000 41,43:211,214:541))")[0])
    assert not condstore
    assert (resync.uidValidity, resync.modSeq) == (67890007, 20050715194045000)
    assert resync.knownUids.ranges == [(41, 41), (43, 211), (214, 541)]
    resync = parseSelectParameters(tokens("(QRESYNC (1 2 1:* (1:3 4:6)))")[0])[1]
    assert [s.ranges for s in resync.sequenceMatch] == [[(1, 3)], [(4, 6)]]
    for bad in ["(QRESYNC (0 1))", "(QRESYNC (1 0))", "(QRESYNC (1 2 3 4))", "(QRESYNC)", "(QRESYNC (1 2) QRESYNC (1 2))"]:
        with pytest.raises(ParseError):
            parseSelectParameters(tokens(bad)[0])
    assert parseFetchModifiers(tokens("(CHANGEDSINCE 5 VANISHED)")[0], True) == (5, True)
    assert parseFetchModifiers(tokens("(CHANGEDSINCE 5)")[0], False) == (5, False)
