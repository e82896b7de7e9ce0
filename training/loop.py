"""One training loop for every model: single process or `torchrun --nproc_per_node N` (gloo),
linear warm-up/decay, dev-based early stopping, resumable checkpoints (safetensors + JSON).

With a minute cap (`--max-minutes`), the decay is refitted every FIT_EVERY steps to the steps that
the time left allows at the pace so far, so the run anneals to 0 by its cap whatever the host's
speed; `--epochs` is then an upper bound. A resumed run keeps the checkpoint's schedule (a changed
--epochs or --max-steps does not apply to it) and gets its whole minute cap again.

Batches are a deterministic function of (seed, epoch), so a resumed run continues with exactly
the batches it would have seen; under DDP rank r takes batches r, r + N, ...
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from tqdm import tqdm

from training.artifacts import ArtifactError, load_weights, read_json_object, read_tensors, replace_dir
from training.data import DataError
from training.cli import dropout_rate, nonnegative_float, nonnegative_int, positive_float, positive_int
from training.precision import add_precision_arg, autocast, resolve


@dataclass
class LoopConfig:
    out: str
    epochs: float = 1.0
    max_steps: int = 0            # 0 = epochs decide
    lr: float = 5e-5
    head_lr: float = 0.0          # learning rate of the parameters under `head_prefix`; 0 = `lr`
    head_prefix: str = ""         # e.g. "pool_cross.": a fresh head learns faster than the encoder
    weight_decay: float = 0.01
    warmup_frac: float = 0.06
    eval_every: int = 500         # steps; 0 = only at the end
    patience: int = 3             # evaluations without improvement before stopping
    save_every: int = 200         # steps between resumable checkpoints
    max_minutes: float = 0.0      # wall-clock cap; 0 = none
    threads: int = 2
    seed: int = 0
    resume: bool = True
    precision: str = "fp32"       # resolved: "fp32" or "bf16" (autocast; training.precision)
    freeze_word_embeddings: bool = False  # keep pretrained token embeddings as they are (a cheaper step)
    dropout: float | None = None  # every nn.Dropout's rate while training; None = the model's own


def dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _broadcast_int(value: int) -> int:
    """Rank 0's value on every rank (decisions taken from a clock must agree across replicas)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value])
    dist.broadcast(t, 0)
    return int(t.item())


def broadcast_flag(flag: bool) -> bool:
    return bool(_broadcast_int(int(flag)))


def _rng_states() -> list[list[int]]:
    """Every rank's torch RNG state, in rank order (each rank draws its own dropout masks)."""
    mine = torch.get_rng_state().tolist()
    if not dist.is_initialized():
        return [mine]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def _rng_states_ok(rngs) -> bool:
    """Checked on every rank before any is used, so that a damaged entry stops all ranks alike (one rank
    failing alone would leave the others waiting in a collective)."""
    size = torch.get_rng_state().numel()
    return isinstance(rngs, list) and bool(rngs) and all(
        isinstance(r, list) and len(r) == size and all(isinstance(b, int) and 0 <= b < 256 for b in r) for r in rngs)


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     sched, state: dict) -> None:
    """Called on every rank (each gives its RNG state); rank 0 writes."""
    rngs = _rng_states()
    if not is_main():
        return
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    seen, tensors = set(), {}
    for k, v in model.state_dict().items():  # tied weights (shared twin encoders) share storage
        v = v.detach().contiguous()
        tensors[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    save_file(tensors, str(tmp / "model.safetensors"))
    opt_state = opt.state_dict()
    tensors = {f"{pid}.{name}": (v if v.dim() else v.reshape(1)).contiguous()
               for pid, s in opt_state["state"].items() for name, v in s.items()}
    if tensors:
        save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({
        **state, "param_groups": opt_state["param_groups"], "scheduler": sched.state_dict(),
        "torch_rng_by_rank": rngs}) + "\n")
    replace_dir(tmp, path)  # the previous checkpoint stays whole until this one is in place


