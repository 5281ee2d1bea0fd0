# -*- test-case-name: tests.test_spf -*-
"""
The Sender Policy Framework: whether a domain authorises a client to send its
mail (RFC 7208).

L{checkSPF} evaluates check_host() (RFC 7208 section 4) for the identity of
one SMTP transaction, asynchronously, on the reactor thread, with lookup
functions the caller passes (usually those of
L{mdpy.delivery.mx.MXResolver}).  pyspf was not used: it does its DNS through
one module-global function, blocking, so it would need a thread per check
that calls back into the reactor and cannot be cancelled when the check times
out.

The results are the names of RFC 7208 section 2.6, which are also the
C{spf} results of an C{Authentication-Results:} field (RFC 8601 section
2.7.2); L{mdpy.mailauth.authresults} writes them there.
"""

import ipaddress
import re
from urllib.parse import quote

from mdpy.errors import PermanentFailure, TemporaryFailure
from mdpy.networks import clientAddress

# RFC 7208 section 4.6.4.
MAX_DNS_TERMS = 10
MAX_VOID_LOOKUPS = 2
MAX_MX_NAMES = 10
MAX_PTR_NAMES = 10

# RFC 7208 section 2.6.
PASS = "pass"
FAIL = "fail"
SOFTFAIL = "softfail"
NEUTRAL = "neutral"
NONE = "none"
TEMPERROR = "temperror"
PERMERROR = "permerror"

_QUALIFIERS = {"+": PASS, "-": FAIL, "~": SOFTFAIL, "?": NEUTRAL}


class SPFTempError(Exception):
    """
    check_host() ends in C{temperror} (RFC 7208 section 2.6.6).
    """


class SPFPermError(Exception):
    """
    check_host() ends in C{permerror} (RFC 7208 section 2.6.7).
    """


_SPF_VERSION = re.compile(rb"v=spf1(?: |\Z)", re.I)
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9\-_.]*)=(.*)\Z", re.S)
_MECHANISM_NAME = re.compile(r"([+\-~?]?)([A-Za-z0-9]+)(.*)\Z", re.S)
_MACRO = re.compile(r"([slodiphcrtvSLODIPHCRTV])([0-9]*)([rR]?)([.\-+,/_=]*)\Z")
_TOPLABEL = re.compile(
    r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9\-]*[A-Za-z0-9])\Z"
)
_CIDR = r"(0|[1-9][0-9]{0,2})"
_DUAL_CIDR = re.compile(r"(.*?)(?:/%s)?(?://%s)?\Z" % (_CIDR, _CIDR), re.S)
_IP4_NETWORK = re.compile(r"([0-9.]+)(?:/%s)?\Z" % (_CIDR,))
_IP6_NETWORK = re.compile(r"([0-9A-Fa-f:.]+)(?:/%s)?\Z" % (_CIDR,))


def isDomainName(name):
    """
    @return: whether C{name} can be looked up as a multi-label domain name
        (RFC 7208 section 4.3): labels of 1 to 63 octets, 253 in all.
    """
    name = name[:-1] if name.endswith(".") else name
    labels = name.split(".")
    return (
        len(name) <= 253
        and len(labels) > 1
        and all(0 < len(label) <= 63 for label in labels)
    )


def _tokens(text):
    """
    Split a macro-string (RFC 7208 section 7.1) into literals and macros.

    @return: a list of C{(literal, None)} and C{(letter, transformers)}
        items; C{%%}, C{%_} and C{%-} come back as literals.
    @raise SPFPermError: a syntax error.
    """
    items = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "%":
            if not "!" <= c <= "~":
                raise SPFPermError("bad character %r in %r" % (c, text))
            items.append((c, None))
            i += 1
            continue
        following = text[i + 1 : i + 2]
        if following in ("%", "_", "-"):
            items.append(({"%": "%", "_": " ", "-": "%20"}[following], None))
            i += 2
            continue
        end = text.find("}", i)
        match = following == "{" and end > 0 and _MACRO.match(text, i + 2, end)
        if not match:
            raise SPFPermError("bad macro in %r" % (text,))
        letter, digits, reverse, delimiters = match.groups()
        if letter.lower() in "crt":
            # Section 7.1: only explanation text, which is not looked at
            # here, may use them.
            raise SPFPermError("macro %%{%s} outside exp" % (letter,))
        if digits and int(digits) == 0:
            raise SPFPermError("zero macro transformer in %r" % (text,))
        items.append((letter, (int(digits) if digits else None, bool(reverse), delimiters)))
        i = end + 1
    return items


