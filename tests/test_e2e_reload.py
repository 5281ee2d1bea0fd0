"""
End-to-end reload: a real C{twistd mdpy} reads its edited configuration
again on C{SIGHUP} or C{mdpy reload}, while clients stay connected.
Dovecot's POP3 server on loopback plays the ISP of a DomainPOP section
added to the running server.
"""

import imaplib
import re
import signal
import smtplib
import ssl

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from mdpy.tls import ensureSelfSigned
from tests.server import MdpyServer, freePorts, waitUntil
from tests.test_domainpop_service import message
from tests.test_e2e_domainpop import isp  # noqa: F401 (the ISP fixture)

TO_ALICE = message(b"From: x@far.test\nTo: alice@example.test\nMessage-ID: <reload@far.test>\n"
                   b"Subject: collected after the reload\n")


def mdpyServer(root):
    server = MdpyServer(root, imapExtra="allow_plaintext_auth = yes\n", extra="[multipop]\nenabled = no\n")
    assert server.cli("domain", "add", "example.test").returncode == 0
    assert server.cli("user", "add", "alice@example.test", "--password", "alice-secret").returncode == 0
    return server


def edit(server, old, new):
    """
    Replace C{old} by C{new} in the server's configuration file.
    """
    with open(server.config) as f:
        text = f.read()
    assert old in text
    with open(server.config, "w") as f:
        f.write(text.replace(old, new, 1))


def reloadBy(how, server, expectFailure=False):
    """
    Ask the running server to reload: C{signal} sends C{SIGHUP} and waits
    for the log to show the reload, C{command} runs C{mdpy reload}.

    @return: the completed C{mdpy reload}, or L{None}.
    """
    if how == "command":
        done = server.cli("reload")
        assert (done.returncode != 0) == expectFailure, done.stderr
        return done
    reloads = server.logText().count("reload: ")
    server.process.send_signal(signal.SIGHUP)
    waitUntil(lambda: server.logText().count("reload: ") > reloads, what="the reload in the log")
    return None


def ehloSize(server, port):
    with smtplib.SMTP(server.host, port, timeout=10) as client:
        client.ehlo("client.test")
        return int(client.esmtp_features["size"])


@pytest.mark.parametrize("how", ["signal", "command"])
def test_domainpopSectionAddedWhileIMAPStaysConnected(tmp_path, isp, how):  # noqa: F811
    """
    A [domainpop:NAME] section added to the running server collects without
    a restart, while an IMAP session stays logged in; a changed SMTP limit
    is advertised to new connections, and a changed port is named as
    needing a restart.
    """
    isp.fill([TO_ALICE])
    server = mdpyServer(tmp_path)
    server.start()
    imap = imaplib.IMAP4(server.host, server.imap, timeout=10)
    try:
        imap.login("alice@example.test", "alice-secret")
        imap.select("INBOX")
        assert ehloSize(server, server.smtp) == 50 * 1024 * 1024
        [newPort] = freePorts(1)
        edit(server, "[smtp]\nport = %d\n" % (server.smtp,), "[smtp]\nport = %d\nmax_message_size = 1M\n" % (newPort,))
        with open(server.config, "a") as f:
            f.write("[domainpop:isp]\nhost = 127.0.0.1\nport = %d\ntls = none\nusername = box@isp.test\n"
                    "password = secret\ninterval = 1h\n" % (isp.port,))
        done = reloadBy(how, server)
        restart = "reload: these settings need a restart to take effect: [smtp] port"
        if done is not None:
            assert done.stdout.splitlines() == [
                "reload: read %s" % (server.config,),
                "reload: applied [smtp] max_message_size, [domainpop:isp]",
                restart,
            ]
        waitUntil(lambda: len(server.messages("alice@example.test")) == 1, what="the collected message")
        assert b"Subject: collected after the reload" in server.messages("alice@example.test")[0]
        # The copy is stored before the message is deleted at the ISP.
        waitUntil(lambda: isp.remaining() == 0, what="the deletion at the ISP")
        # The session opened before the reload goes on and sees the message.
        assert imap.noop()[0] == "OK"
        status, data = imap.search(None, "ALL")
        assert (status, data) == ("OK", [b"1"])
        # New connections get the new limit, on the port the server has.
        assert ehloSize(server, server.smtp) == 1024 * 1024
        log = server.logText()
        assert log.count(restart) == 1
        assert "domainpop/isp: 1 on the server, 1 downloaded" in log
    finally:
        imap.logout()
        server.stop()
    assert "Traceback" not in server.logText()


def certificateName(server, port):
    pem = ssl.get_server_certificate((server.host, port))
    certificate = x509.load_pem_x509_certificate(pem.encode())
    return certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_reloadedCertificateAndRefusedConfiguration(tmp_path):
    """
    C{mdpy reload} makes new TLS connections get the configured certificate
    while an SMTP session stays open; a configuration that cannot be used
    is refused by C{mdpy reload} (one line, non-zero status) and by
    C{SIGHUP} (one error line in the log), and the server goes on with the
    one it runs.
    """
    (tmp_path / "server").mkdir()
    server = mdpyServer(tmp_path / "server")
    server.start()
    ensureSelfSigned(str(tmp_path / "renewed"), "renewed.example.test")
    smtp = smtplib.SMTP(server.host, server.smtp, timeout=10)
    try:
        smtp.ehlo("client.test")
        assert certificateName(server, server.smtps) == "mx.example.test"
        with open(server.config, "a") as f:
            f.write("[tls]\ncertificate = %s/cert.pem\nprivate_key = %s/key.pem\n"
                    % (tmp_path / "renewed", tmp_path / "renewed"))
        done = reloadBy("command", server)
        assert "reload: applied [tls] certificate, [tls] private_key" in done.stdout
        assert certificateName(server, server.smtps) == "renewed.example.test"
        assert certificateName(server, server.imaps) == "renewed.example.test"
        assert smtp.noop()[0] == 250

        edit(server, "renewed/cert.pem", "missing/cert.pem")
        missing = tmp_path / "missing" / "cert.pem"
        refused = reloadBy("command", server, expectFailure=True)
        assert refused.returncode == 1
        assert refused.stderr == "mdpy: error: [tls] cannot read %s: No such file or directory\n" % (missing,)
        edit(server, "[smtp]\n", "[smtp]\nmax_recipients = many\n")
        reloadBy("signal", server)
        errors = [line for line in server.logText().splitlines() if "reload: " in line and "#error]" in line]
        assert len(errors) == 2
        assert errors[0].endswith("reload: [tls] cannot read %s: No such file or directory; "
                                  "the running configuration is kept" % (missing,))
        assert re.search(r"reload: .*\[smtp\] max_recipients = many: .*; the running configuration is kept$",
                         errors[1])
        assert certificateName(server, server.smtps) == "renewed.example.test"
        assert smtp.noop()[0] == 250
    finally:
        smtp.close()
        server.stop()
    assert "Traceback" not in server.logText()
