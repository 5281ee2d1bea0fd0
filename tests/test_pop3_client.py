"""
Tests of L{mdpy.pop3.client}: the client against mdpy's own POP3 server over
loopback (plaintext, STLS with a verified certificate, implicit TLS), and
against scripted servers that misbehave.  Every host name resolves to
127.0.0.1 (L{LoopbackReactor}), so certificates can name C{pop.test}.
"""

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.interfaces import IReactorPluggableNameResolver, IReactorTCP, IReactorTime
from twisted.internet.testing import SynchronousResolver
from zope.interface import implementer

from mdpy.pop3 import client
from mdpy.pop3.client import FetchError, POP3Account, RemoteMessage, connect
from mdpy.pop3.maildrop import uidlFor
from mdpy.pop3.server import POP3Factory, POP3Server
from mdpy.backends.memory import MemoryStore
from mdpy.testing import LoopbackTestCase, TempDirTestCase, memoryPortal, resultOf, track
from mdpy.tls import serverOptions

USER = "joe@example.test"
PASSWORD = "s3cr3t-pw"

DOTTED = (
    b"Subject: dots\r\n\r\n"
    b".leading dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"na\xefve 8-bit \xff\x80\r\n"
    b"last\r\n"
)
BIG = b"Subject: big\r\n\r\n" + b"".join(b"line %06d %s\r\n" % (i, b"x" * 60) for i in range(5000))
MESSAGES = [b"Subject: one\r\n\r\nfirst\r\n", DOTTED, BIG]


# --- certificates -------------------------------------------------------------


def _name(text):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _pem(certificate):
    return certificate.public_bytes(serialization.Encoding.PEM)


