"""The web application: what mail clients and other mail servers fetch over HTTP(S).

- ``/.well-known/mta-sts.txt`` for ``Host: mta-sts.<domain>`` of a local domain: the MTA-STS policy (RFC 8461
  3.2), the text :func:`homemail.public.mta_sts_policy` makes (whose hash ``homemail dns`` publishes as its id).
- ``/mail/config-v1.1.xml`` and ``/.well-known/autoconfig/mail/config-v1.1.xml``: Thunderbird's autoconfig
  ("clientConfig" 1.1) for the domain of ``?emailaddress=``, else of the Host (``autoconfig.<domain>`` or the
  domain itself).
- ``/autodiscover/autodiscover.xml`` (POST, any case): Outlook's Autodiscover, the "outlook" response schema
  with the IMAP, POP3 and SMTP settings.
- ``/healthz``: 200 when the store answers.

Only local domains get answers; anything else is 404. Host names and ports are the public ones
(:mod:`homemail.public`). Every text from the request that goes into a reply is escaped.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from homemail import addresses, public

if TYPE_CHECKING:
    from homemail.server import Services

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # an Autodiscover request is a few hundred bytes
XML = "text/xml; charset=utf-8"
_EMAIL = re.compile(r"<EMailAddress>\s*([^<\s]{1,320})\s*</EMailAddress>", re.IGNORECASE)
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


def request_host(request: Request) -> str:
    """The Host header's name, lower-case, without port or trailing dot ("" when absent or odd)."""
    host = request.headers.get("host", "").strip().lower()
    if host.startswith("["):
        return ""  # an address literal names no domain
    host = host.rpartition(":")[0] if ":" in host else host
    host = host.rstrip(".")
    return host if _DOMAIN.fullmatch(host) else ""


def _domain_of(address: str) -> str:
    try:
        return addresses.normalize_domain(address.rpartition("@")[2])
    except ValueError:
        return ""


class Web:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.config = services.config
        self.store = services.store

    async def _local(self, domain: str) -> bool:
        return bool(domain) and await self.store.is_local_domain(domain)

    # --- MTA-STS ---

    async def mta_sts(self, request: Request) -> Response:
        host = request_host(request)
        if not host.startswith("mta-sts.") or not await self._local(host[len("mta-sts.") :]):
            return PlainTextResponse("no MTA-STS policy here\n", status_code=404)
        return PlainTextResponse(public.mta_sts_policy(self.config))

    # --- Thunderbird autoconfig ---

    async def autoconfig(self, request: Request) -> Response:
        email = request.query_params.get("emailaddress", "")
        host = request_host(request)
        candidates = [_domain_of(email)] if "@" in email else []
        candidates += [host.removeprefix("autoconfig."), host]
        for domain in candidates:
            if await self._local(domain):
                return Response(self._client_config(domain), media_type=XML)
        return PlainTextResponse("unknown mail domain\n", status_code=404)

    def _client_config(self, domain: str) -> str:
        host = escape(public.public_hostname(self.config))
        d = escape(domain)
        incoming: list[str] = []
        outgoing: list[str] = []
        for key, _, implicit in public.CLIENT_SERVICES:
            port = public.public_port(self.config, key)
            if port is None:
                continue
            kind = "smtp" if key.startswith("submission") else key.rstrip("s")
            socket_type = "SSL" if implicit else "STARTTLS"
            element = "outgoingServer" if kind == "smtp" else "incomingServer"
            block = (
                f'    <{element} type="{kind}">\n'
                f"      <hostname>{host}</hostname>\n"
                f"      <port>{port}</port>\n"
                f"      <socketType>{socket_type}</socketType>\n"
                "      <authentication>password-cleartext</authentication>\n"
                "      <username>%EMAILADDRESS%</username>\n"
                f"    </{element}>\n"
            )
            (outgoing if kind == "smtp" else incoming).append(block)
        # Thunderbird offers the incoming servers in this order: IMAP before POP3, implicit TLS first.
        incoming.sort(key=lambda b: 0 if 'type="imap"' in b else 1)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<clientConfig version="1.1">\n'
            f'  <emailProvider id="{d}">\n'
            f"    <domain>{d}</domain>\n"
            f"    <displayName>{d}</displayName>\n"
            f"    <displayShortName>{d}</displayShortName>\n"
            + "".join(incoming)
            + "".join(outgoing)
            + "  </emailProvider>\n</clientConfig>\n"
        )

    # --- Outlook Autodiscover ---

    async def autodiscover(self, request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return PlainTextResponse("request too large\n", status_code=413)
        m = _EMAIL.search(body.decode("utf-8", "replace"))
        email = m.group(1) if m else ""
        domain = _domain_of(email) if "@" in email else ""
        if not await self._local(domain):
            return PlainTextResponse("unknown mail domain\n", status_code=404)
        return Response(self._autodiscover_xml(email), media_type=XML)

    def _autodiscover_xml(self, email: str) -> str:
        host = escape(public.public_hostname(self.config))
        login = escape(email)
        protocols = []
        for kind, keys in (
            ("IMAP", ("imaps", "imap")),
            ("POP3", ("pop3s", "pop3")),
            ("SMTP", ("submissions", "submission")),
        ):
            for key in keys:  # the implicit-TLS port when there is one
                port = public.public_port(self.config, key)
                if port is None:
                    continue
                tls = "<SSL>on</SSL>" if key.endswith("s") else "<SSL>on</SSL><Encryption>TLS</Encryption>"
                protocols.append(
                    "      <Protocol>\n"
                    f"        <Type>{kind}</Type>\n"
                    f"        <Server>{host}</Server>\n"
                    f"        <Port>{port}</Port>\n"
                    "        <DomainRequired>off</DomainRequired>\n"
                    f"        <LoginName>{login}</LoginName>\n"
                    "        <SPA>off</SPA>\n"
                    f"        {tls}\n"
                    "        <AuthRequired>on</AuthRequired>\n"
                    "      </Protocol>\n"
                )
                break
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006">\n'
            '  <Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a">\n'
            "    <Account>\n"
            "      <AccountType>email</AccountType>\n"
            "      <Action>settings</Action>\n" + "".join(protocols) + "    </Account>\n"
            "  </Response>\n"
            "</Autodiscover>\n"
        )

    # --- health ---

    async def healthz(self, request: Request) -> Response:
        try:
            await self.store.list_domains()
        except Exception as e:
            log.warning("health check: the store failed: %s", e)
            return PlainTextResponse("store unavailable\n", status_code=503)
        return PlainTextResponse("ok\n")

    async def other(self, request: Request) -> Response:
        # Outlook spells the Autodiscover path in several ways.
        if request.url.path.lower() == "/autodiscover/autodiscover.xml" and request.method == "POST":
            return await self.autodiscover(request)
        return PlainTextResponse("not found\n", status_code=404)


def make_app(services: Services) -> Starlette:
    web = Web(services)
    routes = [
        Route("/.well-known/mta-sts.txt", web.mta_sts, methods=["GET"]),
        Route("/mail/config-v1.1.xml", web.autoconfig, methods=["GET"]),
        Route("/.well-known/autoconfig/mail/config-v1.1.xml", web.autoconfig, methods=["GET"]),
        Route("/healthz", web.healthz, methods=["GET"]),
        Route("/{path:path}", web.other, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes)
