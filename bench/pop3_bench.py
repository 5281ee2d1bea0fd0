#!/usr/bin/env python3
"""POP3 download: mdpy side by side with a private Dovecot.

    python bench/pop3_bench.py [--messages 2000] [--clients 20] [--size 4096]
                               [--sessions 4] [--repeat N]

One Maildir tree is made with mdpy's own tooling: the domain bench.test,
users u00..u19@bench.test (one per client: a POP3 session locks its
maildrop), and --messages message files of exactly --size bytes (RFC 5322
text, CRLF line ends, some body lines starting with ".") placed straight
into each user's new/.  Each server run gets a fresh copy of that tree, so
mdpy and Dovecot (Debian's dovecot-pop3d, started privately with its own
configuration, see bench/dovecot.py) serve byte-identical Maildirs from the
same starting state.

On each instance the load generator (one process per client) runs three
passes, each timed from the first connect to the last QUIT reply:

* 1 session/client, first access -- USER, PASS, STAT, LIST, RETR of every
  message, QUIT (nothing deleted), on the untouched Maildir: the server
  indexes the new messages first;
* 1 session/client -- the same again, now that the server knows them;
* N sessions/client -- each client logs in --sessions times in a row and
  retrieves a quarter (1/N) of its maildrop per session.

Every pass must download every message once with identical bytes (count,
total size and a CRC-32 sum are checked after undoing dot-stuffing; STAT
and LIST must give the exact sizes).  Messages/second are printed for both
servers with the ratio, then "target met/MISSED: mdpy/Dovecot >= 0.8".

Exit status: 0 if every run completed with every byte correct, 1 if any run
failed.  Missing the target only prints "target MISSED".  See
bench/README.rst.
"""

import os
import random
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (DOMAIN, PASSWORD, BenchError, MdpyServer, run_clients,  # noqa: E402
                    exit_status, fmt, interrupt_on_sigterm, median, median_note,
                    parse_bench_args, positive, print_banner, print_table_head,
                    print_target, proc_pids, proc_stat, raise_nofile,
                    repeat_suffix, tail)
from dovecot import PrivateDovecot, dovecot_version  # noqa: E402

TARGET_RATIO = 0.8          # mdpy / Dovecot msg/s, every row


def user_names(clients):
    width = max(2, len(str(clients - 1)))
    return ["u%0*d" % (width, i) for i in range(clients)]


# -------------------------------------------------------------- messages

WORDS = ("the mail server accepts each message and stores it in the maildir "
         "before it answers so a client that sees the reply can rely on it "
         "being there after a crash or a power cut while the queue runs "
         "again later with every recipient listed once per copy delivered "
         "to local users through the pipeline that checks aliases routing "
         "and quotas").split()

# Body lines that a POP3 server must dot-stuff (RFC 1939 section 3), among
# them a lone "." that would end the response if sent as it is.
DOT_LINES = (".", "..", "...and so on", ".hidden line", ". leading dot",
             ".signature follows")


def _body_text(rng, length):
    """length bytes of plain text lines (CRLF), some starting with '.'."""
    out, n = [], 0
    while n < length + 80:
        if rng.random() < 0.12:
            line = rng.choice(DOT_LINES)
        elif rng.random() < 0.05:
            line = ""
        else:
            words, w = [], 0
            target = rng.randint(30, 76)
            while w < target:
                word = rng.choice(WORDS)
                words.append(word)
                w += len(word) + 1
            line = " ".join(words)[:76]
        out.append(line)
        n += len(line) + 2
    text = "\r\n".join(out).encode("ascii")[:length]
    if text.endswith(b"\r"):            # never leave a bare CR at the end
        text = text[:-1] + b"x"
    return text


