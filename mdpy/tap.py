# -*- test-case-name: tests.test_tap -*-
"""
C{twistd mdpy}: the options, and the one place that builds the object graph
from the configuration.
"""

import os
import resource
import sys

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from mdpy.logs import Logger
from twisted.python import usage

from mdpy.auth.checkers import FailedLoginTracker, makePortal
from mdpy.config import Config, ConfigError
from mdpy.datadir import DataDir
from mdpy.delivery.authresults import InboundChecker
from mdpy.delivery.dkim import DKIMKeys
from mdpy.delivery.mx import MXResolver, makeResolver
from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.delivery.queue import SpoolQueue, controlSocketPath
from mdpy.delivery.relay import Relay, RelayControlFactory, RelaySettings, parseHostPort
from mdpy.delivery.srs import SRS, loadSecret
from mdpy.domainpop.recipients import RoutingRules
from mdpy.domainpop.service import Collector, CollectorService, CollectorSettings
from mdpy.domainpop.state import DEDUPE_FINGERPRINT
from mdpy.logs import setLevel
from mdpy.multipop.service import MultiPOPAccounts, MultiPOPService
from mdpy.pop3.fetch import POP3Account
from mdpy.imap.fetch import StructureCache
from mdpy.imap.selected import RecentTracker
from mdpy.imap.server import IMAP4Factory
from mdpy.pop3.maildrop import MaildropLocks
from mdpy.pop3.server import POP3Factory
from mdpy.smtp.server import MODE_MTA, MODE_SMTPS, MODE_SUBMISSION, SMTPFactory
from mdpy.tls import ensureSelfSigned, serverOptions

log = Logger()

SMTP_SERVICES = {"smtp": MODE_MTA, "submission": MODE_SUBMISSION, "smtps": MODE_SMTPS}
LISTENERS = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")
IMPLICIT_TLS = {"smtps", "pop3s", "imaps"}
IMAP_SERVICES = {"imap", "imaps"}
NOT_YET_AVAILABLE = ("odmr", "minger", "webadmin")
LISTEN_BACKLOG = 1024
THREADS = 32


class Options(usage.Options):
    synopsis = "[--config PATH] [--port-offset N]"
    longdesc = (
        "Run every enabled mdpy service.  Without --config, an embedded default "
        "keeps its data under $XDG_DATA_HOME/mdpy (or ~/.local/share/mdpy)."
    )
    optParameters = [
        ["config", "c", None, "The INI configuration file (see etc/mdpy.ini)."],
        ["port-offset", None, 0, "Add N to every listening port.", int],
    ]

    def postOptions(self):
        if not 0 <= self["port-offset"] < 65535:
            raise usage.UsageError("--port-offset must be from 0 to 65534")


class ListenError(Exception):
    """
    A port could not be bound; the message is one line for the administrator.
    """


def _oneLineListenErrors(hook=sys.excepthook):
    """
    Print L{ListenError} and L{ConfigError} as one line instead of a traceback
    when they end C{twistd -n}.
    """

    def excepthook(kind, value, tb):
        if issubclass(kind, (ListenError, ConfigError)):
            sys.stderr.write("twistd mdpy: %s\n" % (value,))
        else:
            hook(kind, value, tb)

    return excepthook


class MailServer(service.MultiService):
    """
    The service tree: one named child per listener.
    """

    def privilegedStartService(self):
        try:
            service.MultiService.privilegedStartService(self)
        except CannotListenError as e:
            name = getattr(e, "mdpyService", "?")
            reason = e.socketError
            why = getattr(reason, "strerror", None) or str(reason)
            raise ListenError(
                "cannot listen on port %s for %s (%s): %s; choose another port in "
                "the configuration, stop the program using it, or run with "
                "--port-offset N (e.g. 10000) as an ordinary user"
                % (e.port, name, e.interface or "*", why)
            ) from None


