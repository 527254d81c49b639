"""DataProto <-> samples against real verl code: RLHFDataset batches in, verl's reward loop and GRPO out."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import tiny
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.trainer.ppo import core_algos
from verl.utils.reward_score import gsm8k
from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder
from verl_setup import rlhf_batch

from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.sample import Sample, SampleStatus
from rollout_len.verl.convert import attach_rewards, encode_prompts, to_data_proto, to_samples

N = 3
PROMPT_LENGTH, RESPONSE_LENGTH = 512, 12


@pytest.fixture(scope="module")
def config(make_config):
    return make_config()


@pytest.fixture(scope="module")
def rollout(config):
    return config.actor_rollout_ref.rollout


@pytest.fixture(scope="module")
def batch_and_tokenizer(config):
    return rlhf_batch(config, N)


@pytest.fixture(scope="module")
def token_builder(batch_and_tokenizer):
    return create_continuous_token_builder(batch_and_tokenizer[1], hf_model_type="llama")


def generate(samples: list[Sample]) -> list[Sample]:
    """Real responses from the tiny policy (the model in the config's folder), filled into `samples`.

    The random policy rarely samples its end token, so a quarter of the vocabulary stops a
    response here: responses then end at different lengths, as real ones do.
    """
    for sample in samples:
        sample.params = replace(sample.params, stop_ids=tuple(range(32, 96)))
    DecodeEngine(tiny("llama"), EngineConfig(max_batch_size=len(samples))).run(samples)
    return samples


def chat_ids(tokenizer, messages) -> list[int]:
    expected = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    return list(expected["input_ids"] if hasattr(expected, "keys") else expected)


def test_one_sample_per_row_with_its_own_prompt_and_uid(batch_and_tokenizer, token_builder, rollout):
    batch, tokenizer = batch_and_tokenizer
    samples = to_samples(batch, token_builder, rollout, seed=7)
    assert [s.sample_id for s in samples] == [str(row) for row in range(len(batch))]
    assert [s.group_id for s in samples] == batch.non_tensor_batch["uid"].tolist()
    assert {s.seed for s in samples} == {7}
    for row, sample in enumerate(samples):
        assert sample.prompt_ids == chat_ids(tokenizer, batch.non_tensor_batch["raw_prompt"][row])
        assert batch.non_tensor_batch["extra_info"][row]["question"] in tokenizer.decode(sample.prompt_ids)
        assert sample.status == SampleStatus.WAITING and not sample.output_ids
    params = samples[0].params
    assert (params.temperature, params.top_p, params.top_k, params.max_new_tokens) == (1.0, 1.0, 0, RESPONSE_LENGTH)

    batch.meta_info["validate"] = True  # validation batches sample with rollout.val_kwargs (greedy by default)
    try:
        assert to_samples(batch, token_builder, rollout, seed=0)[0].params.temperature == 0.0
    finally:
        batch.meta_info.pop("validate")


def test_rows_are_not_grouped_by_adjacency(batch_and_tokenizer, token_builder, rollout):
    """verl's padded validation batches: four different prompts, uids [a, a, b, b], n = 1."""
    batch, tokenizer = batch_and_tokenizer
    four = batch[[0, N, 2 * N, 3 * N]]  # one row of each problem
    four.non_tensor_batch["uid"] = np.array(["a", "a", "b", "b"], dtype=object)
    samples = to_samples(four, token_builder, rollout, seed=0)
    assert [s.group_id for s in samples] == ["a", "a", "b", "b"]
    prompts = [s.prompt_ids for s in samples]
    assert prompts == [chat_ids(tokenizer, m) for m in four.non_tensor_batch["raw_prompt"]]
    assert len({tuple(p) for p in prompts}) == 4

    four.non_tensor_batch.pop("uid")  # no uid column: every row is its own group
    assert [s.group_id for s in to_samples(four, token_builder, rollout, seed=0)] == [None] * 4


def test_identical_messages_are_tokenized_once(batch_and_tokenizer, token_builder):
    batch, _ = batch_and_tokenizer
    calls = []

    class Counting:
        def build_initial_tokens(self, messages):
            calls.append(messages)
            return token_builder.build_initial_tokens(messages)

    encoded = encode_prompts(list(batch.non_tensor_batch["raw_prompt"]), Counting(), PROMPT_LENGTH)
    assert len(encoded) == len(batch) and len(calls) == len(batch) // N
    assert encoded[0] == encoded[1] and encoded[0] is not encoded[1]  # equal, not shared


def test_output_has_verl_layout_and_dtypes(batch_and_tokenizer, token_builder, rollout):
    batch, tokenizer = batch_and_tokenizer
    samples = generate(to_samples(batch, token_builder, rollout, seed=0))
    out = to_data_proto(samples, PROMPT_LENGTH, RESPONSE_LENGTH, tokenizer.pad_token_id)
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
    for row, sample in enumerate(samples):  # row r is samples[r], with its own prompt
        prompt = sample.prompt_ids
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


def _answer(sample: Sample, tokenizer, text: str) -> Sample:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return replace(sample, output_ids=ids, logprobs=[-1.0] * len(ids), status=SampleStatus.FINISHED_STOPPED)


def test_verl_reward_loop_and_grpo_accept_the_output(config, batch_and_tokenizer, token_builder, rollout):
    batch, tokenizer = batch_and_tokenizer
    samples = generate(to_samples(batch, token_builder, rollout, seed=0))
    truths = [batch.non_tensor_batch["reward_model"][row]["ground_truth"] for row in range(len(batch))]
    # In every group (N rows of one uid) the first row answers correctly, the second wrongly; the third is the
    # tiny policy's own response.
    for row, truth in enumerate(truths):
        if row % N == 0:
            samples[row] = _answer(samples[row], tokenizer, f"#### {truth}")
        elif row % N == 1:
            samples[row] = _answer(samples[row], tokenizer, f"#### {int(truth) + 1}")
    out = to_data_proto(samples, PROMPT_LENGTH, RESPONSE_LENGTH, tokenizer.pad_token_id)

    # verl's reward-loop worker, as LengthAwareRollout calls it: rows plus the dataset's fields
    scoring = DataProto(batch=out.batch, non_tensor_batch={**batch.non_tensor_batch, **out.non_tensor_batch})
    worker = RewardLoopWorker(config)  # a plain class; verl runs it as a Ray actor on its own event loop
    results = worker.loop.run_until_complete(worker.compute_score_batch(scoring))
    attach_rewards(out, results)

    scores = out.batch["rm_scores"].sum(dim=1).tolist()
    for row, sample in enumerate(samples):
        expected = {0: 1.0, 1: 0.0}.get(row % N)
        if expected is None:  # the policy's own response, checked by verl's GSM8K function directly
            text = tokenizer.decode(sample.output_ids, skip_special_tokens=True)
            expected = float(gsm8k.compute_score(text, truths[row]))
        assert scores[row] == expected
        last = int(out.batch["response_mask"][row].sum()) - 1
        assert out.batch["rm_scores"][row].nonzero().flatten().tolist() in ([last], [])
    assert out.meta_info["reward_extra_keys"] == ["acc"]
    assert out.non_tensor_batch["acc"].tolist() == scores

    advantages, returns = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=out.batch["rm_scores"],
        response_mask=out.batch["response_mask"],
        index=batch.non_tensor_batch["uid"],
    )
    mask = out.batch["response_mask"].bool()
    assert not advantages[~mask].any()
    per_row = advantages[:, 0]
    for start in range(0, len(batch), N):
        right, wrong, own = per_row[start : start + N].tolist()
        assert right > 0 > wrong and right > own
        assert right + wrong + own == pytest.approx(0.0, abs=1e-5)


