"""
Tests of DKIM signing (L{mdpy.mailauth.dkim}) and C{mdpy dkim generate}.
"""

import io
import os
import re
import stat

import dkim
import pytest

from mdpy.cli import main
from mdpy.datadir import DataDir
from mdpy.mailauth.dkim import DKIMKeys, zoneLine
from mdpy.errors import InvalidInput

MESSAGE = (
    b"Received: from client.example.net by mx.example.com\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Cc: carol@example.net\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"See you at noon.\r\n"
)


def txtLookup(records):
    """
    @param records: C{{name: record text}}, names without the trailing dot.
    @return: a dkimpy C{dnsfunc} answering from C{records}.
    """

    def dnsfunc(name, timeout=5):
        record = records.get(name.decode("ascii").rstrip("."))
        return None if record is None else record.encode("ascii")

    return dnsfunc


def signatureTags(header):
    """
    @return: the tags of a C{DKIM-Signature:} field, values unfolded.
    """
    value = header.split(b":", 1)[1]
    value = re.sub(rb"\s+", b"", value).decode("ascii")
    return dict(tag.split("=", 1) for tag in value.strip(";").split(";"))


@pytest.fixture
def keys(tmp_path):
    return DKIMKeys(str(tmp_path / "dkim"))


def test_generateSignVerify(keys):
    record = keys.generate("Example.COM")
    assert record.startswith("v=DKIM1; k=rsa; p=MII")
    assert keys.recordName("example.com") == "mdpy._domainkey.example.com"
    signer = keys.signerFor("EXAMPLE.com")
    assert (signer.domain, signer.selector) == ("example.com", "mdpy")
    header = signer.sign(MESSAGE)
    assert header.startswith(b"DKIM-Signature: ") and header.endswith(b"\r\n")
    assert b"\n" not in header.replace(b"\r\n", b"")
    dnsfunc = txtLookup({"mdpy._domainkey.example.com": record})
    assert dkim.verify(header + MESSAGE, dnsfunc=dnsfunc)
    tags = signatureTags(header)
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == (
        "rsa-sha256",
        "relaxed/relaxed",
        "example.com",
        "mdpy",
    )


def test_signedHeaders(keys):
    keys.generate("example.com")
    tags = signatureTags(keys.signerFor("example.com").sign(MESSAGE))
    signed = tags["h"].split(":")
    assert signed == ["from", "to", "cc", "subject", "date", "message-id", "from"]


def test_addedFromBreaksSignature(keys):
    """
    C{From} is signed once more than it occurs, so a second one added on the
    way breaks the signature (RFC 6376 section 8.15).
    """
    record = keys.generate("example.com")
    header = keys.signerFor("example.com").sign(MESSAGE)
    dnsfunc = txtLookup({"mdpy._domainkey.example.com": record})
    forged = header + b"From: mallory@example.com\r\n" + MESSAGE
    assert not dkim.verify(forged, dnsfunc=dnsfunc)
    assert dkim.verify(header + MESSAGE, dnsfunc=dnsfunc)


def test_messageWithoutFrom(keys):
    record = keys.generate("example.com")
    message = b"Subject: no sender\r\n\r\nbody\r\n"
    header = keys.signerFor("example.com").sign(message)
    assert signatureTags(header)["h"].split(":") == ["subject", "from", "from"]
    dnsfunc = txtLookup({"mdpy._domainkey.example.com": record})
    assert dkim.verify(header + message, dnsfunc=dnsfunc)


def test_unsignableMessage(keys):
    keys.generate("example.com")
    with pytest.raises(InvalidInput):
        keys.signerFor("example.com").sign(b"not a header line\r\n\r\nbody\r\n")


def test_eightBitBody(keys):
    record = keys.generate("example.com")
    message = (
        b"From: alice@example.com\r\n"
        b"Subject: caf\xc3\xa9\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"Caf\xc3\xa9 cr\xc3\xa8me \xff\xfe\r\n"
    )
    header = keys.signerFor("example.com").sign(message)
    assert "content-transfer-encoding" in signatureTags(header)["h"].split(":")
    dnsfunc = txtLookup({"mdpy._domainkey.example.com": record})
    assert dkim.verify(header + message, dnsfunc=dnsfunc)
    assert not dkim.verify(header + message.replace(b"\xff", b"\xfe"), dnsfunc=dnsfunc)


