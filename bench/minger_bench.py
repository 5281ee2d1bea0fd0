#!/usr/bin/env python3
"""Minger (UDP 4069): queries per second answered by mdpy's MingerServer,
and the RCPT latency a Minger check adds to SMTP.

    python bench/minger_bench.py [--queries 200000] [--sockets 4] [--window 32]
                                 [--users 10000] [--missing 20] [--rcpts 2000]

A SQLite directory is made with mdpy.backends.files.directory in a temporary
directory: the domain bench.test and --users users user0..userN-1@bench.test.
(addUser hashes each password with scrypt, about 50 ms a user; the users are
inserted straight into the users table instead, without a password: Minger
only asks whether they exist.)

The server is a child process of its own (this file run with --serve): the
reactor with a MingerServer on 127.0.0.1, a free UDP port, the shared secret
set, anonymous queries refused.  Every query comes from 127.0.0.1, so the
server's rate limits are raised out of the way for the run; the answers are
otherwise what production gives.

The load generator is one process per UDP socket (--sockets).  Each sends
its share of --queries, every one authenticated with its digest, --missing
per cent of them for addresses that do not exist (status 3 expected) and
the others for existing users (5), keeping --window queries outstanding: a
reply sends the next query.  A query unanswered after --loss-timeout
seconds counts as lost and is replaced by the next.  A reply with another
status than expected counts as wrong.

Printed: queries/second answered (answers over the time from the first
query sent to the last reply, all sockets), median and 99th percentile reply
latency, lost and wrong answers, and the server's CPU seconds.  There is no
open-source Minger server packaged for Debian to run beside it, so these
are mdpy's figures alone.

Part 2, the RCPT latency a Minger check adds: a second child process (this
file run with --serve-smtp) runs mdpy's SMTP server and delivery pipeline
with two gateway domains, bench.test checked with the Minger server above
(answers not cached, so every RCPT asks it over loopback UDP) and
nocheck.test not checked.  One smtplib session sends --rcpts RCPT TO for
each domain; printed are the median and 99th percentile of the RCPT round
trip for both, and the difference.

Exit status: 0 if every query was answered correctly and every RCPT got
the expected reply (250, or 550 for a missing user), 1 otherwise.
"""

import array
import base64
import collections
import hashlib
import os
import select
import socket
import sqlite3
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (DOMAIN, BenchError, ProcessServer, child_env,  # noqa: E402
                    exit_status, fmt, interrupt_on_sigterm, parse_bench_args,
                    positive, print_banner, print_table_head, proc_stat,
                    run_clients, tail)

SECRET = "bench-minger-secret-0123456789"


def percent(text):
    value = int(text)
    if not 0 <= value <= 100:
        raise ValueError("not a percentage")
    return value


