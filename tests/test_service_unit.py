"""
The systemd unit C{etc/mdpy.service}: systemd accepts it, and it runs
C{twistd mdpy} in the foreground as the user mdpy, with no capability but
binding ports below 1024 and no file system to write but the data directory.
"""

import configparser
import os
import shlex
import shutil
import subprocess

from twisted.scripts.twistd import ServerOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "etc", "mdpy.service")
INSTALLED_TWISTD = "/opt/mdpy/bin/twistd"
DATA_DIR = "/var/lib/mdpy"
CONFIG = "/etc/mdpy/mdpy.ini"


def parseUnit(text):
    """
    Parse a systemd unit file (systemd.syntax(7)): sections of C{Key=value}
    lines, C{#} and C{;} comments, a backslash at a line's end continuing it.

    @return: C{{section: {key: [value, ...]}}}, every value of a key that is
        given more than once, in order.
    """
    sections = {}
    current = None
    pending = ""
    for line in text.splitlines():
        line = pending + line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert equals and current is not None, "not a unit line: %r" % (line,)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def readUnit():
    with open(UNIT) as f:
        return f.read()


def service():
    return parseUnit(readUnit())["Service"]


def execStart():
    """
    @return: the argument vector of the unit's C{ExecStart=}.
    """
    [command] = service()["ExecStart"]
    return shlex.split(command)


def systemdAnalyze(tmp_path, text, *args):
    """
    Run C{systemd-analyze ARGS... UNIT} on C{text} saved as C{mdpy.service},
    its C{ExecStart=} pointing at the C{twistd} installed here (systemd
    checks that the program exists, and C{/opt/mdpy} is only where the
    documented installation puts it).

    @return: the completed process.
    """
    twistd = shutil.which("twistd")
    assert twistd, "twistd is not on PATH"
    assert INSTALLED_TWISTD in text
    path = tmp_path / "mdpy.service"
    path.write_text(text.replace(INSTALLED_TWISTD, twistd))
    return subprocess.run(
        ["systemd-analyze"] + list(args) + [str(path)],
        capture_output=True, text=True, timeout=120,
    )


def test_parseUnit():
    """
    L{parseUnit} keeps every value of a repeated key, skips comments and
    joins continued lines.
    """
    parsed = parseUnit(
        "# comment\n[Unit]\nAfter=a.target\nAfter=b.target\n; comment\n"
        "[Service]\nExecStart=/bin/prog \\\n  --flag\n"
    )
    assert parsed == {
        "Unit": {"After": ["a.target", "b.target"]},
        "Service": {"ExecStart": ["/bin/prog  --flag"]},
    }


def test_systemdAcceptsTheUnit(tmp_path):
    """
    C{systemd-analyze verify} finds nothing to say about the unit: no unknown
    key, no bad value, every program it runs exists.
    """
    done = systemdAnalyze(tmp_path, readUnit(), "verify")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "mdpy.service" not in output, output


def test_verifyReportsAnUnknownKey(tmp_path):
    """
    A key systemd does not know is reported by C{systemd-analyze verify}
    (which still exits 0), so L{test_systemdAcceptsTheUnit} would see it.
    """
    text = readUnit().replace("[Service]\n", "[Service]\nRestartt=always\n")
    done = systemdAnalyze(tmp_path, text, "verify")
    assert "Unknown key 'Restartt'" in done.stdout + done.stderr


def test_sandboxExposure(tmp_path):
    """
    C{systemd-analyze security} rates the sandbox's exposure at most 3.0 of 10
    (without the hardening options a service rates 9.6).
    """
    done = systemdAnalyze(tmp_path, readUnit(), "security", "--offline=yes", "--threshold=30")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Overall exposure level for mdpy.service" in done.stdout


def test_execStartRunsTwistdInTheForeground():
    """
    C{ExecStart=} runs the virtual environment's C{twistd} in the foreground
    (systemd watches the process itself) without a pid file (systemd knows the
    pid, and the working directory is read-only), on C{/etc/mdpy/mdpy.ini}:
    the command line twistd itself parses so.
    """
    argv = execStart()
    assert argv[0] == INSTALLED_TWISTD
    assert "--nodaemon" in argv and "--pidfile=" in argv
    options = ServerOptions()
    options.parseOptions(argv[1:])
    assert options["nodaemon"]
    assert options["pidfile"] == ""
    assert options["logfile"] is None
    assert options.subCommand == "mdpy"
    assert options.subOptions["config"] == CONFIG


def test_runsAsItsOwnUserWithOnlyTheBindCapability():
    """
    The service runs as user and group mdpy, whose only capability is to
    bind ports below 1024, and which can gain no other.
    """
    unit = service()
    assert unit["User"] == ["mdpy"]
    assert unit["Group"] == ["mdpy"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["NoNewPrivileges"] == ["yes"]


def test_writesOnlyItsDataDirectory():
    """
    The file system is read-only for the service but for its data
    directory, which systemd makes for the user mdpy; homes are hidden and
    C{/tmp} is its own.
    """
    unit = service()
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == [DATA_DIR]
    assert unit["StateDirectory"] == ["mdpy"]
    assert unit["WorkingDirectory"] == [DATA_DIR]
    assert unit["ConfigurationDirectory"] == ["mdpy"]
    assert unit["ProtectHome"] == ["yes"]
    assert unit["PrivateTmp"] == ["yes"]


def test_restartsOnFailureAndReloadsWithSIGHUP():
    """
    A crash restarts the service; C{systemctl reload} sends the server
    SIGHUP.
    """
    unit = service()
    assert unit["Restart"] == ["on-failure"]
    [reload] = unit["ExecReload"]
    assert shlex.split(reload) == ["/bin/kill", "-HUP", "$MAINPID"]


def test_startsWithTheNetworkAtBoot():
    """
    It starts once the network is up (an address configured in an
    C{interface} key must exist to be bound), at boot when enabled.
    """
    parsed = parseUnit(readUnit())
    assert "network-online.target" in parsed["Unit"]["After"]
    assert "network-online.target" in parsed["Unit"]["Wants"]
    assert parsed["Install"]["WantedBy"] == ["multi-user.target"]


def test_installedWithThePackage():
    """
    C{pip install} puts the unit in PREFIX/lib/systemd/system, a directory
    systemd reads for the prefix C{/usr/local}.
    """
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    dataFiles = config["options.data_files"]
    assert dataFiles["lib/systemd/system"].split() == ["etc/mdpy.service"]
