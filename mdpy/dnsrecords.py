# -*- test-case-name: tests.test_dnsrecords -*-
"""
The DNS records a local domain needs, for C{mdpy dns DOMAIN}.

L{recordsToPublish} builds them from the server's settings: MX, SPF, DKIM
(when the domain has a key), DMARC, the SRV records mail clients find their
servers by (RFC 6186, RFC 8314 section 5.1) and the autoconfiguration
names.  L{formatRecords} prints them as zone-file lines an administrator can
paste, each group under a comment saying what it is for and why it is so.
L{checkRecords} looks each one up and says whether it is published as shown.
"""

import dataclasses
import re

from twisted.internet import defer
from twisted.names import dns

from mdpy.mailauth.dkim import zoneLine
from mdpy.dns import _queryName
from mdpy.errors import MailError

MX_PREFERENCE = 10
SPF_VERSION = "v=spf1"
DMARC_VERSION = "v=DMARC1"

# The SRV service labels (RFC 6186 section 3, RFC 8314 section 5.1) and the
# listener whose port each one names, in the order they are printed.
SRV_SERVICES = [
    ("submission", "submission"),
    ("submissions", "smtps"),
    ("imaps", "imaps"),
    ("imap", "imap"),
    ("pop3s", "pop3s"),
    ("pop3", "pop3"),
]

AUTOCONFIG_NAMES = ("autoconfig", "autodiscover")

_TYPES = {"MX": dns.MX, "TXT": dns.TXT, "SRV": dns.SRV, "CNAME": dns.CNAME}


@dataclasses.dataclass(frozen=True)
class Record:
    """
    One resource record to publish.

    @ivar name: the owner name in lowercase A-labels, without the final dot.
    @ivar type: C{"MX"}, C{"TXT"}, C{"SRV"} or C{"CNAME"}.
    @ivar data: the record data in zone-file form (C{"10 mx.example.com."});
        for TXT the text itself, unquoted.
    @ivar family: for TXT, the version tag that marks the records at
        C{name} that are of this kind (C{"v=spf1"}, C{"v=DMARC1"}), so that
        other TXT records there are left alone; L{None} when every TXT
        record at C{name} is (a DKIM key record, whose C{v=} is optional).
    """

    name: str
    type: str
    data: str
    family: str | None = None

    def zoneLine(self):
        """
        @return: the record as one zone-file line (RFC 1035 section 5.1),
            owner fully qualified; TXT text cut into strings of 255 octets.
        """
        if self.type == "TXT":
            return zoneLine(self.name, self.data)
        return "%s. IN %s %s" % (self.name, self.type, self.data)

    def matches(self, published):
        """
        @param published: the data of a published record of this type, in
            the form of L{data}.
        @return: whether it says what this record says: names compared in
            any case, SPF terms in any case and spacing, the tags of DKIM and
            DMARC records in any order and spacing (RFC 6376 section 3.2,
            RFC 7489 section 6.4).
        """
        return _canonical(self, published) == _canonical(self, self.data)

    def ofKind(self, published):
        """
        @return: whether the published record C{published} is one of the
            kind of this record (see L{family}).
        """
        if self.family is None:
            return True
        first = re.split(r"[\s;]", published.strip(), maxsplit=1)[0]
        return first.lower() == self.family.lower()


def _canonical(record, data):
    if record.type != "TXT":
        return data.lower()
    if record.family == SPF_VERSION:
        return tuple(data.lower().split())
    tags = {}
    for part in data.split(";"):
        tag, _, value = part.partition("=")
        if tag.strip():
            tags[tag.strip()] = re.sub(r"\s+", "", value)
    return tags


@dataclasses.dataclass(frozen=True)
class RecordGroup:
    """
    Records published for one purpose.

    @ivar comment: one line saying what they are for.
    @ivar records: the L{Record}s; none when there is only advice.
    """

    comment: str
    records: list


def recordsToPublish(domain, hostname, ports, dkim=None, smarthost=None):
    """
    The records that make C{domain}'s mail work with this server.

    @param domain: a local domain.
    @param hostname: the server's host name (C{[server] hostname}).
    @param ports: a mapping of the listeners C{submission}, C{smtps},
        C{imap}, C{imaps}, C{pop3} and C{pop3s} to their port, L{None} for
        one that is not enabled.
    @param dkim: C{(recordName, text)} of the domain's DKIM key record, or
        L{None} when it has no key.
    @param smarthost: C{[relay] smarthost}, or L{None}.
    @return: a list of L{RecordGroup}s.
    @raise mdpy.delivery.mx.PermanentDNSFailure: C{domain} or C{hostname}
        is not a domain name.
    """
    domain, host = _queryName(domain), _queryName(hostname)
    groups = [
        RecordGroup(
            "MX (RFC 5321 section 5.1): mail for %s goes to %s, which needs A and AAAA records of its own."
            % (domain, host),
            [Record(domain, "MX", "%d %s." % (MX_PREFERENCE, host))],
        ),
        _spf(domain, host, smarthost),
    ]
    if dkim is None:
        groups.append(RecordGroup(
            "DKIM (RFC 6376): %s has no key yet; 'mdpy dkim generate %s' makes one." % (domain, domain), []
        ))
    else:
        name, text = dkim
        groups.append(RecordGroup(
            "DKIM (RFC 6376): the public key receivers check the signatures of %s's mail with." % (domain,),
            [Record(name, "TXT", text)],
        ))
    groups.append(_dmarc(domain, signed=dkim is not None))
    groups.append(RecordGroup(
        "Mail client setup (RFC 6186, RFC 8314 section 5.1): where to send and read mail; "
        "target . (RFC 2782) marks a service this server does not offer.",
        [
            Record("_%s._tcp.%s" % (label, domain), "SRV", _service(ports[listener], host))
            for label, listener in SRV_SERVICES
        ],
    ))
    groups.append(RecordGroup(
        "Thunderbird autoconfig and Outlook autodiscover look for the server at these names.",
        [Record("%s.%s" % (label, domain), "CNAME", host + ".") for label in AUTOCONFIG_NAMES],
    ))
    return groups


