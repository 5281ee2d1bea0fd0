"""
Transcript tests of L{mdpy.imap.server} over an in-memory transport and the
in-memory store.
"""

import base64
import fnmatch
import os

import pytest
from twisted.internet import defer, task

from mdpy.auth.checkers import FailedLoginTracker
from mdpy.errors import TemporaryFailure
from mdpy.imap.server import IMAP4Factory
from mdpy.backends.memory import MemoryMessage, MemoryStore, recordReads
from mdpy.testing import Transcript, memoryPortal, resultOf, synchronousRunner

TLS = object()
USER = "joe@example.test"

MESSAGES = [
    b"From: Ann <ann@example.test>\r\nTo: joe@example.test\r\nSubject: one\r\n"
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <1@example.test>\r\n\r\nfirst\r\n",
    b"From: bob@example.test\r\nTo: joe@example.test\r\nSubject: two\r\n\r\nsecond body\r\n",
    b"From: carl@example.test\r\nSubject: three\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain\r\n\r\npart one\r\n--XX\r\nContent-Type: text/html\r\n\r\n"
    b"<p>two</p>\r\n--XX--\r\n",
]


def filledStore(messages=MESSAGES):
    store = MemoryStore()
    store.createAccount(USER)
    store.createAccount("ann@example.test")
    for data in messages:
        store.deliver([(USER, "INBOX", [data])])
    # An earlier session was told of them: they are not \Recent.
    resultOf(store.openMailbox(USER).claimRecent())
    return store


class Session:
    def __init__(self, store=None, tls=True, plaintext=False, implicit=False, tracker=False,
                 factory=None, maxMessageSize=1000000, **options):
        self.clock = task.Clock()
        self.store = store if store is not None else filledStore()
        self.factory = factory or IMAP4Factory(
            "mx.example.test",
            self.store,
            allowPlaintext=plaintext,
            portal=memoryPortal(**{USER: "secret", "ann@example.test": "pw"}),
            tlsOptions=TLS if tls else None,
            implicitTLS=implicit,
            loginTracker=FailedLoginTracker(self.clock) if tracker else None,
            clock=self.clock,
            maxMessageSize=maxMessageSize,
            **options,
        )
        self.t = Transcript(self.factory.buildProtocol(None))
        self.greeting = self.t.lines()

    def __getattr__(self, name):
        return getattr(self.t, name)

    def raw(self):
        data = self.t.transport.value()
        self.t.transport.clear()
        return data

    def login(self, user=USER, password="secret"):
        self.send("s STARTTLS")
        self.expect("s OK Begin TLS negotiation now.")
        self.send("l LOGIN %s %s" % (user, password))
        self.expect("l OK [CAPABILITY *] Logged in.")

    def select(self, name="INBOX"):
        self.login()
        self.send("x SELECT " + name)
        return self.lines()


def twoSessions():
    """
    @return: a filled store and two sessions with its INBOX selected.
    """
    store = filledStore()
    one, two = Session(store=store), Session(store=store)
    one.select()
    two.select()
    return store, one, two


# --- greeting, capabilities, login --------------------------------------------


def test_greeting_before_tls_disables_login():
    s = Session()
    [line] = s.greeting
    assert line.startswith("* OK [CAPABILITY IMAP4rev1 ")
    assert "STARTTLS" in line and "LOGINDISABLED" in line and "AUTH=" not in line
    s.send("a LOGIN joe@example.test secret")
    s.expect("a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections.")


def test_capabilities_after_tls_and_login():
    s = Session()
    s.send("a STARTTLS")
    s.expect("a OK Begin TLS negotiation now.")
    s.send("b CAPABILITY")
    [caps, ok] = s.lines()
    assert "AUTH=PLAIN" in caps and "STARTTLS" not in caps and "LOGINDISABLED" not in caps
    assert ok == "b OK Capability completed."
    s.send("c LOGIN joe@example.test secret")
    [line] = s.lines()
    for extension in ("IDLE", "UIDPLUS", "MOVE", "NAMESPACE", "ID", "ENABLE", "UNSELECT", "CHILDREN",
                      "LIST-EXTENDED", "SPECIAL-USE", "LITERAL+", "SASL-IR", "ESEARCH", "CONDSTORE"):
        assert " " + extension + " " in line or line.endswith(extension + "] Logged in.")


def test_starttls_discards_pipelined_commands():
    s = Session()
    s.sendRaw(b"a STARTTLS\r\nb LOGIN joe@example.test secret\r\n")
    s.expect("a OK Begin TLS negotiation now.")
    s.send("c NOOP")
    s.expect("c OK NOOP completed.")


def test_starttls_twice_is_refused():
    s = Session(implicit=True)
    s.send("a STARTTLS")
    s.expect("a BAD TLS is already active.")


def test_plaintext_allowed_when_configured():
    s = Session(tls=False, plaintext=True)
    assert "AUTH=PLAIN" in s.greeting[0] and "STARTTLS" not in s.greeting[0]
    s.send("a LOGIN joe@example.test secret")
    s.expect("a OK [CAPABILITY *] Logged in.")


def test_login_failure():
    s = Session()
    s.send("s STARTTLS")
    s.lines()
    s.send('a LOGIN "joe@example.test" "wrong"')
    s.expect("a NO [AUTHENTICATIONFAILED] Authentication failed.")


def test_failed_login_is_delayed():
    s = Session(tracker=True)
    s.send("s STARTTLS")
    s.lines()
    s.send("a LOGIN joe@example.test wrong", "b NOOP")
    s.expect()
    s.clock.advance(2)
    s.expect("a NO [AUTHENTICATIONFAILED] Authentication failed.", "b OK NOOP completed.")


def test_authenticate_plain_with_initial_response():
    s = Session(implicit=True)
    token = base64.b64encode(b"\0joe@example.test\0secret").decode()
    s.send("a AUTHENTICATE PLAIN " + token)
    s.expect("a OK [CAPABILITY *] Logged in.")


def test_authenticate_plain_with_continuation_and_cancel():
    s = Session(implicit=True)
    s.send("a AUTHENTICATE PLAIN")
    s.expect("+ ")
    s.send("*")
    s.expect("a BAD Authentication aborted by client.")
    s.send("b AUTHENTICATE LOGIN")
    s.expect("+ VXNlcm5hbWU6")
    s.send(base64.b64encode(b"joe@example.test").decode())
    s.expect("+ UGFzc3dvcmQ6")
    s.send(base64.b64encode(b"secret").decode())
    s.expect("b OK [CAPABILITY *] Logged in.")


def test_login_with_literals():
    s = Session(implicit=True)
    s.send("a LOGIN {16}")
    s.expect("+ OK")
    s.sendRaw(b"joe@example.test {6+}\r\nsecret\r\n")
    s.expect("a OK [CAPABILITY *] Logged in.")


