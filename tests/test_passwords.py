"""
Tests for L{mdpy.auth.passwords}.
"""

import base64
import hashlib
import hmac
import random

import pytest

from mdpy.auth import passwords
from mdpy.auth.passwords import (
    cramMD5Secret,
    hashPassword,
    verifyCramMD5,
    verifyPassword,
)


# --- scrypt -----------------------------------------------------------------


def test_roundTrip():
    stored = hashPassword("correct horse")
    assert verifyPassword("correct horse", stored)
    assert verifyPassword(b"correct horse", stored)
    assert not verifyPassword("correct horsE", stored)
    assert not verifyPassword("", stored)


def test_unicodePassword():
    stored = hashPassword("pässwörd ✓")
    assert verifyPassword("pässwörd ✓", stored)
    assert verifyPassword("pässwörd ✓".encode("utf-8"), stored)
    assert not verifyPassword("passwort", stored)


def test_format():
    stored = hashPassword("pw")
    empty, scheme, params, salt, key = stored.split("$")
    assert (empty, scheme, params) == ("", "scrypt", "ln=14,r=8,p=1")
    assert "=" not in salt + key
    rawSalt = base64.b64decode(salt + "==")
    rawKey = base64.b64decode(key + "=")
    assert len(rawSalt) == 16
    assert len(rawKey) == 32
    assert rawKey == hashlib.scrypt(b"pw", salt=rawSalt, n=2**14, r=8, p=1, dklen=32)


def test_notThePasswordAndSalted():
    first = hashPassword("hunter2")
    second = hashPassword("hunter2")
    assert "hunter2" not in first
    assert first != second
    assert first.split("$")[3] != second.split("$")[3]
    assert verifyPassword("hunter2", first)
    assert verifyPassword("hunter2", second)


def test_otherParametersVerify():
    """
    A hash made with other (in-range) parameters still verifies, so the
    defaults can be raised later without breaking stored hashes.
    """
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"pw", salt=salt, n=2**10, r=4, p=2, dklen=32)
    stored = "$scrypt$ln=10,r=4,p=2$%s$%s" % (
        base64.b64encode(salt).decode().rstrip("="),
        base64.b64encode(key).decode().rstrip("="),
    )
    assert verifyPassword("pw", stored)
    assert not verifyPassword("px", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        None,
        b"$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaA",
        "{PLAIN}secret",
        "secret",
        "$scrypt$",
        "$scrypt$ln=14,r=8$c2FsdHNhbHRzYWx0$" + "A" * 43,
        "$scrypt$ln=14,r=8,p=1,x=1$c2FsdHNhbHRzYWx0$" + "A" * 43,
        "$scrypt$ln=40,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 43,
        "$scrypt$ln=14,r=8,p=1$!!!$" + "A" * 43,
        "$scrypt$ln=14,r=8,p=1$c2FsdHNhbHRzYWx0$short",
        "$scrypt$ln=x,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 43,
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
    ],
)
def test_malformedStored(stored):
    assert verifyPassword("secret", stored) is False


def test_plainSchemeNotSupported():
    assert not verifyPassword("secret", "{PLAIN}secret")
    assert not verifyPassword("{PLAIN}secret", "{PLAIN}secret")


# --- MD5 and CRAM-MD5 -------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000])
def test_md5FromInitialState(length):
    data = bytes(random.Random(length).getrandbits(8) for _ in range(length))
    assert passwords._md5Finish(passwords._IV, 0, data) == hashlib.md5(data).digest()


def test_md5ContinuesFromState():
    block = bytes(range(64))
    state = passwords._md5Compress(passwords._IV, block)
    for tail in [b"", b"x", b"y" * 64, b"z" * 100]:
        assert (
            passwords._md5Finish(state, 64, tail) == hashlib.md5(block + tail).digest()
        )


def test_cramMD5SecretFormat():
    secret = cramMD5Secret("pw")
    assert len(secret) == 64
    assert secret == secret.lower()
    bytes.fromhex(secret)
    assert "pw" not in secret
    assert cramMD5Secret("pw") == secret
    assert cramMD5Secret(b"pw") == secret
    assert cramMD5Secret("pw2") != secret


def test_cramMD5SecretMatchesDovecot():
    """
    The secret is laid out as Dovecot's C{{CRAM-MD5}} scheme (C{doveadm pw -s
    CRAM-MD5 -p password}), so Dovecot password files can be imported.
    """
    assert cramMD5Secret("password") == (
        "9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740"
    )


def _passwordsAndChallenges():
    rng = random.Random(2195)
    pws = [b"", b"a", b"tanstaaftanstaaf", "pässwörd".encode("utf-8")]
    pws += [b"k" * n for n in (63, 64, 65, 200)]
    pws += [
        bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 150)))
        for _ in range(20)
    ]
    challenges = [b"", b"<1896.697170952@postoffice.reston.mci.net>"]
    challenges += [
        bytes(rng.getrandbits(8) for _ in range(n)) for n in (55, 56, 64, 130)
    ]
    return [(pw, ch) for pw in pws for ch in challenges]


@pytest.mark.parametrize("password,challenge", _passwordsAndChallenges())
def test_cramMD5AgainstHmac(password, challenge):
    secret = cramMD5Secret(password)
    response = hmac.new(password, challenge, "md5").hexdigest()
    assert verifyCramMD5(secret, challenge, response)
    assert verifyCramMD5(secret, challenge, response.upper().encode("ascii"))
    wrong = hmac.new(password + b"x", challenge, "md5").hexdigest()
    assert not verifyCramMD5(secret, challenge, wrong)
    assert not verifyCramMD5(secret, challenge + b"x", response)


def test_cramMD5Rfc2195Example():
    """
    The example exchange of RFC 2195 section 2.
    """
    secret = cramMD5Secret("tanstaaftanstaaf")
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert verifyCramMD5(secret, challenge, "b913a602c7eda7a495b4e6e7334d3890")
    assert not verifyCramMD5(secret, challenge, "b913a602c7eda7a495b4e6e7334d3891")


@pytest.mark.parametrize(
    "secret", ["", "zz" * 32, "00" * 31, "00" * 33, None, "{CRAM-MD5}" + "00" * 32]
)
def test_cramMD5MalformedSecret(secret):
    assert verifyCramMD5(secret, b"<1@x>", "00" * 16) is False


@pytest.mark.parametrize("response", ["", "zz", "\u00e9" * 32, None])
def test_cramMD5MalformedResponse(response):
    assert verifyCramMD5(cramMD5Secret("pw"), b"<1@x>", response) is False
