#!/usr/bin/env python3
"""Dovecot's imaptest random load: mdpy side by side with a private Dovecot.

    python bench/imaptest_bench.py [--clients 20] [--seconds 60]
                                   [--profiles default,long] [--repeat N]

imaptest (built by .ci/imaptest/install.sh) runs its random load against
each server in turn, for each profile:

    imaptest host=127.0.0.1 port=PORT user=u%d@bench.test users=1-20 \\
             pass=bench-secret clients=20 secs=60 mbox=<stress.mbox> [logout=0]

default
    imaptest's default mix: each client logs in as a random user, SELECTs
    INBOX, runs LIST, STATUS, FETCH, STORE, EXPUNGE, APPEND (from the mbox
    the build script installs), ... and logs out, again and again.
long
    the same with ``logout=0``: sessions stay open, as mail clients keep
    them.

imaptest tracks every mailbox's state across its clients and prints an
``Error:`` line for each reply it finds wrong.  Every run gets a fresh
server: mdpy over a fresh copy of one data directory (domain bench.test,
users u1..u20 with empty INBOXes), Dovecot (Debian's dovecot-imapd, see
bench/dovecot.py) over a fresh copy of its Maildirs.  Printed per profile:
commands/s of each server (the sum of imaptest's Totals row over --seconds),
the ratio mdpy/Dovecot, the Error: lines of each and the most frequent
kinds of mdpy's.

Exit status: 0 if every run completed (imaptest ran to its end and printed
its totals), 1 otherwise; missed targets and Error: lines are only
reported.  See bench/README.rst.
"""

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (DOMAIN, PASSWORD, BenchError, exit_status, fmt,  # noqa: E402
                    interrupt_on_sigterm, median, median_note,
                    parse_bench_args, positive, print_table_head,
                    print_target, repeat_suffix, tail, which)
from imap_bench import (OPTIONS as IMAP_OPTIONS, imap_port,  # noqa: E402
                        make_template, prepare, servers_for,
                        split_dovecot_scheme)
from pop3_bench import group_cpu  # noqa: E402

MBOX = "/usr/local/share/imaptest/stress.mbox"
# imaptest waits this long after secs for its clients to finish.
FINAL_WAIT = 30

# profile: (label, extra imaptest arguments, target ratio mdpy/Dovecot)
PROFILES = {
    "default": ("default profile", [], 1.0),
    "long": ("long sessions (logout=0)", ["logout=0"], 0.5),
}


# ---------------------------------------------------------------- imaptest

def totals(output):
    """The commands of imaptest's Totals row, {state: count}, or None if
    it printed none (it did not get to the end)."""
    lines = output.splitlines()
    if "Totals:" not in lines:
        return None
    after = lines[lines.index("Totals:") + 1:]
    if not after:
        return None
    names = after[0].split()
    for line in after[1:]:
        fields = line.split()
        if len(fields) == len(names) and all(f.isdigit() for f in fields):
            return dict(zip(names, map(int, fields)))
    return None


ERROR_PREFIX = re.compile(r"^Error: [^ ]*\[\d+\]: ")


def error_kind(line):
    """An Error: line without its user, connection, the response it quotes,
    tags and numbers (but those of imaptest's command names, FETCH2), so
    that lines of one kind compare equal."""
    text = ERROR_PREFIX.sub("", line).split(": * ", 1)[0]
    return re.sub(r"(?<![A-Z])\d+", "N", text)[:110]


class Run:
    """One imaptest run against one server."""

    def __init__(self, server, profile):
        self.server, self.profile = server, profile
        self.error = None
        self.commands = None
        self.seconds = None
        self.server_cpu = None
        self.errors = []

    @property
    def ok(self):
        return self.error is None and self.commands is not None

    @property
    def rate(self):
        return self.commands / self.seconds if self.ok else None


