#!/usr/bin/env python3
"""IMAP sessions: mdpy side by side with a private Dovecot.

    python bench/imap_bench.py [--clients 20] [--messages 200] [--size 4096]
                               [--seconds 20 | --rounds N] [--repeat N]

One Maildir tree is made with mdpy's own tooling: the domain bench.test,
users u00..u19@bench.test (one per client) and --messages message files of
exactly --size bytes in each user's new/ (the messages of
bench/pop3_bench.py).  Each server run gets a fresh copy of that tree, so
mdpy and Dovecot (Debian's dovecot-imapd, started privately with its own
configuration, see bench/dovecot.py) serve byte-identical Maildirs from the
same starting state.

Each client (one process per client, blocking sockets, one command at a
time like a mail client, no pipelining) repeats this session::

    LOGIN "uNN@bench.test" "bench-secret"
    SELECT INBOX
    FETCH 1:* (FLAGS UID RFC822.SIZE)
    UID FETCH <--headers UIDs> (BODY.PEEK[HEADER.FIELDS (From To Subject Date)])
    UID FETCH <uid> (BODY.PEEK[])             -- --bodies times, one UID each
    UID STORE <those UIDs> +FLAGS (\\Seen)
    APPEND INBOX (\\Seen) {SIZE}               -- a synchronizing literal
    UID STORE <its uid> +FLAGS.SILENT (\\Deleted)
    UID EXPUNGE <its uid>                     -- EXPUNGE without UIDPLUS
    LOGOUT

Two passes per server instance: one session per client on the untouched
Maildir (the server indexes the new messages), then sessions back to back
for --seconds (or --rounds sessions per client).  Every tagged OK counts
one command; commands/second of both servers are printed with the ratio
mdpy/Dovecot, per-command latency percentiles, and "target met/MISSED:
mdpy/Dovecot >= 0.5" for the steady-state pass.

Exit status: 0 if every run completed with every check passed, 1 if any
run failed (the first failing command and its response are printed).
Missing the target only prints "target MISSED".  See bench/README.rst.
"""

import array
import os
import random
import re
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (DOMAIN, PASSWORD, BenchError, MdpyServer, run_clients,  # noqa: E402
                    exit_status, fmt, interrupt_on_sigterm, median, median_note,
                    parse_bench_args, positive, print_banner, print_table_head,
                    print_target, raise_nofile, repeat_suffix, run_command,
                    tail)
from dovecot import PrivateDovecot, dovecot_version, libexec_dir  # noqa: E402
from pop3_bench import (fill_maildirs, group_cpu, make_message,  # noqa: E402
                        user_names)

TARGET_RATIO = 0.5          # mdpy / Dovecot commands/s, steady state

HEADER_FIELDS = b"BODY.PEEK[HEADER.FIELDS (From To Subject Date)]"

# Command kinds in session order: the latency table's rows.
KINDS = ("LOGIN", "SELECT", "FETCH 1:*", "UID FETCH headers", "UID FETCH body",
         "UID STORE \\Seen", "APPEND", "UID STORE \\Deleted", "EXPUNGE",
         "LOGOUT")


# ------------------------------------------------------------------ mdpy

class MdpyImap(MdpyServer):
    """mdpy with SMTP and IMAP (plaintext LOGIN) on free loopback ports.

    MdpyImap.template(...) provisions a data directory (domain, users,
    messages) without starting anything; MdpyImap(template=t) is a server
    over a fresh copy of it."""

    disabled = ("submission", "smtps", "pop3", "pop3s", "imaps", "odmr",
                "minger", "webadmin")

    def __init__(self, template=None, keep=False, start_timeout=30,
                 settings=None):
        MdpyServer.__init__(self, keep=keep, start_timeout=start_timeout,
                            imap=True, settings=settings)
        self.template_dir = template.data_dir if template is not None else None

    @classmethod
    def template(cls, users, messages, size, keep=False):
        """A data directory with users u00.. and messages messages each in
        new/; returns the server object (never started)."""
        t = cls(keep=keep)
        try:
            t.provision_batch(users)
            fill_maildirs(t, users, messages * len(users), size)
        except BaseException:
            t.cleanup()
            raise
        return t

    def configure(self):
        shutil.copytree(self.template_dir, self.data_dir, symlinks=True)
        self.write_ini()


