#!/usr/bin/env python3
"""DomainPOP collection: mdpy side by side with fetchmail + Postfix.

    python bench/domainpop_bench.py [--messages 5000] [--size 4096]
                                    [--users 10] [--repeat N]

A domain's catch-all mailbox at its ISP, box@isp.test, holds --messages
messages of exactly --size bytes for user0..user9@bench.test (message i is
for user(i % 10)), each carrying its envelope recipient in an
X-Original-To header, as a Postfix at the ISP writes it.  The ISP is a
private Dovecot POP3 server (bench/dovecot.py) on a free loopback port, no
TLS, over a fresh copy of that Maildir for every run.  Collected by:

* mdpy -- ``mdpy -c INI domainpop run isp`` with no mdpy server running, so
  the command collects itself: it downloads every message, routes it by
  its X-Original-To header, delivers it (fsynced) into
  data_dir/mail/bench.test/userK/ and deletes it at the ISP;
* fetchmail -- in multidrop mode (``envelope X-Original-To``,
  ``localdomains bench.test``, ``is * here``), handing every message to a
  private Postfix (bench/postfix.py) that delivers it with virtual(8) into
  Maildirs vmail/bench.test/userK/, the usual deployment of fetchmail; two
  rows: over SMTP to Postfix's smtpd (``smtphost``, fetchmail's default
  way), and through Postfix's sendmail command (``mda "sendmail -i -f %F
  -- %T"``).

Measured from the start of the collecting process until it has exited
*and* all --messages are files in the ten Maildirs: messages/second, and
the CPU seconds of the collector, the MTA (Postfix) and the ISP (Dovecot).
Checked after every run: each message in its user's Maildir exactly once
(by Message-ID) with its body intact, nothing else there, the ISP's
mailbox empty (and Postfix's queue).

Exit status: 0 if every run completed and passed its checks, 1 if any run
failed.  Missing the target (mdpy faster than fetchmail + Postfix, judged
for each fetchmail row) only prints "target MISSED".  See bench/README.rst.
"""

import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (DOMAIN, BenchError, MdpyServer, MessageRun, RunSeries,  # noqa: E402
                    exit_status, fmt, interrupt_on_sigterm, last_line, median,
                    median_note, parse_bench_args, positive, print_banner,
                    print_table_head, print_target, repeat_suffix, run_command,
                    tail, which)
from dovecot import PrivateDovecot, dovecot_version  # noqa: E402
from pop3_bench import _body_text, group_cpu  # noqa: E402
from postfix import PrivatePostfix  # noqa: E402

ISP_DOMAIN = "isp.test"
ISP_USER = "box"
ISP_ADDRESS = "%s@%s" % (ISP_USER, ISP_DOMAIN)
ISP_PASSWORD = "isp-secret"
HEADER = "X-Original-To"
COLLECTION = "isp"                  # [domainpop:isp]

TARGET_RATIO = 1.0                  # mdpy / fetchmail+Postfix msg/s, must exceed

MSGID_RE = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]*>)")
SUMMARY_RE = re.compile(
    r"domainpop/%s: (\d+) on the server, (\d+) downloaded, (\d+) copies "
    r"delivered, (\d+) duplicates dropped, (\d+) held, (\d+) dropped, "
    r"(\d+) left \(too big\), (\d+) deleted at the server" % COLLECTION)


def user_names(n):
    return ["user%d" % i for i in range(n)]


# -------------------------------------------------------------- messages

def split_message(data):
    """(header, body) of a message with CRLF or LF line ends."""
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return data[:crlf + 2], data[crlf + 4:]
    if lf >= 0:
        return data[:lf + 1], data[lf + 2:]
    return data, b""


def body_crc(body):
    """CRC-32 of a body with its line ends made LF (MTAs store LF)."""
    return zlib.crc32(body.replace(b"\r\n", b"\n"))


