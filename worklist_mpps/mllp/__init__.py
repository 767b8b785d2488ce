"""The HL7 v2 order feed over MLLP: the listener front end (issue 14)."""
