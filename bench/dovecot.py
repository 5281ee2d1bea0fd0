"""Run a private, throw-away Dovecot POP3 server for benchmarks.

The instance lives in a temporary directory: its own configuration file
(written here, nothing from /etc/dovecot is read), base_dir (sockets, pid
file, login chroot), state_dir, password file and log file.  It speaks only
POP3, without TLS, on 127.0.0.1:<port>, accepts USER/PASS and AUTH
PLAIN/LOGIN in the clear, and serves each ``USER@DOMAIN`` the Maildir
``<mail_root>/DOMAIN/USER/`` -- the layout of mdpy's ``data_dir/mail``, so
it can serve mdpy's own Maildirs.  Dovecot adds its index files
(``dovecot.index*``, ``dovecot-uidlist``) beside the messages and, as usual,
moves messages from ``new/`` to ``cur/`` and marks retrieved ones seen.
The system Dovecot (/etc/dovecot, /run/dovecot, /var/lib/dovecot) is neither
read nor modified, and does not need to be running (a running one does not
conflict unless it uses the same port).

Everything else is Dovecot's built-in default, as shipped: one
``pop3-login`` and one ``pop3`` process per connection
(``service_count = 1``), ``mail_fsync = optimized``, no authentication
cache, ``pop3_uidl_format = %08Xu%08Xv``.  Mail is accessed as
``nobody`` (or another user given): Dovecot's pop3 refuses to run as root
("userdb returned 0 as uid"), so the Maildirs must belong to that user --
``own_mail=True`` chowns the whole mail root to it at start, which is what
the benchmark does with its private copy.

Needs the ``dovecot-pop3d`` package (``/usr/sbin/dovecot``, ``doveadm``) and
root.  Used by ``bench/pop3_bench.py``; can also be run on its own::

    python bench/dovecot.py [--port N] [--mail-root DIR] [--users u1,u2]
                            [--password PW] [--keep]

which starts the instance (by default over an empty Maildir for
``user@bench.test``), prints its port and paths, and stops it on Ctrl-C.
"""

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from postfix import SBIN_PATH, TemporaryServer, free_port  # noqa: E402

__all__ = ["DovecotError", "PrivateDovecot", "dovecot_version",
           "interrupt_on_sigterm", "read_pop3_line", "wait_for_pop3_greeting"]

DOVECOT_CONF = """\
# Private benchmark instance written by bench/dovecot.py -- not /etc/dovecot.
base_dir = {run}
state_dir = {state}
instance_name = {instance}
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = {auth_cache_size}
log_path = {log}
info_log_path = {log}
{first_valid_uid}
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:{mail_root}/%d/%n

passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail_root}/%d/%n
}}

service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
# Everything else (process model, fsync, indexes, UIDL format): Dovecot's
# built-in defaults.
"""


class DovecotError(Exception):
    """A one-line, user-facing failure of the private Dovecot instance."""


def read_pop3_line(sock, deadline):
    """Read one POP3 status line (up to CRLF); return it as text."""
    buf = b""
    while b"\r\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out waiting for a POP3 reply")
        sock.settimeout(remaining)
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed before a full POP3 reply")
        buf += chunk
        if len(buf) > 4096:
            raise DovecotError("POP3 status line longer than 4 KiB")
    return buf.split(b"\r\n", 1)[0].decode("latin-1")


