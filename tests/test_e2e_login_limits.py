"""
End-to-end tests of the login limits of C{[auth]}: a real C{twistd mdpy} on
loopback, attacked with imaplib, poplib, smtplib and raw sockets from
several loopback source addresses (all of 127.0.0.0/8 is local on Linux, so
a client socket bound to 127.0.0.N is another client address to the
server).

The server counts failures over one shared tracker for SMTP AUTH, POP3,
IMAP and ODMR, with small thresholds so the tests stay fast: an address is
banned after L{ADDRESS_FAILURES} failures, an account limited after
L{ACCOUNT_FAILURES}.  Each test attacks from its own source addresses and
accounts.
"""

import base64
import hashlib
import hmac
import imaplib
import poplib
import re
import smtplib
import socket
import ssl
import threading
import time

import pytest

from tests.server import HOST, MdpyServer, newAccount

ADDRESS_FAILURES = 5
ACCOUNT_FAILURES = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MdpyServer(
        tmp_path_factory.mktemp("mdpy-login-limits"),
        pop3Extra="allow_plaintext_auth = yes\n",
        imapExtra="allow_plaintext_auth = yes\n",
        odmrExtra="",
        extra="[auth]\nfailure_delay = 0.05s\nmax_failure_delay = 0.2s\n"
        "address_failures = %d\naccount_failures = %d\n" % (ADDRESS_FAILURES, ACCOUNT_FAILURES),
    )
    done = server.cli("domain", "add", "example.test")
    assert done.returncode == 0, done.stderr
    server.start()
    yield server
    server.stop()
    assert "Traceback" not in server.logText(), server.logText()[-5000:]


# --- clients from a given source address --------------------------------------


def connect(port, source):
    return socket.create_connection((HOST, port), timeout=30, source_address=(source, 0))


class _FromSource:
    """
    A C{imaplib} or C{poplib} client connecting from a given source address.
    """

    def __init__(self, port, source):
        self._source = source
        super().__init__(HOST, port, timeout=30)

    def _create_socket(self, timeout):
        return connect(self.port, self._source)


class _IMAP(_FromSource, imaplib.IMAP4):
    pass


class _POP3(_FromSource, poplib.POP3):
    pass


def imapLogin(server, source, address, password):
    """
    @return: whether IMAP LOGIN from C{source} succeeded.
    """
    client = _IMAP(server.imap, source)
    try:
        client.login(address, password)
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e), e
        return False
    finally:
        client.shutdown()
    return True


def pop3Login(server, source, address, password):
    """
    @return: whether POP3 USER/PASS from C{source} succeeded.
    """
    client = _POP3(server.pop3, source)
    try:
        client.user(address)
        client.pass_(password)
    except poplib.error_proto as e:
        assert b"[AUTH]" in e.args[0], e
        return False
    finally:
        client.close()
    return True


