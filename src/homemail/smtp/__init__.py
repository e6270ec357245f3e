"""The SMTP server: the protocol engine (:mod:`.server`), the policies that decide what to accept (:mod:`.inbound`
for the MX), and the reply type (:mod:`.replies`). ``server.start_listener`` is what homemail.server starts."""
