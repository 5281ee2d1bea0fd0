# -*- test-case-name: tests.test_imap_parser -*-
"""
The IMAP command syntax (RFC 3501 section 9): a command arrives as lines
and literals, and is read into tokens; sequence sets and dates are parsed
here too.

Tokens are:
 - L{Atom} (a L{str}): an atom, a number, a flag, C{NIL}, a sequence set, or
   a fetch attribute with its brackets (C{BODY.PEEK[HEADER.FIELDS (TO)]<0.9>}
   is one atom; L{mdpy.imap.fetch} reads inside it);
 - L{bytes}: a quoted string or a literal;
 - a L{mdpy.imap.literals.SpooledLiteral}: a literal too large to hold in
   memory (an APPEND message), in a temporary file;
 - L{Literal8}: a binary literal C{~{n}} (RFC 3516 section 4.4), which
   only APPEND takes; its C{value} is one of the two above;
 - L{list}: a parenthesised list of tokens.

A command is given as its I{segments}: C{[line, literal, line, ...,
line]}, each line but the last ending with the literal marker C{{n}} or
C{{n+}} (or C{~{n}}, C{~{n+}}) that announced the literal after it
(L{LITERAL_MARKER}); a literal
segment is its token as it is.  The session
collects them, checking each literal's size against its limits before it
answers C{+} (hardening-vectors section 3).

Invariants: parsing never recurses (nesting is bounded by C{maxDepth}), so
no input raises anything but L{ParseError}.
"""

import calendar
import re
import time
from bisect import bisect_left, bisect_right

MAX_NUMBER = 4294967295
LITERAL_MARKER = re.compile(rb"~?\{([0-9]{1,20})(\+?)\}\Z")