def make_message(rng, i, count, user, size, when):
    """Message i of the ISP's mailbox for user@bench.test, exactly size
    bytes, CRLF line ends, as the ISP's MTA stored it; (bytes, msgid)."""
    rcpt = "%s@%s" % (user, DOMAIN)
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    msgid = "<%d.%06d.dp@client.example.org>" % (int(when), i)
    head = (
        "Return-Path: <sender@example.org>\r\n"
        "Delivered-To: {isp}\r\n"
        "{header}: {rcpt}\r\n"
        "Received: from client.example.org (client.example.org [192.0.2.10])\r\n"
        "\tby mx.{ispdomain} (Postfix) with ESMTP id {qid:08X}\r\n"
        "\tfor <{rcpt}>; {date}\r\n"
        "Date: {date}\r\n"
        "From: \"Bench Sender\" <sender@example.org>\r\n"
        "To: <{rcpt}>\r\n"
        "Subject: DomainPOP message {i} of {count} for {rcpt}\r\n"
        "Message-ID: {msgid}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n").format(isp=ISP_ADDRESS, header=HEADER, rcpt=rcpt,
                       ispdomain=ISP_DOMAIN, qid=rng.getrandbits(32), date=date,
                       i=i + 1, count=count, msgid=msgid).encode("ascii")
    room = size - len(head) - 2
    if room < 0:
        raise BenchError("--size %d is too small for the headers (at least %d)"
                         % (size, len(head) + 2))
    return head + _body_text(rng, room) + b"\r\n", msgid.encode("ascii")


class Mailbox:
    """The ISP's mailbox, made once in a template directory: mail_root/
    isp.test/box/{cur,new,tmp}, the messages in new/; expected maps each
    Message-ID to (user, CRC-32 of its body with LF line ends)."""

    def __init__(self, users, messages, size, keep=False):
        self.users = users
        self.messages = messages
        self.keep = keep
        self.base = os.path.realpath(tempfile.mkdtemp(prefix="mdpy-bench-isp-"))
        self.mail_root = os.path.join(self.base, "mail")
        self.expected = {}
        self.per_user = dict.fromkeys(users, 0)
        try:
            self._fill(size)
        except BaseException:
            self.cleanup()
            raise

    def _fill(self, size):
        top = os.path.join(self.mail_root, ISP_DOMAIN, ISP_USER)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(top, sub))
        rng = random.Random(1725)
        now = time.time() - self.messages * 1e-3
        pid = os.getpid()
        for i in range(self.messages):
            user = self.users[i % len(self.users)]
            when = now + i * 1e-3
            data, msgid = make_message(rng, i, self.messages, user, size, when)
            name = "%d.M%dP%dQ%d.mx,S=%d" % (
                int(when), int(when * 1e6) % 1000000, pid, i + 1, len(data))
            path = os.path.join(top, "new", name)
            with open(path, "wb") as f:
                f.write(data)
            os.utime(path, (when, when))
            self.expected[msgid] = (user, body_crc(split_message(data)[1]))
            self.per_user[user] += 1

    def cleanup(self):
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)


def new_isp(mailbox, args):
    """A private Dovecot POP3 server over a fresh copy of the mailbox."""
    base = tempfile.mkdtemp(prefix="mdpy-bench-dovecot-")
    try:
        mail = os.path.join(base, "mail")
        shutil.copytree(mailbox.mail_root, mail, symlinks=True)
        return PrivateDovecot(mail, [ISP_USER], ISP_PASSWORD, domain=ISP_DOMAIN,
                              scheme="PLAIN", own_mail=True, base_dir=base,
                              keep=args.keep)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def count_files(maildirs):
    """Files in new/ and cur/ of each Maildir (absent = 0), summed."""
    n = 0
    for maildir in maildirs:
        for sub in ("new", "cur"):
            try:
                n += len(os.listdir(os.path.join(maildir, sub)))
            except FileNotFoundError:
                pass
    return n


def verify_delivery(maildir_of, mailbox):
    """Every expected message in its user's Maildir exactly once with its
    body intact, nothing else: (files found, None or what is wrong)."""
    seen = {}
    problems = {"duplicate": 0, "wrong user": 0, "body differs": 0,
                "unknown": 0}
    first = {}
    files = 0
    for user in mailbox.users:
        for sub in ("new", "cur"):
            d = os.path.join(maildir_of(user), sub)
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            for name in names:
                files += 1
                with open(os.path.join(d, name), "rb") as f:
                    data = f.read()
                head, body = split_message(data)
                m = MSGID_RE.search(head)
                want = mailbox.expected.get(m.group(1)) if m else None
                if want is None:
                    kind = "unknown"
                elif m.group(1) in seen:
                    kind = "duplicate"
                elif want[0] != user:
                    kind = "wrong user"
                elif body_crc(body) != want[1]:
                    kind = "body differs"
                else:
                    seen[m.group(1)] = user
                    continue
                problems[kind] += 1
                first.setdefault(kind, "%s/%s/%s" % (user, sub, name))
    missing = len(mailbox.expected) - len(seen)
    wrong = ["%d %s (e.g. %s)" % (n, kind, first[kind])
             for kind, n in problems.items() if n]
    if missing:
        wrong.insert(0, "%d missing" % missing)
    if wrong:
        return files, "delivered %d of %d once: %s" % (
            len(seen), len(mailbox.expected), "; ".join(wrong))
    return files, None