def test_bareLineFeeds(keys):
    """
    A message with LF line ends signs as it will be sent, with CRLF.
    """
    record = keys.generate("example.com")
    header = keys.signerFor("example.com").sign(MESSAGE.replace(b"\r\n", b"\n"))
    dnsfunc = txtLookup({"mdpy._domainkey.example.com": record})
    assert dkim.verify(header + MESSAGE, dnsfunc=dnsfunc)


def test_signerForUnknownDomain(keys):
    assert keys.signerFor("example.com") is None
    assert keys.signerFor("not a domain") is None
    keys.generate("example.com")
    assert keys.signerFor("other.example") is None


def test_keyMadeByAnotherProcess(tmp_path):
    """
    A running server's L{DKIMKeys} sees a key that C{mdpy dkim generate}
    made after it was created, and a replaced key.
    """
    server = DKIMKeys(str(tmp_path / "dkim"))
    assert server.signerFor("example.com") is None
    first = DKIMKeys(str(tmp_path / "dkim")).generate("example.com")
    signer = server.signerFor("example.com")
    assert signer is not None
    assert server.signerFor("example.com") is signer  # cached
    second = DKIMKeys(str(tmp_path / "dkim")).generate("example.com", selector="s2")
    replaced = server.signerFor("example.com")
    assert replaced.selector == "s2"
    header = replaced.sign(MESSAGE)
    assert dkim.verify(header + MESSAGE, dnsfunc=txtLookup({"s2._domainkey.example.com": second}))
    assert not dkim.verify(
        header + MESSAGE, dnsfunc=txtLookup({"s2._domainkey.example.com": first})
    )
    os.unlink(os.path.join(str(tmp_path / "dkim"), "example.com.key"))
    assert server.signerFor("example.com") is None


def test_keyFileMode(keys):
    keys.generate("example.com")
    keyPath = os.path.join(keys.directory, "example.com.key")
    assert stat.S_IMODE(os.stat(keyPath).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(keys.directory).st_mode) == 0o700
    with open(keyPath, "rb") as f:
        assert f.read().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert sorted(os.listdir(keys.directory)) == ["example.com.key", "example.com.selector"]


def test_internationalDomain(keys):
    record = keys.generate("Bücher.Example")
    assert keys.recordName("bücher.example") == "mdpy._domainkey.xn--bcher-kva.example"
    signer = keys.signerFor("xn--bcher-kva.example")
    header = signer.sign(MESSAGE)
    assert signatureTags(header)["d"] == "xn--bcher-kva.example"
    dnsfunc = txtLookup({"mdpy._domainkey.xn--bcher-kva.example": record})
    assert dkim.verify(header + MESSAGE, dnsfunc=dnsfunc)


def test_keySize(keys):
    record = keys.generate("example.com", bits=1024)
    assert len(record) < 255
    record = keys.generate("example.com", bits=2048)
    assert 255 < len(record) < 512


@pytest.mark.parametrize(
    "domain, options",
    [
        ("not a domain", {}),
        ("localhost", {}),
        ("-bad.example", {}),
        ("a..example", {}),
        ("192.0.2.1", {}),
        ("example.com", {"selector": "bad selector"}),
        ("example.com", {"selector": ""}),
        ("example.com", {"bits": 512}),
        ("example.com", {"bits": 8192}),
    ],
)
def test_badInput(keys, domain, options):
    with pytest.raises(InvalidInput):
        keys.generate(domain, **options)
    assert keys.signerFor("example.com") is None


def test_zoneLine():
    text = "v=DKIM1; k=rsa; p=" + "A" * 600
    line = zoneLine("mdpy._domainkey.example.com", text)
    assert line.startswith('mdpy._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=AAA')
    assert line.endswith(" )")
    strings = re.findall(r'"([^"]*)"', line)
    assert [len(s) for s in strings] == [255, 255, 108]
    assert "".join(strings) == text