def run_imaptest(run, port, pgid, args, workdir):
    """Run imaptest's random load against 127.0.0.1:port with the run's
    profile; fill in run."""
    _, extra, _ = PROFILES[run.profile]
    argv = [args.imaptest, "host=127.0.0.1", "port=%d" % port,
            "user=u%%d@%s" % DOMAIN, "users=1-%d" % args.clients,
            "pass=" + PASSWORD, "clients=%d" % args.clients,
            "secs=%d" % args.seconds, "mbox=" + args.mbox] + extra
    # Its report (stdout) and its Error: lines (stderr) in files of their
    # own, so that no line of one lands inside a line of the other.
    base = os.path.join(workdir, "imaptest-%s-%s" % (run.server, run.profile))
    limit = args.seconds + FINAL_WAIT + args.timeout
    cpu0 = group_cpu(pgid)
    with open(base + ".out", "w+") as out, open(base + ".err", "w+") as err:
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=err, cwd=workdir)
        except OSError as e:
            raise BenchError("cannot run %s: %s" % (argv[0], e))
        try:
            p.wait(limit)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            run.error = "imaptest still running after %d s; killed" % limit
        run.server_cpu = group_cpu(pgid) - cpu0
        out.seek(0)
        err.seek(0)
        output, messages = out.read(), err.read()
    run.errors = [line for line in messages.splitlines() if line.startswith("Error: ")]
    counts = totals(output)
    if run.error is None and counts is None:
        last = [line for line in (output + messages).splitlines() if line.strip()][-3:]
        run.error = "imaptest exited %s without its totals: %s" % (
            p.returncode, " | ".join(last) or "(no output)")
    if run.error is None:
        run.commands = sum(counts.values())
        run.seconds = args.seconds
    if args.keep:
        print("  imaptest output: %s.out, .err" % base)


def show(run, label):
    print("%-44s" % (label + " ..."), end="")
    if run.ok:
        print(" %8.1f cmd/s, %5d Error: lines, server CPU %6.2f s"
              % (run.rate, len(run.errors), run.server_cpu))
    else:
        print(" FAILED\n  error: %s" % run.error)
    sys.stdout.flush()


def bench_run(name, make, profile, args, suffix):
    """Start a fresh instance of one server, run one profile, stop it."""
    run = Run(name, profile)
    label = "%-7s %s%s" % (name, PROFILES[profile][0], suffix)
    try:
        with make() as srv:
            port = imap_port(name, srv, args)
            run_imaptest(run, port, srv.proc.pid, args, srv.base)
            if srv.proc.poll() is not None:
                run.error = "%s; %s died (exit %s)" % (
                    run.error or "imaptest completed", name, srv.proc.returncode)
            show(run, label)
            if name == "mdpy" and not run.ok:
                print("  mdpy log (%s):\n%s" % (srv.log, tail(srv.log, 8)))
            if name == "dovecot" and not run.ok:
                print("  dovecot log: %s" % srv.log_tail(3))
    except BenchError as e:
        if run.error is None:
            run.error = str(e)
        print("%-44s FAILED\n  error: %s" % (label + " ...", e))
    return run


# ------------------------------------------------------------------ report

def report(results, args):
    print()
    print("imaptest random load: %d clients over users u1..u%d@%s, %d s per run, "
          "APPENDs from %s%s" % (args.clients, args.clients, DOMAIN, args.seconds,
                                 os.path.basename(args.mbox), median_note(args.repeat)))
    head = ("%-26s | %9s %9s %7s | %-17s | %s"
            % ("commands/s", "mdpy", "dovecot", "ratio", "Error: m / d",
               "CPU s m / d"))
    print_table_head(head)
    ratios = {}
    for profile in args.profiles:
        cells = {}
        for name in ("mdpy", "dovecot"):
            series = results.get(name, {}).get(profile, [])
            ok = bool(series) and all(r.ok for r in series)
            cells[name] = {
                "rate": median(r.rate for r in series) if ok else None,
                "cpu": median(r.server_cpu for r in series) if ok else None,
                "errors": ("%d" % median(len(r.errors) for r in series) if ok
                           else "-" if not series else "FAILED"),
            }
        m, d = cells["mdpy"], cells["dovecot"]
        r = m["rate"] / d["rate"] if m["rate"] and d["rate"] else None
        ratios[profile] = r
        print("%-26s | %s %s %s | %7s / %-7s | %s / %s" % (
            PROFILES[profile][0], fmt(m["rate"]), fmt(d["rate"]),
            fmt(r, "%7.2f", 7), m["errors"], d["errors"],
            fmt(m["cpu"], "%6.2f", 6), fmt(d["cpu"], "%6.2f", 6)))

    kinds = {}
    for runs in results.get("mdpy", {}).values():
        for run in runs:
            for line in run.errors:
                kind = error_kind(line)
                kinds[kind] = kinds.get(kind, 0) + 1
    if kinds and args.kinds:
        print()
        print("mdpy's most frequent Error: lines (all runs; numbers shown as N):")
        for kind, count in sorted(kinds.items(), key=lambda item: -item[1])[:args.kinds]:
            print("  %6d  %s" % (count, kind))
    print()
    if "mdpy" in results and "dovecot" in results:
        for profile in args.profiles:
            label, _, target = PROFILES[profile]
            r = ratios[profile]
            print_target(r is not None and r >= target,
                         "mdpy/Dovecot >= %.1f commands/s (%s): %s" % (
                             target, label, "%.3f" % r if r is not None else "no result"))
    if "mdpy" in results:
        lines = [len(r.errors) for runs in results["mdpy"].values() for r in runs if r.ok]
        print_target(bool(lines) and not any(lines),
                     "mdpy prints no Error: line: %s" % (
                         sum(lines) if lines else "no result"))


