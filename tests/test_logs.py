"""
Tests of L{mdpy.logs}: the level, the filter of Twisted's chatter and the
log file C{twistd mdpy} writes.
"""

import os
import signal
import stat

import pytest
from twisted.application.service import Application
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger as TwistedLogger, LogLevel, PredicateResult
from twisted.python import log as legacyLog
from twisted.python.logfile import LogFile

from mdpy import logs
from mdpy.testing import capturedLogs


def eventsOf(emit):
    """
    @return: the events C{emit()} publishes.
    """
    with capturedLogs() as events:
        emit()
    return events


def kept(events):
    return [event for event in events if logs.quiet(event) != PredicateResult.no]


@pytest.fixture
def level():
    yield logs.setLevel
    logs.setLevel("info")


def test_factoryAndDNSChatterIsLeftOut():
    """
    The lines Twisted writes for each factory, protocol and DNS query are
    left out of the log: they carry object reprs and say nothing an
    administrator needs.
    """
    factory = Factory()
    chatter = eventsOf(lambda: (
        factory.doStart(),
        factory.doStop(),
        legacyLog.msg("Starting protocol <twisted.names.dns.DNSDatagramProtocol object at 0x7f8521179b90>"),
        legacyLog.msg("DNSDatagramProtocol starting on 25763"),
        legacyLog.msg("(UDP Port 25763 Closed)"),
    ))
    assert len(chatter) == 5
    assert kept(chatter) == []


def test_whatAdministratorsNeedIsKept():
    """
    Listening ports, mdpy's own lines and Twisted's warnings stay, whatever
    they say.
    """
    wanted = eventsOf(lambda: (
        legacyLog.msg("SMTPFactory starting on 25"),
        legacyLog.msg("(TCP Port 25 Closed)"),
        logs.Logger(namespace="mdpy.test").info("Starting factory <x object at 0x1>"),
        TwistedLogger(namespace="twisted.test").warn("Starting protocol <x object at 0x1>"),
    ))
    assert len(wanted) == 4
    assert kept(wanted) == wanted


def test_levelAppliesToTwistedToo(level):
    """
    Below C{[server] log_level} Twisted's own events are left out as
    mdpy's are.
    """
    level("warn")
    events = eventsOf(lambda: (
        legacyLog.msg("Received SIGTERM, shutting down."),
        TwistedLogger(namespace="twisted.test").warn("a warning"),
    ))
    assert [event.get("log_level") for event in kept(events)] == [LogLevel.warn]


def test_logFilePathFollowsTwistd():
    assert logs.logFilePath({"logfile": "/var/log/mdpy.log"}) == "/var/log/mdpy.log"
    assert logs.logFilePath({"logfile": ""}) == "twistd.log"  # a daemon's default
    assert logs.logFilePath({"logfile": "", "nodaemon": True}) is None  # standard output
    assert logs.logFilePath({"logfile": "-", "nodaemon": True}) is None
    assert logs.logFilePath({"logfile": "x.log", "syslog": True}) is None
    assert logs.logFilePath({"logfile": "x.log", "logger": "a.b"}) is None


def test_logFileIsCreatedPrivate(tmp_path):
    """
    A new log file is made 0640 whatever the umask, and the files Twisted
    makes when it rotates it keep that mode.
    """
    path = str(tmp_path / "mdpy.log")
    old = os.umask(0o022)
    try:
        logs.restrictLogFile(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        logFile = LogFile.fromFullPath(path)
        logFile.write("one\n")
        logFile.rotate()
        logFile.write("two\n")
        logFile.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(path + ".1").st_mode) == 0o640


@pytest.mark.parametrize("before, after", [(0o644, 0o640), (0o666, 0o640), (0o600, 0o600), (0o604, 0o600)])
def test_existingLogFileLosesWhatIsMoreThan0640(tmp_path, before, after):
    path = tmp_path / "mdpy.log"
    path.write_text("kept\n")
    os.chmod(path, before)
    logs.restrictLogFile(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == after
    assert path.read_text() == "kept\n"


def test_twistdLogGoesThroughTheFilter(tmp_path):
    """
    The application gets, as its log observer, the file observer twistd
    would make of its options, behind L{logs.quiet}.
    """
    previous = signal.getsignal(signal.SIGUSR1)  # twistd rotates the log on SIGUSR1
    path = str(tmp_path / "mdpy.log")
    application = Application("mdpy")
    old = os.umask(0o022)
    try:
        logs.logThroughFilter(application, {"logfile": path, "nodaemon": True})
    finally:
        os.umask(old)
        signal.signal(signal.SIGUSR1, previous)
    observer = application.getComponent(ILogObserver)
    for event in eventsOf(lambda: (
        Factory().doStart(),
        logs.Logger(namespace="mdpy.test").info("deliver: {id} status=stored", id="ID1"),
    )):
        observer(event)
    with open(path) as f:
        written = f.read()
    assert "deliver: ID1 status=stored" in written
    assert "object at 0x" not in written
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_standardOutputIsFilteredToo(capsys):
    """
    C{twistd -n} without C{--logfile} (as under systemd) writes to standard
    output, through the filter as well.
    """
    application = Application("mdpy")
    logs.logThroughFilter(application, {"logfile": "", "nodaemon": True})
    observer = application.getComponent(ILogObserver)
    for event in eventsOf(lambda: (
        Factory().doStart(),
        logs.Logger(namespace="mdpy.test").info("deliver: {id} status=stored", id="ID2"),
    )):
        observer(event)
    written = capsys.readouterr().out
    assert "deliver: ID2 status=stored" in written
    assert "object at 0x" not in written


def test_ownLoggerIsLeftAlone():
    application = Application("mdpy")
    logs.logThroughFilter(application, {"logger": "some.module.observer", "nodaemon": True})
    assert application.getComponent(ILogObserver) is None

