"""
Tests of SORT, ESORT, SORT=DISPLAY and THREAD: L{mdpy.imap.sort} and
L{mdpy.imap.thread} alone, and transcripts of L{mdpy.imap.server} over the
in-memory store.
"""

import pytest

from mdpy.backends.memory import MemoryStore, recordReads
from mdpy.errors import NotFound
from mdpy.imap import sort, thread
from mdpy.imap.parser import ParseError, tokenize
from tests.test_imap_server import USER, Session

DAY = 86400
JAN_1 = 1704067200  # 2024-01-01 00:00:00 UTC


# --- base subject (RFC 5256 section 2.1) and collation (RFC 5051) ----------------


@pytest.mark.parametrize("raw, subject, replied", [
    (b"Re: hello", "hello", True),
    (b"RE: Re: re:   hello  ", "hello", True),
    (b"Fwd: hello (fwd)", "hello", True),
    (b"hello (FWD) (fwd)", "hello", True),
    (b"[list] Re: [other] fw: hello", "hello", True),
    (b"Re [list]: hello", "hello", True),
    (b"[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "b", True),
    (b"Re: [FWD: c]", "c", True),
    (b"re: [fwd: [fwd: re: [fwd: babylon]]]", "babylon", True),
    (b"[list] hello", "hello", False),
    # A blob that is all of the subject stays.
    (b"[xyz]", "[xyz]", False),
    (b"Ad: Re: Ad: x", "Ad: Re: Ad: x", False),
    (b"=?us-ascii?b?UmU6IGM=?=", "c", True),
    (b"=?iso-8859-1?q?_?=", "", False),
    (b"a\t \tb", "a b", False),
    (None, "", False),
])
def test_baseSubject(raw, subject, replied):
    assert sort.baseSubject(raw) == (subject, replied)


def test_collation_is_case_and_accent_aware():
    assert sort.collationKey("abc") == sort.collationKey("ABC")
    # Titlecase: letters sort after "[" and "_" would sort before them
    # in lower case.
    assert sort.collationKey("c") < sort.collationKey("[xyz]") < sort.collationKey("_")
    # Decomposed: É sorts with E.
    assert sort.collationKey("B") < sort.collationKey("\u00c9mile") < sort.collationKey("F")


def test_messageIds():
    assert sort.messageIds(b"<a@b> junk < c @ d >\r\n\t<>") == [b"a@b", b"c@d"]
    assert sort.messageIds(None) == []


def test_sortFields_fall_back_to_in_reply_to():
    fields = sort.SortFields.fromMessage(
        b"Message-ID: <3@x>\r\nIn-Reply-To: <2@x> <1@x>\r\nDate: nonsense\r\n\r\nbody\r\n"
    )
    assert (fields.messageId, fields.references, fields.sentDate) == (b"3@x", (b"2@x",), None)
    fields = sort.SortFields.fromMessage(b"References: <1@x> <2@x>\r\nIn-Reply-To: <9@x>\r\n\r\n")
    assert (fields.messageId, fields.references) == (None, (b"1@x", b"2@x"))


def test_limits():
    # Only the first MAX_SUBJECT octets of a subject are read: here 512
    # leaders and nothing after them.
    assert sort.MAX_SUBJECT == 2048
    assert sort.baseSubject(b"Re: " * 1000000 + b"x") == ("", True)
    # Of many references the first and the last are kept.
    fields = sort.SortFields.fromMessage(
        b"References:" + b"".join(b" <%d@x>" % n for n in range(1000)) + b"\r\n\r\n"
    )
    assert fields.references == (b"0@x",) + tuple(b"%d@x" % n for n in range(901, 1000))


@pytest.mark.parametrize("line", [
    "ARRIVAL US-ASCII ALL",
    "(SENDER) US-ASCII ALL",
    "(REVERSE) US-ASCII ALL",
    "(REVERSE REVERSE DATE) US-ASCII ALL",
    "() US-ASCII ALL",
    "(DATE)",
    "(DATE) US-ASCII",
    "RETURN (PARTIAL 1) (DATE) US-ASCII ALL",
    "RETURN (PARTIAL 1:5 ALL) (DATE) US-ASCII ALL",
    "(DATE) US-ASCII FOO",
])
def test_parseSortCommand_refuses(line):
    with pytest.raises(ParseError):
        sort.parseSortCommand(tokenize([line.encode()]))


# --- threading alone ------------------------------------------------------------------


class FakeMessage:
    def __init__(self, uid, data, internalDate):
        self.uid = self.key = uid
        self.size = len(data)
        self.internalDate = internalDate
        self.modSeq = 1


def sortables(*headers):
    """
    @param headers: the header of each message, its internal date a
        second later than the one before.
    """
    return [
        sort.Sortable(number, number, FakeMessage(number, header, JAN_1 + number),
                      sort.SortFields.fromMessage(header + b"\r\n\r\n"))
        for number, header in enumerate(headers, 1)
    ]


def threaded(*headers, algorithm=thread.references):
    return thread.formatThreadResponse(algorithm(sortables(*headers)))


def test_references_breaks_a_link_a_truncated_references_made():
    # Message 2 names 3 as 1's child; 3 names 2 as its parent, which would
    # be a loop: 3 keeps no parent.
    assert threaded(
        b"Message-ID: <a@b>\r\nDate: Fri, 22 Feb 2008 17:06:23 +0000",
        b"Message-ID: <b@b>\r\nReferences: <a@b> <c@b>\r\nDate: Fri, 22 Feb 2008 15:06:23 +0000",
        b"Message-ID: <c@b>\r\nReferences: <b@b>\r\nDate: Fri, 22 Feb 2008 16:06:25 +0000",
    ) == b"* THREAD (3 2)(1)\r\n"


def test_references_duplicate_message_id():
    assert threaded(
        b"Message-ID: <a@b>", b"Message-ID: <b@b>\r\nReferences: <a@b>",
        b"Message-ID: <c@b>\r\nReferences: <b@b>", b"Message-ID: <b@b>\r\nReferences: <a@b>",
    ) == b"* THREAD (1 (2 3)(4))\r\n"
    # The first one gone, the duplicate takes its place.
    assert threaded(
        b"Message-ID: <a@b>", b"Message-ID: <c@b>\r\nReferences: <b@b>",
        b"Message-ID: <b@b>\r\nReferences: <a@b>",
    ) == b"* THREAD (1 3 2)\r\n"


def test_references_dummies_pruned_or_kept_at_the_root():
    # A dummy with two children stays at the root, one with one child is
    # replaced by it.
    assert threaded(b"References: <a@b>", b"References: <a@b>") == b"* THREAD ((1)(2))\r\n"
    assert threaded(b"References: <a@b>", b"References: <c@b>") == b"* THREAD (1)(2)\r\n"
    # Dummies below the root are replaced by their children.
    assert threaded(
        b"Message-ID: <r@b>", b"References: <r@b> <gone@b>", b"References: <r@b> <gone@b>",
    ) == b"* THREAD (1 (2)(3))\r\n"


def test_references_groups_by_subject():
    # RFC 5256 section 4, step 5: a reply joins the thread of its subject;
    # two that are not replies get a dummy parent.
    assert threaded(b"Message-ID: <a@b>\r\nSubject: foo", b"Message-ID: <a@b>\r\nSubject: Re: foo") == (
        b"* THREAD (1 2)\r\n"
    )
    assert threaded(b"Subject: foo", b"Subject: foo", b"Subject: Re: foo") == b"* THREAD ((1)(2)(3))\r\n"
    # An empty subject groups nothing.
    assert threaded(b"Subject: Re:", b"Subject: Re:") == b"* THREAD (1)(2)\r\n"


def test_orderedSubject():
    assert threaded(
        b"Subject: a\r\nDate: Fri, 22 Feb 2008 22:00:10 +0200",
        b"Subject: b\r\nDate: Fri, 22 Feb 2008 22:00:09 +0200",
        b"Subject: Re: a\r\nDate: Fri, 22 Feb 2008 22:00:08 +0200",
        b"Subject: b\r\nDate: Fri, 22 Feb 2008 22:00:07 +0200",
        b"Subject: A",
        b"Subject: c\r\nDate: Fri, 22 Feb 2008 22:00:09 +0200",
        algorithm=thread.orderedSubject,
    ) == b"* THREAD (4 2)(3 (1)(5))(6)\r\n"


def test_long_reply_chain_needs_no_recursion():
    count = 3000
    headers = [b"Message-ID: <0@b>"] + [
        b"Message-ID: <%d@b>\r\nIn-Reply-To: <%d@b>" % (n, n - 1) for n in range(1, count)
    ]
    expected = b"* THREAD (" + b" ".join(b"%d" % n for n in range(1, count + 1)) + b")\r\n"
    assert threaded(*headers) == expected
    assert threaded(*headers, algorithm=thread.orderedSubject) == b"* THREAD (1 (" + b")(".join(
        b"%d" % n for n in range(2, count + 1)) + b"))\r\n"


def test_formatThreadResponse_empty():
    assert thread.formatThreadResponse([]) == b"* THREAD\r\n"


# --- transcripts ------------------------------------------------------------------------


def message(date, sender, to, cc, subject, bodySize):
    lines = [b"From: " + sender, b"To: " + to, b"Subject: " + subject]
    if date:
        lines.append(b"Date: " + date)
    if cc:
        lines.append(b"Cc: " + cc)
    return b"\r\n".join(lines) + b"\r\n\r\n" + b"x" * bodySize + b"\r\n"


# (internal date, message).  Each key orders them differently:
#   ARRIVAL 2 4 3 1, DATE 1 4 3 2, FROM 2 3 1 4, DISPLAYFROM 2 3 4 1,
#   TO 4 2 3 1, DISPLAYTO 1 2 4 3, CC 3 2 4 1, SUBJECT 2 1 4 3, SIZE 2 4 1 3.
SORTED = [
    (JAN_1 + 4 * DAY, message(b"Tue, 02 Jan 2024 00:00:00 +0000", b"Zack <dan@x.test>", b"Amy <wes@x.test>",
                              b"cat@x.test", b"Re: beta", 2000)),
    (JAN_1 + 1 * DAY, message(b"Sat, 06 Jan 2024 01:00:00 +0100", b"ann@x.test", b"ben@x.test",
                              b"Dora <ann@x.test>", b"alpha", 10)),
    (JAN_1 + 3 * DAY, message(None, b"Bob <cid@x.test>", b"Zoe <vic@x.test>", None,
                              b"[list] Gamma (fwd)", 3000)),
    (JAN_1 + DAY * 5 // 2, message(b"not a date", b"eve@x.test", b"=?utf-8?q?=C3=89mile?= <ali@x.test>",
                                   b"bo@x.test", b"Fwd: Beta", 1000)),
]


