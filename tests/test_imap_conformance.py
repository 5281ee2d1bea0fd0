"""
Transcript tests of L{mdpy.imap.server} for the protocol details Dovecot's
imaptest checks: atoms, subscriptions in LSUB and LIST-EXTENDED, address
SEARCH, implicit CONDSTORE and keywords announced in FLAGS.
"""

from tests.test_imap_server import USER, Session

ODD_ATOM = "!#$&'+,-.0123456789:;<=>?@^_`|[}"


def test_atoms_with_open_bracket_and_close_brace():
    """
    C{[} and C{}} are ATOM-CHARs (RFC 3501 section 9): a mailbox name or a
    keyword holding them is read as an atom, not refused as a section with
    no C{]}.
    """
    s = Session()
    s.login()
    s.send("a SELECT " + ODD_ATOM, 'b LIST "" ' + ODD_ATOM + "%*", "c CREATE foo[bar")
    s.expect("a NO [NONEXISTENT] Mailbox doesn't exist.", "b OK List completed.", "c OK Create completed.")
    s.send('d LIST "" foo[bar', "e SELECT foo[bar")
    got = s.lines()
    assert got[:2] == ['* LIST (\\HasNoChildren) "/" "foo[bar"', "d OK List completed."]
    assert got[-1] == "e OK [READ-WRITE] Select completed."
    assert "foo[bar" in s.store.listMailboxes(USER)
