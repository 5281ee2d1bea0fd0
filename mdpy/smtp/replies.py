# -*- test-case-name: tests.test_smtp_client,tests.test_odmr_customer -*-
"""
SMTP replies as a client reads them (RFC 5321 section 4.2, with the
enhanced status codes of RFC 2034 and RFC 3463): the reader of the ESMTP
client and of the ODMR customer.
"""

import re

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?\Z", re.S)
_ENHANCED = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?= |\Z)")

# What a reply's text (and an address sent in a command) may not hold.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f]")


class Reply:
    """
    A complete reply: C{lines} as they came (for EHLO), C{text} the lines
    joined without their enhanced code (RFC 2034 section 4: each has it).
    """

    def __init__(self, code, lines):
        self.code = code
        self.lines = lines
        match = _ENHANCED.match(lines[0])
        # RFC 3463 section 2: the class must be that of the reply code.
        self.enhanced = match.group(0) if match and match.group(1) == str(code)[0] else None
        texts = []
        for line in lines:
            if self.enhanced and (line + " ").startswith(self.enhanced + " "):
                line = line[len(self.enhanced):].lstrip()
            if line:
                texts.append(line)
        self.text = " ".join(texts)

    def asTuple(self):
        return (self.code, self.enhanced, self.text)

    def __str__(self):
        return formatReply(self.code, self.enhanced, self.text)


class ReplyError(Exception):
    """
    The server's output is not a well-formed reply within the limits.
    """


class ReplyReader:
    """
    Cuts a server's output into replies (RFC 5321 section 4.2), within
    limits: a line over C{maxLine} octets, a reply over C{maxLines} lines, a
    malformed line or two codes in one reply raise L{ReplyError}; at most
    C{maxLine} octets of a partial line stay buffered.

    @ivar buffer: what was fed and not parsed yet.
    """

    def __init__(self, maxLine=4096, maxLines=100):
        self.maxLine = maxLine
        self.maxLines = maxLines
        self.buffer = b""
        self._lines = []
        self._code = None

    def feed(self, data):
        self.buffer += data

    def clear(self):
        """
        Forget everything fed so far.
        """
        self.buffer = b""
        self._lines = []

    def next(self):
        """
        @return: the next complete L{Reply}, or L{None} when more input is
            needed.
        @raise ReplyError: see the class.
        """
        while True:
            end = self.buffer.find(b"\n")
            if end < 0 and len(self.buffer) <= self.maxLine:
                return None
            if end < 0 or end > self.maxLine + 1:
                raise ReplyError("reply line longer than %d octets" % (self.maxLine,))
            line, self.buffer = self.buffer[:end], self.buffer[end + 1:]
            reply = self._line(line[:-1] if line.endswith(b"\r") else line)
            if reply is not None:
                return reply

    def _line(self, line):
        match = _REPLY_LINE.match(line)
        if match is None:
            raise ReplyError("malformed reply %r" % (line[:60].decode("ascii", "backslashreplace"),))
        code = int(match.group(1))
        if self._lines and code != self._code:
            raise ReplyError("codes %d and %d in one reply" % (self._code, code))
        if len(self._lines) >= self.maxLines:
            raise ReplyError("reply longer than %d lines" % (self.maxLines,))
        self._code = code
        self._lines.append(CONTROL_CHARACTERS.sub(" ", (match.group(3) or b"").decode("utf-8", "replace")))
        if match.group(2) == b"-":
            return None
        lines, self._lines = self._lines, []
        return Reply(code, lines)


def formatReply(code, enhanced, text):
    """
    @return: a reply as one line of text, for logs and bounces:
        C{550 5.1.1 no such user}.
    """
    return " ".join(str(part) for part in (code, enhanced, text) if part)
