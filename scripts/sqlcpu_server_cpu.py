"""Server CPU per operation: a real `worklist-mpps serve` process, one pynetdicom client
(this process) on an open association; CPU from /proc/PID/stat. Usage: server_cpu.py DB [PYTHONPATH]"""
import os, sys, time, socket, subprocess, datetime as dt, statistics
from pathlib import Path
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL, ModalityPerformedProcedureStep as MPPS
from worklist_mpps.client.messages import Instance, ScheduledStep, Series, n_create, n_set_completed, n_set_progress

db, pypath = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
def cpu(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
env = {**os.environ, "PYTHONPATH": pypath} if pypath else dict(os.environ)
srv = subprocess.Popen([sys.executable, "-m", "worklist_mpps", "serve", "--bind", "127.0.0.1", "--port", str(port),
    "--database-url", f"sqlite:///{db}", "--http-enabled", "false", "--load-sample-data", "false", "--log-level", "WARNING"],
    env=env, stdout=subprocess.DEVNULL, stderr=open("/tmp/sqlcpu_serve.log", "w"))
try:
    for _ in range(300):
        try: socket.create_connection(("127.0.0.1", port), 0.2).close(); break
        except OSError: time.sleep(0.2)
    day = dt.date.today().strftime("%Y%m%d")
    def ident(sel):
        ds = Dataset()
        for k in ("PatientName","PatientID","PatientBirthDate","PatientSex","AccessionNumber","StudyInstanceUID","RequestedProcedureID","RequestedProcedureDescription"):
            setattr(ds, k, "")
        sps = Dataset(); sps.Modality = "CT" if sel else ""; sps.ScheduledStationAETitle = "CT01" if sel else ""
        sps.ScheduledProcedureStepStartDate = day; sps.ScheduledProcedureStepStartTime = ""; sps.ScheduledProcedureStepID = ""; sps.ScheduledProcedureStepDescription = ""
        ds.ScheduledProcedureStepSequence = [sps]; return ds
    ae = AE(ae_title="CT01"); ae.add_requested_context(MWL); ae.add_requested_context(MPPS)
    assoc = ae.associate("127.0.0.1", port, ae_title="WORKLISTS"); assert assoc.is_established
    def find(ds):
        n = 0
        for st, _ in assoc.send_c_find(ds, MWL):
            if st and st.Status in (0xFF00, 0xFF01): n += 1
        return n
    def rounds(name, fn, reps, per):
        fn(); fn()
        vals = []
        for _ in range(reps):
            c0 = cpu(srv.pid)
            for _ in range(per): r = fn()
            vals.append((cpu(srv.pid) - c0) * 1000 / per)
        print(f"{name}: server CPU median {statistics.median(vals):.2f} ms/op (min {min(vals):.2f}, rounds of {per}) -> {r}", flush=True)
    sel, broad = ident(True), ident(False)
    rounds("selective", lambda: find(sel), 7, 100)
    rounds("broad (200)", lambda: find(broad), 5, 20)
    def cycle():
        uid, study, series = generate_uid(), generate_uid(), generate_uid()
        images = [Instance("1.2.840.10008.5.1.4.1.1.2", generate_uid()) for _ in range(3)]
        a = assoc.send_n_create(n_create([ScheduledStep(study, "X1")], modality="CT", station_ae_title="CT01", patient_name="Müller^Hans"), MPPS, uid)[0]
        b = assoc.send_n_set(n_set_progress([Series(series, images[:1])]), MPPS, uid)[0]
        c = assoc.send_n_set(n_set_completed([Series(series, images)]), MPPS, uid)[0]
        return [x.Status for x in (a, b, c)]
    rounds("mpps cycle", cycle, 5, 10)
    assoc.release()
finally:
    srv.terminate(); srv.wait(10)
