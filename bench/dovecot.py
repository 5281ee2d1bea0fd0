"""Run a private, throw-away Dovecot POP3 or IMAP server for benchmarks.

The instance lives in a temporary directory: its own configuration file
(written here, nothing from /etc/dovecot is read), base_dir (sockets, pid
file, login chroot), state_dir, password file and log file.  It speaks only
POP3 (or only IMAP, with ``protocol="imap"``), without TLS, on
127.0.0.1:<port>, accepts USER/PASS (LOGIN) and AUTH PLAIN/LOGIN in the
clear, and serves each ``USER@DOMAIN`` the Maildir
``<mail_root>/DOMAIN/USER/`` -- the layout of mdpy's ``data_dir/mail``, so
it can serve mdpy's own Maildirs.  Dovecot adds its index files
(``dovecot.index*``, ``dovecot-uidlist``) beside the messages and, as usual,
moves messages from ``new/`` to ``cur/`` and marks retrieved ones seen.
The system Dovecot (/etc/dovecot, /run/dovecot, /var/lib/dovecot) is neither
read nor modified, and does not need to be running (a running one does not
conflict unless it uses the same port).

Everything else is Dovecot's built-in default, as shipped: one
``pop3-login`` (``imap-login``) and one ``pop3`` (``imap``) process per
connection (``service_count = 1``), ``mail_fsync = optimized``, no
authentication cache, ``pop3_uidl_format = %08Xu%08Xv``.  Mail is accessed
as ``nobody`` (or another user given): Dovecot's pop3 and imap refuse to run
as root ("userdb returned 0 as uid"), so the Maildirs must belong to that
user -- ``own_mail=True`` chowns the whole mail root to it at start, which
is what the benchmarks do with their private copies.  ``user_uids`` gives
users a uid of their own instead (a passwd-file userdb; ``own_mail`` then
chowns each user's Maildir to its uid), and ``extra_config`` appends
settings, e.g. the process and connection limits of many idle clients.
``deliver()`` hands a message to ``dovecot-lda``, Dovecot's own delivery
agent, as an MTA would.

Needs the ``dovecot-pop3d`` package for POP3 and ``dovecot-imapd`` for IMAP
(both bring ``dovecot-core``: ``/usr/sbin/dovecot``, ``doveadm``,
``dovecot-lda``) and root.  Used by ``bench/pop3_bench.py``,
``bench/imap_bench.py``, ``bench/imap_idle_bench.py`` and
``bench/imaptest_bench.py``; can also be run
on its own::

    python bench/dovecot.py [--imap] [--port N] [--mail-root DIR]
                            [--users u1,u2] [--password PW] [--keep]

which starts the instance (by default POP3, over an empty Maildir for
``user@bench.test``), prints its port and paths, and stops it on Ctrl-C.
"""

import argparse
import os
import pwd
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from common import (DOMAIN, PASSWORD, BenchError, ProcessServer,  # noqa: E402
                    free_port, interrupt_on_sigterm, log_tail, run_command,
                    serve_until_interrupted, system_user, unsearchable_dir,
                    wait_for_greeting, which, write_file)

__all__ = ["DovecotError", "PrivateDovecot", "dovecot_version"]

DOVECOT_CONF = """\
# Private benchmark instance written by bench/dovecot.py -- not /etc/dovecot.
base_dir = {run}
state_dir = {state}
instance_name = {instance}
protocols = {protocol}
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
{userdb}
service {protocol}-login {{
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {protocol}s {{
    port = 0
  }}
}}
# Everything else (process model, fsync, indexes, UIDL format): Dovecot's
# built-in defaults.
{extra}"""

STATIC_USERDB = """\
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail_root}/%d/%n
}}
"""

# Each passwd-file line carries the user's uid, gid and home.
PASSWD_USERDB = """\
userdb {{
  driver = passwd-file
  args = {passwd}
}}
"""

# Where Debian (and a source build) put Dovecot's service binaries.
LIBEXEC_DIRS = ("/usr/lib/dovecot", "/usr/libexec/dovecot",
                "/usr/local/libexec/dovecot")

PACKAGES = {"pop3": "dovecot-pop3d", "imap": "dovecot-imapd"}


class DovecotError(BenchError):
    """A one-line, user-facing failure of the private Dovecot instance."""


def _which(name, package="dovecot-pop3d"):
    return which(name, "apt-get install %s" % package, DovecotError)


def libexec_dir(protocol="pop3"):
    """Dovecot's directory of service binaries holding PROTOCOL-login, or
    DovecotError naming the package to install."""
    for path in LIBEXEC_DIRS:
        if os.path.exists(os.path.join(path, protocol + "-login")):
            return path
    raise DovecotError("Dovecot's %s server (%s-login in %s) not found "
                       "(apt-get install %s)" % (
                           protocol.upper(), protocol, " or ".join(LIBEXEC_DIRS),
                           PACKAGES[protocol]))


