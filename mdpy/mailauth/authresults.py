# -*- test-case-name: tests.test_authresults -*-
"""
Checks of inbound mail, recorded as an C{Authentication-Results:} header
field (RFC 8601).  The checks only record: nothing here rejects a message.

SPF (RFC 7208) is evaluated by L{mdpy.mailauth.spf}, on the reactor thread,
with the lookup functions the caller passes (usually those of
L{mdpy.delivery.mx.MXResolver}, with the configured name servers).

DKIM signatures (RFC 6376) are verified with dkimpy: the key records are
looked up on the reactor thread first, then the hashing and RSA work runs in
a thread with a lookup function that hands dkimpy the records already found.

Results, per RFC 8601 section 2.7:

  - C{spf}: C{pass fail softfail neutral none temperror permerror} (RFC 7208
    section 2.6) for the C{MAIL FROM} domain, reported as C{smtp.mailfrom};
    for the null sender, for the C{HELO} name, reported as C{smtp.helo}
    (RFC 7208 section 2.4).
  - C{dkim}, one result for each signature (at most L{MAX_SIGNATURES}):
    C{pass}; C{fail} when the body hash or the signature does not verify;
    C{neutral} when the signature field is malformed or uses what dkimpy
    cannot verify; C{permerror} when the key record is missing or unusable;
    C{temperror} when the key lookup failed.  An unsigned message gets
    C{dkim=none}, and so does a message larger than L{MAX_DKIM_SIZE}, with
    the comment C{(message too large to verify)}.

Whatever has not finished within the checker's C{timeout} (C{[dns]
timeout}) becomes C{temperror}, its comment naming the DNS lookups still
unanswered, and so does an internal error (which is logged).  A message
with a C{temperror} result gets one warning line in the log, saying why.

L{stripForgedResults} removes the fields a message brings that claim to be
this server's (RFC 8601 section 5), before it gets the one written here.
"""

import re

import dkim
import dkim.util
from twisted.internet import defer
from twisted.logger import LogLevel

from mdpy.mailauth.spf import (
    FAIL,
    NEUTRAL,
    NONE,
    PASS,
    PERMERROR,
    TEMPERROR,
    checkSPF,
    isDomainName,
)
from mdpy.errors import PermanentFailure, TemporaryFailure
from mdpy.logs import Logger

_log = Logger()

HEADER_NAME = b"Authentication-Results"

# Comments quote DNS records and signatures: keep the lines short.
MAX_COMMENT = 160

# DKIM: larger messages are not verified; at most this many signatures of one
# message are (RFC 6376 section 6.1: verifiers MAY limit them).
MAX_DKIM_SIZE = 10 * 1024 * 1024
MAX_SIGNATURES = 10

# Seconds the checks of one message may take in all (C{[dns] timeout}).
DEFAULT_TIMEOUT = 5


# -- Authentication-Results syntax (RFC 8601 section 2.2) -------------------

# RFC 2045 token: printable ASCII but SPACE and tspecials.
_TOKEN_PATTERN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_TOKEN = re.compile(_TOKEN_PATTERN + r"\Z")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*\Z")


def _printable(text):
    """
    @return: C{text} with anything but printable ASCII replaced, so that
        nothing taken from a message or from DNS can break the field.
    """
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def quoteValue(text):
    """
    @return: C{text} as a C{value} of RFC 2045 (a token or a quoted-string).
    """
    if _TOKEN.match(text):
        return text
    return '"%s"' % (_printable(text).replace("\\", "\\\\").replace('"', '\\"'),)


def addressValue(address):
    """
    @return: C{address} as a C{pvalue} (RFC 8601 section 2.2): bare when its
        local part is a dot-atom (or absent, as in C{@example.com}), quoted
        otherwise.
    """
    local, at, domain = address.rpartition("@")
    if at and (not local or _DOT_ATOM.match(local)) and _TOKEN.match(domain):
        return address
    return quoteValue(address)


def describe(exception):
    """
    @return: the text of C{exception} for a comment, its bytes arguments
        (as dkimpy gives them) decoded.
    """
    return " ".join(
        arg.decode("ascii", "replace") if isinstance(arg, bytes) else str(arg)
        for arg in exception.args
    ) or exception.__class__.__name__


