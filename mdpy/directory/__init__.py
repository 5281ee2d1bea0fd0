# -*- test-case-name: tests.test_directory -*-
"""
Domains, users and aliases: the values an L{mdpy.interfaces.IDirectory}
returns.  The SQLite implementation is L{mdpy.directory.sqlite}.
"""


class User:
    """
    A local account.

    @ivar address: the normalised address, C{localpart@domain}.
    @type address: L{str}
    @ivar domain: the domain part of C{address}.
    @ivar localpart: the local part of C{address}.
    @ivar enabled: whether the account takes mail and may log in.
    @type enabled: L{bool}
    """

    def __init__(self, address, domain, localpart, enabled=True):
        self.address = address
        self.domain = domain
        self.localpart = localpart
        self.enabled = bool(enabled)

    def _key(self):
        return (self.address, self.domain, self.localpart, self.enabled)

    def __eq__(self, other):
        if not isinstance(other, User):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return "<User %s%s>" % (self.address, "" if self.enabled else " disabled")


class Resolution:
    """
    What an address stands for after aliases and the catch-all are expanded.

    @ivar local: the addresses of local accounts (enabled ones only), without
        duplicates, in the order the expansion met them.
    @type local: L{list} of L{str}
    @ivar remote: addresses of other domains, likewise.
    @type remote: L{list} of L{str}
    @ivar caught: those of C{local} reached through a domain's catch-all
        rather than by name (as a user or an alias target).
    @type caught: L{frozenset} of L{str}
    """

    def __init__(self, local=(), remote=(), caught=()):
        self.local = list(local)
        self.remote = list(remote)
        self.caught = frozenset(caught)

    def __eq__(self, other):
        if not isinstance(other, Resolution):
            return NotImplemented
        return (self.local, self.remote, self.caught) == (other.local, other.remote, other.caught)

    __hash__ = None

    def __repr__(self):
        caught = ", caught=%r" % (sorted(self.caught),) if self.caught else ""
        return "Resolution(local=%r, remote=%r%s)" % (self.local, self.remote, caught)
