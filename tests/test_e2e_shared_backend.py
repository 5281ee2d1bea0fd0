"""
End-to-end tests of what the files backend shares with the other
processes on its data directory (the workers of one server, the C{mdpy}
command): a real C{twistd mdpy} on loopback, real POP3 clients, and
another process (L{tests.server.OtherProcess}) using the same backend.

 - A POP3 maildrop held by another process gets C{-ERR [IN-USE]} here
   (RFC 2449 section 8.1.8), and is free once that process is killed with
   C{kill -9}; one held here stops the other process.
 - Failed logins another process counted ban the guesser's address here.
"""

import poplib
import socket

import pytest

from tests.server import HOST, MdpyServer, OtherProcess, newAccount

ADDRESS_FAILURES = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MdpyServer(
        tmp_path_factory.mktemp("mdpy-shared-backend"),
        pop3Extra="allow_plaintext_auth = yes\n",
        extra="[auth]\nfailure_delay = 0.05s\nmax_failure_delay = 0.2s\naddress_failures = %d\n"
        % (ADDRESS_FAILURES,),
    )
    done = server.cli("domain", "add", "example.test")
    assert done.returncode == 0, done.stderr
    server.start()
    yield server
    server.stop()
    assert "Traceback" not in server.logText(), server.logText()[-5000:]


class POP3From(poplib.POP3):
    """
    A POP3 client connecting from a given loopback address (all of
    127.0.0.0/8 is local on Linux: each is another client to the server).
    """

    def __init__(self, port, source="127.0.0.1"):
        self._source = source
        poplib.POP3.__init__(self, HOST, port, timeout=30)

    def _create_socket(self, timeout):
        return socket.create_connection((HOST, self.port), timeout=timeout, source_address=(self._source, 0))


def login(server, address, password, source="127.0.0.1"):
    """
    @return: the connected client, logged in, or the reply refusing the
        login (and the client closed).
    """
    client = POP3From(server.pop3, source)
    try:
        client.user(address)
        client.pass_(password)
    except poplib.error_proto as e:
        client.close()
        return e.args[0]
    return client


def test_aMaildropHeldByAnotherProcess(server):
    """
    Another process holds the maildrop: the login gets C{[IN-USE]}; once
    it is killed (no release, no clean exit) the next login gets in.
    """
    address, password = newAccount(server, "inuse")
    other = OtherProcess(server.dataDir, "assert backend.maildropLocks.acquire(%r, object())" % (address,))
    try:
        refused = login(server, address, password)
        assert isinstance(refused, bytes) and refused.startswith(b"-ERR [IN-USE]"), refused
    finally:
        other.kill()
    client = login(server, address, password)
    assert not isinstance(client, bytes), client
    client.quit()


def test_aMaildropHeldHereStopsAnotherProcess(server):
    """
    A POP3 session in TRANSACTION state holds the maildrop for every
    process; after QUIT another process can take it.
    """
    address, password = newAccount(server, "held")
    script = "print(backend.maildropLocks.acquire(%r, object()))" % (address,)
    client = login(server, address, password)
    assert not isinstance(client, bytes), client
    other = OtherProcess(server.dataDir, script)
    other.kill()
    assert other.output == ["False"]
    client.quit()
    other = OtherProcess(server.dataDir, script)
    other.kill()
    assert other.output == ["True"]


def test_failuresCountedByAnotherProcessBanHere(server):
    """
    A guesser spread its guesses over another process sharing the backend
    (another worker): this server counts them, and refuses even the right
    password from that address; another address still logs in.
    """
    address, password = newAccount(server, "spread")
    guesser = "127.0.0.77"
    other = OtherProcess(
        server.dataDir,
        "from twisted.internet import reactor\n"
        "from mdpy.auth.checkers import FailedLoginTracker\n"
        "tracker = FailedLoginTracker(reactor, banThreshold=%d, failures=backend.loginFailures)\n"
        "for n in range(%d):\n"
        "    tracker.recordFailure(%r, %r, tracker.digestPassword('guess%%d' %% n))\n"
        % (ADDRESS_FAILURES, ADDRESS_FAILURES, guesser, address),
    )
    other.kill()
    refused = login(server, address, password, source=guesser)
    assert isinstance(refused, bytes) and refused.startswith(b"-ERR"), refused
    client = login(server, address, password, source="127.0.0.78")
    assert not isinstance(client, bytes), client
    client.quit()
