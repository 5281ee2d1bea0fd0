#!/usr/bin/env python3
"""Inbound SMTP acceptance: mdpy side by side with a private Postfix.

    python bench/smtp_bench.py [--messages 2000] [--sessions 20] [--size 4096]

For each server, on a fresh instance with an empty Maildir, Postfix's
smtp-source(1) sends --messages messages of --size bytes to
user@bench.test over --sessions parallel sessions.  Measured, from the
moment smtp-source is started:

* accepted msg/s -- until smtp-source exits (every 250 reply received);
* Maildir msg/s  -- until that many files are in the Maildir's new/ + cur/;
* landed         -- the exact number of files afterwards (must equal
  --messages).

This is done once with one message per connection (smtp-source's default)
and once with -d (each session sends message after message on one
connection).  Then a fresh mdpy is started and its resident memory (VmRSS
of the twistd process) is read at rest and with --idle (1,000) idle SMTP
connections open to it.

Exit status: 0 if every run completed and every message landed, 1 if any
run failed.  Missing a performance target only prints "target MISSED".
See bench/README.rst.
"""

import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (DOMAIN, BenchError, MdpyServer, MessageRun, RunSeries, exit_status, fmt,  # noqa: E402
                    last_line, median, median_note, parse_bench_args,
                    positive, print_banner, print_table_head, print_target,
                    raise_nofile, read_reply, repeat_suffix, run_command, tail,
                    which)
from postfix import PrivatePostfix  # noqa: E402

USER = "user"
RCPT = "%s@%s" % (USER, DOMAIN)
SENDER = "sender@" + DOMAIN
HELO_NAME = "client." + DOMAIN

TARGET_RATE = 1200.0        # mdpy accepted msg/s, one message per connection
TARGET_RATIO = 1.0          # mdpy / Postfix, accepted msg/s, same row
TARGET_IDLE_MB = 100.0      # mdpy VmRSS with --idle connections open


# --------------------------------------------------------------- utilities

def count_files(maildir):
    """Messages in a Maildir: entries of new/ plus cur/ (absent = 0)."""
    n = 0
    for sub in ("new", "cur"):
        try:
            n += len(os.listdir(os.path.join(maildir, sub)))
        except FileNotFoundError:
            pass
    return n


def mb(kb):
    return kb / 1024.0


# ------------------------------------------------------------ smtp-source

def smtp_source_path():
    return which("smtp-source", "it comes with the postfix package")


def smtp_source_flags(path):
    """The boolean flags smtp-source's usage message lists ('cdLNov')."""
    try:
        out = run_command([path, "-Z"], timeout=10, check=False)
    except BenchError:
        return None
    m = re.search(r"usage: \S*smtp-source -([A-Za-z]+)", out)
    return m.group(1) if m else None


class Run(MessageRun):
    """One smtp-source run against one server."""

    def __init__(self, server, mode):
        self.server, self.mode = server, mode
        self.error = None
        self.accept_s = self.files_s = None
        self.landed = None
        self.expected = None
        self.rss_after_kb = None
        self.kept = None

    @property
    def ok(self):
        return self.error is None and self.landed == self.expected


class Series(RunSeries):
    """The repeated runs of one server in one mode; reports medians."""

    def _median(self, attr):
        return median(r.rate(getattr(r, attr)) for r in self if getattr(r, attr))

    @property
    def accept_rate(self):
        return self._median("accept_s")

    @property
    def files_rate(self):
        return self._median("files_s")

    @property
    def landed(self):
        bad = [r for r in self if not r.ok]
        r = bad[0] if bad else (self[0] if self else None)
        if r is None:
            return "-"
        if r.landed is None:
            return "FAILED"
        text = "%d/%d %s" % (r.landed, r.expected, "FAILED" if bad else "ok")
        if len(self) > 1:
            text += " x%d" % len(self) if not bad else " %d/%d runs" % (
                len(bad), len(self))
        return text


