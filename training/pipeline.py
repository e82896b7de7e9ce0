"""The whole offline pipeline: quick student -> teacher -> teacher-scored distillation set ->
TwinBERT and BiLSTM students (each also without augmentation, for the ablation) -> evaluation.

TwinBERT is distilled in two passes over the distillation set (`twin_pass1`, then `twin` from it
with a fresh learning-rate schedule and another batch order): on 500 dev queries the second pass
lifted cos nDCG@10 from 0.250 to 0.267, recall@100 from 0.707 to 0.720 and res ROC-AUC from
0.696 to 0.703. The second pass reads titles to 48 tokens, the first to 32 (training.distill,
--keyword-max-len). Its no-augmentation ablation gets one pass.

    python -m training.pipeline --profile full     # make train: 78.6 minutes from scratch on 2 cores (fp32)
    python -m training.pipeline --profile quick    # minutes: smoke-run of every step
    python -m training.pipeline --seed 1 --artifacts DIR --reports DIR  # the recipe again, every step's seed + 1

Every step runs in the precision `--precision` resolves to (training.precision: bf16 autocast where the
CPU has AMX-BF16 or AVX512-BF16, else fp32). In bf16 the full profile spends the faster steps on more
training: FULL_BF16 on an AMX host (2.2-3x faster steps: a longer teacher, a distillation set three times
as large), FULL_AVX512_BF16 elsewhere (1.5-2x: the fp32 profile's distillation set, FP32_SET, longer
TwinBERT passes); the deadline below trims the training steps where the host is slower, and FULL_BF16 falls back to
the smaller distillation set when its teacher trained much slower than in its timing run.

The full profile runs against a deadline (`--budget-minutes`, 87 by default): each training step's
minute cap is lowered to its share of the time left once the uncapped steps still to run are set
aside at the host's observed speed, so a slow hour shortens the training steps instead of pushing
the whole past 90 minutes. A step that finishes early leaves its time to the rest. No training step is
cut below half its nominal minutes: on a host that slow the run ends late rather than ship a
model trained for one minute.

Each step is skipped when its output is already complete (delete it, or --force, to redo);
an interrupted training step resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from training.precision import add_precision_arg, cpu_has_amx_bf16
from training.cli import nonnegative_float, nonnegative_int
from training.data import DISTILL_SOURCES, DataError, find_train_csv

# The 105k-pair distillation set (per train query one random, one BM25 and one quick-student title; 30% of the
# labelled pairs perturbed): FULL_BF16's on a host whose teacher ran slow, and FP32_SET's rows but the synthetic.
SMALL_SET: list[str] = []
# Synthetic queries of the mixed style (training.augment.mixed_title_query) from 12,000 titles, in the fp32
# profile's first TwinBERT pass only; the second pass and the BiLSTM train on the rest, as before. From the
# same teacher and quick student (2026-12-07, fp32, docs/experiments.md), the first pass over the set with
# them, then the second without, against the shipped passes at two second-pass seeds: cos nDCG@10 +0.0051
# [+0.0004, +0.0100] and +0.0026 [-0.0020, +0.0073] on test, +0.0074 and +0.0069 on dev, recall@100
# +0.006-0.010, res level; in the second pass instead they lowered test nDCG@10 (-0.002, -0.004). The 36k
# rows cost about 2.5 minutes of scoring and the first pass 3 more (2,201 steps against 1,637).
FP32_SET = SMALL_SET + ["--synthetic", "12000", "--synthetic-style", "mixed"]
WITHOUT_SYNTHETIC = ["--sources", ",".join(s for s in DISTILL_SOURCES if s != "synthetic")]
# The TwinBERT passes' peak learning rate in the full profiles: twice training.distill's default (BERT's 5e-5,
# which the quick profile keeps). Both passes at 1e-4 against the shipped 5e-5, from the same quick student,
# set and seeds (AVX512-BF16 host, 2026-12-07, docs/experiments.md), on the whole dev split: cos nDCG@10
# +0.0096 [+0.0042, +0.0153], recall@100 +0.0159 [+0.0077, +0.0248], res ROC-AUC 0.7226 -> 0.7249; the second
# pass alone at 1e-4 gained in the same direction at two seeds, and at 2e-4 less. Same steps, same minutes.
# The ablation's pass takes it too, so that it differs from the first pass in its data alone (its 563 steps
# there: test res ROC-AUC 0.625 -> 0.687, the pipeline run in the same docs section). FULL_BF16's passes (the
# 296k-pair set, twice the steps) take it unmeasured.
STUDENT_LR = ["--lr", "1e-4"]


def with_minutes(args: list[str], minutes: float) -> list[str]:
    """A step's arguments with its --max-minutes set to `minutes`."""
    i = args.index("--max-minutes") + 1
    return args[:i] + [f"{minutes:g}"] + args[i + 1:]


