"""
Minger, MDaemon's address verification over UDP port 4069
(draft-hathcock-minger-06): the wire format (L{mdpy.minger.protocol}), a
server answering from the directory (L{mdpy.minger.server}), and a client
with the SMTP recipient check built on it (L{mdpy.minger.client}).
"""
