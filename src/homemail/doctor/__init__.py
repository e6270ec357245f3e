"""Deliverability: what to publish in DNS (:mod:`homemail.doctor.records`) and, later, checks that it is."""