def storeOf(messages, skipUids=0):
    """
    @param skipUids: how many UIDs to use up first, so UIDs and sequence
        numbers differ.
    """
    store = MemoryStore()
    store.createAccount(USER)
    mailbox = store.openMailbox(USER, "INBOX")
    for _ in range(skipUids):
        mailbox.append(b"Subject: gone\r\n\r\n")
    mailbox.expunge([m.uid for m in mailbox.messages()])
    for internalDate, data in messages:
        mailbox.append(data, (), internalDate)
    return store


def selected(messages=SORTED, skipUids=0, **options):
    s = Session(store=storeOf(messages, skipUids), **options)
    s.select()
    return s


@pytest.mark.parametrize("keys, order", [
    ("ARRIVAL", "2 4 3 1"),
    ("DATE", "1 4 3 2"),
    ("FROM", "2 3 1 4"),
    ("DISPLAYFROM", "2 3 4 1"),
    ("TO", "4 2 3 1"),
    ("DISPLAYTO", "1 2 4 3"),
    ("CC", "3 2 4 1"),
    ("SUBJECT", "2 1 4 3"),
    ("SIZE", "2 4 1 3"),
    ("REVERSE SIZE", "3 1 4 2"),
    # Ties stay in mailbox order, reversed or not.
    ("REVERSE SUBJECT", "3 1 4 2"),
    ("SUBJECT SIZE", "2 4 1 3"),
    ("SUBJECT REVERSE ARRIVAL", "2 1 4 3"),
    ("subject reverse date", "2 4 1 3"),
])
def test_sort_keys(keys, order):
    s = selected()
    s.send("a SORT (%s) US-ASCII ALL" % (keys,))
    s.expect("* SORT " + order, "a OK Sort completed.")


