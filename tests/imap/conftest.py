from imap.imaputil import server, user  # noqa: F401  (fixtures)
