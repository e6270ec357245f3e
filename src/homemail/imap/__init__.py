"""The IMAP server is in charge of letting mail clients read, file and synchronise a user's mail: IMAP4rev1
(RFC 3501) and IMAP4rev2 (RFC 9051) with the extensions modern clients use (CONDSTORE/QRESYNC, IDLE, MOVE,
UIDPLUS, ESEARCH, SORT/THREAD, LIST-EXTENDED/STATUS, SPECIAL-USE, COMPRESS, LITERAL+, ...).

Modules: :mod:`.wire` (bytes in and out, TLS, DEFLATE), :mod:`.parser` (the grammar), :mod:`.session` (state
machine and commands), :mod:`.selected` (a session's view of its mailbox), :mod:`.fetch`, :mod:`.search`,
:mod:`.sort` (SORT, THREAD), :mod:`.mailboxes` (LIST rules), :mod:`.server` (listeners).

Implementation notes (rules the code relies on):
- One command at a time per connection; pipelined commands wait in the input buffer. Only IDLE reads input
  while it waits for something else (store changes).
- The store is the only state shared between sessions. A session learns of other sessions' changes from
  ``Store.watch`` hints and reads them with ``Store.changes(since_modseq)``; the hint carries no data.
- A session's view of the selected mailbox (UIDs, sequence numbers, flags, \\Recent) changes only when the
  change is announced to the client. Expunges found while answering FETCH, STORE or SEARCH (not their UID
  forms) are held back and announced at the next command that allows it (RFC 9051 7.5.1); until then the
  messages keep their sequence numbers, and FETCH serves them while their files exist.
- A session registers its watcher before it reads the mailbox at SELECT, so no change can fall between
  the two; anything read twice is recognised by its MODSEQ.
- Every failure inside a command raises (errors.No / errors.Bad, or a store error) and is answered once with
  the command's tag; an unexpected exception becomes ``NO [SERVERBUG]`` and the session goes on. Nothing a
  client sends ends the process; the connection ends only on LOGOUT, end of input, a timeout, an over-long
  line, an over-limit non-synchronising literal, or too many BAD commands in a row.
- Limits: the command line length, literal sizes (APPEND up to APPENDLIMIT, other commands less), commands
  per second (excess is slowed down, not refused), connections per IP; failed logins are delayed and
  throttled by :class:`homemail.auth.Authenticator`, per IP and per account.
- Summaries parsed at delivery are cached per process by blob id (message files never change); message
  octets are read from the file, batched, in worker threads.
"""
