"""
End-to-end test of IMAP4rev2 (RFC 9051) against a real C{twistd mdpy} on
loopback over IMAPS: a raw client that ENABLEs IMAP4rev2 gets no C{RECENT}
and no C{\\Recent}, C{* ESEARCH} for SEARCH, also for a message that
arrives while it has the mailbox selected, and uses a saved result
(C{$}); Python's imaplib, an IMAP4rev1 client, then sees every message as
C{\\Recent} and gets C{* SEARCH}.  STATUS RECENT is C{BAD} for an imaplib
session that ENABLEd IMAP4rev2 and answered for one that did not.
"""

import imaplib

import pytest

from tests.server import newAccount, runningServer
from tests.test_e2e_imap import Raw, imaps, ok, status, verifyingContext

MESSAGE = b"From: ann@example.test\r\nSubject: hello\r\n\r\nHi\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(tmp_path_factory.mktemp("mdpy-imap-rev2"))


def test_rev2SessionBesideRev1(server):
    address, password = newAccount(server, "rev2")
    legacy = imaps(server, address, password)
    try:
        ok(legacy.append("INBOX", None, None, MESSAGE))
    finally:
        legacy.logout()
    client = Raw(server.imaps, verifyingContext(server))
    try:
        assert client.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 "), client.greeting
        client.command(b"l", b"LOGIN " + address.encode() + b" " + password.encode())
        assert client.command(b"e", b"ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2\r\n", b"e OK Enabled.\r\n"]
        reply = client.command(b"s", b"SELECT INBOX")
        assert b"* 1 EXISTS\r\n" in reply and not [line for line in reply if b"RECENT" in line], reply
        assert b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n' in reply, reply
        assert reply[-1] == b"s OK [READ-WRITE] Select completed.\r\n"
        assert client.command(b"b", b"ENABLE CONDSTORE IMAP4rev2")[-1].startswith(b"b BAD ")
        other = imaps(server, address, password)
        try:
            ok(other.append("INBOX", None, None, MESSAGE))
        finally:
            other.logout()
        assert client.command(b"n", b"NOOP") == [b"* 2 EXISTS\r\n", b"n OK NOOP completed.\r\n"]
        assert client.command(b"f", b"FETCH 1:* (FLAGS)") == [
            b"* 1 FETCH (FLAGS ())\r\n", b"* 2 FETCH (FLAGS ())\r\n", b"f OK Fetch completed.\r\n",
        ]
        assert client.command(b"u", b"UID SEARCH SUBJECT hello") == [
            b'* ESEARCH (TAG "u") UID ALL 1:2\r\n', b"u OK Search completed.\r\n",
        ]
        assert client.command(b"v", b"SEARCH RETURN (SAVE) NOT SEEN") == [b"v OK Search completed.\r\n"]
        assert client.command(b"w", b"UID FETCH $ (FLAGS)") == [
            b"* 1 FETCH (UID 1 FLAGS ())\r\n", b"* 2 FETCH (UID 2 FLAGS ())\r\n", b"w OK Fetch completed.\r\n",
        ]
        client.command(b"o", b"LOGOUT")
    finally:
        client.close()
    legacy = imaps(server, address, password)
    try:
        assert ok(legacy.select("INBOX")) == [b"2"]
        assert legacy.untagged_responses.get("RECENT") == [b"2"]
        assert ok(legacy.search(None, "RECENT")) == [b"1 2"]
    finally:
        legacy.logout()


def test_statusRecentOnlyForRev1(server):
    """
    RFC 9051 section 6.3.11 and appendix E: RECENT is no STATUS item in
    IMAP4rev2.
    """
    address, password = newAccount(server, "rev2status")
    client = imaps(server, address, password)
    try:
        ok(client.append("INBOX", None, None, MESSAGE))
        ok(client.enable("IMAP4rev2"))
        with pytest.raises(imaplib.IMAP4.error, match="RECENT is no status item in IMAP4rev2"):
            client.status("INBOX", "(MESSAGES RECENT)")
        assert status(client, "INBOX", "(MESSAGES)") == {b"MESSAGES": 1}
    finally:
        client.logout()
    legacy = imaps(server, address, password)
    try:
        assert status(legacy, "INBOX", "(MESSAGES RECENT)") == {b"MESSAGES": 1, b"RECENT": 1}
    finally:
        legacy.logout()


def test_searchKeysOfRecentOnlyForRev1(server):
    """
    RFC 9051 appendix E: RECENT, NEW and OLD are no search keys in
    IMAP4rev2; an IMAP4rev1 session still searches with them.
    """
    address, password = newAccount(server, "rev2search")
    client = imaps(server, address, password)
    try:
        ok(client.append("INBOX", None, None, MESSAGE))
        ok(client.enable("IMAP4rev2"))
        ok(client.select("INBOX"))
        with pytest.raises(imaplib.IMAP4.error, match="RECENT, NEW and OLD are no search keys in IMAP4rev2"):
            client.search(None, "NEW")
        assert client.search(None, "ALL")[0] == "OK"
    finally:
        client.logout()
    legacy = imaps(server, address, password)
    try:
        ok(legacy.select("INBOX"))
        assert legacy.search(None, "RECENT") == ("OK", [b"1"])
    finally:
        legacy.logout()
