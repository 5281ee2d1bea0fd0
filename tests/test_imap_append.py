"""
Transcript tests of MULTIAPPEND (RFC 3502), CATENATE (RFC 4469) and BINARY
(RFC 3516) in L{mdpy.imap.server}, over the in-memory store.
"""

import base64

from mdpy.testing import resultOf
from tests.test_imap_server import MESSAGES, USER, Session, bigMessage, openFilesIn

FIRST = b"From: a@example.test\r\nSubject: first\r\n\r\nbody one\r\n"
SECOND = b"From: b@example.test\r\nSubject: second\r\n\r\nbody two\r\n"


def literal(data, binary=False):
    """
    @return: a non-synchronising literal (RFC 7888) of C{data}.
    """
    return (b"~" if binary else b"") + b"{%d+}\r\n" % (len(data),) + data


def stored(s, name="INBOX"):
    return [resultOf(m.read()) for m in s.store.openMailbox(USER, name).messages()]


def loggedIn(**options):
    s = Session(**options)
    s.login()
    return s


def test_extensions_are_advertised():
    s = loggedIn()
    s.send("c CAPABILITY")
    [caps, _] = s.lines()
    assert {"MULTIAPPEND", "CATENATE", "BINARY"} <= set(caps.split())


# --- MULTIAPPEND ---------------------------------------------------------------------


def test_multiappend_stores_every_message_with_its_flags_and_date():
    s = loggedIn()
    s.sendRaw(
        b'a APPEND Drafts (\\Seen) ' + literal(FIRST)
        + b' ($Label) "17-Jul-1996 02:44:25 -0700" ' + literal(SECOND)
        + b" " + literal(FIRST) + b"\r\n"
    )
    validity = s.store.openMailbox(USER, "Drafts").uidValidity
    s.expect("a OK [APPENDUID %d 1:3] Append completed." % validity)
    messages = s.store.openMailbox(USER, "Drafts").messages()
    assert stored(s, "Drafts") == [FIRST, SECOND, FIRST]
    assert [m.flags for m in messages] == [{"\\Seen"}, {"$Label"}, set()]
    assert messages[1].internalDate == 837596665


def test_multiappend_short_message_or_bad_date():
    """
    A literal and a quoted string read alike: a message of lines before
    another is a message; one short line is a date-time, and a bad one is
    C{BAD}, never stored as a message.
    """
    s = loggedIn()
    s.sendRaw(b"a APPEND Drafts " + literal(b"x\r\n") + b" " + literal(SECOND) + b"\r\n")
    s.expect("a OK [APPENDUID * 1:2] Append completed.")
    assert stored(s, "Drafts") == [b"x\r\n", SECOND]
    s.sendRaw(b'b APPEND Drafts "17-Jul-1996 02:44:25" ' + literal(SECOND) + b"\r\n")
    [line] = s.lines()
    assert line.startswith("b BAD ")
    assert len(stored(s, "Drafts")) == 2


def test_multiappend_whose_second_message_fails_stores_none():
    s = loggedIn(maxMessageSize=1000)
    # Refused by its size before its "+": the first message is dropped too.
    s.sendRaw(b"a APPEND Drafts " + literal(FIRST) + b" {2000}\r\n")
    s.expect("a NO [TOOBIG] Message too large (APPENDLIMIT=1000).")
    # A URL that names nothing, in the second message.
    s.sendRaw(
        b"b APPEND Drafts " + literal(FIRST)
        + b' CATENATE (URL "/INBOX/;UID=99" TEXT ' + literal(b"\r\nbody\r\n") + b")\r\n"
    )
    s.expect("b NO [BADURL /INBOX/;UID=99] Bad URL.")
    assert stored(s, "Drafts") == []
    assert s.factory.pendingLiterals.pending(USER) == 0


def test_multiappend_store_failure_stores_none():
    s = loggedIn()
    mailbox = s.store.openMailbox(USER, "Drafts")

    class Failing:
        def read(self, size=-1):
            raise OSError(28, "No space left on device")

    original = type(mailbox).appendMany

    def appendMany(self, messages):
        # The second message cannot be read where it is stored.
        messages = [messages[0], (Failing(), (), None)] + messages[2:]
        return original(self, messages)

    type(mailbox).appendMany = appendMany
    try:
        s.sendRaw(b"a APPEND Drafts " + literal(FIRST) + b" " + literal(SECOND) + b"\r\n")
        [line] = s.lines()
    finally:
        type(mailbox).appendMany = original
    assert line.startswith("a NO [")
    assert stored(s, "Drafts") == []


