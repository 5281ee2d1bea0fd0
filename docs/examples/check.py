"""
A check of incoming mail: messages without a C{Subject} field are refused
at the end of DATA; the others get an C{X-Subject-Check} field.

Name it in the configuration with C{[smtp] checks = spf, dkim,
mypackage.checks:RequireSubject}.
"""

import os

from twisted.internet import defer, task
from zope.interface import implementer

from mdpy.checks import DATA, Verdict
from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.interfaces import ICheck
from mdpy.smtp.server import SMTPFactory
from mdpy.backends.memory import MemoryStore
from mdpy.testing import Transcript


@implementer(ICheck)
class RequireSubject:
    name = "require-subject"
    stage = DATA  # the message is there: its first octets are in `message`

    def check(self, envelope, recipient=None, message=None):
        head = message.partition(b"\r\n\r\n")[0]
        if not any(line.lower().startswith(b"subject:") for line in head.split(b"\r\n")):
            return defer.succeed(Verdict.refuse("A message needs a subject"))
        return defer.succeed(Verdict.addHeaders(b"X-Subject-Check: pass\r\n"))


def smtpSession(dataDir):
    """
    An SMTP session in memory over a pipeline running the check: the way to
    test a check without a socket.

    @return: a L{Transcript} after the greeting and EHLO.
    """
    directory = SQLiteDirectory(os.path.join(dataDir, "directory.sqlite"))
    directory.addDomain("example.test")
    directory.addUser("joe@example.test", "a password")
    pipeline = DeliveryPipeline(directory, MemoryStore(), spoolDir=dataDir,
                                checks=[RequireSubject()])
    factory = SMTPFactory("mx.example.test", pipeline, clock=task.Clock())
    t = Transcript(factory.buildProtocol(None))
    t.expect("220 *")
    t.send("EHLO client.example")
    t.lines()
    t.store = pipeline.store
    return t


def sendTwo(t):
    """
    One message without a subject (refused), one with (stored).
    """
    t.send("MAIL FROM:<ann@remote.example>", "RCPT TO:<joe@example.test>", "DATA")
    t.expect("250 *", "250 *", "354 *")
    t.sendRaw(b"From: ann@remote.example\r\n\r\nno subject\r\n.\r\n")
    t.expect("550 5.7.1 A message needs a subject")
    t.send("MAIL FROM:<ann@remote.example>", "RCPT TO:<joe@example.test>", "DATA")
    t.expect("250 *", "250 *", "354 *")
    t.sendRaw(b"Subject: hello\r\n\r\nwith a subject\r\n.\r\n")
    t.expect("250 2.0.0 *")
