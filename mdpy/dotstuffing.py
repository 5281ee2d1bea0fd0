# -*- test-case-name: tests.test_dotstuffing -*-
"""
The wire form of a message in a multi-line response (POP3 RETR and TOP) or
in SMTP DATA: CR LF line endings, a dot doubled at the start of each line
that has one (RFC 1939 section 3, RFC 5321 section 4.5.2), and the closing
C{.} line.

Stored messages may come with bare LF (a Maildir copied from another
server), so line endings are normalised first: a relay or a POP3 client
never receives a bare CR or LF, which is what SMTP smuggling needs.
"""

import re

_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


def normaliseLineEndings(data):
    """
    @return: C{data} with every bare CR and bare LF turned into CR LF.
    """
    if data.count(b"\n") == data.count(b"\r") == data.count(b"\r\n"):
        return data
    return _LINE_ENDING.sub(b"\r\n", data)


class DotStuffer:
    """
    Encode a message given in chunks of any size.

        stuffer = DotStuffer()
        wire = stuffer.feed(chunk1) + stuffer.feed(chunk2) + stuffer.finish()
    """

    def __init__(self):
        self._atLineStart = True
        self._pendingCR = False

    def feed(self, chunk):
        """
        @return: the wire form of as much of C{chunk} as can be encoded now.
        """
        if self._pendingCR:
            chunk = b"\r" + chunk
            self._pendingCR = False
        if chunk.endswith(b"\r"):
            # It may be the first half of a CR LF split between chunks.
            chunk = chunk[:-1]
            self._pendingCR = True
        if not chunk:
            return b""
        chunk = normaliseLineEndings(chunk)
        if self._atLineStart and chunk.startswith(b"."):
            chunk = b"." + chunk
        chunk = chunk.replace(b"\r\n.", b"\r\n..")
        self._atLineStart = chunk.endswith(b"\r\n")
        return chunk

    def finish(self):
        """
        @return: what is left, the line end a last line may lack, and the
            closing C{.} line.
        """
        tail = b""
        if self._pendingCR:
            self._pendingCR = False
            tail = b"\r\n"
            self._atLineStart = True
        if not self._atLineStart:
            tail += b"\r\n"
        return tail + b".\r\n"


def normalisedSize(data):
    """
    @return: the size of C{data} once its line endings are CR LF, as
        L{normaliseLineEndings} makes them (what RFC 1939 section 11 calls
        the size of the message as sent).
    """
    crlf = data.count(b"\r\n")
    return len(data) + (data.count(b"\n") - crlf) + (data.count(b"\r") - crlf)


class NormalisedSizeCounter:
    """
    L{normalisedSize} of data given in pieces.

    @ivar total: the size of the pieces before a final CR held back.
    """

    def __init__(self):
        self.total = 0
        self._carry = b""

    def feed(self, chunk):
        """
        Count C{chunk}, the next piece.
        """
        if self._carry:
            chunk = self._carry + chunk
        # Keep a final CR back: it may be the first half of a CR LF.
        self._carry = chunk[-1:] if chunk.endswith(b"\r") else b""
        self.total += normalisedSize(chunk[: len(chunk) - len(self._carry)] if self._carry else chunk)

    def finish(self):
        """
        @return: L{normalisedSize} of all the pieces.
        """
        return self.total + normalisedSize(self._carry)


def normalisedFileSize(file, chunkSize=1 << 20):
    """
    @return: L{normalisedSize} of what is left in a binary C{file}, read in
        chunks.
    """
    counter = NormalisedSizeCounter()
    while True:
        chunk = file.read(chunkSize)
        if not chunk:
            return counter.finish()
        counter.feed(chunk)


def stuff(data):
    """
    @return: the whole wire form of C{data}, closing line included.
    """
    stuffer = DotStuffer()
    return stuffer.feed(data) + stuffer.finish()
