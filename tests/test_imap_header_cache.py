"""
Transcript tests of FETCH answered from the header blocks held in memory
(L{mdpy.imap.fetch.HeaderCache}): the same octets as read from the message
file, without reading it, within a byte bound.
"""

import os

import pytest

from mdpy.backends.files.maildir import MaildirMessage, MaildirStore
from mdpy.imap.fetch import HeaderCache, StructureCache, parseFetchItems
from mdpy.imap.parser import tokenize
from mdpy.testing import synchronousRunner
from tests.test_imap_server import MESSAGES, USER, Session

# A header far longer than any read buffer (the Maildir store reads 64 kB
# at a time), with folded fields.
LONG = (
    b"".join(b"Received: from relay%d.example.net\r\n\tby mx.example.test; Mon, 7 Feb 1994 21:52:25 -0800\r\n" % i
             for i in range(2000))
    + b"From: long@example.test\r\nSubject: long\r\n\r\nbody\r\n"
)
# As another program wrote it: bare LF line endings, a NUL in a field.
FOREIGN = b"From: old@example.test\nSubject: migrated\x00 here\nX-Folded: a\n\tb\n\nbody\nmore\n"
ITEMS = [
    "BODY.PEEK[HEADER.FIELDS (From Subject X-Folded)]",
    "BODY.PEEK[HEADER]",
    "RFC822.HEADER",
    "BODY.PEEK[HEADER.FIELDS.NOT (Received)]",
    "BODY.PEEK[HEADER]<10.30>",
]
FETCH_ALL = "FETCH 1:* (%s)" % (" ".join(ITEMS),)


def maildirStore(path, messages=MESSAGES + [LONG]):
    """
    @return: a Maildir store whose INBOX holds C{messages}, then
        L{FOREIGN}, put there by another program.
    """
    store = MaildirStore(str(path), runInThread=synchronousRunner)
    store.createAccount(USER)
    store.deliver([(USER, "INBOX", [data]) for data in messages])
    with open(os.path.join(store.accountPath(USER), "new", "1600000000.1.oldserver"), "wb") as f:
        f.write(FOREIGN)
    return store


def countReads(monkeypatch):
    """
    Count every way a Maildir message's file is read (the real methods
    still run).

    @return: a L{list} the key of each message read is added to.
    """
    reads = []
    for name in ("read", "open", "openFile"):
        original = getattr(MaildirMessage, name)

        def counting(message, original=original):
            reads.append(message.key)
            return original(message)

        monkeypatch.setattr(MaildirMessage, name, counting)
    return reads


def selected(store, **options):
    s = Session(store=store, **options)
    s.select()
    s.raw()
    return s


def fetchRaw(s, tag, command):
    s.send("%s %s" % (tag, command))
    raw = s.raw()
    assert raw.endswith(b"%s OK Fetch completed.\r\n" % (tag.encode(),)), raw[-200:]
    return raw


def expectedHeader(message):
    """
    @return: the header block of C{message} as served: CR LF line endings,
        NUL as 0x80.
    """
    normalised = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return normalised[: normalised.index(b"\r\n\r\n") + 4].replace(b"\x00", b"\x80")


def test_header_items_from_memory_are_the_octets_read_from_the_file(tmp_path, monkeypatch):
    """
    A second FETCH of header items reads no message file, and answers the
    same octets as the first, which read every one; so does a session whose
    header cache holds nothing.  The header blocks are those of the message
    with CR LF line endings (a file with bare LF too), NUL served as 0x80.
    """
    store = maildirStore(tmp_path)
    reads = countReads(monkeypatch)
    s = selected(store)
    fromFiles = fetchRaw(s, "a", FETCH_ALL)
    assert len(set(reads)) == 5
    del reads[:]
    fromMemory = fetchRaw(s, "b", FETCH_ALL)
    assert reads == []
    assert fromMemory.replace(b"b OK", b"a OK") == fromFiles
    uncached = selected(store, structures=StructureCache(headerOctets=0))
    assert fetchRaw(uncached, "a", FETCH_ALL) == fromFiles
    assert fetchRaw(uncached, "b", FETCH_ALL) == fromMemory
    assert len(uncached.factory.structures.headers) == 0
    for number, message in enumerate(MESSAGES + [LONG, FOREIGN], 1):
        header = expectedHeader(message)
        assert b"* %d FETCH (RFC822.HEADER {%d}\r\n%s " % (number, len(header), header) in fromMemory
        assert b" BODY[HEADER] {%d}\r\n%s " % (len(header), header) in fromMemory
        assert b" BODY[HEADER]<10> {%d}\r\n%s)\r\n" % (len(header[10:40]), header[10:40]) in fromMemory
    assert (b"BODY[HEADER.FIELDS (From Subject X-Folded)] {68}\r\nFrom: old@example.test\r\n"
            b"Subject: migrated\x80 here\r\nX-Folded: a\r\n\tb\r\n\r\n") in fromMemory
    assert b"BODY[HEADER.FIELDS.NOT (Received)] {42}\r\nFrom: long@example.test\r\nSubject: long\r\n\r\n" \
        in fromMemory


def test_header_fields_after_envelope_read_no_file(tmp_path, monkeypatch):
    """
    The header block is kept when the structure is parsed, so the FETCH of
    header fields a client lists a folder with, after ENVELOPE, reads no
    file, and non-PEEK still sets C{\\Seen}.
    """
    store = maildirStore(tmp_path)
    s = selected(store)
    fetchRaw(s, "a", "FETCH 1:* (ENVELOPE BODYSTRUCTURE)")
    reads = countReads(monkeypatch)
    s.send("b FETCH 2 (UID BODY[HEADER.FIELDS (Subject)])")
    s.expect("* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) BODY[HEADER.FIELDS (Subject)] {16}", "Subject: two", "", ")",
             "b OK Fetch completed.")
    assert reads == []
    assert "\\Seen" in store.openMailbox(USER).messages()[1].flags