PROFILES = {
    "quick": dict(student_steps=100, teacher=["--max-steps", "150", "--eval-every", "75", "--dev-pairs", "300"],
                  distill_data=["--max-queries", "300"],
                  twin=["--max-steps", "100", "--eval-every", "50", "--dev-pairs", "300"],
                  twin_pass2=["--max-steps", "50", "--eval-every", "0", "--dev-pairs", "300", "--seed", "1"],
                  bilstm=["--max-steps", "200", "--eval-every", "100", "--dev-pairs", "300"],
                  ablation_twin=["--max-steps", "60", "--eval-every", "0", "--dev-pairs", "300"],
                  ablation_bilstm=["--max-steps", "120", "--eval-every", "0", "--dev-pairs", "300"],
                  eval_queries=200),
    "full": dict(student_steps=400, teacher=["--epochs", "1", "--max-minutes", "26", "--eval-every", "600"],
                 distill_data=FP32_SET,
                 twin=["--epochs", "1", "--max-minutes", "14", "--eval-every", "500"] + STUDENT_LR,
                 twin_pass2=["--epochs", "1", "--max-minutes", "14", "--eval-every", "500", "--seed", "1"]
                 + WITHOUT_SYNTHETIC + STUDENT_LR,
                 # BiLSTM dev ROC-AUC, plain: 0.680 after 2 epochs, best 0.700-0.710 within 8 (two runs);
                 # 96 units or label weight 1.0 did not beat it (0.707, 0.704). With the interaction
                 # layer: 0.740-0.741 after 1 epoch, 0.754-0.761 within 8 (two runs, 6.1-6.5 min)
                 bilstm=["--epochs", "8", "--max-minutes", "12", "--eval-every", "1600"] + WITHOUT_SYNTHETIC,
                 ablation_twin=["--epochs", "1", "--max-minutes", "8", "--eval-every", "500"] + STUDENT_LR,
                 ablation_bilstm=["--epochs", "8", "--max-minutes", "8", "--eval-every", "900"],
                 eval_queries=0, budget_minutes=87.0),
}
# The full profile on a host with AMX-BF16 tiles (training.precision): there the teacher, the distillation
# set and the TwinBERT steps run 2.2-3x faster than in fp32, and the profile spends that on a longer-trained
# teacher, a distillation set three times as large with synthetic queries, and more TwinBERT steps, in about
# the same minutes. On the dev queries (one run each, same teacher): the larger set and twice the steps took
# TwinBERT res ROC-AUC from 0.714 to 0.721, cos nDCG@10 from 0.301 to 0.306 and recall@100 from 0.739 to
# 0.759. The teacher at 3 epochs reached dev-sample ROC-AUC 0.773 against 0.772 at one (full dev 0.762),
# within noise but not worse, and the time is there. The BiLSTM gains nothing from bf16 (its LSTM is not
# matmul-bound) and runs in fp32.
# The second pass stays plain: with `--proj-dim 384 --head-lr 1e-3 --contrastive-weight 0.2` (a make train
# run, 2026-12-02) res ROC-AUC rose 0.715 -> 0.725 on test (0.717 -> 0.727 dev) but cos nDCG@10 fell
# 0.302 -> 0.294, below BM25, and recall@100 0.765 -> 0.752 (dev 0.309 -> 0.305, 0.765 -> 0.756).
FULL_BF16 = dict(PROFILES["full"],
                 teacher=["--epochs", "3", "--max-minutes", "20", "--eval-every", "600"],
                 distill_data=["--random", "2", "--bm25", "4", "--student-negatives", "4", "--perturb", "1.0",
                               "--synthetic", "40000"],
                 twin=["--epochs", "1", "--max-minutes", "14", "--eval-every", "1000"] + STUDENT_LR,
                 twin_pass2=["--epochs", "1", "--max-minutes", "14", "--eval-every", "1000", "--seed", "1"]
                 + STUDENT_LR,
                 bilstm=["--epochs", "8", "--max-minutes", "10", "--eval-every", "1600"],
                 ablation_twin=["--epochs", "1", "--max-minutes", "6", "--eval-every", "500"] + STUDENT_LR,
                 ablation_bilstm=["--epochs", "8", "--max-minutes", "6", "--eval-every", "900"])
