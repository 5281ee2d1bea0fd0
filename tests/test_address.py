"""
Tests of L{mdpy.address}.
"""

import pytest

from mdpy.address import splitSubaddress


@pytest.mark.parametrize(
    "address, delimiters, expected",
    [
        ("bob+tag@example.org", "+", ("bob@example.org", "tag")),
        ("bob+@example.org", "+", ("bob@example.org", "")),
        ("bob+a+b@example.org", "+", ("bob@example.org", "a+b")),
        ("bob-a+b@example.org", "+-", ("bob@example.org", "a+b")),
        ("bob+a-b@example.org", "-+", ("bob@example.org", "a-b")),
        ("bob@example.org", "+", ("bob@example.org", None)),
        ("+bob@example.org", "+", ("+bob@example.org", None)),
        ("bob+tag@example.org", "", ("bob+tag@example.org", None)),
        ('"bob+tag x"@example.org', "+", ('"bob+tag x"@example.org', None)),
    ],
)
def test_splitSubaddress(address, delimiters, expected):
    assert splitSubaddress(address, delimiters) == expected
