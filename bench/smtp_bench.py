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

import argparse
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from postfix import (PostfixError, PrivatePostfix, TemporaryServer, free_port,  # noqa: E402
                     read_reply, wait_for_greeting)

DOMAIN = "bench.test"
USER = "user"
RCPT = "%s@%s" % (USER, DOMAIN)
SENDER = "sender@" + DOMAIN
HELO_NAME = "client." + DOMAIN
PASSWORD = "benchpw"

TARGET_RATE = 1200.0        # mdpy accepted msg/s, one message per connection
TARGET_RATIO = 1.0          # mdpy / Postfix, accepted msg/s, same row
TARGET_IDLE_MB = 100.0      # mdpy VmRSS with --idle connections open

MDPY_INI = """\
[server]
hostname = {domain}
data_dir = {data_dir}
[smtp]
port = {port}
interface = 127.0.0.1
[submission]
enabled = no
[smtps]
enabled = no
[pop3]
enabled = no
[pop3s]
enabled = no
[imap]
enabled = no
[imaps]
enabled = no
"""


class BenchError(Exception):
    """A one-line reason why one run failed."""


# --------------------------------------------------------------- utilities

def find_command(name, fallback):
    """name on PATH (the running interpreter's bin/ first), else fallback."""
    path = os.pathsep.join([os.path.dirname(sys.executable),
                            os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    return [found] if found else list(fallback)


def child_env():
    """Environment for mdpy commands: the checkout importable even when
    mdpy is not installed (and preferred over an installed copy)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return "    (missing)"
    return "\n".join("    " + line for line in lines[-n:]) or "    (empty)"


def filesystem_of(path):
    """'FSTYPE on MOUNTPOINT' for the mount holding path (/proc/mounts)."""
    path = os.path.realpath(path)
    best = ("", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                _dev, mnt, fstype = line.split()[:3]
                mnt = mnt.replace("\\040", " ")
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[0]):
                    best = (mnt, "%s on %s" % (fstype, mnt))
    except OSError:
        pass
    return best[1]


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def count_files(maildir):
    """Messages in a Maildir: entries of new/ plus cur/ (absent = 0)."""
    n = 0
    for sub in ("new", "cur"):
        try:
            n += len(os.listdir(os.path.join(maildir, sub)))
        except FileNotFoundError:
            pass
    return n


def proc_status(pid):
    """{'VmRSS': kB, 'VmHWM': kB, ...} from /proc/PID/status."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.startswith("Vm"):
                    out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def descendants(pid):
    """pid and all its descendants, parents first (via /proc children)."""
    result, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        result.append(p)
        try:
            for task in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, task)) as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            pass
    return result


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def raise_nofile(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def mb(kb):
    return kb / 1024.0


# ------------------------------------------------------------------ mdpy

class MdpyServer(TemporaryServer):
    """A fresh mdpy (data dir, config, one domain and user) under twistd."""

    def __init__(self, keep=False, start_timeout=30):
        self.keep = keep
        self.start_timeout = start_timeout
        self.base = os.path.realpath(tempfile.mkdtemp(prefix="mdpy-bench-mdpy-"))
        self.port = free_port()
        self.ini = os.path.join(self.base, "mdpy.ini")
        self.data_dir = os.path.join(self.base, "data")
        self.log = os.path.join(self.base, "mdpy.log")
        self.out = os.path.join(self.base, "twistd.out")
        self.env = child_env()
        self.mdpy = find_command("mdpy", [sys.executable, "-m", "mdpy.cli"])
        self.twistd = find_command("twistd", [sys.executable, "-m", "twisted"])
        self.proc = None
        self.pid = None

    @property
    def maildir(self):
        return os.path.join(self.data_dir, "mail", DOMAIN, USER)

    def _admin(self, *args):
        argv = self.mdpy + ["-c", self.ini] + list(args)
        shown = "mdpy " + " ".join(args)
        try:
            p = subprocess.run(argv, cwd=self.base, env=self.env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=60)
        except subprocess.TimeoutExpired:
            raise BenchError("%s timed out after 60s" % shown)
        except OSError as e:
            raise BenchError("cannot run %s: %s" % (argv[0], e))
        if p.returncode != 0:
            raise BenchError("%s exited %d: %s" % (
                shown, p.returncode,
                last_line(p.stdout.decode("utf-8", "replace"))))

    def _dead(self):
        if self.proc is not None and self.proc.poll() is not None:
            return "exit status %s" % self.proc.returncode
        return None

    def configure(self):
        """Write mdpy.ini and create the domain and user, before twistd
        starts (subclasses, e.g. in pop3_bench.py, provide their own)."""
        with open(self.ini, "w") as f:
            f.write(MDPY_INI.format(domain=DOMAIN, data_dir=self.data_dir,
                                    port=self.port))
        self._admin("domain", "add", DOMAIN)
        self._admin("user", "add", RCPT, "--password", PASSWORD)

    def start(self):
        self.configure()
        argv = self.twistd + ["-n", "--pidfile=", "--logfile=" + self.log,
                              "mdpy", "--config", self.ini]
        with open(self.out, "wb") as out:
            try:
                self.proc = subprocess.Popen(
                    argv, cwd=self.base, env=self.env, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                raise BenchError("cannot run %s: %s" % (argv[0], e))
        try:
            wait_for_greeting("127.0.0.1", self.port, self.start_timeout,
                              alive=self._dead, what="mdpy")
        except (TimeoutError, PostfixError) as e:
            raise BenchError("%s\n  %s:\n%s\n  %s:\n%s" % (
                e, self.log, tail(self.log), self.out, tail(self.out, 5)))
        self.pid = self._server_pid()
        return self

    def _server_pid(self):
        # Normally the Popen pid is twistd itself (console scripts and pyenv
        # shims exec); if a wrapper stayed, take the deepest twistd process.
        pids = descendants(self.proc.pid)
        for pid in reversed(pids):
            if re.search(r"twist|mdpy", cmdline(pid)):
                return pid
        return self.proc.pid

    def status(self):
        return proc_status(self.pid) if self.pid else {}

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL the process group after timeout.  Returns
        a warning string or None."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        warning = None
        for pid in {self.proc.pid, self.pid or self.proc.pid}:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            warning = "mdpy ignored SIGTERM for %ds; killed" % timeout
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        return warning



# ------------------------------------------------------------ smtp-source

def smtp_source_path():
    path = shutil.which("smtp-source", path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))
    if not path:
        raise BenchError("smtp-source not found (it comes with the postfix package)")
    return path


def smtp_source_flags(path):
    """The boolean flags smtp-source's usage message lists ('cdLNov')."""
    try:
        p = subprocess.run([path, "-Z"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"usage: \S*smtp-source -([A-Za-z]+)", p.stdout.decode("latin-1"))
    return m.group(1) if m else None


class Run:
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

    def rate(self, seconds):
        return self.expected / seconds if seconds and self.expected else None


class Series(list):
    """The repeated runs of one server in one mode; reports medians."""

    @property
    def ok(self):
        return bool(self) and all(r.ok for r in self)

    def _median(self, attr):
        rates = sorted(r.rate(getattr(r, attr)) for r in self
                       if getattr(r, attr))
        if not rates:
            return None
        mid = len(rates) // 2
        return rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2

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
    with MdpyServer(keep=args.keep) as srv:
        run.kept = srv.base if args.keep else None
        run_smtp_source(run, smtp_source, srv.port, srv.maildir, args,
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
    except (BenchError, PostfixError) as e:
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
    with MdpyServer(keep=args.keep) as srv:
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
                except (OSError, PostfixError) as e:
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

def fmt(x, spec="%9.1f", width=9):
    return spec % x if x is not None else "-".rjust(width)


def ratio(a, b):
    return a / b if a and b else None


def report(rows, memory, args):
    print()
    print("smtp-source: %d messages x %d bytes, %d parallel sessions, HELO "
          "(smtp-source has no EHLO/PIPELINING)%s"
          % (args.messages, args.size, args.sessions,
             "; median of %d runs" % args.repeat if args.repeat > 1 else ""))
    print("%-22s | %-27s | %-27s |" % ("", "accepted (all 250s)",
                                       "in Maildir (all files)"))
    head = ("%-22s | %9s %9s %7s | %9s %9s %7s | %-16s %s"
            % ("msg/s", "mdpy", "postfix", "ratio", "mdpy", "postfix", "ratio",
               "landed mdpy", "landed postfix"))
    print(head)
    print("-" * len(head))
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
        print("%-15s %s" % ("target met:" if met else "target MISSED:", text))


# ------------------------------------------------------------------ main

def positive(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Inbound SMTP: mdpy side by side with a private Postfix.")
    ap.add_argument("--messages", type=positive, default=2000,
                    help="messages per run (default 2000)")
    ap.add_argument("--sessions", type=positive, default=20,
                    help="parallel SMTP sessions (default 20)")
    ap.add_argument("--size", type=positive, default=4096,
                    help="message body bytes (default 4096)")
    ap.add_argument("--repeat", type=positive, default=1,
                    help="runs per server and mode, interleaved; the table "
                         "shows medians (default 1)")
    ap.add_argument("--idle", type=int, default=1000,
                    help="idle connections for the memory test; 0 skips it "
                         "(default 1000)")
    ap.add_argument("--only", choices=("mdpy", "postfix"),
                    help="benchmark one server only")
    ap.add_argument("--no-reuse", action="store_true",
                    help="skip the second (smtp-source -d) pair of runs")
    ap.add_argument("--timeout", type=positive, default=None,
                    help="seconds allowed for one smtp-source run "
                         "(default: max(60, messages/20))")
    ap.add_argument("--delivery-timeout", type=positive, default=60,
                    help="seconds to wait, after smtp-source exits, for the "
                         "last files to reach the Maildir (default 60)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary directories for inspection")
    args = ap.parse_args(argv)
    if args.timeout is None:
        args.timeout = max(60, args.messages // 20)
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

    tmp = tempfile.gettempdir()
    print("mdpy SMTP benchmark: Python %s, %s, %d CPUs; temp dirs in %s (%s)"
          % (platform.python_version(), platform.machine(), os.cpu_count() or 0,
             tmp, filesystem_of(tmp)))
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
                suffix = " #%d" % (i + 1) if args.repeat > 1 else ""
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
            except (BenchError, PostfixError) as e:
                failed = True
                print(" FAILED")
                print("  error: %s" % e)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130

    report(rows, memory, args)
    if failed:
        print("\nRESULT: at least one run FAILED (see errors above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
