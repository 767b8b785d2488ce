"""worklist-mpps: DICOM Modality Worklist and MPPS server for Orthanc sites."""

__version__ = "0.1.0"
