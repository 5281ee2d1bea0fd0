"""
Tests of L{mdpy.reload}: a running service tree, built by
L{mdpy.tap.buildService} on a memory reactor, reads its configuration file
again and applies it to the live objects.
"""

import os
import signal

import pytest
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from mdpy import logs
from mdpy.config import ConfigError
from mdpy.control import ControlFactory
from mdpy.reload import installReloadSignal
from mdpy.tap import buildService
from mdpy.tls import ensureSelfSigned
from tests.test_tap import MemoryReactor, listeners, load

BASE = "[server]\ndata_dir = data\nhostname = mx.example.test\ndomain = example.test\nworkers = 1\n"


class Running:
    """
    A started service tree of the configuration file C{tmp_path/mdpy.ini},
    whose text L{rewrite} changes.
    """

    def __init__(self, tmp_path, text):
        self.path = tmp_path / "mdpy.ini"
        self.reactor = MemoryReactor()
        self.top = buildService(load(tmp_path, text), reactor=self.reactor)
        self.top.startService()

    def rewrite(self, text):
        self.path.write_text(BASE + text)

    def reload(self):
        """
        @return: the lines of a reload that succeeded.
        """
        outcome = []
        self.top.reload().addBoth(outcome.append)
        [result] = outcome
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def failedReload(self):
        """
        @return: the L{ConfigError} of a reload that failed.
        """
        outcome = []
        self.top.reload().addErrback(outcome.append)
        [failure] = outcome
        return failure.trap(ConfigError) and failure.value

    def children(self):
        return listeners(self.top)

    def stop(self):
        self.top.stopService()