def test_multiappend_of_large_messages_spools_each(tmp_path):
    """
    Every message of a MULTIAPPEND is bounded by APPENDLIMIT alone and
    the large ones go to spool files; the literals of the command together
    may pass the in-memory bound, past which they are spooled too.
    """
    spool = str(tmp_path)
    s = loggedIn(spoolDir=spool, maxMessageSize=700000)
    big = [bigMessage(600000, b"big%d" % n) for n in range(3)]
    small = [bigMessage(200000, b"small%d" % n) for n in range(8)]
    data = b"a APPEND Drafts"
    for message in big + small:
        data += b" " + literal(message)
    s.sendRaw(data[:-1000])
    assert openFilesIn(spool) >= 3
    s.sendRaw(data[-1000:] + b"\r\n")
    s.expect("a OK [APPENDUID * 1:11] Append completed.")
    assert stored(s, "Drafts") == big + small
    assert openFilesIn(spool) == 0
    assert s.factory.pendingLiterals.pending(USER) == 0


def test_multiappend_literals_together_are_bounded_by_the_pending_limit(tmp_path):
    """
    The messages of one MULTIAPPEND count together against the account's
    literal octets under way ([imap] max_pending_literal_size): past it
    the next one gets C{NO [LIMIT]} before its C{+}, and nothing is kept.
    """
    s = loggedIn(spoolDir=str(tmp_path), maxMessageSize=700000, maxPendingLiterals=1000000)
    message = bigMessage(400000)
    s.sendRaw(b"a APPEND Drafts " + literal(message) + b" " + literal(message) + b" {400000}\r\n")
    s.expect("a NO [LIMIT] Too many messages being appended at once; try again later.")
    assert s.factory.pendingLiterals.pending(USER) == 0
    assert openFilesIn(str(tmp_path)) == 0
    assert stored(s, "Drafts") == []


# --- CATENATE -----------------------------------------------------------------------


def test_catenate_text_and_urls():
    s = loggedIn()
    validity = s.store.openMailbox(USER).uidValidity
    s.sendRaw(
        b"a APPEND Drafts (\\Seen) CATENATE (URL \"/INBOX;UIDVALIDITY=%d/;UID=2/;SECTION=HEADER\" " % validity
        + b"TEXT " + literal(b"new body\r\n")
        + b' URL "/INBOX/;UID=3/;SECTION=2" URL "/INBOX/;UID=1/;SECTION=TEXT/;PARTIAL=0.3"'
        + b' URL "imap://joe%40example.test@mx.example.test/INBOX/;UID=1/;PARTIAL=6.3")\r\n'
    )
    s.expect("a OK [APPENDUID * 1] Append completed.")
    header = MESSAGES[1].split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert stored(s, "Drafts") == [header + b"new body\r\n" + b"<p>two</p>" + b"fir" + b"Ann"]
    [message] = s.store.openMailbox(USER, "Drafts").messages()
    assert message.flags == {"\\Seen"}
    # Reading a message by URL sets no flag on it.
    assert all(m.flags == set() for m in s.store.openMailbox(USER).messages())


def test_catenate_bad_urls_store_nothing():
    s = loggedIn()
    validity = s.store.openMailbox(USER).uidValidity
    bad = [
        b"/INBOX;UIDVALIDITY=%d/;UID=1" % (validity + 1,),  # UIDVALIDITY changed
        b"/INBOX/;UID=99",  # no such message
        b"/Nope/;UID=1",  # no such mailbox
        b"/INBOX/;UID=3/;SECTION=7",  # no such part
        b"/INBOX/;UID=1/;SECTION=BOGUS",
        b"/INBOX/;UID=1;EXPIRE=2030-01-01T00:00:00Z;URLAUTH=anonymous",
        b"imap://ann%40example.test@mx.example.test/INBOX/;UID=1",  # another user's mailbox
        b"imap://mx.example.test/INBOX/;UID=1",  # anonymous
        b"http://example.test/",
        b"not a url",
    ]
    for n, url in enumerate(bad):
        s.sendRaw(b'a%d APPEND Drafts CATENATE (TEXT {3+}\r\nab\n URL "%s")\r\n' % (n, url))
        s.expect("a%d NO [BADURL %s] Bad URL." % (n, url.decode()))
    assert stored(s, "Drafts") == []
    # Ann's own INBOX is reached by her session only.
    s.store.deliver([("ann@example.test", "INBOX", [b"Subject: ann\r\n\r\nsecret\r\n"])])
    other = Session(store=s.store, factory=s.factory)
    other.login("ann@example.test", "pw")
    other.sendRaw(b'b APPEND INBOX CATENATE (URL "/INBOX/;UID=1")\r\n')
    other.expect("b OK [APPENDUID * 2] Append completed.")