def test_other_octets_are_still_read_from_the_file(tmp_path, monkeypatch):
    """
    Only a FETCH of the message's own header block is answered from
    memory: the header of a part, the body, the whole message and BINARY
    are read from the file.
    """
    store = maildirStore(tmp_path)
    s = selected(store)
    fetchRaw(s, "a", "FETCH 1:* (BODY.PEEK[HEADER])")
    reads = countReads(monkeypatch)
    for number, items in enumerate(["BODY.PEEK[1.HEADER]", "BODY.PEEK[TEXT]", "BODY.PEEK[]", "BINARY.PEEK[1]",
                                    "BODY.PEEK[1.MIME]", "RFC822.TEXT", "BODY.PEEK[HEADER] BODY.PEEK[TEXT]"], 1):
        del reads[:]
        fetchRaw(s, "b%d" % (number,), "FETCH 3 (%s)" % (items,))
        assert reads, items


@pytest.mark.parametrize(
    "items, headerOnly",
    [
        ("(BODY.PEEK[HEADER.FIELDS (From)] ENVELOPE FLAGS UID)", True),
        ("(RFC822.HEADER BODY[HEADER]<0.5> BODY.PEEK[HEADER.FIELDS.NOT (To)] BODYSTRUCTURE)", True),
        ("RFC822.HEADER", True),
        ("(ENVELOPE FLAGS)", False),
        ("(BODY.PEEK[HEADER] BODY.PEEK[1.HEADER])", False),
        ("(BODY.PEEK[HEADER] RFC822.TEXT)", False),
        ("(BODY.PEEK[HEADER] BINARY.PEEK[1])", False),
        ("BODY.PEEK[]", False),
    ],
)
def test_which_requests_need_only_the_header_block(items, headerOnly):
    [token] = tokenize([items.encode("ascii")])
    assert parseFetchItems(token).headerOnly is headerOnly


def test_an_expunged_message_is_not_answered_from_memory(tmp_path):
    """
    A message another session expunged, once this session knows it, is
    answered as before (NIL) though its header block is still in memory.
    """
    store = maildirStore(tmp_path)
    one, two = selected(store), selected(store)
    fetchRaw(one, "a", "FETCH 1:2 (BODY.PEEK[HEADER.FIELDS (Subject)])")
    two.send("x1 STORE 1 +FLAGS.SILENT (\\Deleted)", "x2 EXPUNGE")
    assert two.lines()[-2:] == ["* 1 EXPUNGE", "x2 OK Expunge completed."]
    one.send("b FETCH 1 UID")
    one.lines()
    one.send("c FETCH 1:2 (BODY.PEEK[HEADER.FIELDS (Subject)])")
    one.expect("* 1 FETCH (BODY[HEADER.FIELDS (Subject)] NIL)",
               "* 2 FETCH (BODY[HEADER.FIELDS (Subject)] {16}", "Subject: two", "", ")",
               "c OK [EXPUNGEISSUED] Some messages were already expunged.")


def test_header_cache_holds_at_most_its_limit(tmp_path, monkeypatch):
    """
    The header blocks held, with what each entry costs besides, never
    exceed the limit: the least recently used go first, and a block larger
    than the limit is never held; a message whose block was dropped is
    read from its file again, and answered the same.
    """
    cache = HeaderCache(limit=1000)
    for i in range(50):
        cache.keep("k%d" % (i,), b"x" * (i * 7) + b"\r\n\r\nbody", i * 7 + 4)
        held = [cache.get(k) for k in list(cache._blocks)]
        assert cache.size == sum(len(b) + cache.ENTRY_OVERHEAD for b in held) <= 1000
    assert cache.get("k49") == b"x" * 343 + b"\r\n\r\n"
    assert cache.get("k0") is None
    cache.keep("huge", b"y" * 2000, 2000)
    assert cache.get("huge") is None and cache.size <= 1000
    # Using a block keeps it over older ones.
    cache.keep("a", b"a" * 100, 100)
    cache.keep("b", b"b" * 100, 100)
    cache.get("a")
    cache.keep("c", b"c" * 300, 300)
    cache.keep("d", b"d" * 50, 50)
    assert cache.get("a") is not None and cache.get("b") is None

    store = maildirStore(tmp_path)
    limit = len(expectedHeader(LONG)) + HeaderCache.ENTRY_OVERHEAD
    s = selected(store, structures=StructureCache(headerOctets=limit))
    headers = s.factory.structures.headers
    sizes = []
    keep = HeaderCache.keep

    def noting(cache, key, data, end):
        keep(cache, key, data, end)
        sizes.append(cache.size)

    monkeypatch.setattr(HeaderCache, "keep", noting)
    first = fetchRaw(s, "a", FETCH_ALL)
    # The long header pushed out the three before it, the last one it.
    assert len(headers) == 1 and headers.get(store.openMailbox(USER).messages()[4].key) is not None
    reads = countReads(monkeypatch)
    assert fetchRaw(s, "a", FETCH_ALL) == first
    # Each block was pushed out again before its message came: each is read.
    assert len(set(reads)) == 5
    assert len(sizes) == 10 and max(sizes) == limit and all(size <= limit for size in sizes)
