"""
End-to-end tests: a real C{twistd mdpy} on loopback, driven by swaks and
Python's smtplib.
"""

import email
import os
import re
import shutil
import smtplib
import socket
import ssl
import stat
import subprocess
import time

import pytest

from tests.server import HOST, MdpyServer, twistdCommand, waitForBanner

SWAKS = shutil.which("swaks")
USER = "joe@example.test"
PASSWORD = "joe-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MdpyServer(tmp_path_factory.mktemp("mdpy"))
    for args in (
        ("user", "add", USER, "--password", PASSWORD),
        ("user", "add", "ann@example.test", "--password", "ann-secret"),
        ("alias", "add", "team@example.test", USER, "ann@example.test"),
    ):
        # The first start makes example.test; before it, add it here.
        if args[0] == "user" and args[2] == USER:
            assert server.cli("domain", "add", "example.test").returncode == 0
        done = server.cli(*args)
        assert done.returncode == 0, done.stderr
    server.start()
    yield server
    server.stop()


def clientContext():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def newMessages(server, address, before):
    messages = server.messages(address)
    return messages[before:]


def swaks(*args):
    return subprocess.run(
        [SWAKS, "--timeout", "30", "--helo", "client.test"] + list(args),
        capture_output=True,
        text=True,
        timeout=120,
    )


def headers(raw):
    return email.message_from_bytes(raw)


