# -*- test-case-name: tests.test_dkim -*-
"""
DKIM signing of outbound mail, one key per sending domain (RFC 6376).

Keys live in one directory (C{data_dir/dkim}), two files per domain, the
domain in lowercase IDNA (A-label) form::

    dkim/
      example.com.key        the RSA private key, PEM (PKCS#1), mode 0600
      example.com.selector   the selector the key is published under, one line

A domain whose C{.key} file exists is signed for: L{DKIMKeys.generate}
(C{mdpy dkim generate DOMAIN}) enables signing, and L{DKIMKeys.disable}
(C{mdpy dkim disable DOMAIN}) renames the key to C{.key.disabled}, which
stops it.  The public half is published as a TXT record at
C{<selector>._domainkey.<domain>} (RFC 6376 section 3.6.2.1).

Invariants: L{DKIMKeys.generate} writes the selector file before the key
file, each durably and atomically, and L{DKIMKeys.signerFor} re-reads both
only when the key file's identity changes; a reader that sees the new key
therefore sees its selector too.
"""

import base64
import os

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mdpy.address import checkDomain
from mdpy.durable import fsyncDirectory, writeFileAtomically
from mdpy.errors import InvalidInput

DEFAULT_SELECTOR = "mdpy"
DEFAULT_BITS = 2048

# RFC 8301 section 3.2: signers MUST use at least 1024 bits, SHOULD use 2048;
# keys past 4096 bits do not fit the TXT records resolvers hand out.
MIN_BITS = 1024
MAX_BITS = 4096

# RFC 6376 section 5.4.1: the fields a signature SHOULD cover, where present.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"reply-to",
    b"in-reply-to",
    b"references",
)


def normaliseSigningDomain(domain):
    """
    @return: C{domain} lowercased in IDNA A-label form, without a trailing
        dot: the form of C{d=} (RFC 6376 section 3.5) and of the file names.
    @raise InvalidInput: it is not a domain name.
    """
    name = domain.strip().rstrip(".")
    try:
        name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidInput("bad domain: %r" % (domain,))
    if "." not in name or name.rsplit(".", 1)[1].isdigit():
        raise InvalidInput("bad domain: %r (not a fully qualified name)" % (domain,))
    return checkDomain(name)


def _checkSelector(selector):
    """
    @return: C{selector} lowercased, when it is a valid selector (RFC 6376
        section 3.1: dot-separated sub-domains).
    @raise InvalidInput: it is not.
    """
    name = selector.strip().lower()
    try:
        checkDomain(name)
    except InvalidInput:
        raise InvalidInput("bad selector: %r" % (selector,))
    return name


def txtRecord(publicKey):
    """
    @param publicKey: an RSA public key.
    @return: the key record text C{v=DKIM1; k=rsa; p=...} (RFC 6376 section
        3.6.1), C{p=} holding the DER SubjectPublicKeyInfo in base64.
    """
    der = publicKey.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


class DKIMSigner:
    """
    Signs messages for one domain with one key.

    @ivar domain: the signing domain, C{d=}.
    @ivar selector: the key's selector, C{s=}.
    """

    def __init__(self, domain, selector, privateKey):
        """
        @param privateKey: the RSA private key, PEM bytes.
        """
        self.domain = domain
        self.selector = selector
        self._privateKey = privateKey

    def __repr__(self):
        return "<DKIMSigner d=%s s=%s>" % (self.domain, self.selector)

    def sign(self, message):
        """
        Sign C{message} with C{rsa-sha256} and C{relaxed/relaxed}
        canonicalisation (RFC 6376 section 3.4).  Every instance of the
        fields in L{SIGNED_HEADERS} that the message has is signed, C{From}
        always (section 5.4), and C{From} once more than it occurs, so that
        no C{From} can be added without breaking the signature (section
        8.15).

        This is CPU work linear in the message size: run it off the reactor
        thread for large messages.

        @param message: the message as it will be sent, header and body,
            lines ending in CRLF (LF alone is accepted too).
        @return: the C{DKIM-Signature:} field to prepend, folded, each line
            ending in CRLF.
        @raise InvalidInput: the message cannot be signed.
        """
        try:
            signer = dkim.DKIM(message, linesep=b"\r\n")
            present = [name.lower() for name, value in signer.headers]
            include = [name for name in present if name in SIGNED_HEADERS]
            if b"from" not in include:
                include.append(b"from")
            include.append(b"from")
            return signer.sign(
                self.selector.encode("ascii"),
                self.domain.encode("ascii"),
                self._privateKey,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
            )
        except dkim.DKIMException as e:
            raise InvalidInput("cannot DKIM-sign: %s" % (e,))