def _checkpoint_to_resume(ckpt: Path) -> Path | None:
    """The checkpoint a resumed run starts from: `ckpt`, or the previous one left at CKPT.old by a crash
    between replace_dir's two renames; None when there is none. A checkpoint directory with files but
    no state.json is refused rather than silently trained over (and its best model with it)."""
    if (ckpt / "state.json").is_file():
        return ckpt
    old = ckpt.with_name(ckpt.name + ".old")
    if not ckpt.exists() and (old / "state.json").is_file():
        return old
    if ckpt.is_dir() and any(ckpt.iterdir()):
        raise ArtifactError(f"{ckpt}: a checkpoint without state.json (incomplete or damaged); pass --no-resume "
                            f"to start over, or delete {ckpt}")
    return None


def run_settings(cfg: LoopConfig, steps_per_epoch: int, world: int) -> dict:
    """What fixes a run's trajectory, kept in its checkpoints: a rerun into the same folder with other
    values would resume someone else's run. The step count of an epoch stands for the data and the
    batch size; minute and step caps, threads and evaluation cadence may change between runs."""
    keys = ("lr", "head_lr", "head_prefix", "weight_decay", "warmup_frac", "seed", "precision",
            "freeze_word_embeddings", "dropout")
    return {**{k: getattr(cfg, k) for k in keys}, "steps_per_epoch": steps_per_epoch, "world_size": world}


def _check_settings(path: Path, saved, settings: dict) -> None:
    """`saved`: the checkpoint's settings (its state.json's), `settings` this run's."""
    if not isinstance(saved, dict):  # checkpoints from before settings were kept
        return
    differ = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
    if differ:
        what = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in differ.items())
        raise ArtifactError(f"{path}: this checkpoint is of a run with other settings ({what}); rerun with its "
                            f"settings to resume, pass --no-resume to start over, or use another --out")


_ADAM_STATE = {"step", "exp_avg", "exp_avg_sq"}


def _load_checkpoint(path: Path, model, opt, sched, settings: dict) -> dict:
    """Model, optimizer, schedule and RNG of a checkpoint, each checked first: a damaged one, or one of a
    run with other `settings`, is refused by name (pass --no-resume) instead of training on with wrong
    state."""
    def bad(what: str) -> ArtifactError:
        return ArtifactError(f"{path}: {what}; pass --no-resume to start over, or delete {path}")

    state = read_json_object(path / "state.json")
    _check_settings(path, state.get("settings"), settings)
    step, groups = state.get("step"), state.get("param_groups")
    rngs = state.pop("torch_rng_by_rank", None)
    if rngs is None and "torch_rng" in state:  # checkpoints before every rank's state was kept: rank 0's
        rngs = [state.pop("torch_rng")]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or not isinstance(groups, list) \
            or not isinstance(state.get("scheduler"), dict) or not _rng_states_ok(rngs):
        raise bad("state.json lacks a step, param_groups, scheduler or torch_rng_by_rank")
    load_weights(model, read_tensors(path / "model.safetensors"), path / "model.safetensors")
    params = [p for g in opt.param_groups for p in g["params"]]
    opt_state = {"state": {}, "param_groups": groups}
    if step > 0 and not (path / "optimizer.safetensors").is_file():
        raise bad(f"optimizer.safetensors is missing at step {step}")
    if (path / "optimizer.safetensors").is_file():
        for key, v in read_tensors(path / "optimizer.safetensors").items():
            pid, _, name = key.partition(".")
            if not pid.isdigit() or int(pid) >= len(params) or name not in _ADAM_STATE:
                raise bad(f"optimizer.safetensors holds {key!r}, not the state of one of {len(params)} parameters")
            opt_state["state"].setdefault(int(pid), {})[name] = v.reshape(()) if name == "step" else v
        for pid, s in opt_state["state"].items():
            if set(s) != _ADAM_STATE:
                raise bad(f"optimizer.safetensors lacks {sorted(_ADAM_STATE - set(s))} of parameter {pid}")
            if s["exp_avg"].shape != params[pid].shape or s["exp_avg_sq"].shape != params[pid].shape:
                raise bad(f"optimizer.safetensors: parameter {pid}'s moments are {tuple(s['exp_avg'].shape)}, "
                          f"the parameter {tuple(params[pid].shape)}")
    try:
        opt.load_state_dict(opt_state)
        sched.load_state_dict(state.pop("scheduler"))
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.set_rng_state(torch.tensor(rngs[rank if rank < len(rngs) else 0], dtype=torch.uint8))
    except (ValueError, RuntimeError, KeyError, TypeError) as e:  # e.g. a run with other parameter groups
        raise bad(f"does not fit this run ({e})") from None
    state.pop("param_groups")
    return state


