"""
Tests of L{mdpy.control}: the control socket's commands in memory, and the
CLI's client against the server side over a real UNIX socket.
"""

import os
from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread

from mdpy.control import ControlFactory, QueueHandOff, sendCommand
from mdpy.backends.files.queue import SpoolQueue
from mdpy.envelope import Envelope
from mdpy.testing import TempDirTestCase, capturedLogs, loggedLines, synchronousRunner


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

    def test_queuedAdoptsWhatAnotherProcessQueued(self):
        """
        C{QUEUED id} makes the server take up an entry another process put in
        its queue folder.
        """
        queueDir = self.tempDir()
        clock = task.Clock()
        queue = SpoolQueue(queueDir, reactor=reactor, clock=clock, runInThread=synchronousRunner)
        other = SpoolQueue(queueDir, reactor=reactor, clock=clock, runInThread=synchronousRunner)
        entry = self.successResultOf(other.enqueue(Envelope("a@example.test"), ["b@remote.test"], [b"x\r\n"]))
        heard = []
        queue.listeners.append(heard.append)
        control = ControlFactory(queue).buildProtocol(None)
        transport = StringTransport()
        control.makeConnection(transport)
        control.dataReceived(b"QUEUED %s\nQUEUED NOSUCH\n" % (entry.id.encode(),))
        self.assertEqual(transport.value(), b"OK\nOK\n")
        self.assertEqual([e.id for e in heard], [entry.id])

    async def test_handOffNamesQueuedEntriesToTheServer(self):
        """
        L{QueueHandOff} forgets each entry its queue takes and names them,
        on one connection per turn of the reactor, to the server listening
        on the control socket, whose queue takes them up.
        """
        queueDir = self.tempDir()
        running = SpoolQueue(queueDir, reactor=reactor, runInThread=synchronousRunner)
        other = SpoolQueue(queueDir, reactor=reactor, runInThread=synchronousRunner)
        socketPath = os.path.join(queueDir, "control.sock")
        handOff = QueueHandOff(reactor, socketPath, other)
        other.listeners.append(handOff)
        # No server yet: the entry waits on disk, and a line says so.
        waiting = await other.enqueue(Envelope("a@example.test"), ["b@remote.test"], [b"x\r\n"])
        with capturedLogs() as events:
            await handOff.whenSent()
        self.assertEqual(len(loggedLines(events, "wait for the server that runs the queue")), 1)
        self.assertIn(waiting.id, loggedLines(events, "wait for")[0])
        adopted = defer.Deferred()
        running.listeners.append(lambda entry: len(running.entries) == 2 and adopted.callback(None))
        port = reactor.listenUNIX(socketPath, ControlFactory(running), mode=0o600)
        self.addCleanup(port.stopListening)
        first = await other.enqueue(Envelope("a@example.test"), ["b@remote.test"], [b"x\r\n"])
        second = await other.enqueue(Envelope("a@example.test"), ["c@remote.test"], [b"y\r\n"])
        self.assertEqual(other.list(), [])
        await handOff.whenSent()
        await adopted
        self.assertEqual(sorted(running.entries), sorted([first.id, second.id]))
        self.assertNotIn(waiting.id, running.entries)
