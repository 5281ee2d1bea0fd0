"""
End-to-end test, with a raw socket client against a real C{twistd mdpy} on
loopback, of CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 section 4): an
updating search follows, while it idles, what another connection changes;
CANCELUPDATE ends it; PARTIAL pages a sort.
"""

import re
import socket

import pytest

from tests.server import HOST, newAccount, runningServer
from tests.test_e2e_imap import storeDeliver
from tests.test_e2e_imaptest import LineClient

TIMEOUT = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(tmp_path_factory.mktemp("mdpy-imap-contexts"), imapExtra="allow_plaintext_auth = yes\n")


class RawClient(LineClient):
    """
    IMAP over a plain socket, line by line, as L{bytes}.
    """

    def __init__(self, server, address, password):
        LineClient.__init__(self, socket.create_connection((HOST, server.imap), timeout=TIMEOUT))
        assert self.line().startswith(b"* OK")
        self.command(b'l LOGIN "%s" "%s"' % (address.encode(), password.encode()))
        self.command(b"s SELECT INBOX")

    def line(self):
        return LineClient.line(self).encode("utf-8")

    def until(self, wanted):
        """
        @return: the lines read up to the first that C{wanted} matches, it
            included.
        """
        lines = [self.line()]
        while not re.match(wanted, lines[-1]):
            lines.append(self.line())
        return lines

    def command(self, text):
        """
        @return: the untagged lines of the command, which must end in OK.
        """
        tag = text.split(b" ", 1)[0]
        self.sock.sendall(text + b"\r\n")
        lines = self.until(re.escape(tag) + b" ")
        assert lines[-1].startswith(tag + b" OK"), lines
        return lines[:-1]

    def close(self):
        self.sock.sendall(b"z LOGOUT\r\n")
        self.until(b"z ")
        self.sock.close()


def test_updating_search_follows_another_connection(server):
    address, password = newAccount(server, "contexts")
    storeDeliver(server, address, [
        b"Subject: one\r\n\r\n" + b"x" * 300 + b"\r\n",
        b"Subject: two\r\n\r\n" + b"x" * 100 + b"\r\n",
        b"Subject: three\r\n\r\n" + b"x" * 200 + b"\r\n",
    ])
    watcher = RawClient(server, address, password)
    changer = RawClient(server, address, password)
    try:
        assert b"CONTEXT=SEARCH" in watcher.command(b"c CAPABILITY")[0].split()
        [uids] = changer.command(b"u UID SEARCH ALL")
        uid1, uid2, uid3 = uids.split()[2:]
        assert watcher.command(b"a1 UID SEARCH RETURN (UPDATE ALL) UNSEEN") == [
            b'* ESEARCH (TAG "a1") UID ALL %s:%s' % (uid1, uid3)
        ]
        # SIZE orders them 2 3 1: the second page of one.
        assert watcher.command(b"p SORT RETURN (PARTIAL 2:2 COUNT) (SIZE) US-ASCII ALL") == [
            b'* ESEARCH (TAG "p") COUNT 3 PARTIAL (2:2 3)'
        ]
        assert watcher.command(b"s1 SORT RETURN (UPDATE) (REVERSE SIZE) US-ASCII BODY new") == [
            b'* ESEARCH (TAG "s1")'
        ]
        watcher.sock.sendall(b"i IDLE\r\n")
        assert watcher.line() == b"+ idling"

        changer.command(b"b1 STORE 1 +FLAGS (\\Seen)")
        lines = watcher.until(b"\\* ESEARCH")
        assert lines[-1] == b'* ESEARCH (TAG "a1") UID REMOVEFROM (0 %s)' % (uid1,)

        new = b"Subject: four\r\n\r\nnew\r\n"
        changer.command(b"b2 APPEND INBOX {%d+}\r\n%s" % (len(new), new))
        lines = watcher.until(b'\\* ESEARCH \\(TAG "s1"\\)')
        assert lines.index(b"* 4 EXISTS") < lines.index(b'* ESEARCH (TAG "a1") UID ADDTO (0 %d)' % (int(uid3) + 1,))
        # The new message was read on the server to be searched and sorted.
        assert lines[-1] == b'* ESEARCH (TAG "s1") ADDTO (1 4)'

        changer.command(b"b3 STORE 2 +FLAGS.SILENT (\\Deleted)")
        changer.command(b"b4 EXPUNGE")
        lines = watcher.until(b"\\* 2 EXPUNGE")
        assert b'* ESEARCH (TAG "a1") UID REMOVEFROM (0 %s)' % (uid2,) in lines

        watcher.sock.sendall(b"DONE\r\n")
        watcher.until(b"i OK")
        assert watcher.command(b'a2 CANCELUPDATE "a1"') == []
        changer.command(b"b5 STORE 1:* -FLAGS.SILENT (\\Seen)")
        assert not any(line.startswith(b"* ESEARCH") for line in watcher.command(b"a3 NOOP"))
        watcher.sock.sendall(b'a4 CANCELUPDATE "a1"\r\n')
        assert watcher.until(b"a4 ") == [b"a4 NO Unknown tag."]
    finally:
        watcher.close()
        changer.close()
