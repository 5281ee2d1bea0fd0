"""
Tests of L{mdpy.mailauth.srs}: the Sender Rewriting Scheme in the format of
libsrs2 and postsrsd.

The vectors marked postsrsd are from postsrsd's C{run_postsrsd_tests.bats}
(secret C{tops3cr3t}, clock at 2020-01-01 00:01:00 UTC, domain
C{example.com}).
"""

import base64
import hashlib
import hmac
import os
import stat

import pytest

from mdpy import errors
from mdpy.mailauth import srs as srsModule
from mdpy.mailauth.srs import SRS, loadSecret

SECRET = b"tops3cr3t"
NOW = 1577836860  # 2020-01-01 00:01:00 UTC, day 18262, stamp "2W"
DAY = 24 * 60 * 60


class Clock:
    def __init__(self, now=NOW):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def srs(clock):
    return SRS(SECRET, clock=clock)


def handHash(secret, *fields):
    """
    The libsrs2 hash computed here independently: HMAC-SHA1 of the
    lowercased, concatenated fields, base64, four characters.
    """
    digest = hmac.new(secret, "".join(fields).lower().encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")[:4]


# postsrsd vectors


def test_postsrsdForward(srs):
    assert srs.forward("test@otherdomain.com", "example.com") == (
        "SRS0=vmyz=2W=otherdomain.com=test@example.com"
    )


def test_postsrsdReverse(srs):
    assert srs.reverse("SRS0=XjO9=2V=otherdomain.com=test@example.com") == "test@otherdomain.com"


def test_postsrsdForwardSRS1(srs):
    assert srs.forward("SRS1=X=thirddomain.com==opaque+string@otherdomain.com", "example.com") == (
        "SRS1=JIBX=thirddomain.com==opaque+string@example.com"
    )


def test_postsrsdReverseSRS1(srs):
    assert srs.reverse("SRS1=JIBX=thirddomain.com==opaque+string@example.com") == (
        "SRS0=opaque+string@thirddomain.com"
    )


@pytest.mark.parametrize(
    "address",
    [
        "SRS0=te87=T7=otherdomain.com=test@example.com",  # six months old
        "SRS0=VcIb=7N=otherdomain.com=test@example.com",  # six months ahead
    ],
)
def test_postsrsdOutOfDate(srs, address):
    with pytest.raises(errors.NotFound, match="out of date"):
        srs.reverse(address)


def test_postsrsdInvalidHash(srs):
    with pytest.raises(errors.NotFound, match="hash"):
        srs.reverse("SRS0=FAKE=2V=otherdomain.com=test@example.com")


def test_postsrsdMungedCase(srs):
    assert srs.reverse("srs0=xjo9=2v=otherdomain.com=test@example.com") == "test@otherdomain.com"
    assert srs.reverse("SRS0=XJO9=2V=OTHERDOMAIN.COM=TEST@EXAMPLE.COM") == "TEST@OTHERDOMAIN.COM"


@pytest.mark.parametrize(
    "address",
    [
        "SRS0=@example.com",
        "SRS0=XjO9@example.com",
        "SRS0=XjO9=2V@example.com",
        "SRS0=XjO9=2V=otherdomain.com@example.com",
        "SRS0=XjO9=2V=otherdomain.com=@example.com",
        "SRS1=JIBX=thirddomain.com@example.com",
        "SRS1=@example.com",
    ],
)
def test_malformed(srs, address):
    with pytest.raises(errors.NotFound, match="malformed"):
        srs.reverse(address)


# Derived by hand


def test_handDerivedVector():
    """
    Another secret and day, the hash computed in the test with L{hmac}.
    """
    secret = b"another secret"
    day = 20000  # 20000 % 1024 = 544 = 17 * 32 + 0 -> "RA"
    srs = SRS(secret, clock=lambda: day * DAY + 5)
    expected = "SRS0=%s=RA=Sender.Example=Joe.Bloggs@fwd.test" % (
        handHash(secret, "RA", "Sender.Example", "Joe.Bloggs"),
    )
    assert srs.forward("Joe.Bloggs@Sender.Example", "fwd.test") == expected
    assert srs.reverse(expected) == "Joe.Bloggs@Sender.Example"


def test_srs0FromElsewhereBecomesSRS1(srs):
    """
    An SRS0 address of another forwarder is wrapped as SRS1 naming that
    forwarder; the hash covers its host and the rest after the tag.
    """
    forwarded = srs.forward("SRS0=opaque+string@otherdomain.com", "example.com")
    hashed = handHash(SECRET, "otherdomain.com", "=opaque+string")
    assert forwarded == "SRS1=%s=otherdomain.com==opaque+string@example.com" % (hashed,)
    assert srs.reverse(forwarded) == "SRS0=opaque+string@otherdomain.com"


def test_reForwardingChain():
    """
    First hop makes SRS0; the second hop, another secret, makes SRS1; a bounce
    goes back through both.
    """
    first = SRS(b"first", clock=lambda: NOW)
    second = SRS(b"second", clock=lambda: NOW)
    hop1 = first.forward("alice@origin.test", "hop1.test")
    assert hop1.startswith("SRS0=")
    hop2 = second.forward(hop1, "hop2.test")
    assert hop2.startswith("SRS1=") and hop2.endswith("@hop2.test")
    back = second.reverse(hop2)
    assert back == hop1
    assert first.reverse(back) == "alice@origin.test"
    with pytest.raises(errors.NotFound):
        first.reverse(hop2)


# Round trips, time and tampering


def test_roundTrip(srs):
    forwarded = srs.forward("user+tag@sender.test", "example.com")
    assert forwarded.endswith("@example.com")
    assert srs.reverse(forwarded) == "user+tag@sender.test"


def test_roundTripLocalPartWithSeparators(srs):
    forwarded = srs.forward("a=b=c@sender.test", "example.com")
    assert srs.reverse(forwarded) == "a=b=c@sender.test"


def test_roundTripUTF8(srs):
    forwarded = srs.forward("jörg@bücher.test", "example.com")
    assert srs.reverse(forwarded) == "jörg@bücher.test"


def test_maxAge(srs, clock):
    forwarded = srs.forward("user@sender.test", "example.com")
    clock.now += 21 * DAY
    assert srs.reverse(forwarded) == "user@sender.test"
    clock.now += DAY
    with pytest.raises(errors.NotFound, match="out of date"):
        srs.reverse(forwarded)


def test_maxAgeConfigurable(clock):
    srs = SRS(SECRET, maxAge=2, clock=clock)
    forwarded = srs.forward("user@sender.test", "example.com")
    clock.now += 3 * DAY
    with pytest.raises(errors.NotFound):
        srs.reverse(forwarded)


def test_timestampWrapsAt1024Days(clock):
    """
    The stamp is the day modulo 1024: one made 8 days before the wrap is 8
    days old after it.
    """
    clock.now = (1024 * 18 - 5) * DAY
    srs = SRS(SECRET, clock=clock)
    forwarded = srs.forward("user@sender.test", "example.com")
    clock.now = (1024 * 18 + 3) * DAY
    assert srs.reverse(forwarded) == "user@sender.test"


def test_futureStampRejected(srs, clock):
    """
    A stamp from tomorrow is read as 1023 days old, as libsrs2 does.
    """
    clock.now += DAY
    tomorrow = srs.forward("user@sender.test", "example.com")
    clock.now -= DAY
    with pytest.raises(errors.NotFound, match="out of date"):
        srs.reverse(tomorrow)


def test_badTimestampCharacter(srs):
    hashed = handHash(SECRET, "2!", "otherdomain.com", "test")
    with pytest.raises(errors.NotFound, match="time stamp"):
        srs.reverse("SRS0=%s=2!=otherdomain.com=test@example.com" % (hashed,))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda a: a.replace("=sender.test=", "=evil.test="),
        lambda a: a.replace("=user@", "=root@"),
        lambda a: a.replace("=2W=", "=2X="),
    ],
)
def test_tampered(srs, tamper):
    forwarded = srs.forward("user@sender.test", "example.com")
    tampered = tamper(forwarded)
    assert tampered != forwarded
    with pytest.raises(errors.NotFound, match="hash"):
        srs.reverse(tampered)


