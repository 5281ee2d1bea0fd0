"""
End-to-end tests of IMAP COMPRESS=DEFLATE (RFC 4978) against a real
C{twistd mdpy} on loopback, with a raw socket and zlib as the client: over
IMAPS (compression inside TLS), after STARTTLS, and in the clear; and a
decompression bomb that must leave the server's memory bounded and the
session answering.
"""

import zlib

import pytest

from tests.server import newAccount, runningServer
from tests.test_e2e_imap import CRLF, Raw, message, smtpDeliver, verifyingContext


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(
        tmp_path_factory.mktemp("mdpy-imap-compress"), imapExtra="allow_plaintext_auth = yes\n"
    )


class Deflated(Raw):
    """
    A L{Raw} connection that deflates both directions after L{compress}.
    """

    deflater = inflater = None

    def compress(self):
        reply = self.command(b"z", b"COMPRESS DEFLATE")
        assert reply == [b"z OK DEFLATE active.\r\n"], reply
        assert not self.buffer, self.buffer
        self.deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self.inflater = zlib.decompressobj(-15)

    def send(self, data):
        if self.deflater is not None:
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        Raw.send(self, data)

    def line(self):
        if self.inflater is None:
            return Raw.line(self)
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += self.inflater.decompress(data)
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line + b"\r\n"


def login(client, address, password):
    reply = client.command(b"l", b"LOGIN " + address.encode() + b" " + password.encode())
    assert reply[-1].startswith(b"l OK [CAPABILITY ") and b" COMPRESS=DEFLATE" in reply[-1], reply


def compressedSession(server, client, address, password):
    """
    Log in, compress, and check a SELECT, FETCH, IDLE and LOGOUT through
    the compressed stream.
    """
    try:
        login(client, address, password)
        client.compress()
        reply = client.command(b"a", b"SELECT INBOX")
        assert b"* 1 EXISTS\r\n" in reply and reply[-1].startswith(b"a OK [READ-WRITE]"), reply
        reply = client.command(b"b", b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert reply[1] == b"Subject: first\r\n" and reply[-1] == b"b OK Fetch completed.\r\n", reply
        reply = client.command(b"c", b"COMPRESS DEFLATE")
        assert reply == [b"c NO [COMPRESSIONACTIVE] DEFLATE active via COMPRESS.\r\n"], reply
        client.send(b"d IDLE\r\n")
        assert client.line() == b"+ idling\r\n"
        smtpDeliver(server, address, [message("second")])
        assert client.line() == b"* 2 EXISTS\r\n"
        client.send(b"DONE\r\n")
        reply = client.until(b"d")
        assert reply[-1] == b"d OK Idle completed.\r\n", reply
        # A literal, synchronising, through the compressed stream.
        client.send(b"e SEARCH SUBJECT {6}\r\n")
        assert client.line() == b"+ OK\r\n"
        client.send(b"second" + CRLF)
        assert client.until(b"e") == [b"* SEARCH 2\r\n", b"e OK Search completed.\r\n"]
        reply = client.command(b"f", b"LOGOUT")
        assert reply == [b"* BYE Logging out.\r\n", b"f OK Logout completed.\r\n"], reply
    finally:
        client.close()


def test_compressedOverIMAPS(server):
    address, password = newAccount(server, "squeezed")
    smtpDeliver(server, address, [message("first")])
    compressedSession(server, Deflated(server.imaps, verifyingContext(server)), address, password)


def test_largeMessageBothWaysCompressed(server):
    """
    A message past the spool threshold APPENDed through the compressed
    stream and FETCHed back whole (the flow control of a long response
    under compression).
    """
    address, password = newAccount(server, "large")
    body = b"".join(b"line %06d of a large message, compressible enough\r\n" % (i,) for i in range(20000))
    data = b"Subject: large\r\n\r\n" + body
    client = Deflated(server.imaps, verifyingContext(server))
    try:
        login(client, address, password)
        client.compress()
        client.send(b"a APPEND INBOX {%d}\r\n" % (len(data),))
        assert client.line() == b"+ OK\r\n"
        client.send(data + CRLF)
        reply = client.until(b"a")
        assert reply[-1].startswith(b"a OK [APPENDUID "), reply
        client.command(b"b", b"SELECT INBOX")
        client.send(b"c FETCH 1 BODY.PEEK[]\r\n")
        assert client.line() == b"* 1 FETCH (BODY[] {%d}\r\n" % (len(data),)
        while len(client.buffer) < len(data):
            client.buffer += client.inflater.decompress(client.sock.recv(65536))
        fetched, client.buffer = client.buffer[:len(data)], client.buffer[len(data):]
        assert fetched == data
        assert client.until(b"c") == [b")\r\n", b"c OK Fetch completed.\r\n"]
    finally:
        client.close()


def test_compressedAfterSTARTTLS(server):
    address, password = newAccount(server, "starttls")
    smtpDeliver(server, address, [message("first")])
    client = Deflated(server.imap)
    assert client.command(b"s", b"STARTTLS") == [b"s OK Begin TLS negotiation now.\r\n"]
    client.starttls(verifyingContext(server))
    compressedSession(server, client, address, password)


def test_compressedInTheClear(server):
    address, password = newAccount(server, "plain")
    smtpDeliver(server, address, [message("first")])
    compressedSession(server, Deflated(server.imap), address, password)


def peakMemory(pid):
    """
    @return: the largest resident set of process C{pid} so far, in kB.
    """
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM for %d" % (pid,))


def test_decompressionBombLeavesMemoryBounded(server):
    """
    128 MiB without a line end, sent as an eighth of a megabyte of deflate
    in the clear (where one read takes up to 64 KiB of it, 64 MiB
    inflated): the server answers that the line is too long, its peak
    memory grows by far less than a read inflates to, and the session
    goes on.
    """
    address, password = newAccount(server, "bomb")
    client = Deflated(server.imap)
    try:
        login(client, address, password)
        client.compress()
        before = peakMemory(server.process.pid)
        megabyte = b"x" * (1024 * 1024)
        bomb = client.deflater.compress(b"a NOOP ")
        for _ in range(128):
            bomb += client.deflater.compress(megabyte)
        bomb += client.deflater.flush(zlib.Z_SYNC_FLUSH)
        assert len(bomb) < 256 * 1024
        client.sock.sendall(bomb)
        assert client.line() == b"* BAD [TOOBIG] Command line too long.\r\n"
        client.send(b"\r\n")
        assert client.command(b"b", b"NOOP") == [b"b OK NOOP completed.\r\n"]
        grown = peakMemory(server.process.pid) - before
        assert grown < 16 * 1024, "peak memory grew by %d kB" % (grown,)
    finally:
        client.close()
