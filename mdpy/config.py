# -*- test-case-name: tests.test_config -*-
"""
The configuration schema and the INI loader.

Each key is declared once below, with its type, default and documentation;
C{etc/mdpy.ini} is rendered from this schema (L{renderIni}) and a test keeps
the two equal.  Nothing outside L{mdpy.tap} and L{mdpy.cli} reads a
configuration: they pass typed values on as arguments.
"""

import configparser
import os
import re
import socket
from importlib import resources

from mdpy.tls import TLS_MODES

# --- value types ------------------------------------------------------------


class ConfigError(Exception):
    """
    A configuration that cannot be used; the message is one line for the
    administrator.
    """


_YES = {"yes", "true", "on", "1"}
_NO = {"no", "false", "off", "0"}


def parseBool(text):
    value = text.strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise ValueError("expected yes or no")


def parsePort(text):
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError("a port is a number from 1 to 65535")
    return port


def parseInt(text):
    value = int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def parseWorkers(text):
    """
    @return: C{"auto"}, or a number of worker processes from 1.
    """
    value = text.strip().lower()
    if value == "auto":
        return value
    count = int(value)
    if count < 1:
        raise ValueError("auto, or a number of processes from 1")
    return count


def parsePositiveFloat(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


_DURATION = re.compile(r"(\d+)\s*([smhdw]?)\Z")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parseDuration(text):
    """
    @return: seconds for C{30s}, C{10m}, C{1h}, C{7d}, C{2w} or a plain number.
    """
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValueError("expected a duration like 30s, 10m, 1h or 7d")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


_SECONDS = re.compile(r"(\d+(?:\.\d+)?)\s*([smh]?)\Z")


def parseSeconds(text):
    """
    @return: seconds, as a L{float}, for C{2s}, C{0.5s}, C{1m} or a plain
        number: a duration that may be a fraction of a second.
    """
    match = _SECONDS.match(text.strip().lower())
    if not match:
        raise ValueError("expected a duration like 2s, 0.5s or 1m")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


_SIZE = re.compile(r"(\d+)\s*([kmg]?)b?\Z")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parseSize(text):
    """
    @return: octets for C{10240000}, C{512K}, C{50M} or C{1G}.
    """
    match = _SIZE.match(text.strip().lower())
    if not match:
        raise ValueError("expected a size like 512K, 50M or 1G")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parseList(text):
    return [item for item in re.split(r"[\s,]+", text.strip()) if item]


def parseDurations(text):
    return [parseDuration(item) for item in parseList(text)]


def parseChoice(*choices):
    def parse(text):
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("expected one of: " + ", ".join(choices))
        return value

    return parse


def parseStr(text):
    return text.strip()


class Key:
    """
    One configuration key.

    @ivar parse: turns the INI text into the typed value, raising
        L{ValueError} with a short reason.
    @ivar default: the INI text of the default (parsed like a user's value);
        C{""} means unset (the value is L{None}).
    @ivar isPath: relative values are taken from the configuration's folder.
    @ivar emptyTurnsOff: a value given empty is C{""} (the feature off),
        not the default.
    """

    def __init__(self, name, parse, default, doc, isPath=False, emptyTurnsOff=False):
        self.name = name
        self.parse = parse
        self.default = default
        self.doc = doc
        self.isPath = isPath
        self.emptyTurnsOff = emptyTurnsOff


def _listener(port, enabled="yes", extra=(), factory=None):
    """
    @param factory: the built-in factory class of the listener's sessions,
        C{package.module:Class}, which its C{factory} key may replace; or
        L{None} for a listener that has no such key.
    """
    keys = [
        Key("enabled", parseBool, enabled, "Run this service."),
        Key("port", parsePort, str(port), "TCP port (plus --port-offset)."),
        Key("interface", parseStr, "", "Address to listen on; default: [server] interface."),
    ]
    if factory is not None:
        keys.append(Key(
            "factory", parseStr, "",
            "package.module:Class, a subclass of %s building this listener's sessions (to add or "
            "change commands); default: that class." % (factory,)))
    return keys + list(extra)


_SMTP_FACTORY = "mdpy.smtp.server:SMTPFactory"
_POP3_FACTORY = "mdpy.pop3.server:POP3Factory"
_IMAP_FACTORY = "mdpy.imap.server:IMAP4Factory"


_SMTP_LIMITS = [
    Key("max_message_size", parseSize, "50M", "Largest message accepted (advertised as SIZE)."),
    Key("max_header_size", parseSize, "1M", "Largest header section accepted (a defence against header bombs)."),
    Key("max_recipients", parseInt, "1000", "Recipients per message; more get 452 4.5.3."),
    Key("max_errors", parseInt, "20", "Errors in one session before it is closed with 421."),
    Key("timeout", parseDuration, "5m", "Idle time before the session is closed with 421."),
    Key("max_connections", parseInt, "5000", "Open sessions in all, beyond which new ones get 421."),
    Key("max_connections_per_ip", parseInt, "1000", "Open sessions from one client address."),
]

_SENDER_POLICY = Key(
    "sender_policy",
    parseChoice("login", "domain", "any"),
    "login",
    "Senders an authenticated client may use, in MAIL FROM and in the From field: "
    "login (its own address, its aliases and their +subaddresses), domain (also any address of its "
    "domain) or any (also <>).  Others get 553 5.7.1.",
)


def _readerLimits(timeout, why, maxConnections):
    """
    The limits of a POP3 or IMAP listener; C{why} says where the least
    timeout comes from.
    """
    return [
        Key("max_errors", parseInt, "20", "Bad commands in one session before it is closed."),
        Key("timeout", parseDuration, timeout, "Idle time before the session is closed (%s)." % (why,)),
        Key("max_connections", parseInt, maxConnections, "Open sessions in all, beyond which new ones are refused."),
        Key("max_connections_per_ip", parseInt, "1000", "Open sessions from one client address."),
    ]


_PLAINTEXT_AUTH = Key(
    "allow_plaintext_auth",
    parseBool,
    "no",
    "Allow passwords before STLS/STARTTLS (only on a trusted network).",
)
_POP3_LIMITS = _readerLimits("10m", "RFC 1939: at least 10m", "5000")
_IMAP_LIMITS = [
    Key("max_message_size", parseSize, "50M", "Largest APPEND (advertised as APPENDLIMIT)."),
    Key(
        "max_pending_literal_size",
        parseSize,
        "256M",
        "Octets of APPEND messages (literals) one account may have under way at once, over all its connections; past it another message gets NO [LIMIT] before its + (one alone is always taken, up to max_message_size). Messages over 256K are spooled to data_dir/spool/imap as they arrive.",
    ),
] + _readerLimits("30m", "RFC 3501: at least 30m", "10000")

_TLS_MODE = parseChoice(*TLS_MODES)

SCHEMA = {
    "server": [
        Key("hostname", parseStr, "", "Name in greetings and Received headers; default: this host's FQDN."),
        Key(
            "data_dir",
            parseStr,
            "",
            "Where mail, the directory and state live; default: $XDG_DATA_HOME/mdpy or ~/.local/share/mdpy.",
            isPath=True,
        ),
        Key("domain", parseStr, "", "The first local domain, made with its postmaster on first start; default: hostname."),
        Key("log_level", parseChoice("debug", "info", "warn", "error"), "info", "Least severe log level written."),
        Key("interface", parseStr, "::",
            "Address every service listens on unless its own section names one: :: is every IPv6 and "
            "IPv4 address (or every IPv4 one, 0.0.0.0, where IPv6 is off); 0.0.0.0 every IPv4 one."),
        Key("recipient_delimiter", parseStr, "+",
            "Subaddressing: mail to user+detail@domain goes to user@domain when no user or alias has the "
            "whole address (RFC 5233); several characters are each a delimiter; empty turns it off.",
            emptyTurnsOff=True),
        Key("quota_warning", parseInt, "90",
            "Percent of an account's quota (mdpy user quota, mdpy domain quota) at which the postmaster "
            "writes to it, once until it goes back below; 0 sends no warning."),
        Key("backend", parseStr, "files",
            "Where mail, the directory and the queue are kept: files (data_dir on this machine), memory "
            "(lost when the server stops; for tests) or package.module:Class, a class whose "
            "fromConfig(config, reactor, threadPool) returns an mdpy.interfaces.IBackend."),
        Key("shared_data_dir", parseBool, "no",
            "Whether several servers on this machine may serve data_dir, each with its own listeners. "
            "no: a second server on it refuses to start. yes (in every server sharing it): the first to "
            "start is the primary, which alone runs the outbound queue, the control socket, the ODMR "
            "provider and the periodic collections; the others serve their listeners, hand the mail "
            "they queue to the primary, and one of them takes over within a second when it stops."),
        Key("workers", parseWorkers, "auto",
            "Processes serving the listeners: N worker processes share the listening sockets and the "
            "files backend, and the process twistd started supervises them (it runs the outbound queue, "
            "the control socket, the ODMR provider, the collections and Minger, and starts a worker again "
            "when one dies); 1 serves everything in one process; auto is the number of CPU cores (1 with "
            "a backend other than files).  Limits per client address (max_connections_per_ip) count "
            "in each worker; the login limits of [auth] are shared."),
    ],
    "tls": [
        Key("certificate", parseStr, "", "PEM certificate chain; default: a self-signed one in data_dir/tls.", isPath=True),
        Key("private_key", parseStr, "", "PEM private key; default: beside the self-signed certificate.", isPath=True),
    ],
    "auth": [
        Key("failure_window", parseDuration, "10m",
            "Failed logins are counted over this time; an account limit lasts this long."),
        Key("failure_delay", parseSeconds, "2s",
            "Wait before answering a failed login; it doubles with each further failure from the address."),
        Key("max_failure_delay", parseSeconds, "15s", "The longest that wait grows to."),
        Key("address_failures", parseInt, "10",
            "Failed logins (and logins being checked) from one address within failure_window that "
            "refuse its further logins until they age out; the same password again counts once; 0 for no limit."),
        Key("account_failures", parseInt, "20",
            "Failed logins for one account, from any addresses, within failure_window that refuse its "
            "logins for failure_window, except from addresses it logged in from before; 0 for no limit."),
        Key("min_password_length", parseInt, "10",
            "Shortest password 'mdpy user add' and 'mdpy user passwd' accept, in characters."),
    ],
    "smtp": _listener(
        25,
        extra=_SMTP_LIMITS
        + [
            _SENDER_POLICY,
            Key(
                "received_auth",
                parseBool,
                "no",
                "Name the login of an authenticated client in the Received field, on every SMTP "
                "listener (no: it says only 'authenticated sender').",
            ),
            Key(
                "authentication_results",
                parseBool,
                "yes",
                "Run the checks; no runs none of them (the older way to turn SPF and DKIM off).",
            ),
            Key(
                "checks",
                parseList,
                "spf, dkim",
                "Checks every incoming message goes through, in order, whichever protocol brought it: "
                "spf and dkim record their results in one Authentication-Results header of mail from "
                "unauthenticated clients (no rejection); package.module:Class names a class providing "
                "mdpy.interfaces.ICheck, made with no arguments.  Empty: none.",
                emptyTurnsOff=True,
            ),
        ],
        factory=_SMTP_FACTORY,
    ),
    "submission": _listener(587, extra=_SMTP_LIMITS + [_SENDER_POLICY], factory=_SMTP_FACTORY),
    "smtps": _listener(465, extra=_SMTP_LIMITS + [_SENDER_POLICY], factory=_SMTP_FACTORY),
    "pop3": _listener(110, extra=[_PLAINTEXT_AUTH] + _POP3_LIMITS, factory=_POP3_FACTORY),
    "pop3s": _listener(995, extra=_POP3_LIMITS, factory=_POP3_FACTORY),
    "imap": _listener(143, extra=[_PLAINTEXT_AUTH] + _IMAP_LIMITS, factory=_IMAP_FACTORY),
    "imaps": _listener(993, extra=_IMAP_LIMITS, factory=_IMAP_FACTORY),
    "odmr": _listener(
        366,
        factory="mdpy.odmr.provider:ODMRFactory",
        extra=[
            Key("max_domains", parseInt, "100", "Domains one ATRN may name."),
            Key("max_errors", parseInt, "20", "Errors in one session before it is closed with 421."),
            Key("timeout", parseDuration, "5m", "Idle time before the session is closed; after ATRN, time to wait for each reply of the customer."),
            Key("max_connections", parseInt, "100", "Simultaneous sessions in all."),
            Key("max_connections_per_ip", parseInt, "10", "Simultaneous sessions from one address."),
        ],
    ),
    "minger": _listener(
        4069,
        extra=[
            Key("secret", parseStr, "", "Shared secret for authenticated queries (at least 16 characters)."),
            Key("anonymous", parseBool, "no", "Give the status to queries without a digest; no: answer them 2."),
            Key("allow", parseList, "", "Addresses or networks that may ask (e.g. 192.0.2.0/24); default: any."),
            Key("rate", parsePositiveFloat, "20", "Queries per second answered for one source address; more are dropped."),
            Key("burst", parseInt, "40", "Queries one source may send at once before the rate applies."),
        ],
    ),
    "webadmin": _listener(1000, enabled="no"),
    "multipop": [
        Key("enabled", parseBool, "yes", "Collect the users' remote POP3 accounts ('mdpy multipop add')."),
        Key("interval", parseDuration, "10m", "Time between collections."),
        Key("timeout", parseDuration, "1m", "Time to wait for each reply of a POP3 server."),
        Key("ca_file", parseStr, "", "PEM file of the CAs to trust; default: the system's.", isPath=True),
    ],
    "dns": [
        Key("nameservers", parseList, "", "host:port of the name servers every DNS lookup asks (delivery, SPF, DKIM, Minger hosts); answers are cached for their TTL. Default: the system's."),
        Key("timeout", parseDuration, "5s", "Time the SPF and DKIM checks of an inbound message may wait for DNS in all; past it they record temperror."),
    ],
    "relay": [
        Key("smarthost", parseStr, "", "host[:port] to send all outbound mail through, instead of the MX hosts."),
        Key("smarthost_tls", _TLS_MODE, "starttls", "none, starttls or implicit; starttls and implicit verify the certificate."),
        Key("smarthost_ca_file", parseStr, "", "PEM file of trusted CAs for the smarthost; default: the system's.", isPath=True),
        Key("smarthost_username", parseStr, "", "AUTH login at the smarthost (sent only over TLS)."),
        Key("smarthost_password", parseStr, "", "Its password."),
        Key("remote_port", parsePort, "25", "Port of remote MX hosts (change only for testing)."),
        Key("mx_tls", parseChoice("may", "none"), "may", "STARTTLS to MX hosts when offered (may), or never (none)."),
        Key("retry", parseDurations, "5m 15m 30m 1h 2h 4h 8h", "Delays between delivery attempts; the last repeats."),
        Key("lifetime", parseDuration, "5d", "Give up and bounce after this long."),
        Key("delay_warning", parseDuration, "4h", "Tell the sender when mail is still undelivered after this long; 0 for never."),
        Key("max_connections", parseInt, "100", "Outbound connections in all."),
        Key("max_per_destination", parseInt, "20", "Outbound connections to one domain (or the smarthost)."),
        Key("max_messages_per_connection", parseInt, "100", "Messages sent over one connection before it is closed."),
        Key("connect_timeout", parseDuration, "30s", "Time to wait for a connection to an MX host."),
        Key("command_timeout", parseDuration, "5m", "Time to wait for any reply of a remote server."),
        Key("connection_idle", parseDuration, "2s", "Time a connection with nothing to send waits for more mail before it quits; 0 quits at once."),
        Key("srs", parseBool, "yes", "Rewrite the sender of mail forwarded to other domains (SRS), so it passes SPF there."),
    ],
}

TEMPLATES = {
    "domainpop": [
        Key("enabled", parseBool, "yes", "Collect this mailbox."),
        Key("host", parseStr, "", "The ISP's POP3 server."),
        Key("port", parsePort, "110", "Its port (995 for implicit TLS)."),
        Key("tls", _TLS_MODE, "starttls", "none, starttls or implicit."),
        Key("verify_certificate", parseBool, "yes", "Check the server certificate and name."),
        Key("ca_file", parseStr, "", "PEM file of the CAs to trust for it; default: the system's.", isPath=True),
        Key("username", parseStr, "", "POP3 login."),
        Key("password", parseStr, "", "POP3 password."),
        Key("apop", parseBool, "no", "Log in with APOP."),
        Key("interval", parseDuration, "10m", "Time between collections."),
        Key("leave_on_server_days", parseInt, "0", "Days to keep mail at the ISP; 0 deletes after download."),
        Key("max_size", parseSize, "0", "Largest message to download; 0 for no limit."),
        Key("size_action", parseChoice("skip", "delete", "postmaster"), "skip",
            "What to do with a larger one: skip (leave it at the ISP), delete (there, without download, telling "
            "the postmaster) or postmaster (download it for the postmaster instead of its recipients; held when "
            "the postmaster cannot take it).  Larger than [smtp] max_message_size: always left at the ISP."),
        Key("archive_dir", parseStr, "", "Keep a copy of every downloaded message here.", isPath=True),
        Key("parse_headers", parseList, "", "Envelope headers to route by; default: To, Cc and the standard headers."),
        Key("received_skip", parseInt, "0", "Received headers to skip from the top."),
        Key("trusted_received_hosts", parseList, "", "Received 'by' hosts whose 'for' clause is trusted."),
        Key("dedupe_header", parseStr, "Message-ID",
            "Header whose value, per recipient, suppresses duplicates; 'fingerprint' for the content "
            "digest, 'none' for no dedupe.  Date is offered but risky: two messages sent to one person "
            "in the same second are taken for one."),
        Key("dedupe_fingerprint", parseBool, "yes", "Dedupe mail without that header by its content fingerprint."),
        Key("dedupe_ttl", parseDuration, "7d", "How long a seen value is remembered."),
        Key("unknown_recipient", parseChoice("postmaster", "drop", "bounce"), "postmaster", "Local address with no user: postmaster, bounce (else the postmaster) or drop; what neither takes is held."),
        Key("foreign_recipients", parseChoice("ignore", "forward"), "ignore", "Addresses of other domains."),
        Key("max_hops", parseInt, "30", "More Received headers than this is held as a loop."),
        Key("timeout", parseDuration, "1m", "Time to wait for each reply of the POP3 server."),
    ],
    "odmr-client": [
        Key("enabled", parseBool, "yes", "Release mail from this provider."),
        Key("host", parseStr, "", "Provider's ODMR server."),
        Key("port", parsePort, "366", "Its port."),
        Key("tls", _TLS_MODE, "starttls", "none, starttls or implicit."),
        Key("username", parseStr, "", "ODMR login."),
        Key("password", parseStr, "", "ODMR password."),
        Key("domains", parseList, "", "Domains to release with ATRN; default: those the provider has for the login."),
        Key("interval", parseDuration, "10m", "Time between releases."),
        Key("verify_certificate", parseBool, "yes", "Check the provider's certificate and name."),
        Key("ca_file", parseStr, "", "PEM file of the CAs to trust for it; default: the system's.", isPath=True),
        Key("timeout", parseDuration, "1m", "Time to wait for each reply of the provider."),
        Key("atrn_timeout", parseDuration, "10m", "Time to wait for the reply to ATRN (RFC 2645: long)."),
    ],
    "gateway": [
        Key("auth_password", parseStr, "", "ODMR password of this domain (login is the domain name)."),
        Key("atrn_users", parseList, "", "Directory users who may also release this domain with ATRN."),
        Key("atrn_hosts", parseList, "", "Networks ATRN for this domain may come from (e.g. 192.0.2.0/24); default: any."),
        Key("verify", parseChoice("none", "minger"), "none", "Check recipients before accepting them: none, or minger."),
        Key("minger_host", parseStr, "", "Minger server of the domain's own mail server."),
        Key("minger_port", parsePort, "4069", "Its UDP port."),
        Key("minger_secret", parseStr, "", "Its shared secret; empty for anonymous queries."),
        Key("minger_timeout", parseDuration, "5s", "Time to wait for its answer (two tries)."),
        Key("minger_cache", parseDuration, "10m", "How long an answer is remembered."),
        Key("minger_fallback", parseChoice("accept", "tempfail"), "accept",
            "What to do when it cannot answer (timeout, status 0-2): accept (and hold), or tempfail (450)."),
    ],
}


CONFIG_NAME = os.path.join("mdpy", "mdpy.ini")
EMBEDDED_DEFAULT = "<embedded default>"


def configPath(given=None, environ=os.environ, creating=False, root=None):
    """
    Find the configuration file, the same way for C{twistd mdpy} and every
    C{mdpy} command: C{given} (C{-c/--config}), else C{$MDPY_CONFIG}, else
    C{/etc/mdpy/mdpy.ini} when it exists, else
    C{$XDG_CONFIG_HOME/mdpy/mdpy.ini} (default C{~/.config}) when it exists.
    C{$MDPY_SYSCONFDIR} stands for C{/etc} when set.

    @param creating: where a new configuration goes (C{mdpy init}) when
        none exists: C{/etc/mdpy/mdpy.ini} as root, else the one under
        C{$XDG_CONFIG_HOME}.
    @param root: whether this runs as root; default: the effective user
        id is 0.
    @return: the path, or L{None} for the embedded default (only when not
        C{creating}).
    """
    chosen = given or environ.get("MDPY_CONFIG")
    if chosen:
        return chosen
    system = os.path.join(environ.get("MDPY_SYSCONFDIR") or "/etc", CONFIG_NAME)
    home = environ.get("HOME") or os.path.expanduser("~")
    user = os.path.join(environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), CONFIG_NAME)
    for path in (system, user):
        if os.path.exists(path):
            return path
    if not creating:
        return None
    if root is None:
        root = os.geteuid() == 0
    return system if root else user