def wait_for_pop3_greeting(host, port, timeout, alive=None, what="server"):
    """Poll host:port until it greets with +OK, then QUIT; return the greeting.

    alive, if given, is a callable returning a string (why the server died)
    or None, checked between attempts so a crashed server fails fast.
    Raises TimeoutError with the last error after timeout seconds.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt made"
    while time.monotonic() < deadline:
        if alive is not None:
            dead = alive()
            if dead:
                raise DovecotError("%s exited before answering on port %d: %s"
                                   % (what, port, dead))
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                line = read_pop3_line(s, min(deadline, time.monotonic() + 5))
                if line.startswith("+OK"):
                    try:
                        s.sendall(b"QUIT\r\n")
                        read_pop3_line(s, time.monotonic() + 2)
                    except (OSError, DovecotError):
                        pass
                    return line
                last = "greeting was %r" % line[:80]
        except (OSError, DovecotError) as e:
            last = "%s: %s" % (type(e).__name__, e)
        time.sleep(0.1)
    raise TimeoutError("%s on %s:%d did not answer +OK within %ds (%s)"
                       % (what, host, port, timeout, last))


def _which(name):
    path = shutil.which(name, path=SBIN_PATH)
    if not path:
        raise DovecotError("%s not found (apt-get install dovecot-pop3d)" % name)
    return path


def _run(argv, timeout=60, input=None):
    try:
        p = subprocess.run(argv, input=input, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DovecotError("%s timed out after %ds" % (" ".join(argv), timeout))
    out = p.stdout.decode("utf-8", "replace").strip()
    if p.returncode != 0:
        last = out.splitlines()[-1] if out else "(no output)"
        raise DovecotError("%s exited %d: %s" % (" ".join(argv), p.returncode, last))
    return out


def dovecot_version():
    return _run([_which("dovecot"), "--version"]).split()[0]


class PrivateDovecot(TemporaryServer):
    """A private Dovecot POP3 server; use as a context manager.

    >>> with PrivateDovecot("/tmp/x/data/mail", ["u00", "u01"], "pw") as dc:
    ...     dc.port      # u00@bench.test / pw reads /tmp/x/data/mail/bench.test/u00

    scheme is the Dovecot password scheme of the passwd-file (``PLAIN``,
    ``SHA512-CRYPT``, ``ARGON2ID``, ... -- see ``doveadm pw -l``); hashes
    are made once with ``doveadm pw``.
    """

    def __init__(self, mail_root, users, password, domain="bench.test",
                 port=None, scheme="PLAIN", rounds=None, auth_cache_size="0",
                 mail_user="nobody", own_mail=False, base_dir=None, keep=False,
                 start_timeout=30):
        if os.geteuid() != 0:
            raise DovecotError("a private Dovecot must be started as root")
        self.dovecot = _which("dovecot")
        self.doveadm = _which("doveadm")
        self.doveconf = _which("doveconf")
        self.mail_root = os.path.realpath(mail_root)
        self.users = tuple(users)
        self.password = password
        self.domain = domain
        self.port = port or free_port()
        self.scheme = scheme.upper()
        self.rounds = rounds
        self.auth_cache_size = auth_cache_size
        self.own_mail = own_mail
        self.keep = keep
        self.start_timeout = start_timeout
        self.proc = None
        try:
            pw = pwd.getpwnam(mail_user)
        except KeyError:
            raise DovecotError("mail user %r does not exist" % mail_user)
        self.mail_uid, self.mail_gid = pw.pw_uid, pw.pw_gid
        if self.mail_uid == 0:
            raise DovecotError("Dovecot's pop3 will not access mail as root; "
                               "give another mail user")
        for internal in ("dovecot", "dovenull"):
            try:
                pwd.getpwnam(internal)
            except KeyError:
                raise DovecotError("system user %r is missing (reinstall "
                                   "dovecot-core)" % internal)
        self.version = dovecot_version()
        self.base = os.path.realpath(
            base_dir or tempfile.mkdtemp(prefix="mdpy-bench-dovecot-"))
        self.run_dir = os.path.join(self.base, "run")
        self.state_dir = os.path.join(self.base, "state")
        self.conf = os.path.join(self.base, "dovecot.conf")
        self.passwd = os.path.join(self.base, "passwd")
        self.log = os.path.join(self.base, "dovecot.log")
        # Unix sockets live in base_dir (login/ one level down); sun_path
        # is 108 bytes.
        if len(os.path.join(self.run_dir, "login", "ipc-proxy")) > 100:
            if base_dir is None:
                shutil.rmtree(self.base, ignore_errors=True)
            raise DovecotError("temporary directory path too long for Dovecot "
                               "sockets: %s (set TMPDIR shorter)" % self.base)

    # ----------------------------------------------------------------- setup

    def _hash(self):
        if self.scheme in ("PLAIN", "CLEAR", "CLEARTEXT"):
            return "{PLAIN}" + self.password
        argv = [self.doveadm, "-c", self.conf, "pw", "-s", self.scheme,
                "-p", self.password]
        if self.rounds:
            argv += ["-r", str(self.rounds)]
        out = _run(argv)
        if not out.startswith("{"):
            raise DovecotError("doveadm pw -s %s gave %r" % (self.scheme, out[:60]))
        return out

    def _write(self, path, text, mode=0o644):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    def _write_config(self):
        # The auth process (user dovecot) reads the passwd file: base must be
        # searchable and the file readable by it.
        os.chmod(self.base, 0o755)
        for d in (self.run_dir, self.state_dir):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        open(self.log, "a").close()
        self._write(self.conf, DOVECOT_CONF.format(
            run=self.run_dir, state=self.state_dir,
            instance="dovecot-bench-%d" % self.port, log=self.log,
            first_valid_uid="first_valid_uid = %d" % min(self.mail_uid, 500),
            auth_cache_size=self.auth_cache_size,
            uid=self.mail_uid, gid=self.mail_gid, mail_root=self.mail_root,
            passwd=self.passwd, port=self.port))
        self._write(self.passwd, "")       # doveadm pw wants a valid config
        secret = self._hash()
        self._write(self.passwd, "".join(
            "%s@%s:%s\n" % (u, self.domain, secret) for u in self.users), 0o640)
        os.chown(self.passwd, -1, pwd.getpwnam("dovecot").pw_gid)
        # Validate before starting, for a one-line error.
        _run([self.doveconf, "-c", self.conf, "-n"])
        if self.own_mail:
            self._chown_mail()
        self._check_access()

    def _chown_mail(self):
        uid, gid = self.mail_uid, self.mail_gid
        os.chown(self.mail_root, uid, gid)
        for root, dirs, files in os.walk(self.mail_root):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, gid)

    def _check_access(self):
        # The pop3 processes run as the mail user and must reach mail_root.
        path = self.mail_root
        while path and path != "/":
            st = os.stat(path)
            if not (st.st_mode & 0o001 or (st.st_uid == self.mail_uid
                                           and st.st_mode & 0o100)):
                raise DovecotError("%s is not searchable by uid %d, so Dovecot "
                                   "cannot read the Maildirs below it"
                                   % (path, self.mail_uid))
            path = os.path.dirname(path)

    # ------------------------------------------------------------- lifecycle

    def _dead(self):
        if self.proc is not None and self.proc.poll() is not None:
            return "exit status %s" % self.proc.returncode
        return None

    def start(self):
        """Write the configuration and start ``dovecot -F`` in the
        background; return once the port answers +OK."""
        self._write_config()
        with open(self.log, "ab") as log:
            try:
                self.proc = subprocess.Popen(
                    [self.dovecot, "-F", "-c", self.conf],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True)
            except OSError as e:
                raise DovecotError("cannot run %s: %s" % (self.dovecot, e))
        try:
            self.greeting = wait_for_pop3_greeting(
                "127.0.0.1", self.port, self.start_timeout, alive=self._dead,
                what="Dovecot")
        except (TimeoutError, DovecotError) as e:
            raise DovecotError("%s; log: %s" % (e, self.log_tail(3)))
        return self

    def stop(self, timeout=15):
        """SIGTERM the master (it stops its children), then SIGKILL this
        instance's process group if anything is left.  Returns a warning
        string or None; never raises."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        warning = None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                warning = "Dovecot ignored SIGTERM for %ds; killed" % timeout
            except ProcessLookupError:
                pass
        # The master's children share its process group (a new session made
        # for it); anything of it still alive is ours alone.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            warning = "Dovecot master %d did not exit" % proc.pid
        return warning

    # --------------------------------------------------------------- queries

    def maildir(self, user):
        return os.path.join(self.mail_root, self.domain, user)

    def log_tail(self, n=20):
        try:
            with open(self.log, errors="replace") as f:
                lines = f.read().splitlines()[-n:]
        except OSError:
            return "(no log)"
        return " | ".join(lines) if n <= 5 else "\n".join(lines)


