"""
Transcript tests of L{mdpy.imap.server} for the protocol details Dovecot's
imaptest checks: atoms, subscriptions in LSUB and LIST-EXTENDED, address
SEARCH, implicit CONDSTORE and keywords announced in FLAGS.
"""

from tests.test_imap_server import USER, Session, filledStore

ODD_ATOM = "!#$&'+,-.0123456789:;<=>?@^_`|[}"


def test_atoms_with_open_bracket_and_close_brace():
    """
    C{[} and C{}} are ATOM-CHARs (RFC 3501 section 9): a mailbox name or a
    keyword holding them is read as an atom, not refused as a section with
    no C{]}.
    """
    s = Session()
    s.login()
    s.send("a SELECT " + ODD_ATOM, 'b LIST "" ' + ODD_ATOM + "%*", "c CREATE foo[bar")
    s.expect("a NO [NONEXISTENT] Mailbox doesn't exist.", "b OK List completed.", "c OK Create completed.")
    s.send('d LIST "" foo[bar', "e SELECT foo[bar")
    got = s.lines()
    assert got[:2] == ['* LIST (\\HasNoChildren) "/" "foo[bar"', "d OK List completed."]
    assert got[-1] == "e OK [READ-WRITE] Select completed."
    assert "foo[bar" in s.store.listMailboxes(USER)


def loggedInAfter(*commands):
    """
    @return: a logged-in L{Session} that has run C{commands}, each answered
        OK.
    """
    s = Session()
    s.login()
    s.send(*["p%d %s" % (number, command) for number, command in enumerate(commands)])
    got = s.lines()
    assert [line.split()[1] for line in got] == ["OK"] * len(commands), got
    return s


def test_lsub_percent_returns_unsubscribed_parents_as_noselect():
    """
    RFC 3501 section 6.3.9: with C{%}, a parent that is not subscribed but
    has a subscribed child the pattern does not reach is returned flagged
    C{\\Noselect}, and only while that child stays subscribed.
    """
    s = loggedInAfter("CREATE box/test", "CREATE box/test2/test", "CREATE box/test3/test3",
                      "SUBSCRIBE box/test", "SUBSCRIBE box/test2/test", "SUBSCRIBE box/test3/test3")
    s.send('g LSUB "" box/%')
    s.expect('* LSUB () "/" "box/test"', '* LSUB (\\Noselect) "/" "box/test2"',
             '* LSUB (\\Noselect) "/" "box/test3"', "g OK List completed.")
    s.send('h LSUB "" *test')
    s.expect('* LSUB () "/" "box/test"', '* LSUB () "/" "box/test2/test"', "h OK List completed.")
    s.send("i UNSUBSCRIBE box/test3/test3", 'j LSUB "" box/%')
    s.expect("i OK Unsubscribe completed.", '* LSUB () "/" "box/test"', '* LSUB (\\Noselect) "/" "box/test2"',
             "j OK List completed.")


def test_list_recursivematch_childinfo_only_for_children_not_listed():
    """
    RFC 5258 section 3.5: a parent that does not meet the selection but
    has a subscribed descendant gets CHILDINFO when the pattern does not
    match that descendant, and is left out when the descendant is listed
    itself.
    """
    s = loggedInAfter("CREATE box/test2/test1", "SUBSCRIBE box/test2/test1", "CREATE box/test8/test8",
                      "CREATE box/test8/test9", "SUBSCRIBE box/test8/test8", "SUBSCRIBE box/test8/test9")
    s.send('g LIST (SUBSCRIBED RECURSIVEMATCH) "" "box/%"')
    s.expect('* LIST (\\HasChildren) "/" "box/test2" ("CHILDINFO" ("SUBSCRIBED"))',
             '* LIST (\\HasChildren) "/" "box/test8" ("CHILDINFO" ("SUBSCRIBED"))', "g OK List completed.")
    s.send('h LIST (SUBSCRIBED RECURSIVEMATCH) "" (box/test2 box/test2/test1)')
    s.expect('* LIST (\\HasNoChildren \\Subscribed) "/" "box/test2/test1"', "h OK List completed.")
    s.send('i LIST (SUBSCRIBED RECURSIVEMATCH) "" box*test8')
    s.expect('* LIST (\\HasChildren) "/" "box/test8" ("CHILDINFO" ("SUBSCRIBED"))',
             '* LIST (\\HasNoChildren \\Subscribed) "/" "box/test8/test8"', "i OK List completed.")


def test_search_from_address_with_comments():
    """
    SEARCH FROM matches the address as parsed: comments inside it are
    dropped, one after it stands for the display name.
    """
    store = filledStore([
        b"From: <user-from (comment)@ (comment) domain.org>\r\n\r\nbody3\r\n",
        b"From: user-from@domain.org (RealFrom)\r\n\r\nbody4\r\n",
        b"From: other@domain.org\r\n\r\nbody\r\n",
    ])
    s = Session(store=store)
    s.select()
    s.send("a SEARCH FROM user-from@domain.org", "b SEARCH FROM realfrom", "c UID SEARCH FROM comment")
    s.expect("* SEARCH 1 2", "a OK Search completed.", "* SEARCH 2", "b OK Search completed.",
             "* SEARCH", "c OK Search completed.")


def modSeqOf(store, index):
    return store.openMailbox(USER).messages()[index].modSeq


