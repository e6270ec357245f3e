"""The SQLite schema and its migrations: MIGRATIONS[n] takes a database from version n to n + 1.

The version lives in ``PRAGMA user_version``. A migration is appended, never edited once released.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 0 -> 1: domains, accounts, aliases, mailboxes, messages, blobs.
    """
    CREATE TABLE domain (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        created INTEGER NOT NULL
    );
    CREATE TABLE account (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL UNIQUE COLLATE NOCASE,
        domain_id INTEGER NOT NULL REFERENCES domain(id),
        password_hash TEXT NOT NULL,
        scram_sha256 TEXT NOT NULL DEFAULT '',  -- RFC 5802 verifier: iterations$salt$storedkey$serverkey
        created INTEGER NOT NULL
    );
    CREATE TABLE alias (
        source TEXT NOT NULL COLLATE NOCASE,
        target TEXT NOT NULL COLLATE NOCASE,
        PRIMARY KEY (source, target)
    ) WITHOUT ROWID;
    CREATE TABLE mailbox (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES account(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL DEFAULT 1,
        highestmodseq INTEGER NOT NULL DEFAULT 1,
        first_recent_uid INTEGER NOT NULL DEFAULT 1,
        special_use TEXT,
        UNIQUE (account_id, name)
    );
    CREATE TABLE subscription (
        account_id INTEGER NOT NULL REFERENCES account(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        PRIMARY KEY (account_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE keyword (
        mailbox_id INTEGER NOT NULL REFERENCES mailbox(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        PRIMARY KEY (mailbox_id, name)
    ) WITHOUT ROWID;
    -- One file per message, shared by all its copies; parsed is the summary made once at delivery (JSON).
    CREATE TABLE blob (
        id TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        refcount INTEGER NOT NULL,
        parsed BLOB NOT NULL,
        created INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Files whose last reference is gone; unlinked after the commit that removed them.
    CREATE TABLE blob_trash (id TEXT PRIMARY KEY) WITHOUT ROWID;
    -- flags: system flags as bits (see sqlite.FLAG_BITS); keywords: space-separated.
    CREATE TABLE message (
        mailbox_id INTEGER NOT NULL REFERENCES mailbox(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        blob_id TEXT NOT NULL REFERENCES blob(id),
        flags INTEGER NOT NULL DEFAULT 0,
        keywords TEXT NOT NULL DEFAULT '',
        internaldate INTEGER NOT NULL,
        internaldate_tz INTEGER NOT NULL DEFAULT 0,
        size INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID;
    CREATE INDEX message_modseq ON message (mailbox_id, modseq);
    -- Expunged UIDs with the MODSEQ of their removal, for QRESYNC (RFC 7162 3.2.10).
    CREATE TABLE expunged (
        mailbox_id INTEGER NOT NULL REFERENCES mailbox(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID;
    CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    """,
    # 1 -> 2: the outbound queue (one row per message, one per recipient) and DKIM signing keys.
    """
    -- A queued message holds one reference to its blob; the row goes when every recipient is done.
    CREATE TABLE queue_message (
        id INTEGER PRIMARY KEY,
        sender TEXT NOT NULL,                 -- '' for the null reverse-path (DSNs)
        blob_id TEXT NOT NULL REFERENCES blob(id),
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        account_id INTEGER,                   -- the submitting account; NULL for forwarded mail and DSNs
        envid TEXT,                           -- RFC 3461 4.4 ENVID, xtext as received
        ret TEXT,                             -- RFC 3461 4.3 RET: FULL or HDRS
        smtputf8 INTEGER NOT NULL DEFAULT 0,
        body8bit INTEGER NOT NULL DEFAULT 0
    );
    -- state: queued (waiting for its next attempt), sent, failed, bounce (the administrator asked for a
    -- failure DSN; done at the next worker pass).
    CREATE TABLE queue_recipient (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES queue_message(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL COLLATE NOCASE,
        notify TEXT,                          -- RFC 3461 4.1 NOTIFY, comma-separated; NULL when not given
        orcpt TEXT,                           -- RFC 3461 4.2 ORCPT "type;xtext"
        state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        remote TEXT NOT NULL DEFAULT '',      -- the host that gave the last answer
        delay_notified INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX queue_recipient_due ON queue_recipient (state, next_attempt);
    CREATE INDEX queue_recipient_message ON queue_recipient (message_id);
    -- DKIM keys: active ones sign; inactive ones are kept (and listed for DNS) until removed.
    CREATE TABLE dkim_key (
        domain TEXT NOT NULL COLLATE NOCASE,
        selector TEXT NOT NULL COLLATE NOCASE,
        algorithm TEXT NOT NULL,              -- rsa-sha256 or ed25519-sha256
        private_key TEXT NOT NULL,            -- PKCS#8 PEM
        active INTEGER NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (domain, selector)
    ) WITHOUT ROWID;
    """,
    # 2 -> 3: queue ids are never reused (AUTOINCREMENT). With plain rowids a message or recipient that left the
    # queue gave its id to the next one, so the outcome of an attempt still in flight for a deleted message was
    # written onto a new message's recipient, and an id read from `queue list` could name another message by
    # the time it was used.
    """
    CREATE TABLE queue_message_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sender TEXT NOT NULL,
        blob_id TEXT NOT NULL REFERENCES blob(id),
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        account_id INTEGER,
        envid TEXT,
        ret TEXT,
        smtputf8 INTEGER NOT NULL DEFAULT 0,
        body8bit INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO queue_message_new SELECT id, sender, blob_id, size, created, account_id, envid, ret, smtputf8,
        body8bit FROM queue_message;
    CREATE TABLE queue_recipient_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id INTEGER NOT NULL REFERENCES queue_message_new(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL COLLATE NOCASE,
        notify TEXT,
        orcpt TEXT,
        state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        remote TEXT NOT NULL DEFAULT '',
        delay_notified INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO queue_recipient_new SELECT id, message_id, address, domain, notify, orcpt, state, attempts,
        next_attempt, last_error, remote, delay_notified FROM queue_recipient;
    DROP TABLE queue_recipient;
    DROP TABLE queue_message;
    -- Renaming also renames the reference in queue_recipient_new (SQLite 3.26+).
    ALTER TABLE queue_message_new RENAME TO queue_message;
    ALTER TABLE queue_recipient_new RENAME TO queue_recipient;
    CREATE INDEX queue_recipient_due ON queue_recipient (state, next_attempt);
    CREATE INDEX queue_recipient_message ON queue_recipient (message_id);
    """,
    # 3 -> 4: greylisting state (homemail.mailauth.greylist): triplets waiting for their retry or accepted,
    # auto-allowlisted client networks and known sender domains, each under a prefixed key.
    """
    CREATE TABLE greylist (
        key TEXT PRIMARY KEY,                 -- "t:net|sender|recipient", "c:net" or "d:domain"
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        passes INTEGER NOT NULL DEFAULT 0     -- accepted deliveries; 0: still waiting for a retry
    ) WITHOUT ROWID;
    CREATE INDEX greylist_last_seen ON greylist (last_seen);
    """,
    # 4 -> 5: what `homemail import` brought in, per account and source, so a rerun skips it. Keys are made by
    # the importers (homemail.transfer): a content hash, a Maildir file name, an IMAP UIDVALIDITY and UID.
    """
    CREATE TABLE import_log (
        account_id INTEGER NOT NULL REFERENCES account(id) ON DELETE CASCADE,
        source TEXT NOT NULL,
        key TEXT NOT NULL,
        PRIMARY KEY (account_id, source, key)
    ) WITHOUT ROWID;
    """,
    # 5 -> 6: the IP warm-up (homemail.delivery.warmup): each provider's daily cap and its use that day.
    """
    CREATE TABLE warmup (
        provider TEXT PRIMARY KEY,
        started TEXT NOT NULL,                -- ISO date (UTC) of the first mail to the provider
        day TEXT NOT NULL,                    -- the day the counters are for
        cap REAL NOT NULL,
        used INTEGER NOT NULL DEFAULT 0,
        sent INTEGER NOT NULL DEFAULT 0,
        deferred INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        throttled INTEGER NOT NULL DEFAULT 0,
        braked INTEGER NOT NULL DEFAULT 0,
        note TEXT NOT NULL DEFAULT '',
        updated REAL NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> int:
    """Bring ``db`` to SCHEMA_VERSION; returns the version it had. Refuses a database from a newer homemail."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database has schema version {version}, newer than this homemail knows ({SCHEMA_VERSION})"
        )
    for n in range(version, SCHEMA_VERSION):
        # executescript commits first; the migration and its version bump then run in one transaction.
        db.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[n]}\nPRAGMA user_version = {n + 1};\nCOMMIT;")
    return int(version)
