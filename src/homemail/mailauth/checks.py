"""What the MX decides about a received message once its data is in: DKIM, ARC, DMARC, the optional rspamd scan,
and the Authentication-Results field that records them (with SPF and iprev, which the earlier stages found).

:func:`assess` is the one entry point the SMTP policy (:mod:`homemail.smtp.inbound`) calls after DATA/BDAT; it
returns an :class:`Assessment`: refuse (code, enhanced code, text), deliver to INBOX or to Junk, the header
fields to prepend, and the message as it should be stored (forged results removed).

Order and rules:
1. DKIM signatures, ARC chain and DMARC policy records are looked up at the same time (``[dmarc] enabled``).
2. DMARC per author domain (:mod:`.dmarc`). A failing domain whose trusted forwarder vouches for it through ARC
   (:func:`.arc.vouches`) is delivered as if its policy were none, recorded as overridden (RFC 7489 6.7 local
   policy, ``trusted_forwarder``).
3. Refusals, first match wins:
   - the DMARC outcome is open because of a DNS failure (the policy record, or an aligned signature's key), or
     an ARC key lookup failed where a trusted sealer's chain could forgive a failure: 451 4.7.0 / 4.7.5;
   - a DMARC ``reject`` disposition: 550 5.7.1 (RFC 7489 6.6.4; 7.1 of RFC 7372 for the code);
   - any other DKIM key lookup failed and DMARC did not pass: 451 4.7.5 (RFC 6376 6.1.2 TEMPFAIL; a DNS failure
     is never treated as a pass or a fail).
4. A DMARC ``quarantine`` disposition: the Junk folder.
5. rspamd, when ``[rspamd] url`` is set, only for messages still accepted (:mod:`.rspamd` for its verdicts).
6. Authentication-Results fields carrying our authserv-id are removed from the message (RFC 8601 5) and ours is
   added (:mod:`.results`), even with the checks off (then it holds only what SPF and iprev found).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from homemail.config import Config
from homemail.dns import Resolver
from homemail.mailauth import arc, dkimverify, dmarc, results, rspamd
from homemail.mailauth.results import Entry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Context:
    """The transaction as the SMTP session saw it."""

    peer_ip: str
    helo: str = ""
    sender: str = ""  # MAIL FROM, "" for <>
    recipients: Sequence[str] = ()
    queue_id: str = ""
    spf: Any = None  # homemail.mailauth.spf.SPFResult for the MAIL FROM identity (or HELO for <>), if checked
    spf_helo: Any = None  # SPFResult for the HELO identity, if checked
    iprev: str | None = None  # "pass", "fail", "temperror"; None: not checked
    reverse_name: str | None = None  # the client's forward-confirmed name


@dataclass
class Assessment:
    message: bytes  # as it should be stored: forged results removed, subject maybe rewritten
    header: bytes = b""  # Authentication-Results and X-Spam fields, to prepend
    refusal: tuple[int, str, str] | None = None  # (code, enhanced code, text)
    junk: bool = False
    notes: list[str] = field(default_factory=list)  # for the delivery log line

    @property
    def summary(self) -> str:
        return " ".join(self.notes)


def _spf_identity(ctx: Context) -> tuple[str | None, str | None]:
    """(result, domain) of the SPF check DMARC uses: the MAIL FROM identity (the HELO name for <>)."""
    spf = ctx.spf
    if spf is None:
        return None, None
    return getattr(spf, "result", None), getattr(spf, "domain", None) or None


def _entries(
    ctx: Context,
    dkim_results: Sequence[dkimverify.DKIMResult] | None,
    outcome: dmarc.Outcome | None,
    overridden: dict[str, str],
    arc_result: arc.ARCResult | None,
) -> list[Entry]:
    out: list[Entry] = []
    if ctx.iprev:
        out.append(Entry("iprev", ctx.iprev, ctx.reverse_name or "", (("policy.iprev", ctx.peer_ip),)))
    spf = ctx.spf if ctx.spf is not None else ctx.spf_helo
    if spf is not None:
        result = getattr(spf, "result", "none")
        if getattr(spf, "scope", "mailfrom") == "mailfrom" and spf is ctx.spf:
            identity = ctx.sender if ctx.sender and re.fullmatch(r"[^\s\"();@]+@[^\s@]+", ctx.sender) else ""
            prop = ("smtp.mailfrom", identity or getattr(spf, "domain", ""))
        else:
            prop = ("smtp.helo", getattr(spf, "domain", "") or ctx.helo)
        comment = getattr(spf, "reason", "") or ""
        out.append(Entry("spf", result, comment, (prop,)))
    if dkim_results is not None:
        if not dkim_results:
            out.append(Entry("dkim", "none"))
        for sig in dkim_results:
            comment = "" if sig.result == "pass" and sig.reason == "ok" else sig.reason
            if sig.result == "pass" and comment.startswith("ok; "):
                comment = comment[4:]
            if sig.testing:
                comment = (comment + "; " if comment else "") + "test mode"
            out.append(
                Entry(
                    "dkim",
                    sig.result,
                    comment,
                    (
                        ("header.d", sig.domain),
                        ("header.i", sig.identity if sig.identity != "@" + sig.domain else ""),
                        ("header.s", sig.selector),
                        ("header.a", sig.algorithm),
                        ("header.b", dkimverify.header_b(sig, dkim_results)),
                    ),
                )
            )
    if outcome is not None:
        if not outcome.results:
            out.append(Entry("dmarc", "none", "no author domain in From:"))
        for r in outcome.results:
            comment = r.comment
            if r.from_domain in overridden:  # delivered: the disposition applied is none
                comment = dataclasses.replace(r, disposition="none").comment
                comment += f"; overridden: arc=pass by trusted sealer {overridden[r.from_domain]} (trusted_forwarder)"
            if r.result == "temperror" and r.record is not None:
                comment += f"; {r.reason}"
            out.append(Entry("dmarc", r.result, comment.strip("; "), (("header.from", r.from_domain),)))
    if arc_result is not None and arc_result.result != "none":
        props = (("header.as-d", arc_result.sealer), ("smtp.remote-ip", ctx.peer_ip))
        out.append(Entry("arc", arc_result.result, arc_result.comment, props))
    return out


def _from_values(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    return [v.decode("utf-8", "replace").strip() for n, v in headers if n.lower() == b"from"]


async def assess(
    message: bytes,
    ctx: Context,
    config: Config,
    resolver: Resolver,
    spam: rspamd.Client | None = None,
    sample: Callable[[], float] = random.random,
) -> Assessment:
    """Every check of the data stage; see the module docstring for the order and the replies."""
    hostname = config.hostname
    stored, forged = results.remove_ours(message, hostname)
    verdict = Assessment(stored)
    if forged:
        verdict.notes.append(f"forged-ar-removed={forged}")
    dkim_results: list[dkimverify.DKIMResult] | None = None
    outcome: dmarc.Outcome | None = None
    arc_result: arc.ARCResult | None = None
    overridden: dict[str, str] = {}
    if config.dmarc.enabled:
        dkim_results, outcome, arc_result = await _authenticate(message, ctx, resolver, sample)
        verdict.refusal = _decide(
            outcome, dkim_results, arc_result, config.dmarc.trusted_arc_sealers, overridden
        )
        verdict.junk = verdict.refusal is None and any(
            r.result == "fail" and r.disposition == "quarantine" and r.from_domain not in overridden
            for r in outcome.results
        )
        verdict.notes.append("dkim=" + (",".join(f"{s.result}:{s.domain}" for s in dkim_results) or "none"))
        verdict.notes += [f"dmarc={r.result}:{r.from_domain}:{r.disposition}" for r in outcome.results]
        if arc_result.result != "none":
            verdict.notes.append(f"arc={arc_result.result}:{arc_result.sealer}")
        if overridden:
            verdict.notes.append("dmarc-override=" + ",".join(sorted(overridden)))
    header = results.header(hostname, _entries(ctx, dkim_results, outcome, overridden, arc_result))
    if verdict.refusal is None and spam is not None:
        await _spam_check(verdict, header, ctx, config, spam)
    verdict.header = header + verdict.header
    return verdict


async def _authenticate(
    message: bytes, ctx: Context, resolver: Resolver, sample: Callable[[], float]
) -> tuple[list[dkimverify.DKIMResult], dmarc.Outcome, arc.ARCResult]:
    """DKIM, DMARC discovery and ARC at the same time, then DMARC evaluated for each author domain."""
    fields = results.fields(message)
    names = {n.lower() for n, _ in fields}
    domains = dmarc.author_domains(_from_values(fields))[:5]
    spf_result, spf_domain = _spf_identity(ctx)
    dkim_results: list[dkimverify.DKIMResult] = []
    arc_result = arc.ARCResult("none")
    if b"dkim-signature" in names or names.intersection(arc.ARC_FIELDS):
        dkim_results, found, arc_result = await asyncio.gather(
            dkimverify.verify(message, resolver, fields=fields),
            asyncio.gather(*(dmarc.discover(resolver, d) for d in domains)),
            arc.verify(message, fields, resolver),
        )
    elif len(domains) == 1:  # the common case, without the cost of tasks
        found = [await dmarc.discover(resolver, domains[0])]
    else:
        found = await asyncio.gather(*(dmarc.discover(resolver, d) for d in domains))
    outcome = dmarc.Outcome(
        [
            dmarc.evaluate(d, f, dkim_results, spf_result, spf_domain, sample)
            for d, f in zip(domains, found, strict=True)
        ]
    )
    return dkim_results, outcome, arc_result


def _decide(
    outcome: dmarc.Outcome,
    dkim_results: Sequence[dkimverify.DKIMResult],
    arc_result: arc.ARCResult,
    trusted: Sequence[str],
    overridden: dict[str, str],
) -> tuple[int, str, str] | None:
    failing = [r for r in outcome.results if r.result == "fail" and r.disposition != "none"]
    for r in failing:
        if arc.vouches(arc_result, trusted, r.from_domain):
            overridden[r.from_domain] = arc_result.sealer
    open_result = outcome.open
    if open_result is not None:
        # The policy record itself (4.7.0), or the key of a signature that could still make it pass (4.7.5).
        enhanced = "4.7.0" if open_result.record is None else "4.7.5"
        return (
            451,
            enhanced,
            f"Cannot check the DMARC policy of {open_result.from_domain} now ({open_result.reason}); "
            "try again later",
        )
    if (
        arc_result.result == "temperror"
        and arc.trusted(arc_result.sealer, trusted)
        and any(r.from_domain not in overridden for r in failing)
    ):
        return (451, "4.7.5", f"Cannot verify the ARC chain now ({arc_result.reason}); try again later")
    for r in failing:
        if r.disposition == "reject" and r.from_domain not in overridden:
            return (
                550,
                "5.7.1",
                f"Message refused: it fails the DMARC policy of {r.from_domain} (p={r.policy}): "
                "no aligned SPF or DKIM pass",
            )
    if not outcome.passed:
        open_sig = next((s for s in dkim_results if s.result == "temperror"), None)
        if open_sig is not None:
            return (451, "4.7.5", f"DKIM key of {open_sig.domain} unavailable now; try again later")
    return None


async def _spam_check(
    verdict: Assessment, auth_header: bytes, ctx: Context, config: Config, spam: rspamd.Client
) -> None:
    stored, _ = results.remove_fields(verdict.message, rspamd.SPAM_FIELDS)
    request = rspamd.Request(
        ip=ctx.peer_ip,
        helo=ctx.helo,
        hostname=ctx.reverse_name or "",
        sender=ctx.sender,
        recipients=ctx.recipients,
        queue_id=ctx.queue_id,
        mta_name=config.hostname,
    )
    try:
        answer = await spam.check(auth_header + stored, request)
        result = rspamd.interpret(answer, config.rspamd.reject_score, config.rspamd.junk_score)
    except rspamd.RspamdError as e:
        log.warning("rspamd: no verdict for %s: %s", ctx.queue_id, e)
        verdict.notes.append("rspamd=error")
        if config.rspamd.on_error == "tempfail":
            verdict.refusal = (451, "4.3.0", "Content scanner unavailable; try again later")
            return
        result = rspamd.Verdict("accept", error=str(e))
    else:
        verdict.notes.append(f"rspamd={result.action.replace(' ', '_')}:{result.score:.2f}")
    verdict.message = stored
    if result.verdict == "reject":
        text = _printable(result.smtp_message) or "Message refused as spam"
        verdict.refusal = (550, "5.7.1", text)
        return
    if result.verdict == "tempfail":
        verdict.refusal = (451, "4.7.1", _printable(result.smtp_message) or "Try again later")
        return
    if result.verdict == "junk":
        verdict.junk = True
        if result.subject:
            verdict.message = rspamd.rewrite_subject(verdict.message, result.subject)
    verdict.header += result.status_header()


def _printable(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]+", " ", text).strip()[:200]
