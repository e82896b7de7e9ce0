"""Ad-hoc: a BiLSTM checkpoint trained at 48 pieces scored with its tokenizer cut to 32, 36, 40 and 48 (dev and
test ROC-AUC), and timed at each cap in interleaved blocks of 64 dev pairs, 2 threads.

    python reports/runs/epyc-2026-12-07-bilstm-max-length/truncate_at_inference.py ARTIFACTS/bilstm
"""
import sys
import random, time, statistics as st, numpy as np, torch
from training.data import load_pairs, split_pairs
from training.tokenize import PairTokenizer
from training.pretrained import minilm_dir
from training.bilstm import BiLSTMStudent
from sklearn.metrics import roc_auc_score as roc_auc
torch.set_num_threads(2)
m = BiLSTMStudent.load(sys.argv[1]); sc = m.inference()
s = split_pairs(load_pairs(None))
caps = (32, 36, 40, 48)
toks = {c: PairTokenizer(minilm_dir()/"tokenizer.json", c) for c in caps}
for split in ("dev", "test"):
    ps = s[split]; y = np.array([p.relevance >= 2.5 for p in ps])
    for c in caps:
        sc._tokenizer = toks[c]
        print(split, c, round(roc_auc(y, sc.score([p.query for p in ps], [p.keyword for p in ps], 64)), 4), flush=True)
rng = random.Random(0); dev = rng.sample(s["dev"], 640)
batches = [([p.query for p in dev[i:i+64]], [p.keyword for p in dev[i:i+64]]) for i in range(0, 640, 64)]
t = {c: [] for c in caps}
for r in range(20):
    for q, k in batches:
        for c in (caps if r % 2 == 0 else caps[::-1]):
            sc._tokenizer = toks[c]; t0 = time.perf_counter(); sc.score(q, k, 64); t[c].append((time.perf_counter() - t0) * 1000 / 64)
for c in caps: print("cap", c, "ms/pair median", round(st.median(t[c]), 4), "ratio vs 48", round(st.median(t[48]) / st.median(t[c]), 3))
