"""The ``homemail`` command: a thin layer over the store and the server.

Every command that changes accounts works while the server runs (SQLite WAL lets both write). Errors print one
line, ``homemail: error: ...``, and exit with status 1.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from homemail import config as config_mod
from homemail.config import Config, ConfigError
from homemail.store import Store, StoreError

T = TypeVar("T")


def fail(message: str) -> None:
    click.echo(f"homemail: error: {message}", err=True)
    sys.exit(1)


def get_config(ctx: click.Context) -> Config:
    cfg: Config = ctx.obj["config"]
    return cfg


def with_store(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Run an async command body with an open store, turning store errors into one-line failures."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        ctx = click.get_current_context()
        cfg = get_config(ctx)

        async def run() -> T:
            from homemail.server import open_store

            store = open_store(cfg)
            await store.open()
            try:
                return await fn(store, *args, **kwargs)
            finally:
                await store.close()

        try:
            return asyncio.run(run())
        except (StoreError, ValueError, LookupError) as e:
            fail(str(e.args[0]) if e.args else str(e))
            raise AssertionError from e  # not reached

    return wrapper


def read_password(prompt: bool, from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif prompt:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = ""
    if not password:
        fail("the password is empty")
    return password


json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")
password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="read the password from the first line of standard input"
)


async def new_password_hashes(password_stdin: bool) -> tuple[str, str]:
    """A new password (prompted for twice, or the first line of standard input) as (Argon2 hash, SCRAM record)."""
    from homemail.auth import hash_password

    return await asyncio.to_thread(hash_password, read_password(True, password_stdin))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML configuration file (default: ./homemail.toml if present)",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """homemail: a self-hosted mail server."""
    try:
        cfg = config_mod.load(config_path)
    except ConfigError as e:
        fail(str(e))
        return
    ctx.obj = {"config": cfg}


@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the server with the listeners of the configuration."""
    from homemail.server import serve as run_server

    run_server(get_config(ctx))


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the configuration without starting (the file was parsed when the command started)."""
    cfg = get_config(ctx)
    click.echo(f"{cfg.source or 'defaults'}: ok")


# --- domains -------------------------------------------------------------------------------------------------


@main.group()
def domain() -> None:
    """Manage the mail domains this server receives for."""


@domain.command("add")
@click.argument("name")
@with_store
async def domain_add(store: Store, name: str) -> None:
    d = await store.add_domain(name)
    click.echo(f"added domain {d.name}")


@domain.command("list")
@with_store
async def domain_list(store: Store) -> None:
    for d in await store.list_domains():
        click.echo(d.name)


@domain.command("remove")
@click.argument("name")
@with_store
async def domain_remove(store: Store, name: str) -> None:
    await store.remove_domain(name)
    click.echo(f"removed domain {name}")


# --- users -------------------------------------------------------------------------------------------------


@main.group()
def user() -> None:
    """Manage mail accounts."""


@user.command("add")
@click.argument("address")
@password_stdin_option
@with_store
async def user_add(store: Store, address: str, password_stdin: bool) -> None:
    from homemail import addresses

    address = addresses.normalize(address)
    if not await store.is_local_domain(address.rpartition("@")[2]):
        raise LookupError(
            f"unknown domain {address.rpartition('@')[2]}: add it first with 'homemail domain add'"
        )
    if await store.get_account(address) is not None:
        raise LookupError(f"user {address} exists already")
    argon, scram = await new_password_hashes(password_stdin)
    account = await store.add_account(address, argon, scram)
    click.echo(f"added user {account.address}")


@user.command("passwd")
@click.argument("address")
@password_stdin_option
@with_store
async def user_passwd(store: Store, address: str, password_stdin: bool) -> None:
    if await store.get_account(address) is None:
        raise LookupError(f"no such user: {address}")
    argon, scram = await new_password_hashes(password_stdin)
    await store.set_password(address, argon, scram)
    click.echo(f"password changed for {address}")


@user.command("list")
@click.argument("domain", required=False)
@with_store
async def user_list(store: Store, domain: str | None) -> None:
    for account in await store.list_accounts(domain):
        click.echo(account.address)


@user.command("remove")
@click.argument("address")
@with_store
async def user_remove(store: Store, address: str) -> None:
    await store.remove_account(address)
    click.echo(f"removed user {address} and all its mail")


# --- aliases -------------------------------------------------------------------------------------------------


@main.group()
def alias() -> None:
    """Manage aliases; a SOURCE of @domain is the domain's catch-all."""


