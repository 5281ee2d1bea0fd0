# -*- test-case-name: tests.test_tap -*-
"""
The listeners of C{twistd mdpy}: which factory serves each kind of
listener section, the settings it takes, and the endpoints it listens on.
"""

import ctypes
import resource

from OpenSSL import SSL
from twisted.application import internet
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from mdpy.logs import Logger


from mdpy.auth.senders import SenderPolicy
from mdpy.checks import BUILT_IN
from mdpy.config import ConfigError
from mdpy.dualstack import EVERY_ADDRESS, EveryAddressEndpoint, listenEverywhere
from mdpy.odmr.provider import ODMRFactory
from mdpy.imap.server import IMAP4Factory
from mdpy.pop3.server import POP3Factory
from mdpy.plugins import loadObject
from mdpy.interfaces import ICheck
from mdpy.smtp.server import MODE_MTA, MODE_SMTPS, MODE_SUBMISSION, SMTPFactory
from mdpy.tls import ensureSelfSigned, serverOptions

log = Logger()

SMTP_SERVICES = {"smtp": MODE_MTA, "submission": MODE_SUBMISSION, "smtps": MODE_SMTPS}


LISTENERS = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")


IMPLICIT_TLS = {"smtps", "pop3s", "imaps"}


IMAP_SERVICES = {"imap", "imaps"}


LISTEN_BACKLOG = 1024


class Named:
    """
    A listener whose bind failure names its service.
    """

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            e.mdpyService = self.name
            raise


class NamedListener(Named, internet.StreamServerEndpointService):
    _raiseSynchronously = True


class NamedUDPListener(Named, internet.UDPServer):
    def _getPort(self):
        port, protocol = self.args
        if self.kwargs["interface"] != EVERY_ADDRESS:
            return internet.UDPServer._getPort(self)
        return listenEverywhere(
            lambda interface: self.reactor.listenUDP(port, protocol, interface=interface), port
        )


def raiseFileLimit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass


# mallopt(3)'s parameter for the size from which malloc maps memory of its
# own for a block, given back to the system when freed.
_M_MMAP_THRESHOLD = -3
# Blocks below this (most messages read whole) come from the heap and are
# used again; scrypt's 16 MB and larger messages are mapped and given back.
MMAP_THRESHOLD = 1024 * 1024


def keepLargeBlocksApart(threshold=MMAP_THRESHOLD):
    """
    Have the C library map every block of C{threshold} octets or more on
    its own, so that it goes back to the system when freed (glibc's
    default, but glibc raises the threshold to the size of each such block
    freed).  Without this, each thread that checked a password keeps
    scrypt's 16 MB of working memory in its heap for good, and a server
    with thousands of connections grows by that much per thread for
    nothing.  Does nothing where the C library has no C{mallopt}.

    @return: whether the threshold was set.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, threshold) == 1


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


def serverEndpoint(reactor, interface, port, tlsOptions=None):
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
