"""
Transcript tests of IMAP COMPRESS=DEFLATE (RFC 4978, L{mdpy.imap.compress})
over an in-memory transport: both directions deflated through the protocol,
one flush per burst, refusals, and bounded memory against a decompression
bomb.
"""

import zlib

from twisted.internet import defer

from mdpy.imap import compress
from mdpy.session import CommandSession
from mdpy.testing import Transcript
from tests.test_imap_server import USER, Session


class CompressedClient(Transcript):
    """
    The client side of a compressed session: deflates what it sends,
    inflates what the server wrote.
    """

    def __init__(self, session):
        # The session's transcript is connected already: nothing of
        # Transcript.__init__ applies.
        self.session = session
        self.deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self.inflater = zlib.decompressobj(-15)
        self._pending = b""

    def deflate(self, data):
        return self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)

    def sendRaw(self, data):
        self.session.sendRaw(self.deflate(data))

    def send(self, *lines):
        self.sendRaw(b"".join(line.encode("utf-8") + b"\r\n" for line in lines))

    def received(self):
        """
        @return: the octets the server wrote since the last call, inflated,
            once the reactor has turned (the flush of the burst).
        """
        self.session.clock.advance(0)
        compressed = self.session.raw()
        if compressed:
            # Each burst ends on the empty stored block of a sync flush.
            assert compressed.endswith(b"\x00\x00\xff\xff"), compressed[-8:]
        return self.inflater.decompress(compressed)

    def lines(self):
        self._pending += self.received()
        *complete, self._pending = self._pending.split(b"\r\n")
        return [line.decode("utf-8") for line in complete]


def compressedSession():
    """
    @return: a logged-in L{Session} and its L{CompressedClient}, COMPRESS
        DEFLATE accepted.
    """
    s = Session()
    s.login()
    s.send("z COMPRESS DEFLATE")
    assert s.raw() == b"z OK DEFLATE active.\r\n"
    return s, CompressedClient(s)


def test_compress_is_advertised_after_login_only():
    s = Session()
    assert "COMPRESS=DEFLATE" not in s.greeting[0]
    s.send("s STARTTLS")
    s.expect("s OK Begin TLS negotiation now.")
    s.send("c CAPABILITY")
    assert "COMPRESS=DEFLATE" not in s.lines()[0]
    s.send("l LOGIN %s secret" % (USER,))
    [line] = s.lines()
    assert " COMPRESS=DEFLATE" in line


def test_compress_before_login_is_not_valid():
    s = Session()
    s.send("s STARTTLS")
    s.expect("s OK Begin TLS negotiation now.")
    s.send("z COMPRESS DEFLATE")
    s.expect("z BAD Command not valid in this state.")
    s.send("n NOOP")
    s.expect("n OK NOOP completed.")


def test_both_directions_are_deflated():
    s, client = compressedSession()
    client.send("a SELECT INBOX")
    client.expect("* FLAGS *", "* OK [PERMANENTFLAGS *", "* 3 EXISTS", "* 0 RECENT", "* OK [UNSEEN 1]*",
                  "* OK [UIDVALIDITY *", "* OK [UIDNEXT 4]*", "* OK [HIGHESTMODSEQ *", "a OK [READ-WRITE]*")
    client.send("b FETCH 2 (BODY.PEEK[TEXT])")
    client.expect("* 2 FETCH (BODY[TEXT] {13}", "second body", ")", "b OK Fetch completed.")
    # Nothing in the clear on the wire.
    client.send("c NOOP")
    s.clock.advance(0)
    wire = s.raw()
    assert b"NOOP" not in wire
    assert client.inflater.decompress(wire) == b"c OK NOOP completed.\r\n"


def test_one_flush_per_burst():
    s, client = compressedSession()
    client.send("a NOOP", "b NOOP", "c NOOP")
    s.clock.advance(0)
    wire = s.raw()
    # One sync flush for the three replies.
    assert wire.count(b"\x00\x00\xff\xff") == 1 and wire.endswith(b"\x00\x00\xff\xff")
    assert client.inflater.decompress(wire) == (
        b"a OK NOOP completed.\r\nb OK NOOP completed.\r\nc OK NOOP completed.\r\n"
    )