def isp_left(dovecot):
    return count_files([dovecot.maildir(ISP_USER)])


# ------------------------------------------------------------------ runs

class Run(MessageRun):
    """One collection of the mailbox by one collector."""

    def __init__(self, name, expected):
        self.name = name
        self.expected = expected
        self.error = None
        self.exit_s = None          # until the collecting process exited
        self.done_s = None          # until it had exited and every file was there
        self.delivered = None       # files in the Maildirs afterwards
        self.isp_left = None        # messages left at the ISP
        self.cpu = {}               # collector, mta, isp: CPU seconds
        self.notes = []
        self.kept = []

    @property
    def ok(self):
        return (self.error is None and self.done_s is not None
                and self.delivered == self.expected and self.isp_left == 0)


class Series(RunSeries):
    def rate(self):
        return median(r.rate(r.done_s) for r in self) if self.ok else None

    def seconds(self, attr):
        return median(getattr(r, attr) for r in self) if self.ok else None

    def cpu(self, which_):
        return median(r.cpu.get(which_) for r in self) if self.ok else None

    def cpu_total(self):
        return median(sum(v for v in r.cpu.values() if v is not None)
                      for r in self) if self.ok else None

    @property
    def outcome(self):
        bad = [r for r in self if not r.ok]
        r = bad[0] if bad else (self[0] if self else None)
        if r is None:
            return "-"
        if r.delivered is None:
            return "FAILED"
        text = "%d/%d once, ISP %s" % (
            r.delivered, r.expected,
            "empty" if r.isp_left == 0 else "NOT empty (%s left)" % r.isp_left)
        text += " FAILED" if bad else " ok"
        if len(self) > 1:
            text += " x%d" % len(self) if not bad else " (%d/%d runs)" % (
                len(bad), len(self))
        return text


