# -*- test-case-name: tests.test_tap -*-
"""
C{twistd mdpy}: the options, and the one place that builds the object graph
from the configuration.
"""

import functools
import os
import re
import resource
import sys

from OpenSSL import SSL
from twisted.application import internet, service
from twisted.internet import defer, endpoints, task
from twisted.internet.error import CannotListenError
from mdpy.logs import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from twisted.cred.portal import Portal

from mdpy.address import checkDomain
from mdpy.auth.accounts import AccountCheck
from mdpy.auth.checkers import DirectoryChecker, FailedLoginTracker, Realm, makePortal
from mdpy.auth.senders import SenderPolicy
from mdpy.checks import BUILT_IN, AuthenticationResultsCheck
from mdpy.config import Config, ConfigError, configPath
from mdpy.configcheck import checkConfig
from mdpy.errors import InvalidInput
from mdpy.datadir import DataDir
from mdpy.dns import DNSCache, makeResolver
from mdpy.mailauth.authresults import InboundChecker
from mdpy.mailauth.dkim import DKIMKeys
from mdpy.delivery.mx import MXResolver
from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy import backends
from mdpy.control import ControlFactory, QueueHandOff
from mdpy.delivery.relay import Relay, RelaySettings, parseHostPort
from mdpy.mailauth.srs import SRS, loadSecret
from mdpy.dualstack import EVERY_ADDRESS, EveryAddressEndpoint, listenEverywhere
from mdpy.durable import unlinkQuietly
from mdpy.domainpop.recipients import RoutingRules
from mdpy.collect.collector import Collector, CollectorService, CollectorSettings
from mdpy.domainpop.state import DEDUPE_FINGERPRINT
from mdpy.logs import logThroughFilter, setLevel
from mdpy.minger.client import MingerClient, MingerVerifier
from mdpy.minger.server import MingerServer
from mdpy.multipop.service import MultiPOPService
from mdpy.odmr.customer import ODMRAccount, ODMRClientService
from mdpy.odmr.gateway import GatewayChecker, GatewayDomain, Gateways, normaliseLogin
from mdpy.odmr.provider import ODMRFactory
from mdpy.pop3.client import POP3Account
from mdpy.imap.fetch import StructureCache
from mdpy.imap.sort import SortFieldCache
from mdpy.imap.literals import PendingLiterals
from mdpy.imap.server import IMAP4Factory
from mdpy.pop3.server import POP3Factory
from mdpy.plugins import loadObject
from mdpy.interfaces import ICheck
from mdpy.reload import LiveParts, installReloadSignal
from mdpy.serverlock import AlreadyRunning, ServerLock
from mdpy.smtp.server import MODE_MTA, MODE_SMTPS, MODE_SUBMISSION, SMTPFactory
from mdpy.tls import ReplaceableServerOptions, ensureSelfSigned, serverOptions

log = Logger()

SMTP_SERVICES = {"smtp": MODE_MTA, "submission": MODE_SUBMISSION, "smtps": MODE_SMTPS}
LISTENERS = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")
IMPLICIT_TLS = {"smtps", "pop3s", "imaps"}
IMAP_SERVICES = {"imap", "imaps"}
NOT_YET_AVAILABLE = ("webadmin",)
LISTEN_BACKLOG = 1024
THREADS = 32
# Seconds between a secondary's tries of the data directory's lock.
TAKEOVER_INTERVAL = 1
# Seconds between the primary's looks for queue entries no notice announced.
PICKUP_INTERVAL = 60
# While other processes may write to the queue, its files younger than this
# may be theirs, being written or staged.
STAGING_GRACE = 60


