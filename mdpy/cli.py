# -*- test-case-name: tests.test_cli -*-
"""
The C{mdpy} administration command.

Every change goes to the same directory database the server reads on each
lookup, so a running server sees it at once.  Errors are one line on standard
error and a non-zero exit status, never a traceback.
"""

import argparse
import getpass
import os
import re
import sys
import time

from mdpy import __version__
from mdpy.address import normalise, normaliseDomain
from mdpy.config import (
    SYSTEM_DATA_DIR, Config, ConfigError, configPath, defaultDataDir, defaultHostname, referenceIni, starterIni,
)
from mdpy.datadir import DataDir
from mdpy.errors import MailError, describe

EXIT_ERROR = 1


class CommandError(Exception):
    """
    A failure to report as one line.
    """


def _parser():
    parser = argparse.ArgumentParser(
        prog="mdpy", description="Administer an mdpy mail server."
    )
    parser.add_argument("--version", action="version", version="mdpy " + __version__)
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="configuration file (default: $MDPY_CONFIG, /etc/mdpy/mdpy.ini or"
        " $XDG_CONFIG_HOME/mdpy/mdpy.ini, else the embedded default, as twistd mdpy finds it)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    domain = commands.add_parser("domain", help="local domains").add_subparsers(
        dest="action", required=True
    )
    domain.add_parser(
        "add", help="add a domain, with postmaster@ and abuse@ aliases of the server's postmaster"
    ).add_argument("name")
    domain.add_parser("list", help="list domains")
    _deletion(domain.add_parser(
        "del", help="delete a domain, its users and aliases; its mail goes to data_dir/deleted/"
    )).add_argument("name")
    catchall = domain.add_parser("catchall", help="show, set or clear a domain's catch-all address")
    catchall.add_argument("name")
    catchall.add_argument("target", nargs="?", help="address; omit to show the current one")
    catchall.add_argument("--clear", action="store_true", help="turn the catch-all off")
    _quotaArguments(domain.add_parser(
        "quota", help="show or set the quota of each account of a domain that has none of its own"
    ), "name")

    user = commands.add_parser("user", help="mail accounts").add_subparsers(
        dest="action", required=True
    )
    add = user.add_parser("add", help="add an account (password read from stdin if not given)")
    add.add_argument("address")
    add.add_argument("--password")
    user.add_parser("list", help="list accounts, disabled ones marked (disabled)").add_argument("domain", nargs="?")
    _deletion(user.add_parser(
        "del", help="delete an account; its mail goes to data_dir/deleted/"
    )).add_argument("address")
    user.add_parser("passwd", help="read a new password from stdin").add_argument("address")
    user.add_parser("disable", help="keep the account, refuse its mail").add_argument("address")
    user.add_parser("enable", help="take mail for the account again").add_argument("address")
    _quotaArguments(user.add_parser(
        "quota", help="show an account's quota and use, or set it (replaces its domain's)"
    ), "address")

    alias = commands.add_parser("alias", help="aliases").add_subparsers(
        dest="action", required=True
    )
    aliasAdd = alias.add_parser("add", help="map an address to one or more targets")
    aliasAdd.add_argument("alias")
    aliasAdd.add_argument("targets", nargs="+")
    alias.add_parser("list", help="list aliases")
    alias.add_parser("del", help="delete an alias").add_argument("alias")

    queue = commands.add_parser("queue", help="outbound queue").add_subparsers(
        dest="action", required=True
    )
    queue.add_parser("list", help="list queued messages")
    queue.add_parser("flush", help="retry everything now")
    queue.add_parser("del", help="delete a queued message").add_argument("id")

    domainpop = commands.add_parser("domainpop", help="DomainPOP collection").add_subparsers(
        dest="action", required=True
    )
    domainpop.add_parser("run", help="run one collection now").add_argument("name")
    domainpop.add_parser("held", help="list the messages kept for the administrator").add_argument("name")
    probe = domainpop.add_parser(
        "probe", help="find the header that holds the envelope recipient, from archived mail"
    )
    probe.add_argument("name")
    probe.add_argument("--address", required=True, help="an address that was only BCC'd")
    probe.add_argument("--archive", help="archive directory (default: the section's archive_dir)")

    odmr = commands.add_parser("odmr", help="ODMR: release mail held by a provider").add_subparsers(
        dest="action", required=True
    )
    odmr.add_parser("release", help="connect to an [odmr-client:NAME] provider and take its mail now").add_argument("name")

    multipop = commands.add_parser("multipop", help="users' remote POP3 accounts").add_subparsers(
        dest="action", required=True
    )
    mpAdd = multipop.add_parser("add", help="collect a remote POP3 account into USER's INBOX")
    mpAdd.add_argument("user")
    mpAdd.add_argument("--host", required=True)
    mpAdd.add_argument("--port", type=int, default=None, help="default: 110, or 995 with --tls implicit")
    mpAdd.add_argument("--tls", choices=("starttls", "implicit", "none"), default="starttls")
    mpAdd.add_argument("--username", required=True)
    mpAdd.add_argument("--password", help="read from standard input if not given")
    mpAdd.add_argument("--leave-on-server-days", type=int, default=0, dest="leave")
    multipop.add_parser("list", help="list the accounts (without passwords)").add_argument("user", nargs="?")
    multipop.add_parser("del", help="stop collecting an account").add_argument("id")
    multipop.add_parser("run", help="collect every account now")
    multipop.add_parser("held", help="list the messages kept for the administrator").add_argument("id", nargs="?")

    dkim = commands.add_parser("dkim", help="DKIM keys").add_subparsers(
        dest="action", required=True
    )
    generate = dkim.add_parser(
        "generate", help="make a key, sign the domain's mail with it, print its DNS record"
    )
    generate.add_argument("domain")
    generate.add_argument("--selector", default="mdpy", help="key selector (default: mdpy)")
    generate.add_argument("--bits", type=int, default=2048, help="RSA key size (default: 2048)")
    dkim.add_parser("list", help="the domains signed for, with their record names")
    dkim.add_parser("show", help="print a domain's DNS record again").add_argument("domain")
    dkim.add_parser("disable", help="stop signing a domain's mail (its key is kept as .disabled)").add_argument("domain")

    dns = commands.add_parser("dns", help="the DNS records a local domain needs, in zone-file syntax")
    dns.add_argument("domain")
    dns.add_argument(
        "--check", action="store_true", help="look each record up (through [dns] nameservers) and say which are missing or differ"
    )

    commands.add_parser("check", help="validate the configuration")

    init = commands.add_parser(
        "init", help="write a starter configuration (to PATH, or where every command looks for it)"
    )
    init.add_argument("path", nargs="?", metavar="PATH")
    init.add_argument("--domain", help="the first local domain (default: the host name)")
    init.add_argument("--hostname", help="name in greetings (default: this host's FQDN)")
    init.add_argument("--data-dir", dest="dataDir", metavar="DIR",
                      help="where mail and state live (default: /var/lib/mdpy as root, else $XDG_DATA_HOME/mdpy)")
    init.add_argument("--reference", action="store_true",
                      help="print the reference configuration, every key at its default, instead")
    commands.add_parser(
        "reload", help="make the running server read its configuration again, keeping its connections"
    )
    return parser


