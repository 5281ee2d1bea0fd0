"""
End-to-end test, with Python's imaplib over IMAPS against a real C{twistd
mdpy} on loopback, of SORT, ESORT, SORT=DISPLAY and THREAD on a Maildir.
"""

import pytest

from tests.server import newAccount, runningServer
from tests.test_e2e_imap import imaps, ok, storeDeliver


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(tmp_path_factory.mktemp("mdpy-imap-sort"))


def test_sortAndThread(server):
    address, password = newAccount(server, "sorter")
    storeDeliver(server, address, [
        b"From: Zack <dan@x.test>\r\nSubject: meeting\r\nMessage-ID: <1@x.test>\r\n"
        b"Date: Wed, 03 Jan 2024 00:00:00 +0000\r\n\r\none\r\n",
        b"From: ann@x.test\r\nSubject: Re: meeting\r\nMessage-ID: <2@x.test>\r\nIn-Reply-To: <1@x.test>\r\n"
        b"Date: Thu, 04 Jan 2024 00:00:00 +0000\r\n\r\ntwo, a longer body\r\n",
        b"From: Bob <cid@x.test>\r\nSubject: [list] Agenda\r\nMessage-ID: <3@x.test>\r\n"
        b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n3\r\n",
    ])
    client = imaps(server, address, password)
    try:
        capabilities = ok(client.capability())[0].split()
        for name in (b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT"):
            assert name in capabilities
        ok(client.select("INBOX"))
        assert ok(client.sort("(DATE)", "UTF-8", "ALL")) == [b"3 1 2"]
        assert ok(client.sort("(SUBJECT REVERSE DATE)", "US-ASCII", "ALL")) == [b"3 2 1"]
        assert ok(client.sort("(DISPLAYFROM)", "UTF-8", "ALL")) == [b"2 3 1"]
        assert ok(client.sort("(REVERSE SIZE)", "UTF-8", "NOT", "FROM", "bob")) == [b"2 1"]
        assert ok(client.thread("REFERENCES", "UTF-8", "ALL")) == [b"(3)(1 2)"]
        assert ok(client.thread("ORDEREDSUBJECT", "US-ASCII", "ALL")) == [b"(3)(1 2)"]
        uids = ok(client.uid("SEARCH", "ALL"))[0].split()
        assert ok(client.uid("SORT", "(DATE)", "UTF-8", "ALL")) == [b" ".join([uids[2], uids[0], uids[1]])]
        assert ok(client.uid("THREAD", "REFERENCES", "UTF-8", "1:2")) == [b"(%s %s)" % (uids[0], uids[1])]
        typ, data = client._simple_command("SORT", "RETURN", "(MIN MAX COUNT)", "(DATE)", "UTF-8", "ALL")
        assert typ == "OK"
        assert client.untagged_responses.pop("ESEARCH")[0].endswith(b"MIN 3 MAX 2 COUNT 3")
        typ, data = client.sort("(DATE)", "KOI8-R", "ALL")
        assert (typ, data) == ("NO", [b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset."])
        # A message that arrives later is sorted in, its fields read then.
        storeDeliver(server, address, [
            b"From: amy@x.test\r\nSubject: Re: agenda\r\nDate: Tue, 02 Jan 2024 00:00:00 +0000\r\n\r\n4\r\n",
        ])
        ok(client.noop())
        assert ok(client.sort("(DATE)", "UTF-8", "ALL")) == [b"3 4 1 2"]
        assert ok(client.thread("REFERENCES", "UTF-8", "ALL")) == [b"(3 4)(1 2)"]
    finally:
        client.logout()
