"""SPF (RFC 7208): is the connecting IP allowed to send for the MAIL FROM (or HELO) domain?

:class:`SPFResult` is what the SMTP policy keeps in ``envelope.state["spf"]`` (MAIL FROM identity) and
``envelope.state["spf_helo"]`` (HELO identity), and what Received-SPF and Authentication-Results are made from.
"""

from __future__ import annotations

from dataclasses import dataclass

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


@dataclass(frozen=True, slots=True)
class SPFResult:
    """The outcome of one check_host() evaluation (RFC 7208 2.6)."""

    result: str  # one of RESULTS
    domain: str  # the domain checked: the MAIL FROM domain, or the HELO name (scope "helo")
    scope: str  # "mailfrom" or "helo"
    sender: str = ""  # the <sender> evaluated: the MAIL FROM address, or postmaster@helo
    client_ip: str = ""
    helo: str = ""
    mechanism: str = ""  # the term that decided ("-all", "ip4:192.0.2.0/24", "default", "redirect=...")
    explanation: str = ""  # for "fail": the domain's exp= text (RFC 7208 6.2), else ""
    reason: str = ""  # why, for logs and header comments

    @property
    def ok(self) -> bool:
        return self.result == "pass"
