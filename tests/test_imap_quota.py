"""
Transcript tests of the IMAP QUOTA extension (RFC 9208) and of the quota
check of APPEND and COPY (L{mdpy.imap.quota}), over the in-memory store.
"""

from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.quota import Quota, QuotaPolicy
from tests.test_imap_append import literal, loggedIn, stored
from tests.test_imap_server import MESSAGES, USER, Session, filledStore

USED = sum(len(m) for m in MESSAGES)
NEW = b"From: a@example.test\r\nSubject: new\r\n\r\nbody\r\n"


def withQuota(quota, store=None):
    """
    @return: a logged-in session of L{USER}, who has C{quota} and the three
        L{MESSAGES} in the INBOX.
    """
    store = filledStore() if store is None else store
    directory = SQLiteDirectory(":memory:")
    directory.addDomain("example.test")
    directory.addUser(USER, "secret")
    directory.setUserQuota(USER, quota)
    s = loggedIn(store=store, quotas=QuotaPolicy(directory, store, "postmaster@example.test"))
    s.directory = directory
    return s


def test_capabilities_only_with_quotas():
    s = withQuota(Quota(10000))
    s.send("c CAPABILITY")
    caps = s.lines()[0].split()
    assert {"QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"} <= set(caps)
    assert "QUOTASET" not in caps
    plain = loggedIn()
    plain.send("c CAPABILITY")
    assert "QUOTA" not in plain.lines()[0].split()
    plain.send("q GETQUOTAROOT INBOX")
    assert plain.lines()[0].startswith("q BAD ")


def test_getquotaroot_and_getquota():
    """
    RFC 9208 sections 4.1.1 and 4.1.2: the root of every folder, its use
    (STORAGE in units of 1024 octets, rounded up) and its limits.
    """
    s = withQuota(Quota(10 * 1024, 5))
    s.send("a GETQUOTAROOT INBOX")
    s.expect('* QUOTAROOT "INBOX" "User quota"',
             '* QUOTA "User quota" (STORAGE 1 10 MESSAGE 3 5)',
             "a OK Getquotaroot completed.")
    s.send('b GETQUOTA "User quota"')
    s.expect('* QUOTA "User quota" (STORAGE 1 10 MESSAGE 3 5)', "b OK Getquota completed.")
    s.send('c GETQUOTA "other"')
    s.expect("c NO [NONEXISTENT] No such quota root.")
    s.send("d GETQUOTAROOT Nope")
    s.expect("d NO [NONEXISTENT] Mailbox doesn't exist.")


def test_no_root_without_limits():
    s = withQuota(Quota())
    s.send("a GETQUOTAROOT INBOX")
    s.expect('* QUOTAROOT "INBOX"', "a OK Getquotaroot completed.")


def test_setquota_is_refused():
    s = withQuota(Quota(10000))
    s.send('a SETQUOTA "User quota" (STORAGE 100000)')
    s.expect("a NO [NOPERM] Quotas are set by the administrator.")
    assert s.directory.getQuota(USER) == Quota(10000)
    s.send("b SETQUOTA")
    assert s.lines()[0].startswith("b BAD ")


def test_append_over_quota_is_overquota():
    """
    RFC 9208 section 4.3.1: an APPEND past a limit is refused with
    C{OVERQUOTA}, and nothing is stored; one that fits is taken.
    """
    s = withQuota(Quota(USED + len(NEW)))
    s.sendRaw(b"a APPEND Drafts " + literal(NEW + b"!") + b"\r\n")
    s.expect("a NO [OVERQUOTA] Quota exceeded.")
    assert stored(s, "Drafts") == []
    s.sendRaw(b"b APPEND Drafts " + literal(NEW) + b"\r\n")
    s.expect("b OK [APPENDUID * 1] Append completed.")
    s.sendRaw(b"c APPEND Drafts " + literal(b"x\r\n") + b"\r\n")
    s.expect("c NO [OVERQUOTA] Quota exceeded.")


def test_multiappend_counts_every_message():
    s = withQuota(Quota(None, 4))
    s.sendRaw(b"a APPEND Drafts " + literal(NEW) + b" " + literal(NEW) + b"\r\n")
    s.expect("a NO [OVERQUOTA] Quota exceeded.")
    assert stored(s, "Drafts") == []


def test_copy_over_quota_copies_nothing_and_move_is_not_checked():
    s = withQuota(Quota(None, 4))
    s.send("x SELECT INBOX")
    s.lines()
    s.send("a COPY 1:2 Drafts")
    s.expect("a NO [OVERQUOTA] Quota exceeded.")
    assert stored(s, "Drafts") == []
    s.send("b COPY 1 Drafts")
    s.expect("b OK [COPYUID * 1 1] Copy completed.")
    # Full now; a MOVE still goes, as it adds nothing.
    s.send("c MOVE 2 Drafts")
    s.expect("* OK [COPYUID * 2 2] Moved UIDs.", "* 2 EXPUNGE", "c OK Move completed.")


def test_status_deleted():
    """
    RFC 9208 section 4.1.4: STATUS DELETED and DELETED-STORAGE.
    """
    s = withQuota(Quota(10000))
    s.send("x SELECT INBOX")
    s.lines()
    s.send("a STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    s.expect("a OK *")
    s.send("b STATUS INBOX (DELETED DELETED-STORAGE MESSAGES)")
    s.expect("* STATUS \"INBOX\" (DELETED 2 DELETED-STORAGE %d MESSAGES 3)" % (len(MESSAGES[0]) + len(MESSAGES[2]),),
             "b OK Status completed.")


def test_session_without_quotas_keeps_working():
    s = Session()
    s.login()
    s.sendRaw(b"a APPEND Drafts " + literal(NEW) + b"\r\n")
    s.expect("a OK [APPENDUID * 1] Append completed.")
