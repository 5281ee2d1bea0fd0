"""
End-to-end tests of the inbound checks (SPF, DKIM) of a real C{twistd mdpy}
on loopback when DNS is in trouble, and of the cache of its DNS answers.
"""

import email
import email.policy
import smtplib
import socket
import time
from collections import Counter

from tests.dnsserver import DNSProcess
from tests.server import HOST, MdpyServer, makeMessage

USER = "joe@example.test"


def test_unreachableDNSGivesTemperrorWithinTheDeadline(tmp_path):
    """
    A name server that never answers: a port-25 message is accepted once
    C{[dns] timeout} has passed, its header says C{temperror} and names the
    lookup left unanswered, and the log has one warning line for it, no
    traceback.
    """
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((HOST, 0))
    silent.setblocking(False)
    server = MdpyServer(
        tmp_path,
        smtpExtra="authentication_results = yes\n",
        extra="[dns]\nnameservers = %s:%d\ntimeout = 2s\n" % silent.getsockname(),
    )
    for args in (("domain", "add", "example.test"), ("user", "add", USER, "--password", "joe-secret")):
        done = server.cli(*args)
        assert done.returncode == 0, done.stderr
    server.start()
    try:
        started = time.monotonic()
        with smtplib.SMTP(server.host, server.smtp, timeout=60) as client:
            client.ehlo("client.test")
            refused = client.sendmail("alice@remote.test", [USER], makeMessage("no DNS"))
        waited = time.monotonic() - started
        assert refused == {}
        # The default resolver would try for 1 + 3 + 11 seconds.
        assert 2 <= waited < 10, waited
        [raw] = server.messages(USER)
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        field = " ".join(message["Authentication-Results"].split())
        assert field == (
            "mx.example.test; spf=temperror (DNS lookup of TXT remote.test timed out after 2s)"
            " smtp.mailfrom=alice@remote.test; dkim=none"
        )
        queries = []
        while True:
            try:
                queries.append(silent.recv(512))
            except BlockingIOError:
                break
        assert queries, "mdpy never asked the name server"
        log = server.logText()
        warnings = [line for line in log.splitlines() if "inbound check of mail from" in line]
        assert len(warnings) == 1, warnings
        assert warnings[0].endswith(
            "inbound check of mail from <alice@remote.test> (client 127.0.0.1):"
            " DNS lookup of TXT remote.test timed out after 2s; SPF result temperror"
        )
        assert "Traceback" not in log
    finally:
        server.stop()
        silent.close()


def test_oneQueryPerNameForManyMessages(tmp_path):
    """
    200 port-25 messages from one sender domain, with the checks on, cost
    the name server one query per name: the sender domain's SPF record, and
    the NXDOMAIN of the HELO name the null sender's messages are checked by,
    kept for the SOA minimum of its zone (RFC 2308 section 5).
    """
    dnsServer = DNSProcess(
        tmp_path, {"remote.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"], "SOA": 300}}
    )
    server = MdpyServer(
        tmp_path,
        smtpExtra="authentication_results = yes\n",
        extra="[dns]\nnameservers = %s\n" % (dnsServer.nameserver,),
    )
    try:
        for args in (("domain", "add", "example.test"), ("user", "add", USER, "--password", "joe-secret")):
            done = server.cli(*args)
            assert done.returncode == 0, done.stderr
        server.start()
        with smtplib.SMTP(server.host, server.smtp, timeout=60) as client:
            client.ehlo("client.remote.test")
            for i in range(200):
                sender = "" if i % 20 == 0 else "alice@remote.test"
                refused = client.sendmail(sender, [USER], makeMessage("message %d" % (i,)))
                assert refused == {}
        messages = server.messages(USER)
        assert len(messages) == 200
        results = Counter()
        for raw in messages:
            message = email.message_from_bytes(raw, policy=email.policy.compat32)
            results[" ".join(message["Authentication-Results"].split())] += 1
        assert results == {
            "mx.example.test; spf=pass smtp.mailfrom=alice@remote.test; dkim=none": 190,
            "mx.example.test; spf=none smtp.helo=client.remote.test; dkim=none": 10,
        }
        assert Counter(dnsServer.queries()) == {
            ("remote.test", "TXT"): 1,
            ("client.remote.test", "TXT"): 1,
        }
    finally:
        server.stop()
        dnsServer.stop()
