"""
Tests of L{mdpy.errors}: failures described for people.
"""

import pytest
from twisted.internet import defer
from twisted.internet import error as netError
from twisted.names import dns
from twisted.python.failure import Failure

from mdpy.errors import TemporaryFailure, describe, withoutReprs


@pytest.mark.parametrize("error, text", [
    (defer.TimeoutError([dns.Query(b"example.org", dns.MX)]), "DNS lookup of example.org timed out"),
    (defer.TimeoutError([dns.Query(b"a.test", dns.A), dns.Query(b"a.test", dns.AAAA)]),
     "DNS lookup of a.test timed out"),
    (TemporaryFailure("disk full"), "disk full"),
    (netError.ConnectionRefusedError(), "Connection was refused by other side."),
    (OSError(2, "No such file or directory", "/x/y"), "/x/y: No such file or directory"),
    (OSError(13, "Permission denied"), "Permission denied"),
    (ValueError("bad port: 99999"), "bad port: 99999"),
    (RuntimeError([1, 2]), "runtime error"),
    (ConnectionResetError(), "connection reset"),
])
def test_describe(error, text):
    """
    L{describe} says what went wrong in words, never with a repr, for an
    exception or a L{Failure} of it alike.
    """
    assert describe(error) == text
    assert describe(Failure(error)) == text


@pytest.mark.parametrize("stored, text", [
    ("example.org MX lookup failed: TimeoutError([Query(b'example.org', 15, 1)])",
     "DNS lookup of example.org timed out"),
    ("example.org MX lookup failed: timeout", "DNS lookup of example.org timed out"),
    ("delivery time expired; last error: x.test A lookup failed: TimeoutError([Query(b'x.test', 1, 1)])",
     "delivery time expired; last error: DNS lookup of x.test timed out"),
    ("cannot connect: ConnectionRefusedError('refused by peer')", "cannot connect: refused by peer"),
    ("example.org MX lookup failed: SERVFAIL", "example.org MX lookup failed: SERVFAIL"),
    ("host said: 550 No such user (here)", "host said: 550 No such user (here)"),
    (None, None),
])
def test_withoutReprs(stored, text):
    """
    Text that earlier versions stored with reprs in it reads as words;
    other text is left as it is.
    """
    assert withoutReprs(stored) == text
