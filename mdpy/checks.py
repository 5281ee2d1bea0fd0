# -*- test-case-name: tests.test_checks -*-
"""
Checks of incoming mail (L{mdpy.interfaces.ICheck}), their verdicts, and
the built-in ones.

C{[smtp] checks} names them in the order they run: C{spf} and C{dkim}
(L{AuthenticationResultsCheck}: one C{Authentication-Results} field, RFC
8601, holding both results; nothing is refused), and any
C{package.module:Class}, called with no arguments, whose instances provide
L{mdpy.interfaces.ICheck}:

    @implementer(ICheck)
    class RejectSubject:
        name = "reject-subject"
        stage = DATA

        def check(self, envelope, recipient=None, message=None):
            if b"Subject: buy now" in message:
                return defer.succeed(Verdict.refuse("no, thank you"))
            return defer.succeed(Verdict.accept())

The delivery pipeline runs them (L{runChecks}); every protocol that hands it
mail (SMTP, the ODMR customer, DomainPOP, MultiPOP) gets them so.
"""

from twisted.internet import defer
from zope.interface import implementer

from mdpy import errors
from mdpy.interfaces import ICheck

MAIL = "mail"
RCPT = "rcpt"
DATA = "data"
STAGES = (MAIL, RCPT, DATA)

# The checks C{[smtp] checks} names without a module: the methods of
# L{AuthenticationResultsCheck}.
BUILT_IN = ("spf", "dkim")


class Verdict:
    """
    What a check says of a message.

    @ivar error: the protocol-neutral error refusing it
        (L{errors.CheckRefused}, L{errors.CheckRefusedForNow} or any
        L{errors.MailError}), or L{None} to accept it.
    @ivar headers: header fields to prepend to its stored copies, each
        ending in CRLF.
    @ivar authservIds: the C{authserv-id}s of the C{Authentication-Results}
        fields in C{headers}: fields claiming them that came with the
        message are forged and removed (RFC 8601 section 5).
    """

    def __init__(self, error=None, headers=b"", authservIds=()):
        self.error = error
        self.headers = headers
        self.authservIds = tuple(authservIds)

    @classmethod
    def accept(cls):
        return cls()

    @classmethod
    def refuse(cls, text, temporary=False):
        """
        @param text: one line for the client (the SMTP reply's text).
        @param temporary: whether trying again later may succeed (C{451}
            rather than C{550} in SMTP).
        """
        return cls(error=(errors.CheckRefusedForNow if temporary else errors.CheckRefused)(text))

    @classmethod
    def addHeaders(cls, headers, authservId=None):
        return cls(headers=headers, authservIds=() if authservId is None else (authservId,))

    def __repr__(self):
        return "<Verdict error=%r headers=%r>" % (self.error, self.headers)


def runChecks(checks, stage, envelope, recipient=None, message=None):
    """
    Run the checks of C{stage}, in order, until one refuses.

    @param checks: L{mdpy.interfaces.ICheck} providers; those of other
        stages are passed over.
    @return: a L{Deferred} firing with one L{Verdict} holding the headers of
        them all, or failing with the error of the first that refused.
    """
    return defer.ensureDeferred(_runChecks(checks, stage, envelope, recipient, message))


async def _runChecks(checks, stage, envelope, recipient, message):
    headers, authservIds = [], []
    for check in checks:
        if check.stage != stage:
            continue
        verdict = await defer.maybeDeferred(check.check, envelope, recipient, message)
        if verdict.error is not None:
            raise verdict.error
        headers.append(verdict.headers)
        authservIds.extend(verdict.authservIds)
    return Verdict(headers=b"".join(headers), authservIds=authservIds)


@implementer(ICheck)
class AuthenticationResultsCheck:
    """
    The built-in checks C{spf} and C{dkim}: an
    L{mdpy.mailauth.authresults.InboundChecker} run at the end of each
    message from an unauthenticated client, writing one
    C{Authentication-Results} field.  Nothing is refused.
    """

    stage = DATA

    def __init__(self, checker):
        """
        @param checker: an L{mdpy.mailauth.authresults.InboundChecker} (or
            anything with its C{hostname} and C{check}).
        """
        self.checker = checker
        self.name = "+".join(getattr(checker, "methods", BUILT_IN))

    def check(self, envelope, recipient=None, message=None):
        """
        See L{ICheck.check}.
        """
        if envelope.authenticatedAs is not None or envelope.trusted or envelope.clientAddress is None:
            return defer.succeed(Verdict.accept())
        d = self.checker.check(envelope.clientAddress, envelope.helo, envelope.sender, message)
        return d.addCallback(Verdict.addHeaders, self.checker.hostname)
