"""
Run a real C{twistd mdpy} on loopback for end-to-end tests.
"""

import itertools
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"


def freePorts(count):
    """
    @return: C{count} TCP ports free on loopback now.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


_accounts = itertools.count(1)
_messages = itertools.count(1)


def newAccount(server, name="user"):
    """
    Add a fresh account to the running C{server} with the C{mdpy} command.

    @return: C{(address, password)}.
    """
    address = "%s%d@example.test" % (re.sub(r"[^a-z0-9]", "", name.lower())[:30], next(_accounts))
    password = "pw-%s-secret" % (address.split("@")[0],)
    done = server.cli("user", "add", address, "--password", password)
    assert done.returncode == 0, done.stderr
    for sub in ("tmp", "new", "cur"):
        os.makedirs(server.maildir(address, sub), exist_ok=True)
    return address, password


def makeMessage(subject, body=b"hello\r\n", headers=b"", date=False, sender="sender@remote.test"):
    """
    @param date: whether the message has a C{Date} header.
    @param sender: the address of its C{From} field (an account's own, for
        mail submitted with its login).
    @return: a message with CRLF line ends and a unique Message-ID.
    """
    if isinstance(subject, str):
        subject = subject.encode()
    return (
        b"From: Sender <" + sender.encode() + b">\r\n"
        b"To: someone@example.test\r\n"
        b"Subject: " + subject + b"\r\n"
        + (b"Date: Tue, 02 Jan 2024 03:04:05 +0000\r\n" if date else b"")
        + b"Message-ID: <%d.%d@remote.test>\r\n" % (os.getpid(), next(_messages))
        + headers
        + b"\r\n"
        + body
    )


CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkoutFirst(path=None):
    """
    @param path: a C{PYTHONPATH} value, or L{None}.
    @return: C{path} with this checkout in front, so that the subprocesses
        of a test (C{twistd}, C{mdpy}) can import classes of the tests that
        a configuration names (C{tests.plugins:...}), also when mdpy itself
        is installed.
    """
    return os.pathsep.join(filter(None, [CHECKOUT, path]))


def twistdCommand():
    twistd = shutil.which("twistd")
    return [twistd] if twistd else [sys.executable, "-m", "twisted"]


def mdpyCommand():
    mdpy = shutil.which("mdpy")
    return [mdpy] if mdpy else [sys.executable, "-m", "mdpy.cli"]


def waitUntil(condition, timeout=30.0, what="condition"):
    """
    Poll C{condition} until it holds.

    @raise AssertionError: it did not within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def waitForBanner(port, timeout=30.0, process=None, host=HOST):
    """
    Wait until C{port} answers with an SMTP/POP3/IMAP greeting.

    @return: the greeting line.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError("server exited with %s" % (process.returncode,))
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                return s.recv(1024)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d did not answer" % (port,))


def readTerminal(master, deadline, prompt=None, answer=None):
    """
    Read what a program prints on the pseudo-terminal C{master} until it
    closes its end or C{deadline} (a C{time.monotonic()} value) passes.

    @param prompt: bytes after which C{answer} (bytes) is typed, once.
    @return: everything read.
    """
    output = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if not ready:
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not data:
            break
        output += data
        if prompt is not None and prompt in output:
            os.write(master, answer + b"\n")
            prompt = None
    return output


def runningServer(root, **options):
    """
    Run an L{MdpyServer} with the domain C{example.test} for a module
    fixture (C{yield from runningServer(...)}): it is yielded once its IMAP
    port answers, then stopped, and its log must hold no traceback.

    @param options: keyword arguments of L{MdpyServer}.
    """
    server = MdpyServer(root, **options)
    done = server.cli("domain", "add", "example.test")
    assert done.returncode == 0, done.stderr
    server.start()
    waitForBanner(server.imap, process=server.process)
    yield server
    server.stop()
    log = server.logText()
    assert "Traceback" not in log, log[-5000:]


class MdpyServer:
    """
    A configuration in a temporary folder, the C{mdpy} command on it, and a
    C{twistd -n mdpy} process.
    """

    domain = "example.test"

    def __init__(self, root, extra="", pop3Extra="", imapExtra="", imapsExtra="",
                 smtpExtra="authentication_results = no\n", interface=HOST, smtpPort=None,
                 relayExtra="smarthost = 127.0.0.1:9\nsmarthost_tls = none\n",
                 domain=None, odmrExtra=None, mingerExtra=None, serverExtra="", dataDir=None,
                 workers=1):
        """
        @param extra: sections appended to the configuration.
        @param serverExtra: lines added to its C{[server]} section.
        @param smtpExtra: lines of its C{[smtp]} section; by default the
            inbound SPF/DKIM checks are off, so no test waits for DNS.
        @param interface: the loopback address it listens on; L{None}
            writes no C{interface} key, so that every listener takes the
            default (every address: C{::} with IPv4 mapped), reached at
            L{HOST}.
        @param smtpPort: the port of its C{[smtp]} listener; default: a
            free one.
        @param relayExtra: lines of its C{[relay]} section; by default mail
            for other domains goes to a smarthost that refuses connections,
            so it stays queued and no test depends on outside DNS.
        @param pop3Extra: lines added to its C{[pop3]} section, e.g.
            C{"allow_plaintext_auth = yes\\n"}.
        @param imapExtra: lines added to its C{[imap]} section, e.g.
            C{"max_message_size = 1M\\n"}.
        @param imapsExtra: lines added to its C{[imaps]} section.
        @param domain: its C{[server] domain} (default L{domain}).
        @param odmrExtra: lines of its C{[odmr]} section, which is enabled on
            a free port only when given.
        @param mingerExtra: lines of its C{[minger]} section, likewise.
        @param dataDir: its C{data_dir}; default: C{data} in C{root}.
        @param workers: its C{[server] workers}: by default one process
            serves everything.
        """
        if domain is not None:
            self.domain = domain
        self.root = str(root)
        self.dataDir = os.path.join(self.root, "data") if dataDir is None else str(dataDir)
        self.config = os.path.join(self.root, "mdpy.ini")
        self.log = os.path.join(self.root, "mdpy.log")
        self._extra = dict(
            extra=extra,
            pop3Extra=pop3Extra,
            imapExtra=imapExtra,
            imapsExtra=imapsExtra,
            smtpExtra=smtpExtra,
            relayExtra=relayExtra,
            interface=interface,
            odmrExtra=odmrExtra,
            mingerExtra=mingerExtra,
            serverExtra=serverExtra,
            workers=workers,
        )
        self.host = HOST if interface is None else interface
        self._smtpPort = smtpPort
        self._choosePorts()
        self.process = None

    def _choosePorts(self):
        """
        Take free ports for every listener and write the configuration.
        """
        (
            self.smtp, self.submission, self.smtps, self.pop3, self.pop3s, self.imap, self.imaps,
            self.odmr, self.minger,
        ) = freePorts(9)
        if self._smtpPort is not None:
            self.smtp = self._smtpPort
        with open(self.config, "w") as f:
            f.write(
                "[server]\nhostname = mx.%(domain)s\ndomain = %(domain)s\n"
                "data_dir = %(dataDir)s\nworkers = %(workers)d\n%(serverExtra)s"
                "[smtp]\nport = %(smtp)d\n%(interface)s%(smtpExtra)s"
                "[submission]\nport = %(submission)d\n%(interface)s"
                "[smtps]\nport = %(smtps)d\n%(interface)s"
                "[pop3]\nport = %(pop3)d\n%(interface)s%(pop3Extra)s"
                "[pop3s]\nport = %(pop3s)d\n%(interface)s"
                "[imap]\nport = %(imap)d\n%(interface)s%(imapExtra)s"
                "[imaps]\nport = %(imaps)d\n%(interface)s%(imapsExtra)s"
                "[odmr]\n%(odmrSection)s"
                "[minger]\n%(mingerSection)s"
                "[relay]\n%(relayExtra)s"
                % dict(
                    self._extra,
                    interface=self._interfaceLine(),
                    domain=self.domain,
                    dataDir="data" if self.dataDir == os.path.join(self.root, "data") else self.dataDir,
                    smtp=self.smtp,
                    submission=self.submission,
                    smtps=self.smtps,
                    pop3=self.pop3,
                    pop3s=self.pop3s,
                    imap=self.imap,
                    imaps=self.imaps,
                    odmrSection=self._optional("odmr", self.odmr),
                    mingerSection=self._optional("minger", self.minger),
                )
                + self._extra["extra"]
            )

    def _interfaceLine(self):
        interface = self._extra["interface"]
        return "" if interface is None else "interface = %s\n" % (interface,)

    def _optional(self, name, port):
        extra = self._extra[name + "Extra"]
        if extra is None:
            return "enabled = no\n"
        return "port = %d\n%s%s" % (port, self._interfaceLine(), extra)

    def cli(self, *args, input=None):
        """
        Run C{mdpy -c CONFIG args...}.  @return: the completed process.
        """
        return subprocess.run(
            mdpyCommand() + ["-c", self.config] + list(args),
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self, attempts=3):
        """
        Start C{twistd} and wait for its SMTP greeting.  Should another
        program take one of the ports between L{freePorts} and the bind,
        try again on fresh ports.
        """
        for attempt in range(attempts):
            logged = len(self.logText())
            self.process = subprocess.Popen(
                twistdCommand()
                + ["-n", "--pidfile=", "--logfile", self.log, "mdpy", "--config", self.config],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                waitForBanner(self.smtp, process=self.process, host=self.host)
                return self
            except RuntimeError:
                self.stop()
                log = self.logText()[logged:]
                if "cannot listen on port" not in log or attempt == attempts - 1:
                    raise AssertionError(log[-3000:])
                self._choosePorts()

    def logText(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def kill(self):
        """
        C{kill -9} the server.
        """
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None and self.process.stdout:
            self.process.stdout.close()

    def maildir(self, address, folder=""):
        local, domain = address.split("@")
        return os.path.join(self.dataDir, "mail", domain, local, folder)

    def messages(self, address):
        """
        @return: the bytes of each message in the INBOX, oldest first.
            A message the server moves from C{new/} to C{cur/} (or renames
            for a flag change) while it is read is looked for again.
        """
        for attempt in itertools.count(1):
            try:
                return self._readMessages(address)
            except FileNotFoundError:
                if attempt >= 20:
                    raise
                time.sleep(0.05)

    def _readMessages(self, address):
        base = self.maildir(address)
        found = []
        for sub in ("new", "cur"):
            directory = os.path.join(base, sub)
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                found.append((os.stat(path).st_mtime_ns, _nameOrder(name), path))
        result = []
        for _, _, path in sorted(found):
            with open(path, "rb") as f:
                result.append(f.read())
        return result


def _nameOrder(name):
    """
    @return: what orders Maildir base names of one process by when they
        were made: the file system stamps times only to the kernel's tick,
        so messages written within one tick are told apart by the seconds,
        microseconds and counter in their names, compared as numbers.
    """
    match = re.match(r"(\d+)\.M(\d+)P\d+Q(\d+)\.", name)
    if match is None:
        return (0, 0, 0, name)
    return tuple(int(part) for part in match.groups()) + (name,)


class OtherProcess:
    """
    Another process on the same data directory: a Python running
    C{script} with the files backend of C{data} as C{backend}; it prints
    C{ready} when the script has run, then waits to be killed.
    """

    def __init__(self, data, script):
        self.process = subprocess.Popen(
            [sys.executable, "-c",
             "import sys\n"
             "from mdpy.backends.files import FilesBackend\n"
             "backend = FilesBackend(sys.argv[1])\n"
             + script +
             "\nprint('ready', flush=True)\n"
             "sys.stdin.read()\n",
             str(data)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=checkoutFirst(os.environ.get("PYTHONPATH"))),
        )
        self.output = []  # the lines it printed before "ready"
        for line in self.process.stdout:
            if line == b"ready\n":
                break
            self.output.append(line.decode().strip())
        else:
            raise AssertionError("the other process failed: %r" % (self.output,))

    def kill(self):
        """
        Kill it at once (C{kill -9}): nothing of it runs again.
        """
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.process.stdin.close()
        self.process.stdout.close()
