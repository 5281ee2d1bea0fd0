"""
Tests of L{mdpy.dualstack}: listening on every address, and on every IPv4
address where IPv6 is off.
"""

import errno
import socket

import pytest
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactor
from zope.interface.verify import verifyObject

from mdpy.dualstack import BothPorts, EveryAddressEndpoint, listenEverywhere


class FakeSocket:
    def __init__(self, v6only):
        self.v6only = v6only

    def getsockopt(self, level, option):
        assert (level, option) == (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        return int(self.v6only)


class FakePort:
    """
    A listening port, with the socket of a dual-stack host or of one where
    IPv6 sockets take no IPv4 (C{v6only}).
    """

    def __init__(self, interface, v6only=False):
        self.interface = interface
        self.socket = FakeSocket(v6only)
        self.stopped = False

    def startListening(self):
        pass

    def stopListening(self):
        self.stopped = True

    def getHost(self):
        return self.interface


class FakeHost:
    """
    A host whose binds of C{::} fail with C{ipv6Error} (an errno), or
    succeed with sockets C{v6only} or not; C{ipv4Error} fails the IPv4 one.
    """

    def __init__(self, ipv6Error=None, v6only=False, ipv4Error=None):
        self.ipv6Error = ipv6Error
        self.ipv4Error = ipv4Error
        self.v6only = v6only
        self.ports = []

    def listen(self, interface):
        error = self.ipv6Error if interface == "::" else self.ipv4Error
        if error is not None:
            raise CannotListenError(interface, 25, OSError(error, "%s failed" % (interface,)))
        port = FakePort(interface, v6only=self.v6only)
        self.ports.append(port)
        return port


def test_dualStack():
    """
    Where IPv6 sockets take IPv4 too, C{::} is all there is to listen on.
    """
    host = FakeHost()
    port = listenEverywhere(host.listen, 25, hasIPv6=True)
    assert port.interface == "::" and [p.interface for p in host.ports] == ["::"]


@pytest.mark.parametrize("error", [errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL])
def test_ipv6OffFallsBackToIPv4(error):
    """
    Where binding C{::} fails because IPv6 is off, every IPv4 address is
    listened on instead.
    """
    host = FakeHost(ipv6Error=error)
    port = listenEverywhere(host.listen, 25, hasIPv6=True)
    assert port.interface == "0.0.0.0"


def test_noIPv6InPython():
    host = FakeHost(ipv6Error=errno.EAFNOSUPPORT)
    assert listenEverywhere(host.listen, 25, hasIPv6=False).interface == "0.0.0.0"


def test_otherErrorsAreRaised():
    """
    A port in use is no reason to fall back: the error is the caller's.
    """
    host = FakeHost(ipv6Error=errno.EADDRINUSE)
    with pytest.raises(CannotListenError) as raised:
        listenEverywhere(host.listen, 25, hasIPv6=True)
    assert raised.value.socketError.errno == errno.EADDRINUSE
    assert host.ports == []


def test_ipv6OnlySocketsGetAnIPv4One():
    """
    Where an IPv6 socket takes no IPv4 (C{IPV6_V6ONLY}), C{0.0.0.0} is
    listened on as well, and both stop together.
    """
    host = FakeHost(v6only=True)
    port = listenEverywhere(host.listen, 25, hasIPv6=True)
    verifyObject(IListeningPort, port)
    assert isinstance(port, BothPorts)
    assert [p.interface for p in host.ports] == ["::", "0.0.0.0"]
    assert port.getHost() == "::"
    port.stopListening()
    assert all(p.stopped for p in host.ports)


def test_ipv6OnlyWithIPv4Busy():
    """
    When the IPv4 port of an IPv6-only host cannot be had, the IPv6 one is
    let go and the error raised.
    """
    host = FakeHost(v6only=True, ipv4Error=errno.EADDRINUSE)
    with pytest.raises(CannotListenError):
        listenEverywhere(host.listen, 25, hasIPv6=True)
    assert [(p.interface, p.stopped) for p in host.ports] == [("::", True)]


def test_endpoint():
    """
    L{EveryAddressEndpoint} listens through the reactor on C{::}, or on
    C{0.0.0.0} without IPv6, and fails its L{Deferred} like any endpoint.
    """
    reactor = MemoryReactor()
    factory = object()
    endpoint = EveryAddressEndpoint(reactor, 2525, backlog=7, hasIPv6=True)
    verifyObject(IStreamServerEndpoint, endpoint)
    assert isinstance(endpoint.listen(factory), defer.Deferred)
    assert reactor.tcpServers == [(2525, factory, 7, "::")]
    EveryAddressEndpoint(reactor, 2526, hasIPv6=False).listen(factory)
    assert reactor.tcpServers[-1] == (2526, factory, 50, "0.0.0.0")

    class BusyReactor(MemoryReactor):
        def listenTCP(self, port, factory, backlog=50, interface=""):
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "in use"))

    failures = []
    EveryAddressEndpoint(BusyReactor(), 25, hasIPv6=True).listen(factory).addErrback(failures.append)
    assert failures[0].check(CannotListenError)