# The full profile in bf16 on a host without AMX (AVX512-BF16 dot products: steps 1.5-2x faster than fp32,
# the distillation set's scoring only 1.7x). FULL_BF16 there (AMD EPYC, 2026-12-02: 83.6 minutes) spent 18.1
# minutes on its 296k-pair set, 2.2x its AMX time, and the deadline cut each TwinBERT pass to 7.6 minutes;
# the fp32 profile's 105k-pair set took 10.6, and two 9-minute passes over it matched that run's student
# within noise (test cos nDCG@10 0.284 against 0.279, res ROC-AUC 0.707 against 0.701; docs/experiments.md).
# So this profile keeps the fp32 set and gives the minutes it saves to the TwinBERT passes; the teacher
# keeps FULL_BF16's epochs under a cap its time allows. The fp32 set's 12,000 titles of mixed synthetic
# queries (FP32_SET, 36k rows) came with it on 2026-12-07, in the first pass only as in fp32: the last
# from-scratch run here (2026-12-05) took 66.5 minutes, its passes ending on their epoch at 7.4 and 7.1, so
# the 36k rows' scoring and steps fit the budget.
# Its other steps are the fp32 profile's at other minute caps, so a change to their arguments reaches both.
FULL_AVX512_BF16 = dict(PROFILES["full"],
                        teacher=["--epochs", "3", "--max-minutes", "17", "--eval-every", "600"],
                        **{step: with_minutes(PROFILES["full"][step], minutes) for step, minutes in (
                            ("twin", 11), ("twin_pass2", 11), ("bilstm", 7), ("ablation_twin", 2.5),
                            ("ablation_bilstm", 3.5))})

# Title tokens the second TwinBERT pass reads (the first, and the quick student it starts from, read 32). 6% of
# titles are longer than 32 tokens; on the whole dev split (same first pass, seed and set, 2026-12-06) the second
# pass at 48 lifted cos recall@100 by +0.0075 [+0.0023, +0.0138] over 32, nDCG@10 by +0.0013 (within noise),
# res ROC-AUC level, in a pass 7% longer. The export and the keyword store follow the checkpoint's length.
PASS2_KEYWORD_MAX_LEN = 48

# Minutes each step took in a from-scratch full run (78.6 in all; 2.7 of them the quick student,
# whose 400 steps are not capped), with the two uncapped steps at a slow hour's (distillation set
# 7.5 -> 9, evaluation 10.2 -> 14). The evaluation slows down more than the quick student on a slow
# host: 4.1x and 4.7x the quick student's minutes in two from-scratch runs on 2026-11-22 (19.4 / 4.7
# and 24.4 / 5.2), and at 12 the second run, set aside at 12 x 1.72, ended at 90.8 minutes. A
# deadline shares the time left among the steps still to run in these proportions, once the
# uncapped steps' share is set aside. Since 2026-12-06 the evaluation does about half that work (the teacher
# re-orders the cos top 30, not 100, and corpora are embedded in length batches): 9.3 minutes against the
# 19.4 of the same rows before, on one fp32 host. Its 14 stays, so a slow hour ends with minutes to spare
# rather than at 90 (the replays of tests/test_pipeline_deadline.py use the evaluations as they then ran).
# The distillation set and the first TwinBERT pass are raised for FP32_SET's synthetic queries (2026-12-07): 9 -> 11.5
# and 11.7 -> 14 (its cap), as the pass-level runs took 2.4 more minutes to score them and 12.7 minutes for the
# first pass's 2,201 steps against 9.5 for 1,637. The from-scratch run with them (2026-12-07, 81.3 minutes,
# reports/runs/fp32-2026-12-07-full/train.json) took 10.6 for the set and 13.9 for the first pass (2,162 steps
# under a 13.8-minute cap), the rest within 0.7 of these but the evaluation (8.75), so they stay as they are.
# Their sum is past the 87-minute budget, so the deadline gave the teacher, the first capped step, 97% of its
# nominal minutes: 17.0 against its 18.4 in the run before, 2,016 steps against 2,212.
NOMINAL_MINUTES = {"quick contrastive student": 3.0, "teacher": 17.5, "distillation set": 11.5,
                   "TwinBERT student": 14.0, "TwinBERT student, second pass": 11.0,
                   "TwinBERT without augmentation": 6.2, "BiLSTM student": 7.6,
                   "BiLSTM without augmentation": 4.6, "evaluation": 14.0}
