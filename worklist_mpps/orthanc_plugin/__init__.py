"""worklist-mpps inside Orthanc, as the ``PythonScript`` of Debian's orthanc-python 4.0
(docs/deploy-orthanc-plugin.md, issue 17).

- settings.py: the configuration, from Orthanc's own (``MPPSAet``, ``DicomPortMPPS`` and
  a ``WorklistMpps`` section), through the project's one loader (config.load_config);
- client.py: the Orthanc REST API in-process (no HTTP, no credentials);
- worklist.py: the C-FIND worklist callback of Orthanc's own DICOM port, answered by the
  same matching code as the project's port (services/worklist_find.py);
- entry.py: the only module that imports ``orthanc``: it registers the callbacks and runs
  what ``worklist-mpps serve`` runs (cli/runtime.py) while Orthanc runs.
"""
