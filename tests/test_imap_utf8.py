"""
Transcript tests of IMAP UTF8=ACCEPT (RFC 6855) over an in-memory transport:
ENABLE, mailbox names in UTF-8 both ways once enabled (modified UTF-7
before), and APPEND of a C{UTF8 (~{n})} message.
"""

from tests.test_imap_server import Session

JAPANESE = "日本語"
JAPANESE_MUTF7 = "&ZeVnLIqe-"


def enabled():
    """
    @return: a logged-in L{Session} that ENABLEd UTF8=ACCEPT.
    """
    s = Session()
    s.login()
    s.send("e ENABLE UTF8=ACCEPT")
    s.expect("* ENABLED UTF8=ACCEPT", "e OK Enabled.")
    return s


def test_advertised_after_login_and_enabled_once():
    s = Session()
    assert "UTF8=ACCEPT" not in s.greeting[0]
    s.login()
    s.send("c CAPABILITY")
    assert " UTF8=ACCEPT" in s.lines()[0]
    s.send("e ENABLE UTF8=ACCEPT CONDSTORE")
    s.expect("* ENABLED UTF8=ACCEPT CONDSTORE", "e OK Enabled.")
    s.send("f ENABLE UTF8=ACCEPT")
    s.expect("* ENABLED", "f OK Enabled.")


def test_names_are_utf8_once_enabled_and_modified_utf7_before():
    modern = enabled()
    legacy = Session(store=modern.store)
    legacy.login()
    legacy.send("a CREATE " + JAPANESE_MUTF7)
    legacy.expect("a OK Create completed.")
    modern.send('b LIST "" "%s*"' % (JAPANESE[0],))
    modern.expect('* LIST (\\HasNoChildren) "/" "%s"' % (JAPANESE,), "b OK List completed.")
    # "&" stands for itself in a UTF-8 name.
    modern.send('c CREATE "R&D/%s"' % (JAPANESE,))
    modern.expect("c OK Create completed.")
    legacy.send('d LIST "" R*')
    legacy.expect('* LIST (\\HasChildren) "/" "R&-D"', '* LIST (\\HasNoChildren) "/" "R&-D/%s"' % (JAPANESE_MUTF7,),
                  "d OK List completed.")
    modern.send('e LIST "" "R&D/*"')
    modern.expect('* LIST (\\HasNoChildren) "/" "R&D/%s"' % (JAPANESE,), "e OK List completed.")
    modern.send('f STATUS "%s" (MESSAGES)' % (JAPANESE,))
    modern.expect('* STATUS "%s" (MESSAGES 0)' % (JAPANESE,), "f OK Status completed.")
    legacy.send("g STATUS %s (MESSAGES)" % (JAPANESE_MUTF7,))
    legacy.expect('* STATUS "%s" (MESSAGES 0)' % (JAPANESE_MUTF7,), "g OK Status completed.")


def test_select_copy_and_move_by_utf8_name():
    s = enabled()
    s.send('a CREATE "%s"' % (JAPANESE,), "b SELECT INBOX")
    s.lines()
    s.send('c COPY 1 "%s"' % (JAPANESE,))
    s.expect("c OK [COPYUID * 1 1] Copy completed.")
    s.send('d SELECT "%s"' % (JAPANESE,))
    assert "* 1 EXISTS" in s.lines()


def test_append_utf8_message():
    s = enabled()
    message = "Subject: Grüße aus 日本\r\nFrom: jörg@example.test\r\n\r\nBody\r\n".encode("utf-8")
    s.sendRaw(b"a APPEND INBOX (\\Seen) UTF8 (~{%d}\r\n" % (len(message),))
    s.expect("+ OK")
    s.sendRaw(message + b")\r\n")
    s.expect("a OK [APPENDUID * 4] Append completed.")
    s.send("b SELECT INBOX")
    s.lines()
    s.send("c FETCH 4 (FLAGS BODY.PEEK[])")
    [first, *rest] = s.lines()
    assert first == "* 4 FETCH (FLAGS (\\Seen \\Recent) BODY[] {%d}" % (len(message),)
    assert "\r\n".join(rest).encode("utf-8").startswith(message)
    # Quoted strings carry UTF-8 (RFC 6855 section 3).
    s.send('d SEARCH SUBJECT "Grüße aus 日本"')
    s.expect("* SEARCH 4", "d OK Search completed.")


def test_append_utf8_without_enable_or_malformed_is_bad():
    s = Session()
    s.login()
    s.sendRaw(b"a APPEND INBOX UTF8 (~{4}\r\n")
    s.expect("+ OK")
    s.sendRaw(b"Hi\r\n)\r\n")
    s.expect("a BAD Error in IMAP command APPEND: UTF8 needs ENABLE UTF8=ACCEPT.")
    s.send("e ENABLE UTF8=ACCEPT")
    s.lines()
    s.sendRaw(b"b APPEND INBOX UTF8 ({4}\r\n")
    s.expect("+ OK")
    s.sendRaw(b"Hi\r\n)\r\n")
    s.expect("b BAD Error in IMAP command APPEND: Expected UTF8 (~{n}message).")
    s.send("c STATUS INBOX (MESSAGES)")
    s.expect("* STATUS \"INBOX\" (MESSAGES 3)", "c OK Status completed.")