def _watch(proc, exited, maildir, n, t0, deadline, args, run):
    """Poll the Maildir until smtp-source has exited and all n files are
    there; return the perf_counter time the n-th file was seen, or None."""
    t_files = None
    while True:
        now = time.perf_counter()
        if t_files is None and count_files(maildir) >= n:
            t_files = now
        if "t" in exited:
            if t_files is not None or proc.returncode != 0:
                return t_files
            if now > exited["t"] + args.delivery_timeout:
                return t_files
        elif now > deadline:
            run.error = "smtp-source did not finish within %ds" % args.timeout
            return t_files
        time.sleep(0.01)


def run_smtp_source(run, smtp_source, port, maildir, args, reuse,
                    settle=None):
    """Drive smtp-source at 127.0.0.1:port and time it; fills in run.

    settle, if given, is a callable returning True once the server has no
    deliveries left in flight (Postfix: queue empty) -- checked after the
    files are all there, before the final exact count.
    """
    n = args.messages
    run.expected = n
    argv = [smtp_source, "-4", "-s", str(args.sessions), "-m", str(n),
            "-l", str(args.size), "-f", SENDER, "-t", RCPT, "-M", HELO_NAME]
    if reuse:
        argv.append("-d")
    argv.append("127.0.0.1:%d" % port)
    before = count_files(maildir)
    if before:
        raise BenchError("Maildir not empty before the run (%d files)" % before)

    exited = {}
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        except OSError as e:
            raise BenchError("cannot run smtp-source: %s" % e)

        def waiter():
            proc.wait()
            exited["t"] = time.perf_counter()
        threading.Thread(target=waiter, daemon=True).start()

        deadline = t0 + args.timeout
        t_files = None
        try:
            t_files = _watch(proc, exited, maildir, n, t0, deadline, args, run)
        finally:
            if proc.poll() is None:         # timeout or Ctrl-C
                proc.kill()
                proc.wait()
        out.seek(0)
        output = out.read().decode("utf-8", "replace")

    if run.error is None and proc.returncode != 0:
        run.error = "smtp-source exited %d: %s" % (proc.returncode,
                                                   last_line(output))
    if run.error is None:
        run.accept_s = exited["t"] - t0
        if t_files is not None:
            run.files_s = t_files - t0
    # Let stragglers (duplicates, late deliveries) show up, then count.
    end = time.monotonic() + 10
    while settle is not None and not settle() and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.3)
    run.landed = count_files(maildir)
    if run.error is None and run.landed != n:
        run.error = "%d of %d messages in the Maildir" % (run.landed, n)


def bench_mdpy(run, smtp_source, args):
    with MdpyServer(users=(USER,), keep=args.keep) as srv:
        run.kept = srv.base if args.keep else None
        run_smtp_source(run, smtp_source, srv.port, srv.maildir(USER), args,
                        run.mode == "reuse")
        run.rss_after_kb = srv.status().get("VmRSS")
        if srv.proc.poll() is not None:
            raise BenchError("mdpy died during the run (exit %s); log:\n%s"
                             % (srv.proc.returncode, tail(srv.log)))


def bench_postfix(run, smtp_source, args):
    with PrivatePostfix(keep=args.keep) as pf:
        run.kept = pf.base if args.keep else None
        run_smtp_source(run, smtp_source, pf.port, pf.maildir(USER), args,
                        run.mode == "reuse", settle=lambda: pf.queue_count() == 0)
        if run.error:
            run.error += " (maillog: %s)" % pf.log_tail(2)


def attempt(label, func, run, *a):
    print("%-44s" % (label + " ..."), end="", flush=True)
    try:
        func(run, *a)
    except BenchError as e:
        run.error = run.error or str(e)
    if run.ok:
        print(" %s msg/s accepted, %s msg/s in Maildir" % (
            fmt(run.rate(run.accept_s), "%7.1f", 7),
            fmt(run.rate(run.files_s), "%7.1f", 7)))
    else:
        print(" FAILED")
        print("  error: %s" % run.error)
    if run.kept:
        print("  kept: %s" % run.kept)


# ---------------------------------------------------------------- memory

