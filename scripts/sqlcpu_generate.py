"""Make a SQLite worklist of N items with bench/generate.py: sqlcpu_generate.py N PATH (run from the repository root)."""
import sys, datetime as dt, time
sys.path.insert(0, "bench")
import generate
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
n=int(sys.argv[1]); path=sys.argv[2]
db=Database(f"sqlite:///{path}"); migrate.upgrade(db.engine)
t=time.time(); generate.load(db, generate.make_items(n, dt.date.today())); print("load", time.time()-t); db.dispose()
