"""
Tests of L{mdpy.dotstuffing}.
"""

import pytest

from mdpy.dotstuffing import DotStuffer, normaliseLineEndings, stuff


def unstuff(wire):
    """What a client makes of a multi-line response (RFC 1939 section 3)."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    lines = wire[:-3].split(b"\r\n")[:-1] if wire != b".\r\n" else []
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


@pytest.mark.parametrize(
    "data, wire",
    [
        (b"", b".\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b".\r\n..x\r\n", b"..\r\n...x\r\n.\r\n"),
        (b"no final newline", b"no final newline\r\n.\r\n"),
        (b"lf\nonly\n.dot\n", b"lf\r\nonly\r\n..dot\r\n.\r\n"),
        (b"bare\rcr\r", b"bare\r\ncr\r\n.\r\n"),
        (b"\xe9\xff 8bit\r\n", b"\xe9\xff 8bit\r\n.\r\n"),
    ],
)
def test_stuff(data, wire):
    assert stuff(data) == wire


def test_everySplitGivesTheSameWire():
    data = b"H: v\r\n\r\n.one\r\nx\r\n..two\r\n\r\n.\r\nend\r"
    whole = stuff(data)
    for cut in range(len(data) + 1):
        stuffer = DotStuffer()
        assert stuffer.feed(data[:cut]) + stuffer.feed(data[cut:]) + stuffer.finish() == whole, cut
    for size in (1, 2, 3, 7):
        stuffer = DotStuffer()
        wire = b"".join(stuffer.feed(data[i : i + size]) for i in range(0, len(data), size))
        assert wire + stuffer.finish() == whole


def test_roundTrip():
    data = b"".join(b".%d\r\n" % i if i % 3 else b"line %d\r\n" % i for i in range(100))
    assert unstuff(stuff(data)) == data


def test_normalise():
    assert normaliseLineEndings(b"a\r\nb") == b"a\r\nb"
    assert normaliseLineEndings(b"a\nb\rc\r\n") == b"a\r\nb\r\nc\r\n"


def test_normalisedSize():
    import io

    from mdpy.dotstuffing import normalisedFileSize, normalisedSize

    for data in (b"", b"a\r\nb", b"a\nb\n", b"a\rb\r", b"a\r\n\n\r\r\n", b"x" * 10 + b"\r"):
        assert normalisedSize(data) == len(normaliseLineEndings(data))
        for chunk in (1, 2, 3, 1 << 20):
            assert normalisedFileSize(io.BytesIO(data), chunk) == len(normaliseLineEndings(data))