def profile_list(text):
    profiles = [p for p in text.split(",") if p]
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown or not profiles:
        raise argparse.ArgumentTypeError("profiles are %s" % ", ".join(PROFILES))
    return profiles


OPTIONS = (
    ("--clients", dict(type=positive, default=20,
                       help="imaptest's clients and users u1..uN "
                            "(default %(default)s)")),
    ("--seconds", dict(type=positive, default=60,
                       help="length of each run (imaptest secs=, default "
                            "%(default)s)")),
    ("--profiles", dict(type=profile_list, default="default,long",
                        help="comma-separated, of: %s (default %%(default)s)"
                             % ", ".join(PROFILES))),
    ("--mbox", dict(default=MBOX,
                    help="messages imaptest APPENDs (default %(default)s, "
                         "installed by .ci/imaptest/install.sh)")),
    ("--repeat", dict(help="runs per server and profile, interleaved; the "
                           "table shows medians (default %(default)s)")),
    ("--only", dict(choices=("mdpy", "dovecot"))),
    ("--kinds", dict(type=int, default=8,
                     help="mdpy's most frequent kinds of Error: lines to "
                          "list (default %(default)s; 0 for none)")),
    ("--dovecot-scheme", dict(IMAP_OPTIONS)["--dovecot-scheme"]),
    ("--dovecot-auth-cache", dict(IMAP_OPTIONS)["--dovecot-auth-cache"]),
    ("--dovecot-fsync", dict(IMAP_OPTIONS)["--dovecot-fsync"]),
    ("--timeout", dict(default=60, help="seconds a run may last beyond --seconds and "
                            "imaptest's own %d s to finish (default 60)"
                            % FINAL_WAIT)),
    ("--keep", {}),
)


def parse_args(argv):
    ap, args = parse_bench_args(
        argv, "Dovecot's imaptest random load: mdpy side by side with a "
        "private Dovecot.", OPTIONS)
    split_dovecot_scheme(ap, args)
    args.settings_shown = False
    return args


def main(argv=None):
    args = parse_args(argv)
    interrupt_on_sigterm()
    users = ["u%d" % i for i in range(1, args.clients + 1)]
    try:
        args.imaptest = which("imaptest", "bash .ci/imaptest/install.sh")
        if not os.path.isfile(args.mbox):
            raise BenchError("%s not found (bash .ci/imaptest/install.sh)" % args.mbox)
        dv = prepare(args, "imaptest")
    except BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    if dv:
        print("Dovecot: passwords %s, auth_cache_size = %s, mail_fsync = %s, "
              "everything else its defaults; mdpy: its defaults, [imap] "
              "allow_plaintext_auth = yes" % (args.dovecot_scheme,
                                             args.dovecot_auth_cache,
                                             args.dovecot_fsync))
    results = {}
    failed = False
    template = None
    try:
        template = make_template(users, 0, 1, args)
        if template is None:
            return 1
        servers = servers_for(template, users, args)
        for i in range(args.repeat):
            suffix = repeat_suffix(i, args.repeat)
            for profile in args.profiles:
                for name, make in servers:
                    run = bench_run(name, make, profile, args, suffix)
                    results.setdefault(name, {}).setdefault(profile, []).append(run)
                    failed |= not run.ok
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if template is not None:
            template.cleanup()

    report(results, args)
    return exit_status(failed)


if __name__ == "__main__":
    sys.exit(main())
