"""TwinBERT student: compressed BERT encoder(s), attention pooling and crossing.

Pooling and crossing maths live in `kernels` (one implementation for training and serving).
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import BertConfig, BertModel

from kernels import CROSSINGS, PoolCrossParams, pool_cross
from training.artifacts import ArtifactError, load_weights, read_config, read_tensors
from training.pretrained import minilm_dir, pretrained_layers


@dataclass
class TwinConfig:
    num_layers: int = 2             # student transformer layers (teacher MiniLM has 6)
    proj_dim: int = 0               # 0 = no down-projection (serving dim = H)
    crossing: str = "cos"           # "cos" or "res"
    res_hidden: int = 256           # width R of the residual crossing MLP
    shared_encoders: bool = True    # one encoder for query and keyword
    query_max_len: int = 16
    keyword_max_len: int = 32
    trained_crossings: tuple[str, ...] = ("cos",)  # which crossings training fitted (serving defaults)

    def to_json(self) -> str:
        d = asdict(self)
        d["trained_crossings"] = list(d["trained_crossings"])
        return json.dumps(d, indent=2)


class Encoder(nn.Module):
    """ids, mask -> token states [B, L, H]; the lower layers of the pretrained MiniLM."""

    def __init__(self, num_layers: int, pretrained: bool = True):
        super().__init__()
        src = minilm_dir()
        if pretrained and not 1 <= num_layers <= pretrained_layers():
            raise ValueError(f"the pretrained model has {pretrained_layers()} layers to start from; "
                             f"asked for {num_layers}")
        cfg = BertConfig.from_pretrained(src, num_hidden_layers=num_layers)
        cfg._attn_implementation = "eager"  # traceable and identical between eager and TorchScript
        self.bert = (BertModel.from_pretrained(src, config=cfg, add_pooling_layer=False)
                     if pretrained else BertModel(cfg, add_pooling_layer=False))
        self.hidden = cfg.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         return_dict=False)[0]


class PoolCross(nn.Module):
    """Learned parameters of `kernels.pool_cross`; v = b = 0 starts as mean pooling."""

    def __init__(self, hidden: int, proj_dim: int = 0, res_hidden: int = 256):
        super().__init__()
        self.pool_v = nn.Parameter(torch.zeros(hidden))
        self.pool_b = nn.Parameter(torch.zeros(()))
        dim = proj_dim or hidden
        if proj_dim:
            self.proj_w = nn.Parameter(torch.empty(proj_dim, hidden))
            nn.init.xavier_uniform_(self.proj_w)
            self.proj_b = nn.Parameter(torch.zeros(proj_dim))
        self.cos_w = nn.Parameter(torch.tensor(5.0))
        self.cos_b = nn.Parameter(torch.tensor(-2.5))
        self.res_w1 = nn.Parameter(torch.empty(res_hidden, dim))
        self.res_w2 = nn.Parameter(torch.zeros(dim, res_hidden))  # residual starts as identity
        nn.init.xavier_uniform_(self.res_w1)
        self.res_u = nn.Parameter(torch.empty(dim).uniform_(-dim ** -0.5, dim ** -0.5))
        self.res_c = nn.Parameter(torch.zeros(()))

    def params(self) -> PoolCrossParams:
        return PoolCrossParams(**{name: p for name, p in self.named_parameters()})


class TwinBERT(nn.Module):
    def __init__(self, config: TwinConfig, pretrained: bool = True):
        super().__init__()
        self.config = config
        self.query_encoder = Encoder(config.num_layers, pretrained)
        self.keyword_encoder = (self.query_encoder if config.shared_encoders
                                else Encoder(config.num_layers, pretrained))
        self.pool_cross = PoolCross(self.query_encoder.hidden, config.proj_dim, config.res_hidden)

    def embed(self, ids: torch.Tensor, mask: torch.Tensor, side: str = "query") -> torch.Tensor:
        enc = self.query_encoder if side == "query" else self.keyword_encoder
        states = enc(ids, mask)
        return pool_cross(states, mask, self.pool_cross.params())[0]

    def forward(self, q_ids, q_mask, k_ids, k_mask):
        """Training view of B (query, keyword) pairs: pooled query and keyword vectors and the paired
        `cos` and `res` scores [B]. A training loss calls the model (under torchrun, its
        DistributedDataParallel wrapper) rather than embed() and pool_cross() piecemeal: DDP syncs the
        gradients of a backward pass only when its own forward ran."""
        kv = self.embed(k_ids, k_mask, "keyword")
        states = self.query_encoder(q_ids, q_mask)
        params = self.pool_cross.params()
        qv, s_cos = pool_cross(states, q_mask, params, kv.unsqueeze(1), "cos")
        _, s_res = pool_cross(states, q_mask, params, kv.unsqueeze(1), "res")
        return qv, kv, s_cos[:, 0], s_res[:, 0]

    def score(self, q_ids, q_mask, k_ids, k_mask, crossing: str | None = None) -> torch.Tensor:
        """Paired scores [B] for B (query, keyword) pairs."""
        k = self.embed(k_ids, k_mask, "keyword")
        states = self.query_encoder(q_ids, q_mask)
        _, s = pool_cross(states, q_mask, self.pool_cross.params(), k.unsqueeze(1),
                          crossing or self.config.crossing)
        return s[:, 0]

    def add_projection(self, proj_dim: int) -> "TwinBERT":
        """Puts a `tanh(W e)` projection to `proj_dim` on a checkpoint trained without one.

        W starts as the identity on the first min(D, H) dims (plus noise of 1e-3), so the
        pooled vectors, and the cosine ranking built on them, start close to the checkpoint's own;
        the residual head is new, sized for D."""
        if self.config.proj_dim:
            raise ValueError(f"the model already projects to {self.config.proj_dim} dims")
        if proj_dim < 1:
            raise ValueError(f"proj_dim must be positive, got {proj_dim}")
        old, hidden = self.pool_cross, self.query_encoder.hidden
        new = PoolCross(hidden, proj_dim, self.config.res_hidden)
        with torch.no_grad():
            for name in ("pool_v", "pool_b", "cos_w", "cos_b"):
                getattr(new, name).copy_(getattr(old, name))
            new.proj_w.normal_(0.0, 1e-3)
            n = min(proj_dim, hidden)
            new.proj_w[:n, :n] += torch.eye(n)
        self.pool_cross = new
        self.config.proj_dim = proj_dim
        return self

    def untie(self) -> "TwinBERT":
        """Gives the keyword side its own copy of a shared encoder, to train the towers apart."""
        if self.config.shared_encoders:
            self.keyword_encoder = copy.deepcopy(self.query_encoder)
            self.config.shared_encoders = False
        return self

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        if self.config.shared_encoders:  # tied weights are stored once
            state = {k: v for k, v in state.items() if not k.startswith("keyword_encoder.")}
        save_file(state, str(out / "model.safetensors"))
        (out / "config.json").write_text(self.config.to_json() + "\n")

    @classmethod
    def load(cls, ckpt_dir: str | Path) -> "TwinBERT":
        ckpt = Path(ckpt_dir)
        for name in ("config.json", "model.safetensors"):
            if not (ckpt / name).is_file():
                raise FileNotFoundError(f"{ckpt}: checkpoint has no {name}")
        config = read_config(TwinConfig, ckpt / "config.json")
        bad = [c for c in config.trained_crossings if c not in CROSSINGS]
        if config.crossing not in CROSSINGS or bad or not config.trained_crossings:
            raise ArtifactError(f"{ckpt / 'config.json'}: crossings are {' and '.join(CROSSINGS)}, got crossing "
                                f"{config.crossing!r}, trained_crossings {list(config.trained_crossings)}")
        state = read_tensors(ckpt / "model.safetensors")
        if config.shared_encoders:
            # a tied model is saved without keyword_encoder.*; finding them means the weights come from
            # separate towers, and loading them would overwrite the shared encoder with the keyword one
            apart = []
            for k, v in state.items():
                twin = "query_encoder." + k.removeprefix("keyword_encoder.")
                if k.startswith("keyword_encoder.") and not (twin in state and torch.equal(v, state[twin])):
                    apart.append(k)
            if apart:
                raise ArtifactError(f"{ckpt}: config.json says shared encoders, but model.safetensors holds separate "
                                    f"keyword-encoder weights ({apart[0]}, ...)")
            state = {k: v for k, v in state.items() if not k.startswith("keyword_encoder.")}
        model = cls(config, pretrained=False)
        missing, unexpected = load_weights(model, state, ckpt / "model.safetensors", strict=False)
        missing = [m for m in missing if not (config.shared_encoders and m.startswith("keyword_encoder."))]
        if missing or unexpected:
            raise ArtifactError(f"{ckpt}: checkpoint does not match its config "
                                f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        return model.eval()
