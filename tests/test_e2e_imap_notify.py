"""
End-to-end test of NOTIFY (RFC 5465) against a real C{twistd mdpy} on
loopback, over IMAPS with raw sockets: a session that asked for
notifications hears, without sending a command, what a second session
(APPEND, STORE, EXPUNGE, CREATE) and another process (a delivery straight
into the Maildir, a folder made there) change.
"""

import os
import re

import pytest

from mdpy.backends.files.maildir import MaildirStore

from tests.server import newAccount, runningServer
from tests.test_e2e_imap import Raw, message, storeDeliver, verifyingContext


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(tmp_path_factory.mktemp("mdpy-imap-notify"))


def session(server, address, password):
    """
    @return: a L{Raw} connection over IMAPS, logged in.
    """
    raw = Raw(server.imaps, verifyingContext(server))
    assert raw.command(b"l", b"LOGIN %s %s" % (address.encode(), password.encode()))[-1].startswith(b"l OK")
    return raw


def heard(raw, pattern):
    """
    Read what the server sends unasked until a line matches C{pattern}
    (the socket's time limit ends a wait for a line that never comes).

    @return: the lines read, the matching one last.
    """
    lines = []
    while not lines or not re.match(pattern, lines[-1]):
        line = raw.line()
        assert line, lines
        assert not line.startswith(b"* BYE"), lines + [line]
        lines.append(line)
    return lines


def test_unsolicited_responses(server):
    address, password = newAccount(server, "notify")
    first, second = session(server, address, password), session(server, address, password)
    try:
        assert first.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        lines = first.command(b"n", b"NOTIFY SET STATUS (SELECTED (MessageNew MessageExpunge FlagChange)) "
                                    b"(PERSONAL (MessageNew MessageExpunge MailboxName))")
        assert lines[-1] == b"n OK NOTIFY completed.\r\n", lines
        assert b'* STATUS "Sent" (MESSAGES 0 ' in b"".join(lines)
        assert b'* STATUS "INBOX"' not in b"".join(lines)  # the selected one

        data = message("appended")
        second.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(data), data))
        assert second.until(b"a")[-1].startswith(b"a OK")
        assert heard(first, rb"\* 1 EXISTS")[-1] == b"* 1 EXISTS\r\n"

        assert second.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        assert second.command(b"f", b"STORE 1 +FLAGS (\\Flagged)")[-1].startswith(b"f OK")
        assert heard(first, rb"\* 1 FETCH")[-1] == b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n"

        assert second.command(b"c", b"CREATE Work")[-1].startswith(b"c OK")
        assert heard(first, rb"\* LIST")[-1] == b'* LIST (\\HasNoChildren) "/" "Work"\r\n'
        second.send(b"w APPEND Work {%d+}\r\n%s\r\n" % (len(data), data))
        assert second.until(b"w")[-1].startswith(b"w OK")
        # The folder was told of as made by its LIST alone: its first STATUS
        # tells of the message.
        lines = heard(first, rb'\* STATUS "Work"')
        assert lines[-1].startswith(b'* STATUS "Work" (MESSAGES 1 UIDNEXT 2 '), lines

        # Another process: a delivery straight into the Maildir, a folder
        # made there.
        storeDeliver(server, address, [message("filed")], folder="Sent")
        assert heard(first, rb'\* STATUS "Sent"')[-1].startswith(b'* STATUS "Sent" (MESSAGES 1 UIDNEXT 2 ')
        MaildirStore(os.path.join(server.dataDir, "mail")).createMailbox(address, "Elsewhere")
        assert heard(first, rb"\* LIST")[-1] == b'* LIST (\\HasNoChildren) "/" "Elsewhere"\r\n'

        assert second.command(b"d", b"STORE 1 +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"d OK")
        assert second.command(b"e", b"EXPUNGE")[-1].startswith(b"e OK")
        assert heard(first, rb"\* 1 EXPUNGE")[-1] == b"* 1 EXPUNGE\r\n"

        assert first.command(b"o", b"NOTIFY NONE") == [b"o OK NOTIFY completed.\r\n"]
        assert second.command(b"x", b"CREATE Quiet")[-1].startswith(b"x OK")
        assert first.command(b"p", b"NOOP") == [b"p OK NOOP completed.\r\n"]
    finally:
        first.close()
        second.close()