def _spf(domain, host, smarthost):
    """
    The SPF record (RFC 7208): the MX host sends the domain's mail, so C{mx}
    covers it.  Without a smarthost nothing else sends it, hence C{-all}
    (fail); with one, C{~all} (softfail) until its mechanism is added.
    """
    if smarthost:
        return RecordGroup(
            "SPF (RFC 7208): ~all (softfail) because mail leaves through the smarthost %s: "
            "add its provider's include: and then make it -all." % (smarthost,),
            [Record(domain, "TXT", SPF_VERSION + " mx ~all", SPF_VERSION)],
        )
    return RecordGroup(
        "SPF (RFC 7208): -all because only %s sends mail from %s; receivers may refuse mail from elsewhere."
        % (host, domain),
        [Record(domain, "TXT", SPF_VERSION + " mx -all", SPF_VERSION)],
    )


def _dmarc(domain, signed):
    """
    The DMARC record (RFC 7489 section 6.3), reports to the domain's
    postmaster.  With a DKIM key, C{p=quarantine}: mail that fails both SPF
    and DKIM did not come from here.  Without one, C{p=none}: mail forwarded
    by others fails SPF and has no signature to pass, so receivers are only
    asked to report.
    """
    report = "rua=mailto:postmaster@%s" % (domain,)
    if signed:
        return RecordGroup(
            "DMARC (RFC 7489): p=quarantine because %s's mail is DKIM-signed and SPF-covered, "
            "so what fails both is not ours; reports go to postmaster@%s." % (domain, domain),
            [Record("_dmarc." + domain, "TXT", "%s; p=quarantine; %s" % (DMARC_VERSION, report), DMARC_VERSION)],
        )
    return RecordGroup(
        "DMARC (RFC 7489): p=none (reports only) because %s has no DKIM key and forwarded mail "
        "would fail; make one, then publish p=quarantine." % (domain,),
        [Record("_dmarc." + domain, "TXT", "%s; p=none; %s" % (DMARC_VERSION, report), DMARC_VERSION)],
    )


def _service(port, host):
    """
    @return: the SRV data of a service on C{port} of C{host}, priority 0
        weight 1 (RFC 6186 section 3); for a service not offered (C{port}
        L{None}) the target C{.}, "decidedly not available" (RFC 2782).
    """
    if port is None:
        return "0 0 0 ."
    return "0 1 %d %s." % (port, host)


def formatRecords(groups):
    """
    @return: the zone-file text of C{groups}: a comment line above each
        group's records, one record per line, a blank line between groups.
    """
    blocks = []
    for group in groups:
        lines = ["; " + group.comment] + [record.zoneLine() for record in group.records]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """
    What DNS has for a L{Record}.

    @ivar state: C{"ok"} (published as shown), C{"missing"}, C{"differs"} or
        C{"unknown"} (DNS did not answer).
    @ivar published: for C{"differs"}, the data published instead.
    @ivar reason: for C{"unknown"}, why, for people.
    """

    record: Record
    state: str
    published: tuple = ()
    reason: str = ""

    def line(self):
        """
        @return: one line for the administrator, without the newline:
            C{"_dmarc.example.com. TXT: differs (published: ...)"}.
        """
        label = "%s. %s" % (self.record.name, self.record.type)
        if self.state == "differs":
            return "%s: differs (published: %s)" % (label, ", ".join(self.published))
        if self.state == "unknown":
            return "%s: not checked: %s" % (label, self.reason)
        return "%s: %s" % (label, self.state)


def checkRecords(resolver, records):
    """
    Look up each of C{records}, all at once.

    @param resolver: an L{mdpy.delivery.mx.MXResolver}.
    @return: a L{defer.Deferred} firing with a L{Verdict} per record, in
        order; it does not fail.
    """
    return defer.gatherResults(
        [defer.ensureDeferred(_check(resolver, record)) for record in records]
    )


async def _check(resolver, record):
    try:
        payloads = await resolver.lookupRecords(record.name, _TYPES[record.type])
    except MailError as e:
        return Verdict(record, "unknown", reason=str(e))
    published = [text for text in map(_data, payloads) if record.ofKind(text)]
    if not published:
        return Verdict(record, "missing")
    if any(record.matches(text) for text in published):
        return Verdict(record, "ok")
    if record.type == "TXT":
        published = ['"%s"' % (text,) for text in published]
    return Verdict(record, "differs", tuple(published))


def _data(payload):
    """
    @return: the data of a published record in the form of L{Record.data}.
    """
    if payload.TYPE == dns.TXT:
        return b"".join(payload.data).decode("utf-8", "replace")
    if payload.TYPE == dns.MX:
        return "%d %s" % (payload.preference, _nameText(payload.name))
    if payload.TYPE == dns.SRV:
        return "%d %d %d %s" % (payload.priority, payload.weight, payload.port, _nameText(payload.target))
    return _nameText(payload.name)


def _nameText(name):
    """
    @return: a L{dns.Name} fully qualified, C{"."} for the root.
    """
    return name.name.decode("ascii", "replace") + "."
