"""
Tests of L{mdpy.tap}: the service tree built from a configuration.
"""

import os
import stat
import subprocess
import sys

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from mdpy import logs
from mdpy.config import Config, ConfigError
from mdpy.backends.files import openDirectory
from mdpy.datadir import DataDir
from mdpy.directory import addRoleAliases
from mdpy.smtp.server import MODE_MTA, MODE_SMTPS, MODE_SUBMISSION
from mdpy.tap import Options, buildService, makeService, relaySettings
from mdpy.testing import capturedLogs, loggedLines


class MemoryReactor(MemoryReactorClock):
    """
    A memory reactor that also records UDP listeners.
    """

    def __init__(self):
        MemoryReactorClock.__init__(self)
        self.udpServers = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.udpServers.append((port, protocol, interface))
        return _UDPPort()

    def suggestThreadPoolSize(self, size):
        self.threadPoolSize = size


class _UDPPort:
    def stopListening(self):
        return None


def load(tmp_path, text=""):
    path = tmp_path / "mdpy.ini"
    path.write_text("[server]\ndata_dir = data\nhostname = mx.example.test\ndomain = example.test\nworkers = 1\n" + text)
    return Config.load(str(path))


def listeners(service):
    return {child.name: child for child in service}


def test_domainpopSectionsBecomeCollectors(tmp_path):
    """
    Each enabled [domainpop:NAME] is a collector service with its settings;
    the control socket can run it; a disabled one is not built.
    """
    from mdpy.domainpop.state import DEDUPE_FINGERPRINT

    config = load(tmp_path, "[domainpop:isp]\nhost = pop.isp.test\nport = 995\ntls = implicit\n"
                  "username = box\npassword = pw\ninterval = 15m\nleave_on_server_days = 3\n"
                  "parse_headers = X-Rcpt-To, Received\ntrusted_received_hosts = mx.isp.test\n"
                  "dedupe_header = fingerprint\narchive_dir = archive\n"
                  "[domainpop:off]\nenabled = no\nhost = x.test\n[multipop]\nenabled = no\n")
    top = buildService(config, reactor=MemoryReactor())
    children = listeners(top)
    assert "domainpop/off" not in children and "multipop" not in children
    service = children["domainpop/isp"]
    collector = service.collector
    assert service.interval == 900
    assert (collector.account.host, collector.account.port, collector.account.tls) == ("pop.isp.test", 995, "implicit")
    assert collector.settings.leaveOnServerDays == 3
    assert [h.lower() for h in collector.settings.rules.parseHeaders] == ["x-rcpt-to", "received"]
    assert collector.settings.dedupeHeader == DEDUPE_FINGERPRINT
    assert collector.settings.archiveDir == str(tmp_path / "archive")
    assert collector.postmaster == "postmaster@example.test"
    assert children["queue-control"].factory.collectors["domainpop/isp"] is service


def test_oneNamedChildPerListener(tmp_path):
    reactor = MemoryReactor()
    top = buildService(load(tmp_path), portOffset=10000, reactor=reactor)
    children = listeners(top)
    assert sorted(children) == [
        "imap", "imaps", "minger", "multipop", "odmr", "pop3", "pop3s", "queue-control", "relay",
        "smtp", "smtps", "submission",
    ]
    assert children["smtp"].factory.mode == MODE_MTA
    assert children["submission"].factory.mode == MODE_SUBMISSION
    assert children["smtps"].factory.mode == MODE_SMTPS
    assert children["pop3"].factory.locks is children["pop3s"].factory.locks
    assert children["pop3s"].factory.implicitTLS and not children["pop3"].factory.implicitTLS
    assert children["pop3"].factory.timeout == 600
    top.privilegedStartService()
    ports = sorted(port for port, *rest in reactor.tcpServers)
    assert ports == [10025, 10110, 10143, 10366, 10465, 10587, 10993, 10995]
    assert [port for port, *rest in reactor.udpServers] == [14069]
    assert children["imap"].factory.structures is children["imaps"].factory.structures
    assert children["imap"].factory.timeout == 1800
    assert children["imaps"].factory.implicitTLS and not children["imap"].factory.implicitTLS
    factories = {port: factory for port, factory, *rest in reactor.tcpServers}
    assert type(factories[10993]).__name__ == "TLSMemoryBIOFactory"
    assert factories[10143] is children["imap"].factory
    # 465 and 995 are wrapped in TLS; 25, 587 and 110 start in plaintext.
    assert type(factories[10465]).__name__ == "TLSMemoryBIOFactory"
    assert type(factories[10995]).__name__ == "TLSMemoryBIOFactory"
    assert factories[10025] is children["smtp"].factory
    assert factories[10110] is children["pop3"].factory


