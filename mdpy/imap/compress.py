# -*- test-case-name: tests.test_imap_compress -*-
"""
IMAP COMPRESS=DEFLATE (RFC 4978): once a session has answered C{OK} to
C{COMPRESS DEFLATE}, everything it sends and receives is a raw deflate
stream (RFC 1951, no zlib header).  L{DeflateTransport} stands between the
session and its transport (plain TCP or TLS: compression runs inside TLS),
so every part of the session, literals, IDLE and long FETCH responses
included, goes on writing and reading plain IMAP.

Invariants:
 - Output is compressed as it is written and flushed (C{Z_SYNC_FLUSH},
   RFC 4978 section 4) once per burst: at the next turn of the reactor, so
   the responses of one command go out in one flush, and before the
   connection is closed.
 - Input is inflated at most L{INFLATE_CHUNK} octets at a time, and no
   more while the session has paused its transport: a few compressed
   octets that inflate to gigabytes never make an unbounded buffer, and
   the limits of L{mdpy.session.CommandSession} (line length, literal
   sizes) hold for the inflated stream.
"""

import zlib

from mdpy.session import writeThrough

INFLATE_CHUNK = 64 * 1024
# zlib's memLevel for the compressor: 5 keeps what an idle session holds for
# both directions near 40 kB (near 100 kB at zlib's default of 8), and
# compresses mail within a percent as well.
MEMORY_LEVEL = 5


class DeflateTransport:
    """
    A transport that compresses what the session writes, and inflates what
    arrives for it; every other attribute is that of the transport it
    wraps.

    @ivar transport: the transport underneath (TCP, or TLS).
    """

    def __init__(self, transport, deliver, corrupted, callLater, received=b""):
        """
        @param deliver: called with each piece of inflated input.
        @param corrupted: called with no arguments when the input is not a
            deflate stream (the session says goodbye and closes).
        @param callLater: the reactor's C{callLater}, for the flush.
        @param received: compressed octets that came already (pipelined
            after the command); they are inflated before any that
            L{receive} is given, at the latest at the next turn of the
            reactor.
        """
        self.transport = transport
        self._deliver = deliver
        self._corrupted = corrupted
        self._callLater = callLater
        self._compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15, MEMORY_LEVEL)
        self._inflater = zlib.decompressobj(-15)
        self._unflushed = False
        self._flushCall = None
        self._compressed = received
        self._outputLeft = False
        self._paused = False
        self._inflating = False
        self._closed = False
        if received:
            callLater(0, self._inflate)

    def __getattr__(self, name):
        return getattr(self.transport, name)

    # --- output ---------------------------------------------------------------

    def write(self, data):
        if self._closed or not data:
            return
        compressed = self._compressor.compress(data)
        self._unflushed = True
        if compressed:
            writeThrough(self.transport, compressed)
        if self._flushCall is None:
            self._flushCall = self._callLater(0, self.flush)

    def writeSequence(self, data):
        self.write(b"".join(data))

    def flush(self):
        """
        Send what the compressor holds, ending on a byte boundary the
        client can inflate up to (C{Z_SYNC_FLUSH}).
        """
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        if self._unflushed:
            self._unflushed = False
            writeThrough(self.transport, self._compressor.flush(zlib.Z_SYNC_FLUSH))

    def loseConnection(self):
        """
        Flush, then close the connection underneath.
        """
        if not self._closed:
            self.flush()
            self._closed = True
        self.transport.loseConnection()

    def stop(self):
        """
        The connection is gone: cancel the flush pending, drop the input.
        """
        self._closed = True
        self._compressed = b""
        self._outputLeft = False
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None

    # --- input ----------------------------------------------------------------

    def receive(self, data):
        """
        Inflate C{data}, compressed octets off the connection, for the
        session.
        """
        if self._closed:
            return
        self._compressed += data
        self._inflate()

    def _inflate(self):
        """
        Hand the session what the compressed octets held give, a chunk at a
        time, until they are used up, the session pauses its transport, or
        the connection closes.  After a full chunk the inflater is asked
        again even when every compressed octet was taken in: it may hold
        more output.
        """
        if self._inflating:
            return
        self._inflating = True
        try:
            while (self._compressed or self._outputLeft) and not self._paused and not self._closed:
                inflater = self._inflater
                try:
                    data = inflater.decompress(self._compressed, INFLATE_CHUNK)
                except zlib.error:
                    data = None
                if data is None or inflater.eof:
                    # A corrupt stream, or one the client ended: RFC 4978
                    # has no way back to uncompressed data.
                    self._compressed = b""
                    self._outputLeft = False
                    self._corrupted()
                    return
                self._compressed = inflater.unconsumed_tail
                self._outputLeft = len(data) == INFLATE_CHUNK
                if data:
                    self._deliver(data)
        finally:
            self._inflating = False

    def pauseProducing(self):
        """
        Inflate nothing more, and read nothing more, until
        L{resumeProducing}.
        """
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        self.transport.resumeProducing()
        self._inflate()
