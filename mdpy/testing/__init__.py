# -*- test-case-name: tests.test_smtp_server -*-
"""
Fakes and helpers for testing mdpy and code built on it, shipped for
subclassers: a recording delivery target with injectable failures, a
TLS-capable string transport, and a transcript helper for line protocols.

    t = Transcript(protocol)
    t.expect("220 *")
    t.send("EHLO client.example")
    t.expect("250-*", "250 *")
"""

import contextlib
import fnmatch
import shutil
import tempfile

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, interfaces as iinternet
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from mdpy.auth import IAccount
from mdpy.interfaces import IDelivery, IDeliveryTarget


def resultOf(d):
    """
    @return: the result of a Deferred that has fired (or a plain value).
    @raise: its failure's exception.
    """
    if not isinstance(d, defer.Deferred):
        return d
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def track(d):
    """
    @return: a list that gets C{d}'s result (a value or a L{Failure}) once
        it has one; a Deferred waiting on another is already called, and
        has none yet.
    """
    results = []

    def done(result):
        results.append(result)
        return result

    d.addBoth(done)
    return results


def synchronousRunner(function, *args, **kwargs):
    """
    A C{runInThread} for stores and checkers that runs at once in this thread.
    """
    return defer.maybeDeferred(function, *args, **kwargs)


