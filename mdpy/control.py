# -*- test-case-name: tests.test_control -*-
"""
The running server's control socket (C{queue/control.sock}, mode 0600), by
which C{mdpy queue flush|del}, C{mdpy domainpop run}, C{mdpy multipop run}
and C{mdpy reload} act on it: one command per line, C{FLUSH}, C{DELETE id},
C{COLLECT name} or C{RELOAD}; the answer is C{OK} or C{ERR reason}, after
C{| line}s of a collection's report or of what a reload changed.

L{ControlFactory} is the server side, L{sendCommand} the client the CLI
uses (blocking: the CLI runs no reactor).
"""

import socket

from twisted.internet import protocol
from twisted.protocols.basic import LineOnlyReceiver

from mdpy import errors


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
                self.sendLine(b"ERR no such collection")
                return
            d = collector.runNow()
            d.addCallbacks(self._collected, self._failed)
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
