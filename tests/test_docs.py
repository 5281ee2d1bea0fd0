"""
The developer's guide in C{docs/}: it builds with warnings as errors, and
every example it shows runs and does what the guide says.
"""

import email
import os
import subprocess
import sys

import pytest
from twisted.internet import defer, task
from zope.interface.verify import verifyObject

from mdpy import errors
from mdpy.checks import Verdict
from mdpy.envelope import Envelope
from mdpy.interfaces import ICheck, IDelivery, IDeliveryTarget, IMailStore
from mdpy.smtp.server import SMTPFactory
from mdpy.backends.memory import MemoryStore
from mdpy.testing import RecordingTarget, Transcript
from docs import conf
from docs.examples import backend, check, command, flow, routing, target
from mdpy.testing.contracts import ALICE, StoreContract, resultOf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def test_build(tmp_path):
    """
    The guide and its API reference build without a warning, and the
    reference documents the interfaces.
    """
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, str(tmp_path)],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(tmp_path / "api.html", encoding="utf-8") as f:
        api = f.read()
    for name in ("interfaces.IDeliveryTarget.startDelivery", "interfaces.ICheck.stage",
                 "interfaces.IMailStore.deliver", "checks.Verdict", "plugins.loadObject",
                 "testing.Transcript.expect", "errors.CheckRefused", "interfaces.ITwoPhaseDelivery.prepare",
                 "delivery.pipeline.DeliveryPipeline.route", "delivery.targets.LocalStoreTarget"):
        assert 'id="mdpy.%s"' % (name,) in api, name
    assert "L{" not in api and "@param" not in api
    with open(tmp_path / "checks.html", encoding="utf-8") as f:
        page = f.read()
    assert "RequireSubject" in page and "A message needs a subject" in page


def test_epytextToRest():
    assert conf.epytextToRest([
        "A L{IStoredMessage}s, C{{a: b}} and I{this}.",
        "@param copies: a sequence of C{(account,",
        "    folder)}.",
        "@raise mdpy.errors.NotFound: no such account.",
        "@return: L{None}.",
    ]) == [
        "A ``IStoredMessage``\\ s, ``{a: b}`` and *this*.",
        "",
        ":param copies: a sequence of ``(account, folder)``.",
        ":raises mdpy.errors.NotFound: no such account.",
        ":returns: ``None``.",
    ]


def test_flow(tmp_path):
    pipeline = flow.buildPipeline(str(tmp_path))
    d = defer.ensureDeferred(flow.deliver(pipeline, "ann@remote.example",
                                          ["sales@example.test", "joe@example.test"],
                                          b"Subject: hi\r\n\r\nbody\r\n"))
    assert resultOf(d) is None
    [stored] = resultOf(defer.ensureDeferred(flow.inbox(pipeline, "joe@example.test")))
    assert stored.startswith(b"Return-Path: <ann@remote.example>\r\n")
    assert email.message_from_bytes(stored)["X-Rcpt-To"] == "sales@example.test"
    with pytest.raises(errors.NotFound):
        resultOf(defer.ensureDeferred(flow.deliver(pipeline, "a@b.example", ["nobody@example.test"], b"\r\n")))


def test_check(tmp_path):
    verifyObject(ICheck, check.RequireSubject())
    t = check.smtpSession(str(tmp_path))
    check.sendTwo(t)
    [stored] = [resultOf(m.read()) for m in t.store.openMailbox("joe@example.test").messages()]
    message = email.message_from_bytes(stored)
    assert (message["X-Subject-Check"], message["Subject"]) == ("pass", "hello")
    verdict = resultOf(check.RequireSubject().check(Envelope("a@b.example"), message=b"From: a\r\n\r\nx"))
    assert isinstance(verdict, Verdict) and isinstance(verdict.error, errors.CheckRefused)


