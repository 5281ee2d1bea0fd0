#!/usr/bin/env python3
"""IMAP IDLE at scale: mdpy's memory with thousands of idling clients, and
how fast a delivery reaches them; Dovecot alongside when it can be run.

    python bench/imap_idle_bench.py [--connections 5000] [--users 50]
                                    [--samples 20] [--only mdpy|dovecot]

--users users (u00..u49@bench.test, a few messages each) are made with
mdpy's tooling; --connections connections, spread evenly over them (100
each by default), each LOGIN, SELECT INBOX and IDLE.  Then:

* memory -- mdpy: VmRSS of the twistd process (/proc/PID/status), or with
  worker processes the sum of the Pss of the supervisor and workers, at rest,
  with every connection idling (after --idle-seconds, over which the
  server's CPU use is measured too), and after the deliveries (target:
  under 500 MB with 5,000 connections idling); Dovecot: the sum of the Pss
  (and of the RSS) of all its processes, one imap process per connection;
* latency -- for --samples users in turn, one message is delivered (mdpy:
  over its own SMTP port with smtplib; Dovecot: with dovecot-lda, its
  delivery agent) and the time from the delivery's success (the 250 reply;
  dovecot-lda's exit) to each of that user's idling connections receiving
  ``* N EXISTS`` is taken.  Printed: min/median/max over the samples of the
  first and of the last of the user's connections to hear of it.

The load generator is asyncio in this process; its file limit is raised
(RLIMIT_NOFILE) and the servers inherit it.  Exit status: 0 if every run
completed (every connection idling, every delivery seen by every idler of
its user), 1 otherwise.  Missing the target only prints "target MISSED".
See bench/README.rst.
"""

import asyncio
import os
import random
import re
import shutil
import smtplib
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (DOMAIN, PASSWORD, BenchError, exit_status,  # noqa: E402
                    fmt, group_memory, interrupt_on_sigterm, median,
                    parse_bench_args, positive, print_banner,
                    print_table_head, print_target, raise_nofile, tail)
from dovecot import (DovecotError, PrivateDovecot, dovecot_version,  # noqa: E402
                     libexec_dir)
from imap_bench import MdpyImap  # noqa: E402
from pop3_bench import group_cpu, make_message  # noqa: E402

TARGET_MB = 500.0           # mdpy's memory with the connections idling
SENDER = "sender@example.org"

# Dovecot's idling imap processes take inotify instances (two each, as
# seen), and Linux allows 128 per uid (fs.inotify.max_user_instances), so
# each user gets a uid of its own from here rather than all being nobody.
DOVECOT_UID_BASE = 70000
INOTIFY_PER_UID = 64        # Dovecot idlers per uid without inotify warnings

EXISTS = re.compile(rb"^\* (\d+) EXISTS\r?$")


def user_names(count):
    width = max(2, len(str(count - 1)))
    return ["u%0*d" % (width, i) for i in range(count)]


def mb(kb):
    return kb / 1024.0 if kb is not None else None


# ------------------------------------------------------------- servers

def mdpy_settings(args):
    """mdpy.ini keys for many connections from one address."""
    room = args.connections + 100
    return {"imap": {"max_connections": room, "max_connections_per_ip": room,
                     "timeout": "30m"}}


