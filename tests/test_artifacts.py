"""Corrupt or altered model artifacts are refused by name, never loaded as something else: exports
against their checksums, checkpoints against their configs, resumes against the run."""
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from kernels import PoolCrossParams
from serving.encoder import QueryEncoder
from serving.rerank import Reranker
from training.artifacts import ArtifactError, read_config
from training.twin import TwinBERT, TwinConfig


def _flip_byte(path, offset_from_end=100):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.fixture
def export_copy(tiny_export, tmp_path):
    return shutil.copytree(tiny_export, tmp_path / "export")


@pytest.mark.parametrize("name", ["query_encoder.pt", "tokenizer.json", "tokenizer_config.json"])
def test_query_encoder_refuses_a_file_that_differs_from_export_json(export_copy, name):
    QueryEncoder(export_copy, optimize=False)  # as exported: loads
    _flip_byte(export_copy / name, offset_from_end=min(100, (export_copy / name).stat().st_size // 2))
    with pytest.raises(ArtifactError, match=rf"{name}: checksum differs from export.json's"):
        QueryEncoder(export_copy, optimize=False)


def test_pool_cross_export_is_checked_against_its_checksums_and_shapes(export_copy):
    params, _ = PoolCrossParams.load(export_copy)
    _flip_byte(export_copy / "pool_cross.safetensors")
    with pytest.raises(ArtifactError, match="pool_cross.safetensors: checksum differs"):
        PoolCrossParams.load(export_copy)
    # a file re-signed in export.json is still checked for what the kernel needs: no default stands
    # in for a missing scalar
    state = {k: v for k, v in params.state_dict().items() if k != "cos_w"}
    save_file(state, str(export_copy / "pool_cross.safetensors"))
    _resign(export_copy, "export.json", "pool_cross.safetensors")
    with pytest.raises(ArtifactError, match=r"pool_cross.safetensors: lacks \['cos_w'\]"):
        PoolCrossParams.load(export_copy)
    save_file({**params.state_dict(), "pool_v": params.pool_v.to(torch.int32)},
              str(export_copy / "pool_cross.safetensors"))
    _resign(export_copy, "export.json", "pool_cross.safetensors")
    with pytest.raises(ArtifactError, match=r"\['pool_v'\] are not float32"):
        PoolCrossParams.load(export_copy)


def _resign(directory, manifest, name):
    from training.artifacts import sha256_file
    record = json.loads((directory / manifest).read_text())
    record["sha256"][name] = sha256_file(directory / name)
    (directory / manifest).write_text(json.dumps(record))


def test_reranker_refuses_altered_weights_and_a_changed_max_length(tiny_reranker, tmp_path):
    d = shutil.copytree(tiny_reranker, tmp_path / "reranker")
    Reranker(d)
    config = json.loads((d / "reranker.json").read_text())
    (d / "reranker.json").write_text(json.dumps({**config, "max_length": 4}))
    with pytest.raises(ArtifactError, match=r"max_length 4 is not the positive int the model was trained with \(40\)"):
        Reranker(d)
    (d / "reranker.json").write_text(json.dumps(config))
    shutil.copy(d / "tokenizer.json", d / "reranker.pt")  # another file in its place
    with pytest.raises(ArtifactError, match="reranker.pt: checksum differs"):
        Reranker(d)
    Reranker(d, "bf16")  # only the trace a precision loads is read
    shutil.copy(d / "tokenizer.json", d / "reranker_bf16.pt")
    with pytest.raises(ArtifactError, match="reranker_bf16.pt: checksum differs"):
        Reranker(d, "bf16")
    (d / "reranker_bf16.pt").unlink()  # an export from before the bf16 trace
    with pytest.raises(FileNotFoundError, match="has no reranker_bf16.pt"):
        Reranker(d, "bf16")


def test_twin_checkpoint_config_and_weights_are_checked(tmp_path):
    torch.manual_seed(0)
    apart = TwinBERT(TwinConfig(num_layers=1, shared_encoders=False), pretrained=False)
    with torch.no_grad():
        for p in apart.keyword_encoder.parameters():
            p.add_(0.5)
    apart.save(tmp_path / "m")
    assert not torch.equal(TwinBERT.load(tmp_path / "m").query_encoder.bert.embeddings.word_embeddings.weight,
                           apart.keyword_encoder.bert.embeddings.word_embeddings.weight)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    # saying "shared" of separate towers would load the keyword tower over the query one
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "shared_encoders": True}))
    with pytest.raises(ArtifactError, match="says shared encoders, but model.safetensors holds separate"):
        TwinBERT.load(tmp_path / "m")
    for bad, message in (({"num_layers": "two"}, r"'num_layers' must be int, got 'two'"),
                         ({"shared_encoders": "false"}, r"'shared_encoders' must be bool"),
                         ({"trained_crossings": "res"}, r"'trained_crossings' must be a list of strings"),
                         ({"trained_crossings": ["rse"]}, "crossings are cos and res"),
                         ({"layers": 2}, r"unknown config keys \['layers'\]")):
        (tmp_path / "m" / "config.json").write_text(json.dumps({**config, **bad}))
        with pytest.raises(ArtifactError, match=message):
            TwinBERT.load(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"m/config.json: not valid JSON"):
        TwinBERT.load(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"model.safetensors: not a readable safetensors file"):
        TwinBERT.load(tmp_path / "m")


def test_configs_keep_defaults_for_keys_written_before_they_existed(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"num_layers": 2, "trained_crossings": ["cos", "res"]}))
    assert read_config(TwinConfig, tmp_path / "c.json") == TwinConfig(num_layers=2, trained_crossings=("cos", "res"))


def test_a_rollout_of_a_corrupt_export_is_refused_before_the_server_is_touched(export_copy, tmp_path):
    from serving.rollout import RolloutError, rollout
    _flip_byte(export_copy / "query_encoder.pt")
    with pytest.raises(RolloutError, match="query_encoder.pt: checksum differs"):
        rollout(tmp_path / "repo", export_copy, tmp_path / "store", url="127.0.0.1:1", timeout_s=1)


def test_a_served_version_assembled_before_export_json_was_placed_still_loads_with_a_warning(export_copy):
    (export_copy / "export.json").unlink()
    with pytest.warns(UserWarning, match="no export.json, so .* load unchecked; re-assemble"):
        QueryEncoder(export_copy, optimize=False)
    with pytest.warns(UserWarning, match="load unchecked"):
        PoolCrossParams.load(export_copy)
