# -*- test-case-name: tests.test_control -*-
"""
The running server's control socket (C{queue/control.sock}, mode 0600), by
which C{mdpy queue flush|del}, C{mdpy domainpop run}, C{mdpy multipop run}
and C{mdpy reload} act on it: one command per line, C{FLUSH}, C{DELETE id},
C{COLLECT name}, C{RELOAD} or C{QUEUED id}; the answer is C{OK} or C{ERR
reason}, after C{| line}s of a collection's report or of what a reload
changed.  C{QUEUED id} hands the server an entry another process put in the
queue of its data directory (L{QueueHandOff}).

L{ControlFactory} is the server side, L{sendCommand} the client the CLI
uses (blocking: the CLI runs no reactor).
"""

import socket

from twisted.internet import defer, endpoints, protocol
from twisted.protocols.basic import LineOnlyReceiver

from mdpy import errors
from mdpy.logs import Logger

log = Logger()

# The answer to COLLECT for a collection the server does not run.
NO_SUCH_COLLECTION = "no such collection"


class ControlProtocol(LineOnlyReceiver):
    """
    One connection to the control socket: see the module's documentation.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1024

    def lineReceived(self, line):
        queue = self.factory.queue
        verb, _, argument = line.strip().partition(b" ")
        verb = verb.upper()
        if verb == b"FLUSH":
            queue.flush()
            self.sendLine(b"OK")
        elif verb == b"DELETE":
            try:
                d = queue.remove(argument.decode("ascii", "replace").strip())
            except errors.NotFound:
                self.sendLine(b"ERR no such queued message")
            else:
                d.addCallback(lambda _: self.sendLine(b"OK"))
                d.addErrback(lambda f: self.sendLine(b"ERR " + errors.describe(f).encode("utf-8", "replace")))
        elif verb == b"COLLECT":
            collector = self.factory.collectors.get(argument.decode("utf-8", "replace").strip())
            if collector is None:
                self.sendLine(b"ERR " + NO_SUCH_COLLECTION.encode("ascii"))
                return
            d = collector.runNow()
            d.addCallbacks(self._collected, self._failed)
        elif verb == b"QUEUED":
            queue.adopt(argument.decode("ascii", "replace").strip())
            self.sendLine(b"OK")
        elif verb == b"RELOAD" and self.factory.reload is not None:
            self.factory.reload().addCallbacks(self._reloaded, self._failed)
        else:
            self.sendLine(b"ERR unknown command")

    def _collected(self, reports):
        if not isinstance(reports, list):
            reports = [reports]
        failed = False
        for report in reports:
            for line in report.lines + [report.summary()]:
                self.sendLine(b"| " + line.encode("utf-8", "replace"))
            failed = failed or report.error is not None
        self.sendLine(b"ERR the collection stopped early" if failed else b"OK")

    def _reloaded(self, lines):
        for line in lines:
            self.sendLine(b"| " + line.encode("utf-8", "replace"))
        self.sendLine(b"OK")

    def _failed(self, failure):
        self.sendLine(b"ERR " + errors.describe(failure).encode("utf-8", "replace"))

    def lineLengthExceeded(self, line):
        self.transport.loseConnection()


class ControlFactory(protocol.ServerFactory):
    """
    @ivar queue: the L{mdpy.backends.files.queue.SpoolQueue} C{FLUSH} and
        C{DELETE} act on.
    @ivar collectors: C{{name: service}} of the collections C{COLLECT} runs
        (each with C{runNow()}).
    @ivar reload: what C{RELOAD} calls: a callable returning a L{Deferred}
        that fires with the lines saying what changed, or fails with the
        reason nothing did; L{None} refuses C{RELOAD}.
    """

    protocol = ControlProtocol
    noisy = False

    def __init__(self, queue, collectors=None, reload=None):
        self.queue = queue
        self.collectors = {} if collectors is None else collectors
        self.reload = reload


class QueueHandOff:
    """
    A queue listener for a process that stores mail in the queue of a data
    directory whose queue another process runs (a secondary server, the
    C{mdpy} command): each entry queued here is forgotten here and named
    to the running server by C{QUEUED id} on its control socket, so that it
    leaves at once.  Should no server answer, the entry waits on disk for
    the one that runs the queue next (L{SpoolQueue.pickUp} and C{load}).

    The entries queued within one turn of the reactor go on one connection.
    """

    def __init__(self, reactor, socketPath, queue):
        self.reactor = reactor
        self.socketPath = socketPath
        self.queue = queue
        self._pending = []
        self._sending = set()

    def __call__(self, entry):
        if entry is None:
            return  # a flush or a release: the running server has its own
        self.queue.forget(entry)
        self._pending.append(entry.id)
        if len(self._pending) == 1:
            self.reactor.callLater(0, self._send)

    def whenSent(self):
        """
        @return: a L{Deferred} firing once every entry queued so far has
            been named to the server, or logged as waiting (before a
            process that queued mail ends).
        """
        self._send()
        return defer.DeferredList(list(self._sending))

    def _send(self):
        ids, self._pending = self._pending, []
        if not ids:
            return
        lines = b"".join(b"QUEUED %s\n" % (id.encode("ascii"),) for id in ids)
        endpoint = endpoints.UNIXClientEndpoint(self.reactor, self.socketPath, timeout=10)
        d = endpoint.connect(protocol.Factory.forProtocol(_Notice))
        d.addCallbacks(lambda notice: notice.send(lines), self._noServer, errbackArgs=(ids,))
        self._sending.add(d)
        d.addBoth(lambda _: self._sending.discard(d))

    def _noServer(self, failure, ids):
        log.info(
            "queue: {ids} wait for the server that runs the queue of this data directory "
            "(its control socket does not answer: {why})",
            ids=", ".join(ids),
            why=errors.describe(failure),
        )


class _Notice(protocol.Protocol):
    """
    Writes its lines and closes: the server reads them before it sees the
    end of the connection.
    """

    def send(self, lines):
        self.transport.write(lines)
        self.transport.loseConnection()


def sendCommand(socketPath, command, timeout=None):
    """
    Send one command to the running server's control socket and read its
    answer: the C{| line}s, if any, and the last line (C{OK} or C{ERR
    reason}).

    @param socketPath: the path of the socket
        (L{mdpy.datadir.DataDir.controlSocketPath}).
    @param timeout: seconds to wait for the server at most, or L{None} to
        wait as long as it works (a collection).
    @return: the lines of the answer without their line ends, or L{None}
        when no server listens.
    """
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.connect(socketPath)
    except OSError:
        client.close()
        return None
    lines, buffer = [], b""
    with client:
        client.sendall(command.encode("utf-8") + b"\n")
        while True:
            chunk = client.recv(65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines += [line.decode("utf-8", "replace") for line in complete]
            if lines and not lines[-1].startswith("| "):
                break
    return lines
