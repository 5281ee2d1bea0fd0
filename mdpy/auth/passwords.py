# -*- test-case-name: tests.test_passwords -*-
"""
Stored password secrets and their verification.

Which mechanism needs which stored secret:

  - C{PLAIN}, C{LOGIN} (SMTP AUTH, IMAP) and C{USER}/C{PASS} (POP3) receive
    the password itself, so a one-way salted hash is enough.  mdpy stores
    C{scrypt} (N=2**14, r=8, p=1, 16-byte salt, 32-byte key) in a PHC-like
    string, see L{hashPassword}.

  - C{CRAM-MD5} (RFC 2195) receives C{HMAC-MD5(password, challenge)}, which a
    one-way hash cannot check.  As Dovecot's C{CRAM-MD5} scheme does, mdpy
    stores the two MD5 states HMAC reaches after its first block (the key
    XORed with ipad, and with opad; RFC 2104 section 4 describes this
    precomputation), see L{cramMD5Secret}.  That secret is
    password-equivalent for CRAM-MD5 (whoever holds it can answer any
    challenge) but is not reversible to the password and cannot be used for
    C{PLAIN}/C{LOGIN}.  The byte layout is Dovecot's (outer state first, then
    inner, each as four little-endian words), so Dovecot C{{CRAM-MD5}} values
    can be imported as they are.

  - C{APOP} (RFC 1939 section 7) receives C{MD5(timestamp + password)} and
    therefore needs the plaintext (or a reversibly encrypted copy).  mdpy
    never stores plaintext, so APOP is not supported by default.

Python's L{hashlib} cannot start from a stored MD5 state, hence the small pure
Python MD5 (RFC 1321) below; it only ever hashes a challenge and a digest, so
its speed does not matter.
"""

import base64
import binascii
import hashlib
import hmac
import os
import struct

SCRYPT_LOG_N = 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_LENGTH = 16
KEY_LENGTH = 32

# Bounds on the parameters accepted from a stored string, so that a corrupt
# or hostile value cannot make a login allocate gigabytes.
_MAX_LOG_N = 20
_MAX_R = 32
_MAX_P = 16

CRAM_MD5_SECRET_LENGTH = 32


def _toBytes(password):
    """
    @param password: L{str} (encoded as UTF-8) or L{bytes}.
    @rtype: L{bytes}
    """
    if isinstance(password, str):
        return password.encode("utf-8")
    if isinstance(password, (bytes, bytearray)):
        return bytes(password)
    raise TypeError("password must be str or bytes, not %r" % (type(password),))


def _b64encode(data):
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text):
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password, salt, logN, r, p, length):
    n = 1 << logN
    # OpenSSL needs 128*r*(N+p+2) bytes or so; give it that and a margin.
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length
    )


def hashPassword(password):
    """
    Hash a password for storage.

    @param password: L{str} (encoded as UTF-8) or L{bytes}.
    @return: C{$scrypt$ln=14,r=8,p=1$<salt>$<hash>}, salt and hash in base64
        without padding.  A fresh random salt is used on every call.
    @rtype: L{str}
    """
    salt = os.urandom(SALT_LENGTH)
    key = _scrypt(
        _toBytes(password), salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, KEY_LENGTH
    )
    return "$scrypt$ln=%d,r=%d,p=%d$%s$%s" % (
        SCRYPT_LOG_N,
        SCRYPT_R,
        SCRYPT_P,
        _b64encode(salt),
        _b64encode(key),
    )


