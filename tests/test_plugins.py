"""
Tests of what a configuration may plug in: the factory of each listener
(C{factory = package.module:Class}, L{mdpy.plugins.loadObject}), used by the
ODMR provider and customer too, and the checks of incoming mail
(C{[smtp] checks}, L{mdpy.interfaces.ICheck}); C{test_e2e_plugins} runs them
in a real server.
"""

import inspect
import sys
import textwrap

import pytest
from twisted.internet import defer, task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mdpy import errors
from mdpy.checks import DATA, RCPT, AuthenticationResultsCheck, Verdict
from mdpy.config import Config
from mdpy.mailauth.authresults import InboundChecker
from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.imap.server import IMAP4Factory, IMAP4Server
from mdpy.interfaces import ICheck
from mdpy.odmr.provider import ODMRFactory, ODMRServer
from mdpy.plugins import loadObject
from mdpy.pop3.server import POP3Server
from mdpy.smtp.server import SMTPFactory, SMTPServer
from mdpy.backends.memory import MemoryStore
from mdpy.tap import buildChecks, factoryClass, odmrClientFor
from mdpy.testing import Transcript, resultOf, synchronousRunner
from tests.plugins import RejectSenderCheck, RejectSubjectCheck, XSMTPServer, XSMTPServerFactory
from tests.test_odmr_customer import HOST, Customer

USER = "joe@example.test"
SERVER = "[server]\nhostname = mx.example.test\ndomain = example.test\ndata_dir = data\n"


def config(tmp_path, text):
    path = tmp_path / "mdpy.ini"
    path.write_text(SERVER + text)
    return Config.load(str(path))


# --- loading ------------------------------------------------------------------------


def test_loadObject():
    assert loadObject("tests.plugins:XSMTPServerFactory") is XSMTPServerFactory
    assert loadObject(" mdpy.smtp.server:SMTPFactory.protocol ") is SMTPFactory.protocol


@pytest.mark.parametrize("spec, why", [
    ("no.such:Thing", "cannot import no.such: No module named 'no'"),
    ("tests.plugins:Nothing", "tests.plugins has no Nothing"),
    ("tests.plugins", "expected package.module:Name"),
    ("tests.plugins:", "expected package.module:Name"),
    ("os.path:join()", "expected package.module:Name"),
])
def test_loadObjectSaysWhyNot(spec, why):
    with pytest.raises(ValueError) as raised:
        loadObject(spec)
    assert str(raised.value) == why


def test_factoryClass(tmp_path):
    """
    The built-in factory of each listener, or the subclass of it the
    C{factory} key names.
    """
    plain = config(tmp_path, "")
    assert [factoryClass(plain, name) for name in ("smtp", "submission", "imaps", "odmr")] == [
        SMTPFactory, SMTPFactory, IMAP4Factory, ODMRFactory]
    custom = config(tmp_path, "[smtp]\nfactory = tests.plugins:XSMTPServerFactory\n")
    assert factoryClass(custom, "smtp") is XSMTPServerFactory
    assert factoryClass(custom, "submission") is SMTPFactory


# --- an SMTP command added by a subclass -------------------------------------------------


def test_subclassAddsAVerbAdvertisedInEHLO():
    t = Transcript(XSMTPServerFactory(HOST, None, clock=task.Clock()).buildProtocol(None))
    t.expect("220 *")
    t.send("XHELLO")
    t.expect("250 2.0.0 hello you from XSMTPServer")
    t.send("XHELL")
    t.expect("500 *")
    t.send("EHLO client.test")
    lines = t.lines()
    assert lines[-1] == "250 XHELLO" and "250-PIPELINING" in lines
    t.send("XHELLO there")
    t.expect("250 2.0.0 hello there from XSMTPServer")


def test_odmrCustomerReceivesInTheConfiguredProtocol(tmp_path):
    """
    The reversed session of an ODMR release is the C{protocol} of the SMTP
    factory it is given: the provider's XHELLO is answered, XHELLO is in the
    EHLO reply, and a released message is still counted.
    """
    c = Customer()
    c.factory = c.customer.serverFactory = XSMTPServerFactory(HOST, c.target, clock=c.clock)
    c.turnAround("EHLO EXAMPLE.NET")
    lines = c.t.lines()
    assert lines[0] == "220 %s ESMTP mdpy" % (HOST,)
    assert lines[-1] == "250 XHELLO"
    assert isinstance(c.customer.session, XSMTPServer)
    c.send("XHELLO provider")
    c.expect("250 2.0.0 hello provider from ReleasedXSMTPServer")
    c.send("MAIL FROM:<a@isp.test>", "RCPT TO:<joe@example.org>", "DATA")
    c.expect("250 *", "250 *", "354 *")
    c.sendRaw(b"Subject: released\r\n\r\nhello\r\n.\r\n")
    c.expect("250 2.0.0 Ok: queued as *")
    c.send("QUIT")
    c.expect("221 2.0.0 Bye")
    c.lose()
    assert c.report.summary() == "odmr/isp: released, 1 message received"
    assert [m.recipients for m in c.target.messages] == [["joe@example.org"]]