def test_otherSecretRejected(srs):
    forwarded = SRS(b"not ours", clock=lambda: NOW).forward("user@sender.test", "example.com")
    with pytest.raises(errors.NotFound, match="hash"):
        srs.reverse(forwarded)


def test_shortHashRejected(srs):
    with pytest.raises(errors.NotFound, match="hash"):
        srs.reverse("SRS0=XjO=2V=otherdomain.com=test@example.com")


def test_longHashCut(srs):
    """
    libsrs2 compares only the first four characters of a longer hash.
    """
    assert srs.reverse("SRS0=XjO9zz=2V=otherdomain.com=test@example.com") == "test@otherdomain.com"


def test_otherSeparatorAfterTag(srs):
    """
    libsrs2 accepts C{-} and C{+} after the tag too.
    """
    assert srs.reverse("SRS0+XjO9=2V=otherdomain.com=test@example.com") == "test@otherdomain.com"
    assert srs.reverse("SRS0-XjO9=2V=otherdomain.com=test@example.com") == "test@otherdomain.com"


def test_hashComparedInConstantTime(srs, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(srsModule.hmac, "compare_digest", recording)
    srs.reverse("SRS0=XjO9=2V=otherdomain.com=test@example.com")
    assert calls == [(b"xjo9", b"xjo9")]


# Addresses left alone


def test_nullSender(srs):
    assert srs.forward("", "example.com") == ""


@pytest.mark.parametrize("sender", ["joe@example.com", "Joe@EXAMPLE.COM", "joe@example.com."])
def test_ourDomainKept(srs, sender):
    assert srs.forward(sender, "example.com") == sender


def test_ourSRSAddressKept(srs):
    address = "SRS0=XjO9=2V=otherdomain.com=test@example.com"
    assert srs.forward(address, "example.com") == address


def test_noAtSign(srs):
    with pytest.raises(errors.InvalidInput):
        srs.forward("bla", "example.com")


@pytest.mark.parametrize(
    "address", ["test@example.com", "srs@example.com", "SRS2=a=b@example.com", "SRS0xXjO9=2V=a=b@example.com"]
)
def test_notSRS(srs, address):
    assert srs.reverse(address) is None


def test_malformedSRS1SenderForwardedAsSRS0(srs):
    forwarded = srs.forward("SRS1=broken@otherdomain.com", "example.com")
    assert forwarded.startswith("SRS0=")
    assert srs.reverse(forwarded) == "SRS1=broken@otherdomain.com"


def test_stringSecret(clock):
    assert SRS("tops3cr3t", clock=clock).forward("test@otherdomain.com", "example.com") == (
        "SRS0=vmyz=2W=otherdomain.com=test@example.com"
    )


def test_emptySecret():
    with pytest.raises(ValueError):
        SRS(b"")


# loadSecret


def test_loadSecretCreates(tmp_path):
    path = str(tmp_path / "srs.secret")
    secret = loadSecret(path)
    assert len(base64.b64decode(secret, validate=True)) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as f:
        assert f.read() == secret + b"\n"
    assert os.listdir(tmp_path) == ["srs.secret"]
    assert loadSecret(path) == secret


def test_loadSecretNewEachTime(tmp_path):
    assert loadSecret(str(tmp_path / "a")) != loadSecret(str(tmp_path / "b"))


def test_loadSecretPostsrsdFile(tmp_path, clock):
    """
    A postsrsd secret file: the first line is the key.
    """
    path = tmp_path / "postsrsd.secret"
    path.write_bytes(b"tops3cr3t\r\nold secret\n")
    secret = loadSecret(str(path))
    assert secret == b"tops3cr3t"
    assert SRS(secret, clock=clock).forward("test@otherdomain.com", "example.com") == (
        "SRS0=vmyz=2W=otherdomain.com=test@example.com"
    )


def test_loadSecretEmpty(tmp_path):
    path = tmp_path / "srs.secret"
    path.write_bytes(b"\n")
    with pytest.raises(errors.InvalidInput):
        loadSecret(str(path))
