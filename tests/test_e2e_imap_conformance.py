"""
End-to-end tests, with Python's imaplib over IMAPS against a real C{twistd
mdpy} on loopback, of the protocol details Dovecot's imaptest checks:
atoms holding C{[}, LSUB and LIST (SUBSCRIBED RECURSIVEMATCH) parents,
address SEARCH, implicit CONDSTORE and keywords announced in FLAGS.
"""

import re

import pytest

from tests.server import newAccount, runningServer
from tests.test_e2e_imap import imaps, ok, storeDeliver


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(tmp_path_factory.mktemp("mdpy-imap-conformance"))


def test_mailboxesAndSubscriptions(server):
    address, password = newAccount(server, "conformance")
    client = imaps(server, address, password)
    try:
        assert client.select("!#$&'+,-.0123456789:;<=>?@^_`|[}")[0] == "NO"
        ok(client.create("box/test[1}"))
        ok(client.create("box/test2/test1"))
        ok(client.subscribe("box/test[1}"))
        ok(client.subscribe("box/test2/test1"))
        assert ok(client.lsub('""', "box/%")) == [b'(\\Noselect) "/" "box/test2"', b'() "/" "box/test[1}"']
        assert ok(client.list('(SUBSCRIBED RECURSIVEMATCH) ""', "box/%")) == [
            b'(\\HasChildren) "/" "box/test2" ("CHILDINFO" ("SUBSCRIBED"))',
            b'(\\HasNoChildren \\Subscribed) "/" "box/test[1}"',
        ]
        assert ok(client.list('(SUBSCRIBED RECURSIVEMATCH) ""', "(box/test2 box/test2/test1)")) == [
            b'(\\HasNoChildren \\Subscribed) "/" "box/test2/test1"',
        ]
    finally:
        client.logout()


def test_searchCondstoreAndKeywords(server):
    address, password = newAccount(server, "condstore")
    storeDeliver(server, address, [
        b"From: <user-from (comment)@ (comment) domain.org>\r\nSubject: one\r\n\r\nbody\r\n",
        b"From: other@domain.org\r\nSubject: two\r\n\r\nbody\r\n",
    ])
    one, two = imaps(server, address, password), imaps(server, address, password)
    try:
        for client in (one, two):
            ok(client.select("INBOX"))
            for name in ("HIGHESTMODSEQ", "FLAGS", "PERMANENTFLAGS"):
                client.response(name)
        assert ok(one.search(None, "FROM", "user-from@domain.org")) == [b"1"]
        # FETCH MODSEQ enables CONDSTORE: OK [HIGHESTMODSEQ], then STORE
        # replies carry UID and MODSEQ.
        [fetched] = ok(one.fetch("1", "(MODSEQ)"))
        assert re.fullmatch(rb"1 \(MODSEQ \([0-9]+\)\)", fetched), fetched
        [highest] = one.response("HIGHESTMODSEQ")[1]
        assert int(highest.split()[0]) >= 1, highest
        [stored] = ok(one.store("1", "+FLAGS", "($hello)"))
        # \Recent: this session was the first to select INBOX.
        assert stored.startswith(b"1 (UID 1 FLAGS ($hello \\Recent) MODSEQ (") and stored.endswith(b"))"), stored
        flags = one.response("FLAGS")[1]
        assert flags and b"$hello" in flags[-1], flags
        # The other session is told of the new keyword before its FETCH.
        ok(two.noop())
        flags = two.response("FLAGS")[1]
        assert flags and b"$hello" in flags[-1], flags
        assert [b"$hello" in line for line in two.response("PERMANENTFLAGS")[1]] == [True]
    finally:
        one.logout()
        two.logout()
