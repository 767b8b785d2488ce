"""The only code touching pynetdicom's internals (private classes, methods and attributes):
reactor.py and wire.py. Each lists what it relies on in PYNETDICOM_INTERNALS, checked by
tests/test_pynetdicom_ext.py."""
