# -*- test-case-name: tests.test_imap_server -*-
"""
IMAP commands as they arrive, lines and literals (RFC 3501 section 4.3,
RFC 7888 LITERAL+): each literal is checked against its limits before its
C{+}; a small one is held in memory, a large one (an APPEND message) goes to
a temporary file as it arrives and is stored from there; and the literal
octets an account has under way are bounded over all its connections
(hardening-vectors section 3).

Invariants:
 - A spool file has no name (C{O_TMPFILE}, or unlinked at once): it is gone
   when closed, and at the latest when the process ends, so a crash leaves
   nothing behind.  The session closes it when its command ends or its
   connection is lost.
 - Octets reserved in L{PendingLiterals} are given back exactly once, when
   the command that announced them ends or is thrown away.
"""

import tempfile

from twisted.internet import defer

from mdpy.errors import TemporaryFailure
from mdpy.imap.parser import LITERAL_MARKER

SPOOL_THRESHOLD = 256 * 1024
MAX_LITERAL = 64 * 1024
MAX_LITERALS = 1000
MAX_LITERAL_TOTAL = 1024 * 1024
MAX_PREAUTH_LITERAL = 8192


class SpooledLiteral:
    """
    A literal too large to hold in memory (an APPEND message): its octets
    in an unnamed temporary file.  It is the token L{mdpy.imap.parser}
    gives for such a literal, where a small one is L{bytes}.

    @ivar size: the octets announced (and, once complete, received).
    @ivar error: the L{OSError} that stopped the writing, or L{None}.
    @ivar containsNul: whether a NUL octet was received (allowed only in a
        binary literal, RFC 3516).
    """

    def __init__(self, size, directory=None):
        """
        @param directory: where the file is made; L{None}: the system's
            temporary folder.
        @raise OSError: no file could be made.
        """
        self.size = size
        self.error = None
        self.containsNul = False
        self._file = tempfile.TemporaryFile(dir=directory)

    def __len__(self):
        return self.size

    def __repr__(self):
        return "<SpooledLiteral of %d octets>" % (self.size,)

    def write(self, data):
        """
        Add received octets.  A write error (a full disk) is kept for
        L{open} and what follows is thrown away, so the rest of the
        literal is still read off the connection.
        """
        if not self.containsNul and b"\x00" in data:
            self.containsNul = True
        if self.error is not None:
            return
        try:
            self._file.write(data)
        except OSError as e:
            self.error = e

    def finish(self):
        """
        @return: the token for the complete literal (this object).
        """
        return self

    def open(self):
        """
        @return: the binary file of the octets, at its start.
        @raise TemporaryFailure: they could not all be written.
        """
        if self.error is None:
            try:
                self._file.flush()
                self._file.seek(0)
            except OSError as e:
                self.error = e
        if self.error is not None:
            raise TemporaryFailure("spooling a literal: %s" % (self.error.strerror or self.error,))
        return self._file

    def close(self):
        """
        Remove the file (it has no name, so closing it is enough).
        """
        self._file.close()


class MemoryLiteral:
    """
    A small literal collected in memory; see L{SpooledLiteral}.
    """

    def __init__(self):
        self._parts = []

    def write(self, data):
        self._parts.append(data)

    def finish(self):
        """
        @return: the octets, as L{bytes}.
        """
        return b"".join(self._parts)

    def close(self):
        self._parts = []


def receiveLiteral(size, directory=None, held=0):
    """
    @param held: the literal octets the command already holds in memory.
    @return: where a literal of C{size} octets is collected: a
        L{SpooledLiteral} in C{directory} past L{SPOOL_THRESHOLD}, or when
        the command's literals in memory would pass L{MAX_LITERAL_TOTAL}
        (the messages of a MULTIAPPEND, RFC 3502), else a L{MemoryLiteral}.
    @raise OSError: no spool file could be made.
    """
    if size > SPOOL_THRESHOLD or held + size > MAX_LITERAL_TOTAL:
        return SpooledLiteral(size, directory)
    return MemoryLiteral()


