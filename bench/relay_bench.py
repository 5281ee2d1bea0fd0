#!/usr/bin/env python3
"""Outbound relay: mdpy side by side with a private Postfix.

    python bench/relay_bench.py [--messages 2000] [--sessions 20] [--size 4096]

For each server, on a fresh instance with a fresh smtp-sink(1) of its own
on a free loopback port as its smarthost (no TLS, no DNS), Postfix's
smtp-source(1) sends --messages messages of --size bytes to
rcpt@bench.test over --sessions parallel sessions.  rcpt@bench.test is an
alias of rcpt@remote.example on both servers (mdpy: ``mdpy alias add``;
Postfix: virtual_alias_maps), so every message is accepted from an
unauthenticated client, queued and relayed to the sink.  Measured, from
the moment smtp-source is started:

* injected msg/s -- until smtp-source exits (every 250 reply received);
* relayed msg/s  -- until the sink has received that many messages (its
  ``-c`` counter of "." lines);
* at sink        -- the exact number of messages the sink received once
  the server's queue is empty (must equal --messages), and whether
  ``mdpy queue list`` / ``postqueue -p`` then shows an empty queue.

Exit status: 0 if every run completed and every message was relayed
exactly once with the queue left empty, 1 if any run failed.  Missing the
performance target only prints "target MISSED".  See bench/README.rst.
"""

import glob
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (DOMAIN, BenchError, MdpyServer, MessageRun, RunSeries, ProcessServer,  # noqa: E402
                    exit_status, fmt, free_port, last_line, median,
                    median_note, parse_bench_args, positive, print_banner,
                    print_table_head, print_target, repeat_suffix, run_command,
                    tail, wait_for_greeting, which)
from pop3_bench import group_cpu  # noqa: E402
from postfix import PrivatePostfix  # noqa: E402
from smtp_bench import smtp_source_flags, smtp_source_path  # noqa: E402

ALIAS = "rcpt@" + DOMAIN
REMOTE = "rcpt@remote.example"
SENDER = "sender@source.example"
HELO_NAME = "client." + DOMAIN
SINK_NAME = "sink.remote.example"

TARGET_RATIO = 0.8          # mdpy / Postfix, relayed msg/s


# ------------------------------------------------------------- smtp-sink

class SmtpSink(ProcessServer):
    """Postfix's smtp-sink(1) on a free port of 127.0.0.1, throwing mail
    away and counting it: with ``-c`` it writes ``sess=N quit=N mesg=N``
    followed by a carriage return to its output whenever a session ends, a
    QUIT is executed or a "." is received; mesg is the messages received so
    far."""

    name = "smtp-sink"

    def __init__(self, keep=False, start_timeout=10):
        self.path = which("smtp-sink", "it comes with the postfix package")
        self.keep = keep
        self.start_timeout = start_timeout
        self.base = os.path.realpath(tempfile.mkdtemp(prefix="mdpy-bench-sink-"))
        self.port = free_port()
        self.out = os.path.join(self.base, "sink.out")
        self._offset = 0
        self._partial = b""
        self._count = 0
        self._lock = threading.Lock()

    def start(self):
        argv = [self.path, "-4", "-c", "-h", SINK_NAME]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]       # required when started as root
        argv += ["127.0.0.1:%d" % self.port, "1000"]
        self._spawn(argv, self.out, BenchError)
        try:
            wait_for_greeting("127.0.0.1", self.port, self.start_timeout,
                              alive=self._dead, what="smtp-sink")
        except (TimeoutError, BenchError) as e:
            raise BenchError("%s; output: %s" % (e, last_line(self._text())))
        return self

    def _text(self):
        try:
            with open(self.out, "rb") as f:
                return f.read().decode("latin-1").replace("\r", "\n")
        except OSError:
            return ""

    def received(self):
        """Messages received so far: mesg= of the newest counter record.
        Thread-safe (smtp-source's waiter thread reads it too)."""
        with self._lock, open(self.out, "rb") as f:
            f.seek(self._offset)
            data = f.read()
            self._offset += len(data)
            records = (self._partial + data).split(b"\r")
            self._partial = records.pop()
            for record in reversed(records):
                m = re.search(rb"mesg=(\d+)", record)
                if m:
                    self._count = int(m.group(1))
                    break
            return self._count

    def cpu(self):
        return group_cpu(self.proc.pid) if self.proc else 0.0


# --------------------------------------------------------------- servers

