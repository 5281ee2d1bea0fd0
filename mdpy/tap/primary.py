# -*- test-case-name: tests.test_tap -*-
"""
What only the primary server of a data directory does: run the outbound
queue and its relay, the ODMR provider, the periodic collections and the
control socket (see C{[server] shared_data_dir}).
"""

import os

from twisted.application import internet
from twisted.internet import endpoints, task
from twisted.internet.error import CannotListenError
from mdpy.logs import Logger


from mdpy.control import ControlFactory, QueueHandOff
from mdpy.delivery.relay import Relay
from mdpy.durable import unlinkQuietly
from mdpy.serverlock import AlreadyRunning, ServerLock
from mdpy.tap.collection import buildCollectors
from mdpy.tap.listeners import NamedListener, factoryClass, listenerSettings, serverEndpoint
from mdpy.tap.parts import holdGateways, odmrPortal, relaySettings

log = Logger()

# Seconds between a secondary's tries of the data directory's lock.
TAKEOVER_INTERVAL = 1


# Seconds between the primary's looks for queue entries no notice announced.
PICKUP_INTERVAL = 60


# While other processes may write to the queue, its files younger than this
# may be theirs, being written or staged.
STAGING_GRACE = 60


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

    def handOff(self):
        """
        Serve as a secondary: hand what is queued here to the primary.  A
        worker (L{mdpy.tap.worker}) does only this: its supervisor is the
        primary, or a secondary that takes the duties over.
        """
        live = self.top.live
        live.primary = False
        queue = live.pipeline.queue
        self._handOff = QueueHandOff(live.reactor, self.datadir.controlSocketPath, queue)
        queue.listeners.append(self._handOff)

    def awaitLock(self, lock):
        """
        Serve as a secondary (L{handOff}) until C{lock} can be taken, then
        L{assume} the duties.
        """
        live = self.top.live
        self.lock = lock
        self.handOff()
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
            listener = NamedListener(
                serverEndpoint(reactor, section["interface"], section["port"] + self.portOffset), factory
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