class Options(usage.Options):
    synopsis = "[--config PATH] [--port-offset N]"
    longdesc = (
        "Run every enabled mdpy service.  Without --config: $MDPY_CONFIG, "
        "/etc/mdpy/mdpy.ini or $XDG_CONFIG_HOME/mdpy/mdpy.ini, as the mdpy "
        "command finds it; without any, an embedded default keeps its data "
        "under $XDG_DATA_HOME/mdpy (or ~/.local/share/mdpy)."
    )
    optParameters = [
        ["config", "c", None, "The INI configuration file (see 'mdpy init --reference')."],
        ["port-offset", None, 0, "Add N to every listening port.", int],
    ]

    def postOptions(self):
        if not 0 <= self["port-offset"] < 65535:
            raise usage.UsageError("--port-offset must be from 0 to 65534")
        self["config"] = configPath(self["config"])


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
    The service tree: one named child per listener and per collection.

    @ivar live: the L{LiveParts} a reload changes.
    @ivar twistdOptions: the options of the C{twistd} running it, whose log
        it filters (L{mdpy.logs.logThroughFilter}), or L{None}.
    """

    live = None
    twistdOptions = None

    def setServiceParent(self, parent):
        service.MultiService.setServiceParent(self, parent)
        if self.twistdOptions is not None:
            logThroughFilter(parent, self.twistdOptions)

    def reload(self):
        """
        Read the configuration file again and apply it without closing a
        connection: collections (C{[domainpop:NAME]}, C{[odmr-client:NAME]},
        C{[multipop]}) added, changed or removed are started, built again or
        stopped; gateway domains, listener limits, C{[auth]} limits, the log
        level and the TLS certificate files (read again even when their
        paths are the same) apply to what starts from now on.  Settings
        that take effect only at the next start are named in one log line.
        A configuration that cannot be used changes nothing and is named in
        one error line.  One reload runs at a time.

        @return: a L{Deferred} firing with the lines that say what changed,
            or failing with L{ConfigError}.
        """
        return self.live.lock.run(self._reload)

    def _reload(self):
        live = self.live
        try:
            config = Config.load(live.config.path)
            plan = live.prepare(config)
        except ConfigError as e:
            log.error("reload: {problem}; the running configuration is kept", problem=e)
            return defer.fail(e)
        return plan.apply(self)

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
    def _getPort(self):
        port, protocol = self.args
        if self.kwargs["interface"] != EVERY_ADDRESS:
            return internet.UDPServer._getPort(self)
        return listenEverywhere(
            lambda interface: self.reactor.listenUDP(port, protocol, interface=interface), port
        )


def _raiseFileLimit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass


_SESSION_SETTINGS = {
    "max_errors": "maxErrors",
    "timeout": "timeout",
    "max_connections": "maxConnections",
    "max_connections_per_ip": "maxConnectionsPerIP",
}
# The keys of each kind of listener section that its factory takes (and a
# reload changes), with the factory attribute each sets.
LISTENER_SETTINGS = {
    "smtp": dict(
        _SESSION_SETTINGS,
        max_message_size="maxMessageSize",
        max_header_size="maxHeaderSize",
        max_recipients="maxRecipients",
        sender_policy="senderPolicy",
        received_auth="receivedAuth",
    ),
    "imap": dict(
        _SESSION_SETTINGS,
        allow_plaintext_auth="allowPlaintext",
        max_message_size="maxMessageSize",
        max_pending_literal_size="maxPendingLiterals",
    ),
    "pop3": dict(_SESSION_SETTINGS, allow_plaintext_auth="allowPlaintext"),
    "odmr": dict(_SESSION_SETTINGS, max_domains="maxDomains"),
}


LISTENER_KINDS = dict(
    {name: "smtp" for name in SMTP_SERVICES}, imap="imap", imaps="imap", pop3="pop3", pop3s="pop3", odmr="odmr"
)


# The built-in factory of each kind of listener; C{factory} names a subclass.
LISTENER_FACTORIES = {"smtp": SMTPFactory, "imap": IMAP4Factory, "pop3": POP3Factory, "odmr": ODMRFactory}


def factoryClass(config, name):
    """
    @param name: a listener: C{smtp}, C{imaps}, C{odmr}...
    @return: the factory class of its sessions: the built-in one, or the
        subclass of it its C{factory} key names.
    @raise ConfigError: that key names nothing importable, or not such a
        subclass.
    """
    builtIn = LISTENER_FACTORIES[LISTENER_KINDS[name]]
    spec = config[name]["factory"]
    if not spec:
        return builtIn
    where = "%s: [%s] factory = %s" % (config.label, name, spec)
    try:
        found = loadObject(spec)
    except ValueError as e:
        raise ConfigError("%s: %s" % (where, e))
    if not (isinstance(found, type) and issubclass(found, builtIn)):
        raise ConfigError("%s: not a subclass of %s.%s" % (where, builtIn.__module__, builtIn.__name__))
    return found


def checkClasses(config):
    """
    @return: C{[(name, class or object)]} of C{[smtp] checks}, in order:
        C{(name, None)} for a built-in one, else what C{package.module:Class}
        names; none when C{authentication_results = no}.
    @raise ConfigError: a name that is neither built in nor importable, or
        names no L{ICheck}.
    """
    smtp = config["smtp"]
    if not smtp["authentication_results"]:
        return []
    found = []
    for name in smtp["checks"] or ():
        where = "%s: [smtp] checks: %s" % (config.label, name)
        if name.lower() in BUILT_IN:
            found.append((name.lower(), None))
            continue
        if ":" not in name:
            raise ConfigError("%s: not a check; the built-in ones are %s, others are package.module:Class"
                              % (where, ", ".join(BUILT_IN)))
        try:
            check = loadObject(name)
        except ValueError as e:
            raise ConfigError("%s: %s" % (where, e))
        if not (ICheck.providedBy(check) or (isinstance(check, type) and ICheck.implementedBy(check))):
            raise ConfigError("%s: provides no mdpy.interfaces.ICheck" % (where,))
        found.append((name, check))
    return found


def buildChecks(config, resolver, reactor, runInThread=None):
    """
    @param runInThread: the backend's C{runBlocking}, for the DKIM hashing.
    @return: the L{ICheck}s of C{[smtp] checks}, in order: C{spf} and
        C{dkim} are one L{AuthenticationResultsCheck} (one
        C{Authentication-Results} field), where the first of them is named.
    """
    classes = checkClasses(config)
    methods = [name for name, check in classes if check is None]
    checks = []
    for name, check in classes:
        if check is None:
            if name == methods[0]:
                checks.append(AuthenticationResultsCheck(InboundChecker(
                    config["server"]["hostname"],
                    resolver.lookupTXT,
                    lookupAddresses=resolver.lookupAddresses,
                    lookupMX=resolver.lookupMX,
                    lookupPointer=resolver.lookupPointer,
                    reactor=reactor,
                    runInThread=runInThread,
                    timeout=config["dns"]["timeout"],
                    methods=methods,
                )))
        else:
            checks.append(check if ICheck.providedBy(check) else check())
    return checks


def listenerSettings(config, name, directory):
    """
    @return: the keyword arguments (and attributes) of the factory of
        listener C{name} that its section sets: its limits and policies.
    """
    section = config[name]
    settings = {
        attribute: section[key]
        for key, attribute in LISTENER_SETTINGS[LISTENER_KINDS[name]].items()
        if key in section
    }
    if name in SMTP_SERVICES:
        settings["senderPolicy"] = SenderPolicy(directory, section["sender_policy"])
        settings["receivedAuth"] = config["smtp"]["received_auth"]  # every SMTP listener
    if name == "odmr":
        settings["clientTimeout"] = section["timeout"]
    return settings


def _endpoint(reactor, interface, port, tlsOptions=None):
    if interface == EVERY_ADDRESS:
        endpoint = EveryAddressEndpoint(reactor, port, backlog=LISTEN_BACKLOG)
    elif ":" in interface:
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


def loadServerTLS(config, datadir):
    """
    Read the certificate and key files of C{[tls]}, or of the self-signed
    certificate (made when missing).

    @return: C{(options, mtaOptions)}: the server TLS options of every
        listener, and the opportunistic ones of port 25.
    @raise ConfigError: a file cannot be read or used.
    """
    tls = config["tls"]
    if tls["certificate"]:
        certificate, key = tls["certificate"], tls["private_key"]
    else:
        certificate, key, made = ensureSelfSigned(datadir.tlsDir, config["server"]["hostname"])
        if made:
            log.info("made a self-signed certificate {path}", path=certificate)
    try:
        return serverOptions(certificate, key), serverOptions(certificate, key, opportunistic=True)
    except OSError as e:
        raise ConfigError("[tls] cannot read %s: %s" % (e.filename, e.strerror or e))
    except (SSL.Error, ValueError):
        raise ConfigError(
            "[tls] certificate %s and private_key %s are not a PEM certificate and its key"
            % (certificate, key)
        ) from None


def buildService(config, portOffset=0, reactor=None, lock=None):
    """
    Build the whole service tree from a loaded configuration.

    @type config: L{mdpy.config.Config}
    @param lock: the data directory's L{ServerLock} (L{lockDataDir}): held,
        this server is the primary (L{PrimaryDuties}); not held, a
        secondary, which takes the lock and the duties when it can; L{None}
        (tests): the primary.
    @return: a L{MailServer}.
    """
    if reactor is None:
        from twisted.internet import reactor
    server = config["server"]
    setLevel(server["log_level"])
    datadir = DataDir(server["data_dir"])
    datadir.prepare()
    backend = buildBackend(config, reactor)
    directory, store = backend.directory, backend.store
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

    tlsOptions, mtaTLSOptions = map(ReplaceableServerOptions, loadServerTLS(config, datadir))

    pipeline, queue, resolver = buildPipeline(config, datadir, backend, reactor)
    for domain in pipeline.gateways.domains():
        if directory.hasDomain(domain):
            log.warn("gateway:{domain} is also a local domain; its mail is held for ATRN, "
                     "not delivered to its users", domain=domain)
    portal = makePortal(directory, runInThread=backend.runBlocking)
    loginTracker = loginTrackerFor(config["auth"], reactor, backend.loginFailures)

    shared = dict(
        portal=portal,
        tlsOptions=tlsOptions,
        loginTracker=loginTracker,
        accountCheck=AccountCheck(directory),
        clock=reactor,
    )
    imapShared = dict(
        structures=StructureCache(),
        sortFields=SortFieldCache(),
        pendingLiterals=PendingLiterals(),
        spoolDir=datadir.literalSpoolDir,
        changeFeed=backend.changeFeed,
    )
    top = MailServer()
    for name in LISTENERS:
        section = config[name]
        if not section["enabled"]:
            continue
        settings = listenerSettings(config, name, directory)
        factoryType = factoryClass(config, name)
        if name in SMTP_SERVICES:
            factory = factoryType(
                server["hostname"],
                pipeline,
                mode=SMTP_SERVICES[name],
                defaultDomain=server["domain"],
                **settings,
                **dict(shared, tlsOptions=mtaTLSOptions if name == "smtp" else tlsOptions),
            )
        elif name in IMAP_SERVICES:
            factory = factoryType(
                server["hostname"],
                store,
                implicitTLS=name in IMPLICIT_TLS,
                **imapShared,
                **settings,
                **shared,
            )
        else:
            factory = factoryType(
                server["hostname"],
                store,
                locks=backend.maildropLocks,
                implicitTLS=name in IMPLICIT_TLS,
                **settings,
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
    top.live = LiveParts(config, datadir, backend, pipeline, reactor, tlsOptions, mtaTLSOptions,
                         loginTracker, {}, resolver=resolver)
    top.backend = backend
    duties = PrimaryDuties(top, datadir, portOffset, odmrShared=shared)
    primary = lock is None or lock.held
    if primary:
        duties.runQueue()
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
    if primary:
        duties.runCollections()
    else:
        duties.awaitLock(lock)
    for name in NOT_YET_AVAILABLE:
        if name in config.sections and config[name]["enabled"]:
            log.info("{name}: not available in this release; not started", name=name)
    return top


class PrimaryDuties:
    """
    What exactly one server of a data directory does: the one holding its
    L{ServerLock}, the primary.  It runs the outbound queue (loading it,
    with the recovery of what a crash left, the relay, and taking up what
    other processes queue: L{mdpy.control.QueueHandOff}, and every
    L{PICKUP_INTERVAL} seconds L{SpoolQueue.pickUp}), the ODMR provider
    (which serves the queue's held mail), the periodic collections, the
    control socket, and tidies what a crash left in the store
    (L{IBackend.start}).

    A secondary (a second server on the data directory, with C{[server]
    shared_data_dir}) serves its listeners only, hands the mail it queues to
    the primary, and tries the lock every L{TAKEOVER_INTERVAL} seconds: once
    the primary has stopped, it takes the lock and these duties.
    """

    def __init__(self, top, datadir, portOffset, odmrShared):
        """
        @param top: the L{MailServer}, with its C{live} parts and C{backend}.
        @param odmrShared: the keyword arguments every listener's factory
            takes (portal, TLS options...), for the ODMR provider's.
        """
        self.top = top
        self.datadir = datadir
        self.portOffset = portOffset
        self.odmrShared = odmrShared
        self.lock = None
        self._handOff = None
        self._waiting = None

    def awaitLock(self, lock):
        """
        Serve as a secondary until C{lock} can be taken, then L{assume} the
        duties.
        """
        live = self.top.live
        self.lock = lock
        live.primary = False
        queue = live.pipeline.queue
        self._handOff = QueueHandOff(live.reactor, self.datadir.controlSocketPath, queue)
        queue.listeners.append(self._handOff)
        self._waiting = internet.TimerService(TAKEOVER_INTERVAL, self._tryLock)
        self._waiting.clock = live.reactor
        self._waiting.setName("primary-watch")
        self._waiting.setServiceParent(self.top)

    def _tryLock(self):
        try:
            holdLock(self.lock, self.datadir.controlSocketPath)
        except AlreadyRunning:
            return
        except OSError as e:
            log.error("cannot take the lock of {dir}: {why}", dir=self.datadir.root, why=e)
            return
        log.info(
            "the primary server of {dir} has stopped: this one now runs the queue and the control socket",
            dir=self.datadir.root,
        )
        self._waiting.disownServiceParent()
        self._waiting = None
        self.assume()

    def assume(self):
        """
        Take up the duties.
        """
        self.runQueue()
        self.runCollections()

    def runQueue(self):
        """
        Take up the duties of the queue: its recovery, the relay, the ODMR
        provider.
        """
        top, live = self.top, self.top.live
        config, reactor, pipeline = live.config, live.reactor, live.pipeline
        server, queue, backend = config["server"], pipeline.queue, top.backend
        if self._handOff is not None:
            queue.listeners.remove(self._handOff)
            self._handOff = None
        live.primary = True
        backend.start()
        loaded = queue.load(STAGING_GRACE if server["shared_data_dir"] else 0)
        if loaded or queue.quarantined:
            log.info(
                "queue: {n} messages waiting, {bad} moved to {dir}",
                n=loaded,
                bad=len(queue.quarantined),
                dir=queue.path + "/corrupt",
            )
        holdGateways(queue, pipeline.gateways)
        relay = Relay(
            queue, live.resolver, pipeline, server["hostname"], relaySettings(config["relay"]), reactor,
            postmaster="postmaster@" + server["domain"],
        )
        relay.setName("relay")
        self._start(relay)
        if config["odmr"]["enabled"]:
            section = config["odmr"]
            factory = factoryClass(config, "odmr")(
                server["hostname"],
                pipeline.gateways,
                relay,
                defaultDomain=server["domain"],
                **listenerSettings(config, "odmr", backend.directory),
                **dict(self.odmrShared, portal=odmrPortal(pipeline.gateways, backend.directory, backend.runBlocking)),
            )
            listener = _NamedListener(
                _endpoint(reactor, section["interface"], section["port"] + self.portOffset), factory
            )
            listener.setName("odmr")
            self._start(listener)

    def runCollections(self):
        """
        Take up the periodic collections and the control socket.
        """
        top, live = self.top, self.top.live
        reactor, pipeline, backend = live.reactor, live.pipeline, top.backend
        live.collectors.update(
            buildCollectors(live.config, self.datadir, pipeline, backend, reactor)
        )
        for name, collector in live.collectors.items():
            collector.setName(name)
            self._start(collector)
        control = _QueueControl(
            endpoints.UNIXServerEndpoint(reactor, self.datadir.controlSocketPath, mode=0o600),
            ControlFactory(pipeline.queue, live.collectors, reload=top.reload),
            reactor,
        )
        control.setName("queue-control")
        self._start(control)

    def _start(self, child):
        """
        Add C{child} to the server, which starts it if it runs: a port that
        cannot be bound then is logged, and the rest goes on.
        """
        try:
            child.setServiceParent(self.top)
        except CannotListenError as e:
            log.error("cannot listen on port {port} for {name}: {why}",
                      port=e.port, name=child.name, why=e.socketError)


class _QueueControl(internet.StreamServerEndpointService):
    """
    The control socket, where other processes name the entries they queue
    (C{QUEUED id}), and every L{PICKUP_INTERVAL} seconds a look in the
    queue for those no notice named (L{SpoolQueue.pickUp}).
    """

    _pickUp = None

    def __init__(self, endpoint, factory, clock):
        internet.StreamServerEndpointService.__init__(self, endpoint, factory)
        self.clock = clock

    def startService(self):
        internet.StreamServerEndpointService.startService(self)
        queue = self.factory.queue
        self._pickUp = task.LoopingCall(queue.pickUp, STAGING_GRACE)
        self._pickUp.clock = self.clock
        self._pickUp.start(PICKUP_INTERVAL, now=False).addErrback(
            lambda f: log.failure("queue: cannot look for entries other processes queued", f)
        )

    def stopService(self):
        if self._pickUp is not None and self._pickUp.running:
            self._pickUp.stop()
        return internet.StreamServerEndpointService.stopService(self)


def buildResolver(config, reactor):
    """
    @return: the L{MXResolver} every DNS lookup goes through, asking
        C{[dns] nameservers} (or the system's) through one L{DNSCache}.
    """
    servers = makeResolver(reactor, config["dns"]["nameservers"])
    return MXResolver(DNSCache(servers, clock=reactor), clock=reactor)


def buildBackend(config, reactor):
    """
    Build the backend C{[server] backend} names, with the thread pool its
    blocking work runs in: started when the reactor runs, stopped when it
    stops.

    @return: an L{mdpy.interfaces.IBackend}.
    @raise ConfigError: no such backend.
    """
    threadPool = ThreadPool(maxthreads=THREADS, name="mdpy-backend")
    reactor.callWhenRunning(threadPool.start)
    reactor.addSystemEventTrigger("during", "shutdown", threadPool.stop)
    try:
        return backends.load(config["server"]["backend"], config, reactor, threadPool)
    except InvalidInput as e:
        raise ConfigError("%s: [server] backend: %s" % (config.label, e)) from None


def buildPipeline(config, datadir, backend, reactor):
    """
    @return: C{(pipeline, queue, resolver)}: the delivery pipeline every
        message enters, the backend's outbound queue (not loaded: the server
        that runs it loads it, see L{PrimaryDuties}) and the DNS resolver.
    """
    resolver = buildResolver(config, reactor)
    directory, store, queue = backend.directory, backend.store, backend.queue
    queue.signerFor = DKIMKeys(datadir.dkimDir).signerFor
    relayConfig = config["relay"]
    srs = SRS(loadSecret(datadir.srsSecretPath)) if relayConfig["srs"] else None
    gateways = buildGateways(config, reactor, resolver=resolver)
    pipeline = DeliveryPipeline(
        directory, store, queue=queue, spoolDir=datadir.spoolDir, srs=srs,
        gateways=gateways, checks=buildChecks(config, resolver, reactor, backend.runBlocking),
    )
    return pipeline, queue, resolver


def buildGateways(config, reactor, warn=True, resolver=None):
    """
    @param warn: log the warnings of L{checkMingerSecret}.
    @param resolver: the L{MXResolver} the Minger clients find their
        server's address with; L{None}: the reactor's resolver.
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
            checkMingerSecret(config, "[gateway:%s] minger_secret" % (name,), section["minger_secret"], warn)
            client = MingerClient(
                reactor,
                section["minger_host"],
                port=section["minger_port"],
                secret=section["minger_secret"] or "",
                timeout=section["minger_timeout"],
                cacheTTL=section["minger_cache"],
                negativeTTL=section["minger_cache"],
                resolve=None if resolver is None else resolver.lookupHost,
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


def checkMingerSecret(config, where, secret, warn=True):
    """
    A Minger secret is 1 to 50 visible ASCII characters
    (draft-hathcock-minger-06 section 2.2); fewer than 16 is allowed with a
    warning, as the draft asks for 128 bits.

    @param warn: log that warning.
    @raise ConfigError: it is not.
    """
    if not secret:
        return
    if not _VCHARS.match(secret):
        raise ConfigError("%s: %s must be 1 to 50 visible ASCII characters (no spaces)"
                          % (config.path or "<embedded default>", where))
    if warn and len(secret) < 16:
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


def odmrPortal(gateways, directory, runInThread=None):
    """
    @return: the portal of the ODMR port: gateway domains with their
        passwords, then directory users.
    """
    return Portal(Realm(), [GatewayChecker(gateways, DirectoryChecker(directory, runInThread))])


def collectorFor(config, datadir, name, section, pipeline, backend, reactor):
    """
    @param backend: the L{mdpy.interfaces.IBackend} that keeps the
        source's state and runs its blocking work.
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
        "domainpop/" + name, account, settings, pipeline, backend.directory, stateDir,
        server["hostname"], "postmaster@" + server["domain"], reactor=reactor,
        runInThread=backend.runBlocking, openState=sourceState(backend, "domainpop", name),
    )


def collectorStateDir(datadir, kind, name):
    """
    @param kind: C{domainpop} or C{multipop}.
    @param name: the C{NAME} of C{[domainpop:NAME]}, or a MultiPOP
        account's id.
    @return: where that source keeps its lock, spool and held folder.
    """
    return os.path.join(datadir.root, kind, name)


def sourceState(backend, kind, name):
    """
    @param kind: C{domainpop} or C{multipop}.
    @param name: as for L{collectorStateDir}.
    @return: a callable returning the state C{backend} keeps of that
        source (L{mdpy.interfaces.ICollectorStates.stateOf}).
    """
    return functools.partial(backend.dedupe.stateOf, "%s/%s" % (kind, name))


def multipopCollectorFor(config, datadir, account, pipeline, backend, reactor):
    """
    @return: the L{Collector} of one MultiPOP account (a dict of
        L{mdpy.interfaces.IRemoteAccounts}).
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
        "multipop/%s/%s" % (account["user"], account["id"]), pop3, settings, pipeline,
        backend.directory, stateDir, server["hostname"], "postmaster@" + server["domain"],
        reactor=reactor, runInThread=backend.runBlocking,
        openState=sourceState(backend, "multipop", account["id"]),
    )


def collectionInputs(config):
    """
    @return: C{{name: what its service is built from}} of every enabled
        collection, in the order they start: C{domainpop/NAME} for each
        C{[domainpop:NAME]}, C{odmr/NAME} for each C{[odmr-client:NAME]},
        and C{multipop}.  A reload builds a collection again when this
        changes.
    """
    smtp = config["smtp"]
    inputs = {}
    for name, section in sorted(config.named("domainpop").items()):
        if section["enabled"]:
            inputs["domainpop/" + name] = (section, smtp["max_message_size"])
    reversedSMTP = {key: smtp[key] for key in ("max_message_size", "max_recipients", "max_header_size",
                                               "max_errors", "timeout")}
    for name, section in sorted(config.named("odmr-client").items()):
        if section["enabled"]:
            inputs["odmr/" + name] = (section, reversedSMTP)
    if config["multipop"]["enabled"]:
        inputs["multipop"] = (config["multipop"], smtp["max_message_size"])
    return inputs


def buildCollection(config, datadir, name, pipeline, backend, reactor):
    """
    @param name: a name of L{collectionInputs}.
    @param backend: the L{mdpy.interfaces.IBackend} of the server.
    @return: the service of collection C{name}: a L{CollectorService}, an
        L{ODMRClientService} or the L{MultiPOPService}.
    @raise ConfigError: a bad value in its section.
    """
    kind, _, instance = name.partition("/")
    if kind == "domainpop":
        section = config.named("domainpop")[instance]
        collector = collectorFor(config, datadir, instance, section, pipeline, backend, reactor)
        return CollectorService(collector, section["interval"], clock=reactor)
    if kind == "odmr":
        return odmrClientFor(config, instance, config.named("odmr-client")[instance], pipeline, reactor)
    return MultiPOPService(
        backend.remoteAccounts,
        lambda account: multipopCollectorFor(config, datadir, account, pipeline, backend, reactor),
        config["multipop"]["interval"],
        clock=reactor,
    )


def buildCollectors(config, datadir, pipeline, backend, reactor):
    """
    @return: C{{name: service}} of every enabled collection (see
        L{collectionInputs} and L{buildCollection}).
    """
    return {
        name: buildCollection(config, datadir, name, pipeline, backend, reactor)
        for name in collectionInputs(config)
    }


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
    reversed = factoryClass(config, "smtp")(
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


def loginTrackerFor(section, reactor, failures=None):
    """
    @param failures: the backend's L{mdpy.interfaces.ILoginFailures}, which
        every process sharing it counts in; L{None} for this process's
        memory.
    @return: the L{FailedLoginTracker} of an C{[auth]} section, which every
        listener with logins shares.
    """
    return FailedLoginTracker(reactor, failures=failures, **loginLimits(section))


def loginLimits(section):
    """
    @return: the limits of an C{[auth]} section, as keyword arguments of
        L{FailedLoginTracker} and its C{reconfigure}.
    """
    return dict(
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
    if reactor is None:
        from twisted.internet import reactor
    try:
        config = Config.load(options["config"])
        checkConfig(config, options["port-offset"], reactor)
    except ConfigError as e:
        raise SystemExit("twistd mdpy: %s" % (e,))
    log.info("configuration: {summary}", summary=config.summary())
    try:
        lock = lockDataDir(DataDir(config["server"]["data_dir"]), config["server"]["shared_data_dir"])
    except (AlreadyRunning, OSError) as e:
        raise SystemExit("twistd mdpy: %s" % (e,))
    _raiseFileLimit()
    reactor.suggestThreadPoolSize(THREADS)
    top = buildService(config, options["port-offset"], reactor, lock)
    top.serverLock = lock  # held until the process ends
    installReloadSignal(top, reactor)
    top.twistdOptions = getattr(options, "parent", None)
    return top


def lockDataDir(datadir, shared=False):
    """
    Take the data directory's L{ServerLock} before anything in it is
    touched, and remove the control socket a dead server left.

    @param shared: whether, when another server holds the lock, this one
        serves as a secondary (C{[server] shared_data_dir}).
    @return: the L{ServerLock}: held, or not held for a secondary.
    @raise AlreadyRunning: another server runs on C{datadir} and C{shared}
        is false.
    """
    datadir.prepare()
    os.makedirs(datadir.queueDir, mode=0o700, exist_ok=True)
    lock = ServerLock(datadir.controlSocketPath + ".lock")
    try:
        holdLock(lock, datadir.controlSocketPath)
    except AlreadyRunning as e:
        if not shared:
            raise
        log.info(
            "another mdpy server{pid} is the primary of {dir}: it runs the queue and the "
            "control socket; this one serves its listeners only",
            pid=" (pid %s)" % (e.holder,) if e.holder else "",
            dir=datadir.root,
        )
    return lock


def holdLock(lock, socketPath):
    """
    Take C{lock}, and remove the control socket C{socketPath} a dead server
    left (nobody listens there: the lock is ours).

    @raise AlreadyRunning: another server holds it.
    """
    lock.acquire()
    unlinkQuietly(socketPath)