def test_commands_in_wrong_state():
    s = Session(implicit=True)
    s.send("a SELECT INBOX", "b FETCH 1 FLAGS", "c FOO")
    s.expect("a BAD Command not valid in this state.", "b BAD Command not valid in this state.",
             "c BAD Unknown command.")
    s.login_ = None


def test_logout():
    s = Session()
    s.send("a LOGOUT")
    s.expect("* BYE Logging out.", "a OK Logout completed.")
    assert s.closed


@pytest.mark.parametrize("implicit", [True, False])
def test_logout_over_tls_drops_the_connection_without_the_clients_close_notify(implicit):
    """
    Twisted's TLS close waits for the client's close_notify, which many
    clients never send: once what was written has left, the connection is
    dropped (RFC 8446 section 6.1 lets the closing side not wait).
    """
    from mdpy.session import TLS_CLOSE_POLL

    s = Session(implicit=implicit)
    if not implicit:
        s.send("s STARTTLS")
        s.expect("s OK Begin TLS negotiation now.")
    s.send("a LOGOUT")
    s.expect("* BYE Logging out.", "a OK Logout completed.")
    assert s.closed and not s.transport.disconnected
    s.clock.advance(TLS_CLOSE_POLL)
    assert s.transport.disconnected
    s.protocol.connectionLost(None)
    assert s.clock.getDelayedCalls() == []

    plain = Session(tls=False, plaintext=True)
    plain.send("a LOGOUT")
    plain.lines()
    plain.clock.advance(TLS_CLOSE_POLL)
    assert plain.closed and not plain.transport.disconnected


def test_id_and_namespace():
    s = Session()
    s.login()
    s.send('a ID ("name" "test" "version" "1")', "b NAMESPACE", "c ID NIL")
    s.expect('* ID ("name" "mdpy" "version" "*")', "a OK ID completed.",
             '* NAMESPACE (("" "/")) NIL NIL', "b OK Namespace completed.",
             '* ID ("name" "mdpy" "version" "*")', "c OK ID completed.")


# --- bad input ------------------------------------------------------------------


def test_malformed_commands_get_bad():
    s = Session()
    s.login()
    s.send("", "a", 'b LOGIN "unterminated', "c SELECT (((", "d )")
    got = s.lines()
    assert got[0].startswith("* BAD")
    assert got[1].startswith("a BAD")
    assert got[2].startswith("b BAD") and got[3].startswith("c BAD") and got[4].startswith("d BAD")
    assert not s.closed


def test_uid_command_errors_name_the_command():
    """
    A BAD reply to a UID command names the command it carries, as a
    client's log needs it; an unknown one is named as given.
    """
    s = Session()
    s.select()
    s.send("a UID FETCH x FLAGS", "b UID STORE 1", "c UID BOGUS 1", "d UID")
    s.expect("a BAD Error in IMAP command UID FETCH: Invalid sequence set.",
             "b BAD Error in IMAP command UID STORE: Expected message set, item and flags.",
             "c BAD Error in IMAP command UID BOGUS: Unknown UID command.",
             "d BAD Error in IMAP command UID: Unknown UID command.")


def test_deep_nesting_is_bad():
    s = Session()
    s.login()
    s.send("a LIST " + "(" * 1000 + ")" * 1000 + ' ""')
    [line] = s.lines()
    assert line.startswith("a BAD ") and "nested" in line


def test_preauth_nesting_is_limited():
    s = Session()
    s.send('a ID (((("a" "b"))))')
    [line] = s.lines()
    assert line.startswith("a BAD")


def test_malformed_literal_markers():
    s = Session()
    s.login()
    for marker in ("{-1}", "{1_0}", "{ 5}", "{+5}"):
        s.send("a APPEND INBOX " + marker)
        [line] = s.lines()
        assert line.startswith("a BAD"), (marker, line)


def test_literal_too_large_refused_before_continuation():
    s = Session(maxMessageSize=1000)
    s.login()
    s.send("a APPEND INBOX {1001}")
    s.expect("a NO [TOOBIG] Message too large (APPENDLIMIT=1000).")
    s.send("b APPEND INBOX {99999999999999}")
    s.expect("b NO [TOOBIG] Message too large (APPENDLIMIT=1000).")
    s.send("c NOOP")
    s.expect("c OK NOOP completed.")


def test_nonsynchronising_literal_too_large_is_discarded():
    s = Session(maxMessageSize=1000)
    s.login()
    s.sendRaw(b"a APPEND INBOX {2000+}\r\n" + b"x" * 1500)
    s.expect("a NO [TOOBIG] Message too large (APPENDLIMIT=1000).")
    s.sendRaw(b"y" * 500 + b"\r\nb NOOP\r\n")
    s.expect("b OK NOOP completed.")
    assert not s.store.openMailbox(USER).messages()[3:]


def test_other_literal_limit():
    s = Session()
    s.login()
    s.send("a SELECT {70000}")
    s.expect("a NO [TOOBIG] Literal too large.")


def test_preauth_literal_limit():
    s = Session()
    s.send("a LOGIN {9000}")
    s.expect("a NO [TOOBIG] Literal too large before authentication.")


def test_line_too_long():
    s = Session()
    s.login()
    s.sendRaw(b"a NOOP " + b"x" * 70000 + b"\r\nb NOOP\r\n")
    s.expect("* BAD [TOOBIG] Command line too long.", "b OK NOOP completed.")


def test_huge_sequence_set_is_clamped():
    s = Session()
    s.select()
    s.send("a UID FETCH 1:4294967295 (UID)")
    s.expect("* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)", "a OK Fetch completed.")
    s.send("b FETCH 1:4294967295 (UID)")
    s.expect("b BAD Error in IMAP command FETCH: Invalid messageset.")
    s.send("c FETCH 0 (UID)", "d FETCH 1,x (UID)")
    s.expect("c BAD *", "d BAD *")


def test_too_many_errors_closes():
    s = Session()
    s.login()
    s.send(*["a FOO"] * 20)
    got = s.lines()
    assert got[-1] == "* BYE Too many invalid commands."
    assert s.closed


# --- SELECT and mailboxes -------------------------------------------------------


def test_select_responses():
    s = Session()
    got = s.select()
    assert got[0].startswith("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded")
    assert got[1].startswith("* OK [PERMANENTFLAGS (\\Answered") and got[1].endswith("\\*)] Flags permitted.")
    uidValidity = s.store.openMailbox(USER).uidValidity
    assert got[2:] == [
        "* 3 EXISTS",
        "* 0 RECENT",
        "* OK [UNSEEN 1] First unseen.",
        "* OK [UIDVALIDITY %d] UIDs valid." % uidValidity,
        "* OK [UIDNEXT 4] Predicted next UID.",
        "* OK [HIGHESTMODSEQ %d] Highest." % s.store.openMailbox(USER).highestModSeq,
        "x OK [READ-WRITE] Select completed.",
    ]