def make_message(rng, address, seq, count, size, when):
    """One RFC 5322 message of exactly size bytes, CRLF line ends."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    msgid = "%d.%d.%s@client.example.org" % (int(when), seq, address.split("@")[0])
    head = (
        "Return-Path: <sender@example.org>\r\n"
        "Delivered-To: {rcpt}\r\n"
        "Received: from client.example.org (client.example.org [192.0.2.10])\r\n"
        "\tby mx.{domain} with ESMTP id {qid:08X}\r\n"
        "\tfor <{rcpt}>; {date}\r\n"
        "Date: {date}\r\n"
        "From: \"Bench Sender\" <sender@example.org>\r\n"
        "To: <{rcpt}>\r\n"
        "Subject: Benchmark message {seq} of {count} for {rcpt}\r\n"
        "Message-ID: <{msgid}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "X-Bench-Seq: {seq}\r\n"
        "\r\n").format(rcpt=address, domain=DOMAIN, qid=rng.getrandbits(32),
                       date=date, seq=seq, count=count,
                       msgid=msgid).encode("ascii")
    room = size - len(head) - 2
    if room < 0:
        raise BenchError("--size %d is too small for the headers (at least %d)"
                         % (size, len(head) + 2))
    return head + _body_text(rng, room) + b"\r\n"


class Expected:
    """What a complete download of the Maildir must add up to."""

    def __init__(self):
        self.messages = 0
        self.bytes = 0
        self.crc_sum = 0
        self.per_user = {}          # user -> number of messages

    def add(self, user, data):
        self.messages += 1
        self.bytes += len(data)
        self.crc_sum += zlib.crc32(data)
        self.per_user[user] = self.per_user.get(user, 0) + 1


# ------------------------------------------------------------------ mdpy

class MdpyPop3(MdpyServer):
    """mdpy with SMTP and POP3 (plaintext USER/PASS) on free loopback ports.

    MdpyPop3.template(...) provisions a data directory (domain, users,
    messages) without starting anything; MdpyPop3(template=t) is a server
    over a fresh copy of it."""

    disabled = ("submission", "smtps", "pop3s", "imap", "imaps", "odmr",
                "minger", "webadmin")

    def __init__(self, template=None, keep=False, start_timeout=30):
        MdpyServer.__init__(self, keep=keep, start_timeout=start_timeout,
                            pop3=True)
        self.template_dir = template.data_dir if template is not None else None

    @classmethod
    def template(cls, users, messages, size, keep=False):
        """A data directory with users u00.. and their messages in new/;
        returns (server object, never started, Expected)."""
        t = cls(keep=keep)
        try:
            t.provision(users)
            expected = fill_maildirs(t, users, messages, size)
        except BaseException:
            t.cleanup()
            raise
        return t, expected

    def configure(self):
        shutil.copytree(self.template_dir, self.data_dir, symlinks=True)
        self.write_ini()


def fill_maildirs(server, users, messages, size):
    """Write the messages as files into each user's new/, mdpy's way of
    naming them; return the Expected totals."""
    rng = random.Random(1939)
    expected = Expected()
    per = [messages // len(users) + (1 if i < messages % len(users) else 0)
           for i in range(len(users))]
    now = time.time()
    pid = os.getpid()
    q = 0
    for user, count in zip(users, per):
        new = os.path.join(server.maildir(user), "new")
        if not os.path.isdir(new):
            raise BenchError("%s is missing after 'mdpy user add'" % new)
        for seq in range(1, count + 1):
            q += 1
            data = make_message(rng, "%s@%s" % (user, DOMAIN), seq, count, size,
                                now)
            when = now + q * 1e-4
            name = "%d.M%dP%dQ%d.bench,S=%d" % (
                int(when), int(when * 1e6) % 1000000, pid, q, len(data))
            path = os.path.join(new, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.utime(path, (when, when))
            expected.add(user, data)
    return expected


def new_dovecot(template, users, args):
    """A PrivateDovecot over a fresh copy of the template's Maildirs."""
    base = tempfile.mkdtemp(prefix="mdpy-bench-dovecot-")
    try:
        mail = os.path.join(base, "mail")
        shutil.copytree(template.mail_root, mail, symlinks=True)
        return PrivateDovecot(mail, users, PASSWORD, domain=DOMAIN,
                              scheme=args.scheme, rounds=args.rounds,
                              auth_cache_size=args.dovecot_auth_cache,
                              own_mail=True,
                              base_dir=base, keep=args.keep)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


