"""
Tests for L{mdpy.domainpop.probe}.
"""

import os

import pytest

from mdpy.domainpop.probe import CANDIDATES, MAX_LISTED, probe, readArchive
from mdpy.domainpop.recipients import MAX_HEAD, RoutingRules
from mdpy.errors import InvalidInput

PROBE = "bob@example.test"


def message(*lines):
    return "".join(line + "\r\n" for line in lines).encode("utf-8") + b"\r\nbody\r\n"


def received(by, rcpt=None, n=1):
    clause = " for <%s>" % (rcpt,) if rcpt else ""
    return "Received: from h%d.ext.test by %s with ESMTP id %d%s; Mon, 1 Jan 2024 00:00:0%d +0000" % (
        n,
        by,
        n,
        clause,
        n,
    )


def candidate(report, name):
    [row] = [row for row in report.candidates if row[0] == name]
    return row[1:]


# --- an ISP that adds X-Rcpt-To ---------------------------------------------------


def xRcptToArchive():
    return [
        # The test: sent from outside to itself, Bob Bcc'd.
        (
            "01-test.eml",
            message(
                "X-Rcpt-To: Bob@Example.test",
                received("mx.isp.test", PROBE),
                "From: me@gmail.test",
                "To: me@gmail.test",
                "Subject: probe",
            ),
        ),
        # Ordinary mail: a copy for carol of a message to bob and carol.
        (
            "02.eml",
            message(
                "X-Rcpt-To: carol@example.test",
                received("mx.isp.test"),
                "From: x@ext.test",
                "To: bob@example.test, carol@example.test",
            ),
        ),
        ("03.eml", message("X-Rcpt-To: dave@example.test", received("mx.isp.test"), "From: bob@example.test")),
        ("04.eml", message("X-Rcpt-To: dave@example.test", "From: y@ext.test", "To: dave@example.test")),
    ]


def test_xRcptTo():
    report = probe(xRcptToArchive(), "BOB@example.test")
    assert report.address == PROBE
    assert report.messages == 4 and report.tests == 1
    assert report.matches == [
        ("01-test.eml", [("x-rcpt-to", 1), ("received", 1)]),
        ("02.eml", [("to", 1)]),
        ("03.eml", [("from", 1)]),
    ]
    assert [row[0] for row in report.candidates] == list(CANDIDATES)
    assert candidate(report, "x-rcpt-to") == (4, 4, 1)
    assert candidate(report, "delivered-to") == (0, 0, 0)
    # Received-for was in the test message, but not in the others.
    assert candidate(report, "received") == (1, 1, 1)
    assert report.recommendation == "parse_headers = X-Rcpt-To"
    assert report.trustedHosts == []
    lines = report.lines()
    assert lines[-1] == "Recommendation: parse_headers = X-Rcpt-To"
    assert any("01-test.eml: X-Rcpt-To (1st), Received (1st)" in line for line in lines)
    assert any("several outside providers" in line for line in lines)


def test_preferenceOrder():
    """
    Where X-MDRcpt-To and Delivered-To are both reliable, X-MDRcpt-To wins.
    """
    archive = [
        ("%d" % i, message("Delivered-To: %s" % (rcpt,), "X-MDRcpt-To: %s" % (rcpt,), "To: list@ext.test"))
        for i, rcpt in enumerate([PROBE, "a@example.test", "c@example.test"])
    ]
    report = probe(archive, PROBE)
    assert report.recommendation == "parse_headers = X-MDRcpt-To"


def test_headerMissingTheProbeIsNotReliable():
    """
    Delivered-To is in every message with one address, but in the test
    message it names someone else (the sender's own forwarding hop).
    """
    archive = [
        ("1", message("Delivered-To: me@gmail.test", "X-Original-To: bob@example.test", "To: me@gmail.test")),
        ("2", message("Delivered-To: a@example.test", "X-Original-To: a@example.test", "To: a@example.test")),
        ("3", message("Delivered-To: c@example.test", "X-Original-To: c@example.test", "To: c@example.test")),
    ]
    report = probe(archive, PROBE)
    assert candidate(report, "delivered-to") == (3, 3, 0)
    assert report.recommendation == "parse_headers = X-Original-To"