def test_target(tmp_path):
    archive = target.ArchiveTarget(str(tmp_path))
    verifyObject(IDeliveryTarget, archive)
    unused = resultOf(archive.startDelivery(Envelope("a@b.example")))
    verifyObject(IDelivery, unused)
    unused.abort()
    t = Transcript(SMTPFactory("mx.example.test", archive, clock=task.Clock()).buildProtocol(None))
    t.expect("220 *")
    t.send("HELO client.example", "MAIL FROM:<ann@remote.example>", "RCPT TO:<x@elsewhere.example>",
           "RCPT TO:<joe@example.test>", "DATA")
    t.expect("250 *", "250 *", "550 5.7.1 *", "250 *", "354 *")
    t.sendRaw(b"Subject: kept\r\n\r\nbody\r\n.\r\n")
    [reply] = t.expect("250 2.0.0 Ok: queued as *")
    messageId = reply.rpartition(" ")[2]
    assert sorted(os.listdir(tmp_path)) == [messageId + ".eml"]
    with open(tmp_path / (messageId + ".eml"), "rb") as f:
        assert f.read().endswith(b"Subject: kept\r\n\r\nbody\r\n")


def test_routing(tmp_path):
    """
    A subclass of the pipeline routes one domain to its own two-phase
    target beside the local store: both keep the message, or, when the
    store fails, neither does.
    """
    (tmp_path / "archive").mkdir()
    archive = routing.ArchiveTarget(str(tmp_path / "archive"))
    base = flow.buildPipeline(str(tmp_path))
    pipeline = routing.ArchivingPipeline(archive, base.directory, base.store, spoolDir=str(tmp_path))
    deliver = lambda subject: defer.ensureDeferred(flow.deliver(
        pipeline, "ann@remote.example", ["joe@example.test", "ann@archive.test"],
        b"Subject: " + subject + b"\r\n\r\nbody\r\n"))
    assert resultOf(deliver(b"kept")) is None
    [stored] = resultOf(defer.ensureDeferred(flow.inbox(pipeline, "joe@example.test")))
    [name] = archive.archived()
    with open(tmp_path / "archive" / name, "rb") as f:
        assert f.read() == b"Subject: kept\r\n\r\nbody\r\n"
    pipeline.store.failDeliver = errors.TemporaryFailure("disk full")
    with pytest.raises(errors.TemporaryFailure):
        resultOf(deliver(b"lost"))
    assert os.listdir(tmp_path / "archive") == [name]
    assert len(resultOf(defer.ensureDeferred(flow.inbox(pipeline, "joe@example.test")))) == 1


def test_smtpCommand():
    factory = command.StatsSMTPFactory("mx.example.test", RecordingTarget(), clock=task.Clock())
    t = Transcript(factory.buildProtocol(None))
    t.expect("220 *")
    t.send("EHLO client.example")
    assert t.lines()[-1] == "250 XSTATS"
    t.send("MAIL FROM:<a@b.example>", "RCPT TO:<joe@example.test>", "DATA")
    t.expect("250 *", "250 *", "354 *")
    t.sendRaw(b"Subject: one\r\n\r\n.\r\n")
    t.expect("250 2.0.0 *")
    t.send("XSTATS")
    t.expect("250 2.0.0 1 message(s) delivered in this session")


def test_imapCommand():
    import mdpy

    factory = command.VersionIMAP4Factory("mx.example.test", MemoryStore(), clock=task.Clock())
    t = Transcript(factory.buildProtocol(None))
    [greeting] = t.lines()
    assert " XVERSION]" in greeting
    t.send("a XVERSION")
    t.expect("* XVERSION mdpy " + mdpy.__version__, "a OK XVERSION completed.")


class TestQuotaStoreContract(StoreContract):
    """
    The example store keeps the store contract, and its quota.
    """

    def makeStore(self, tmp_path):
        return backend.QuotaStore(MemoryStore(), limit=1000)

    def test_quota(self, tmp_path):
        store = backend.QuotaStore(MemoryStore(), limit=1)
        store.createAccount(ALICE)
        verifyObject(IMailStore, store)
        assert resultOf(store.deliver([(ALICE, "INBOX", [b"Subject: 1\r\n\r\n"])])) is None
        with pytest.raises(errors.QuotaExceeded):
            resultOf(store.deliver([(ALICE, "Sent", [b"\r\n"]), (ALICE, "INBOX", [b"\r\n"])]))
        assert [len(store.openMailbox(ALICE, name).messages()) for name in ("INBOX", "Sent")] == [1, 0]


def test_embed():
    """
    The embedding example, run as the guide says, sends itself a message
    over loopback and prints it as stored.
    """
    result = subprocess.run([sys.executable, os.path.join(DOCS, "examples", "embed.py")],
                            env=environment(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Return-Path: <ann@remote.example>\n")
    assert result.stdout.endswith("Subject: hello\n\nfrom smtplib\n")