def seconds(text):
    value = float(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


# ------------------------------------------------------------- the directory

def build_directory(path, users):
    """The domain bench.test with users user0..user{users-1}, inserted
    straight into the table (no password: nothing logs in)."""
    sys.path.insert(0, os.path.dirname(HERE))
    from mdpy.backends.files.directory import SQLiteDirectory
    directory = SQLiteDirectory(path)
    try:
        directory.addDomain(DOMAIN)
    finally:
        directory.close()
    db = sqlite3.connect(path)
    try:
        with db:
            db.executemany(
                "INSERT INTO users (address, domain, localpart, password, cram_md5,"
                " enabled) VALUES (?, ?, ?, NULL, NULL, 1)",
                (("user%d@%s" % (i, DOMAIN), DOMAIN, "user%d" % i)
                 for i in range(users)))
    finally:
        db.close()


# --------------------------------------------------------------- the server

def serve(path):
    """The server process: a MingerServer for the directory at path on a
    free UDP port of 127.0.0.1; prints "listening on PORT", and its
    counters when it stops (SIGTERM)."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from mdpy.backends.files.directory import SQLiteDirectory
    from mdpy.minger.server import MingerServer

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)],
                                     redirectStandardIO=False)
    server = MingerServer(SQLiteDirectory(path), secret=SECRET, rate=1e9,
                          burst=10 ** 9, globalRate=1e9)
    port = reactor.listenUDP(0, server, interface="127.0.0.1")
    print("listening on %d" % port.getHost().port, flush=True)

    def counters():
        print("answered %d dropped %d malformed %d failed %d"
              % (server.answered, server.dropped, server.malformed,
                 server.failed), flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", counters)
    reactor.run()
    return 0


class MingerProcess(ProcessServer):
    """This file run with --serve, in a temporary directory holding the
    directory database and the server's output."""

    name = "minger server"

    def __init__(self, users, keep=False, start_timeout=30):
        self.users = users
        self.keep = keep
        self.start_timeout = start_timeout
        self.base = tempfile.mkdtemp(prefix="mdpy-minger-bench-")
        self.db = os.path.join(self.base, "directory.sqlite")
        self.log = os.path.join(self.base, "server.log")
        self.port = None
        self.build_s = None

    def start(self):
        t = time.monotonic()
        build_directory(self.db, self.users)
        self.build_s = time.monotonic() - t
        self._spawn([sys.executable, os.path.abspath(__file__), "--serve", self.db],
                    self.log, BenchError, env=child_env())
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.startswith("listening on "):
                    self.port = int(line.split()[-1])
                    return self
            dead = self._dead()
            if dead:
                raise BenchError("the server exited (%s) before listening:\n%s"
                                 % (dead, tail(self.log)))
            time.sleep(0.05)
        raise BenchError("the server did not listen within %ds:\n%s"
                         % (self.start_timeout, tail(self.log)))

    def lines(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def counters(self):
        """The server's counters printed at its exit, or None."""
        for line in reversed(self.lines()):
            if line.startswith("answered "):
                words = line.split()
                return dict(zip(words[::2], map(int, words[1::2])))
        return None

    def cpu(self):
        """CPU seconds the server used so far (/proc)."""
        fields = self.proc and proc_stat(self.proc.pid)
        if not fields:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------- the load generator

def digest(mailbox):
    """base64(MD5(secret ":" mailbox)): kept here so that the load
    generator shares no code with what it measures."""
    md5 = hashlib.md5(("%s:%s" % (SECRET, mailbox)).encode()).digest()
    return base64.b64encode(md5).decode()


def queries_for(index, sockets, total, users, missing):
    """The queries socket index sends: [(datagram, mailbox, expected)]."""
    out = []
    for g in range(index, total, sockets):
        if g * missing % 100 < missing:
            mailbox, expected = "nobody%d@%s" % (g, DOMAIN), b"3"
        else:
            mailbox, expected = "user%d@%s" % (g % users, DOMAIN), b"5"
        query = "%s d=%s" % (mailbox, digest(mailbox))
        out.append((query.encode(), mailbox.encode(), expected))
    return out


def load_client(conn, go, index, port, queries, window, loss_timeout):
    """One socket: send queries keeping window outstanding; report the
    latencies (seconds), lost, wrong and late replies, and the times of
    the first send and last reply."""
    result = {"user": index, "error": None}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    conn.send("ready")
    go.wait()

    clock = time.monotonic
    # An address may be asked again while an earlier query for it is still
    # outstanding (the users repeat): replies are matched first in, first
    # out per mailbox, and each query is known by its number.
    outstanding = {}                    # mailbox -> deque of (number, expected)
    live = set()                        # numbers of the queries outstanding
    order = collections.deque()         # (number, sent at, mailbox), oldest first
    sent_at = {}                        # number -> sent at
    latencies = array.array("d")
    counts = {"lost": 0, "wrong": 0, "late": 0}
    position = 0

    def send_next():
        nonlocal position
        datagram, mailbox, expected = queries[position]
        number, position = position, position + 1
        now = clock()
        outstanding.setdefault(mailbox, collections.deque()).append((number, expected))
        live.add(number)
        sent_at[number] = now
        order.append((number, now, mailbox))
        try:
            sock.send(datagram)
        except OSError:
            pass                        # counted as lost after the timeout

    first = clock()
    last = first
    while position < min(window, len(queries)):
        send_next()
    try:
        while live:
            now = clock()
            while order and (order[0][0] not in live
                             or now - order[0][1] > loss_timeout):
                number, sent, mailbox = order.popleft()
                if number in live:
                    live.remove(number)
                    del sent_at[number]
                    waiting = outstanding[mailbox]
                    waiting.popleft()   # the oldest for its mailbox
                    if not waiting:
                        del outstanding[mailbox]
                    counts["lost"] += 1
                    if position < len(queries):
                        send_next()
            if not live:
                break
            wait = loss_timeout - (now - order[0][1])
            if not poller.poll(max(1, int(wait * 1000))):
                continue
            while True:
                try:
                    data = sock.recv(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionRefusedError:
                    result["error"] = "the server refused (ICMP port unreachable)"
                    break
                now = clock()
                mailbox, _, status = data.rstrip().rpartition(b" ")
                waiting = outstanding.get(mailbox)
                if not waiting:
                    counts["late"] += 1
                    continue
                number, expected = waiting.popleft()
                if not waiting:
                    del outstanding[mailbox]
                live.remove(number)
                last = now
                latencies.append(now - sent_at.pop(number))
                if status != expected:
                    counts["wrong"] += 1
                if position < len(queries):
                    send_next()
    except Exception as e:
        result["error"] = "%s: %s" % (type(e).__name__, e)
    result.update(counts, first=first, last=last, latencies=latencies.tobytes(),
                  sent=position)
    conn.send(result)


# ----------------------------------------------------------------- the runs

class Result:
    answered = lost = wrong = late = 0
    rate = median_ms = p99_ms = cpu = None
    counters = None
    error = None

    @property
    def ok(self):
        return self.error is None and not self.lost and not self.wrong


def percentile(values, p):
    if not values:
        return None
    return values[min(len(values) - 1, int(len(values) * p / 100.0))]


def bench_queries(srv, args):
    """Part 1: the load generator against srv; a Result."""
    run = Result()
    clients = [(i, srv.port,
                queries_for(i, args.sockets, args.queries, args.users, args.missing),
                args.window, args.loss_timeout)
               for i in range(args.sockets)]
    results, run.cpu = run_clients(load_client, clients, srv.cpu, args.timeout,
                                   settle=0.1)
    latencies = array.array("d")
    for r in results.values():
        latencies.frombytes(r["latencies"])
        run.lost += r["lost"]
        run.wrong += r["wrong"]
        run.late += r["late"]
        run.error = run.error or r["error"]
    run.answered = len(latencies)
    elapsed = (max(r["last"] for r in results.values())
               - min(r["first"] for r in results.values()))
    run.rate = run.answered / elapsed if elapsed > 0 else None
    ordered = sorted(latencies)
    if ordered:
        run.median_ms = percentile(ordered, 50) * 1000
        run.p99_ms = percentile(ordered, 99) * 1000
    return run


NOCHECK = "nocheck.test"


def serve_smtp(base, minger_port):
    """The gateway process of part 2: mdpy's SMTP server and pipeline on a
    free TCP port of 127.0.0.1, with two gateway domains: bench.test, whose
    recipients are checked with the Minger server at minger_port (answers
    not cached, so every RCPT asks), and nocheck.test, not checked.  Prints
    "listening on PORT"."""
    from twisted.internet import reactor

    from mdpy.delivery.pipeline import DeliveryPipeline
    from mdpy.backends.files.queue import SpoolQueue
    from mdpy.backends.files.directory import SQLiteDirectory
    from mdpy.minger.client import MingerClient, MingerVerifier
    from mdpy.odmr.gateway import GatewayDomain, Gateways
    from mdpy.smtp.server import SMTPFactory
    from mdpy.backends.memory import MemoryStore

    client = MingerClient(reactor, "127.0.0.1", port=minger_port, secret=SECRET,
                          cacheTTL=0, negativeTTL=0)
    gateways = Gateways([
        GatewayDomain(DOMAIN, verifier=MingerVerifier(client, fallback="tempfail")),
        GatewayDomain(NOCHECK),
    ])
    pipeline = DeliveryPipeline(
        SQLiteDirectory(os.path.join(base, "gateway.sqlite")), MemoryStore(),
        queue=SpoolQueue(os.path.join(base, "queue"), reactor=reactor),
        spoolDir=base, gateways=gateways)
    factory = SMTPFactory("gateway.bench.test", pipeline, maxRecipients=10 ** 6,
                          maxErrors=10 ** 6, clock=reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print("listening on %d" % port.getHost().port, flush=True)
    reactor.run()
    return 0


class GatewayProcess(ProcessServer):
    """This file run with --serve-smtp."""

    name = "gateway"

    def __init__(self, base, minger_port, start_timeout=30):
        self.base = base
        self.minger_port = minger_port
        self.start_timeout = start_timeout
        self.log = os.path.join(base, "gateway.log")
        self.port = None

    def start(self):
        self._spawn([sys.executable, os.path.abspath(__file__), "--serve-smtp",
                     self.base, str(self.minger_port)], self.log, BenchError,
                    env=child_env())
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            try:
                with open(self.log, errors="replace") as f:
                    for line in f.read().splitlines():
                        if line.startswith("listening on "):
                            self.port = int(line.split()[-1])
                            return self
            except OSError:
                pass
            dead = self._dead()
            if dead:
                raise BenchError("the gateway exited (%s) before listening:\n%s"
                                 % (dead, tail(self.log)))
            time.sleep(0.05)
        raise BenchError("the gateway did not listen within %ds" % self.start_timeout)


class RcptResult:
    error = None
    checked = unchecked = None       # (median ms, p99 ms, count)


def rcpt_latencies(port, domain, count, users, missing):
    """RCPT TO latencies (seconds) of count recipients of domain over one
    SMTP session, and how many got each reply code."""
    import smtplib

    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    latencies, codes = [], collections.Counter()
    try:
        client.ehlo("bench.client")
        client.mail("sender@remote.example")
        for i in range(count):
            if i * missing % 100 < missing:
                address = "nobody%d@%s" % (i, domain)
            else:
                address = "user%d@%s" % (i % users, domain)
            start = time.monotonic()
            code, _ = client.rcpt(address)
            latencies.append(time.monotonic() - start)
            codes[code] += 1
        client.rset()
        client.quit()
    finally:
        client.close()
    return sorted(latencies), codes


def bench_rcpt_latency(srv, args):
    """Part 2: the RCPT latency a Minger check adds: one SMTP session to
    mdpy's SMTP server sending --rcpts recipients of a gateway domain
    checked with Minger (srv, over loopback UDP, uncached), and as many of
    a gateway domain not checked."""
    result = RcptResult()
    gateway = GatewayProcess(srv.base, srv.port)
    try:
        with gateway:
            for domain, attribute in ((NOCHECK, "unchecked"), (DOMAIN, "checked")):
                latencies, codes = rcpt_latencies(gateway.port, domain, args.rcpts,
                                                  args.users, args.missing)
                expected = {250: args.rcpts} if domain == NOCHECK else None
                if expected is not None and dict(codes) != expected:
                    raise BenchError("unexpected replies for %s: %s" % (domain, dict(codes)))
                if domain == DOMAIN and set(codes) - {250, 550}:
                    raise BenchError("unexpected replies for %s: %s" % (domain, dict(codes)))
                setattr(result, attribute, (percentile(latencies, 50) * 1000,
                                            percentile(latencies, 99) * 1000,
                                            len(latencies), dict(codes)))
    except (BenchError, OSError) as e:
        result.error = str(e)
    return result


def report_rcpt(rcpt, args):
    print()
    print("RCPT latency: one SMTP session to mdpy's SMTP server (a gateway), %d RCPT TO"
          " each,\n        %d%% for missing users; checked = Minger query to the server"
          " above for every RCPT (no cache)" % (args.rcpts, args.missing))
    if rcpt.error:
        print("error: %s" % rcpt.error)
        return
    head = "%-22s | %9s %9s | %s" % ("recipients", "median ms", "p99 ms", "replies")
    print_table_head(head)
    for label, row in (("not checked", rcpt.unchecked), ("checked with Minger", rcpt.checked)):
        print("%-22s | %9.3f %9.3f | %s" % (label, row[0], row[1],
                                              " ".join("%d: %d" % item for item in sorted(row[3].items()))))
    print("a Minger check adds %.3f ms to the median RCPT (%.3f ms at p99)"
          % (rcpt.checked[0] - rcpt.unchecked[0], rcpt.checked[1] - rcpt.unchecked[1]))


def report(run, srv, args):
    print()
    print("minger: %d queries (%d%% for missing addresses), each with a digest, "
          "from %d UDP sockets\n        (one process each, %d outstanding per "
          "socket) to mdpy's MingerServer on 127.0.0.1;\n        SQLite directory "
          "of %d users (built in %.1f s); rate limits raised for the run"
          % (args.queries, args.missing, args.sockets, args.window, args.users,
             srv.build_s or 0))
    head = ("%-6s | %8s %10s | %9s %9s | %7s %7s | %10s"
            % ("server", "answered", "answered/s", "median ms", "p99 ms",
               "lost", "wrong", "server CPU"))
    print_table_head(head)
    print("%-6s | %8d %s | %s %s | %7d %7d | %s" % (
        "mdpy", run.answered, fmt(run.rate, "%10.0f", 10),
        fmt(run.median_ms, "%9.3f"), fmt(run.p99_ms, "%9.3f"), run.lost,
        run.wrong, fmt(run.cpu, "%9.2fs", 10)))
    print()
    print("No open-source Minger server is packaged for Debian, so there is no "
          "peer to compare with:\nthese are mdpy's figures alone.")
    if run.late:
        print("%d replies came after their query was counted lost." % run.late)
    if run.cpu and run.answered:
        print("server CPU per query answered: %.1f us" % (run.cpu / run.answered * 1e6))
    if run.counters:
        print("server counters: %s" % ", ".join(
            "%s %d" % item for item in run.counters.items()))
    if run.error:
        print("error: %s" % run.error)


OPTIONS = (
    ("--queries", dict(type=positive, default=200000,
                       help="queries in all (default %(default)s)")),
    ("--sockets", dict(type=positive, default=4,
                       help="UDP sockets (one process each) sending them "
                            "(default %(default)s)")),
    ("--window", dict(type=positive, default=32,
                      help="queries outstanding per socket (default %(default)s)")),
    ("--users", dict(type=positive, default=10000,
                     help="users in the directory (default %(default)s)")),
    ("--missing", dict(type=percent, default=20,
                       help="per cent of queries for missing addresses "
                            "(default %(default)s)")),
    ("--loss-timeout", dict(type=seconds, default=1.0,
                            help="seconds after which a query counts as lost "
                                 "(default %(default)s)")),
    ("--timeout", dict(type=positive, default=120,
                       help="seconds allowed for the whole load "
                            "(default %(default)s)")),
    ("--rcpts", dict(type=positive, default=2000,
                     help="RCPT TO per domain in part 2 (default %(default)s)")),
    ("--keep", {}),
)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"] and len(argv) == 2:
        return serve(argv[1])
    if argv[:1] == ["--serve-smtp"] and len(argv) == 3:
        return serve_smtp(argv[1], int(argv[2]))
    _, args = parse_bench_args(
        argv, "Minger: queries/s answered by mdpy's MingerServer.", OPTIONS)
    interrupt_on_sigterm()
    print_banner("minger", "; load average %.1f" % os.getloadavg()[0])
    print("%-40s" % "mdpy    minger queries ...", end="", flush=True)
    run, rcpt = Result(), None
    srv = MingerProcess(args.users, keep=args.keep)
    try:
        with srv:
            try:
                run = bench_queries(srv, args)
                rcpt = bench_rcpt_latency(srv, args)
            finally:
                srv.stop()
                run.counters = srv.counters()
    except BenchError as e:
        run.error = str(e)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    if run.ok:
        print(" %s queries/s answered" % fmt(run.rate, "%.0f", 1))
    else:
        print(" FAILED")
    if args.keep:
        print("  kept: %s" % srv.base)
    report(run, srv, args)
    if rcpt is not None:
        report_rcpt(rcpt, args)
    return exit_status(not run.ok or rcpt is None or rcpt.error is not None)


if __name__ == "__main__":
    sys.exit(main())
