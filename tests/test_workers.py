"""
Tests of L{mdpy.tap.supervisor} and L{mdpy.tap.worker}: the supervisor of
C{[server] workers} with a fake process launcher on a L{task.Clock}, the
relay of a worker's log, the held and adopted listening sockets, and the
number of workers a configuration asks for.
"""

import io
import socket

import pytest
from twisted.internet import error, task
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel, Logger, formatEventAsClassicLogText, jsonFileLogObserver
from twisted.python.failure import Failure
from twisted.python import usage

from mdpy.config import Config, ConfigError
from mdpy.dualstack import AdoptedEndpoint, BothPorts, OneAtATimePort
from mdpy.tap.supervisor import (
    STOP_GRACE, HeldEndpoint, RestartBackOff, WorkerProtocol, WorkerSupervisor, workerCount,
)
from mdpy.tap.worker import WorkerOptions, withTracebackText
from mdpy.testing import capturedLogs, loggedLines


class FakeProcess:
    """
    The transport of a launched worker: it records the signals sent.
    """

    def __init__(self, pid):
        self.pid = pid
        self.signals = []
        self.ended = False

    def signalProcess(self, name):
        if self.ended:
            raise error.ProcessExitedAlready()
        self.signals.append(name)


class FakeLauncher:
    """
    Launches L{FakeProcess}es, numbered from pid 100.

    @ivar launched: C{[(number, protocol), ...]} in order.
    @ivar failing: raise L{OSError} while true.
    """

    def __init__(self):
        self.launched = []
        self.failing = False

    def __call__(self, protocol, number):
        if self.failing:
            raise OSError("no more processes")
        process = FakeProcess(100 + len(self.launched))
        protocol.makeConnection(process)
        self.launched.append((number, protocol))
        return process


def end(protocol, signal=None, status=0):
    """
    End the worker of C{protocol} as a process would.
    """
    protocol.transport.ended = True
    reason = error.ProcessTerminated(status, signal) if signal or status else error.ProcessDone(0)
    protocol.processEnded(Failure(reason))


def supervising(count=2):
    clock, launcher = task.Clock(), FakeLauncher()
    supervisor = WorkerSupervisor(count, launcher, clock)
    supervisor.startService()
    return supervisor, launcher, clock


