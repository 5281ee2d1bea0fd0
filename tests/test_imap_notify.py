"""
Transcript tests of NOTIFY (RFC 5465, L{mdpy.imap.notify}): two sessions
on one in-memory store, the first asking for notifications, the second
making the changes it hears of without sending a command.
"""

import pytest
from twisted.internet import defer

from mdpy.imap import notify
from mdpy.testing import capturedLogs
from tests.test_imap_server import USER, Session, filledStore, twoSessions

NEW = b"Subject: new\r\n\r\nnew\r\n"


def statusOf(store, name, items="MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1"):
    return '* STATUS "%s" (%s)' % (name, items % (store.openMailbox(USER, name).uidValidity,))


def loggedIn(store):
    s = Session(store=store)
    s.login()
    return s


def notifying(groups, store=None):
    """
    @return: the store (by default a filled one) and two sessions logged
        in to it, the first after C{NOTIFY SET groups}.
    """
    store = filledStore() if store is None else store
    one, two = loggedIn(store), loggedIn(store)
    one.send("n NOTIFY SET " + groups)
    one.expect("n OK NOTIFY completed.")
    return store, one, two


def test_capability():
    s = loggedIn(filledStore())
    s.send("c CAPABILITY")
    assert " NOTIFY" in s.lines()[0]


def test_set_status_sends_status_of_each_mailbox_now():
    """
    RFC 5465 section 3.1: with STATUS, a STATUS response for each mailbox
    the message events cover, with the items those events tell of; without
    it, none.
    """
    store = filledStore()
    store.deliver([(USER, "Sent", [NEW])])
    s = loggedIn(store)
    s.send("n NOTIFY SET STATUS (MAILBOXES (Sent Drafts) (MessageNew MessageExpunge))")
    s.expect('* STATUS "Drafts" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY %d UNSEEN 0)'
             % (store.openMailbox(USER, "Drafts").uidValidity,),
             statusOf(store, "Sent"),
             "n OK NOTIFY completed.")
    s.send("f NOTIFY SET STATUS (MAILBOXES Sent (FlagChange))")
    s.expect('* STATUS "Sent" (UIDVALIDITY * UNSEEN 1 HIGHESTMODSEQ *)', "f OK NOTIFY completed.")
    s.send("o NOTIFY SET (MAILBOXES Sent (MessageNew MessageExpunge))")
    s.expect("o OK NOTIFY completed.")


def test_status_of_other_mailbox_pushed_without_a_command():
    store, one, two = notifying("(PERSONAL (MessageNew MessageExpunge FlagChange))")
    two.send("a APPEND Sent {%d+}" % (len(NEW),), NEW.decode())
    two.expect("a OK [APPENDUID * 1] Append completed.")
    one.expect(statusOf(store, "Sent", "MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1 HIGHESTMODSEQ *"))
    two.send("s SELECT Sent", "f STORE 1 +FLAGS (\\Seen)")
    two.lines()
    one.expect(statusOf(store, "Sent", "MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 0 HIGHESTMODSEQ *"))
    # What did not change what the STATUS says is not sent again.
    two.send("g STORE 1 FLAGS (\\Seen)")
    two.lines()
    assert one.lines() == []


def test_selected_mailbox_updates_pushed_outside_idle():
    """
    RFC 5465 section 5.1: with SELECTED, new messages, flag changes and
    expunges are sent as they happen, no command needed.
    """
    store, one, two = twoSessions()
    one.send("n NOTIFY SET (SELECTED (MessageNew MessageExpunge FlagChange))")
    one.expect("n OK NOTIFY completed.")
    store.deliver([(USER, "INBOX", [NEW])])
    one.expect("* 4 EXISTS", "* 1 RECENT")
    two.send("f STORE 1 +FLAGS (\\Flagged)")
    two.lines()
    one.expect("* 1 FETCH (FLAGS (\\Flagged))")
    two.send("d STORE 2 +FLAGS.SILENT (\\Deleted)", "e EXPUNGE")
    two.lines()
    assert one.lines()[-1] == "* 2 EXPUNGE"


def test_selected_delayed_holds_expunges_until_a_command_allows_them():
    """
    RFC 5465 section 5.2: SELECTED-DELAYED sends no EXPUNGE but where a
    command may (NOOP here, not FETCH).
    """
    store, one, two = twoSessions()
    one.send("n NOTIFY SET (SELECTED-DELAYED (MessageNew MessageExpunge FlagChange))")
    one.expect("n OK NOTIFY completed.")
    two.send("d STORE 2 +FLAGS.SILENT (\\Deleted)", "e EXPUNGE")
    two.lines()
    one.expect("* 2 FETCH (FLAGS (\\Deleted))")
    store.deliver([(USER, "INBOX", [NEW])])
    one.expect("* 4 EXISTS", "* 1 RECENT")
    one.send("f FETCH 2 (FLAGS)")
    one.expect("* 2 FETCH (FLAGS (\\Deleted))", "f OK Fetch completed.")
    one.send("o NOOP")
    one.expect("* 2 EXPUNGE", "o OK NOOP completed.")


