"""The HTTP side: DICOMweb MPPS and worklist search, the management API, /healthz."""
