"""
End-to-end tests of outbound delivery: a sending C{twistd mdpy} finds MX
hosts through our DNS server (C{tests/dnsserver.py}, a process of its own)
and delivers to a receiving mdpy, a private Postfix, and a receiver in this
module that can hold its reply to the final dot, each on its own loopback
address at one port (the sender's C{[relay] remote_port}).

Layout of the zone::

    dest.test   MX 10 mx1.dest.test 127.0.0.2 (refused), 20 mx2 127.0.0.3 (mdpy)
    late.test   MX 10 mx.late.test 127.0.0.6 (refused; moved to mx2 by a test)
    never.test  MX 10 mx.never.test 127.0.0.7 (refused)
    pf.test     MX 10 mx.pf.test 127.0.0.4 (Postfix)
    stop.test   MX 10 mx.stop.test 127.0.0.5 (HoldingReceiver)
    kill.test   MX 10 mx.kill.test 127.0.0.8 (HoldingReceiver)
    restart.test MX 10 mx.restart.test 127.0.0.9 (an mdpy restarted by a test)
    nomail.test null MX (RFC 7505)
    broken.test SERVFAIL
"""

import email
import email.policy
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import sys
import threading
import time
from email.utils import parsedate_to_datetime

import pytest

from tests.dnsserver import DNSProcess
from tests.server import MdpyServer, freePorts, makeMessage, newAccount

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(os.path.dirname(HERE), "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

MX1 = "127.0.0.2"
DEST = "127.0.0.3"
POSTFIX = "127.0.0.4"
STOP = "127.0.0.5"
LATE = "127.0.0.6"
NEVER = "127.0.0.7"
KILL = "127.0.0.8"
RESTART = "127.0.0.9"
ADDRESSES = ("127.0.0.1", MX1, DEST, POSTFIX, STOP, LATE, NEVER, KILL, RESTART)

X = "x@dest.test"
Z = "z@late.test"
FORWARD = "fwd@example.test"
PF_USER = "y"
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def until(condition, what, timeout=20.0, server=None):
    """
    Poll C{condition} until it is true.

    @raise AssertionError: it is still false after C{timeout} seconds; the
        tail of C{server}'s log is in the message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = server.logText()[-4000:] if server is not None else ""
            raise AssertionError("gave up waiting for %s\n%s" % (what, tail))
        time.sleep(0.05)


def sharedPort():
    """
    @return: a TCP port free on every address of L{ADDRESSES}.
    """
    for _ in range(50):
        [port] = freePorts(1)
        sockets = []
        try:
            for address in ADDRESSES:
                s = socket.socket()
                sockets.append(s)
                s.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no port free on all of %s" % (ADDRESSES,))


def files(directory):
    try:
        return sorted(name for name in os.listdir(directory) if not name.endswith(".tmp"))
    except FileNotFoundError:
        return []


def maildirMessages(base):
    """
    @return: the bytes of every message in the Maildir at C{base}.
    """
    found = []
    for sub in ("new", "cur"):
        for name in files(os.path.join(base, sub)):
            with open(os.path.join(base, sub, name), "rb") as f:
                found.append(f.read())
    return found


def unfold(value):
    """
    @return: a header value on one line, runs of white space made one space.
    """
    return " ".join(value.split())


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def queued(server):
    """
    @return: the ids in the sending server's queue (its C{env/} files).
    """
    return files(os.path.join(server.dataDir, "queue", "env"))


def queueEmpty(server):
    return not queued(server) and not files(os.path.join(server.dataDir, "queue", "msg"))


def listingEmpty(server):
    """
    @return: whether C{mdpy queue list} shows nothing.
    """
    done = server.cli("queue", "list")
    return (done.returncode, done.stdout, done.stderr) == (0, "", "")


def clientContext():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def submit(server, account, recipients, messages):
    """
    Send C{messages} from C{account} to C{recipients} over the submission
    port, with STARTTLS and AUTH, on one connection.
    """
    address, password = account
    with smtplib.SMTP(server.host, server.submission, timeout=30) as client:
        client.starttls(context=clientContext())
        client.login(address, password)
        for message in messages:
            refused = client.sendmail(address, recipients, message)
            assert refused == {}


def messageId(raw):
    return parse(raw)["Message-ID"]


def deliveryStatus(raw):
    """
    @return: C{(message, perMessage, perRecipient, returned)} of a DSN:
        the parsed message, the fields of the per-message block and of the
        one per-recipient block, and the third part.
    """
    message = parse(raw)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    text, status, returned = message.get_payload()
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    perMessage, perRecipient = [dict(block.items()) for block in status.get_payload()]
    return message, perMessage, perRecipient, returned


class HoldingReceiver:
    """
    An SMTP server on threads of this test that records a message (its
    Message-ID) only once its 250 is sent.  While fewer than C{limit}
    messages were recorded it answers every final dot; after that it holds
    the reply to each further dot until L{release}, then closes that
    connection unanswered: the sender never learns that those arrived.

    @ivar accepted: the Message-IDs answered with 250, in order.
    @ivar held: the Message-IDs whose reply is or was held.
    """

    def __init__(self, host, port, limit):
        self.limit = limit
        self.accepted = []
        self.held = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._closed = False
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.1)
        self._connections = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._closed:
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(60)
            with self._lock:
                self._connections.add(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection):
        try:
            self._session(connection, connection.makefile("rb"))
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()

    def _session(self, connection, reader):
        connection.sendall(b"220 mx.hold.test ESMTP\r\n")
        while True:
            line = reader.readline()
            verb = line[:4].upper()
            if not line:
                return
            if verb == b"QUIT":
                connection.sendall(b"221 2.0.0 Bye\r\n")
                return
            if verb == b"EHLO":
                connection.sendall(b"250-mx.hold.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                connection.sendall(b"250 2.0.0 Ok\r\n")
            elif verb == b"DATA":
                connection.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                lines = []
                while True:
                    line = reader.readline()
                    if not line:
                        return
                    if line == b".\r\n":
                        break
                    lines.append(line)
                found = re.search(rb"(?mi)^Message-ID:[ \t]*(<[^>]+>)", b"".join(lines))
                if not self._answer(connection, found.group(1).decode() if found else None):
                    return
            else:
                connection.sendall(b"502 5.5.2 Unknown command\r\n")

    def _answer(self, connection, messageId):
        """
        Answer one final dot, or hold the reply.

        @return: whether the session goes on.
        """
        with self._lock:
            if self.limit is None or len(self.accepted) < self.limit:
                connection.sendall(b"250 2.0.0 Ok: queued\r\n")
                self.accepted.append(messageId)
                return True
            self.held.append(messageId)
        self._released.wait()
        return False

    def release(self):
        """
        Close the connections whose reply is held, unanswered, and answer
        every message from now on.
        """
        with self._lock:
            self.limit = None
        self._released.set()

    def close(self):
        self._closed = True
        self.release()
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --- the servers ----------------------------------------------------------------


class DestServer(MdpyServer):
    """
    The receiving mdpy: mx.dest.test, for dest.test and late.test.
    """

    domain = "dest.test"


def senderServer(root, dns, port, lifetime="1h", retry="1s", relayExtra=""):
    """
    @param relayExtra: more lines of its C{[relay]} section.
    @return: a sending mdpy (not started) that finds MX hosts through C{dns}
        and reaches them at C{port}, retrying every C{retry}.
    """
    return MdpyServer(
        root,
        extra="[dns]\nnameservers = %s\n" % (dns.nameserver,),
        relayExtra=(
            "remote_port = %d\nmx_tls = may\nretry = %s\nlifetime = %s\n"
            "delay_warning = 0\nconnect_timeout = 5s\ncommand_timeout = 30s\n" % (port, retry, lifetime)
            + relayExtra
        ),
    )


@pytest.fixture(scope="module")
def port():
    return sharedPort()


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    def mx(host, address):
        return {"MX": [[10, host]], "ttl": 0}, {"A": [address], "ttl": 0}

    zone = {
        "dest.test": {"MX": [[10, "mx1.dest.test"], [20, "mx2.dest.test"]]},
        "mx1.dest.test": {"A": [MX1]},
        "mx2.dest.test": {"A": [DEST]},
        "nomail.test": {"MX": [[0, "."]]},
        "broken.test": {"fail": "servfail"},
    }
    for domain, address in (
        ("late.test", LATE), ("never.test", NEVER), ("pf.test", POSTFIX),
        ("stop.test", STOP), ("kill.test", KILL), ("restart.test", RESTART),
    ):
        zone[domain], zone["mx." + domain] = mx("mx." + domain, address)
    server = DNSProcess(tmp_path_factory.mktemp("dns"), zone)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dest(tmp_path_factory, dns, port):
    server = DestServer(
        tmp_path_factory.mktemp("dest"),
        extra="[dns]\nnameservers = %s\n" % (dns.nameserver,),
        interface=DEST,
        smtpPort=port,
    )
    for args in (
        ("domain", "add", "dest.test"),
        ("domain", "add", "late.test"),
        ("user", "add", X, "--password", "x-secret-password"),
        ("user", "add", Z, "--password", "z-secret-password"),
    ):
        done = server.cli(*args)
        assert done.returncode == 0, done.stderr
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def postfix(port):
    if os.geteuid() != 0 or not shutil.which("postfix", path=SBIN):
        pytest.skip("a private Postfix needs root and the postfix package")
    from postfix import PrivatePostfix

    server = PrivatePostfix(port=port, domain="pf.test", users=(PF_USER,), interface=POSTFIX)
    with server:
        yield server


@pytest.fixture(scope="module")
def sender(tmp_path_factory, dns, port, dest):
    server = senderServer(tmp_path_factory.mktemp("sender"), dns, port)
    server.start()
    done = server.cli("alias", "add", FORWARD, PF_USER + "@pf.test")
    assert done.returncode == 0, done.stderr
    yield server
    server.stop()


@pytest.fixture
def newSender(tmp_path, dns, port):
    """
    A factory of sending servers of one test, stopped after it.
    """
    started = []

    def make(lifetime="1h"):
        root = tmp_path / ("sender%d" % (len(started),))
        root.mkdir()
        server = senderServer(root, dns, port, lifetime)
        started.append(server)
        return server.start()

    make.port = port
    yield make
    for server in started:
        server.stop()


# --- delivery ------------------------------------------------------------------


def test_mxFallbackToMdpyAndDeliveryToPostfix(sender, dest, postfix, port):
    """
    Mail for dest.test goes to mx2 when mx1 refuses, over opportunistic TLS;
    mail forwarded by an alias to pf.test reaches Postfix.  Each copy
    arrives once, with the sender's Received header below the receiver's.
    """
    account = newAccount(sender, "mxuser")
    toDest = makeMessage("to dest", sender=account[0])
    toPostfix = makeMessage("to postfix", sender=account[0])
    submit(sender, account, [X], [toDest])
    with smtplib.SMTP(sender.host, sender.smtp, timeout=30) as client:
        client.ehlo("client.test")
        assert client.sendmail("someone@remote.test", [FORWARD], toPostfix) == {}

    inbox = dest.maildir(X)
    pfInbox = postfix.maildir(PF_USER)
    until(lambda: maildirMessages(inbox), "the message at mx2", server=sender)
    until(lambda: maildirMessages(pfInbox), "the message at Postfix", server=sender)
    until(lambda: queueEmpty(sender), "an empty queue", server=sender)

    [received] = maildirMessages(inbox)
    message = parse(received)
    assert message["Message-ID"] == messageId(toDest)
    assert message["Subject"] == "to dest"
    assert message["Return-Path"] == "<%s>" % (account[0],)
    top, below = map(unfold, message.get_all("Received"))
    assert top.startswith("from mx.example.test ([127.0.0.1]) by mx.dest.test (mdpy) with ESMTPS id ")
    assert re.match(r"from \S+ \(\[127\.0\.0\.1\]\) by mx\.example\.test \(mdpy\) with ESMTPSA id "
                    r"\S+ \(authenticated sender\);", below), below

    [received] = maildirMessages(pfInbox)
    message = parse(received)
    assert message["Message-ID"] == messageId(toPostfix)
    assert message["Delivered-To"] == PF_USER + "@pf.test"
    assert re.match(r"<SRS0=[^@]+=remote\.test=someone@example\.test>\Z", message["Return-Path"])
    top, below = map(unfold, message.get_all("Received"))
    assert top.startswith(
        "from mx.example.test (localhost [127.0.0.1]) by postfix.pf.test (Postfix) with ESMTP id "
    )
    assert top.split(";")[0].endswith(" for <%s@pf.test>" % (PF_USER,)), top
    assert below.startswith("from client.test ([127.0.0.1]) by mx.example.test (mdpy) with ESMTP id ")

    log = sender.logText()
    refused = log.index("relay: mx1.dest.test[127.0.0.2]:%d: cannot connect: " % port)
    assert "Connection was refused" in log[refused:].splitlines()[0]
    sent = re.search(
        r"relay: \S+ to=<x@dest\.test> relay=\S+\[127\.0\.0\.3\]:%d delay=[0-9.]+ dsn=2\.0\.0"
        r" status=sent \(250 2\.0\.0 Ok" % port,
        log,
    )
    assert sent and sent.start() > refused
    assert re.search(r"relay: \S+ to=<y@pf\.test> relay=\S+\[127\.0\.0\.4\]:%d delay=[0-9.]+ dsn=2\.0\.0"
                     r" status=sent \(250 2\.0\.0 Ok" % port, log)
    assert len(maildirMessages(inbox)) == 1 and len(maildirMessages(pfInbox)) == 1
    assert "Traceback" not in log


def test_retryThenDelivery(sender, dest, dns):
    """
    Mail for a domain whose MX refuses stays queued with its attempts
    counted; once the MX moves to a host that takes mail, C{mdpy queue
    flush} delivers it, once.
    """
    account = newAccount(sender, "late")
    message = makeMessage("late", sender=account[0])
    submit(sender, account, [Z], [message])

    def failedOnce():
        listing = sender.cli("queue", "list").stdout
        if re.search(r"^    <z@late\.test> pending attempts=[1-9]", listing, re.M):
            return listing
        return None

    listing = until(failedOnce, "a failed attempt in the queue listing", server=sender)
    [queueId] = queued(sender)
    header, line = listing.splitlines()
    assert header.startswith("%s " % (queueId,))
    assert header.endswith(" <%s>" % (account[0],))
    assert re.match(
        r"    <z@late\.test> pending attempts=\d+ status=4\.4\.1 next=\S+ \S+ \((?:in [^)]+|due now)\) "
        r"last: cannot connect: Connection was refused by other side: 111: Connection refused\.\Z",
        line,
    ), line
    assert maildirMessages(dest.maildir(Z)) == []

    dns.set("late.test", {"MX": [[10, "mx2.dest.test"]], "ttl": 0})
    flushed = sender.cli("queue", "flush")
    assert (flushed.returncode, flushed.stdout, flushed.stderr) == (
        0, "the server is retrying every queued message now\n", "")
    until(lambda: maildirMessages(dest.maildir(Z)), "the message at mx2", server=sender)
    until(lambda: queueEmpty(sender), "an empty queue", server=sender)
    [received] = maildirMessages(dest.maildir(Z))
    assert messageId(received) == messageId(message)
    assert sender.cli("queue", "list").stdout == ""
    log = sender.logText()
    assert re.search(r"relay: %s to=<z@late\.test> relay=none delay=[0-9.]+ dsn=4\.4\.1 status=deferred"
                     r" \(cannot connect: Connection was refused" % (queueId,), log)
    assert re.search(r"relay: %s to=<z@late\.test> relay=\S+\[127\.0\.0\.3\]:\d+ delay=[0-9.]+ dsn=2\.0\.0"
                     r" status=sent \(250 " % (queueId,), log)


def test_expiryBouncesToTheLocalSender(newSender):
    """
    Past C{[relay] lifetime} a message that could never be delivered is
    bounced to its (local) sender with a delivery-status report of the
    last temporary error.
    """
    server = newSender(lifetime="3s")
    account = newAccount(server, "expiry")
    message = makeMessage("never delivered", sender=account[0])
    submit(server, account, ["z@never.test"], [message])
    box = server.maildir(account[0])
    until(lambda: maildirMessages(box), "the DSN", server=server)
    until(lambda: queueEmpty(server), "an empty queue", server=server)
    [raw] = maildirMessages(box)
    log = server.logText()
    [queueId] = re.findall(r"relay: (\S+) to=<z@never\.test> relay=none delay=\S+ dsn=\S+ status=expired \(", log)
    assert len(re.findall(r"relay: %s to=<z@never\.test> relay=none delay=\S+ dsn=4\.4\.1 status=deferred"
                          r" \(cannot connect: " % (queueId,), log)) >= 2
    assert log.count("relay: %s: failed DSN " % (queueId,)) == 1

    dsn, perMessage, perRecipient, returned = deliveryStatus(raw)
    assert dsn["Return-Path"] == "<>"
    assert dsn["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.test>"
    assert dsn["To"] == account[0]
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert perMessage["Reporting-MTA"] == "dns; mx.example.test"
    assert perMessage["X-mdpy-Queue-ID"] == queueId
    assert perRecipient["Final-Recipient"] == "rfc822; z@never.test"
    assert perRecipient["Action"] == "failed"
    assert perRecipient["Status"] == "4.4.1"
    assert unfold(perRecipient["Diagnostic-Code"]) == (
        "x-mdpy; delivery time expired; last error: cannot connect: "
        "Connection was refused by other side: 111: Connection refused."
    )
    assert "Remote-MTA" not in perRecipient
    waited = parsedate_to_datetime(perRecipient["Last-Attempt-Date"]) - parsedate_to_datetime(
        perMessage["Arrival-Date"]
    )
    assert waited.total_seconds() >= 3
    assert returned.get_content_type() == "message/rfc822"
    assert returned.get_payload()[0]["Message-ID"] == messageId(message)
    assert message in raw


def test_unknownRecipientBouncesWithTheRemoteReply(sender, dest):
    """
    A 550 5.1.1 from the receiving mdpy comes back to the local sender as a
    DSN naming the remote MTA and its reply, with the original attached.
    """
    account = newAccount(sender, "unknown")
    message = makeMessage("to nobody", sender=account[0])
    submit(sender, account, ["nobody@dest.test"], [message])
    box = sender.maildir(account[0])
    until(lambda: maildirMessages(box), "the DSN", server=sender)
    until(lambda: queueEmpty(sender), "an empty queue", server=sender)
    [raw] = maildirMessages(box)
    log = sender.logText()
    [queueId] = re.findall(
        r"relay: (\S+) to=<nobody@dest\.test> relay=mx2\.dest\.test\[127\.0\.0\.3\]:\d+ delay=[0-9.]+"
        r" dsn=5\.1\.1 status=bounced \(550 5\.1\.1 Recipient address rejected: user unknown\)", log
    )
    assert log.count("relay: %s: failed DSN " % (queueId,)) == 1

    dsn, perMessage, perRecipient, returned = deliveryStatus(raw)
    assert dsn["Return-Path"] == "<>"
    assert dsn["To"] == account[0]
    assert perMessage["X-mdpy-Queue-ID"] == queueId
    assert perRecipient["Final-Recipient"] == "rfc822; nobody@dest.test"
    assert perRecipient["Action"] == "failed"
    assert perRecipient["Status"] == "5.1.1"
    assert perRecipient["Remote-MTA"] == "dns; mx2.dest.test"
    assert unfold(perRecipient["Diagnostic-Code"]) == (
        "smtp; 550 5.1.1 Recipient address rejected: user unknown"
    )
    assert returned.get_content_type() == "message/rfc822"
    [original] = returned.get_payload()
    assert original["Message-ID"] == messageId(message)
    assert original["Subject"] == "to nobody"
    assert message in raw
    assert "smtp: recipient <nobody@dest.test> refused for <%s>" % (account[0],) in dest.logText()


def test_nullMXBouncesAtOnceAndServfailStaysQueued(sender):
    """
    A domain with a null MX (RFC 7505) fails at the first attempt with
    5.1.10; one whose lookup gets SERVFAIL stays queued with 4.4.3.
    """
    account = newAccount(sender, "nullmx")
    toNull = makeMessage("to a null MX", sender=account[0])
    toBroken = makeMessage("to a broken domain", sender=account[0])
    submit(sender, account, ["a@nomail.test"], [toNull])
    submit(sender, account, ["b@broken.test"], [toBroken])
    box = sender.maildir(account[0])
    until(lambda: maildirMessages(box), "the DSN", server=sender)
    [raw] = maildirMessages(box)
    dsn, perMessage, perRecipient, returned = deliveryStatus(raw)
    assert perRecipient["Final-Recipient"] == "rfc822; a@nomail.test"
    assert perRecipient["Action"] == "failed"
    assert perRecipient["Status"] == "5.1.10"
    assert perRecipient["Diagnostic-Code"] == "x-mdpy; nomail.test: null MX, accepts no mail"
    assert "Remote-MTA" not in perRecipient
    assert returned.get_payload()[0]["Message-ID"] == messageId(toNull)

    def failedOnce():
        listing = sender.cli("queue", "list").stdout
        if re.search(r"^    <b@broken\.test> pending attempts=[1-9]", listing, re.M):
            return listing
        return None

    listing = until(failedOnce, "a failed attempt in the queue listing", server=sender)
    [queueId] = queued(sender)
    header, line = listing.splitlines()
    assert header.startswith(queueId + " ")
    assert re.match(
        r"    <b@broken\.test> pending attempts=\d+ status=4\.4\.3 next=\S+ \S+ \((?:in [^)]+|due now)\) "
        r"last: broken\.test MX lookup failed: SERVFAIL\Z",
        line,
    ), line
    with open(os.path.join(sender.dataDir, "queue", "env", queueId), "rb") as f:
        [recipient] = json.load(f)["recipients"]
    assert (recipient["address"], recipient["state"], recipient["status"]) == (
        "b@broken.test", "pending", "4.4.3"
    )
    done = sender.cli("queue", "del", queueId)
    assert (done.returncode, done.stdout, done.stderr) == (0, "deleted queued message %s\n" % (queueId,), "")
    until(lambda: queueEmpty(sender), "an empty queue", server=sender)
    assert len(maildirMessages(box)) == 1


def interruptedQueueRun(newSender, address, domain, count, answered, interrupt):
    """
    Queue C{count} messages for C{domain}, whose MX at C{address} answers
    C{answered} of them and then holds its replies; once the sender has
    recorded those, C{interrupt} it, let the receiver drop the held
    connections, and start the sender again.

    @return: C{(server, receiver, expected)}: the sending server, the
        receiver once everything is delivered and the queue is empty, and
        the Message-IDs sent.
    """
    receiver = HoldingReceiver(address, newSender.port, limit=answered)
    try:
        server = newSender()
        account = newAccount(server, domain.split(".")[0])
        messages = [makeMessage("%s %d" % (domain, i), sender=account[0]) for i in range(count)]
        submit(server, account, ["rcpt@" + domain], messages)
        until(
            lambda: receiver.held and len(queued(server)) == count - answered,
            "%d messages answered and recorded, replies held" % (answered,),
            server=server,
        )
        assert len(receiver.accepted) == answered
        held = list(receiver.held)
        assert set(held).isdisjoint(receiver.accepted)
        logged = len(server.logText())
        interrupt(server)
        receiver.release()
        assert len(queued(server)) == count - answered
        server.start()
        until(
            lambda: len(receiver.accepted) >= count and queueEmpty(server),
            "every message at the receiver and an empty queue",
            timeout=40,
            server=server,
        )
        # What was held before the interruption was sent again, and taken.
        assert set(held) <= set(receiver.accepted)
        restarted = server.logText()[logged:]
        assert "queue: %d messages waiting, 0 moved to " % (count - answered,) in restarted
        return server, receiver, {messageId(m) for m in messages}
    finally:
        receiver.close()


def test_stopInTheMiddleOfAQueueRun(newSender):
    """
    A sender stopped (SIGTERM) while part of its queue is delivered and
    replies to other messages are pending delivers the rest once started
    again: the receiver has every message exactly once.
    """
    count = 200

    def stop(server):
        server.stop()
        # twistd ends by raising the signal that stopped it again; -9 would
        # be MdpyServer.stop's kill after 30 s.
        assert server.process.returncode == -signal.SIGTERM

    server, receiver, expected = interruptedQueueRun(newSender, STOP, "stop.test", count, 80, stop)
    assert len(receiver.accepted) == count
    assert set(receiver.accepted) == expected
    assert listingEmpty(server)
    assert "Traceback" not in server.logText()


def test_killDuringDeliveryLosesAndDuplicatesNothing(newSender):
    """
    C{kill -9} while the receiver holds its replies to some messages: after
    the restart those are sent again, and the receiver has every message
    exactly once.
    """
    count = 300
    server, receiver, expected = interruptedQueueRun(
        newSender, KILL, "kill.test", count, 150, MdpyServer.kill
    )
    assert len(receiver.accepted) == count
    assert set(receiver.accepted) == expected
    assert "Traceback" not in server.logText()
    queueDir = os.path.join(server.dataDir, "queue")
    assert os.listdir(os.path.join(queueDir, "env")) == []
    assert os.listdir(os.path.join(queueDir, "msg")) == []
    assert os.listdir(os.path.join(queueDir, "corrupt")) == []
    assert listingEmpty(server)



# --- connection reuse ----------------------------------------------------------


def test_remoteRestartedBetweenTwoMessages(tmp_path, dns, port):
    """
    The remote MX restarts while the sender keeps an idle connection to it
    (C{[relay] connection_idle}): the dead connection leaves the cache, and
    the second message arrives over a new one within seconds, not after the
    retry interval (5 minutes here).
    """
    recipient = "r@restart.test"
    (tmp_path / "receiver").mkdir()
    receiver = MdpyServer(tmp_path / "receiver", domain="restart.test", interface=RESTART, smtpPort=port)
    for args in (("domain", "add", "restart.test"), ("user", "add", recipient, "--password", "r-secret-password")):
        done = receiver.cli(*args)
        assert done.returncode == 0, done.stderr
    (tmp_path / "sender").mkdir()
    sender = senderServer(tmp_path / "sender", dns, port, retry="5m", relayExtra="connection_idle = 1h\n")
    try:
        receiver.start()
        sender.start()
        account = newAccount(sender, "restarter")
        submit(sender, account, [recipient], [makeMessage("before the restart", sender=account[0])])
        until(lambda: len(maildirMessages(receiver.maildir(recipient))) == 1, "the first message", server=sender)
        until(lambda: queueEmpty(sender), "the sender's queue to empty", server=sender)
        receiver.stop()
        receiver.start()
        submit(sender, account, [recipient], [makeMessage("after the restart", sender=account[0])])
        until(lambda: len(maildirMessages(receiver.maildir(recipient))) == 2, "the second message", server=sender)
        subjects = sorted(parse(raw)["Subject"] for raw in maildirMessages(receiver.maildir(recipient)))
        assert subjects == ["after the restart", "before the restart"]
        log = sender.logText()
        assert "closed the idle connection" in log
        assert "connection closed before sending" not in log
        assert "deferred" not in log
    finally:
        sender.stop()
        receiver.stop()