class DKIMKeys:
    """
    The DKIM keys of all signing domains, in one directory (see the module
    docstring for the layout).
    """

    def __init__(self, directory):
        """
        @param directory: the key directory, C{data_dir/dkim}; created by
            L{generate} when missing.
        """
        self.directory = directory
        self._cache = {}

    def _keyPath(self, domain):
        return os.path.join(self.directory, domain + ".key")

    def _selectorPath(self, domain):
        return os.path.join(self.directory, domain + ".selector")

    def generate(self, domain, selector=DEFAULT_SELECTOR, bits=DEFAULT_BITS):
        """
        Make a new RSA key for C{domain} and sign its mail with it from now
        on.  A key the domain had is replaced: mail signed from now on
        verifies only once the new record is published, so regenerate under
        a new C{selector} and keep the old record until mail in transit has
        arrived (RFC 6376 section 3.6.2.1 on key rotation).

        @param domain: the signing domain; lowercased and IDNA-encoded.
        @param selector: the name the key is published under.
        @param bits: the RSA modulus size, 1024 to 4096.
        @return: the TXT record text to publish at L{recordName}.
        @raise InvalidInput: a bad domain, selector or size.
        """
        domain = normaliseSigningDomain(domain)
        selector = _checkSelector(selector)
        if not MIN_BITS <= bits <= MAX_BITS:
            raise InvalidInput("key size must be %d to %d bits" % (MIN_BITS, MAX_BITS))
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        writeFileAtomically(self._selectorPath(domain), (selector + "\n").encode("ascii"), 0o644)
        writeFileAtomically(self._keyPath(domain), pem, 0o600)
        return txtRecord(key.public_key())

    def domains(self):
        """
        @return: the domains signed for, sorted.
        """
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(name[: -len(".key")] for name in names if name.endswith(".key"))

    def record(self, domain):
        """
        @return: the TXT record text of C{domain}'s key, to publish (again).
        @raise LookupError: the domain has no key.
        """
        signer = self.signerFor(domain)
        if signer is None:
            raise LookupError("no DKIM key for %s" % (domain,))
        with open(self._keyPath(signer.domain), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        return txtRecord(key.public_key())

    def disable(self, domain):
        """
        Stop signing C{domain}'s mail: its key is renamed to C{.key.disabled}
        (a running server stops at its next message).  Keep the DNS record
        a few days, for mail signed before.

        @raise LookupError: the domain has no key.
        """
        domain = normaliseSigningDomain(domain)
        path = self._keyPath(domain)
        try:
            os.replace(path, path + ".disabled")
        except FileNotFoundError:
            raise LookupError("no DKIM key for %s" % (domain,))
        fsyncDirectory(self.directory)
        self._cache.pop(domain, None)

    def recordName(self, domain):
        """
        @return: the DNS name of C{domain}'s key record,
            C{<selector>._domainkey.<domain>} (RFC 6376 section 3.6.2.1),
            without a trailing dot.
        @raise InvalidInput: a bad domain.
        @raise LookupError: the domain has no key.
        """
        signer = self.signerFor(domain)
        if signer is None:
            raise LookupError("no DKIM key for %s" % (domain,))
        return "%s._domainkey.%s" % (signer.selector, signer.domain)

    def signerFor(self, domain):
        """
        The signer of C{domain}'s mail: it costs one C{stat} while the key
        file is unchanged, so a key made by C{mdpy dkim generate} is used at
        once by a running server.

        @return: a L{DKIMSigner}, or L{None} when the domain has no key (or
            is no domain name).
        """
        try:
            domain = normaliseSigningDomain(domain)
        except InvalidInput:
            return None
        path = self._keyPath(domain)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            self._cache.pop(domain, None)
            return None
        identity = (info.st_ino, info.st_mtime_ns, info.st_size)
        cached = self._cache.get(domain)
        if cached is not None and cached[0] == identity:
            return cached[1]
        with open(self._selectorPath(domain), "rb") as f:
            selector = f.read().decode("ascii").strip()
        with open(path, "rb") as f:
            pem = f.read()
        signer = DKIMSigner(domain, selector, pem)
        self._cache[domain] = (identity, signer)
        return signer


def zoneLine(name, text):
    """
    Format a TXT record as one zone-file line (RFC 1035 section 5.1), the
    text cut into quoted strings of at most 255 octets, as a TXT record's
    character-strings must be (RFC 1035 section 3.3.14, RFC 6376 section
    3.6.2.2: verifiers join them again).

    @param name: the owner name, without a trailing dot.
    @param text: the record text (ASCII, no quotes or backslashes).
    @return: C{'name. IN TXT ( "..." "..." )'}.
    """
    chunks = [text[i : i + 255] for i in range(0, len(text), 255)]
    return "%s. IN TXT ( %s )" % (name, " ".join('"%s"' % (chunk,) for chunk in chunks))