def comment(text):
    """
    @return: C{text} as an RFC 5322 comment.
    """
    text = _printable(text)
    if len(text) > MAX_COMMENT:
        text = text[: MAX_COMMENT - 3] + "..."
    return "(%s)" % (re.sub(r"([()\\])", r"\\\1", text),)


class MethodResult:
    """
    One C{resinfo} of the field: a method, its result, a comment and
    properties (RFC 8601 section 2.2).

    @ivar properties: C{(ptype.property, value)} pairs, values already in
        their field syntax.
    """

    def __init__(self, method, result, reason=None, properties=()):
        self.method = method
        self.result = result
        self.reason = reason
        self.properties = list(properties)

    def __repr__(self):
        return "<MethodResult %s>" % (self.format(),)

    def format(self):
        """
        @return: C{method=result [(reason)] ptype.property=value ...}.
        """
        parts = ["%s=%s" % (self.method, self.result)]
        if self.reason:
            parts.append(comment(self.reason))
        parts.extend("%s=%s" % pair for pair in self.properties)
        return " ".join(parts)


def formatHeader(authservID, results):
    """
    @return: the whole C{Authentication-Results:} field, one result per
        folded line, ending in CRLF.
    """
    lines = [b"%s: %s" % (HEADER_NAME, quoteValue(authservID).encode("ascii"))]
    lines.extend(result.format().encode("ascii") for result in results)
    return b";\r\n\t".join(lines) + b"\r\n"


# -- Forged fields (RFC 8601 section 5) -----------------------------------------

# One field and its continuation lines; lines end in CRLF or a bare LF.
_FIELD = re.compile(rb"[^\n]*\n(?:[ \t][^\n]*\n)*")
_RESULTS_FIELD = re.compile(rb"authentication-results[ \t]*:", re.I)
_LINE_BREAK = re.compile(rb"\r?\n")
_VALUE = re.compile(r'"((?:[^"\\]|\\.)*)"|(%s)' % (_TOKEN_PATTERN,), re.S)


def stripForgedResults(head, hostname):
    """
    Remove the C{Authentication-Results:} fields that claim to come from
    this server (RFC 8601 section 5): those whose authserv-id is
    C{hostname}, compared without case and trailing dot.  Other fields and
    the body are left as they are.

    Only the header section is looked at, and only in C{head}: when it does
    not end within C{head}, the fields that end within it are still looked
    at, and the last field, which may go on past C{head}, is kept whatever it
    says.  A message cannot hide a forged field from this by a long header
    section, unless that field is the one cut by the end of C{head}.

    @param head: the start of a message, lines ending in CRLF or LF.
    @param hostname: this server's authserv-id, as L{InboundChecker} writes
        it.
    @return: C{head} without those fields; C{head} itself when it has none.
    """
    ours = _printable(hostname).rstrip(".").lower()
    pieces = []
    kept = 0
    position = 0
    while not head.startswith((b"\r\n", b"\n"), position):
        field = _FIELD.match(head, position)
        end = field.end() if field else len(head)
        if end == len(head) or head[end : end + 1] in (b" ", b"\t"):
            # The field may go on past head.
            break
        if _RESULTS_FIELD.match(field.group()) and _authservID(field.group()) == ours:
            pieces.append(head[kept:position])
            kept = end
        position = end
    if not pieces:
        return head
    pieces.append(head[kept:])
    return b"".join(pieces)


def _authservID(field):
    """
    @return: the authserv-id of a whole C{Authentication-Results:} field
        (RFC 8601 section 2.2), unquoted, lowercase, without trailing dot;
        L{None} when there is none.
    """
    value = _LINE_BREAK.sub(b"", field.partition(b":")[2]).decode("latin-1")
    position, depth = 0, 0
    while position < len(value):
        character = value[position]
        if depth and character == "\\":
            position += 1
        elif character == "(":
            depth += 1
        elif depth and character == ")":
            depth -= 1
        elif not depth and character not in " \t":
            break
        position += 1
    match = _VALUE.match(value, position)
    if not match:
        return None
    quoted, token = match.groups()
    text = token if quoted is None else re.sub(r"\\(.)", r"\1", quoted, flags=re.S)
    return text.rstrip(".").lower()