# ----------------------------------------------------------- CPU account

_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu(pgid):
    """CPU seconds (user+system, own and reaped children) of every process
    in process group pgid: the server and, for Dovecot, its helpers."""
    total = 0
    for pid in proc_pids():
        fields = proc_stat(pid)
        # fields[0] is field 3 (state): pgrp is 5, utime..cstime 14..17.
        if fields is not None and int(fields[2]) == pgid:
            total += sum(int(x) for x in fields[11:15])
    return total / _TICK


# ------------------------------------------------------- load generator

class Pop3Failure(Exception):
    pass


class Pop3Client:
    """A minimal, allocation-light POP3 client on a blocking socket (no
    pipelining: one command, one reply, like mail clients)."""

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.last = b"(connect)"

    def _recv(self):
        chunk = self.sock.recv(262144)
        if not chunk:
            raise Pop3Failure("%s: connection closed by the server"
                              % self.last.decode("latin-1").strip())
        return chunk

    def status(self, cmd=None):
        """Send cmd (bytes with CRLF, or None for the greeting); return the
        +OK line.  The rest of what arrived stays in self.buf."""
        if cmd is not None:
            self.last = cmd
            self.sock.sendall(cmd)
        buf = self.buf
        while True:
            i = buf.find(b"\r\n")
            if i >= 0:
                break
            buf += self._recv()
        line, self.buf = buf[:i], buf[i + 2:]
        if not line.startswith(b"+OK"):
            raise Pop3Failure("%s -> %s" % (
                (cmd or b"(greeting)").decode("latin-1").strip(),
                line.decode("latin-1")))
        return line

    def multiline(self):
        """The rest of a multi-line response: returns it with a leading
        CRLF, still dot-stuffed, without the terminating '.CRLF'."""
        body = bytearray(b"\r\n")
        body += self.buf
        self.buf = b""
        while not body.endswith(b"\r\n.\r\n"):
            body += self._recv()
        del body[-3:]
        return body

    def finish(self):
        """After the QUIT reply: the server must close the connection."""
        try:
            self.sock.settimeout(10)
            while self.sock.recv(65536):
                pass
        except socket.timeout:
            raise Pop3Failure("QUIT -> +OK, but the connection was still open "
                              "10 s later")
        finally:
            self.sock.close()


def _session(port, address, count, first, last, size, timeout, tally):
    """One POP3 session: log in, check STAT and LIST, RETR messages
    first..last, QUIT.  Returns the time the QUIT reply arrived."""
    c = Pop3Client(port, timeout)
    try:
        c.status()
        c.status(b"USER %s\r\n" % address)
        c.status(b"PASS %s\r\n" % PASSWORD.encode())
        line = c.status(b"STAT\r\n")
        want = b"+OK %d %d" % (count, count * size)
        if line.split()[:3] != want.split():
            raise Pop3Failure("STAT -> %s (expected %s)"
                              % (line.decode("latin-1"), want.decode()))
        c.status(b"LIST\r\n")
        listing = bytes(c.multiline()).split(b"\r\n")[1:-1]
        sizes = [x.split() for x in listing]
        wrong = [x for n, x in enumerate(sizes, 1)
                 if len(x) < 2 or x[0] != b"%d" % n or x[1] != b"%d" % size]
        if len(sizes) != count or wrong:
            raise Pop3Failure("LIST -> %d lines, %d of them not 'N %d' (first: %r)"
                              % (len(sizes), len(wrong), size,
                                 b" ".join(wrong[0]) if wrong else b""))
        for n in range(first, last + 1):
            c.status(b"RETR %d\r\n" % n)
            body = bytes(c.multiline()).replace(b"\r\n..", b"\r\n.")
            tally[0] += 1
            tally[1] += len(body) - 2
            tally[2] += zlib.crc32(body[2:])
        c.status(b"QUIT\r\n")
        t = time.monotonic()
        c.finish()
        return t
    except OSError as e:
        raise Pop3Failure("%s -> %s: %s" % (c.last.decode("latin-1").strip(),
                                            type(e).__name__, e))
    finally:
        c.sock.close()