def test_literals_and_append_through_compression():
    s, client = compressedSession()
    message = b"Subject: squeezed\r\n\r\n" + b"compressible " * 2000 + b"\r\n"
    client.sendRaw(b"a APPEND INBOX {%d}\r\n" % (len(message),))
    client.expect("+ OK")
    client.sendRaw(message + b"\r\n")
    client.expect("a OK [APPENDUID * 4] Append completed.")
    client.send("b SELECT INBOX")
    client.lines()
    client.sendRaw(b"c UID SEARCH SUBJECT {8}\r\n")
    client.expect("+ OK")
    client.sendRaw(b"squeezed\r\n")
    client.expect("* SEARCH 4", "c OK Search completed.")
    client.send("d FETCH 4 (RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    client.expect("* 4 FETCH (RFC822.SIZE %d BODY[HEADER.FIELDS (SUBJECT)] {21}" % (len(message),),
                  "Subject: squeezed", "", ")", "d OK Fetch completed.")


def test_idle_pushes_compressed_updates():
    s, client = compressedSession()
    client.send("a SELECT INBOX")
    client.lines()
    client.send("b IDLE")
    client.expect("+ idling")
    s.store.deliver([(USER, "INBOX", [b"Subject: new\r\n\r\nnew\r\n"])])
    client.expect("* 4 EXISTS", "* 1 RECENT")
    client.send("DONE")
    client.expect("b OK Idle completed.")


def test_compress_twice_is_refused():
    s, client = compressedSession()
    client.send("a COMPRESS DEFLATE")
    client.expect("a NO [COMPRESSIONACTIVE] DEFLATE active via COMPRESS.")
    client.send("b NOOP")
    client.expect("b OK NOOP completed.")


def test_unknown_mechanism_and_bad_arguments():
    s = Session()
    s.login()
    s.send("a COMPRESS LZMA")
    s.expect("a NO Unknown compression mechanism.")
    s.send("b COMPRESS")
    s.expect("b BAD Error in IMAP command COMPRESS: Expected a compression mechanism.")
    s.send("c NOOP")
    s.expect("c OK NOOP completed.")


def test_compressed_commands_pipelined_after_compress():
    s = Session()
    s.login()
    client = CompressedClient(s)
    s.sendRaw(b"z COMPRESS DEFLATE\r\n" + client.deflate(b"a NOOP\r\n"))
    assert s.raw() == b"z OK DEFLATE active.\r\n"
    client.expect("a OK NOOP completed.")


def test_logout_flushes_before_closing():
    s, client = compressedSession()
    client.send("a LOGOUT")
    # Closed in the same turn: the BYE and OK were flushed first.
    assert s.closed
    assert client.inflater.decompress(s.raw()) == b"* BYE Logging out.\r\na OK Logout completed.\r\n"


def test_corrupt_input_ends_the_session():
    s, client = compressedSession()
    s.sendRaw(b"\xff\xff\xff\xff garbage")
    client.expect("* BYE Invalid compressed data.")
    assert s.closed


def test_decompression_bomb_is_bounded(monkeypatch):
    """
    Compressed input of under 200 KiB inflating to 64 MiB without a line
    end: the command line is refused as too long, and the session never
    holds more than a line and a chunk of it.
    """
    s, client = compressedSession()
    protocol = s.t.protocol
    largest = []
    dataReceived = CommandSession.dataReceived

    def recording(self, data):
        dataReceived(self, data)
        largest.append(len(self._buffer))

    monkeypatch.setattr(CommandSession, "dataReceived", recording)
    bomb = client.deflater.compress(b"a NOOP ")
    for _ in range(64):
        bomb += client.deflater.compress(b"x" * (1024 * 1024))
    bomb += client.deflater.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 200 * 1024
    s.sendRaw(bomb)
    client.sendRaw(b"\r\nb NOOP\r\n")
    client.expect("* BAD [TOOBIG] Command line too long.", "b OK NOOP completed.")
    assert len(largest) > 1000
    assert max(largest) <= protocol.maxLineLength + compress.INFLATE_CHUNK


def test_input_while_a_command_waits_is_inflated_up_to_the_pause():
    """
    Input that comes while a command waits is inflated only up to the
    session's pause threshold; the rest stays compressed until the command
    is done, then runs in order.
    """
    s, client = compressedSession()
    protocol = s.t.protocol
    held = defer.Deferred()
    protocol.do_XWAIT = lambda tag, args: held.addCallback(lambda _: protocol.complete(tag, b"OK", b"Waited."))
    protocol.commands = {state: verbs | {"XWAIT"} for state, verbs in protocol.commands.items()}
    client.send("a XWAIT")
    count = 50 * 1024
    client.sendRaw(b"b NOOP\r\n" * count)
    assert s.t.transport.producerState == "paused"
    assert len(protocol.peekBuffered()) <= protocol.pauseAt + compress.INFLATE_CHUNK
    held.callback(None)
    got = client.lines()
    assert s.t.transport.producerState == "producing"
    assert got == ["a OK Waited."] + ["b OK NOOP completed."] * count
