"""Run a private, throw-away Postfix instance for benchmarks.

The instance lives entirely in a temporary directory: its own
config_directory (main.cf and master.cf written here), queue_directory,
data_directory, virtual Maildir base and log file.  It listens only on
127.0.0.1:<port> (or on the loopback address ``interface``) and
delivers ``user@bench.test`` (and any other users given) to
``<tmp>/vmail/bench.test/<user>/`` as a Maildir through the virtual(8)
delivery agent; ``aliases`` adds virtual aliases (to relay
mail on, e.g. through a ``relayhost`` given in ``settings``, which adds
or overrides main.cf parameters).  The system Postfix (/etc/postfix,
/var/spool/postfix) is neither read for configuration nor modified, and it
does not need to be running.

Must run as root (Postfix's master(8) is started by root and drops
privileges to ``mail_owner``); needs the ``postfix`` user that the
distribution package creates, and a non-privileged user (default
``nobody``) to own the delivered mail.

Used by ``bench/smtp_bench.py`` and ``bench/relay_bench.py``; can also be
run on its own to get a private Postfix to poke at::

    python bench/postfix.py [--port N] [--keep]

which starts the instance, prints its port and Maildir, and stops and
removes it on Ctrl-C.
"""

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from common import (DOMAIN, BenchError, TemporaryServer, free_port,  # noqa: E402
                    log_tail, proc_pids, proc_stat, run_command,
                    serve_until_interrupted, system_user, unsearchable_dir,
                    wait_for_greeting, which, write_file)

__all__ = ["PostfixError", "PrivatePostfix"]

# master.cf: every service unchrooted (the chroot would have to be populated),
# smtpd only on the private loopback address and port.
MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
# Private benchmark instance written by bench/postfix.py -- not /etc/postfix.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = {mail_owner}
syslog_name = postfix-bench
maillog_file = {maillog}
maillog_file_prefixes = {base}

myhostname = {myhostname}
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = {process_limit}
biff = no