@alias.command("add")
@click.argument("source")
@click.argument("targets", nargs=-1, required=True)
@with_store
async def alias_add(store: Store, source: str, targets: tuple[str, ...]) -> None:
    await store.add_alias(source, targets)
    click.echo(f"{source} -> {', '.join(targets)}")


@alias.command("list")
@with_store
async def alias_list(store: Store) -> None:
    for a in await store.list_aliases():
        click.echo(f"{a.source} -> {a.target}")


@alias.command("remove")
@click.argument("source")
@click.argument("target", required=False)
@with_store
async def alias_remove(store: Store, source: str, target: str | None) -> None:
    await store.remove_alias(source, target)
    click.echo(f"removed alias {source}" + (f" -> {target}" if target else ""))


# --- moving mail -----------------------------------------------------------------------------------------


@main.command("export")
@click.argument("address")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["maildir", "mbox"]),
    default="maildir",
    show_default=True,
    help="a Maildir++ tree (Dovecot's layout), or one mboxrd file per folder (DIR/Work/Projects.mbox)",
)
@with_store
async def export_cmd(store: Store, address: str, directory: str, fmt: str) -> None:
    """Write all of a user's folders, with their flags and dates, as a Maildir++ tree or as mbox files."""
    if fmt == "mbox":
        from homemail.transfer.mbox import export_account
    else:
        from homemail.transfer.maildir import export_account

    counts = await export_account(store, address, Path(directory))
    click.echo(f"exported {sum(counts.values())} messages in {len(counts)} folders to {directory}")


@main.command("import")
@click.argument("address")
@click.argument("source")
@click.option(
    "--folder", help="mbox: put every message into this folder (default: INBOX, or the Gmail labels)"
)
@click.option(
    "--password-stdin", is_flag=True, help="IMAP: read the password from the first line of standard input"
)
@click.option("--insecure", is_flag=True, help="IMAP: do not verify the server's certificate")
@click.option(
    "--cafile",
    type=click.Path(dir_okay=False, exists=True),
    help="IMAP: trust the CA certificates in this PEM file",
)
@click.option(
    "--batch-size", type=click.IntRange(1, 10_000), default=500, show_default=True, help="messages per commit"
)
@with_store
async def import_cmd(
    store: Store,
    address: str,
    source: str,
    folder: str | None,
    password_stdin: bool,
    insecure: bool,
    cafile: str | None,
    batch_size: int,
) -> None:
    """Import mail into a user's folders, with flags and dates, from SOURCE: an mbox file (Gmail Takeout's: the
    labels become folders), a folder of .mbox files, a Maildir++ tree, or an IMAP account (imaps://user@host[:port],
    or imap:// for STARTTLS). Run it again after an interruption: what came in already is skipped. Exit status 2:
    some messages were broken (each is named on standard error) and not imported."""
    from homemail.transfer.importer import SourceError, import_mail, open_source

    password = None
    if source.startswith(("imap://", "imaps://")):
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = click.prompt(f"Password for {source}", hide_input=True, err=True)
    src = open_source(source, folder=folder, password=password, insecure=insecure, cafile=cafile)

    def broken(where: str, why: str) -> None:
        click.echo(f"homemail: broken message skipped: {where}: {why}", err=True)

    try:
        await src.open()
        if sys.stdout.isatty():
            with click.progressbar(length=max(src.total(), 1), label=f"importing into {address}") as bar:
                summary = await import_mail(store, address, src, batch_size, bar.update, broken)
        else:
            summary = await import_mail(store, address, src, batch_size, None, broken)
    except SourceError as e:
        fail(str(e))
        return
    except asyncio.CancelledError:
        click.echo("interrupted: run the same command again to import the rest", err=True)
        raise
    finally:
        await src.close()
    click.echo(
        f"imported {summary.imported} messages ({summary.copies} copies in {len(summary.folders)} folders), "
        f"{summary.skipped} already there, {len(summary.broken)} broken"
    )
    if summary.broken:
        sys.exit(2)


# --- outbound queue ------------------------------------------------------------------------------------------


@main.group()
def queue() -> None:
    """Inspect and steer the outbound queue (a running server picks up changes within its poll interval)."""


