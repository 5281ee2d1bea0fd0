"""
End-to-end tests of IMAP4rev1 (143, STARTTLS) and IMAPS (993, implicit TLS):
a real C{twistd mdpy} on loopback, driven by mbsync (isync), curl, Python's
imaplib, IMAPClient and raw sockets (mbsync and curl are installed by
C{.ci/run}, IMAPClient by the C{test} extra).

Mail arrives by SMTP on port 25, the real path (1,000 messages over one
connection take a few seconds); the malformed MIME corpus, which SMTP might
refuse or repair, is handed to the store the way another local program
would, through L{mdpy.backends.files.maildir.MaildirStore.deliver} on the server's
data directory.
"""

import email
import email.policy
import glob
import imaplib
import itertools
import os
import pty
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest
from imapclient import IMAPClient
from twisted.internet import defer

from mdpy.backends.files.maildir import MaildirStore
from tests.server import HOST, newAccount, makeMessage, readTerminal, runningServer

_messages = itertools.count(1)

CURL = shutil.which("curl") or "curl"
MBSYNC = shutil.which("mbsync") or "mbsync"
CRLF = b"\r\n"
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "imap")
# [imap] max_message_size of the test server; [imaps] keeps the 50M default.
IMAP_LIMIT = 1024 * 1024
IMAPS_LIMIT = 50 * 1024 * 1024
SPECIAL_USE = {
    "Drafts": b"\\Drafts",
    "Sent": b"\\Sent",
    "Trash": b"\\Trash",
    "Junk": b"\\Junk",
    "Archive": b"\\Archive",
}



