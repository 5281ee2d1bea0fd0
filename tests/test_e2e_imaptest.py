"""
Dovecot's imaptest against a real C{twistd mdpy} on loopback: every scripted
test group of imaptest's compliance directory, over IMAP (143, plaintext
LOGIN allowed) and over IMAPS (993, imaptest trusting only the server's own
test certificate).  imaptest is built and installed by
C{.ci/imaptest/install.sh} (C{.ci/run}).

Each group (one test file of the directory; its C{.mbox} files are the
messages it appends) runs in an imaptest process of its own, with a time
limit, so that one group hanging neither blocks the run nor hides the
outcome of the others.  A group passes, fails (imaptest printed
C{*** Test NAME ...}), is skipped (imaptest ran none of its commands: the
server lacks a capability the group requires) or hangs (killed at the time
limit).

The goal is no failed group, no hung group, and no group skipped for a
capability mdpy advertises.  Until mdpy gets there, L{KNOWN_FAILING} lists
the groups that fail today, each with the reason; a failure of any other
group is a regression, and a listed group that passes must leave the list,
so that it only ever shrinks.  L{KNOWN_ERROR_LINES} does the same for groups
that pass but make imaptest print C{Error:} lines (replies it finds wrong
without failing the group), and L{KNOWN_TLS_LOGOUT_HANG} for the one way a
group may hang over IMAPS, checked by L{test_tlsLogoutCloses}.
"""

import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from tests.server import HOST, runningServer

IMAPTEST = shutil.which("imaptest") or "/usr/local/bin/imaptest"
# Where build.sh installs the compliance directory, beside bin/imaptest.
TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(IMAPTEST))), "share", "imaptest", "tests")
PASSWORD = "imaptest-secret"

# The most one group may take: the slowest needs well under a second here.
GROUP_TIMEOUT = 15
# The most all groups of one transport may take; the groups left then are
# not run (pytest's own limit is 300 s a test).
RUN_BUDGET = 150
# How long the server may keep a TLS connection open after LOGOUT.
LOGOUT_CLOSE_WAIT = 10

# Groups that fail today over IMAP and IMAPS alike: {group: reason}.
KNOWN_FAILING = {
}

# Groups that pass but make imaptest print Error: lines: {group: reason}.
KNOWN_ERROR_LINES = {}

# Why a group may hang over IMAPS, or None: the server closes the
# connection after LOGOUT without waiting for the client's close_notify, so
# no group may hang.
KNOWN_TLS_LOGOUT_HANG = None


# --- running imaptest --------------------------------------------------------


class GroupResult:
    """
    What imaptest reported for one test group.

    @ivar outcome: C{"passed"}, C{"failed"}, C{"skipped"}, C{"hung"} or
        C{"not run"} (no time was left).
    @ivar failure: imaptest's first failure report, for C{"failed"}.
    @ivar errors: the C{Error:} lines imaptest printed.
    """

    def __init__(self, name, outcome, failure="", errors=()):
        self.name = name
        self.outcome = outcome
        self.failure = failure
        self.errors = list(errors)

    def __repr__(self):
        return "<%s %s>" % (self.name, self.outcome)


def complianceGroups():
    """
    @return: the names of the test groups of imaptest's compliance
        directory, as a directory run takes them: every file but the
        C{.mbox} files, without its subdirectories.
    """
    assert os.path.isdir(TESTS), "imaptest is not installed: run .ci/imaptest/install.sh (as root)"
    return sorted(
        name for name in os.listdir(TESTS)
        if not name.endswith(".mbox") and os.path.isfile(os.path.join(TESTS, name))
    )