_ATOM_END = frozenset(b' ()"{')
# The fetch attributes whose C{[...]} section may hold what an atom may not
# (RFC 3501 section 9, C{fetch-att}; RFC 3516 C{BINARY}).
_SECTION_ATTRIBUTES = frozenset([b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"])
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_MONTH_NUMBERS = {name.lower(): number for number, name in enumerate(_MONTHS, 1)}


class ParseError(Exception):
    """
    The command is not well formed; the message is for the client's C{BAD}.
    """


class Literal8:
    """
    A binary literal, C{~{n}} (RFC 3516 section 4.4): its octets may hold
    NUL, which no other literal may (RFC 3501 section 9, C{CHAR8}).

    @ivar value: the literal's token, L{bytes} or a
        L{mdpy.imap.literals.SpooledLiteral}.
    """

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __len__(self):
        return len(self.value)

    def __repr__(self):
        return "Literal8(%r)" % (self.value,)


def _containsNul(literal):
    """
    @return: whether a literal's octets hold NUL (a spooled literal says so
        itself, having looked while it was written).
    """
    if isinstance(literal, bytes):
        return b"\x00" in literal
    return literal.containsNul


class Atom(str):
    """
    An atom as sent (case kept; compare with C{.upper()}).
    """

    __slots__ = ()

    def __repr__(self):
        return "Atom(%s)" % (str.__repr__(self),)


def tokenize(segments, maxDepth=32):
    """
    Read the tokens of one command.

    @param segments: C{[line, literal, line, ...]} (see the module docstring).
    @param maxDepth: the deepest nesting of parentheses allowed.
    @return: a L{list} of tokens.
    @raise ParseError: not well formed.
    """
    top = []
    stack = [top]
    lineIndex = 0
    line = segments[0]
    pos = 0
    length = len(line)
    while True:
        if pos >= length:
            if len(stack) > 1:
                raise ParseError("Missing ')'")
            return top
        byte = line[pos]
        if byte == 0x20:
            pos += 1
            continue
        current = stack[-1]
        if byte == 0x28:  # (
            if len(stack) > maxDepth:
                raise ParseError("Too deeply nested")
            inner = []
            current.append(inner)
            stack.append(inner)
            pos += 1
        elif byte == 0x29:  # )
            if len(stack) == 1:
                raise ParseError("Unexpected ')'")
            stack.pop()
            pos += 1
        elif byte == 0x22:  # "
            value, pos = _quoted(line, pos + 1)
            current.append(value)
        elif byte == 0x7B or (byte == 0x7E and line[pos + 1 : pos + 2] == b"{"):  # { or ~{
            if LITERAL_MARKER.match(line, pos) is None or lineIndex + 2 >= len(segments):
                raise ParseError("Bad literal")
            literal = segments[lineIndex + 1]
            if byte == 0x7E:
                literal = Literal8(literal)
            elif _containsNul(literal):
                raise ParseError("NUL in a literal; binary data needs ~{n} (RFC 3516)")
            current.append(literal)
            lineIndex += 2
            line = segments[lineIndex]
            pos = 0
            length = len(line)
        else:
            atom, pos = _atom(line, pos)
            current.append(atom)


def _quoted(line, pos):
    out = bytearray()
    length = len(line)
    while pos < length:
        byte = line[pos]
        if byte == 0x22:
            return bytes(out), pos + 1
        if byte == 0x5C:  # backslash
            pos += 1
            if pos >= length or line[pos] not in (0x22, 0x5C):
                raise ParseError("Bad escape in quoted string")
            byte = line[pos]
        elif byte in (0, 0x0D, 0x0A):
            raise ParseError("Bad character in quoted string")
        out.append(byte)
        pos += 1
    raise ParseError("Missing '\"'")


def _atom(line, pos):
    start = pos
    length = len(line)
    while pos < length:
        byte = line[pos]
        if byte == 0x5B and line[start:pos].upper() in _SECTION_ATTRIBUTES:
            # A section: [ ... ] with anything but CR LF inside.  Elsewhere
            # "[" is an ATOM-CHAR (RFC 3501 section 9).
            close = _closingBracket(line, pos + 1)
            pos = close + 1
            continue
        if byte in _ATOM_END or byte < 0x20 or byte == 0x7F:
            break
        pos += 1
    if pos == start:
        raise ParseError("Unexpected character")
    try:
        text = line[start:pos].decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("8-bit characters in an atom")
    return Atom(text), pos


def _closingBracket(line, pos):
    depth = 1
    length = len(line)
    while pos < length:
        byte = line[pos]
        if byte == 0x22:
            _, pos = _quoted(line, pos + 1)
            continue
        if byte == 0x5B:
            depth += 1
        elif byte == 0x5D:
            depth -= 1
            if not depth:
                return pos
        pos += 1
    raise ParseError("Missing ']'")


# --- value types ------------------------------------------------------------


def isAtom(token, *names):
    """
    @return: whether C{token} is an atom equal (any case) to one of C{names}.
    """
    return isinstance(token, Atom) and token.upper() in names


def astring(token):
    """
    @return: an astring (atom or string) as L{bytes}.
    @raise ParseError: a list or NIL... a list.
    """
    if isinstance(token, Atom):
        return token.encode("utf-8")
    if isinstance(token, bytes):
        return token
    raise ParseError("Expected a string")


def number(token, nonZero=False):
    """
    @return: an unsigned 32-bit number.
    """
    if not isinstance(token, Atom) or not token.isdigit() or not token.isascii() or len(token) > 10:
        raise ParseError("Expected a number")
    value = int(token)
    if value > MAX_NUMBER or (nonZero and value == 0):
        raise ParseError("Number out of range")
    return value


def number64(token):
    """
    @return: an unsigned 63-bit number (a mod-sequence, RFC 7162).
    """
    if not isinstance(token, Atom) or not token.isdigit() or not token.isascii() or len(token) > 19:
        raise ParseError("Expected a number")
    value = int(token)
    if value >= 2**63:
        raise ParseError("Number out of range")
    return value


class SequenceSet:
    """
    A sequence set (RFC 3501 section 9, C{sequence-set}): ranges of numbers
    where C{*} stands for the largest number in use.

    @ivar ranges: C{[(low, high)]} with L{None} for C{*}.
    """

    def __init__(self, ranges):
        self.ranges = ranges

    @classmethod
    def parse(cls, token):
        """
        @raise ParseError: not a sequence set.
        """
        if not isinstance(token, Atom) or not token:
            raise ParseError("Invalid sequence set")
        ranges = []
        for item in token.split(","):
            low, sep, high = item.partition(":")
            first = cls._value(low)
            ranges.append((first, cls._value(high) if sep else first))
        return cls(ranges)

    @staticmethod
    def _value(text):
        if text == "*":
            return None
        if not text.isdigit() or not text.isascii() or len(text) > 10 or text[0] == "0":
            raise ParseError("Invalid sequence set")
        value = int(text)
        if value > MAX_NUMBER:
            raise ParseError("Invalid sequence set")
        return value

    def bounds(self, largest):
        """
        @return: the ranges with C{*} as C{largest}, each C{(low, high)} in
            order.
        """
        out = []
        for low, high in self.ranges:
            low = largest if low is None else low
            high = largest if high is None else high
            if low > high:
                low, high = high, low
            out.append((low, high))
        return out

    def indexes(self, count):
        """
        @return: the sorted 0-based indexes of the sequence numbers in the
            set that exist in a mailbox of C{count} messages (clamped, so
            C{1:4294967295} costs only C{count}).
        """
        chosen = set()
        for low, high in self.bounds(count):
            chosen.update(range(max(low, 1) - 1, min(high, count)))
        return sorted(chosen)

    def selectSorted(self, values):
        """
        @param values: a sorted list of numbers (the UIDs of a mailbox).
        @return: the sorted 0-based indexes of C{values} that are in the set;
            C{*} is the last value (RFC 3501: C{*} is the largest UID in use,
            so C{UID FETCH 9999:*} always includes the last message).
        """
        if not values:
            return []
        chosen = set()
        for low, high in self.bounds(values[-1]):
            chosen.update(range(bisect_left(values, low), bisect_right(values, high)))
        return sorted(chosen)

    def contains(self, value, largest):
        return any(low <= value <= high for low, high in self.bounds(largest))

    def __repr__(self):
        return "SequenceSet(%r)" % (self.ranges,)


def formatSequence(numbers):
    """
    @param numbers: sorted distinct numbers.
    @return: the shortest sequence set naming them, as L{bytes}
        (C{1:3,7}).
    """
    parts = []
    start = previous = None
    for value in numbers:
        if previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None:
            parts.append("%d" % start if start == previous else "%d:%d" % (start, previous))
        start = previous = value
    if start is not None:
        parts.append("%d" % start if start == previous else "%d:%d" % (start, previous))
    return ",".join(parts).encode("ascii")


# --- dates ------------------------------------------------------------------


_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")
_DATE_TIME = re.compile(
    r"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})\Z"
)


def parseDate(token):
    """
    @return: C{(year, month, day)} of an RFC 3501 C{date} (C{1-Feb-1994},
        quoted or not).
    @raise ParseError: not a date.
    """
    text = _text(token)
    match = _DATE.match(text)
    month = _MONTH_NUMBERS.get(match.group(2).lower()) if match else None
    if month is None:
        raise ParseError("Invalid date")
    year, day = int(match.group(3)), int(match.group(1))
    if not 1 <= day <= 31:
        raise ParseError("Invalid date")
    return (year, month, day)


def parseDateTime(token):
    """
    @return: seconds since the epoch of an RFC 3501 C{date-time}
        (C{"17-Jul-1996 02:44:25 -0700"}).
    @raise ParseError: not a date-time.
    """
    match = _DATE_TIME.match(_text(token))
    month = _MONTH_NUMBERS.get(match.group(2).lower()) if match else None
    if month is None:
        raise ParseError("Invalid date-time")
    day, year, hour, minute, second = (int(match.group(i)) for i in (1, 3, 4, 5, 6))
    if not (1 <= day <= 31 and hour < 24 and minute < 60 and second < 61 and year >= 1970):
        raise ParseError("Invalid date-time")
    offset = (int(match.group(8)) * 60 + int(match.group(9))) * 60
    if match.group(7) == "-":
        offset = -offset
    try:
        return calendar.timegm((year, month, day, hour, minute, second)) - offset
    except (ValueError, OverflowError):
        raise ParseError("Invalid date-time")


def formatDateTime(seconds):
    """
    @return: the quoted RFC 3501 C{date-time} of C{seconds} in the server's
        time zone, as L{bytes}.
    """
    local = time.localtime(seconds)
    offset = local.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    offset = abs(offset)
    return (
        '"%02d-%s-%04d %02d:%02d:%02d %s%02d%02d"'
        % (
            local.tm_mday, _MONTHS[local.tm_mon - 1], local.tm_year,
            local.tm_hour, local.tm_min, local.tm_sec, sign, offset // 60, offset % 60,
        )
    ).encode("ascii")


def _text(token):
    if isinstance(token, bytes):
        try:
            return token.decode("ascii")
        except UnicodeDecodeError:
            raise ParseError("Invalid date")
    if isinstance(token, Atom):
        return str(token)
    raise ParseError("Invalid date")