def interrupt_on_sigterm():
    """Make SIGTERM (and SIGHUP) unwind like Ctrl-C, so that finally blocks
    stop the servers and remove the temporary directories."""
    def handler(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def main(argv=None):
    interrupt_on_sigterm()
    ap = argparse.ArgumentParser(description="Run a private Dovecot POP3 server "
                                 "on 127.0.0.1 until interrupted.")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--mail-root", default=None,
                    help="directory holding DOMAIN/USER/ Maildirs (default: an "
                         "empty one in the temporary directory)")
    ap.add_argument("--domain", default="bench.test")
    ap.add_argument("--users", default="user",
                    help="comma-separated local parts (default: user)")
    ap.add_argument("--password", default="benchpw")
    ap.add_argument("--scheme", default="PLAIN",
                    help="password scheme of the passwd-file (doveadm pw -l)")
    ap.add_argument("--mail-user", default="nobody",
                    help="system user Dovecot reads mail as (default nobody)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary directory afterwards")
    args = ap.parse_args(argv)
    users = [u for u in args.users.split(",") if u]
    base = tempfile.mkdtemp(prefix="mdpy-bench-dovecot-")
    mail_root = args.mail_root
    if mail_root is None:
        mail_root = os.path.join(base, "mail")
        for u in users:
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(mail_root, args.domain, u, sub))
    try:
        with PrivateDovecot(mail_root, users, args.password, domain=args.domain,
                            port=args.port, scheme=args.scheme,
                            mail_user=args.mail_user,
                            own_mail=args.mail_root is None, base_dir=base,
                            keep=args.keep) as dc:
            print("Dovecot %s POP3 on 127.0.0.1:%d (%s)"
                  % (dc.version, dc.port, dc.greeting))
            print("  users:   %s (password %r)" % (", ".join(
                "%s@%s" % (u, args.domain) for u in users), args.password))
            print("  config:  %s" % dc.conf)
            print("  maildir: %s" % dc.maildir(users[0]))
            print("  log:     %s" % dc.log)
            print("Ctrl-C to stop.")
            try:
                while not dc._dead():
                    time.sleep(1)
                print("dovecot exited: %s" % dc.log_tail(3), file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print()
                return 0
    except DovecotError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
