"""
New commands in the SMTP and IMAP sessions.

C{XSTATS} (SMTP) says how many messages this session delivered, counted by
the C{messageAccepted} hook; C{XVERSION} (IMAP) names the server's version.
Name the factories in the configuration: C{[smtp] factory =
mypackage.command:StatsSMTPFactory}, C{[imap] factory =
mypackage.command:VersionIMAP4Factory}.
"""

import mdpy
from mdpy.imap.server import IMAP4Factory, IMAP4Server
from mdpy.smtp.server import SMTPFactory, SMTPServer


class StatsSMTPServer(SMTPServer):
    accepted = 0

    def extensions(self):
        return SMTPServer.extensions(self) + ["XSTATS"]

    def messageAccepted(self, envelope, recipients, size):
        SMTPServer.messageAccepted(self, envelope, recipients, size)
        self.accepted += 1

    def do_XSTATS(self, argument):
        self.reply((250, "2.0.0", "%d message(s) delivered in this session" % (self.accepted,)))


class StatsSMTPFactory(SMTPFactory):
    protocol = StatsSMTPServer


class VersionIMAP4Server(IMAP4Server):
    commands = {state: verbs | {"XVERSION"} for state, verbs in IMAP4Server.commands.items()}

    def capabilities(self):
        return IMAP4Server.capabilities(self) + b" XVERSION"

    def do_XVERSION(self, tag, args):
        self.untagged(b"XVERSION mdpy " + mdpy.__version__.encode("ascii"))
        return self.complete(tag, b"OK", b"XVERSION completed.")


class VersionIMAP4Factory(IMAP4Factory):
    protocol = VersionIMAP4Server