def smtpLogin(server, source, address, password):
    """
    @return: whether SMTP AUTH PLAIN on the SMTPS port from C{source}
        succeeded (one mechanism, so one login is one check, where
        C{smtplib.SMTP.login} would try each mechanism in turn).
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = smtplib.SMTP_SSL(HOST, server.smtps, source_address=(source, 0), context=context, timeout=30)
    try:
        client.ehlo("client.test")
        client.user, client.password = address, password
        client.auth("PLAIN", client.auth_plain)
    except smtplib.SMTPAuthenticationError as e:
        # 421 and closed: the address is banned (and said so before AUTH).
        assert e.smtp_code in (421, 535), e
        return False
    finally:
        client.close()
    return True


def odmrLogin(server, source, address, password):
    """
    @return: whether AUTH CRAM-MD5 on the ODMR port from C{source}
        succeeded (a directory user may log in there too).
    """
    sock = connect(server.odmr, source)
    lines = sock.makefile("rb")
    try:
        assert lines.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        while not lines.readline().startswith(b"250 "):
            pass
        sock.sendall(b"AUTH CRAM-MD5\r\n")
        reply = lines.readline()
        assert reply.startswith(b"334 "), reply
        challenge = base64.b64decode(reply[4:].strip())
        digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
        sock.sendall(base64.b64encode(("%s %s" % (address, digest)).encode()) + b"\r\n")
        reply = lines.readline()
        assert reply[:4] in (b"235 ", b"535 "), reply
        return reply.startswith(b"235 ")
    finally:
        lines.close()
        sock.close()


def logLines(server, pattern):
    return [line for line in server.logText().splitlines() if re.search(pattern, line)]


def waitForLogLines(server, pattern, count, timeout=10.0):
    """
    @return: the log lines matching C{pattern}, once there are C{count}.
    """
    deadline = time.monotonic() + timeout
    while True:
        lines = logLines(server, pattern)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# --- the tests ----------------------------------------------------------------


def test_parallelLoginsCannotBeatTheAddressLimit(server):
    """
    100 IMAP LOGINs at once from one address, the right password as the
    90th: only ADDRESS_FAILURES of them are checked; once those fail, the
    others, the right one among them, are refused unchecked with the same
    reply as a wrong password.
    """
    address, password = newAccount(server, "parallel")
    source = "127.0.0.2"
    socks = [connect(server.imap, source) for _ in range(100)]
    files = [sock.makefile("rb") for sock in socks]
    try:
        for lines in files:
            assert lines.readline().startswith(b"* OK")
        for i, sock in enumerate(socks):
            secret = password if i == 89 else "guess-%d" % (i,)
            sock.sendall(b'a LOGIN "%s" "%s"\r\n' % (address.encode(), secret.encode()))
        replies = [lines.readline() for lines in files]
    finally:
        for thing in files + socks:
            thing.close()
    assert replies[89] == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert set(replies) == {replies[89]}
    checked = waitForLogLines(server, r"imap: authentication failed for user=%s from %s: bad credentials"
                              % (re.escape(address), re.escape(source)), ADDRESS_FAILURES)
    assert len(checked) == ADDRESS_FAILURES
    refused = logLines(server, r"imap: login refused for user=%s from %s: too many failed logins from this address"
                       % (re.escape(address), re.escape(source)))
    assert len(refused) == 100 - ADDRESS_FAILURES
    assert not logLines(server, r"logged in from %s\b" % (re.escape(source),))
    # The address stays banned, for every protocol; another address is not.
    assert not imapLogin(server, source, address, password)
    assert not smtpLogin(server, source, address, password)
    assert imapLogin(server, "127.0.0.3", address, password)


def test_anotherAccountsLoginDoesNotResetTheAddress(server):
    """
    A guesser who owns an account cannot wipe its failures by logging in
    to it between guesses: the guesses of POP3 and SMTP AUTH add up to a
    ban, which then refuses even the victim's right password.
    """
    victim, victimPassword = newAccount(server, "victim")
    own, ownPassword = newAccount(server, "own")
    source = "127.0.0.4"
    for i in range(ADDRESS_FAILURES - 1):
        assert not pop3Login(server, source, victim, "guess-%d" % (i,))
    assert imapLogin(server, source, own, ownPassword)
    assert not smtpLogin(server, source, victim, "guess-last")
    assert not imapLogin(server, source, victim, victimPassword)
    assert not pop3Login(server, source, own, ownPassword)
    assert logLines(server, r"imap: login refused for user=%s from %s: too many failed logins from this address"
                    % (re.escape(victim), re.escape(source)))
    # The victim's own logins from elsewhere are not affected.
    assert pop3Login(server, "127.0.0.5", victim, victimPassword)


def test_accountLimitSparesAddressesThatLoggedInBefore(server):
    """
    ACCOUNT_FAILURES wrong passwords for one account, two from each of four
    addresses (none banned) over IMAP, POP3, SMTP AUTH and ODMR, limit the
    account: one warning is logged, the right password from a new address
    is refused, and from the address its owner logged in from before it
    still works on every protocol.
    """
    address, password = newAccount(server, "sprayed")
    home = "127.0.0.10"
    assert imapLogin(server, home, address, password)
    logins = [imapLogin, pop3Login, smtpLogin, odmrLogin]
    for n in range(ACCOUNT_FAILURES):
        login = logins[n % len(logins)]
        source = "127.0.0.%d" % (11 + n // 2,)
        assert not login(server, source, address, "spray-%d" % (n,))
    warning = r"auth: logins for %s refused for 600s except from addresses it logged in from before" % (
        re.escape(address),
    )
    [line] = waitForLogLines(server, warning, 1)
    assert "%d failed logins from 4 addresses" % (ACCOUNT_FAILURES,) in line
    stranger = "127.0.0.20"
    assert not imapLogin(server, stranger, address, password)
    assert not pop3Login(server, stranger, address, password)
    assert logLines(server, r"pop3: login refused for user=%s from %s: too many failed logins for this account"
                    % (re.escape(address), re.escape(stranger)))
    assert imapLogin(server, home, address, password)
    assert pop3Login(server, home, address, password)
    assert smtpLogin(server, home, address, password)
    assert len(logLines(server, warning)) == 1
    # Other accounts are not limited.
    other, otherPassword = newAccount(server, "bystander")
    assert imapLogin(server, stranger, other, otherPassword)


def test_simultaneousGoodLoginsAreNotRefused(server):
    """
    A load test: 40 IMAP connections at once from one address, logging in
    to eight accounts (more than ADDRESS_FAILURES) with their passwords.
    Logins past the limit wait their turn; every one succeeds.
    """
    accounts = [newAccount(server, "load") for _ in range(8)]
    source = "127.0.0.30"
    results = []

    def login(address, password):
        results.append(imapLogin(server, source, address, password))

    threads = [
        threading.Thread(target=login, args=accounts[i % len(accounts)]) for i in range(40)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [True] * 40