# The same in bf16 (FULL_BF16), from the from-scratch run of 2026-12-01 (85.3 minutes): the quick
# student's 400 steps took 1.75 minutes, the 296k-pair distillation set 8.1, the evaluation 11.3
# (set aside at 12: the estimate of 8 before that run was short); the rest are the steps' caps.
NOMINAL_MINUTES_BF16 = {"quick contrastive student": 1.8, "teacher": 20.0, "distillation set": 9.0,
                        "TwinBERT student": 14.0, "TwinBERT student, second pass": 14.0,
                        "TwinBERT without augmentation": 3.6, "BiLSTM student": 10.0,
                        "BiLSTM without augmentation": 5.0, "evaluation": 12.0}
# The same for FULL_AVX512_BF16: the uncapped steps as they ran on a slow hour of the AMD EPYC host (quick
# student 2.45, the 105k-pair set 10.6, the evaluation 20.7), the rest the steps' caps. The from-scratch run
# with this profile there (2026-12-02) took 76.65 minutes: 2.6, 7.0 and 16.5 for those three. The set is
# raised 11 -> 12.5 for FP32_SET's synthetic queries (2026-12-07): they took 2.4 more minutes to score in fp32,
# and this host scores 1.7x faster in bf16. The from-scratch run with them there (2026-12-07, 69.26 minutes,
# reports/runs/epyc-2026-12-07-full/train.json): 2.57, 8.6 and 9.16 for the three; the first pass ran its
# whole epoch (2,194 steps) in 10.5 of its 11 minutes.
NOMINAL_MINUTES_AVX512_BF16 = {"quick contrastive student": 2.5, "teacher": 17.0, "distillation set": 12.5,
                               "TwinBERT student": 11.0, "TwinBERT student, second pass": 11.0,
                               "TwinBERT without augmentation": 2.5, "BiLSTM student": 7.0,
                               "BiLSTM without augmentation": 3.5, "evaluation": 21.0}
# FULL_BF16's teacher trained at 220 steps a minute in its timing run (3,981 in 18.12 minutes). AMX hosts are
# not all that fast: in a from-scratch run on one at a slow hour (2026-12-03) the teacher ran 130 a minute,
# the 296k-pair distillation set took 16.8 minutes against 8.1, the deadline cut each TwinBERT pass to
# 8.5 minutes (1,101 and 1,012 steps against 3,368 and 3,535) and cos nDCG@10 fell to 0.277, below BM25's
# 0.297 (reports/runs/amx-2026-12-03-slow-hour/). On a teacher that many times slower than this, the run
# takes the 105k-pair set (SMALL_SET) instead and gives the TwinBERT passes the minutes it saves, as
# FULL_AVX512_BF16 does on the EPYC host (there: teacher at 134-150 steps a minute; the big set with two
# 7.6-minute passes gave cos nDCG@10 0.279, the small set with 11-minute passes 0.293).
TEACHER_STEPS_PER_MINUTE_BF16 = 220.0
SLOW_TEACHER_RATIO = 1.3
# the 105k-pair set's minutes where FULL_BF16 takes 9 for its 296k: 0.39 of them, as on the EPYC host
# (7.0 against 18.1 minutes)
SMALL_SET_NOMINAL_BF16 = 3.5


def teacher_slowness(teacher_dir: Path) -> float | None:
    """How many times slower than FULL_BF16's timing run the teacher trained (steps a minute), from its
    train_summary.json; None when it has none or the fields are missing."""
    try:
        s = json.loads((teacher_dir / "train_summary.json").read_text())
        rate = float(s["step"]) / float(s["train_minutes"])
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    return TEACHER_STEPS_PER_MINUTE_BF16 / rate if rate > 0 else None


