# -*- test-case-name: tests.test_srs -*-
"""
The Sender Rewriting Scheme (Shevek, "Sender Rewriting Scheme", 2004; the
format of libsrs2 and postsrsd) for mail that an alias forwards to a remote
address.

The forwarded copy gets an envelope sender in our domain, so that the SPF
check at the destination (RFC 7208 section 2.4 checks the MAIL FROM domain)
looks at our records, and a bounce of it comes back to us, where L{SRS.reverse}
recovers the original sender::

    user@example.com        -> SRS0=HHHH=TT=example.com=user@forwarder
    SRS0=HHHH=TT=a=b@hop1   -> SRS1=HHHH=hop1==HHHH=TT=a=b@forwarder

C{HHHH} is the first four characters of the base64 HMAC-SHA1, under our
secret, of the fields after it, lowercased as libsrs2 does; C{TT} is the day
of forwarding modulo 1024 in two base32 characters.  An SRS1 address carries
no time stamp: it only says which forwarder made the SRS0 address inside it.
"""

import base64
import hashlib
import hmac
import os
import time

from mdpy.address import normaliseDomain, splitAddress
from mdpy.durable import writeFileAtomically
from mdpy.errors import InvalidInput, NotFound

HASH_LENGTH = 4
SECRET_SIZE = 32

# The characters libsrs2 accepts after the tag; it writes "=" and so do we.
_SEPARATORS = "=-+"
_FIELD = "="
_TIME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TIME_PRECISION = 24 * 60 * 60
_TIME_SLOTS = len(_TIME_CHARS) ** 2


def _tagOf(local):
    """
    @return: C{"SRS0"} or C{"SRS1"} when the local part C{local} starts with
        that tag (in any case) and a separator, else L{None}.
    """
    tag = local[:4].upper()
    if tag in ("SRS0", "SRS1") and local[4:5] and local[4] in _SEPARATORS:
        return tag
    return None


def _splitFields(text, count):
    """
    Split C{text} at its first C{count - 1} field separators.

    @return: the C{count} fields, or L{None} unless all are there and none is
        empty.
    """
    fields = text.split(_FIELD, count - 1)
    if len(fields) != count or not all(fields):
        return None
    return fields


