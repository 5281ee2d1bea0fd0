"""
End-to-end tests of C{[server] workers = 2}: a real C{twistd mdpy}
supervising two worker processes that share its listening sockets and the
files backend.  Which worker serves a connection is read from the kernel
(the process holding the server's end of the socket), so each test can
make sure it has a client on each worker.
"""

import collections
import contextlib
import imaplib
import os
import poplib
import re
import signal
import smtplib
import socket
import subprocess

import pytest

from tests.server import (HOST, MdpyServer, freePorts, makeMessage, newAccount, twistdCommand, waitForBanner,
                          waitUntil)
from tests.test_e2e_changefeed import arrival, done, idling
from tests.test_e2e_login_limits import _IMAP as IMAPFrom
from tests.test_e2e_relay import HoldingReceiver, until

WORKERS = 2

# The [auth] limit of failed logins from one address, small to stay fast.
ADDRESS_FAILURES = 3

def startWorkers(root, relayExtra=None):
    """
    @param relayExtra: its C{[relay]} section, if not the default.
    @return: a started L{MdpyServer} with L{WORKERS} workers, each serving.
    """
    server = MdpyServer(root, workers=WORKERS, imapExtra="allow_plaintext_auth = yes\n",
                        pop3Extra="allow_plaintext_auth = yes\n",
                        extra="[auth]\nfailure_delay = 0.05s\nmax_failure_delay = 0.1s\naddress_failures = %d\n"
                        % (ADDRESS_FAILURES,),
                        **({} if relayExtra is None else dict(relayExtra=relayExtra)))
    assert server.cli("domain", "add", "example.test").returncode == 0
    assert server.cli("alias", "add", "fwd@example.test", "far@remote.test").returncode == 0
    server.start()
    waitForBanner(server.imap, process=server.process)
    waitUntil(lambda: len(servingWorkers(server)) == WORKERS, what="every worker serving")
    return server


@pytest.fixture(scope="module")
def sink():
    """
    An SMTP server on loopback that accepts every message: the smarthost
    of L{server}.
    """
    port, = freePorts(1)
    receiver = HoldingReceiver(HOST, port, None)
    receiver.port = port
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, sink):
    server = startWorkers(tmp_path_factory.mktemp("mdpy-workers"),
                          "smarthost = 127.0.0.1:%d\nsmarthost_tls = none\nretry = 1s\n" % (sink.port,))
    yield server
    server.stop()
    log = server.logText()
    assert "Traceback" not in log, log[-5000:]


def workerPids(server):
    """
    @return: C{{number: pid}} of the workers the supervisor started, the
        latest of each number.
    """
    return {int(number): int(pid)
            for number, pid in re.findall(r"started worker (\d+) \(pid (\d+)\)", server.logText())}


def servingWorkers(server):
    """
    @return: the pids of the workers that logged they serve, among the
        current ones.
    """
    current = set(workerPids(server).values())
    return {int(pid) for pid in re.findall(r"pid (\d+)\] worker \d+ serves its listeners", server.logText())} & current


def _socketInode(client):
    """
    @return: the inode of the server's end of the TCP connection
        C{client} (a connected socket), from C{/proc/net/tcp}, or L{None}.
    """
    near, far = client.getsockname()[1], client.getpeername()[1]
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
                if (local, remote) == (far, near):
                    return fields[9]
    return None


def servedBy(server, client):
    """
    @param client: a connected socket whose greeting was read.
    @return: the pid of the worker holding the server's end.
    """
    inode = _socketInode(client)
    assert inode is not None
    found = []

    def holder():
        for pid in workerPids(server).values():
            try:
                names = os.listdir("/proc/%d/fd" % (pid,))
            except FileNotFoundError:
                continue
            for name in names:
                try:
                    if os.readlink("/proc/%d/fd/%s" % (pid, name)) == "socket:[%s]" % (inode,):
                        found.append(pid)
                        return True
                except FileNotFoundError:
                    pass
        return False

    waitUntil(holder, what="the worker holding the connection")
    return found[0]


def alive(pid):
    """
    @return: whether the process C{pid} runs (a zombie does not).
    """
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def onEachWorker(server, connect):
    """
    Open a connection with C{connect} (returns a client and its socket) on
    each worker: once a worker serves one, it is stopped (SIGSTOP) until
    every worker has one, so that the next is accepted by another.

    @return: C{{pid: client}}.
    """
    clients, stopped = {}, []
    try:
        while len(clients) < WORKERS:
            client, sock = connect()
            pid = servedBy(server, sock)
            assert pid not in clients, pid
            clients[pid] = client
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    return clients


