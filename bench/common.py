"""What the benchmarks and their private servers share.

* running commands and finding them (``which``, ``run_command``), small
  file and ``/proc`` helpers;
* reading SMTP, POP3 and IMAP replies and waiting for a server's greeting;
* ``TemporaryServer`` (a server living in a temporary directory, used as a
  context manager) and ``ProcessServer`` (one that is a child process in a
  session of its own), with ``serve_until_interrupted`` for the
  stand-alone mode of ``postfix.py`` and ``dovecot.py``;
* ``MdpyServer``: a fresh mdpy under twistd, as every benchmark starts it,
  with ``LoopbackDNS`` as its only name server;
* the benchmarks' shared options, progress and report helpers.

Used by ``smtp_bench.py``, ``relay_bench.py``, ``pop3_bench.py``,
``imap_bench.py``, ``imap_idle_bench.py``, ``imaptest_bench.py``,
``postfix.py`` and ``dovecot.py``; not a benchmark of its own.
"""

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import pwd
import re
import resource
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

DOMAIN = "bench.test"
PASSWORD = "bench-secret"

SBIN_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])


class BenchError(Exception):
    """A one-line reason why one run (or one private server) failed."""


# ------------------------------------------------------ commands and files

def which(name, hint, error=BenchError):
    """Path of the command name (PATH and the sbin directories), or error
    "NAME not found (HINT)"."""
    path = shutil.which(name, path=SBIN_PATH)
    if not path:
        raise error("%s not found (%s)" % (name, hint))
    return path


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def run_command(argv, error=BenchError, timeout=60, check=True, shown=None,
                **popen):
    """Run argv with stdin from /dev/null; return its output (stdout and
    stderr together), stripped.  A command that cannot start, times out or
    (if check) exits non-zero raises error with a one-line reason naming it
    as shown (default: the whole command line)."""
    shown = shown or " ".join(argv)
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout, **popen)
    except subprocess.TimeoutExpired:
        raise error("%s timed out after %ds" % (shown, timeout))
    except OSError as e:
        raise error("cannot run %s: %s" % (argv[0], e))
    out = p.stdout.decode("utf-8", "replace").strip()
    if check and p.returncode != 0:
        raise error("%s exited %d: %s" % (shown, p.returncode, last_line(out)))
    return out


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


def system_user(name, error, missing):
    """The pwd entry of name, or error(missing % name)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise error(missing % name)


def write_file(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def unsearchable_dir(path, uid=None):
    """The first of path and its parents (up to /) that neither everyone
    nor, when given, uid as its owner may search; None if there is none."""
    while path and path != "/":
        st = os.stat(path)
        if not (st.st_mode & stat.S_IXOTH
                or (uid is not None and st.st_uid == uid
                    and st.st_mode & stat.S_IXUSR)):
            return path
        path = os.path.dirname(path)
    return None


def _last_lines(path, n):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()[-n:]
    except OSError:
        return None


def tail(path, n=15):
    """The last n lines of a file, indented, for an error report."""
    lines = _last_lines(path, n)
    if lines is None:
        return "    (missing)"
    return "\n".join("    " + line for line in lines) or "    (empty)"


def log_tail(path, n=20, missing="(no log)"):
    """The last n lines of a log: on one line, joined by ' | ', if n <= 5."""
    lines = _last_lines(path, n)
    if lines is None:
        return missing
    return " | ".join(lines) if n <= 5 else "\n".join(lines)


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


def raise_nofile(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def interrupt_on_sigterm():
    """Make SIGTERM (and SIGHUP) unwind like Ctrl-C, so that finally blocks
    stop the servers and remove the temporary directories."""
    def handler(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# -------------------------------------------------------------- /proc

def proc_pids():
    """The pids of every process now (from /proc)."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name (the first is
    the state), or None if the process is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


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


