"""Ad-hoc: uniform weight average of TwinBERT checkpoints (same architecture); config + split of the first."""
import shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
out, *ins = sys.argv[1:]
states = [load_file(str(Path(d) / "model.safetensors")) for d in ins]
avg = {k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype).contiguous() if states[0][k].is_floating_point() else states[0][k] for k in states[0]}
Path(out).mkdir(parents=True, exist_ok=True)
save_file(avg, str(Path(out) / "model.safetensors"))
for f in ("config.json", "split.json"):
    shutil.copy(Path(ins[0]) / f, Path(out) / f)
print(out, len(avg), "tensors from", ins)