def new_dovecot(template, users, args):
    """A private Dovecot IMAP server over a fresh copy of the template's
    Maildirs."""
    base = tempfile.mkdtemp(prefix="mdpy-bench-dovecot-")
    try:
        mail = os.path.join(base, "mail")
        shutil.copytree(template.mail_root, mail, symlinks=True)
        return PrivateDovecot(mail, users, PASSWORD, domain=DOMAIN,
                              scheme=args.scheme, rounds=args.hash_rounds,
                              auth_cache_size=args.dovecot_auth_cache,
                              own_mail=True, base_dir=base, keep=args.keep,
                              protocol="imap",
                              extra_config="mail_fsync = %s\n" % args.dovecot_fsync)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def dovecot_settings(dc, names=("mail_fsync", "maildir_very_dirty_syncs",
                                "mmap_disable", "auth_cache_size")):
    """'name = value, ...' of the instance's effective settings."""
    out = []
    for name in names:
        try:
            value = run_command([dc.doveconf, "-c", dc.conf, "-h", name])
        except BenchError:
            continue
        out.append("%s = %s" % (name, value))
    return ", ".join(out)


# ------------------------------------------------------- load generator

class ImapFailure(Exception):
    pass


LITERAL = re.compile(rb"\{(\d+)\+?\}$")
FETCH_UID = re.compile(rb"\bUID (\d+)")
FETCH_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
EXISTS = re.compile(rb"^\* (\d+) EXISTS$")
APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]")


class ImapClient:
    """A minimal IMAP client on a blocking socket: one command, then its
    whole response (literals included), like a mail client without
    pipelining."""

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.n = 0
        self.oks = 0                # tagged OKs: commands completed
        self.last = b"(greeting)"

    def _recv(self):
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ImapFailure("%s -> connection closed by the server"
                              % self._shown())
        self.buf += chunk

    def _shown(self):
        return self.last.decode("latin-1").strip()

    def line(self):
        """The next response line without its CRLF (no literal expected)."""
        buf = self.buf
        i = buf.find(b"\r\n")
        while i < 0:
            self._recv()
            i = buf.find(b"\r\n")
        line = bytes(buf[:i])
        del buf[:i + 2]
        return line

    def greeting(self):
        line = self.line()
        if not line.startswith(b"* OK"):
            raise ImapFailure("greeting: %s" % line.decode("latin-1"))
        return line

    def send(self, command):
        """Send command (bytes, no tag, no CRLF); return its tag."""
        self.n += 1
        tag = b"a%d" % self.n
        self.last = tag + b" " + command
        self.sock.sendall(self.last + b"\r\n")
        return tag

    def response(self, tag):
        """Read up to the tagged reply to tag; return (lines, literals):
        every response line (text after a literal is a line of its own) and
        the literals' bytes.  Anything but a tagged OK raises ImapFailure."""
        buf = self.buf
        lines, literals = [], []
        prefix = tag + b" "
        pos = 0
        while True:
            i = buf.find(b"\r\n", pos)
            while i < 0:
                self._recv()
                i = buf.find(b"\r\n", pos)
            line = bytes(buf[pos:i])
            pos = i + 2
            if line.endswith(b"}"):
                m = LITERAL.search(line)
                if m:
                    end = pos + int(m.group(1))
                    while len(buf) < end:
                        self._recv()
                    literals.append(bytes(buf[pos:end]))
                    pos = end
                    lines.append(line)
                    continue
            lines.append(line)
            if line.startswith(prefix):
                del buf[:pos]
                if line[len(prefix):len(prefix) + 2] != b"OK":
                    raise ImapFailure("%s -> %s" % (self._shown(),
                                                    line.decode("latin-1")))
                self.oks += 1
                return lines, literals

    def command(self, command):
        return self.response(self.send(command))

    def append(self, mailbox, flags, message):
        """APPEND with a synchronizing literal: wait for "+", then send it."""
        tag = self.send(b"APPEND %s (%s) {%d}" % (mailbox, flags, len(message)))
        while True:
            line = self.line()
            if line.startswith(b"+"):
                break
            if line.startswith(tag + b" "):
                raise ImapFailure("%s -> %s" % (self._shown(),
                                                line.decode("latin-1")))
        self.sock.sendall(message + b"\r\n")
        return self.response(tag)

    def finish(self):
        """After the LOGOUT reply: the server must close the connection."""
        try:
            self.sock.settimeout(10)
            while self.sock.recv(65536):
                pass
        except socket.timeout:
            raise ImapFailure("LOGOUT -> OK, but the connection was still open "
                              "10 s later")
        finally:
            self.sock.close()