def test_backOffGrowsWhileWorkersDieYoung():
    """
    The delay starts at L{RestartBackOff.first}, doubles for each worker
    that lived less than L{RestartBackOff.stable} seconds, stops at
    L{RestartBackOff.most}, and is back to the first after a long life.
    """
    backOff = RestartBackOff()
    delays = [backOff.after(0.5) for _ in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backOff.after(RestartBackOff.stable) == 1
    assert backOff.after(3) == 2


def test_startsEveryWorker():
    supervisor, launcher, clock = supervising(3)
    assert [number for number, _ in launcher.launched] == [1, 2, 3]
    assert sorted(supervisor.workers) == [1, 2, 3]
    assert [w.pid for w in supervisor.workers.values()] == [100, 101, 102]


def test_deadWorkerIsStartedAgainAfterTheBackOff():
    """
    A worker that dies is started again, under its number, after the
    back-off delay, which grows while it keeps dying young; the other
    worker is left alone, and each death is logged.
    """
    supervisor, launcher, clock = supervising()
    first = supervisor.workers[1]
    clock.advance(5)
    with capturedLogs() as events:
        end(first, signal=9)
    assert 1 not in supervisor.workers
    assert loggedLines(events, "worker 1") == [
        "worker 1 (pid 100) was killed by signal 9 after 5s; starting it again in 1s"
    ]
    clock.advance(0.9)
    assert len(launcher.launched) == 2
    clock.advance(0.1)
    assert len(launcher.launched) == 3
    assert supervisor.workers[1].pid == 102
    assert supervisor.workers[2].pid == 101
    # Dying young again: 2s, then 4s.
    with capturedLogs() as events:
        end(supervisor.workers[1], status=1)
    assert loggedLines(events, "worker 1") == [
        "worker 1 (pid 102) exited with status 1 after 0s; starting it again in 2s"
    ]
    clock.advance(1.9)
    assert len(launcher.launched) == 3
    clock.advance(0.1)
    end(supervisor.workers[1], status=1)
    clock.advance(3.9)
    assert len(launcher.launched) == 4
    clock.advance(0.1)
    assert len(launcher.launched) == 5
    # A long life: back to the first delay.
    clock.advance(RestartBackOff.stable)
    end(supervisor.workers[1], signal=9)
    clock.advance(1)
    assert len(launcher.launched) == 6


def test_aWorkerThatCannotBeLaunchedIsTriedAgain():
    clock, launcher = task.Clock(), FakeLauncher()
    launcher.failing = True
    supervisor = WorkerSupervisor(1, launcher, clock)
    with capturedLogs() as events:
        supervisor.startService()
    assert loggedLines(events, "cannot start") == ["cannot start worker 1: no more processes"]
    assert supervisor.workers == {}
    launcher.failing = False
    clock.advance(1)
    assert sorted(supervisor.workers) == [1]


def test_stopTerminatesThenKillsAndStartsNoneAgain():
    """
    Stopping sends SIGTERM to every worker, SIGKILL to those still running
    after L{STOP_GRACE} seconds, fires once all have ended, and starts no
    worker again, not even one whose restart was pending.
    """
    supervisor, launcher, clock = supervising(3)
    end(supervisor.workers[3], signal=9)
    first, second = supervisor.workers[1], supervisor.workers[2]
    stopped = []
    supervisor.stopService().addCallback(stopped.append)
    assert first.transport.signals == ["TERM"] and second.transport.signals == ["TERM"]
    end(first)
    clock.advance(STOP_GRACE)
    assert first.transport.signals == ["TERM"]
    assert second.transport.signals == ["TERM", "KILL"]
    assert stopped == []
    end(second, signal=9)
    assert stopped == [[None, None]]
    clock.advance(100)
    assert len(launcher.launched) == 3 and supervisor.workers == {}


def test_reloadReachesEveryWorker():
    supervisor, launcher, clock = supervising()
    assert supervisor.reload("lines") == "lines"
    assert [w.transport.signals for w in supervisor.workers.values()] == [["HUP"], ["HUP"]]


def test_workerLogReachesTheLogTagged():
    """
    The JSON records a worker writes on its standard output become events
    of the supervisor's log, with their level and text, tagged with the
    worker; what it writes on its standard error is logged as errors, line
    by line, also when split across reads.
    """
    published = []
    worker = WorkerProtocol(supervisor=None, number=2, started=0, publish=published.append)
    worker.makeConnection(FakeProcess(4321))
    out = io.StringIO()
    Logger(namespace="mdpy.imap.server", observer=jsonFileLogObserver(out)).warn(
        "imap: client id from {ip}", ip="192.0.2.1")
    record = out.getvalue().encode()
    worker.childDataReceived(1, record[:10])
    assert published == []
    worker.childDataReceived(1, record[10:])
    [event] = published
    assert event["log_level"] == LogLevel.warn
    assert event["log_system"] == "mdpy.imap.server#warn worker 2, pid 4321"
    from twisted.logger import formatEvent
    assert formatEvent(event) == "imap: client id from 192.0.2.1"
    with capturedLogs() as events:
        worker.childDataReceived(2, b"Traceback (most recent call last):\n  File")
        worker.childDataReceived(2, b' "x.py"\n')
        worker.childDataReceived(1, b"not json\n")
    assert loggedLines(events, "worker 2") == [
        "worker 2, pid 4321: Traceback (most recent call last):",
        'worker 2, pid 4321:   File "x.py"',
        "worker 2, pid 4321: not json",
    ]


class FakePort:
    def __init__(self, fd, family):
        self.fd, self.addressFamily = fd, family
        self.reading = True

    def stopReading(self):
        self.reading = False

    def fileno(self):
        return self.fd


class FakeEndpoint:
    def __init__(self, port):
        self.port = port

    def listen(self, factory):
        from twisted.internet import defer
        return defer.succeed(self.port)


def test_heldEndpointListensWithoutAccepting():
    """
    The supervisor's listeners bind but do not accept: their sockets, IPv6
    and IPv4 alike, are recorded for the workers.
    """
    sockets = []
    both = BothPorts(FakePort(7, socket.AF_INET6), FakePort(8, socket.AF_INET))
    ports = []
    HeldEndpoint(FakeEndpoint(both), "imap", sockets).listen(None).addCallback(ports.append)
    HeldEndpoint(FakeEndpoint(FakePort(9, socket.AF_INET)), "pop3", sockets).listen(None)
    assert ports == [both]
    assert sockets == [("imap", 7, socket.AF_INET6), ("imap", 8, socket.AF_INET), ("pop3", 9, socket.AF_INET)]
    assert not any(port.reading for port in both.ports)


def test_adoptedEndpointTakesTheInheritedSockets():
    """
    A worker's listener adopts each socket it inherited (the reactor keeps
    its own copy, the inherited descriptor is closed); two make one port.
    """
    reactor = MemoryReactor()
    listening = [socket.socket(family) for family in (socket.AF_INET6, socket.AF_INET)]
    try:
        fds = [s.dup().detach() for s in listening]
        ports = []
        endpoint = AdoptedEndpoint(reactor, [(fds[0], socket.AF_INET6), (fds[1], socket.AF_INET)])
        endpoint.listen("factory").addCallback(ports.append)
        [port] = ports
        assert isinstance(port, BothPorts)
        assert [(fd, family) for fd, family, _ in reactor.adoptedPorts] == [
            (fds[0], socket.AF_INET6), (fds[1], socket.AF_INET)]
        for fd in fds:
            with pytest.raises(OSError):
                socket.socket(fileno=fd)
    finally:
        for s in listening:
            s.close()


def test_workerOptions():
    options = WorkerOptions()
    options.parseOptions(["--number", "2", "--listener", "imap=3:6", "--listener", "imap=4:4",
                          "--listener", "pop3=5:4"])
    assert options["number"] == 2
    assert options.listeners == {"imap": [(3, socket.AF_INET6), (4, socket.AF_INET)], "pop3": [(5, socket.AF_INET)]}
    with pytest.raises(usage.UsageError):
        WorkerOptions().parseOptions(["--listener", "imap=x:4"])


def load(tmp_path, text):
    path = tmp_path / "mdpy.ini"
    path.write_text("[server]\ndata_dir = data\n" + text)
    return Config.load(str(path))


def test_workerCount(tmp_path):
    """
    C{auto} is the number of cores with the files backend and 1 with any
    other; a number is taken as given, but the memory backend cannot be
    shared by processes.
    """
    assert workerCount(load(tmp_path, ""), cores=4) == 4
    assert workerCount(load(tmp_path, "workers = auto\nbackend = memory\n"), cores=4) == 1
    assert workerCount(load(tmp_path, "workers = 3\n"), cores=4) == 3
    assert workerCount(load(tmp_path, "workers = 1\nbackend = memory\n"), cores=4) == 1
    with pytest.raises(ConfigError, match=r"\[server\] workers = 2: the memory backend lives in one process"):
        workerCount(load(tmp_path, "workers = 2\nbackend = memory\n"))
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match=r"\[server\] workers"):
            load(tmp_path, "workers = %s\n" % (bad,))


