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


def test_image_runs_the_python_and_stub_the_pins_need():
    """The 24.10 image's own Python is 3.10, which the pins cannot install into: the Dockerfile brings
    the Python that pyproject.toml requires and the Python-backend stub built for it, from the same
    nvidia-pytriton wheel (Triton 2.51, as the image) that local serving takes its stub from."""
    import re
    import sys

    import pytriton
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    requires = re.search(r'requires-python = ">=(\d+\.\d+),<', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"python{requires}" in dockerfile and f"{requires}-venv" in dockerfile
    assert f"python_backend_stubs/{requires}/triton_python_backend_stub" in dockerfile
    assert "/opt/tritonserver/backends/python/triton_python_backend_stub" in dockerfile
    assert "PATH=/opt/venv/bin:" in dockerfile  # the stub's Python finds the venv's packages
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == requires  # what the tests ran on
    stub = Path(pytriton.__file__).parent / "tritonserver" / "python_backend_stubs" / requires / "triton_python_backend_stub"
    assert stub.is_file()


def test_prometheus_scrapes_triton_metrics():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prom = compose["prometheus"]
    config_path = prom["volumes"][0].split(":")[0]
    scrape = yaml.safe_load((ROOT / config_path).read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["triton:8002"]
