"""
The command line of the systemd unit C{etc/mdpy.service}, run as systemd
runs it: in the foreground, logging to standard output (the journal), in a
working directory it must not write to, stopped by SIGTERM.
"""

import signal
import subprocess

from tests.server import MdpyServer, twistdCommand, waitForBanner
from tests.test_service_unit import CONFIG, execStart


def test_serviceCommandLine(tmp_path):
    """
    The unit's C{ExecStart=} command, on a test configuration, serves mail,
    logs to standard output, leaves no pid file in its working directory,
    and stops cleanly on SIGTERM (C{systemctl stop}): twistd shuts the
    service down and then ends by the signal, which systemd counts as a
    clean exit (systemd.service(5), C{SuccessExitStatus=}), not a failure
    for C{Restart=on-failure}.
    """
    root = tmp_path / "server"
    root.mkdir()
    server = MdpyServer(root)
    argv = execStart()
    assert CONFIG in argv
    command = twistdCommand() + [server.config if arg == CONFIG else arg for arg in argv[1:]]
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        banner = waitForBanner(server.smtp, process=process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    log = output.decode()
    assert banner.startswith(b"220 mx.example.test "), banner
    assert process.returncode == -signal.SIGTERM, log
    assert "starting on %d" % (server.smtp,) in log
    assert "Server Shut Down." in log
    assert "Traceback" not in log, log
    assert list(workdir.iterdir()) == []