class _NamedListener(internet.StreamServerEndpointService):
    """
    A listener whose bind failure names its service.
    """

    _raiseSynchronously = True

    def privilegedStartService(self):
        try:
            internet.StreamServerEndpointService.privilegedStartService(self)
        except CannotListenError as e:
            e.mdpyService = self.name
            raise


def _raiseFileLimit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass


def _endpoint(reactor, interface, port, tlsOptions=None):
    if ":" in interface:
        endpoint = endpoints.TCP6ServerEndpoint(
            reactor, port, backlog=LISTEN_BACKLOG, interface=interface
        )
    else:
        endpoint = endpoints.TCP4ServerEndpoint(
            reactor, port, backlog=LISTEN_BACKLOG, interface=interface
        )
    if tlsOptions is not None:
        endpoint = endpoints.wrapServerTLS(tlsOptions, endpoint)
    return endpoint


def buildService(config, portOffset=0, reactor=None):
    """
    Build the whole service tree from a loaded configuration.

    @type config: L{mdpy.config.Config}
    @return: a L{MailServer}.
    """
    if reactor is None:
        from twisted.internet import reactor
    server = config["server"]
    setLevel(server["log_level"])
    datadir = DataDir(server["data_dir"])
    datadir.prepare()
    directory = datadir.openDirectory()
    store = datadir.openStore(reactor=reactor)
    created = datadir.firstStart(directory, store, server["domain"])
    if created:
        log.info(
            "created domain {domain} and {address} with password {password}"
            " (also in {path})",
            domain=server["domain"],
            address=created[0],
            password=created[1],
            path=datadir.postmasterPasswordPath,
        )

    tls = config["tls"]
    if tls["certificate"]:
        certificate, key = tls["certificate"], tls["private_key"]
    else:
        certificate, key, made = ensureSelfSigned(datadir.tlsDir, server["hostname"])
        if made:
            log.info("made a self-signed certificate {path}", path=certificate)
    tlsOptions = serverOptions(certificate, key)

    pipeline, queue, resolver = buildPipeline(config, datadir, directory, store, reactor)
    portal = makePortal(directory)
    loginTracker = FailedLoginTracker(reactor)

    shared = dict(
        portal=portal,
        tlsOptions=tlsOptions,
        loginTracker=loginTracker,
        clock=reactor,
    )
    locks = MaildropLocks()
    imapShared = dict(structures=StructureCache(), recent=RecentTracker())
    top = MailServer()
    for name in LISTENERS:
        section = config[name]
        if not section["enabled"]:
            continue
        limits = dict(
            maxErrors=section["max_errors"],
            timeout=section["timeout"],
            maxConnections=section["max_connections"],
            maxConnectionsPerIP=section["max_connections_per_ip"],
        )
        if name in SMTP_SERVICES:
            factory = SMTPFactory(
                server["hostname"],
                pipeline,
                mode=SMTP_SERVICES[name],
                defaultDomain=server["domain"],
                maxMessageSize=section["max_message_size"],
                maxRecipients=section["max_recipients"],
                **limits,
                **shared,
            )
        elif name in IMAP_SERVICES:
            factory = IMAP4Factory(
                server["hostname"],
                store,
                allowPlaintext=section.get("allow_plaintext_auth", False),
                implicitTLS=name in IMPLICIT_TLS,
                maxMessageSize=section["max_message_size"],
                **imapShared,
                **limits,
                **shared,
            )
        else:
            factory = POP3Factory(
                server["hostname"],
                store,
                locks=locks,
                allowPlaintext=section.get("allow_plaintext_auth", False),
                implicitTLS=name in IMPLICIT_TLS,
                **limits,
                **shared,
            )
        endpoint = _endpoint(
            reactor,
            section["interface"],
            section["port"] + portOffset,
            tlsOptions if name in IMPLICIT_TLS else None,
        )
        listener = _NamedListener(endpoint, factory)
        listener.setName(name)
        listener.setServiceParent(top)
    relay = Relay(queue, resolver, pipeline, server["hostname"], relaySettings(config["relay"]), reactor)
    relay.setName("relay")
    relay.setServiceParent(top)
    collectors = buildCollectors(config, datadir, pipeline, directory, reactor)
    for name, collector in collectors.items():
        collector.setName(name)
        collector.setServiceParent(top)
    control = internet.StreamServerEndpointService(
        endpoints.UNIXServerEndpoint(reactor, controlSocketPath(queue.path), mode=0o600, wantPID=True),
        RelayControlFactory(queue, collectors),
    )
    control.setName("queue-control")
    control.setServiceParent(top)
    for name in NOT_YET_AVAILABLE:
        if name in config.sections and config[name]["enabled"]:
            log.info("{name}: not available in this release; not started", name=name)
    return top