def test_odmrClientOfTapUsesTheSMTPFactory(tmp_path):
    conf = config(tmp_path, "[smtp]\nfactory = tests.plugins:XSMTPServerFactory\n"
                            "[odmr-client:isp]\nhost = odmr.isp.test\nusername = u\npassword = p\n")
    service = odmrClientFor(conf, "isp", conf.named("odmr-client")["isp"], None, task.Clock())
    assert type(service.serverFactory) is XSMTPServerFactory
    assert service.serverFactory.target is None and service.serverFactory.maxRecipients == 1000


class XODMRServer(ODMRServer):
    commands = ODMRServer.commands | {"XHELLO"}
    do_XHELLO = XSMTPServer.do_XHELLO


class XODMRFactory(ODMRFactory):
    protocol = XODMRServer


def test_odmrProviderBuildsItsFactorysProtocol():
    factory = XODMRFactory(HOST, None, None, clock=task.Clock())
    t = Transcript(factory.buildProtocol(None))
    t.expect("220 *")
    t.send("XHELLO isp", "VRFY joe")
    t.expect("250 2.0.0 hello isp from XODMRServer", "502 5.5.1 *")
    assert type(ODMRFactory(HOST, None, None, clock=task.Clock()).buildProtocol(None)) is ODMRServer


# --- checks ---------------------------------------------------------------------------


@pytest.fixture
def checked(tmp_path):
    """
    An SMTP session (after EHLO) over a pipeline with joe@example.test and
    the checks of C{t.pipeline.checks}.
    """
    directory = SQLiteDirectory(str(tmp_path / "directory.sqlite"))
    directory.addDomain("example.test")
    directory.addUser(USER, "pw")
    pipeline = DeliveryPipeline(directory, MemoryStore(), spoolDir=str(tmp_path),
                                checks=[RejectSenderCheck(), RejectSubjectCheck()])
    t = Transcript(SMTPFactory(HOST, pipeline, clock=task.Clock()).buildProtocol(None))
    t.send("EHLO client.test")
    t.lines()
    t.pipeline = pipeline
    return t


def stored(pipeline):
    return [resultOf(m.read()) for m in pipeline.store.openMailbox(USER).messages()]


def test_checksAreChecks():
    for check in (RejectSenderCheck(), RejectSubjectCheck(), AuthenticationResultsCheck(object())):
        verifyObject(ICheck, check)


def test_checkRefusesAtTheEndOfTheMessageWithItsText(checked):
    t = checked
    t.send("MAIL FROM:<a@remote.test>", "RCPT TO:<joe@example.test>", "DATA")
    t.expect("250 *", "250 *", "354 *")
    t.sendRaw(b"Subject: reject me\r\n\r\nbody\r\n.\r\n")
    # The check's text, on one line (its CR LF made a space).
    t.expect("550 5.7.1 Refused by the subject check: the subject says so")
    assert stored(t.pipeline) == []
    t.send("MAIL FROM:<a@remote.test>", "RCPT TO:<joe@example.test>", "DATA")
    t.expect("250 *", "250 *", "354 *")
    t.sendRaw(b"Subject: keep me\r\n\r\nbody\r\n.\r\n")
    t.expect("250 2.0.0 Ok: queued as *")
    [message] = stored(t.pipeline)
    assert message.startswith(b"Return-Path: <a@remote.test>\r\n")
    assert b"\r\nX-Checked: yes\r\nReceived: from client.test" in message


def test_checkRefusesTheSenderForNow(checked):
    t = checked
    t.send("MAIL FROM:<spammer@remote.test>", "RCPT TO:<joe@example.test>")
    t.expect("451 4.7.1 Greylisted, try again later", "503 *")
    t.send("MAIL FROM:<a@remote.test>")
    t.expect("250 *")


