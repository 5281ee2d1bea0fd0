# -*- test-case-name: tests.test_workers -*-
"""
C{[server] workers = N}: the process C{twistd mdpy} started binds every
listener and serves none of them; N worker processes (L{mdpy.tap.worker})
inherit the listening sockets and accept on them, over the same files
backend (its change feed, its POP3 maildrop locks and login-failure counts
work across processes).  This process, the supervisor, keeps the duties of
the primary (L{mdpy.tap.primary.PrimaryDuties}: the queue, the ODMR
provider, the collections, the control socket the workers hand their
queued mail to) and Minger, starts a worker again when one dies (after a
delay that grows while they keep dying young, L{RestartBackOff}), passes
reloads on to them and stops them when it stops.

Invariants: a worker never holds the data directory's lock and never takes
the primary's duties; it stops when its supervisor is gone (its standard
input, a pipe from the supervisor, reaches its end), so none outlives it.
"""

import os
import socket
import sys

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import eventFromJSON, globalLogPublisher
from zope.interface import implementer

import mdpy
from mdpy.config import ConfigError
from mdpy.dualstack import BothPorts
from mdpy.logs import Logger
from mdpy.tap.listeners import LISTENERS
from mdpy.tap.loadboard import LoadBoard

log = Logger()

# Seconds a worker is given to stop after SIGTERM before it is killed.
STOP_GRACE = 10

# The longest line of a worker's output kept whole; a longer one is logged
# in pieces.
MAX_LINE = 1 << 20


def workerCount(config, cores=None):
    """
    @param cores: the number of CPU cores this process may run on; default:
        this machine's.
    @return: the number of worker processes of C{[server] workers} (1: no
        supervisor, one process serves everything).
    @raise ConfigError: several workers with a backend that lives in one
        process's memory.
    """
    server = config["server"]
    workers = server["workers"]
    if workers == "auto":
        if server["backend"] != "files":
            return 1
        return cores if cores is not None else availableCores()
    if workers > 1 and server["backend"] == "memory":
        raise ConfigError(
            "%s: [server] workers = %d: the memory backend lives in one process; "
            "use workers = 1 or the files backend" % (config.label, workers)
        )
    return workers


def availableCores():
    """
    @return: the number of CPU cores this process may run on.
    """
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class RestartBackOff:
    """
    How long to wait before starting a worker again after it died: L{first}
    seconds, doubled at each death of a worker that lived less than
    L{stable} seconds, up to L{most}; so a worker that cannot start does not
    spin, and one that ran well comes back at once.
    """

    first = 1.0
    most = 60.0
    stable = 30.0

    def __init__(self):
        self.delay = None

    def after(self, uptime):
        """
        @param uptime: the seconds the worker lived.
        @return: the seconds to wait before starting it again.
        """
        if self.delay is None or uptime >= self.stable:
            self.delay = self.first
        else:
            self.delay = min(self.delay * 2, self.most)
        return self.delay


def describeEnd(reason):
    """
    @param reason: the L{Failure} a process ended with.
    @return: how it ended, for the log.
    """
    value = reason.value
    if getattr(value, "signal", None):
        return "was killed by signal %d" % (value.signal,)
    return "exited with status %s" % (getattr(value, "exitCode", None),)