# -- SPF (RFC 7208, evaluated by mdpy.mailauth.spf) ---------------------------


def spfIdentity(helo, mailFrom):
    """
    @return: the property naming the identity SPF checks (RFC 8601 section
        2.7.2): C{smtp.mailfrom}, or C{smtp.helo} for the null sender.
    """
    if not mailFrom:
        return ("smtp.helo", quoteValue(helo or ""))
    local, at, domain = mailFrom.rpartition("@")
    return ("smtp.mailfrom", addressValue(mailFrom) if local else quoteValue(domain))


async def spfResult(ip, helo, mailFrom, lookupTXT, lookupAddresses, lookupMX, lookupPointer=None):
    """
    Run L{checkSPF}, with the same arguments.

    @return: a L{MethodResult} for the C{spf} method.
    """
    result, reason = await checkSPF(
        ip, helo, mailFrom, lookupTXT, lookupAddresses, lookupMX, lookupPointer
    )
    return MethodResult("spf", result, reason, [spfIdentity(helo, mailFrom)])


# -- DKIM (RFC 6376) ---------------------------------------------------------

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HAS_SIGNATURE = re.compile(rb"^dkim-signature[ \t]*:", re.I | re.M)


class _Signature:
    """
    One C{DKIM-Signature} field being verified.

    @ivar index: its position among the message's signatures, for dkimpy.
    @ivar result: the L{MethodResult}, its result L{None} while undecided.
    @ivar keyRecord: the key record found in DNS.
    """

    def __init__(self, index, value):
        self.index = index
        self.result = MethodResult("dkim", None)
        self.keyName = None
        self.keyRecord = None
        self._parse(value)

    def _decide(self, result, reason=None):
        self.result.result = result
        self.result.reason = reason

    def _parse(self, value):
        try:
            fields = dkim.util.parse_tag_value(value)
        except dkim.util.InvalidTagValueList as e:
            self._decide(NEUTRAL, "signature syntax: %s" % (describe(e),))
            return
        domain = fields.get(b"d", b"").decode("ascii", "replace")
        selector = fields.get(b"s", b"").decode("ascii", "replace")
        identity = fields.get(b"i", b"").decode("ascii", "replace")
        names = isDomainName(domain) and _TOKEN.match(domain) and _TOKEN.match(selector)
        if names:
            self.result.properties.append(("header.d", domain))
            self.result.properties.append(("header.s", selector))
            if identity and len(identity) <= 254:
                self.result.properties.append(("header.i", addressValue(identity)))
        try:
            dkim.validate_signature_fields(fields)
        except dkim.DKIMException as e:
            self._decide(NEUTRAL, "signature syntax: %s" % (describe(e),))
            return
        if not names:
            self._decide(NEUTRAL, "signature syntax: bad d= or s=")
            return
        self.keyName = "%s._domainkey.%s" % (selector, domain)

    async def lookUpKey(self, lookupTXT):
        """
        Find the key record (RFC 6376 section 3.6.2.2).
        """
        if self.result.result is not None:
            return
        try:
            self.keyRecord = list(await lookupTXT(self.keyName))
        except PermanentFailure:
            self.keyRecord = []
        except TemporaryFailure as e:
            self._decide(TEMPERROR, "key lookup: %s" % (e.detail,))
            return
        if not self.keyRecord:
            self._decide(PERMERROR, "no key for signature")

    def verify(self, verifier):
        """
        Check the hashes and the signature (RFC 6376 section 6.1.3), in a
        thread: CPU work only, the key record is at hand.
        """
        if self.result.result is not None:
            return
        name = self.keyName.encode("ascii") + b"."
        for record in self.keyRecord:
            try:
                dkim.evaluate_pk(name, record)
            except dkim.DKIMException:
                continue
            break
        else:
            self._decide(PERMERROR, "unusable key record")
            return
        try:
            valid = verifier.verify(self.index, dnsfunc=lambda name, timeout=None: record)
        except dkim.ValidationError:
            self._decide(FAIL, "body hash did not verify")
        except dkim.KeyFormatError as e:
            self._decide(PERMERROR, "key: %s" % (describe(e),))
        except dkim.DKIMException as e:
            self._decide(NEUTRAL, "cannot verify: %s" % (describe(e),))
        else:
            self._decide(PASS if valid else FAIL, None if valid else "signature did not verify")