def dovecot_limits(args):
    """Settings a stock Dovecot needs to hold --connections IMAP sessions:
    one imap process each, more than 10 per user and address."""
    per_user = -(-args.connections // args.users)
    return "\n".join([
        "# For %d idling connections (bench/imap_idle_bench.py):"
        % args.connections,
        "mail_max_userip_connections = %d" % (per_user + 10),
        "default_client_limit = %d" % (2 * args.connections + 1000),
        "service imap {",
        "  process_limit = %d" % (args.connections + 100),
        "}",
        "service imap-login {",
        "  process_limit = %d" % (2 * args.concurrency + 100),
        "}",
        ""])


def new_dovecot(template, users, args):
    """A private Dovecot IMAP server, each user its own uid, over a fresh
    copy of the template's Maildirs."""
    base = tempfile.mkdtemp(prefix="mdpy-bench-dovecot-")
    try:
        mail = os.path.join(base, "mail")
        shutil.copytree(template.mail_root, mail, symlinks=True)
        return PrivateDovecot(
            mail, users, PASSWORD, domain=DOMAIN, scheme="SHA512-CRYPT",
            auth_cache_size="10M", own_mail=True, base_dir=base,
            keep=args.keep, protocol="imap", start_timeout=60,
            user_uids={u: DOVECOT_UID_BASE + i for i, u in enumerate(users)},
            extra_config=dovecot_limits(args))
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def smtp_delivery(port):
    """deliver(user, message) over mdpy's SMTP; returns the time of the 250
    to DATA."""
    def deliver(user, message):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.sendmail(SENDER, ["%s@%s" % (user, DOMAIN)], message)
            t = time.monotonic()
            try:
                s.quit()
            except smtplib.SMTPException:
                pass
        return t
    return deliver


def lda_delivery(dc):
    """deliver(user, message) with Dovecot's dovecot-lda; returns the time
    it exited 0."""
    def deliver(user, message):
        dc.deliver(user, message, sender=SENDER)
        return time.monotonic()
    return deliver


# ------------------------------------------------------- load generator

class IdleFailure(Exception):
    pass


class Idler:
    """One connection: its user, streams and the EXISTS count it knows."""

    __slots__ = ("user", "reader", "writer", "exists", "last")

    def __init__(self, user):
        self.user = user
        self.reader = self.writer = None
        self.exists = None
        self.last = b"(connect)"


class IdleLoad:
    """--connections asyncio clients idling on one server."""

    def __init__(self, port, users, args):
        self.port = port
        self.users = users
        self.args = args
        self.idlers = {u: [] for u in users}
        self.ready = 0
        self.errors = []
        self.dropped = []
        self.finished = None
        self.tasks = []
        # The delivery being watched: user, idlers still to hear of it,
        # arrival times, and the event set when the last one has.
        self.watch_user = None
        self.watch_pending = set()
        self.watch_times = []
        self.watch_done = None

    # ------------------------------------------------------ one connection

    async def _line(self, c):
        line = await asyncio.wait_for(c.reader.readline(), self.args.timeout)
        if not line:
            raise IdleFailure("%s -> connection closed by the server"
                              % c.last.decode("latin-1"))
        return line.rstrip(b"\r\n")

    async def _command(self, c, tag, command):
        c.last = tag + b" " + command
        c.writer.write(c.last + b"\r\n")
        while True:
            line = await self._line(c)
            m = EXISTS.match(line)
            if m:
                c.exists = int(m.group(1))
            if line.startswith(tag + b" "):
                if line[len(tag) + 1:len(tag) + 3] != b"OK":
                    raise IdleFailure("%s -> %s" % (c.last.decode("latin-1"),
                                                    line.decode("latin-1")))
                return

    async def _login(self, c, source):
        c.reader, c.writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(source, 0)), self.args.timeout)
        line = await self._line(c)
        if not line.startswith(b"* OK"):
            raise IdleFailure("greeting: %s" % line.decode("latin-1"))
        await self._command(c, b"a1", b'LOGIN "%s@%s" "%s"' % (
            c.user.encode(), DOMAIN.encode(), PASSWORD.encode()))

    async def _start(self, c, source):
        await self._login(c, source)
        await self._command(c, b"a2", b"SELECT INBOX")
        if c.exists is None:
            raise IdleFailure("SELECT INBOX -> OK without * N EXISTS")
        c.last = b"a3 IDLE"
        c.writer.write(b"a3 IDLE\r\n")
        while True:
            line = await self._line(c)
            if line.startswith(b"+"):
                return
            if line.startswith(b"a3 "):
                raise IdleFailure("a3 IDLE -> %s" % line.decode("latin-1"))

    async def _idler(self, i, sem):
        c = Idler(self.users[i % len(self.users)])
        source = "127.0.0.%d" % (1 + i % self.args.sources)
        try:
            async with sem:
                await self._start(c, source)
        except Exception as e:
            why = str(e) if isinstance(e, IdleFailure) else "%s -> %s: %s" % (
                c.last.decode("latin-1"), type(e).__name__, e)
            self.errors.append("connection %d (%s): %s" % (i + 1, c.user, why))
            self._count()
            if c.writer is not None:
                c.writer.close()
            return
        self.idlers[c.user].append(c)
        self.ready += 1
        self._count()
        try:
            while True:
                line = await c.reader.readline()
                if not line:
                    self.dropped.append("%s: connection closed by the server"
                                        % c.user)
                    return
                m = EXISTS.match(line)
                if m and int(m.group(1)) > c.exists:
                    c.exists = int(m.group(1))
                    self._arrived(c, time.monotonic())
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            self.dropped.append("%s: %s: %s" % (c.user, type(e).__name__, e))

    def _count(self):
        if self.ready + len(self.errors) == self.args.connections:
            self.finished.set()

    def _arrived(self, c, t):
        if c.user == self.watch_user and c in self.watch_pending:
            self.watch_pending.discard(c)
            self.watch_times.append(t)
            if not self.watch_pending:
                self.watch_done.set()

    # ------------------------------------------------------------ phases

    async def warm(self):
        """Log every user in once, one after the other (--warm-logins)."""
        for user in self.users:
            c = Idler(user)
            try:
                await self._login(c, "127.0.0.1")
                await self._command(c, b"a2", b"LOGOUT")
            except Exception as e:
                why = str(e) if isinstance(e, IdleFailure) else "%s -> %s: %s" % (
                    c.last.decode("latin-1"), type(e).__name__, e)
                raise BenchError("warm-up login of %s: %s" % (user, why))
            finally:
                if c.writer is not None:
                    c.writer.close()

    async def open_all(self):
        """Start every connection; returns the seconds until the last one
        idles.  Raises BenchError if any failed."""
        self.finished = asyncio.Event()
        sem = asyncio.Semaphore(self.args.concurrency)
        t = time.monotonic()
        self.tasks = [asyncio.create_task(self._idler(i, sem))
                      for i in range(self.args.connections)]
        limit = self.args.timeout + self.args.connections / 50
        try:
            await asyncio.wait_for(self.finished.wait(), limit)
        except asyncio.TimeoutError:
            raise BenchError("%d of %d connections idling after %ds"
                             % (self.ready, self.args.connections, limit))
        if self.errors:
            more = (" (and %d more)" % (len(self.errors) - 1)
                    if len(self.errors) > 1 else "")
            raise BenchError("%d of %d connections idling; %s%s" % (
                self.ready, self.args.connections, self.errors[0], more))
        return time.monotonic() - t

    async def sample(self, user, deliver, message):
        """Deliver message to user; returns (delays in s after the
        delivery's success, one per idler of the user that heard of it,
        sorted; idlers that did not within the timeout)."""
        loop = asyncio.get_running_loop()
        self.watch_user = user
        self.watch_pending = set(self.idlers[user])
        self.watch_times = []
        self.watch_done = asyncio.Event()
        try:
            t = await loop.run_in_executor(None, deliver, user, message)
            try:
                await asyncio.wait_for(self.watch_done.wait(),
                                       self.args.notify_timeout)
            except asyncio.TimeoutError:
                pass
            return (sorted(x - t for x in self.watch_times),
                    len(self.watch_pending))
        finally:
            self.watch_user = None

    async def close_all(self):
        for task in self.tasks:
            task.cancel()
        for cs in self.idlers.values():
            for c in cs:
                c.writer.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# ------------------------------------------------------------------ runs