def _deletion(parser):
    """
    Give a deleting command C{--purge} and C{--yes}.
    """
    parser.add_argument("--purge", action="store_true", help="remove the mail for good")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


def confirm(question, args, stdout, stdin):
    """
    Ask C{question} on a terminal, unless C{--yes} was given or standard
    input is not a terminal (a script).

    @raise CommandError: the answer was not yes.
    """
    if args.yes or not stdin.isatty():
        return
    stdout.write(question + " [y/N] ")
    stdout.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandError("not confirmed; nothing was deleted")


def _mailFate(args, datadir):
    if args.purge:
        return "remove its mail for good"
    return "move its mail to %s/" % (datadir.deletedDir,)


def _reportRemoved(removed, stdout):
    """
    Say where the mail of a deleted user or domain went, one line per tree.

    @param removed: what L{mdpy.interfaces.IMailStore.deleteAccount}
        returned.
    """
    if removed is None:
        return
    where, keptAt = removed
    if keptAt is None:
        stdout.write("removed %s\n" % (where,))
    else:
        stdout.write("moved %s to %s\n" % (where, keptAt))


def _removeMultipop(backend, users, stdout):
    """
    Stop collecting the remote POP3 accounts of deleted C{users} (their
    passwords go with them), one line each.
    """
    accounts = backend.remoteAccounts
    for account in accounts.list():
        if account["user"] in users:
            accounts.remove(account["id"])
            stdout.write("removed MultiPOP account %s %s@%s\n" % (account["id"], account["username"], account["host"]))


