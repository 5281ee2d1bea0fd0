"""
End-to-end tests of POP3 (110, STLS) and POP3S (995, implicit TLS): a real
C{twistd mdpy} on loopback, driven by Python's poplib, raw sockets, curl and
fetchmail (both installed by C{.ci/run}).

Messages are put in a mailbox the way other programs do it (a file renamed
from C{tmp/} into C{new/}) or by SMTP, so the expected bytes are known.
"""

import base64
import hashlib
import hmac
import itertools
import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from tests.server import HOST, MdpyServer, newAccount, makeMessage as message

_drops = itertools.count(1)

CURL = shutil.which("curl") or "curl"
FETCHMAIL = shutil.which("fetchmail") or "fetchmail"
CRLF = b"\r\n"
UIDL_SYNTAX = re.compile(rb"^[\x21-\x7e]{1,70}$")



# --- servers and accounts -----------------------------------------------------


def _startServer(root, pop3Extra=""):
    server = MdpyServer(root, pop3Extra=pop3Extra)
    done = server.cli("domain", "add", "example.test")
    assert done.returncode == 0, done.stderr
    server.start()
    return server


def _stopServer(server):
    server.stop()
    log = server.logText()
    assert "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """
    The default configuration: no plaintext login before STLS on 110.
    """
    server = _startServer(tmp_path_factory.mktemp("mdpy-pop3"))
    yield server
    _stopServer(server)


@pytest.fixture(scope="module")
def plainServer(tmp_path_factory):
    """
    A server with C{[pop3] allow_plaintext_auth = yes}.
    """
    server = _startServer(tmp_path_factory.mktemp("mdpy-pop3-plain"), "allow_plaintext_auth = yes\n")
    yield server
    _stopServer(server)


DOTS_BODY = (
    b".leading dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"...\r\n"
    b" .space then dot\r\n"
    b"middle . dot\r\n"
    b"..\r\n"
    b"end\r\n"
)
EIGHT_BIT_BODY = (
    b"caf\xc3\xa9 na\xc3\xafve \xe2\x82\xac\r\n"
    + bytes(range(0x80, 0x100))
    + b"\r\n"
    b"\xff\xfe\xfd.\r\n"
    b".\xe9t\xe9\r\n"
)


def drop(server, address, data, mtime=None):
    """
    Deliver C{data} as another program would: write it in C{tmp/} and rename
    it into C{new/}.

    @return: the file's base name (its Maildir key).
    """
    now = time.time()
    base = "%d.M%dP%dQ%d.e2e-test" % (int(now), int((now % 1) * 1000000), os.getpid(), next(_drops))
    path = os.path.join(server.maildir(address, "tmp"), base)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    os.rename(path, os.path.join(server.maildir(address, "new"), base))
    return base


def dropMany(server, address, messages):
    """
    Drop C{messages} oldest first (distinct modification times).

    @return: their base names.
    """
    start = time.time() - 1000
    return [drop(server, address, data, mtime=start + i) for i, data in enumerate(messages)]


def onDisk(server, address, base):
    """
    @return: whether the message file with key C{base} is in C{new/} or C{cur/}.
    """
    for sub in ("new", "cur"):
        for name in os.listdir(server.maildir(address, sub)):
            if name == base or name.startswith(base + ":"):
                return True
    return False


def contentsOnDisk(server, address):
    return sorted(server.messages(address))


def smtpDeliver(server, address, data):
    """
    Deliver by SMTP to port 25.

    @return: the stored bytes (with the headers the server adds on top).
    """
    before = set(server.messages(address))
    with smtplib.SMTP(HOST, server.smtp, timeout=60) as client:
        client.ehlo("client.test")
        refused = client.sendmail("sender@remote.test", [address], data)
    assert refused == {}
    [stored] = [m for m in server.messages(address) if m not in before]
    assert stored.endswith(data)
    return stored


def waitForLog(server, text, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        log = server.logText()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.1)


# --- clients ------------------------------------------------------------------


def verifyingContext(server):
    """
    A client context that trusts only the server's self-signed certificate
    and checks it is valid for 127.0.0.1.
    """
    return ssl.create_default_context(cafile=os.path.join(server.dataDir, "tls", "cert.pem"))


def certificate(server):
    return os.path.join(server.dataDir, "tls", "cert.pem")


def pop3s(server, address=None, password=None):
    client = poplib.POP3_SSL(HOST, server.pop3s, timeout=120, context=verifyingContext(server))
    if address is not None:
        client.user(address)
        client.pass_(password)
    return client


def pop3stls(server, address=None, password=None):
    client = poplib.POP3(HOST, server.pop3, timeout=120)
    client.stls(verifyingContext(server))
    if address is not None:
        client.user(address)
        client.pass_(password)
    return client


def retr(client, number):
    """
    @return: message C{number} as bytes (poplib un-stuffs dots and strips
        CRLF; every test message ends with CRLF).
    """
    response, lines, _ = client.retr(number)
    assert response.startswith(b"+OK")
    return b"".join(line + CRLF for line in lines)


def top(client, number, count):
    response, lines, _ = client.top(number, count)
    assert response.startswith(b"+OK")
    return b"".join(line + CRLF for line in lines)


def scanList(client):
    """
    @return: C{{number: size}} from LIST.
    """
    response, lines, _ = client.list()
    assert response.startswith(b"+OK")
    result = {}
    for line in lines:
        number, size = line.split()[:2]
        result[int(number)] = int(size)
    return result


def scanUidl(client):
    """
    @return: C{{number: uid}} from UIDL.
    """
    response, lines, _ = client.uidl()
    assert response.startswith(b"+OK")
    result = {}
    for line in lines:
        number, uid = line.split(b" ", 1)
        result[int(number)] = uid
    return result


def retrAll(client):
    count, _ = client.stat()
    return {n: retr(client, n) for n in range(1, count + 1)}


def errorText(info):
    """
    @return: the server's reply carried by a L{poplib.error_proto}.
    """
    reply = info.value.args[0]
    return reply if isinstance(reply, bytes) else str(reply).encode()


def drop_connection(client):
    """
    Close a poplib client's socket without QUIT.
    """
    try:
        client.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    client.file.close()
    client.sock.close()


def loginEventually(connect, address, password, timeout=10.0):
    """
    Log in, retrying while the reply is C{-ERR [IN-USE]} (the server learns
    of a dropped connection asynchronously).
    """
    deadline = time.monotonic() + timeout
    while True:
        client = connect()
        client.user(address)
        try:
            client.pass_(password)
            return client
        except poplib.error_proto as e:
            drop_connection(client)
            if not bytes(e.args[0]).startswith(b"-ERR [IN-USE]") or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


class Raw:
    """
    A POP3 connection over a bare socket, to see the bytes on the wire.
    """

    def __init__(self, port, context=None):
        self.sock = socket.create_connection((HOST, port), timeout=60)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname=HOST)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self):
        return self.file.readline(1 << 20)

    def send(self, data):
        self.sock.sendall(data)

    def command(self, text):
        self.send(text.encode() + CRLF if isinstance(text, str) else text + CRLF)
        return self.line()

    def multiline(self):
        """
        @return: the raw lines of a multi-line body, up to (not with) the
            terminating C{.CRLF}.
        """
        lines = []
        while True:
            line = self.line()
            assert line, "connection closed inside a multi-line reply"
            if line == b".\r\n":
                return lines
            lines.append(line)

    def starttls(self, context):
        reply = self.command("STLS")
        assert reply.startswith(b"+OK"), reply
        self.sock = context.wrap_socket(self.sock, server_hostname=HOST)
        self.file = self.sock.makefile("rb")

    def login(self, address, password):
        assert self.command("USER " + address).startswith(b"+OK")
        reply = self.command("PASS " + password)
        assert reply.startswith(b"+OK"), reply

    def capabilities(self):
        reply = self.command("CAPA")
        assert reply.startswith(b"+OK"), reply
        return [line.rstrip(b"\r\n") for line in self.multiline()]

    def close(self):
        """
        Close without QUIT (the socket's descriptor stays open while its
        file object does).
        """
        for thing in (self.file, self.sock):
            try:
                thing.close()
            except OSError:
                pass


def stuffed(data):
    """
    @return: C{data} as RFC 1939 puts it on the wire (dot-stuffed, then the
        terminator).
    """
    lines = data.split(CRLF)
    assert lines[-1] == b""
    return b"".join((b"." + l if l.startswith(b".") else l) + CRLF for l in lines[:-1]) + b".\r\n"


def capaNames(lines):
    return [line.split()[0].upper().decode("ascii") for line in lines if line.strip()]


# --- poplib: POP3S and STLS ---------------------------------------------------


@pytest.mark.parametrize("transport", ["pop3s", "stls"])
def test_poplibByteExact(server, transport):
    """
    Over implicit TLS (995) and after STLS (110): STAT, LIST, UIDL, RETR
    byte for byte (dot lines and 8-bit bytes), TOP n 0 and TOP n 2, the
    one-message forms of LIST and UIDL; QUIT without DELE keeps every file.
    """
    address, password = newAccount(server, transport)
    expected = [
        message("dots", DOTS_BODY),
        message("caf\xe9".encode("latin-1"), EIGHT_BIT_BODY, b"Content-Type: text/plain; charset=utf-8\r\n"),
        message("plain", b"one\r\ntwo\r\nthree\r\nfour\r\n"),
    ]
    bases = dropMany(server, address, expected)
    client = pop3s(server) if transport == "pop3s" else pop3stls(server)
    assert client.getwelcome().startswith(b"+OK")
    client.user(address)
    client.pass_(password)
    count, total = client.stat()
    assert count == 3
    assert total == sum(len(m) for m in expected)
    sizes = scanList(client)
    assert sorted(sizes) == [1, 2, 3]
    got = retrAll(client)
    assert sorted(got.values()) == sorted(expected)
    for number, data in got.items():
        assert sizes[number] == len(data)
        assert client.list(number).split()[:3] == [b"+OK", str(number).encode(), str(len(data)).encode()]
    uids = scanUidl(client)
    assert sorted(uids) == [1, 2, 3]
    assert len(set(uids.values())) == 3
    for number, uid in uids.items():
        assert UIDL_SYNTAX.match(uid), uid
        assert client.uidl(number).split()[:3] == [b"+OK", str(number).encode(), uid]
    dots = [n for n, data in got.items() if data == expected[0]][0]
    header, body = expected[0].split(b"\r\n\r\n", 1)
    assert top(client, dots, 0) == header + b"\r\n\r\n"
    assert top(client, dots, 2) == header + b"\r\n\r\n.leading dot\r\n..two dots\r\n"
    assert top(client, dots, 1000) == expected[0]
    assert client.noop().startswith(b"+OK")
    assert client.quit().startswith(b"+OK")
    for base in bases:
        assert onDisk(server, address, base)
    assert contentsOnDisk(server, address) == sorted(expected)


def test_poplibSTLSThenUserPass(server):
    """
    On port 110: STLS, then USER/PASS; CAPA after STLS offers USER and SASL.
    """
    address, password = newAccount(server, "stls")
    expected = [message("stls dots", DOTS_BODY), message("stls 8bit", EIGHT_BIT_BODY)]
    dropMany(server, address, expected)
    client = poplib.POP3(HOST, server.pop3, timeout=60)
    assert client.getwelcome().startswith(b"+OK")
    assert "STLS" in client.capa()
    client.stls(verifyingContext(server))
    capabilities = client.capa()
    for name in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER"):
        assert name in capabilities, name
    assert "SASL" in capabilities and "PLAIN" in [m.upper() for m in capabilities["SASL"]]
    client.user(address)
    client.pass_(password)
    assert client.stat() == (2, sum(len(m) for m in expected))
    assert sorted(retrAll(client).values()) == sorted(expected)
    assert client.quit().startswith(b"+OK")


def test_twentyMegabyteAttachment(server):
    """
    A 20 MB message with a base64 attachment comes back byte for byte.
    """
    address, password = newAccount(server, "big")
    payload = os.urandom(15 * 1024 * 1024)
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    big = message(
        "big attachment",
        b"--b1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b".see the attachment, caf\xc3\xa9\r\n"
        b"--b1\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=\"big.bin\"\r\n\r\n"
        + encoded
        + b"--b1--\r\n",
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n",
    )
    assert len(big) > 20 * 1000 * 1000
    small = message("small")
    dropMany(server, address, [big, small])
    client = pop3s(server, address, password)
    sizes = scanList(client)
    assert sorted(sizes.values()) == sorted([len(big), len(small)])
    [number] = [n for n, size in sizes.items() if size == len(big)]
    data = retr(client, number)
    assert client.quit().startswith(b"+OK")
    assert len(data) == len(big)
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(big).hexdigest()


def test_deleAndQuitRemovesTheFile(server):
    """
    DELE marks a message; QUIT removes its file before the +OK is read.
    """
    address, password = newAccount(server, "dele")
    expected = [message("first"), message("second"), message("third")]
    bases = dict(zip(expected, dropMany(server, address, expected)))
    client = pop3s(server, address, password)
    got = retrAll(client)
    uids = scanUidl(client)
    assert client.dele(1).startswith(b"+OK")
    assert client.quit().startswith(b"+OK")
    gone = got[1]
    assert not onDisk(server, address, bases[gone])
    for data in expected:
        if data != gone:
            assert onDisk(server, address, bases[data])
    assert contentsOnDisk(server, address) == sorted(m for m in expected if m != gone)
    client = pop3s(server, address, password)
    assert client.stat()[0] == 2
    assert sorted(retrAll(client).values()) == sorted(m for m in expected if m != gone)
    assert uids[1] not in scanUidl(client).values()
    client.quit()


def test_deleThenDroppedConnectionDeletesNothing(server):
    address, password = newAccount(server, "drop")
    expected = [message("keep me 1"), message("keep me 2")]
    bases = dropMany(server, address, expected)
    client = pop3s(server, address, password)
    assert client.dele(1).startswith(b"+OK")
    assert client.dele(2).startswith(b"+OK")
    drop_connection(client)
    client = loginEventually(lambda: pop3s(server), address, password)
    assert client.stat() == (2, sum(len(m) for m in expected))
    assert sorted(retrAll(client).values()) == sorted(expected)
    client.quit()
    for base in bases:
        assert onDisk(server, address, base)


def test_rsetUndoesDele(server):
    address, password = newAccount(server, "rset")
    expected = [message("r1"), message("r2")]
    bases = dropMany(server, address, expected)
    client = pop3s(server, address, password)
    sizes = scanList(client)
    assert client.dele(1).startswith(b"+OK")
    assert client.stat() == (1, sizes[2])
    assert list(scanList(client)) == [2]
    assert list(scanUidl(client)) == [2]
    for call in (lambda: client.retr(1), lambda: client.dele(1), lambda: client.list(1), lambda: client.top(1, 0)):
        with pytest.raises(poplib.error_proto) as info:
            call()
        assert errorText(info).startswith(b"-ERR")
    assert client.rset().startswith(b"+OK")
    assert client.stat() == (2, sum(len(m) for m in expected))
    assert client.quit().startswith(b"+OK")
    for base in bases:
        assert onDisk(server, address, base)


def test_dotStuffingOnTheWire(server):
    """
    The raw RETR and TOP replies are dot-stuffed and end with CRLF.CRLF.
    """
    address, password = newAccount(server, "wire")
    data = message("wire", DOTS_BODY + EIGHT_BIT_BODY)
    drop(server, address, data)
    raw = Raw(server.pop3s, verifyingContext(server))
    try:
        assert raw.greeting.startswith(b"+OK")
        raw.login(address, password)
        reply = raw.command("RETR 1")
        assert reply.startswith(b"+OK"), reply
        assert b"".join(raw.multiline()) + b".\r\n" == stuffed(data)
        reply = raw.command("TOP 1 3")
        assert reply.startswith(b"+OK"), reply
        header = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        assert b"".join(raw.multiline()) + b".\r\n" == stuffed(header + b".leading dot\r\n..two dots\r\n.\r\n")
        assert raw.command("QUIT").startswith(b"+OK")
        assert raw.line() == b""
    finally:
        raw.close()


def test_bareLineFeedFileFromAnotherServer(server):
    """
    A Maildir file with Unix line ends (copied from an old server) goes out
    with CRLF, and LIST, STAT and RETR count its size as sent (RFC 1939
    section 11), so clients checking sizes see no mismatch.
    """
    address, password = newAccount(server, "unix")
    wire = message("unix line ends", DOTS_BODY + EIGHT_BIT_BODY)
    drop(server, address, wire.replace(CRLF, b"\n"))
    raw = Raw(server.pop3s, verifyingContext(server))
    try:
        raw.login(address, password)
        assert raw.command("STAT").split()[:3] == [b"+OK", b"1", b"%d" % (len(wire),)]
        assert raw.command("LIST 1").split()[:3] == [b"+OK", b"1", b"%d" % (len(wire),)]
        reply = raw.command("RETR 1")
        assert reply.startswith(b"+OK"), reply
        assert b"".join(raw.multiline()) + b".\r\n" == stuffed(wire)
        reply = raw.command("TOP 1 1")
        assert reply.startswith(b"+OK"), reply
        header = wire.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        assert b"".join(raw.multiline()) + b".\r\n" == stuffed(header + b".leading dot\r\n")
        assert raw.command("QUIT").startswith(b"+OK")
    finally:
        raw.close()


# --- no plaintext login before STLS -------------------------------------------


def test_plainPortRefusesLoginBeforeSTLS(server):
    address, password = newAccount(server, "before")
    drop(server, address, message("after stls"))
    raw = Raw(server.pop3)
    try:
        assert raw.greeting.startswith(b"+OK")
        names = capaNames(raw.capabilities())
        assert "STLS" in names
        assert "USER" not in names
        assert "SASL" not in names
        reply = raw.command("USER " + address)
        assert reply.startswith(b"-ERR [AUTH]"), reply
        reply = raw.command("PASS " + password)
        assert reply.startswith(b"-ERR"), reply
        plain = base64.b64encode(b"\0" + address.encode() + b"\0" + password.encode()).decode()
        reply = raw.command("AUTH PLAIN " + plain)
        assert reply.startswith(b"-ERR [AUTH]"), reply
        reply = raw.command("STAT")
        assert reply.startswith(b"-ERR"), reply
        raw.starttls(verifyingContext(server))
        names = capaNames(raw.capabilities())
        assert "USER" in names and "SASL" in names
        raw.login(address, password)
        reply = raw.command("STAT")
        assert reply.startswith(b"+OK 1 "), reply
        assert raw.command("STLS").startswith(b"-ERR")
        assert raw.command("QUIT").startswith(b"+OK")
    finally:
        raw.close()


def test_stlsArgumentAndAuthListBeforeSTLS(server):
    """
    C{STLS x} is an error and the session stays in plaintext; C{AUTH}
    without a mechanism lists nothing before STLS (nothing could be used),
    and every mechanism after it.
    """
    raw = Raw(server.pop3)
    try:
        reply = raw.command("STLS x")
        assert reply == b"-ERR STLS takes no argument.\r\n", reply
        assert raw.command("NOOP").startswith(b"-ERR"), "still talking plaintext"
        assert raw.command("AUTH") == b"+OK\r\n"
        assert raw.multiline() == []
        raw.starttls(verifyingContext(server))
        assert raw.command("AUTH") == b"+OK\r\n"
        assert raw.multiline() == [b"PLAIN\r\n", b"LOGIN\r\n", b"CRAM-MD5\r\n"]
        assert raw.command("QUIT").startswith(b"+OK")
    finally:
        raw.close()


def test_authListWhenPlaintextAllowed(plainServer):
    raw = Raw(plainServer.pop3)
    try:
        assert raw.command("AUTH") == b"+OK\r\n"
        assert raw.multiline() == [b"PLAIN\r\n", b"LOGIN\r\n", b"CRAM-MD5\r\n"]
    finally:
        raw.close()


def test_plaintextAuthWhenAllowed(plainServer):
    address, password = newAccount(plainServer, "plain")
    expected = message("plain login", DOTS_BODY)
    drop(plainServer, address, expected)
    client = poplib.POP3(HOST, plainServer.pop3, timeout=60)
    capabilities = client.capa()
    assert "USER" in capabilities and "STLS" in capabilities
    client.user(address)
    client.pass_(password)
    assert client.stat() == (1, len(expected))
    assert retr(client, 1) == expected
    assert client.quit().startswith(b"+OK")


def test_pipelinedCommands(plainServer):
    """
    USER, PASS and STAT in one write get three replies in order; so do LIST,
    UIDL, RETR and QUIT.
    """
    address, password = newAccount(plainServer, "pipe")
    data = message("pipelined", DOTS_BODY)
    drop(plainServer, address, data)
    raw = Raw(plainServer.pop3)
    try:
        assert "PIPELINING" in capaNames(raw.capabilities())
        raw.send(("USER %s\r\nPASS %s\r\nSTAT\r\n" % (address, password)).encode())
        assert raw.line().startswith(b"+OK")
        assert raw.line().startswith(b"+OK")
        assert raw.line().split()[:3] == [b"+OK", b"1", b"%d" % (len(data),)]
        raw.send(b"LIST\r\nUIDL\r\nRETR 1\r\nNOOP\r\nQUIT\r\n")
        assert raw.line().startswith(b"+OK")
        assert [line.split()[:2] for line in raw.multiline()] == [[b"1", b"%d" % (len(data),)]]
        assert raw.line().startswith(b"+OK")
        [uidl] = raw.multiline()
        assert uidl.startswith(b"1 ")
        assert raw.line().startswith(b"+OK")
        assert b"".join(raw.multiline()) + b".\r\n" == stuffed(data)
        assert raw.line().startswith(b"+OK")
        assert raw.line().startswith(b"+OK")
        assert raw.line() == b""
    finally:
        raw.close()


# --- the maildrop lock --------------------------------------------------------


def test_maildropLockedForTheSession(server):
    address, password = newAccount(server, "lock")
    drop(server, address, message("locked"))
    first = pop3s(server, address, password)
    second = pop3s(server)
    second.user(address)
    with pytest.raises(poplib.error_proto) as info:
        second.pass_(password)
    assert errorText(info).startswith(b"-ERR [IN-USE]")
    drop_connection(second)
    stls = pop3stls(server)
    stls.user(address)
    with pytest.raises(poplib.error_proto) as info:
        stls.pass_(password)
    assert errorText(info).startswith(b"-ERR [IN-USE]")
    drop_connection(stls)
    assert first.stat()[0] == 1
    assert first.quit().startswith(b"+OK")
    third = pop3s(server, address, password)
    assert third.stat()[0] == 1
    third.quit()


def test_lockReleasedWhenConnectionDrops(server):
    address, password = newAccount(server, "lockdrop")
    drop(server, address, message("locked then dropped"))
    first = pop3s(server, address, password)
    drop_connection(first)
    client = loginEventually(lambda: pop3s(server), address, password)
    assert client.stat()[0] == 1
    client.quit()


# --- new mail during a session ------------------------------------------------


def test_newMailAppearsInTheNextSession(server):
    """
    Mail delivered by SMTP or dropped into new/ during a session changes
    nothing in it (numbers, STAT, LIST, UIDL); the next session has it, and
    the DELE of this session removes only its own message.
    """
    address, password = newAccount(server, "arrive")
    existing = [message("old 1"), message("old 2")]
    dropMany(server, address, existing)
    client = pop3s(server, address, password)
    stat, sizes, uids, got = client.stat(), scanList(client), scanUidl(client), retrAll(client)
    assert stat[0] == 2
    assert client.dele(1).startswith(b"+OK")
    bySmtp = smtpDeliver(server, address, message("arrived by smtp", DOTS_BODY))
    byFile = message("arrived as a file")
    drop(server, address, byFile)
    assert client.noop().startswith(b"+OK")
    assert client.stat() == (1, sizes[2])
    assert client.rset().startswith(b"+OK")
    assert client.stat() == stat
    assert scanList(client) == sizes
    assert scanUidl(client) == uids
    assert retrAll(client) == got
    for call in (lambda: client.retr(3), lambda: client.list(3), lambda: client.uidl(4)):
        with pytest.raises(poplib.error_proto):
            call()
    assert client.dele(1).startswith(b"+OK")
    assert client.quit().startswith(b"+OK")

    client = pop3s(server, address, password)
    after = retrAll(client)
    assert sorted(after.values()) == sorted([got[2], bySmtp, byFile])
    newUids = scanUidl(client)
    assert after[1] == got[2] and newUids[1] == uids[2]
    assert uids[1] not in newUids.values()
    assert len(set(newUids.values())) == 3
    client.quit()


# --- UIDL ---------------------------------------------------------------------


def test_uidlStableAndNeverReused(server):
    address, password = newAccount(server, "uidl")
    expected = [message("u%d" % i) for i in range(4)]
    dropMany(server, address, expected)

    def session():
        client = pop3s(server, address, password)
        mapping = {retr(client, n): uid for n, uid in scanUidl(client).items()}
        return client, mapping

    client, first = session()
    client.quit()
    client, second = session()
    assert second == first
    assert sorted(first) == sorted(expected)
    for uid in first.values():
        assert UIDL_SYNTAX.match(uid), uid
    assert len(set(first.values())) == 4
    deleted = retr(client, 1)
    assert client.dele(1).startswith(b"+OK")
    assert client.quit().startswith(b"+OK")
    smtpDeliver(server, address, message("u new"))
    client, third = session()
    client.quit()
    for data, uid in third.items():
        if data in first:
            assert uid == first[data]
    assert len(third) == 4
    assert first[deleted] not in third.values()
    assert len(set(third.values())) == 4
    assert len(set(first.values()) | set(third.values())) == 5


def test_uidlSurvivesRestart(tmp_path):
    server = _startServer(tmp_path)
    try:
        address, password = newAccount(server, "restart")
        expected = [message("restart %d" % i) for i in range(3)]
        dropMany(server, address, expected)
        client = pop3s(server, address, password)
        before = {retr(client, n): uid for n, uid in scanUidl(client).items()}
        client.quit()
        server.stop()
        server.start()
        client = pop3s(server, address, password)
        after = {retr(client, n): uid for n, uid in scanUidl(client).items()}
        client.quit()
        assert after == before
        # The index beside the Maildir is a cache: rebuilt, same UIDLs.
        server.stop()
        for name in ("mdpy-uidlist", "mdpy-uidlist.lock"):
            try:
                os.remove(os.path.join(server.maildir(address), name))
            except FileNotFoundError:
                pass
        server.start()
        client = pop3s(server, address, password)
        rebuilt = {retr(client, n): uid for n, uid in scanUidl(client).items()}
        client.quit()
        assert rebuilt == before
        smtpDeliver(server, address, message("after restart"))
        client = pop3s(server, address, password)
        uids = list(scanUidl(client).values())
        client.quit()
        assert len(set(uids)) == 4
    finally:
        _stopServer(server)


# --- bad input ----------------------------------------------------------------


def test_badCommands(server):
    address, password = newAccount(server, "bad")
    drop(server, address, message("bad input"))
    # Before login, each on its own connection (a server may hang up after
    # a few bad commands from an unauthenticated client).
    for command in ("STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "FROB", ""):
        raw = Raw(server.pop3s, verifyingContext(server))
        try:
            reply = raw.command(command)
            assert reply.startswith(b"-ERR"), (command, reply)
        finally:
            raw.close()
    raw = Raw(server.pop3s, verifyingContext(server))
    try:
        raw.login(address, password)
        for command in (
            "FROB", "RETR 999", "RETR abc", "RETR", "RETR 1 2", "DELE 0", "DELE -1", "LIST 0",
            "LIST 99999999999999999999", "TOP 1", "TOP 1 -1", "TOP x 1", "UIDL 2", "USER " + address,
        ):
            reply = raw.command(command)
            assert reply.startswith(b"-ERR"), (command, reply)
        assert raw.command("NOOP").startswith(b"+OK")
        assert raw.command("stat").startswith(b"+OK 1 ")
        assert raw.command("QUIT").startswith(b"+OK")
    finally:
        raw.close()
    assert len(server.messages(address)) == 1


def test_hugeLine(server):
    """
    A 100 KB line gets -ERR; then the connection either still works or is
    closed cleanly; no traceback in the log.
    """
    for before in (False, True):
        address, password = newAccount(server, "huge")
        raw = Raw(server.pop3s, verifyingContext(server))
        try:
            if before:
                raw.login(address, password)
            raw.send(b"X" * 100000 + CRLF)
            reply = raw.line()
            assert reply.startswith(b"-ERR"), reply[:200]
            try:
                # NOOP is only valid once logged in; CAPA in any state.
                raw.send(b"NOOP\r\n" if before else b"CAPA\r\n")
                reply = raw.line()
            except (ConnectionError, ssl.SSLError):
                reply = b""
            assert reply == b"" or reply.startswith(b"+OK"), reply[:200]
        finally:
            raw.close()
    # still serving
    client = loginEventually(lambda: pop3s(server), address, password)
    client.quit()
    time.sleep(0.5)
    assert "Traceback" not in server.logText()


def test_wrongPassword(server):
    address, password = newAccount(server, "wrong")
    raw = Raw(server.pop3s, verifyingContext(server))
    try:
        assert raw.command("USER " + address).startswith(b"+OK")
        reply = raw.command("PASS not-" + password)
        assert reply.startswith(b"-ERR [AUTH]"), reply
        # back in the AUTHORIZATION state: the right password works
        raw.login(address, password)
        assert raw.command("QUIT").startswith(b"+OK")
    finally:
        raw.close()
    marker = "pop3: authentication failed for user=" + address
    log = waitForLog(server, marker)
    lines = [line for line in log.splitlines() if marker in line]
    assert lines, log[-3000:]
    assert "127.0.0.1" in lines[0]
    assert password not in log


def test_saslMechanisms(server):
    """
    AUTH PLAIN (with an initial response and with a continuation), AUTH
    LOGIN and AUTH CRAM-MD5 over POP3S; a wrong one is -ERR [AUTH].
    """
    address, password = newAccount(server, "sasl")
    drop(server, address, message("sasl"))
    plain = base64.b64encode(b"\0" + address.encode() + b"\0" + password.encode())

    def loginWith(steps):
        raw = Raw(server.pop3s, verifyingContext(server))
        try:
            reply = None
            for step in steps:
                reply = raw.command(step(reply) if callable(step) else step)
            final = reply
            if final.startswith(b"+OK"):
                assert raw.command("STAT").startswith(b"+OK 1 ")
                assert raw.command("QUIT").startswith(b"+OK")
            return final
        finally:
            raw.close()

    def cramResponse(reply):
        assert reply.startswith(b"+ "), reply
        challenge = base64.b64decode(reply[2:].strip())
        digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
        return base64.b64encode(address.encode() + b" " + digest.encode())

    assert loginWith([b"AUTH PLAIN " + plain]).startswith(b"+OK")
    assert loginWith([b"AUTH PLAIN", plain]).startswith(b"+OK")
    assert loginWith([b"AUTH LOGIN", base64.b64encode(address.encode()), base64.b64encode(password.encode())]).startswith(b"+OK")
    assert loginWith([b"AUTH CRAM-MD5", cramResponse]).startswith(b"+OK")
    bad = base64.b64encode(b"\0" + address.encode() + b"\0wrong")
    assert loginWith([b"AUTH PLAIN " + bad]).startswith(b"-ERR [AUTH]")
    assert loginWith([b"AUTH PLAIN", b"*"]).startswith(b"-ERR")


# --- curl ---------------------------------------------------------------------


def curl(server, address, password, *args):
    return subprocess.run(
        [CURL, "-s", "-S", "--max-time", "120", "--cacert", certificate(server), "-u", "%s:%s" % (address, password)]
        + list(args),
        capture_output=True,
        timeout=180,
    )


def curlListing(stdout):
    """
    @return: C{[(number, size)]} from the LIST output curl prints.
    """
    assert stdout.endswith(CRLF)
    return [tuple(int(word) for word in line.split()[:2]) for line in stdout.split(CRLF)[:-1]]


def test_curlListRetrDele(server):
    address, password = newAccount(server, "curl")
    expected = [message("curl dots", DOTS_BODY), message("curl 8bit", EIGHT_BIT_BODY), message("curl plain")]
    dropMany(server, address, expected)
    client = pop3s(server, address, password)
    got = retrAll(client)
    client.quit()
    assert sorted(got.values()) == sorted(expected)
    base = "pop3s://127.0.0.1:%d/" % (server.pop3s,)

    done = curl(server, address, password, base)
    assert done.returncode == 0, done.stderr
    assert curlListing(done.stdout) == [(n, len(got[n])) for n in sorted(got)]

    for number in sorted(got):
        done = curl(server, address, password, base + str(number))
        assert done.returncode == 0, done.stderr
        assert done.stdout == got[number]

    done = curl(server, address, password, "-X", "DELE", "-I", base + "1")
    assert done.returncode == 0, done.stderr
    assert sorted(server.messages(address)) == sorted([got[2], got[3]])
    done = curl(server, address, password, base)
    assert done.returncode == 0, done.stderr
    assert curlListing(done.stdout) == [(1, len(got[2])), (2, len(got[3]))]
    done = curl(server, address, password, base + "1")
    assert done.stdout == got[2]


def test_curlSTLS(server):
    address, password = newAccount(server, "curlstls")
    expected = message("curl stls", DOTS_BODY)
    drop(server, address, expected)
    base = "pop3://127.0.0.1:%d/" % (server.pop3,)
    done = curl(server, address, password, "-v", "--ssl-reqd", base)
    assert done.returncode == 0, done.stderr
    assert b"> STLS" in done.stderr
    assert curlListing(done.stdout) == [(1, len(expected))]
    done = curl(server, address, password, "--ssl-reqd", base + "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected
    # Without TLS, curl cannot log in (no USER, no SASL before STLS).
    done = curl(server, address, password, base)
    assert done.returncode != 0
    assert done.stdout == b""


def test_curlWrongPassword(server):
    address, password = newAccount(server, "curlbad")
    done = curl(server, address, "nope", "pop3s://127.0.0.1:%d/" % (server.pop3s,))
    assert done.returncode == 67, (done.returncode, done.stderr)  # CURLE_LOGIN_DENIED


# --- fetchmail ----------------------------------------------------------------


def fetchmail(server, home, address, password, tls="ssl"):
    """
    Run fetchmail once, keeping mail on the server and remembering UIDLs in
    C{home/.fetchids}; each message goes through an MDA into its own file
    under C{home/out}.

    @return: the completed process and the new files' contents.
    """
    out = os.path.join(home, "out")
    os.makedirs(out, exist_ok=True)
    mda = os.path.join(home, "deliver.sh")
    with open(mda, "w") as f:
        f.write('#!/bin/sh\nexec cat > "$(mktemp %s/msg.XXXXXXXX)"\n' % (out,))
    os.chmod(mda, 0o755)
    if tls == "ssl":
        port, security = server.pop3s, "ssl"
    else:
        port, security = server.pop3, 'sslproto "tls1.2+"'
    rc = os.path.join(home, ".fetchmailrc")
    with open(rc, "w") as f:
        f.write(
            "set invisible\n"
            "poll 127.0.0.1 service %d protocol POP3 uidl\n"
            '  user "%s" password "%s" is "tester" here\n'
            '  %s sslcertck sslcertfile "%s" sslcommonname "localhost"\n'
            "  keep no rewrite no stripcr\n"
            '  mda "%s"\n' % (port, address, password, security, certificate(server), mda)
        )
    os.chmod(rc, 0o600)
    before = set(os.listdir(out))
    env = dict(os.environ, HOME=home, FETCHMAILHOME=home)
    done = subprocess.run(
        [FETCHMAIL, "-f", rc, "--idfile", os.path.join(home, ".fetchids"), "-N", "-d0", "-v"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=home,
    )
    fetched = []
    for name in sorted(set(os.listdir(out)) - before):
        with open(os.path.join(out, name), "rb") as f:
            fetched.append(f.read())
    return done, fetched


def test_fetchmailKeepAndUidl(server, tmp_path):
    """
    The first run fetches everything, the second nothing (exit status 1),
    a third only the message that arrived since; mail stays on the server,
    and what fetchmail hands its MDA is the stored message.
    """
    address, password = newAccount(server, "fetch")
    expected = [message("fetch dots", DOTS_BODY), message("fetch 8bit", EIGHT_BIT_BODY), message("fetch plain")]
    dropMany(server, address, expected)
    home = str(tmp_path)

    done, fetched = fetchmail(server, home, address, password)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(fetched) == sorted(expected)

    done, fetched = fetchmail(server, home, address, password)
    assert done.returncode == 1, done.stdout + done.stderr
    assert fetched == []
    assert contentsOnDisk(server, address) == sorted(expected)

    late = smtpDeliver(server, address, message("fetch late", DOTS_BODY))
    done, fetched = fetchmail(server, home, address, password)
    assert done.returncode == 0, done.stdout + done.stderr
    assert fetched == [late]
    assert len(server.messages(address)) == 4

    # Over STLS on port 110, with no UIDL history: everything again.
    stlsHome = str(tmp_path / "stls")
    os.makedirs(stlsHome)
    done, fetched = fetchmail(server, stlsHome, address, password, tls="stls")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "STLS" in done.stdout + done.stderr
    assert sorted(fetched) == sorted(expected + [late])
    done, fetched = fetchmail(server, stlsHome, address, password, tls="stls")
    assert done.returncode == 1, done.stdout + done.stderr
    assert fetched == []