def _children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def collect(run, argv, output, maildirs, cpu_meters, args, **popen):
    """Start argv (its output to the file output) and time it until it has
    exited and the Maildirs hold every message.  cpu_meters, {name:
    callable}, are the CPU seconds so far of the other processes involved;
    the collector's are its own (it is our only child meanwhile).  Returns
    the process's exit status."""
    n = run.expected
    if count_files(maildirs):
        raise BenchError("the Maildirs hold %d files before the run"
                         % count_files(maildirs))
    with open(output, "wb") as out:
        cpu0 = {name: meter() for name, meter in cpu_meters.items()}
        children0 = _children_cpu()
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, **popen)
        except OSError as e:
            raise BenchError("cannot run %s: %s" % (argv[0], e))
        deadline = t0 + args.timeout
        try:
            try:
                # Nothing is polled while it runs: the run ends at the later
                # of its exit and the last delivery.
                proc.wait(max(0.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                raise BenchError("%s did not finish within %ds (%d of %d "
                                 "messages in the Maildirs)" % (
                                     os.path.basename(argv[0]), args.timeout,
                                     count_files(maildirs), n))
            run.exit_s = time.perf_counter() - t0
            run.cpu["collector"] = _children_cpu() - children0
            if proc.returncode == 0:
                while count_files(maildirs) < n:
                    if time.perf_counter() > deadline:
                        raise BenchError("only %d of %d messages in the Maildirs "
                                         "after %ds" % (count_files(maildirs),
                                                        n, args.timeout))
                    time.sleep(0.01)
                run.done_s = time.perf_counter() - t0
        finally:
            if proc.poll() is None:         # timeout or Ctrl-C
                proc.kill()
                proc.wait()
        # What the others did for this run, reaped helpers included.
        time.sleep(0.2)
        for name, meter in cpu_meters.items():
            run.cpu[name] = meter() - cpu0[name]
    return proc.returncode


def output_tail(path, n=8):
    return tail(path, n)


# ---------------------------------------------------------------- mdpy

class CollectingMdpy(MdpyServer):
    """An mdpy data directory and mdpy.ini with [domainpop:isp] pointing at
    the ISP, and users user0..user9@bench.test; never started: the
    ``mdpy domainpop run`` command collects by itself when no server runs."""

    def __init__(self, users, isp_port, args):
        settings = {
            "server": {"domain": DOMAIN},
            "smtp": {"authentication_results": "no"},
            "domainpop:" + COLLECTION: {
                "host": "127.0.0.1", "port": isp_port, "tls": "none",
                "username": ISP_ADDRESS, "password": ISP_PASSWORD,
                "parse_headers": HEADER},
        }
        super().__init__(users=users, keep=args.keep, settings=settings)

    def start(self):
        self.provision_batch(self.users)
        return self


def bench_mdpy(run, mailbox, args):
    with new_isp(mailbox, args) as dc:
        with CollectingMdpy(mailbox.users, dc.port, args) as m:
            if args.keep:
                run.kept += [m.base, dc.base]
            output = os.path.join(m.base, "domainpop-run.out")
            maildirs = [m.maildir(u) for u in mailbox.users]
            status = collect(
                run, m.mdpy + ["-c", m.ini, "domainpop", "run", COLLECTION],
                output, maildirs, {"isp": lambda: group_cpu(dc.proc.pid)}, args,
                cwd=m.base, env=m.env)
            with open(output, errors="replace") as f:
                text = f.read()
            summary = SUMMARY_RE.search(text)
            if status != 0:
                run.error = "mdpy domainpop run exited %d: %s" % (
                    status, last_line(text))
                run.notes.append("its output (last lines):\n" + output_tail(output))
            elif summary is None:
                run.error = "no summary line in mdpy's output: %s" % last_line(text)
            else:
                listed, downloaded, copies, dups, held, dropped, big, deleted = (
                    int(x) for x in summary.groups())
                n = run.expected
                if (listed, downloaded, copies, deleted) != (n, n, n, n) or (
                        dups or held or dropped or big):
                    run.error = "mdpy said: " + summary.group(0)
            run.delivered, problem = verify_delivery(m.maildir, mailbox)
            run.error = run.error or problem
            run.isp_left = isp_left(dc)
            if run.error is None and run.isp_left:
                run.error = "%d messages left at the ISP" % run.isp_left
            if run.error and status == 0:
                run.notes.append("its output (last lines):\n" + output_tail(output))


# ----------------------------------------------------------- fetchmail

FETCHMAILRC = """\
# Written by bench/domainpop_bench.py.
set no bouncemail
set no spambounce
set no syslog

poll 127.0.0.1 with proto POP3 port {isp_port}
    envelope "{header}"
    localdomains {domain}
    no dns
  user "{isp_user}" there with password "{isp_password}" is * here
    options fetchall no keep sslproto '' no sslcertck
    smtpaddress {domain}
    {delivery}
"""

# How fetchmail hands a message to Postfix: to its smtpd over SMTP, or to
# its sendmail(1) command (which queues it through postdrop and pickup).
DELIVERY = {
    "smtp": "smtphost 127.0.0.1/{smtp_port}",
    "mda": 'mda "{sendmail} -C {config} -i -f %F -- %T"',
}


def fetchmail_version(path):
    out = run_command([path, "--version"], check=False, timeout=30)
    m = re.search(r"fetchmail release (\S+?)\+", out) or re.search(
        r"release (\S+)", out)
    return m.group(1) if m else "?"


def postfix_cpu(pf):
    pid = pf.master_pid()
    return group_cpu(pid) if pid else 0.0


def bench_fetchmail(run, mailbox, fetchmail, via, args):
    """fetchmail in multidrop mode handing every message to a private
    Postfix (via "smtp": its smtpd; "mda": its sendmail command), which
    delivers it with virtual(8) into vmail/bench.test/userK/."""
    settings = {}
    if via == "mda":
        # sendmail appends myorigin to a bare local part.
        settings["myorigin"] = DOMAIN
    with new_isp(mailbox, args) as dc:
        with PrivatePostfix(users=mailbox.users, keep=args.keep,
                            settings=settings) as pf:
            if args.keep:
                run.kept += [pf.base, dc.base]
            home = os.path.join(pf.base, "fetchmail")
            os.mkdir(home, 0o700)
            rc = os.path.join(home, "fetchmailrc")
            delivery = DELIVERY[via].format(
                smtp_port=pf.port, config=pf.config_dir,
                sendmail=which("sendmail", "install the postfix package"))
            with open(os.open(rc, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                      "w") as f:
                f.write(FETCHMAILRC.format(
                    isp_port=dc.port, header=HEADER, domain=DOMAIN,
                    isp_user=ISP_ADDRESS, isp_password=ISP_PASSWORD,
                    delivery=delivery))
            output = os.path.join(home, "fetchmail.out")
            env = dict(os.environ, HOME=home, FETCHMAILHOME=home, LC_ALL="C")
            argv = [fetchmail, "-f", rc, "--nodetach", "--nosyslog",
                    "--pidfile", os.path.join(home, "fetchmail.pid"),
                    "--idfile", os.path.join(home, "fetchids")]
            maildirs = [pf.maildir(u) for u in mailbox.users]
            status = collect(run, argv, output, maildirs,
                             {"mta": lambda: postfix_cpu(pf),
                              "isp": lambda: group_cpu(dc.proc.pid)},
                             args, cwd=home, env=env)
            if status != 0:
                # 1 is "no mail"; anything else an error.
                with open(output, errors="replace") as f:
                    run.error = "fetchmail exited %d: %s" % (
                        status, last_line(f.read()))
            end = time.monotonic() + args.settle
            while pf.queue_count() and time.monotonic() < end:
                time.sleep(0.05)
            run.delivered, problem = verify_delivery(pf.maildir, mailbox)
            run.error = run.error or problem
            run.isp_left = isp_left(dc)
            if run.error is None and run.isp_left:
                run.error = "%d messages left at the ISP" % run.isp_left
            if run.error is None and pf.queue_count():
                run.error = "%d messages left in Postfix's queue" % pf.queue_count()
            if run.error:
                run.notes.append("fetchmail output (last lines):\n"
                                 + output_tail(output))
                run.notes.append("maillog (last lines):\n" + tail(pf.maillog, 6))


# ---------------------------------------------------------------- driver

# Collectors, in the order they run and are reported.
COLLECTORS = ("mdpy", "fetchmail-smtp", "fetchmail-mda")
LABELS = {"mdpy": "mdpy",
          "fetchmail-smtp": "fetchmail>smtpd",
          "fetchmail-mda": "fetchmail>sendmail"}


def attempt(label, func, run, *a):
    print("%-38s" % (label + " ..."), end="", flush=True)
    try:
        func(run, *a)
    except BenchError as e:
        run.error = run.error or str(e)
    if run.ok:
        print(" %8.1f msg/s  (exited after %.2f s, all delivered after %.2f s)"
              % (run.rate(run.done_s), run.exit_s, run.done_s))
    else:
        print(" FAILED")
        print("  error: %s" % run.error)
    for note in run.notes:
        print("  " + note)
    for path in run.kept:
        print("  kept: %s" % path)
    sys.stdout.flush()


def ratio(a, b):
    return a / b if a and b else None


def report(series, mailbox, args):
    m = series.get("mdpy")
    print()
    print("domainpop: %d messages x %d bytes in %s's Maildir for %s..%s@%s "
          "(by %s),\n           collected over POP3 (no TLS) from a private "
          "Dovecot on 127.0.0.1, delivered into Maildirs%s"
          % (args.messages, args.size, ISP_ADDRESS, mailbox.users[0],
             mailbox.users[-1], DOMAIN, HEADER, median_note(args.repeat)))
    print("%-18s | %-9s | %-17s | %-30s |" % (
        "", "msg/s", "seconds", "CPU seconds"))
    head = ("%-18s | %9s | %8s %8s | %9s %6s %6s %6s | %7s | %s"
            % ("collector", "delivered", "exit", "all in", "collector", "MTA",
               "ISP", "total", "mdpy/it", "delivered, ISP after"))
    print_table_head(head)
    for name in COLLECTORS:
        s = series.get(name)
        if s is None:
            continue
        r = ratio(m.rate(), s.rate()) if m is not None and name != "mdpy" else None
        print("%-18s | %s | %s %s | %s %s %s %s | %s | %s" % (
            LABELS[name], fmt(s.rate()), fmt(s.seconds("exit_s"), "%8.2f", 8),
            fmt(s.seconds("done_s"), "%8.2f", 8),
            fmt(s.cpu("collector"), "%9.2f", 9), fmt(s.cpu("mta"), "%6.2f", 6),
            fmt(s.cpu("isp"), "%6.2f", 6), fmt(s.cpu_total(), "%6.2f", 6),
            fmt(r, "%7.2f", 7), s.outcome))
    print()
    if m is None:
        return
    for name in COLLECTORS[1:]:
        s = series.get(name)
        if s is None:
            continue
        r = ratio(m.rate(), s.rate())
        print_target(r is not None and r > TARGET_RATIO,
                     "mdpy / %s > %.1f, msg/s delivered: %s"
                     % (LABELS[name].replace(">", " -> Postfix "), TARGET_RATIO,
                        "%.3f" % r if r else "no result"))


OPTIONS = (
    ("--messages", dict(default=5000,
                        help="messages in the ISP's mailbox (default %(default)s)")),
    ("--size", dict(help="bytes per message, headers included "
                         "(default %(default)s)")),
    ("--users", dict(type=positive, default=10,
                     help="local users the messages are for, user0.. "
                          "(default %(default)s)")),
    ("--repeat", dict(help="runs per collector, interleaved; the table shows "
                           "medians (default %(default)s)")),
    ("--only", dict(choices=("mdpy", "fetchmail"),
                    help="benchmark one collector only (both fetchmail rows "
                         "with fetchmail)")),
    ("--fetchmail", dict(choices=("smtp", "mda", "both"), default="both",
                         help="how fetchmail hands mail to Postfix: SMTP to "
                              "its smtpd, its sendmail command as MDA, or both "
                              "(default %(default)s)")),
    ("--timeout", dict(default=0,
                       help="seconds allowed for one collection, until every "
                            "message is delivered (default: max(120, "
                            "messages/10))")),
    ("--settle", dict(type=positive, default=30,
                      help="seconds to wait afterwards for Postfix's queue to "
                           "empty (default %(default)s)")),
    ("--keep", {}),
)


def main(argv=None):
    _, args = parse_bench_args(
        argv, "DomainPOP collection: mdpy side by side with fetchmail + "
        "Postfix, from a private Dovecot POP3 server.", OPTIONS)
    if not args.timeout:
        args.timeout = max(120, args.messages // 10)
    interrupt_on_sigterm()
    if os.geteuid() != 0:
        print("error: run as root (the private Dovecot and Postfix must start "
              "as root)", file=sys.stderr)
        return 1
    names = [n for n in COLLECTORS
             if args.only in (None, n.split("-")[0])
             and (n == "mdpy" or args.fetchmail in ("both", n.split("-")[1]))]
    try:
        versions = "; Dovecot %s" % dovecot_version()
        fetchmail = None
        if any(n.startswith("fetchmail") for n in names):
            fetchmail = which("fetchmail", "apt-get install fetchmail")
            versions += "; fetchmail %s; Postfix %s" % (
                fetchmail_version(fetchmail),
                run_command([which("postconf", "install the postfix package"),
                             "-dh", "mail_version"]).strip())
        users = user_names(args.users)
        make_message(random.Random(0), args.messages, args.messages, users[-1],
                     args.size, time.time())       # --size big enough?
    except BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    print_banner("DomainPOP", versions + "; load average %.1f" % os.getloadavg()[0])
    series = {name: Series() for name in names}
    mailbox = None
    try:
        print("%-42s" % ("ISP mailbox: %d messages ..." % args.messages),
              end="", flush=True)
        t = time.monotonic()
        try:
            mailbox = Mailbox(users, args.messages, args.size, keep=args.keep)
        except (BenchError, OSError) as e:
            print(" FAILED\n  error: %s" % e)
            return 1
        print(" made in %.1f s%s" % (time.monotonic() - t,
                                     " (%s)" % mailbox.base if args.keep else ""))
        for i in range(args.repeat):
            for name in names:
                run = Run(name, args.messages)
                series[name].append(run)
                label = LABELS[name] + repeat_suffix(i, args.repeat)
                if name == "mdpy":
                    attempt(label, bench_mdpy, run, mailbox, args)
                else:
                    attempt(label, bench_fetchmail, run, mailbox, fetchmail,
                            name.split("-")[1], args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if mailbox is not None:
            mailbox.cleanup()

    report(series, mailbox, args)
    return exit_status(any(not s.ok for s in series.values()))


if __name__ == "__main__":
    sys.exit(main())