SYSTEM_DATA_DIR = "/var/lib/mdpy"


def defaultHostname():
    """
    @return: this host's fully qualified name, in lower case.
    """
    return socket.getfqdn().lower() or "localhost"


def defaultDataDir(environ=os.environ):
    """
    @return: C{$XDG_DATA_HOME/mdpy}, or C{~/.local/share/mdpy}.
    """
    base = environ.get("XDG_DATA_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "mdpy")


class Config:
    """
    A loaded configuration: every section of L{SCHEMA} with typed values, and
    the template sections (C{[domainpop:NAME]} ...) by kind and name.

    @ivar path: the file read, or L{None} for the embedded default.
    """

    def __init__(self, path=None, sections=None, templates=None):
        self.path = path
        self.sections = sections or {}
        self.templates = templates or {}

    def __getitem__(self, section):
        return self.sections[section]

    @property
    def label(self):
        """
        The file read, or L{EMBEDDED_DEFAULT}: how messages name this
        configuration.
        """
        return self.path or EMBEDDED_DEFAULT

    def summary(self):
        """
        @return: which file and data directory are in use, for C{mdpy
            check} and the start's log.
        """
        return "%s, data_dir %s" % (self.label, self["server"]["data_dir"])

    def named(self, kind):
        """
        @return: C{{NAME: values}} of the sections C{[kind:NAME]}.
        """
        return self.templates.get(kind, {})

    @classmethod
    def load(cls, path=None, environ=os.environ):
        """
        Read and check a configuration; with no path, the embedded default.

        @raise ConfigError: a one-line reason naming the file, section and key.
        """
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        label = path or EMBEDDED_DEFAULT
        if path is not None:
            try:
                with open(path, encoding="utf-8") as handle:
                    parser.read_file(handle)
            except OSError as e:
                raise ConfigError("%s: cannot read: %s" % (path, e.strerror))
            except (configparser.Error, UnicodeDecodeError) as e:
                raise ConfigError("%s: %s" % (path, str(e).splitlines()[0]))
            base = os.path.dirname(os.path.abspath(path))
        else:
            base = os.getcwd()
        sections, templates = {}, {}
        for name in parser.sections():
            kind, colon, instance = name.partition(":")
            if colon and kind in TEMPLATES and instance:
                values = _parseSection(label, name, TEMPLATES[kind], parser[name], base)
                templates.setdefault(kind, {})[instance] = values
            elif name not in SCHEMA:
                raise ConfigError("%s: unknown section [%s]" % (label, name))
        for name, keys in SCHEMA.items():
            given = parser[name] if parser.has_section(name) else {}
            sections[name] = _parseSection(label, name, keys, given, base)
        config = cls(path, sections, templates)
        config._fillDefaults(environ)
        return config

    def _fillDefaults(self, environ):
        server = self.sections["server"]
        if not server["hostname"]:
            server["hostname"] = defaultHostname()
        if not server["domain"]:
            server["domain"] = server["hostname"]
        if not server["data_dir"]:
            server["data_dir"] = defaultDataDir(environ)
        for name, section in self.sections.items():
            if name != "server" and "interface" in section and section["interface"] is None:
                section["interface"] = server["interface"]
        tls = self.sections["tls"]
        if bool(tls["certificate"]) != bool(tls["private_key"]):
            raise ConfigError(
                "%s: [tls] certificate and private_key go together" % (self.label,)
            )


def _parseSection(label, section, keys, given, base):
    known = {key.name: key for key in keys}
    for name in given:
        if name not in known:
            raise ConfigError("%s: [%s] unknown key %r" % (label, section, name))
    values = {}
    for key in keys:
        text = given.get(key.name, key.default) if given else key.default
        if text.strip() == "":
            if key.emptyTurnsOff and given and key.name in given:
                values[key.name] = ""
            else:
                values[key.name] = None if key.default == "" else key.parse(key.default)
            continue
        try:
            value = key.parse(text)
        except ValueError as e:
            raise ConfigError(
                "%s: [%s] %s = %s: %s" % (label, section, key.name, text.strip(), e)
            )
        if key.isPath:
            value = os.path.join(base, os.path.expanduser(value))
        values[key.name] = value
    return values


REFERENCE_HEADING = (
    "; mdpy configuration.  Every key is shown commented out at its default.",
)
STARTER_HEADING = (
    "; mdpy configuration, written by 'mdpy init'.  Every other key is shown",
    "; commented out at its default.",
)


def renderIni(values=None, heading=REFERENCE_HEADING):
    """
    @param values: C{{(section, key): text}} of the keys set, uncommented,
        instead of shown at their defaults.
    @param heading: the first comment lines.
    @return: the text of C{etc/mdpy.ini} (with no C{values}): every key,
        commented out at its default, with its documentation.
    """
    values = values or {}
    lines = list(heading) + [
        "; Paths are relative to this file's folder.  Durations: 30s, 10m, 1h, 7d.",
        "; Sizes: 512K, 50M, 1G.  Run 'mdpy -c FILE check' after editing.",
    ]

    def section(title, keys, comment=""):
        lines.append("")
        lines.append("%s[%s]" % (comment, title))
        for key in keys:
            lines.append("; %s" % (key.doc,))
            if (title, key.name) in values:
                lines.append("%s = %s" % (key.name, values[title, key.name]))
            else:
                lines.append(";%s = %s" % (key.name, key.default))

    for name, keys in SCHEMA.items():
        section(name, keys)
    for kind, keys in TEMPLATES.items():
        lines.append("")
        lines.append("; One section per %s, e.g. [%s:example]." % (kind, kind))
        section("%s:example" % (kind,), keys, comment=";")
    return "\n".join(lines) + "\n"


def starterIni(hostname, domain, dataDir):
    """
    @return: the text C{mdpy init} writes: the reference (L{renderIni})
        with the server's host name, domain and data directory set.
    """
    return renderIni(
        {("server", "hostname"): hostname, ("server", "domain"): domain, ("server", "data_dir"): dataDir},
        STARTER_HEADING,
    )


def referenceIni():
    """
    @return: the installed reference configuration C{mdpy/reference.ini},
        the same text as C{etc/mdpy.ini}.
    """
    return resources.files("mdpy").joinpath("reference.ini").read_text(encoding="utf-8")
