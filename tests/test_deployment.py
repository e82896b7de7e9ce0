"""docker-compose.yml describes the GPU deployment the README promises (no Docker engine here)."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_serves_the_built_repository_on_a_gpu():
    svc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]
    assert "--model-repository=/models" in svc["command"]
    assert any(v.endswith("model_repository:/models") for v in svc["volumes"])  # writable: live updates
    assert "--model-control-mode=explicit" in svc["command"]
    assert {p.split(":")[-1] for p in svc["ports"]} == {"8000", "8001", "8002"}
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "/v2/health/ready" in " ".join(svc["healthcheck"]["test"])
    assert svc["shm_size"]
    dockerfile = (ROOT / svc["build"]["dockerfile"]).read_text()
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile


def test_prometheus_scrapes_triton_metrics():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prom = compose["prometheus"]
    config_path = prom["volumes"][0].split(":")[0]
    scrape = yaml.safe_load((ROOT / config_path).read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["triton:8002"]