def test_checkOfARecipient(checked):
    calls = []

    @implementer(ICheck)
    class NoAnn:
        name = "no-ann"
        stage = RCPT

        def check(self, envelope, recipient=None, message=None):
            calls.append((envelope.sender, recipient, message))
            if recipient.startswith("ann@"):
                return defer.succeed(Verdict(error=errors.NotFound("no ann here")))
            return defer.succeed(Verdict.addHeaders(b"X-Recipient-Checked: %s\r\n" % (recipient.encode(),)))

    t = checked
    t.pipeline.checks.insert(0, NoAnn())
    t.send("MAIL FROM:<a@remote.test>", "RCPT TO:<ann@example.test>", "RCPT TO:<joe@example.test>", "DATA")
    t.expect("250 *", "550 5.1.1 *", "250 *", "354 *")
    t.sendRaw(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    t.expect("250 *")
    assert calls == [("a@remote.test", "ann@example.test", None), ("a@remote.test", "joe@example.test", None)]
    [message] = stored(t.pipeline)
    assert message.count(b"X-Recipient-Checked") == 1 and b"X-Checked: yes" in message


def test_failingCheckRefusesForNowAndStopsTheOthers(checked):
    @implementer(ICheck)
    class Broken:
        name = "broken"
        stage = DATA

        def check(self, envelope, recipient=None, message=None):
            raise RuntimeError("scanner crashed")

    t = checked
    after = RejectSubjectCheck()
    after.check = lambda *args: pytest.fail("ran after a refusal")
    t.pipeline.checks = [Broken(), after]
    t.send("MAIL FROM:<a@remote.test>", "RCPT TO:<joe@example.test>", "DATA")
    t.expect("250 *", "250 *", "354 *")
    t.sendRaw(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    t.expect("451 4.3.0 *")
    assert stored(t.pipeline) == []


def test_buildChecks(tmp_path):
    resolver = type("Resolver", (), dict.fromkeys(
        ["lookupTXT", "lookupAddresses", "lookupMX", "lookupPointer"], staticmethod(lambda name: None)))()
    default = buildChecks(config(tmp_path, ""), resolver, task.Clock())
    assert [check.name for check in default] == ["spf+dkim"]
    [builtIn] = default
    assert builtIn.checker.methods == ("spf", "dkim") and builtIn.checker.hostname == "mx.example.test"
    ordered = buildChecks(config(tmp_path, "[smtp]\nchecks = tests.plugins:RejectSubjectCheck, DKIM\n"),
                          resolver, task.Clock())
    assert [check.name for check in ordered] == ["reject-subject", "dkim"]
    assert isinstance(ordered[0], RejectSubjectCheck)
    off = "[smtp]\nauthentication_results = no\nchecks = tests.plugins:RejectSubjectCheck\n"
    assert buildChecks(config(tmp_path, off), resolver, task.Clock()) == []
    assert buildChecks(config(tmp_path, "[smtp]\nchecks =\n"), resolver, task.Clock()) == []


@pytest.mark.parametrize("methods, expected", [
    (("spf",), b"Authentication-Results: mx.example.test; spf=fail smtp.mailfrom=a@remote.test"),
    (("dkim",), b"Authentication-Results: mx.example.test; dkim=none"),
])
def test_oneOfTheBuiltInChecks(methods, expected):
    checker = InboundChecker("mx.example.test", lambda name: defer.succeed([b"v=spf1 -all"]),
                             reactor=task.Clock(), runInThread=synchronousRunner, methods=methods)
    d = checker.check("192.0.2.1", "client.test", "a@remote.test", b"Subject: x\r\n\r\nbody\r\n")
    assert d.result.endswith(b"\r\n") and b" ".join(d.result.split()) == expected


# --- the subclassing examples of the docstrings ----------------------------------------------


def docstringExample(cls):
    """
    @return: the namespace after running the example (the block after
        C{::}) of C{cls}'s docstring in the namespace of its module.
    """
    doc = inspect.getdoc(cls)
    block = doc.split("::\n", 1)[1].split("\n")
    lines = []
    for line in block:
        if line.strip() and not line.startswith(" "):
            break
        lines.append(line)
    namespace = dict(vars(sys.modules[cls.__module__]))
    exec(textwrap.dedent("\n".join(lines)), namespace)
    return namespace


def test_smtpExample():
    factory = docstringExample(SMTPServer)["GreeterFactory"](HOST, None, clock=task.Clock())
    t = Transcript(factory.buildProtocol(None))
    t.send("EHLO client.test")
    assert t.lines()[-1] == "250 XHELLO"
    t.send("XHELLO")
    t.expect("250 2.0.0 hello")


def test_imapExample():
    factory = docstringExample(IMAP4Server)["GreeterFactory"](HOST, MemoryStore(), clock=task.Clock())
    t = Transcript(factory.buildProtocol(None))
    [greeting] = t.lines()
    assert greeting.startswith("* OK [CAPABILITY IMAP4rev1 ") and " XHELLO] " in greeting
    t.send("a XHELLO", "b CAPABILITY")
    lines = t.lines()
    assert lines[:2] == ["* XHELLO hello", "a OK XHELLO completed."]
    assert lines[2].startswith("* CAPABILITY ") and lines[2].endswith(" XHELLO")


def test_pop3Example():
    factory = docstringExample(POP3Server)["GreeterFactory"](HOST, MemoryStore(), clock=task.Clock())
    t = Transcript(factory.buildProtocol(None))
    t.lines()
    t.send("CAPA")
    assert t.lines()[-2:] == ["XHELLO", "."]
    t.send("XHELLO")
    t.expect("+OK hello")


def test_pipelineKeepsItsChecksInOrder(tmp_path):
    """
    The checks given stay, in order; the older C{checker} argument (and
    attribute) is the built-in SPF/DKIM check, after them.
    """
    directory = SQLiteDirectory(str(tmp_path / "directory.sqlite"))
    builtIn, custom = AuthenticationResultsCheck(object()), RejectSubjectCheck()
    pipeline = DeliveryPipeline(directory, MemoryStore(), checks=[builtIn, custom])
    assert pipeline.checks == [builtIn, custom] and pipeline.checker is builtIn.checker
    checker = object()
    older = DeliveryPipeline(directory, MemoryStore(), checker=checker, checks=[custom])
    assert [type(check) for check in older.checks] == [RejectSubjectCheck, AuthenticationResultsCheck]
    assert older.checker is checker
    older.checker = None
    assert older.checks == [custom]


def test_recipientChecksHeadersOnlyForRoutedRecipients(checked):
    """
    The headers a check adds for a recipient are kept only when the
    recipient is taken.
    """
    @implementer(ICheck)
    class Mark:
        name = "mark"
        stage = RCPT

        def check(self, envelope, recipient=None, message=None):
            return defer.succeed(Verdict.addHeaders(b"X-Recipient: %s\r\n" % (recipient.encode(),)))

    t = checked
    t.pipeline.checks = [Mark()]
    t.send("MAIL FROM:<a@remote.test>", "RCPT TO:<nobody@example.test>", "RCPT TO:<joe@example.test>", "DATA")
    t.expect("250 *", "550 5.1.1 *", "250 *", "354 *")
    t.sendRaw(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    t.expect("250 *")
    [message] = stored(t.pipeline)
    assert b"X-Recipient: joe@example.test\r\n" in message and b"nobody" not in message


def test_builtInChecksSkipMailWithNoLocalCopy(tmp_path):
    """
    Mail held for a gateway domain has no local copy to carry the results
    of SPF and DKIM: they are not looked up; a check of one's own still
    runs.
    """
    from mdpy.backends.files.queue import SpoolQueue
    from mdpy.odmr.gateway import GatewayDomain, Gateways

    calls = []

    class Checker:
        hostname = "mx.example.test"

        def check(self, *args):
            calls.append(args)
            return defer.succeed(b"")

    directory = SQLiteDirectory(str(tmp_path / "directory.sqlite"))
    queue = SpoolQueue(str(tmp_path / "queue"), runInThread=synchronousRunner, clock=task.Clock())
    pipeline = DeliveryPipeline(directory, MemoryStore(), queue=queue, spoolDir=str(tmp_path),
                                checker=Checker(), checks=[RejectSubjectCheck()],
                                gateways=Gateways([GatewayDomain("gw.test", "pw", [], None)]))
    t = Transcript(SMTPFactory(HOST, pipeline, clock=task.Clock()).buildProtocol(None))
    t.send("EHLO client.test", "MAIL FROM:<a@remote.test>", "RCPT TO:<x@gw.test>", "DATA")
    assert t.lines()[-3:] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    t.sendRaw(b"Subject: reject me\r\n\r\nbody\r\n.\r\n")
    t.expect("550 5.7.1 Refused by the subject check: the subject says so")
    t.send("MAIL FROM:<a@remote.test>", "RCPT TO:<x@gw.test>", "DATA")
    t.expect("250 *", "250 *", "354 *")
    t.sendRaw(b"Subject: held\r\n\r\nbody\r\n.\r\n")
    t.expect("250 2.0.0 Ok: queued as *")
    assert calls == [] and len(queue.list()) == 1