@contextlib.contextmanager
def capturedLogs():
    """
    Collect every log event published while the block runs::

        with capturedLogs() as events:
            ...
        assert loggedLines(events, "deliver: ") == [...]

    @return: a context manager giving the L{list} of events.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def loggedLines(events, text="", level=None):
    """
    @param level: a L{twisted.logger.LogLevel}, or L{None} for every level.
    @return: the formatted events among C{events} of C{level} that contain
        C{text}, as a log file shows them (without the time and system).
    """
    lines = []
    for event in events:
        if level is not None and event.get("log_level") != level:
            continue
        line = formatEvent(event)
        if text in line:
            lines.append(line)
    return lines


@implementer(iinternet.ITLSTransport)
class TLSStringTransport(StringTransport):
    """
    A L{StringTransport} that records L{startTLS}.

    @ivar tlsOptions: the options given to C{startTLS}, or L{None}.
    """

    tlsOptions = None

    def startTLS(self, options):
        self.tlsOptions = options


class RecordedMessage:
    """
    A message a L{RecordingTarget} committed.
    """

    def __init__(self, envelope, recipients, data):
        self.envelope = envelope
        self.recipients = recipients
        self.data = data


@implementer(IDeliveryTarget)
class RecordingTarget:
    """
    A delivery target that keeps committed messages in L{messages}.

    Failures to inject (each an exception instance, or L{None}):
    @ivar startError: raised by C{startDelivery}.
    @ivar recipientErrors: C{{address: exception}} raised by C{addRecipient}.
    @ivar commitError: raised by C{commit}.
    @ivar hold: when true, C{startDelivery}, C{addRecipient} and C{commit}
        return Deferreds that fire only when L{release} is called.
    """

    def __init__(self):
        self.messages = []
        self.aborted = 0
        self.startError = None
        self.recipientErrors = {}
        self.commitError = None
        self.hold = False
        self._held = []

    def _result(self, value=None, error=None):
        if error is not None:
            result = defer.fail(error)
        else:
            result = defer.succeed(value)
        if not self.hold:
            return result
        d = defer.Deferred()
        self._held.append((d, result))
        return d

    def release(self):
        """
        Fire every held Deferred, in order.
        """
        while self._held:
            d, result = self._held.pop(0)
            result.chainDeferred(d)

    def startDelivery(self, envelope):
        return self._result(_RecordingDelivery(self, envelope), self.startError)


@implementer(IDelivery)
class _RecordingDelivery:
    def __init__(self, target, envelope):
        self.target = target
        self.envelope = envelope
        self.recipients = []
        self.chunks = []

    def addRecipient(self, address):
        error = self.target.recipientErrors.get(address)
        if error is None:
            self.recipients.append(address)
        return self.target._result(None, error)

    def write(self, data):
        self.chunks.append(data)

    def commit(self):
        if self.target.commitError is None:
            self.target.messages.append(
                RecordedMessage(self.envelope, list(self.recipients), b"".join(self.chunks))
            )
        return self.target._result(None, self.target.commitError)

    def abort(self):
        self.target.aborted += 1


@implementer(IRealm)
class AddressRealm:
    """
    A realm whose avatar is the authenticated name as text.
    """

    def requestAvatar(self, avatarId, mind, *interfaces):
        if isinstance(avatarId, bytes):
            avatarId = avatarId.decode("utf-8")
        return IAccount, avatarId, lambda: None


def memoryPortal(**users):
    """
    @return: a portal knowing C{users} (name=password), for PLAIN, LOGIN and
        CRAM-MD5.
    """
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for name, password in users.items():
        checker.addUser(name.encode("utf-8"), password.encode("utf-8"))
    return Portal(AddressRealm(), [checker])


class Transcript:
    """
    Drive a line protocol over a L{TLSStringTransport} and check its replies
    against C{fnmatch} patterns.
    """

    def __init__(self, protocol, transport=None, peer="192.0.2.1"):
        """
        @param peer: the client's IP address, IPv4 or IPv6, when no
            C{transport} is given.
        """
        if transport is None:
            address = IPv6Address if ":" in peer else IPv4Address
            transport = TLSStringTransport(peerAddress=address("TCP", peer, 50000))
        self.protocol = protocol
        self.transport = transport
        self._pending = b""
        protocol.makeConnection(transport)

    def send(self, *lines):
        """
        Send each line with CR LF, in one write (as a pipelining client).
        """
        data = b"".join(
            (line.encode("utf-8") if isinstance(line, str) else line) + b"\r\n"
            for line in lines
        )
        self.protocol.dataReceived(data)

    def sendRaw(self, data):
        self.protocol.dataReceived(data)

    def lines(self):
        """
        @return: the complete reply lines written since the last call.
        """
        self._pending += self.transport.value()
        self.transport.clear()
        *complete, self._pending = self._pending.split(b"\r\n")
        return [line.decode("utf-8") for line in complete]

    def expect(self, *patterns):
        """
        Check that the next reply lines match C{patterns}, one each, and that
        no other line came.  In a pattern C{*} and C{?} are wildcards;
        everything else, brackets included, stands for itself.

        @return: the lines.
        """
        got = self.lines()
        if len(got) != len(patterns) or not all(
            fnmatch.fnmatchcase(line, pattern.replace("[", "[[]"))
            for line, pattern in zip(got, patterns)
        ):
            raise AssertionError("expected %r, got %r" % (list(patterns), got))
        return got

    @property
    def closed(self):
        return self.transport.disconnecting


class TempDirTestCase(unittest.TestCase):
    """
    A trial test case whose L{tempDir} makes directories outside the
    working directory (trial's C{mktemp} writes under it).
    """

    def tempDir(self):
        """
        @return: a new directory, removed after the test.
        """
        path = tempfile.mkdtemp(prefix="mdpy-test-")
        self.addCleanup(shutil.rmtree, path, True)
        return path



class LoopbackTestCase(TempDirTestCase):
    """
    A test case running servers on 127.0.0.1 with the global reactor.
    """

    async def until(self, condition, what="condition"):
        """
        Wait (up to 10 s) until C{condition()} is true.
        """
        from twisted.internet import reactor, task

        for _ in range(2000):
            if condition():
                return
            await task.deferLater(reactor, 0.005, lambda: None)
        self.fail("gave up waiting for " + what)

    def listen(self, factory, tlsOptions=None, openConnections=None):
        """
        @param openConnections: returns how many connections of C{factory}
            are open; after the test, cleanup waits until none is.
        @return: the port C{factory} listens on at 127.0.0.1 (in TLS if
            C{tlsOptions} is given), closed after the test.
        """
        from twisted.internet import reactor

        if tlsOptions is None:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            port = reactor.listenSSL(0, factory, tlsOptions, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        if openConnections is not None:
            self.addCleanup(lambda: defer.ensureDeferred(
                self.until(lambda: not openConnections(), "server connections to close")))
        return port.getHost().port


def __getattr__(name):
    """
    The contract suites (L{mdpy.testing.contracts}) are importable from
    here too; they need pytest, so they are loaded on first use.
    """
    import importlib

    if name.endswith("Contract"):
        return getattr(importlib.import_module("mdpy.testing.contracts"), name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
