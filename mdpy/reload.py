# -*- test-case-name: tests.test_reload -*-
"""
Reloading the configuration of a running server (C{SIGHUP}, C{mdpy
reload}): what changed, and applying it to the objects L{mdpy.tap} built,
without closing a connection.

The objects are built by the functions of L{mdpy.tap}, which stays the one
place that turns a configuration into objects; this module decides what to
build again and swaps it in.
"""

import signal

from twisted.internet import defer

from mdpy.config import ConfigError
from mdpy.logs import Logger, setLevel

log = Logger()

# What a reload applies: every key of these sections, these keys of others,
# the listener keys of mdpy.tap.LISTENER_SETTINGS and the template sections of
# RELOADED_TEMPLATES.  Any other change is named as needing a restart.
RELOADED_SECTIONS = ("auth", "multipop")
RELOADED_KEYS = {"server": ("log_level",), "tls": ("certificate", "private_key")}
RELOADED_TEMPLATES = ("domainpop", "odmr-client", "gateway")


def _reloaded(section, key):
    """
    @return: whether a reload applies C{[section] key}.
    """
    from mdpy.tap import LISTENER_KINDS, LISTENER_SETTINGS

    if section in LISTENER_KINDS:
        return key in LISTENER_SETTINGS[LISTENER_KINDS[section]]
    return section in RELOADED_SECTIONS or key in RELOADED_KEYS.get(section, ())


def changedSettings(running, new):
    """
    @type running: L{Config}
    @type new: L{Config}
    @return: C{(reloaded, restart)}: the settings that differ, as
        C{"[section] key"} (or C{"[kind:NAME]"} for a template section
        added, changed or removed), those a reload applies, then those that
        need a restart.
    """
    reloaded, restart = [], []
    for section, values in new.sections.items():
        before = running.sections.get(section, {})
        for key, value in values.items():
            if before.get(key) != value:
                name = "[%s] %s" % (section, key)
                (reloaded if _reloaded(section, key) else restart).append(name)
    for kind in sorted(set(running.templates) | set(new.templates)):
        before, after = running.named(kind), new.named(kind)
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                (reloaded if kind in RELOADED_TEMPLATES else restart).append("[%s:%s]" % (kind, name))
    return reloaded, restart


class LiveParts:
    """
    The objects of a running L{MailServer} that a reload changes, and the
    configuration they were built from.

    @ivar config: the configuration applied.
    @ivar started: the configuration the server started with: a setting
        that needs a restart is named at every reload until then.
    @ivar collectors: C{{name: service}} of the running collections, shared
        with the control socket.
    @ivar lock: a L{defer.DeferredLock}: one reload at a time.
    @ivar primary: whether this server runs the queue and the collections
        of its data directory (L{mdpy.tap.PrimaryDuties}); a secondary's
        reload leaves them to the primary.
    @ivar resolver: the server's L{mdpy.delivery.mx.MXResolver}, for the
        gateways' Minger clients, or L{None}.
    """

    def __init__(self, config, datadir, backend, pipeline, reactor, tlsOptions, mtaTLSOptions,
                 loginTracker, collectors, resolver=None):
        """
        @param backend: the server's L{mdpy.interfaces.IBackend}, for the
            collectors started on reload.
        """
        self.config = self.started = config
        self.datadir = datadir
        self.backend = backend
        self.pipeline = pipeline
        self.reactor = reactor
        self.tlsOptions = tlsOptions
        self.mtaTLSOptions = mtaTLSOptions
        self.loginTracker = loginTracker
        self.collectors = collectors
        self.resolver = resolver
        self.lock = defer.DeferredLock()
        self.primary = True

    def prepare(self, config):
        """
        Build what C{config} needs, changing nothing that runs.

        @rtype: L{ReloadPlan}
        @raise ConfigError: C{config} cannot be used.
        """
        from mdpy.tap import buildCollection, buildGateways, collectionInputs, loadServerTLS

        plan = ReloadPlan(self, config)
        plan.tls = loadServerTLS(config, self.datadir)
        if config.named("gateway") != self.config.named("gateway"):
            plan.gateways = buildGateways(config, self.reactor, resolver=self.resolver)
        before, after = collectionInputs(self.config), collectionInputs(config)
        if not self.primary:
            before = after = {}
        plan.stopped = [name for name in before if before[name] != after.get(name)]
        try:
            for name in after:
                if after[name] != before.get(name):
                    plan.started[name] = buildCollection(
                        config, self.datadir, name, self.pipeline, self.backend, self.reactor,
                    )
        except ConfigError:
            for collection in plan.started.values():
                collection.close()
            raise
        return plan