class Run:
    def __init__(self, name):
        self.name = name
        self.error = None
        self.setup_seconds = None
        self.rest = self.idle = self.after = self.peak = None   # kB
        self.rss_sum = None           # Dovecot: sum of VmRSS, kB
        self.processes = None
        self.idle_cpu = None          # server CPU % while idling
        self.first = []               # per sample: first idler's delay, s
        self.last = []                # per sample: last idler's delay, s
        self.samples = 0
        self.missed = 0               # idlers that never heard of a delivery

    @property
    def ok(self):
        return self.error is None and self.idle is not None


def memory_of(name, srv):
    """(footprint kB, peak kB or None, RSS sum kB or None, processes):
    one mdpy process's VmRSS and VmHWM; the Pss and RSS sums over the
    group of Dovecot's processes, or of mdpy's supervisor and workers."""
    if name == "mdpy" and group_memory(srv.proc.pid)[0] == 1:
        st = srv.status()
        return st.get("VmRSS"), st.get("VmHWM"), None, 1
    count, rss, pss = group_memory(srv.proc.pid)
    return pss, None, rss, count


async def exercise(run, name, srv, port, deliver, users, args):
    load = IdleLoad(port, users, args)
    try:
        await asyncio.sleep(1.0)
        run.rest = memory_of(name, srv)[0]
        if args.warm_logins:
            await load.warm()
        run.setup_seconds = await load.open_all()
        await asyncio.sleep(2.0)
        if srv.proc.poll() is not None:
            raise BenchError("%s died with %d connections idling (exit %s)"
                             % (name, load.ready, srv.proc.returncode))
        cpu0, t0 = group_cpu(srv.proc.pid), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        run.idle_cpu = 100.0 * (group_cpu(srv.proc.pid) - cpu0) / (
            time.monotonic() - t0)
        run.idle, run.peak, run.rss_sum, run.processes = memory_of(name, srv)
        if load.dropped:
            raise BenchError("%d connections dropped while idling; first: %s"
                             % (len(load.dropped), load.dropped[0]))
        rng = random.Random(2177)
        picks = [users[i % len(users)] for i in
                 rng.sample(range(len(users)), min(args.samples, len(users)))]
        for k, user in enumerate(picks):
            message = make_message(rng, "%s@%s" % (user, DOMAIN), k + 1,
                                   args.samples, args.size, time.time())
            try:
                delays, missed = await load.sample(user, deliver, message)
            except (OSError, smtplib.SMTPException, DovecotError) as e:
                raise BenchError("delivery %d to %s@%s: %s: %s" % (
                    k + 1, user, DOMAIN, type(e).__name__, e))
            run.samples += 1
            run.missed += missed
            if delays:
                run.first.append(delays[0])
                run.last.append(delays[-1])
            await asyncio.sleep(0.2)
        run.after = memory_of(name, srv)[0]
        if name == "mdpy":
            run.peak = srv.status().get("VmHWM", run.peak)
        if load.dropped:
            raise BenchError("%d connections dropped; first: %s"
                             % (len(load.dropped), load.dropped[0]))
        if run.missed:
            raise BenchError("%d idlers did not get * N EXISTS within %ds of "
                             "their delivery" % (run.missed, args.notify_timeout))
    finally:
        await load.close_all()


