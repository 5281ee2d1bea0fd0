# -*- test-case-name: tests.test_tap -*-
"""
C{twistd mdpy}: the options, and the one place that builds the object graph
from the configuration.
"""

import os
import re
import resource
import sys

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from mdpy.logs import Logger
from twisted.python import usage

from twisted.cred.portal import Portal

from mdpy.address import checkDomain
from mdpy.auth.checkers import DirectoryChecker, FailedLoginTracker, Realm, makePortal
from mdpy.auth.senders import SenderPolicy
from mdpy.config import Config, ConfigError
from mdpy.errors import InvalidInput
from mdpy.datadir import DataDir
from mdpy.delivery.authresults import InboundChecker
from mdpy.delivery.dkim import DKIMKeys
from mdpy.delivery.mx import MXResolver, makeResolver
from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.delivery.queue import SpoolQueue, controlSocketPath
from mdpy.delivery.relay import Relay, RelayControlFactory, RelaySettings, parseHostPort
from mdpy.delivery.srs import SRS, loadSecret
from mdpy.durable import unlinkQuietly
from mdpy.domainpop.recipients import RoutingRules
from mdpy.domainpop.service import Collector, CollectorService, CollectorSettings
from mdpy.domainpop.state import DEDUPE_FINGERPRINT
from mdpy.logs import logThroughFilter, setLevel
from mdpy.minger.client import MingerClient, MingerVerifier
from mdpy.minger.server import MingerServer
from mdpy.multipop.service import MultiPOPAccounts, MultiPOPService
from mdpy.odmr.customer import ODMRAccount, ODMRClientService
from mdpy.odmr.gateway import GatewayChecker, GatewayDomain, Gateways, normaliseLogin
from mdpy.odmr.provider import ODMRFactory
from mdpy.pop3.fetch import POP3Account
from mdpy.imap.fetch import StructureCache
from mdpy.imap.literals import PendingLiterals
from mdpy.imap.selected import RecentTracker
from mdpy.imap.server import IMAP4Factory
from mdpy.pop3.maildrop import MaildropLocks
from mdpy.pop3.server import POP3Factory
from mdpy.serverlock import AlreadyRunning, ServerLock
from mdpy.store.maildir import removeStaleTmpFiles
from mdpy.smtp.server import MODE_MTA, MODE_SMTPS, MODE_SUBMISSION, SMTPFactory
from mdpy.tls import ensureSelfSigned, serverOptions

log = Logger()

