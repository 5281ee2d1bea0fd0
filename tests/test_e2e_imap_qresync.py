"""
End-to-end test of QRESYNC (RFC 7162 section 3.2) against a real C{twistd
mdpy} on loopback, over IMAPS with a raw socket: a client that left the
INBOX comes back and learns what vanished and changed since, from the
tombstones the Maildir index keeps (also across a restart of the server),
and hears C{* VANISHED} while it idles and another session expunges; and
with Python's imaplib, that ENABLE in the selected state is answered with
the mailbox's C{OK [HIGHESTMODSEQ]}.
"""

import imaplib
import re

import pytest

from tests.server import newAccount, runningServer, waitForBanner
from tests.test_e2e_imap import Raw, imaps, message, ok, storeDeliver, verifyingContext


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(tmp_path_factory.mktemp("mdpy-imap-qresync"))


def session(server, address, password):
    """
    @return: a L{Raw} connection over IMAPS, logged in, QRESYNC enabled.
    """
    raw = Raw(server.imaps, verifyingContext(server))
    assert raw.command(b"l", b"LOGIN %s %s" % (address.encode(), password.encode()))[-1].startswith(b"l OK")
    lines = raw.command(b"e", b"ENABLE QRESYNC")
    assert lines == [b"* ENABLED QRESYNC\r\n", b"e OK Enabled.\r\n"], lines
    return raw


def code(lines, name):
    """
    @return: the number of the C{[NAME n]} response code in C{lines}.
    """
    for line in lines:
        match = re.search(rb"\[%s ([0-9]+)\]" % (name,), line)
        if match:
            return int(match.group(1))
    raise AssertionError("no %s in %r" % (name, lines))


def resynced(vanished, seenModSeq, tagged):
    """
    @return: the lines a resynchronisation ends with in this test: the
        UIDs gone, the one message changed (UID 3, now C{\\Seen}) and the
        tagged reply.
    """
    return [
        b"* VANISHED (EARLIER) %s\r\n" % (vanished,),
        b"* 2 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (%d))\r\n" % (seenModSeq,),
        tagged + b"\r\n",
    ]


def test_resynchronisation(server):
    address, password = newAccount(server, "qresync")
    storeDeliver(server, address, [message("message %d" % (n,)) for n in range(1, 7)])
    first = session(server, address, password)
    try:
        lines = first.command(b"a", b"SELECT INBOX")
        assert lines[-1] == b"a OK [READ-WRITE] Select completed.\r\n"
        validity, modSeq = code(lines, b"UIDVALIDITY"), code(lines, b"HIGHESTMODSEQ")
        first.command(b"b", b"LOGOUT")
    finally:
        first.close()

    other = session(server, address, password)
    try:
        other.command(b"a", b"SELECT INBOX")
        assert other.command(b"b", b"STORE 2,4 +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"b OK")
        assert other.command(b"c", b"EXPUNGE") == [b"* VANISHED 2,4\r\n", b"c OK Expunge completed.\r\n"]
        lines = other.command(b"d", b"STORE 2 +FLAGS (\\Seen)")
        seenModSeq = int(re.search(rb"MODSEQ \(([0-9]+)\)", lines[0]).group(1))
        assert lines == [b"* 2 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (%d))\r\n" % (seenModSeq,),
                         b"d OK Store completed.\r\n"]

        back = session(server, address, password)
        try:
            lines = back.command(b"a", b"SELECT INBOX (QRESYNC (%d %d))" % (validity, modSeq))
            assert lines[-3:] == resynced(b"2,4", seenModSeq, b"a OK [READ-WRITE] Select completed.")
            # Another session expunges while this one idles.
            back.send(b"i IDLE\r\n")
            assert back.line() == b"+ idling\r\n"
            assert other.command(b"e", b"UID STORE 6 +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"e OK")
            assert other.command(b"f", b"UID EXPUNGE 6") == [b"* VANISHED 6\r\n", b"f OK Expunge completed.\r\n"]
            # The flag change may come first, if the idler heard of it alone.
            heard = [back.line()]
            while heard[-1].startswith(b"* 4 FETCH (UID 6 FLAGS (\\Deleted) MODSEQ ("):
                heard.append(back.line())
            assert heard[-1] == b"* VANISHED 6\r\n", heard
            back.send(b"DONE\r\n")
            assert back.until(b"i") == [b"i OK Idle completed.\r\n"]
            lines = back.command(b"b", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % (modSeq,))
            assert lines == resynced(b"2,4,6", seenModSeq, b"b OK Fetch completed.")
            lines = back.command(b"c", b"EXAMINE Drafts")
            assert lines[0] == b"* OK [CLOSED] Previous mailbox closed.\r\n"
        finally:
            back.close()
    finally:
        other.close()

    # The tombstones are kept in the index: a restarted server knows them.
    server.stop()
    server.start()
    waitForBanner(server.imap, process=server.process)
    again = session(server, address, password)
    try:
        lines = again.command(b"a", b"EXAMINE INBOX (QRESYNC (%d %d 1:6))" % (validity, modSeq))
        assert lines[-3:] == resynced(b"2,4,6", seenModSeq, b"a OK [READ-ONLY] Examine completed.")
    finally:
        again.close()


@pytest.mark.parametrize("extension", ["CONDSTORE", "QRESYNC"])
def test_enableInSelectedStateReportsHighestModSeq(server, extension, monkeypatch):
    """
    RFC 7162 section 3.1: ENABLE CONDSTORE or QRESYNC with the INBOX
    selected tells the client the INBOX's HIGHESTMODSEQ.  (imaplib sends
    ENABLE only in the authenticated state, as RFC 5161 section 3.1 asks of
    clients; servers answer it in the selected state too.)
    """
    monkeypatch.setitem(imaplib.Commands, "ENABLE", ("AUTH", "SELECTED"))
    address, password = newAccount(server, "enable" + extension.lower())
    storeDeliver(server, address, [message("message %d" % (n,)) for n in range(1, 3)])
    client = imaps(server, address, password)
    try:
        ok(client.select("INBOX"))
        [selected] = client.response("HIGHESTMODSEQ")[1]
        ok(client.enable(extension))
        assert client.response("ENABLED") == ("ENABLED", [extension.encode()])
        assert client.response("HIGHESTMODSEQ") == ("HIGHESTMODSEQ", [selected])
    finally:
        client.logout()
