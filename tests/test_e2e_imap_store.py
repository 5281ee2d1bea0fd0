"""
End-to-end tests of what IMAP clients change in the store, against a real
C{twistd mdpy} on loopback with Python's imaplib over IMAPS: concurrent flag
changes of several sessions on one message (each must hold, on disk and as
another session sees it), and mailbox names longer than the store can hold.
"""

import os
import re
import threading

import pytest

from tests.server import newAccount, runningServer
from tests.test_e2e_imap import flagsIn, imaps, message, ok, storeDeliver, uidIn

# The Maildir info letters of the flags these tests use.
LETTERS = {b"\\Answered": "R", b"\\Deleted": "T", b"\\Draft": "D", b"\\Flagged": "F", b"\\Seen": "S",
           b"$Forwarded": "P"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(tmp_path_factory.mktemp("mdpy-imap-store"))


def diskFlags(server, address):
    """
    @return: the flags in the file name of the INBOX's only message, as
        Maildir info letters.
    """
    [name] = os.listdir(server.maildir(address, "cur"))
    return name.partition(":2,")[2]


def reported(data, number=1):
    """
    @return: the flags of message C{number} in the last untagged FETCH of an
        imaplib reply (a STORE's own response, or a later update).
    """
    lines = [line for line in data if line and re.match(rb"%d \(" % (number,), line)]
    assert lines, data
    return flagsIn(lines[-1]) - {b"\\Recent"}


def test_interleavedStoresOfTwoSessionsAllHold(server):
    """
    Two sessions with INBOX selected change the flags of one message in
    turn, each from a view that has not seen the other's change: every
    change holds in the Maildir file name and as a third session sees it.
    """
    address, password = newAccount(server, "flags")
    storeDeliver(server, address, [message("one message")])
    one, two, third = (imaps(server, address, password) for _ in range(3))
    for client in (one, two):
        ok(client.select("INBOX"))
    steps = [
        (one, "+FLAGS", r"(\Seen)", {b"\\Seen"}),
        (one, "+FLAGS", r"(\Answered)", {b"\\Seen", b"\\Answered"}),
        (two, "-FLAGS", r"(\Seen)", {b"\\Answered"}),
        (two, "+FLAGS", r"(\Flagged)", {b"\\Answered", b"\\Flagged"}),
        (one, "-FLAGS", r"(\Answered)", {b"\\Flagged"}),
        (one, "+FLAGS.SILENT", r"($Forwarded \Seen)", {b"\\Flagged", b"$Forwarded", b"\\Seen"}),
        (two, "-FLAGS", r"(\Flagged)", {b"$Forwarded", b"\\Seen"}),
        (one, "FLAGS", r"(\Draft)", {b"\\Draft"}),
        (two, "+FLAGS", r"(\Deleted)", {b"\\Draft", b"\\Deleted"}),
        (one, "-FLAGS", r"(\Draft)", {b"\\Deleted"}),
    ]
    try:
        for number, (client, item, flags, expected) in enumerate(steps):
            data = ok(client.store("1", item, flags))
            if not item.endswith(".SILENT"):
                assert reported(data) == expected, (number, data)
            assert diskFlags(server, address) == "".join(sorted(LETTERS[f] for f in expected)), number
            ok(third.select("INBOX", readonly=True))
            assert reported(ok(third.fetch("1", "(FLAGS)"))) == expected, number
        # Each session is told the flags as they are now.
        for client in (one, two):
            assert reported(ok(client.fetch("1", "(FLAGS)"))) == {b"\\Deleted"}
    finally:
        for client in (one, two, third):
            client.logout()


def test_parallelTogglesOfTwoSessions(server):
    """
    Two sessions at the same time each turn their own flag on and off
    twenty times on one message: every STORE response shows the session's
    own flag as it just set it, and in the end both flags are on.
    """
    address, password = newAccount(server, "toggles")
    storeDeliver(server, address, [message("toggled")])
    clients = [imaps(server, address, password) for _ in range(2)]
    errors = []

    def toggle(client, flag):
        try:
            ok(client.select("INBOX"))
            for _ in range(20):
                for item, present in (("-FLAGS", False), ("+FLAGS", True)):
                    flags = reported(ok(client.store("1", item, "(%s)" % (flag.decode(),))))
                    assert (flag in flags) == present, (item, flag, flags)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=toggle, args=pair)
               for pair in zip(clients, [b"\\Answered", b"\\Flagged"])]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        assert diskFlags(server, address) == "FR"
    finally:
        for client in clients:
            client.logout()

def test_messageExpungedByAnotherSession(server):
    """
    While one session expunges, the other's STORE and FETCH on the message
    succeed without an EXPUNGE among their responses (RFC 3501 section
    7.4.1; the Maildir file is gone, its INTERNALDATE never read); NOOP
    reports it, and a MOVE into the selected mailbox reports its own.
    """
    address, password = newAccount(server, "expunged")
    storeDeliver(server, address, [message("first"), message("second"), message("third")])
    one, two = imaps(server, address, password), imaps(server, address, password)
    try:
        ok(one.select("INBOX"))
        ok(two.select("INBOX"))
        ok(two.store("1", "+FLAGS.SILENT", r"(\Deleted)"))
        ok(two.expunge())
        stored = ok(one.store("1:3", "+FLAGS", r"(\Seen)"))
        assert [re.match(rb"\d+", line).group() for line in stored] == [b"2", b"3"], stored
        fetched = ok(one.fetch("1", "(UID INTERNALDATE RFC822.SIZE BODY.PEEK[])"))
        assert b"UID 1 " in fetched[0] and fetched[0].endswith(b"BODY[] NIL)"), fetched
        assert one.response("EXPUNGE") == ("EXPUNGE", [None])
        ok(one.noop())
        assert one.response("EXPUNGE") == ("EXPUNGE", [b"1"])
        ok(one.uid("MOVE", "2", "INBOX"))
        assert one.response("EXPUNGE") == ("EXPUNGE", [b"1"])
        assert one.response("EXISTS")[1][-1] == b"2"
        assert [uidIn(line) for line in ok(one.fetch("1:*", "(UID)"))] == [3, 4]
    finally:
        for client in (one, two):
            client.logout()


def test_overlongMailboxNamesAreRefusedWithLimit(server):
    """
    CREATE, RENAME and DELETE of a 300-character name get NO [LIMIT]
    before anything touches the disk, and the server logs no traceback.
    """
    address, password = newAccount(server, "names")
    client = imaps(server, address, password)
    account = server.maildir(address)

    def folders():
        return sorted(entry for entry in os.listdir(account) if entry.startswith("."))

    before = folders()
    name = '"%s"' % ("x" * 300,)
    try:
        for typ, data in [client.create(name), client.create('"Lists/%s"' % ("y" * 300,)),
                          client.rename("Sent", name), client.delete(name)]:
            assert typ == "NO" and data[0].startswith(b"[LIMIT] "), (typ, data)
        assert ok(client.create('"Lists/Work"'))
        ok(client.select('"Lists/Work"'))
    finally:
        client.logout()
    assert folders() == sorted(before + [".Lists", ".Lists.Work"])
    log = server.logText()
    assert "Traceback" not in log and "File name too long" not in log, log[-5000:]