def test_fetch_modseq_enables_condstore():
    """
    RFC 7162 section 3.1: a FETCH of the MODSEQ item is a CONDSTORE
    enabling command; the first one in the selected state is answered with
    C{OK [HIGHESTMODSEQ]}, and from then on the FETCH responses a STORE
    causes carry the UID and the MODSEQ.
    """
    s = Session()
    s.select()
    highest = s.store.openMailbox(USER).highestModSeq
    s.send("a FETCH 1 MODSEQ")
    s.expect("* OK [HIGHESTMODSEQ %d] Highest." % highest, "* 1 FETCH (MODSEQ (%d))" % modSeqOf(s.store, 0),
             "a OK Fetch completed.")
    s.send("b STORE 1 +FLAGS \\Seen")
    s.expect("* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (%d))" % modSeqOf(s.store, 0), "b OK Store completed.")
    s.send("c STORE 3 +FLAGS.SILENT \\Seen", "d FETCH 2 (MODSEQ)")
    s.expect("* 3 FETCH (UID 3 MODSEQ (%d))" % modSeqOf(s.store, 2), "c OK Store completed.",
             "* 2 FETCH (MODSEQ (%d))" % modSeqOf(s.store, 1), "d OK Fetch completed.")


def test_other_condstore_enabling_commands():
    """
    SEARCH MODSEQ, FETCH CHANGEDSINCE, STORE UNCHANGEDSINCE and STATUS
    HIGHESTMODSEQ enable CONDSTORE too (RFC 7162 section 3.1); once it is,
    a FETCH that sets \\Seen and another session's change are reported with
    UID and MODSEQ.
    """
    for command in ["SEARCH MODSEQ 1", "FETCH 1 (FLAGS) (CHANGEDSINCE 1)",
                    "STORE 2 (UNCHANGEDSINCE 1000) +FLAGS.SILENT ($x)", "STATUS INBOX (HIGHESTMODSEQ)"]:
        s = Session()
        s.select()
        highest = s.store.openMailbox(USER).highestModSeq
        s.send("a " + command)
        got = s.lines()
        assert got[0] == "* OK [HIGHESTMODSEQ %d] Highest." % highest, (command, got)
        assert got[-1].startswith("a OK "), (command, got)
        assert not any("[HIGHESTMODSEQ" in line for line in got[1:]), (command, got)
        s.send("b FETCH 3 BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "c FETCH 3 BODY[HEADER.FIELDS (SUBJECT)]")
        s.expect("* 3 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}", "Subject: three", "", ")", "b OK Fetch completed.",
                 "* 3 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (%d) BODY[HEADER.FIELDS (SUBJECT)] {18}"
                 % modSeqOf(s.store, 2), "Subject: three", "", ")", "c OK Fetch completed.")
    other = Session(store=s.store)
    other.select()
    other.lines()
    other.send("d STORE 1 +FLAGS.SILENT (\\Flagged)")
    other.lines()
    s.send("e NOOP")
    s.expect("* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ (%d))" % modSeqOf(s.store, 0), "e OK NOOP completed.")


FLAGS = "\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded"


def flagsLines(keywords):
    """
    @return: the untagged FLAGS and PERMANENTFLAGS of a read-write mailbox
        whose messages have C{keywords}.
    """
    names = " ".join([FLAGS] + keywords)
    return ["* FLAGS (%s)" % (names,), "* OK [PERMANENTFLAGS (%s \\*)] Flags permitted." % (names,)]


def test_new_keyword_is_announced_in_flags():
    """
    RFC 3501 section 7.2.6: a keyword that appears in the selected mailbox,
    by this session's STORE or APPEND or by another session, is announced
    with untagged FLAGS and PERMANENTFLAGS before a response shows it.
    """
    one, two = Session(), None
    one.select()
    two = Session(store=one.store)
    two.select()
    one.send("a STORE 1 +FLAGS ($hello)")
    one.expect(*flagsLines(["$hello"]) + ["* 1 FETCH (FLAGS ($hello))", "a OK Store completed."])
    one.send("b STORE 2 +FLAGS ($hello)")
    one.expect("* 2 FETCH (FLAGS ($hello))", "b OK Store completed.")
    two.send("c NOOP")
    two.expect(*flagsLines(["$hello"]) + ["* 1 FETCH (FLAGS ($hello))", "* 2 FETCH (FLAGS ($hello))",
                                          "c OK NOOP completed."])
    one.send("d STORE 3 +FLAGS.SILENT ($world)")
    one.expect(*flagsLines(["$hello", "$world"]) + ["d OK Store completed."])
    one.send("e APPEND INBOX ($new) {3+}", "x\r\n")
    got = one.lines()
    assert got[:3] == flagsLines(["$hello", "$new", "$world"]) + ["* 4 EXISTS"]
    assert got[-1].startswith("e OK [APPENDUID ")
    two.send("f NOOP")
    got = two.lines()
    assert got[:6] == (flagsLines(["$hello", "$world"]) + ["* 3 FETCH (FLAGS ($world))"]
                       + flagsLines(["$hello", "$new", "$world"]) + ["* 4 EXISTS"])
    assert got[-1] == "f OK NOOP completed."


def test_new_keyword_seen_by_a_fetch_setting_seen():
    one = Session()
    one.select()
    two = Session(store=one.store)
    two.select()
    two.send("a STORE 1 +FLAGS.SILENT (later)")
    two.lines()
    one.send("b FETCH 1 BODY[TEXT]")
    one.expect(*flagsLines(["later"]) + ["* 1 FETCH (FLAGS (\\Seen later) BODY[TEXT] {7}", "first", ")",
                                         "b OK Fetch completed."])
    one.send("c EXAMINE INBOX")
    got = one.lines()
    assert got[:2] == ["* FLAGS (%s later)" % (FLAGS,), "* OK [PERMANENTFLAGS ()] Read-only mailbox."]