virtual_mailbox_domains = {domain}
virtual_mailbox_base = {vmail}
virtual_mailbox_maps = texthash:{vmailbox}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
# fsync and queue behaviour: Postfix defaults (the queue file is fsynced
# before the 250 reply to DATA).
"""


def _override(main_cf, settings):
    """main_cf with each parameter of settings ({name: value}) set: its
    line replaced where main_cf has one, else added at the end."""
    for name, value in settings.items():
        line = "%s = %s" % (name, value)
        main_cf, found = re.subn(r"(?m)^%s[ \t]*=.*$" % re.escape(name),
                                 lambda m: line, main_cf)
        if not found:
            main_cf += line + "\n"
    return main_cf


class PostfixError(BenchError):
    """A one-line, user-facing failure of the private Postfix instance."""


def _which(name):
    return which(name, "install the postfix package", PostfixError)


def _run(argv, timeout=60, check=True):
    return run_command(argv, PostfixError, timeout=timeout, check=check)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def _pids_with_mail_config(config_dir):
    """PIDs of processes whose environment has MAIL_CONFIG=config_dir.

    master(8) exports MAIL_CONFIG to every daemon it spawns, so this finds
    exactly the processes belonging to this instance.
    """
    needle = b"MAIL_CONFIG=" + os.fsencode(config_dir)
    pids = []
    for pid in proc_pids():
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            pids.append(pid)
    return [p for p in pids if p != os.getpid()]


class PrivatePostfix(TemporaryServer):
    """A private Postfix in a temporary directory; use as a context manager.

    >>> with PrivatePostfix() as pf:
    ...     pf.port, pf.maildir("user")
    """

    def __init__(self, port=None, domain=DOMAIN, users=("user",),
                 vmail_user="nobody", base_dir=None, keep=False,
                 process_limit=100, start_timeout=30, aliases=None,
                 settings=None, interface="127.0.0.1"):
        if os.geteuid() != 0:
            raise PostfixError("a private Postfix must be started as root")
        self.postfix = _which("postfix")
        self.postconf = _which("postconf")
        self.domain = domain
        self.users = tuple(users)
        self.interface = interface
        self.port = port or free_port(interface)
        self.keep = keep
        self.process_limit = process_limit
        self.aliases = dict(aliases or {})
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.started = False
        pw = system_user("postfix", PostfixError,
                         "system user %r is missing (install postfix)")
        self.mail_owner = pw.pw_name
        self.postfix_uid = pw.pw_uid
        vpw = system_user(vmail_user, PostfixError,
                          "mail owner user %r does not exist")
        self.vmail_uid, self.vmail_gid = vpw.pw_uid, vpw.pw_gid
        self._check_version()

        self.base = os.path.realpath(
            base_dir or tempfile.mkdtemp(prefix="mdpy-bench-postfix-"))
        self.config_dir = os.path.join(self.base, "etc")
        self.queue_dir = os.path.join(self.base, "queue")
        self.data_dir = os.path.join(self.base, "data")
        self.vmail = os.path.join(self.base, "vmail")
        self.maillog = os.path.join(self.base, "maillog")
        # Unix sockets live in queue/private.
        self._check_base(base_dir,
                         os.path.join(self.queue_dir, "private", "proxywrite"),
                         "Postfix", PostfixError,
                         lambda: self._check_traversable(self.base))

    # ----------------------------------------------------------------- setup

    def _check_version(self):
        version = _run([self.postconf, "-dh", "mail_version"]).strip()
        try:
            major, minor = (int(x) for x in version.split(".")[:2])
        except ValueError:
            raise PostfixError("cannot parse Postfix version %r" % version)
        if (major, minor) < (3, 4):
            raise PostfixError("Postfix %s is too old: maillog_file needs 3.4+"
                               % version)
        self.version = version

    def _check_traversable(self, path):
        # The virtual(8) agent runs as vmail_user and must reach vmail/.
        parent = unsearchable_dir(os.path.dirname(path))
        if parent:
            raise PostfixError("%s is not world-searchable, so Postfix "
                               "cannot deliver below it (set TMPDIR=/tmp)"
                               % parent)

    def _write_config(self):
        os.chmod(self.base, 0o755)
        for d in (self.config_dir, self.queue_dir, self.data_dir, self.vmail):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        os.chown(self.data_dir, self.postfix_uid, -1)
        os.chown(self.vmail, self.vmail_uid, self.vmail_gid)
        vmailbox = os.path.join(self.config_dir, "vmailbox")
        write_file(vmailbox, "".join(
            "%s@%s %s/%s/\n" % (u, self.domain, self.domain, u)
            for u in self.users))
        main_cf = MAIN_CF.format(
            queue=self.queue_dir, data=self.data_dir, mail_owner=self.mail_owner,
            maillog=self.maillog, base=self.base,
            myhostname="postfix." + self.domain, domain=self.domain,
            vmail=self.vmail, vmailbox=vmailbox, uid=self.vmail_uid,
            gid=self.vmail_gid, process_limit=self.process_limit)
        settings = dict(self.settings)
        if self.aliases:
            virtual = os.path.join(self.config_dir, "virtual")
            write_file(virtual, "".join(
                "%s %s\n" % item for item in self.aliases.items()))
            settings.setdefault("virtual_alias_maps", "texthash:" + virtual)
        write_file(os.path.join(self.config_dir, "main.cf"),
                   _override(main_cf, settings))
        # Only master.cf names interface: main.cf's inet_interfaces stays
        # 127.0.0.1, since "postfix check" refuses an address such as
        # 127.0.0.4 that no network interface carries.
        write_file(os.path.join(self.config_dir, "master.cf"), MASTER_CF.format(
            listen="%s:%d" % (self.interface, self.port)))
        open(self.maillog, "a").close()

    # ------------------------------------------------------------- lifecycle

    def start(self):
        """Write the configuration, create the queue and start master(8)."""
        self._write_config()
        # 'check' creates the queue directories with the right owners (via
        # post-install create-missing) and validates main.cf/master.cf.
        _run([self.postfix, "-c", self.config_dir, "check"])
        self.started = True      # from here on, stop() must run
        try:
            _run([self.postfix, "-c", self.config_dir, "start"])
        except PostfixError as e:
            raise PostfixError("%s; maillog: %s" % (e, self.log_tail(3)))
        try:
            wait_for_greeting(self.interface, self.port, self.start_timeout,
                              alive=self._dead, what="Postfix", error=PostfixError)
        except (TimeoutError, BenchError) as e:
            raise PostfixError("%s; maillog: %s" % (e, self.log_tail(3)))
        return self

    def master_pid(self):
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _dead(self):
        pid = self.master_pid()
        if pid is not None and not _pid_alive(pid):
            return "master pid %d is gone" % pid
        return None

    def stop(self, timeout=30):
        """Stop master(8) and every daemon of this instance; never raises."""
        if not self.started:
            return
        self.started = False
        errors = []
        if self.master_pid() is not None and _pid_alive(self.master_pid()):
            try:
                _run([self.postfix, "-c", self.config_dir, "stop"], timeout=timeout)
            except PostfixError as e:
                errors.append(str(e))
        # master(8) exits first; its children follow when they notice.  Wait
        # for all of them, then kill what is left (only this instance's pids).
        deadline = time.monotonic() + timeout
        pids = _pids_with_mail_config(self.config_dir)
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = self._daemons()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._daemons()
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            if pids:
                time.sleep(1)
        if errors:
            print("warning: " + "; ".join(errors), file=sys.stderr)

    def _daemons(self):
        return [p for p in _pids_with_mail_config(self.config_dir)
                if _pid_alive(p)]

    # --------------------------------------------------------------- queries

    def maildir(self, user="user"):
        return os.path.join(self.vmail, self.domain, user)

    def reset_maildir(self, user="user"):
        """Remove user's Maildir; virtual(8) recreates it on next delivery."""
        shutil.rmtree(self.maildir(user), ignore_errors=True)

    def queue_count(self):
        """Messages still in the queue (incoming, active, deferred, hold)."""
        n = 0
        for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
            for _root, _dirs, files in os.walk(os.path.join(self.queue_dir, sub)):
                n += len(files)
        return n

    def queue_listing(self):
        """What ``postqueue -p`` says of this instance's queue ("Mail queue
        is empty" when it is)."""
        return _run([_which("postqueue"), "-c", self.config_dir, "-p"],
                    timeout=30, check=False)

    def log_tail(self, n=20):
        return log_tail(self.maillog, n, "(no maillog)")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run a private Postfix on 127.0.0.1 "
                                 "until interrupted.")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary directory afterwards")
    args = ap.parse_args(argv)
    return serve_until_interrupted(
        lambda: PrivatePostfix(port=args.port, keep=args.keep),
        lambda pf: ["Postfix %s on 127.0.0.1:%d" % (pf.version, pf.port),
                    "  config:  %s" % pf.config_dir,
                    "  maildir: %s" % pf.maildir("user"),
                    "  maillog: %s" % pf.maillog],
        lambda pf: "master exited", PostfixError)


if __name__ == "__main__":
    sys.exit(main())