def makeCA(name):
    """
    @return: C{(key, certificate)} of a new certificate authority.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def makeServerCertificate(ca, hostname):
    """
    @return: C{(keyPEM, certificatePEM)} for C{hostname}, issued by C{ca}.
    """
    caKey, caCertificate = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(hostname))
        .issuer_name(caCertificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()), critical=False
        )
        .sign(caKey, hashes.SHA256())
    )
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return keyPEM, _pem(certificate)


_pki = {}


def pki():
    """
    @return: (made once) the PEMs of a trusted CA, of another CA, and of a
        key and certificate for C{pop.test} issued by the first.
    """
    if not _pki:
        ca, other = makeCA("mdpy test CA"), makeCA("someone else's CA")
        key, certificate = makeServerCertificate(ca, "pop.test")
        _pki.update(ca=_pem(ca[1]), other=_pem(other[1]), key=key, certificate=certificate)
    return _pki


# --- loopback plumbing ------------------------------------------------------------


@implementer(IReactorTCP, IReactorTime, IReactorPluggableNameResolver)
class LoopbackReactor:
    """
    The global reactor, with every host name at 127.0.0.1 and, if C{clock}
    is given, that clock for timeouts.  It remembers its connectors so a
    test can wait for its connections to close.
    """

    def __init__(self, clock=None):
        self.nameResolver = SynchronousResolver()
        self.clock = clock or reactor
        self.connectors = []

    def connectTCP(self, *args, **kwargs):
        connector = reactor.connectTCP(*args, **kwargs)
        self.connectors.append(connector)
        return connector

    def callLater(self, *args, **kwargs):
        return self.clock.callLater(*args, **kwargs)

    def seconds(self):
        return self.clock.seconds()

    def __getattr__(self, name):
        return getattr(reactor, name)


class RecordingPOP3Server(POP3Server):
    """
    mdpy's POP3 server, noting the verb of every line it reads (after TLS,
    the decrypted ones).
    """

    def lineReceived(self, line):
        self.factory.received.append(line.split(b" ", 1)[0].upper().decode("ascii", "replace"))
        return POP3Server.lineReceived(self, line)


class InjectingPOP3Server(RecordingPOP3Server):
    """
    Sends a forged CAPA answer in plaintext after C{+OK} to STLS.
    """

    def do_STLS(self, argument):
        self.send(b"+OK Begin TLS negotiation now.\r\n+OK\r\nX-INJECTED\r\nUSER\r\n.\r\n")
        self.startTLS()


class Scripted(protocol.Protocol):
    """
    A POP3 server reading lines and answering from its factory's C{replies}:
    C{{verb: bytes or callable(protocol, line)}}; unknown verbs get nothing.
    """

    def connectionMade(self):
        self.factory.open += 1
        self.factory.built += 1
        self.buffer = b""
        if self.factory.greeting:
            self.transport.write(self.factory.greeting)

    def connectionLost(self, reason):
        self.factory.open -= 1

    def dataReceived(self, data):
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            self.factory.received.append(line)
            reply = self.factory.replies.get(line.split(b" ", 1)[0].upper())
            if callable(reply):
                reply = reply(self, line)
            if reply:
                self.transport.write(reply)


class ScriptedFactory(protocol.ServerFactory):
    protocol = Scripted
    noisy = False

    def __init__(self, greeting=b"+OK scripted\r\n", **replies):
        self.greeting = greeting
        self.replies = dict(PLAIN)
        self.replies.update((verb.encode(), reply) for verb, reply in replies.items())
        self.received = []
        self.open = 0
        self.built = 0

    def verbs(self):
        return [line.split(b" ", 1)[0].upper() for line in self.received]


PLAIN = {
    b"CAPA": b"+OK\r\nUSER\r\nUIDL\r\n.\r\n",
    b"USER": b"+OK\r\n",
    b"PASS": b"+OK logged in\r\n",
    b"LIST": b"+OK\r\n1 10\r\n2 20\r\n.\r\n",
    b"UIDL": b"+OK\r\n1 aaa\r\n2 bbb\r\n.\r\n",
    b"DELE": b"+OK\r\n",
    b"QUIT": b"+OK bye\r\n",
}


def dropAfter(data):
    """
    @return: a reply that sends C{data} and closes the connection.
    """

    def reply(proto, line):
        proto.transport.write(data)
        proto.transport.loseConnection()

    return reply


class WriteOnly:
    """
    A binary file with nothing but C{write}, keeping the chunks.
    """

    def __init__(self):
        self.chunks = []

    def write(self, data):
        self.chunks.append(bytes(data))

    def value(self):
        return b"".join(self.chunks)


class FetchTestCase(LoopbackTestCase):
    def setUp(self):
        self.reactor = LoopbackReactor()
        self.addCleanup(
            lambda: defer.ensureDeferred(
                self.until(
                    lambda: all(c.state == "disconnected" for c in self.reactor.connectors),
                    "client connections to close",
                )
            )
        )

    def listen(self, factory, tlsOptions=None):
        count = (lambda: factory.connections) if isinstance(factory, POP3Factory) else (lambda: factory.open)
        return LoopbackTestCase.listen(self, factory, tlsOptions, count)

    def account(self, port, host="127.0.0.1", **kwargs):
        settings = dict(tls="none", username=USER, password=PASSWORD, timeout=30)
        settings.update(kwargs)
        return POP3Account(host, port, **settings)

    def scripted(self, greeting=b"+OK scripted\r\n", **replies):
        factory = ScriptedFactory(greeting, **replies)
        return factory, self.listen(factory)

    track = staticmethod(track)

    async def fails(self, d, *fragments):
        """
        Check that C{d} fails with a L{FetchError} whose text has every one of
        C{fragments}.  @return: the text.
        """
        try:
            await d
        except FetchError as e:
            text = str(e)
            self.assertNotIn("\n", text)
            for fragment in fragments:
                self.assertIn(fragment, text)
            return text
        self.fail("did not fail")

    def caFile(self, which="ca"):
        path = self.tempDir() + "/ca.pem"
        with open(path, "wb") as f:
            f.write(pki()[which])
        return path

    def mdpyServer(self, tls=False, implicit=False, plaintext=False, protocol=RecordingPOP3Server):
        """
        @return: C{(factory, port)}: mdpy's POP3 server for C{pop.test} with
            L{MESSAGES} in L{USER}'s INBOX (C{factory.store}).
        """
        options = None
        if tls or implicit:
            directory = self.tempDir()
            with open(directory + "/key.pem", "wb") as f:
                f.write(pki()["key"])
            with open(directory + "/cert.pem", "wb") as f:
                f.write(pki()["certificate"])
            options = serverOptions(directory + "/cert.pem", directory + "/key.pem")
        store = MemoryStore()
        store.createAccount(USER)
        for data in MESSAGES:
            store.deliver([(USER, "INBOX", [data])])
        factory = POP3Factory(
            "pop.test",
            store,
            allowPlaintext=plaintext,
            portal=memoryPortal(**{USER: PASSWORD}),
            tlsOptions=options,
            implicitTLS=implicit,
        )
        factory.protocol = protocol
        factory.received = []
        return factory, self.listen(factory, options if implicit else None)


def inbox(factory):
    return [resultOf(m.read()) for m in factory.store.openMailbox(USER).messages()]


# --- against mdpy's own server ------------------------------------------------------


class OwnServerTests(FetchTestCase):
    async def test_listingAndRetrieve(self):
        factory, port = self.mdpyServer(plaintext=True)
        session = await connect(self.account(port), self.reactor)
        self.assertIn("UIDL", session.capabilities)
        listing = await session.listing()
        stored = factory.store.openMailbox(USER).messages()
        self.assertEqual([m.number for m in listing], [1, 2, 3])
        self.assertEqual([m.size for m in listing], [len(data) for data in MESSAGES])
        self.assertEqual([m.uid for m in listing], [uidlFor(m).decode() for m in stored])
        for number, data in ((2, DOTTED), (3, BIG)):
            out = WriteOnly()
            octets = await session.retrieve(number, out, maxSize=len(data))
            self.assertEqual(out.value(), data)
            self.assertEqual(octets, len(data))
        # BIG (about 400 KB) arrived in chunks of at most client.CHUNK (plus a line).
        self.assertGreater(len(out.chunks), 3)
        self.assertLessEqual(max(map(len, out.chunks)), client.CHUNK + 200)
        await session.quit()
        await session.whenClosed()
        self.assertEqual(inbox(factory), MESSAGES)

    async def test_deleteThenQuitRemoves(self):
        factory, port = self.mdpyServer(plaintext=True)
        session = await connect(self.account(port), self.reactor)
        await session.delete(1)
        await session.delete(3)
        await session.quit()
        self.assertEqual(inbox(factory), [DOTTED])
        await self.fails(session.listing(), "session has ended")

    async def test_abortKeepsMessages(self):
        factory, port = self.mdpyServer(plaintext=True)
        session = await connect(self.account(port), self.reactor)
        await session.delete(1)
        pending = session.listing()
        session.abort()
        await self.fails(pending, "aborted")
        await session.whenClosed()
        await self.until(lambda: not factory.connections)
        self.assertEqual(inbox(factory), MESSAGES)
        await self.fails(session.delete(2), "aborted")

    async def test_refusedRetrieveLeavesSessionUsable(self):
        factory, port = self.mdpyServer(plaintext=True)
        session = await connect(self.account(port), self.reactor)
        await self.fails(session.retrieve(9, WriteOnly()), "RETR 9 refused: -ERR")
        self.assertEqual(len(await session.listing()), 3)
        await session.quit()

    async def test_stlsWithVerifiedCertificate(self):
        factory, port = self.mdpyServer(tls=True)
        account = self.account(port, host="pop.test", tls="starttls", caFile=self.caFile())
        session = await connect(account, self.reactor)
        # The CAPA kept is the one over TLS: USER is offered only there.
        self.assertIn("USER", session.capabilities)
        self.assertNotIn("STLS", session.capabilities)
        self.assertEqual(len(await session.listing()), 3)
        await session.quit()
        self.assertEqual(factory.received[:5], ["CAPA", "STLS", "CAPA", "USER", "PASS"])

    async def test_stlsWrongNameOrUntrustedNeverSendsCredentials(self):
        for host, ca, verify in (("other.test", "ca", True), ("pop.test", "other", True), ("pop.test", None, True)):
            factory, port = self.mdpyServer(tls=True)
            caFile = self.caFile(ca) if ca else None
            account = self.account(port, host=host, tls="starttls", caFile=caFile, verify=verify)
            await self.fails(connect(account, self.reactor), "TLS handshake failed")
            await self.until(lambda: not factory.connections)
            self.assertEqual(factory.received, ["CAPA", "STLS"])

    async def test_unverifiedWhenConfigured(self):
        factory, port = self.mdpyServer(tls=True)
        account = self.account(port, host="other.test", tls="starttls", caFile=self.caFile("other"), verify=False)
        session = await connect(account, self.reactor)
        await session.quit()

    async def test_implicitTLS(self):
        factory, port = self.mdpyServer(implicit=True)
        account = self.account(port, host="pop.test", tls="implicit", caFile=self.caFile())
        session = await connect(account, self.reactor)
        self.assertEqual([m.number for m in await session.listing()], [1, 2, 3])
        out = WriteOnly()
        await session.retrieve(2, out)
        self.assertEqual(out.value(), DOTTED)
        await session.quit()
        self.assertEqual(factory.received[:3], ["CAPA", "USER", "PASS"])

        untrusted = self.account(port, host="pop.test", tls="implicit", caFile=self.caFile("other"))
        await self.fails(connect(untrusted, self.reactor), "TLS handshake failed")
        self.assertEqual(factory.received[3:], ["LIST", "UIDL", "RETR", "QUIT"])

    async def test_responseInjectedAfterSTLSIsDiscarded(self):
        factory, port = self.mdpyServer(tls=True, protocol=InjectingPOP3Server)
        account = self.account(port, host="pop.test", tls="starttls", caFile=self.caFile())
        session = await connect(account, self.reactor)
        self.assertNotIn("X-INJECTED", session.capabilities)
        self.assertIn("USER", session.capabilities)
        await session.quit()


# --- against scripted servers ---------------------------------------------------------


class ScriptedServerTests(FetchTestCase):
    async def test_noSTLSMeansNoCredentials(self):
        for capa in (PLAIN[b"CAPA"], b"-ERR no CAPA here\r\n"):
            factory, port = self.scripted(CAPA=capa)
            account = self.account(port, tls="starttls")
            text = await self.fails(connect(account, self.reactor), "server offers no STLS; not logging in")
            self.assertTrue(text.startswith("127.0.0.1:%d: " % (port,)))
            await self.until(lambda: not factory.open)
            self.assertEqual(factory.verbs(), [b"CAPA"])

    async def test_refusedSTLSMeansNoCredentials(self):
        factory, port = self.scripted(CAPA=b"+OK\r\nSTLS\r\nUSER\r\n.\r\n", STLS=b"-ERR not today\r\n")
        await self.fails(connect(self.account(port, tls="starttls"), self.reactor), "STLS refused", "not today")
        await self.until(lambda: not factory.open)
        self.assertEqual(factory.verbs(), [b"CAPA", b"STLS"])

    async def test_wrongPassword(self):
        factory, port = self.scripted(PASS=b"-ERR [AUTH] bad password %s\r\n" % (PASSWORD.encode(),))
        text = await self.fails(connect(self.account(port), self.reactor), "authentication failed", "[AUTH]")
        self.assertNotIn(PASSWORD, text)
        await self.until(lambda: not factory.open)
        self.assertEqual(factory.verbs(), [b"CAPA", b"USER", b"PASS"])

    async def test_apopDigest(self):
        # RFC 1939 section 7's example.
        factory, port = self.scripted(
            b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n", APOP=b"+OK maildrop has 2\r\n"
        )
        account = self.account(port, username="mrose", password="tanstaaf", apop=True)
        session = await connect(account, self.reactor)
        self.assertEqual(factory.received[1], b"APOP mrose c4c9334bac560ecc979e58001b3e22fb")
        self.assertEqual(
            hashlib.md5(b"<1896.697170952@dbc.mtview.ca.us>tanstaaf").hexdigest(),
            "c4c9334bac560ecc979e58001b3e22fb",
        )
        await session.quit()
        self.assertNotIn(b"USER", factory.verbs())

    async def test_apopWithoutTimestampAndUserPassWithOne(self):
        factory, port = self.scripted()
        await self.fails(connect(self.account(port, apop=True), self.reactor), "no timestamp")
        await self.until(lambda: not factory.open)
        self.assertEqual(factory.verbs(), [b"CAPA"])
        # Unlike Twisted's login(), a timestamp alone does not mean APOP.
        factory, port = self.scripted(b"+OK ready <1.2@host>\r\n")
        session = await connect(self.account(port), self.reactor)
        await session.quit()
        self.assertEqual(factory.verbs(), [b"CAPA", b"USER", b"PASS", b"QUIT"])

    async def test_badGreetings(self):
        for greeting, fragment in (
            (b"hello there\r\n", "malformed greeting"),
            (b"-ERR go away\r\n", "refused the session: -ERR go away"),
            (b"+OK " + b"x" * 600 * 1024 + b"\r\n", "more than 4096 octets"),
            (b"+OK " + b"x" * 600 * 1024, "more than 4096 octets"),
        ):
            factory, port = self.scripted(greeting)
            await self.fails(connect(self.account(port), self.reactor), fragment)
            self.assertEqual(factory.received, [])

    async def test_serverWithoutUIDL(self):
        factory, port = self.scripted(UIDL=b"-ERR what is that\r\n")
        session = await connect(self.account(port), self.reactor)
        listing = await session.listing()
        self.assertEqual([(m.number, m.size, m.uid) for m in listing], [(1, 10, None), (2, 20, None)])
        await session.quit()

    async def test_malformedListings(self):
        bad = [
            ("LIST", b"1", "malformed LIST line"),
            ("LIST", b"a 10", "malformed LIST line"),
            ("LIST", b"1 -5", "malformed LIST line"),
            ("LIST", b"1  10", "malformed LIST line"),
            ("LIST", b"0 10", "malformed LIST line"),
            ("LIST", b"1 10\r\n1 11", "LIST gives message 1 twice"),
            ("UIDL", b"1", "malformed UIDL line"),
            ("UIDL", b"x abc", "malformed UIDL line"),
            ("UIDL", b"1 uid with space", "malformed UIDL line"),
            ("UIDL", b"1 " + b"u" * 71, "malformed UIDL line"),
            ("UIDL", b"1 caf\xe9", "malformed UIDL line"),
            ("UIDL", b"1 a\x7f", "malformed UIDL line"),
            ("UIDL", b"3 ccc", "message 3, which LIST does not"),
            ("UIDL", b"1 aaa\r\n1 aab", "message 1 twice"),
            ("UIDL", b"1 aaa\r\n2 aaa", "the same unique-id aaa"),
            ("UIDL", b"1 aaa", "no unique-id for message 2"),
        ]
        for verb, lines, fragment in bad:
            replies = {"LIST": b"+OK\r\n1 10\r\n2 20\r\n.\r\n", "UIDL": b"+OK\r\n1 aaa\r\n2 bbb\r\n.\r\n"}
            replies[verb] = b"+OK\r\n" + lines + b"\r\n.\r\n"
            factory, port = self.scripted(**replies)
            session = await connect(self.account(port), self.reactor)
            await self.fails(session.listing(), fragment)
            session.abort()
        # The longest unique-id RFC 1939 allows is fine.
        factory, port = self.scripted(UIDL=b"+OK\r\n1 " + b"u" * 70 + b"\r\n2 !~\r\n.\r\n")
        session = await connect(self.account(port), self.reactor)
        self.assertEqual([m.uid for m in await session.listing()], ["u" * 70, "!~"])
        await session.quit()

    async def test_maxSizeExceeded(self):
        body = b"".join(b"line %d of a message LIST said was 10 octets\r\n" % (i,) for i in range(200))
        factory, port = self.scripted(RETR=b"+OK\r\n" + body + b".\r\n")
        session = await connect(self.account(port), self.reactor)
        out = WriteOnly()
        await self.fails(session.retrieve(1, out, maxSize=100), "larger than 100 octets")
        self.assertLessEqual(len(out.value()), 100)
        await self.until(lambda: not factory.open)
        await self.fails(session.delete(1), "larger than 100 octets")
        self.assertNotIn(b"DELE", factory.verbs())

    async def test_connectionLostMidRetrieve(self):
        factory, port = self.scripted(RETR=dropAfter(b"+OK\r\nSubject: half\r\n\r\nsome of it\r\n"))
        session = await connect(self.account(port), self.reactor)
        await self.fails(session.retrieve(1, WriteOnly()), "connection lost", "RETR")
        await self.fails(session.quit())

    async def test_longLinesInRetrieve(self):
        long = b"y" * 60000
        factory, port = self.scripted(
            RETR=lambda proto, line: (
                b"+OK\r\n" + long + b"\r\n.\r\n" if line == b"RETR 1" else b"+OK\r\n" + b"z" * 600 * 1024 + b"\r\n.\r\n"
            )
        )
        session = await connect(self.account(port), self.reactor)
        out = WriteOnly()
        self.assertEqual(await session.retrieve(1, out), len(long) + 2)
        self.assertEqual(out.value(), long + b"\r\n")
        await self.fails(session.retrieve(2, WriteOnly()), "more than 65536 octets")
        await self.until(lambda: not factory.open)

    async def test_unexpectedLineEndsSession(self):
        factory, port = self.scripted(PASS=b"+OK\r\n+OK surprise\r\n")
        session = await connect(self.account(port), self.reactor)
        await session.whenClosed()
        await self.fails(session.listing(), "unexpected line")

    async def test_credentialsWithLineBreaks(self):
        factory, port = self.scripted()
        await self.fails(connect(self.account(port, password="a\r\nDELE 1"), self.reactor), "line break")
        self.assertEqual(factory.built, 0)


class TimeoutTests(FetchTestCase):
    def setUp(self):
        FetchTestCase.setUp(self)
        self.clock = task.Clock()
        self.reactor = LoopbackReactor(self.clock)

    async def test_silentServer(self):
        factory, port = self.scripted(greeting=None)
        d = connect(self.account(port), self.reactor)
        done = self.track(d)
        await self.until(lambda: factory.built)
        await task.deferLater(reactor, 0.05, lambda: None)
        self.clock.advance(29)
        self.assertEqual(done, [])
        self.clock.advance(1)
        await self.fails(d, "no reply to greeting within 30 seconds")

    async def test_silentAfterSTLS(self):
        # fetchmail CVE-2011-1947: +OK to STLS, then nothing.
        factory, port = self.scripted(CAPA=b"+OK\r\nSTLS\r\n.\r\n", STLS=b"+OK go ahead\r\n")
        d = connect(self.account(port, tls="starttls"), self.reactor)
        done = self.track(d)
        await self.until(lambda: b"STLS" in factory.verbs())
        await task.deferLater(reactor, 0.05, lambda: None)
        self.clock.advance(29)
        self.assertEqual(done, [])
        self.clock.advance(1)
        await self.fails(d, "no reply to CAPA within 30 seconds")
        self.assertNotIn(b"USER", factory.verbs())

    async def test_idleSessionHasNoTimerButCommandsDo(self):
        factory, port = self.scripted(RETR=b"+OK\r\nSubject: stuck\r\n")
        session = await connect(self.account(port), self.reactor)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        await task.deferLater(reactor, 0.01, lambda: None)  # out of the login's call stack
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertEqual(len(await session.listing()), 2)
        d = session.retrieve(1, WriteOnly())
        done = self.track(d)
        await self.until(lambda: b"RETR" in factory.verbs())
        await task.deferLater(reactor, 0.05, lambda: None)
        self.clock.advance(29)
        self.assertEqual(done, [])
        self.clock.advance(1)
        await self.fails(d, "no reply to RETR within 30 seconds")


class AccountTests(TempDirTestCase):
    def test_settings(self):
        account = POP3Account("pop.isp.test", password="hidden")
        self.assertEqual((account.port, account.tls, account.verify, account.timeout), (110, "starttls", True, 60))
        self.assertNotIn("hidden", repr(account))
        self.assertEqual(POP3Account("::1", 995).label, "[::1]:995")
        self.assertRaises(ValueError, POP3Account, "h", tls="ssl")
        self.assertRaises(ValueError, POP3Account, "h", timeout=0)
        self.assertIn("uid='a'", repr(RemoteMessage(1, 2, "a")))

    def test_unreadableCAFile(self):
        account = POP3Account("pop.test", caFile=self.tempDir() + "/missing.pem", username="u")
        failure = self.failureResultOf(connect(account, LoopbackReactor()), FetchError)
        self.assertIn("cannot read ca_file", str(failure.value))
