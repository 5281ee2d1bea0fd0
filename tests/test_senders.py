"""
Tests of L{mdpy.auth.senders}: the addresses of From fields, and who owns
a sender address.  The SMTP server's use of them is in
L{tests.test_smtp_server}.
"""

import pytest

from mdpy import errors
from mdpy.auth.senders import SenderPolicy, fromMailboxes
from mdpy.backends.files.directory import SQLiteDirectory


@pytest.mark.parametrize(
    "header, addresses, malformed",
    [
        (b"Subject: x\r\n", [], False),
        (b"From: A <A@Example.ORG>\r\n", ["a@example.org"], False),
        (b"from :a@example.org,\r\n\tb@example.org\r\n", ["a@example.org", "b@example.org"], False),
        (b"From: a@example.org\r\nX-From: c@example.org\r\nFrom: b@example.org\r\n",
         ["a@example.org", "b@example.org"], False),
        (b"From: Team: a@example.org;\r\n", ["a@example.org"], False),
        (b"From: undisclosed-recipients:;\r\n", [], False),
        (b"From: =?utf-8?q?b=40example.org?= <a@example.org>\r\n", ["a@example.org"], False),
        (b"From: a@exa mple.org@x\r\n", [], True),
        (b"From: a@example.org\x00\r\n", [], True),
        # The words the IMAP ENVELOPE writes for a missing part are
        # addresses like any other here.
        (b"From: MISSING_MAILBOX@example.org\r\n", ["missing_mailbox@example.org"], False),
        (b"From: Someone <MISSING_MAILBOX@MISSING_DOMAIN>\r\n", [], True),
        (b"From: \"a@victim.test\"@example.org (comment)\r\n", ['"a@victim.test"@example.org'], False),
        (b"From: <@route.test:a@example.org>\r\n", ["a@example.org"], False),
        (b"From: a@example.org b@example.org\r\n", [], True),
        # A display name that is an address is checked as one (a mail
        # reader may show it as the sender).
        (b"From: ceo@example.org <a@example.net>\r\n", ["ceo@example.org", "a@example.net"], False),
        (b"From: <a@example.net> x <ceo@example.org>\r\n", ["a@example.net", "ceo@example.org"], False),
    ],
    ids=repr,
)
def test_fromMailboxes(header, addresses, malformed):
    assert fromMailboxes(header) == (addresses, malformed)


def test_unknownPolicy(tmp_path):
    with pytest.raises(ValueError):
        SenderPolicy(SQLiteDirectory(str(tmp_path / "d.sqlite")), "open")


def test_malformedFromIsRefused(tmp_path):
    directory = SQLiteDirectory(str(tmp_path / "d.sqlite"))
    directory.addDomain("example.org")
    directory.addUser("a@example.org", "pw")
    policy = SenderPolicy(directory)
    policy.checkHeader("a@example.org", b"From: a@example.org\r\n")
    with pytest.raises(errors.SenderNotOwned):
        policy.checkHeader("a@example.org", b"From: a@example.org\x00\r\n")
    with pytest.raises(errors.SenderNotOwned):
        policy.check("a@example.org", "not an address")
    SenderPolicy(directory, "any").checkHeader("a@example.org", b"From: x@exa mple@\r\n")
