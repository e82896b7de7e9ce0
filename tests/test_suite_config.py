"""The benchmark suite reads the served configuration it compares against."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_baseline_uses_the_served_thread_setting(tmp_path):
    from client.suite import served_encoder_threads
    assert served_encoder_threads(ROOT / "model_repository") == 1  # what query_encoder/config.pbtxt ships
    (tmp_path / "query_encoder").mkdir()
    (tmp_path / "query_encoder" / "config.pbtxt").write_text(
        'parameters {\n  key: "threads"\n  value: { string_value: "3" }\n}\n')
    assert served_encoder_threads(tmp_path) == 3
    (tmp_path / "query_encoder" / "config.pbtxt").write_text('name: "query_encoder"\n')
    assert served_encoder_threads(tmp_path) == 2  # the model's own default
