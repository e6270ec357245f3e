"""HTTP: the MTA-STS policy, mail client autoconfiguration (Thunderbird, Outlook) and a health check.

:mod:`homemail.web.app` is the Starlette application, :mod:`homemail.web.server` runs it under uvicorn's HTTP
protocol on the ``[listen] http`` and ``https`` listeners, inside homemail's own event loop.
"""