class WorkerProtocol(protocol.ProcessProtocol):
    """
    One worker process, seen from its supervisor: its log events (JSON
    records on its standard output, L{twisted.logger.jsonFileLogObserver})
    are written to the supervisor's log, tagged with the worker; what it
    writes on its standard error (before its log starts) is logged line by
    line.

    @ivar started: when it started (the supervisor's clock).
    """

    def __init__(self, supervisor, number, started, publish=globalLogPublisher):
        self.supervisor = supervisor
        self.number = number
        self.started = started
        self.publish = publish
        self.pid = None
        self._buffers = {1: b"", 2: b""}
        self._waiting = []
        self._kill = None

    @property
    def tag(self):
        return "worker %d, pid %s" % (self.number, self.pid)

    def connectionMade(self):
        self.pid = self.transport.pid

    def childDataReceived(self, childFD, data):
        if childFD not in self._buffers:
            return
        lines = (self._buffers[childFD] + data).split(b"\n")
        self._buffers[childFD] = lines.pop()
        if len(self._buffers[childFD]) > MAX_LINE:
            lines.append(self._buffers[childFD])
            self._buffers[childFD] = b""
        for line in lines:
            self._lineReceived(childFD, line)

    def _lineReceived(self, childFD, line):
        text = line.decode("utf-8", "replace").strip("\x1e").rstrip()
        if not text:
            return
        if childFD == 1:
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
            if isinstance(event, dict):
                event["log_system"] = self._system(event)
                self.publish(event)
                return
        log.error("{worker}: {line}", worker=self.tag, line=text)

    def _system(self, event):
        """
        @return: what the log shows in brackets for C{event} of this
            worker: its namespace and level, as for the supervisor's own
            events, then the worker (only the worker for Twisted's legacy
            events, which show C{-} in the supervisor's).
        """
        namespace = event.get("log_namespace", "log_legacy")
        if namespace == "log_legacy":
            return self.tag
        return "%s#%s %s" % (namespace, getattr(event.get("log_level"), "name", "-"), self.tag)

    def stop(self, clock, grace=STOP_GRACE):
        """
        Ask it to stop (SIGTERM); kill it (SIGKILL) if it has not after
        C{grace} seconds.

        @return: a L{Deferred} that fires when it has ended.
        """
        ended = defer.Deferred()
        self._waiting.append(ended)
        self.signal("TERM")
        self._kill = clock.callLater(grace, self.signal, "KILL")
        return ended

    def signal(self, name):
        """
        Send the signal C{name} (C{"TERM"}, C{"HUP"}...) to the worker, if
        it still runs.
        """
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def processEnded(self, reason):
        for childFD, rest in self._buffers.items():
            if rest:
                self._lineReceived(childFD, rest)
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self.supervisor.workerEnded(self, reason)
        waiting, self._waiting = self._waiting, []
        for ended in waiting:
            ended.callback(None)


class WorkerSupervisor(service.Service):
    """
    Runs C{count} worker processes and starts each again when it dies.

    @ivar workers: C{{number: WorkerProtocol}} of the running workers,
        numbered from 1.
    """

    name = "workers"

    def __init__(self, count, launch, clock, board=None):
        """
        @param launch: called with a L{WorkerProtocol} and the worker's
            number, starts the process (L{spawnWorker}) and returns its
            L{IProcessTransport}; may raise L{OSError}.
        @param clock: an L{IReactorTime}.
        @param board: the workers' L{LoadBoard}, whose slot of a worker
            that ended is marked gone.
        """
        self.count = count
        self.board = board
        self.launch = launch
        self.clock = clock
        self.workers = {}
        self._backOffs = {number: RestartBackOff() for number in range(1, count + 1)}
        self._restarts = {}

    def startService(self):
        service.Service.startService(self)
        for number in range(1, self.count + 1):
            self._start(number)

    def _start(self, number):
        self._restarts.pop(number, None)
        worker = WorkerProtocol(self, number, self.clock.seconds())
        try:
            self.launch(worker, number)
        except OSError as e:
            log.error("cannot start worker {number}: {why}", number=number, why=e)
            self._restartLater(number, 0)
            return
        self.workers[number] = worker
        log.info("started worker {number} (pid {pid})", number=number, pid=worker.pid)

    def workerEnded(self, worker, reason):
        """
        Called by a L{WorkerProtocol} when its process has ended: it is
        started again after its L{RestartBackOff} unless this service is
        stopping.
        """
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
            if self.board is not None:
                self.board.gone(worker.number - 1)
        if not self.running:
            log.info("worker {number} (pid {pid}) has stopped", number=worker.number, pid=worker.pid)
            return
        uptime = self.clock.seconds() - worker.started
        delay = self._restartLater(worker.number, uptime)
        log.error(
            "worker {number} (pid {pid}) {how} after {uptime:.0f}s; starting it again in {delay:g}s",
            number=worker.number, pid=worker.pid, how=describeEnd(reason), uptime=uptime, delay=delay,
        )

    def _restartLater(self, number, uptime):
        delay = self._backOffs[number].after(uptime)
        self._restarts[number] = self.clock.callLater(delay, self._start, number)
        return delay

    def reload(self, result=None):
        """
        Make every worker read the configuration again (SIGHUP, which
        L{mdpy.reload.installReloadSignal} handles).

        @return: C{result}, so that this can be a callback.
        """
        for worker in self.workers.values():
            worker.signal("HUP")
        return result

    def stopService(self):
        """
        Stop every worker (SIGTERM, then SIGKILL after L{STOP_GRACE}
        seconds), starting none again.

        @return: a L{Deferred} that fires once all have ended.
        """
        service.Service.stopService(self)
        for restart in self._restarts.values():
            restart.cancel()
        self._restarts.clear()
        return defer.gatherResults([worker.stop(self.clock) for worker in list(self.workers.values())])


