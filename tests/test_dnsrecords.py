"""
Tests of C{mdpy dns DOMAIN [--check]} (L{mdpy.dnsrecords}): the records
printed for a configuration, and their check against a loopback DNS server
(L{tests.dnsserver}), in this process and as a real C{mdpy} command.
"""

import io
import subprocess

import pytest
from twisted.internet import reactor
from twisted.trial import unittest

from mdpy.cli import main
from mdpy.datadir import DataDir
from mdpy.mailauth.dkim import DKIMKeys, zoneLine
from mdpy.delivery.mx import MXResolver, makeResolver
from mdpy.dnsrecords import Record, checkRecords, recordsToPublish
from tests.dnsserver import DNSProcess, TestDNSServer
from tests.server import mdpyCommand

CONFIG = """\
[server]
data_dir = data
hostname = MX.Example.TEST
domain = example.test
[imaps]
port = 10993
[pop3]
enabled = no
[dns]
nameservers = %s
"""

# What 'mdpy dns example.test' prints for CONFIG while the domain has no
# DKIM key.
RECORDS = """\
; MX (RFC 5321 section 5.1): mail for example.test goes to mx.example.test, which needs A and AAAA records of its own.
example.test. IN MX 10 mx.example.test.

; SPF (RFC 7208): -all because only mx.example.test sends mail from example.test; receivers may refuse mail from elsewhere.
example.test. IN TXT ( "v=spf1 mx -all" )

; DKIM (RFC 6376): example.test has no key yet; 'mdpy dkim generate example.test' makes one.

; DMARC (RFC 7489): p=none (reports only) because example.test has no DKIM key and forwarded mail would fail; make one, then publish p=quarantine.
_dmarc.example.test. IN TXT ( "v=DMARC1; p=none; rua=mailto:postmaster@example.test" )

; Mail client setup (RFC 6186, RFC 8314 section 5.1): where to send and read mail; target . (RFC 2782) marks a service this server does not offer.
_submission._tcp.example.test. IN SRV 0 1 587 mx.example.test.
_submissions._tcp.example.test. IN SRV 0 1 465 mx.example.test.
_imaps._tcp.example.test. IN SRV 0 1 10993 mx.example.test.
_imap._tcp.example.test. IN SRV 0 1 143 mx.example.test.
_pop3s._tcp.example.test. IN SRV 0 1 995 mx.example.test.
_pop3._tcp.example.test. IN SRV 0 0 0 .

; Thunderbird autoconfig and Outlook autodiscover look for the server at these names.
autoconfig.example.test. IN CNAME mx.example.test.
autodiscover.example.test. IN CNAME mx.example.test.
"""

# RECORDS as a zone of tests/dnsserver.py.
PUBLISHED = {
    "example.test": {"MX": [[10, "mx.example.test"]], "TXT": ["google-site-verification=x", "v=spf1 mx -all"]},
    "_dmarc.example.test": {"TXT": ["v=DMARC1; p=none; rua=mailto:postmaster@example.test"]},
    "_submission._tcp.example.test": {"SRV": [[0, 1, 587, "mx.example.test"]]},
    "_submissions._tcp.example.test": {"SRV": [[0, 1, 465, "mx.example.test"]]},
    "_imaps._tcp.example.test": {"SRV": [[0, 1, 10993, "mx.example.test"]]},
    "_imap._tcp.example.test": {"SRV": [[0, 1, 143, "mx.example.test"]]},
    "_pop3s._tcp.example.test": {"SRV": [[0, 1, 995, "mx.example.test"]]},
    "_pop3._tcp.example.test": {"SRV": [[0, 0, 0, "."]]},
    "autoconfig.example.test": {"CNAME": "mx.example.test"},
    "autodiscover.example.test": {"CNAME": "mx.example.test"},
    "mx.example.test": {"A": ["127.0.0.2"]},
}

ALL_OK = """\
example.test. MX: ok
example.test. TXT: ok
_dmarc.example.test. TXT: ok
_submission._tcp.example.test. SRV: ok
_submissions._tcp.example.test. SRV: ok
_imaps._tcp.example.test. SRV: ok
_imap._tcp.example.test. SRV: ok
_pop3s._tcp.example.test. SRV: ok
_pop3._tcp.example.test. SRV: ok
autoconfig.example.test. CNAME: ok
autodiscover.example.test. CNAME: ok
"""


class CLI:
    def __init__(self, tmp_path, nameserver="127.0.0.1:9", extra=""):
        self.config = tmp_path / "mdpy.ini"
        self.config.write_text(CONFIG % (nameserver,) + extra)
        self.datadir = DataDir(str(tmp_path / "data"))

    def __call__(self, *args):
        out, err = io.StringIO(), io.StringIO()
        status = main(["-c", str(self.config)] + list(args), out, io.StringIO(), err)
        return status, out.getvalue(), err.getvalue()

    def ok(self, *args):
        status, out, err = self(*args)
        assert (status, err) == (0, ""), err
        return out

    def run(self, *args):
        """
        Run a real C{mdpy} command.

        @return: C{(status, stdout, stderr)}.
        """
        done = subprocess.run(
            mdpyCommand() + ["-c", str(self.config)] + list(args),
            capture_output=True, text=True, timeout=120,
        )
        return done.returncode, done.stdout, done.stderr