def _readPassword(stdin, prompt):
    if stdin.isatty():
        return getpass.getpass(prompt)
    line = stdin.readline()
    if not line:
        raise CommandError("no password given on standard input")
    return line.rstrip("\r\n")


def run(argv, stdout, stdin):
    """
    Carry out one command.

    @raise CommandError, ConfigError, MailError: reported as one line.
    """
    args = _parser().parse_args(argv)
    if args.command == "init":
        _init(args, stdout)
        return
    config = Config.load(configPath(args.config))
    if args.command == "check":
        _check(config, stdout)
        return
    datadir = DataDir(config["server"]["data_dir"])
    handler = globals()["_" + args.command]
    handler(args, config, datadir, stdout, stdin)


def _backend(config, reactor=None):
    """
    @return: the L{mdpy.interfaces.IBackend} of C{config}, built for the
        command line: without a thread pool, so its store and directory
        answer at once.
    """
    from mdpy import backends

    try:
        return backends.load(config["server"]["backend"], config, reactor)
    except MailError as e:
        raise CommandError("[server] backend: %s" % (e,)) from None


def _check(config, stdout):
    from mdpy.configcheck import checkConfig

    checkConfig(config)
    stdout.write("configuration ok: %s\n" % (config.summary(),))


def _init(args, stdout):
    """
    Write a starter configuration, never over an existing file, or print
    the reference.
    """
    if args.reference:
        stdout.write(referenceIni())
        return
    root = os.geteuid() == 0
    path = os.path.abspath(args.path or configPath(args.config, creating=True, root=root))
    hostname = args.hostname or defaultHostname()
    dataDir = os.path.abspath(args.dataDir) if args.dataDir else (SYSTEM_DATA_DIR if root else defaultDataDir())
    text = starterIni(hostname, args.domain or hostname, dataDir)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        raise CommandError("%s exists; not overwritten (edit it, or give another PATH)" % (path,)) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(fd, 0o640)
        f.write(text)
    stdout.write("wrote %s (data_dir %s); check it with: mdpy -c %s check\n" % (path, dataDir, path))


def _quotaArguments(parser, name):
    parser.add_argument(name)
    parser.add_argument("size", nargs="?", help="storage limit: 500M, 2G, octets, or none")
    parser.add_argument("--messages", metavar="N", help="message limit: a number, or none")
    return parser


def _newQuota(args, current):
    """
    @return: the L{Quota} C{args} set, C{current} for what they leave out;
        L{None} when they set nothing (show it).
    @raise MailError: a bad size or number (L{mdpy.errors.InvalidInput}).
    """
    from mdpy.quota import Quota, parseCount, parseSize

    if args.size is None and args.messages is None:
        return None
    storage = current.storage if args.size is None else parseSize(args.size)
    messages = current.messages if args.messages is None else parseCount(args.messages)
    return Quota(storage, messages)