def distill_set_args(variant: str, p: dict, teacher_dir: Path) -> tuple[list[str], str]:
    """The distillation set's arguments and which set they make: FULL_BF16's large set, unless its teacher
    ran SLOW_TEACHER_RATIO or more times slower than in the timing run (then SMALL_SET)."""
    slowness = teacher_slowness(teacher_dir) if variant == "FULL_BF16" else None
    if slowness is not None and slowness >= SLOW_TEACHER_RATIO:
        return list(SMALL_SET), f"105k-pair set (teacher {slowness:.2f}x slower)"
    return list(p["distill_data"]), "profile's"


# steps that run to completion whatever the deadline: their time can only be predicted
UNCAPPED = ("quick contrastive student", "distillation set", "evaluation")
MIN_STEP_MINUTES = 1.0  # a training step gets at least this, even past the deadline
# ... and at least this fraction of its nominal minutes: a model cut shorter is not worth shipping
# (the teacher reached dev ROC-AUC 0.639 in a 1-minute cap, 0.749 at 600 steps, 0.764 at 1,200), so on
# a host this slow the run ends past its deadline rather than below these floors
MIN_STEP_FRACTION = 0.5


class Deadline:
    """Minute caps for the training steps so that the whole pipeline ends by `minutes` from now.

    The uncapped steps still to run are set aside at their nominal minutes times the host's slowness:
    the largest ratio of observed to nominal minutes among the uncapped steps run so far (`done`),
    1 before any (a full run on a host 1.7-1.9x slower than the timing run took 95.8 minutes when they
    were not). `cap(step, own_cap)`: the step's share of the rest of the time left, in proportion to
    NOMINAL_MINUTES over it and the capped steps after it, never above its own cap nor below
    its floor (`floor`: MIN_STEP_FRACTION of its nominal minutes, at least MIN_STEP_MINUTES)."""

    def __init__(self, minutes: float, nominal: dict[str, float] = NOMINAL_MINUTES, clock=time.monotonic):
        self.clock, self.nominal = clock, nominal
        self.end = clock() + minutes * 60
        self.slowness: list[float] = []

    def done(self, step: str, minutes: float) -> None:
        """Record how long a step that ran took (the uncapped ones measure the host's speed)."""
        if step in UNCAPPED and self.nominal.get(step):
            self.slowness.append(minutes / self.nominal[step])

    def factor(self) -> float:
        return max(self.slowness, default=1.0)

    def floor(self, step: str) -> float:
        return round(max(MIN_STEP_MINUTES, MIN_STEP_FRACTION * self.nominal[step]), 2)

    def cap(self, step: str, own_cap: float) -> float:
        names = list(self.nominal)
        later = names[names.index(step):]
        reserve = sum(self.nominal[n] for n in later if n in UNCAPPED) * self.factor()
        rest = sum(self.nominal[n] for n in later if n not in UNCAPPED)
        share = ((self.end - self.clock()) / 60 - reserve) * self.nominal[step] / rest
        return round(min(own_cap, max(self.floor(step), share)), 2)


def with_seed(args: list[str], seed: int) -> list[str]:
    """A step's arguments with its seed moved by `seed`: its --seed value plus `seed`, or --seed `seed` where it
    gives none (every step's default is 0). Seed 0 leaves them as they are."""
    if not seed:
        return args
    if "--seed" not in args:
        return args + ["--seed", str(seed)]
    i = args.index("--seed") + 1
    return args[:i] + [str(int(args[i]) + seed)] + args[i + 1:]


def with_cap(args: list[str], deadline: Deadline | None, step: str) -> list[str]:
    """A step's arguments with its --max-minutes lowered to the deadline's cap (no deadline, or no
    cap in the arguments: unchanged)."""
    if deadline is None or "--max-minutes" not in args:
        return args
    i = args.index("--max-minutes") + 1
    cap = deadline.cap(step, float(args[i]))
    if cap < float(args[i]):
        print(f"   {step}: {cap:g}-minute cap to keep the pipeline's deadline (own cap {args[i]})", flush=True)
        if cap <= deadline.floor(step):
            print(f"   {step}: that is its floor ({MIN_STEP_FRACTION:g} of its nominal "
                  f"{deadline.nominal[step]:g} minutes); the host ran {deadline.factor():.1f}x the nominal "
                  "minutes so far, and the run will end past its deadline rather than cut the step further",
                  flush=True)
    return with_minutes(args, cap)