def test_prompt_over_the_limit_names_the_key(make_config, token_builder):
    config = make_config("data.max_prompt_length=64")
    batch, _ = rlhf_batch(config, 1)
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.prompt_length=64.*data\.max_prompt_length"):
        to_samples(batch, token_builder, config.actor_rollout_ref.rollout, seed=0)


def test_remax_and_multimodal_batches_are_refused(batch_and_tokenizer, token_builder, rollout):
    batch, _ = batch_and_tokenizer
    remax = DataProto.from_single_dict(
        {"raw_prompt": batch.non_tensor_batch["raw_prompt"], "__do_sample__": np.ones(len(batch), dtype=bool)}
    )
    with pytest.raises(ValueError, match="algorithm.adv_estimator=remax"):
        to_samples(remax, token_builder, rollout, seed=0)
    image_prompt = np.empty(1, dtype=object)
    image_prompt[0] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}]
    with pytest.raises(ValueError, match="multimodal prompts are not supported"):
        to_samples(DataProto.from_single_dict({"raw_prompt": image_prompt}), token_builder, rollout, seed=0)
    no_prompts = DataProto.from_single_dict({"uid": np.array(["a"], dtype=object)})
    with pytest.raises(ValueError, match="no 'raw_prompt'"):
        to_samples(no_prompts, token_builder, rollout, seed=0)


def test_unfinished_or_too_long_samples_are_refused(batch_and_tokenizer, token_builder, rollout):
    batch, tokenizer = batch_and_tokenizer
    samples = generate(to_samples(batch, token_builder, rollout, seed=0))
    with pytest.raises(ValueError, match="response_length"):
        to_data_proto(samples, PROMPT_LENGTH, 1, tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="more than prompt_length=8"):
        to_data_proto(samples, 8, RESPONSE_LENGTH, tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="at least one sample"):
        to_data_proto([], PROMPT_LENGTH, RESPONSE_LENGTH, tokenizer.pad_token_id)
    samples[0].status = SampleStatus.RUNNING
    with pytest.raises(ValueError, match="not finished"):
        to_data_proto(samples, PROMPT_LENGTH, RESPONSE_LENGTH, tokenizer.pad_token_id)
