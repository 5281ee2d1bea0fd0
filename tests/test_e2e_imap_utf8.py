"""
End-to-end test of IMAP UTF8=ACCEPT (RFC 6855) against a real C{twistd
mdpy} on loopback over IMAPS: a raw client that ENABLEs it names mailboxes
in UTF-8 and APPENDs a message with UTF-8 headers as C{UTF8 (~{n})}; Python's
imaplib, which does not enable it, sees the same mailbox in modified UTF-7.
"""

import pytest

from tests.server import newAccount, runningServer
from tests.test_e2e_imap import CRLF, Raw, imaps, ok, verifyingContext


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(tmp_path_factory.mktemp("mdpy-imap-utf8"))


def test_utf8AcceptAndLegacyClient(server):
    address, password = newAccount(server, "utf8")
    name = "Grüße/日本語".encode("utf-8")
    message = "From: jörg@example.test\r\nSubject: Grüße aus 日本\r\n\r\nHallo\r\n".encode("utf-8")
    client = Raw(server.imaps, verifyingContext(server))
    try:
        reply = client.command(b"l", b"LOGIN " + address.encode() + b" " + password.encode())
        assert b" UTF8=ACCEPT" in reply[-1], reply
        assert client.command(b"e", b"ENABLE UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT\r\n", b"e OK Enabled.\r\n"]
        assert client.command(b"c", b'CREATE "' + name + b'"')[-1] == b"c OK Create completed.\r\n"
        client.send(b'a APPEND "' + name + b'" UTF8 (~{%d}\r\n' % (len(message),))
        assert client.line() == b"+ OK\r\n"
        client.send(message + b")" + CRLF)
        reply = client.until(b"a")
        assert reply[-1].startswith(b"a OK [APPENDUID "), reply
        assert client.command(b"b", b'LIST "" "Gr*"') == [
            b'* LIST (\\HasChildren) "/" "Gr\xc3\xbc\xc3\x9fe"\r\n',
            b'* LIST (\\HasNoChildren) "/" "' + name + b'"\r\n',
            b"b OK List completed.\r\n",
        ]
        client.command(b"l", b"LOGOUT")
    finally:
        client.close()
    legacy = imaps(server, address, password)
    try:
        mutf7 = "Gr&APwA3w-e/&ZeVnLIqe-"
        assert ok(legacy.list('""', "Gr*")) == [
            b'(\\HasChildren) "/" "Gr&APwA3w-e"',
            b'(\\HasNoChildren) "/" "%s"' % (mutf7.encode(),),
        ]
        assert ok(legacy.select('"%s"' % (mutf7,))) == [b"1"]
        [(_, fetched), _] = ok(legacy.fetch("1", "(BODY.PEEK[])"))
        assert fetched.endswith(message)
    finally:
        legacy.logout()