def test_records(tmp_path):
    """
    The records are printed in zone-file syntax, each group under a comment;
    ports come from the configuration, a disabled service gets the target
    C{.}, names are lowercase and fully qualified.  Nothing is asked of DNS.
    """
    assert CLI(tmp_path).ok("dns", "Example.TEST.") == RECORDS


def test_recordsWithKey(tmp_path):
    """
    With a DKIM key the record C{mdpy dkim show} prints is among them, and
    DMARC asks receivers to quarantine what fails.
    """
    cli = CLI(tmp_path)
    cli.ok("dkim", "generate", "example.test")
    keys = DKIMKeys(cli.datadir.dkimDir)
    dkim = zoneLine(keys.recordName("example.test"), keys.record("example.test"))
    assert cli.ok("dkim", "show", "example.test") == dkim + "\n"
    printed = cli.ok("dns", "example.test")
    assert printed == RECORDS.replace(
        "; DKIM (RFC 6376): example.test has no key yet; 'mdpy dkim generate example.test' makes one.\n",
        "; DKIM (RFC 6376): the public key receivers check the signatures of example.test's mail with.\n"
        + dkim + "\n",
    ).replace(
        "; DMARC (RFC 7489): p=none (reports only) because example.test has no DKIM key and forwarded mail "
        "would fail; make one, then publish p=quarantine.\n"
        '_dmarc.example.test. IN TXT ( "v=DMARC1; p=none; ',
        "; DMARC (RFC 7489): p=quarantine because example.test's mail is DKIM-signed and SPF-covered, "
        "so what fails both is not ours; reports go to postmaster@example.test.\n"
        '_dmarc.example.test. IN TXT ( "v=DMARC1; p=quarantine; ',
    )
    assert dkim.startswith('mdpy._domainkey.example.test. IN TXT ( "v=DKIM1; k=rsa; p=')


def test_smarthost(tmp_path):
    """
    Mail that leaves through a smarthost is not covered by C{mx}: SPF
    softfails the rest until the smarthost's mechanism is added.
    """
    printed = CLI(tmp_path, extra="[relay]\nsmarthost = relay.isp.test:587\n").ok("dns", "example.test")
    assert (
        "; SPF (RFC 7208): ~all (softfail) because mail leaves through the smarthost relay.isp.test:587: "
        "add its provider's include: and then make it -all.\n"
        'example.test. IN TXT ( "v=spf1 mx ~all" )\n'
    ) in printed
    assert "-all" not in printed.replace("make it -all", "")


def test_otherLocalDomain(tmp_path):
    """
    Any local domain has records; one that is not local is one error line.
    """
    cli = CLI(tmp_path)
    status, out, err = cli("dns", "other.test")
    assert (status, out, err) == (1, "", "mdpy: error: other.test is not a local domain (see mdpy domain list)\n")
    cli.ok("domain", "add", "other.test")
    assert cli.ok("dns", "other.test") == RECORDS.replace("example.test", "other.test").replace(
        "mx.other.test", "mx.example.test"
    )
    status, out, err = cli("dns", "not a domain")
    assert (status, out) == (1, "") and err.startswith("mdpy: error: ") and err.count("\n") == 1


def test_recordMatches():
    """
    A published record matches in any case and spacing; the tags of DMARC
    and DKIM records in any order.  Other TXT records at the name are not
    taken for SPF or DMARC.
    """
    spf = Record("example.test", "TXT", "v=spf1 mx -all", "v=spf1")
    assert spf.matches("V=SPF1  MX -ALL")
    assert not spf.matches("v=spf1 mx ~all")
    assert spf.ofKind("v=spf1") and not spf.ofKind("v=spf10 mx") and not spf.ofKind("google-site-verification=x")
    dmarc = Record("_dmarc.example.test", "TXT", "v=DMARC1; p=none; rua=mailto:postmaster@example.test", "v=DMARC1")
    assert dmarc.matches("v=DMARC1;rua=mailto:postmaster@example.test;p=none;")
    assert not dmarc.matches("v=DMARC1; p=reject; rua=mailto:postmaster@example.test")
    assert dmarc.ofKind("v=DMARC1;p=none")
    dkim = Record("mdpy._domainkey.example.test", "TXT", "v=DKIM1; k=rsa; p=ABCD")
    assert dkim.matches("v=DKIM1; k=rsa; p=AB CD") and not dkim.matches("v=DKIM1; k=rsa; p=abcd")
    assert dkim.ofKind("anything")
    mx = Record("example.test", "MX", "10 mx.example.test.")
    assert mx.matches("10 MX.Example.Test.") and not mx.matches("20 mx.example.test.")


