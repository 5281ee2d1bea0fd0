# -*- test-case-name: tests.test_address -*-
"""
The one parser of mailbox addresses (RFC 5321 section 4.1.2, RFC 6531 for
SMTPUTF8) and their normal form.

The normal form lowercases the domain and the local part: mdpy treats local
parts case-insensitively, as Postfix and Dovecot do by default.
"""

import re

from mdpy.errors import InvalidInput

# RFC 5321 section 4.5.3.1.1 sets 64 octets for a local part, and section
# 4.5.3.1 asks servers to accept more where they can: SRS addresses
# (SRS0=hash=time=domain=local@forwarder) are often longer.
MAX_LOCALPART = 255
MAX_DOMAIN = 255
MAX_PATH = 512

# RFC 5321 atext; with SMTPUTF8 any non-ASCII character is allowed too.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_STRING = re.compile(r"[%s]+(?:\.[%s]+)*\Z" % (_ATEXT, _ATEXT))
_DOT_STRING_UTF8 = re.compile(
    r"[%s\u0080-\U0010ffff]+(?:\.[%s\u0080-\U0010ffff]+)*\Z" % (_ATEXT, _ATEXT)
)
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
_QUOTED_UTF8 = re.compile(
    r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"\Z'
)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_LABEL_UTF8 = re.compile(r"[\w](?:[\w-]{0,61}[\w])?\Z")
_ADDRESS_LITERAL = re.compile(r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]\Z")


def splitAddress(address):
    """
    Split at the last C{@}.

    @return: C{(localpart, domain)}.
    @raise InvalidInput: there is no C{@}.
    """
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise InvalidInput("not an address: %r" % (address,))
    return local, domain


def checkDomain(domain, utf8=False):
    """
    @return: C{domain} when it is a valid domain name or address literal.
    @raise InvalidInput: it is not.
    """
    if len(domain) > MAX_DOMAIN or not domain:
        raise InvalidInput("bad domain: %r" % (domain,))
    if domain.startswith("["):
        if _ADDRESS_LITERAL.match(domain):
            return domain
        raise InvalidInput("bad address literal: %r" % (domain,))
    label = _LABEL_UTF8 if utf8 else _LABEL
    parts = domain.split(".")
    if not all(label.match(part) and "_" not in part for part in parts):
        raise InvalidInput("bad domain: %r" % (domain,))
    return domain


def parseMailbox(text, utf8=False):
    """
    Check a mailbox C{local@domain} as RFC 5321 section 4.1.2 defines it.

    @param utf8: allow RFC 6531 UTF-8 in the local part and domain.
    @return: C{(localpart, domain)} as given.
    @raise InvalidInput: the address is malformed.
    """
    if len(text) > MAX_PATH:
        raise InvalidInput("address too long")
    if not utf8 and not text.isascii():
        raise InvalidInput("non-ASCII address without SMTPUTF8")
    local, domain = splitAddress(text)
    if len(local.encode("utf-8")) > MAX_LOCALPART:
        raise InvalidInput("local part too long")
    if local.startswith('"'):
        pattern = _QUOTED_UTF8 if utf8 else _QUOTED
    else:
        pattern = _DOT_STRING_UTF8 if utf8 else _DOT_STRING
    if not pattern.match(local):
        raise InvalidInput("bad local part: %r" % (local,))
    checkDomain(domain, utf8)
    return local, domain


def parsePath(text, utf8=False):
    """
    Parse an SMTP reverse- or forward-path: C{<local@domain>}, C{<>}, with an
    obsolete source route (C{<@a,@b:x@y>}) dropped as RFC 5321 appendix C says.

    @return: the bare mailbox, or C{""} for the null path.
    @raise InvalidInput: malformed.
    """
    if not (text.startswith("<") and text.endswith(">")):
        raise InvalidInput("path not in angle brackets")
    inner = text[1:-1]
    if inner == "":
        return ""
    if inner.startswith("@"):
        route, colon, inner = inner.partition(":")
        if not colon:
            raise InvalidInput("bad source route")
    parseMailbox(inner, utf8)
    return inner


def normaliseDomain(domain):
    """
    @return: the domain lowercased, without a trailing dot.
    """
    return domain.rstrip(".").lower()


def normalise(address):
    """
    @return: the normal form of a mailbox address: C{local@domain} with both
        parts lowercased and quotes around a plain local part removed.
    @raise InvalidInput: malformed.
    """
    local, domain = parseMailbox(address.strip(), utf8=True)
    if local.startswith('"'):
        unquoted = re.sub(r"\\(.)", r"\1", local[1:-1])
        if _DOT_STRING_UTF8.match(unquoted):
            local = unquoted
    return "%s@%s" % (local.lower(), normaliseDomain(domain))


def splitSubaddress(address, delimiters):
    """
    Split a subaddress, C{user+detail@domain}, into the address of its user
    and its detail (RFC 5233 section 1 names the parts).

    @param address: a normalised address.
    @param delimiters: the characters that end the user part, each one a
        delimiter (C{"+"}; C{"+-"} for either); C{""} for no subaddressing.
    @return: C{(user address, detail)}; C{(address, None)} when C{address}
        is no subaddress: no delimiter, or one that starts the local part or
        a quoted local part.
    """
    local, domain = splitAddress(address)
    if local.startswith('"'):
        return address, None
    cut = min((index for index in map(local.find, delimiters) if index >= 0), default=-1)
    if cut <= 0:
        return address, None
    return "%s@%s" % (local[:cut], domain), local[cut + 1:]
