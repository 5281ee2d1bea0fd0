"""
End-to-end ODMR and Minger with real C{twistd mdpy} processes on loopback:

 - a provider holding mail for the gateway domain customer.test, which
   fetchmail (C{proto ODMR}, relaying to a customer site's own SMTP port)
   releases;
 - mdpy's own customer (C{[odmr-client:NAME]}, C{mdpy odmr release})
   against mdpy's provider, with and without the customer's server running;
 - the provider refusing unknown recipients of the gateway domain at RCPT,
   from the answers of the customer's Minger server;
 - Minger queries with correct, wrong and missing digests.
"""

import base64
import hashlib
import os
import smtplib
import socket
import subprocess
import time

import pytest

from tests.server import HOST, MdpyServer, mdpyCommand, waitUntil

SECRET = "gateway-release-secret"
MINGER_SECRET = "minger-secret-0123456789"
CUSTOMER = "customer.test"
USERS = ("ann", "bob")


def provider(tmp_path, extra=""):
    os.makedirs(tmp_path / "provider", exist_ok=True)
    return MdpyServer(
        tmp_path / "provider",
        odmrExtra="",
        extra="[gateway:%s]\nauth_password = %s\n%s[multipop]\nenabled = no\n" % (CUSTOMER, SECRET, extra),
    )


def customer(tmp_path, extra="", mingerExtra=None):
    os.makedirs(tmp_path / "customer", exist_ok=True)
    server = MdpyServer(tmp_path / "customer", domain=CUSTOMER, mingerExtra=mingerExtra,
                        extra=extra + "[multipop]\nenabled = no\n")
    assert server.cli("domain", "add", CUSTOMER).returncode == 0
    for name in USERS:
        done = server.cli("user", "add", "%s@%s" % (name, CUSTOMER), "--password", "pw-secret-1")
        assert done.returncode == 0, done.stderr
    return server


def send(server, recipients, subject):
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as client:
        message = (
            "From: sender@remote.test\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@remote.test>\r\n\r\n"
            "body of %s\r\n" % (", ".join(recipients), subject, subject.replace(" ", "."), subject)
        )
        refused = client.sendmail("sender@remote.test", recipients, message)
        assert refused == {}


def queued(server):
    done = server.cli("queue", "list")
    assert done.returncode == 0, done.stderr
    return done.stdout


def subjects(server, address):
    found = []
    for data in server.messages(address):
        for line in data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                found.append(line[9:].decode())
    return sorted(found)


def test_fetchmailReleasesHeldMail(tmp_path):
    """
    fetchmail's C{proto ODMR} logs in with CRAM-MD5, sends ATRN and relays
    the reversed session to the customer site's SMTP port.
    """
    prov = provider(tmp_path)
    site = customer(tmp_path)
    try:
        prov.start()
        site.start()
        send(prov, ["ann@%s" % CUSTOMER, "bob@%s" % CUSTOMER], "first")
        send(prov, ["ann@%s" % CUSTOMER], "second")
        assert queued(prov).count("@%s" % CUSTOMER) == 3
        time.sleep(1)
        assert subjects(site, "ann@" + CUSTOMER) == []  # held, not delivered
        home = tmp_path / "fetchmail"
        os.makedirs(home)
        rc = home / "fetchmailrc"
        rc.write_text(
            'set no bouncemail\n'
            'poll %s port %d proto ODMR auth cram-md5 user "%s" password "%s"\n'
            '    fetchdomains %s smtphost %s/%d\n'
            % (HOST, prov.odmr, CUSTOMER, SECRET, CUSTOMER, HOST, site.smtp)
        )
        os.chmod(rc, 0o600)
        done = subprocess.run(
            ["fetchmail", "-f", str(rc), "-v", "--nosyslog", "--pidfile", str(home / "pid")],
            env=dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home)),
            capture_output=True, text=True, timeout=120,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "ATRN %s" % (CUSTOMER,) in output
        waitUntil(lambda: subjects(site, "ann@" + CUSTOMER) == ["first", "second"], what="ann's mail")
        assert subjects(site, "bob@" + CUSTOMER) == ["first"]
        waitUntil(lambda: "@%s" % CUSTOMER not in queued(prov), what="the provider's queue to empty")
        # Nothing is left: a second run is told there is no mail.
        again = subprocess.run(
            ["fetchmail", "-f", str(rc), "-v", "--nosyslog", "--pidfile", str(home / "pid")],
            env=dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home)),
            capture_output=True, text=True, timeout=120,
        )
        assert "453" in again.stdout + again.stderr
        assert "odmr: customer.test from 127.0.0.1 releases customer.test" in prov.logText()
    finally:
        prov.stop()
        site.stop()


