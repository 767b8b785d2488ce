"""The only code touching pynetdicom's internals (private classes, methods and attributes):
reactor.py (event-driven reactors, the gated listener), wire.py (C-FIND response encoding,
the message bound, the N-CREATE Attribute Identifier List), command_sets.py (request
command sets read with struct), echo_fast.py (Verification-only associations) and assoc.py
(per-association state and operations for the rest of dimse/). internals.py lists what
they rely on, checked by tests/test_pynetdicom_ext.py."""