def _run(argv):
    return run_command(argv, DovecotError)


def dovecot_version():
    return _run([_which("dovecot"), "--version"]).split()[0]


class PrivateDovecot(ProcessServer):
    """A private Dovecot POP3 (or IMAP) server; use as a context manager.

    >>> with PrivateDovecot("/tmp/x/data/mail", ["u00", "u01"], "pw") as dc:
    ...     dc.port      # u00@bench.test / pw reads /tmp/x/data/mail/bench.test/u00

    scheme is the Dovecot password scheme of the passwd-file (``PLAIN``,
    ``SHA512-CRYPT``, ``ARGON2ID``, ... -- see ``doveadm pw -l``); hashes
    are made once with ``doveadm pw``.
    """

    name = "Dovecot"

    def __init__(self, mail_root, users, password, domain=DOMAIN,
                 port=None, scheme="PLAIN", rounds=None, auth_cache_size="0",
                 mail_user="nobody", own_mail=False, base_dir=None, keep=False,
                 start_timeout=30, protocol="pop3", user_uids=None,
                 extra_config=""):
        if protocol not in PACKAGES:
            raise ValueError("protocol must be pop3 or imap, not %r" % protocol)
        if os.geteuid() != 0:
            raise DovecotError("a private Dovecot must be started as root")
        self.protocol = protocol
        package = PACKAGES[protocol]
        self.dovecot = _which("dovecot", package)
        self.doveadm = _which("doveadm", package)
        self.doveconf = _which("doveconf", package)
        # Checked here for IMAP (the package most likely missing); POP3
        # leaves it to Dovecot, as before.
        self.libexec = libexec_dir(protocol) if protocol == "imap" else None
        self.user_uids = dict(user_uids or {})
        self.extra_config = extra_config
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
        pw = system_user(mail_user, DovecotError, "mail user %r does not exist")
        self.mail_uid, self.mail_gid = pw.pw_uid, pw.pw_gid
        if self.mail_uid == 0 or 0 in self.user_uids.values():
            raise DovecotError("Dovecot's %s will not access mail as root; "
                               "give another mail user" % protocol)
        for internal in ("dovecot", "dovenull"):
            system_user(internal, DovecotError,
                        "system user %r is missing (reinstall dovecot-core)")
        self.version = dovecot_version()
        self.base = os.path.realpath(
            base_dir or tempfile.mkdtemp(prefix="mdpy-bench-dovecot-"))
        self.run_dir = os.path.join(self.base, "run")
        self.state_dir = os.path.join(self.base, "state")
        self.conf = os.path.join(self.base, "dovecot.conf")
        self.passwd = os.path.join(self.base, "passwd")
        self.log = os.path.join(self.base, "dovecot.log")
        # Unix sockets live in base_dir (login/ one level down).
        self._check_base(base_dir, os.path.join(self.run_dir, "login", "ipc-proxy"),
                         "Dovecot", DovecotError)

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

    def _write_config(self):
        # The auth process (user dovecot) reads the passwd file: base must be
        # searchable and the file readable by it.
        os.chmod(self.base, 0o755)
        for d in (self.run_dir, self.state_dir):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        open(self.log, "a").close()
        uids = [self.mail_uid] + list(self.user_uids.values())
        userdb = PASSWD_USERDB if self.user_uids else STATIC_USERDB
        write_file(self.conf, DOVECOT_CONF.format(
            run=self.run_dir, state=self.state_dir,
            instance="dovecot-bench-%d" % self.port, log=self.log,
            first_valid_uid="first_valid_uid = %d" % min(min(uids), 500),
            auth_cache_size=self.auth_cache_size,
            uid=self.mail_uid, gid=self.mail_gid, mail_root=self.mail_root,
            passwd=self.passwd, port=self.port, protocol=self.protocol,
            userdb=userdb.format(uid=self.mail_uid, gid=self.mail_gid,
                                 mail_root=self.mail_root, passwd=self.passwd),
            extra=self.extra_config))
        write_file(self.passwd, "")       # doveadm pw wants a valid config
        secret = self._hash()
        write_file(self.passwd, "".join(
            self._passwd_line(u, secret) for u in self.users), 0o640)
        os.chown(self.passwd, -1, pwd.getpwnam("dovecot").pw_gid)
        # Validate before starting, for a one-line error.
        _run([self.doveconf, "-c", self.conf, "-n"])
        if self.own_mail:
            self._chown_mail()
        self._check_access()

    def _passwd_line(self, user, secret):
        """user@domain:secret, and with user_uids the userdb fields
        (uid:gid:gecos:home)."""
        line = "%s@%s:%s" % (user, self.domain, secret)
        if self.user_uids:
            line += ":%d:%d::%s" % (self.user_uids.get(user, self.mail_uid),
                                    self.mail_gid, self.maildir(user))
        return line + "\n"

    def _chown_mail(self):
        uid, gid = self.mail_uid, self.mail_gid
        os.chown(self.mail_root, uid, gid)
        for root, dirs, files in os.walk(self.mail_root):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, gid)
        if self.user_uids:
            # Users of their own uids must all pass through to their homes.
            for path in (self.mail_root, os.path.join(self.mail_root, self.domain)):
                if os.path.isdir(path):
                    os.chmod(path, 0o711)
        for user, user_uid in self.user_uids.items():
            top = self.maildir(user)
            if not os.path.isdir(top):
                continue
            os.chown(top, user_uid, gid)
            for root, dirs, files in os.walk(top):
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), user_uid, gid)

    def _check_access(self):
        # The pop3/imap processes run as the mail user and must reach
        # mail_root.
        path = unsearchable_dir(self.mail_root, self.mail_uid)
        if path:
            raise DovecotError("%s is not searchable by uid %d, so Dovecot "
                               "cannot read the Maildirs below it"
                               % (path, self.mail_uid))

    # ------------------------------------------------------------- lifecycle

    def start(self):
        """Write the configuration and start ``dovecot -F`` in the
        background; return once the port answers +OK (IMAP: * OK)."""
        self._write_config()
        self._spawn([self.dovecot, "-F", "-c", self.conf], self.log, DovecotError)
        imap = self.protocol == "imap"
        try:
            self.greeting = wait_for_greeting(
                "127.0.0.1", self.port, self.start_timeout, alive=self._dead,
                what="Dovecot", pop3=not imap, imap=imap, error=DovecotError)
        except (TimeoutError, BenchError) as e:
            raise DovecotError("%s; log: %s" % (e, self.log_tail(3)))
        return self

    # --------------------------------------------------------------- queries

    def maildir(self, user):
        return os.path.join(self.mail_root, self.domain, user)

    def deliver(self, user, message, sender="sender@example.org", timeout=30):
        """Deliver message (bytes) to user's INBOX with ``dovecot-lda``, as
        an MTA hands mail to Dovecot; returns once it has exited 0."""
        libexec = self.libexec or libexec_dir(self.protocol)
        argv = [os.path.join(libexec, "dovecot-lda"), "-c", self.conf,
                "-d", "%s@%s" % (user, self.domain), "-f", sender]
        try:
            p = subprocess.run(argv, input=message, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DovecotError("dovecot-lda timed out after %ds" % timeout)
        except OSError as e:
            raise DovecotError("cannot run dovecot-lda: %s" % e)
        if p.returncode != 0:
            raise DovecotError("dovecot-lda -d %s@%s exited %d: %s" % (
                user, self.domain, p.returncode,
                p.stdout.decode("utf-8", "replace").strip()[-200:]))

    def log_tail(self, n=20):
        return log_tail(self.log, n)


def main(argv=None):
    interrupt_on_sigterm()
    ap = argparse.ArgumentParser(description="Run a private Dovecot POP3 (or "
                                 "IMAP) server on 127.0.0.1 until interrupted.")
    ap.add_argument("--imap", action="store_true",
                    help="IMAP instead of POP3 (needs dovecot-imapd)")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--mail-root", default=None,
                    help="directory holding DOMAIN/USER/ Maildirs (default: an "
                         "empty one in the temporary directory)")
    ap.add_argument("--domain", default=DOMAIN)
    ap.add_argument("--users", default="user",
                    help="comma-separated local parts (default: user)")
    ap.add_argument("--password", default=PASSWORD)
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
    return serve_until_interrupted(
        lambda: PrivateDovecot(mail_root, users, args.password,
                               domain=args.domain, port=args.port,
                               scheme=args.scheme, mail_user=args.mail_user,
                               own_mail=args.mail_root is None, base_dir=base,
                               keep=args.keep,
                               protocol="imap" if args.imap else "pop3"),
        lambda dc: ["Dovecot %s %s on 127.0.0.1:%d (%s)"
                    % (dc.version, dc.protocol.upper(), dc.port, dc.greeting),
                    "  users:   %s (password %r)" % (", ".join(
                        "%s@%s" % (u, args.domain) for u in users), args.password),
                    "  config:  %s" % dc.conf,
                    "  maildir: %s" % dc.maildir(users[0]),
                    "  log:     %s" % dc.log],
        lambda dc: "dovecot exited: %s" % dc.log_tail(3), DovecotError)


if __name__ == "__main__":
    sys.exit(main())
