# -*- test-case-name: tests.test_senders -*-
"""
Which sender addresses an authenticated login may use, in the envelope
(RFC 5321 C{MAIL FROM}) and in the C{From} field (RFC 5322 section 3.6.2)
of what it submits: Postfix's C{reject_sender_login_mismatch}, with the
owners taken from the directory.

A login owns its own address and every address the directory resolves to
it: an alias naming it, a subaddress of either (C{bob+tag@}, RFC 5233), or
its domain's catch-all for an address that is no one's.  The address of
another account, or a subaddress of one, is never the login's.
"""

import re

from mdpy.address import normalise, splitAddress
from mdpy.errors import Disabled, InvalidInput, NotFound, SenderNotOwned
from mdpy.mail.addresslist import mailboxesIn

POLICY_LOGIN = "login"
POLICY_DOMAIN = "domain"
POLICY_ANY = "any"
POLICIES = (POLICY_LOGIN, POLICY_DOMAIN, POLICY_ANY)

# A From field of a header section with CR LF line ends, folded lines
# included (RFC 5322 sections 2.2.3 and 3.6.2; 4.5.3 allows space before
# the colon).
_FROM_FIELD = re.compile(rb"^from[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.I | re.M)


def fromMailboxes(header):
    """
    The mailboxes of every C{From} field of a header section.

    @param header: the header section as stored (CR LF line ends), without
        the message body.
    @return: C{(addresses, malformed)}: the normal forms of the addresses,
        and whether a field holds something address-like that cannot be
        read (which a mail reader might still show as the sender).
    """
    addresses, malformed = [], False
    for match in _FROM_FIELD.finditer(header):
        value = match.group(1).replace(b"\r\n", b"").decode("utf-8", "replace")
        found, rejected = mailboxesIn(value)
        addresses.extend(found)
        malformed = malformed or bool(rejected)
    return addresses, malformed


class SenderPolicy:
    """
    The sender addresses each login may use.

    @ivar directory: the L{mdpy.interfaces.IDirectory} that says who owns
        an address.
    @ivar policy: L{POLICY_LOGIN} (the addresses the login owns),
        L{POLICY_DOMAIN} (those and any address of the login's domain) or
        L{POLICY_ANY} (any address, the null sender and any C{From}).
    """

    def __init__(self, directory, policy=POLICY_LOGIN):
        if policy not in POLICIES:
            raise ValueError("sender policy %r is not one of %s" % (policy, ", ".join(POLICIES)))
        self.directory = directory
        self.policy = policy

    def __repr__(self):
        return "<SenderPolicy %s>" % (self.policy,)

    @property
    def checksHeader(self):
        """
        Whether the C{From} field is checked too.
        """
        return self.policy != POLICY_ANY

    def check(self, login, sender):
        """
        @param login: the normalised address an SMTP client authenticated as.
        @param sender: an envelope sender (C{""} for the null sender C{<>})
            or a C{From} address.
        @raise SenderNotOwned: the login may not send as C{sender}.
        @raise mdpy.errors.TemporaryFailure: the directory cannot answer.
        """
        if self.policy == POLICY_ANY:
            return
        if not self._mayUse(login, sender):
            raise SenderNotOwned("<%s> is not owned by %s" % (sender, login))

    def checkHeader(self, login, header):
        """
        Check each address of the C{From} fields of C{header} (see
        L{fromMailboxes}) with L{check}.  A message without a C{From}
        address passes: RFC 6409 section 8.3 lets a submission server add
        one.

        @raise SenderNotOwned: one of them is not the login's, or cannot be
            read.
        """
        if not self.checksHeader:
            return
        addresses, malformed = fromMailboxes(header)
        if malformed:
            raise SenderNotOwned("unreadable From address from %s" % (login,))
        for address in addresses:
            if not self._mayUse(login, address):
                raise SenderNotOwned("From <%s> is not owned by %s" % (address, login))

    def _mayUse(self, login, sender):
        if not sender:
            return False
        try:
            address = normalise(sender)
        except InvalidInput:
            return False
        if self._owns(login, address):
            return True
        return self.policy == POLICY_DOMAIN and _domain(address) == _domain(login)

    def _owns(self, login, address):
        """
        @return: whether C{address} is C{login} or reaches it through the
            directory (L{mdpy.interfaces.IDirectory.resolve}: subaddresses
            included, before the catch-all); the address of another account
            is never the login's.
        """
        if address == login:
            return True
        if self.directory.getUser(address) is not None:
            return False
        try:
            resolution = self.directory.resolve(address)
        except (NotFound, Disabled, InvalidInput):
            return False
        return login in resolution.local


def _domain(address):
    try:
        return splitAddress(address)[1]
    except InvalidInput:
        return None
