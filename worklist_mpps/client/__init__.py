"""The client wing: acting as a modality (dicom-mpps): SCU associations, MPPS messages,
image references."""