class CheckTests(unittest.TestCase):
    """
    L{checkRecords} asking a L{TestDNSServer} in this process.
    """

    def setUp(self):
        self.server = TestDNSServer(reactor)
        self.server.zone.update({name: dict(entry) for name, entry in PUBLISHED.items()})
        self.server.start()
        self.addCleanup(self.server.stop)
        self.records = [
            record
            for group in recordsToPublish(
                "example.test",
                "mx.example.test",
                {"submission": 587, "smtps": 465, "imaps": 10993, "imap": 143, "pop3s": 995, "pop3": None},
            )
            for record in group.records
        ]

    async def check(self, timeout=(2,)):
        resolver = MXResolver(makeResolver(reactor, [self.server.nameserver], timeout=timeout), clock=reactor)
        verdicts = await checkRecords(resolver, self.records)
        return "".join(verdict.line() + "\n" for verdict in verdicts)

    async def test_allPublished(self):
        self.assertEqual(await self.check(), ALL_OK)

    async def test_missingAndDiffering(self):
        """
        A name without the record is C{missing}, whether the name exists
        with other records or not at all; another value is C{differs},
        naming what is published.
        """
        self.server.clear("_dmarc.example.test")
        self.server.setTXT("example.test", ["v=spf1 a mx ~all", "other=1"])
        self.server.setMX("example.test", [(20, "backup.example.test")])
        self.server.setSRV("_imaps._tcp.example.test", [(0, 1, 993, "imap.example.test")])
        self.server.setSRV("_pop3._tcp.example.test", [(0, 1, 110, "mx.example.test")])
        self.server.clear("autoconfig.example.test")
        self.server.setA("autoconfig.example.test", ["127.0.0.2"])
        self.assertEqual(
            await self.check(),
            ALL_OK.replace(
                "example.test. MX: ok", "example.test. MX: differs (published: 20 backup.example.test.)"
            ).replace(
                "example.test. TXT: ok\n_dmarc.example.test. TXT: ok",
                'example.test. TXT: differs (published: "v=spf1 a mx ~all")\n_dmarc.example.test. TXT: missing',
            ).replace(
                "_imaps._tcp.example.test. SRV: ok",
                "_imaps._tcp.example.test. SRV: differs (published: 0 1 993 imap.example.test.)",
            ).replace(
                "_pop3._tcp.example.test. SRV: ok",
                "_pop3._tcp.example.test. SRV: differs (published: 0 1 110 mx.example.test.)",
            ).replace(
                "autoconfig.example.test. CNAME: ok", "autoconfig.example.test. CNAME: missing"
            ),
        )

    async def test_backupMX(self):
        """
        Our MX among others is published as shown.
        """
        self.server.setMX("example.test", [(10, "mx.example.test"), (20, "backup.example.test")])
        self.assertEqual((await self.check()).splitlines()[0], "example.test. MX: ok")

    async def test_dnsFailures(self):
        """
        A lookup that fails or gets no answer is one line for people; the
        others are checked all the same.
        """
        self.server.failWith("_dmarc.example.test", "servfail")
        self.server.failWith("autodiscover.example.test", "timeout")
        lines = (await self.check(timeout=(0.2,))).splitlines()
        self.assertEqual(lines[2], "_dmarc.example.test. TXT: not checked: _dmarc.example.test TXT lookup failed: SERVFAIL")
        self.assertRegex(lines[-1], r"^autodiscover\.example\.test\. CNAME: not checked: .*(timeout|timed out)")
        self.assertNotIn("(", lines[-1])
        self.assertEqual([line.endswith(": ok") for line in lines], [True, True, False] + [True] * 7 + [False])


@pytest.fixture
def dnsProcess(tmp_path):
    server = DNSProcess(tmp_path, PUBLISHED)
    yield server
    server.stop()


def test_checkCommand(tmp_path, dnsProcess):
    """
    C{mdpy dns --check} asks C{[dns] nameservers}: with one record missing,
    one different and one whose lookup fails it says which, one line each,
    and exits 1; once they are right, every record is ok and it exits 0.
    """
    cli = CLI(tmp_path, nameserver=dnsProcess.nameserver)
    dnsProcess.set("_submission._tcp.example.test", {"A": ["127.0.0.2"]})
    dnsProcess.set("_dmarc.example.test", {"TXT": ["v=DMARC1; p=reject"]})
    dnsProcess.set("autodiscover.example.test", {"fail": "servfail"})
    status, out, err = cli.run("dns", "example.test", "--check")
    assert out == ALL_OK.replace(
        "_dmarc.example.test. TXT: ok", '_dmarc.example.test. TXT: differs (published: "v=DMARC1; p=reject")'
    ).replace(
        "_submission._tcp.example.test. SRV: ok", "_submission._tcp.example.test. SRV: missing"
    ).replace(
        "autodiscover.example.test. CNAME: ok",
        "autodiscover.example.test. CNAME: not checked: autodiscover.example.test CNAME lookup failed: SERVFAIL",
    )
    assert (status, err) == (
        1,
        "mdpy: error: 2 of 11 records of example.test are missing or differ; "
        "1 of 11 records of example.test could not be looked up\n",
    )

    for name in ("_submission._tcp.example.test", "_dmarc.example.test", "autodiscover.example.test"):
        dnsProcess.set(name, PUBLISHED[name])
    assert cli.run("dns", "example.test", "--check") == (0, ALL_OK, "")