def test_gatewaysODMRAndMinger(tmp_path):
    """
    [gateway:DOMAIN] sections are held in the queue and routed by the
    pipeline; the ODMR factory releases them; [minger] and
    [odmr-client:NAME] are built from their keys.
    """
    config = load(tmp_path, "[gateway:Customer.TEST]\nauth_password = pw\natrn_users = joe@example.test\n"
                  "verify = minger\nminger_host = 192.0.2.7\nminger_port = 4070\nminger_secret = s3cret\n"
                  "minger_fallback = tempfail\n"
                  "[gateway:plain.test]\nauth_password = other\n"
                  "[minger]\nsecret = minger-secret\nanonymous = yes\nallow = 127.0.0.1, 10.0.0.0/8\n"
                  "rate = 5\nburst = 7\n"
                  "[odmr-client:provider]\nhost = odmr.provider.test\nusername = example.test\n"
                  "password = pw\ndomains = example.test\ninterval = 2m\n")
    top = buildService(config, reactor=MemoryReactor())
    children = listeners(top)
    odmr = children["odmr"].factory
    gateways = odmr.gateways
    assert gateways.domains() == ["customer.test", "plain.test"]
    assert odmr.relay is children["relay"]
    assert odmr.relay.queue.held == {"customer.test", "plain.test"}
    customer = gateways.get("customer.test")
    assert customer.releasableBy("customer.test") and customer.releasableBy("joe@example.test")
    verifier = customer.verifier
    assert (verifier.client.host, verifier.client.port, verifier.fallback) == ("192.0.2.7", 4070, "tempfail")
    assert gateways.get("plain.test").verifier is None
    assert children["smtp"].factory.target.gateways is gateways
    minger = children["minger"].args[1]
    assert (minger.secret, minger.anonymous) == (b"minger-secret", True)
    client = children["odmr/provider"]
    assert client.interval == 120
    assert (client.account.host, client.account.port, client.account.username) == ("odmr.provider.test", 366, "example.test")
    assert children["queue-control"].factory.collectors["odmr/provider"] is client


def test_gatewayNoLongerConfiguredIsReleased(tmp_path):
    config = load(tmp_path, "[gateway:customer.test]\nauth_password = pw\n")
    queue = listeners(buildService(config, reactor=MemoryReactor()))["relay"].queue
    assert queue.held == {"customer.test"}
    queue = listeners(buildService(load(tmp_path), reactor=MemoryReactor()))["relay"].queue
    assert queue.held == set()


@pytest.mark.parametrize("text, error", [
    ("[gateway:bad_domain]\n", "bad domain"),
    ("[gateway:ok.test]\natrn_users = not an address@\n", "[gateway:ok.test]"),
    ("[gateway:ok.test]\nverify = minger\n", "needs minger_host"),
    ("[gateway:ok.test]\natrn_hosts = 10.0.0.0/33\n", "[gateway:ok.test]: atrn_hosts"),
    ("[gateway:ok.test]\nverify = ldap\n", "expected one of: none, minger"),
    ("[odmr-client:p]\nhost = p.test\ntls = maybe\n", "expected one of"),
    ("[odmr-client:p]\nhost = p.test\ndomains = not_a_domain\n", "[odmr-client:p]"),
    ("[minger]\nrate = 0\n", "positive"),
    ("[minger]\nsecret = has a space\n", "visible ASCII"),
    ("[minger]\nsecret = %s\n" % ("x" * 51,), "1 to 50"),
    ("[gateway:ok.test]\nverify = minger\nminger_host = h.test\nminger_secret = caf\u00e9-secret-0123456\n",
     "[gateway:ok.test] minger_secret must be"),
])
def test_badGatewayODMRAndMingerSettings(tmp_path, text, error):
    with pytest.raises(ConfigError) as raised:
        buildService(load(tmp_path, text), reactor=MemoryReactor())
    assert error in str(raised.value)


