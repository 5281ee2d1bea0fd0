#!/usr/bin/env python3
"""The change feed: how fast mail another process delivers reaches an IMAP
client idling in mdpy; Dovecot alongside when it can be run.

    python bench/changefeed_bench.py [--samples 200] [--only mdpy|dovecot]

One user (u00@bench.test) with one message; one connection LOGINs,
SELECTs INBOX and IDLEs.  Then --samples messages are delivered one at a
time by another process, and the time from the delivery's completion to
the client reading ``* N EXISTS`` is taken:

* mdpy: a helper process that opens the server's data directory with the
  Maildir store API (as ``mdpy domainpop run`` does when no server runs,
  or any local delivery program) and delivers; timed from the return of
  its deliver (the files fsynced);
* Dovecot: ``dovecot-lda``, its delivery agent; timed from its exit.

Printed: the median, the 99th percentile and the largest of the delays,
in milliseconds (negative: the EXISTS came before the delivery had
returned).  The EXISTS lines are read by a thread that stamps each as it
arrives, with the monotonic clock both processes share.  Exit status: 0
if every delivery was heard, 1 otherwise.  Target: mdpy's median under
100 ms.  See bench/README.rst.
"""

import argparse
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (DOMAIN, PASSWORD, BenchError, child_env,  # noqa: E402
                    exit_status, fmt, interrupt_on_sigterm, median,
                    print_banner, print_table_head, print_target)
from dovecot import DovecotError  # noqa: E402
from imap_bench import MdpyImap, percentile  # noqa: E402
from imap_idle_bench import (lda_delivery, new_dovecot,  # noqa: E402
                             servers_to_run)

TARGET_MS = 100.0
USER = "u00"
EXISTS = re.compile(rb"^\* (\d+) EXISTS\r?$")

# The other process: a line on its standard input (a message, in hex)
# delivers one message, and it answers with the monotonic time its delivery
# returned.
DELIVERER = """
import sys, time
from twisted.internet import defer
from mdpy.backends.files.maildir import MaildirStore

store = MaildirStore(sys.argv[1], runInThread=lambda f, *a: defer.maybeDeferred(f, *a))
for line in sys.stdin:
    outcome = []
    store.deliver([(sys.argv[2], "INBOX", [bytes.fromhex(line)])]).addBoth(outcome.append)
    if outcome != [None]:
        sys.exit("delivery failed: %r" % (outcome,))
    print(repr(time.monotonic()), flush=True)
"""


def sample(i):
    """The i-th message delivered: about 2 KB."""
    return (b"From: sender@example.org\r\nTo: %s@%s\r\nSubject: sample %d\r\n\r\n"
            % (USER.encode(), DOMAIN.encode(), i) + (b"x" * 76 + b"\r\n") * 25)


