"""Deliverability: what to publish in DNS (:mod:`homemail.doctor.records`), the live checks and the plan
(:mod:`homemail.doctor.checks`), the public address (:mod:`homemail.doctor.publicip`) and keeping DNS on it when it
changes (:mod:`homemail.doctor.dyndns`)."""