class RelayingMdpy(MdpyServer):
    """mdpy with rcpt@bench.test an alias of rcpt@remote.example, relaying
    through the sink on sink_port (smarthost, no TLS), SPF/DKIM checks off
    (they would need DNS)."""

    def __init__(self, sink_port, args):
        settings = {
            "smtp": {"authentication_results": "no"},
            "relay": {"smarthost": "127.0.0.1:%d" % sink_port,
                      "smarthost_tls": "none",
                      "srs": "yes" if args.srs else "no"},
        }
        super().__init__(users=(), keep=args.keep, settings=settings)

    def configure(self):
        self.provision(())
        self._admin("alias", "add", ALIAS, REMOTE)

    def queued(self):
        """Messages in the queue now (files in queue/env/)."""
        try:
            return len(os.listdir(os.path.join(self.data_dir, "queue", "env")))
        except FileNotFoundError:
            return 0

    def queue_listing(self):
        """What ``mdpy queue list`` says (nothing when the queue is empty)."""
        return run_command(self.mdpy + ["-c", self.ini, "queue", "list"],
                           shown="mdpy queue list", cwd=self.base, env=self.env)

    def cpu(self):
        return group_cpu(self.proc.pid) if self.proc else 0.0

    def log_problems(self, limit=5):
        """(count, first few) of log lines that look like trouble."""
        # twistd rotates its log every 1,000,000 bytes: mdpy.log.1 is older.
        logs = sorted(glob.glob(glob.escape(self.log) + ".*"),
                      key=lambda path: -int(path.rsplit(".", 1)[1]))
        lines = []
        for path in logs + [self.log]:
            try:
                with open(path, errors="replace") as f:
                    lines += [line.rstrip() for line in f if re.search(
                        r"Traceback|Unhandled|error|fail|defer", line, re.I)]
            except OSError:
                pass
        return len(lines), lines[:limit]


def postfix_relay(sink_port, args):
    """A private Postfix with rcpt@bench.test a virtual alias of
    rcpt@remote.example and the sink as its relayhost (no TLS, no DNS)."""
    return PrivatePostfix(
        users=(), keep=args.keep, aliases={ALIAS: REMOTE},
        settings={"relayhost": "[127.0.0.1]:%d" % sink_port,
                  "smtp_tls_security_level": "none",
                  "smtp_dns_support_level": "disabled"})


def postfix_cpu(pf):
    pid = pf.master_pid()
    return group_cpu(pid) if pid else 0.0


# ------------------------------------------------------------------ runs

class Run(MessageRun):
    """One smtp-source run against one server relaying to its sink."""

    def __init__(self, server):
        self.server = server
        self.error = None
        self.expected = None
        self.inject_s = self.relay_s = None
        self.received = None        # at the sink, once the queue was empty
        self.relayed_early = None   # at the sink when smtp-source exited
        self.queue = None           # None: empty; else what is left
        self.cpu = {}               # server, sink, source: CPU seconds
        self.notes = []
        self.kept = []

    @property
    def ok(self):
        return (self.error is None and self.received == self.expected
                and self.queue is None)


class Series(RunSeries):
    """The repeated runs of one server; reports medians."""

    def rate(self, attr):
        return median(r.rate(getattr(r, attr)) for r in self)

    def seconds(self, attr):
        return median(getattr(r, attr) for r in self)

    def cpu(self, which_):
        return median(r.cpu.get(which_) for r in self)

    @property
    def outcome(self):
        bad = [r for r in self if not r.ok]
        r = bad[0] if bad else (self[0] if self else None)
        if r is None:
            return "-"
        if r.received is None:
            return "FAILED"
        text = "%d/%d, queue %s" % (
            r.received, r.expected, "empty" if r.queue is None else "NOT empty")
        text += " FAILED" if bad else " ok"
        if len(self) > 1:
            text += " x%d" % len(self) if not bad else " (%d/%d runs)" % (
                len(bad), len(self))
        return text


