"""
Tests of L{mdpy.config}: the schema, the shipped etc/mdpy.ini and errors.
"""

import os

import pytest

from mdpy.config import (
    SCHEMA, Config, ConfigError, configPath, parseDuration, parseSeconds, parseSize, referenceIni, renderIni,
    starterIni,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, text):
    path = tmp_path / "mdpy.ini"
    path.write_text(text)
    return str(path)


def test_shippedIniIsRenderedFromTheSchema():
    with open(os.path.join(ROOT, "etc", "mdpy.ini")) as f:
        assert f.read() == renderIni()


def test_installedReferenceIsTheShippedIni():
    """
    C{mdpy/reference.ini}, installed with the package for C{mdpy init
    --reference}, is C{etc/mdpy.ini}.
    """
    with open(os.path.join(ROOT, "mdpy", "reference.ini")) as f:
        assert f.read() == renderIni()
    assert referenceIni() == renderIni()


def test_starterIniSetsTheChosenValues(tmp_path):
    """
    The starter configuration is the reference with the server's names and
    data directory set, every other key documented at its default.
    """
    text = starterIni("mx.example.test", "example.test", str(tmp_path / "data"))
    assert "\nhostname = mx.example.test\n" in text and "\ndomain = example.test\n" in text
    assert "\ndata_dir = %s\n" % (tmp_path / "data",) in text
    assert ";max_recipients = 1000\n" in text and ";[domainpop:example]\n" in text
    config = Config.load(write(tmp_path, text))
    assert config["server"]["hostname"] == "mx.example.test"
    assert config["server"]["domain"] == "example.test"
    assert config["server"]["data_dir"] == str(tmp_path / "data")
    assert config["smtp"]["port"] == 25


