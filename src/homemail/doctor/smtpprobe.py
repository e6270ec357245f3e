"""A line-level SMTP client for the doctor's probes: the big-provider MX (is outbound port 25 open?) and our own MX
as the world sees it (its certificate, and that it is no open relay). It speaks only what those need: the
greeting, EHLO, STARTTLS, MAIL/RCPT, RSET and QUIT, each reply bounded by a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import ssl


class ProbeError(Exception):
    pass


class Probe:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ssl_object: ssl.SSLObject | None = None

    async def open(self, ip: str, port: int, source: str | None = None) -> tuple[int, str]:
        """Connect and read the greeting."""
        local = (source, 0) if source and (":" in source) == (":" in ip) else None
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(ip, port, local_addr=local), self.timeout
            )
        except TimeoutError:
            raise ProbeError(f"no connection to [{ip}]:{port} within {self.timeout:g} s") from None
        except OSError as e:
            raise ProbeError(f"cannot connect to [{ip}]:{port}: {e.strerror or e}") from None
        return await self.reply()

    async def reply(self) -> tuple[int, str]:
        assert self.reader is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    line = await self.reader.readline()
                    if not line:
                        raise ProbeError("the server closed the connection")
                    text = line.decode("utf-8", "replace").rstrip("\r\n")
                    lines.append(text[4:])
                    if len(text) < 4 or text[3] != "-":
                        if not text[:3].isdigit():
                            raise ProbeError(f"not an SMTP reply: {text[:80]!r}")
                        return int(text[:3]), " ".join(lines).strip()
        except TimeoutError:
            raise ProbeError(f"no reply within {self.timeout:g} s") from None
        except (OSError, ssl.SSLError) as e:
            raise ProbeError(f"connection lost: {e}") from None

    async def command(self, line: str) -> tuple[int, str]:
        assert self.writer is not None
        try:
            self.writer.write(line.encode("utf-8") + b"\r\n")
            await self.writer.drain()
        except (OSError, ssl.SSLError) as e:
            raise ProbeError(f"connection lost: {e}") from None
        return await self.reply()

    async def ehlo(self, name: str) -> tuple[int, list[str]]:
        """EHLO; the reply code and the extension keywords (upper-case)."""
        code, text = await self.command(f"EHLO {name}")
        # reply() joins the lines; the keywords are the first word of every line after the first.
        return code, [w.upper() for w in text.split()]

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        assert self.writer is not None
        code, text = await self.command("STARTTLS")
        if code != 220:
            raise ProbeError(f"STARTTLS refused: {code} {text}")
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.start_tls(context, server_hostname=server_hostname)
        except TimeoutError:
            raise ProbeError(f"no TLS handshake within {self.timeout:g} s") from None
        self.ssl_object = self.writer.get_extra_info("ssl_object")

    async def close(self) -> None:
        if self.writer is None:
            return
        with contextlib.suppress(Exception):
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.writer.drain(), 2)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        self.writer = None