def _children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def relay_load(run, smtp_source, port, sink, server_cpu, queued, args):
    """Drive smtp-source at 127.0.0.1:port until the sink has every message;
    time it and fill in run.  server_cpu() is the server's CPU seconds so
    far, queued() the messages in its queue."""
    n = args.messages
    run.expected = n
    argv = [smtp_source, "-4", "-s", str(args.sessions), "-m", str(n),
            "-l", str(args.size), "-f", SENDER, "-t", ALIAS, "-M", HELO_NAME]
    if args.reuse:
        argv.append("-d")
    argv.append("127.0.0.1:%d" % port)
    if sink.received():
        raise BenchError("the sink counted %d messages before the run"
                         % sink.received())

    exited = {}
    with tempfile.TemporaryFile() as out:
        cpu0 = {"server": server_cpu(), "sink": sink.cpu()}
        children0 = _children_cpu()
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        except OSError as e:
            raise BenchError("cannot run smtp-source: %s" % e)

        def waiter():
            proc.wait()
            t = time.perf_counter()
            exited["cpu"] = _children_cpu() - children0
            exited["sink"] = sink.received()
            exited["t"] = t             # last: the main thread waits for it
        threading.Thread(target=waiter, daemon=True).start()

        deadline = t0 + args.timeout
        t_sink = None
        try:
            while True:
                now = time.perf_counter()
                if t_sink is None and sink.received() >= n:
                    t_sink = now
                if "t" in exited and (t_sink is not None or proc.returncode):
                    break
                if now > deadline:
                    run.error = ("%s within %ds (the sink has %d of %d)"
                                 % ("smtp-source did not finish" if "t" not in
                                    exited else "not every message relayed",
                                    args.timeout, sink.received(), n))
                    break
                time.sleep(0.01)
        finally:
            if proc.poll() is None:         # timeout or Ctrl-C
                proc.kill()
                proc.wait()
        run.cpu = {"server": server_cpu() - cpu0["server"],
                   "sink": sink.cpu() - cpu0["sink"],
                   "source": exited.get("cpu")}
        out.seek(0)
        output = out.read().decode("utf-8", "replace")

    if run.error is None and proc.returncode != 0:
        run.error = "smtp-source exited %d: %s" % (proc.returncode,
                                                   last_line(output))
    if "t" in exited and proc.returncode == 0:
        run.inject_s = exited["t"] - t0
        run.relayed_early = exited["sink"]
    if t_sink is not None:
        run.relay_s = t_sink - t0
    # Let the queue drain (the last messages may be at the sink before
    # their 250 reached the server), then let stragglers (duplicates)
    # arrive, then count.
    end = time.monotonic() + args.settle
    while queued() and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.3)
    run.received = sink.received()
    if run.error is None and run.received != n:
        run.error = "the sink received %d of %d messages" % (run.received, n)


def bench_mdpy(run, smtp_source, args):
    with SmtpSink(keep=args.keep) as sink:
        with RelayingMdpy(sink.port, args) as srv:
            if args.keep:
                run.kept += [srv.base, sink.base]
            relay_load(run, smtp_source, srv.port, sink, srv.cpu, srv.queued,
                       args)
            listing = srv.queue_listing()
            run.queue = listing or None
            if srv.proc.poll() is not None:
                raise BenchError("mdpy died during the run (exit %s); log:\n%s"
                                 % (srv.proc.returncode, tail(srv.log)))
            count, first = srv.log_problems()
            if count:
                run.notes.append("mdpy log: %d lines mention an error, "
                                 "failure or deferral; the first:" % count)
                run.notes += ["    " + line[:200] for line in first]
            if run.error or run.queue:
                run.notes.append("mdpy log (last lines):\n" + tail(srv.log, 10))
            if run.queue:
                run.notes.append("mdpy queue list:\n" + "\n".join(
                    "    " + line for line in listing.splitlines()[:10]))


def bench_postfix(run, smtp_source, args):
    with SmtpSink(keep=args.keep) as sink:
        with postfix_relay(sink.port, args) as pf:
            if args.keep:
                run.kept += [pf.base, sink.base]
            relay_load(run, smtp_source, pf.port, sink, lambda: postfix_cpu(pf),
                       pf.queue_count, args)
            listing = pf.queue_listing()
            run.queue = None if "Mail queue is empty" in listing else listing
            if run.error or run.queue:
                run.notes.append("maillog (last lines):\n" + tail(pf.maillog, 10))
            if run.queue:
                run.notes.append("postqueue -p:\n" + "\n".join(
                    "    " + line for line in listing.splitlines()[:10]))


def attempt(label, func, run, *a):
    print("%-40s" % (label + " ..."), end="", flush=True)
    try:
        func(run, *a)
    except BenchError as e:
        run.error = run.error or str(e)
    if run.ok:
        print(" %s msg/s injected, %s msg/s relayed" % (
            fmt(run.rate(run.inject_s), "%7.1f", 7),
            fmt(run.rate(run.relay_s), "%7.1f", 7)))
    else:
        print(" FAILED")
        if run.error:
            print("  error: %s" % run.error)
        if run.queue:
            print("  queue not empty afterwards")
    for note in run.notes:
        print("  " + note)
    for path in run.kept:
        print("  kept: %s" % path)


# ---------------------------------------------------------------- report

def ratio(a, b):
    return a / b if a and b else None