def test_aWorkerAcceptsOneConnectionAtATime():
    """
    A worker's port takes one connection each time its socket is ready,
    whatever Twisted's accept loop found the time before, so that the
    workers sharing the socket take a burst of connections in turn.
    """
    port = OneAtATimePort(0, None, reactor=MemoryReactor())
    port.numberAccepts = 21
    assert port.numberAccepts == 1


def test_aWorkerServesTheListenersItInheritedAndNoDuty(tmp_path):
    """
    A worker builds a listener for each socket it inherited (which
    listeners run is its supervisor's: it changes at a restart only),
    none for the others, no Minger, and none of the primary's duties: it
    hands what it queues to the primary and never tries its lock.
    """
    from mdpy.control import QueueHandOff
    from mdpy.tap import buildService
    from tests.test_tap import MemoryReactor as ServerReactor, listeners, load as loadServer

    config = loadServer(tmp_path, "[imap]\nenabled = no\n[minger]\nenabled = yes\n[odmr]\nenabled = yes\n")
    listening = socket.socket()
    try:
        fd = listening.dup().detach()
        reactor = ServerReactor()
        top = buildService(config, reactor=reactor, worker={"imap": [(fd, socket.AF_INET)]})
        top.startService()
        assert sorted(listeners(top)) == ["imap"]
        assert [(adopted, family) for adopted, family, _ in reactor.adoptedPorts] == [(fd, socket.AF_INET)]
        assert top.live.primary is False
        assert any(isinstance(listener, QueueHandOff) for listener in top.live.pipeline.queue.listeners)
        assert reactor.udpServers == []
        top.stopService()
    finally:
        listening.close()


def test_legacyLogLinesOfAWorkerNameTheWorkerOnly():
    """
    Twisted's legacy events (C{log.msg}, namespace C{log_legacy}), which
    the supervisor's own log shows with C{[-]}, show only the worker.
    """
    published = []
    worker = WorkerProtocol(supervisor=None, number=1, started=0, publish=published.append)
    worker.makeConnection(FakeProcess(77))
    out = io.StringIO()
    Logger(namespace="log_legacy", observer=jsonFileLogObserver(out)).info("(TCP Port 143 Closed)")
    worker.childDataReceived(1, out.getvalue().encode())
    [event] = published
    assert event["log_system"] == "worker 1, pid 77"


def test_aWorkersFailureReachesTheLogWithItsTraceback():
    """
    A failure a worker logs reaches the supervisor's log with its text,
    its traceback and its exception's message, which JSON alone loses.
    """
    published = []
    worker = WorkerProtocol(supervisor=None, number=1, started=0, publish=published.append)
    worker.makeConnection(FakeProcess(77))
    out = io.StringIO()
    logger = Logger(namespace="mdpy.x", observer=withTracebackText(jsonFileLogObserver(out)))
    try:
        1 / 0
    except ZeroDivisionError:
        logger.failure("cannot divide {what}", what="one")
    worker.childDataReceived(1, out.getvalue().encode())
    [event] = published
    text = formatEventAsClassicLogText(event)
    assert "[mdpy.x#critical worker 1, pid 77] cannot divide one\n\tTraceback (most recent call last):" in text
    assert "ZeroDivisionError: division by zero" in text


def test_anEndlessLineOfAWorkerIsLoggedInPieces(monkeypatch):
    monkeypatch.setattr("mdpy.tap.supervisor.MAX_LINE", 10)
    worker = WorkerProtocol(supervisor=None, number=1, started=0, publish=None)
    worker.makeConnection(FakeProcess(77))
    with capturedLogs() as events:
        worker.childDataReceived(2, b"0123456789ab")
        worker.childDataReceived(2, b"cd\n")
    assert loggedLines(events, "worker 1") == ["worker 1, pid 77: 0123456789ab", "worker 1, pid 77: cd"]
