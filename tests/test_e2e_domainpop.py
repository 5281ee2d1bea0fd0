"""
End-to-end DomainPOP: Dovecot's POP3 server on loopback plays the ISP
holding a domain's catch-all mailbox; mdpy collects it with C{twistd mdpy}
running (C{mdpy domainpop run} asks the server) and without (the command
collects itself), and is killed with SIGKILL in the middle of a cycle.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.server import MdpyServer, mdpyCommand, waitUntil
from tests.test_domainpop_service import CORPUS, EXPECTED, TO_CC_A, UNKNOWN, message

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench"))

USERS = ("alice", "bob", "carol", "postmaster")


@pytest.fixture
def isp(tmp_path):
    """
    A private Dovecot serving box@isp.test; C{isp.fill(messages)} puts mail
    in its Maildir before it starts.
    """
    from dovecot import PrivateDovecot

    base = tempfile.mkdtemp(prefix="mdpy-isp-")  # searchable by Dovecot's mail user
    os.chmod(base, 0o755)

    class ISP:
        root = os.path.join(base, "mail")
        maildir = os.path.join(root, "isp.test", "box")
        server = None

        def fill(self, messages):
            """
            Put C{messages} in the mailbox, and start the ISP's POP3 server
            the first time.
            """
            for sub in ("new", "cur", "tmp"):
                os.makedirs(os.path.join(self.maildir, sub), exist_ok=True)
            for i, data in enumerate(messages):
                with open(os.path.join(self.maildir, "new", "%d.M%dP1.isp" % (1700000000 + i, i)), "wb") as f:
                    f.write(data)
            if self.server is None:
                self.server = PrivateDovecot(self.root, ["box"], "secret", domain="isp.test", own_mail=True)
                self.server.start()
                self.port = self.server.port

        def remaining(self):
            return sum(
                1 for sub in ("new", "cur") for name in os.listdir(os.path.join(self.maildir, sub))
                if not name.startswith("dovecot")
            )

    made = ISP()
    yield made
    if made.server is not None:
        made.server.stop()
    shutil.rmtree(base, ignore_errors=True)


def mdpy(tmp_path, isp, extra="", users=USERS):
    section = (
        "[domainpop:isp]\nhost = 127.0.0.1\nport = %d\ntls = none\nusername = box@isp.test\n"
        "password = secret\ninterval = 1h\narchive_dir = archive\n%s" % (isp.port, extra)
    )
    os.makedirs(tmp_path / "mdpy", exist_ok=True)
    server = MdpyServer(tmp_path / "mdpy", extra=section + "[multipop]\nenabled = no\n")
    assert server.cli("domain", "add", "example.test").returncode == 0
    for name in users:
        assert server.cli("user", "add", "%s@example.test" % name, "--password", "pw-secret-1").returncode == 0
    server.cli("alias", "add", "team@example.test", "alice@example.test", "bob@example.test")
    return server


def subjects(server, name):
    found = []
    for data in server.messages("%s@example.test" % name):
        match = re.search(rb"^Subject: (.*)\r?$", data, re.M)
        found.append(match.group(1).decode().strip())
    return sorted(found)


def test_collectThroughTheRunningServer(tmp_path, isp):
    isp.fill(CORPUS)
    server = mdpy(tmp_path, isp)
    server.start()
    try:
        done = server.cli("domainpop", "run", "isp")
        assert done.returncode == 0, done.stderr
        assert "domainpop/isp: 11 on the server, 11 downloaded" in done.stdout
        assert re.search(r"a loop: 40 Received headers, more than max_hops 30: held in ", done.stdout)
        assert {name: subjects(server, name) for name in USERS} == EXPECTED
        assert isp.remaining() == 0
        # Each copy carries the Received field that SMTP writes too, naming
        # the ISP's server and this collection.
        for data in server.messages("alice@example.test"):
            assert re.search(rb"^Received: from 127\.0\.0\.1\r\n\tby \S+ \(mdpy\) with POP3 id \S+\r\n"
                             rb"(?:\tfor <[^<>]+>\r\n)?\t\(domainpop/isp\);\r\n\t", data, re.M), data[:400]
        # A second run finds nothing and changes nothing.
        again = server.cli("domainpop", "run", "isp")
        assert again.returncode == 0, again.stderr
        assert "0 on the server" in again.stdout
        assert {name: subjects(server, name) for name in USERS} == EXPECTED
        assert "domainpop/isp:" in server.logText()
    finally:
        server.stop()
    archive = os.path.join(server.root, "archive")
    assert len(os.listdir(archive)) == len(CORPUS)


def test_logSaysWhereEachMessageWent(tmp_path, isp):
    """
    The server's log has one line per collected message: its Message-ID
    and UIDL, the ISP mailbox, and the local recipients with the id that
    their deliver lines show (or the postmaster, and why).
    """
    isp.fill([TO_CC_A, UNKNOWN])
    server = mdpy(tmp_path, isp)
    server.start()
    try:
        # Sooner than the server's own first cycle, which may take it instead.
        server.cli("domainpop", "run", "isp")
        waitUntil(lambda: isp.remaining() == 0 and "<m7@far.test>" in server.logText(), what="the collection")
        log = server.logText()
        source = r"domainpop/isp: <%s> \(UIDL \S+\) from box@isp\.test at 127\.0\.0\.1: "
        [both] = re.findall(source % (r"m1@far\.test",) + r"delivered to <alice@example\.test>,"
                            r" <bob@example\.test> as (\S+)$", log, re.M)
        [unknown] = re.findall(source % (r"m7@far\.test",) + r"to the postmaster <postmaster@example\.test>"
                               r" as (\S+): unknown nobody@example\.test$", log, re.M)
        for address, id in (("alice", both), ("bob", both), ("postmaster", unknown)):
            assert re.search(r"deliver: %s to=<%s@example\.test> folder=INBOX status=stored$" % (id, address),
                             log, re.M), (address, log[-3000:])
    finally:
        server.stop()


def test_unknownRecipientWithoutPostmasterIsHeld(tmp_path, isp):
    """
    C{unknown_recipient = postmaster} and no postmaster account: the
    message for an unknown recipient leaves the ISP only once it is in the
    held folder, is listed by C{mdpy domainpop held} and logged at warn.
    """
    isp.fill([])
    server = mdpy(tmp_path, isp, extra="unknown_recipient = postmaster\n", users=("alice",))
    startWithoutPostmaster(server, isp, [UNKNOWN])
    try:
        empty = server.cli("domainpop", "held", "isp")
        assert (empty.returncode, empty.stdout) == (0, "domainpop/isp: no message held\n"), empty.stderr
        collected(server, isp)
        assert "1 held, 0 dropped" in server.logText()
        held = server.cli("domainpop", "held", "isp")
        assert held.returncode == 0, held.stderr
        [line] = held.stdout.splitlines()
        when, why, sender, subject, size, path = line.split(" | ")
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\Z", when)
        assert why.startswith("unknown nobody@example.test; the postmaster postmaster@example.test cannot take it")
        assert (sender, subject, size) == ("<x@far.test>", "unknown", "%d octets" % len(UNKNOWN))
        assert os.path.dirname(path) == os.path.join(server.dataDir, "domainpop", "isp", "held")
        with open(path, "rb") as f:
            assert f.read() == UNKNOWN
        [warning] = [text for text in server.logText().splitlines() if "#warn]" in text and "held" in text]
        assert "domainpop/isp: <m7@far.test> (UIDL " in warning and ": held in %s: " % (path,) in warning
        assert warning.endswith(": " + why)
        assert "Traceback" not in server.logText()
    finally:
        server.stop()


def startWithoutPostmaster(server, isp, messages):
    """
    Start C{server} once (its first start makes the postmaster), remove the
    postmaster, put C{messages} at the ISP and start it again: its own
    collection, a few seconds after the start, then finds no postmaster.
    """
    server.start()
    server.stop()
    withoutPostmaster(server)
    isp.fill(messages)
    server.start()


def collected(server, isp):
    """
    Wait until the running C{server} has collected all of C{isp} by itself
    and logged the cycle's summary.
    """
    waitUntil(lambda: isp.remaining() == 0 and "deleted at the server" in server.logText(),
              what="the server's own collection")


def withoutPostmaster(server):
    """
    Remove whatever made postmaster@example.test, so nothing takes its mail.
    """
    for alias in server.cli("alias", "list").stdout.splitlines():
        if alias.split()[0] in ("postmaster@example.test", "abuse@example.test"):
            assert server.cli("alias", "del", alias.split()[0]).returncode == 0
    if "postmaster@example.test" in server.cli("user", "list").stdout.split():
        assert server.cli("user", "del", "--yes", "postmaster@example.test").returncode == 0
    assert "postmaster@example.test" not in server.cli("alias", "list").stdout + server.cli("user", "list").stdout


def test_oversizeDeletedWithoutPostmasterBlocksNothing(tmp_path, isp):
    """
    C{size_action = delete} and no postmaster to tell: the message larger
    than C{max_size} is deleted at the ISP, as configured, with a warning
    in the log, and the normal message after it is collected in the same
    run instead of waiting behind it for ever.
    """
    big = message(b"From: x@far.test\nTo: alice@example.test\nMessage-ID: <big@far.test>\nSubject: big\n",
                  body=(b"x" * 998 + b"\r\n") * 20)
    normal = message(b"From: x@far.test\nTo: alice@example.test\nMessage-ID: <n@far.test>\nSubject: normal\n")
    isp.fill([])
    server = mdpy(tmp_path, isp, extra="max_size = 10K\nsize_action = delete\n", users=("alice",))
    startWithoutPostmaster(server, isp, [big, normal])
    try:
        collected(server, isp)
        log = server.logText()
        assert "2 on the server, 1 downloaded, 1 copies delivered" in log
        assert "2 deleted at the server" in log
        assert subjects(server, "alice") == ["normal"]
        [warning] = [text for text in server.logText().splitlines() if "#warn]" in text]
        assert "domainpop/isp: deleted message #1 (UIDL " in warning
        assert warning.endswith(" without download, larger than max_size 10240 (size_action = delete);"
                                " the postmaster postmaster@example.test cannot be told:"
                                " no such user: postmaster@example.test")
        assert server.cli("domainpop", "held", "isp").stdout == "domainpop/isp: no message held\n"
        assert "Traceback" not in server.logText()
    finally:
        server.stop()


def test_oversizeToThePostmaster(tmp_path, isp):
    """
    C{size_action = postmaster}: the message larger than C{max_size} goes
    to the postmaster alone, not to its recipient.
    """
    big = message(b"From: x@far.test\nTo: alice@example.test\nMessage-ID: <big@far.test>\nSubject: big\n",
                  body=(b"x" * 998 + b"\r\n") * 20)
    isp.fill([big, UNKNOWN.replace(b"nobody@", b"alice@")])
    server = mdpy(tmp_path, isp, extra="max_size = 10K\nsize_action = postmaster\n")
    server.start()
    try:
        done = server.cli("domainpop", "run", "isp")
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"^#1 .*: \d+ octets, larger than max_size 10240: to the postmaster$", done.stdout, re.M)
        assert (subjects(server, "alice"), subjects(server, "postmaster")) == (["unknown"], ["big"])
        assert isp.remaining() == 0
    finally:
        server.stop()


def test_probeFindsTheEnvelopeHeader(tmp_path, isp):
    isp.fill([CORPUS[0]])
    server = mdpy(tmp_path, isp)
    archive = os.path.join(server.root, "probe-archive")
    os.makedirs(archive)
    for i, name in enumerate(["alice", "bob", "carol"]):
        with open(os.path.join(archive, "%d.eml" % i), "wb") as f:
            f.write(b"X-Rcpt-To: %s@example.test\r\nTo: x@far.test\r\nSubject: t\r\n\r\nx\r\n" % name.encode())
    done = server.cli("domainpop", "probe", "isp", "--address", "carol@example.test", "--archive", archive)
    assert done.returncode == 0, done.stderr
    assert "parse_headers = X-Rcpt-To" in done.stdout
    missing = server.cli("domainpop", "probe", "nosuch", "--address", "carol@example.test")
    assert missing.returncode != 0 and "no [domainpop:nosuch]" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_killedInTheMiddleOfACycle(tmp_path, isp):
    """
    SIGKILL of C{mdpy domainpop run} while it collects 300 messages; the
    next run ends with each message delivered exactly once.
    """
    count = 300
    messages = [
        b"To: %s@example.test\r\nFrom: x@far.test\r\nMessage-ID: <k%d@far.test>\r\nSubject: k%d\r\n\r\nbody\r\n"
        % (USERS[i % 3].encode(), i, i)
        for i in range(count)
    ]
    isp.fill(messages)
    server = mdpy(tmp_path, isp)
    process = subprocess.Popen(
        mdpyCommand() + ["-c", server.config, "domainpop", "run", "isp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def delivered():
        total = 0
        for name in USERS[:3]:
            for sub in ("new", "cur"):
                try:
                    total += len(os.listdir(os.path.join(server.maildir("%s@example.test" % name), sub)))
                except FileNotFoundError:
                    pass
        return total

    deadline = time.time() + 60
    while delivered() < 100 and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < delivered() < count
    assert isp.remaining() == count  # no QUIT: nothing deleted at the ISP
    done = server.cli("domainpop", "run", "isp")
    assert done.returncode == 0, done.stderr
    for i, name in enumerate(USERS[:3]):
        got = subjects(server, name)
        assert got == sorted("k%d" % j for j in range(i, count, 3))
    assert isp.remaining() == 0