def test_headerWithSeveralAddressesIsNotReliable():
    archive = [
        ("1", message("Envelope-To: bob@example.test", "To: me@gmail.test")),
        ("2", message("Envelope-To: a@example.test, c@example.test", "To: a@example.test")),
        ("3", message("Envelope-To: a@example.test", "Envelope-To: c@example.test", "To: c@example.test")),
    ]
    report = probe(archive, PROBE)
    assert candidate(report, "envelope-to") == (3, 1, 1)
    assert report.recommendation is None


def test_nearlyEveryMessage():
    copies = [("%02d" % i, message("X-Envelope-To: u%d@example.test" % i)) for i in range(18)]
    test = [("test", message("X-Envelope-To: bob@example.test", "To: me@gmail.test"))]
    # 19 of 20: reliable.
    report = probe(test + copies + [("bounce", message("From: MAILER-DAEMON@isp.test"))], PROBE)
    assert report.recommendation == "parse_headers = X-Envelope-To"
    # 19 of 22: not.
    report = probe(test + copies + [("b%d" % i, message("From: x@isp.test")) for i in range(3)], PROBE)
    assert report.recommendation is None


# --- an ISP whose Received line is the only trace ------------------------------------


def receivedArchive():
    return [
        (
            "test.eml",
            message(
                received("store.isp.test", n=3),
                received("mx.isp.test", PROBE, n=2),
                received("smtp.gmail.test", "me@gmail.test", n=1),
                "From: me@gmail.test",
                "To: me@gmail.test",
            ),
        ),
        (
            "a.eml",
            message(
                received("store.isp.test", n=4),
                received("mx.isp.test", "a@example.test", n=3),
                received("smtp.ext.test", n=2),
                # Forged by the sender, below its own server's line.
                received("mx.isp.test", "ceo@example.test", n=1),
                "To: a@example.test, ceo@example.test",
            ),
        ),
        ("c.eml", message(received("mx.isp.test", "c@example.test", n=2), "To: c@example.test")),
    ]


def test_receivedOnly():
    report = probe(receivedArchive(), PROBE)
    assert report.tests == 1
    assert report.receivedHosts == ["store.isp.test", "mx.isp.test"]
    assert candidate(report, "received") == (3, 3, 1)
    assert report.recommendation == "parse_headers = Received"
    assert report.trustedHosts == ["store.isp.test", "mx.isp.test"]
    lines = report.lines()
    assert lines[-1] == (
        "Recommendation: parse_headers = Received, trusted_received_hosts = store.isp.test mx.isp.test"
    )
    assert any(line.strip().startswith("Received by store.isp.test, mx.isp.test") for line in lines)


def test_receivedNamingSeveralAddresses():
    """
    An ISP hop that expands an alias writes C{for} on two of its lines: in
    that message Received gives two addresses.
    """
    archive = receivedArchive()
    archive[2] = (
        "c.eml",
        message(
            received("store.isp.test", "c@example.test", n=3),
            received("mx.isp.test", "info@example.test", n=2),
            "To: info@example.test",
        ),
    )
    report = probe(archive, PROBE)
    assert candidate(report, "received") == (3, 2, 1)
    assert report.recommendation is None
    assert report.trustedHosts == []


def test_receivedWithConfiguredRules():
    """
    Trusted hosts from the rules are used as they are.
    """
    archive = receivedArchive()
    report = probe(archive, PROBE, RoutingRules(("received",), trustedReceivedHosts=[".isp.test"]))
    assert report.receivedHosts == [".isp.test"]
    assert candidate(report, "received") == (3, 3, 1)
    assert report.trustedHosts == [".isp.test"]
    # Trusting only mx.isp.test, the store.isp.test line on top ends the run...
    report = probe(archive, PROBE, RoutingRules(("received",), trustedReceivedHosts=["mx.isp.test"]))
    assert candidate(report, "received") == (1, 1, 0)
    assert report.recommendation is None
    # ... unless it is skipped.
    rules = RoutingRules(("received",), receivedSkip=1, trustedReceivedHosts=["mx.isp.test"])
    report = probe(archive, PROBE, rules)
    assert candidate(report, "received") == (2, 2, 1)