SMTP_SERVICES = {"smtp": MODE_MTA, "submission": MODE_SUBMISSION, "smtps": MODE_SMTPS}
LISTENERS = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")
IMPLICIT_TLS = {"smtps", "pop3s", "imaps"}
IMAP_SERVICES = {"imap", "imaps"}
NOT_YET_AVAILABLE = ("webadmin",)
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

    @ivar twistdOptions: the options of the C{twistd} running it, whose log
        it filters (L{mdpy.logs.logThroughFilter}), or L{None}.
    """

    twistdOptions = None

    def setServiceParent(self, parent):
        service.MultiService.setServiceParent(self, parent)
        if self.twistdOptions is not None:
            logThroughFilter(parent, self.twistdOptions)

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


class _Named:
    """
    A listener whose bind failure names its service.
    """

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            e.mdpyService = self.name
            raise


class _NamedListener(_Named, internet.StreamServerEndpointService):
    _raiseSynchronously = True


class _NamedUDPListener(_Named, internet.UDPServer):
    pass


def _raiseFileLimit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass


def _sessionLimits(section):
    """
    @return: the L{mdpy.session.SessionFactory} limits of a listener's
        section.
    """
    return dict(
        maxErrors=section["max_errors"],
        timeout=section["timeout"],
        maxConnections=section["max_connections"],
        maxConnectionsPerIP=section["max_connections_per_ip"],
    )


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
    stale = removeStaleTmpFiles(datadir.mailRoot)
    if stale:
        log.info("maildir: removed {n} files left in tmp/ folders for over 36 hours", n=len(stale))
    address, password, aliases = datadir.firstStart(directory, store, server["domain"])
    if address:
        # The password itself never goes to a log: logs are read more
        # widely and kept longer than a 0600 file.
        log.info(
            "created the postmaster account {address} of {domain}; its password is in {path}",
            domain=server["domain"],
            address=address,
            path=datadir.postmasterPasswordPath,
        )
    for alias, target in aliases:
        log.info("created alias {alias} of {target}", alias=alias, target=target)

    tls = config["tls"]
    if tls["certificate"]:
        certificate, key = tls["certificate"], tls["private_key"]
    else:
        certificate, key, made = ensureSelfSigned(datadir.tlsDir, server["hostname"])
        if made:
            log.info("made a self-signed certificate {path}", path=certificate)
    tlsOptions = serverOptions(certificate, key)
    mtaTLSOptions = serverOptions(certificate, key, opportunistic=True)

    pipeline, queue, resolver = buildPipeline(config, datadir, directory, store, reactor)
    for domain in pipeline.gateways.domains():
        if directory.hasDomain(domain):
            log.warn("gateway:{domain} is also a local domain; its mail is held for ATRN, "
                     "not delivered to its users", domain=domain)
    portal = makePortal(directory)
    loginTracker = loginTrackerFor(config["auth"], reactor)

    shared = dict(
        portal=portal,
        tlsOptions=tlsOptions,
        loginTracker=loginTracker,
        clock=reactor,
    )
    locks = MaildropLocks()
    imapShared = dict(
        structures=StructureCache(),
        recent=RecentTracker(),
        pendingLiterals=PendingLiterals(),
        spoolDir=datadir.literalSpoolDir,
    )
    top = MailServer()
    for name in LISTENERS:
        section = config[name]
        if not section["enabled"]:
            continue
        limits = _sessionLimits(section)
        if name in SMTP_SERVICES:
            factory = SMTPFactory(
                server["hostname"],
                pipeline,
                mode=SMTP_SERVICES[name],
                defaultDomain=server["domain"],
                maxMessageSize=section["max_message_size"],
                maxRecipients=section["max_recipients"],
                maxHeaderSize=section["max_header_size"],
                senderPolicy=SenderPolicy(directory, section["sender_policy"]),
                receivedAuth=config["smtp"]["received_auth"],
                **limits,
                **dict(shared, tlsOptions=mtaTLSOptions if name == "smtp" else tlsOptions),
            )
        elif name in IMAP_SERVICES:
            factory = IMAP4Factory(
                server["hostname"],
                store,
                allowPlaintext=section.get("allow_plaintext_auth", False),
                implicitTLS=name in IMPLICIT_TLS,
                maxMessageSize=section["max_message_size"],
                maxPendingLiterals=section["max_pending_literal_size"],
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
    relay = Relay(
        queue, resolver, pipeline, server["hostname"], relaySettings(config["relay"]), reactor,
        postmaster="postmaster@" + server["domain"],
    )
    relay.setName("relay")
    relay.setServiceParent(top)
    if config["odmr"]["enabled"]:
        section = config["odmr"]
        factory = ODMRFactory(
            server["hostname"],
            pipeline.gateways,
            relay,
            maxDomains=section["max_domains"],
            clientTimeout=section["timeout"],
            defaultDomain=server["domain"],
            **_sessionLimits(section),
            **dict(shared, portal=odmrPortal(pipeline.gateways, directory)),
        )
        listener = _NamedListener(
            _endpoint(reactor, section["interface"], section["port"] + portOffset), factory
        )
        listener.setName("odmr")
        listener.setServiceParent(top)
    if config["minger"]["enabled"]:
        section = config["minger"]
        checkMingerSecret(config, "[minger] secret", section["secret"])
        minger = MingerServer(
            directory,
            secret=section["secret"] or "",
            anonymous=section["anonymous"],
            allow=section["allow"] or (),
            rate=section["rate"],
            burst=section["burst"],
            clock=reactor,
        )
        listener = _NamedUDPListener(
            section["port"] + portOffset, minger, interface=section["interface"], reactor=reactor
        )
        listener.setName("minger")
        listener.setServiceParent(top)
    collectors = buildCollectors(config, datadir, pipeline, directory, reactor)
    for name, collector in collectors.items():
        collector.setName(name)
        collector.setServiceParent(top)
    control = internet.StreamServerEndpointService(
        endpoints.UNIXServerEndpoint(reactor, controlSocketPath(queue.path), mode=0o600),
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
            timeout=config["dns"]["timeout"],
        )
    gateways = buildGateways(config, reactor)
    holdGateways(queue, gateways)
    pipeline = DeliveryPipeline(
        directory, store, queue=queue, spoolDir=datadir.spoolDir, srs=srs, checker=checker,
        gateways=gateways,
    )
    return pipeline, queue, resolver


def buildGateways(config, reactor):
    """
    @return: the L{Gateways} of the C{[gateway:DOMAIN]} sections.
    @raise ConfigError: a bad domain, user or Minger setting.
    """
    label = config.path or "<embedded default>"
    gateways = []
    for name, section in sorted(config.named("gateway").items()):
        where = "%s: [gateway:%s]" % (label, name)
        try:
            checkDomain(name.lower())
            users = [normaliseLogin(user) for user in section["atrn_users"] or ()]
        except InvalidInput as e:
            raise ConfigError("%s: %s" % (where, e))
        verifier = None
        if section["verify"] == "minger":
            if not section["minger_host"]:
                raise ConfigError("%s: verify = minger needs minger_host" % (where,))
            checkMingerSecret(config, "[gateway:%s] minger_secret" % (name,), section["minger_secret"])
            client = MingerClient(
                reactor,
                section["minger_host"],
                port=section["minger_port"],
                secret=section["minger_secret"] or "",
                timeout=section["minger_timeout"],
                cacheTTL=section["minger_cache"],
                negativeTTL=section["minger_cache"],
            )
            verifier = MingerVerifier(client, fallback=section["minger_fallback"])
        try:
            gateway = GatewayDomain(name, section["auth_password"] or "", users, verifier,
                                    hosts=section["atrn_hosts"] or ())
        except ValueError as e:
            raise ConfigError("%s: atrn_hosts: %s" % (where, e))
        gateways.append(gateway)
    return Gateways(gateways)


_VCHARS = re.compile(r"[\x21-\x7e]{1,50}\Z")


def checkMingerSecret(config, where, secret):
    """
    A Minger secret is 1 to 50 visible ASCII characters
    (draft-hathcock-minger-06 section 2.2); fewer than 16 is allowed with a
    warning, as the draft asks for 128 bits.

    @raise ConfigError: it is not.
    """
    if not secret:
        return
    if not _VCHARS.match(secret):
        raise ConfigError("%s: %s must be 1 to 50 visible ASCII characters (no spaces)"
                          % (config.path or "<embedded default>", where))
    if len(secret) < 16:
        log.warn("{where} is shorter than 16 characters; a guessable secret lets anyone probe addresses",
                 where=where)


def holdGateways(queue, gateways):
    """
    Hold the mail of exactly the gateway domains: a domain that is no longer
    one has its mail delivered as any other.
    """
    wanted = set(gateways.domains())
    for domain in sorted(set(queue.held) - wanted):
        queue.release(domain)
        log.info("queue: {domain} is no longer a gateway domain; its mail is delivered", domain=domain)
    for domain in sorted(wanted):
        queue.hold(domain)


def odmrPortal(gateways, directory):
    """
    @return: the portal of the ODMR port: gateway domains with their
        passwords, then directory users.
    """
    return Portal(Realm(), [GatewayChecker(gateways, DirectoryChecker(directory))])


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
    stateDir = collectorStateDir(datadir, "domainpop", name)
    os.makedirs(stateDir, mode=0o700, exist_ok=True)
    return Collector(
        "domainpop/" + name, account, settings, pipeline, directory, stateDir,
        server["hostname"], "postmaster@" + server["domain"], reactor=reactor,
    )


def collectorStateDir(datadir, kind, name):
    """
    @param kind: C{domainpop} or C{multipop}.
    @param name: the C{NAME} of C{[domainpop:NAME]}, or a MultiPOP
        account's id.
    @return: where that source keeps its state, lock, spool and held
        folder.
    """
    return os.path.join(datadir.root, kind, name)


def multipopCollectorFor(config, datadir, account, pipeline, directory, reactor):
    """
    @return: the L{Collector} of one MultiPOP account (a dict of
        L{MultiPOPAccounts}).
    """
    section = config["multipop"]
    server = config["server"]
    stateDir = collectorStateDir(datadir, "multipop", account["id"])
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
    for name, section in sorted(config.named("odmr-client").items()):
        if not section["enabled"]:
            continue
        services["odmr/" + name] = odmrClientFor(config, name, section, pipeline, reactor)
    if config["multipop"]["enabled"]:
        services["multipop"] = MultiPOPService(
            multipopAccounts(datadir),
            lambda account: multipopCollectorFor(config, datadir, account, pipeline, directory, reactor),
            config["multipop"]["interval"],
            clock=reactor,
        )
    return services


def _odmrAccount(name, section):
    """
    @return: the L{ODMRAccount} of an C{[odmr-client:NAME]} section.
    @raise ValueError: a bad value.
    """
    return ODMRAccount(
        name,
        section["host"] or "",
        port=section["port"],
        tls=section["tls"],
        username=section["username"] or "",
        password=section["password"] or "",
        domains=section["domains"] or (),
        verify=section["verify_certificate"],
        caFile=section["ca_file"],
        timeout=section["timeout"],
        atrnTimeout=section["atrn_timeout"],
    )


def odmrClientFor(config, name, section, pipeline, reactor):
    """
    @return: the L{ODMRClientService} of an C{[odmr-client:NAME]} section:
        the mail it releases enters the pipeline as inbound SMTP on port 25.
    """
    server, smtp = config["server"], config["smtp"]
    try:
        account = _odmrAccount(name, section)
    except ValueError as e:
        raise ConfigError("%s: [odmr-client:%s] %s" % (config.path or "<embedded default>", name, e))
    reversed = SMTPFactory(
        server["hostname"],
        pipeline,
        mode=MODE_MTA,
        defaultDomain=server["domain"],
        maxMessageSize=smtp["max_message_size"],
        maxRecipients=smtp["max_recipients"],
        maxHeaderSize=smtp["max_header_size"],
        maxErrors=smtp["max_errors"],
        timeout=smtp["timeout"],
        clock=reactor,
    )
    return ODMRClientService(account, reversed, server["hostname"], section["interval"],
                             reactor=reactor, clock=reactor)


def loginTrackerFor(section, reactor):
    """
    @return: the L{FailedLoginTracker} of an C{[auth]} section, which every
        listener with logins shares.
    """
    return FailedLoginTracker(
        reactor,
        baseDelay=section["failure_delay"],
        maxDelay=max(section["max_failure_delay"], section["failure_delay"]),
        window=section["failure_window"],
        banThreshold=section["address_failures"],
        accountThreshold=section["account_failures"],
    )


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
        connectionIdle=section["connection_idle"],
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
    try:
        lock = lockDataDir(DataDir(config["server"]["data_dir"]))
    except (AlreadyRunning, OSError) as e:
        raise SystemExit("twistd mdpy: %s" % (e,))
    _raiseFileLimit()
    if reactor is None:
        from twisted.internet import reactor
    reactor.suggestThreadPoolSize(THREADS)
    top = buildService(config, options["port-offset"], reactor)
    top.serverLock = lock  # held until the process ends
    top.twistdOptions = getattr(options, "parent", None)
    return top


def lockDataDir(datadir):
    """
    Take the data directory's L{ServerLock} before anything in it is
    touched, and remove the control socket a dead server left.

    @return: the L{ServerLock}, held.
    @raise AlreadyRunning: another server runs on C{datadir}.
    """
    datadir.prepare()
    os.makedirs(datadir.queueDir, mode=0o700, exist_ok=True)
    socketPath = controlSocketPath(datadir.queueDir)
    lock = ServerLock(socketPath + ".lock")
    lock.acquire()
    unlinkQuietly(socketPath)  # nobody listens there: the lock is ours
    return lock
