# -*- test-case-name: tests.test_odmr_provider -*-
"""
The ODMR provider on port 366 (RFC 2645): a customer with no fixed address
logs in, asks with C{ATRN} for the mail held for its gateway domains, and the
roles reverse on the same connection: this server becomes the SMTP client
and delivers that mail, the customer answering as the SMTP server.

    C: EHLO customer.example            S: 250-host / 250-AUTH CRAM-MD5 / 250 ATRN
    C: AUTH CRAM-MD5 ...                S: 235
    C: ATRN example.org,example.com     S: 250 OK now reversing the connection
    C: 220 customer ready               S: EHLO host, MAIL, RCPT, DATA ..., QUIT

Invariants:
 - Before the turnaround only EHLO, AUTH, STARTTLS, ATRN and QUIT are
   accepted; anything else gets C{502} (RFC 2645 section 5.4).
 - CRAM-MD5 is always offered (fetchmail uses nothing else); PLAIN and LOGIN
   only over TLS, where a password may travel.  Failed logins are counted
   and delayed as on every other port.
 - ATRN answers C{530} before AUTH, C{501} for a malformed or over-long
   domain list, C{450} when the login may not release one of the domains,
   C{453} when nothing is held for them, and C{250} before reversing.
 - After the turnaround the held mail goes out through
   L{mdpy.smtp.client.ESMTPClient} over the same transport (TLS kept): a
   recipient is marked sent only on the customer's 2xx; a 4xx, a timeout or
   a dropped connection leaves it held for the next ATRN; a 5xx bounces it
   (L{mdpy.delivery.relay.HeldRelease}).
"""

from twisted.internet.protocol import connectionDone

from mdpy.delivery.relay import Route
from mdpy.errors import InvalidInput
from mdpy.odmr.gateway import parseDomainList
from mdpy.smtp import codes
from mdpy.smtp.client import ESMTPClient
from mdpy.smtp.server import SMTPFactory, SMTPServer

C250Reversing = (250, None, "OK now reversing the connection")
C450Refused = (450, None, "ATRN request refused")
C451NotNow = (451, None, "Unable to process ATRN request now")
C453NoMail = (453, None, "You have no mail")
C501BadDomains = (501, "5.5.4", "Syntax: ATRN [domain[,domain...]]")
C530AuthRequired = (530, "5.7.0", "Authentication required")
C502OnlyODMR = (502, "5.5.1", "Command not implemented: only EHLO, AUTH, STARTTLS, ATRN and QUIT")

_COMMANDS = frozenset(["EHLO", "AUTH", "STARTTLS", "ATRN", "QUIT"])


class ODMRFactory(SMTPFactory):
    """
    Builds L{ODMRServer}s (its C{protocol}); a subclass named by C{[odmr]
    factory} may set another L{ODMRServer} subclass, and C{clientProtocol}
    to change the SMTP client of the reversed connection.

    @ivar gateways: the L{mdpy.odmr.gateway.Gateways}.
    @ivar relay: the L{mdpy.delivery.relay.Relay} holding their mail.
    @ivar maxDomains: the most domains one ATRN may name.
    @ivar clientTimeout: seconds to wait for each reply of the customer once
        the connection is reversed.
    @ivar clientProtocol: the class of that client: L{ESMTPClient}, or a
        subclass taking the same arguments.
    """

    clientProtocol = ESMTPClient

    def __init__(self, hostname, gateways, relay, maxDomains=100, clientTimeout=300, **kwargs):
        SMTPFactory.__init__(self, hostname, None, **kwargs)
        self.gateways = gateways
        self.relay = relay
        self.maxDomains = maxDomains
        self.clientTimeout = clientTimeout


