"""
Code the tests name in a configuration (C{[smtp] factory}, C{[smtp]
checks}), as a developer's package would hold it.
"""

from twisted.internet import defer
from zope.interface import implementer

from mdpy.checks import DATA, MAIL, Verdict
from mdpy.interfaces import ICheck
from mdpy.smtp.server import SMTPFactory, SMTPServer


class XSMTPServer(SMTPServer):
    """
    The SMTP server with one more command, C{XHELLO}, offered in EHLO.
    """

    def extensions(self):
        return SMTPServer.extensions(self) + ["XHELLO"]

    def do_XHELLO(self, argument):
        self.reply((250, "2.0.0", "hello %s from %s" % (argument.decode("ascii", "replace") or "you",
                                                         type(self).__name__)))


class XSMTPServerFactory(SMTPFactory):
    protocol = XSMTPServer


@implementer(ICheck)
class RejectSubjectCheck:
    """
    Refuses, at the end of the message, mail whose subject says
    C{reject me}; adds C{X-Checked: yes} to the rest.
    """

    name = "reject-subject"
    stage = DATA

    def check(self, envelope, recipient=None, message=None):
        if b"\nSubject: reject me" in b"\n" + message:
            return defer.succeed(Verdict.refuse("Refused by the subject check:\r\nthe subject says so"))
        return defer.succeed(Verdict.addHeaders(b"X-Checked: yes\r\n"))


@implementer(ICheck)
class RejectSenderCheck:
    """
    Refuses the sender C{spammer@remote.test} for now, when it is given.
    """

    name = "reject-sender"
    stage = MAIL

    def check(self, envelope, recipient=None, message=None):
        if envelope.sender == "spammer@remote.test":
            return defer.succeed(Verdict.refuse("Greylisted, try again later", temporary=True))
        return defer.succeed(Verdict.accept())


class NotAFactory:
    pass
