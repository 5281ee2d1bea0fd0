# -*- test-case-name: tests.test_tls -*-
"""
The one builder of TLS contexts, and the self-signed certificate made on
first start when none is configured.
"""

import datetime
import ipaddress
import os

from twisted.internet import endpoints, ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from mdpy.durable import writeFileAtomically
from mdpy.logs import Logger

log = Logger()

SELF_SIGNED_DAYS = 365

# How a client connection to another server gets TLS (the C{tls} keys of
# smarthosts, DomainPOP, MultiPOP and ODMR): not at all, by STARTTLS or STLS
# after the greeting (RFC 3207, RFC 2595), or from the first octet (RFC 8314).
TLS_MODES = ("none", "starttls", "implicit")


def ensureSelfSigned(directory, hostname):
    """
    Make C{directory/cert.pem} and C{key.pem} for C{hostname} (also valid for
    C{localhost} and C{127.0.0.1}) unless they exist.

    @return: C{(certificatePath, keyPath, created)}.
    """
    certPath = os.path.join(directory, "cert.pem")
    keyPath = os.path.join(directory, "key.pem")
    if os.path.exists(certPath) and os.path.exists(keyPath):
        return certPath, keyPath, False
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = {hostname, "localhost"}
    alternatives = [x509.DNSName(n) for n in sorted(names)]
    alternatives.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    keyBytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    writeFileAtomically(keyPath, keyBytes, 0o600)
    writeFileAtomically(certPath, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return certPath, keyPath, True


def loadCertificates(pem):
    """
    @return: every certificate in the PEM text C{pem}, in order, as
        L{twisted.internet.ssl.Certificate}s.
    """
    end = b"-----END CERTIFICATE-----"
    return [
        ssl.Certificate.loadPEM(block + end)
        for block in pem.split(end)
        if b"-----BEGIN CERTIFICATE-----" in block
    ]


# TLS 1.2 suites with forward secrecy and AEAD only (Mozilla's
# "intermediate" list, which Dovecot's documentation points to); TLS 1.3
# suites are all AEAD.
AEAD_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)


def serverOptions(certificatePath, keyPath, opportunistic=False):
    """
    @param opportunistic: for port 25, where a sender whose handshake fails
        goes on in plaintext (RFC 7435): Twisted's broader default cipher
        list, better than none.  Otherwise TLS 1.2 offers only
        L{AEAD_CIPHERS}.
    @return: server TLS options (TLS 1.2 and later) for a PEM chain and key.
    """
    with open(certificatePath, "rb") as f:
        chainPEM = f.read()
    with open(keyPath, "rb") as f:
        keyPEM = f.read()
    extra = [certificate.original for certificate in loadCertificates(chainPEM)[1:]]
    private = ssl.PrivateCertificate.loadPEM(keyPEM + b"\n" + chainPEM)
    return ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        extraCertChain=extra or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        **({} if opportunistic else {"acceptableCiphers": ssl.AcceptableCiphers.fromOpenSSLCipherString(AEAD_CIPHERS)}),
    )


@implementer(IOpenSSLServerConnectionCreator)
class ReplaceableServerOptions:
    """
    Server TLS options whose certificate can be replaced while the server
    runs (a reload after the certificate files were renewed): each TLS
    session, implicit or by STARTTLS/STLS, starts with the options in force
    when its handshake begins; sessions under way keep theirs.

    @ivar options: the current options, from L{serverOptions}.
    """

    def __init__(self, options):
        self.options = options

    def serverConnectionForTLS(self, tlsProtocol):
        """
        See L{IOpenSSLServerConnectionCreator.serverConnectionForTLS}.
        """
        return self.options.serverConnectionForTLS(tlsProtocol)

    def getContext(self):
        """
        @return: the C{SSL.Context} of the current options, for callers of
            the older context-factory interface.
        """
        return self.options.getContext()


def verifyingClientOptions(hostname, caFile=None):
    """
    @return: client TLS options that verify the server's certificate and
        C{hostname} (service_identity) against the CA certificates in the PEM
        file C{caFile}, or the platform's trust store.
    @raise OSError: C{caFile} cannot be read.
    @raise ValueError: C{caFile} holds no certificate.
    """
    if not caFile:
        return ssl.optionsForClientTLS(hostname, trustRoot=ssl.platformTrust())
    with open(caFile, "rb") as f:
        certificates = loadCertificates(f.read())
    if not certificates:
        raise ValueError("no certificate in %s" % (caFile,))
    return ssl.optionsForClientTLS(hostname, trustRoot=ssl.trustRootFromCertificates(certificates))


def accountClientOptions(label, host, verify, caFile=None):
    """
    @return: the client TLS options of a configured account (a POP3 or ODMR
        server): verifying its certificate and C{host} against C{caFile} or
        the platform's trust store, or, with C{verify} off, checking nothing
        (and saying so in the log).
    @raise ValueError: C{caFile} cannot be read or holds no certificate;
        the message is one line for the administrator.
    """
    if not verify:
        log.warn("{label}: the server certificate is not verified", label=label)
        return ssl.CertificateOptions(verify=False)
    try:
        return verifyingClientOptions(host, caFile)
    except OSError as e:
        raise ValueError("cannot read ca_file %s: %s" % (caFile, e.strerror or e))


def clientEndpoint(reactor, host, port, timeout, tlsOptions=None):
    """
    @return: a client endpoint to C{host}: an IP address straight away, a
        name through name resolution; in TLS from the start when
        C{tlsOptions} is given.
    """
    args = (reactor, host, port)
    if isIPAddress(host):
        endpoint = endpoints.TCP4ClientEndpoint(*args, timeout=timeout)
    elif isIPv6Address(host):
        endpoint = endpoints.TCP6ClientEndpoint(*args, timeout=timeout)
    else:
        endpoint = endpoints.HostnameEndpoint(*args, timeout=timeout)
    if tlsOptions is not None:
        endpoint = endpoints.wrapClientTLS(tlsOptions, endpoint)
    return endpoint