# --- servers and accounts -----------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """
    One server for the module: no plaintext login before STARTTLS on 143,
    whose APPEND limit is lowered to 1 MiB.
    """
    yield from runningServer(tmp_path_factory.mktemp("mdpy-imap"), imapExtra="max_message_size = 1M\n")


def message(subject, body=b"hello\r\n", headers=b""):
    return makeMessage(subject, body, headers, date=True)


MULTIPART = (
    b"From: Ann Example <ann@remote.test>\r\n"
    b"To: Bob <bob@example.test>, carol@example.test\r\n"
    b"Cc: dave@remote.test\r\n"
    b"Subject: quarterly report\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <report.1@remote.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"This is a multi-part message in MIME format.\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, the numbers are in.\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>the numbers</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b'Content-Type: application/pdf; name="report.pdf"\r\n'
    b'Content-Disposition: attachment; filename="report.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--outer--\r\n"
)


def storeDeliver(server, address, messages, folder="INBOX"):
    """
    Put C{messages} in C{folder} through the Maildir store on the server's
    data directory, as a local delivery program would (one commit for all).
    """
    store = MaildirStore(
        os.path.join(server.dataDir, "mail"), runInThread=lambda f, *args: defer.maybeDeferred(f, *args)
    )
    outcome = []
    store.deliver([(address, folder, [data]) for data in messages]).addBoth(outcome.append)
    assert outcome == [None], outcome


def smtpDeliver(server, address, messages, spacing=0.0):
    """
    Deliver C{messages} by SMTP to port 25 over one connection, one
    transaction each.

    @param spacing: seconds to wait after each message, so that messages
        whose order matters to a test arrive in distinct file-system clock
        ticks (see L{test_uidsFollowArrivalOrder}).
    @return: the stored bytes (each with the headers the server adds).
    """
    before = set(server.messages(address))
    with smtplib.SMTP(HOST, server.smtp, timeout=60) as client:
        client.ehlo("client.test")
        for data in messages:
            assert client.sendmail("sender@remote.test", [address], data) == {}
            time.sleep(spacing)
    new = [m for m in server.messages(address) if m not in before]
    stored = []
    for data in messages:
        [found] = [m for m in new if m.endswith(data)]
        stored.append(found)
    return stored


def certificate(server):
    return os.path.join(server.dataDir, "tls", "cert.pem")


def verifyingContext(server):
    """
    A client context that trusts only the server's self-signed certificate
    and checks it is valid for 127.0.0.1.
    """
    return ssl.create_default_context(cafile=certificate(server))


def imaps(server, address=None, password=None):
    """
    @return: an imaplib client on the IMAPS port, logged in if given an
        address.
    """
    client = imaplib.IMAP4_SSL(HOST, server.imaps, ssl_context=verifyingContext(server), timeout=60)
    if address is not None:
        client.login(address, password)
    return client


def imapclient(server, address, password):
    """
    @return: an IMAPClient over implicit TLS, logged in.
    """
    client = IMAPClient(HOST, port=server.imaps, ssl=True, ssl_context=verifyingContext(server), timeout=60)
    client.login(address, password)
    return client


def ok(response):
    """
    @return: the data of an imaplib C{(typ, data)} after checking C{typ}.
    """
    typ, data = response
    assert typ == "OK", response
    return data


def fetchResults(data):
    """
    Group an imaplib FETCH reply by message.

    @return: C{{number: (text, literals)}}, the text with each literal left
        as C{{n}} and the literals in order.
    """
    results = {}
    current = None
    for item in data:
        if isinstance(item, tuple):
            head, literal = item
            match = re.match(rb"(\d+) \(", head)
            if match:
                current = [head, [literal]]
                results[int(match.group(1))] = current
            else:
                current[0] += head
                current[1].append(literal)
        elif item is not None:
            match = re.match(rb"(\d+) \(", item)
            if match and (current is None or current[0].endswith(b")")):
                current = [item, []]
                results[int(match.group(1))] = current
            else:
                current[0] += item
    return {n: (text, literals) for n, (text, literals) in results.items()}


def status(client, mailbox, items="(MESSAGES)"):
    """
    @return: C{{item: number}} from imaplib's STATUS.
    """
    [line] = ok(client.status('"%s"' % (mailbox,), items))
    match = re.match(rb'^(?:"([^"]*)"|(\S+)) \(([^)]*)\)$', line)
    assert match and (match.group(1) or match.group(2)) == mailbox.encode(), line
    words = match.group(3).split()
    return {name: int(value) for name, value in zip(words[::2], words[1::2])}


def flagsIn(text):
    match = re.search(rb"FLAGS \(([^)]*)\)", text)
    assert match, text
    return set(match.group(1).split())


def uidIn(text):
    return int(re.search(rb"UID (\d+)", text).group(1))


def unfold(data):
    """
    @return: C{data} with LF line ends (as mbsync keeps a Maildir) and no
        X-TUID header (mbsync's own).
    """
    data = data.replace(CRLF, b"\n")
    return re.sub(rb"(?im)^X-TUID: [^\n]*\n", b"", data, count=1)


def subjectOf(data):
    return email.message_from_bytes(data, policy=email.policy.compat32)["Subject"]


# --- mbsync -------------------------------------------------------------------


# "C: 1/1  B: 6/6  F: +0/0 *0/0 #0/0  N: +0/0 *0/0 #0/0": for the far (F)
# and near (N) side, messages added (+), flag updates (*) and deletions (#),
# done/to do (newer versions add expunges, "-").
MBSYNC_COUNTERS = re.compile(r"F: ((?:[-+*#]\d+/\d+ ?)+)\s+N: ((?:[-+*#]\d+/\d+ ?)+)")
MBSYNC_COUNTER = re.compile(r"([-+*#])(\d+)/(\d+)")
COUNTER_NAMES = {"+": "new", "*": "flags", "#": "deleted", "-": "expunged"}


def mbsyncRc(server, home, address, password):
    path = os.path.join(home, "mbsyncrc")
    mail = os.path.join(home, "mail")
    os.makedirs(mail, exist_ok=True)
    with open(path, "w") as f:
        f.write(
            "IMAPAccount far\n"
            "Host localhost\n"
            "Port %d\n"
            'User "%s"\n'
            'Pass "%s"\n'
            "SSLType IMAPS\n"
            'CertificateFile "%s"\n'
            "AuthMechs LOGIN\n"
            "\n"
            "IMAPStore far\n"
            "Account far\n"
            "\n"
            "MaildirStore near\n"
            "Path %s/\n"
            "Inbox %s/INBOX\n"
            "SubFolders Verbatim\n"
            "\n"
            "Channel e2e\n"
            "Far :far:\n"
            "Near :near:\n"
            "Patterns *\n"
            "Create Both\n"
            "Expunge Both\n"
            "SyncState *\n"
            "Sync All\n" % (server.imaps, address, password, certificate(server), mail, mail)
        )
    return path, mail


def mbsync(rc, home):
    """
    Run C{mbsync -a} once with its standard output on a pseudo-terminal,
    so that it prints its progress counters.

    @return: C{(far, near, output)}: the final counters of each side,
        C{{"new": n, "flags": n, "deleted": n}} (what it propagated to that
        side), and what it printed.
    """
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [MBSYNC, "-c", rc, "-a"],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        cwd=home,
        env=dict(os.environ, HOME=home),
    )
    os.close(slave)
    deadline = time.monotonic() + 120
    try:
        output = readTerminal(master, deadline)
        errors = process.communicate(timeout=max(1, deadline - time.monotonic()))[1]
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.decode("utf-8", "replace") + errors.decode("utf-8", "replace")
    assert process.returncode == 0, text[-3000:]
    counters = MBSYNC_COUNTERS.findall(text)
    assert counters, text[-3000:]
    sides = []
    for side in counters[-1]:
        found = {}
        for symbol, done, todo in MBSYNC_COUNTER.findall(side):
            assert done == todo, text[-3000:]
            found[COUNTER_NAMES[symbol]] = int(done)
        sides.append(found)
    far, near = sides
    return far, near, text


def localMaildir(folder):
    """
    @return: C{{path: bytes}} of every message file in a local Maildir.
    """
    found = {}
    for sub in ("new", "cur"):
        directory = os.path.join(folder, sub)
        for name in os.listdir(directory):
            with open(os.path.join(directory, name), "rb") as f:
                found[os.path.join(directory, name)] = f.read()
    return found


def localFlags(path):
    name = os.path.basename(path)
    return set(name.split(":2,", 1)[1]) if ":2," in name else set()


def setLocalFlags(path, flags):
    """
    Rename a local message file into C{cur/} with the Maildir flags
    C{flags} (what a mail reader does).
    """
    folder = os.path.dirname(os.path.dirname(path))
    base = os.path.basename(path).split(":2,", 1)[0]
    target = os.path.join(folder, "cur", base + ":2," + "".join(sorted(flags)))
    os.rename(path, target)
    return target


def writeLocal(folder, data, flags=None):
    """
    Write a new message into a local Maildir (C{new/}, or C{cur/} with
    C{flags}).
    """
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    base = "%d.P%dQ%d.e2e-client" % (time.time(), os.getpid(), next(_messages))
    tmp = os.path.join(folder, "tmp", base)
    with open(tmp, "wb") as f:
        f.write(data)
    if flags is None:
        os.rename(tmp, os.path.join(folder, "new", base))
    else:
        os.rename(tmp, os.path.join(folder, "cur", base + ":2," + "".join(sorted(flags))))


def imapView(client, folder="INBOX"):
    """
    @return: C{{subject: (uid, flags, unfolded bytes)}} of C{folder} read
        over IMAP (read-only).
    """
    count = int(ok(client.select('"%s"' % (folder,), readonly=True))[0])
    view = {}
    if count:
        results = fetchResults(ok(client.fetch("1:*", "(UID FLAGS BODY.PEEK[])")))
        assert len(results) == count
        for text, literals in results.values():
            [data] = literals
            view[subjectOf(data)] = (uidIn(text), flagsIn(text), unfold(data))
    client.close()
    return view


def test_mbsyncThousandMessagesBothWays(server, tmp_path):
    """
    1,000 messages: mbsync over IMAPS pulls them all into a local Maildir
    with the same bytes; local flag changes, additions, deletions and a new
    folder are pushed while server-side changes come down in the same run;
    a third run finds nothing to do and changes nothing on either side.
    """
    address, password = newAccount(server, "mbsync")
    bulk = [message("bulk %04d" % (i,), b"body of bulk message %04d\r\n" % (i,)) for i in range(1000)]
    stored = smtpDeliver(server, address, bulk)  # a few seconds at most
    home = str(tmp_path)
    rc, mail = mbsyncRc(server, home, address, password)

    # (b) pull
    far, near, output = mbsync(rc, home)
    assert set(far.values()) == {0}, output[-3000:]
    assert near["new"] == 1000, output[-3000:]
    inbox = os.path.join(mail, "INBOX")
    local = localMaildir(inbox)
    assert len(local) == 1000, output[-3000:]
    assert sorted(unfold(m) for m in local.values()) == sorted(unfold(m) for m in stored)
    for name in SPECIAL_USE:
        assert os.path.isdir(os.path.join(mail, name, "cur")), (name, os.listdir(mail))
    bySubject = {subjectOf(data): path for path, data in local.items()}

    # (c) change both sides, then sync once
    flagged = ["bulk %04d" % (i,) for i in range(0, 20)]
    for subject in flagged:
        setLocalFlags(bySubject[subject], {"F", "S"})
    deleted = ["bulk %04d" % (i,) for i in range(100, 105)]
    for subject in deleted:
        os.remove(bySubject[subject])
    added = [message("local new %d" % (i,), b"written by the client %d\r\n" % (i,)) for i in range(3)]
    for data in added:
        writeLocal(inbox, data.replace(CRLF, b"\n"))
    writeLocal(inbox, message("local seen", b"already read\r\n").replace(CRLF, b"\n"), flags={"S"})
    writeLocal(os.path.join(mail, "Projects"), message("in a new folder").replace(CRLF, b"\n"), flags={"S"})

    client = imaps(server, address, password)
    farView = imapView(client)
    ok(client.select("INBOX"))
    answered, gone = farView["bulk 0500"][0], farView["bulk 0501"][0]
    ok(client.uid("STORE", str(answered), "+FLAGS.SILENT", r"(\Answered)"))
    ok(client.uid("STORE", str(gone), "+FLAGS.SILENT", r"(\Deleted)"))
    ok(client.expunge())
    serverNew = message("server new", b"appended on the server\r\n")
    ok(client.append("INBOX", r"(\Seen)", None, serverNew))
    client.logout()

    far, near, output = mbsync(rc, home)
    # five new messages up; twenty flag changes and five deletions (which
    # mbsync makes by setting \Deleted) up; one message and the \Answered
    # flag down (and the deletion of the expunged one)
    assert far["new"] == 5 and far["flags"] == 25, output[-3000:]
    assert near["new"] == 1 and near["flags"] >= 1, output[-3000:]

    client = imaps(server, address, password)
    view = imapView(client)
    expected = {"bulk %04d" % (i,) for i in range(1000) if i not in (100, 101, 102, 103, 104, 501)}
    expected |= {"local new %d" % (i,) for i in range(3)} | {"local seen", "server new"}
    assert set(view) == expected, output[-3000:]
    assert len(view) == 1000 - 5 - 1 + 4 + 1
    for subject in flagged:
        assert {b"\\Flagged", b"\\Seen"} <= view[subject][1], (subject, view[subject])
    assert b"\\Seen" in view["local seen"][1]
    assert b"\\Seen" not in view["local new 0"][1]
    for data in added:
        assert view[subjectOf(data)][2] == unfold(data)
    assert b"\\Flagged" not in view["bulk 0020"][1]
    names = [line.rsplit(b" ", 1)[-1].strip(b'"') for line in ok(client.list('""', "*"))]
    assert b"Projects" in names, names
    projects = imapView(client, "Projects")
    assert list(projects) == ["in a new folder"]
    farStatus = status(client, "INBOX", "(MESSAGES UIDNEXT HIGHESTMODSEQ)")
    assert farStatus[b"MESSAGES"] == len(expected)
    client.logout()

    local = localMaildir(inbox)
    assert len(local) == len(expected)
    bySubject = {subjectOf(data): path for path, data in local.items()}
    assert set(bySubject) == expected
    assert "R" in localFlags(bySubject["bulk 0500"])
    assert "S" in localFlags(bySubject["server new"])
    assert unfold(open(bySubject["server new"], "rb").read()) == unfold(serverNew)

    # (d) nothing to do
    before = sorted(os.path.relpath(p, mail) for p in glob.glob(os.path.join(mail, "*", "*", "*")))
    far, near, output = mbsync(rc, home)
    after = sorted(os.path.relpath(p, mail) for p in glob.glob(os.path.join(mail, "*", "*", "*")))
    assert after == before
    assert set(far.values()) == set(near.values()) == {0}, output[-3000:]
    client = imaps(server, address, password)
    assert status(client, "INBOX", "(MESSAGES UIDNEXT HIGHESTMODSEQ)") == farStatus
    client.logout()


# --- curl ---------------------------------------------------------------------


def curl(server, address, password, *args):
    return subprocess.run(
        [CURL, "-s", "-S", "--max-time", "60", "--cacert", certificate(server), "-u", "%s:%s" % (address, password)]
        + list(args),
        capture_output=True,
        timeout=120,
    )


def test_curl(server, tmp_path):
    """
    LIST, a message by UID, a section, SEARCH, EXAMINE and APPEND with curl
    over IMAPS, and the same over STARTTLS on 143 (refused without TLS).
    """
    address, password = newAccount(server, "curl")
    first, second = smtpDeliver(
        server, address, [message("curl one"), message("curl two", b"second body\r\n")], spacing=0.05
    )
    base = "imaps://127.0.0.1:%d/" % (server.imaps,)

    done = curl(server, address, password, base)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split(CRLF)
    assert lines[-1] == b""
    listed = {}
    for line in lines[:-1]:
        match = re.match(rb'\* LIST \(([^)]*)\) "/" "?([^"]*)"?$', line)
        assert match, line
        listed[match.group(2)] = set(match.group(1).split())
    assert set(listed) == {b"INBOX", b"Drafts", b"Sent", b"Trash", b"Junk", b"Archive"}
    for name, use in SPECIAL_USE.items():
        assert use in listed[name.encode()]

    done = curl(server, address, password, base + "INBOX;UID=1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == first
    done = curl(server, address, password, base + "INBOX;UID=2;SECTION=TEXT")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"second body\r\n"

    done = curl(server, address, password, "-X", "UID SEARCH ALL", base + "INBOX")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"* SEARCH 1 2\r\n"
    done = curl(server, address, password, base + "INBOX?SUBJECT%20two")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"* SEARCH 2\r\n"

    done = curl(server, address, password, "-X", "EXAMINE INBOX", base)
    assert done.returncode == 0, done.stderr
    assert b"* 2 EXISTS\r\n" in done.stdout
    assert re.search(rb"\* OK \[UIDVALIDITY \d+\]", done.stdout), done.stdout
    assert re.search(rb"\* OK \[UIDNEXT 3\]", done.stdout), done.stdout

    upload = tmp_path / "draft.eml"
    draft = message("curl upload", b"uploaded with curl -T\r\n")
    upload.write_bytes(draft)
    done = curl(server, address, password, "-v", "-T", str(upload), base + "Drafts")
    assert done.returncode == 0, done.stderr
    assert re.search(rb"\n> A\d+ AUTHENTICATE ", done.stderr), done.stderr  # SASL, not LOGIN
    assert re.search(rb"\n< A\d+ OK \[APPENDUID \d+ 1\]", done.stderr), done.stderr
    client = imaps(server, address, password)
    assert ok(client.select("Drafts", readonly=True)) == [b"1"]
    [(text, [data])] = fetchResults(ok(client.fetch("1", "(FLAGS BODY.PEEK[])"))).values()
    assert data == draft
    assert b"\\Seen" in flagsIn(text)  # curl appends with (\Seen)
    client.logout()

    # STARTTLS on 143
    plain = "imap://127.0.0.1:%d/" % (server.imap,)
    done = curl(server, address, password, "-v", "--ssl-reqd", plain + "INBOX;UID=2")
    assert done.returncode == 0, done.stderr
    assert b"STARTTLS" in done.stderr
    assert done.stdout == second
    done = curl(server, address, password, plain)
    assert done.returncode != 0
    assert done.stdout == b""
    done = curl(server, address, "wrong", base)
    assert done.returncode == 67, (done.returncode, done.stderr)  # CURLE_LOGIN_DENIED


# --- imaplib ------------------------------------------------------------------


def test_imaplibStartTLSSession(server):
    """
    A whole imaplib session on 143: LOGIN refused before STARTTLS, then
    SELECT, FETCH, STORE, COPY, MOVE, EXPUNGE, APPEND with flags and date,
    SEARCH with a UTF-8 literal, IDLE and LOGOUT.
    """
    address, password = newAccount(server, "imaplib")
    greeting = "Gr\u00fc\u00dfe aus K\u00f6ln"
    stored = smtpDeliver(
        server,
        address,
        [
            message("imaplib one"),
            message("imaplib two", b"second\r\n"),
            message(
                "=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=",
                ("Stra\u00dfe und Caf\u00e9\r\n").encode(),
                b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
            ),
        ],
        spacing=0.05,
    )

    client = imaplib.IMAP4(HOST, server.imap, timeout=60)
    assert "STARTTLS" in client.capabilities and "LOGINDISABLED" in client.capabilities
    with pytest.raises(imaplib.IMAP4.error) as info:
        client.login(address, password)
    assert "PRIVACYREQUIRED" in str(info.value) or "LOGINDISABLED" in str(info.value)
    ok(client.starttls(ssl_context=verifyingContext(server)))
    assert "LOGINDISABLED" not in client.capabilities and "STARTTLS" not in client.capabilities
    assert "AUTH=PLAIN" in client.capabilities
    ok(client.login(address, password))
    capabilities = ok(client.capability())[-1]
    names = set(capabilities.split())
    for name in (
        b"IMAP4rev1", b"SASL-IR", b"LITERAL+", b"ID", b"ENABLE", b"IDLE", b"NAMESPACE", b"UIDPLUS",
        b"MOVE", b"UNSELECT", b"CHILDREN", b"LIST-EXTENDED", b"LIST-STATUS", b"SPECIAL-USE", b"ESEARCH",
        b"CONDSTORE", b"APPENDLIMIT=%d" % (IMAP_LIMIT,),
    ):
        assert name in names, (name, capabilities)

    assert ok(client.select("INBOX")) == [b"3"]
    results = fetchResults(ok(client.fetch("1:3", "(BODY.PEEK[] RFC822.SIZE FLAGS)")))
    assert sorted(results) == [1, 2, 3]
    for number, (text, [data]) in results.items():
        assert data == stored[number - 1]
        assert int(re.search(rb"RFC822\.SIZE (\d+)", text).group(1)) == len(data)
        assert b"\\Seen" not in flagsIn(text)

    # STORE
    [line] = ok(client.store("1", "+FLAGS", r"(\Flagged \Seen)"))
    assert {b"\\Flagged", b"\\Seen"} <= flagsIn(line)
    ok(client.store("2", "+FLAGS.SILENT", "($Work)"))
    results = fetchResults(ok(client.fetch("1:2", "(FLAGS)")))
    assert {b"\\Flagged", b"\\Seen"} <= flagsIn(results[1][0])
    assert b"$Work" in flagsIn(results[2][0])

    # COPY and UID MOVE
    typ, data = client.copy("1", "Archive")
    assert typ == "OK" and b"COPYUID" in data[0], data
    uid2 = uidIn(fetchResults(ok(client.fetch("2", "(UID)")))[2][0])
    typ, data = client.uid("MOVE", str(uid2), "Trash")
    assert typ == "OK", data
    assert client.untagged_responses.pop("EXPUNGE") == [b"2"], client.untagged_responses
    assert status(client, "Archive") == {b"MESSAGES": 1}
    assert status(client, "Trash") == {b"MESSAGES": 1}
    results = fetchResults(ok(client.fetch("1:*", "(UID FLAGS)")))
    assert sorted(results) == [1, 2]

    # EXPUNGE
    ok(client.store("1", "+FLAGS.SILENT", r"(\Deleted)"))
    assert ok(client.expunge()) == [b"1"]
    assert ok(client.select("INBOX")) == [b"1"]

    # APPEND with flags and a date
    when = datetime(2023, 5, 17, 8, 30, 15, tzinfo=timezone(timedelta(hours=2)))
    appended = message("imaplib appended", b"appended with flags\r\n")
    typ, data = client.append("INBOX", r"(\Flagged $Label1)", imaplib.Time2Internaldate(when), appended)
    assert typ == "OK" and b"APPENDUID" in data[0], data
    results = fetchResults(ok(client.fetch("2", "(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")))
    text, [data] = results[2]
    assert data == appended
    assert {b"\\Flagged", b"$Label1"} <= flagsIn(text)
    assert time.mktime(imaplib.Internaldate2tuple(text)) == time.mktime(when.astimezone().timetuple())

    # SEARCH with a UTF-8 literal
    client.literal = greeting.encode("utf-8")
    assert ok(client.search("UTF-8", "SUBJECT")) == [b"1"]
    client.literal = "Caf\u00e9".encode("utf-8")
    assert ok(client.search("UTF-8", "BODY")) == [b"1"]
    client.literal = "Caf\u00e9".encode("utf-8")
    assert ok(client.search("UTF-8", "TEXT")) == [b"1"]
    assert ok(client.search(None, "FLAGGED")) == [b"2"]
    assert ok(client.search(None, "SUBJECT", "nothing-like-this")) == [b""]
    # ESEARCH (RFC 4731)
    ok(client.uid("SEARCH", "RETURN (MIN MAX COUNT) ALL"))
    [esearch] = client.untagged_responses.pop("ESEARCH")
    assert re.match(rb'\(TAG "[^"]+"\) UID MIN \d+ MAX \d+ COUNT 2$', esearch), esearch

    # IDLE (imaplib has no idle(): the command by hand)
    tag = client._new_tag()
    client.send(tag + b" IDLE\r\n")
    assert client.readline().startswith(b"+")
    smtpDeliver(server, address, [message("arrives while idling")])
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        line = client.readline()
        seen.append(line)
        if line == b"* 3 EXISTS\r\n":
            break
    assert seen[-1] == b"* 3 EXISTS\r\n", seen
    client.send(b"DONE\r\n")
    typ, data = client._command_complete("IDLE", tag)
    assert typ == "OK", data
    assert ok(client.search(None, "ALL")) == [b"1 2 3"]

    typ, data = client.logout()
    assert typ == "BYE", data


# --- IMAPClient ---------------------------------------------------------------


def idleUntil(client, wanted, timeout=30):
    """
    Read IMAPClient IDLE responses until one satisfies C{wanted} (a
    generous C{timeout}: a failure, not a timing test).

    @return: the responses read.
    """
    responses = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        responses.extend(client.idle_check(timeout=1))
        if any(isinstance(r, tuple) and wanted(r) for r in responses):
            return responses
    raise AssertionError("not seen while idling: %r" % (responses,))


def test_imapclientSession(server):
    """
    IMAPClient over implicit TLS: folders with their special-use flags,
    ENVELOPE, BODYSTRUCTURE and BODY[], searches, flags, copy and move,
    expunge, folder management, CONDSTORE and IDLE.
    """
    address, password = newAccount(server, "imapclient")
    multipart, plain = smtpDeliver(server, address, [MULTIPART, message("plain one", b"x" * 3000 + CRLF)], spacing=0.05)
    client = imapclient(server, address, password)
    try:
        assert b"APPENDLIMIT=%d" % (IMAPS_LIMIT,) in client.capabilities()

        # folders
        folders = client.list_folders()
        assert {name for _, _, name in folders} == {"INBOX", "Drafts", "Sent", "Trash", "Junk", "Archive"}
        assert {delimiter for _, delimiter, _ in folders} == {b"/"}
        flags = {name: set(f) for f, _, name in folders}
        for name, use in SPECIAL_USE.items():
            assert use in flags[name], (name, flags[name])
        assert b"\\HasNoChildren" in flags["INBOX"]
        typ, data = client._imap._simple_command("LIST", '(SPECIAL-USE) "" "*"')
        assert typ == "OK", data
        typ, data = client._imap._untagged_response(typ, data, "LIST")
        special = {name: set(f) for f, _, name in client._proc_folder_list(data)}
        assert set(special) == set(SPECIAL_USE)
        for name, use in SPECIAL_USE.items():
            assert use in special[name]
        assert client.find_special_folder(b"\\Sent") == "Sent"
        assert client.namespace().personal == (("", "/"),)
        [identity] = client.id_({"name": "e2e"})
        assert dict(zip(identity[::2], identity[1::2]))[b"name"] == b"mdpy", identity

        # ENVELOPE, BODYSTRUCTURE, BODY[]
        client.enable("CONDSTORE")
        selected = client.select_folder("INBOX")
        assert selected[b"EXISTS"] == 2
        assert selected[b"UIDNEXT"] == 3
        assert b"HIGHESTMODSEQ" in selected, selected
        fetched = client.fetch([1, 2], ["ENVELOPE", "BODYSTRUCTURE", "BODY.PEEK[]", "BODY.PEEK[1.1]", "RFC822.SIZE"])
        first = fetched[1]
        assert first[b"BODY[]"] == multipart
        assert first[b"RFC822.SIZE"] == len(multipart)
        # RFC 2046 5.1.1: the CRLF before a boundary belongs to the boundary
        assert first[b"BODY[1.1]"] == "Gr\u00fc\u00dfe, the numbers are in.".encode()
        envelope = first[b"ENVELOPE"]
        assert envelope.subject == b"quarterly report"
        assert envelope.message_id == b"<report.1@remote.test>"
        assert envelope.date == datetime(2024, 1, 1, 10, 0, 0)
        assert [(a.name, a.mailbox, a.host) for a in envelope.from_] == [(b"Ann Example", b"ann", b"remote.test")]
        assert [(a.mailbox, a.host) for a in envelope.sender] == [(b"ann", b"remote.test")]
        assert [(a.mailbox, a.host) for a in envelope.reply_to] == [(b"ann", b"remote.test")]
        assert [(a.name, a.mailbox) for a in envelope.to] == [(b"Bob", b"bob"), (None, b"carol")]
        assert [(a.mailbox, a.host) for a in envelope.cc] == [(b"dave", b"remote.test")]
        assert envelope.bcc is None and envelope.in_reply_to is None
        structure = first[b"BODYSTRUCTURE"]
        assert structure.is_multipart
        parts, subtype = structure[0], structure[1]
        assert subtype.lower() == b"mixed"
        assert len(parts) == 2
        alternative, pdf = parts
        assert alternative.is_multipart and alternative[1].lower() == b"alternative"
        text, html = alternative[0]
        assert (text[0].lower(), text[1].lower()) == (b"text", b"plain")
        assert [v.lower() for v in text[2]] == [b"charset", b"utf-8"]
        assert text[5].lower() == b"8bit"
        assert text[6] == len(first[b"BODY[1.1]"])
        assert text[7] in (0, 1), text
        assert (html[0].lower(), html[1].lower()) == (b"text", b"html")
        assert (pdf[0].lower(), pdf[1].lower()) == (b"application", b"pdf")
        assert pdf[5].lower() == b"base64"
        assert pdf[6] == len(b"JVBERi0xLjQK")
        assert fetched[2][b"BODY[]"] == plain
        assert not fetched[2][b"BODYSTRUCTURE"].is_multipart
        assert fetched[2][b"ENVELOPE"].subject == b"plain one"

        # searches
        assert client.search(["FROM", "ann@remote.test"]) == [1]
        assert client.search(["SUBJECT", "plain", "LARGER", 3000]) == [2]
        assert client.search(["UNSEEN"]) == [1, 2]
        assert client.search(["OR", "CC", "dave", "TO", "nobody"]) == [1]
        assert client.search(["HEADER", "Message-ID", "report.1"]) == [1]
        assert client.search(["NOT", "SUBJECT", "report"]) == [2]
        assert client.search(["SENTON", datetime(2024, 1, 1).date()]) == [1]
        assert client.search(["BODY", "numbers", "UID", "1:*"]) == [1]

        # flags (the first session to select INBOX: both are \Recent to it)
        assert set(client.add_flags([1], [b"\\Flagged"])[1]) >= {b"\\Flagged"}
        assert set(client.set_flags([2], [b"\\Seen", b"$Work"])[2]) == {b"\\Seen", b"$Work", b"\\Recent"}
        assert set(client.get_flags([2])[2]) == {b"\\Seen", b"$Work", b"\\Recent"}
        client.remove_flags([2], [b"$Work"])
        assert set(client.get_flags([2])[2]) == {b"\\Seen", b"\\Recent"}
        assert client.search(["SEEN"]) == [2]
        assert client.search(["FLAGGED"]) == [1]

        # CONDSTORE
        modseqs = client.fetch([1, 2], ["MODSEQ"])
        highest = max(m[b"MODSEQ"][0] for m in modseqs.values())
        client.add_flags([2], [b"\\Answered"])
        changed = client.fetch([1, 2], ["FLAGS"], modifiers=["CHANGEDSINCE %d" % (highest,)])
        assert list(changed) == [2], changed
        assert changed[2][b"MODSEQ"][0] > highest
        assert client.search(["MODSEQ", highest]) == [2]
        status = client.folder_status("INBOX", [b"HIGHESTMODSEQ", b"MESSAGES"])
        assert status[b"HIGHESTMODSEQ"] == changed[2][b"MODSEQ"][0]
        assert status[b"MESSAGES"] == 2

        # copy, move, expunge
        client.copy([1], "Archive")
        client.move([2], "Trash")
        assert client.folder_status("Archive", [b"MESSAGES"])[b"MESSAGES"] == 1
        assert client.folder_status("Trash", [b"MESSAGES"])[b"MESSAGES"] == 1
        assert client.search(["ALL"]) == [1]
        client.select_folder("Archive")
        [archived] = client.search(["ALL"])
        assert client.fetch([archived], ["BODY.PEEK[]", "FLAGS"])[archived][b"BODY[]"] == multipart
        assert b"\\Flagged" in client.get_flags([archived])[archived]
        client.delete_messages([archived])
        client.uid_expunge([archived])
        assert client.search(["ALL"]) == []
        assert client.folder_status("Archive", [b"MESSAGES"])[b"MESSAGES"] == 0

        # folders: create, rename, delete (with non-ASCII names)
        client.select_folder("INBOX")
        client.create_folder("Projects/2024")
        client.create_folder("Reisepl\u00e4ne")
        names = {name: set(f) for f, _, name in client.list_folders()}
        assert {"Projects", "Projects/2024", "Reisepl\u00e4ne"} <= set(names)
        assert b"\\HasChildren" in names["Projects"]
        assert os.path.isdir(os.path.join(server.maildir(address), ".Reisepl&AOQ-ne"))
        client.rename_folder("Projects/2024", "Projects/2025")
        client.rename_folder("Reisepl\u00e4ne", "Fr\u00fchling")
        client.append("Projects/2025", message("filed"), flags=[b"\\Seen"])
        names = {name for _, _, name in client.list_folders()}
        assert {"Projects/2025", "Fr\u00fchling"} <= names
        assert not {"Projects/2024", "Reisepl\u00e4ne"} & names
        assert client.folder_status("Projects/2025", [b"MESSAGES"])[b"MESSAGES"] == 1
        client.delete_folder("Fr\u00fchling")
        client.delete_folder("Projects/2025")
        assert not client.folder_exists("Fr\u00fchling")
        assert not client.folder_exists("Projects/2025")

        # IDLE: a message delivered by SMTP while idling shows up as EXISTS;
        # flags set and messages expunged by another session as FETCH and
        # EXPUNGE.
        client.idle()
        smtpDeliver(server, address, [message("idle wakes up")])
        idleUntil(client, lambda r: r == (2, b"EXISTS"))
        other = imapclient(server, address, password)
        try:
            other.select_folder("INBOX")
            assert other.search(["ALL"]) == [1, 3]  # UID 2 was moved away
            other.add_flags([3], [b"$Seen-Elsewhere"])
            # with CONDSTORE enabled, unsolicited FETCH carries MODSEQ (RFC 7162 3.2)
            fetched = idleUntil(client, lambda r: r[:2] == (2, b"FETCH"))
            [(_, _, items)] = [r for r in fetched if r[:2] == (2, b"FETCH")]
            items = dict(zip(items[::2], items[1::2]))
            assert b"$Seen-Elsewhere" in items[b"FLAGS"] and b"MODSEQ" in items, fetched
            other.delete_messages([1])
            other.expunge()
            idleUntil(client, lambda r: r == (1, b"EXPUNGE"))
        finally:
            other.logout()
        client.idle_done()
        assert client.search(["ALL"]) == [3]
        assert client.search(["SUBJECT", "idle wakes up"]) == [3]
    finally:
        client.logout()


def test_uidsFollowArrivalOrder(server):
    """
    RFC 3501 2.3.1.1: each message added to a mailbox gets a higher UID than
    those added before it.  Messages delivered one after the other by SMTP
    (each acknowledged before the next is sent) are numbered in the order
    they arrived, also when several arrive within one tick of the file
    system's clock, as they do here: deliveries go on until the clock has
    passed two whole seconds (the Maildir names' microseconds then pass 10^3,
    10^4 and 10^5 twice each, where names stop sorting as text).
    """
    address, password = newAccount(server, "order")
    sent = 0
    stop = int(time.time()) + 2.15
    with smtplib.SMTP(HOST, server.smtp, timeout=60) as smtp:
        smtp.ehlo("client.test")
        while time.time() < stop or sent < 100:
            assert smtp.sendmail("sender@remote.test", [address], message("order %05d" % (sent,))) == {}
            sent += 1
    client = imaps(server, address, password)
    try:
        assert ok(client.select("INBOX", readonly=True)) == [b"%d" % (sent,)]
        results = fetchResults(ok(client.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")))
        subjects = [subjectOf(results[n][1][0]) for n in sorted(results)]
        uids = [uidIn(results[n][0]) for n in sorted(results)]
    finally:
        client.logout()
    assert uids == sorted(uids)
    misplaced = [(n + 1, subject) for n, subject in enumerate(subjects) if subject != "order %05d" % (n,)]
    assert misplaced == [], (sent, misplaced[:10])


def test_condstoreEmptyMailbox(server):
    """
    RFC 7162 3.1.2.1 and section 7: the HIGHESTMODSEQ response code of
    SELECT carries a mod-sequence-value, which is at least 1 (strict
    parsers reject 0); in STATUS, 0 would say the mailbox has no persistent
    mod-sequences at all.
    """
    address, password = newAccount(server, "emptymodseq")
    client = imapclient(server, address, password)
    try:
        client.enable("CONDSTORE")
        selected = client.select_folder("Junk")
        assert selected[b"EXISTS"] == 0
        assert selected[b"HIGHESTMODSEQ"] >= 1, selected
        assert client.folder_status("Trash", [b"HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"] >= 1
    finally:
        client.logout()


# --- the malformed MIME corpus ------------------------------------------------


# A few of our own, in case the shared corpus lacks these shapes.
MALFORMED = [
    b"no headers at all, just text\r\n",
    b"Subject: no body",
    b"Content-Type: multipart/mixed; boundary=\"never\"\r\n\r\nno boundary ever\r\n",
    b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nboundary parameter missing\r\n",
    b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n--a--\r\n",
    b"From: <<<@@@>>>\r\nTo: ,,,,;;;:\r\nDate: yesterday-ish\r\nSubject: =?UTF-8?B?!!!?=\r\n\r\nbad addresses\r\n",
    b"Content-Type: message/rfc822\r\n\r\nContent-Type: message/rfc822\r\n\r\nnested without headers\r\n",
    b"Content-Type: text/plain; charset=\"\xff\xfe\"; name*0=\"a\"; name*5=\"b\"\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n",
    b"Subject: \x00\x01\x02 control bytes\r\n\r\n\x00\x00\r\n",
    b"X-Long: " + b"a" * 20000 + b"\r\n\r\nlong header line\r\n",
    b"Content-Type: " + b"multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" * 200,
    b"Content-Type: text/plain\n\nbare line feeds\nonly\n",
]


def test_malformedCorpusOverTheWire(server):
    """
    Every message of C{tests/corpus/imap} (and a few more) gets an answer
    to FETCH BODYSTRUCTURE and ENVELOPE, one message at a time, on one
    connection that stays up; then all at once.
    """
    paths = sorted(glob.glob(os.path.join(CORPUS, "*.eml")))
    corpus = []
    for path in paths:
        with open(path, "rb") as f:
            corpus.append(f.read())
    corpus += MALFORMED
    address, password = newAccount(server, "corpus")
    storeDeliver(server, address, corpus)
    client = imaps(server, address, password)
    try:
        assert ok(client.select("INBOX", readonly=True)) == [b"%d" % (len(corpus),)]
        failures = []
        for number in range(1, len(corpus) + 1):
            name = paths[number - 1] if number <= len(paths) else "MALFORMED[%d]" % (number - len(paths) - 1,)
            typ, data = client.fetch(str(number), "(BODYSTRUCTURE ENVELOPE RFC822.SIZE)")
            results = fetchResults(data) if typ == "OK" else {}
            if typ != "OK" or list(results) != [number]:
                failures.append((name, typ, data))
                continue
            text = results[number][0] + b"".join(results[number][1])
            if b"BODYSTRUCTURE (" not in text or b"ENVELOPE (" not in text:
                failures.append((name, typ, data))
        assert failures == []
        typ, data = client.fetch("1:*", "(BODYSTRUCTURE ENVELOPE BODY.PEEK[HEADER] BODY.PEEK[1])")
        assert typ == "OK", data
        assert sorted(fetchResults(data)) == list(range(1, len(corpus) + 1))
        assert ok(client.noop())
    finally:
        client.logout()
    # IMAPClient parses every answer (so it is well-formed IMAP syntax).
    client = imapclient(server, address, password)
    try:
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["ALL"])
        assert len(uids) == len(corpus)
        fetched = client.fetch(uids, ["BODYSTRUCTURE", "ENVELOPE", "RFC822.SIZE", "BODY.PEEK[]"])
        assert sorted(fetched) == uids
        for uid in uids:
            assert {b"BODYSTRUCTURE", b"ENVELOPE", b"RFC822.SIZE", b"BODY[]"} <= set(fetched[uid]), fetched[uid]
            # the size announced is the size sent (bare LF files go out with CRLF)
            assert fetched[uid][b"RFC822.SIZE"] == len(fetched[uid][b"BODY[]"]), fetched[uid]
    finally:
        client.logout()
    assert paths, "no malformed MIME corpus in %s" % (CORPUS,)


# --- defences on a real socket ------------------------------------------------


class Raw:
    """
    An IMAP connection over a bare socket, to see the bytes on the wire.
    """

    def __init__(self, port, context=None):
        self.sock = socket.create_connection((HOST, port), timeout=30)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname=HOST)
        self.buffer = b""
        self.greeting = self.line()

    def line(self):
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line + b"\r\n"

    def send(self, data):
        self.sock.sendall(data)

    def pending(self, wait=0.5):
        """
        @return: what the server sends within C{wait} seconds (and is not
            read yet).
        """
        data, self.buffer = self.buffer, b""
        self.sock.settimeout(wait)
        try:
            while True:
                more = self.sock.recv(65536)
                if not more:
                    break
                data += more
        except socket.timeout:
            pass
        finally:
            self.sock.settimeout(30)
        return data

    def until(self, tag):
        """
        @return: the lines up to and with the one tagged C{tag}.
        """
        lines = []
        while True:
            line = self.line()
            assert line, lines
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, tag, text):
        self.send(tag + b" " + text + CRLF)
        return self.until(tag)

    def starttls(self, context):
        self.sock = context.wrap_socket(self.sock, server_hostname=HOST)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def test_commandPipelinedAfterSTARTTLSIsDropped(server):
    """
    RFC 3501 6.2.1: what a client (or a man in the middle) sends after
    STARTTLS in the same packet is thrown away, not run after the handshake.
    """
    address, password = newAccount(server, "pipelined")
    raw = Raw(server.imap)
    try:
        assert raw.greeting.startswith(b"* OK")
        raw.send(b"a STARTTLS\r\nb CAPABILITY\r\nc LOGIN " + address.encode() + b" " + password.encode() + CRLF)
        assert raw.line().startswith(b"a OK"), raw.buffer
        # nothing more in plaintext
        assert raw.pending() == b""
        raw.starttls(verifyingContext(server))
        lines = raw.command(b"d", b"NOOP")
        assert lines == [lines[-1]] and lines[-1].startswith(b"d OK"), lines
        # not logged in: "c LOGIN" was dropped too
        lines = raw.command(b"e", b"SELECT INBOX")
        assert lines[-1].startswith(b"e BAD") or lines[-1].startswith(b"e NO"), lines
        lines = raw.command(b"f", b"LOGIN " + address.encode() + b" " + password.encode())
        assert lines[-1].startswith(b"f OK"), lines
        assert not any(line.startswith(b"b ") or line.startswith(b"c ") for line in lines)
    finally:
        raw.close()
    time.sleep(0.2)
    assert "discarded" in server.logText()


class BareTLS:
    """
    TLS over a socket through memory BIOs, so that a test sees the TCP
    connection under it; it never sends a close_notify of its own.
    """

    def __init__(self, sock, context):
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=HOST)
        self._run(self.tls.do_handshake)

    def _run(self, operation):
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("TCP closed before TLS did")
                self.incoming.write(data)
                continue
            self.sock.sendall(self.outgoing.read())
            return result

    def send(self, data):
        self._run(lambda: self.tls.write(data))

    def readToTLSEnd(self):
        """
        @return: what the server sends up to its close_notify.
        """
        data = b""
        while True:
            try:
                more = self._run(lambda: self.tls.read(65536))
            except ssl.SSLZeroReturnError:
                more = b""
            if not more:
                return data
            data += more

    def tcpClosed(self, wait):
        """
        @return: whether the server closes the TCP connection within
            C{wait} seconds.
        """
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


@pytest.mark.parametrize("implicit", [True, False])
def test_logoutOverTLSClosesWithoutTheClientsCloseNotify(server, implicit):
    """
    After LOGOUT over IMAPS or STARTTLS, the server sends its close_notify
    and closes the TCP connection even though the client never answers
    with its own (imaptest waits for the server to close).
    """
    address, password = newAccount(server, "tlsclose")
    sock = socket.create_connection((HOST, server.imaps if implicit else server.imap), timeout=10)
    try:
        if not implicit:
            assert sock.recv(65536).startswith(b"* OK")
            sock.sendall(b"s STARTTLS\r\n")
            assert sock.recv(65536).startswith(b"s OK")
        tls = BareTLS(sock, verifyingContext(server))
        tls.send(b"a LOGIN " + address.encode() + b" " + password.encode() + b"\r\nb LOGOUT\r\n")
        said = tls.readToTLSEnd()
        assert b"a OK" in said and said.endswith(b"* BYE Logging out.\r\nb OK Logout completed.\r\n"), said
        assert tls.tcpClosed(wait=10)
    finally:
        sock.close()


def test_appendOverTheLimitIsRefusedBeforeTheLiteral(server):
    """
    RFC 7889: an APPEND larger than APPENDLIMIT gets C{NO [TOOBIG]} instead
    of the C{+} continuation (synchronising literal) or once the literal is
    thrown away (non-synchronising); the session goes on, nothing is stored;
    the limit is the listener's own (IMAPS takes the same message).
    """
    address, password = newAccount(server, "toobig")
    big = message("too big", b"x" * 998 + CRLF)
    big += (b"y" * 998 + CRLF) * ((IMAP_LIMIT + 200000) // 1000)
    assert len(big) > IMAP_LIMIT
    raw = Raw(server.imap)
    try:
        lines = raw.command(b"a", b"STARTTLS")
        assert lines[-1].startswith(b"a OK")
        raw.starttls(verifyingContext(server))
        lines = raw.command(b"b", b"LOGIN " + address.encode() + b" " + password.encode())
        assert lines[-1].startswith(b"b OK"), lines
        assert b"APPENDLIMIT=%d" % (IMAP_LIMIT,) in b"".join(lines)

        raw.send(b"c APPEND INBOX {%d}\r\n" % (len(big),))
        reply = raw.line()
        assert re.match(rb"c NO \[TOOBIG\]", reply), reply
        assert raw.pending() == b""
        lines = raw.command(b"d", b"NOOP")
        assert lines[-1].startswith(b"d OK"), lines

        # A declared size far over the limit: refused at once, too.
        raw.send(b"e APPEND INBOX (\\Seen) {4000000000}\r\n")
        assert re.match(rb"e NO \[TOOBIG\]", raw.line())

        # LITERAL+: the data is read and thrown away, then NO [TOOBIG].
        raw.send(b"f APPEND INBOX {%d+}\r\n" % (len(big),) + big + CRLF)
        lines = raw.until(b"f")
        assert not any(line.startswith(b"+") for line in lines), lines
        assert re.match(rb"f NO \[TOOBIG\]", lines[-1]), lines
        # The rest of command f (its final CRLF) is part of f, not an
        # empty command of its own.
        lines = raw.command(b"g", b"STATUS INBOX (MESSAGES)")
        assert len(lines) == 2, lines
        assert re.match(rb'\* STATUS "?INBOX"? \(MESSAGES 0\)\r\n', lines[0]), lines
        assert lines[-1].startswith(b"g OK"), lines
        # just under the limit is taken on 143
        fits = big[: IMAP_LIMIT - 2] + CRLF
        raw.send(b"h APPEND INBOX {%d}\r\n" % (len(fits),))
        assert raw.line().startswith(b"+")
        raw.send(fits + CRLF)
        lines = raw.until(b"h")
        assert re.match(rb"h OK \[APPENDUID \d+ 1\]", lines[-1]), lines
        assert raw.command(b"i", b"LOGOUT")[-1].startswith(b"i OK")
    finally:
        raw.close()

    client = imaps(server, address, password)
    try:
        typ, data = client.append("INBOX", None, None, big)
        assert typ == "OK", data
        assert ok(client.select("INBOX", readonly=True)) == [b"2"]
        results = fetchResults(ok(client.fetch("1:2", "(RFC822.SIZE)")))
        assert [int(re.search(rb"RFC822\.SIZE (\d+)", results[n][0]).group(1)) for n in (1, 2)] == [
            len(fits), len(big),
        ]
    finally:
        client.logout()
    assert sorted(map(len, server.messages(address))) == [len(fits), len(big)]


def test_nulOctetsFromSMTPAreServedAs0x80(server):
    """
    A message with NUL octets taken by SMTP is stored as it came; FETCH
    serves each NUL as 0x80 (RFC 3501 section 9 allows no NUL in a literal,
    Dovecot sends 0x80), so the sizes still agree.
    """
    address, password = newAccount(server, "nul")
    body = b"before\x00after\r\n\x00\x00 two more\r\n"
    [stored] = smtpDeliver(server, address, [message("nul octets", body)])
    assert stored.count(b"\x00") == 3
    client = imaps(server, address, password)
    try:
        assert ok(client.select("INBOX", readonly=True)) == [b"1"]
        text, [served] = fetchResults(ok(client.fetch("1", "(RFC822.SIZE BODY.PEEK[])")))[1]
        assert b"RFC822.SIZE %d " % (len(stored),) in text, text
        assert served == stored.replace(b"\x00", b"\x80")
        _, [text] = fetchResults(ok(client.fetch("1", "(BODY.PEEK[TEXT])")))[1]
        assert text.endswith(b"before\x80after\r\n\x80\x80 two more\r\n"), text
    finally:
        client.logout()
    assert server.messages(address) == [stored]