async def checkDKIM(message, lookupTXT, runInThread, maxSize=MAX_DKIM_SIZE):
    """
    Verify the message's DKIM signatures (RFC 6376 section 6).

    @param maxSize: larger messages are not verified.
    @return: a list of L{MethodResult}s for the C{dkim} method, one per
        signature, or one C{none}.
    """
    head = _HEADER_END.split(message, 1)[0]
    if not _HAS_SIGNATURE.search(head):
        return [MethodResult("dkim", NONE)]
    if len(message) > maxSize:
        return [MethodResult("dkim", NONE, "message too large to verify")]
    try:
        headers, _ = dkim.rfc822_parse(head + b"\r\n\r\n")
    except dkim.DKIMException as e:
        return [MethodResult("dkim", PERMERROR, "malformed header: %s" % (describe(e),))]
    values = [value for name, value in headers if name.lower() == b"dkim-signature"]
    signatures = [_Signature(i, value) for i, value in enumerate(values[:MAX_SIGNATURES])]
    await defer.gatherResults(
        [defer.ensureDeferred(s.lookUpKey(lookupTXT)) for s in signatures], consumeErrors=True
    )
    if any(s.result.result is None for s in signatures):
        await runInThread(_verifyAll, message, signatures)
    return [s.result for s in signatures]


def _verifyAll(message, signatures):
    verifier = dkim.DKIM(message, minkey=1024)
    for signature in signatures:
        signature.verify(verifier)


# -- The checker -------------------------------------------------------------


def _unavailable(name):
    raise TemporaryFailure("no lookup configured for %s" % (name,))


class _LookupWatch:
    """
    The DNS lookups of one check, watched so that a check cut off by its
    deadline can say which lookups were left unanswered.

    @ivar unanswered: C{"TXT example.org"} for each lookup cancelled while
        under way.
    """

    def __init__(self):
        self.unanswered = []

    def watch(self, recordType, lookup):
        """
        @return: C{lookup}, remembering in L{unanswered} what it was asking
            when it is cancelled.
        """
        def watched(name):
            d = defer.maybeDeferred(lookup, name)

            def ebCancelled(failure):
                if failure.check(defer.CancelledError):
                    self.unanswered.append("%s %s" % (recordType, name))
                return failure

            return d.addErrback(ebCancelled)

        return watched

    def timedOut(self, seconds):
        """
        @return: why the check timed out after C{seconds}, for a comment.
        """
        if not self.unanswered:
            return "check timed out after %ss" % (seconds,)
        return "DNS lookup%s of %s timed out after %ss" % (
            "s" if len(self.unanswered) > 1 else "", ", ".join(self.unanswered), seconds)