def test_mdpyCustomerAgainstMdpyProvider(tmp_path):
    """
    mdpy's customer, over STARTTLS with the provider's certificate
    verified: by itself at start, then with C{mdpy odmr release} through
    the running server, then with the command alone.
    """
    prov = provider(tmp_path).start()
    try:
        mdpyCustomerAgainst(tmp_path, prov)
    finally:
        prov.stop()


def mdpyCustomerAgainst(tmp_path, prov):
    certificate = os.path.join(prov.dataDir, "tls", "cert.pem")
    section = (
        "[odmr-client:prov]\nhost = %s\nport = %d\ntls = starttls\nca_file = %s\n"
        "username = %s\npassword = %s\ndomains = %s\ninterval = 1h\n"
        % (HOST, prov.odmr, certificate, CUSTOMER, SECRET, CUSTOMER)
    )
    site = customer(tmp_path, extra=section)
    try:
        send(prov, ["ann@%s" % CUSTOMER], "before start")
        site.start()
        # The first run comes shortly after the start.
        waitUntil(lambda: subjects(site, "ann@" + CUSTOMER) == ["before start"], what="the first release")
        waitUntil(lambda: "odmr/prov: released, 1 message received" in site.logText(), what="its log line")
        send(prov, ["ann@%s" % CUSTOMER, "bob@%s" % CUSTOMER, "nobody@%s" % CUSTOMER], "by command")
        done = site.cli("odmr", "release", "prov")
        assert done.returncode == 0, done.stderr
        assert "odmr/prov: released, 1 message received" in done.stdout
        assert subjects(site, "ann@" + CUSTOMER) == ["before start", "by command"]
        assert subjects(site, "bob@" + CUSTOMER) == ["by command"]
        # The unknown user was refused by the customer (550): the provider
        # bounced it to the sender instead of holding it.
        waitUntil(lambda: "@%s" % CUSTOMER not in queued(prov), what="the provider's queue to empty")
        assert "with ESMTPS" in site.messages("bob@" + CUSTOMER)[0].decode()
        done = site.cli("odmr", "release", "prov")
        assert done.returncode == 0, done.stderr
        assert "odmr/prov: no mail waiting" in done.stdout
    finally:
        site.stop()
    send(prov, ["bob@%s" % CUSTOMER], "server stopped")
    done = site.cli("odmr", "release", "prov")
    assert done.returncode == 0, done.stderr
    assert "released, 1 message received" in done.stdout
    assert subjects(site, "bob@" + CUSTOMER) == ["by command", "server stopped"]
    wrong = site.cli("odmr", "release", "nosuch")
    assert wrong.returncode != 0
    assert wrong.stderr.strip().count("\n") == 0 and "Traceback" not in wrong.stderr


def digest(secret, mailbox):
    return base64.b64encode(hashlib.md5(("%s:%s" % (secret, mailbox)).encode()).digest()).decode()