def test_disabledServicesAreNotBuilt(tmp_path):
    top = buildService(
        load(tmp_path, "[smtps]\nenabled = no\n[submission]\nenabled = no\n[pop3s]\nenabled = no\n"),
        reactor=MemoryReactor(),
    )
    assert list(listeners(top)) == [
        "smtp", "pop3", "imap", "imaps", "relay", "odmr", "minger", "multipop", "queue-control"]


def test_firstStartMakesDomainPostmasterAndCertificate(tmp_path):
    config = load(tmp_path)
    with capturedLogs() as events:
        buildService(config, reactor=MemoryReactor())
    data = tmp_path / "data"
    password = data / "postmaster.password"
    assert stat.S_IMODE(os.stat(password).st_mode) == 0o600
    address, secret = password.read_text().split()
    assert address == "postmaster@example.test"
    # The log names the file, never the password.
    assert loggedLines(events, "postmaster account") == [
        "created the postmaster account postmaster@example.test of example.test; its password is in %s"
        % (password,)
    ]
    assert not [line for line in loggedLines(events) if secret in line]
    assert (data / "tls" / "cert.pem").exists() and (data / "tls" / "key.pem").exists()
    assert os.path.isdir(data / "mail" / "example.test" / "postmaster" / "new")
    assert stat.S_IMODE(os.stat(data / "directory.sqlite").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    directory = openDirectory(DataDir(str(data)))
    assert directory.listAliases() == [("abuse@example.test", ["postmaster@example.test"])]
    # A second start changes nothing, even with the postmaster deleted.
    directory.removeUser(address)
    buildService(config, reactor=MemoryReactor())
    assert password.read_text().split() == [address, secret]
    assert directory.getUser(address) is None


def test_firstStartAfterDomainsAddedByTheCommand(tmp_path):
    """
    Domains added with C{mdpy domain add} before the first start (the
    server's own among them) do not keep it from making the postmaster
    account, which their role aliases name.
    """
    config = load(tmp_path)
    datadir = DataDir(str(tmp_path / "data"))
    directory = openDirectory(datadir)
    directory.addDomain("x.test")
    addRoleAliases(directory, "x.test", "postmaster@example.test")
    directory.addDomain("example.test")
    buildService(config, reactor=MemoryReactor())
    address, secret = (tmp_path / "data" / "postmaster.password").read_text().split()
    assert address == "postmaster@example.test"
    assert directory.getSecrets(address) is not None
    assert directory.resolve("abuse@x.test").local == [address]
    assert directory.resolve("abuse@example.test").local == [address]


def test_firstStartKeepsTheAdministratorsPostmaster(tmp_path):
    datadir = DataDir(str(tmp_path / "data"))
    directory = openDirectory(datadir)
    directory.addDomain("example.test")
    directory.addDomain("other.test")
    directory.addUser("boss@other.test", "pw")
    directory.addAlias("postmaster@example.test", ["boss@other.test"])
    buildService(load(tmp_path), reactor=MemoryReactor())
    assert not (tmp_path / "data" / "postmaster.password").exists()
    assert directory.listUsers() == ["boss@other.test"]
    assert directory.resolve("abuse@example.test").local == ["boss@other.test"]


def test_logLevel(tmp_path):
    try:
        buildService(load(tmp_path), reactor=MemoryReactor())
        assert logs.Logger.minimum.name == "info"
        buildService(load(tmp_path, "log_level = warn\n"), reactor=MemoryReactor())
        assert logs.Logger.minimum.name == "warn"
    finally:
        logs.setLevel("info")


def test_options():
    options = Options()
    options.parseOptions(["--config", "x.ini", "--port-offset", "10000"])
    assert options["config"] == "x.ini" and options["port-offset"] == 10000
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--port-offset", "70000"])
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--port-offset", "many"])


def test_optionsFindTheConfigurationAsTheCommandDoes(tmp_path, monkeypatch):
    """
    Without C{--config}, C{twistd mdpy} takes C{$MDPY_CONFIG}, then
    C{/etc/mdpy/mdpy.ini}, then C{$XDG_CONFIG_HOME/mdpy/mdpy.ini}
    (L{mdpy.config.configPath}), else the embedded default.
    """
    monkeypatch.delenv("MDPY_CONFIG", raising=False)
    monkeypatch.setenv("MDPY_SYSCONFDIR", str(tmp_path / "etc"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))

    def resolved(*argv):
        options = Options()
        options.parseOptions(list(argv))
        return options["config"]

    assert resolved() is None
    user = tmp_path / "xdg" / "mdpy" / "mdpy.ini"
    user.parent.mkdir(parents=True)
    user.write_text("")
    assert resolved() == str(user)
    system = tmp_path / "etc" / "mdpy" / "mdpy.ini"
    system.parent.mkdir(parents=True)
    system.write_text("")
    assert resolved() == str(system)
    monkeypatch.setenv("MDPY_CONFIG", str(tmp_path / "env.ini"))
    assert resolved() == str(tmp_path / "env.ini")
    assert resolved("-c", "given.ini") == "given.ini"


def test_startRefusesWhatCheckRefuses(tmp_path, monkeypatch):
    """
    A configuration L{mdpy.configcheck.checkConfig} refuses stops the start
    with its one line before anything is made on disk.
    """
    monkeypatch.setattr("sys.excepthook", sys.excepthook)
    path = tmp_path / "mdpy.ini"
    path.write_text("[server]\ndata_dir = data\n[smtp]\nport = 2525\n[imap]\nport = 2525\n")
    options = Options()
    options.parseOptions(["--config", str(path)])
    with pytest.raises(SystemExit) as raised:
        makeService(options, reactor=MemoryReactor())
    assert raised.value.code == (
        "twistd mdpy: %s: [imap] port = 2525: [smtp] listens there too (::); give each service a port"
        " of its own" % (path,))
    assert os.listdir(tmp_path) == ["mdpy.ini"]


def test_startLogsTheConfigurationAndEachWarningOnce(tmp_path, monkeypatch):
    """
    The start logs the file and data directory it uses, and the warning
    about a short Minger secret once, though the secret is checked before
    the service is built.
    """
    from twisted.logger import formatEvent, globalLogPublisher

    monkeypatch.setattr("sys.excepthook", sys.excepthook)
    path = tmp_path / "mdpy.ini"
    path.write_text("[server]\ndata_dir = data\nhostname = mx.example.test\n[minger]\nsecret = short\n")
    options = Options()
    options.parseOptions(["--config", str(path)])
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        top = makeService(options, reactor=MemoryReactor())
    finally:
        globalLogPublisher.removeObserver(events.append)
    top.serverLock.release()
    lines = [formatEvent(event) for event in events]
    assert "configuration: %s, data_dir %s" % (path, tmp_path / "data") in lines
    assert len([line for line in lines if "[minger] secret is shorter than 16" in line]) == 1


def test_relaySettingsFromTheConfiguration(tmp_path):
    config = load(
        tmp_path,
        "[relay]\nsmarthost = [127.0.0.1]:2525\nsmarthost_tls = none\nretry = 1m 2m\n"
        "smarthost_username = relay\nsmarthost_password = pw\nmx_tls = none\n",
    )
    settings = relaySettings(config["relay"])
    assert settings.smarthost == ("127.0.0.1", 2525)
    assert settings.smarthostTLS == "none"
    assert settings.smarthostCredentials == ("relay", "pw")
    assert settings.retry == [60, 120] and settings.mxTLS is False
    implicit = relaySettings(load(tmp_path, "[relay]\nsmarthost = mail.example\nsmarthost_tls = implicit\n")["relay"])
    assert implicit.smarthost == ("mail.example", 465)
    with pytest.raises(ConfigError) as info:
        relaySettings(load(tmp_path, "[relay]\nsmarthost = host:port\n")["relay"])
    assert str(info.value).startswith("[relay] smarthost = host:port: ")


def test_busyUDPPortIsNamed(tmp_path):
    """
    A Minger port already taken stops the start with one line naming it.
    """
    import errno

    from twisted.internet.error import CannotListenError

    from mdpy.tap import ListenError

    class BusyReactor(MemoryReactor):
        def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))

    disabled = "".join("[%s]\nenabled = no\n" % (name,) for name in (
        "smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps", "odmr", "multipop"))
    config = load(tmp_path, disabled + "[minger]\ninterface = 127.0.0.1\nport = 4069\n")
    top = buildService(config, portOffset=100, reactor=BusyReactor())
    with pytest.raises(ListenError) as raised:
        top.privilegedStartService()
    assert str(raised.value).startswith(
        "cannot listen on port 4169 for minger (127.0.0.1): Address already in use")


