"""DataProto <-> samples against real verl code: RLHFDataset batches in, verl's reward loop and GRPO out."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.trainer.ppo import core_algos
from verl.utils.reward_score import gsm8k
from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

from helpers import tiny
from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.sample import Sample, SampleStatus
from rollout_len.verl.convert import attach_rewards, group_size, rollout_request, to_data_proto
from verl_setup import rlhf_batch

N = 3
PROMPT_LENGTH, RESPONSE_LENGTH = 512, 12


@pytest.fixture(scope="module")
def config(make_config):
    return make_config()


@pytest.fixture(scope="module")
def batch_and_tokenizer(config):
    return rlhf_batch(config, N)


@pytest.fixture(scope="module")
def token_builder(batch_and_tokenizer):
    return create_continuous_token_builder(batch_and_tokenizer[1], hf_model_type="llama")


def generate(request, seed: int = 0) -> list[list[Sample]]:
    """Real samples from the tiny policy (the model in the config's folder), grouped per prompt.

    The random policy rarely samples its end token, so a quarter of the vocabulary stops a
    response here: responses then end at different lengths, as real ones do.
    """
    params = replace(request.params, stop_ids=tuple(range(32, 96)))
    groups = [
        [Sample(f"p{i}-s{j}", list(prompt), params, seed=seed, group_id=f"p{i}") for j in range(request.n)]
        for i, prompt in enumerate(request.prompts)
    ]
    DecodeEngine(tiny("llama"), EngineConfig(max_batch_size=request.num_rows)).run([s for g in groups for s in g])
    return groups


def test_request_reads_a_verl_batch(config, batch_and_tokenizer, token_builder):
    batch, tokenizer = batch_and_tokenizer
    request = rollout_request(batch, token_builder, config.actor_rollout_ref.rollout)
    assert request.n == N and len(request.prompts) == len(batch) // N == 4
    for i, prompt in enumerate(request.prompts):
        messages = list(batch.non_tensor_batch["raw_prompt"][i * N])
        expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert prompt == list(expected)
        question = batch.non_tensor_batch["extra_info"][i * N]["question"]
        assert question in tokenizer.decode(prompt)
    params = request.params
    assert (params.temperature, params.top_p, params.top_k, params.max_new_tokens) == (1.0, 1.0, 0, RESPONSE_LENGTH)

    batch.meta_info["validate"] = True  # validation batches sample with rollout.val_kwargs (greedy by default)
    try:
        assert rollout_request(batch, token_builder, config.actor_rollout_ref.rollout).params.temperature == 0.0
    finally:
        batch.meta_info.pop("validate")


def test_group_size_follows_runs_of_uid():
    assert group_size(np.array(["a", "a", "b", "b"], dtype=object)) == 2
    assert group_size(np.array(["a", "b", "c"], dtype=object)) == 1
    # verl pads validation batches with copies of the first rows: uneven runs, one sample per row
    assert group_size(np.array(["a", "a", "b", "b", "a"], dtype=object)) == 1
    assert group_size(None) == 1


def test_output_has_verl_layout_and_dtypes(config, batch_and_tokenizer, token_builder):
    batch, tokenizer = batch_and_tokenizer
    request = rollout_request(batch, token_builder, config.actor_rollout_ref.rollout)
    groups = generate(request)
    out = to_data_proto(request, groups, PROMPT_LENGTH, RESPONSE_LENGTH, tokenizer.pad_token_id)
    rows = len(batch)
    shapes = {key: tuple(out.batch[key].shape) for key in out.batch.keys()}
    assert shapes == {
        "prompts": (rows, PROMPT_LENGTH),
        "responses": (rows, RESPONSE_LENGTH),
        "response_mask": (rows, RESPONSE_LENGTH),
        "input_ids": (rows, PROMPT_LENGTH + RESPONSE_LENGTH),
        "attention_mask": (rows, PROMPT_LENGTH + RESPONSE_LENGTH),
        "position_ids": (rows, PROMPT_LENGTH + RESPONSE_LENGTH),
        "rollout_log_probs": (rows, RESPONSE_LENGTH),
    }
    assert {out.batch[k].dtype for k in shapes if k != "rollout_log_probs"} == {torch.int64}
    assert out.batch["rollout_log_probs"].dtype == torch.float32
    lengths = set()
    pad = tokenizer.pad_token_id
    for row in range(rows):
        sample, prompt = groups[row // N][row % N], request.prompts[row // N]
        p, r = len(prompt), sample.num_output
        lengths.add(r)
        assert out.batch["prompts"][row].tolist() == [pad] * (PROMPT_LENGTH - p) + prompt
        assert out.batch["responses"][row].tolist() == sample.output_ids + [pad] * (RESPONSE_LENGTH - r)
        assert out.batch["response_mask"][row].tolist() == [1] * r + [0] * (RESPONSE_LENGTH - r)
        assert out.batch["attention_mask"][row].tolist() == [0] * (PROMPT_LENGTH - p) + [1] * (p + r) + [0] * (
            RESPONSE_LENGTH - r
        )
        real = out.batch["attention_mask"][row].bool()
        assert out.batch["input_ids"][row][real].tolist() == prompt + sample.output_ids
        assert out.batch["position_ids"][row][real].tolist() == list(range(p + r))
        assert out.batch["rollout_log_probs"][row, :r].tolist() == pytest.approx(sample.logprobs)
        assert not out.batch["rollout_log_probs"][row, r:].any()
    assert len(lengths) > 1, "the tiny policy should give responses of several lengths (some stop early)"
    assert out.non_tensor_batch["__num_turns__"].tolist() == [2] * rows
    # verl's trainer unions the generation output into its batch row by row
    merged = batch.union(out)
    assert merged.non_tensor_batch["uid"].tolist() == batch.non_tensor_batch["uid"].tolist()


def _answer_sample(sample_id: str, tokenizer, text: str, params) -> Sample:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Sample(sample_id, [1], params, output_ids=ids, logprobs=[-1.0] * len(ids), status=SampleStatus.FINISHED_STOPPED)


def test_verl_reward_loop_and_grpo_accept_the_output(config, batch_and_tokenizer, token_builder):
    batch, tokenizer = batch_and_tokenizer
    request = rollout_request(batch, token_builder, config.actor_rollout_ref.rollout)
    groups = generate(request)
    truths = [batch.non_tensor_batch["reward_model"][i * N]["ground_truth"] for i in range(len(groups))]
    # Sample 0 of every prompt answers correctly, sample 1 wrongly; sample 2 is the tiny policy's own.
    for i, truth in enumerate(truths):
        groups[i][0] = _answer_sample(f"right{i}", tokenizer, f"#### {truth}", request.params)
        groups[i][1] = _answer_sample(f"wrong{i}", tokenizer, f"#### {int(truth) + 1}", request.params)
    out = to_data_proto(request, groups, PROMPT_LENGTH, RESPONSE_LENGTH, tokenizer.pad_token_id)

    # verl's reward-loop worker, as LengthAwareRollout calls it: rows plus the dataset's fields
    scoring = DataProto(batch=out.batch, non_tensor_batch={**batch.non_tensor_batch, **out.non_tensor_batch})
    worker = RewardLoopWorker(config)  # a plain class; verl runs it as a Ray actor on its own event loop
    results = worker.loop.run_until_complete(worker.compute_score_batch(scoring))
    attach_rewards(out, results)

    scores = out.batch["rm_scores"].sum(dim=1).tolist()
    for row in range(len(out)):
        j = row % N
        expected = {0: 1.0, 1: 0.0}.get(j)
        if expected is None:  # the policy's own response, checked by verl's GSM8K function directly
            sample = groups[row // N][j]
            expected = float(gsm8k.compute_score(tokenizer.decode(sample.output_ids, skip_special_tokens=True), truths[row // N]))
        assert scores[row] == expected
        last = int(out.batch["response_mask"][row].sum()) - 1
        assert out.batch["rm_scores"][row].nonzero().flatten().tolist() in ([last], [])
    assert out.meta_info["reward_extra_keys"] == ["acc"]
    assert out.non_tensor_batch["acc"].tolist() == scores

    advantages, returns = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=out.batch["rm_scores"], response_mask=out.batch["response_mask"], index=batch.non_tensor_batch["uid"]
    )
    mask = out.batch["response_mask"].bool()
    assert not advantages[~mask].any()
    per_row = advantages[:, 0]
    for i in range(len(groups)):
        right, wrong, own = per_row[i * N : (i + 1) * N].tolist()
        assert right > 0 > wrong and right > own
        assert right + wrong + own == pytest.approx(0.0, abs=1e-5)


def test_prompt_over_the_limit_names_the_key(make_config, token_builder):
    config = make_config("data.max_prompt_length=64")
    batch, _ = rlhf_batch(config, 1)
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.prompt_length=64.*data\.max_prompt_length"):
        rollout_request(batch, token_builder, config.actor_rollout_ref.rollout)


def test_remax_and_multimodal_batches_are_refused(config, batch_and_tokenizer, token_builder):
    batch, _ = batch_and_tokenizer
    remax = DataProto.from_single_dict(
        {"raw_prompt": batch.non_tensor_batch["raw_prompt"], "__do_sample__": np.ones(len(batch), dtype=bool)}
    )
    with pytest.raises(ValueError, match="algorithm.adv_estimator=remax"):
        rollout_request(remax, token_builder, config.actor_rollout_ref.rollout)
    image_prompt = np.empty(1, dtype=object)
    image_prompt[0] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}]
    with pytest.raises(ValueError, match="multimodal prompts are not supported"):
        rollout_request(DataProto.from_single_dict({"raw_prompt": image_prompt}), token_builder, config.actor_rollout_ref.rollout)


def test_unfinished_or_too_long_samples_are_refused(config, batch_and_tokenizer, token_builder):
    batch, tokenizer = batch_and_tokenizer
    request = rollout_request(batch, token_builder, config.actor_rollout_ref.rollout)
    groups = generate(request)
    groups[0][0].status = SampleStatus.RUNNING
    with pytest.raises(ValueError, match="not finished"):
        to_data_proto(request, groups, PROMPT_LENGTH, RESPONSE_LENGTH, tokenizer.pad_token_id)
    groups = generate(request)
    with pytest.raises(ValueError, match="response_length"):
        to_data_proto(request, groups, PROMPT_LENGTH, 1, tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="groups of 3 samples"):
        to_data_proto(request, groups[:-1], PROMPT_LENGTH, RESPONSE_LENGTH, tokenizer.pad_token_id)