def test_examine_is_read_only():
    s = Session()
    s.login()
    s.send("a EXAMINE INBOX")
    got = s.lines()
    assert got[-1] == "a OK [READ-ONLY] Examine completed."
    s.send("b STORE 1 +FLAGS (\\Seen)", "c EXPUNGE")
    s.expect("b NO [READ-ONLY] Mailbox is read-only.", "c NO [READ-ONLY] Mailbox is read-only.")
    s.send("d FETCH 1 BODY[TEXT]")
    s.expect("* 1 FETCH (BODY[TEXT] {7}", "first", ")", "d OK Fetch completed.")
    assert "\\Seen" not in s.store.openMailbox(USER).messages()[0].flags


def test_select_missing_mailbox():
    s = Session()
    s.login()
    s.send("a SELECT Nope")
    s.expect("a NO [NONEXISTENT] Mailbox doesn't exist.")


def test_recent_for_new_mail_while_selected():
    s = Session()
    s.select()
    s.store.deliver([(USER, "INBOX", [b"Subject: new\r\n\r\nnew\r\n"])])
    s.send("a NOOP")
    s.expect("* 4 EXISTS", "* 1 RECENT", "a OK NOOP completed.")
    s.send("b FETCH 4 FLAGS")
    s.expect("* 4 FETCH (FLAGS (\\Recent))", "b OK Fetch completed.")


def test_list_special_use_and_children():
    s = Session()
    s.login()
    s.send('a CREATE "Lists/Work"', 'b LIST "" "*"')
    got = s.lines()
    assert got == [
        "a OK Create completed.",
        '* LIST (\\HasNoChildren) "/" "INBOX"',
        '* LIST (\\HasNoChildren \\Archive) "/" "Archive"',
        '* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"',
        '* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
        '* LIST (\\HasChildren) "/" "Lists"',
        '* LIST (\\HasNoChildren) "/" "Lists/Work"',
        '* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
        '* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
        "b OK List completed.",
    ]
    s.send('c LIST "" "%"', 'd LIST "" ""', 'e LIST "Lists/" "%"')
    got = s.lines()
    assert '* LIST (\\HasNoChildren) "/" "Lists/Work"' not in got[:8]
    assert '* LIST (\\Noselect) "/" ""' in got
    assert got[-2:] == ['* LIST (\\HasNoChildren) "/" "Lists/Work"', "e OK List completed."]


class _HeldListing:
    """
    A store whose folder and subscription lists wait until released.
    """

    def __init__(self, store):
        self._store = store
        self.asked = []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _held(self, name, address):
        d = defer.Deferred()
        self.asked.append((name, d, getattr(self._store, name)(address)))
        return d

    def listMailboxes(self, address):
        return self._held("listMailboxes", address)

    def listSubscriptions(self, address):
        return self._held("listSubscriptions", address)


def test_list_asks_for_folders_and_subscriptions_at_once():
    """
    LIST asks the store for the folders and the subscriptions together,
    not one after the other; either failing answers NO.
    """
    store = _HeldListing(filledStore())
    s = Session(store=store)
    s.login()
    s.send('b LIST "" "%"')
    assert [name for name, _, _ in store.asked] == ["listMailboxes", "listSubscriptions"]
    assert s.lines() == []
    for _, d, result in reversed(store.asked):
        d.callback(result)
    got = s.lines()
    assert got[0] == '* LIST (\\HasNoChildren) "/" "INBOX"' and got[-1] == "b OK List completed."
    for failing in (0, 1):
        del store.asked[:]
        s.send('c LIST "" "%"')
        for index, (_, d, result) in enumerate(store.asked):
            if index == failing:
                d.errback(TemporaryFailure("disk on fire"))
            else:
                d.callback(result)
        assert s.lines() == ["c NO [UNAVAILABLE] Temporary failure; try again later."]


def test_updates_and_reply_in_one_write():
    """
    The untagged responses a command's end owes and its tagged reply go
    out in one write.
    """
    store, one, two = twoSessions()
    two.send("a STORE 1 +FLAGS (\\Flagged)")
    two.lines()
    writes = []
    write = one.t.transport.write
    one.t.transport.write = lambda data: (writes.append(data), write(data))
    one.send("b NOOP")
    assert writes == [b"* 1 FETCH (FLAGS (\\Flagged))\r\nb OK NOOP completed.\r\n"]


def test_list_extended():
    s = Session()
    s.login()
    s.send('a LIST (SPECIAL-USE) "" "*" RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN))')
    got = s.lines()
    assert '* LIST (\\HasNoChildren \\Sent \\Subscribed) "/" "Sent"' in got
    assert '* STATUS "Sent" (MESSAGES 0 UNSEEN 0)' in got
    assert not any('"INBOX"' in line and "LIST" in line for line in got)
    s.send('b LIST (SUBSCRIBED) "" ("INBOX" "Tr*")')
    s.expect('* LIST (\\HasNoChildren \\Trash \\Subscribed) "/" "Trash"', "b OK List completed.")
    s.send('c LIST "" "*" RETURN (BOGUS)')
    [line] = s.lines()
    assert line.startswith("c BAD")


def test_mailbox_names_in_modified_utf7():
    s = Session()
    s.login()
    s.send('a CREATE "Entw&APw-rfe"', 'b LIST "" "Entw*"', 'c CREATE "bad&-name&Jjo!"')
    got = s.lines()
    assert got[:3] == ["a OK Create completed.", '* LIST (\\HasNoChildren) "/" "Entw&APw-rfe"', "b OK List completed."]
    assert got[3].startswith("c BAD")
    assert "Entwürfe" in s.store.listMailboxes(USER)


def test_create_delete_rename_subscribe():
    s = Session()
    s.login()
    s.send("a CREATE Foo", "b CREATE Foo", "c RENAME Foo Bar", "d SUBSCRIBE Bar", 'e LSUB "" "B*"',
           "f DELETE Bar", "g DELETE INBOX", "h UNSUBSCRIBE Bar", 'i LSUB "" "B*"', "j CREATE INBOX")
    s.expect(
        "a OK Create completed.",
        "b NO [ALREADYEXISTS] Mailbox already exists.",
        "c OK Rename completed.",
        "d OK Subscribe completed.",
        '* LSUB () "/" "Bar"',
        "e OK List completed.",
        "f OK Delete completed.",
        "g NO [CANNOT] INBOX can't be deleted.",
        "h OK Unsubscribe completed.",
        "i OK List completed.",
        "j NO [ALREADYEXISTS] Mailbox already exists.",
    )


