"""
End-to-end tests of the change feed: a real C{twistd mdpy} on loopback, an
IMAP client idling in it (imaplib), and mail put into the store by another
process: a program using the Maildir store API on the server's data
directory, and a program that drops a file into a folder's C{new/}.

The server looks for changes by itself only every 30 seconds while a
client idles, so an C{EXISTS} within the generous bound asserted here
shows the change reached it through the feed.  The measured latency is
printed (C{pytest -s}); C{bench/changefeed_bench.py} measures it properly.
A server stopped while a client has a folder selected (so watched) logs no
failure.
"""

import imaplib
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.server import HOST, MdpyServer, makeMessage, newAccount, runningServer, waitForBanner

# Far above the 100 ms the feed is built for, far below the 30 s poll.
BOUND = 1.0

DELIVER = """
import sys, time
from twisted.internet import defer
from mdpy.backends.files.maildir import MaildirStore

root, address, folder, data = sys.argv[1:5]
store = MaildirStore(root, runInThread=lambda f, *args: defer.maybeDeferred(f, *args))
outcome = []
store.deliver([(address, folder, [data.encode()])]).addBoth(outcome.append)
assert outcome == [None], outcome
print(repr(time.time()))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(
        tmp_path_factory.mktemp("mdpy-changefeed"), imapExtra="allow_plaintext_auth = yes\n"
    )


def idling(server, address, password, folder="INBOX"):
    """
    @return: an imaplib client that selected C{folder} and is idling, and
        the tag of its IDLE.
    """
    client = imaplib.IMAP4(HOST, server.imap, timeout=30)
    client.login(address, password)
    typ, data = client.select(folder)
    assert typ == "OK", data
    tag = client._new_tag()
    client.send(tag + b" IDLE\r\n")
    assert client.readline().startswith(b"+")
    # Short reads: a missing EXISTS fails the test instead of hanging it.
    client.sock.settimeout(10)
    return client, tag


def arrival(client, line):
    """
    Read until C{line}.

    @return: the time it arrived.
    """
    seen = []
    try:
        while True:
            seen.append(client.readline())
            if seen[-1] == line:
                return time.time()
    except socket.timeout:
        raise AssertionError("no %r while idling; read %r" % (line, seen))


def done(client, tag):
    """
    End the IDLE and log out.
    """
    client.send(b"DONE\r\n")
    typ, data = client._command_complete("IDLE", tag)
    assert typ == "OK", data
    assert client.logout()[0] == "BYE"


def test_idleHearsMailAnotherProcessDelivers(server):
    """
    A message delivered through the store API by another process reaches
    the idling client as C{* 1 EXISTS} at once.
    """
    address, password = newAccount(server, "feed")
    client, tag = idling(server, address, password)
    deliverer = subprocess.Popen(
        [sys.executable, "-c", DELIVER, os.path.join(server.dataDir, "mail"), address, "INBOX",
         makeMessage("delivered elsewhere").decode()],
        stdout=subprocess.PIPE,
        text=True,
    )
    arrived = arrival(client, b"* 1 EXISTS\r\n")
    out, _ = deliverer.communicate(timeout=30)
    assert deliverer.returncode == 0
    latency = arrived - float(out)
    print("EXISTS %.1f ms after the other process's delivery" % (latency * 1000,))
    assert latency < BOUND
    done(client, tag)


def test_idleHearsFileDroppedIntoNew(server):
    """
    A file another program writes in C{tmp/} and renames into C{new/} of a
    folder other than INBOX reaches the client idling in that folder.
    """
    address, password = newAccount(server, "drop")
    client = imaplib.IMAP4(HOST, server.imap, timeout=30)
    client.login(address, password)
    assert client.create("Lists")[0] == "OK"
    client.logout()
    client, tag = idling(server, address, password, "Lists")
    folder = server.maildir(address, ".Lists")
    name = "%d.M1P%d.elsewhere" % (time.time(), os.getpid())
    with open(os.path.join(folder, "tmp", name), "wb") as f:
        f.write(makeMessage("dropped in"))
    os.rename(os.path.join(folder, "tmp", name), os.path.join(folder, "new", name))
    dropped = time.time()
    latency = arrival(client, b"* 1 EXISTS\r\n") - dropped
    print("EXISTS %.1f ms after the file was dropped into new/" % (latency * 1000,))
    assert latency < BOUND
    done(client, tag)


def test_stopWhileAFolderIsWatched(tmp_path):
    """
    SIGTERM while a session has the INBOX selected, its directories
    watched by inotify: the server stops cleanly, nothing logged as a
    failure.  Which the reactor closes first, the session's connection or
    the inotify reader, varies from one stop to the next: several stops.
    """
    server = MdpyServer(tmp_path, imapExtra="allow_plaintext_auth = yes\n")
    assert server.cli("domain", "add", "example.test").returncode == 0
    address, password = newAccount(server, "stopping")
    for attempt in range(5):
        server.start()
        try:
            waitForBanner(server.imap, process=server.process)
            client = imaplib.IMAP4(HOST, server.imap, timeout=30)
            client.login(address, password)
            assert client.select("INBOX")[0] == "OK"
        finally:
            server.stop()
        client.shutdown()
        log = server.logText()
        for failure in ("Traceback", "Bad file descriptor", "EBADF"):
            assert failure not in log, (attempt, log[-3000:])