def _done(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "train_summary.json").is_file()


def settings(profile: str, precision: str, amx: bool | None = None) -> tuple[str, dict, dict[str, float]]:
    """The name of the profile's variant, its step arguments and the nominal minutes its deadline shares
    by, for a precision and a host with or without AMX-BF16 (`amx`; default: this CPU's flags)."""
    if profile == "full" and precision == "bf16":
        if amx is None:
            amx = cpu_has_amx_bf16()
        if amx:
            return "FULL_BF16", FULL_BF16, NOMINAL_MINUTES_BF16
        return "FULL_AVX512_BF16", FULL_AVX512_BF16, NOMINAL_MINUTES_AVX512_BF16
    return profile, PROFILES[profile], NOMINAL_MINUTES


def run(profile: str, artifacts: Path, reports: Path, data: str | None, force: bool,
        budget_minutes: float | None = None, precision: str | None = None, seed: int = 0) -> None:
    from training import bilstm, distill, distill_data, evaluate, teacher
    from training.precision import resolve
    from training.train_twin import TrainConfig, train
    find_train_csv(data)  # no data: say so now, not after the steps before the first one that reads it
    precision = resolve(precision)
    variant, p, nominal = settings(profile, precision)
    budget = p.get("budget_minutes") if budget_minutes is None else budget_minutes
    deadline = Deadline(budget, nominal) if budget else None
    print(f"pipeline ({profile}, {variant}): {precision} (training.precision), budget "
          f"{f'{budget:g} minutes' if budget else 'none'}{f', seed {seed}' if seed else ''}", flush=True)

    def capped(name, args):  # every training step's arguments end in its profile's, through here
        return with_seed(with_cap(args, deadline, name), seed)

    data_args = ["--data", data] if data else []
    common = data_args + ["--precision", precision]
    a = artifacts
    timings, skipped = {}, []

    def step(name, done, fn):
        t = time.perf_counter()
        if done and not force:
            print(f"\n== {name}: already built, skipping", flush=True)
            skipped.append(name)
        else:
            print(f"\n== {name}", flush=True)
            fn()
            if deadline is not None:
                deadline.done(name, (time.perf_counter() - t) / 60)
        timings[name] = round((time.perf_counter() - t) / 60, 2)

    step("quick contrastive student", (a / "model" / "model.safetensors").is_file(),
         lambda: train(TrainConfig(data=data, out=str(a / "model"), max_steps=p["student_steps"], minutes=15,
                                   precision=precision, seed=seed)))
    step("teacher", _done(a / "teacher"), lambda: teacher.main(common + ["--out", str(a / "teacher")]
                                                            + capped("teacher", p["teacher"])))
    set_args, which_set = distill_set_args(variant, p, a / "teacher")
    if set_args != p["distill_data"]:
        print(f"\n   distillation set: the {which_set}: the large set would take the TwinBERT passes' "
              "minutes on this host", flush=True)
        if deadline is not None:
            deadline.nominal = dict(deadline.nominal, **{"distillation set": SMALL_SET_NOMINAL_BF16})
    step("distillation set", (a / "distill.tsv").is_file(), lambda: distill_data.main(
        common + ["--teacher", str(a / "teacher"), "--student", str(a / "model"), "--out", str(a / "distill.tsv")]
        + with_seed(set_args, seed)))
    base_twin = common + ["--distill", str(a / "distill.tsv"), "--init", str(a / "model")]
    step("TwinBERT student", _done(a / "twin_pass1") or _done(a / "twin"),
         lambda: distill.main(base_twin + ["--out", str(a / "twin_pass1")] + capped("TwinBERT student", p["twin"])))
    step("TwinBERT student, second pass", _done(a / "twin"), lambda: distill.main(
        common + ["--distill", str(a / "distill.tsv"), "--init", str(a / "twin_pass1"), "--out", str(a / "twin"),
                  "--keyword-max-len", str(PASS2_KEYWORD_MAX_LEN)]
        + capped("TwinBERT student, second pass", p["twin_pass2"])))
    step("TwinBERT without augmentation", _done(a / "twin_noaug"), lambda: distill.main(
        base_twin + ["--sources", "labelled", "--out", str(a / "twin_noaug")]
        + capped("TwinBERT without augmentation", p["ablation_twin"])))
    # fp32 whatever the host: the BiLSTM is not matmul-bound (400 steps: 0.27 min fp32, 0.26 bf16)
    base_lstm = data_args + ["--precision", "fp32", "--distill", str(a / "distill.tsv"), "--teacher", str(a / "teacher")]
    step("BiLSTM student", _done(a / "bilstm"), lambda: bilstm.main(
        base_lstm + ["--out", str(a / "bilstm")] + capped("BiLSTM student", p["bilstm"])))
    step("BiLSTM without augmentation", _done(a / "bilstm_noaug"), lambda: bilstm.main(
        base_lstm + ["--sources", "labelled", "--out", str(a / "bilstm_noaug")]
        + capped("BiLSTM without augmentation", p["ablation_bilstm"])))
    suffix = "" if profile == "full" else f"_{profile}"
    step("evaluation", False, lambda: evaluate.main(
        common + ["--out", str(reports / f"eval{suffix}"), "--max-queries", str(p["eval_queries"]),
                  "--cache-dir", str(a / "cache"),
                  "--model", "BM25=bm25", "--model", "MiniLM-L6 zero-shot=minilm",
                  "--model", f"teacher (cross-encoder)=teacher:{a / 'teacher'}",
                  "--model", f"TwinBERT=twin:{a / 'twin'}",
                  "--model", f"TwinBERT, no augmentation=twin:{a / 'twin_noaug'}",
                  "--model", f"BiLSTM=bilstm:{a / 'bilstm'}",
                  "--model", f"BiLSTM, LSTM in bf16=bilstm-bf16:{a / 'bilstm'}",
                  "--model", f"BiLSTM, no augmentation=bilstm:{a / 'bilstm_noaug'}",
                  "--model", f"teacher re-ranks TwinBERT cos top-30=rerank:teacher:{a / 'teacher'}@{a / 'twin'}@30",
                  "--model", f"BiLSTM re-ranks TwinBERT cos top-100=rerank:bilstm:{a / 'bilstm'}@{a / 'twin'}",
                  "--model", f"BiLSTM re-ranks TwinBERT cos top-30 (retrieve_rerank, DEPTH 30)="
                             f"rerank:bilstm:{a / 'bilstm'}@{a / 'twin'}@30"]))
    if "distillation set" in skipped:
        which_set = "built by an earlier run"
    summary = {"profile": profile, "variant": variant, "precision": precision, "seed": seed, "distill_set": which_set,
               "minutes": timings,
               "total_minutes": round(sum(timings.values()), 2), "budget_minutes": budget or None,
               # built by an earlier run (their minutes above are 0; each model's own below)
               "skipped": skipped}
    for name in ("teacher", "twin_pass1", "twin", "twin_noaug", "bilstm", "bilstm_noaug"):
        f = a / name / "train_summary.json"
        if f.is_file():
            s = json.loads(f.read_text())
            summary[name] = {k: s.get(k) for k in ("step", "best", "train_minutes", "stopped_early", "pairs", "sources")}
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"train{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\npipeline ({profile}): {summary['total_minutes']} min; report {reports / f'eval{suffix}.md'}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="full")
    ap.add_argument("--artifacts", default=None, help="default: artifacts (full) or artifacts/quick (quick)")
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--data")
    ap.add_argument("--force", action="store_true", help="redo steps whose outputs exist")
    ap.add_argument("--budget-minutes", type=nonnegative_float, default=None,
                    help="deadline for the whole run: training steps' caps shrink to fit it "
                         "(default: the profile's, 87 for full, none for quick; 0: no deadline)")
    ap.add_argument("--seed", type=nonnegative_int, default=0,
                    help="added to every training step's seed (batch order, sampled negatives and perturbed queries, "
                         "dev samples; not the train/dev/test split): another seed, another run of the same recipe "
                         "for its run-to-run spread; use another --artifacts, as finished steps are skipped")
    add_precision_arg(ap)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    artifacts = Path(args.artifacts or ("artifacts" if args.profile == "full" else "artifacts/quick"))
    try:
        run(args.profile, artifacts, Path(args.reports), args.data, args.force, args.budget_minutes, args.precision,
            args.seed)
    except DataError as e:  # no data, or data a step cannot use: one line (other errors keep their traceback)
        raise SystemExit(f"pipeline: {e}") from None


if __name__ == "__main__":
    main()