def _when(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


@queue.command("list")
@with_store
async def queue_list(store: Store) -> None:
    messages = await store.queue_list()
    for m in messages:
        click.echo(f"{m.id:>6}  {_when(m.created)}  {m.size:>9}  <{m.sender}>")
        for r in m.recipients:
            state = r.state if r.state != "queued" else f"next {_when(r.next_attempt)}"
            click.echo(f"        <{r.address}>  {state}  attempts {r.attempts}  {r.last_error}")
    click.echo(f"{len(messages)} message(s) queued")


@queue.command("show")
@click.argument("message_id", type=int)
@with_store
async def queue_show(store: Store, message_id: int) -> None:
    m = await store.queue_get(message_id)
    if m is None:
        fail(f"no queued message {message_id}")
        return
    click.echo(f"id: {m.id}\nsender: <{m.sender}>\nqueued: {_when(m.created)}\nsize: {m.size}")
    for r in m.recipients:
        click.echo(
            f"recipient: <{r.address}> state={r.state} attempts={r.attempts} next={_when(r.next_attempt)}"
            f" remote={r.remote or '-'} last={r.last_error or '-'}"
        )
    data = await store.read_blob(m.blob_id)
    click.echo("")
    click.echo(data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").replace("\r\n", "\n"))


@queue.command("retry")
@click.argument("message_id", type=int, required=False)
@with_store
async def queue_retry(store: Store, message_id: int | None) -> None:
    """Attempt now (one message, or all)."""
    import time

    n = await store.queue_reschedule(message_id, time.time())
    click.echo(f"{n} recipient(s) scheduled for now")


@queue.command("delete")
@click.argument("message_id", type=int)
@with_store
async def queue_delete(store: Store, message_id: int) -> None:
    """Drop a message without telling its sender."""
    await store.queue_delete(message_id)
    click.echo(f"deleted {message_id}")


@queue.command("bounce")
@click.argument("message_id", type=int)
@click.option("--reason", default="Returned by the administrator", show_default=True)
@with_store
async def queue_bounce(store: Store, message_id: int, reason: str) -> None:
    """Give up on a message: its sender gets a failure notice."""
    n = await store.queue_bounce(message_id, reason)
    click.echo(f"{n} recipient(s) will be returned to the sender")


# --- DKIM keys ---------------------------------------------------------------------------------------------


@main.group("dkim")
def dkim_group() -> None:
    """DKIM signing keys: each domain signs with an RSA-2048 and an Ed25519 key."""


async def _new_dkim_keys(store: Store, domain: str, retire: bool) -> None:
    import time

    from homemail.mailauth import dkim
    from homemail.store import DKIMKey

    domain = domain.lower().rstrip(".")
    if not await store.is_local_domain(domain):
        fail(f"unknown domain {domain}: add it first with 'homemail domain add'")
    stamp = time.strftime("%Y%m%d%H%M%S")
    taken = {k.selector for k in await store.dkim_keys(domain)}
    keys = []
    for algorithm, suffix in ((dkim.RSA, "r"), (dkim.ED25519, "e")):
        selector = f"hm{stamp}{suffix}"
        if selector in taken:
            fail(f"selector {selector} exists already; try again in a second")
        keys.append(DKIMKey(domain, selector, algorithm, dkim.generate_key(algorithm), True, time.time()))
    await store.add_dkim_keys(keys, retire_active=retire)
    await _show_dkim(store, domain)


async def _show_dkim(store: Store, domain: str) -> None:
    from homemail.mailauth import dkim

    keys = await store.dkim_keys(domain.lower().rstrip("."))
    if not keys:
        fail(f"{domain} has no DKIM keys: create them with 'homemail dkim keygen {domain}'")
    for k in keys:
        state = "signing" if k.active else "retired: keep it published for a few days, then remove it"
        click.echo(f"; {k.selector} ({k.algorithm}) {state}")
        click.echo(dkim.zone_line(k.selector, k.domain, k.private_key))


@dkim_group.command("keygen")
@click.argument("domain")
@with_store
async def dkim_keygen(store: Store, domain: str) -> None:
    """Create the domain's first keys and print the DNS records to publish."""
    if any(k.active for k in await store.dkim_keys(domain.lower())):
        fail(f"{domain} has keys already: use 'homemail dkim rotate {domain}' for new ones")
    await _new_dkim_keys(store, domain, retire=False)


@dkim_group.command("rotate")
@click.argument("domain")
@with_store
async def dkim_rotate(store: Store, domain: str) -> None:
    """Sign with new keys from now on; the old ones stay listed (still to publish) until removed."""
    await _new_dkim_keys(store, domain, retire=True)


@dkim_group.command("show")
@click.argument("domain")
@with_store
async def dkim_show(store: Store, domain: str) -> None:
    """Print the DNS TXT records of every key of the domain."""
    await _show_dkim(store, domain)


@dkim_group.command("remove")
@click.argument("domain")
@click.argument("selector")
@with_store
async def dkim_remove(store: Store, domain: str, selector: str) -> None:
    """Forget a key (after its DNS record was withdrawn)."""
    await store.remove_dkim_key(domain.lower(), selector)
    click.echo(f"removed {selector}._domainkey.{domain}")


# --- DNS ---------------------------------------------------------------------------------------------------


@main.command("dns")
@click.argument("domain")
@json_option
@click.option("--zone", "zone_only", is_flag=True, help="only the zone-file snippet")
@with_store
async def dns_cmd(store: Store, domain: str, as_json: bool, zone_only: bool) -> None:
    """Print the DNS records to publish for DOMAIN: MX, A/AAAA, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, SRV."""
    import json

    from homemail.doctor import records

    found = await records.domain_records(get_config(click.get_current_context()), store, domain)
    if as_json:
        click.echo(json.dumps(records.as_json(found), indent=2))
    elif zone_only:
        click.echo(records.zone_text(found), nl=False)
    else:
        click.echo(records.table_text(found))
        click.echo("Zone file:")
        click.echo(records.zone_text(found), nl=False)


# --- reports from other servers -----------------------------------------------------------------------------


@main.group("report")
def report_group() -> None:
    """What other mail servers report about mail from your domains (read from the report mailboxes)."""


async def _report_domains(store: Store, domain: str | None) -> list[str]:
    if domain is not None:
        return [domain.lower().rstrip(".")]
    return [d.name for d in await store.list_domains()]


def _broken(found: Any) -> None:
    for line in found.broken:
        click.echo(f"unreadable report: {line}", err=True)


@report_group.command("dmarc")
@click.argument("domain", required=False)
@json_option
@with_store
async def report_dmarc(store: Store, domain: str | None, as_json: bool) -> None:
    """DMARC aggregate reports: per sending address, how much mail passed and failed."""
    import json

    from homemail.doctor import reports

    cfg = get_config(click.get_current_context())
    found = await reports.gather(store, cfg.public.dmarc_reports, await _report_domains(store, domain))
    rows = reports.by_source(found.dmarc)
    if as_json:
        out = [
            {
                "source_ip": r.source_ip,
                "messages": r.messages,
                "dmarc_pass": r.passed,
                "dmarc_fail": r.failed,
                "dkim_pass": r.dkim_pass,
                "spf_pass": r.spf_pass,
                "dispositions": r.dispositions,
                "reporters": sorted(r.reporters),
                "header_from": sorted(r.header_from),
            }
            for r in rows
        ]
        click.echo(json.dumps(out, indent=2))
    else:
        reporters = {(r.reporter, r.report_id) for r in found.dmarc}
        click.echo(f"{len(reporters)} report(s) in {found.messages} message(s)")
        click.echo(f"{'source':<40} {'mail':>7} {'pass':>7} {'fail':>7} {'dkim':>7} {'spf':>7}  reported by")
        for r in rows:
            click.echo(
                f"{r.source_ip:<40} {r.messages:>7} {r.passed:>7} {r.failed:>7} {r.dkim_pass:>7} {r.spf_pass:>7}"
                f"  {', '.join(sorted(r.reporters))}"
            )
    _broken(found)


@report_group.command("tls")
@click.argument("domain", required=False)
@json_option
@with_store
async def report_tls(store: Store, domain: str | None, as_json: bool) -> None:
    """SMTP TLS reports (TLS-RPT): per policy, how many TLS sessions to your MX succeeded and failed, and why."""
    import json

    from homemail.doctor import reports

    cfg = get_config(click.get_current_context())
    found = await reports.gather(store, cfg.public.tls_reports, await _report_domains(store, domain))
    rows = reports.by_policy(found.tls)
    if as_json:
        out = [
            {
                "policy_domain": r.policy_domain,
                "policy_type": r.policy_type,
                "successful": r.successful,
                "failed": r.failed,
                "failures": r.failures,
                "reporters": sorted(r.reporters),
            }
            for r in rows
        ]
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"{'policy domain':<30} {'type':<16} {'ok':>8} {'failed':>8}  failures")
        for r in rows:
            why = ", ".join(f"{k} {n}" for k, n in sorted(r.failures.items())) or "-"
            click.echo(f"{r.policy_domain:<30} {r.policy_type:<16} {r.successful:>8} {r.failed:>8}  {why}")
    _broken(found)


# --- deliverability ----------------------------------------------------------------------------------------


@main.command("doctor")
@click.argument("domain", required=False)
@json_option
def doctor_cmd(domain: str | None, as_json: bool) -> None:
    """Check why mail from this server would be junked or refused (public address, reverse DNS, blocklists, port
    25, DNS records, certificate, open relay), and print the plan: deliver directly or through a relay. Every
    local domain unless DOMAIN is given. Exit status 1 when a check failed."""
    sys.exit(1 if _doctor(domain, as_json) else 0)


@with_store
async def _doctor(store: Store, domain: str | None, as_json: bool) -> bool:
    import json

    from homemail.doctor import checks

    report = await checks.run(get_config(click.get_current_context()), store, domain)
    if as_json:
        click.echo(json.dumps(checks.as_json(report), indent=2))
    else:
        click.echo(checks.text(report), nl=False)
    return report.failed


@main.group("dyndns")
def dyndns_group() -> None:
    """Dynamic IP: keep the host name's A/AAAA and the SPF records on the current public address ([dyndns])."""


@dyndns_group.command("update")
@click.option("--dry-run", is_flag=True, help="say what would change, change nothing")
@with_store
async def dyndns_update(store: Store, dry_run: bool) -> None:
    """Look up the public address once and update DNS (and tell the postmaster) when it changed."""
    import ssl

    from homemail.auth import Authenticator
    from homemail.doctor import dyndns
    from homemail.server import Services

    cfg = get_config(click.get_current_context())
    try:
        change = await dyndns.update_once(cfg, store, dry_run=dry_run)
    except dyndns.DynDNSError as e:
        fail(str(e))
        return
    for rtype, address in change.new.items():
        click.echo(
            f"{change.hostname} {rtype}: {', '.join(change.old.get(rtype, [])) or '(none)'} now {address}"
        )
    if not change.changed:
        click.echo("DNS is up to date")
        return
    for line in change.updates:
        click.echo(("would update: " if dry_run else "updated: ") + line)
    if change.applied:
        services = Services(cfg, store, Authenticator(store, cfg.auth), ssl.create_default_context())
        to = await dyndns.tell_postmaster(services, change)
        click.echo(f"notice sent to {to}" if to else "no local postmaster mailbox: no notice sent")


@main.group("warmup")
def warmup_group() -> None:
    """IP warm-up: daily caps per big provider that grow while they accept our mail ([warmup])."""


@warmup_group.command("status")
@json_option
@with_store
async def warmup_status(store: Store, as_json: bool) -> None:
    """Each provider's cap today, what was used of it, and its health."""
    import dataclasses
    import json

    from homemail.delivery.warmup import Warmup

    cfg = get_config(click.get_current_context())
    rows = await Warmup(cfg, store).status()
    if as_json:
        click.echo(
            json.dumps({"enabled": cfg.warmup.enabled, "providers": [dataclasses.asdict(r) for r in rows]})
        )
        return
    if not cfg.warmup.enabled:
        click.echo("warm-up is off ([warmup] enabled = false): no caps apply")
    click.echo(
        f"{'PROVIDER':<12} {'DAY':<10}  {'CAP':>6} {'USED':>5} {'SENT':>5} {'DEFER':>5} {'FAIL':>5}  HEALTH"
    )
    for r in rows:
        cap = "-" if r.cap is None else str(r.cap)
        click.echo(
            f"{r.provider:<12} {r.day:<10}  {cap:>6} {r.used:>5} {r.sent:>5} {r.deferred:>5} {r.failed:>5}  {r.health}"
        )


# --- demo ----------------------------------------------------------------------------------------------------

DEMO_DOMAIN = "example.test"
DEMO_USER = "demo@example.test"


@main.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Set up a demo domain and user (once), print how to reach them, and serve."""
    cfg = get_config(ctx)

    async def setup() -> str:
        from homemail.auth import hash_password
        from homemail.server import open_store

        password_file = cfg.data_dir / "demo-password"
        store = open_store(cfg)
        await store.open()
        try:
            if not await store.is_local_domain(DEMO_DOMAIN):
                await store.add_domain(DEMO_DOMAIN)
            if await store.get_account(DEMO_USER) is None or not password_file.exists():
                password = secrets.token_urlsafe(12)
                argon, scram = hash_password(password)
                if await store.get_account(DEMO_USER) is None:
                    await store.add_account(DEMO_USER, argon, scram)
                else:
                    await store.set_password(DEMO_USER, argon, scram)
                password_file.write_text(password + "\n")
                password_file.chmod(0o600)
            return password_file.read_text().strip()
        finally:
            await store.close()

    password = asyncio.run(setup())
    click.echo(f"homemail demo: domain {DEMO_DOMAIN}, user {DEMO_USER}, password {password}")
    click.echo(f"  data folder: {cfg.data_dir}")
    for key in ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "https"):
        endpoint = getattr(cfg.listen, key)
        if endpoint is not None:
            click.echo(f"  {key:<12} {endpoint}")
    click.echo("  stop with Ctrl-C")
    from homemail.server import serve as run_server

    run_server(cfg)


if __name__ == "__main__":
    main()