class InboundChecker:
    """
    Runs SPF and DKIM checks of inbound mail and writes their results as
    one C{Authentication-Results:} field (RFC 8601).

    @cvar maxDKIMSize: messages larger than this are not DKIM-verified.
    """

    maxDKIMSize = MAX_DKIM_SIZE

    def __init__(
        self,
        hostname,
        lookupTXT,
        lookupAddresses=None,
        lookupMX=None,
        reactor=None,
        runInThread=None,
        timeout=DEFAULT_TIMEOUT,
        lookupPointer=None,
        methods=("spf", "dkim"),
    ):
        """
        @param hostname: the C{authserv-id} (RFC 8601 section 2.5): this
            server's name.
        @param lookupTXT: C{name -> Deferred[list[bytes]]}, for SPF records
            and DKIM keys.
        @param lookupAddresses: C{name -> Deferred[list[str]]}.  Without it,
            SPF terms that need addresses give C{temperror}.
        @param lookupMX: C{name -> Deferred[list[str]]}.  Without it, an
            SPF C{mx} gives C{temperror}.
        @param lookupPointer: C{address -> Deferred[list[str]]}; optional.

        The lookups are those of L{mdpy.mailauth.spf.checkSPF}, which says
        what they answer and how they fail; the methods of the same names
        of L{mdpy.delivery.mx.MXResolver} are such lookups.

        @param reactor: an L{IReactorTime}; the global reactor by default.
        @param runInThread: C{f, *args -> Deferred}, for the DKIM hashing;
            the server passes its backend's
            L{mdpy.interfaces.IBackend.runBlocking}; at once by default.
        @param timeout: seconds the whole check may take.
        @param methods: the checks run: C{spf}, C{dkim} or both.
        """
        if reactor is None:
            from twisted.internet import reactor
        if runInThread is None:
            runInThread = defer.maybeDeferred
        self.hostname = hostname
        self._lookupTXT = lookupTXT
        self._lookupAddresses = lookupAddresses or (lambda name: _unavailable("addresses"))
        self._lookupMX = lookupMX or (lambda name: _unavailable("MX"))
        self._lookupPointer = lookupPointer
        self._reactor = reactor
        self._runInThread = runInThread
        self.timeout = timeout
        self.methods = tuple(methods)

    def check(self, clientAddress, helo, mailFrom, message):
        """
        Check one message.

        @param clientAddress: the SMTP client's IP address, text.
        @param helo: the name it gave in C{HELO}/C{EHLO}.
        @param mailFrom: the bare C{MAIL FROM} address, C{""} for the null
            sender.
        @param message: the message as received.
        @return: a L{Deferred} that never fails, firing with the whole
            C{Authentication-Results:} field, ending in CRLF, to prepend.
        """
        identity = spfIdentity(helo, mailFrom)
        spfWatch, dkimWatch = _LookupWatch(), _LookupWatch()
        pointer = self._lookupPointer
        spf = defer.succeed(None) if "spf" not in self.methods else self._bounded(
            spfResult(
                clientAddress,
                helo,
                mailFrom,
                spfWatch.watch("TXT", self._lookupTXT),
                spfWatch.watch("A/AAAA", self._lookupAddresses),
                spfWatch.watch("MX", self._lookupMX),
                None if pointer is None else spfWatch.watch("PTR", pointer),
            ),
            lambda: MethodResult("spf", TEMPERROR, spfWatch.timedOut(self.timeout), [identity]),
            lambda: MethodResult("spf", TEMPERROR, "internal error", [identity]),
        )
        dkimResults = defer.succeed([]) if "dkim" not in self.methods else self._bounded(
            checkDKIM(message, dkimWatch.watch("TXT", self._lookupTXT), self._runInThread, self.maxDKIMSize),
            lambda: [MethodResult("dkim", TEMPERROR, dkimWatch.timedOut(self.timeout))],
            lambda: [MethodResult("dkim", TEMPERROR, "internal error")],
        )
        both = defer.gatherResults([spf, dkimResults])
        both.addCallback(lambda results: [r for r in results[:1] if r is not None] + results[1])
        both.addCallback(self._logTemporaryErrors, clientAddress, mailFrom)
        both.addCallback(lambda results: formatHeader(self.hostname, results))
        return both

    def _logTemporaryErrors(self, results, clientAddress, mailFrom):
        """
        Say in one warning line why a message got C{temperror} results
        (DNS did not answer, most likely): the administrator sees a resolver
        in trouble without a line per lookup.
        """
        failed = [r for r in results if r.result == TEMPERROR]
        if failed:
            _log.warn(
                "inbound check of mail from <{sender}> (client {client}): {reasons}; {outcome}",
                sender=mailFrom,
                client=clientAddress,
                reasons="; ".join(dict.fromkeys(r.reason for r in failed)),
                outcome=", ".join(dict.fromkeys("%s result temperror" % (r.method.upper(),) for r in failed)),
            )
        return results

    def _bounded(self, coroutine, onTimeout, onError):
        """
        Run C{coroutine} for at most L{timeout} seconds.

        @return: a L{Deferred} firing with its result, or with C{onTimeout()}
            or C{onError()} (the error logged); never failing.
        """
        d = defer.ensureDeferred(coroutine)
        d.addTimeout(self.timeout, self._reactor, lambda result, timeout: onTimeout())

        def _ebInternal(failure):
            _log.failure("Authentication-Results check failed", failure, LogLevel.error)
            return onError()

        d.addErrback(_ebInternal)
        return d
