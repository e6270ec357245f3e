"""Message authentication: DKIM signing and verification (:mod:`.dkim`); SPF, DMARC, ARC and DNSBL checks live
beside it. Every DNS lookup goes through :mod:`homemail.dns`.

Rules:
- Canonicalisation and tag parsing come from dkimpy; the public-key step (RSA, Ed25519) from ``cryptography``.
- Verification never raises for a bad message: each signature gets a result (pass, fail, neutral, temperror,
  permerror) that the caller turns into Authentication-Results and policy.
"""