def test_configPathOrder(tmp_path):
    """
    C{-c}, then C{$MDPY_CONFIG}, then C{/etc/mdpy/mdpy.ini} when it exists,
    then C{$XDG_CONFIG_HOME/mdpy/mdpy.ini} (C{~/.config}) when it exists,
    else the embedded default; a new one goes to C{/etc} as root, else
    under C{$XDG_CONFIG_HOME}.
    """
    system = tmp_path / "etc" / "mdpy" / "mdpy.ini"
    user = tmp_path / "xdg" / "mdpy" / "mdpy.ini"
    home = tmp_path / "home" / ".config" / "mdpy" / "mdpy.ini"
    environ = {"MDPY_SYSCONFDIR": str(tmp_path / "etc"), "HOME": str(tmp_path / "home")}
    assert configPath(None, environ) is None
    assert configPath(None, environ, creating=True, root=False) == str(home)
    assert configPath(None, environ, creating=True, root=True) == str(system)
    environ["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    assert configPath(None, environ, creating=True, root=False) == str(user)
    user.parent.mkdir(parents=True)
    user.write_text("")
    assert configPath(None, environ) == str(user)
    assert configPath(None, environ, creating=True, root=True) == str(user)
    system.parent.mkdir(parents=True)
    system.write_text("")
    assert configPath(None, environ) == str(system)
    assert configPath(None, environ, creating=True, root=False) == str(system)
    environ["MDPY_CONFIG"] = "env.ini"
    assert configPath(None, environ) == "env.ini"
    assert configPath("given.ini", environ) == "given.ini"


def test_shippedIniLoadsAndDocumentsEveryKey():
    text = renderIni()
    for section, keys in SCHEMA.items():
        assert "[%s]" % section in text
        for key in keys:
            assert ";%s = %s" % (key.name, key.default) in text
    Config.load(os.path.join(ROOT, "etc", "mdpy.ini"))


def test_uncommentedShippedIniLoads(tmp_path):
    """Every key at its documented default is a valid configuration."""
    lines = []
    for line in renderIni().splitlines():
        if line.startswith(";") and " = " in line:
            line = line[1:]
        elif line.startswith(";["):
            line = line[1:]
        lines.append(line)
    config = Config.load(write(tmp_path, "\n".join(lines)))
    assert config["smtp"]["port"] == 25
    assert config.named("domainpop")["example"]["tls"] == "starttls"


def test_everyServiceAcceptsEnabledNo(tmp_path):
    text = "".join("[%s]\nenabled = no\n" % name for name, keys in SCHEMA.items() if keys[0].name == "enabled")
    config = Config.load(write(tmp_path, text))
    assert config["imap"]["enabled"] is False
    assert config["webadmin"]["enabled"] is False


def test_defaults(tmp_path):
    config = Config.load(None, environ={"HOME": str(tmp_path)})
    assert config["server"]["data_dir"] == str(tmp_path / ".local" / "share" / "mdpy")
    assert config["server"]["domain"] == config["server"]["hostname"]
    config = Config.load(None, environ={"XDG_DATA_HOME": str(tmp_path), "HOME": "/nonexistent"})
    assert config["server"]["data_dir"] == str(tmp_path / "mdpy")
    assert config["submission"]["port"] == 587
    assert config["relay"]["retry"] == [300, 900, 1800, 3600, 7200, 14400, 28800]
    assert config["relay"]["lifetime"] == 5 * 86400
    assert config["smtp"]["max_message_size"] == 50 * 1024 * 1024
    assert config["dns"]["nameservers"] is None


def test_pathsAreRelativeToTheFile(tmp_path):
    config = Config.load(write(tmp_path, "[server]\ndata_dir = data\n[tls]\ncertificate = c.pem\nprivate_key = /k.pem\n"))
    assert config["server"]["data_dir"] == str(tmp_path / "data")
    assert config["tls"]["certificate"] == str(tmp_path / "c.pem")
    assert config["tls"]["private_key"] == "/k.pem"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[smtp]\nport = not-a-port\n", "[smtp] port = not-a-port: invalid literal"),
        ("[smtp]\nport = 70000\n", "[smtp] port = 70000: a port is a number from 1 to 65535"),
        ("[smtp]\nenabled = maybe\n", "[smtp] enabled = maybe: expected yes or no"),
        ("[smtp]\nprot = 25\n", "[smtp] unknown key 'prot'"),
        ("[smpt]\n", "unknown section [smpt]"),
        ("[relay]\nlifetime = forever\n", "[relay] lifetime = forever: expected a duration"),
        ("[auth]\nfailure_delay = soon\n", "[auth] failure_delay = soon: expected a duration like 2s"),
        ("[auth]\naddress_failures = -1\n", "[auth] address_failures = -1: must not be negative"),
        ("[domainpop:isp]\ntls = ssl\n", "[domainpop:isp] tls = ssl: expected one of: none, starttls, implicit"),
        ("[tls]\ncertificate = c.pem\n", "certificate and private_key go together"),
        ("not an ini", "File contains no section headers."),
        ("[smtp]\nport = 1\n[smtp]\nport = 2\n", "section 'smtp' already exists"),
    ],
)
def test_badValuesGiveOneLine(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(path + ": ")
    assert message in text


def test_missingFile(tmp_path):
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        Config.load(str(tmp_path / "absent.ini"))


def test_units():
    assert parseDuration("30s") == 30 and parseDuration("10m") == 600
    assert parseDuration("1h") == 3600 and parseDuration("7d") == 604800 and parseDuration("45") == 45
    assert parseSize("512K") == 524288 and parseSize("50M") == 52428800 and parseSize("10240000") == 10240000
    with pytest.raises(ValueError):
        parseSize("lots")
    assert parseSeconds("2s") == 2.0 and parseSeconds("0.05s") == 0.05 and parseSeconds("1m") == 60.0
    assert parseSeconds("0") == 0.0
    with pytest.raises(ValueError):
        parseSeconds("-1s")


def test_interfaceDefaultsToServerInterface(tmp_path):
    """
    Every service listens on C{[server] interface} (by default C{::}, every
    address) unless its own section names another.
    """
    config = Config.load(None, environ={"HOME": str(tmp_path)})
    assert config["server"]["interface"] == "::"
    assert {config[name]["interface"] for name in ("smtp", "imap", "pop3s", "odmr", "minger")} == {"::"}
    config = Config.load(write(tmp_path, "[server]\ninterface = 0.0.0.0\n[imap]\ninterface = 127.0.0.1\n"
                                         "[pop3]\ninterface =\n"))
    assert config["smtp"]["interface"] == config["pop3"]["interface"] == config["minger"]["interface"] == "0.0.0.0"
    assert config["imap"]["interface"] == "127.0.0.1"


def test_recipientDelimiter(tmp_path):
    """
    C{+} unless set; set empty, subaddressing is off (not the default).
    """
    assert Config.load(None, environ={"HOME": str(tmp_path)})["server"]["recipient_delimiter"] == "+"
    config = Config.load(write(tmp_path, "[server]\nrecipient_delimiter = -\n"))
    assert config["server"]["recipient_delimiter"] == "-"
    config = Config.load(write(tmp_path, "[server]\nrecipient_delimiter =\n"))
    assert config["server"]["recipient_delimiter"] == ""
