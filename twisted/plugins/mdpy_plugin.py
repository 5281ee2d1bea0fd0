"""
The C{twistd mdpy} plugin; everything is loaded lazily from L{mdpy.tap}.
"""

from twisted.application.service import ServiceMaker

mdpy = ServiceMaker(
    "mdpy",
    "mdpy.tap",
    "All-in-one mail server: SMTP, submission, POP3, IMAP, ODMR, Minger.",
    "mdpy",
)
