"""The full profile's deadline: training steps' minute caps shrink so the pipeline ends in time."""
import pytest

from training.pipeline import MIN_STEP_MINUTES, NOMINAL_MINUTES, PROFILES, Deadline, with_cap


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_step_gets_its_share_of_the_time_left_never_more_than_its_own_cap():
    clock = Clock()
    d = Deadline(88, clock=clock)
    clock.now += 2.7 * 60  # the quick student
    rest = sum(NOMINAL_MINUTES.values()) - NOMINAL_MINUTES["quick contrastive student"]
    assert d.cap("teacher", 26) == pytest.approx(round(85.3 * 17.5 / rest, 2))
    assert d.cap("teacher", 10) == 10  # its own cap is lower
    # a slow teacher used its whole cap: the steps after it share what is left
    clock.now += 26 * 60
    left = 88 - 2.7 - 26
    rest_after = rest - NOMINAL_MINUTES["teacher"] - NOMINAL_MINUTES["distillation set"]
    clock.now += 9 * 60
    share = (left - 9) * NOMINAL_MINUTES["TwinBERT student"] / rest_after
    assert d.cap("TwinBERT student", 14) == pytest.approx(round(share, 2)) and share < 14
    # past the deadline every step still gets the minimum
    clock.now += 3600
    assert d.cap("BiLSTM student", 12) == MIN_STEP_MINUTES


# minutes each step took in the from-scratch run of 78.6 minutes (training/pipeline.py)
MEASURED = {"quick contrastive student": 2.69, "teacher": 17.32, "distillation set": 7.46, "TwinBERT student": 11.65,
            "TwinBERT student, second pass": 10.89, "TwinBERT without augmentation": 6.14, "BiLSTM student": 7.57,
            "BiLSTM without augmentation": 4.6, "evaluation": 10.23}
CAPS = {"teacher": 26, "TwinBERT student": 14, "TwinBERT student, second pass": 14,
        "TwinBERT without augmentation": 8, "BiLSTM student": 12, "BiLSTM without augmentation": 8}


def simulated_total(slowdown: float, budget: float | None) -> float:
    """Minutes of a full run on an hour `slowdown` times slower than the measured one."""
    clock = Clock()
    d = Deadline(budget, clock=clock) if budget else None
    for name, minutes in MEASURED.items():
        need = minutes * slowdown
        if name in CAPS:
            need = min(need, d.cap(name, CAPS[name]) if d else CAPS[name])
        clock.now += need * 60
    return (clock.now - 1000.0) / 60


@pytest.mark.parametrize("slowdown", [1.0, 1.2, 1.35])
def test_a_slow_hour_still_ends_within_90_minutes(slowdown):
    budget = PROFILES["full"]["budget_minutes"]
    assert simulated_total(1.0, budget) == pytest.approx(sum(MEASURED.values()))  # a normal hour: no step cut
    assert simulated_total(slowdown, budget) <= 90
    if slowdown > 1.1:
        assert simulated_total(slowdown, None) > 90  # what the deadline prevents


def test_with_cap_replaces_only_the_max_minutes_value():
    clock = Clock()
    d = Deadline(20, clock=clock)
    args = ["--epochs", "1", "--max-minutes", "26", "--eval-every", "600"]
    out = with_cap(args, d, "teacher")
    assert out[:2] == ["--epochs", "1"] and out[2] == "--max-minutes" and out[4:] == ["--eval-every", "600"]
    assert float(out[3]) < 26 and args[3] == "26"  # the profile is not modified
    assert with_cap(args, None, "teacher") == args
    assert with_cap(["--max-steps", "100"], d, "teacher") == ["--max-steps", "100"]


def test_the_full_profile_has_a_deadline_under_90_minutes_and_quick_has_none():
    assert 0 < PROFILES["full"]["budget_minutes"] < 90 and "budget_minutes" not in PROFILES["quick"]
    # every capped step of the full profile has a nominal time (the deadline can share to it)
    assert set(NOMINAL_MINUTES) >= {"teacher", "TwinBERT student", "TwinBERT student, second pass",
                                    "TwinBERT without augmentation", "BiLSTM student", "BiLSTM without augmentation"}


def test_the_pipeline_passes_each_training_step_its_deadline_cap(tmp_path, monkeypatch):
    """run() wiring: every capped step of the full profile gets --max-minutes from the deadline
    (the steps themselves are replaced by recorders; each one's own tests cover it)."""
    from training import bilstm, distill, distill_data, evaluate, pipeline, teacher, train_twin
    calls = []

    def recorder(name):
        def fake(argv=None, *a, **k):
            calls.append((name, list(argv) if isinstance(argv, list) else argv))
        return fake

    for module, name in ((teacher, "teacher"), (distill_data, "distill_data"), (distill, "distill"),
                         (bilstm, "bilstm"), (evaluate, "evaluate")):
        monkeypatch.setattr(module, "main", recorder(name))
    monkeypatch.setattr(train_twin, "train", recorder("quick"))
    pipeline.run("full", tmp_path / "a", tmp_path / "r", None, force=False, budget_minutes=5)
    capped = [argv for name, argv in calls if isinstance(argv, list) and "--max-minutes" in argv]
    assert len(capped) == 6  # teacher, two TwinBERT passes, its ablation, BiLSTM, its ablation
    caps = [float(argv[argv.index("--max-minutes") + 1]) for argv in capped]
    # 5 minutes for the whole run: every step is cut below its own cap, none below the minimum
    assert all(MIN_STEP_MINUTES <= c < own for c, own in zip(caps, (26, 14, 14, 8, 12, 8))), caps
    summary = __import__("json").loads((tmp_path / "r" / "train.json").read_text())
    assert summary["budget_minutes"] == 5
    calls.clear()
    pipeline.run("full", tmp_path / "b", tmp_path / "r", None, force=False, budget_minutes=0)  # no deadline
    caps = [argv[argv.index("--max-minutes") + 1] for name, argv in calls
            if isinstance(argv, list) and "--max-minutes" in argv]
    assert caps == ["26", "14", "14", "8", "12", "8"]