def closeLiterals(segments):
    """
    Close the spooled literals among a command's segments (see
    L{mdpy.imap.parser}).
    """
    for segment in segments:
        if isinstance(segment, SpooledLiteral):
            segment.close()


class PendingLiterals:
    """
    The literal octets each account has announced (it got C{+} or sent
    C{{n+}}) in commands that have not ended yet, over all its sessions.
    One instance is shared by the IMAP listeners, so the bound holds
    however many connections an account opens (eight clients each with a
    48 MiB APPEND under way must not cost the server 400 MB).
    """

    def __init__(self):
        self._pending = {}

    def pending(self, account):
        """
        @return: the octets C{account} has under way.
        """
        return self._pending.get(account, 0)

    def reserve(self, account, size, limit):
        """
        Count C{size} more octets for C{account}, unless that would take it
        past C{limit} while it has others under way (a literal alone is
        always counted: its own limit, APPENDLIMIT, was checked before).

        @return: whether they were counted.
        """
        pending = self._pending.get(account, 0)
        if pending and pending + size > limit:
            return False
        self._pending[account] = pending + size
        return True

    def release(self, account, size):
        """
        Give back C{size} octets L{reserve}d for C{account}.
        """
        left = self._pending.get(account, 0) - size
        if left > 0:
            self._pending[account] = left
        else:
            self._pending.pop(account, None)