def report(series, args):
    m, p = series.get("mdpy"), series.get("postfix")
    print()
    print("relay: %d messages x %d bytes injected by smtp-source over %d "
          "parallel sessions%s to %s,\n       an alias of %s, relayed to a "
          "smarthost smtp-sink on 127.0.0.1 (no TLS, no DNS)%s"
          % (args.messages, args.size, args.sessions,
             " (-d: many per connection)" if args.reuse else
             " (one message per connection)", ALIAS, REMOTE,
             median_note(args.repeat)))
    head = ("%-8s | %9s %9s | %8s %8s | %8s | %7s %7s %7s | %s"
            % ("server", "injected", "relayed", "inject", "relay",
               "inj. end", "server", "sink", "source", "at sink, queue after"))
    print("%-8s | %-19s | %-17s | %-8s | %-23s |" % (
        "", "msg/s", "seconds", "at sink", "CPU seconds"))
    print_table_head(head)
    for name, s in (("mdpy", m), ("postfix", p)):
        if s is None:
            continue
        print("%-8s | %s %s | %s %s | %s | %s %s %s | %s" % (
            name, fmt(s.rate("inject_s")), fmt(s.rate("relay_s")),
            fmt(s.seconds("inject_s"), "%8.2f", 8),
            fmt(s.seconds("relay_s"), "%8.2f", 8),
            fmt(s.seconds("relayed_early"), "%8d", 8),
            fmt(s.cpu("server"), "%7.2f", 7), fmt(s.cpu("sink"), "%7.2f", 7),
            fmt(s.cpu("source"), "%7.2f", 7), s.outcome))
    both = m is not None and p is not None
    if both:
        ok = m.ok and p.ok
        print("%-8s | %s %s |" % (
            "ratio",
            fmt(ratio(m.rate("inject_s"), p.rate("inject_s")) if ok else None,
                "%9.2f"),
            fmt(ratio(m.rate("relay_s"), p.rate("relay_s")) if ok else None,
                "%9.2f")))
    print()
    if both:
        r = ratio(m.rate("relay_s"), p.rate("relay_s")) if m.ok and p.ok else None
        print_target(r is not None and r >= TARGET_RATIO,
                     "mdpy/Postfix >= %.1f relayed msg/s: %s"
                     % (TARGET_RATIO, "%.3f" % r if r else "no result"))


# ------------------------------------------------------------------ main

OPTIONS = (
    ("--messages", dict(help="messages per run (default %(default)s)")),
    ("--sessions", dict(type=positive, default=20,
                        help="parallel SMTP sessions injecting "
                             "(default %(default)s)")),
    ("--size", dict(help="message body bytes (default %(default)s)")),
    ("--repeat", dict(help="runs per server, interleaved; the table shows "
                           "medians (default %(default)s)")),
    ("--only", dict(choices=("mdpy", "postfix"))),
    ("--reuse", dict(action="store_true",
                     help="inject with smtp-source -d (message after message "
                          "on each connection)")),
    ("--srs", dict(action="store_true",
                   help="leave mdpy's SRS on (Postfix has none; default off)")),
    ("--timeout", dict(help="seconds allowed from the start of injection "
                            "until the sink has every message "
                            "(default: max(60, messages/20))")),
    ("--settle", dict(type=positive, default=30,
                      help="seconds to wait afterwards for the server's queue "
                           "to empty (default %(default)s)")),
    ("--keep", {}),
)


def main(argv=None):
    _, args = parse_bench_args(
        argv, "Outbound relay: mdpy side by side with a private Postfix, "
        "each relaying to smtp-sink.", OPTIONS)
    try:
        smtp_source = smtp_source_path()
        which("smtp-sink", "it comes with the postfix package")
    except BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    if args.reuse and "d" not in (smtp_source_flags(smtp_source) or ""):
        print("error: this smtp-source has no -d", file=sys.stderr)
        return 1

    print_banner("relay", "; load average %.1f" % os.getloadavg()[0])
    names = [n for n in ("mdpy", "postfix") if args.only in (None, n)]
    series = {name: Series() for name in names}
    funcs = {"mdpy": bench_mdpy, "postfix": bench_postfix}
    try:
        for i in range(args.repeat):
            for name in names:
                series[name].append(Run(name))
                attempt("%-7s relay%s" % (name, repeat_suffix(i, args.repeat)),
                        funcs[name], series[name][-1], smtp_source, args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130

    report(series, args)
    return exit_status(any(not s.ok for s in series.values()))


if __name__ == "__main__":
    sys.exit(main())
