# -*- test-case-name: tests.test_networks -*-
"""
Client addresses, and lists of IP networks they are checked against (the
Minger server's C{allow}, a gateway domain's C{atrn_hosts}).
"""

import ipaddress


def clientAddress(address):
    """
    @param address: an L{ipaddress} address.
    @return: C{address}, or the IPv4 address an IPv4-mapped IPv6 address
        stands for (a dual-stack socket reports IPv4 clients so).
    """
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def clientHost(host):
    """
    @param host: a client's IP address as text, as a socket reports it.
    @return: C{host}, or the IPv4 address, as text, of an IPv4-mapped IPv6
        address (C{::ffff:192.0.2.1} is C{192.0.2.1}).
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    unmapped = clientAddress(address)
    return host if unmapped is address else str(unmapped)


class NetworkList:
    """
    Networks, given as C{192.0.2.0/24}, C{2001:db8::/32} or single
    addresses; C{address in networks} for an address given as text.
    """

    def __init__(self, texts=()):
        """
        @raise ValueError: an entry is not a network or an address.
        """
        self.networks = [ipaddress.ip_network(text, strict=False) for text in texts]

    def __bool__(self):
        return bool(self.networks)

    def __contains__(self, text):
        try:
            address = clientAddress(ipaddress.ip_address(text))
        except ValueError:
            return False
        return any(address in network for network in self.networks)