def _timed(lat, kind, call, *args):
    t = time.perf_counter()
    out = call(*args)
    lat[kind].append(time.perf_counter() - t)
    return out


def _uid_set(uids):
    return b",".join(b"%d" % u for u in uids)


def _session(c, cfg, rng, lat):
    """One session on the connected client c; returns the number of tagged
    OKs (commands completed)."""
    count, size = cfg["count"], cfg["size"]
    c.greeting()
    _timed(lat, "LOGIN", c.command, cfg["login"])
    lines, _ = _timed(lat, "SELECT", c.command, b"SELECT INBOX")
    exists = [int(m.group(1)) for m in map(EXISTS.match, lines) if m]
    if not exists or exists[-1] != count:
        raise ImapFailure("SELECT INBOX -> %s EXISTS, expected %d"
                          % (exists[-1] if exists else "no", count))
    lines, _ = _timed(lat, "FETCH 1:*", c.command,
                      b"FETCH 1:* (FLAGS UID RFC822.SIZE)")
    blob = b"\n".join(lines[:-1])
    uids = [int(u) for u in FETCH_UID.findall(blob)]
    sizes = FETCH_SIZE.findall(blob)
    if len(uids) != count or len(sizes) != count:
        raise ImapFailure("FETCH 1:* (FLAGS UID RFC822.SIZE) -> %d UIDs, %d "
                          "sizes; expected %d" % (len(uids), len(sizes), count))
    wrong = [s for s in sizes if int(s) != size]
    if wrong:
        raise ImapFailure("FETCH 1:* -> RFC822.SIZE %s; expected %d"
                          % (wrong[0].decode(), size))
    pick = rng.sample(uids, min(cfg["headers"], count))
    _, lits = _timed(lat, "UID FETCH headers", c.command,
                     b"UID FETCH %s (%s)" % (_uid_set(pick), HEADER_FIELDS))
    if len(lits) != len(pick) or not all(b"Subject:" in x for x in lits):
        raise ImapFailure("UID FETCH %d UIDs (BODY.PEEK[HEADER.FIELDS ...]) -> "
                          "%d literals, not all with a Subject:"
                          % (len(pick), len(lits)))
    read = rng.sample(uids, min(cfg["bodies"], count))
    for uid in read:
        _, lits = _timed(lat, "UID FETCH body", c.command,
                         b"UID FETCH %d (BODY.PEEK[])" % uid)
        if len(lits) != 1 or len(lits[0]) != size:
            raise ImapFailure("UID FETCH %d (BODY.PEEK[]) -> %s; expected one "
                              "literal of %d bytes" % (
                                  uid, [len(x) for x in lits], size))
    _timed(lat, "UID STORE \\Seen", c.command,
           b"UID STORE %s +FLAGS (\\Seen)" % _uid_set(read))
    lines, _ = _timed(lat, "APPEND", c.append, b"INBOX", b"\\Seen",
                      cfg["message"])
    m = APPENDUID.search(lines[-1])
    if m:
        new = int(m.group(1))
    else:                       # no UIDPLUS: ask for the last message's UID
        lines, _ = c.command(b"FETCH * (UID)")
        found = FETCH_UID.findall(b"\n".join(lines[:-1]))
        if not found:
            raise ImapFailure("FETCH * (UID) -> no UID")
        new = int(found[-1])
    _timed(lat, "UID STORE \\Deleted", c.command,
           b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % new)
    lines, _ = _timed(lat, "EXPUNGE", c.command,
                      b"UID EXPUNGE %d" % new if cfg["uidplus"] else b"EXPUNGE")
    gone = [x for x in lines if x.startswith(b"* ") and x.endswith(b" EXPUNGE")]
    if len(gone) != 1:
        raise ImapFailure("%s -> %d EXPUNGE responses, expected 1"
                          % (c._shown(), len(gone)))
    lines, _ = _timed(lat, "LOGOUT", c.command, b"LOGOUT")
    if not any(x.startswith(b"* BYE") for x in lines):
        raise ImapFailure("LOGOUT -> no * BYE before the tagged OK")
    c.finish()
    return c.oks


