"""Outbound delivery: the queue worker (:mod:`.queue`) takes queued messages to their destinations, chosen by
:mod:`.routes` (the recipients' MX hosts, or a relay), over SMTP (:mod:`.client`), with the TLS policy of MTA-STS
(:mod:`.mtasts`), and reports failures and delays to senders as DSNs (:mod:`.dsn`).
"""
