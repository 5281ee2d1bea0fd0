"""
End-to-end tests of what a configuration plugs in, on a real C{twistd
mdpy}: C{[smtp] factory} and C{[smtp] checks} naming the classes of
L{tests.plugins}, and C{mdpy check} on a factory that cannot be imported.
"""

import email
import email.policy
import os
import smtplib

import pytest

from tests.server import MdpyServer, checkoutFirst, makeMessage

USER = "joe@example.test"


def test_configuredFactoryAndCheckOnPort25(tmp_path, monkeypatch):
    """
    A real C{twistd mdpy} with C{[smtp] factory} and C{checks} naming the
    classes of L{tests.plugins}: port 25 offers and answers XHELLO (the
    submission port, with the built-in factory, does not), refuses at the
    end of the message what the check refuses, with the check's reply, and
    stores the rest with the check's header.
    """
    monkeypatch.setenv("PYTHONPATH", checkoutFirst(os.environ.get("PYTHONPATH")))
    server = MdpyServer(tmp_path, smtpExtra=(
        "factory = tests.plugins:XSMTPServerFactory\nchecks = tests.plugins:RejectSubjectCheck\n"))
    for args in (("domain", "add", "example.test"), ("user", "add", USER, "--password", "joe-secret")):
        done = server.cli(*args)
        assert done.returncode == 0, done.stderr
    server.start()
    try:
        with smtplib.SMTP(server.host, server.smtp, timeout=30) as client:
            client.ehlo("client.test")
            assert client.has_extn("xhello")
            assert client.docmd("XHELLO", "tester") == (250, b"2.0.0 hello tester from XSMTPServer")
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("alice@remote.test", [USER], makeMessage("reject me"))
            assert (refused.value.smtp_code, refused.value.smtp_error) == (
                550, b"5.7.1 Refused by the subject check: the subject says so")
            assert client.sendmail("alice@remote.test", [USER], makeMessage("keep me")) == {}
        [raw] = server.messages(USER)
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        assert (message["Subject"], message["X-Checked"]) == ("keep me", "yes")
        assert message["Authentication-Results"] is None
        with smtplib.SMTP(server.host, server.submission, timeout=30) as client:
            client.ehlo("client.test")
            assert not client.has_extn("xhello")
            assert client.docmd("XHELLO")[0] == 500
        assert "Traceback" not in server.logText()
    finally:
        server.stop()


def test_mdpyCheckNamesAFactoryThatCannotBeImported(tmp_path):
    server = MdpyServer(tmp_path, smtpExtra="factory = no.such:Thing\n")
    done = server.cli("check")
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr == "mdpy: error: %s: [smtp] factory = no.such:Thing: cannot import no.such: " \
                          "No module named 'no'\n" % (server.config,)
