"""
End-to-end test of MULTIAPPEND (RFC 3502), CATENATE (RFC 4469) and BINARY
(RFC 3516) against a real C{twistd mdpy} over loopback: a raw socket sends
what imaplib cannot (several literals, binary literals), imaplib reads
back what was stored.
"""

import imaplib
import os

import pytest

from tests.server import HOST, newAccount, runningServer
from tests.test_e2e_imap_append import Client
from tests.test_imap_append import literal

CRLF = b"\r\n"
LIMIT = 100000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(
        tmp_path_factory.mktemp("mdpy-imap-multiappend"),
        imapExtra="allow_plaintext_auth = yes\nmax_message_size = %d\n" % (LIMIT,),
    )


class RawClient(Client):
    """
    An IMAP connection over a bare socket, logged in, that sends whole
    commands.
    """

    def command(self, data):
        """
        Send a command (its literals non-synchronising) and read up to its
        tagged reply.

        @return: the untagged lines and the tagged one.
        """
        tag = data.split(b" ", 1)[0]
        self.sock.sendall(data + CRLF)
        lines = []
        while True:
            line = self.line()
            if not line:
                raise EOFError("connection closed")
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines


def storedFiles(server, address):
    return sorted(os.listdir(server.maildir(address, "cur")))


def test_multiappend_catenate_and_binary_over_the_wire(server):
    address, password = newAccount(server, "multi")
    other, otherPassword = newAccount(server, "victim")
    victim = RawClient(server, other, otherPassword)
    assert victim.command(b"v APPEND INBOX " + literal(b"Subject: private\r\n\r\nsecret\r\n"))[-1].startswith(b"v OK")
    victim.close()
    client = RawClient(server, address, password)
    first = b"Subject: one\r\n\r\nfirst\r\n"
    second = b"Subject: two\r\n\r\nsecond\r\n"

    # The second message names another user's mailbox: nothing is stored.
    url = b"imap://%s@127.0.0.1/INBOX/;UID=1" % other.replace("@", "%40").encode()
    reply = client.command(b"a APPEND INBOX " + literal(first) + b' CATENATE (URL "' + url + b'")')
    assert reply == [b"a NO [BADURL " + url + b"] Bad URL."]
    # NUL in a literal that is not binary, and a binary literal past APPENDLIMIT.
    assert client.command(b"b APPEND INBOX " + literal(first) + b" " + literal(b"a\x00b"))[-1].startswith(b"b BAD ")
    reply = client.command(b"c APPEND INBOX " + literal(first) + b" " + literal(b"x" * (LIMIT + 1), binary=True))
    assert reply == [b"c NO [TOOBIG] Message too large (APPENDLIMIT=%d)." % (LIMIT,)]
    assert storedFiles(server, address) == []

    # Both stored, both on disk when OK comes.
    reply = client.command(b"d APPEND INBOX (\\Seen) " + literal(first) + b" " + literal(second))
    assert reply[-1].startswith(b"d OK [APPENDUID ") and reply[-1].endswith(b" 1:2] Append completed.")
    assert len(storedFiles(server, address)) == 2
    # A message put together from a header of one, text, and a range of another.
    reply = client.command(
        b'e APPEND Drafts CATENATE (URL "/INBOX/;UID=2/;SECTION=HEADER" TEXT '
        + literal(b"new ") + b' URL "/INBOX/;UID=1/;SECTION=TEXT/;PARTIAL=0.5")'
    )
    assert reply[-1].startswith(b"e OK [APPENDUID ")
    binary = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\xff\x01"
    assert client.command(b"f APPEND INBOX " + literal(binary, binary=True))[-1].startswith(b"f OK [APPENDUID ")
    client.command(b"g SELECT INBOX")
    assert client.command(b"h FETCH 3 (BINARY.SIZE[1] BINARY.PEEK[1])")[0] == (
        b"* 3 FETCH (BINARY.SIZE[1] 3 BINARY[1] ~{3}"
    )
    assert client.buffer == b""
    client.close()

    imap = imaplib.IMAP4(HOST, server.imap)
    imap.login(address, password)
    imap.select("Drafts")
    typ, data = imap.fetch("1", "(BODY.PEEK[])")
    assert data[0][1] == b"Subject: two\r\n\r\nnew first"
    imap.select("INBOX")
    typ, data = imap.fetch("1:2", "(FLAGS BODY.PEEK[])")
    assert [d[1] for d in data if isinstance(d, tuple)] == [first, second]
    # Each message has its own flags (RFC 3502 section 6).
    assert [b"\\Seen" in d[0] for d in data if isinstance(d, tuple)] == [True, False]
    typ, data = imap.fetch("3", "(BODY.PEEK[1])")
    assert data[0][1] == b"AP8B\r\n"
    imap.logout()