@pytest.fixture
def events():
    """
    The log events emitted during the test, as C{(level, text)}.
    """
    from twisted.logger import formatEvent

    seen = []

    def observe(event):
        seen.append((event.get("log_level"), formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest.fixture(autouse=True)
def restoreLogLevel():
    yield
    logs.setLevel("info")


POP = "host = pop.isp.test\nusername = box\npassword = pw\n"


def test_collectionsAddedChangedAndRemoved(tmp_path):
    """
    A [domainpop:NAME] added starts a collection; one removed stops; one
    changed is built again with its new settings; an [odmr-client:NAME]
    likewise.  The control socket runs the collections now configured.
    """
    running = Running(tmp_path, "[domainpop:old]\n" + POP + "[domainpop:same]\n" + POP
                      + "[odmr-client:isp]\nhost = odmr.isp.test\nusername = u\npassword = p\n"
                      + "[multipop]\nenabled = no\n")
    before = running.children()
    same, oldODMR, removed = before["domainpop/same"], before["odmr/isp"], before["domainpop/old"]
    running.rewrite("[domainpop:same]\n" + POP + "[domainpop:new]\n" + POP + "interval = 1h\n"
                    "[odmr-client:isp]\nhost = odmr.isp.test\nusername = u\npassword = p\ninterval = 2h\n"
                    "[multipop]\nenabled = no\n")
    lines = running.reload()
    assert "reload: applied [domainpop:new], [domainpop:old], [odmr-client:isp]" in lines
    after = running.children()
    assert "domainpop/old" not in after and not removed.running
    assert after["domainpop/same"] is same and same.running
    assert after["domainpop/new"].running and after["domainpop/new"].interval == 3600
    assert after["odmr/isp"] is not oldODMR and not oldODMR.running
    assert after["odmr/isp"].running and after["odmr/isp"].interval == 7200
    control = after["queue-control"].factory
    assert control.collectors == {name: after[name] for name in ("domainpop/same", "domainpop/new", "odmr/isp")}
    # The new collection runs after its first delay, as at a start.
    assert after["domainpop/new"]._call.getTime() == running.reactor.seconds() + 5
    running.stop()


def test_sectionAddedToAServerWithoutCollections(tmp_path):
    """
    The control socket sees a collection added to a server that had none.
    """
    running = Running(tmp_path, "[multipop]\nenabled = no\n")
    control = running.children()["queue-control"].factory
    assert control.collectors == {}
    running.rewrite("[domainpop:isp]\n" + POP + "[multipop]\nenabled = no\n")
    running.reload()
    assert control.collectors["domainpop/isp"] is running.children()["domainpop/isp"]
    running.stop()


def test_listenerAndLoginLimits(tmp_path):
    """
    Listener limits and the [auth] limits apply to the factories and the
    login tracker in place; the failures counted are kept.
    """
    running = Running(tmp_path, "")
    smtp = running.children()["smtp"].factory
    imap = running.children()["imap"].factory
    tracker = smtp.loginTracker
    tracker.recordFailure("192.0.2.1", "bob@example.test")
    running.rewrite("[smtp]\nmax_message_size = 1M\nmax_recipients = 7\nsender_policy = any\n"
                    "received_auth = yes\n[imap]\nmax_connections = 3\nallow_plaintext_auth = yes\n"
                    "[auth]\nfailure_delay = 1s\naddress_failures = 4\n")
    lines = running.reload()
    assert lines[1] == (
        "reload: applied [auth] failure_delay, [auth] address_failures, [smtp] max_message_size, "
        "[smtp] max_recipients, [smtp] sender_policy, [smtp] received_auth, "
        "[imap] allow_plaintext_auth, [imap] max_connections"
    )
    children = running.children()
    assert children["smtp"].factory is smtp
    assert (smtp.maxMessageSize, smtp.maxRecipients, smtp.senderPolicy.policy, smtp.receivedAuth) == (
        1024 * 1024, 7, "any", True)
    submission = children["submission"].factory
    assert (submission.maxMessageSize, submission.receivedAuth) == (50 * 1024 * 1024, True)
    assert (imap.maxConnections, imap.allowPlaintext) == (3, True)
    assert children["imaps"].factory.maxConnections == 10000
    assert smtp.loginTracker is tracker
    assert (tracker.baseDelay, tracker.banThreshold) == (1.0, 4)
    assert len(tracker) == 1
    running.stop()


def test_logLevel(tmp_path):
    running = Running(tmp_path, "")
    assert logs.Logger.minimum == LogLevel.info
    running.path.write_text(BASE.replace("[server]\n", "[server]\nlog_level = debug\n"))
    running.reload()
    assert logs.Logger.minimum == LogLevel.debug
    running.stop()


def subjectName(certificate):
    return certificate.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def commonName(options):
    return subjectName(options.options.certificate)


def test_certificateFilesReadAgain(tmp_path):
    """
    New TLS sessions get the certificate of the configured files, read
    again at each reload: a new path, or the same path renewed.
    """
    first, _, _ = ensureSelfSigned(str(tmp_path / "first"), "first.example.test")
    second, _, _ = ensureSelfSigned(str(tmp_path / "second"), "second.example.test")
    tls = "[tls]\ncertificate = %s/cert.pem\nprivate_key = %s/key.pem\n"
    running = Running(tmp_path, tls % (tmp_path / "first", tmp_path / "first"))
    options = running.top.live.tlsOptions
    smtps = running.children()["smtps"]
    assert running.children()["smtp"].factory.tlsOptions is running.top.live.mtaTLSOptions
    assert commonName(options) == "first.example.test"
    running.rewrite(tls % (tmp_path / "second", tmp_path / "second"))
    assert running.reload()[1] == "reload: applied [tls] certificate, [tls] private_key"
    assert commonName(options) == "second.example.test"
    assert commonName(running.top.live.mtaTLSOptions) == "second.example.test"
    assert running.children()["smtps"] is smtps and smtps.factory.tlsOptions is options
    # Renewed in place: the same paths, new files.
    for name in ("cert.pem", "key.pem"):
        os.unlink(str(tmp_path / "second" / name))
    ensureSelfSigned(str(tmp_path / "second"), "renewed.example.test")
    assert running.reload() == ["reload: read %s" % (running.path,)]
    assert commonName(options) == "renewed.example.test"
    # A TLS session starts with the certificate in force then.
    wrapper = TLSMemoryBIOFactory(options, False, ServerFactory.forProtocol(Protocol))
    session = wrapper.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    session.makeConnection(StringTransport())
    assert subjectName(session._tlsConnection.get_certificate()) == "renewed.example.test"
    running.stop()


def test_restartSettingsNamedInOneLine(tmp_path, events):
    """
    Settings a reload cannot apply are named in one warning, at each reload
    until the restart; they change nothing.
    """
    running = Running(tmp_path, "")
    smtp = running.children()["smtp"]
    running.rewrite("[smtp]\nport = 2525\nmax_message_size = 2M\n[relay]\nretry = 1m\n")
    running.path.write_text(running.path.read_text().replace("data_dir = data", "data_dir = other"))
    lines = running.reload()
    restart = "reload: these settings need a restart to take effect: [server] data_dir, [smtp] port, [relay] retry"
    assert lines[-1] == restart
    warnings = [text for level, text in events if level == LogLevel.warn]
    assert warnings == [restart]
    assert running.children()["smtp"] is smtp and smtp.factory.maxMessageSize == 2 * 1024 * 1024
    assert running.reload()[-1] == restart
    assert not os.path.exists(str(tmp_path / "other"))
    running.stop()


def test_badConfigurationKeepsTheRunningOne(tmp_path, events):
    """
    A configuration that cannot be loaded, or whose files cannot be used,
    changes nothing and is named in one error line.
    """
    running = Running(tmp_path, "[domainpop:isp]\n" + POP)
    smtp = running.children()["smtp"].factory
    collection = running.children()["domainpop/isp"]
    running.rewrite("[smtp]\nmax_message_size = 1M\nport = not-a-port\n")
    error = running.failedReload()
    assert "[smtp] port = not-a-port" in str(error)
    running.rewrite("[smtp]\nmax_message_size = 1M\n[domainpop:new]\n" + POP
                    + "[tls]\ncertificate = missing.pem\nprivate_key = missing.key\n")
    error = running.failedReload()
    assert str(error) == "[tls] cannot read %s: No such file or directory" % (tmp_path / "missing.pem",)
    errors = [text for level, text in events if level == LogLevel.error]
    assert len(errors) == 2
    assert errors[1] == "reload: %s; the running configuration is kept" % (error,)
    children = running.children()
    assert smtp.maxMessageSize == 50 * 1024 * 1024
    assert children["domainpop/isp"] is collection and "domainpop/new" not in children
    running.stop()


def test_gatewayDomains(tmp_path):
    """
    Gateway domains added and removed reach the pipeline, the ODMR port and
    the queue's held domains.
    """
    running = Running(tmp_path, "[odmr]\nport = 3366\n[gateway:one.test]\nauth_password = pw\n")
    pipeline = running.top.live.pipeline
    odmr = running.children()["odmr"].factory
    assert odmr.gateways is pipeline.gateways
    running.rewrite("[odmr]\nport = 3366\n[gateway:two.test]\nauth_password = pw\n")
    running.reload()
    assert pipeline.gateways.domains() == ["two.test"]
    assert odmr.gateways is pipeline.gateways
    assert pipeline.queue.held == {"two.test"}
    running.stop()


def test_oneReloadAtATime(tmp_path):
    """
    A reload asked while another waits for a collection to stop runs after
    it, against what it applied.
    """
    running = Running(tmp_path, "[domainpop:isp]\n" + POP)
    collection = running.children()["domainpop/isp"]
    busy = defer.Deferred()
    collection._current = busy  # a cycle under way: stopping waits for it
    running.rewrite("")
    first, second = [], []
    running.top.reload().addCallback(first.append)
    running.top.reload().addCallback(second.append)
    assert first == second == [] and "domainpop/isp" not in running.children()
    busy.callback(None)
    assert first[0][1] == "reload: applied [domainpop:isp]"
    assert second == [["reload: read %s" % (running.path,)]]
    running.stop()


def control(reload):
    factory = ControlFactory(queue=None, reload=reload)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"RELOAD\n")
    return transport.value()


def test_controlSocketReload():
    """
    C{RELOAD} answers the lines of the reload then C{OK}, or C{ERR} and
    the reason; without a reload it is unknown.
    """
    assert control(lambda: defer.succeed(["reload: read x", "reload: applied [smtp] timeout"])) == (
        b"| reload: read x\n| reload: applied [smtp] timeout\nOK\n")
    assert control(lambda: defer.fail(ConfigError("x.ini: [smtp] port = y: bad"))) == (
        b"ERR x.ini: [smtp] port = y: bad\n")
    assert control(None) == b"ERR unknown command\n"


class SignalReactor:
    def __init__(self):
        self.triggers = []

    def callFromThread(self, f, *args):
        f(*args)

    def addSystemEventTrigger(self, phase, event, f, *args):
        self.triggers.append((phase, event, f, args))


class Reloadable:
    def __init__(self, result):
        self.result = result
        self.reloads = 0

    def reload(self):
        self.reloads += 1
        return self.result


def test_sighupReloads():
    """
    SIGHUP reloads from the reactor's thread; a configuration error (already
    logged) is not logged again as unhandled; the previous handler is put
    back at shutdown.
    """
    previous = signal.getsignal(signal.SIGHUP)
    top = Reloadable(defer.fail(ConfigError("bad")))
    reactor = SignalReactor()
    installReloadSignal(top, reactor)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert top.reloads == 1
    finally:
        [(phase, event, restore, args)] = reactor.triggers
        assert (phase, event) == ("after", "shutdown")
        restore(*args)
    assert signal.getsignal(signal.SIGHUP) == previous