def test_oneLoginTrackerFromTheAuthSection(tmp_path):
    """
    Every listener with logins shares one tracker, built from [auth].
    """
    config = load(tmp_path, "[auth]\nfailure_window = 2m\nfailure_delay = 0.05s\nmax_failure_delay = 1s\n"
                  "address_failures = 4\naccount_failures = 0\n[odmr]\nenabled = yes\n")
    children = listeners(buildService(config, reactor=MemoryReactor()))
    trackers = {children[name].factory.loginTracker
                for name in ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps", "odmr")}
    assert len(trackers) == 1
    [tracker] = trackers
    assert (tracker.window, tracker.baseDelay, tracker.maxDelay) == (120, 0.05, 1.0)
    assert (tracker.banThreshold, tracker.accountThreshold) == (4, 0)
    defaults = listeners(buildService(load(tmp_path), reactor=MemoryReactor()))
    tracker = defaults["imap"].factory.loginTracker
    assert (tracker.window, tracker.baseDelay, tracker.maxDelay) == (600, 2.0, 15.0)
    assert (tracker.banThreshold, tracker.accountThreshold) == (10, 20)


def test_listenersDefaultToEveryAddress(tmp_path):
    """
    With no interface set, TCP and UDP listeners are on C{::} (every
    address); C{[server] interface} and a service's own one change that.
    """
    reactor = MemoryReactor()
    buildService(load(tmp_path), reactor=reactor).privilegedStartService()
    assert {interface for port, factory, backlog, interface in reactor.tcpServers} == {"::"}
    assert [interface for port, protocol, interface in reactor.udpServers] == ["::"]
    reactor = MemoryReactor()
    config = load(tmp_path, "interface = 127.0.0.1\n[imap]\ninterface = ::1\n[minger]\ninterface = ::\n")
    buildService(config, reactor=reactor).privilegedStartService()
    interfaces = {port: interface for port, factory, backlog, interface in reactor.tcpServers}
    assert interfaces.pop(143) == "::1"
    assert set(interfaces.values()) == {"127.0.0.1"}
    assert [interface for port, protocol, interface in reactor.udpServers] == ["::"]


def test_listenersFallBackToIPv4(tmp_path):
    """
    Where binding C{::} fails for want of IPv6, every listener takes
    C{0.0.0.0} instead.
    """
    import errno

    from twisted.internet.error import CannotListenError

    class IPv4OnlyReactor(MemoryReactor):
        def listenTCP(self, port, factory, backlog=50, interface=""):
            if interface == "::":
                raise CannotListenError(interface, port, OSError(errno.EAFNOSUPPORT, "no IPv6"))
            return MemoryReactor.listenTCP(self, port, factory, backlog, interface)

        def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
            if interface == "::":
                raise CannotListenError(interface, port, OSError(errno.EADDRNOTAVAIL, "no IPv6"))
            return MemoryReactor.listenUDP(self, port, protocol, interface, maxPacketSize)

    reactor = IPv4OnlyReactor()
    buildService(load(tmp_path), reactor=reactor).privilegedStartService()
    assert len(reactor.tcpServers) == 8
    assert {interface for port, factory, backlog, interface in reactor.tcpServers} == {"0.0.0.0"}
    assert [interface for port, protocol, interface in reactor.udpServers] == ["0.0.0.0"]


def test_recipientDelimiter(tmp_path):
    """
    C{[server] recipient_delimiter} is the subaddress delimiter of the
    directory every service resolves addresses with.
    """
    children = listeners(buildService(load(tmp_path), reactor=MemoryReactor()))
    pipeline = children["smtp"].factory.target
    assert pipeline.directory.recipientDelimiter == "+"
    assert children["minger"].args[1].directory is pipeline.directory
    assert children["submission"].factory.senderPolicy.directory is pipeline.directory
    children = listeners(buildService(load(tmp_path, "recipient_delimiter =\n"), reactor=MemoryReactor()))
    assert children["smtp"].factory.target.directory.recipientDelimiter == ""


def test_aSecondServerOnASharedDataDirIsASecondaryUntilThePrimaryStops(tmp_path, monkeypatch):
    """
    With C{[server] shared_data_dir = yes}, a server that finds the data
    directory's lock held serves its listeners only, says which server is
    the primary, and leaves the queue, the control socket, the ODMR
    provider and the collections to it; mail it queues is named to the
    primary.  Once the lock is free, it takes it within
    L{TAKEOVER_INTERVAL} and runs them.  Without the key, the second server
    is refused.
    """
    from mdpy.control import QueueHandOff
    from mdpy.tap import TAKEOVER_INTERVAL, lockDataDir

    monkeypatch.setattr("sys.excepthook", sys.excepthook)
    unshared = load(tmp_path)
    primary = lockDataDir(DataDir(unshared["server"]["data_dir"]))
    with pytest.raises(SystemExit, match="is running on this data directory"):
        makeService(_options(unshared), reactor=MemoryReactor())
    config = load(tmp_path, "shared_data_dir = yes\n[odmr]\nenabled = yes\n[domainpop:isp]\n"
                            "host = pop.isp.test\nusername = box\npassword = pw\n")
    reactor = MemoryReactor()
    with capturedLogs() as events:
        top = makeService(_options(config), reactor=reactor)
    assert not top.serverLock.held
    assert loggedLines(events, "is the primary of") == [
        "another mdpy server (pid %d) is the primary of %s: it runs the queue and the control socket; "
        "this one serves its listeners only" % (os.getpid(), config["server"]["data_dir"])
    ]
    children = listeners(top)
    for duty in ("relay", "odmr", "queue-control", "domainpop/isp"):
        assert duty not in children
    queue = top.live.pipeline.queue
    assert [type(listener) for listener in queue.listeners] == [QueueHandOff]
    top.startService()
    reactor.advance(TAKEOVER_INTERVAL)
    assert not top.serverLock.held
    # A reload of the secondary leaves the collections to the primary.
    with open(config.path, "a") as f:
        f.write("[domainpop:other]\nhost = pop.isp.test\nusername = box2\npassword = pw\n")
    top.reload()
    assert "domainpop/other" not in listeners(top)
    primary.release()
    with capturedLogs() as events:
        reactor.advance(TAKEOVER_INTERVAL)
    assert top.serverLock.held
    assert len(loggedLines(events, "has stopped: this one now runs the queue and the control socket")) == 1
    children = listeners(top)
    for duty in ("relay", "odmr", "queue-control", "domainpop/isp", "domainpop/other"):
        assert children[duty].running
    assert "primary-watch" not in children
    assert queue.listeners == [children["relay"]._queued]
    assert [port for port in reactor.unixServers if port[0].endswith("control.sock")]
    top.stopService()
    top.serverLock.release()


def _options(config):
    options = Options()
    options.parseOptions(["--config", config.path])
    return options


_SCRYPT_IN_THREADS = r"""
import hashlib, sys, threading
if sys.argv[1] == "set":
    from mdpy.tap.listeners import keepLargeBlocksApart
    assert keepLargeBlocksApart()

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

before = rss()
barrier = threading.Barrier(4)

def check():
    for _ in range(3):
        barrier.wait()
        hashlib.scrypt(b"secret", salt=b"0123456789abcdef", n=2**14, r=8, p=1)

threads = [threading.Thread(target=check) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(rss() - before)
"""


def test_passwordChecksInThreadsGiveTheirMemoryBack():
    """
    Four threads checking passwords at once (scrypt's 16 MB each) leave
    the process no bigger once the threshold is set, as twistd mdpy and
    each worker set it; without it, each thread's heap keeps the 16 MB.
    """
    def grown(mode):
        out = subprocess.run([sys.executable, "-c", _SCRYPT_IN_THREADS, mode],
                             capture_output=True, text=True, check=True).stdout
        return int(out) / 1024.0

    assert grown("set") < 8
    assert grown("default") > 32
