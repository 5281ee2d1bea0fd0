# -*- test-case-name: tests.test_tap -*-
"""
The collections of C{twistd mdpy} and of C{mdpy domainpop run}: the
DomainPOP and MultiPOP collectors, and the ODMR customer's clients, built
from their configuration sections.
"""

import functools
import os

from mdpy.logs import Logger


from mdpy.config import ConfigError
from mdpy.domainpop.recipients import RoutingRules
from mdpy.collect.collector import Collector, CollectorService, CollectorSettings
from mdpy.domainpop.state import DEDUPE_FINGERPRINT
from mdpy.multipop.service import MultiPOPService
from mdpy.odmr.customer import ODMRAccount, ODMRClientService
from mdpy.pop3.client import POP3Account
from mdpy.smtp.server import MODE_MTA
from mdpy.tap.listeners import factoryClass

log = Logger()

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


def odmrAccount(name, section):
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
        account = odmrAccount(name, section)
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