def _userQuota(args, backend, stdout):
    """
    Show or set (C{mdpy user quota ADDRESS [SIZE] [--messages N]}) the
    quota of an account.
    """
    from mdpy.quota import formatSize

    directory = backend.directory
    user = directory.getUser(args.address)
    if user is None:
        raise CommandError("no such user: %s" % (args.address,))
    quota = _newQuota(args, directory.getUserQuota(user.address))
    if quota is not None:
        directory.setUserQuota(user.address, quota)
        directory.setQuotaWarned(user.address, False)
    own = directory.getUserQuota(user.address)
    limits = directory.getQuota(user.address)
    origin = "" if own or not limits else " (the quota of %s)" % (user.domain,)
    usage = backend.store.usage(user.address)
    stdout.write("%s: quota %s%s; uses %s in %d messages\n" % (
        user.address, limits.describe(), origin, formatSize(usage.storage), usage.messages))


def _domainQuota(args, backend, stdout):
    """
    Show or set (C{mdpy domain quota DOMAIN [SIZE] [--messages N]}) the
    quota of each account of a domain that has none of its own.
    """
    directory = backend.directory
    domain = normaliseDomain(args.name)
    if not directory.hasDomain(domain):
        raise CommandError("no such domain: %s" % (domain,))
    quota = _newQuota(args, directory.getDomainQuota(domain))
    if quota is not None:
        directory.setDomainQuota(domain, quota)
    stdout.write("%s: quota %s for each account without its own\n"
                 % (domain, directory.getDomainQuota(domain).describe()))


def _domain(args, config, datadir, stdout, stdin):
    backend = _backend(config)
    directory = backend.directory
    if args.action == "add":
        from mdpy.directory import addRoleAliases

        directory.addDomain(args.name)
        stdout.write("added domain %s\n" % (normaliseDomain(args.name),))
        # The server's postmaster account (made at its first start) until
        # the directory knows a domain's own administrators.
        postmaster = "postmaster@" + config["server"]["domain"]
        for alias, target in addRoleAliases(directory, args.name, postmaster):
            stdout.write("added alias %s %s\n" % (alias, target))
    elif args.action == "list":
        for name in directory.listDomains():
            stdout.write(name + "\n")
    elif args.action == "del":
        domain = normaliseDomain(args.name)
        if not directory.hasDomain(domain):
            raise CommandError("no such domain: %s" % (domain,))
        users = directory.listUsers(domain)
        confirm(
            "Delete domain %s with its %d users and its aliases, and %s?"
            % (domain, len(users), _mailFate(args, datadir)),
            args, stdout, stdin,
        )
        # First the directory: from then on new mail for the domain is
        # refused at RCPT and its users cannot log in; then the tree leaves
        # in one rename, so a delivery still in flight fails rather than
        # writing into it (see MaildirStore._removeTree).
        directory.removeDomain(domain)
        stdout.write("deleted domain %s and its %d users\n" % (domain, len(users)))
        _removeMultipop(backend, set(users), stdout)
        _reportRemoved(backend.store.deleteDomain(domain, archive=not args.purge), stdout)
    elif args.action == "catchall":
        _catchAll(args, directory, stdout)
    elif args.action == "quota":
        _domainQuota(args, backend, stdout)


def _catchAll(args, directory, stdout):
    """
    Show, set or clear (C{--clear}) the catch-all of a domain.
    """
    domain = normaliseDomain(args.name)
    current = directory.getCatchAll(domain)
    if args.clear:
        if args.target is not None:
            raise CommandError("give a target or --clear, not both")
        directory.setCatchAll(domain, None)
        if current is None:
            stdout.write("%s had no catch-all\n" % (domain,))
        else:
            stdout.write("cleared the catch-all of %s (was %s)\n" % (domain, current))
    elif args.target is None:
        stdout.write("%s\n" % (current,) if current else "%s has no catch-all\n" % (domain,))
    else:
        from mdpy.directory import checkAliasTargets

        target = normalise(args.target)
        checkAliasTargets(directory, [target])
        directory.setCatchAll(domain, target)
        stdout.write("mail for unknown addresses of %s now goes to %s\n" % (domain, target))