def bench_server(name, make, deliver_for, users, args):
    run = Run(name)
    label = "%-7s %d connections, %d deliveries" % (name, args.connections,
                                                    args.samples)
    print("%-50s" % (label + " ..."), end="", flush=True)
    try:
        with make() as srv:
            port = srv.imap_port if name == "mdpy" else srv.port
            try:
                asyncio.run(exercise(run, name, srv, port, deliver_for(srv),
                                     users, args))
            except BenchError as e:
                run.error = str(e)
            if run.error and srv.proc.poll() is not None:
                run.error += "; %s died (exit %s)" % (name, srv.proc.returncode)
            if run.error:
                print(" FAILED\n  error: %s" % run.error)
                if name == "mdpy":
                    print("  mdpy log (%s):\n%s" % (srv.log, tail(srv.log, 8)))
                else:
                    print("  dovecot log: %s" % srv.log_tail(3))
            else:
                print(" idling after %.1f s (%.0f logins/s), %s MB"
                      % (run.setup_seconds,
                         args.connections / run.setup_seconds,
                         fmt(mb(run.idle), "%.1f", 1)))
            if args.keep:
                print("  kept: %s" % srv.base)
    except BenchError as e:
        run.error = str(e)
        print(" FAILED\n  error: %s" % e)
    return run


# ---------------------------------------------------------------- report

