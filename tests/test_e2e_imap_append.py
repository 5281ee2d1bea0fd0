"""
End-to-end test of large IMAP APPENDs against a real C{twistd mdpy}: many
clients with 48 MiB literals under way at once cost the server disk, not
memory, and every message is stored intact (hardening-vectors section 3).
"""

import base64
import hashlib
import os
import re
import socket

import pytest

from tests.server import HOST, newAccount, runningServer, waitUntil

CRLF = b"\r\n"
MIB = 1024 * 1024
LITERAL = 48 * MIB
HELD_BACK = 1000
# [imap] max_pending_literal_size of the test server: two 48 MiB literals
# per account fit, a third does not.
PENDING_LIMIT = 100 * MIB
# How much the server's memory may grow while 8 such literals are under way
# (held whole in memory they would be 384 MiB).
MEMORY_BOUND = 64 * MIB


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(
        tmp_path_factory.mktemp("mdpy-imap-append"),
        imapExtra="allow_plaintext_auth = yes\nmax_message_size = 50M\n"
        "max_pending_literal_size = %d\n" % (PENDING_LIMIT,),
    )


class Client:
    """
    An IMAP connection over a bare socket, logged in.
    """

    def __init__(self, server, address, password):
        self.sock = socket.create_connection((HOST, server.imap), timeout=60)
        self.buffer = b""
        assert self.line().startswith(b"* OK")
        self.sock.sendall(b"l LOGIN %s %s\r\n" % (address.encode(), password.encode()))
        assert self.line().startswith(b"l OK"), self.buffer

    def line(self):
        while CRLF not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += data
        line, self.buffer = self.buffer.split(CRLF, 1)
        return line

    def close(self):
        self.sock.close()


def bodyOf(size):
    """
    @return: C{size} octets of base64 lines of random data, CR LF ended.
    """
    lines = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", CRLF)
    return lines[: size - 2] + CRLF


def memory(pid):
    """
    @return: C{(VmRSS, VmHWM)} of process C{pid}, in octets.
    """
    with open("/proc/%d/status" % (pid,)) as f:
        status = f.read()
    return tuple(int(re.search(r"^%s:\s+(\d+) kB" % (name,), status, re.M).group(1)) * 1024
                 for name in ("VmRSS", "VmHWM"))


def spoolFiles(server):
    """
    @return: the sizes of the files the server has open in its IMAP spool
        folder (they have no names, only descriptors).
    """
    spool = os.path.join(server.dataDir, "spool", "imap") + "/"
    sizes = []
    fds = "/proc/%d/fd" % (server.process.pid,)
    for fd in os.listdir(fds):
        try:
            if os.readlink(os.path.join(fds, fd)).startswith(spool):
                sizes.append(os.stat(os.path.join(fds, fd)).st_size)
        except OSError:
            continue
    return sorted(sizes)


def test_eightPendingAppendsOf48MiBKeepTheServerSmall(server):
    """
    Eight clients (two per account) each send all but the last octets of a
    48 MiB APPEND and hold: the literals are spooled to unnamed files under
    C{data_dir/spool/imap} as they arrive, and the server's resident memory
    stays within L{MEMORY_BOUND} of what it was, at its peak too.  A third
    literal for an account past C{max_pending_literal_size} gets C{NO
    [LIMIT]} instead of C{+}; a client that drops its connection half-way
    leaves no spool file.  Completed, every message is stored intact.
    """
    pid = server.process.pid
    accounts = [newAccount(server, "big") for _ in range(5)]
    body = bodyOf(LITERAL - 100)
    heads = [b"Subject: big %d\r\nX-Filler: " % n for n in range(8)]
    heads = [head + b"f" * (100 - 4 - len(head)) + b"\r\n\r\n" for head in heads]
    assert all(len(head) == 100 for head in heads)
    expected = sorted(hashlib.sha256(head + body).hexdigest() for head in heads)

    clients = [Client(server, *accounts[n // 2]) for n in range(8)]
    rssBefore, hwmBefore = memory(pid)
    try:
        for head, client in zip(heads, clients):
            client.sock.sendall(b"a APPEND INBOX {%d}\r\n" % (LITERAL,))
            assert client.line() == b"+ OK"
            client.sock.sendall(head)
            client.sock.sendall(memoryview(body)[:-HELD_BACK])
        waitUntil(
            lambda: len(spoolFiles(server)) == 8 and min(spoolFiles(server)) >= LITERAL - HELD_BACK - 64 * 1024,
            what="the literals to be spooled",
        )
        rssPending, hwmPending = memory(pid)
        assert rssPending - rssBefore < MEMORY_BOUND, (rssBefore, rssPending)
        assert hwmPending <= max(hwmBefore, rssBefore + MEMORY_BOUND), (rssBefore, hwmBefore, hwmPending)

        # A third 48 MiB literal for the first account: refused before "+".
        third = Client(server, *accounts[0])
        third.sock.sendall(b"t APPEND INBOX {%d}\r\n" % (LITERAL,))
        assert re.match(rb"t NO \[LIMIT\] ", third.line())
        third.close()

        # A client gone half-way through its literal leaves no spool file.
        dropped = Client(server, *accounts[4])
        dropped.sock.sendall(b"d APPEND INBOX {%d}\r\n" % (LITERAL,))
        assert dropped.line() == b"+ OK"
        dropped.sock.sendall(memoryview(body)[: LITERAL // 2])
        waitUntil(lambda: len(spoolFiles(server)) == 9, what="a spool file for the client that will drop")
        dropped.close()
        waitUntil(lambda: len(spoolFiles(server)) == 8, what="the dropped client's spool file to go")

        for client in clients:
            client.sock.sendall(body[-HELD_BACK:] + CRLF)
        for client in clients:
            assert re.match(rb"a OK \[APPENDUID \d+ \d+\] Append completed\.", client.line())
        # The files go as each command ends, just after its reply.
        waitUntil(lambda: spoolFiles(server) == [], what="the spool files to go")
        _, hwmAfter = memory(pid)
        assert hwmAfter <= max(hwmBefore, rssBefore + MEMORY_BOUND), (rssBefore, hwmBefore, hwmAfter)
    finally:
        for client in clients:
            client.close()

    stored = []
    for address, _ in accounts[:4]:
        for data in server.messages(address):
            assert len(data) == LITERAL
            stored.append(hashlib.sha256(data).hexdigest())
    assert sorted(stored) == expected
    assert server.messages(accounts[4][0]) == []