def test_catenate_to_missing_mailbox_is_trycreate_before_urls():
    s = loggedIn()
    s.sendRaw(b'a APPEND Nope CATENATE (URL "/INBOX/;UID=99")\r\n')
    s.expect("a NO [TRYCREATE] Mailbox doesn't exist.")


def test_catenate_past_appendlimit_is_toobig():
    s = loggedIn(maxMessageSize=200)
    s.sendRaw(b'a APPEND Drafts CATENATE (URL "/INBOX/;UID=3" TEXT ' + literal(b"x" * 150) + b")\r\n")
    s.expect("a NO [TOOBIG] Message too large.")
    s.sendRaw(b"b APPEND Drafts CATENATE (TEXT " + literal(b"x" * 150) + b" TEXT " + literal(b"y" * 150) + b")\r\n")
    s.expect("b NO [TOOBIG] Message too large.")
    s.sendRaw(b"c APPEND Drafts CATENATE (TEXT {300}\r\n")
    s.expect("c NO [TOOBIG] Message too large (APPENDLIMIT=200).")
    assert stored(s, "Drafts") == []


def test_catenate_syntax_errors_are_bad():
    s = loggedIn()
    for n, parts in enumerate([b"()", b"(TEXT)", b'(URL)', b'(BOGUS "x")', b"(TEXT (a))"]):
        s.sendRaw(b"a%d APPEND Drafts CATENATE %s\r\n" % (n, parts))
        [line] = s.lines()
        assert line.startswith("a%d BAD " % n)


# --- binary literals ----------------------------------------------------------------

BINARY_MESSAGE = (
    b"From: a@example.test\r\nMime-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: binary\r\n\r\n\x00-\xe4\n\r\n\n"
)


def test_nul_in_a_literal_is_bad_but_taken_in_a_binary_literal():
    s = loggedIn()
    s.sendRaw(b"a APPEND Drafts " + literal(BINARY_MESSAGE) + b"\r\n")
    [line] = s.lines()
    assert line.startswith("a BAD ") and "NUL" in line
    s.sendRaw(b"b APPEND Drafts CATENATE (TEXT " + literal(b"a\x00b") + b")\r\n")
    [line] = s.lines()
    assert line.startswith("b BAD ")
    # Elsewhere than APPEND a binary literal is no string.
    s.sendRaw(b"c SELECT " + literal(b"INBOX", binary=True) + b"\r\n")
    [line] = s.lines()
    assert line.startswith("c BAD ")
    assert stored(s, "Drafts") == []
    s.sendRaw(b"d APPEND Drafts " + literal(BINARY_MESSAGE, binary=True) + b"\r\n")
    s.expect("d OK [APPENDUID * 1] Append completed.")
    # Kept as base64, so BODY[] holds no NUL; BINARY[1] gives it back.
    [data] = stored(s, "Drafts")
    assert b"\x00" not in data and b"Content-Transfer-Encoding: base64\r\n" in data
    s.send("x SELECT Drafts")
    s.lines()
    s.send("f FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])")
    assert s.raw() == (
        b"* 1 FETCH (BINARY.SIZE[1] 7 BINARY[1] ~{7}\r\n\x00-\xe4\n\r\n\n)\r\nf OK Fetch completed.\r\n"
    )


def test_binary_literal_limits():
    s = loggedIn(maxMessageSize=1000)
    s.send("a APPEND Drafts ~{1001}")
    s.expect("a NO [TOOBIG] Message too large (APPENDLIMIT=1000).")
    s.sendRaw(b"b APPEND Drafts ~{2000+}\r\n" + b"x" * 2000 + b"\r\nc NOOP\r\n")
    s.expect("b NO [TOOBIG] Message too large (APPENDLIMIT=1000).", "c OK NOOP completed.")
    s.send("d APPEND Drafts ~{10}")
    s.expect("+ OK")
    s.sendRaw(b"x\x00\r\n\r\n1234\r\n")
    s.expect("d OK [APPENDUID * 1] Append completed.")
    assert stored(s, "Drafts") == [b"x\x00\r\n\r\n1234"]


