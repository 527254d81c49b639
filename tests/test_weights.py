"""Weight sync: strict full updates, explicit partial ones, checked before anything is copied."""

import pytest
import torch
from helpers import mixed_prompts

from rollout_len.model import check_weights, load_weights, tiny_policy
from rollout_len.rollout.coordinator import Coordinator, RolloutConfig
from rollout_len.rollout.worker import RolloutWorker

HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def trained(seed: int = 1, tie: bool = False) -> dict[str, torch.Tensor]:
    """A trainer's state dict: same names and shapes as the tiny model, other values."""
    model = tiny_policy("llama", seed=seed, tie_word_embeddings=tie).model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_issue_input_untied_model_without_lm_head_is_refused_and_keeps_its_weights():
    policy = tiny_policy("llama")
    assert policy.model.config.tie_word_embeddings is False
    before = snapshot(policy.model)
    state = trained()
    del state[HEAD]
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): \['lm_head.weight'\]"):
        load_weights(policy.model, state)
    assert_unchanged(policy.model, before)  # not even the tensors that were given were copied


def test_a_full_update_replaces_every_tensor():
    policy = tiny_policy("llama")
    state = trained()
    loaded = load_weights(policy.model, state)
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(policy.model.state_dict()[k], v) for k, v in state.items())


