# -*- test-case-name: tests.test_configcheck -*-
"""
What the start of the server would reject, found before anything is made on
disk: C{mdpy check} and C{twistd mdpy} run the same L{checkConfig}, so a
configuration that passes the one starts with the other, and one that does
not gets the same one line from both.
"""

import ipaddress
import os

from OpenSSL import SSL, crypto
from twisted.internet.error import VerifyError

from mdpy.config import ConfigError
from mdpy.errors import InvalidInput, MailError
from mdpy.tls import serverOptions

# The keys a collecting section cannot work without.
SOURCE_NEEDS = {
    "domainpop": ("host", "username", "password"),
    "odmr-client": ("host", "username", "password"),
}
CA_FILES = (("relay", "smarthost_ca_file"), ("multipop", "ca_file"))


def checkConfig(config, portOffset=0, reactor=None):
    """
    Find the first problem the start would meet in C{config}, reading only:
    the data directory, the TLS and CA files, the listeners' addresses and
    ports (after C{portOffset}), the collecting sections, the classes the
    C{factory} keys and C{[smtp] checks} name, and what the builders of
    L{mdpy.tap} refuse.

    @type config: L{mdpy.config.Config}
    @raise ConfigError: one line naming the file, the key and the fix.
    """
    # mdpy.tap calls this before it builds anything: import it late.
    from mdpy.tap import (
        LISTENER_KINDS, workerCount, odmrAccount, buildGateways, checkClasses, checkMingerSecret, factoryClass,
        relaySettings,
    )

    if reactor is None:
        from twisted.internet import reactor
    checkFolder(config, "server", "data_dir", config["server"]["data_dir"])
    _checkBackend(config)
    workerCount(config)
    _checkTLS(config)
    for section, key in CA_FILES:
        checkReadable(config, section, key, config[section][key])
    _checkListeners(config, portOffset)
    for name in LISTENER_KINDS:
        factoryClass(config, name)
    checkClasses(config)
    _checkSources(config)
    for name, section in sorted(config.named("odmr-client").items()):
        if section["enabled"]:
            try:
                odmrAccount(name, section)
            except ValueError as e:
                raise ConfigError("%s: [odmr-client:%s] %s" % (config.label, name, e))
    relaySettings(config["relay"])
    # The start logs their warnings as it builds.
    buildGateways(config, reactor, warn=False)
    checkMingerSecret(config, "[minger] secret", config["minger"]["secret"], warn=False)


def checkReadable(config, section, key, path):
    """
    @raise ConfigError: the file C{path}, the value of C{[section] key}, is
        set and cannot be read.
    """
    if not path:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError(
            "%s: [%s] %s = %s: cannot read: %s; give a readable file"
            % (config.label, section, key, path, e.strerror)
        )


def _checkBackend(config):
    """
    @raise ConfigError: C{[server] backend} names no backend that can be
        imported, or the memory backend, which lives in one process, is to
        be shared with other servers (C{[server] shared_data_dir}).
    """
    from mdpy.backends import backendClass

    server = config["server"]
    try:
        backendClass(server["backend"])
    except InvalidInput as e:
        raise ConfigError("%s: [server] backend: %s" % (config.label, e)) from None
    if server["shared_data_dir"] and server["backend"] == "memory":
        raise ConfigError(
            "%s: [server] shared_data_dir = yes with [server] backend = memory: the memory backend lives in "
            "one process and no other server shares it; use shared_data_dir = no or the files backend"
            % (config.label,)
        )


def checkFolder(config, section, key, path):
    """
    @raise ConfigError: the folder C{path}, the value of C{[section] key},
        is not a folder this user can write, and cannot be made as one.
    """
    if not path:
        return
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        why = "%s is not a folder" % (existing,)
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = "%s is not writable by this user" % (existing,)
    else:
        return
    raise ConfigError(
        "%s: [%s] %s = %s: cannot be written (%s); choose a folder this user can write"
        % (config.label, section, key, path, why)
    )