def test_no_unsolicited_updates_of_selected_mailbox_without_selected_filter():
    store, one, two = twoSessions()
    one.send("n NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
    one.expect("n OK NOTIFY completed.")
    store.deliver([(USER, "INBOX", [NEW])])
    # No STATUS of the selected mailbox either (RFC 5465 section 5.1).
    assert one.lines() == []
    one.send("o NOOP")
    one.expect("* 4 EXISTS", "* 1 RECENT", "o OK NOOP completed.")


def test_mailbox_name_and_subscription_change():
    """
    RFC 5465 section 5.4: LIST for a mailbox made, deleted or renamed, and
    for a subscription changed.
    """
    store, one, two = notifying("(PERSONAL (MailboxName SubscriptionChange))")
    two.send("c CREATE Work")
    two.expect("c OK Create completed.")
    one.expect('* LIST (\\HasNoChildren) "/" "Work"')
    two.send("s SUBSCRIBE Work")
    two.expect("s OK Subscribe completed.")
    one.expect('* LIST (\\HasNoChildren \\Subscribed) "/" "Work"')
    two.send("r RENAME Work Play")
    two.expect("r OK Rename completed.")
    # The subscription stays with the old name (RFC 3501 section 6.3.5).
    one.expect('* LIST (\\HasNoChildren) "/" "Play"', '* LIST (\\NonExistent \\Subscribed) "/" "Work"')
    two.send("d DELETE Play")
    two.expect("d OK Delete completed.")
    one.expect('* LIST (\\NonExistent) "/" "Play"')
    two.send("u UNSUBSCRIBE Work")
    two.expect("u OK Unsubscribe completed.")
    one.expect('* LIST (\\NonExistent) "/" "Work"')


def test_mailbox_made_is_told_by_status_only_with_messages():
    """
    A mailbox just made is told of by LIST; its STATUS follows only when
    it holds messages already (one renamed with its messages), else it is
    what later changes are compared with.
    """
    store, one, two = notifying("(PERSONAL (MessageNew MessageExpunge MailboxName))")
    store.deliver([(USER, "Sent", [NEW])])
    one.expect(statusOf(store, "Sent"))
    two.send("c CREATE Work")
    two.expect("c OK Create completed.")
    one.expect('* LIST (\\HasNoChildren) "/" "Work"')
    store.deliver([(USER, "Work", [NEW])])
    one.expect(statusOf(store, "Work"))
    two.send("r RENAME Sent Kept")
    two.expect("r OK Rename completed.")
    one.expect('* LIST (\\HasNoChildren) "/" "Kept"', '* LIST (\\NonExistent \\Subscribed) "/" "Sent"',
               statusOf(store, "Kept"))


def test_only_mailboxes_named():
    store, one, two = notifying("(MAILBOXES Drafts (MessageNew MessageExpunge)) (SUBTREE Lists (MailboxName))")
    store.deliver([(USER, "Sent", [NEW])])
    two.send("c CREATE Other", "d CREATE Lists/Work")
    two.lines()
    # CREATE makes the name first, then its parent.
    one.expect('* LIST (\\HasNoChildren) "/" "Lists/Work"', '* LIST (\\HasChildren) "/" "Lists"')
    store.deliver([(USER, "Drafts", [NEW])])
    one.expect(statusOf(store, "Drafts"))


def test_notify_none_stops():
    store = filledStore()
    one = loggedIn(store)
    one.send("n NOTIFY SET (PERSONAL (MessageNew MessageExpunge))", "o NOTIFY NONE")
    one.expect("n OK NOTIFY completed.", "o OK NOTIFY completed.")
    store.deliver([(USER, "Sent", [NEW])])
    assert one.lines() == []


@pytest.mark.parametrize("event", ["AnnotationChange", "MailboxMetadataChange", "ServerMetadataChange", "XFoo"])
def test_unsupported_events_are_badevent(event):
    s = loggedIn(filledStore())
    s.send("n NOTIFY SET (PERSONAL (MessageNew MessageExpunge %s))" % (event,))
    s.expect("n NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)] "
             "Event not supported.")


@pytest.mark.parametrize("arguments", [
    "", "FOO", "NONE x", "SET", "SET STATUS", "SET (BOGUS (MessageNew))", "SET (PERSONAL)",
    "SET (SUBTREE (MessageNew))", "SET (MAILBOXES () (MessageNew))", "SET (PERSONAL MessageNew)",
    "SET (PERSONAL (MessageNew)) (PERSONAL (MessageNew))",
    "SET (SELECTED (MessageNew)) (SELECTED-DELAYED (MessageNew))",
    "SET (SELECTED (MailboxName))",
])
def test_syntax_errors_are_bad(arguments):
    s = loggedIn(filledStore())
    s.send(("n NOTIFY " + arguments).rstrip())
    [line] = s.lines()
    assert line.startswith("n BAD "), line


def test_too_many_mailboxes_is_notificationoverflow(monkeypatch):
    """
    A NOTIFY naming or covering more mailboxes than a session watches is
    refused (RFC 5465 section 5.8's code), and the one before stays.
    """
    monkeypatch.setattr(notify, "MAX_MAILBOXES", 3)
    store = filledStore()
    s = loggedIn(store)
    s.send("n NOTIFY SET (INBOXES (MessageNew MessageExpunge))")
    s.expect("n OK NOTIFY completed.")
    s.send("m NOTIFY SET (MAILBOXES (a b c d) (MessageNew MessageExpunge))")
    s.expect("m NO [NOTIFICATIONOVERFLOW] Too many mailboxes to watch.")
    s.send("p NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
    s.expect("p NO [NOTIFICATIONOVERFLOW] Too many mailboxes to watch.")
    store.deliver([(USER, "INBOX", [NEW])])
    s.expect('* STATUS "INBOX" (MESSAGES 4 UIDNEXT 5 UIDVALIDITY * UNSEEN 4)')


def listHeld(store, s, pattern):
    """
    Send C{LIST "" pattern}, its answer held back.

    @return: a function that lets it go on.
    """
    waiting = defer.Deferred()
    listMailboxes = store.listMailboxes
    store.listMailboxes = lambda address: waiting.addCallback(lambda _: listMailboxes(address))
    s.send('l LIST "" ' + pattern)

    def release():
        store.listMailboxes = listMailboxes
        waiting.callback(None)

    return release


def test_changes_heard_during_a_command_wait_for_its_end():
    """
    Nothing is sent while a command runs: a STATUS heard meanwhile comes
    after its tagged reply, never inside its responses.
    """
    store, s, _ = notifying("(PERSONAL (MessageNew MessageExpunge))")
    release = listHeld(store, s, "Sent")
    store.deliver([(USER, "Sent", [NEW])])
    assert s.lines() == []
    release()
    s.expect('* LIST (\\HasNoChildren \\Sent) "/" "Sent"', "l OK List completed.", statusOf(store, "Sent"))


def test_overflow_of_changes_stops_notifying(monkeypatch):
    """
    More mailboxes changed while one command runs than a session holds:
    OK [NOTIFICATIONOVERFLOW], and no more notifications.
    """
    monkeypatch.setattr(notify, "MAX_MAILBOXES", 8)
    store = filledStore()
    for n in range(2):
        store.createMailbox(USER, "m%d" % (n,))
    store, s, _ = notifying("(PERSONAL (MessageNew MessageExpunge))", store)
    release = listHeld(store, s, "INBOX")
    store.createMailbox(USER, "m2")
    for name in ["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive", "m0", "m1", "m2"]:
        store.deliver([(USER, name, [NEW])])
    release()
    s.expect('* LIST (\\HasNoChildren) "/" "INBOX"', "l OK List completed.",
             "* OK [NOTIFICATIONOVERFLOW] Too many changes; notifications stopped.")
    store.deliver([(USER, "Sent", [NEW])])
    assert s.lines() == []


def test_message_new_fetch_attributes():
    """
    RFC 5465 section 5.2: MessageNew's fetch attributes come in a FETCH of
    each new message, with its UID, without setting \\Seen.
    """
    store, one, two = twoSessions()
    one.send("n NOTIFY SET (SELECTED (MessageNew (FLAGS BODY[HEADER.FIELDS (SUBJECT)] BODY[]) MessageExpunge))")
    one.expect("n OK NOTIFY completed.")
    store.deliver([(USER, "INBOX", [NEW])])
    one.expect("* 4 EXISTS", "* 1 RECENT",
               "* 4 FETCH (UID 4 FLAGS (\\Recent) BODY[HEADER.FIELDS (SUBJECT)] {16}",
               "Subject: new",
               "",
               " BODY[] {21}",
               "Subject: new",
               "",
               "new",
               ")")
    assert store.openMailbox(USER).messages()[-1].flags == frozenset()
    # The same when the new message is taken in by a command; a message
    # APPENDed by a session into its selected mailbox is recent to that
    # session, as in Dovecot.
    store.deliver([(USER, "INBOX", [NEW])])
    one.lines()
    two.send("a APPEND INBOX {%d+}" % (len(NEW),), NEW.decode())
    assert two.lines()[:2] == ["* 6 EXISTS", "* 1 RECENT"]
    assert "* 6 FETCH (UID 6 FLAGS () BODY[HEADER.FIELDS (SUBJECT)] {16}" in one.lines()


def test_message_new_fetch_attributes_only_for_selected():
    s = loggedIn(filledStore())
    s.send("n NOTIFY SET (PERSONAL (MessageNew (UID) MessageExpunge))")
    assert s.lines()[0].startswith("n BAD ")
    s.send("n NOTIFY SET (SELECTED (MessageNew (NOSUCH) MessageExpunge))")
    assert s.lines()[0].startswith("n BAD ")


def test_mailboxes_of_a_deleted_account_are_not_a_failure():
    """
    The account's folders deleted under a session asking for
    notifications: nothing is sent, and nothing logged as a failure.
    """
    store, one, two = notifying("(PERSONAL (MessageNew MessageExpunge MailboxName))")
    with capturedLogs() as logs:
        store.deleteAccount(USER)
        store.changeFeed.notify(USER, "Sent")
    assert one.lines() == []
    assert [event for event in logs if event.get("log_failure") is not None] == []