def _user(args, config, datadir, stdout, stdin):
    backend = _backend(config)
    directory = backend.directory
    if args.action == "add":
        password = args.password
        if password is None:
            password = _readPassword(stdin, "Password: ")
        _checkPassword(config, password)
        directory.addUser(args.address, password)
        address = directory.getUser(args.address).address
        backend.store.createAccount(address)
        stdout.write("added user %s\n" % (address,))
    elif args.action == "list":
        for address in directory.listUsers(args.domain):
            user = directory.getUser(address)
            disabled = user is not None and not user.enabled
            stdout.write(address + (" (disabled)" if disabled else "") + "\n")
    elif args.action == "del":
        user = directory.getUser(args.address)
        if user is None:
            raise CommandError("no such user: %s" % (args.address,))
        confirm(
            "Delete user %s and %s?" % (user.address, _mailFate(args, datadir)), args, stdout, stdin
        )
        # First the directory (new mail is refused at RCPT, logins fail),
        # then the mail tree, in one rename (see domain del).
        directory.removeUser(user.address)
        stdout.write("deleted user %s\n" % (user.address,))
        _removeMultipop(backend, {user.address}, stdout)
        _reportRemoved(backend.store.deleteAccount(user.address, archive=not args.purge), stdout)
    elif args.action == "passwd":
        user = directory.getUser(args.address)
        if user is None:
            raise CommandError("no such user: %s" % (args.address,))
        password = _readPassword(stdin, "New password: ")
        _checkPassword(config, password)
        directory.setPassword(user.address, password)
        stdout.write("changed the password of %s\n" % (user.address,))
    elif args.action in ("disable", "enable"):
        enable = args.action == "enable"
        directory.setEnabled(args.address, enable)
        address = directory.getUser(args.address).address
        if enable:
            stdout.write("enabled user %s: its mail is taken and it may log in\n" % (address,))
        else:
            stdout.write("disabled user %s: its mail is refused and it may not log in "
                         "(its mailbox is kept)\n" % (address,))
    elif args.action == "quota":
        _userQuota(args, backend, stdout)


def _checkPassword(config, password):
    """
    @raise CommandError: C{password} is shorter than C{[auth]
        min_password_length}.
    """
    shortest = config["auth"]["min_password_length"]
    if not password:
        raise CommandError("empty password")
    if len(password) < shortest:
        raise CommandError(
            "the password is too short: at least %d characters ([auth] min_password_length)" % (shortest,)
        )


def _alias(args, config, datadir, stdout, stdin):
    backend = _backend(config)
    directory = backend.directory
    if args.action == "add":
        from mdpy.directory import checkAliasTargets

        alias = normalise(args.alias)
        checkAliasTargets(directory, args.targets, alias)
        directory.addAlias(alias, args.targets)
        stdout.write("added alias %s %s\n" % (alias, " ".join(dict(directory.listAliases())[alias])))
    elif args.action == "list":
        for alias, targets in directory.listAliases():
            stdout.write("%s %s\n" % (alias, " ".join(targets)))
    elif args.action == "del":
        alias = normalise(args.alias)
        directory.removeAlias(alias)
        stdout.write("deleted alias %s\n" % (alias,))


def _queue(args, config, datadir, stdout, stdin):
    queue = _backend(config).queue
    if args.action == "list":
        entries, held, unreadable = queue.inspect()
        for entry in entries:
            stdout.write(formatEntry(entry, held))
        for name in unreadable:
            stdout.write("%s (unreadable; it will be moved to corrupt/)\n" % (name,))
        return
    if args.action == "flush":
        answer = _control(datadir, "FLUSH")
        if answer is None:
            stdout.write("no server is running; queued mail is retried when it starts\n")
        elif answer == "OK":
            stdout.write("the server is retrying every queued message now\n")
        else:
            raise CommandError(answer[4:] if answer.startswith("ERR ") else "no answer from the server")
        return
    if not re.match(r"[A-Za-z0-9_-]{1,64}\Z", args.id):
        raise CommandError("no such queued message: %s" % (args.id,))
    answer = _control(datadir, "DELETE " + args.id)
    if answer is None:
        try:
            queue.discard(args.id)
        except MailError:
            raise CommandError("no such queued message: %s" % (args.id,)) from None
    elif answer != "OK":
        raise CommandError("no such queued message: %s" % (args.id,))
    stdout.write("deleted queued message %s\n" % (args.id,))