def test_uid_sort_and_criteria():
    s = selected(skipUids=3)
    s.send("a UID SORT (ARRIVAL) UTF-8 ALL", "b SORT (DATE) US-ASCII NOT SUBJECT beta",
           "c UID SORT (DATE) US-ASCII 2:4", "d SORT (DATE) US-ASCII SUBJECT nothing")
    s.expect(
        "* SORT 5 7 6 4", "a OK Sort completed.",
        "* SORT 3 2", "b OK Sort completed.",
        "* SORT 7 6 5", "c OK Sort completed.",
        "* SORT", "d OK Sort completed.",
    )


def test_sort_utf8_literal_and_bad_charset():
    s = selected()
    s.sendRaw(b"a SORT (ARRIVAL) UTF-8 TO {6+}\r\n\xc3\x89mile\r\n")
    s.expect("* SORT 4", "a OK Sort completed.")
    s.send("b SORT (ARRIVAL) us-ascii FROM ann", "c SORT (ARRIVAL) KOI8-R ALL", "d THREAD REFERENCES ISO-8859-1 ALL")
    s.expect(
        "* SORT 2", "b OK Sort completed.",
        "c NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset.",
        "d NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset.",
    )


def test_esort():
    s = selected(skipUids=1)
    s.send(
        "a SORT RETURN (MIN MAX COUNT ALL) (ARRIVAL) US-ASCII ALL",
        "b SORT RETURN () (SIZE) US-ASCII ALL",
        "c UID SORT RETURN (MIN) (DATE) US-ASCII ALL",
        "d SORT RETURN (MIN MAX COUNT ALL) (DATE) US-ASCII SUBJECT nothing",
        "e SORT RETURN (ALL) (REVERSE ARRIVAL) US-ASCII ALL",
    )
    s.expect(
        '* ESEARCH (TAG "a") MIN 2 MAX 1 COUNT 4 ALL 2,4,3,1', "a OK Sort completed.",
        '* ESEARCH (TAG "b") ALL 2,4,1,3', "b OK Sort completed.",
        '* ESEARCH (TAG "c") UID MIN 2', "c OK Sort completed.",
        '* ESEARCH (TAG "d") COUNT 0', "d OK Sort completed.",
        '* ESEARCH (TAG "e") ALL 1,3:4,2', "e OK Sort completed.",
    )