def minger(port, query, timeout=5):
    """
    @return: the reply to C{query}, or L{None} when none came.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query.encode() if isinstance(query, str) else query, (HOST, port))
        try:
            return s.recvfrom(2048)[0].decode()
        except socket.timeout:
            return None


def test_mingerAnswersAndGatewayRefusesUnknownRecipients(tmp_path):
    """
    The customer site's Minger server answers for its directory; the
    provider asks it at RCPT for the gateway domain.
    """
    site = customer(tmp_path, mingerExtra="secret = %s\n" % (MINGER_SECRET,))
    assert site.cli("user", "add", "gone@" + CUSTOMER, "--password", "pw-secret-1").returncode == 0
    assert site.cli("user", "disable", "gone@" + CUSTOMER).returncode == 0
    assert site.cli("alias", "add", "team@" + CUSTOMER, "ann@" + CUSTOMER).returncode == 0
    prov = provider(tmp_path, extra="verify = minger\nminger_host = %s\nminger_port = %d\nminger_secret = %s\n"
                    % (HOST, site.minger, MINGER_SECRET))
    try:
        site.start()
        prov.start()
        # The worked example of the reference notes, computed the same way.
        assert digest("0123456789abcdef", "arvel@example.com") == "A7E/WJtlUbO5NWDjZba+bw=="
        for mailbox, status in (("ann", 5), ("team", 5), ("nobody", 3), ("gone", 4)):
            address = "%s@%s" % (mailbox, CUSTOMER)
            assert minger(site.minger, "%s d=%s" % (address, digest(MINGER_SECRET, address))) == "%s %d" % (address, status)
            assert minger(site.minger, "%s d=%s" % (address, digest("wrong-secret-0000", address))) == address + " 2"
            # No digest: refused (2), padded or not (draft section 4); the
            # reply is at most two octets longer than the query.
            assert minger(site.minger, address + "\r\n") == address + " 2"
            assert minger(site.minger, address) == address + " 2"
        # A truncated digest is malformed: dropped without a reply.
        assert minger(site.minger, "ann@%s d=%s" % (CUSTOMER, digest(MINGER_SECRET, "ann@" + CUSTOMER)[:10]),
                      timeout=0.5) is None
        with smtplib.SMTP(HOST, prov.smtp, timeout=30) as client:
            client.ehlo("sender.test")
            client.mail("sender@remote.test")
            assert client.rcpt("ann@" + CUSTOMER)[0] == 250
            code, text = client.rcpt("nobody@" + CUSTOMER)
            assert (code, text[:5]) == (550, b"5.1.1")
            code, text = client.rcpt("gone@" + CUSTOMER)
            assert (code, text[:5]) == (450, b"4.2.1")
            assert client.rcpt("team@" + CUSTOMER)[0] == 250
            code, _ = client.data(b"Subject: verified\r\n\r\nhello\r\n")
            assert code == 250
        listed = queued(prov)
        assert "ann@" + CUSTOMER in listed and "team@" + CUSTOMER in listed
        assert "nobody@" + CUSTOMER not in listed
    finally:
        prov.stop()
        site.stop()


def test_mingerWithTheServerDownFallsBack(tmp_path):
    """
    With no Minger server answering, the gateway accepts (the default
    fallback) and says so in its log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((HOST, 0))
        port = silent.getsockname()[1]
        prov = provider(tmp_path, extra="verify = minger\nminger_host = %s\nminger_port = %d\nminger_timeout = 1s\n"
                        % (HOST, port))
        try:
            prov.start()
            with smtplib.SMTP(HOST, prov.smtp, timeout=30) as client:
                client.ehlo("sender.test")
                client.mail("sender@remote.test")
                assert client.rcpt("someone@" + CUSTOMER)[0] == 250
            assert "accepting (fallback)" in prov.logText()
        finally:
            prov.stop()


@pytest.mark.parametrize("garbage", [b"", b"\x00\xff" * 100, b"x" * 65000])
def test_mingerSurvivesGarbage(tmp_path, garbage):
    site = customer(tmp_path, mingerExtra="secret = %s\n" % (MINGER_SECRET,))
    try:
        site.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1)
            s.sendto(garbage, (HOST, site.minger))
            try:
                reply = s.recvfrom(70000)[0]
            except socket.timeout:
                reply = b""
            assert reply == b""
        address = "ann@" + CUSTOMER
        assert minger(site.minger, "%s d=%s" % (address, digest(MINGER_SECRET, address))) == address + " 5"
        assert "Traceback" not in site.logText()
    finally:
        site.stop()


def test_providerKilledDuringRelease(tmp_path):
    """
    The provider is killed with SIGKILL while it hands 200 messages over;
    after a restart the next release brings the rest: every message
    arrives, and only those in flight at the kill may arrive twice.
    """
    prov = provider(tmp_path)
    total = 200
    try:
        prov.start()
        site = customer(tmp_path, extra=(
            "[odmr-client:prov]\nhost = %s\nport = %d\ntls = none\nusername = %s\npassword = %s\n"
            "domains = %s\ninterval = 1h\n" % (HOST, prov.odmr, CUSTOMER, SECRET, CUSTOMER)))
        with smtplib.SMTP(HOST, prov.smtp, timeout=30) as client:
            for i in range(total):
                client.sendmail("sender@remote.test", ["ann@" + CUSTOMER],
                                "Subject: m%03d\r\nMessage-ID: <m%03d@remote.test>\r\n\r\nbody\r\n" % (i, i))
        releasing = subprocess.Popen(
            mdpyCommand() + ["-c", site.config, "odmr", "release", "prov"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            waitUntil(lambda: len(subjects(site, "ann@" + CUSTOMER)) >= 40, what="the release to be under way")
            prov.kill()
            output = releasing.communicate(timeout=60)[0]
        finally:
            if releasing.poll() is None:
                releasing.kill()
        assert "Traceback" not in output
        received = subjects(site, "ann@" + CUSTOMER)
        assert 40 <= len(received) < total, output
        prov.start()
        done = site.cli("odmr", "release", "prov")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "released" in done.stdout
        received = subjects(site, "ann@" + CUSTOMER)
        assert sorted(set(received)) == ["m%03d" % (i,) for i in range(total)]
        assert len(received) - total <= 2, len(received) - total
        waitUntil(lambda: "@%s" % CUSTOMER not in queued(prov), what="the provider's queue to empty")
    finally:
        prov.stop()