def test_receivedWithoutTrustedHostsReadsForgedLines():
    """
    Rules that trust every host read the forged line too (probe derives
    hosts only when the probe address is in some Received line).
    """
    archive = receivedArchive()[1:]
    report = probe(archive, PROBE)
    assert report.receivedHosts == []
    assert candidate(report, "received") == (2, 1, 0)


# --- nothing usable --------------------------------------------------------------


def test_nothingReliable():
    archive = [
        ("1", message("From: me@gmail.test", "To: me@gmail.test", "Bcc: bob@example.test")),
        ("2", message("From: x@ext.test", "To: bob@example.test, a@example.test")),
    ]
    report = probe(archive, PROBE)
    assert report.tests == 0
    assert [m[0] for m in report.matches] == ["1", "2"]
    assert report.recommendation is None
    lines = report.lines()
    assert lines[-1].startswith("No field reliably names the envelope recipient")
    assert "To, Cc" in lines[-1]
    assert any(line.startswith("Send the test first") for line in lines)


def test_listingIsShortAndTestsFirst():
    archive = [("%03d" % i, message("To: bob@example.test")) for i in range(MAX_LISTED + 5)]
    archive.append(("zz-test", message("X-Rcpt-To: bob@example.test", "To: me@gmail.test")))
    report = probe(archive, PROBE)
    assert len(report.matches) == MAX_LISTED + 6
    lines = report.lines()
    start = lines.index("Where bob@example.test appears (copies for it first):")
    assert lines[start + 1] == "  zz-test: X-Rcpt-To (1st)"
    assert lines[start + 1 + MAX_LISTED] == "  ... and 6 more"


def test_probeNotFound():
    report = probe([("1", message("To: a@example.test", "X-Rcpt-To: a@example.test"))], PROBE)
    assert report.matches == [] and report.recommendation is None
    assert "appears in no message" in " ".join(report.lines())


def test_emptyArchive():
    report = probe([], PROBE)
    assert report.messages == 0 and report.recommendation is None
    assert all(row[1:] == (0, 0, 0) for row in report.candidates)


def test_longerAddressIsNotTheProbe():
    archive = [("1", message("X-Rcpt-To: xbob@example.test.other", "X-Original-To: bob@example.testing"))]
    assert probe(archive, PROBE).matches == []


def test_badProbeAddress():
    with pytest.raises(InvalidInput):
        probe([], "not an address")


# --- readArchive ----------------------------------------------------------------


def test_readArchive(tmp_path):
    (tmp_path / "b.eml").write_bytes(b"To: b@x.test\r\n\r\nbody")
    (tmp_path / "a.eml").write_bytes(b"To: a@x.test\r\n\r\nbody")
    (tmp_path / "big.eml").write_bytes(b"X-A: " + b"z" * (2 * MAX_HEAD))
    (tmp_path / ".hidden").write_bytes(b"x")
    (tmp_path / "c.eml.tmp").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.eml").write_bytes(b"x")
    os.symlink(str(tmp_path / "sub"), str(tmp_path / "link"))
    got = list(readArchive(str(tmp_path)))
    assert [name for name, data in got] == ["a.eml", "b.eml", "big.eml"]
    assert got[0][1] == b"To: a@x.test\r\n\r\nbody"
    assert len(got[2][1]) == MAX_HEAD


def test_probeOverArchive(tmp_path):
    for name, data in xRcptToArchive():
        (tmp_path / name).write_bytes(data)
    report = probe(readArchive(str(tmp_path)), PROBE)
    assert report.recommendation == "parse_headers = X-Rcpt-To"
