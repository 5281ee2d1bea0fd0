"""
Tests of L{mdpy.imap.parser}: tokens, sequence sets, dates.
"""

import pytest

from mdpy.imap.literals import SpooledLiteral
from mdpy.imap.parser import (
    LITERAL_MARKER, Atom, Literal8, ParseError, SequenceSet, formatDateTime, formatSequence, number,
    parseDate, parseDateTime, tokenize,
)


def test_atoms_strings_lists():
    tokens = tokenize([b'a1 LOGIN "joe \\"q\\" \\\\" (\\Seen $Kw) NIL'])
    assert tokens == ["a1", "LOGIN", b'joe "q" \\', ["\\Seen", "$Kw"], "NIL"]
    assert isinstance(tokens[0], Atom) and isinstance(tokens[2], bytes)


def test_literals_between_lines():
    tokens = tokenize([b"a APPEND {5}", b"INBOX", b" (\\Seen) {3+}", b"a\r\nb", b""])
    assert tokens == ["a", "APPEND", b"INBOX", ["\\Seen"], b"a\r\nb"]


def test_binary_literal_and_nul():
    """
    C{~{n}} is a binary literal (RFC 3516), the only one that may hold NUL,
    whether held in memory or spooled.
    """
    assert LITERAL_MARKER.search(b"a APPEND INBOX ~{12+}").group(1, 2) == (b"12", b"+")
    tokens = tokenize([b"a APPEND INBOX ~{3}", b"a\x00b", b" x~y"])
    assert isinstance(tokens[3], Literal8) and tokens[3].value == b"a\x00b" and len(tokens[3]) == 3
    assert tokens[4] == "x~y"
    with pytest.raises(ParseError):
        tokenize([b"a APPEND INBOX {3}", b"a\x00b", b""])
    spooled = SpooledLiteral(3)
    spooled.write(b"a\x00b")
    try:
        with pytest.raises(ParseError):
            tokenize([b"a APPEND INBOX {3}", spooled, b""])
        [token] = tokenize([b"~{3}", spooled, b""])
        assert token.value is spooled
    finally:
        spooled.close()


def test_fetch_attribute_with_brackets_is_one_atom():
    tokens = tokenize([b'a FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (From "To")]<0.100> BODY[])'])
    assert tokens[3] == ["UID", 'BODY.PEEK[HEADER.FIELDS (From "To")]<0.100>', "BODY[]"]


@pytest.mark.parametrize(
    "line",
    [b'a "open', b"a (", b"a )", b"a {5}", b"a {x}", b'a "bad\\q"', b"a BODY[", b"a BODY.PEEK[1 x",
     b"a \x01", b"a \xff"],
)
def test_malformed(line):
    with pytest.raises(ParseError):
        tokenize([line])


def test_brackets_and_braces_in_atoms():
    """
    C{[} and C{}} are ATOM-CHARs (RFC 3501 section 9: atom-specials hold
    C{]} and C{{} only); a C{[} opens a section that needs its C{]} only
    after a fetch attribute's name.
    """
    tokens = tokenize([b"a SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}"])
    assert tokens == ["a", "SELECT", "!#$&'+,-.0123456789:;<=>?@^_`|[}"]
    assert tokenize([b"a STORE 1 +FLAGS (foo[bar $a}b)"])[4] == ["foo[bar", "$a}b"]
    assert tokenize([b'a LIST "" foo[bar%*'])[3] == "foo[bar%*"
    assert tokenize([b"a FETCH 1 (body[1 2] binary.peek[1]<0.5>)"])[3] == ["body[1 2]", "binary.peek[1]<0.5>"]


def test_nul_in_quoted_string():
    with pytest.raises(ParseError):
        tokenize([b'a LOGIN "x\x00y" z'])


def test_nesting_limit_without_recursion():
    with pytest.raises(ParseError, match="nested"):
        tokenize([b"a " + b"(" * 100000 + b")" * 100000])
    assert tokenize([b"a ((x))"], maxDepth=2) == ["a", [["x"]]]
    with pytest.raises(ParseError):
        tokenize([b"a (((x)))"], maxDepth=2)


def test_sequence_sets():
    s = SequenceSet.parse(Atom("1:3,5,7:*"))
    assert s.indexes(8) == [0, 1, 2, 4, 6, 7]
    assert s.indexes(2) == [0, 1]
    assert SequenceSet.parse(Atom("*:4")).indexes(6) == [3, 4, 5]
    uids = [3, 10, 11, 50]
    assert SequenceSet.parse(Atom("10:20")).selectSorted(uids) == [1, 2]
    assert SequenceSet.parse(Atom("100:*")).selectSorted(uids) == [3]
    assert SequenceSet.parse(Atom("1:4294967295")).indexes(3) == [0, 1, 2]
    for bad in ("0", "1:", "a", "1,,2", "4294967296", "01", ""):
        with pytest.raises(ParseError):
            SequenceSet.parse(Atom(bad))
    with pytest.raises(ParseError):
        SequenceSet.parse(b"1")


def test_format_sequence():
    assert formatSequence([1, 2, 3, 5, 7, 8]) == b"1:3,5,7:8"
    assert formatSequence([]) == b""


def test_numbers():
    assert number(Atom("42")) == 42
    for bad in ("-1", "1_0", "4294967296", "x", "\u0663"):
        with pytest.raises(ParseError):
            number(Atom(bad))


def test_dates():
    assert parseDate(Atom("1-Feb-1994")) == (1994, 2, 1)
    assert parseDate(b"21-dec-2020") == (2020, 12, 21)
    assert parseDateTime(b"17-Jul-1996 02:44:25 -0700") == 837596665
    assert parseDateTime(b" 7-Jul-1996 02:44:25 +0000") == 836707465
    for bad in (b"32-Jan-2000", b"1-Foo-2000", b"2000-01-01"):
        with pytest.raises(ParseError):
            parseDate(bad)
    with pytest.raises(ParseError):
        parseDateTime(b"17-Jul-1996 25:44:25 -0700")
    text = formatDateTime(837596665)
    assert text.startswith(b'"') and text.endswith(b'"') and len(text) == 28
