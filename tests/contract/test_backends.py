"""
Choosing a backend: L{mdpy.backends.load} by C{[server] backend}, and a
backend of the tests' own (L{tests.contract.flaky}) loaded by the server
through its configuration, failing every fourth commit: the client gets a
temporary failure and nothing of that message is stored.
"""

import imaplib
import os
import smtplib
import ssl

import pytest
from zope.interface.verify import verifyObject

from mdpy import backends
from mdpy.backends.files import FilesBackend
from mdpy.backends.memory import MemoryBackend
from mdpy.config import ConfigError
from mdpy.errors import InvalidInput
from mdpy.interfaces import IBackend
from mdpy.tap import buildService
from mdpy.testing import resultOf
from tests.contract.conftest import configFor
from tests.contract.flaky import FlakyBackend
from tests.server import HOST, MdpyServer, checkoutFirst, makeMessage
from tests.test_tap import MemoryReactor

FLAKY = "tests.contract.flaky:FlakyBackend"


@pytest.mark.parametrize("name, kind", [("files", FilesBackend), ("memory", MemoryBackend), (FLAKY, FlakyBackend)])
def test_loadByName(tmp_path, name, kind):
    backend = backends.load(name, configFor(tmp_path, name))
    try:
        assert type(backend) is kind
        assert verifyObject(IBackend, backend)
    finally:
        backend.close()


@pytest.mark.parametrize("name", ["nothing", "tests.contract.flaky:Missing", "no.such.module:Class", "x:"])
def test_unknownBackendIsRefused(tmp_path, name):
    with pytest.raises(InvalidInput):
        backends.load(name, configFor(tmp_path, name))
    with pytest.raises(ConfigError, match=r"\[server\] backend"):
        buildService(configFor(tmp_path, name), reactor=MemoryReactor())


def test_serverHandsTheBackendToEveryProtocol(tmp_path):
    """
    The server builds the configured backend first; the protocols work on
    its store, directory, queue and locks, and nothing else keeps mail.
    """
    top = buildService(configFor(tmp_path, FLAKY), reactor=MemoryReactor())
    backend = top.backend
    assert type(backend) is FlakyBackend
    listeners = {child.name: child for child in top}
    assert listeners["imap"].factory.store is backend.store
    assert listeners["pop3"].factory.store is backend.store
    assert listeners["pop3"].factory.locks is backend.maildropLocks
    assert listeners["relay"].queue is backend.queue
    pipeline = listeners["smtp"].factory.target
    assert pipeline.store is backend.store and pipeline.directory is backend.directory
    # Password hashes are checked where the backend runs blocking work.
    checkers = set(listeners["imap"].factory.portal.checkers.values())
    assert [checker._runInThread for checker in checkers] == [backend.runBlocking]
    # The first start made the postmaster in the backend, not on disk.
    assert resultOf(backend.store.accountExists("postmaster@example.com"))
    assert not (tmp_path / "data" / "mail").exists()


def test_failingCommitsOverSMTP(tmp_path, monkeypatch):
    """
    Through a real server on the failing backend: of eight messages, the
    fourth and the eighth get 451 and are not stored; the others are, and
    an IMAP client sees exactly those.
    """
    monkeypatch.setenv("PYTHONPATH", checkoutFirst(os.environ.get("PYTHONPATH")))
    server = MdpyServer(tmp_path, serverExtra="backend = %s\n" % (FLAKY,))
    server.start()
    try:
        address, password = open(tmp_path / "data" / "postmaster.password").read().split()
        replies = []
        with smtplib.SMTP(HOST, server.smtp, timeout=30) as client:
            for n in range(1, 9):
                try:
                    client.sendmail("sender@remote.test", [address], makeMessage("message %d" % (n,)))
                    replies.append(250)
                except smtplib.SMTPDataError as e:
                    replies.append(e.smtp_code)
        assert replies == [250, 250, 250, 451, 250, 250, 250, 451]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        imap = imaplib.IMAP4_SSL(HOST, server.imaps, ssl_context=context, timeout=30)
        try:
            imap.login(address, password)
            status, [count] = imap.select("INBOX", readonly=True)
            assert status == "OK" and count == b"6"
            status, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            subjects = [part[1].strip() for part in data if isinstance(part, tuple)]
            assert subjects == [b"Subject: message %d" % (n,) for n in (1, 2, 3, 5, 6, 7)]
        finally:
            imap.logout()
    finally:
        server.stop()
    log = server.logText()
    assert "Traceback" not in log, log[-3000:]
    assert not (tmp_path / "data" / "mail").exists()