def proc_pss(pid):
    """Proportional set size of pid in kB (/proc/PID/smaps_rollup): its
    private pages plus its share of the pages it shares; None if unknown."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def group_memory(pgid):
    """(processes, sum of VmRSS kB, sum of Pss kB) over process group pgid:
    a forking server's real footprint is the Pss sum, the RSS sum counts
    shared pages once per process."""
    count = rss = pss = 0
    for pid in proc_pids():
        fields = proc_stat(pid)
        # fields[0] is field 3 (state): pgrp is field 5.
        if fields is None or int(fields[2]) != pgid:
            continue
        count += 1
        rss += proc_status(pid).get("VmRSS", 0)
        pss += proc_pss(pid) or 0
    return count, rss, pss


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


# ------------------------------------------------------------- protocols

def free_port(host="127.0.0.1"):
    """Return a TCP port on host that is free right now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def _read_until(sock, deadline, parse, what, article, limit):
    """Receive until parse(what has arrived) returns something else than
    None, and return that; what (after article) names the reply in errors,
    and limit is the most bytes it may take."""
    buf = b""
    while True:
        result = parse(buf)
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out waiting for %s %s" % (article, what))
        sock.settimeout(remaining)
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed before a full %s" % what)
        buf += chunk
        if len(buf) > limit:
            raise BenchError("%s longer than %d KiB" % (what, limit // 1024))


def _smtp_reply(buf):
    for line in buf.split(b"\r\n")[:-1]:
        if len(line) < 3 or not line[:3].isdigit():
            raise BenchError("malformed SMTP reply line %r" % line[:80])
        if len(line) == 3 or line[3:4] == b" ":
            return int(line[:3]), buf.decode("latin-1").strip()
    return None


def read_reply(sock, deadline):
    """Read one (possibly multi-line) SMTP reply; return (code, text)."""
    return _read_until(sock, deadline, _smtp_reply, "SMTP reply", "an", 65536)


def read_pop3_line(sock, deadline):
    """Read one POP3 status line (up to CRLF); return it as text."""
    return _read_until(
        sock, deadline,
        lambda buf: (buf.split(b"\r\n", 1)[0].decode("latin-1")
                     if b"\r\n" in buf else None),
        "POP3 reply", "a", 4096)


def read_imap_line(sock, deadline):
    """Read one IMAP response line (up to CRLF; no literals); return it as
    text."""
    return _read_until(
        sock, deadline,
        lambda buf: (buf.split(b"\r\n", 1)[0].decode("latin-1")
                     if b"\r\n" in buf else None),
        "IMAP response", "an", 65536)


# What each protocol greets with and how a poll says goodbye.
_GREETINGS = {"smtp": ("220", b"QUIT\r\n"),
              "pop3": ("+OK", b"QUIT\r\n"),
              "imap": ("* OK", b"Z LOGOUT\r\n")}


def _greeting(sock, deadline, protocol):
    """(whether it is a greeting to go on with, its text)."""
    if protocol == "pop3":
        line = read_pop3_line(sock, deadline)
        return line.startswith("+OK"), line
    if protocol == "imap":
        line = read_imap_line(sock, deadline)
        return line.startswith("* OK"), line
    code, text = read_reply(sock, deadline)
    return code == 220, text


def wait_for_greeting(host, port, timeout, alive=None, what="server",
                      pop3=False, error=BenchError, imap=False):
    """Poll host:port until it greets (SMTP 220, POP3 +OK if pop3, IMAP
    "* OK" if imap), then QUIT (LOGOUT); return the greeting.

    alive, if given, is a callable returning a string (why the server died)
    or None, checked between attempts so a crashed server fails fast (with
    error).  Raises TimeoutError with the last error after timeout seconds.
    """
    protocol = "imap" if imap else "pop3" if pop3 else "smtp"
    expected, goodbye = _GREETINGS[protocol]
    deadline = time.monotonic() + timeout
    last = "no attempt made"
    while time.monotonic() < deadline:
        if alive is not None:
            dead = alive()
            if dead:
                raise error("%s exited before answering on port %d: %s"
                            % (what, port, dead))
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                ok, text = _greeting(s, min(deadline, time.monotonic() + 5),
                                     protocol)
                if ok:
                    try:
                        s.sendall(goodbye)
                        _greeting(s, time.monotonic() + 2, protocol)
                    except (OSError, BenchError):
                        pass
                    return text
                last = "greeting was %r" % text[:80]
        except (OSError, BenchError) as e:
            last = "%s: %s" % (type(e).__name__, e)
        time.sleep(0.1)
    raise TimeoutError("%s on %s:%d did not answer %s within %ds (%s)"
                       % (what, host, port, expected, timeout, last))


# --------------------------------------------------------------- servers

class TemporaryServer:
    """A server living in the temporary directory C{self.base}; subclasses
    give C{start} (returning self), C{stop} (returning a warning or None)
    and C{_dead} (why it is no longer running, or None).  Use as a context
    manager: the directory goes away unless C{keep}."""

    keep = False

    def _check_base(self, base_dir, socket_path, what, error, *checks):
        """Fail early if socket_path, the longest Unix socket path the
        server will make below C{self.base}, does not fit in sun_path (108
        bytes), or if one of checks raises; C{self.base} is removed then,
        unless it was given as base_dir."""
        try:
            if len(socket_path) > 100:
                raise error("temporary directory path too long for %s sockets: "
                            "%s (set TMPDIR shorter)" % (what, self.base))
            for check in checks:
                check()
        except BaseException:
            if base_dir is None:
                shutil.rmtree(self.base, ignore_errors=True)
            raise

    def cleanup(self):
        warning = self.stop()
        if warning:
            print("  warning: " + warning, file=sys.stderr)
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc):
        self.cleanup()
        return False


class ProcessServer(TemporaryServer):
    """A TemporaryServer that is one child process, C{self.proc}, leading
    a process group of its own (with whatever it forks)."""

    name = "server"
    proc = None

    def _spawn(self, argv, output, error, **popen):
        """Start argv in a new session, its output appended to output."""
        with open(output, "ab") as out:
            try:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True, **popen)
            except OSError as e:
                raise error("cannot run %s: %s" % (argv[0], e))

    def _dead(self):
        if self.proc is not None and self.proc.poll() is not None:
            return "exit status %s" % self.proc.returncode
        return None

    def _term_pids(self, proc):
        return {proc.pid}

    def stop(self, timeout=15):
        """SIGTERM the process (a master stops its children), then SIGKILL
        whatever is left of its process group.  Returns a warning string or
        None; never raises."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        warning = None
        if proc.poll() is None:
            for pid in self._term_pids(proc):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                warning = "%s ignored SIGTERM for %ds; killed" % (self.name, timeout)
        # The group is the process's own (a new session was made for it);
        # anything of it still alive is ours alone.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            warning = "%s master %d did not exit" % (self.name, proc.pid)
        return warning


def serve_until_interrupted(make, describe, gone, error):
    """Start make() (a TemporaryServer), print the lines of describe(it),
    and keep it up until Ctrl-C (exit status 0) or until it dies (gone(it)
    is printed; 1).  error, raised by it, is printed; 1."""
    try:
        with make() as srv:
            for line in describe(srv):
                print(line)
            print("Ctrl-C to stop.")
            try:
                while not srv._dead():
                    time.sleep(1)
                print(gone(srv), file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print()
                return 0
    except error as e:
        print("error: %s" % e, file=sys.stderr)
        return 1


# ------------------------------------------------------------------ mdpy

# The zone the benchmarks' DNS server holds: the SPF record of the domain
# the load comes from (127.0.0.1), and an SOA so that its negative answers
# (the HELO name, ...) may be cached (RFC 2308 section 5).
BENCH_ZONE = {DOMAIN: {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"], "SOA": 3600}}


class LoopbackDNS:
    """tests/dnsserver.py as a process of its own, on a free port of
    127.0.0.1, serving C{zone} (L{BENCH_ZONE}): what C{[dns] nameservers}
    of every benchmarked mdpy points at, so that no figure depends on the
    system's resolver and no query leaves the machine."""

    def __init__(self, base, zone=BENCH_ZONE, timeout=30):
        path = os.path.join(base, "zone.json")
        with open(path, "w") as f:
            json.dump(zone, f)
        argv = [sys.executable, os.path.join(REPO, "tests", "dnsserver.py"),
                "--port", "0", "--zone", path]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except OSError as e:
            raise BenchError("cannot run %s: %s" % (argv[1], e))
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode("utf-8", "replace") if ready else ""
        if not line.startswith("ready "):
            self.stop()
            raise BenchError("tests/dnsserver.py did not start: %r" % (line,))
        self.nameserver = "127.0.0.1:%d" % int(line.split()[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


# Listening services of mdpy.ini, in the order they are written.
MDPY_SERVICES = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps",
                 "odmr", "minger", "webadmin")


def mdpy_ini(data_dir, smtp_port, pop3_port=None, disabled=(), imap_port=None,
             settings=None):
    """mdpy.ini: SMTP on 127.0.0.1:smtp_port, POP3 (IMAP) with plaintext
    USER/PASS (LOGIN) on 127.0.0.1:pop3_port (imap_port) if given, the
    services in disabled off; settings, {section: {key: value}}, adds or
    overrides keys of those sections ([server] first, then the services,
    then any other section, e.g. relay)."""
    settings = settings or {}
    server = {"hostname": DOMAIN, "data_dir": data_dir}
    server.update(settings.get("server", {}))
    lines = ["[server]"] + ["%s = %s" % item for item in server.items()]
    for section in MDPY_SERVICES:
        keys = {}
        if section == "smtp":
            keys = {"port": smtp_port, "interface": "127.0.0.1"}
        elif section in ("pop3", "imap") and (pop3_port, imap_port)[
                section == "imap"]:
            keys = {"port": (pop3_port, imap_port)[section == "imap"],
                    "interface": "127.0.0.1", "allow_plaintext_auth": "yes"}
        elif section in disabled:
            keys = {"enabled": "no"}
        keys.update(settings.get(section, {}))
        if keys:
            lines.append("[%s]" % section)
            lines += ["%s = %s" % item for item in keys.items()]
    for section, keys in settings.items():
        if section not in MDPY_SERVICES and section != "server":
            lines.append("[%s]" % section)
            lines += ["%s = %s" % item for item in keys.items()]
    return "\n".join(lines) + "\n"


class MdpyServer(ProcessServer):
    """A fresh mdpy (data dir, config, the domain and users) under twistd.

    SMTP, with pop3 POP3 and with imap IMAP, on free ports of 127.0.0.1;
    the services in C{disabled} are turned off in mdpy.ini (here the SMTP
    benchmark's set, which leaves odmr, minger and webadmin at their
    defaults), and C{settings} ({section: {key: value}}) is added to it.
    Its C{[dns] nameservers} is a L{LoopbackDNS} started with the mdpy.ini
    and stopped with the server."""

    name = "mdpy"
    disabled = ("submission", "smtps", "pop3", "pop3s", "imap", "imaps")

    def __init__(self, users=("user",), keep=False, start_timeout=30, pop3=False,
                 imap=False, settings=None):
        self.users = tuple(users)
        self.keep = keep
        self.start_timeout = start_timeout
        self.settings = settings or {}
        self.base = os.path.realpath(tempfile.mkdtemp(prefix="mdpy-bench-mdpy-"))
        self.port = free_port()
        taken = {self.port}
        self.pop3_port = self._another_port(taken) if pop3 else None
        self.imap_port = self._another_port(taken) if imap else None
        self.ini = os.path.join(self.base, "mdpy.ini")
        self.data_dir = os.path.join(self.base, "data")
        self.log = os.path.join(self.base, "mdpy.log")
        self.out = os.path.join(self.base, "twistd.out")
        self.env = child_env()
        self.mdpy = find_command("mdpy", [sys.executable, "-m", "mdpy.cli"])
        self.twistd = find_command("twistd", [sys.executable, "-m", "twisted"])
        self.pid = None
        self.dns = None

    @staticmethod
    def _another_port(taken):
        port = free_port()
        while port in taken:
            port = free_port()
        taken.add(port)
        return port

    @property
    def mail_root(self):
        return os.path.join(self.data_dir, "mail")

    def maildir(self, user):
        return os.path.join(self.mail_root, DOMAIN, user)

    def _admin(self, *args):
        run_command(self.mdpy + ["-c", self.ini] + list(args),
                    shown="mdpy " + " ".join(args), cwd=self.base, env=self.env)

    def write_ini(self):
        if self.dns is None:
            self.dns = LoopbackDNS(self.base)
        settings = dict(self.settings)
        settings["dns"] = dict(settings.get("dns", {}), nameservers=self.dns.nameserver)
        with open(self.ini, "w") as f:
            f.write(mdpy_ini(self.data_dir, self.port, self.pop3_port,
                             self.disabled, self.imap_port, settings))

    def stop(self, timeout=15):
        warning = super().stop(timeout)
        dns, self.dns = self.dns, None
        if dns is not None:
            dns.stop()
        return warning

    def provision(self, users):
        """Write mdpy.ini and make the domain and users (password PASSWORD)."""
        self.write_ini()
        self._admin("domain", "add", DOMAIN)
        for user in users:
            self._admin("user", "add", "%s@%s" % (user, DOMAIN),
                        "--password", PASSWORD)

    def provision_batch(self, users, timeout=600):
        """What provision does, with the same ``mdpy`` commands run by
        mdpy.cli.main in one Python process: no interpreter start-up per
        user (each still pays for its scrypt hash)."""
        self.write_ini()
        commands = [["domain", "add", DOMAIN]] + [
            ["user", "add", "%s@%s" % (user, DOMAIN), "--password", PASSWORD]
            for user in users]
        script = (
            "import sys\n"
            "from mdpy.cli import main\n"
            "for argv in %r:\n"
            "    if main(['-c', %r] + argv) != 0:\n"
            "        sys.exit('mdpy %%s failed' %% ' '.join(argv))\n"
            % (commands, self.ini))
        run_command([sys.executable, "-c", script], timeout=timeout,
                    shown="mdpy user add (%d users, in one process)" % len(users),
                    cwd=self.base, env=self.env)

    def configure(self):
        """Prepare the data directory before twistd starts (subclasses, e.g.
        in pop3_bench.py, provide their own)."""
        self.provision(self.users)

    def start(self):
        self.configure()
        self._spawn(self.twistd + ["-n", "--pidfile=", "--logfile=" + self.log,
                                   "mdpy", "--config", self.ini],
                    self.out, BenchError, cwd=self.base, env=self.env)
        listeners = [(self.port, {}, "mdpy")]
        if self.pop3_port:
            listeners.append((self.pop3_port, {"pop3": True}, "mdpy POP3"))
        if self.imap_port:
            listeners.append((self.imap_port, {"imap": True}, "mdpy IMAP"))
        try:
            for port, protocol, what in listeners:
                wait_for_greeting("127.0.0.1", port, self.start_timeout,
                                  alive=self._dead, what=what, **protocol)
        except (TimeoutError, BenchError) as e:
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

    def _term_pids(self, proc):
        return {proc.pid, self.pid or proc.pid}

    def status(self):
        return proc_status(self.pid) if self.pid else {}


# ------------------------------------------------------- options, report

def positive(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


# Options both benchmarks have: type and default (each gives its own help).
SHARED_OPTIONS = {
    "--messages": dict(type=positive, default=2000),
    "--size": dict(type=positive, default=4096),
    "--repeat": dict(type=positive, default=1),
    "--only": dict(help="benchmark one server only"),
    "--timeout": dict(type=positive, default=None),
    "--keep": dict(action="store_true",
                   help="keep the temporary directories for inspection"),
}


def parse_bench_args(argv, description, options):
    """(parser, arguments) of a benchmark.  options are (flag, keywords of
    add_argument) in --help order; the keywords complete SHARED_OPTIONS for
    the flags there.  --timeout not given becomes max(60, messages/20)."""
    ap = argparse.ArgumentParser(description=description)
    for flag, kwargs in options:
        ap.add_argument(flag, **dict(SHARED_OPTIONS.get(flag, {}), **kwargs))
    args = ap.parse_args(argv)
    if args.timeout is None:
        args.timeout = max(60, args.messages // 20)
    return ap, args


def print_banner(kind, extra=""):
    tmp = tempfile.gettempdir()
    print("mdpy %s benchmark: Python %s, %s, %d CPUs; temp dirs in %s (%s)%s"
          % (kind, platform.python_version(), platform.machine(),
             os.cpu_count() or 0, tmp, filesystem_of(tmp), extra))


def repeat_suffix(i, repeat):
    """' #N' after the label of the i-th (from 0) of repeated runs."""
    return " #%d" % (i + 1) if repeat > 1 else ""


def median_note(repeat):
    return "; median of %d runs" % repeat if repeat > 1 else ""


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def fmt(x, spec="%9.1f", width=9):
    return spec % x if x is not None else "-".rjust(width)


def print_table_head(head):
    print(head)
    print("-" * len(head))


def print_target(met, text):
    print("%-15s %s" % ("target met:" if met else "target MISSED:", text))


def exit_status(failed):
    """Say so if any run failed; the benchmark's exit status."""
    if failed:
        print("\nRESULT: at least one run FAILED (see errors above)")
        return 1
    return 0


def run_clients(target, client_args, cpu, limit, settle=0.2):
    """Run one process per client: each calls target(conn, go, *args) for
    its args in client_args, sends "ready" on conn, waits for go, works and
    sends one result dict with a "user" key.  Server CPU (cpu() gives
    the server's CPU seconds so far) is counted from go until the last
    result, plus settle seconds for the server to finish its own work.

    @return: (results by user, server CPU seconds)."""
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    procs, conns = [], []
    try:
        for args in client_args:
            mine, theirs = ctx.Pipe(duplex=False)
            p = ctx.Process(target=target, daemon=True, args=(theirs, go) + tuple(args))
            p.start()
            theirs.close()
            procs.append(p)
            conns.append(mine)
        for c in conns:
            if not c.poll(30) or c.recv() != "ready":
                raise BenchError("a client process did not start")
        cpu0 = cpu()
        go.set()
        results = {}
        deadline = time.monotonic() + limit
        pending = list(conns)
        while pending:
            left = deadline - time.monotonic()
            ready = multiprocessing.connection.wait(pending, max(0, left))
            if not ready:
                raise BenchError("%d of %d clients did not finish within %ds"
                                 % (len(pending), len(conns), limit))
            for c in ready:
                try:
                    r = c.recv()
                except EOFError:
                    raise BenchError("a client process died")
                results[r["user"]] = r
                pending.remove(c)
        time.sleep(settle)
        return results, cpu() - cpu0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(5)


class MessageRun:
    """One load run of C{expected} messages; subclasses say when it is ok."""

    expected = None

    def rate(self, seconds):
        """Messages per second over C{seconds}, or None."""
        return self.expected / seconds if seconds and self.expected else None


class RunSeries(list):
    """The repeated runs of one server; ok when every run is."""

    @property
    def ok(self):
        return bool(self) and all(r.ok for r in self)