def ms_cell(values, pick):
    return fmt(pick(values) * 1e3 if values else None, "%9.1f", 9)


def report(runs, args):
    per_user = args.connections / args.users
    print()
    print("%d IMAP connections (%d users x %s, from %d source address%s), "
          "each LOGIN, SELECT INBOX, IDLE; %d logging in at once%s"
          % (args.connections, args.users, "%g" % per_user, args.sources,
             "es" if args.sources > 1 else "", args.concurrency,
             ", each user logged in once before" if args.warm_logins else ""))
    names = [n for n in ("mdpy", "dovecot") if n in runs]
    head = "%-44s | %s" % ("memory, MB = 2^20 bytes",
                            " | ".join("%12s" % n for n in names))
    print_table_head(head)

    def row(label, cell):
        print("%-44s | %s" % (label, " | ".join(cell(runs[n]) for n in names)))

    row("at rest (fresh start)", lambda r: fmt(mb(r.rest), "%12.1f", 12))
    row("with %d connections idling" % args.connections,
        lambda r: fmt(mb(r.idle), "%12.1f", 12))
    row("  per connection, kB",
        lambda r: fmt((r.idle - r.rest) / args.connections
                      if r.idle and r.rest else None, "%12.1f", 12))
    row("after %d deliveries" % args.samples,
        lambda r: fmt(mb(r.after), "%12.1f", 12))
    row("peak (mdpy VmHWM of the twistd process)", lambda r: fmt(mb(r.peak), "%12.1f", 12))
    row("processes / RSS sum (Dovecot)",
        lambda r: ("%5d %6.0f" % (r.processes, mb(r.rss_sum))
                   if r.rss_sum is not None else "%12s" % "-"))
    row("server CPU while idling %d s, %% of a core" % args.idle_seconds,
        lambda r: fmt(r.idle_cpu, "%12.1f", 12))
    row("seconds to get all connections idling",
        lambda r: fmt(r.setup_seconds, "%12.1f", 12))
    print("mdpy: VmRSS of the twistd process, or with workers the sum of Pss over "
          "it and its workers; Dovecot: sum of Pss over its processes (RSS sum "
          "counts shared pages once per process)")

    print()
    head = "%-44s | %9s %9s %9s" % (
        "new mail -> * N EXISTS, ms after delivery", "min", "median", "max")
    print_table_head(head)
    for n in names:
        r = runs[n]
        for label, values in (("first idler", r.first),
                              ("last of %s idlers" % ("%g" % per_user), r.last)):
            print("%-44s | %s %s %s" % (
                "%-7s %s" % (n, label), ms_cell(values, min),
                ms_cell(values, median), ms_cell(values, max)))
    print("delivery: mdpy over SMTP, timed from the 250 to DATA; Dovecot with "
          "dovecot-lda, from its exit.  Negative: the EXISTS came first.")
    print()
    if "mdpy" in runs:
        r = runs["mdpy"]
        print_target(r.ok and mb(r.idle) < TARGET_MB,
                     "mdpy memory with %d IDLE connections < %.0f MB: %s" % (
                         args.connections, TARGET_MB,
                         "%.1f MB" % mb(r.idle) if r.idle else "no result"))


OPTIONS = (
    ("--connections", dict(type=positive, default=5000,
                           help="idling connections (default %(default)s)")),
    ("--users", dict(type=positive, default=50,
                     help="users the connections log in as, evenly "
                          "(default %(default)s)")),
    ("--samples", dict(type=positive, default=20,
                       help="deliveries, each to another user "
                            "(default %(default)s, at most --users)")),
    ("--messages", dict(default=10,
                        help="messages in each INBOX beforehand "
                             "(default %(default)s)")),
    ("--size", dict(help="bytes per message (default %(default)s)")),
    ("--sources", dict(type=positive, default=1,
                       help="source addresses 127.0.0.1.. to spread the "
                            "connections over (default %(default)s)")),
    ("--concurrency", dict(type=positive, default=100,
                           help="connections logging in at once "
                                "(default %(default)s)")),
    ("--warm-logins", dict(action="store_true",
                           help="log each user in once, one at a time, before "
                                "the connections open: their passwords are "
                                "then verified (and cached) before the rush")),
    ("--only", dict(choices=("mdpy", "dovecot"),
                    help="one server only (default: mdpy, and Dovecot when "
                         "run as root with dovecot-imapd installed)")),
    ("--timeout", dict(help="seconds allowed for one command "
                            "(default 60)")),
    ("--idle-seconds", dict(type=positive, default=40,
                            help="seconds all connections idle before the "
                                 "deliveries, over which the server's CPU "
                                 "use is measured; longer than both servers' "
                                 "30 s IDLE re-check (default %(default)s)")),
    ("--notify-timeout", dict(type=positive, default=40,
                              help="seconds an idler may take to hear of a "
                                   "delivery (default %(default)s)")),
    ("--keep", {}),
)


