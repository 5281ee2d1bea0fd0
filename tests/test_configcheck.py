"""
Tests of L{mdpy.configcheck}: what the start would reject is found before
anything is made, as one line naming the key and the fix.
"""

import json
import os

import pytest
from twisted.internet.testing import MemoryReactorClock

from mdpy.config import Config, ConfigError
from mdpy.configcheck import checkConfig
from mdpy.tls import ensureSelfSigned

SERVER = "[server]\nhostname = mx.example.test\ndomain = example.test\n"


def certificates(root):
    """
    @return: C{(certificate, key, otherKey)}: a self-signed certificate,
        its key and the key of another one.
    """
    certificate, key, _ = ensureSelfSigned(os.path.join(root, "tls-a"), "a.example.test")
    _, otherKey, _ = ensureSelfSigned(os.path.join(root, "tls-b"), "b.example.test")
    return certificate, key, otherKey


def _missingCertificate(root):
    return ("data_dir = data\n[tls]\ncertificate = missing.pem\nprivate_key = missing.key\n",
            "[tls] certificate = %s/missing.pem: cannot read: No such file or directory; give a readable file"
            % (root,))


def _unreadableKey(root):
    certificate = certificates(root)[0]
    return ("data_dir = data\n[tls]\ncertificate = %s\nprivate_key = %s\n" % (certificate, root),
            "[tls] private_key = %s: cannot read: Is a directory" % (root,))


def _keyOfAnotherCertificate(root):
    certificate, _, otherKey = certificates(root)
    return ("data_dir = data\n[tls]\ncertificate = %s\nprivate_key = %s\n" % (certificate, otherKey),
            "[tls] private_key = %s does not match certificate = %s; give the key of that certificate"
            % (otherKey, certificate))


def _notPEM(root):
    with open(os.path.join(root, "junk.pem"), "w") as f:
        f.write("not a certificate\n")
    return ("data_dir = data\n[tls]\ncertificate = junk.pem\nprivate_key = junk.pem\n",
            "[tls] certificate = %s/junk.pem, private_key = %s/junk.pem: not a PEM certificate chain" % (root, root))


def _twoServicesOnOnePort(root):
    return ("data_dir = data\n[smtp]\nport = 2525\n[submission]\nport = 2525\n",
            "[submission] port = 2525: [smtp] listens there too (::); give each service a port of its own")


def _aWildcardAndAnAddress(root):
    return ("data_dir = data\n[pop3]\nport = 2110\ninterface = ::\n[imap]\nport = 2110\ninterface = 127.0.0.1\n",
            "[imap] port = 2110: [pop3] listens there too (::)")


def _interfaceNotAnAddress(root):
    return ("data_dir = data\n[imap]\ninterface = mail.example.test\n",
            "[imap] interface = mail.example.test: not an IP address; give one of this host's addresses")


def _domainpopWithoutHost(root):
    return ("data_dir = data\n[domainpop:isp]\nusername = u\npassword = p\n",
            "[domainpop:isp] host is not set; set it, or enabled = no")


def _domainpopWithoutCredentials(root):
    return ("data_dir = data\n[domainpop:isp]\nhost = pop.isp.test\n",
            "[domainpop:isp] username and password are not set; set them, or enabled = no")


def _odmrClientWithoutHost(root):
    return ("data_dir = data\n[odmr-client:provider]\nusername = u\npassword = p\n",
            "[odmr-client:provider] host is not set")


def _odmrClientWithoutPassword(root):
    return ("data_dir = data\n[odmr-client:provider]\nhost = odmr.provider.test\nusername = u\n",
            "[odmr-client:provider] password is not set")


def _caFileMissing(root):
    return ("data_dir = data\n[multipop]\nca_file = cas.pem\n",
            "[multipop] ca_file = %s/cas.pem: cannot read: No such file or directory" % (root,))


def _dataDirUnderAFile(root):
    with open(os.path.join(root, "file"), "w"):
        pass
    return ("data_dir = file/sub\n",
            "[server] data_dir = %s/file/sub: cannot be written (%s/file is not a folder);"
            " choose a folder this user can write" % (root, root))


def _factoryNotImportable(root):
    return ("[smtp]\nfactory = no.such:Thing\n",
            "[smtp] factory = no.such:Thing: cannot import no.such: No module named 'no'")


def _factoryOfAnotherKind(root):
    return ("[imaps]\nfactory = tests.plugins:XSMTPServerFactory\n",
            "[imaps] factory = tests.plugins:XSMTPServerFactory: not a subclass of mdpy.imap.server.IMAP4Factory")


def _unknownCheck(root):
    return ("[smtp]\nchecks = spf, dmarc\n",
            "[smtp] checks: dmarc: not a check; the built-in ones are spf, dkim, others are package.module:Class")


def _checkNotACheck(root):
    return ("[smtp]\nchecks = tests.plugins:NotAFactory\n",
            "[smtp] checks: tests.plugins:NotAFactory: provides no mdpy.interfaces.ICheck")


def _sharedMemoryBackend(root):
    return ("data_dir = data\nbackend = memory\nshared_data_dir = yes\n",
            "[server] shared_data_dir = yes with [server] backend = memory: the memory backend lives in one"
            " process and no other server shares it; use shared_data_dir = no or the files backend")


