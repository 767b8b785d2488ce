"""Delivery: the outbox worker and its targets (Orthanc, downstream MPPS peers). Uses the
service layer; no front end imports it but the CLI that starts it."""
