"""
Collecting mail from POP3 mailboxes elsewhere: the collector that DomainPOP
and MultiPOP sources share, its held folder, and the periodic runs that the
ODMR customer uses too.
"""