def _workersOfAMemoryBackend(root):
    return ("data_dir = data\nbackend = memory\nworkers = 2\n",
            "[server] workers = 2: the memory backend lives in one process; use workers = 1 or the files backend")


BAD_CONFIGURATIONS = {
    "factory not importable": _factoryNotImportable,
    "factory of another kind": _factoryOfAnotherKind,
    "unknown check": _unknownCheck,
    "check not an ICheck": _checkNotACheck,
    "missing certificate": _missingCertificate,
    "unreadable key": _unreadableKey,
    "key of another certificate": _keyOfAnotherCertificate,
    "not PEM": _notPEM,
    "two services on one port": _twoServicesOnOnePort,
    "a wildcard and an address": _aWildcardAndAnAddress,
    "interface not an address": _interfaceNotAnAddress,
    "DomainPOP without host": _domainpopWithoutHost,
    "DomainPOP without credentials": _domainpopWithoutCredentials,
    "ODMR client without host": _odmrClientWithoutHost,
    "ODMR client without password": _odmrClientWithoutPassword,
    "CA file missing": _caFileMissing,
    "data dir under a file": _dataDirUnderAFile,
    "shared memory backend": _sharedMemoryBackend,
    "workers of a memory backend": _workersOfAMemoryBackend,
}


def writeBad(root, name):
    """
    Write the bad configuration C{name} of L{BAD_CONFIGURATIONS} to
    C{root/mdpy.ini}.

    @return: C{(path, expected)}: the file and the text its one line of
        error holds.
    """
    extra, expected = BAD_CONFIGURATIONS[name](str(root))
    path = os.path.join(str(root), "mdpy.ini")
    with open(path, "w") as f:
        f.write(SERVER + extra)
    return path, "%s: %s" % (path, expected)


@pytest.mark.parametrize("name", sorted(BAD_CONFIGURATIONS))
def test_badConfiguration(tmp_path, name):
    path, expected = writeBad(tmp_path, name)
    with pytest.raises(ConfigError) as raised:
        checkConfig(Config.load(path), reactor=MemoryReactorClock())
    assert str(raised.value).startswith(expected)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "data").exists()


def test_goodConfigurationPasses(tmp_path):
    """
    A real certificate and key, services on distinct ports and addresses
    (one port on two addresses, TCP and UDP alike), complete collecting
    sections and a disabled incomplete one pass; so does the embedded
    default.
    """
    certificate, key, _ = certificates(str(tmp_path))
    path = tmp_path / "mdpy.ini"
    path.write_text(
        SERVER + "data_dir = data\n[tls]\ncertificate = %s\nprivate_key = %s\n" % (certificate, key)
        + "[pop3]\nport = 2110\ninterface = 127.0.0.1\n[imap]\nport = 2110\ninterface = 127.0.0.2\n"
        "[odmr]\nport = 4069\n"
        "[domainpop:isp]\nhost = pop.isp.test\nusername = u\npassword = p\n"
        "[domainpop:old]\nenabled = no\n"
        "[odmr-client:provider]\nhost = odmr.provider.test\nusername = u\npassword = p\n"
    )
    checkConfig(Config.load(str(path)), reactor=MemoryReactorClock())
    checkConfig(Config.load(None, environ={"HOME": str(tmp_path)}), reactor=MemoryReactorClock())
    assert not (tmp_path / "data").exists()


def test_portOffsetPastTheLastPort(tmp_path):
    path = tmp_path / "mdpy.ini"
    path.write_text(SERVER + "data_dir = data\n[imaps]\nport = 60000\n")
    config = Config.load(str(path))
    checkConfig(config, portOffset=5535, reactor=MemoryReactorClock())
    with pytest.raises(ConfigError) as raised:
        checkConfig(config, portOffset=5536, reactor=MemoryReactorClock())
    assert str(raised.value) == (
        "%s: [imaps] port = 60000: with --port-offset 5536 it is past 65535; use a smaller offset" % (path,))


def test_multipopAccountWithoutHost(tmp_path):
    """
    A MultiPOP account with no host (an accounts file edited by hand) is
    named, with the command that removes it.
    """
    accounts = tmp_path / "data" / "multipop" / "accounts.json"
    accounts.parent.mkdir(parents=True)
    accounts.write_text(json.dumps([{"id": "ab12cd34", "user": "joe@example.test", "host": "",
                                     "username": "joe", "password": "pw", "port": 110}]))
    path = tmp_path / "mdpy.ini"
    path.write_text(SERVER + "data_dir = data\n")
    with pytest.raises(ConfigError) as raised:
        checkConfig(Config.load(str(path)), reactor=MemoryReactorClock())
    assert str(raised.value) == (
        "%s: MultiPOP account ab12cd34: host is not set; remove it with 'mdpy multipop del ab12cd34'"
        " and add it again" % (accounts,))
    path.write_text(SERVER + "data_dir = data\n[multipop]\nenabled = no\n")
    checkConfig(Config.load(str(path)), reactor=MemoryReactorClock())