def param_groups(model: torch.nn.Module, cfg: LoopConfig) -> list[dict]:
    """AdamW groups: matrices decay, vectors and scalars do not; with `head_lr` and `head_prefix` the
    parameters under the prefix get their own rate (the schedule scales every group's rate alike)."""
    split = bool(cfg.head_lr and cfg.head_prefix)
    groups = {key: [] for key in ((False, True), (False, False), (True, True), (True, False))}  # (head, decayed)
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[(split and name.startswith(cfg.head_prefix), p.dim() > 1)].append(p)
    groups = [{"params": params, "weight_decay": cfg.weight_decay if decayed else 0.0,
               **({"lr": cfg.head_lr} if head else {})} for (head, decayed), params in groups.items()]
    return [g for g in groups if g["params"]]


def freeze_word_embeddings(model: torch.nn.Module) -> int:
    """Stops gradients to every BERT token-embedding table in `model`; returns how many weights froze.

    The table (30,522 x 384) is most of a 2-layer student's weights, and its dense AdamW update took
    about a fifth of a TwinBERT step here; position embeddings and LayerNorms keep learning."""
    tables = [p for name, p in model.named_parameters() if name.endswith("word_embeddings.weight")]
    if not tables:
        raise ValueError("--freeze-word-embeddings: the model has no word_embeddings table")
    for p in tables:
        p.requires_grad_(False)
    return sum(p.numel() for p in tables)


