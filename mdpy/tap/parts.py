# -*- test-case-name: tests.test_tap -*-
"""
The shared parts C{twistd mdpy} and the C{mdpy} command build from the
configuration: the backend, the resolver, the checks, the delivery
pipeline, the ODMR gateways and the login limits.
"""

import re

from mdpy.logs import Logger

from twisted.cred.portal import Portal

from mdpy.address import checkDomain
from mdpy.auth.checkers import DirectoryChecker, FailedLoginTracker, Realm
from mdpy.checks import AuthenticationResultsCheck
from mdpy.config import ConfigError
from mdpy.errors import InvalidInput
from mdpy.dns import DNSCache, makeResolver
from mdpy.mailauth.authresults import InboundChecker
from mdpy.mailauth.dkim import DKIMKeys
from mdpy.delivery.mx import MXResolver
from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.quota import QuotaPolicy
from mdpy import backends
from mdpy.delivery.relay import RelaySettings, parseHostPort
from mdpy.mailauth.srs import SRS, loadSecret
from mdpy.minger.client import MingerClient, MingerVerifier
from mdpy.odmr.gateway import GatewayChecker, GatewayDomain, Gateways, normaliseLogin
from mdpy.interfaces import ICheck
from mdpy.tap.listeners import checkClasses
from mdpy.backends.threadpool import ThreadPool

log = Logger()

THREADS = 32


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
    quotas = QuotaPolicy(directory, store, "postmaster@" + config["server"]["domain"],
                         warnPercent=config["server"]["quota_warning"])
    pipeline = DeliveryPipeline(
        directory, store, queue=queue, spoolDir=datadir.spoolDir, srs=srs,
        gateways=gateways, checks=buildChecks(config, resolver, reactor, backend.runBlocking),
        quotas=quotas,
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
