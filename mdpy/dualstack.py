# -*- test-case-name: tests.test_dualstack -*-
"""
Listening on every address of the host: C{::}, which on a dual-stack host
(Linux, by default) takes IPv4 clients too, as IPv4-mapped IPv6 addresses
(C{::ffff:192.0.2.1}, RFC 4291 section 2.5.5.2, which
L{mdpy.networks.clientHost} turns back into IPv4); C{0.0.0.0} where IPv6 is
off.
"""

import errno
import os
import socket

from twisted.internet import defer, tcp
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from zope.interface import implementer

from mdpy.logs import Logger

log = Logger()

EVERY_ADDRESS = "::"
EVERY_IPV4_ADDRESS = "0.0.0.0"

# What binding :: fails with where IPv6 is off: no IPv6 in the kernel
# (EAFNOSUPPORT), or IPv6 disabled on every interface (EADDRNOTAVAIL).
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def listenEverywhere(listen, port, hasIPv6=socket.has_ipv6):
    """
    Listen on every address: on C{::}, also on C{0.0.0.0} when that socket
    takes no IPv4 (C{IPV6_V6ONLY}: C{net.ipv6.bindv6only = 1}, the BSDs),
    or on C{0.0.0.0} alone where IPv6 is off.

    @param listen: called with an interface, returns its
        L{IListeningPort} or raises L{CannotListenError}: say
        C{lambda interface: reactor.listenTCP(port, factory, interface=interface)}.
    @param port: the port number, for the log.
    @param hasIPv6: whether Python was built with IPv6 (L{socket.has_ipv6}).
    @return: an L{IListeningPort}.
    @raise CannotListenError: the port cannot be bound.
    """
    if hasIPv6:
        try:
            listening = listen(EVERY_ADDRESS)
        except CannotListenError as e:
            if getattr(e.socketError, "errno", None) not in _NO_IPV6:
                raise
            log.info(
                "IPv6 is off on this host ({why}): port {port} listens on every IPv4 address only",
                why=getattr(e.socketError, "strerror", None) or e.socketError,
                port=port,
            )
        else:
            if _takesIPv4(listening):
                return listening
            try:
                return BothPorts(listening, listen(EVERY_IPV4_ADDRESS))
            except BaseException:
                listening.stopListening()
                raise
    return listen(EVERY_IPV4_ADDRESS)


def _takesIPv4(listening):
    """
    @return: whether a port listening on C{::} also takes IPv4 clients (the
        socket is not C{IPV6_V6ONLY}); L{True} for a port without a socket
        (a test reactor's).
    """
    sock = getattr(listening, "socket", None)
    if sock is None:
        return True
    return not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)


@implementer(IListeningPort)
class BothPorts:
    """
    One port number listened on by two sockets, IPv6 and IPv4.
    """

    def __init__(self, ipv6, ipv4):
        self.ports = (ipv6, ipv4)

    def startListening(self):
        for port in self.ports:
            port.startListening()

    def stopListening(self):
        return defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in self.ports])

    def getHost(self):
        return self.ports[0].getHost()


@implementer(IStreamServerEndpoint)
class EveryAddressEndpoint:
    """
    A TCP server endpoint on every address (see L{listenEverywhere}).
    """

    def __init__(self, reactor, port, backlog=50, hasIPv6=socket.has_ipv6):
        self.reactor = reactor
        self.port = port
        self.backlog = backlog
        self.hasIPv6 = hasIPv6

    def listen(self, protocolFactory):
        """
        See L{IStreamServerEndpoint.listen}.
        """
        return defer.execute(
            listenEverywhere,
            lambda interface: self.reactor.listenTCP(
                self.port, protocolFactory, backlog=self.backlog, interface=interface
            ),
            self.port,
            self.hasIPv6,
        )


class _CountedServer(tcp.Server):
    """
    A connection of a L{OneAtATimePort} with a load board: counted off
    when it closes.
    """

    def connectionLost(self, reason):
        try:
            tcp.Server.connectionLost(self, reason)
        finally:
            self.server.board.add(-1)


class OneAtATimePort(tcp.Port):
    """
    A listening port that accepts one connection each time its socket is
    ready, where Twisted's accepts up to the number it found waiting the
    time before: processes sharing the socket each take one in turn, so
    that a burst of connections is spread over them instead of taken by
    the first to wake.

    With a L{mdpy.tap.loadboard.LoadBoard} in C{board} (a worker's), the
    connections are counted, and a process that holds more than another
    leaves the next connection to it: it stops reading its socket for
    L{YIELD_DELAY} seconds, then takes what is still waiting, so a
    connection waits no longer than that when the other is busy or
    stopped.  A worker that just started takes nothing while the others
    are starting too (L{mdpy.tap.loadboard.STARTUP_WAIT} at most).
    """

    YIELD_DELAY = 0.01
    board = None
    _yielded = False
    _resuming = None

    @property
    def numberAccepts(self):
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value):
        pass

    @property
    def transport(self):
        return tcp.Server if self.board is None else _CountedServer

    def doRead(self):
        board = self.board
        if board is None:
            return tcp.Port.doRead(self)
        if board.othersStarting() or not self._yielded and board.busier():
            self._yielded = True
            self.stopReading()
            self._resuming = self.reactor.callLater(self.YIELD_DELAY, self._resume)
            return None
        self._yielded = False
        before = self.sessionno
        try:
            return tcp.Port.doRead(self)
        finally:
            board.add(self.sessionno - before)

    def _resume(self):
        self._resuming = None
        if self.connected and not self.disconnecting:
            self.startReading()

    def connectionLost(self, reason):
        if self._resuming is not None and self._resuming.active():
            self._resuming.cancel()
        self._resuming = None
        return tcp.Port.connectionLost(self, reason)


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    A TCP server endpoint on listening sockets another process bound and
    passed down (a worker's, L{mdpy.tap.worker}): one, or an IPv6 and an
    IPv4 one (see L{listenEverywhere}).
    """

    def __init__(self, reactor, sockets):
        """
        @param sockets: C{(fd, family)} of each socket, family
            L{socket.AF_INET6} or L{socket.AF_INET}; each descriptor is
            closed once the reactor has taken its own copy.
        """
        self.reactor = reactor
        self.sockets = sockets

    def listen(self, protocolFactory):
        """
        See L{IStreamServerEndpoint.listen}.
        """
        return defer.execute(self._adopt, protocolFactory)

    def _adopt(self, protocolFactory):
        ports = []
        for fd, family in self.sockets:
            port = self.reactor.adoptStreamPort(fd, family, protocolFactory)
            os.close(fd)
            if isinstance(port, tcp.Port):
                port.__class__ = OneAtATimePort
            ports.append(port)
        return ports[0] if len(ports) == 1 else BothPorts(*ports)