def test_swaksStartTLSOnPort25(server):
    before = len(server.messages(USER))
    done = swaks(
        "--server", "%s:%d" % (HOST, server.smtp), "--tls",
        "--from", "sender@remote.test", "--to", USER,
        "--header", "Subject: swaks starttls",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in done.stdout
    [raw] = newMessages(server, USER, before)
    message = headers(raw)
    assert message["Subject"] == "swaks starttls"
    assert message.get_all("X-MDRcpt-To") == [USER]
    assert message.get_all("X-Rcpt-To") == [USER]
    assert message["Return-Path"] == "<sender@remote.test>"
    assert "with ESMTPS id" in message["Received"]


def test_swaksRelayRefusedOn25(server):
    done = swaks("--server", "%s:%d" % (HOST, server.smtp), "--from", "a@remote.test", "--to", "b@elsewhere.test")
    assert done.returncode != 0
    assert "<** 550 5.7.1 Relay access denied" in done.stdout


def test_swaksUnknownUser(server):
    done = swaks("--server", "%s:%d" % (HOST, server.smtp), "--from", "a@remote.test", "--to", "nobody@example.test")
    assert "<** 550 5.1.1" in done.stdout


def test_swaksAuthOnSubmission(server):
    before = len(server.messages("ann@example.test"))
    done = swaks(
        "--server", "%s:%d" % (HOST, server.submission), "--tls",
        "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD,
        "--from", USER, "--to", "ann@example.test",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<~  235 2.7.0 Authentication successful" in done.stdout
    assert len(newMessages(server, "ann@example.test", before)) == 1


def test_swaksSubmissionWithoutAuthIsRefused(server):
    done = swaks("--server", "%s:%d" % (HOST, server.submission), "--tls", "--from", USER, "--to", "ann@example.test")
    assert done.returncode != 0
    assert "530 5.7.0 Authentication required" in done.stdout


def test_swaksAuthNotOfferedBeforeTLS(server):
    done = swaks(
        "--server", "%s:%d" % (HOST, server.submission),
        "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD,
        "--from", USER, "--to", "ann@example.test",
    )
    assert done.returncode != 0
    assert "AUTH" not in done.stdout.split("EHLO", 1)[1].split("\n~>", 1)[0].replace("--auth", "")


def test_swaksImplicitTLSAndCramMD5(server):
    before = len(server.messages(USER))
    done = swaks(
        "--server", "%s:%d" % (HOST, server.smtps), "--tlsc",
        "--auth", "CRAM-MD5", "--auth-user", USER, "--auth-password", PASSWORD,
        "--from", USER, "--to", USER,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(newMessages(server, USER, before)) == 1


def test_swaksPipelining(server):
    before = len(server.messages(USER))
    done = swaks(
        "--server", "%s:%d" % (HOST, server.smtp), "--pipeline",
        "--from", "a@remote.test", "--to", "%s,nobody@example.test" % (USER,),
    )
    assert done.returncode == 0 or "550 5.1.1" in done.stdout
    assert "250 2.0.0 Ok: queued as" in done.stdout
    assert len(newMessages(server, USER, before)) == 1


def test_smtplibAliasOneToManyAndOneCopyEach(server):
    joe, ann = len(server.messages(USER)), len(server.messages("ann@example.test"))
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as client:
        client.ehlo("client.test")
        refused = client.sendmail(
            "a@remote.test",
            ["team@example.test", USER, "nobody@example.test"],
            b"Subject: team\r\nX-MDRcpt-To: forged@example.test\r\nX-Rcpt-To: forged@example.test\r\n\r\nbody\r\n",
        )
    assert list(refused) == ["nobody@example.test"]
    [toJoe] = newMessages(server, USER, joe)
    [toAnn] = newMessages(server, "ann@example.test", ann)
    assert headers(toJoe).get_all("X-MDRcpt-To") == ["team@example.test"]
    assert headers(toAnn).get_all("X-Rcpt-To") == ["team@example.test"]
    assert b"forged" not in toJoe


def test_smtplibSubmissionAndSMTPS(server):
    before = len(server.messages("ann@example.test"))
    with smtplib.SMTP(HOST, server.submission, timeout=30) as client:
        client.starttls(context=clientContext())
        client.login(USER, PASSWORD)
        client.sendmail(USER, ["ann@example.test"], b"Subject: 587\r\n\r\nx\r\n")
    with smtplib.SMTP_SSL(HOST, server.smtps, timeout=30, context=clientContext()) as client:
        client.login("ann@example.test", "ann-secret")
        client.sendmail("ann@example.test", ["ann@example.test"], b"Subject: 465\r\n\r\ny\r\n")
        # Authenticated: relayed, that is queued for the (here unreachable)
        # smarthost.
        assert client.sendmail("ann@example.test", ["x@remote.test"], b"z\r\n") == {}
    assert "<x@remote.test> pending" in server.cli("queue", "list").stdout
    subjects = [headers(m)["Subject"] for m in newMessages(server, "ann@example.test", before)]
    assert subjects == ["587", "465"]


def test_smtplibWrongPassword(server):
    with smtplib.SMTP_SSL(HOST, server.smtps, timeout=30, context=clientContext()) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login(USER, "wrong")
        assert info.value.smtp_code == 535
    assert "authentication failed for user=joe@example.test from 127.0.0.1" in server.logText()


def test_runningServerSeesDirectoryChanges(server):
    address = "late@example.test"
    with smtplib.SMTP(HOST, server.smtp, timeout=30) as client:
        client.ehlo("client.test")
        assert client.rcpt("<%s>" % address)[0] == 503  # no MAIL yet
        client.mail("a@remote.test")
        assert client.rcpt("<%s>" % address)[0] == 550
        assert server.cli("user", "add", address, "--password", "pw-secret-1").returncode == 0
        assert client.rcpt("<%s>" % address)[0] == 250
        assert server.cli("user", "disable", address).returncode == 0
        assert client.rcpt("<%s>" % address)[0] == 550


def rawTransaction(server, data):
    """
    Send C{data} as it is after DATA on port 25, for L{USER}, then QUIT.

    @return: the two replies that follow.
    """
    with socket.create_connection((HOST, server.smtp), timeout=30) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        s.sendall(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<%s>\r\nDATA\r\n" % USER.encode())
        assert [f.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        s.sendall(data + b"QUIT\r\n")
        return f.readline(), f.readline()


def test_smugglingOverTheWire(server):
    before = len(server.messages(USER))
    stored, bye = rawTransaction(
        server,
        b"Subject: one\r\n\r\nTesting\n.\nMAIL FROM:<smuggled@remote.test>\r\n"
        b"RCPT TO:<%s>\r\nDATA\r\nSubject: smuggled\r\n\r\nNO SMUGGLING\r\n.\r\n" % USER.encode(),
    )
    assert stored.startswith(b"250 2.0.0 Ok: queued as")
    assert bye.startswith(b"221")
    [raw] = newMessages(server, USER, before)
    assert b"NO SMUGGLING" in raw and b"Subject: one" in raw


def test_killAfter250LosesNothing(tmp_path):
    """
    Each message acknowledged with 250 is on disk even when the server is
    killed with SIGKILL right after the reply.
    """
    server = MdpyServer(tmp_path)
    server.cli("domain", "add", "example.test")
    server.cli("user", "add", USER, "--password", PASSWORD)
    for round in range(3):
        server.start()
        acknowledged = []
        with smtplib.SMTP(HOST, server.smtp, timeout=30) as client:
            for i in range(20):
                subject = "round %d message %d" % (round, i)
                client.sendmail("a@remote.test", [USER], ("Subject: %s\r\n\r\nx\r\n" % subject).encode())
                acknowledged.append(subject)
            server.kill()
        subjects = [headers(m)["Subject"] for m in server.messages(USER)]
        for subject in acknowledged:
            assert subjects.count(subject) == 1
        assert os.listdir(server.maildir(USER, "tmp")) == []


# --- twistd itself ------------------------------------------------------------


def test_embeddedDefaultWithPortOffset(tmp_path):
    """
    With no --config: data under $HOME, a self-signed certificate, the
    postmaster with a 0600 password file (named in the log, which never
    shows the password), and every port moved by the offset.
    """
    offset = None
    for candidate in range(20000, 60000, 1000):
        ports = [candidate + p for p in (25, 587, 465)]
        try:
            for port in ports:
                s = socket.socket()
                s.bind(("0.0.0.0", port))
                s.close()
        except OSError:
            continue
        offset = candidate
        break
    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("XDG_DATA_HOME", None)
    process = subprocess.Popen(
        twistdCommand() + ["-n", "--pidfile=", "mdpy", "--port-offset", str(offset)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=str(tmp_path),
    )
    try:
        banner = waitForBanner(offset + 25, process=process)
        assert banner.startswith(b"220 ") and b"ESMTP mdpy" in banner
        data = tmp_path / ".local" / "share" / "mdpy"
        password = data / "postmaster.password"
        assert stat.S_IMODE(password.stat().st_mode) == 0o600
        address, secret = password.read_text().split()
        assert address.startswith("postmaster@")
        assert (data / "tls" / "cert.pem").exists()
        with smtplib.SMTP_SSL(HOST, offset + 465, timeout=30, context=clientContext()) as client:
            client.login(address, secret)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    assert secret not in output  # only the file holding it is logged
    assert "its password is in %s" % (password,) in output
    assert "Traceback" not in output


def test_portInUseIsOneLineAndNonZero(tmp_path):
    server = MdpyServer(tmp_path)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind((HOST, server.submission))
    blocker.listen()
    try:
        started = time.monotonic()
        done = subprocess.run(
            twistdCommand() + ["-n", "--pidfile=", "mdpy", "--config", server.config],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        blocker.close()
    assert done.returncode != 0
    assert time.monotonic() - started < 30
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    [line] = [l for l in output.splitlines() if "cannot listen" in l]
    assert "port %d for submission" % server.submission in line
    assert "--port-offset" in line


def test_badConfigIsOneLine(tmp_path):
    config = tmp_path / "bad.ini"
    config.write_text("[smtp]\nport = not-a-port\n")
    done = subprocess.run(
        twistdCommand() + ["-n", "--pidfile=", "mdpy", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "[smtp] port = not-a-port" in done.stderr


def test_largeEightBitMessageIsStoredByteExact(server):
    """20 MB with dot-leading lines and 8-bit bytes: spooled, stored exactly."""
    import base64

    body = base64.encodebytes(os.urandom(15 * 1024 * 1024)).replace(b"\n", b"\r\n")
    message = b"Subject: big\r\n\r\n.leading dot\r\n..two dots\r\n" + body + b"caf\xc3\xa9 \xff\r\n"
    before = len(server.messages(USER))
    with smtplib.SMTP(HOST, server.smtp, timeout=60) as client:
        client.ehlo("client.test")
        client.sendmail("a@remote.test", [USER], message, mail_options=["BODY=8BITMIME"])
    [raw] = newMessages(server, USER, before)
    assert raw.endswith(b"\r\n" + message)


def test_longBareLineFeedBodyIsStoredWithCRLF(server):
    """
    200 KiB of lines ended by bare LF is not one long line: it is stored,
    every line ending CR LF; only CR LF . CR LF ended it.
    """
    lines = [b"bare line %06d ending in LF only" % i for i in range(6000)]
    body = b"Subject: bare LF\n\n" + b"\n".join(lines) + b"\n.\nnot the end\n"
    assert len(body) > 200 * 1024
    before = len(server.messages(USER))
    stored, bye = rawTransaction(server, body + b"\r\n.\r\n")
    assert stored.startswith(b"250 2.0.0 Ok: queued as")
    assert bye.startswith(b"221")
    [raw] = newMessages(server, USER, before)
    assert raw.endswith(b"\r\n" + body.replace(b"\n", b"\r\n") + b"\r\n")
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")


def test_senderBoundToTheLogin(server):
    """
    An authenticated user cannot send as ceo@ (a real account) or as anyone
    else, in the envelope or in From; its own address, an alias of it and a
    subaddress work, and the log names the login of what was accepted.
    """
    assert server.cli("user", "add", "ceo@example.test", "--password", "ceo-secret").returncode == 0
    refused = (553, b"5.7.1 Sender address not owned by authenticated user")
    before = len(server.messages("ann@example.test"))
    with smtplib.SMTP(HOST, server.submission, timeout=30) as client:
        client.starttls(context=clientContext())
        client.login(USER, PASSWORD)
        for forged in ("ceo@example.test", "CEO@example.test", "ceo+x@example.test", "boss@remote.test", ""):
            assert client.mail(forged) == refused, forged
            client.rset()
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail("ceo@example.test", ["ann@example.test"], b"Subject: forged\r\n\r\nx\r\n")
        assert (info.value.smtp_code, info.value.smtp_error) == refused
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail(
                USER, ["ann@example.test"],
                b"From: The CEO <ceo@example.test>\r\nSubject: forged From\r\n\r\nx\r\n",
            )
        assert (info.value.smtp_code, info.value.smtp_error) == refused
        for own in (USER, "joe+lists@example.test", "team@example.test"):
            client.sendmail(own, ["ann@example.test"], b"From: <%s>\r\nSubject: %s\r\n\r\nx\r\n" % (own.encode(), own.encode()))
    subjects = [headers(m)["Subject"] for m in newMessages(server, "ann@example.test", before)]
    assert subjects == [USER, "joe+lists@example.test", "team@example.test"]
    log = server.logText()
    for own in (USER, "joe+lists@example.test", "team@example.test"):
        assert re.search(
            r"smtp: accepted \S+ from <%s> to <ann@example\.test> .* proto=ESMTPSA sasl_username=%s\n"
            % (re.escape(own), re.escape(USER)), log
        ), own
    assert "smtp: sender <ceo@example.test> refused from 127.0.0.1 sasl_username=%s" % (USER,) in log
    assert "is not owned by %s" % (USER,) in log


def test_swaksForgedSenderOnSMTPS(server):
    done = swaks(
        "--server", "%s:%d" % (HOST, server.smtps), "--tlsc",
        "--auth", "PLAIN", "--auth-user", "ann@example.test", "--auth-password", "ann-secret",
        "--from", USER, "--to", "ann@example.test",
    )
    assert done.returncode != 0
    assert "<~* 553 5.7.1 Sender address not owned by authenticated user" in done.stdout
    done = swaks(
        "--server", "%s:%d" % (HOST, server.smtps), "--tlsc",
        "--auth", "PLAIN", "--auth-user", "ann@example.test", "--auth-password", "ann-secret",
        "--from", "ann@example.test", "--to", USER, "--header", "From: joe@example.test",
    )
    assert done.returncode != 0
    assert "<~  354 " in done.stdout  # refused after DATA, for the From field
    assert "<~* 553 5.7.1 Sender address not owned by authenticated user" in done.stdout
