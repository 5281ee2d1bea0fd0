# -*- test-case-name: tests.test_smtp_server,tests.test_pop3_server -*-
"""
The SASL mechanisms every protocol offers (RFC 4616 PLAIN, the LOGIN draft,
RFC 2195 CRAM-MD5), independent of how a protocol frames its challenges
(SMTP C{334}, POP3 and IMAP C{+}).

    exchange = Exchange(b"PLAIN", hostname)
    challenge = exchange.begin(initialResponse)    # None: credentials ready
    while challenge is not None:
        ...send challenge, read a line...
        challenge = exchange.respond(decodeResponse(line))
    portal.login(exchange.credentials, None, IAccount)
"""

import base64
import binascii

from twisted.cred import credentials

MECHANISMS = (b"PLAIN", b"LOGIN", b"CRAM-MD5")


class SASLError(Exception):
    """
    The exchange cannot go on.
    """


class Cancelled(SASLError):
    """
    The client answered C{*} (RFC 4954 section 4, RFC 5034 section 4).
    """


class Malformed(SASLError):
    """
    The client's response cannot be decoded or parsed.
    """


class ForeignAuthorization(SASLError):
    """
    PLAIN asked to act as another user, which no one may.
    """


def decodeResponse(line):
    """
    @return: the decoded response to a challenge, or to an initial response
        (C{=} is the empty one).
    @raise Cancelled: for C{*}.
    @raise Malformed: not base64.
    """
    line = line.strip()
    if line == b"*":
        raise Cancelled()
    if line == b"=":
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("invalid base64")


class Exchange:
    """
    One authentication.

    @ivar credentials: the cred credentials once the exchange is complete.
    @ivar username: the name the client gave (L{bytes}), for logs.
    """

    def __init__(self, mechanism, hostname):
        if mechanism not in MECHANISMS:
            raise ValueError(mechanism)
        self.mechanism = mechanism
        self.hostname = hostname
        self.credentials = None
        self.username = b""
        self._haveUsername = False

    def begin(self, initial):
        """
        Start, with the client's decoded initial response or L{None}.

        @return: the first challenge (raw bytes), or L{None} when the
            credentials are complete.
        """
        if self.mechanism == b"PLAIN":
            return b"" if initial is None else self._plain(initial)
        if self.mechanism == b"LOGIN":
            if initial is None:
                return b"Username:"
            self.username = initial
            self._haveUsername = True
            return b"Password:"
        if initial is not None:
            raise Malformed("CRAM-MD5 takes no initial response")
        self.credentials = credentials.CramMD5Credentials(self.hostname.encode("idna"))
        return self.credentials.getChallenge()

    def respond(self, response):
        """
        Take the client's decoded response to the last challenge.

        @return: the next challenge, or L{None} when the credentials are
            complete.
        """
        if self.mechanism == b"PLAIN":
            return self._plain(response)
        if self.mechanism == b"LOGIN":
            if not self._haveUsername:
                self.username = response
                self._haveUsername = True
                return b"Password:"
            self.credentials = credentials.UsernamePassword(self.username, response)
            return None
        username, _, digest = response.rpartition(b" ")
        if not username or not digest:
            raise Malformed("CRAM-MD5 response is not 'user digest'")
        self.username = username
        self.credentials.setResponse(response)
        return None

    def _plain(self, response):
        parts = response.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise Malformed("PLAIN response is not authzid NUL authcid NUL passwd")
        authzid, authcid, password = parts
        self.username = authcid
        if authzid and authzid != authcid:
            raise ForeignAuthorization()
        self.credentials = credentials.UsernamePassword(authcid, password)
        return None


def secretOf(creds):
    """
    @return: what the client offered as its secret, for the failed-login
        tracker's digest (never kept).
    """
    return getattr(creds, "password", None) or getattr(creds, "response", b"") or b""