def formatEntry(entry, held=(), now=None):
    """
    @param held: the domains held for ATRN.
    @param now: the time the listing is for (default: now).
    @return: the lines of C{queue list} for one queue entry: the message,
        then one indented line per recipient.
    """
    now = time.time() if now is None else now
    lines = [
        "%s %8d %s <%s>\n"
        % (entry.id, entry.size, _time(entry.created), entry.sender)
    ]
    for r in entry.recipients:
        line = "    <%s> %s attempts=%d" % (r.address, r.state, r.attempts)
        if r.status:
            line += " status=%s" % (r.status,)
        if r.state == "pending" and r.domain in held:
            line += " held for ATRN"
        elif r.state == "pending":
            line += " next=%s (%s)" % (_time(r.due), _untilText(r.due, now))
        last = r.diagnostic or r.reason
        if last:
            line += " last: %s" % (last,)
        lines.append(line + "\n")
    return "".join(lines)


def _untilText(when, now):
    """
    @return: how long until C{when}, as people say it: C{"in 30 minutes"},
        or C{"due now"} once it has come.
    """
    from mdpy.delivery.dsn import formatDuration

    return "in " + formatDuration(when - now) if when - now >= 1 else "due now"


def _time(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _control(datadir, command):
    """
    Send one command with a one-line answer to the running server's control
    socket.

    @return: its answer, or L{None} when no server listens.
    """
    from mdpy.control import sendCommand

    lines = sendCommand(datadir.controlSocketPath, command, timeout=30)
    if lines is None:
        return None
    return lines[-1].strip() if lines else ""


def _domainpop(args, config, datadir, stdout, stdin):
    section = config.named("domainpop").get(args.name)
    if section is None:
        raise CommandError("no [domainpop:%s] section in the configuration" % (args.name,))
    if args.action == "probe":
        from mdpy.domainpop.probe import probe, readArchive

        archive = args.archive or section["archive_dir"]
        if not archive:
            raise CommandError("no archive: give --archive DIR or set archive_dir in [domainpop:%s]" % (args.name,))
        if not os.path.isdir(archive):
            raise CommandError("%s: no such directory" % (archive,))
        for line in probe(readArchive(archive), args.address).lines():
            stdout.write(line + "\n")
        return
    if args.action == "held":
        _held(_backend(config), datadir, "domainpop", args.name, "domainpop/" + args.name, stdout)
        return
    if not section["host"]:
        raise CommandError("[domainpop:%s] needs a host" % (args.name,))
    _collect(config, datadir, "domainpop/" + args.name, stdout)


def _held(backend, datadir, kind, source, name, stdout):
    """
    List the held messages of a source (C{kind} C{domainpop} or
    C{multipop}, C{source} its name there) under the C{name} it has in
    logs: one line each, when, why, sender, subject, size and file.
    """
    from mdpy.collect.held import heldMessages
    from mdpy.tap import collectorStateDir, sourceState

    held = heldMessages(collectorStateDir(datadir, kind, source), sourceState(backend, kind, source))
    if not held:
        stdout.write("%s: no message held\n" % (name,))
    for message in held:
        stdout.write("%s | %s | <%s> | %s | %d octets | %s\n" % (
            _time(message.heldAt), message.reason, message.sender, message.subject, message.size, message.path))


def _odmr(args, config, datadir, stdout, stdin):
    section = config.named("odmr-client").get(args.name)
    if section is None:
        raise CommandError("no [odmr-client:%s] section in the configuration" % (args.name,))
    if not section["enabled"]:
        raise CommandError("[odmr-client:%s] is not enabled" % (args.name,))
    if not section["host"]:
        raise CommandError("[odmr-client:%s] needs a host" % (args.name,))
    _collect(config, datadir, "odmr/" + args.name, stdout)


def _multipop(args, config, datadir, stdout, stdin):
    backend = _backend(config)
    accounts = backend.remoteAccounts
    if args.action == "add":
        password = args.password
        if password is None:
            password = _readPassword(stdin, "Password of %s at %s: " % (args.username, args.host))
        port = args.port or (995 if args.tls == "implicit" else 110)
        if backend.directory.getUser(args.user.lower()) is None:
            raise CommandError("no such user: %s" % (args.user,))
        stdout.write(
            accounts.add(args.user, args.host, port, args.tls, args.username, password, args.leave) + "\n"
        )
    elif args.action == "list":
        for a in accounts.list():
            if args.user and a["user"] != args.user.lower():
                continue
            stdout.write("%s %s %s@%s:%d tls=%s leave_on_server_days=%d\n" % (
                a["id"], a["user"], a["username"], a["host"], a["port"], a["tls"], a["leave_on_server_days"]))
    elif args.action == "del":
        accounts.remove(args.id)
        stdout.write("removed MultiPOP account %s\n" % (args.id,))
    elif args.action == "held":
        chosen = [a for a in accounts.list() if args.id in (None, a["id"])]
        if args.id is not None and not chosen:
            raise CommandError("no such MultiPOP account: %s" % (args.id,))
        for a in chosen:
            _held(backend, datadir, "multipop", a["id"], "multipop/%s/%s" % (a["user"], a["id"]), stdout)
    else:
        if not config["multipop"]["enabled"]:
            raise CommandError("[multipop] is not enabled")
        _collect(config, datadir, "multipop", stdout)


def _collect(config, datadir, name, stdout):
    """
    Run collection C{name} (C{domainpop/NAME}, C{odmr/NAME} or C{multipop})
    once: in the running server when there is one that has it (so the two
    never overlap), else here.
    """
    from mdpy.control import NO_SUCH_COLLECTION, QueueHandOff

    try:
        if _inServer(datadir, "COLLECT " + name, stdout):
            return
    except CommandError as e:
        # Not in the server's configuration (not reloaded, or a configuration
        # of the command's own): collected here, the collection's lock
        # keeping the two apart.
        if str(e) != NO_SUCH_COLLECTION:
            raise
    from twisted.internet import defer, task

    from mdpy.tap import buildCollectors, buildPipeline

    outcome = []

    async def main(reactor):
        datadir.prepare()
        backend = _backend(config, reactor)
        pipeline, queue, resolver = buildPipeline(config, datadir, backend, reactor)
        # What it queues leaves from the server that runs the queue.
        handOff = QueueHandOff(reactor, datadir.controlSocketPath, queue)
        queue.listeners.append(handOff)
        collectors = buildCollectors(config, datadir, pipeline, backend, reactor)
        collector = collectors[name]
        try:
            reports = await defer.maybeDeferred(collector.runNow)
        finally:
            collector.close()
            await handOff.whenSent()
        outcome.extend(reports if isinstance(reports, list) else [reports])

    try:
        task.react(main)
    except SystemExit as e:
        if e.code:
            raise CommandError("the collection failed; see the messages above")
    failed = False
    for report in outcome:
        for line in report.lines + [report.summary()]:
            stdout.write(line + "\n")
        failed = failed or report.error is not None
    if failed:
        raise CommandError("the collection stopped early")


def _reload(args, config, datadir, stdout, stdin):
    if not _inServer(datadir, "RELOAD", stdout):
        raise CommandError("no server is running on %s; it reads %s when it starts"
                           % (datadir.root, config.path or "the embedded default"))


def _inServer(datadir, command, stdout):
    """
    Have the running server carry out C{command}, printing the lines of its
    answer.

    @return: whether a server ran it (L{False}: none is running).
    @raise CommandError: it answered C{ERR}.
    """
    from mdpy.control import sendCommand

    lines = sendCommand(datadir.controlSocketPath, command)
    if lines is None:
        return False
    for line in lines[:-1]:
        stdout.write(line[2:] + "\n")
    if lines and lines[-1] == "OK":
        return True
    raise CommandError(lines[-1][4:] if lines and lines[-1].startswith("ERR ") else "no answer from the server")


def _dkim(args, config, datadir, stdout, stdin):
    # The record goes out as one zone-file line, ready to paste into a BIND
    # zone: 'mdpy._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=..." "..." )'.
    from mdpy.mailauth.dkim import DKIMKeys, zoneLine

    keys = DKIMKeys(datadir.dkimDir)
    try:
        if args.action == "list":
            for domain in keys.domains():
                stdout.write("%s %s\n" % (domain, keys.recordName(domain)))
            return
        if args.action == "show":
            stdout.write(zoneLine(keys.recordName(args.domain), keys.record(args.domain)) + "\n")
            return
        if args.action == "disable":
            name = keys.recordName(args.domain)
            keys.disable(args.domain)
            stdout.write("%s is no longer signed; remove %s from DNS in a few days\n" % (args.domain, name))
            return
    except LookupError as e:
        raise CommandError(str(e))
    datadir.prepare()
    record = keys.generate(args.domain, selector=args.selector, bits=args.bits)
    stdout.write(zoneLine(keys.recordName(args.domain), record) + "\n")


def _dns(args, config, datadir, stdout, stdin):
    """
    Print the records a local domain needs (L{mdpy.dnsrecords}); with
    C{--check}, one line per record saying what DNS publishes of it.
    """
    from mdpy.mailauth.dkim import DKIMKeys
    from mdpy.dnsrecords import SRV_SERVICES, checkRecords, formatRecords, recordsToPublish

    domain = normaliseDomain(args.domain)
    # The server's own domain is local before its first start makes it.
    if domain != normaliseDomain(config["server"]["domain"]) and not _backend(config).directory.hasDomain(domain):
        raise CommandError("%s is not a local domain (see mdpy domain list)" % (domain,))
    keys = DKIMKeys(datadir.dkimDir)
    try:
        dkim = keys.recordName(domain), keys.record(domain)
    except LookupError:
        dkim = None
    ports = {}
    for _, listener in SRV_SERVICES:
        section = config[listener]
        ports[listener] = section["port"] if section["enabled"] else None
    groups = recordsToPublish(
        domain, config["server"]["hostname"], ports, dkim, config["relay"]["smarthost"]
    )
    if not args.check:
        stdout.write(formatRecords(groups))
        return
    from twisted.internet import task

    from mdpy.tap import buildResolver

    records = [record for group in groups for record in group.records]
    verdicts = []

    async def main(reactor):
        verdicts.extend(await checkRecords(buildResolver(config, reactor), records))

    try:
        task.react(main)
    except SystemExit as e:
        if e.code:
            raise CommandError("the DNS lookups stopped early; see the messages above")
    for verdict in verdicts:
        stdout.write(verdict.line() + "\n")
    wrong = sum(verdict.state in ("missing", "differs") for verdict in verdicts)
    unknown = sum(verdict.state == "unknown" for verdict in verdicts)
    problems = []
    if wrong:
        problems.append("%d of %d records of %s are missing or differ" % (wrong, len(verdicts), domain))
    if unknown:
        problems.append("%d of %d records of %s could not be looked up" % (unknown, len(verdicts), domain))
    if problems:
        raise CommandError("; ".join(problems))


def main(argv=None, stdout=None, stdin=None, stderr=None):
    """
    The console script.  @return: the exit status.
    """
    argv = sys.argv[1:] if argv is None else argv
    stdout = stdout or sys.stdout
    stdin = stdin or sys.stdin
    stderr = stderr or sys.stderr
    try:
        run(argv, stdout, stdin)
    except SystemExit as e:  # argparse usage errors: already printed
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    except (ConfigError, CommandError, MailError, OSError) as e:
        stderr.write("mdpy: error: %s\n" % (describe(e),))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as e:
        # A bug, not the administrator's doing: still one line, with what
        # a report needs.
        stderr.write("mdpy: error: unexpected %s: %s\n" % (type(e).__name__, describe(e)))
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