def buildPipeline(config, datadir, directory, store, reactor):
    """
    @return: C{(pipeline, queue, resolver)}: the delivery pipeline every
        message enters, the outbound queue (loaded) and the DNS resolver.
    """
    server = config["server"]
    resolver = MXResolver(makeResolver(reactor, config["dns"]["nameservers"]), clock=reactor)
    queue = SpoolQueue(
        datadir.queueDir, reactor=reactor, signerFor=DKIMKeys(datadir.dkimDir).signerFor
    )
    loaded = queue.load()
    if loaded or queue.quarantined:
        log.info(
            "queue: {n} messages waiting, {bad} moved to {dir}",
            n=loaded,
            bad=len(queue.quarantined),
            dir=queue.path + "/corrupt",
        )
    relayConfig = config["relay"]
    srs = SRS(loadSecret(datadir.srsSecretPath)) if relayConfig["srs"] else None
    checker = None
    if config["smtp"]["authentication_results"]:
        checker = InboundChecker(
            server["hostname"],
            resolver.lookupTXT,
            lookupAddresses=resolver.lookupAddresses,
            lookupMX=resolver.lookupMX,
            lookupPointer=resolver.lookupPointer,
            reactor=reactor,
        )
    pipeline = DeliveryPipeline(
        directory, store, queue=queue, spoolDir=datadir.spoolDir, srs=srs, checker=checker
    )
    return pipeline, queue, resolver


def collectorFor(config, datadir, name, section, pipeline, directory, reactor):
    """
    @return: the L{Collector} of the C{[domainpop:NAME]} C{section}.
    """
    account = POP3Account(
        section["host"] or "",
        port=section["port"],
        tls=section["tls"],
        verify=section["verify_certificate"],
        caFile=section["ca_file"],
        username=section["username"] or "",
        password=section["password"] or "",
        apop=section["apop"],
        timeout=section["timeout"],
    )
    dedupe = section["dedupe_header"]
    if dedupe is not None and dedupe.lower() == "none":
        dedupe = None
    elif dedupe is not None and dedupe.lower() == DEDUPE_FINGERPRINT:
        dedupe = DEDUPE_FINGERPRINT
    settings = CollectorSettings(
        rules=RoutingRules(
            parseHeaders=section["parse_headers"] or (),
            receivedSkip=section["received_skip"],
            trustedReceivedHosts=section["trusted_received_hosts"] or (),
            maxHops=section["max_hops"],
        ),
        leaveOnServerDays=section["leave_on_server_days"],
        maxSize=section["max_size"],
        sizeAction=section["size_action"],
        archiveDir=section["archive_dir"],
        dedupeHeader=dedupe,
        fingerprintFallback=section["dedupe_fingerprint"],
        dedupeTTL=section["dedupe_ttl"],
        unknownRecipient=section["unknown_recipient"],
        foreignRecipients=section["foreign_recipients"],
        maxMessageSize=config["smtp"]["max_message_size"],
    )
    server = config["server"]
    stateDir = os.path.join(datadir.root, "domainpop", name)
    os.makedirs(stateDir, mode=0o700, exist_ok=True)
    return Collector(
        "domainpop/" + name, account, settings, pipeline, directory, stateDir,
        server["hostname"], "postmaster@" + server["domain"], reactor=reactor,
    )


