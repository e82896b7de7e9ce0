"""Ad hoc (2026-12-07): the BiLSTM inference form's time a pair by width, before training any (random weights
at the checkpoint's 40 pieces; the time does not depend on the weights). Batches of 64 dev pairs, 2 threads,
tokenising included, interleaved as bench_bilstm times them; each width against the first.

    PYTHONPATH=. python reports/runs/epyc-2026-12-07-bilstm-hidden/width_speed.py CHECKPOINT 64x128,32x64,...
"""
import random, statistics, sys, torch
from benchmarks.bench_bilstm import interleaved
from training.bilstm import BiLSTMStudent, BiLSTMConfig
from training.data import load_pairs, split_pairs
torch.manual_seed(0); torch.set_num_threads(2)
base = BiLSTMStudent.load(sys.argv[1])
forms = {}
for spec in sys.argv[2].split(","):
    h, p = map(int, spec.split("x"))
    s = BiLSTMStudent(BiLSTMConfig(hidden=h, proj_dim=p, max_length=40, interaction=True, packed=True), base.embed.weight.detach()).eval()
    forms[f"h{h} p{p}"] = s.inference()
tok = base.tokenizer()
dev = random.Random(0).sample(split_pairs(load_pairs(None))["dev"], 64 * 10)
batches = [([p.query for p in dev[i:i + 64]], [p.keyword for p in dev[i:i + 64]]) for i in range(0, len(dev), 64)]
def run(f):
    def g(q, k):
        ids, mask = tok(q, k)
        with torch.inference_mode():
            f(torch.from_numpy(ids), torch.from_numpy(mask))
    return g
for rep in range(2):
    s = interleaved({n: run(f) for n, f in forms.items()}, batches, 20, 64)
    b = statistics.median(next(iter(s.values())))
    print(" | ".join(f"{n}: {statistics.median(v):.4f} ms ({b / statistics.median(v):.2f}x)" for n, v in s.items()), flush=True)