def test_names_past_the_store_limits_are_refused(tmp_path):
    """
    CREATE, RENAME and DELETE of a name longer or deeper than the Maildir
    store can hold answer NO [LIMIT] (RFC 5530), a name it cannot represent
    NO [CANNOT]; nothing reaches the disk and nothing is logged as a
    failure.
    """
    from twisted.logger import globalLogPublisher
    from mdpy.backends.files.maildir import MaildirStore

    store = MaildirStore(str(tmp_path), runInThread=synchronousRunner)
    store.createAccount(USER)
    before = sorted(os.listdir(store.accountPath(USER)))
    s = Session(store=store)
    s.login()
    long, deep = "x" * 300, "/".join(["a"] * 40)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        s.send("a CREATE " + long, "b CREATE " + deep, "c CREATE n/" + long, "d RENAME Sent " + long,
               "e DELETE " + long, 'f CREATE "a.b"', "g SELECT " + long, "h CREATE " + "y" * 254)
        s.expect(*["%s NO [LIMIT] Beyond a limit of this server." % tag for tag in "abcde"]
                 + ["f NO [CANNOT] Invalid mailbox name or operation.",
                    "g NO [LIMIT] Beyond a limit of this server.",
                    "h OK Create completed."])
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("log_failure") is not None or e.get("log_level").name == "critical"]
    assert sorted(os.listdir(store.accountPath(USER))) == sorted(before + ["." + "y" * 254])


def test_status():
    s = Session()
    s.login()
    s.send("a STATUS INBOX (MESSAGES UIDNEXT UNSEEN RECENT)", "b STATUS Nope (MESSAGES)", "c STATUS INBOX (BOGUS)")
    got = s.lines()
    assert got[0] == '* STATUS "INBOX" (MESSAGES 3 UIDNEXT 4 UNSEEN 3 RECENT 0)'
    assert got[1:3] == ["a OK Status completed.", "b NO [NONEXISTENT] Mailbox doesn't exist."]
    assert got[3].startswith("c BAD")


# --- APPEND -------------------------------------------------------------------------


def test_append_with_flags_and_date():
    s = Session()
    s.login()
    message = b"Subject: appended\r\n\r\nhello\r\n"
    s.send('a APPEND Drafts (\\Draft $Label) "17-Jul-1996 02:44:25 -0700" {%d}' % len(message))
    s.expect("+ OK")
    s.sendRaw(message + b"\r\n")
    validity = s.store.openMailbox(USER, "Drafts").uidValidity
    s.expect("a OK [APPENDUID %d 1] Append completed." % validity)
    [stored] = s.store.openMailbox(USER, "Drafts").messages()
    assert resultOf(stored.read()) == message
    assert stored.flags == {"\\Draft", "$Label"}
    assert stored.internalDate == 837596665


def test_append_to_missing_mailbox_and_selected_mailbox():
    s = Session()
    s.select()
    s.sendRaw(b"a APPEND Nope {3+}\r\nabc\r\nb APPEND INBOX {3+}\r\nabc\r\n")
    got = s.lines()
    assert got[0] == "a NO [TRYCREATE] Mailbox doesn't exist."
    assert got[1:3] == ["* 4 EXISTS", "* 1 RECENT"] and got[3].startswith("b OK [APPENDUID ")


def test_append_bad_flag():
    s = Session()
    s.login()
    s.sendRaw(b"a APPEND INBOX (\\Bogus) {3+}\r\nabc\r\n")
    [line] = s.lines()
    assert line.startswith("a BAD")


