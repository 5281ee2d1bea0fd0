"""
End-to-end tests: a real C{twistd mdpy} with no interface configured
listens on every address, IPv6 and IPv4 (on this host, C{::} with IPv4
mapped), and delivers subaddresses (C{bob+tag@}) to their user.
"""

import email
import imaplib
import smtplib
import socket

import pytest

from tests.server import HOST, runningServer, waitUntil

BOB = "bob@example.test"
LOOPBACKS = [("::1", socket.AF_INET6), (HOST, socket.AF_INET)]


def hasIPv6Loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    assert hasIPv6Loopback(), "this test needs IPv6 on loopback (::1)"
    yield from runningServer(tmp_path_factory.mktemp("mdpy"), interface=None, mingerExtra="anonymous = yes\n")


@pytest.fixture(scope="module")
def bob(server):
    done = server.cli("user", "add", BOB, "--password", "bob-secret-1")
    assert done.returncode == 0, done.stderr
    return BOB


def minger(port, query, host, family):
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(query.encode(), (host, port))
        return s.recvfrom(2048)[0].decode()


@pytest.mark.parametrize("host, family", LOOPBACKS, ids=["ipv6", "ipv4"])
def test_smtpAndIMAPOnEveryAddress(server, host, family):
    """
    SMTP and IMAP answer at C{[::1]} and at C{127.0.0.1}.
    """
    with smtplib.SMTP(host, server.smtp, timeout=10) as smtp:
        code, _ = smtp.ehlo("client.test")
        assert code == 250
        assert smtp.sock.family == family
    imap = imaplib.IMAP4(host, server.imap, timeout=10)
    try:
        assert imap.welcome.startswith(b"* OK")
        assert imap.sock.family == family
    finally:
        imap.logout()


def test_subaddressDeliveredToItsUser(server, bob):
    """
    C{bob+tag@} is delivered to bob over IPv4; the copy names the whole
    address, and the client's address is written as IPv4, not as the
    IPv4-mapped IPv6 address the socket reports.
    """
    message = b"From: a@remote.test\r\nTo: bob+tag@example.test\r\nSubject: tagged\r\n\r\nhello\r\n"
    with smtplib.SMTP(HOST, server.smtp, timeout=10) as smtp:
        smtp.sendmail("a@remote.test", ["bob+tag@example.test"], message)
    waitUntil(lambda: server.messages(bob), what="the copy of bob+tag@")
    [copy] = [email.message_from_bytes(data) for data in server.messages(bob)]
    assert copy["Subject"] == "tagged"
    assert copy.get_all("X-MDRcpt-To") == ["bob+tag@example.test"]
    assert copy.get_all("X-Rcpt-To") == ["bob+tag@example.test"]
    assert "([127.0.0.1])" in copy["Received"]
    log = server.logText()
    assert "127.0.0.1" in log and "::ffff:" not in log


@pytest.mark.parametrize("host, family", LOOPBACKS, ids=["ipv6", "ipv4"])
def test_mingerOnEveryAddressAnswersForSubaddresses(server, bob, host, family):
    """
    The Minger UDP port answers at both addresses, for C{bob+tag@} as for
    bob.
    """
    assert minger(server.minger, "bob+tag@example.test", host, family) == "bob+tag@example.test 5"
    assert minger(server.minger, "nobody+tag@example.test", host, family) == "nobody+tag@example.test 3"


def test_subaddressingOff(tmp_path):
    """
    With C{recipient_delimiter} empty, C{bob+tag@} is no one's: refused
    with 550 at RCPT, while bob still gets mail.
    """
    running = runningServer(tmp_path, serverExtra="recipient_delimiter =\n")
    server = next(running)
    try:
        done = server.cli("user", "add", BOB, "--password", "bob-secret-1")
        assert done.returncode == 0, done.stderr
        with smtplib.SMTP(server.host, server.smtp, timeout=10) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("a@remote.test")
            code, text = smtp.rcpt("bob+tag@example.test")
            assert code == 550, text
            assert smtp.rcpt(BOB)[0] == 250
    finally:
        next(running, None)