@contextlib.contextmanager
def servingAlone(server, pid):
    """
    Stop (SIGSTOP) every worker but C{pid} while the block runs, so that
    C{pid} accepts every connection made meanwhile.
    """
    others = [other for other in workerPids(server).values() if other != pid]
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        yield
    finally:
        for other in others:
            os.kill(other, signal.SIGCONT)


def imapClient(server):
    client = imaplib.IMAP4(HOST, server.imap, timeout=30)
    return client, client.sock


def test_connectionsAreServedByBothWorkers(server):
    """
    IMAP connections are accepted by both workers, on the one port the
    supervisor bound; each worker's log lines reach the server's log
    tagged with the worker.
    """
    clients = onEachWorker(server, lambda: imapClient(server))
    assert set(clients) == set(workerPids(server).values())
    for pid, client in clients.items():
        typ, data = client.xatom("ID", '("name" "probe-%d")' % (pid,))
        assert typ == "OK", data
        client.logout()
    for pid in clients:
        waitUntil(lambda: re.search(r"pid %d\] imap: client id from 127\.0\.0\.1: name=probe-%d$" % (pid, pid),
                                    server.logText(), re.M), what="the ID log line of worker %d" % (pid,))
    assert server.process.pid not in clients


def test_burstOfConnectionsIsSharedEvenly(server):
    """
    A burst of connections, as a client program that opens many at once,
    is shared evenly by the workers (they count their connections on a
    board they share), rather than taken mostly by the first to wake;
    connections kept open keep each worker's share of the work.
    """
    sockets = [socket.create_connection((HOST, server.imap)) for _ in range(20)]
    try:
        assertSharedEvenly(server, sockets)
    finally:
        for sock in sockets:
            sock.close()


def assertSharedEvenly(server, sockets):
    """
    Read the greeting of each connection; assert the workers serve as
    many each, but for a worker that was too busy to take its turn in time
    (then the other takes it after a short wait).
    """
    for sock in sockets:
        sock.settimeout(30)
        assert sock.recv(1024).startswith(b"* OK")
    served = collections.Counter(servedBy(server, sock) for sock in sockets)
    assert len(served) == WORKERS and max(served.values()) - min(served.values()) <= 2, served


