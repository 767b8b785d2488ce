"""In-process CPU (process_time) of the service path of a selective / broad C-FIND and
of an MPPS cycle, without pynetdicom's network layer."""
import sys, time, datetime as dt, cProfile, pstats, io
from io import BytesIO
from pydicom import Dataset
from pydicom.filewriter import write_dataset
from pydicom.filebase import DicomBytesIO
from pynetdicom.dsutils import decode, encode
from worklist_mpps.config import Config
from worklist_mpps.db.engine import Database
from worklist_mpps.services import worklist, worklist_find
from worklist_mpps.dimse.pynetdicom_ext import wire

path = sys.argv[1]; what = sys.argv[2] if len(sys.argv) > 2 else "all"
db = Database(f"sqlite:///{path}")
cfg = Config()
day = dt.date.today().strftime("%Y%m%d")

def ident(selective):
    ds = Dataset()
    for k in ("PatientName","PatientID","PatientBirthDate","PatientSex","AccessionNumber","StudyInstanceUID","RequestedProcedureID","RequestedProcedureDescription"):
        setattr(ds, k, "")
    sps = Dataset()
    sps.Modality = "CT" if selective else ""
    sps.ScheduledStationAETitle = "CT01" if selective else ""
    sps.ScheduledProcedureStepStartDate = day
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepDescription = ""
    ds.ScheduledProcedureStepSequence = [sps]
    return encode(ds, True, True)

ENC = (lambda raw: None) if "nocache" in sys.argv else (lambda raw: (raw, "1.2.840.10008.1.2"))
import inspect
OLD_API = "encoded" not in inspect.signature(worklist_find.find).parameters
def one(raw):

    if OLD_API:  # main before issue 18: find(db, config, Dataset, calling AE)
        found = worklist_find.find(db, cfg, decode(BytesIO(raw), True, True), "CT01")
    else:
        found = worklist_find.find(db, cfg, lambda: decode(BytesIO(raw), True, True), "CT01", encoded=ENC(raw))
    out = []
    for row in found.rows:
        el = worklist.response_elements(row, found.query)
        idf = wire.encode_identifier(el, worklist.response_charset(el, found.query), False)
        out.append(wire.find_response(1, 0xFF00, idf, 1, 16384))
    return len(out)

def measure(name, fn, n):
    for _ in range(20): fn()
    t = time.process_time()
    for _ in range(n): r = fn()
    ms = (time.process_time() - t) / n * 1000
    print(f"{name}: {ms:.3f} ms CPU per op ({r} responses)")

sel, broad = ident(True), ident(False)
if what in ("all", "find"):
    measure("selective", lambda: one(sel), 500)
    measure("broad", lambda: one(broad), 50)
if what == "prof-sel":
    pr = cProfile.Profile(); pr.enable()
    for _ in range(500): one(sel)
    pr.disable(); s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(45); print(s.getvalue())
if what == "prof-broad":
    pr = cProfile.Profile(); pr.enable()
    for _ in range(30): one(broad)
    pr.disable(); s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(40); print(s.getvalue())

# --- MPPS cycle: datasets as they arrive (encoded, then decoded like pynetdicom does)
from sqlalchemy import select
from worklist_mpps.client.messages import ScheduledStep, Series, Instance, n_create, n_set_progress, n_set_completed
from worklist_mpps.db.models import WorklistItem
from worklist_mpps.services import mpps
from worklist_mpps.services.audit import Actor
from pydicom.uid import generate_uid

def mpps_inputs():
    with db.read() as s:
        items = s.scalars(select(WorklistItem).where(WorklistItem.sps_start_date == day, WorklistItem.sps_status == "SCHEDULED").limit(400)).all()
    out = []
    for it in items:
        st = ScheduledStep(it.study_instance_uid, it.accession_number, it.requested_procedure_id or "", sps_id=it.sps_id or "")
        ser = [Series("1.2.3." + str(it.id), [Instance("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{it.id}.{i}") for i in range(1, 4)], protocol_name="Thorax")]
        out.append((encode(n_create([st], modality="CT", station_ae_title="CT01", patient_name="Doe^J"), False, True),
                    encode(n_set_progress(ser), False, True), encode(n_set_completed(ser), False, True)))
    return out

def cycle(raws, targets=()):
    c, p, f = raws
    uid = generate_uid(prefix=None)
    actor = Actor("CT01", "127.0.0.1", "DIMSE")
    mpps.create(db, decode(BytesIO(c), False, True), uid, "CT01", "", targets, actor=actor)
    mpps.update(db, uid, decode(BytesIO(p), False, True), "CT01", targets, actor=actor)
    mpps.update(db, uid, decode(BytesIO(f), False, True), "CT01", targets, actor=actor)

if what in ("all", "mpps", "prof-mpps"):
    inputs = mpps_inputs(); it = iter(inputs)
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    for _ in range(10): cycle(next(it))
    if what == "prof-mpps":
        pr = cProfile.Profile(); pr.enable()
    t = time.process_time()
    for _ in range(n): cycle(next(it))
    ms = (time.process_time() - t) / n * 1000
    print(f"mpps cycle: {ms:.3f} ms CPU per cycle (service functions, 3 commits)")
    if what == "prof-mpps":
        pr.disable(); s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(60); print(s.getvalue())