def _checkTLS(config):
    """
    The certificate and key, when set, can be read and belong together.
    """
    tls = config["tls"]
    if not tls["certificate"]:
        return  # a self-signed one is made in data_dir
    for key in ("certificate", "private_key"):
        checkReadable(config, "tls", key, tls[key])
    try:
        serverOptions(tls["certificate"], tls["private_key"])
    except VerifyError:
        raise ConfigError(
            "%s: [tls] private_key = %s does not match certificate = %s; give the key of that certificate"
            % (config.label, tls["private_key"], tls["certificate"])
        ) from None
    except (crypto.Error, SSL.Error, ValueError):
        raise ConfigError(
            "%s: [tls] certificate = %s, private_key = %s: not a PEM certificate chain and its PEM key;"
            " give PEM files (the key unencrypted)"
            % (config.label, tls["certificate"], tls["private_key"])
        ) from None


def _checkListeners(config, portOffset):
    """
    Every enabled listener has an IP address and a port of its own (TCP and
    UDP apart): one that would take another's fails the start.
    """
    from mdpy.tap import LISTENERS

    taken = {}
    for name in LISTENERS + ("odmr", "minger"):
        section = config[name]
        if not section["enabled"]:
            continue
        interface = section["interface"] or config["server"].get("interface") or "::"
        try:
            address = ipaddress.ip_address(interface)
        except ValueError:
            raise ConfigError(
                "%s: [%s] interface = %s: not an IP address; give one of this host's addresses,"
                " 0.0.0.0 (every IPv4 address) or :: (every address)" % (config.label, name, interface)
            ) from None
        port = section["port"] + portOffset
        if port > 65535:
            raise ConfigError(
                "%s: [%s] port = %d: with --port-offset %d it is past 65535; use a smaller offset"
                % (config.label, name, section["port"], portOffset)
            )
        transport = "udp" if name == "minger" else "tcp"
        for other, otherAddress in taken.get((transport, port), ()):
            if _overlap(address, otherAddress):
                raise ConfigError(
                    "%s: [%s] port = %d: [%s] listens there too (%s); give each service a port of its own"
                    % (config.label, name, section["port"], other, otherAddress)
                )
        taken.setdefault((transport, port), []).append((name, address))


def _overlap(one, other):
    """
    @return: whether listening sockets on both addresses (on one port) take
        each other's place: the same address, C{::} with any (it takes IPv4
        too), or C{0.0.0.0} with any IPv4 address.
    """
    if one == other:
        return True
    for wildcard, address in ((one, other), (other, one)):
        if wildcard.is_unspecified and (wildcard.version == 6 or address.version == 4):
            return True
    return False


def _checkSources(config):
    """
    Every enabled C{[domainpop:NAME]} and C{[odmr-client:NAME]} has its host
    and credentials and readable files, and each MultiPOP account its host
    and login.
    """
    for kind, needed in SOURCE_NEEDS.items():
        for name, section in sorted(config.named(kind).items()):
            if not section["enabled"]:
                continue
            title = "%s:%s" % (kind, name)
            missing = [key for key in needed if not section[key]]
            if missing:
                raise ConfigError(
                    "%s: [%s] %s not set; set %s, or enabled = no"
                    % (config.label, title, _words(missing), "it" if len(missing) == 1 else "them")
                )
            checkReadable(config, title, "ca_file", section["ca_file"])
            if section.get("archive_dir"):
                checkFolder(config, title, "archive_dir", section["archive_dir"])
    if not config["multipop"]["enabled"] or not os.path.isdir(config["server"]["data_dir"]):
        return  # a fresh data directory has no accounts yet
    from mdpy.backends import load

    backend = load(config["server"]["backend"], config)
    accounts = backend.remoteAccounts
    try:
        listed = accounts.list()
    except MailError as e:
        raise ConfigError("%s; remove or repair it" % (e,)) from None
    finally:
        backend.close()
    for account in listed:
        missing = [key for key in ("host", "username") if not account.get(key)]
        if missing:
            raise ConfigError(
                "%s: MultiPOP account %s: %s not set; remove it with 'mdpy multipop del %s' and add it again"
                % (getattr(accounts, "path", "[server] backend"), account["id"], _words(missing), account["id"])
            )


def _words(names):
    """
    @return: C{host is}, C{host and password are}, C{host, username and
        password are}.
    """
    if len(names) == 1:
        return names[0] + " is"
    return "%s and %s are" % (", ".join(names[:-1]), names[-1])