def test_sort_modseq_enables_condstore():
    s = selected()
    s.send("a SORT (ARRIVAL) US-ASCII MODSEQ 1")
    got = s.lines()
    assert got[0].startswith("* OK [HIGHESTMODSEQ ")
    assert got[1].startswith("* SORT 2 4 3 1 (MODSEQ ") and got[2] == "a OK Sort completed."


@pytest.mark.parametrize("line, reply", [
    ("SORT ARRIVAL US-ASCII ALL", "BAD Error in IMAP command SORT: Expected a list of sort keys."),
    ("SORT (SENDER) US-ASCII ALL", "BAD Error in IMAP command SORT: Unknown sort key."),
    ("SORT (ARRIVAL REVERSE) US-ASCII ALL", "BAD Error in IMAP command SORT: REVERSE without a sort key."),
    ("SORT () US-ASCII ALL", "BAD Error in IMAP command SORT: Empty sort key list."),
    ("SORT (ARRIVAL)", "BAD Error in IMAP command SORT: Expected a charset."),
    ("SORT (ARRIVAL) US-ASCII", "BAD Error in IMAP command SORT: No search key."),
    ("SORT RETURN (SAVE) (ARRIVAL) US-ASCII ALL", "BAD Error in IMAP command SORT: Unsupported RETURN option."),
    ("UID SORT (ARRIVAL) US-ASCII BOGUS", "BAD Error in IMAP command UID SORT: Unknown search key."),
    ("THREAD REFS US-ASCII ALL", "BAD Error in IMAP command THREAD: Unknown thread algorithm."),
    ("THREAD REFERENCES", "BAD Error in IMAP command THREAD: Expected a charset."),
    ("THREAD REFERENCES UTF-8 (", "BAD Error in IMAP command: *"),
])
def test_bad_syntax(line, reply):
    s = selected()
    s.send("a " + line)
    s.expect("a " + reply)


def test_sort_and_thread_need_a_selected_mailbox():
    s = Session()
    s.login()
    s.send("a SORT (DATE) US-ASCII ALL", "b THREAD REFERENCES US-ASCII ALL")
    s.expect("a BAD Command not valid in this state.", "b BAD Command not valid in this state.")


def test_capabilities_advertised_after_login():
    s = Session()
    s.login()
    s.send("a CAPABILITY")
    [caps, _] = s.lines()
    for name in ("SORT", "SORT=DISPLAY", "ESORT", "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT"):
        assert (" " + name + " ") in caps + " "
    assert "SORT" not in Session().greeting[0]


def test_sort_fields_read_once(monkeypatch):
    store = storeOf(SORTED)
    one = Session(store=store)
    one.select()
    reads = recordReads(monkeypatch)
    one.send("a SORT (SUBJECT) US-ASCII ALL")
    one.expect("* SORT 2 1 4 3", "a OK Sort completed.")
    assert sorted(reads) == [1, 2, 3, 4]
    del reads[:]
    one.send("b SORT (REVERSE DISPLAYTO) US-ASCII ALL", "c THREAD ORDEREDSUBJECT US-ASCII ALL")
    one.expect("* SORT 3 4 2 1", "b OK Sort completed.", "* THREAD (1 4)(3)(2)", "c OK Thread completed.")
    # A second session of the same listener uses what the first read.
    two = Session(store=store, factory=one.factory)
    two.select()
    two.send("d SORT (FROM) US-ASCII ALL")
    two.expect("* SORT 2 3 1 4", "d OK Sort completed.")
    assert reads == []
    # A criterion on the body still reads the messages it tests.
    one.send("e SORT (SIZE) US-ASCII BODY xxx")
    one.expect("* SORT 2 4 1 3", "e OK Sort completed.")
    assert sorted(reads) == [1, 2, 3, 4]


