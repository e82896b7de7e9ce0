"""Ad-hoc A/B of the BiLSTM inference form (2026-12-07): before (its full [L, L] products, training/bilstm.py
at 5c2f89f) and after (the query's rows only), on one checkpoint and the same 20 batches of 64 dev pairs,
interleaved, tokenising included. From the repo root:

    git show 5c2f89f:training/bilstm.py > reports/runs/epyc-2026-12-07-full/old_bilstm.py
    PYTHONPATH=. python reports/runs/epyc-2026-12-07-full/ab_query_rows.py CHECKPOINT OUT.json
"""
import json, os, random, statistics, sys
import numpy as np, torch
sys.path.insert(0, os.path.dirname(__file__))
import old_bilstm
from training.bilstm import BiLSTMStudent, pair_segments, query_span
from training.data import load_pairs, split_pairs
from benchmarks.bench_bilstm import interleaved, summarize

ckpt, out = sys.argv[1], sys.argv[2]
new_student = BiLSTMStudent.load(ckpt)
old_student = old_bilstm.BiLSTMStudent.load(ckpt)
new, old = new_student.inference(), old_student.inference()
tok = new_student.tokenizer()
splits = split_pairs(load_pairs(None))
rng = random.Random(0)
dev = rng.sample(splits["dev"], 64 * 20)
pairs = [([p.query for p in dev[i:i + 64]], [p.keyword for p in dev[i:i + 64]]) for i in range(0, len(dev), 64)]
spans = []
for q, k in pairs:
    ids, mask = map(torch.from_numpy, tok(q, k))
    spans.append((query_span(pair_segments(ids, mask)[0]), ids.shape[1]))
diff = max(float(np.abs(old.score(q, k, 64) - new.score(q, k, 64)).max()) for q, k in pairs)
torch.set_num_threads(2)
res = {"checkpoint": ckpt, "max_abs_logit_diff_old_new": diff,
       "query_rows_over_length": [round(n / L, 3) for n, L in spans],
       "median_query_rows": statistics.median(n for n, _ in spans), "median_length": statistics.median(L for _, L in spans),
       "per_pair": summarize(interleaved({"full_products": lambda q, k: old.score(q, k, 64),
                                          "query_rows": lambda q, k: new.score(q, k, 64)}, pairs, 20, 64),
                             "full_products", "ms_per_pair")}
open(out, "w").write(json.dumps(res, indent=2) + "\n")
print(json.dumps({k: v for k, v in res.items() if k != "query_rows_over_length"}, indent=2))