class ODMRServer(SMTPServer):
    """
    One ODMR session: the provider's side before the turnaround, then an
    L{ESMTPClient} on the same transport.

    @ivar client: the L{ESMTPClient} after the turnaround, else L{None}.
    @cvar commands: the verbs accepted before the turnaround (RFC 2645
        section 5.4); a subclass adding a command adds its verb here.
    """

    service = "odmr"
    commands = _COMMANDS
    plaintextMechanisms = (b"CRAM-MD5",)

    def __init__(self):
        SMTPServer.__init__(self)
        self.client = None
        self._release = None

    def greet(self):
        self.send(b"220 %s ESMTP mdpy on-demand mail relay ready\r\n" % (self.factory.hostname.encode("idna"),))

    def extensions(self):
        offered = ["ENHANCEDSTATUSCODES"]
        if self.factory.tlsOptions is not None and not self.tls:
            offered.append("STARTTLS")
        if self.factory.portal is not None and self.authenticatedAs is None:
            offered.append("AUTH " + " ".join(m.decode() for m in self._mechanismsNow()))
        offered.append("ATRN")
        return offered

    def _mechanismsNow(self):
        return self.mechanisms if self.tls else self.plaintextMechanisms

    def lineReceived(self, line):
        verb = line.partition(b" ")[0]
        if verb.decode("ascii", "replace").upper() not in self.commands:
            self.log.debug("odmr: refused command from {ip}", ip=self._ip)
            self.reply(C502OnlyODMR)
            return None
        return SMTPServer.lineReceived(self, line)

    def do_ATRN(self, argument):
        if self.helo is None or not self.esmtp:
            self.reply(codes.C503NeedHelo)
            return
        if self.authenticatedAs is None:
            self.reply(C530AuthRequired)
            return
        identity = self.authenticatedAs
        releasable = self.factory.gateways.releasableBy(identity, self._ip)
        domains = releasable
        if argument:
            try:
                domains = parseDomainList(argument, self.factory.maxDomains)
            except InvalidInput as e:
                self.log.info("odmr: bad ATRN from {user} at {ip}: {why}", user=identity, ip=self._ip, why=e)
                self.reply(C501BadDomains)
                return
        refused = [d for d in domains if d not in releasable]
        if refused or not domains:
            self.log.warn(
                "odmr: ATRN of {domains} refused for {user} from {ip}",
                domains=",".join(refused) or "(none)",
                user=identity,
                ip=self._ip,
            )
            self.reply(C450Refused)
            return
        relay = self.factory.relay
        if relay is None or not relay.running:
            self.reply(C451NotNow)
            return
        if not relay.hasHeld(domains):
            self.log.info("odmr: no mail for {domains} ({user} from {ip})",
                          domains=",".join(domains), user=identity, ip=self._ip)
            self.reply(C453NoMail)
            return
        self.reply(C250Reversing)
        self._turnaround(identity, domains)

    def _turnaround(self, identity, domains):
        """
        Become the SMTP client of the customer on this transport.
        """
        self.log.info(
            "odmr: {user} from {ip} releases {domains}; reversing the connection",
            user=identity,
            ip=self._ip,
            domains=",".join(domains),
        )
        self.setTimeout(None)
        pipelined = self.takeBuffered()
        release = self._release = self.factory.relay.release(
            # The customer's address names it in logs and as the Remote-MTA
            # of DSNs (RFC 3464 wants a host name there, not a login).
            domains, Route(self._ip, self._ip, self.transport.getPeer().port)
        )
        client = self.client = self.factory.clientProtocol(
            self.factory.hostname,
            release.nextMessage,
            release.messageDone,
            clock=self.factory.clock,
            timeout=self.factory.clientTimeout,
        )
        client.finished.addCallback(self._reversedOver, identity, domains)
        client.makeConnection(self.transport)
        if pipelined:
            client.dataReceived(pipelined)

    def _reversedOver(self, result, identity, domains):
        release, self._release = self._release, None
        release.close()
        error = "" if result.error is None else "; " + result.error.detail
        self.log.info(
            "odmr: {user} from {ip}: {domains} released, messages={n}{error}",
            user=identity,
            ip=self._ip,
            n=release.messages,
            domains=",".join(domains),
            error=error,
        )
        return result

    def dataReceived(self, data):
        if self.client is not None:
            self.client.dataReceived(data)
        else:
            SMTPServer.dataReceived(self, data)

    def connectionLost(self, reason=connectionDone):
        SMTPServer.connectionLost(self, reason)
        if self.client is not None:
            self.client.connectionLost(reason or connectionDone)


ODMRFactory.protocol = ODMRServer