def bench_memory(args):
    """Return (rest_kb, idle_kb, hwm_kb, still_open) for a fresh mdpy."""
    with MdpyServer(users=(USER,), keep=args.keep) as srv:
        time.sleep(1.0)
        rest = srv.status().get("VmRSS")
        if rest is None:
            raise BenchError("cannot read /proc/%s/status" % srv.pid)
        socks = []
        try:
            deadline = time.monotonic() + args.timeout
            for i in range(args.idle):
                if time.monotonic() > deadline:
                    raise BenchError("opened only %d of %d connections in %ds"
                                     % (i, args.idle, args.timeout))
                try:
                    s = socket.create_connection(("127.0.0.1", srv.port),
                                                 timeout=10)
                except OSError as e:
                    raise BenchError("connection %d of %d failed: %s"
                                     % (i + 1, args.idle, e))
                socks.append(s)
                try:
                    code, text = read_reply(s, time.monotonic() + 10)
                except (OSError, BenchError) as e:
                    raise BenchError("no greeting on connection %d of %d: %s"
                                     % (i + 1, args.idle, e))
                if code != 220:
                    raise BenchError("connection %d of %d greeted with %r"
                                     % (i + 1, args.idle, text[:80]))
            time.sleep(1.0)
            if srv.proc.poll() is not None:
                raise BenchError("mdpy died with %d connections open (exit %s)"
                                 % (len(socks), srv.proc.returncode))
            st = srv.status()
            idle, hwm = st.get("VmRSS"), st.get("VmHWM")
            # A socket that is readable now got data or EOF: not idle-open.
            poller = select.poll()
            for s in socks:
                poller.register(s, select.POLLIN)
            still_open = len(socks) - len(poller.poll(0))
        finally:
            for s in socks:
                s.close()
        return rest, idle, hwm, still_open


# ---------------------------------------------------------------- report

def ratio(a, b):
    return a / b if a and b else None


def report(rows, memory, args):
    print()
    print("smtp-source: %d messages x %d bytes, %d parallel sessions, HELO "
          "(smtp-source has no EHLO/PIPELINING)%s"
          % (args.messages, args.size, args.sessions,
             median_note(args.repeat)))
    print("%-22s | %-27s | %-27s |" % ("", "accepted (all 250s)",
                                       "in Maildir (all files)"))
    head = ("%-22s | %9s %9s %7s | %9s %9s %7s | %-16s %s"
            % ("msg/s", "mdpy", "postfix", "ratio", "mdpy", "postfix", "ratio",
               "landed mdpy", "landed postfix"))
    print_table_head(head)
    empty = Series()
    for label, m, p in rows:
        # Rates are shown whenever they were measured; ratios and targets
        # only count series in which every message landed.
        m, p = m or empty, p or empty
        both = m.ok and p.ok
        ma, pa, mf, pf = m.accept_rate, p.accept_rate, m.files_rate, p.files_rate
        print("%-22s | %s %s %s | %s %s %s | %-16s %s" % (
            label, fmt(ma), fmt(pa),
            fmt(ratio(ma, pa) if both else None, "%7.2f", 7),
            fmt(mf), fmt(pf),
            fmt(ratio(mf, pf) if both else None, "%7.2f", 7),
            m.landed, p.landed))
    print()

    after = [r.rss_after_kb for _, m, _ in rows if m for r in m if r.rss_after_kb]
    if memory is not None:
        rest, idle, hwm, still_open = memory
        print("mdpy memory (VmRSS of the twistd process, MB = 2^20 bytes):")
        print("  at rest (fresh start)          %7.1f MB" % mb(rest))
        print("  with %5d idle connections     %7.1f MB  (%d still open, "
              "peak %.1f MB)" % (args.idle, mb(idle), still_open, mb(hwm)))
        if after:
            print("  at the end of a %d-msg run   %7.1f MB (largest)"
                  % (args.messages, mb(max(after))))
        print()

    results = []
    _, m, p = rows[0] if rows else (None, None, None)
    ma = m.accept_rate if m is not None and m.ok else None
    pa = p.accept_rate if p is not None and p.ok else None
    if m is not None:
        results.append((ma is not None and ma >= TARGET_RATE,
                        "mdpy >= %.0f msg/s accepted (1 msg/connection): %s"
                        % (TARGET_RATE, "%.1f" % ma if ma else "no result")))
    if m is not None and p is not None:
        r = ratio(ma, pa)
        results.append((r is not None and r >= TARGET_RATIO,
                        "mdpy/Postfix >= %.1f accepted (1 msg/connection): %s"
                        % (TARGET_RATIO, "%.3f" % r if r else "no result")))
    if args.idle and args.only != "postfix":
        idle = memory[1] if memory else None
        results.append((idle is not None and mb(idle) < TARGET_IDLE_MB,
                        "mdpy RSS with %d idle connections < %.0f MB: %s"
                        % (args.idle, TARGET_IDLE_MB,
                           "%.1f MB" % mb(idle) if idle else "no result")))
    for met, text in results:
        print_target(met, text)


