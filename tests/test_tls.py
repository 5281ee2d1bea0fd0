"""
Tests of L{mdpy.tls}: what the servers' TLS accepts, checked with Python's
own TLS client over loopback.
"""

import socket
import ssl

import pytest
from twisted.internet import defer, protocol, reactor, threads

from mdpy.testing import TempDirTestCase
from mdpy.tls import TLS_MODES, ensureSelfSigned, serverOptions


class Greeter(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"hello\r\n")


def handshake(port, ciphers=None, version=None):
    """
    @return: C{(protocol version, cipher name)} of a handshake with
        127.0.0.1:C{port}, or the L{ssl.SSLError} text when it failed.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                tls.recv(16)
                return tls.version(), tls.cipher()[0]
        except (ssl.SSLError, ConnectionError) as e:
            return str(e)


class CipherTests(TempDirTestCase):
    def listen(self, **kwargs):
        certificate, key, _ = ensureSelfSigned(self.tempDir(), "mx.example.test")
        factory = protocol.ServerFactory.forProtocol(Greeter)
        port = reactor.listenSSL(0, factory, serverOptions(certificate, key, **kwargs), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_onlyForwardSecretAEADSuites(self):
        """
        TLS 1.3 and TLS 1.2 with ECDHE and GCM work; CBC suites, static RSA
        key exchange and TLS 1.1 are refused.
        """
        port = self.listen()
        version, cipher = yield threads.deferToThread(handshake, port)
        self.assertEqual(version, "TLSv1.3")
        version, cipher = yield threads.deferToThread(
            handshake, port, "ECDHE-RSA-AES128-GCM-SHA256", ssl.TLSVersion.TLSv1_2)
        self.assertEqual((version, cipher), ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"))
        for ciphers in ("ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256", "AES256-SHA256"):
            failed = yield threads.deferToThread(handshake, port, ciphers, ssl.TLSVersion.TLSv1_2)
            self.assertIsInstance(failed, str, ciphers)
            self.assertIn("HANDSHAKE_FAILURE", failed.upper(), ciphers)

    @defer.inlineCallbacks
    def test_opportunisticIsBroader(self):
        """
        Port 25's options take a CBC suite rather than push the sender to
        plaintext.
        """
        port = self.listen(opportunistic=True)
        version, cipher = yield threads.deferToThread(
            handshake, port, "ECDHE-RSA-AES128-SHA", ssl.TLSVersion.TLSv1_2)
        self.assertEqual((version, cipher), ("TLSv1.2", "ECDHE-RSA-AES128-SHA"))


@pytest.mark.parametrize("mode", TLS_MODES + ("ssl",))
def test_oneListOfClientTLSModes(mode, tmp_path):
    """
    The configuration, the POP3 client, the ODMR customer and the MultiPOP
    accounts accept the same TLS modes, L{TLS_MODES}, and refuse others.
    """
    from mdpy.config import Config, ConfigError
    from mdpy.errors import InvalidInput
    from mdpy.backends.files.remoteaccounts import RemoteAccountsFile
    from mdpy.odmr.customer import ODMRAccount
    from mdpy.pop3.client import POP3Account

    path = tmp_path / "mdpy.ini"
    path.write_text("[relay]\nsmarthost_tls = %s\n[domainpop:isp]\ntls = %s\n" % (mode, mode))
    accounts = RemoteAccountsFile(str(tmp_path / "accounts.json"))
    if mode in TLS_MODES:
        config = Config.load(str(path))
        assert config["relay"]["smarthost_tls"] == config.named("domainpop")["isp"]["tls"] == mode
        assert POP3Account("pop.isp.test", tls=mode).tls == mode
        assert ODMRAccount("isp", "odmr.isp.test", tls=mode).tls == mode
        accounts.add("bob@example.test", "pop.isp.test", tls=mode)
        assert [account["tls"] for account in accounts.list()] == [mode]
    else:
        with pytest.raises(ConfigError):
            Config.load(str(path))
        with pytest.raises(ValueError):
            POP3Account("pop.isp.test", tls=mode)
        with pytest.raises(ValueError):
            ODMRAccount("isp", "odmr.isp.test", tls=mode)
        with pytest.raises(InvalidInput, match="none, starttls, implicit"):
            accounts.add("bob@example.test", "pop.isp.test", tls=mode)
