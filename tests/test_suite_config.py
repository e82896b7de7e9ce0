"""The benchmark suite reads the served configuration it compares against."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_baseline_uses_the_served_thread_setting(tmp_path):
    from client.suite import served_encoder_threads
    assert served_encoder_threads(ROOT / "model_repository") == 1  # what keyword_store/config.pbtxt ships
    (tmp_path / "keyword_store").mkdir()
    (tmp_path / "keyword_store" / "config.pbtxt").write_text(
        'parameters {\n  key: "threads"\n  value: { string_value: "3" }\n}\n')
    assert served_encoder_threads(tmp_path) == 3
    (tmp_path / "keyword_store" / "config.pbtxt").write_text('name: "keyword_store"\n')
    assert served_encoder_threads(tmp_path) == 1  # the model's own default


def _instances(text):
    from serving.repository import parse_model_config
    return [(g.count, g.rate_limiter.priority) for g in parse_model_config(text).instance_group]


def test_shipped_placement_has_one_hot_instance_and_overflow():
    """The first instance of the multi-instance model takes requests while free (priority 1)."""
    repo = ROOT / "model_repository"
    for model in ("keyword_store",):
        groups = _instances((repo / model / "config.pbtxt").read_text())
        assert groups[0] == (1, 1) and all(p > 100 for _, p in groups[1:]) and len(groups) > 1


def test_every_tune_variant_applies_and_parses():
    from client.suite import TWO_STEP, VARIANTS, variant_configs
    from serving.repository import parse_model_config
    repo = ROOT / "model_repository"
    for name, edits in VARIANTS:
        configs = variant_configs(repo, edits)  # raises unless each edit matches exactly once
        for model, text in configs.items():
            _instances(text)  # each edited config still parses as a ModelConfig
            assert text != (repo / model / "config.pbtxt").read_text(), f"{name!r} leaves {model} as shipped"
    configs = variant_configs(repo, dict(VARIANTS)["1 store instance"])
    assert _instances(configs["keyword_store"]) == [(1, 1)]
    configs = variant_configs(repo, dict(VARIANTS)["equal priorities (fewest executions first)"])
    assert {p for _, p in _instances(configs["keyword_store"])} == {1}
    configs = variant_configs(repo, dict(VARIANTS)[TWO_STEP])
    steps = parse_model_config(configs["retrieve"]).ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["query_encoder", "keyword_store"]
    assert dict(steps[1].input_map) == {"TOKEN_STATES": "token_states", "ATTENTION_MASK": "attention_mask",
                                        "TOP_K": "TOP_K"}
    assert len(_instances(configs["query_encoder"])) == 2
    store = parse_model_config(configs["keyword_store"])
    assert sum(g.count for g in store.instance_group) == 3 and not store.HasField("dynamic_batching")
    assert all(edits or name == "as shipped" for name, edits in VARIANTS)


def test_server_runs_the_rate_limiter_the_priorities_need():
    from serving.server import TritonServer
    on, off = TritonServer(ROOT / "model_repository"), TritonServer(ROOT / "model_repository", rate_limit=False)
    assert "--rate-limit=execution_count" in on.command() and "--rate-limit=off" in off.command()
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "--rate-limit=execution_count" in compose


def test_default_candidates_come_from_the_store_config(tmp_path):
    from serving.repository import model_parameter
    from serving.requests import serving_defaults
    shipped = int(model_parameter(ROOT / "model_repository", "keyword_store", "default_candidates"))
    assert shipped == 0  # the cosine order: see keyword_store/config.pbtxt
    res_trained = {"trained_crossings": ["cos", "res"]}
    assert serving_defaults(res_trained, 50) == (50, "res")
    assert serving_defaults({"trained_crossings": ["cos"]}, 50) == (0, "cos")  # an untrained res never re-ranks
    (tmp_path / "keyword_store").mkdir()
    (tmp_path / "keyword_store" / "config.pbtxt").write_text('name: "keyword_store"\n')
    assert model_parameter(tmp_path, "keyword_store", "default_candidates", "7") == "7"
