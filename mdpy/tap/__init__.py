# -*- test-case-name: tests.test_tap -*-
"""
C{twistd mdpy}: the options, and the one place that builds the object graph
from the configuration.  This module starts the server; the parts it is
made of are built in the modules beside it:

 - L{mdpy.tap.listeners}: the factory and settings of each listener;
 - L{mdpy.tap.parts}: the backend, resolver, checks, pipeline, gateways and
   login limits, which the C{mdpy} command builds too;
 - L{mdpy.tap.collection}: the DomainPOP, MultiPOP and ODMR customer
   collections;
 - L{mdpy.tap.primary}: what only the primary server of a data directory
   runs (the queue, the collections, the control socket) and its lock.
"""

import sys

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from mdpy.logs import Logger
from twisted.python import usage

from mdpy.auth.accounts import AccountCheck
from mdpy.auth.checkers import makePortal
from mdpy.config import Config, ConfigError, configPath
from mdpy.configcheck import checkConfig
from mdpy.datadir import DataDir
from mdpy.dualstack import AdoptedEndpoint
from mdpy.logs import logThroughFilter, setLevel
from mdpy.minger.server import MingerServer
from mdpy.imap.fetch import StructureCache
from mdpy.imap.sort import SortFieldCache
from mdpy.imap.literals import PendingLiterals
from mdpy.reload import LiveParts, installReloadSignal
from mdpy.tls import ReplaceableServerOptions
from mdpy.serverlock import AlreadyRunning
from mdpy.tap.collection import (
    buildCollection, buildCollectors, collectionInputs, collectorStateDir, odmrAccount, odmrClientFor,
    sourceState,
)
from mdpy.tap.listeners import (
    IMAP_SERVICES, IMPLICIT_TLS, LISTENER_KINDS, LISTENER_SETTINGS, LISTENERS, SMTP_SERVICES, NamedListener,
    NamedUDPListener, checkClasses, factoryClass, keepLargeBlocksApart, listenerSettings, loadServerTLS,
    raiseFileLimit, serverEndpoint,
)
from mdpy.tap.parts import (
    THREADS, buildBackend, buildChecks, buildGateways, buildPipeline, buildResolver, checkMingerSecret,
    holdGateways, loginLimits, loginTrackerFor, odmrPortal, relaySettings,
)
from mdpy.tap.primary import TAKEOVER_INTERVAL, PrimaryDuties, holdLock, lockDataDir
from mdpy.tap.supervisor import WorkerSupervisor, superviseWorkers, workerCount


# What other modules import from here: the parts are built in the
# modules of this package, and C{twistd mdpy} starts here.
__all__ = [
    "IMAP_SERVICES", "IMPLICIT_TLS", "LISTENERS", "LISTENER_KINDS", "LISTENER_SETTINGS",
    "ListenError", "MailServer", "NOT_YET_AVAILABLE", "NamedListener", "NamedUDPListener",
    "Options", "PrimaryDuties", "SMTP_SERVICES", "TAKEOVER_INTERVAL", "THREADS", "buildBackend",
    "buildChecks", "buildCollection", "buildCollectors", "buildGateways", "buildPipeline",
    "buildResolver", "buildService", "checkClasses", "checkMingerSecret", "collectionInputs",
    "collectorStateDir", "factoryClass", "holdGateways", "holdLock", "keepLargeBlocksApart", "listenerSettings",
    "loadServerTLS", "lockDataDir", "loginLimits", "loginTrackerFor", "makeService", "odmrAccount",
    "odmrClientFor", "odmrPortal", "raiseFileLimit", "relaySettings", "serverEndpoint",
    "sourceState", "superviseWorkers", "WorkerSupervisor", "workerCount",
]

log = Logger()

NOT_YET_AVAILABLE = ("webadmin",)


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
    @ivar workers: the L{WorkerSupervisor} of its worker processes (which
        a reload reaches too), or L{None}.
    """

    live = None
    twistdOptions = None
    workers = None

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
        reloaded = self.live.lock.run(self._reload)
        if self.workers is not None:
            reloaded.addCallback(self.workers.reload)
        return reloaded

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


def buildService(config, portOffset=0, reactor=None, lock=None, worker=None):
    """
    Build the whole service tree from a loaded configuration.

    @type config: L{mdpy.config.Config}
    @param lock: the data directory's L{ServerLock} (L{lockDataDir}): held,
        this server is the primary (L{PrimaryDuties}); not held, a
        secondary, which takes the lock and the duties when it can; L{None}
        (tests): the primary.
    @param worker: for a worker process of C{[server] workers}
        (L{mdpy.tap.worker}): C{{name: [(fd, family), ...]}}, the listening
        sockets its supervisor bound for each listener, which it adopts; it
        serves those listeners only and hands what it queues to the primary
        (L{PrimaryDuties.handOff}), never taking the duties over.
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
        quotas=pipeline.quotas,
    )
    top = MailServer()
    for name in LISTENERS:
        section = config[name]
        # A worker serves the listeners its supervisor bound: like their
        # ports, which listeners run changes at a restart only.
        if not (section["enabled"] if worker is None else name in worker):
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
        if worker is None:
            endpoint = serverEndpoint(
                reactor,
                section["interface"],
                section["port"] + portOffset,
                tlsOptions if name in IMPLICIT_TLS else None,
            )
        else:
            endpoint = AdoptedEndpoint(reactor, worker[name])
            if name in IMPLICIT_TLS:
                endpoint = endpoints.wrapServerTLS(tlsOptions, endpoint)
        listener = NamedListener(endpoint, factory)
        listener.setName(name)
        listener.setServiceParent(top)
    top.live = LiveParts(config, datadir, backend, pipeline, reactor, tlsOptions, mtaTLSOptions,
                         loginTracker, {}, resolver=resolver)
    top.backend = backend
    duties = PrimaryDuties(top, datadir, portOffset, odmrShared=shared)
    primary = worker is None and (lock is None or lock.held)
    if primary:
        duties.runQueue()
    if config["minger"]["enabled"] and worker is None:
        section = config["minger"]
        checkMingerSecret(config, "[minger] secret", section["secret"])
        minger = MingerServer(
            directory,
            quotas=pipeline.quotas,
            secret=section["secret"] or "",
            anonymous=section["anonymous"],
            allow=section["allow"] or (),
            rate=section["rate"],
            burst=section["burst"],
            clock=reactor,
        )
        listener = NamedUDPListener(
            section["port"] + portOffset, minger, interface=section["interface"], reactor=reactor
        )
        listener.setName("minger")
        listener.setServiceParent(top)
    if primary:
        duties.runCollections()
    elif worker is not None:
        duties.handOff()
    else:
        duties.awaitLock(lock)
    for name in NOT_YET_AVAILABLE:
        if name in config.sections and config[name]["enabled"]:
            log.info("{name}: not available in this release; not started", name=name)
    return top


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
    raiseFileLimit()
    keepLargeBlocksApart()
    reactor.suggestThreadPoolSize(THREADS)
    top = buildService(config, options["port-offset"], reactor, lock)
    top.serverLock = lock  # held until the process ends
    workers = workerCount(config)
    if workers > 1:
        superviseWorkers(top, workers, options["config"], options["port-offset"], reactor)
    installReloadSignal(top, reactor)
    top.twistdOptions = getattr(options, "parent", None)
    return top
