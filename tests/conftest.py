import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

if not torch.cuda.is_available():  # run the Triton kernels on CPU tensors (must precede their import)
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def home_depot_csv():
    """The real Home Depot train.csv. Skipped only on a machine that has no copy of the dataset (it is never
    committed; this workspace and CI have it beside the checkout, `training.data.default_data_dir`); an
    explicit TWINBERT_DATA that holds none is a failure, not a skip."""
    from training.data import default_data_dir
    src = default_data_dir() / "train.csv"
    if not src.is_file():
        if os.environ.get("TWINBERT_DATA"):
            pytest.fail(f"TWINBERT_DATA={os.environ['TWINBERT_DATA']} holds no train.csv")
        pytest.skip("Home Depot data not present (set TWINBERT_DATA)")
    return src


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A real (pretrained, untrained-here) 1-layer TwinBERT, saved and exported."""
    from training.export import export
    from training.twin import TwinBERT, TwinConfig

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    TwinBERT(TwinConfig(num_layers=1)).save(root / "model")
    return export(root / "model", root / "export")


@pytest.fixture(scope="session")
def encoder_dir(tiny_export, tmp_path_factory):
    """A served version directory of the query encoder alone (the export's query-side files)."""
    import shutil
    d = tmp_path_factory.mktemp("qenc")
    for name in ("query_encoder.pt", "tokenizer.json", "tokenizer_config.json", "export.json"):
        shutil.copy(tiny_export / name, d / name)
    return d


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory):
    """A real BiLSTM student with the interaction layer over MiniLM's pretrained word embeddings
    (its other weights untrained), saved and exported as the re-ranker."""
    from training.bilstm import BiLSTMConfig, BiLSTMStudent
    from training.export import export_reranker
    from training.twin import Encoder

    root = tmp_path_factory.mktemp("reranker")
    torch.manual_seed(1)
    emb = Encoder(1).bert.embeddings.word_embeddings.weight.detach()
    BiLSTMStudent(BiLSTMConfig(vocab_size=emb.shape[0], embed_dim=emb.shape[1], interaction=True, packed=True),
                  emb).save(root / "bilstm")
    return export_reranker(root / "bilstm", root / "export")


@pytest.fixture(scope="session")
def torchrun():
    """run(script) -> stdout: `script` under torchrun with two processes (gloo; --standalone, so the
    rendezvous binds its own free port), asserted to succeed with its output shown if it does not."""
    import subprocess
    import sys

    def run(script) -> str:
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              str(script)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"stdout:\n{out.stdout[-1500:]}\nstderr:\n{out.stderr[-3000:]}"
        return out.stdout
    return run


@pytest.fixture(scope="session")
def build_repository():
    """build(export, titles {id: text}, root[, reranker]) -> (store dir, runnable model repository):
    the keyword store (exact `flat` index) under root/store and the repository assembled under
    root/repo (with the re-ranker models when a re-ranker export is given)."""
    from serving.keyword_store import IndexSpec
    from serving.repository import assemble
    from training.index import build as build_index

    def build(export, titles: dict, root, reranker=None):
        store = root / "store"
        build_index(export, store, list(titles), list(titles.values()), IndexSpec("flat"), progress=False)
        return store, assemble(export, store, root / "repo", reranker)
    return build


@pytest.fixture(autouse=True)
def _revive_aborted_servers(request):
    """A module's tritonserver that died of the Python backend's abort (README, known issue: a stub
    stalled past 1 s on a loaded host) is started again, on the same ports, before the next test,
    so that one abort costs one test (which `--reruns` in pyproject.toml runs once more), not the
    rest of the module."""
    from serving.server import TritonServer
    for name in request.fixturenames:
        if name in ("server", "live"):
            value = request.getfixturevalue(name)
            for obj in value if isinstance(value, tuple) else (value,):
                if isinstance(obj, TritonServer):
                    obj.revive()
    yield