def test_large_binary_literal_is_spooled(tmp_path):
    spool = str(tmp_path)
    s = loggedIn(spoolDir=spool, maxMessageSize=2000000)
    message = bigMessage(500000)[:-10] + b"\x00\x01\r\nabcde"
    s.sendRaw(b"a APPEND Drafts ~{%d+}\r\n" % len(message) + message[:1000])
    assert openFilesIn(spool) == 1
    s.sendRaw(message[1000:] + b"\r\n")
    s.expect("a OK [APPENDUID * 1] Append completed.")
    assert stored(s, "Drafts") == [message]
    assert openFilesIn(spool) == 0


# --- FETCH BINARY -------------------------------------------------------------------

ENCODED = (
    b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Transfer-Encoding: base64\r\n\r\naGVs\r\n bG8g d29y\r\nbGQ=\r\n"
    b"--XX\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nsoft=\r\nbreak  \r\n=3D=00end\r\n"
    b"--XX\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
    b"--XX\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
    b"--XX--\r\n"
)


def binarySession():
    s = loggedIn()
    s.store.deliver([(USER, "INBOX", [ENCODED])])
    s.send("x SELECT INBOX")
    s.lines()
    return s


def test_fetch_binary_decodes_each_encoding():
    s = binarySession()
    s.send("a FETCH 4 (BINARY.PEEK[1] BINARY.SIZE[1] BINARY.PEEK[4] BINARY.SIZE[2])")
    assert s.raw() == (
        b"* 4 FETCH (BINARY[1] {11}\r\nhello world BINARY.SIZE[1] 11 BINARY[4] {5}\r\nplain"
        b" BINARY.SIZE[2] 16)\r\na OK Fetch completed.\r\n"
    )
    # NUL after decoding: a binary literal.
    s.send("b FETCH 4 BINARY.PEEK[2]")
    assert s.raw() == b"* 4 FETCH (BINARY[2] ~{16}\r\nsoftbreak\r\n=\x00end)\r\nb OK Fetch completed.\r\n"
    s.send("c FETCH 4 (BINARY.PEEK[1]<6.100> BINARY.PEEK[1]<50.5> BINARY.PEEK[9])")
    assert s.raw() == (
        b'* 4 FETCH (BINARY[1]<6> {5}\r\nworld BINARY[1]<50> "" BINARY[9] "")\r\nc OK Fetch completed.\r\n'
    )
    # BINARY[] is the message as it is.
    s.send("d FETCH 1 BINARY.PEEK[]")
    assert s.raw() == b"* 1 FETCH (BINARY[] {%d}\r\n%s)\r\nd OK Fetch completed.\r\n" % (len(MESSAGES[0]), MESSAGES[0])
    assert all(m.flags == set() for m in s.store.openMailbox(USER).messages())


def test_fetch_binary_sets_seen_and_peek_does_not():
    s = binarySession()
    s.send("a FETCH 4 BINARY[4]")
    # Delivered before the SELECT, which was the first to see it: \Recent.
    s.expect("* 4 FETCH (FLAGS (\\Seen \\Recent) BINARY[4] {5}", "plain)", "a OK Fetch completed.")
    assert s.store.openMailbox(USER).messages()[3].flags == {"\\Seen"}


def test_fetch_binary_of_unknown_encoding_is_unknown_cte():
    s = binarySession()
    s.send("a FETCH 4 BINARY.PEEK[3]")
    s.expect("a NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding.")
    s.send("b FETCH 4 BINARY.SIZE[3]")
    s.expect("b NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding.")


def test_fetch_binary_syntax_errors_are_bad():
    s = binarySession()
    for n, item in enumerate(["BINARY[1.MIME]", "BINARY[HEADER]", "BINARY.SIZE[1]<0.5>", "BINARY[1", "BINARY[0]"]):
        s.send("a%d FETCH 4 %s" % (n, item))
        [line] = s.lines()
        assert line.startswith("a%d BAD " % n)


def test_binary_part_round_trip_through_base64():
    """
    What BINARY gives back of a base64 part is the octets that were
    encoded, whatever they are.
    """
    payload = bytes(range(256)) * 4
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    s = loggedIn()
    s.store.deliver([(USER, "INBOX", [
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded
    ])])
    s.send("x SELECT INBOX")
    s.lines()
    s.send("a FETCH 4 (BINARY.SIZE[1] BINARY.PEEK[1])")
    assert s.raw() == b"* 4 FETCH (BINARY.SIZE[1] 1024 BINARY[1] ~{1024}\r\n%s)\r\na OK Fetch completed.\r\n" % payload