def _parseScrypt(stored):
    """
    @return: C{(logN, r, p, salt, key)}.
    @raise ValueError: C{stored} is not a well-formed scrypt string.
    """
    parts = stored.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "scrypt":
        raise ValueError("not an scrypt hash")
    params = {}
    for item in parts[2].split(","):
        name, sep, value = item.partition("=")
        if not sep or name in params or not value.isdigit():
            raise ValueError("bad scrypt parameter")
        params[name] = int(value)
    if set(params) != {"ln", "r", "p"}:
        raise ValueError("bad scrypt parameters")
    logN, r, p = params["ln"], params["r"], params["p"]
    if not (1 <= logN <= _MAX_LOG_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError("scrypt parameters out of range")
    salt = _b64decode(parts[3])
    key = _b64decode(parts[4])
    if not salt or not 16 <= len(key) <= 64:
        raise ValueError("bad scrypt salt or key")
    return logN, r, p, salt, key


def verifyPassword(password, stored):
    """
    Check a password against a value made by L{hashPassword}.

    Only the scrypt format is understood; plaintext schemes (C{{PLAIN}}) are
    deliberately not.

    @param password: L{str} or L{bytes}.
    @param stored: the stored hash string.
    @return: whether the password matches; L{False} for a malformed or
        unsupported C{stored} value.
    @rtype: L{bool}
    """
    if not isinstance(stored, str):
        return False
    try:
        logN, r, p, salt, key = _parseScrypt(stored)
        candidate = _scrypt(_toBytes(password), salt, logN, r, p, len(key))
    except (ValueError, TypeError, binascii.Error, MemoryError):
        return False
    return hmac.compare_digest(candidate, key)


# --- MD5 from a given state (RFC 1321) -------------------------------------

_MASK = 0xFFFFFFFF
_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
# T[i] = floor(abs(sin(i + 1)) * 2**32), RFC 1321 section 3.4.
_T = (
    0xD76AA478, 0xE8C7B756, 0x242070DB, 0xC1BDCEEE, 0xF57C0FAF, 0x4787C62A,
    0xA8304613, 0xFD469501, 0x698098D8, 0x8B44F7AF, 0xFFFF5BB1, 0x895CD7BE,
    0x6B901122, 0xFD987193, 0xA679438E, 0x49B40821, 0xF61E2562, 0xC040B340,
    0x265E5A51, 0xE9B6C7AA, 0xD62F105D, 0x02441453, 0xD8A1E681, 0xE7D3FBC8,
    0x21E1CDE6, 0xC33707D6, 0xF4D50D87, 0x455A14ED, 0xA9E3E905, 0xFCEFA3F8,
    0x676F02D9, 0x8D2A4C8A, 0xFFFA3942, 0x8771F681, 0x6D9D6122, 0xFDE5380C,
    0xA4BEEA44, 0x4BDECFA9, 0xF6BB4B60, 0xBEBFBC70, 0x289B7EC6, 0xEAA127FA,
    0xD4EF3085, 0x04881D05, 0xD9D4D039, 0xE6DB99E5, 0x1FA27CF8, 0xC4AC5665,
    0xF4292244, 0x432AFF97, 0xAB9423A7, 0xFC93A039, 0x655B59C3, 0x8F0CCC92,
    0xFFEFF47D, 0x85845DD1, 0x6FA87E4F, 0xFE2CE6E0, 0xA3014314, 0x4E0811A1,
    0xF7537E82, 0xBD3AF235, 0x2AD7D2BB, 0xEB86D391,
)
_SHIFTS = (
    (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4
    + (6, 10, 15, 21) * 4
)
_INDEX = tuple(
    [i for i in range(16)]
    + [(5 * i + 1) % 16 for i in range(16)]
    + [(3 * i + 5) % 16 for i in range(16)]
    + [(7 * i) % 16 for i in range(16)]
)


def _md5Compress(state, block):
    """
    The MD5 compression function: process one 64-byte block.

    @param state: C{(a, b, c, d)}.
    @param block: 64 L{bytes}.
    @return: the new C{(a, b, c, d)}.
    """
    x = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f = (b & c) | (~b & d)
        elif i < 32:
            f = (d & b) | (~d & c)
        elif i < 48:
            f = b ^ c ^ d
        else:
            f = c ^ (b | (~d & _MASK))
        f = (a + (f & _MASK) + _T[i] + x[_INDEX[i]]) & _MASK
        s = _SHIFTS[i]
        a, d, c = d, c, b
        b = (b + ((f << s) | (f >> (32 - s)))) & _MASK
    return (
        (state[0] + a) & _MASK,
        (state[1] + b) & _MASK,
        (state[2] + c) & _MASK,
        (state[3] + d) & _MASK,
    )


def _md5Finish(state, done, data):
    """
    Finish an MD5 digest that has already processed C{done} bytes (a multiple
    of 64) into C{state}, appending C{data}.

    @return: the 16-byte digest.
    """
    total = done + len(data)
    data = data + b"\x80" + b"\x00" * ((55 - total) % 64)
    data += struct.pack("<Q", (total * 8) & 0xFFFFFFFFFFFFFFFF)
    for offset in range(0, len(data), 64):
        state = _md5Compress(state, data[offset : offset + 64])
    return struct.pack("<4I", *state)


def _hmacMD5States(password):
    """
    @return: the MD5 states C{(inner, outer)} after HMAC-MD5's key blocks.
    """
    key = _toBytes(password)
    if len(key) > 64:
        key = hashlib.md5(key).digest()
    key = key.ljust(64, b"\x00")
    inner = _md5Compress(_IV, bytes(k ^ 0x36 for k in key))
    outer = _md5Compress(_IV, bytes(k ^ 0x5C for k in key))
    return inner, outer


def cramMD5Secret(password):
    """
    Compute the stored CRAM-MD5 secret of a password.

    @param password: L{str} (encoded as UTF-8) or L{bytes}.
    @return: 64 lowercase hex digits: the outer then the inner HMAC-MD5 state,
        each as four little-endian 32-bit words (Dovecot's layout).
    @rtype: L{str}
    """
    inner, outer = _hmacMD5States(password)
    return struct.pack("<8I", *(outer + inner)).hex()


def verifyCramMD5(secret, challenge, response):
    """
    Check a CRAM-MD5 response (RFC 2195) against a stored secret.

    @param secret: the value of L{cramMD5Secret}.
    @param challenge: the challenge the server sent, L{bytes}.
    @param response: the client's hex digest, L{str} or L{bytes}, any case.
    @return: whether C{response} is C{HMAC-MD5(password, challenge)};
        L{False} for a malformed secret or response.
    @rtype: L{bool}
    """
    try:
        raw = bytes.fromhex(secret)
        if isinstance(response, str):
            response = response.encode("ascii")
        response = bytes(response).strip().lower()
    except (ValueError, TypeError):
        return False
    if len(raw) != CRAM_MD5_SECRET_LENGTH:
        return False
    words = struct.unpack("<8I", raw)
    outer, inner = words[:4], words[4:]
    if isinstance(challenge, str):
        challenge = challenge.encode("utf-8")
    innerDigest = _md5Finish(inner, 64, bytes(challenge))
    expected = _md5Finish(outer, 64, innerDigest).hex().encode("ascii")
    return hmac.compare_digest(expected, response)
