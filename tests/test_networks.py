"""
Tests of L{mdpy.networks}.
"""

import ipaddress

import pytest

from mdpy.networks import NetworkList, clientAddress, clientHost


def test_membership():
    networks = NetworkList(["10.0.0.0/8", "192.0.2.9", "2001:db8::/32"])
    assert networks
    assert "10.1.2.3" in networks and "192.0.2.9" in networks and "2001:db8::1" in networks
    assert "::ffff:10.0.0.1" in networks  # IPv4-mapped counts as IPv4
    assert "11.0.0.1" not in networks and "192.0.2.10" not in networks
    assert "not an address" not in networks
    assert not NetworkList()


def test_badNetwork():
    with pytest.raises(ValueError):
        NetworkList(["10.0.0.0/33"])


def test_clientAddress():
    assert clientAddress(ipaddress.ip_address("::ffff:192.0.2.1")) == ipaddress.ip_address("192.0.2.1")
    assert clientAddress(ipaddress.ip_address("2001:db8::1")) == ipaddress.ip_address("2001:db8::1")


@pytest.mark.parametrize(
    "host, expected",
    [
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::FFFF:127.0.0.1", "127.0.0.1"),
        ("192.0.2.1", "192.0.2.1"),
        ("::1", "::1"),
        ("2001:DB8::1", "2001:DB8::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("not an address", "not an address"),
    ],
)
def test_clientHost(host, expected):
    """
    The text of an IPv4-mapped address becomes its IPv4 address; any other
    text is kept as it is.
    """
    assert clientHost(host) == expected