def checkDomainSpec(text):
    """
    Check C{domain-spec} syntax (RFC 7208 section 7.1): a macro-string that
    ends in a macro or in a dot and a valid top label.

    @raise SPFPermError: it does not.
    """
    items = _tokens(text)
    if items and items[-1] == (".", None):
        items.pop()
    if items and items[-1][1] is not None:
        return
    literal = text[:-1] if text.endswith(".") else text
    dot = literal.rfind(".")
    if dot < 0 or not _TOPLABEL.match(literal[dot + 1 :]):
        raise SPFPermError("bad domain-spec %r" % (text,))


class Directive:
    """
    One mechanism with its qualifier (RFC 7208 section 4.6.2).

    @ivar result: what a match means: L{PASS}, L{FAIL}, ...
    @ivar name: C{all}, C{include}, C{a}, C{mx}, C{ptr}, C{ip4}, C{ip6},
        C{exists}.
    @ivar domainSpec: the target domain-spec, or L{None} for the current
        domain.
    @ivar network: for C{ip4} and C{ip6}: the L{ipaddress} network.
    @ivar cidr4, cidr6: for C{a} and C{mx}: the prefix lengths.
    """

    def __init__(self, result, name, domainSpec=None, network=None, cidr4=32, cidr6=128):
        self.result = result
        self.name = name
        self.domainSpec = domainSpec
        self.network = network
        self.cidr4 = cidr4
        self.cidr6 = cidr6


class SPFRecord:
    """
    A parsed SPF record (RFC 7208 section 4.6, appendix A).

    @ivar directives: the L{Directive}s, in order.
    @ivar redirect: the C{redirect=} domain-spec, or L{None}; already
        L{None} when the record has an C{all} (section 6.1).
    """

    def __init__(self, directives, redirect):
        self.directives = directives
        self.redirect = redirect

    @classmethod
    def parse(cls, text):
        """
        @param text: the record, C{v=spf1 ...}.
        @raise SPFPermError: a syntax error anywhere (section 4.6).
        """
        directives = []
        modifiers = {}
        for term in text.split(" ")[1:]:
            if not term:
                continue
            modifier = _MODIFIER.match(term)
            if modifier:
                name, value = modifier.group(1).lower(), modifier.group(2)
                if name in ("redirect", "exp"):
                    if name in modifiers:
                        raise SPFPermError("%s= twice" % (name,))
                    checkDomainSpec(value)
                    modifiers[name] = value
                else:
                    _tokens(value)
            else:
                directives.append(cls._parseDirective(term))
        redirect = modifiers.get("redirect")
        if any(directive.name == "all" for directive in directives):
            redirect = None
        return cls(directives, redirect)

    @staticmethod
    def _parseDirective(term):
        match = _MECHANISM_NAME.match(term)
        if not match:
            raise SPFPermError("bad term %r" % (term,))
        qualifier, name, rest = match.groups()
        result = _QUALIFIERS[qualifier or "+"]
        name = name.lower()
        if name == "all":
            if rest:
                raise SPFPermError("bad term %r" % (term,))
            return Directive(result, name)
        if name in ("include", "exists"):
            if not rest.startswith(":"):
                raise SPFPermError("%s needs a domain" % (name,))
            checkDomainSpec(rest[1:])
            return Directive(result, name, rest[1:])
        if name == "ptr":
            if rest and not rest.startswith(":"):
                raise SPFPermError("bad term %r" % (term,))
            spec = rest[1:] if rest else None
            if spec is not None:
                checkDomainSpec(spec)
            return Directive(result, name, spec)
        if name in ("a", "mx"):
            spec, cidr4, cidr6 = _DUAL_CIDR.match(rest).groups()
            if spec:
                if not spec.startswith(":"):
                    raise SPFPermError("bad term %r" % (term,))
                spec = spec[1:]
                checkDomainSpec(spec)
            else:
                spec = None
            cidr4 = 32 if cidr4 is None else int(cidr4)
            cidr6 = 128 if cidr6 is None else int(cidr6)
            if cidr4 > 32 or cidr6 > 128:
                raise SPFPermError("bad prefix length in %r" % (term,))
            return Directive(result, name, spec, cidr4=cidr4, cidr6=cidr6)
        if name in ("ip4", "ip6"):
            pattern, limit = (_IP4_NETWORK, 32) if name == "ip4" else (_IP6_NETWORK, 128)
            match = rest.startswith(":") and pattern.match(rest, 1)
            if not match or (match.group(2) and int(match.group(2)) > limit):
                raise SPFPermError("bad term %r" % (term,))
            address, length = match.group(1), match.group(2) or str(limit)
            try:
                kind = ipaddress.IPv4Address if name == "ip4" else ipaddress.IPv6Address
                network = ipaddress.ip_network("%s/%s" % (kind(address), length), strict=False)
            except ValueError:
                raise SPFPermError("bad term %r" % (term,))
            return Directive(result, name, network=network)
        raise SPFPermError("unknown mechanism %r" % (term,))


