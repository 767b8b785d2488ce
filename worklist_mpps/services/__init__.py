"""The service layer: every rule of the worklist, MPPS, schedule and audit, for every
front end (DIMSE, HTTP, CLI). Imports no front end and no delivery."""