def set_dropout(model: torch.nn.Module, p: float) -> int:
    """Sets the rate of every `nn.Dropout` in `model` (BERT's attention reads its module's rate too);
    returns how many there are. Inference is unaffected: dropout is off in eval mode."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for m in layers:
        m.p = p
    return len(layers)


def train_loop(model: torch.nn.Module, cfg: LoopConfig,
               make_batches: Callable[[int], Sequence],
               loss_fn: Callable[[torch.nn.Module, object], torch.Tensor],
               evaluate: Callable[[torch.nn.Module], float] | None,
               save_best: Callable[[torch.nn.Module], None], desc: str = "train") -> dict:
    """Train; `evaluate` returns a dev metric (higher is better) and `save_best` keeps the best model."""
    rank, world = dist_info()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads // world))
    if cfg.freeze_word_embeddings:
        freeze_word_embeddings(model)
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    steps_per_epoch = len(make_batches(0)) // world
    if steps_per_epoch == 0:
        raise DataError(f"{desc}: no training batches (fewer rows than one batch per process?)")
    total = math.ceil(steps_per_epoch * cfg.epochs)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    # fused: one kernel over all parameters instead of a loop of small ops; the same update
    # (same state_dict, so checkpoints resume either way), 1.25x faster teacher steps here
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, fused=True)
    out = Path(cfg.out)
    ckpt = out / "checkpoint"
    settings = run_settings(cfg, steps_per_epoch, world)
    state = {"step": 0, "best": -math.inf, "bad_evals": 0, "evals": [], "stopped_early": False,
             "schedule": linear_schedule(total, cfg.warmup_frac), "settings": settings}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(state["schedule"], s))
    resume_from = _checkpoint_to_resume(ckpt) if cfg.resume else None
    if resume_from is not None:
        state.update(_load_checkpoint(resume_from, model, opt, sched, settings))
        if is_main():
            print(f"{desc}: resuming at step {state['step']} from {resume_from}", flush=True)
    planned = total  # the epochs' (or --max-steps') steps: a minute-capped schedule is refitted within it
    total = state["schedule"]["total"]  # as planned; a minute cap may shorten it (fit_schedule)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "loop_config.json").write_text(json.dumps({**asdict(cfg), "world_size": world,
                                                          "total_steps": total}, indent=2) + "\n")
    start = time.monotonic()
    bar = tqdm(total=total, initial=state["step"], desc=desc, unit="step", disable=not is_main())
    losses: list[float] = []

    def run_eval() -> bool:
        """Evaluate on rank 0; returns whether to stop (patience exhausted)."""
        stop = False
        if is_main() and evaluate is not None:
            model.eval()
            with torch.no_grad():  # in fp32, as the students serve (the teacher scores in its own precision)
                metric = evaluate(model)
            model.train()
            if not math.isfinite(metric):  # e.g. a dev sample of one class: nothing would ever count as best
                raise DataError(f"{desc}: the dev metric at step {state['step']} is {metric} (a dev sample with "
                                 "one class, or a diverged model); no model saved")
            state["evals"].append({"step": state["step"], "metric": metric})
            if metric > state["best"]:
                state["best"], state["bad_evals"] = metric, 0
                save_best(model)
            else:
                state["bad_evals"] += 1
            bar.write(f"{desc}: step {state['step']} dev {metric:.4f} (best {state['best']:.4f})")
            stop = state["bad_evals"] >= cfg.patience
        elif is_main():
            save_best(model)
        return broadcast_flag(stop)

    model.train()
    stop = state["stopped_early"]  # a rerun of a run that stopped early stays stopped
    start_step = state["step"]
    while state["step"] < state["schedule"]["total"] and not stop:
        epoch, offset = divmod(state["step"], steps_per_epoch)
        batches = make_batches(epoch)
        for i in range(offset, steps_per_epoch):
            if state["step"] >= state["schedule"]["total"]:
                break
            # every epoch runs epoch 0's step count, so a step number maps to one (epoch, batch) on resume;
            # an epoch with fewer batches (grouped batches vary by a few) wraps round to its first ones
            with autocast(cfg.precision):
                loss = loss_fn(net, batches[(i * world + rank) % len(batches)]).float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            state["step"] += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
            if cfg.eval_every and state["step"] % cfg.eval_every == 0 and state["step"] < state["schedule"]["total"]:
                stop = run_eval()
                state["stopped_early"] = stop
            if (cfg.max_minutes and state["step"] >= state["schedule"]["warmup"]
                    and (state["step"] - start_step) % FIT_EVERY == 0):
                elapsed = time.monotonic() - start
                per_step = elapsed / (state["step"] - start_step)
                fit = min(planned, _broadcast_int(state["step"] + int((cfg.max_minutes * 60 - elapsed) / per_step)))
                # shortened when the steps run slower than planned, lengthened again (up to the plan) when they
                # run faster: a slow start (another job on the cores) must not cut the whole run short. A
                # margin of FIT_EVERY steps keeps the estimate's noise from refitting at every check.
                if fit < state["schedule"]["total"] or fit > state["schedule"]["total"] + FIT_EVERY:
                    state["schedule"] = fit_schedule(state["schedule"], state["step"], fit)
                    bar.total = state["schedule"]["total"]
            if cfg.save_every and state["step"] % cfg.save_every == 0:
                _save_checkpoint(ckpt, model, opt, sched, state)
            over_time = bool(cfg.max_minutes) and time.monotonic() - start > cfg.max_minutes * 60
            if broadcast_flag(over_time):
                bar.write(f"{desc}: stopping at the {cfg.max_minutes:g}-minute cap (step {state['step']})")
                stop = True
            if stop:
                break
    bar.close()
    if not state["stopped_early"]:
        run_eval()
    _save_checkpoint(ckpt, model, opt, sched, state)
    state["train_minutes"] = round((time.monotonic() - start) / 60, 2)
    state["final_loss"] = sum(losses[-50:]) / max(1, len(losses[-50:]))
    return state


FIT_EVERY = 50  # steps between refits of a minute-capped schedule to the time left


def linear_schedule(total: int, warmup_frac: float) -> dict:
    """Linear warm-up over `warmup_frac` of `total` steps, then linear decay to 0 at `total`."""
    warmup = max(1, int(warmup_frac * total))
    return {"total": total, "warmup": warmup, "anchor_step": warmup, "anchor": 1.0}


def lr_factor(schedule: dict, step: int) -> float:
    """The learning-rate multiplier at `step`: the warm-up ramp, then a straight line from
    (anchor_step, anchor) down to (total, 0)."""
    decay = schedule["anchor"] * max(0.0, schedule["total"] - step) / max(1, schedule["total"] - schedule["anchor_step"])
    return min((step + 1) / schedule["warmup"], decay)


def fit_schedule(schedule: dict, step: int, total: int) -> dict:
    """The schedule shortened or lengthened to end at `total`, refitted at `step` (past the warm-up) without a jump in
    the learning rate: the decay goes on from the current rate in a straight line to 0 at the new
    end. A minute-capped run thus anneals fully instead of stopping at its cap with the rate still high
    (on a slow host the teacher was cut a third of the way down its decay)."""
    if step < schedule["warmup"]:
        raise ValueError(f"a schedule is refitted past its warm-up ({schedule['warmup']} steps), not at step {step}")
    return {**schedule, "total": max(total, step + 1), "anchor_step": step, "anchor": lr_factor(schedule, step)}


def bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int, bucket: int = 50) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding): shuffle, sort within chunks of
    `bucket` batches, cut, then shuffle the batches. Deterministic in `seed`."""
    import random
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * bucket
    batches = []
    for s in range(0, len(order), chunk):
        part = sorted(order[s:s + chunk], key=lambda i: lengths[i])
        batches += [part[i:i + batch_size] for i in range(0, len(part) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


def add_loop_args(ap, *, epochs: float, lr: float, batch_size: int, eval_every: int) -> None:
    """The flags every training command shares (defaults per model)."""
    ap.add_argument("--data", help="Home Depot directory (default: $TWINBERT_DATA)")
    ap.add_argument("--epochs", type=positive_float, default=epochs)
    ap.add_argument("--max-steps", type=nonnegative_int, default=0, help="0 = epochs decide")
    ap.add_argument("--max-minutes", type=nonnegative_float, default=0.0, help="wall-clock cap; 0 = none")
    ap.add_argument("--batch-size", type=positive_int, default=batch_size)
    ap.add_argument("--lr", type=nonnegative_float, default=lr,
                    help="peak learning rate (0 freezes the model; distill trains its --head-lr group alone then)")
    ap.add_argument("--dev-pairs", type=positive_int, default=2000, help="dev pairs scored at each evaluation")
    ap.add_argument("--eval-every", type=nonnegative_int, default=eval_every, help="steps; 0 = only at the end")
    ap.add_argument("--patience", type=positive_int, default=3, help="evaluations without improvement before stopping")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--dropout", type=dropout_rate, default=None,
                    help="dropout rate of every dropout layer while training, in [0, 1) (default: the model's own)")
    ap.add_argument("--freeze-word-embeddings", action="store_true",
                    help="do not train the pretrained token-embedding table (faster steps)")
    add_precision_arg(ap)


def loop_config(args) -> LoopConfig:
    return LoopConfig(out=args.out, epochs=args.epochs, max_steps=args.max_steps, lr=args.lr,
                      eval_every=args.eval_every, patience=args.patience, max_minutes=args.max_minutes,
                      threads=args.threads, seed=args.seed, resume=not args.no_resume,
                      precision=resolve(args.precision),
                      freeze_word_embeddings=args.freeze_word_embeddings, dropout=args.dropout)


FINISH_GRACE_SECONDS = 0.2


def finish_distributed() -> None:
    """Tear the process group down before exit: gloo's threads abort the process otherwise.

    Gloo's worker threads drop a finished collective (and the tensors it holds) only after its waiter has
    woken, and dropping a tensor that Python has seen takes the GIL. The process group outlives
    destroy_process_group once DistributedDataParallel has used it (its threads keep running), so when the
    interpreter began finalising first, the worker thread waiting for the GIL was torn down inside a
    destructor and the process aborted: "terminate called without an active exception" (core dump:
    ~AsyncBarrierWork -> ~AsyncBroadcastWork -> decref_pyobject -> take_gil), in 7 of 89 runs of
    test_training's two-process toy with both cores busy. Sleeping releases the GIL so they finish
    first: 0 of 100 runs under the same load."""
    if dist.is_initialized():
        dist.barrier()
        time.sleep(FINISH_GRACE_SECONDS)
        dist.destroy_process_group()
