"""POP3 (RFC 1939) for mail clients that download and delete: the maildrop is the account's INBOX.

Extensions: CAPA (RFC 2449) with TOP, UIDL, USER, PIPELINING, RESP-CODES and AUTH-RESP-CODE (RFC 3206);
STLS (RFC 2595); SASL PLAIN through AUTH with an initial response (RFC 5034, RFC 4616).

Parts:
  server.py    the protocol engine: listeners, the session state machine, line reading, multi-line responses
  maildrop.py  what the engine asks of the store: the session's snapshot of INBOX, DELE/RSET bookkeeping,
               the UPDATE state's changes, and the per-process maildrop locks
  errors.py    the typed error every command raises to refuse; it becomes the ``-ERR`` line

Rules the session keeps:
- RFC 1939 3: AUTHORIZATION -> TRANSACTION -> UPDATE. Nothing in the store changes before QUIT in the
  TRANSACTION state; a connection that dies or times out changes nothing.
- RFC 1939 8: one session per maildrop. The lock is per process (held in ``Services.extras``) and is released
  in the session's ``finally`` whatever ends it (QUIT, lost connection, timeout, shutdown).
- Message numbers, sizes and the set of messages are fixed at login: mail arriving during the session shows up
  in the next one; mail expunged over IMAP meanwhile is answered with ``-ERR`` when asked for.
- RETR marks the message \\Seen, applied at QUIT together with the deletions (as Dovecot does with its default
  ``pop3_no_flag_updates = no``); TOP does not, and RSET forgets both the deletions and the \\Seen marks.
- Message data is streamed from the message file in a worker thread, chunk by chunk with write flow control,
  so a huge message neither blocks the loop nor sits in memory whole.
"""
