"""
The command line of the systemd unit C{etc/mdpy.service}, run as systemd
runs it: in the foreground, with the unit's capabilities only, logging to
standard output (the journal), in a working directory it must not write to,
stopped by SIGTERM.
"""

import signal
import socket
import subprocess

from tests.server import HOST, MdpyServer, twistdCommand, waitForBanner
from tests.test_service_unit import CONFIG, execStart, service

CAP_NET_BIND_SERVICE = 10


def privilegedPort():
    """
    @return: a TCP port below 1024 free on loopback now.
    """
    for port in range(1000, 512, -1):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024")


def withUnitCapabilities():
    """
    @return: the C{setpriv(1)} command that runs a program as the unit does:
        no new privileges, and of the capabilities exactly the unit's
        bounding set, raised as ambient ones; uid 0 keeps no other
        (C{noroot}), so the program runs as any other user would.
    """
    unit = service()
    [bounding] = unit["CapabilityBoundingSet"]
    [ambient] = unit["AmbientCapabilities"]
    assert unit["NoNewPrivileges"] == ["yes"]

    def names(capabilities):
        return ",".join(
            "+" + name.lower().removeprefix("cap_") for name in capabilities.split())

    return [
        "setpriv", "--no-new-privs",
        "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked",
        "--bounding-set=-all," + names(bounding),
        "--inh-caps=-all," + names(ambient),
        "--ambient-caps=-all," + names(ambient),
        "--",
    ]


def effectiveCapabilities(pid):
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise AssertionError("no CapEff in /proc/%d/status" % (pid,))


def test_serviceCommandLine(tmp_path):
    """
    The unit's C{ExecStart=} command, on a test configuration and with the
    unit's capabilities (run by root, as the test suite is), serves mail on
    a port below 1024, holding no capability but C{CAP_NET_BIND_SERVICE};
    it logs to standard output, leaves no pid file in its working directory,
    and stops cleanly on SIGTERM (C{systemctl stop}): twistd shuts the
    service down and then ends by the signal, which systemd counts as a
    clean exit (systemd.service(5), C{SuccessExitStatus=}), not a failure
    for C{Restart=on-failure}.
    """
    root = tmp_path / "server"
    root.mkdir()
    server = MdpyServer(root, smtpPort=privilegedPort())
    argv = execStart()
    assert CONFIG in argv
    command = withUnitCapabilities() + twistdCommand() + [
        server.config if arg == CONFIG else arg for arg in argv[1:]]
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            banner = waitForBanner(server.smtp, process=process)
        except RuntimeError as e:
            raise AssertionError("%s: %s" % (e, process.communicate()[0].decode()[-3000:]))
        capabilities = effectiveCapabilities(process.pid)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    log = output.decode()
    assert banner.startswith(b"220 mx.example.test "), (banner, log)
    assert capabilities == 1 << CAP_NET_BIND_SERVICE, hex(capabilities)
    assert process.returncode == -signal.SIGTERM, log
    assert "starting on %d" % (server.smtp,) in log
    assert "Server Shut Down." in log
    assert "Traceback" not in log, log
    assert list(workdir.iterdir()) == []
