"""
Tests of L{mdpy.networks}.
"""

import ipaddress

import pytest

from mdpy.networks import NetworkList, clientAddress


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
