# -*- test-case-name: tests.test_directory -*-
"""
Domains, users and aliases: the values an L{mdpy.interfaces.IDirectory}
returns.  The SQLite implementation is L{mdpy.backends.files.directory}.
"""

from mdpy.address import normalise
from mdpy.errors import Exists, InvalidInput, NotFound

# RFC 5321 section 4.5.1 (postmaster) and RFC 2142 section 2 (abuse): the
# role addresses every local domain answers.
ROLE_LOCALPARTS = ("postmaster", "abuse")


def addRoleAliases(directory, domain, target):
    """
    Make the role addresses of C{domain} (L{ROLE_LOCALPARTS}) aliases of
    C{target}.  One that is a user or an alias already is kept as it is, and
    none is made an alias of itself.

    @param directory: an L{mdpy.interfaces.IDirectory} that has C{domain}.
    @param target: the address the role mail goes to, e.g. the server's
        postmaster account.
    @return: the aliases made, C{(alias, target)} each.
    """
    target = normalise(target)
    made = []
    for localpart in ROLE_LOCALPARTS:
        alias = normalise("%s@%s" % (localpart, domain))
        if alias == target:
            continue
        try:
            directory.addAlias(alias, [target])
        except Exists:
            continue
        made.append((alias, target))
    return made


def checkAliasTargets(directory, targets, alias=None):
    """
    Refuse an alias or a catch-all that would lose mail or loop, before it
    is made: each target in a local domain must be a user or an alias, and
    no target may lead back to C{alias} through other aliases.  Targets in
    other domains are remote and not checked.

    @param directory: an L{mdpy.interfaces.IDirectory}.
    @param targets: the addresses the mail is to go to.
    @param alias: the address to be made an alias of C{targets}, or
        L{None} for a catch-all.
    @raise NotFound: a target in a local domain is neither a user nor an
        alias.
    @raise InvalidInput: a target leads back to C{alias}.
    """
    targets = [normalise(target) for target in targets]
    alias = None if alias is None else normalise(alias)
    aliases = dict(directory.listAliases())
    for target in targets:
        if target == alias or target in aliases:
            continue
        domain = target.rpartition("@")[2]
        if directory.hasDomain(domain) and directory.getUser(target) is None:
            raise NotFound(
                "%s is neither a user nor an alias of the local domain %s" % (target, domain)
            )
    loop = _pathTo(alias, targets, aliases, set()) if alias is not None else []
    if loop:
        raise InvalidInput("%s would loop: %s" % (alias, " -> ".join([alias] + loop)))


def _pathTo(alias, targets, aliases, visited):
    """
    @return: the chain of addresses from one of C{targets} through
        C{aliases} to C{alias}, or C{[]} when there is none.
    """
    for target in targets:
        if target == alias:
            return [target]
        if target in visited or target not in aliases:
            continue
        visited.add(target)
        rest = _pathTo(alias, aliases[target], aliases, visited)
        if rest:
            return [target] + rest
    return []


class User:
    """
    A local account.

    @ivar address: the normalised address, C{localpart@domain}.
    @type address: L{str}
    @ivar domain: the domain part of C{address}.
    @ivar localpart: the local part of C{address}.
    @ivar enabled: whether the account takes mail and may log in.
    @type enabled: L{bool}
    @ivar accountId: what tells this account from any other ever made under
        the same address (see L{mdpy.interfaces.IDirectory}), or L{None}
        for an account the directory gave none.
    @type accountId: L{str} or L{None}
    """

    def __init__(self, address, domain, localpart, enabled=True, accountId=None):
        self.address = address
        self.domain = domain
        self.localpart = localpart
        self.enabled = bool(enabled)
        self.accountId = accountId

    def _key(self):
        return (self.address, self.domain, self.localpart, self.enabled, self.accountId)

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
    @ivar detail: the detail of a subaddress resolved as its user
        (C{"tag"} of C{bob+tag@example.org} delivered to C{bob}, RFC 5233),
        by which its copies may be filed; L{None} for any other address.
    @type detail: L{str} or L{None}
    """

    def __init__(self, local=(), remote=(), caught=(), detail=None):
        self.local = list(local)
        self.remote = list(remote)
        self.caught = frozenset(caught)
        self.detail = detail

    def _key(self):
        return (self.local, self.remote, self.caught, self.detail)

    def __eq__(self, other):
        if not isinstance(other, Resolution):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None

    def __repr__(self):
        caught = ", caught=%r" % (sorted(self.caught),) if self.caught else ""
        detail = ", detail=%r" % (self.detail,) if self.detail is not None else ""
        return "Resolution(local=%r, remote=%r%s%s)" % (self.local, self.remote, caught, detail)