def test_clientsWaitingAtStartAreSharedEvenly(tmp_path):
    """
    Clients that connect while the server is starting (they wait in the
    listening socket's queue, as after a restart) are shared evenly too:
    the first worker up takes none until the other is up.
    """
    server = MdpyServer(tmp_path, workers=WORKERS, imapExtra="allow_plaintext_auth = yes\n")
    assert server.cli("domain", "add", "example.test").returncode == 0
    server.process = subprocess.Popen(
        twistdCommand() + ["-n", "--pidfile=", "--logfile", server.log, "mdpy", "--config", server.config],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    sockets = []
    try:
        waitUntil(lambda: _connect(server.imap, sockets), what="the IMAP port to be bound")
        sockets += [socket.create_connection((HOST, server.imap)) for _ in range(19)]
        assertSharedEvenly(server, sockets)
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def _connect(port, sockets):
    """
    @return: whether a connection to C{port} was made (and added to
        C{sockets}).
    """
    try:
        sockets.append(socket.create_connection((HOST, port)))
    except ConnectionRefusedError:
        return False
    return True


def test_idleHearsMailAnotherWorkerAccepted(server):
    """
    With a client idling in each worker, a message accepted by SMTP (by
    one of them) reaches both as C{* 1 EXISTS}: the worker that did not
    deliver it hears it through the change feed.
    """
    address, password = newAccount(server, "idler")
    idlers = onEachWorker(server, lambda: _idler(server, address, password))
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as smtp:
        deliverer = servedBy(server, smtp.sock)
        smtp.sendmail("someone@remote.test", [address], makeMessage("across workers"))
    assert deliverer in idlers and len(idlers) == WORKERS
    for pid, (client, tag) in idlers.items():
        arrival(client, b"* 1 EXISTS\r\n")
        done(client, tag)


def test_changesOfEachSessionReachTheOthersAtNoop(server):
    """
    Two sessions with INBOX selected, in different workers and then in one
    worker: a flag stored or a message appended by one is reported to the
    other at its next NOOP, and the writer is told of nothing twice.
    """
    address, password = newAccount(server, "pair")
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as smtp:
        smtp.sendmail("someone@remote.test", [address], makeMessage("first"))

    def selected():
        client = imaplib.IMAP4(HOST, server.imap, timeout=30)
        client.login(address, password)
        client.select("INBOX")
        return client, client.sock

    def untagged(client, command, *args):
        """
        @return: the FETCH and EXISTS responses to the command.
        """
        typ, data = getattr(client, command)(*args)
        assert typ == "OK", data
        fetched = [line for line in data if line] if command == "store" else []
        return fetched + client.untagged_responses.pop("FETCH", []) + [
            b"EXISTS %s" % (n,) for n in client.untagged_responses.pop("EXISTS", [])]

    across = list(onEachWorker(server, selected).values())
    first, second = sorted(workerPids(server).values())
    with servingAlone(server, first):
        together = [selected()[0], selected()[0]]
    for writer, reader in (across, together):
        untagged(reader, "noop")
        flagged = untagged(writer, "store", "1", "+FLAGS", "(\\Flagged)")
        assert any(b"\\Flagged" in line for line in flagged), flagged
        assert untagged(writer, "noop") == []
        assert any(b"\\Flagged" in line for line in untagged(reader, "noop"))
        untagged(writer, "store", "1", "-FLAGS", "(\\Flagged)")
        assert untagged(writer, "noop") == []
        assert any(b"FLAGS (" in line and b"\\Flagged" not in line for line in untagged(reader, "noop"))
        count = int(writer.select("INBOX")[1][0])
        untagged(reader, "noop")
        assert writer.append("INBOX", None, None, makeMessage("appended"))[0] == "OK"
        assert b"EXISTS %d" % (count + 1,) in untagged(reader, "noop")
        assert untagged(reader, "noop") == []
    for client in across + together:
        client.logout()


def _idler(server, address, password):
    client, tag = idling(server, address, password)
    return (client, tag), client.sock


def test_mailAWorkerQueuesIsSentByTheSupervisor(server, sink):
    """
    Mail a worker accepts for a remote address (through a forwarding
    alias) is handed to the supervisor, which alone runs the queue, and
    sent at once.
    """
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as smtp:
        assert servedBy(server, smtp.sock) in workerPids(server).values()
        smtp.sendmail("sender@remote.test", ["fwd@example.test"], makeMessage("relayed by the supervisor"))
    until(lambda: len(sink.accepted) == 1, "the supervisor to send it", server=server)
    assert re.search(r"\[mdpy\.[\w.]+#info\] relay: \S+ to=<far@remote\.test> .* status=sent", server.logText())


def test_loginLimitsAreSharedByTheWorkers(server):
    """
    Failed logins from one address counted in one worker refuse its next
    login in the other, even with the right password; the account's owner
    still logs in from elsewhere.
    """
    address, password = newAccount(server, "guarded")
    source = "127.0.0.3"
    first, second = sorted(workerPids(server).values())
    with servingAlone(server, first):
        for i in range(ADDRESS_FAILURES):
            guesser = IMAPFrom(server.imap, source)
            assert servedBy(server, guesser.sock) == first
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                guesser.login(address, "guess-%d" % (i,))
            guesser.logout()
    with servingAlone(server, second):
        guesser = IMAPFrom(server.imap, source)
        assert servedBy(server, guesser.sock) == second
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            guesser.login(address, password)
        guesser.logout()
    waitUntil(lambda: re.search(
        r"pid %d\] imap: login refused for user=%s from %s: too many failed logins from this address"
        % (second, re.escape(address), re.escape(source)), server.logText()), what="the refusal in the log")
    owner = imaplib.IMAP4(HOST, server.imap, timeout=30)
    assert owner.login(address, password)[0] == "OK"
    owner.logout()


def test_maildropInUseAcrossWorkers(server):
    """
    While a POP3 session of one worker holds the maildrop, a login for it
    in the other worker is refused with C{[IN-USE]} (RFC 2449 section 8.1.2);
    once the first quits, the other logs in.
    """
    address, password = newAccount(server, "popper")
    first = poplib.POP3(HOST, server.pop3, timeout=30)
    first.user(address)
    first.pass_(password)
    holder = servedBy(server, first.sock)
    [other] = [pid for pid in workerPids(server).values() if pid != holder]
    with servingAlone(server, other):
        second = poplib.POP3(HOST, server.pop3, timeout=30)
    assert servedBy(server, second.sock) == other
    second.user(address)
    with pytest.raises(poplib.error_proto) as refused:
        second.pass_(password)
    assert refused.value.args[0].startswith(b"-ERR [IN-USE]"), refused.value
    first.quit()
    second.user(address)
    assert second.pass_(password).startswith(b"+OK")
    second.quit()


def test_reloadReachesEveryWorker(server):
    """
    SIGHUP to the supervisor (C{systemctl reload}) makes it and every
    worker read the configuration again.
    """
    line = "reload: read %s" % (server.config,)
    before = server.logText().count(line)
    server.process.send_signal(signal.SIGHUP)
    for pid in workerPids(server).values():
        waitUntil(lambda: re.search(r"pid %d\] %s$" % (pid, re.escape(line)), server.logText(), re.M),
                  what="the reload of worker %d" % (pid,))
    assert server.logText().count(line) == before + 1 + WORKERS


def test_ctrlCIsLeftToTheSupervisor(server):
    """
    SIGINT (a terminal's Ctrl-C, sent to every process of the group) does
    not stop a worker: the supervisor, stopping, stops it.  The worker
    still answers a later SIGHUP.
    """
    pid = workerPids(server)[1]
    os.kill(pid, signal.SIGINT)
    line = "pid %d] reload: read %s" % (pid, server.config)
    before = server.logText().count(line)
    os.kill(pid, signal.SIGHUP)
    waitUntil(lambda: server.logText().count(line) == before + 1, what="the worker's reload")
    assert alive(pid) and "pid %d] Received SIGINT" % (pid,) not in server.logText()


def test_killedWorkerIsStartedAgainAndSigtermStopsAll(tmp_path):
    """
    C{kill -9} of one worker: a client idling in the other goes on
    working, the supervisor logs the death and starts a new worker, which
    serves new connections.  SIGTERM to the supervisor then stops it and
    every worker.
    """
    server = startWorkers(tmp_path)
    try:
        address, password = newAccount(server, "survivor")
        idlers = onEachWorker(server, lambda: _idler(server, address, password))
        victim, survivor = sorted(idlers)
        idlers.pop(victim)[0].sock.close()
        [number] = [n for n, pid in workerPids(server).items() if pid == victim]
        os.kill(victim, signal.SIGKILL)
        waitUntil(lambda: re.search(
            r"worker %d \(pid %d\) was killed by signal 9 after \d+s; starting it again in 1s" % (number, victim),
            server.logText()), what="the supervisor's line on the death")
        client, tag = idlers[survivor]
        with smtplib.SMTP(HOST, server.smtp, timeout=30) as smtp:
            smtp.sendmail("someone@remote.test", [address], makeMessage("after the death"))
        arrival(client, b"* 1 EXISTS\r\n")
        done(client, tag)
        waitUntil(lambda: workerPids(server)[number] != victim, what="a new worker")
        replacement = workerPids(server)[number]
        waitUntil(lambda: replacement in servingWorkers(server), what="the new worker serving")
        assert not alive(victim)
        fresh = onEachWorker(server, lambda: imapClient(server))
        assert sorted(fresh) == sorted([survivor, replacement])
        for client in fresh.values():
            assert client.noop()[0] == "OK"
        workers = list(workerPids(server).values())
        assert sorted(workers) == sorted(fresh)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        for pid in workers:
            assert not alive(pid), pid
    finally:
        server.stop()
    log = server.logText()
    assert "Traceback" not in log, log[-5000:]
    assert "worker %d (pid %d) has stopped" % (number, replacement) in log


def test_workersStopWhenTheSupervisorIsKilled(tmp_path):
    """
    C{kill -9} of the supervisor leaves no worker behind: each sees its
    pipe from the supervisor end and stops.
    """
    server = startWorkers(tmp_path)
    workers = list(workerPids(server).values())
    server.kill()
    for pid in workers:
        waitUntil(lambda: not alive(pid), what="worker %d to stop" % (pid,))