class CommandInput:
    """
    The input side of an IMAP session (a mixin for
    L{mdpy.imap.server.IMAP4Server}): collects each command's lines and
    literals (the segments of L{mdpy.imap.parser}), checks every literal
    before its C{+}, and runs the command with C{_command(segments)}.

    The session provides C{factory} (with C{maxMessageSize},
    C{maxPendingLiterals}, C{pendingLiterals}, C{spoolDir}), C{account},
    C{log}, C{send}, C{_reply}, C{_countError} and the raw mode of
    L{mdpy.session.CommandSession}.
    """

    def __init__(self):
        self._segments = []
        self._reserved = 0
        self._literalCount = 0
        self._literalTotal = 0
        self._literalMemory = 0
        self._literalWanted = 0
        self._literal = None
        self._discarding = 0
        self._skipRest = False

    def dropInput(self):
        """
        The connection is gone: give back what the command being collected
        holds (a command already running gives back its own when it ends).
        """
        if self._literal is not None:
            self._literal.close()
            self._literal = None
        self._dropCommand()

    def _takeCommand(self):
        """
        Start collecting a new command.

        @return: C{(segments, reserved)} of the one collected so far: its
            segments and the literal octets it holds in the account's
            L{PendingLiterals}.
        """
        taken = self._segments, self._reserved
        self._segments = []
        self._reserved = 0
        self._literalCount = 0
        self._literalTotal = 0
        self._literalMemory = 0
        return taken

    def _releaseLiterals(self, segments, reserved):
        """
        Give back what a command's literals hold: their spool files and
        their octets in the account's L{PendingLiterals}.
        """
        closeLiterals(segments)
        if reserved:
            self.factory.pendingLiterals.release(self.account, reserved)

    def _dropCommand(self):
        """
        Throw away the command being collected, with its literals.
        """
        self._releaseLiterals(*self._takeCommand())

    def lineReceived(self, line):
        if self._skipRest:
            self._skipRest = False
            match = LITERAL_MARKER.search(line)
            if match is not None and match.group(2):
                self._discarding = int(match.group(1))
                self.rawMode = True
            return None
        self._segments.append(line)
        match = LITERAL_MARKER.search(line)
        if match is None:
            return self._runCommand(*self._takeCommand())
        size = int(match.group(1))
        nonSynchronising = bool(match.group(2))
        refusal = self._checkLiteral(size) or self._startLiteral(size)
        if refusal is not None:
            tag = self._guessTag(self._segments[0])
            self._dropCommand()
            if nonSynchronising:
                self._discarding = size
                self.rawMode = True
            code, text = refusal
            self._reply(tag, b"NO", text, code)
            self._countError()
            return None
        self._literalCount += 1
        self._literalTotal += size
        self._literalWanted = size
        self.rawMode = True
        if not nonSynchronising:
            self.send(b"+ OK\r\n")
        return None

    def _runCommand(self, segments, reserved):
        """
        Run a complete command; its literals are given back when it ends.
        """
        try:
            result = self._command(segments)
        except BaseException:
            self._releaseLiterals(segments, reserved)
            raise
        if not isinstance(result, defer.Deferred):
            self._releaseLiterals(segments, reserved)
            return result

        def ended(outcome):
            self._releaseLiterals(segments, reserved)
            return outcome

        return result.addBoth(ended)

    def _checkLiteral(self, size):
        """
        @return: L{None} if a literal of C{size} octets may come now, else
            C{(code, text)} of the refusal.
        """
        first = self._segments[0].split(b" ", 2)
        verb = first[1].upper() if len(first) > 1 else b""
        if self.account is None:
            if size > MAX_PREAUTH_LITERAL or self._literalCount >= 4:
                return b"TOOBIG", b"Literal too large before authentication."
            return None
        if self._literalCount >= MAX_LITERALS:
            return b"TOOBIG", b"Too many literals."
        if verb == b"APPEND":
            # Each message, and each part of a CATENATE (RFC 4469), is
            # bounded by APPENDLIMIT; the messages of a MULTIAPPEND (RFC
            # 3502) together by the account's pending literal octets
            # (L{_startLiteral}).
            if size > self.factory.maxMessageSize:
                return b"TOOBIG", b"Message too large (APPENDLIMIT=%d)." % (self.factory.maxMessageSize,)
            return None
        if size > MAX_LITERAL or self._literalTotal + size > MAX_LITERAL_TOTAL:
            return b"TOOBIG", b"Literal too large."
        return None

    def _startLiteral(self, size):
        """
        Make room for a literal of C{size} octets that passed
        L{_checkLiteral}: count it in the account's pending literal octets
        (C{[imap] max_pending_literal_size}) and open what collects it.

        @return: L{None}, or C{(code, text)} of the refusal.
        """
        factory = self.factory
        if self.account is not None:
            if not factory.pendingLiterals.reserve(self.account, size, factory.maxPendingLiterals):
                self.log.warn("imap: {user} has too many literal octets under way; refused {size} more",
                              user=self.account, size=size)
                return b"LIMIT", b"Too many messages being appended at once; try again later."
            self._reserved += size
        try:
            self._literal = receiveLiteral(size, factory.spoolDir, self._literalMemory)
        except OSError as e:
            self.log.warn("imap: cannot spool a literal in {dir}: {error}", dir=factory.spoolDir, error=e)
            return b"UNAVAILABLE", b"Temporary failure; try again later."
        return None

    def rawInput(self):
        data = self.takeBuffered()
        if self._discarding:
            used = min(len(data), self._discarding)
            self._discarding -= used
            if not self._discarding:
                self.rawMode = False
                # The rest of the refused command's line follows the literal.
                self._skipRest = True
            self.setBuffered(data[used:])
            return True
        wanted = self._literalWanted
        piece = data[:wanted]
        self._literal.write(piece)
        self._literalWanted -= len(piece)
        self.setBuffered(data[len(piece):])
        if not self._literalWanted:
            literal = self._literal.finish()
            if isinstance(literal, bytes):
                self._literalMemory += len(literal)
            self._segments.append(literal)
            self._literal = None
            self.rawMode = False
        return True

    @staticmethod
    def _guessTag(line):
        tag = line.split(b" ", 1)[0]
        if not tag or len(tag) > 64 or not all(33 <= c < 127 and c not in b'(){%*"\\+' for c in tag):
            return b"*"
        return tag