class SPFCheck:
    """
    One SPF evaluation for one client and sender: check_host() (RFC 7208
    section 4) with the processing limits of section 4.6.4 shared by every
    C{include} and C{redirect} it follows.

    The lookups are those of L{checkSPF}.  Without C{lookupPointer}, C{ptr}
    (whose use section 5.5 discourages) never matches and C{%{p}} expands
    to C{unknown}.
    """

    def __init__(self, ip, sender, helo, lookupTXT, lookupAddresses, lookupMX, lookupPointer=None):
        """
        @param ip: the client, an L{ipaddress} address; IPv4-mapped IPv6
            addresses are taken as IPv4 (section 5).
        @param sender: C{local@domain}, the local part C{postmaster} when
            there was none (section 4.3).
        """
        self.ip = clientAddress(ip)
        self.sender = sender
        self.helo = helo
        self._lookupTXT = lookupTXT
        self._lookupAddresses = lookupAddresses
        self._lookupMX = lookupMX
        self._lookupPointer = lookupPointer
        self._terms = 0
        self._voids = 0
        self._validatedNames = None

    async def _lookup(self, lookup, name):
        try:
            return list(await lookup(name))
        except PermanentFailure:
            return []
        except TemporaryFailure as e:
            raise SPFTempError("DNS error for %s: %s" % (name, e.detail))

    def _countTerm(self):
        self._terms += 1
        if self._terms > MAX_DNS_TERMS:
            raise SPFPermError("more than %d DNS-querying terms" % (MAX_DNS_TERMS,))

    def _countVoid(self, answers):
        if not answers:
            self._voids += 1
            if self._voids > MAX_VOID_LOOKUPS:
                raise SPFPermError("more than %d void lookups" % (MAX_VOID_LOOKUPS,))

    async def checkHost(self, domain):
        """
        @return: L{PASS}, L{FAIL}, L{SOFTFAIL}, L{NEUTRAL} or L{NONE}.
        @raise SPFTempError, SPFPermError: the other two results.
        """
        if not isDomainName(domain):
            return NONE
        records = [
            record
            for record in await self._lookup(self._lookupTXT, domain)
            if _SPF_VERSION.match(record)
        ]
        if not records:
            return NONE
        if len(records) > 1:
            raise SPFPermError("%d SPF records for %s" % (len(records), domain))
        try:
            text = records[0].decode("ascii")
        except UnicodeDecodeError:
            raise SPFPermError("non-ASCII SPF record for %s" % (domain,))
        record = SPFRecord.parse(text)
        for directive in record.directives:
            if await self._matches(directive, domain):
                return directive.result
        if record.redirect is not None:
            self._countTerm()
            target = await self._targetName(record.redirect, domain)
            result = await self.checkHost(target)
            if result == NONE:
                raise SPFPermError("redirect to %s without an SPF record" % (target,))
            return result
        return NEUTRAL

    async def _matches(self, directive, domain):
        name = directive.name
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            return self.ip in directive.network
        self._countTerm()
        if directive.domainSpec is None:
            target = domain
        else:
            target = await self._targetName(directive.domainSpec, domain)
        if name == "include":
            result = await self.checkHost(target)
            if result == NONE:
                raise SPFPermError("include of %s without an SPF record" % (target,))
            return result == PASS
        if not isDomainName(target):
            return False
        if name == "a":
            addresses = await self._addresses(target)
            self._countVoid(addresses)
            return self._inAny(addresses, directive)
        if name == "mx":
            exchanges = [
                exchange.rstrip(".")
                for exchange in await self._lookup(self._lookupMX, target)
                if exchange.rstrip(".")
            ]
            self._countVoid(exchanges)
            if len(exchanges) > MAX_MX_NAMES:
                raise SPFPermError("more than %d MX names for %s" % (MAX_MX_NAMES, target))
            for exchange in exchanges:
                if self._inAny(await self._addresses(exchange), directive):
                    return True
            return False
        if name == "exists":
            # Section 5.7: an A lookup, whatever the client's protocol.
            addresses = await self._lookup(self._lookupAddresses, target)
            found = [a for a in addresses if ipaddress.ip_address(a).version == 4]
            self._countVoid(found)
            return bool(found)
        if name == "ptr":
            names = await self._validated()
            return any(n == target.lower() or n.endswith("." + target.lower()) for n in names)
        raise AssertionError(name)

    async def _addresses(self, name):
        """
        @return: the addresses of C{name} of the client's IP version (the A
            or AAAA lookup of sections 5.3 and 5.4).
        """
        answers = await self._lookup(self._lookupAddresses, name)
        found = []
        for text in answers:
            address = ipaddress.ip_address(text)
            if address.version == self.ip.version:
                found.append(address)
        return found

    def _inAny(self, addresses, directive):
        length = directive.cidr4 if self.ip.version == 4 else directive.cidr6
        return any(
            self.ip in ipaddress.ip_network("%s/%d" % (address, length), strict=False)
            for address in addresses
        )

    async def _validated(self):
        """
        @return: the client's validated domain names (section 5.5), at most
            L{MAX_PTR_NAMES} looked at; lowercase, without trailing dots.
        """
        if self._validatedNames is not None:
            return self._validatedNames
        self._validatedNames = []
        if self._lookupPointer is None:
            return self._validatedNames
        try:
            names = await self._lookupPointer(str(self.ip))
        except (TemporaryFailure, PermanentFailure):
            names = []
        self._countVoid(names)
        for name in list(names)[:MAX_PTR_NAMES]:
            name = name.rstrip(".").lower()
            try:
                addresses = await self._addresses(name)
            except SPFTempError:
                continue
            if self.ip in addresses:
                self._validatedNames.append(name)
        return self._validatedNames

    async def _targetName(self, spec, domain):
        """
        Expand a domain-spec (section 7.3) and cut it to 253 octets from
        the left.
        """
        items = _tokens(spec)
        pointer = "unknown"
        if any(letter in "pP" and transform is not None for letter, transform in items):
            names = await self._validated()
            within = [n for n in names if n == domain or n.endswith("." + domain)]
            pointer = (within or names or ["unknown"])[0]
        name = self._expand(items, domain, pointer)
        name = name[:-1] if name.endswith(".") else name
        while len(name) > 253 and "." in name:
            name = name.split(".", 1)[1]
        return name

    def _expand(self, items, domain, pointer):
        local, _, senderDomain = self.sender.rpartition("@")
        if self.ip.version == 4:
            ip, version = str(self.ip), "in-addr"
        else:
            ip, version = ".".join(self.ip.exploded.replace(":", "")), "ip6"
        values = {
            "s": self.sender,
            "l": local,
            "o": senderDomain,
            "d": domain,
            "i": ip,
            "p": pointer,
            "v": version,
            "h": self.helo,
        }
        out = []
        for letter, transform in items:
            if transform is None:
                out.append(letter)
                continue
            keep, reverse, delimiters = transform
            parts = re.split("[%s]" % (re.escape(delimiters or "."),), values[letter.lower()])
            if reverse:
                parts.reverse()
            if keep is not None:
                parts = parts[-keep:]
            value = ".".join(parts)
            if letter.isupper():
                value = quote(value, safe="")
            out.append(value)
        return "".join(out)


