# ruff: noqa: E501, E402  (the child program is one string; easytune is imported from the tree after the runs)
"""Side by side: the ops' entry points' cost with the backend stubbed (validation + dispatch only) in two
source trees, alternating fresh processes (this machine's per-process speed varies, so one process per
sample and the median).

    git worktree add /tmp/old <commit>
    python scripts/dispatch_before_after.py RUNS OUT.json /tmp/old

writes ``OUT.json`` (an easytune result file) with the median, min and max per op and tree."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, time, torch
torch.set_num_threads(1)
from easytune import ops
from easytune.ops import dispatch
q,k,v=(torch.randn(2,4,3,64) for _ in range(3))
oc,ou,x=(torch.randn(2,1,256) for _ in range(3))
a=torch.rand(2)*.5+.25; ap=a+.1
m,t=torch.randn(2,256),torch.randn(2,256)
def tm(f,n=2000):
    for _ in range(200): f()
    best=1e9
    for _ in range(15):
        t0=time.perf_counter()
        for _ in range(n): f()
        best=min(best,(time.perf_counter()-t0)/n)
    return best*1e6
def stub(*a, **k): return None
cases = {
 'attention': (dispatch.resolve('attention',q=q,k=k,v=v,q_lengths=None,kv_lengths=None,dropout_p=0.0), lambda: ops.attention(q,k,v), lambda f: f(q,k,v,q_lengths=None,kv_lengths=None,scale=None,dropout_p=0.0)),
 'guided_step': (dispatch.resolve('guided_step',model_cond=oc,model_uncond=ou,sample=x,eta=0.0,noise=None,prediction_type='epsilon',alpha_prod_t=a,alpha_prod_t_prev=ap,guidance_scale=7.5), lambda: ops.guided_step(oc,ou,x,a,ap,guidance_scale=7.5), lambda f: f(oc,ou,x,a,ap,guidance_scale=7.5)),
 'reward_head': (dispatch.resolve('reward_head',motion=m,text=t), lambda: ops.reward_head(m,t), lambda f: f(m,t)),
}
out={}
with torch.no_grad():
  for name,(impl,auto,bare) in cases.items():
    object.__setattr__(impl,'fn',stub)
    out[name]=tm(auto)-tm(lambda: bare(stub))
print(json.dumps(out))
"""
OLD = sys.argv[3]
OLD_LABEL = subprocess.run(
    ["git", "-C", OLD, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
).stdout.strip()
res = {OLD_LABEL: [], "now": []}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    for label, tree in ((OLD_LABEL, OLD), ("now", str(ROOT))):
        env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
        r = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, cwd=tree, check=True
        )
        res[label].append(json.loads(r.stdout.strip().splitlines()[-1]))
summary = {
    label: {
        op: {
            "median_us": statistics.median(r[op] for r in runs),
            "min_us": min(r[op] for r in runs),
            "max_us": max(r[op] for r in runs),
        }
        for op in runs[0]
    }
    for label, runs in res.items()
}
print(json.dumps(summary, indent=1))
sys.path.insert(0, str(ROOT))
from easytune.bench.env import environment
from easytune.bench.results import write_results

rows = []
for label, ops_ in summary.items():
    for op, s in ops_.items():
        rows.append(
            {
                "kind": "overhead",
                "case": f"dispatch/{op}/cpu/{label}",
                "op": op,
                "code": label,
                "dispatch_us_median": s["median_us"],
                "dispatch_us_min": s["min_us"],
                "dispatch_us_max": s["max_us"],
                "processes": len(res[label]),
                "target_us": 5.0,
                "passes": s["median_us"] <= 5.0,
            }
        )
env = environment("cpu")
env["config"] = {
    "what": "ops entry point with the backend stubbed, auto minus bare stub call; per process the "
    "fastest of 15 blocks of 2000 calls; processes alternate "
    + OLD_LABEL
    + " / now, scripts/dispatch_before_after.py",
    "torch_threads": 1,
}
write_results(sys.argv[2], rows, env)
