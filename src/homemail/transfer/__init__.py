"""Moving mail in and out of homemail: Maildir and mbox export and import, and migration from IMAP servers."""