def store_delivery(srv):
    """deliver(user, message) by the helper process on srv's data dir;
    returns the time its delivery returned, and close() ends it."""
    helper = subprocess.Popen(
        [sys.executable, "-c", DELIVERER, srv.mail_root, "%s@%s" % (USER, DOMAIN)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())

    def deliver(user, message):
        helper.stdin.write(message.hex() + "\n")
        helper.stdin.flush()
        line = helper.stdout.readline()
        if not line:
            raise BenchError("the delivering process ended: exit status %s" % helper.wait())
        return float(line)

    def close():
        helper.stdin.close()
        helper.wait(timeout=30)

    deliver.close = close
    return deliver


class Idler:
    """One IMAP connection idling in INBOX; a thread stamps the EXISTS
    lines as they arrive and puts (count, time) in self.arrivals."""

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.arrivals = queue.Queue()
        self._expect(b"* OK")
        self._command(b"a1", b'LOGIN "%s@%s" "%s"' % (USER.encode(), DOMAIN.encode(), PASSWORD.encode()))
        self.exists = self._command(b"a2", b"SELECT INBOX")
        self.sock.sendall(b"a3 IDLE\r\n")
        self._expect(b"+")
        self.sock.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _line(self):
        line = self.file.readline()
        if not line:
            raise BenchError("the IMAP server closed the connection")
        return line

    def _expect(self, start):
        line = self._line()
        if not line.startswith(start):
            raise BenchError("expected %r, got %r" % (start, line))

    def _command(self, tag, command):
        self.sock.sendall(tag + b" " + command + b"\r\n")
        exists = None
        while True:
            line = self._line()
            m = EXISTS.match(line.rstrip(b"\n"))
            if m:
                exists = int(m.group(1))
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise BenchError("%r -> %r" % (command, line))
                return exists

    def _read(self):
        try:
            for line in self.file:
                m = EXISTS.match(line.rstrip(b"\n"))
                if m:
                    self.arrivals.put((int(m.group(1)), time.monotonic()))
        except (OSError, ValueError):
            pass
        self.arrivals.put((None, None))

    def heard(self, count, timeout):
        """The time * count EXISTS (or a later count) arrived."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                n, t = self.arrivals.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError("no * %d EXISTS within %g s" % (count, timeout))
            if n is None:
                raise BenchError("the IMAP connection ended")
            if n >= count:
                return t

    def close(self):
        try:
            self.sock.sendall(b"DONE\r\na4 LOGOUT\r\n")
        except OSError:
            pass
        self.sock.close()


def measure(port, deliver, args):
    """The delays (seconds) of --samples deliveries to the idler."""
    idler = Idler(port, args.timeout)
    delays = []
    try:
        count = idler.exists
        for i in range(args.samples):
            done = deliver(USER, sample(i))
            count += 1
            delays.append(idler.heard(count, args.timeout) - done)
    finally:
        idler.close()
    return delays


def bench_server(name, make, deliver_for, args):
    print("%-50s" % ("%s: %d deliveries ..." % (name, args.samples)), end="", flush=True)
    srv = deliver = None
    try:
        srv = make()
        srv.start()
        deliver = deliver_for(srv)
        delays = measure(srv.imap_port if name == "mdpy" else srv.port, deliver, args)
        print(" done")
        return delays
    except (BenchError, DovecotError, OSError) as e:
        print(" FAILED\n  error: %s" % e)
        return None
    finally:
        if hasattr(deliver, "close"):
            deliver.close()
        if srv is not None:
            srv.stop()
            srv.cleanup()


def report(runs, args):
    print()
    print_table_head("%-10s | %9s %9s %9s %9s" % ("delay, ms", "median", "p99", "max", "samples"))
    for name, delays in runs.items():
        ms = sorted(d * 1000 for d in delays or ())
        print("%-10s | %s %s %s %9d" % (
            name, fmt(median(ms)), fmt(percentile(ms, 99) if ms else None),
            fmt(max(ms) if ms else None), len(ms)))
    print("delivery by another process: mdpy through the Maildir store API, timed "
          "from its return; Dovecot with dovecot-lda, from its exit.")
    print()
    mdpy = runs.get("mdpy")
    if mdpy is not None:
        middle = median([d * 1000 for d in mdpy]) if mdpy else None
        print_target(middle is not None and middle < TARGET_MS,
                     "mdpy median delay < %.0f ms: %s" % (
                         TARGET_MS, "%.1f ms" % middle if middle is not None else "no result"))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=200,
                    help="deliveries measured (default %(default)s)")
    ap.add_argument("--only", choices=("mdpy", "dovecot"), default=None)
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds to wait for one EXISTS (default %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = ap.parse_args(argv)
    # What imap_idle_bench.new_dovecot sizes Dovecot for.
    args.connections = args.users = args.concurrency = 1
    return args


def main(argv=None):
    args = parse_args(argv)
    interrupt_on_sigterm()
    try:
        servers, dv = servers_to_run(args)
    except BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    print_banner("change feed", ("; Dovecot %s" % dv if dv else "")
                 + "; load average %.1f" % os.getloadavg()[0])
    runs = {}
    template = None
    try:
        template = MdpyImap.template([USER], 1, 2048, keep=args.keep)
        makers = {
            "mdpy": (lambda: MdpyImap(template, keep=args.keep), store_delivery),
            "dovecot": (lambda: new_dovecot(template, [USER], args), lda_delivery),
        }
        for name in servers:
            make, deliver_for = makers[name]
            runs[name] = bench_server(name, make, deliver_for, args)
    except BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if template is not None:
            template.cleanup()
    report(runs, args)
    return exit_status(any(delays is None for delays in runs.values()))


if __name__ == "__main__":
    sys.exit(main())
