"""
End-to-end tests of the configuration: the C{mdpy} command and a real
C{twistd mdpy} find the same file and data, and refuse the same bad
configurations with the same line, before making anything.
"""

import os
import smtplib
import subprocess

import pytest

from tests.server import checkoutFirst, freePorts, makeMessage, mdpyCommand, twistdCommand, waitForBanner
from tests.test_configcheck import BAD_CONFIGURATIONS, writeBad

OTHER_SERVICES = ("submission", "smtps", "pop3", "pop3s", "imap", "imaps", "odmr", "minger", "multipop")



def environment(root):
    """
    @return: an environment where the configuration is looked for under
        C{root} only: C{etc/} stands for C{/etc}, C{xdg/} is
        C{$XDG_CONFIG_HOME}, and the embedded default's data would go to
        C{share/mdpy}.
    """
    environ = {key: value for key, value in os.environ.items()
               if key not in ("MDPY_CONFIG", "XDG_CONFIG_HOME", "XDG_DATA_HOME")}
    environ.update(HOME=os.path.join(root, "home"), MDPY_SYSCONFDIR=os.path.join(root, "etc"),
                   XDG_DATA_HOME=os.path.join(root, "share"))
    # The classes some configurations name are in this checkout's tests.
    environ["PYTHONPATH"] = checkoutFirst(os.environ.get("PYTHONPATH"))
    return environ


def mdpy(environ, *args):
    return subprocess.run(mdpyCommand() + list(args), capture_output=True, text=True, timeout=60, env=environ)


def serviceLines(smtpPort):
    """
    @return: C{{section: lines}}: SMTP alone on C{smtpPort} of loopback,
        its mail for other domains kept in the queue.
    """
    lines = {name: "enabled = no\n" for name in OTHER_SERVICES}
    lines["smtp"] = "port = %d\ninterface = 127.0.0.1\nauthentication_results = no\n" % (smtpPort,)
    lines["relay"] = "smarthost = 127.0.0.1:9\nsmarthost_tls = none\n"
    return lines


@pytest.mark.parametrize("where", ["MDPY_CONFIG", "XDG_CONFIG_HOME", "/etc"])
def test_commandAndServerUseOneConfiguration(tmp_path, where):
    """
    Found through C{$MDPY_CONFIG}, C{$XDG_CONFIG_HOME} or C{/etc/mdpy} (the
    last written by C{mdpy init} and edited), the configuration is the one
    C{mdpy check} names, the one the server logs at its start, and its
    data is shared: an account the command adds receives mail the server
    takes.
    """
    root = str(tmp_path)
    environ = environment(root)
    data = os.path.join(root, "data")
    [smtpPort] = freePorts(1)
    sections = serviceLines(smtpPort)
    if where == "/etc":
        path = os.path.join(root, "etc", "mdpy", "mdpy.ini")
        done = mdpy(environ, "init", "--hostname", "mx.example.test", "--domain", "example.test", "--data-dir", data)
        assert done.returncode == 0, done.stderr
        with open(path) as f:
            text = f.read()
        for name, lines in sections.items():
            text = text.replace("\n[%s]\n" % (name,), "\n[%s]\n%s" % (name, lines))
        assert mdpy(environ, "init").returncode == 1
    else:
        if where == "MDPY_CONFIG":
            path = os.path.join(root, "conf", "mail.ini")
            environ["MDPY_CONFIG"] = path
        else:
            environ["XDG_CONFIG_HOME"] = os.path.join(root, "xdg")
            path = os.path.join(root, "xdg", "mdpy", "mdpy.ini")
        os.makedirs(os.path.dirname(path))
        text = "[server]\nhostname = mx.example.test\ndomain = example.test\ndata_dir = %s\n" % (data,)
        text += "".join("[%s]\n%s" % item for item in sections.items())
    with open(path, "w") as f:
        f.write(text)
    done = mdpy(environ, "check")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "configuration ok: %s, data_dir %s\n" % (path, data)
    for command in (["domain", "add", "example.test"], ["user", "add", "bob@example.test", "--password", "pw-bob-12345"]):
        done = mdpy(environ, *command)
        assert done.returncode == 0, done.stderr
    log = os.path.join(root, "twistd.log")
    process = subprocess.Popen(twistdCommand() + ["-n", "--pidfile=", "--logfile", log, "mdpy"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environ)
    try:
        waitForBanner(smtpPort, process=process)
        with smtplib.SMTP("127.0.0.1", smtpPort, timeout=30) as client:
            client.sendmail("someone@remote.test", ["bob@example.test"], makeMessage("found"))
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    with open(log) as f:
        logged = f.read()
    assert "configuration: %s, data_dir %s" % (path, data) in logged
    assert "Traceback" not in logged + output
    assert len(os.listdir(os.path.join(data, "mail", "example.test", "bob", "new"))) == 1
    assert not os.path.exists(os.path.join(root, "share"))


def tree(root):
    return sorted(os.path.join(folder, name) for folder, folders, files in os.walk(root) for name in folders + files)


@pytest.mark.parametrize("name", sorted(BAD_CONFIGURATIONS))
def test_checkAndStartRefuseWithOneLine(tmp_path, name):
    """
    C{mdpy check} fails with one line on the bad configuration; C{twistd
    mdpy} stops with the same line and a non-zero status, and makes
    nothing.
    """
    path, expected = writeBad(tmp_path, name)
    environ = environment(str(tmp_path))
    done = mdpy(environ, "-c", path, "check")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("mdpy: error: " + expected) and done.stderr.count("\n") == 1, done.stderr
    line = done.stderr[len("mdpy: error: "):]
    before = tree(str(tmp_path))
    logs = tmp_path / "logs"
    logs.mkdir()
    started = subprocess.run(
        twistdCommand() + ["-n", "--pidfile=", "--logfile", str(logs / "twistd.log"), "mdpy", "--config", path],
        capture_output=True, text=True, timeout=60, env=environ)
    assert started.returncode != 0
    assert started.stdout + started.stderr == "twistd mdpy: " + line
    assert tree(str(tmp_path)) == sorted(before + [str(logs)])
