# -*- test-case-name: tests.test_imap_contexts -*-
"""
Partial results of SEARCH and SORT: C{RETURN (PARTIAL first:last)} (RFC
5267 section 4.4, as RFC 9394 section 3.1 extends it) names one page of the
result by positions in it.
"""

import re

from mdpy.imap.parser import Atom, ParseError, formatSequence

# A PARTIAL range: 1-based positions in the result, or counted from its
# end (-1 is the last).
_PARTIAL_RANGE = re.compile(r"(-?)([1-9][0-9]{0,9}):(-?)([1-9][0-9]{0,9})\Z")


def parsePartialRange(token):
    """
    Read the range of C{RETURN (PARTIAL range)}: C{first:last} counted from
    the start of the result, or C{-first:-last} from its end (RFC 9394
    section 3.1; RFC 5267 section 4.4 had only the former).  The two ends
    may come in either order.

    @return: C{(first, last)}, C{first} the end nearer the start or the
        end of the result (C{(2, 4)}, C{(-1, -10)}).
    @raise ParseError: not such a range (C{1}, C{1:*}, C{-1:2}).
    """
    match = _PARTIAL_RANGE.match(token) if isinstance(token, Atom) else None
    if match is None or match.group(1) != match.group(3):
        raise ParseError("Invalid PARTIAL range")
    first, last = sorted((int(match.group(2)), int(match.group(4))))
    if match.group(1):
        return -first, -last
    return first, last


def partialOf(numbers, partial):
    """
    @param numbers: a result, in its order.
    @param partial: a range of L{parsePartialRange}.
    @return: the part of C{numbers} the range names, in the same order.
    """
    first, last = partial
    if first > 0:
        return numbers[first - 1 : last]
    start = max(len(numbers) + last, 0)
    return numbers[start : max(len(numbers) + first + 1, 0)]


def formatPartial(partial, numbers):
    """
    @return: the C{PARTIAL (range set)} return data (RFC 9394 section 3.1):
        the range as normalised, and the numbers it names (in their
        order) or C{NIL}.
    """
    part = partialOf(numbers, partial)
    return b"PARTIAL (%d:%d %s)" % (partial[0], partial[1], formatSequence(part) if part else b"NIL")