def test_tied_head_counts_once_and_is_decided_by_the_tensors():
    policy = tiny_policy("llama", tie_word_embeddings=True)
    model = policy.model
    targets = model.state_dict()
    assert model.config.tie_word_embeddings is True
    assert targets[HEAD].data_ptr() == targets[EMBED].data_ptr()  # one tensor, two names
    state = trained(tie=True)
    without_head = {k: v for k, v in state.items() if k != HEAD}
    load_weights(model, without_head)  # the embeddings cover the tied head
    assert torch.equal(model.get_output_embeddings().weight, state[EMBED])
    without_embed = {k: v for k, v in trained(seed=2, tie=True).items() if k != EMBED}
    load_weights(model, without_embed)  # so does the head
    assert torch.equal(model.get_input_embeddings().weight, without_embed[HEAD])
    load_weights(model, trained(seed=3, tie=True))  # both, equal: fine
    before = snapshot(model)
    neither = {k: v for k, v in state.items() if k not in (HEAD, EMBED)}
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): \['model.embed_tokens.weight \(tied: lm_head.weight\)'"):
        load_weights(model, neither)
    conflicting = dict(state, **{HEAD: state[EMBED] + 1})
    with pytest.raises(ValueError, match=r"tied keys given different values: .*'model.embed_tokens.weight = lm_head"):
        load_weights(model, conflicting)
    assert_unchanged(model, before)


def test_unexpected_misshaped_and_mistyped_keys_are_all_named():
    policy = tiny_policy("llama")
    before = snapshot(policy.model)
    state = trained()
    state["extra.weight"] = torch.zeros(2)
    state["model.norm.weight"] = torch.zeros(3)
    state["model.layers.0.input_layernorm.weight"] = torch.zeros(64, dtype=torch.int64)
    state["model.layers.1.input_layernorm.weight"] = [0.0] * 64
    with pytest.raises(ValueError) as err:
        load_weights(policy.model, state)
    message = str(err.value)
    assert "do not match" in message
    assert "unexpected 1 key(s): ['extra.weight']" in message
    assert "wrong shape (given vs model): 1 key(s): ['model.norm.weight (3,) vs (64,)']" in message
    assert "1 key(s): ['model.layers.0.input_layernorm.weight torch.int64 vs torch.float32']" in message
    assert "not a tensor: 1 key(s): ['model.layers.1.input_layernorm.weight (list)']" in message
    assert_unchanged(policy.model, before)


def test_long_lists_name_the_first_few_and_count_the_rest():
    policy = tiny_policy("llama")
    with pytest.raises(ValueError, match=r"missing 20 key\(s\): \[.{0,400}\] and 15 more"):
        load_weights(policy.model, {EMBED: trained()[EMBED]})
    with pytest.raises(TypeError, match="state dict"):
        load_weights(policy.model, [("x", torch.zeros(1))])


def test_floating_tensors_are_cast_to_the_model_dtype():
    policy = tiny_policy("llama")
    state = {k: v.to(torch.bfloat16) for k, v in trained().items()}
    load_weights(policy.model, state)
    assert all(v.dtype == torch.float32 for v in policy.model.state_dict().values())
    assert torch.equal(policy.model.state_dict()[HEAD], state[HEAD].float())
    half = tiny_policy("llama")
    half.model.to(torch.bfloat16)
    full = trained()
    load_weights(half.model, full)  # fp32 trainer -> bf16 rollout: rounded, as a bf16 rollout is
    assert torch.equal(half.model.state_dict()[HEAD], full[HEAD].to(torch.bfloat16))


def test_partial_updates_load_exactly_the_given_keys():
    policy = tiny_policy("llama")
    before = snapshot(policy.model)
    state = trained()
    given = {k: state[k] for k in ("model.layers.0.self_attn.q_proj.weight", HEAD)}
    assert sorted(load_weights(policy.model, given, partial=True)) == sorted(given)
    after = policy.model.state_dict()
    for key in after:
        assert torch.equal(after[key], given[key] if key in given else before[key]), key
    with pytest.raises(ValueError, match="empty partial"):
        load_weights(policy.model, {}, partial=True)
    with pytest.raises(ValueError, match=r"unexpected 1 key\(s\): \['nope'\]"):
        load_weights(policy.model, {"nope": torch.zeros(1), HEAD: before[HEAD]}, partial=True)
    with pytest.raises(ValueError, match="wrong shape"):
        load_weights(policy.model, {HEAD: torch.zeros(2, 2)}, partial=True)
    assert torch.equal(policy.model.state_dict()[HEAD], given[HEAD])  # the refused updates copied nothing


def test_check_weights_returns_one_key_per_tensor():
    policy = tiny_policy("llama", tie_word_embeddings=True)
    plan = check_weights(policy.model, trained(tie=True))
    assert EMBED in plan and HEAD not in plan  # the tied head is written once, through the embeddings


def test_worker_takes_a_state_dict_or_a_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    worker = RolloutWorker(0, "tiny-llama", slots=2)
    prompt = mixed_prompts(1)[0]
    state = trained()
    before = worker.logits(prompt)
    missing_head = {k: v for k, v in state.items() if k != HEAD}
    with pytest.raises(ValueError, match=r"worker 0: weights do not match the model: missing .*'lm_head.weight'"):
        worker.load_weights(missing_head)
    assert torch.equal(worker.logits(prompt), before)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    worker.load_weights(str(path))
    reference = tiny_policy("llama", seed=1).model
    with torch.no_grad():
        expected = reference(torch.tensor([prompt])).logits[0, -1]
    torch.testing.assert_close(worker.logits(prompt), expected)
    worker.load_weights(path, partial=False)  # a pathlib.Path works too


def test_coordinator_in_process_partial_and_refused_updates():
    coord = Coordinator("tiny-llama", RolloutConfig(num_workers=2, slots_per_worker=2, every=4, use_ray=False))
    prompt = mixed_prompts(1)[0]
    before = coord.worker_logits(prompt)
    state = trained()
    with pytest.raises(ValueError, match="lm_head.weight"):
        coord.update_weights({k: v for k, v in state.items() if k != HEAD})
    for got, old in zip(coord.worker_logits(prompt), before):
        assert torch.equal(got, old)
    coord.update_weights({HEAD: state[HEAD]}, partial=True)
    for worker in coord.workers:
        assert torch.equal(worker.policy.model.state_dict()[HEAD], state[HEAD])
        assert not torch.equal(worker.policy.model.state_dict()[EMBED], state[EMBED])
    with pytest.raises(ValueError, match="empty partial"):
        coord.update_weights({}, partial=True)


def test_coordinator_on_ray_puts_once_and_every_worker_loads():
    ray = pytest.importorskip("ray")
    coord = Coordinator("tiny-llama", RolloutConfig(num_workers=2, slots_per_worker=2, every=4, use_ray=True))
    try:
        prompt = mixed_prompts(1)[0]
        before = coord.worker_logits(prompt)
        state = trained()
        with pytest.raises(ValueError, match=r"worker \d: weights do not match the model: missing .*'lm_head.weight'"):
            coord.update_weights({k: v for k, v in state.items() if k != HEAD})
        for got, old in zip(coord.worker_logits(prompt), before):
            assert torch.equal(got, old)
        coord.update_weights({HEAD: state[HEAD]}, partial=True)
        coord.update_weights(state)
        with torch.no_grad():
            expected = tiny_policy("llama", seed=1).model(torch.tensor([prompt])).logits[0, -1]
        for got in coord.worker_logits(prompt):
            torch.testing.assert_close(got, expected)
    finally:
        coord.shutdown()
        ray.shutdown()