# ------------------------------------------------------------------ main

OPTIONS = (
    ("--messages", dict(help="messages per run (default %(default)s)")),
    ("--sessions", dict(type=positive, default=20,
                        help="parallel SMTP sessions (default %(default)s)")),
    ("--size", dict(help="message body bytes (default %(default)s)")),
    ("--repeat", dict(help="runs per server and mode, interleaved; the table "
                           "shows medians (default %(default)s)")),
    ("--idle", dict(type=int, default=1000,
                    help="idle connections for the memory test; 0 skips it "
                         "(default %(default)s)")),
    ("--only", dict(choices=("mdpy", "postfix"))),
    ("--no-reuse", dict(action="store_true",
                        help="skip the second (smtp-source -d) pair of runs")),
    ("--timeout", dict(help="seconds allowed for one smtp-source run "
                            "(default: max(60, messages/20))")),
    ("--delivery-timeout", dict(type=positive, default=60,
                                help="seconds to wait, after smtp-source "
                                     "exits, for the last files to reach the "
                                     "Maildir (default %(default)s)")),
    ("--keep", {}),
)


def parse_args(argv):
    ap, args = parse_bench_args(
        argv, "Inbound SMTP: mdpy side by side with a private Postfix.", OPTIONS)
    if args.idle < 0:
        ap.error("--idle must be >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        smtp_source = smtp_source_path()
    except BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    # Children (twistd) inherit this, so the server can hold --idle sockets.
    nofile = raise_nofile(max(4096, args.idle + 512))
    if args.idle and nofile < args.idle + 64:
        print("error: RLIMIT_NOFILE is %d, too low for %d connections"
              % (nofile, args.idle), file=sys.stderr)
        return 1

    print_banner("SMTP")
    modes = [("1 msg/connection", "single")]
    flags = smtp_source_flags(smtp_source)
    if not args.no_reuse:
        if flags is not None and "d" in flags:
            modes.append(("-d (msgs/connection)", "reuse"))
        else:
            print("note: this smtp-source has no -d; skipping the reuse row")

    rows = []
    memory = None
    failed = False
    try:
        for label, mode in modes:
            m = Series() if args.only != "postfix" else None
            p = Series() if args.only != "mdpy" else None
            rows.append((label, m, p))
            for i in range(args.repeat):
                suffix = repeat_suffix(i, args.repeat)
                if m is not None:
                    m.append(Run("mdpy", mode))
                    attempt("mdpy    %s%s" % (label, suffix), bench_mdpy, m[-1],
                            smtp_source, args)
                if p is not None:
                    p.append(Run("postfix", mode))
                    attempt("postfix %s%s" % (label, suffix), bench_postfix,
                            p[-1], smtp_source, args)
            failed |= any(s is not None and not s.ok for s in (m, p))
        if args.idle and args.only != "postfix":
            print("%-44s" % ("mdpy    %d idle connections ..." % args.idle),
                  end="", flush=True)
            try:
                memory = bench_memory(args)
                print(" %.1f MB at rest, %.1f MB idle-loaded"
                      % (mb(memory[0]), mb(memory[1])))
            except BenchError as e:
                failed = True
                print(" FAILED")
                print("  error: %s" % e)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130

    report(rows, memory, args)
    return exit_status(failed)


if __name__ == "__main__":
    sys.exit(main())