@implementer(IStreamServerEndpoint)
class HeldEndpoint:
    """
    An endpoint that binds and listens but does not accept: its sockets
    are kept for the workers, which accept on them.
    """

    def __init__(self, endpoint, name, sockets):
        """
        @param endpoint: the listener's own endpoint.
        @param sockets: a list to which C{(name, fd, family)} of each
            listening socket is added.
        """
        self.endpoint = endpoint
        self.name = name
        self.sockets = sockets

    def listen(self, protocolFactory):
        """
        See L{IStreamServerEndpoint.listen}.
        """
        return self.endpoint.listen(protocolFactory).addCallback(self._hold)

    def _hold(self, listening):
        ports = listening.ports if isinstance(listening, BothPorts) else (listening,)
        for port in ports:
            port.stopReading()
            self.sockets.append((self.name, port.fileno(), port.addressFamily))
        return listening


def spawnWorker(reactor, configPath, portOffset, sockets, executable=sys.executable, board=None):
    """
    @param configPath: the configuration file, or L{None} for the embedded
        default.
    @param sockets: the C{(name, fd, family)} of each listening socket.
    @param board: the workers' L{LoadBoard}, whose file is passed to each
        with its slot (its number - 1).
    @return: a C{launch} function for L{WorkerSupervisor} that runs
        C{python -m mdpy.tap.worker} with the sockets as its descriptors
        from 3 on, its standard input a pipe whose end tells it the
        supervisor is gone, and its standard output and error read for its
        log.
    """
    if configPath is not None:
        configPath = os.path.abspath(configPath)
    here = os.path.dirname(os.path.dirname(os.path.abspath(mdpy.__file__)))
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))

    def launch(worker, number):
        args = [executable, "-m", "mdpy.tap.worker", "--number", str(number), "--port-offset", str(portOffset)]
        if configPath is not None:
            args += ["--config", configPath]
        childFDs = {0: "w", 1: "r", 2: "r"}
        for childFD, (name, fd, family) in enumerate(sockets, 3):
            childFDs[childFD] = fd
            args += ["--listener", "%s=%d:%d" % (name, childFD, 6 if family == socket.AF_INET6 else 4)]
        if board is not None:
            childFD = 3 + len(sockets)
            childFDs[childFD] = board.fileno()
            args += ["--load-board", "%d:%d:%d" % (childFD, number - 1, board.count)]
        return reactor.spawnProcess(worker, executable, args, env=environ, childFDs=childFDs)

    return launch


def superviseWorkers(top, count, configPath, portOffset, reactor):
    """
    Make the L{MailServer} C{top} the supervisor of C{count} workers: its
    listeners bind and hold their sockets for the workers
    (L{HeldEndpoint}), and a L{WorkerSupervisor} runs the workers.
    """
    sockets = []
    for name in LISTENERS:
        try:
            listener = top.getServiceNamed(name)
        except KeyError:
            continue
        listener.endpoint = HeldEndpoint(listener.endpoint, name, sockets)
    board = LoadBoard.create(count)
    supervisor = WorkerSupervisor(
        count, spawnWorker(reactor, configPath, portOffset, sockets, board=board), reactor, board)
    supervisor.setServiceParent(top)
    top.workers = supervisor
    log.info("{count} worker processes serve the listeners", count=count)
    return supervisor