async def checkSPF(ip, helo, mailFrom, lookupTXT, lookupAddresses, lookupMX, lookupPointer=None):
    """
    The SPF result of one SMTP transaction (RFC 7208 section 2): for the
    C{MAIL FROM} identity, or the C{HELO} identity for the null sender
    (section 2.4).

    @param ip: the client address, text.
    @param helo: the name the client gave in C{HELO}/C{EHLO}.
    @param mailFrom: the bare C{MAIL FROM} address, C{""} for the null
        sender.
    @param lookupTXT: C{name -> Deferred[list[bytes]]}, one item per TXT
        record, its strings joined (section 3.3).
    @param lookupAddresses: C{name -> Deferred[list[str]]}, the A and AAAA
        records.
    @param lookupMX: C{name -> Deferred[list[str]]}, the exchange names.
    @param lookupPointer: C{address -> Deferred[list[str]]}, the PTR
        records of an IP address given as text, for the C{ptr} mechanism
        and the C{%{p}} macro; optional (see L{SPFCheck}).

    Every lookup may fail with L{TemporaryFailure} (DNS trouble: the result
    is C{temperror}) or L{PermanentFailure} (taken as no records).

    @return: C{(result, reason)}: one of the results of section 2.6 and,
        for C{temperror} and C{permerror}, what caused it (else L{None}).
    """
    helo = helo or ""
    if mailFrom:
        local, at, domain = mailFrom.rpartition("@")
        sender = "%s@%s" % (local or "postmaster", domain)
    else:
        domain = helo
        sender = "postmaster@" + helo
    domain = domain.rstrip(".")
    try:
        domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
        address = ipaddress.ip_address(ip)
    except (UnicodeError, ValueError):
        return NONE, None
    check = SPFCheck(address, sender, helo, lookupTXT, lookupAddresses, lookupMX, lookupPointer)
    try:
        return await check.checkHost(domain), None
    except SPFTempError as e:
        return TEMPERROR, str(e)
    except SPFPermError as e:
        return PERMERROR, str(e)
