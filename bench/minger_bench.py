#!/usr/bin/env python3
"""Minger (UDP 4069): queries per second answered by mdpy's MingerServer.

    python bench/minger_bench.py [--queries 200000] [--sockets 4] [--window 32]
                                 [--users 10000] [--missing 20]

A SQLite directory is made with mdpy.directory.sqlite in a temporary
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

Exit status: 0 if every query was answered correctly, 1 otherwise.
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
    from mdpy.directory.sqlite import SQLiteDirectory
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

    from mdpy.directory.sqlite import SQLiteDirectory
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


def bench_rcpt_latency(srv, args):
    """Part 2, to come: the RCPT latency a Minger check adds to an SMTP
    session (mdpy's SMTP server verifying recipients against srv with
    mdpy.minger.client.MingerVerifier, compared with no check).  Returns
    None until it is written."""
    return None


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
    ("--keep", {}),
)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"] and len(argv) == 2:
        return serve(argv[1])
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
            finally:
                srv.stop()
                run.counters = srv.counters()
            rcpt = bench_rcpt_latency(srv, args)
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
    if rcpt is None:
        print("\npart 2 (RCPT latency added by a Minger check): not written yet")
    return exit_status(not run.ok)


if __name__ == "__main__":
    sys.exit(main())