def requiredCapabilities(group):
    """
    @return: the capabilities the C{capabilities:} line of the group's
        header names (upper case), without which imaptest skips it.
    """
    with open(os.path.join(TESTS, group), "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                break
            key, _, value = line.decode("utf-8", "replace").partition(":")
            if key.strip().lower() == "capabilities":
                return set(value.upper().split())
    return set()


REPORT = re.compile(r"^\*\*\* Test .*?(?=\n\n|\Z)", re.M | re.S)
SUMMARY = re.compile(r"^(\d+) test groups: (\d+) failed")
COMMANDS = re.compile(r"^(?:base protocol|extensions): \d+/(\d+) individual commands failed", re.M)


def parseGroup(group, stdout, stderr):
    """
    Read what a run of imaptest on one group printed.

    @param stdout: its summary lines (none if it did not get to the end).
    @param stderr: its failure reports (C{*** Test GROUP ...}, one
        paragraph each) and C{Error:} lines.
    """
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    reports = REPORT.findall(stderr)
    summary = [match for match in map(SUMMARY.match, stdout.splitlines()) if match]
    if not summary:
        return GroupResult(group, "failed", "imaptest printed no summary:\n" + stderr[-2000:], errors)
    if reports or int(summary[0].group(2)):
        return GroupResult(group, "failed", (reports or [stderr[-2000:]])[0], errors)
    if sum(int(count) for count in COMMANDS.findall(stdout)) == 0:
        return GroupResult(group, "skipped", errors=errors)
    return GroupResult(group, "passed", errors=errors)


def runGroup(group, port, user, user2, tls, environment, workdir):
    """
    Run imaptest on one group, killed after L{GROUP_TIMEOUT} seconds.

    @return: its L{GroupResult}.
    """
    argv = [
        IMAPTEST, "host=" + HOST, "port=%d" % (port,), "user=" + user, "user2=" + user2,
        "pass=" + PASSWORD, "test=" + os.path.join(TESTS, group),
    ] + (["ssl"] if tls else [])
    paths = [os.path.join(workdir, "%s.%s" % (group, stream)) for stream in ("out", "err")]
    with open(paths[0], "w+") as stdout, open(paths[1], "w+") as stderr:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                   env=environment, cwd=workdir)
        try:
            process.wait(GROUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            stderr.seek(0)
            return GroupResult(group, "hung", errors=[line for line in stderr.read().splitlines()
                                                      if line.startswith("Error: ")])
        stdout.seek(0)
        stderr.seek(0)
        return parseGroup(group, stdout.read(), stderr.read())


def certificate(server):
    return os.path.join(server.dataDir, "tls", "cert.pem")


def runCompliance(server, tls, workdir):
    """
    Run every group against C{server}'s IMAP port, or its IMAPS port with
    C{tls}, as a pair of accounts of its own (imaptest's C{user} and
    C{user2}).

    @return: C{{group: GroupResult}}.
    """
    transport = "imaps" if tls else "imap"
    user, user2 = ("%s-%s@%s" % (transport, which, server.domain) for which in ("one", "two"))
    for address in (user, user2):
        done = server.cli("user", "add", address, "--password", PASSWORD)
        assert done.returncode == 0, done.stderr
    # imaptest verifies the server's certificate against OpenSSL's default
    # trust store, which this points at the test certificate alone.
    environment = dict(os.environ, SSL_CERT_FILE=certificate(server))
    environment.pop("SSL_CERT_DIR", None)
    os.makedirs(workdir, exist_ok=True)
    port = server.imaps if tls else server.imap
    deadline = time.monotonic() + RUN_BUDGET
    results = {}
    for group in complianceGroups():
        if time.monotonic() < deadline:
            results[group] = runGroup(group, port, user, user2, tls, environment, workdir)
        else:
            results[group] = GroupResult(group, "not run")
    return results


# --- what mdpy advertises ----------------------------------------------------


class LineClient:
    """
    An IMAP client on a socket (TLS or not) that sends one command and
    reads the lines up to its tagged reply (no literals: enough for LOGIN,
    CAPABILITY and LOGOUT).
    """

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        self.tags = iter(range(1, 1000))

    def line(self):
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection after %r" % (self.buffer,)
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def command(self, text):
        """
        @return: the response lines, the tagged reply last, which must be OK.
        """
        tag = "t%d" % (next(self.tags),)
        self.sock.sendall(("%s %s\r\n" % (tag, text)).encode())
        lines = [self.line()]
        while not lines[-1].startswith(tag + " "):
            lines.append(self.line())
        assert lines[-1].split()[1] == "OK", lines
        return lines


def capabilitiesIn(lines):
    """
    @return: the capabilities named by C{* CAPABILITY} responses and
        C{[CAPABILITY ...]} response codes in C{lines} (upper case).
    """
    found = set()
    for line in lines:
        for text in re.findall(r"^\* CAPABILITY (.*)$|\[CAPABILITY ([^\]]*)\]", line, re.I):
            found.update("".join(text).upper().split())
    return found


def connect(server, tls):
    sock = socket.create_connection((HOST, server.imaps if tls else server.imap), timeout=30)
    if tls:
        context = ssl.create_default_context(cafile=certificate(server))
        sock = context.wrap_socket(sock, server_hostname=HOST)
    return sock


def advertised(server, tls, user):
    """
    @return: every capability mdpy names to C{user} anywhere: in its
        greeting, before and in the reply to LOGIN, and after it.
    """
    with connect(server, tls) as sock:
        client = LineClient(sock)
        lines = [client.line()]
        lines += client.command("CAPABILITY")
        lines += client.command('LOGIN "%s" "%s"' % (user, PASSWORD))
        lines += client.command("CAPABILITY")
        client.command("LOGOUT")
    return capabilitiesIn(lines)


# --- the verdict -------------------------------------------------------------


def verdict(results, capabilities, hangs=None):
    """
    @param results: C{{group: GroupResult}} of one transport.
    @param capabilities: what mdpy advertises on it.
    @param hangs: why a group imaptest skips may hang, or L{None}.
    @return: what is wrong, one paragraph per group (empty if nothing is).
    """
    problems = []
    for group, result in sorted(results.items()):
        required = requiredCapabilities(group)
        if result.outcome == "failed" and group not in KNOWN_FAILING:
            problems.append("%s failed (not a known failure):\n%s" % (group, result.failure))
        elif result.outcome == "passed" and group in KNOWN_FAILING:
            problems.append("%s passes now: remove it from KNOWN_FAILING (%s)" % (group, KNOWN_FAILING[group]))
        elif result.outcome == "skipped" and (not required or required <= capabilities):
            problems.append("%s was skipped although mdpy advertises %s"
                            % (group, " ".join(sorted(required)) or "every capability it needs"))
        elif result.outcome == "hung" and (hangs is None or required <= capabilities):
            problems.append("%s hung: imaptest was still running after %d s" % (group, GROUP_TIMEOUT))
        elif result.outcome == "not run":
            problems.append("%s was not run: the groups before it took over %d s" % (group, RUN_BUDGET))
        if result.outcome == "passed":
            if result.errors and group not in KNOWN_ERROR_LINES:
                problems.append("%s passed but imaptest printed:\n%s" % (group, "\n".join(result.errors[:5])))
            elif not result.errors and group in KNOWN_ERROR_LINES:
                problems.append("%s prints no Error: line now: remove it from KNOWN_ERROR_LINES (%s)"
                                % (group, KNOWN_ERROR_LINES[group]))
    return problems


def summary(results):
    outcomes = {}
    for group, result in sorted(results.items()):
        outcomes.setdefault(result.outcome, []).append(group)
    return "; ".join("%s: %s" % (outcome, " ".join(groups)) for outcome, groups in sorted(outcomes.items()))


# --- tests -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from runningServer(tmp_path_factory.mktemp("mdpy-imaptest"), imapExtra="allow_plaintext_auth = yes\n")


@pytest.fixture(scope="module")
def imapResults(server):
    return runCompliance(server, False, os.path.join(server.root, "imaptest-imap"))


@pytest.fixture(scope="module")
def imapsResults(server):
    return runCompliance(server, True, os.path.join(server.root, "imaptest-imaps"))


def test_knownListsNameRealGroups():
    """
    Every group the lists name is one of the compliance directory's.
    """
    groups = set(complianceGroups())
    assert len(groups) == 71
    assert set(KNOWN_FAILING) | set(KNOWN_ERROR_LINES) <= groups


def test_parseGroup():
    """
    imaptest's summary and failure reports give a group's outcome.
    """
    passed = "1 test groups: 0 failed, 0 skipped due to missing capabilities\n" \
        "base protocol: 0/20 individual commands failed\nextensions: 0/0 individual commands failed\n"
    skipped = passed.replace("0/20", "0/0")
    failed = passed.replace("0 failed,", "1 failed,").replace("0/20", "1/20")
    report = "*** Test select command 3/9 (line 7)\n - failed: Missing 1 untagged replies\n - Command: examine ${mailbox}"
    error = "Error: u@example.test[5]: Keyword used without being in FLAGS: $hello: * 1 FETCH (FLAGS ($hello))"
    assert parseGroup("g", passed, "").outcome == "passed"
    assert parseGroup("g", passed, error + "\n").errors == [error]
    assert parseGroup("g", skipped, "").outcome == "skipped"
    result = parseGroup("select", failed, error + "\n" + report + "\n\n")
    assert (result.outcome, result.failure) == ("failed", report)
    assert parseGroup("g", "", "Panic: file test-exec.c: assertion failed\n").outcome == "failed"


def test_verdict(monkeypatch):
    """
    A failure of a group not listed is a regression, a listed group that
    passes must leave the list, a group may be skipped only for a
    capability mdpy does not advertise, and hang only while the TLS LOGOUT
    hang is known.
    """
    monkeypatch.setitem(KNOWN_FAILING, "select", "a known reason")
    monkeypatch.setitem(KNOWN_ERROR_LINES, "copy", "a known reason")
    monkeypatch.setitem(KNOWN_ERROR_LINES, "store", "a known reason")
    capabilities = {"IMAP4REV1", "MOVE", "ESEARCH"}
    fine = {
        "append": GroupResult("append", "passed"),
        "select": GroupResult("select", "failed", "*** Test select ..."),
        "copy": GroupResult("copy", "passed", errors=["Error: ..."]),
        "thread": GroupResult("thread", "skipped"),
    }
    assert verdict(fine, capabilities) == []
    assert verdict(dict(fine, **{"sort-size": GroupResult("sort-size", "hung")}), capabilities, "known") == []
    wrong = {
        "append": GroupResult("append", "failed", "*** Test append ..."),
        "select": GroupResult("select", "passed"),
        "copy": GroupResult("copy", "passed"),
        "store": GroupResult("store", "passed", errors=["Error: x"] * 9),
        "fetch": GroupResult("fetch", "passed", errors=["Error: x"]),
        "move": GroupResult("move", "skipped"),
        "thread": GroupResult("thread", "hung"),
        "esearch": GroupResult("esearch", "hung"),
        "id": GroupResult("id", "not run"),
    }
    problems = verdict(wrong, capabilities, "known")
    assert [problem.split()[0] for problem in problems] == [
        "append", "copy", "esearch", "fetch", "id", "move", "select"]
    assert "remove it from KNOWN_FAILING" in problems[-1]
    assert "remove it from KNOWN_ERROR_LINES" in problems[1]
    assert [problem.split()[0] for problem in verdict(wrong, capabilities)] == [
        "append", "copy", "esearch", "fetch", "id", "move", "select", "thread"]


def test_complianceOverIMAP(server, imapResults):
    """
    Over IMAP no group fails but the known failures, every known failure
    still fails, no group is skipped for a capability mdpy advertises, and
    no group hangs.
    """
    capabilities = advertised(server, False, "imap-one@" + server.domain)
    problems = verdict(imapResults, capabilities)
    assert not problems, "\n\n".join(problems + [summary(imapResults)])


def test_complianceOverIMAPS(server, imapsResults, tlsLogoutHangs):
    """
    The same over IMAPS, where a group imaptest skips may hang at its
    LOGOUT while L{KNOWN_TLS_LOGOUT_HANG} says so.
    """
    capabilities = advertised(server, True, "imaps-one@" + server.domain)
    problems = verdict(imapsResults, capabilities, KNOWN_TLS_LOGOUT_HANG if tlsLogoutHangs else None)
    assert not problems, "\n\n".join(problems + [summary(imapsResults)])


def test_sameOutcomeOverIMAPAndIMAPS(imapResults, imapsResults):
    """
    TLS changes no group's outcome, but for the groups that hang.
    """
    differ = {
        group: (result.outcome, imapsResults[group].outcome)
        for group, result in imapResults.items()
        if imapsResults[group].outcome not in ("hung", result.outcome)
    }
    assert not differ, differ


def closesAfterLogout(server, user):
    """
    LOGIN and LOGOUT over IMAPS, read up to the server's TLS close_notify
    and do not answer it, as a client that waits for the server to close.

    @return: whether the server closed the TCP connection within
        L{LOGOUT_CLOSE_WAIT} seconds.
    """
    with connect(server, True) as sock:
        client = LineClient(sock)
        client.line()
        client.command('LOGIN "%s" "%s"' % (user, PASSWORD))
        lines = client.command("LOGOUT")
        assert lines[0].startswith("* BYE"), lines
        sock.settimeout(LOGOUT_CLOSE_WAIT)
        try:
            assert sock.recv(65536) == b""  # the close_notify
        except socket.timeout:
            return False
        with socket.socket(fileno=os.dup(sock.fileno())) as raw:
            raw.settimeout(LOGOUT_CLOSE_WAIT)
            try:
                return raw.recv(65536) == b""
            except socket.timeout:
                return False


@pytest.fixture(scope="module")
def tlsLogoutHangs(server, imapsResults):
    return not closesAfterLogout(server, "imaps-one@" + server.domain)


def test_tlsLogoutCloses(tlsLogoutHangs):
    """
    After LOGOUT over TLS the server closes the connection without waiting
    for the client's close_notify (RFC 3501 section 6.1.3); while it does
    not, L{KNOWN_TLS_LOGOUT_HANG} says so, and once it does, that must be
    cleared (hung groups then fail L{test_complianceOverIMAPS}).
    """
    if tlsLogoutHangs:
        assert KNOWN_TLS_LOGOUT_HANG, "the connection stays open after LOGOUT over TLS"
    else:
        assert KNOWN_TLS_LOGOUT_HANG is None, "the server closes after LOGOUT over TLS now: " \
            "set KNOWN_TLS_LOGOUT_HANG to None"