def test_sort_leaves_out_a_message_gone_from_the_store(monkeypatch):
    # Its sort fields are known already, but its internal date, like a
    # Maildir file's, can no longer be read.
    s = selected()
    s.send("a SORT (SUBJECT) US-ASCII ALL")
    s.expect("* SORT 2 1 4 3", "a OK Sort completed.")
    gone = s.t.protocol.selected.messagesAt([0])[0]

    class Gone:
        uid, key, size, modSeq, flags = gone.uid, gone.key, gone.size, gone.modSeq, gone.flags

        @property
        def internalDate(self):
            raise NotFound("message %s is gone" % (gone.key,))

    s.t.protocol.selected.messages[gone.uid] = Gone()
    s.send("b SORT (ARRIVAL) US-ASCII ALL", "c THREAD ORDEREDSUBJECT US-ASCII ALL")
    s.expect("* SORT 2 4 3", "b OK Sort completed.", "* THREAD (4)(3)(2)", "c OK Thread completed.")


THREADED = [
    (JAN_1, b"Message-ID: <1@x>\r\nSubject: meeting\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n1\r\n"),
    (JAN_1, b"Message-ID: <2@x>\r\nIn-Reply-To: <1@x>\r\nSubject: Re: meeting\r\n"
            b"Date: Tue, 02 Jan 2024 00:00:00 +0000\r\n\r\n2\r\n"),
    (JAN_1, b"Message-ID: <3@x>\r\nReferences: <1@x>\r\n <2@x>\r\nSubject: Re: meeting\r\n"
            b"Date: Wed, 03 Jan 2024 00:00:00 +0000\r\n\r\n3\r\n"),
    (JAN_1, b"Message-ID: <4@x>\r\nReferences: <1@x>\r\nSubject: Re: meeting\r\n"
            b"Date: Tue, 02 Jan 2024 12:00:00 +0000\r\n\r\n4\r\n"),
    (JAN_1, b"Message-ID: <5@x>\r\nReferences: <gone@x>\r\nSubject: other\r\n"
            b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n\r\n5\r\n"),
    (JAN_1, b"Message-ID: <6@x>\r\nReferences: <gone@x>\r\nSubject: Re: other\r\n"
            b"Date: Fri, 05 Jan 2024 00:00:00 +0000\r\n\r\n6\r\n"),
    (JAN_1, b"Message-ID: <7@x>\r\nSubject: Fwd: meeting\r\nDate: Sat, 06 Jan 2024 00:00:00 +0000\r\n\r\n7\r\n"),
    # No Date: the internal date, 4 January.
    (JAN_1 + 3 * DAY, b"Subject: lonely\r\n\r\n8\r\n"),
]


def test_thread_references_and_orderedsubject():
    s = selected(THREADED, skipUids=2)
    s.send(
        "a THREAD REFERENCES US-ASCII ALL",
        "b THREAD ORDEREDSUBJECT UTF-8 ALL",
        "c UID THREAD REFERENCES US-ASCII NOT SUBJECT other",
        "d THREAD REFERENCES US-ASCII SUBJECT nothing",
    )
    s.expect(
        "* THREAD (1 (2 3)(4)(7))((5)(6))(8)", "a OK Thread completed.",
        "* THREAD (1 (2)(4)(3)(7))(5 6)(8)", "b OK Thread completed.",
        "* THREAD (3 (4 5)(6)(9))(10)", "c OK Thread completed.",
        "* THREAD", "d OK Thread completed.",
    )


def test_thread_after_expunge_by_another_session():
    store = storeOf(THREADED)
    one, two = Session(store=store), Session(store=store)
    one.select()
    two.select()
    # The first message is expunged elsewhere: SORT and THREAD by sequence
    # number send no EXPUNGE and leave out the message, whose data is gone.
    two.send("a STORE 1 +FLAGS.SILENT (\\Deleted)", "b EXPUNGE")
    two.lines()
    one.send("c THREAD REFERENCES US-ASCII ALL")
    one.expect("* THREAD ((5)(6))((2 3)(4)(7))(8)", "c OK Thread completed.")
    one.send("d NOOP", "e THREAD REFERENCES US-ASCII ALL")
    one.expect("* 1 EXPUNGE", "d OK NOOP completed.", "* THREAD ((4)(5))((1 2)(3)(6))(7)", "e OK Thread completed.")