def _client_main(conn, go, port, user, count, sessions, size, timeout):
    """A client process: report ready, wait for go, run the sessions one
    after the other, send the result dict."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    address = ("%s@%s" % (user, DOMAIN)).encode()
    tally = [0, 0, 0]
    result = {"user": user, "error": None, "t0": None, "t1": None,
              "logins": 0}
    conn.send("ready")
    go.wait()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        result["t0"] = time.monotonic()
        for k in range(sessions):
            first = k * count // sessions + 1
            last = (k + 1) * count // sessions
            result["t1"] = _session(port, address, count, first, last, size,
                                    timeout, tally)
            result["logins"] += 1
    except Exception as e:
        result["error"] = "%s session %d: %s" % (
            user, result["logins"] + 1, e if isinstance(e, Pop3Failure)
            else "%s: %s" % (type(e).__name__, e))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result["messages"], result["bytes"], result["crc_sum"] = tally
    result["cpu"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    conn.send(result)
    conn.close()


class Run:
    """One timed pass of all clients against one server."""

    def __init__(self, server, row):
        self.server, self.row = server, row
        self.error = None
        self.seconds = None
        self.messages = self.bytes = None
        self.client_cpu = self.server_cpu = None
        self.expected = None

    @property
    def ok(self):
        return self.error is None and self.seconds is not None

    @property
    def rate(self):
        return self.messages / self.seconds if self.ok and self.seconds else None


def run_load(run, port, pgid, expected, users, sessions, args):
    """Run the clients against 127.0.0.1:port and check what they got."""
    run.expected = expected
    clients = [(port, user, expected.per_user[user], sessions, args.size, args.timeout)
               for user in users]
    # settle: let Dovecot reap its pop3 processes
    results, run.server_cpu = run_clients(
        _client_main, clients, lambda: group_cpu(pgid), args.timeout)

    rs = list(results.values())
    errors = [r["error"] for r in rs if r["error"]]
    run.client_cpu = sum(r["cpu"] for r in rs)
    run.messages = sum(r["messages"] for r in rs)
    run.bytes = sum(r["bytes"] for r in rs)
    crc_sum = sum(r["crc_sum"] for r in rs)
    if errors:
        more = " (and %d more)" % (len(errors) - 1) if len(errors) > 1 else ""
        run.error = errors[0] + more
    elif run.messages != expected.messages or run.bytes != expected.bytes:
        run.error = "downloaded %d messages, %d bytes; expected %d, %d" % (
            run.messages, run.bytes, expected.messages, expected.bytes)
    elif crc_sum != expected.crc_sum:
        run.error = ("downloaded the right number of bytes, but not the same "
                     "bytes (CRC-32 sum differs)")
    else:
        run.seconds = (max(r["t1"] for r in rs) - min(r["t0"] for r in rs))


# ---------------------------------------------------------------- driver

def rows_for(args):
    rows = [("first", "1 session/client, first access", 1),
            ("warm", "1 session/client", 1)]
    if args.sessions > 1:
        rows.append(("sessions", "%d sessions/client" % args.sessions,
                     args.sessions))
    return rows


def show(run, label):
    print("%-46s" % (label + " ..."), end="")
    if run.ok:
        print(" %8.1f msg/s  %6.3f s, server CPU %5.2f s, clients %5.2f s"
              % (run.rate, run.seconds, run.server_cpu, run.client_cpu))
    else:
        print(" FAILED")
        print("  error: %s" % run.error)
    sys.stdout.flush()


def bench_server(name, make, expected, users, rows, args, suffix):
    """Start one instance, run every row on it, stop it; {row: Run}."""
    out = {key: Run(name, key) for key, _, _ in rows}
    try:
        with make() as srv:
            port = srv.pop3_port if name == "mdpy" else srv.port
            if args.keep:
                print("  kept: %s" % srv.base)
            for key, label, sessions in rows:
                run = out[key]
                try:
                    run_load(run, port, srv.proc.pid, expected, users, sessions,
                             args)
                except BenchError as e:
                    run.error = str(e)
                if not run.ok and srv.proc.poll() is not None:
                    run.error = "%s; %s died (exit %s)" % (
                        run.error, name, srv.proc.returncode)
                show(run, "%-7s %s%s" % (name, label, suffix))
                if srv.proc.poll() is not None:
                    break
            if name == "dovecot" and any(not r.ok for r in out.values()):
                print("  dovecot log: %s" % srv.log_tail(3))
            if name == "mdpy" and any(not r.ok for r in out.values()):
                print("  mdpy log (%s):\n%s" % (srv.log, tail(srv.log, 8)))
    except BenchError as e:
        for key, label, _ in rows:
            if out[key].error is None and out[key].seconds is None:
                out[key].error = str(e)
        print("%-46s FAILED\n  error: %s" % ("%-7s start%s ..." % (name, suffix), e))
    for key, _, _ in rows:
        if not out[key].ok and out[key].error is None:
            out[key].error = "not run"
    return out


def report(rows, results, expected, args):
    print()
    print("%d clients, %d messages x %d bytes (%.1f MB), USER/PASS STAT LIST "
          "RETR... QUIT, no pipelining%s"
          % (args.clients, expected.messages, args.size, expected.bytes / 1e6,
             median_note(args.repeat)))
    head = ("%-32s | %9s %9s %7s | %-13s | %-22s %s"
            % ("msg/s", "mdpy", "dovecot", "ratio", "CPU s m / d",
               "downloaded mdpy", "downloaded dovecot"))
    print_table_head(head)
    ratios = {}
    for key, label, _ in rows:
        cells = []
        rates = {}
        for name in ("mdpy", "dovecot"):
            series = results.get(name, {}).get(key, [])
            ok = bool(series) and all(r.ok for r in series)
            rates[name] = median(r.rate for r in series) if ok else None
            cpu = median(r.server_cpu for r in series) if ok else None
            bad = [r for r in series if not r.ok]
            if not series:
                text = "-"
            elif bad:
                text = "FAILED %d/%d runs" % (len(bad), len(series))
            else:
                text = "%d/%d ok" % (series[0].messages, expected.messages)
                if len(series) > 1:
                    text += " x%d" % len(series)
            cells.append((rates[name], cpu, text))
        r = (rates["mdpy"] / rates["dovecot"]
             if rates["mdpy"] and rates["dovecot"] else None)
        ratios[key] = r
        print("%-32s | %s %s %s | %s / %s | %-22s %s" % (
            label, fmt(cells[0][0]), fmt(cells[1][0]), fmt(r, "%7.2f", 7),
            fmt(cells[0][1], "%5.2f", 5), fmt(cells[1][1], "%5.2f", 5),
            cells[0][2], cells[1][2]))
    print()
    if "mdpy" in results and "dovecot" in results:
        for key, label, _ in rows:
            r = ratios[key]
            print_target(r is not None and r >= TARGET_RATIO,
                         "mdpy/Dovecot >= %.1f (%s): %s" % (
                             TARGET_RATIO, label,
                             "%.3f" % r if r is not None else "no result"))


OPTIONS = (
    ("--messages", dict(help="messages in the Maildir, over all users "
                             "(default %(default)s)")),
    ("--clients", dict(type=positive, default=20,
                       help="parallel clients, one user each "
                            "(default %(default)s)")),
    ("--size", dict(help="bytes per message, headers included "
                         "(default %(default)s)")),
    ("--sessions", dict(type=positive, default=4,
                        help="sessions per client in the last row; 1 skips "
                             "the row (default %(default)s)")),
    ("--repeat", dict(help="instances per server, interleaved; the table shows "
                           "medians (default %(default)s)")),
    ("--only", dict(choices=("mdpy", "dovecot"))),
    ("--dovecot-scheme", dict(default="SHA512-CRYPT",
                              help="password scheme of Dovecot's passwd-file, "
                                   "SCHEME[:ROUNDS], e.g. PLAIN, "
                                   "SHA512-CRYPT:100000, BLF-CRYPT:10, "
                                   "ARGON2ID (default SHA512-CRYPT; mdpy "
                                   "always uses scrypt)")),
    ("--dovecot-auth-cache", dict(default="10M", metavar="SIZE",
                                  help="Dovecot's auth_cache_size (default "
                                       "10M, as mdpy caches verified "
                                       "passwords; 0 is Dovecot's default, no "
                                       "cache)")),
    ("--timeout", dict(help="seconds allowed for one pass (default: "
                            "max(60, messages/20))")),
    ("--keep", {}),
)


def parse_args(argv):
    ap, args = parse_bench_args(
        argv, "POP3 download: mdpy side by side with a private Dovecot.", OPTIONS)
    if args.messages < args.clients:
        ap.error("--messages must be at least --clients")
    args.scheme, _, rounds = args.dovecot_scheme.partition(":")
    try:
        args.rounds = int(rounds) if rounds else None
    except ValueError:
        ap.error("--dovecot-scheme: ROUNDS must be a number")
    return args


def main(argv=None):
    args = parse_args(argv)
    interrupt_on_sigterm()
    if os.geteuid() != 0 and args.only != "mdpy":
        print("error: run as root (a private Dovecot must start as root), or "
              "use --only mdpy", file=sys.stderr)
        return 1
    raise_nofile(4096)
    users = user_names(args.clients)
    try:
        dv = dovecot_version() if args.only != "mdpy" else None
    except BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    print_banner("POP3", "; Dovecot %s" % dv if dv else "")
    if dv:
        print("Dovecot: passwords %s, auth_cache_size = %s; mdpy: scrypt "
              "N=2^14, verified passwords cached"
              % (args.dovecot_scheme, args.dovecot_auth_cache))
    try:                # --size too small for the headers: say so at once
        make_message(random.Random(0), "%s@%s" % (users[-1], DOMAIN),
                     args.messages, args.messages, args.size, time.time())
    except BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    rows = rows_for(args)
    results = {}
    failed = False
    template = None
    try:
        print("%-46s" % ("Maildir: %d users, %d messages ..."
                         % (len(users), args.messages)), end="", flush=True)
        t = time.monotonic()
        try:
            template, expected = MdpyPop3.template(users, args.messages,
                                                   args.size, keep=args.keep)
        except BenchError as e:
            print(" FAILED\n  error: %s" % e)
            return 1
        print(" made in %.1f s%s" % (time.monotonic() - t,
                                     " (%s)" % template.base if args.keep else ""))
        servers = []
        if args.only != "dovecot":
            servers.append(("mdpy", lambda: MdpyPop3(template, keep=args.keep)))
        if args.only != "mdpy":
            servers.append(("dovecot",
                            lambda: new_dovecot(template, users, args)))
        for i in range(args.repeat):
            suffix = repeat_suffix(i, args.repeat)
            for name, make in servers:
                out = bench_server(name, make, expected, users, rows, args, suffix)
                for key, run in out.items():
                    results.setdefault(name, {}).setdefault(key, []).append(run)
                    failed |= not run.ok
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if template is not None:
            template.cleanup()

    report(rows, results, expected, args)
    return exit_status(failed)


if __name__ == "__main__":
    sys.exit(main())