class ReloadPlan:
    """
    A configuration checked and built by L{LiveParts.prepare}, to apply.

    @ivar tls: the new C{(options, mtaOptions)}.
    @ivar gateways: the new L{Gateways}, or L{None} when unchanged.
    @ivar stopped: the names of the collections to stop.
    @ivar started: C{{name: service}} of the collections to start.
    """

    def __init__(self, live, config):
        self.live = live
        self.config = config
        self.tls = None
        self.gateways = None
        self.stopped = []
        self.started = {}

    def apply(self, top):
        """
        Apply the configuration to the running C{top}.

        @return: a L{Deferred} firing with the lines logged, once the
            collections have stopped and started.
        """
        from mdpy.tap import LISTENER_KINDS, holdGateways, listenerSettings, loginLimits

        live, config = self.live, self.config
        reloaded = changedSettings(live.config, config)[0]
        restart = changedSettings(live.started, config)[1]
        setLevel(config["server"]["log_level"])
        live.tlsOptions.options, live.mtaTLSOptions.options = self.tls
        live.loginTracker.reconfigure(**loginLimits(config["auth"]))
        for name in LISTENER_KINDS:
            if name in top.namedServices and config[name]["enabled"]:
                top.getServiceNamed(name).factory.reconfigure(**listenerSettings(config, name, live.backend.directory))
        if self.gateways is not None:
            for gateway in live.pipeline.gateways.replace(self.gateways):
                if gateway.verifier is not None:
                    gateway.verifier.client.close()
            if live.primary:
                holdGateways(live.pipeline.queue, live.pipeline.gateways)
        stopping = {name: defer.maybeDeferred(live.collectors.pop(name).disownServiceParent)
                    for name in self.stopped}
        for name, collection in self.started.items():
            live.collectors[name] = collection
            collection.setName(name)
            # A collection built again starts once the old one has stopped:
            # never two at once on one state folder.
            stopping.setdefault(name, defer.succeed(None)).addCallback(
                lambda _, collection=collection: collection.setServiceParent(top)
            )
        live.config = config
        lines = ["reload: read %s" % (config.path or "<embedded default>",)]
        if reloaded:
            lines.append("reload: applied " + ", ".join(reloaded))
        for line in lines:
            log.info("{line}", line=line)
        if restart:
            lines.append("reload: these settings need a restart to take effect: " + ", ".join(restart))
            log.warn("{line}", line=lines[-1])
        done = defer.gatherResults(list(stopping.values()), consumeErrors=True)
        done.addErrback(lambda f: log.failure("reload: a collection did not stop or start", f))
        return done.addCallback(lambda _: lines)


def installReloadSignal(top, reactor):
    """
    Make C{SIGHUP} reload C{top}'s configuration (L{MailServer.reload}),
    from the reactor's thread; the previous handler is put back when the
    reactor stops.
    """

    def hangup(signum, frame):
        reactor.callFromThread(lambda: top.reload().addErrback(lambda f: f.trap(ConfigError)))

    previous = signal.signal(signal.SIGHUP, hangup)
    reactor.addSystemEventTrigger("after", "shutdown", signal.signal, signal.SIGHUP, previous)