class SRS:
    """
    Forward and reverse addresses under one secret.

    @ivar maxAge: how many days an SRS0 address stays valid.
    """

    def __init__(self, secret, maxAge=21, clock=time.time):
        """
        @param secret: the HMAC key, L{bytes}; see L{loadSecret}.
        @param maxAge: days an SRS0 address is accepted by L{reverse}.
        @param clock: returns seconds since the epoch.
        """
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not secret:
            raise ValueError("empty SRS secret")
        self._secret = secret
        self.maxAge = maxAge
        self._clock = clock

    def _hash(self, *fields):
        """
        @return: the hash of C{fields} as libsrs2's C{srs_hash_create} makes
            it: HMAC-SHA1 over the concatenated fields with ASCII letters
            lowercased, base64, the first L{HASH_LENGTH} characters.
        """
        mac = hmac.new(self._secret, digestmod=hashlib.sha1)
        for field in fields:
            mac.update(field.encode("utf-8").lower())
        return base64.b64encode(mac.digest())[:HASH_LENGTH].decode("ascii")

    def _checkHash(self, given, *fields):
        """
        Compare in constant time and, as libsrs2 does, ignoring case: some
        MTAs change the case of local parts.  A longer hash is cut to
        L{HASH_LENGTH} characters, as libsrs2 does.

        @raise NotFound: C{given} is not the hash of C{fields}.
        """
        expected = self._hash(*fields).lower().encode("ascii")
        given = given[:HASH_LENGTH].lower().encode("utf-8")
        if not hmac.compare_digest(given, expected):
            raise NotFound("SRS hash invalid")

    def _today(self):
        return int(self._clock() // _TIME_PRECISION)

    def _timestamp(self):
        """
        @return: today modulo 1024 in two base32 characters.
        """
        today = self._today()
        return _TIME_CHARS[(today >> 5) & 31] + _TIME_CHARS[today & 31]

    def _checkTimestamp(self, stamp):
        """
        Accept a stamp from today or up to L{maxAge} days ago, modulo 1024
        days.  A stamp from the future is read as from 1024 days before it,
        as libsrs2's C{srs_timestamp_check} does.

        @raise NotFound: the stamp is malformed or out of date.
        """
        if len(stamp) != 2 or not stamp.isascii():
            raise NotFound("SRS time stamp malformed: %r" % (stamp,))
        then = 0
        for char in stamp.upper():
            value = _TIME_CHARS.find(char)
            if value < 0:
                raise NotFound("SRS time stamp malformed: %r" % (stamp,))
            then = then * len(_TIME_CHARS) + value
        now = self._today() % _TIME_SLOTS
        if now < then:
            now += _TIME_SLOTS
        if now > then + self.maxAge:
            raise NotFound("SRS time stamp out of date: %r" % (stamp,))

    def forward(self, sender, forwarderDomain):
        """
        Rewrite the envelope sender of a message we forward.

          - The null sender stays null (RFC 5321 section 4.5.5: a bounce is
            never bounced).
          - A sender in C{forwarderDomain} stays as it is.
          - An SRS0 address of another forwarder becomes an SRS1 address
            naming that forwarder; an SRS1 address keeps the forwarder it
            names and gets our hash and domain (libsrs2's
            C{srs_compile_guarded}).  One malformed as SRS1 is treated as a
            plain address.
          - Any other C{local@domain} becomes
            C{SRS0=HHHH=TT=domain=local@forwarderDomain}.

        @param sender: the envelope sender, without angle brackets.
        @param forwarderDomain: our domain, under which bounces come back.
        @return: the sender to use for the forwarded copy.
        @raise InvalidInput: C{sender} has no C{@}.
        """
        if sender == "":
            return ""
        local, domain = splitAddress(sender)
        if normaliseDomain(domain) == normaliseDomain(forwarderDomain):
            return sender
        tag = _tagOf(local)
        if tag == "SRS1":
            fields = _splitFields(local[5:], 3)
            if fields is not None:
                _, host, user = fields
                return self._srs1(host, user, forwarderDomain)
        elif tag == "SRS0":
            return self._srs1(domain, local[4:], forwarderDomain)
        stamp = self._timestamp()
        return "SRS0=%s=%s=%s=%s@%s" % (
            self._hash(stamp, domain, local),
            stamp,
            domain,
            local,
            forwarderDomain,
        )

    def _srs1(self, host, user, forwarderDomain):
        """
        @param host: the domain of the forwarder that made the SRS0 address.
        @param user: that address's local part after C{"SRS0"}, starting with
            its separator.
        """
        return "SRS1=%s=%s=%s@%s" % (self._hash(host, user), host, user, forwarderDomain)

    def reverse(self, address):
        """
        Recover where a bounce to one of our SRS addresses must go.

        The domain of C{address} is not looked at: the caller decides which
        domains are ours.  Case does not matter (libsrs2 reads the tag, hash
        and time stamp case-insensitively and hashes lowercased fields); the
        result keeps the case it was written in.

        @return: C{local@domain} for an SRS0 address, C{SRS0...@forwarder}
            for an SRS1 address, or L{None} when C{address} is not an SRS
            address.
        @raise NotFound: it looks like one but is malformed, its hash is not
            ours or its time stamp is out of date.
        """
        local = address.rpartition("@")[0] or address
        tag = _tagOf(local)
        if tag is None:
            return None
        if tag == "SRS1":
            fields = _splitFields(local[5:], 3)
            if fields is None:
                raise NotFound("malformed SRS1 address: %r" % (address,))
            given, host, user = fields
            self._checkHash(given, host, user)
            return "SRS0%s@%s" % (user, host)
        fields = _splitFields(local[5:], 4)
        if fields is None:
            raise NotFound("malformed SRS0 address: %r" % (address,))
        given, stamp, host, user = fields
        self._checkHash(given, stamp, host, user)
        self._checkTimestamp(stamp)
        return "%s@%s" % (user, host)


def loadSecret(path):
    """
    Read the SRS secret from C{path}, creating it first if it is missing.

    A new secret is L{SECRET_SIZE} random octets, written base64-encoded on
    one line, mode 0600, durably: the file has the format of postsrsd's
    secret file (the first line is the key; C implementations such as
    libsrs2 take the key as a C string, so it must hold no NUL), and either
    program can use the other's.  Call it once at start-up: two processes
    creating the file at once would each keep a different secret.

    @return: the key: the first line of the file without its line end.
    @raise InvalidInput: the file is there but its first line is empty.
    """
    try:
        with open(path, "rb") as secretFile:
            data = secretFile.read()
    except FileNotFoundError:
        secret = base64.b64encode(os.urandom(SECRET_SIZE))
        writeFileAtomically(path, secret + b"\n", mode=0o600)
        return secret
    secret = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not secret:
        raise InvalidInput("empty SRS secret in %s" % (path,))
    return secret