class CLI:
    def __init__(self, tmp_path):
        self.config = tmp_path / "mdpy.ini"
        self.config.write_text("[server]\ndata_dir = data\nhostname = mx.example.test\n")
        self.datadir = DataDir(str(tmp_path / "data"))

    def __call__(self, *args):
        out, err = io.StringIO(), io.StringIO()
        status = main(["-c", str(self.config)] + list(args), out, io.StringIO(), err)
        return status, out.getvalue(), err.getvalue()


def parseZoneLine(line):
    """
    @return: C{(owner, text)} of a one-line TXT record in zone-file syntax.
    """
    match = re.match(r'(\S+) IN TXT \( ((?:"[^"]{1,255}" ?)+)\)\n\Z', line)
    assert match, line
    return match.group(1), "".join(re.findall(r'"([^"]*)"', match.group(2)))


def test_cliGenerate(tmp_path):
    """
    C{mdpy dkim generate} works before the server's first start, prints the
    record as one zone-file line, and the key it makes signs at once.
    """
    cli = CLI(tmp_path)
    assert not os.path.exists(cli.datadir.root)
    status, out, err = cli("dkim", "generate", "Example.com")
    assert (status, err) == (0, "")
    owner, text = parseZoneLine(out)
    assert owner == "mdpy._domainkey.example.com."
    assert text.startswith("v=DKIM1; k=rsa; p=MII")
    keyPath = os.path.join(cli.datadir.dkimDir, "example.com.key")
    assert stat.S_IMODE(os.stat(keyPath).st_mode) == 0o600
    signer = DKIMKeys(cli.datadir.dkimDir).signerFor("example.com")
    header = signer.sign(MESSAGE)
    dnsfunc = txtLookup({owner.rstrip("."): text})
    assert dkim.verify(header + MESSAGE, dnsfunc=dnsfunc)


def test_cliOptions(tmp_path):
    cli = CLI(tmp_path)
    status, out, err = cli("dkim", "generate", "example.com", "--selector", "s1", "--bits", "1024")
    assert (status, err) == (0, "")
    owner, text = parseZoneLine(out)
    assert owner == "s1._domainkey.example.com."
    assert DKIMKeys(cli.datadir.dkimDir).signerFor("example.com").selector == "s1"


@pytest.mark.parametrize(
    "args",
    [
        ["not a domain"],
        ["example.com", "--bits", "100"],
        ["example.com", "--selector", "a b"],
    ],
)
def test_cliErrors(tmp_path, args):
    cli = CLI(tmp_path)
    status, out, err = cli("dkim", "generate", *args)
    assert (status, out) == (1, "")
    assert err.startswith("mdpy: error: ") and err.count("\n") == 1, err
    assert DKIMKeys(cli.datadir.dkimDir).signerFor("example.com") is None


def test_cliListShowDisable(tmp_path):
    """
    C{dkim list} names the signed domains and their records, C{dkim show}
    prints a record again, C{dkim disable} stops signing (a running
    server's next message goes unsigned) and keeps the key aside.
    """
    cli = CLI(tmp_path)
    status, generated, err = cli("dkim", "generate", "example.com", "--bits", "1024")
    assert status == 0, err
    cli("dkim", "generate", "example.org", "--selector", "s2", "--bits", "1024")
    assert cli("dkim", "list")[1] == (
        "example.com mdpy._domainkey.example.com\nexample.org s2._domainkey.example.org\n")
    status, shown, err = cli("dkim", "show", "Example.COM")
    assert (status, shown, err) == (0, generated, "")
    keys = DKIMKeys(cli.datadir.dkimDir)
    assert keys.signerFor("example.com") is not None
    status, out, err = cli("dkim", "disable", "example.com")
    assert (status, err) == (0, "")
    assert "remove mdpy._domainkey.example.com from DNS" in out
    assert keys.signerFor("example.com") is None
    assert os.path.exists(os.path.join(cli.datadir.dkimDir, "example.com.key.disabled"))
    assert cli("dkim", "list")[1] == "example.org s2._domainkey.example.org\n"
    for action in ("show", "disable"):
        status, out, err = cli("dkim", action, "example.com")
        assert (status, out) == (1, "")
        assert err == "mdpy: error: no DKIM key for example.com\n"
