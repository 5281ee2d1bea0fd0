"""
Tests of L{mdpy.control}: the control socket's commands in memory, and the
CLI's client against the server side over a real UNIX socket.
"""

import os
from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread

from mdpy.control import ControlFactory, sendCommand
from mdpy.backends.files.queue import SpoolQueue
from mdpy.testing import TempDirTestCase


class CollectionDouble:
    """
    A collection whose C{runNow} reports two lines.
    """

    class Report:
        lines = ["first message: delivered", "second message: held"]
        error = None

        def summary(self):
            return "test: 2 downloaded"

    def runNow(self):
        return defer.succeed(self.Report())


class ControlTests(TempDirTestCase):
    def test_flushAndDelete(self):
        clock = task.Clock()
        queue = SpoolQueue(self.tempDir(), reactor=reactor, clock=clock)
        flushed = []
        queue.listeners.append(flushed.append)
        control = ControlFactory(queue).buildProtocol(None)
        transport = StringTransport()
        control.makeConnection(transport)
        control.dataReceived(b"FLUSH\nDELETE NOPE\nBOGUS\n")
        self.assertEqual(
            transport.value(), b"OK\nERR no such queued message\nERR unknown command\n"
        )
        self.assertEqual(flushed, [None])

    def test_noServer(self):
        """
        With no server listening, L{sendCommand} says so with L{None}.
        """
        self.assertIsNone(sendCommand(os.path.join(self.tempDir(), "control.sock"), "FLUSH", timeout=5))

    async def test_clientReadsTheReportLinesAndTheAnswer(self):
        """
        The CLI's client sends a command over the socket and reads the
        C{| line}s of a collection's report up to the final answer; an
        unknown collection is an C{ERR}.
        """
        queueDir = self.tempDir()
        queue = SpoolQueue(queueDir, reactor=reactor, clock=task.Clock())
        factory = ControlFactory(queue, {"domainpop/test": CollectionDouble()})
        socketPath = os.path.join(queueDir, "control.sock")
        port = reactor.listenUNIX(socketPath, factory, mode=0o600)
        self.addCleanup(port.stopListening)
        lines = await deferToThread(sendCommand, socketPath, "COLLECT domainpop/test", 10)
        self.assertEqual(lines, [
            "| first message: delivered",
            "| second message: held",
            "| test: 2 downloaded",
            "OK",
        ])
        lines = await deferToThread(sendCommand, socketPath, "COLLECT nothing", 10)
        self.assertEqual(lines, ["ERR no such collection"])
