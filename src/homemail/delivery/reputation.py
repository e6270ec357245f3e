"""What a remote server's refusal says about us: is it about the sending address's reputation (so a relay would
get through), or a rate limit (so the warm-up should slow down)?

Heuristics, since there is no standard code for either:

- **Refused for reputation** (:func:`refused_for_reputation`): a session refused outright (a 5xx greeting or
  EHLO answer: a server saying that to a well-formed client is saying it about the client's address), or a 5xx
  reply whose enhanced status is 5.7.x, or none or 5.0.0/5.5.0/5.4.x (servers that give none), and whose text
  names the address's standing: "blocked", "listed", "blacklist"/"blocklist", "reputation", a list (Spamhaus,
  PBL/SBL/XBL/CSS, Spamcop, Barracuda, SORBS, UCEPROTECT, "DNSBL"/"RBL"), "dynamic"/"residential"/"dial-up"
  addresses, "reverse DNS"/"PTR", Microsoft's S3140/S3150 and Yahoo's [BLnn] codes, Gmail's "not authorized to
  send email directly". 5.7.25 (RFC 7372: reverse DNS required) always counts. Replies about the message or the
  recipient do not, whatever the words: a mailbox that does not exist or is full (5.1.x, 5.2.x), or authentication
  and content (SPF, DKIM, DMARC, "spam" content, virus), which a relay would not fix.
- **Rate limit** (:func:`is_rate_limit`): 421 (the server closes: "too busy for you"), a 4xx with 4.7.x, or a 4xx
  whose text says rate, "too many", throttled, limit or "try again later"; greylisting (the text says greylisted)
  is not a rate limit.
"""

from __future__ import annotations

import re

from homemail.delivery.client import Reply

_REPUTATION = re.compile(
    r"block(ed|ing|list(ed)?)?\b|black ?list(ed)?|\blisted\b|reputation|spamhaus|\b(pbl|sbl|xbl|css|zen)\b"
    r"|spamcop|barracuda|sorbs|uceprotect|\b(dns)?bl\b|\brbl\b|dnsbl|dynamic|residential|dial-?up"
    r"|reverse dns|\brdns\b|\bptr\b|\bs31[45]0\b|\[bl\d+\]|not authorized to send (e-?mail )?directly"
    r"|poor sending|sender score|(your|the) ip( address)? (is|has|was)",
    re.IGNORECASE,
)
_NOT_REPUTATION = re.compile(
    r"user unknown|no such user|unknown user|mailbox|does not exist|doesn't exist|over quota|quota"
    r"|\bspf\b|\bdkim\b|\bdmarc\b|virus|content|relay(ing)? (access )?denied",
    re.IGNORECASE,
)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_RATE = re.compile(r"\brate\b|too many|throttl|\blimit|try again later|slow down|too fast", re.IGNORECASE)


def enhanced_status(text: str) -> str:
    """The enhanced status code at the start of a reply text ("5.7.1"), or ""."""
    m = _STATUS.search(text[:40])
    return m.group(0) if m else ""


def about_reputation(text: str) -> bool:
    """Whether a 5xx reply's text is about the sending address's reputation."""
    status = enhanced_status(text)
    if status == "5.7.25":
        return True
    if status and not (
        status.startswith("5.7.") or status in ("5.0.0", "5.5.0") or status.startswith("5.4.")
    ):
        return False
    if _NOT_REPUTATION.search(text):
        return False
    return bool(_REPUTATION.search(text))


def refused_for_reputation(reply: Reply) -> bool:
    return reply.session_refused or (reply.permanent and about_reputation(reply.text))


def is_rate_limit(reply: Reply) -> bool:
    if reply.ok or reply.permanent:
        return False
    if re.search(r"gr[ae]ylist", reply.text, re.IGNORECASE):
        return False
    return (
        reply.code == 421 or enhanced_status(reply.text).startswith("4.7.") or bool(_RATE.search(reply.text))
    )