def parse_args(argv):
    ap, args = parse_bench_args(
        argv, "IMAP IDLE: mdpy's memory and notification delay with many "
              "idling clients, beside Dovecot's.", OPTIONS)
    if args.users > args.connections:
        ap.error("--users must not exceed --connections")
    if args.sources > 254:
        ap.error("--sources must be at most 254")
    return args


def dovecot_available(args):
    """None if Dovecot can be run, else why not."""
    if os.geteuid() != 0:
        return "not root"
    try:
        dovecot_version()
        libexec_dir("imap")
    except BenchError as e:
        return str(e)
    return None


def servers_to_run(args):
    """(the servers --only leaves, of "mdpy" and "dovecot"; Dovecot's
    version or None).  Dovecot is left out, with a note, when it cannot be
    run; BenchError if it was the only one asked for."""
    servers = [] if args.only == "dovecot" else ["mdpy"]
    dv = None
    if args.only != "mdpy":
        why = dovecot_available(args)
        if why is None:
            dv = dovecot_version()
            servers.append("dovecot")
        elif args.only == "dovecot":
            raise BenchError(why)
        else:
            print("note: Dovecot skipped (%s)" % why)
    return servers, dv


def main(argv=None):
    args = parse_args(argv)
    interrupt_on_sigterm()
    need = args.connections + 1024
    nofile = raise_nofile(max(need, 2 * args.connections + 1024))
    if nofile < need:
        print("error: RLIMIT_NOFILE is %d, too low for %d connections"
              % (nofile, args.connections), file=sys.stderr)
        return 1
    try:
        servers, dv = servers_to_run(args)
    except BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    print_banner("IMAP IDLE", ("; Dovecot %s" % dv if dv else "")
                 + "; load average %.1f" % os.getloadavg()[0])
    users = user_names(args.users)
    if "dovecot" in servers and args.connections / args.users > INOTIFY_PER_UID:
        print("note: more than %d connections per user: Dovecot will log "
              "\"Inotify instance limit for user UID ... exceeded\" for some "
              "(fs.inotify.max_user_instances = 128 per uid); the delays below "
              "show whether its idlers still heard of new mail at once"
              % INOTIFY_PER_UID)
    runs = {}
    template = None
    try:
        print("%-50s" % ("Maildir: %d users x %d messages ..."
                         % (len(users), args.messages)), end="", flush=True)
        t = time.monotonic()
        try:
            template = MdpyImap.template(users, args.messages, args.size,
                                         keep=args.keep)
        except BenchError as e:
            print(" FAILED\n  error: %s" % e)
            return 1
        print(" made in %.1f s" % (time.monotonic() - t))
        makers = {
            "mdpy": (lambda: MdpyImap(template, keep=args.keep,
                                      settings=mdpy_settings(args)),
                     lambda srv: smtp_delivery(srv.port)),
            "dovecot": (lambda: new_dovecot(template, users, args),
                        lda_delivery),
        }
        for name in servers:
            make, deliver_for = makers[name]
            runs[name] = bench_server(name, make, deliver_for, users, args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if template is not None:
            template.cleanup()
    report(runs, args)
    return exit_status(any(not r.ok for r in runs.values()))


if __name__ == "__main__":
    sys.exit(main())
