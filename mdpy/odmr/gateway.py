# -*- test-case-name: tests.test_odmr_provider -*-
"""
Gateway domains: domains this server accepts mail for and holds in the
outbound queue, not delivered to their MX, until their owner connects and
releases it with ATRN (RFC 2645), as MDaemon's Domain Gateways do.

A gateway domain is released by the domain name itself logging in with the
domain's C{auth_password} (MDaemon's convention), or by a directory user it
names in C{atrn_users}.  Its recipients may be checked while SMTP takes them,
by asking the domain's own mail server over Minger
(L{mdpy.minger.client.MingerVerifier}), so that mail for unknown users is
refused instead of held and bounced later.
"""

import hashlib
import hmac

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer

from mdpy.address import checkDomain, normalise, splitAddress
from mdpy.errors import InvalidInput
from mdpy.networks import NetworkList


def normaliseLogin(login):
    """
    @return: an address in its normal form, or a domain in lower case.
    @raise InvalidInput: neither.
    """
    if "@" in login:
        return normalise(login)
    return checkDomain(login.lower().rstrip("."))


class GatewayDomain:
    """
    One C{[gateway:DOMAIN]}.

    @ivar domain: the domain, lower case.
    @ivar password: the ODMR password of the login C{domain}, or C{""} for
        no such login.
    @ivar users: logins that may release it too: directory addresses, or
        other gateway domains (one customer owning several domains).
    @ivar verifier: an L{mdpy.interfaces.IRecipientVerifier}, or L{None} to
        accept every recipient.
    @ivar hosts: the networks ATRN for it may come from (MDaemon's "only
        from these IPs"); empty for any.
    """

    def __init__(self, domain, password="", users=(), verifier=None, hosts=()):
        """
        @raise ValueError: a malformed network in C{hosts}.
        """
        self.domain = domain.lower()
        self.password = password or ""
        self.users = frozenset(normaliseLogin(user) for user in users)
        self.verifier = verifier
        self.hosts = NetworkList(hosts)

    def __repr__(self):
        return "<GatewayDomain %s>" % (self.domain,)

    def verify(self, address):
        """
        @return: L{None} when C{address} is accepted without a check, else
            the L{Deferred} of the check.
        """
        if self.verifier is None:
            return None
        return self.verifier.verify(address)

    def releasableBy(self, identity, clientAddress=None):
        """
        @param clientAddress: the customer's IP address, checked against
            L{hosts} when given.
        @return: whether the login C{identity} (a domain or an address) may
            release this domain's mail (from C{clientAddress}).
        """
        identity = identity.lower()
        if not ((identity == self.domain and bool(self.password)) or identity in self.users):
            return False
        return not self.hosts or clientAddress is None or clientAddress in self.hosts


class Gateways:
    """
    The gateway domains of the server.
    """

    def __init__(self, gateways=()):
        self._byDomain = {gateway.domain: gateway for gateway in gateways}

    def __bool__(self):
        return bool(self._byDomain)

    def replace(self, other):
        """
        Take the gateway domains of C{other} (a reload of the
        configuration), so that every holder of this object sees them.

        @type other: L{Gateways}
        @return: the L{GatewayDomain}s replaced.
        """
        replaced = list(self)
        self._byDomain = dict(other._byDomain)
        return replaced

    def __iter__(self):
        return iter(sorted(self._byDomain.values(), key=lambda g: g.domain))

    def get(self, domain):
        """
        @return: the L{GatewayDomain} of C{domain}, or L{None}.
        """
        return self._byDomain.get(domain.lower())

    def forAddress(self, address):
        """
        @return: the L{GatewayDomain} of the domain of C{address}, or L{None}.
        """
        if not self._byDomain:
            return None
        return self._byDomain.get(splitAddress(address)[1].lower())

    def domains(self):
        return sorted(self._byDomain)

    def releasableBy(self, identity, clientAddress=None):
        """
        @return: the domains C{identity} may release (from C{clientAddress}),
            sorted: what a bare C{ATRN} asks for.
        """
        return [g.domain for g in self if g.releasableBy(identity, clientAddress)]


@implementer(ICredentialsChecker)
class GatewayChecker:
    """
    Logins of the ODMR port: a gateway domain's name with its password
    (PLAIN, LOGIN or CRAM-MD5), else whatever C{fallback} (a directory
    checker) says.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, gateways, fallback=None):
        self.gateways = gateways
        self.fallback = fallback

    def requestAvatarId(self, credentials):
        username = getattr(credentials, "username", b"")
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        if "@" in username:
            if self.fallback is None:
                return defer.fail(UnauthorizedLogin("no such login"))
            return self.fallback.requestAvatarId(credentials)
        gateway = self.gateways.get(username)
        secret = gateway.password.encode("utf-8") if gateway is not None and gateway.password else None
        # The same work whether or not the login exists.
        if IUsernamePassword.providedBy(credentials):
            offered = credentials.password
            if isinstance(offered, str):
                offered = offered.encode("utf-8")
            matches = hmac.compare_digest(offered, secret or b"\0" * 32)
        else:
            challenge = getattr(credentials, "challenge", None)
            response = getattr(credentials, "response", None)
            if challenge is None or response is None:
                return defer.fail(UnauthorizedLogin("unsupported credentials"))
            expected = hmac.new(secret or b"\0" * 32, challenge, hashlib.md5).hexdigest()
            matches = hmac.compare_digest(response.lower(), expected.encode("ascii"))
        if matches and secret is not None:
            return defer.succeed(gateway.domain)
        return defer.fail(UnauthorizedLogin("bad login"))


def parseDomainList(argument, maxDomains):
    """
    Parse the argument of ATRN (RFC 2645 section 5.2.1: domains separated by
    commas).

    @return: the domains, lower case, without repeats.
    @raise InvalidInput: a malformed or over-long list.
    """
    try:
        text = argument.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidInput("domain names must be ASCII")
    names = text.split(",")
    if len(names) > maxDomains:
        raise InvalidInput("at most %d domains" % (maxDomains,))
    domains = []
    for name in names:
        name = checkATRNDomain(name)
        if name not in domains:
            domains.append(name)
    return domains


def checkATRNDomain(name):
    """
    @return: C{name} as ATRN carries it: lower case, without a final dot.
    @raise InvalidInput: not a domain RFC 2645 allows (C{sub-domain
        1*("." sub-domain)}: no address literal, at least two labels).
    """
    name = name.strip().lower().rstrip(".")
    if not name or name.startswith("[") or "." not in name:
        raise InvalidInput("bad domain name %r" % (name,))
    return checkDomain(name)