def _client_main(conn, go, port, cfg, seed, seconds, rounds, timeout):
    """A client process: report ready, wait for go, run sessions (rounds of
    them, or new ones for seconds), send the result dict."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    rng = random.Random(seed)
    lat = {kind: array.array("d") for kind in KINDS}
    result = {"user": cfg["user"], "error": None, "t0": None, "t1": None,
              "sessions": 0, "commands": 0}
    conn.send("ready")
    go.wait()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    result["t0"] = time.monotonic()
    until = result["t0"] + (seconds or 0)
    c = None
    try:
        while (result["sessions"] < rounds if rounds
               else time.monotonic() < until):
            c = ImapClient(port, timeout)
            result["commands"] += _session(c, cfg, rng, lat)
            result["sessions"] += 1
            result["t1"] = time.monotonic()
    except Exception as e:
        if isinstance(e, ImapFailure):
            why = str(e)
        elif c is not None:
            why = "%s -> %s: %s" % (c._shown(), type(e).__name__, e)
        else:
            why = "connect: %s: %s" % (type(e).__name__, e)
        result["error"] = "%s session %d: %s" % (cfg["user"],
                                                 result["sessions"] + 1, why)
    finally:
        if c is not None:
            c.sock.close()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    result["latency"] = lat
    conn.send(result)
    conn.close()


def probe(port, user, timeout):
    """Log in once and ask for CAPABILITY; returns the capability words.
    Fails with the command and response if the server will not serve."""
    c = ImapClient(port, timeout)
    try:
        c.greeting()
        c.command(b'LOGIN "%s@%s" "%s"' % (user.encode(), DOMAIN.encode(),
                                           PASSWORD.encode()))
        lines, _ = c.command(b"CAPABILITY")
        words = set()
        for line in lines:
            if line.upper().startswith(b"* CAPABILITY "):
                words.update(line.upper().split()[2:])
        c.command(b"LOGOUT")
        return words
    except OSError as e:
        raise ImapFailure("%s -> %s: %s" % (c._shown(), type(e).__name__, e))
    finally:
        c.sock.close()


# ------------------------------------------------------------------ runs

class Run:
    """One timed pass of all clients against one server."""

    def __init__(self, server, row):
        self.server, self.row = server, row
        self.error = None
        self.seconds = None
        self.commands = self.sessions = 0
        self.client_cpu = self.server_cpu = None
        self.latency = {}

    @property
    def ok(self):
        return self.error is None and self.seconds is not None

    @property
    def rate(self):
        return self.commands / self.seconds if self.ok and self.seconds else None


def run_load(run, port, pgid, users, messages, uidplus, seconds, rounds, args):
    """Run the clients against 127.0.0.1:port: rounds sessions each, or
    sessions until seconds have passed."""
    rng = random.Random(3501)
    clients = []
    for i, user in enumerate(users):
        address = "%s@%s" % (user, DOMAIN)
        cfg = {
            "user": user, "count": messages, "size": args.size,
            "headers": args.headers, "bodies": args.bodies,
            "uidplus": uidplus,
            "login": b'LOGIN "%s" "%s"' % (address.encode(),
                                          PASSWORD.encode()),
            "message": make_message(rng, address, messages + 1, messages,
                                    args.size, time.time()),
        }
        clients.append((port, cfg, "%s-%d" % (run.row, i), seconds, rounds,
                        args.timeout))
    # settle: let Dovecot reap its imap processes
    results, run.server_cpu = run_clients(
        _client_main, clients, lambda: group_cpu(pgid),
        (seconds or 0) + args.timeout)

    rs = list(results.values())
    errors = [r["error"] for r in rs if r["error"]]
    run.client_cpu = sum(r["cpu"] for r in rs)
    run.commands = sum(r["commands"] for r in rs)
    run.sessions = sum(r["sessions"] for r in rs)
    for kind in KINDS:
        run.latency[kind] = sorted(x for r in rs for x in r["latency"][kind])
    if errors:
        more = " (and %d more)" % (len(errors) - 1) if len(errors) > 1 else ""
        run.error = errors[0] + more
    elif any(r["t1"] is None for r in rs):
        run.error = "a client completed no session"
    else:
        run.seconds = max(r["t1"] for r in rs) - min(r["t0"] for r in rs)


def rows_for(args):
    steady = ("%d sessions/client" % args.rounds if args.rounds
              else "sessions for %d s" % args.seconds)
    return [("first", "1 session/client, first access", 1, None),
            ("steady", steady, args.rounds, None if args.rounds else args.seconds)]


def show(run, label):
    print("%-44s" % (label + " ..."), end="")
    if run.ok:
        print(" %8.1f cmd/s %5d sessions %6.2f s, server CPU %5.2f s, "
              "clients %5.2f s" % (run.rate, run.sessions, run.seconds,
                                   run.server_cpu, run.client_cpu))
    else:
        print(" FAILED")
        print("  error: %s" % run.error)
    sys.stdout.flush()


def imap_port(name, srv, args):
    """The IMAP port of the started server srv; says where it is kept
    (--keep), and the first time for Dovecot, its effective settings."""
    if args.keep:
        print("  kept: %s" % srv.base)
    if name == "dovecot" and not args.settings_shown:
        print("  dovecot: %s" % dovecot_settings(srv))
        args.settings_shown = True
    return srv.imap_port if name == "mdpy" else srv.port


def bench_server(name, make, users, rows, args, suffix):
    """Start one instance, run every row on it, stop it; {row: Run}."""
    out = {key: Run(name, key) for key, _, _, _ in rows}
    try:
        with make() as srv:
            port = imap_port(name, srv, args)
            try:
                caps = probe(port, users[0], args.timeout)
            except (ImapFailure, OSError) as e:
                raise BenchError("%s IMAP probe: %s" % (name, e))
            uidplus = b"UIDPLUS" in caps
            if not uidplus:
                print("  note: %s has no UIDPLUS: APPEND then FETCH * (UID) "
                      "and EXPUNGE" % name)
            for key, label, rounds, seconds in rows:
                run = out[key]
                try:
                    run_load(run, port, srv.proc.pid, users, args.messages,
                             uidplus, seconds, rounds, args)
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
        for key, label, _, _ in rows:
            if out[key].error is None and out[key].seconds is None:
                out[key].error = str(e)
        print("%-44s FAILED\n  error: %s" % ("%-7s start%s ..." % (name, suffix), e))
    for key, _, _, _ in rows:
        if not out[key].ok and out[key].error is None:
            out[key].error = "not run"
    return out


# ---------------------------------------------------------------- report

def percentile(values, p):
    """The p-th percentile (0..100) of sorted values, nearest rank."""
    if not values:
        return None
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


def pooled_latency(series, kind):
    """All latencies of kind over every ok run of series, sorted."""
    return sorted(x for r in series if r.ok for x in r.latency.get(kind, ()))


def report(rows, results, args):
    print()
    print("%d clients, one user each with %d messages x %d bytes; per session: "
          "LOGIN SELECT FETCH 1:*, UID FETCH of %d headers and %d bodies, UID "
          "STORE, APPEND, UID STORE, UID EXPUNGE, LOGOUT; no pipelining%s"
          % (args.clients, args.messages, args.size, args.headers, args.bodies,
             median_note(args.repeat)))
    head = ("%-32s | %9s %9s %7s | %-13s | %s"
            % ("commands/s", "mdpy", "dovecot", "ratio", "CPU s m / d",
               "sessions mdpy / dovecot"))
    print_table_head(head)
    ratios = {}
    for key, label, _, _ in rows:
        rates, cpus, texts = {}, {}, {}
        for name in ("mdpy", "dovecot"):
            series = results.get(name, {}).get(key, [])
            ok = bool(series) and all(r.ok for r in series)
            rates[name] = median(r.rate for r in series) if ok else None
            cpus[name] = median(r.server_cpu for r in series) if ok else None
            bad = [r for r in series if not r.ok]
            if not series:
                texts[name] = "-"
            elif bad:
                texts[name] = "FAILED %d/%d" % (len(bad), len(series))
            else:
                texts[name] = "%d" % median(r.sessions for r in series)
        r = (rates["mdpy"] / rates["dovecot"]
             if rates["mdpy"] and rates["dovecot"] else None)
        ratios[key] = r
        print("%-32s | %s %s %s | %s / %s | %s / %s" % (
            label, fmt(rates["mdpy"]), fmt(rates["dovecot"]), fmt(r, "%7.2f", 7),
            fmt(cpus["mdpy"], "%5.2f", 5), fmt(cpus["dovecot"], "%5.2f", 5),
            texts["mdpy"], texts["dovecot"]))

    label = rows[-1][1]
    print()
    head = ("%-32s | %8s %8s | %8s %8s | %s"
            % ("latency ms, " + label, "mdpy p50", "p99", "dc p50", "p99",
               "count m / d"))
    print_table_head(head)
    for kind in KINDS:
        cells, counts = [], []
        for name in ("mdpy", "dovecot"):
            values = pooled_latency(results.get(name, {}).get("steady", []), kind)
            for p in (50, 99):
                v = percentile(values, p)
                cells.append(fmt(v * 1e3 if v is not None else None, "%8.2f", 8))
            counts.append(str(len(values)) if values else "-")
        print("%-32s | %s %s | %s %s | %s" % (kind, cells[0], cells[1], cells[2],
                                             cells[3], " / ".join(counts)))
    print()
    if "mdpy" in results and "dovecot" in results:
        r = ratios["steady"]
        print_target(r is not None and r >= TARGET_RATIO,
                     "mdpy/Dovecot >= %.1f commands/s (%s): %s" % (
                         TARGET_RATIO, label,
                         "%.3f" % r if r is not None else "no result"))


OPTIONS = (
    ("--clients", dict(type=positive, default=20,
                       help="parallel clients, one user each "
                            "(default %(default)s)")),
    ("--messages", dict(default=200,
                        help="messages in each user's INBOX "
                             "(default %(default)s)")),
    ("--size", dict(help="bytes per message, headers included "
                         "(default %(default)s)")),
    ("--seconds", dict(type=positive, default=20,
                       help="length of the steady-state pass "
                            "(default %(default)s)")),
    ("--rounds", dict(type=positive, default=None,
                      help="sessions per client in the steady-state pass, "
                           "instead of --seconds")),
    ("--headers", dict(type=positive, default=10,
                       help="messages whose headers one UID FETCH gets "
                            "(default %(default)s)")),
    ("--bodies", dict(type=positive, default=5,
                      help="messages read (one UID FETCH BODY.PEEK[] each) and "
                           "marked \\Seen per session (default %(default)s)")),
    ("--repeat", dict(help="instances per server, interleaved; the table shows "
                           "medians (default %(default)s)")),
    ("--only", dict(choices=("mdpy", "dovecot"))),
    ("--dovecot-scheme", dict(default="SHA512-CRYPT",
                              help="password scheme of Dovecot's passwd-file, "
                                   "SCHEME[:ROUNDS] (default SHA512-CRYPT; "
                                   "mdpy always uses scrypt)")),
    ("--dovecot-auth-cache", dict(default="10M", metavar="SIZE",
                                  help="Dovecot's auth_cache_size (default "
                                       "10M, as mdpy caches verified "
                                       "passwords; 0 is Dovecot's default)")),
    ("--dovecot-fsync", dict(default="optimized",
                             choices=("optimized", "always", "never"),
                             help="Dovecot's mail_fsync (default optimized, "
                                  "its own default: only new mail is "
                                  "fsynced; always: every change, as mdpy "
                                  "does before it answers OK)")),
    ("--timeout", dict(help="seconds allowed for one command, and for a pass "
                            "beyond --seconds (default 60)")),
    ("--keep", {}),
)


def parse_args(argv):
    ap, args = parse_bench_args(
        argv, "IMAP sessions: mdpy side by side with a private Dovecot.", OPTIONS)
    if args.headers > args.messages or args.bodies > args.messages:
        ap.error("--headers and --bodies must not exceed --messages")
    split_dovecot_scheme(ap, args)
    args.settings_shown = False
    return args


def split_dovecot_scheme(ap, args):
    """args.scheme and args.hash_rounds (or None) from --dovecot-scheme
    SCHEME[:ROUNDS], as new_dovecot takes them."""
    args.scheme, _, rounds = args.dovecot_scheme.partition(":")
    try:
        args.hash_rounds = int(rounds) if rounds else None
    except ValueError:
        ap.error("--dovecot-scheme: ROUNDS must be a number")


def prepare(args, kind):
    """Check what the Dovecot side needs unless --only mdpy (root,
    dovecot-imapd), raise the file limit and print the banner of the
    benchmark kind.  Returns Dovecot's version (None with --only mdpy);
    raises BenchError saying what is missing."""
    if os.geteuid() != 0 and args.only != "mdpy":
        raise BenchError("run as root (a private Dovecot must start as "
                         "root), or use --only mdpy")
    raise_nofile(4096)
    dv = None
    if args.only != "mdpy":
        dv = dovecot_version()
        libexec_dir("imap")
    print_banner(kind, ("; Dovecot %s" % dv if dv else "")
                 + "; load average %.1f" % os.getloadavg()[0])
    return dv


def make_template(users, messages, size, args):
    """MdpyImap.template(...) with a progress line; None, once the reason
    is printed, if it failed."""
    print("%-44s" % ("Maildir: %d users x %d messages ..."
                     % (len(users), messages)), end="", flush=True)
    t = time.monotonic()
    try:
        template = MdpyImap.template(users, messages, size, keep=args.keep)
    except BenchError as e:
        print(" FAILED\n  error: %s" % e)
        return None
    print(" made in %.1f s%s" % (time.monotonic() - t,
                                 " (%s)" % template.base if args.keep else ""))
    return template


def servers_for(template, users, args):
    """[(name, make)]: mdpy and Dovecot (but for --only), make() giving a
    server over a fresh copy of template."""
    servers = []
    if args.only != "dovecot":
        servers.append(("mdpy", lambda: MdpyImap(template, keep=args.keep)))
    if args.only != "mdpy":
        servers.append(("dovecot", lambda: new_dovecot(template, users, args)))
    return servers


def main(argv=None):
    args = parse_args(argv)
    interrupt_on_sigterm()
    users = user_names(args.clients)
    try:
        dv = prepare(args, "IMAP")
    except BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    if dv:
        print("Dovecot: passwords %s, auth_cache_size = %s, everything else "
              "its defaults (one imap process per connection, mail_fsync = "
              "optimized: APPENDed files fsynced); mdpy: scrypt N=2^14, "
              "verified passwords cached, APPENDed files and their directory "
              "fsynced" % (args.dovecot_scheme, args.dovecot_auth_cache))
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
        template = make_template(users, args.messages, args.size, args)
        if template is None:
            return 1
        for i in range(args.repeat):
            suffix = repeat_suffix(i, args.repeat)
            for name, make in servers_for(template, users, args):
                out = bench_server(name, make, users, rows, args, suffix)
                for key, run in out.items():
                    results.setdefault(name, {}).setdefault(key, []).append(run)
                    failed |= not run.ok
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if template is not None:
            template.cleanup()

    report(rows, results, args)
    return exit_status(failed)


if __name__ == "__main__":
    sys.exit(main())