def openFilesIn(directory):
    """
    @return: how many files this process has open in C{directory} (a spool
        file has no name, but its descriptor still points there).
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        count += target.startswith(directory + "/")
    return count


def bigMessage(size, subject=b"big"):
    """
    @return: a message of C{size} octets, lines of 100 ending in CR LF.
    """
    head = b"Subject: " + subject + b"\r\n\r\n"
    line = b"x" * 98 + b"\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[: size - 2] + b"\r\n"


def test_large_append_is_spooled_to_a_file_and_stored_intact(tmp_path):
    """
    A literal past 256 KiB goes to an unnamed file in the spool folder as
    it arrives; the message is stored from it intact, and the file is gone
    once the command ends.
    """
    spool = str(tmp_path)
    s = Session(spoolDir=spool, maxMessageSize=2000000)
    s.login()
    message = bigMessage(1000000)
    s.send("a APPEND INBOX (\\Seen) {%d}" % len(message))
    s.expect("+ OK")
    assert openFilesIn(spool) == 1
    assert s.factory.pendingLiterals.pending(USER) == len(message)
    s.sendRaw(message[:400000])
    s.sendRaw(message[400000:])
    s.expect()
    s.sendRaw(b"\r\n")
    s.expect("a OK [APPENDUID * 4] Append completed.")
    assert openFilesIn(spool) == 0
    assert s.factory.pendingLiterals.pending(USER) == 0
    stored = s.store.openMailbox(USER).messages()[-1]
    assert resultOf(stored.read()) == message and stored.flags == {"\\Seen"}
    # A small one is not spooled.
    s.send("b APPEND INBOX {100}")
    s.expect("+ OK")
    assert openFilesIn(spool) == 0
    s.sendRaw(bigMessage(100) + b"\r\n")
    s.expect("b OK [APPENDUID * 5] Append completed.")


def test_spool_file_is_removed_when_the_connection_drops(tmp_path):
    spool = str(tmp_path)
    s = Session(spoolDir=spool)
    s.login()
    s.sendRaw(b"a APPEND INBOX {600000+}\r\n" + b"x" * 300000)
    assert openFilesIn(spool) == 1
    s.protocol.connectionLost(None)
    assert openFilesIn(spool) == 0
    assert s.factory.pendingLiterals.pending(USER) == 0
    assert len(s.store.openMailbox(USER).messages()) == len(MESSAGES)


def test_pending_literals_of_an_account_are_bounded_over_its_connections(tmp_path):
    """
    Every connection of an account counts against one bound of literal
    octets under way; past it a literal gets C{NO [LIMIT]} before its
    C{+} (or is read and thrown away for C{{n+}}), and the octets come back
    when the command ends or its connection is lost.
    """
    a = Session(spoolDir=str(tmp_path), maxPendingLiterals=1000000)
    a.login()
    b = Session(store=a.store, factory=a.factory)
    b.login()
    other = Session(store=a.store, factory=a.factory)
    other.login("ann@example.test", "pw")
    first = bigMessage(600000, b"first")
    a.send("a1 APPEND INBOX {%d}" % len(first))
    a.expect("+ OK")
    a.sendRaw(first[:1000])
    b.send("b1 APPEND INBOX {500000}")
    b.expect("b1 NO [LIMIT] Too many messages being appended at once; try again later.")
    b.sendRaw(b"b2 APPEND INBOX {500000+}\r\n" + b"y" * 500000 + b"\r\nb3 NOOP\r\n")
    b.expect("b2 NO [LIMIT] *", "b3 OK NOOP completed.")
    # Another account has its own bound.
    other.send("c1 APPEND INBOX {500000}")
    other.expect("+ OK")
    # Within the bound: taken.
    b.send("b4 APPEND INBOX {300000}")
    b.expect("+ OK")
    a.sendRaw(first[1000:] + b"\r\n")
    a.expect("a1 OK [APPENDUID *] Append completed.")
    b.protocol.connectionLost(None)
    assert a.factory.pendingLiterals.pending(USER) == 0
    second = bigMessage(900000, b"second")
    a.send("a2 APPEND INBOX {%d}" % len(second))
    a.expect("+ OK")
    a.sendRaw(second + b"\r\n")
    a.expect("a2 OK [APPENDUID *] Append completed.")
    assert [resultOf(m.read()) for m in a.store.openMailbox(USER).messages()[-2:]] == [first, second]
    # A message alone is taken even past the bound (APPENDLIMIT is its limit).
    a.factory.maxPendingLiterals = 100000
    a.send("a3 APPEND INBOX {%d}" % len(first))
    a.expect("+ OK")
    b = Session(store=a.store, factory=a.factory)
    b.login()
    b.send("b5 APPEND INBOX {10}")
    b.expect("b5 NO [LIMIT] *")
    a.sendRaw(first + b"\r\n")
    a.expect("a3 OK [APPENDUID *] Append completed.")


def test_spool_write_failure_answers_no_and_stores_nothing(tmp_path, monkeypatch):
    spool = str(tmp_path)
    s = Session(spoolDir=spool)
    s.login()
    s.send("a APPEND INBOX {300000}")
    s.expect("+ OK")
    literal = s.protocol._literal

    def full(data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(literal._file, "write", full)
    s.sendRaw(b"z" * 300000 + b"\r\nb NOOP\r\n")
    s.expect("a NO [UNAVAILABLE] Temporary failure; try again later.", "b OK NOOP completed.")
    assert openFilesIn(spool) == 0
    assert len(s.store.openMailbox(USER).messages()) == len(MESSAGES)


def test_spool_folder_missing_refuses_before_continuation(tmp_path):
    s = Session(spoolDir=str(tmp_path / "missing"))
    s.login()
    s.send("a APPEND INBOX {300000}")
    s.expect("a NO [UNAVAILABLE] Temporary failure; try again later.")
    s.send("b APPEND INBOX {3}")
    s.expect("+ OK")
    s.sendRaw(b"abc\r\n")
    s.expect("b OK [APPENDUID *] Append completed.")
    assert s.factory.pendingLiterals.pending(USER) == 0


# --- FETCH ------------------------------------------------------------------------


def test_fetch_flags_size_uid():
    s = Session()
    s.select()
    s.send("a FETCH 1:* (FLAGS RFC822.SIZE UID)")
    s.expect(
        "* 1 FETCH (FLAGS () RFC822.SIZE %d UID 1)" % len(MESSAGES[0]),
        "* 2 FETCH (FLAGS () RFC822.SIZE %d UID 2)" % len(MESSAGES[1]),
        "* 3 FETCH (FLAGS () RFC822.SIZE %d UID 3)" % len(MESSAGES[2]),
        "a OK Fetch completed.",
    )


def test_flags_are_formatted_alike_from_any_set():
    """
    The flags of a message are sent in one order, with \\Recent last when
    asked, whether they come as a set or a frozenset (formatFlags keeps
    what it made).
    """
    from mdpy.imap.fetch import formatFlags

    assert formatFlags({"\\Seen", "$Work"}) == b"($Work \\Seen)"
    assert formatFlags(frozenset(["\\Seen", "$Work"]), True) == b"($Work \\Seen \\Recent)"
    assert formatFlags(frozenset(["\\Seen", "$Work"])) == b"($Work \\Seen)"
    assert formatFlags(frozenset(), True) == b"(\\Recent)"


def test_fetch_body_sets_seen_peek_does_not():
    s = Session()
    s.select()
    s.send("a FETCH 2 BODY.PEEK[TEXT]")
    s.expect("* 2 FETCH (BODY[TEXT] {13}", "second body", ")", "a OK Fetch completed.")
    s.send("b UID FETCH 2 BODY[TEXT]<0.6>")
    s.expect("* 2 FETCH (UID 2 FLAGS (\\Seen) BODY[TEXT]<0> {6}", "second)", "b OK Fetch completed.")
    assert "\\Seen" in s.store.openMailbox(USER).messages()[1].flags


def test_fetch_header_fields():
    s = Session()
    s.select()
    s.send("a FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject FROM)])")
    s.expect(
        "* 1 FETCH (BODY[HEADER.FIELDS (Subject FROM)] {46}",
        "From: Ann <ann@example.test>",
        "Subject: one",
        "",
        ")",
        "a OK Fetch completed.",
    )
    s.send("b FETCH 2 (BODY.PEEK[HEADER.FIELDS.NOT (Subject From)])")
    s.expect("* 2 FETCH (BODY[HEADER.FIELDS.NOT (Subject From)] {24}", "To: joe@example.test", "", ")",
             "b OK Fetch completed.")


def test_fetch_mime_parts():
    s = Session()
    s.select()
    s.send("a FETCH 3 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[9])")
    s.expect(
        "* 3 FETCH (BODY[1] {8}",
        "part one BODY[2.MIME] {27}",
        "Content-Type: text/html",
        "",
        ' BODY[9] "")',
        "a OK Fetch completed.",
    )


def test_fetch_whole_message_and_rfc822_items():
    s = Session()
    s.select()
    s.send("a FETCH 2 (RFC822.HEADER)")
    raw = s.raw()
    header = MESSAGES[1][: MESSAGES[1].index(b"\r\n\r\n") + 4]
    assert raw == b"* 2 FETCH (RFC822.HEADER {%d}\r\n%s)\r\na OK Fetch completed.\r\n" % (len(header), header)
    s.send("b FETCH 2 BODY.PEEK[]")
    assert s.raw() == b"* 2 FETCH (BODY[] {%d}\r\n%s)\r\nb OK Fetch completed.\r\n" % (len(MESSAGES[1]), MESSAGES[1])


def test_fetch_serves_nul_as_0x80_and_keeps_the_stored_octets():
    """
    RFC 3501 section 9 allows no NUL in a literal: every message octet
    served in a FETCH literal has NUL replaced by 0x80 (as Dovecot does),
    sizes unchanged; the stored message keeps its NULs.
    """
    message = (
        b"From: ann@example.test\r\nSubject: nul\x00here\r\n"
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nab\x00\x00cd\r\n--B--\r\n"
    )
    served = message.replace(b"\x00", b"\x80")
    store = filledStore([message])
    s = Session(store=store)
    s.select()
    s.send("a FETCH 1 (RFC822.SIZE BODY.PEEK[])")
    assert s.raw() == b"* 1 FETCH (RFC822.SIZE %d BODY[] {%d}\r\n%s)\r\na OK Fetch completed.\r\n" % (
        len(message), len(message), served)
    header = served[: served.index(b"\r\n\r\n") + 4]
    body = served[len(header):]
    s.send("b FETCH 1 (RFC822.HEADER BODY.PEEK[TEXT] BODY.PEEK[1] BODY.PEEK[TEXT]<2.3>)")
    assert s.raw() == (
        b"* 1 FETCH (RFC822.HEADER {%d}\r\n%s BODY[TEXT] {%d}\r\n%s"
        b" BODY[1] {6}\r\nab\x80\x80cd BODY[TEXT]<2> {3}\r\nB\r\n)\r\n"
        b"b OK Fetch completed.\r\n" % (len(header), header, len(body), body)
    )
    s.send("c FETCH 1 RFC822")
    assert s.raw().startswith(b"* 1 FETCH (RFC822 {%d}\r\n%s " % (len(message), served))
    [stored] = store.openMailbox(USER).messages()
    assert resultOf(stored.read()) == message


def test_fetch_envelope_and_bodystructure():
    s = Session()
    s.select()
    s.send("a FETCH 1 (ENVELOPE)", "b FETCH 3 (BODYSTRUCTURE)", "c FETCH 3 BODY")
    got = s.lines()
    assert got[0].startswith('* 1 FETCH (ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "one" (("Ann" NIL "ann" "example.test"))')
    assert got[0].endswith('"<1@example.test>"))')
    assert got[2].startswith('* 3 FETCH (BODYSTRUCTURE (("TEXT" "PLAIN"') or got[2].startswith('* 3 FETCH (BODYSTRUCTURE (("text" "plain"')
    assert "MIXED" in got[2].upper() and "BOUNDARY" in got[2].upper()
    assert got[4].startswith("* 3 FETCH (BODY ((")
    assert "BOUNDARY" not in got[4].upper()


def test_fetch_reads_messages_through_the_store_only_when_it_must(monkeypatch):
    """
    FETCH takes a message's octets from the store's Deferred C{read}, never
    by opening it on the reactor; a structure already parsed is served
    without reading the message again.
    """
    reads = recordReads(monkeypatch)
    monkeypatch.setattr(MemoryMessage, "open", lambda message: pytest.fail("opened on the reactor"))
    s = Session()
    s.select()
    s.send("a FETCH 3 (BODYSTRUCTURE)")
    assert s.lines()[-1] == "a OK Fetch completed."
    assert reads == [3]
    s.send("b FETCH 3 (BODY)", "c FETCH 1:2 (UID FLAGS)")
    assert [line for line in s.lines() if line.startswith(("b ", "c "))] == [
        "b OK Fetch completed.", "c OK Fetch completed."]
    assert reads == [3]
    s.send("d FETCH 2 (BODY.PEEK[TEXT])")
    assert s.lines() == ["* 2 FETCH (BODY[TEXT] {13}", "second body", ")", "d OK Fetch completed."]
    assert reads == [3, 2]


def test_fetch_reads_ahead_and_answers_in_order(monkeypatch):
    """
    FETCH asks the store for the next messages before the first read
    finishes, so the store's round trips overlap; the answers still come
    in order; a message gone meanwhile is answered with NIL, and the
    FETCH with OK and EXPUNGEISSUED.
    """
    from twisted.internet import defer

    from mdpy.errors import NotFound

    pending = {}
    monkeypatch.setattr(MemoryMessage, "read", lambda message: pending.setdefault(message.uid, defer.Deferred()))
    s = Session()
    s.select()
    s.send("a FETCH 1:3 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert sorted(pending) == [1, 2, 3]
    pending[3].callback(MESSAGES[2])
    pending[2].errback(NotFound("gone"))
    assert s.lines() == []
    pending[1].callback(MESSAGES[0])
    assert s.lines() == [
        "* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {16}", "Subject: one", "", ")",
        "* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] NIL)",
        "* 3 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}", "Subject: three", "", ")",
        "a OK [EXPUNGEISSUED] Some messages were already expunged.",
    ]


def test_fetch_macros_and_bad_items():
    s = Session()
    s.select()
    s.send("a FETCH 1 FAST", "b FETCH 1 (BOGUS)", "c FETCH 1 BODY[FOO]", "d FETCH 1 BODY[]<1.x>")
    got = s.lines()
    assert got[0].startswith("* 1 FETCH (FLAGS () INTERNALDATE \"") and got[0].endswith("RFC822.SIZE %d)" % len(MESSAGES[0]))
    assert got[1] == "a OK Fetch completed."
    assert all(line.startswith(tag + " BAD") for line, tag in zip(got[2:], "bcd"))


def test_fetch_malformed_mime_is_served():
    store = filledStore([
        b"Content-Type: text/plain;\r\n\r\nx\r\n",
        b'Content-Type: multipart/mixed; boundary="a;b"; x\r\n\r\n--a;b\r\n\r\nnever closed\r\n',
        b"Content-Type: multipart/mixed\r\n\r\nno boundary at all\r\n",
    ])
    s = Session(store=store)
    s.select()
    s.send("a FETCH 1:3 (BODYSTRUCTURE ENVELOPE BODY.PEEK[1])")
    got = s.lines()
    assert got[-1] == "a OK Fetch completed."
    assert sum(1 for line in got if line.startswith("* ")) == 3
    assert not s.closed


def test_fetch_changedsince():
    s = Session()
    s.select()
    s.send("a STORE 2 +FLAGS.SILENT (\\Flagged)")
    s.lines()
    modSeq = s.store.openMailbox(USER).messages()[1].modSeq
    s.send("b FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % (modSeq - 1))
    s.expect("* OK [HIGHESTMODSEQ %d] Highest." % modSeq, "* 2 FETCH (FLAGS (\\Flagged) MODSEQ (%d))" % modSeq,
             "b OK Fetch completed.")


# --- STORE, EXPUNGE, COPY, MOVE -------------------------------------------------


def test_store_variants():
    s = Session()
    s.select()
    s.send("a STORE 1 +FLAGS (\\Seen \\Flagged)", "b STORE 1 -FLAGS (\\Flagged)", "c STORE 1:2 FLAGS.SILENT ($Work)",
           "d UID STORE 2 +FLAGS \\Answered")
    s.expect(
        "* 1 FETCH (FLAGS (\\Flagged \\Seen))",
        "a OK Store completed.",
        "* 1 FETCH (FLAGS (\\Seen))",
        "b OK Store completed.",
        "* FLAGS (\\Answered * $Forwarded $Work)",
        "* OK [PERMANENTFLAGS (\\Answered * $Forwarded $Work \\*)] Flags permitted.",
        "c OK Store completed.",
        "* 2 FETCH (UID 2 FLAGS ($Work \\Answered))",
        "d OK Store completed.",
    )
    flags = [m.flags for m in s.store.openMailbox(USER).messages()]
    assert flags[:2] == [{"$Work"}, {"$Work", "\\Answered"}]


@pytest.mark.parametrize("command, first", [
    ("a STORE 1 +FLAGS (\\Flagged)", "* 1 FETCH (FLAGS (\\Flagged))"),
    ('a STATUS INBOX (MESSAGES)', '* STATUS "INBOX" (MESSAGES 3)'),
    ('a LIST "" *', '* LIST (\\HasNoChildren) "/" "INBOX"'),
    ("a SEARCH ALL", "* SEARCH 1 2 3"),
    ("a FETCH 1:* (UID)", "* 1 FETCH (UID 1)"),
    ("a FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])", "* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {*}"),
])
def test_responses_and_reply_in_one_write(command, first):
    """
    A command's untagged responses go out with its tagged reply in one
    write, which wakes the client once.
    """
    s = Session()
    s.select()
    writes = []
    write = s.t.transport.write
    s.t.transport.write = lambda data: (writes.append(data), write(data))
    s.send(command)
    got = s.lines()
    assert fnmatch.fnmatchcase(got[0], first.replace("[", "[[]")) and got[-1].startswith("a OK "), got
    assert len(writes) == 1, writes


def test_store_of_two_sessions_keeps_both_changes():
    """
    A STORE changes the flags as stored, not the session's copy: one
    session's +FLAGS survives another's -FLAGS on the same message, and
    each FETCH reports the flags now stored.
    """
    store, one, two = twoSessions()
    one.send("a STORE 1 +FLAGS (\\Seen)")
    one.expect("* 1 FETCH (FLAGS (\\Seen))", "a OK Store completed.")
    one.send("b STORE 1 +FLAGS (\\Answered)")
    one.expect("* 1 FETCH (FLAGS (\\Answered \\Seen))", "b OK Store completed.")
    two.send("c STORE 1 -FLAGS (\\Seen)")
    two.expect("* 1 FETCH (FLAGS (\\Answered))", "c OK Store completed.")
    assert store.openMailbox(USER).messages()[0].flags == {"\\Answered"}
    two.send("d STORE 1:2 +FLAGS (\\Flagged)")
    one.send("e STORE 1 -FLAGS (\\Answered)")
    one.expect("* 1 FETCH (FLAGS (\\Flagged))", "* 2 FETCH (FLAGS (\\Flagged))", "e OK Store completed.")
    two.send("f UID STORE 2 FLAGS ($Work)")
    two.expect("* 1 FETCH (FLAGS (\\Answered \\Flagged))", "* 2 FETCH (FLAGS (\\Flagged))",
               "d OK Store completed.", "* FLAGS (* $Work)", "* OK [PERMANENTFLAGS (* $Work \\*)] Flags permitted.",
               "* 2 FETCH (UID 2 FLAGS ($Work))", "* 1 FETCH (FLAGS (\\Flagged))",
               "f OK Store completed.")
    assert [m.flags for m in store.openMailbox(USER).messages()[:2]] == [{"\\Flagged"}, {"$Work"}]


def test_silent_store_reports_what_another_session_changed():
    """
    After STORE .SILENT the client knows the flags it asked for; a flag
    another session set meanwhile is still reported.
    """
    store, one, two = twoSessions()
    one.send("a STORE 1 +FLAGS.SILENT (\\Answered)")
    one.expect("a OK Store completed.")
    two.send("b STORE 1 +FLAGS.SILENT (\\Seen)")
    two.expect("* 1 FETCH (FLAGS (\\Answered \\Seen))", "b OK Store completed.")
    two.send("c STORE 1 -FLAGS.SILENT (\\Answered)", "d NOOP")
    two.expect("c OK Store completed.", "d OK NOOP completed.")
    assert store.openMailbox(USER).messages()[0].flags == {"\\Seen"}


def test_fetch_body_adds_seen_to_stored_flags():
    store, one, two = twoSessions()
    one.send("a STORE 2 +FLAGS.SILENT (\\Flagged)")
    one.expect("a OK Store completed.")
    two.send("b FETCH 2 (BODY[HEADER.FIELDS (SUBJECT)])")
    two.expect("* 2 FETCH (FLAGS (\\Flagged \\Seen) BODY[HEADER.FIELDS (SUBJECT)] {16}", "Subject: two", "", ")",
               "b OK Fetch completed.")
    assert store.openMailbox(USER).messages()[1].flags == {"\\Flagged", "\\Seen"}


def test_expunge_spares_what_another_session_undeleted():
    store, one, two = twoSessions()
    one.send("a STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    one.expect("a OK Store completed.")
    two.send("b NOOP")
    two.expect("* 1 FETCH (FLAGS (\\Deleted))", "* 2 FETCH (FLAGS (\\Deleted))", "b OK NOOP completed.")
    one.send("c STORE 1 -FLAGS.SILENT (\\Deleted)")
    one.expect("c OK Store completed.")
    two.send("d EXPUNGE")
    two.expect("* 2 EXPUNGE", "* 1 FETCH (FLAGS ())", "d OK Expunge completed.")
    assert [m.uid for m in store.openMailbox(USER).messages()] == [1, 3]


def test_store_condstore_unchangedsince():
    s = Session()
    s.select()
    s.send("e ENABLE CONDSTORE")
    s.expect("* OK [HIGHESTMODSEQ %d] Highest." % s.store.openMailbox(USER).highestModSeq,
             "* ENABLED CONDSTORE", "e OK Enabled.")
    modSeq = s.store.openMailbox(USER).messages()[0].modSeq
    s.send("a STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % modSeq)
    got = s.lines()
    newModSeq = s.store.openMailbox(USER).messages()[0].modSeq
    assert got == ["* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (%d))" % newModSeq, "a OK Store completed."]
    s.send("b STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % modSeq)
    s.expect("b OK [MODIFIED 1] Conditional store failed.")


def test_expunge_and_sequence_numbers():
    s = Session()
    s.select()
    s.send("a STORE 1:2 +FLAGS.SILENT (\\Deleted)", "b EXPUNGE", "c FETCH 1 UID")
    s.expect("a OK Store completed.", "* 2 EXPUNGE", "* 1 EXPUNGE", "b OK Expunge completed.",
             "* 1 FETCH (UID 3)", "c OK Fetch completed.")


def test_uid_expunge_only_named():
    s = Session()
    s.select()
    s.send("a STORE 1:3 +FLAGS.SILENT (\\Deleted)", "b UID EXPUNGE 2", "c FETCH 1:* UID")
    s.expect("a OK Store completed.", "* 2 EXPUNGE", "b OK Expunge completed.",
             "* 1 FETCH (UID 1)", "* 2 FETCH (UID 3)", "c OK Fetch completed.")


def test_expunge_by_other_session_is_deferred_during_fetch():
    _, one, two = twoSessions()
    two.send("a STORE 1 +FLAGS.SILENT (\\Deleted)", "b EXPUNGE")
    two.lines()
    one.send("c FETCH 1:3 UID")
    got = one.lines()
    assert "* 1 EXPUNGE" not in got and got[-1].startswith("c ")
    one.send("d NOOP")
    one.expect("* 1 EXPUNGE", "d OK NOOP completed.")
    one.send("e FETCH 1:* UID")
    one.expect("* 1 FETCH (UID 2)", "* 2 FETCH (UID 3)", "e OK Fetch completed.")


def test_flag_changes_of_other_session_are_reported():
    _, one, two = twoSessions()
    two.send("a STORE 2 +FLAGS.SILENT (\\Flagged)")
    two.lines()
    one.send("b NOOP")
    one.expect("* 2 FETCH (FLAGS (\\Flagged))", "b OK NOOP completed.")


def test_copy_and_move_with_uidplus():
    s = Session()
    s.select()
    s.send("a COPY 1:2 Archive", "b UID MOVE 3 Trash", "c COPY 1 Nope")
    archive = s.store.openMailbox(USER, "Archive")
    trash = s.store.openMailbox(USER, "Trash")
    s.expect(
        "a OK [COPYUID %d 1:2 1:2] Copy completed." % archive.uidValidity,
        "* OK [COPYUID %d 3 1] Moved UIDs." % trash.uidValidity,
        "* 3 EXPUNGE",
        "b OK Move completed.",
        "c NO [TRYCREATE] Mailbox doesn't exist.",
    )
    assert [resultOf(m.read()) for m in archive.messages()] == MESSAGES[:2]
    assert [resultOf(m.read()) for m in trash.messages()] == MESSAGES[2:]


def test_close_expunges_silently_and_unselect_does_not():
    s = Session()
    s.select()
    s.send("a STORE 1 +FLAGS.SILENT (\\Deleted)", "b UNSELECT", "c SELECT INBOX")
    got = s.lines()
    assert "* 3 EXISTS" in got
    s.send("d CLOSE", "e FETCH 1 UID")
    s.expect("d OK Close completed.", "e BAD Command not valid in this state.")
    assert len(s.store.openMailbox(USER).messages()) == 2


# --- SEARCH ---------------------------------------------------------------------


def test_search_and_esearch():
    s = Session()
    s.select()
    s.send("a SEARCH FROM ann", "b UID SEARCH SUBJECT t", "c SEARCH RETURN (MIN COUNT) ALL", "d SEARCH CHARSET KOI8 ALL")
    s.expect(
        "* SEARCH 1",
        "a OK Search completed.",
        "* SEARCH 2 3",
        "b OK Search completed.",
        '* ESEARCH (TAG "c") MIN 1 COUNT 3',
        "c OK Search completed.",
        "d NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset.",
    )


def test_search_body_and_not_chain():
    s = Session()
    s.select()
    s.send("a SEARCH BODY second", "b SEARCH " + "NOT " * 5000 + "SUBJECT two",
           "c SEARCH " + "NOT OR " * 500 + "ALL ALL")
    got = s.lines()
    assert got[:4] == ["* SEARCH 2", "a OK Search completed.", "* SEARCH 2", "b OK Search completed."]
    assert got[4].startswith("c BAD")


# --- IDLE ---------------------------------------------------------------------------


def test_idle_pushes_new_mail_and_ends_on_done():
    s = Session()
    s.select()
    s.send("a IDLE")
    s.expect("+ idling")
    s.store.deliver([(USER, "INBOX", [b"Subject: new\r\n\r\nnew\r\n"])])
    s.expect("* 4 EXISTS", "* 1 RECENT")
    s.send("DONE")
    s.expect("a OK Idle completed.")


def test_idle_ends_only_on_done():
    s = Session()
    s.select()
    s.send("a IDLE")
    s.expect("+ idling")
    s.send("b NOOP")
    s.expect("a BAD Expected DONE.")


def test_idle_keepalive_and_poll():
    s = Session()
    s.select()
    s.send("a IDLE")
    s.expect("+ idling")
    s.clock.advance(120)
    s.expect("* OK Still here")
    s.send("DONE")
    s.expect("a OK Idle completed.")
    assert len(s.clock.getDelayedCalls()) == 1  # the session's own timeout


def test_idle_reports_expunge_by_other_session():
    _, one, two = twoSessions()
    one.send("a IDLE")
    one.expect("+ idling")
    two.send("b STORE 3 +FLAGS.SILENT (\\Deleted)", "c EXPUNGE")
    two.lines()
    got = one.lines()
    assert got == ["* 3 FETCH (FLAGS (\\Deleted))", "* 3 EXPUNGE"] or got == ["* 3 EXPUNGE"]


def test_timeout():
    s = Session()
    s.clock.advance(1800)
    s.expect("* BYE Disconnected for inactivity.")
    assert s.closed


def test_structure_is_cached_beside_the_maildir(tmp_path, monkeypatch):
    from mdpy.backends.files.maildir import MaildirStore
    from mdpy.imap import fetch
    from mdpy.mail import mime

    store = MaildirStore(str(tmp_path), runInThread=synchronousRunner)
    store.createAccount(USER)
    store.deliver([(USER, "INBOX", [MESSAGES[2]])])
    s = Session(store=store)
    s.select()
    s.send("a FETCH 1 BODYSTRUCTURE")
    first = s.lines()
    assert first[-1] == "a OK Fetch completed."
    mailbox = store.openMailbox(USER)
    [message] = mailbox.messages()
    assert mime.fromCache(mailbox.cachedData(message.key)).contentType == ("multipart", "mixed")

    def parseAgain(data):
        raise AssertionError("parsed again")

    monkeypatch.setattr(fetch, "parseStructure", parseAgain)
    again = Session(store=store)  # a new factory: an empty memory cache
    again.select()
    again.send("b FETCH 1 BODYSTRUCTURE")
    assert again.lines() == [first[0], "b OK Fetch completed."]
    again.send("c STORE 1 +FLAGS.SILENT (\\Deleted)", "d EXPUNGE")
    again.lines()
    assert mailbox.cachedData(message.key) is None


def test_selected_mailbox_deleted_ends_session():
    """
    When the selected mailbox disappears (the administrator deleted the
    account, or another session the folder), the next command that syncs
    it gets a BYE and the connection closes, without an error in the log.
    """
    s = Session()
    s.select()
    s.store.deleteAccount(USER, archive=True)
    s.send("n NOOP")
    s.expect("* BYE Selected mailbox no longer exists.")
    assert s.closed

    s = Session()
    s.login()
    s.send("c CREATE Work", "x SELECT Work")
    s.lines()
    s.store.deleteMailbox(USER, "Work")
    s.send("f CHECK")
    s.expect("* BYE Selected mailbox no longer exists.")
    assert s.closed