def multipopCollectorFor(config, datadir, account, pipeline, directory, reactor):
    """
    @return: the L{Collector} of one MultiPOP account (a dict of
        L{MultiPOPAccounts}).
    """
    section = config["multipop"]
    server = config["server"]
    stateDir = os.path.join(datadir.root, "multipop", account["id"])
    os.makedirs(stateDir, mode=0o700, exist_ok=True)
    pop3 = POP3Account(
        account["host"], port=account["port"], tls=account["tls"], caFile=section["ca_file"],
        username=account["username"], password=account["password"], timeout=section["timeout"],
    )
    settings = CollectorSettings(
        recipient=account["user"],
        leaveOnServerDays=account["leave_on_server_days"],
        dedupeHeader=None,
        maxMessageSize=config["smtp"]["max_message_size"],
    )
    return Collector(
        "multipop/%s/%s" % (account["user"], account["id"]), pop3, settings, pipeline, directory,
        stateDir, server["hostname"], "postmaster@" + server["domain"], reactor=reactor,
    )


def multipopAccounts(datadir):
    return MultiPOPAccounts(os.path.join(datadir.root, "multipop", "accounts.json"))


def buildCollectors(config, datadir, pipeline, directory, reactor):
    """
    @return: C{{name: service}}: a L{CollectorService} per enabled
        C{[domainpop:NAME]} (named C{domainpop/NAME}), and the
        L{MultiPOPService} (named C{multipop}) when enabled.
    """
    services = {}
    for name, section in sorted(config.named("domainpop").items()):
        if not section["enabled"]:
            continue
        collector = collectorFor(config, datadir, name, section, pipeline, directory, reactor)
        services["domainpop/" + name] = CollectorService(collector, section["interval"], clock=reactor)
    if config["multipop"]["enabled"]:
        services["multipop"] = MultiPOPService(
            multipopAccounts(datadir),
            lambda account: multipopCollectorFor(config, datadir, account, pipeline, directory, reactor),
            config["multipop"]["interval"],
            clock=reactor,
        )
    return services


def relaySettings(section):
    """
    @return: the L{RelaySettings} of a C{[relay]} section.
    @raise ConfigError: a malformed smarthost.
    """
    smarthost = None
    if section["smarthost"]:
        try:
            smarthost = parseHostPort(
                section["smarthost"], 465 if section["smarthost_tls"] == "implicit" else 25
            )
        except ValueError as e:
            raise ConfigError("[relay] smarthost = %s: %s" % (section["smarthost"], e))
    credentials = None
    if section["smarthost_username"]:
        credentials = (section["smarthost_username"], section["smarthost_password"] or "")
    return RelaySettings(
        smarthost=smarthost,
        smarthostTLS=section["smarthost_tls"],
        smarthostTrust=section["smarthost_ca_file"],
        smarthostCredentials=credentials,
        remotePort=section["remote_port"],
        mxTLS=section["mx_tls"] == "may",
        retry=section["retry"],
        lifetime=section["lifetime"],
        delayWarning=section["delay_warning"],
        maxConnections=section["max_connections"],
        maxPerDestination=section["max_per_destination"],
        maxMessagesPerConnection=section["max_messages_per_connection"],
        connectTimeout=section["connect_timeout"],
        commandTimeout=section["command_timeout"],
    )


def makeService(options, reactor=None):
    """
    The C{twistd} entry point.
    """
    sys.excepthook = _oneLineListenErrors()
    try:
        config = Config.load(options["config"])
    except ConfigError as e:
        raise SystemExit("twistd mdpy: %s" % (e,))
    _raiseFileLimit()
    if reactor is None:
        from twisted.internet import reactor
    reactor.suggestThreadPoolSize(THREADS)
    return buildService(config, options["port-offset"], reactor)
