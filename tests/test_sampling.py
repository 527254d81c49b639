import pytest
import torch

from rollout_len.sample import SamplingParams
from rollout_len.sampling import apply_repetition_penalty, sample_next


def _gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_greedy_rows_take_the_argmax_and_report_raw_logprob():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    tokens, logp = sample_next(logits, [0.0, 0.0], [1.0, 1.0], [0, 0], _gens(2))
    assert tokens.tolist() == [1, 0]
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])


def test_empirical_frequencies_match_the_tempered_distribution():
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0])
    probs = torch.softmax(logits / 0.7, -1)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(4000):
        token, _ = sample_next(logits[None], [0.7], [1.0], [0], [g])
        counts[token] += 1
    # 4000 draws: the standard error of each frequency is below 0.008.
    torch.testing.assert_close(counts / 4000, probs, atol=0.03, rtol=0)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    seen_k, seen_p = set(), set()
    for seed in range(300):
        seen_k.add(int(sample_next(logits[None], [1.0], [1.0], [2], _gens(1, seed))[0]))
        seen_p.add(int(sample_next(logits[None], [1.0], [0.7], [0], _gens(1, seed))[0]))
    assert seen_k == {0, 1}
    assert seen_p == {0, 1}  # 0.5 < 0.7, so the token that crosses 0.7 (index 1) is kept


def test_logprob_is_of_the_tempered_unfiltered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    tokens, logp = sample_next(logits, [2.0], [0.5], [0], _gens(1))
    assert tokens.item() == 0
    assert logp.item() == pytest.approx(torch.log_softmax(logits / 2.0, -1)[0, 0].item())


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -1.0, 3.0, 0.5], [2.0, -1.0, 3.0, 0.5]])
    out = apply_repetition_penalty(logits, [2.0, 1.0], [[0, 1, 1], [0, 1]])
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 3.0, 0.5], [2.0, -1.0, 3.0, 0.5]]))
    assert logits[0, 0] == 2.0  # the input is left alone


def test_repetition_penalty_steers_the_draw_but_not_the_reported_logprob():
    logits = torch.tensor([[3.0, 2.0, 0.0]])
    tokens, logp = sample_next(logits, [0.0], [1.0], [0], _gens(1), repetition_penalties=[2.0], seen=[[0]])
    assert tokens.item() == 1  # 3 / 2 < 2: the seen argmax loses
    assert logp.item() == pytest.approx(torch.log_softmax(logits, -1)[0, 1].item())
    counts = torch.zeros(3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3000):
        counts[sample_next(logits, [1.0], [1.0], [0], [g], repetition_penalties=[2.0], seen=[[0]])[0]] += 1
    torch.testing.assert_close(counts / 3000, torch.softmax(torch.tensor([1.5, 2.0, 0.0]), -1), atol=0.03, rtol=0)


def test_a_penalty_that_overflows_the_logits_is_an_error_naming_the_sample():
    logits = torch.tensor([[30.0, 1.0, -2.0]])
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match="after the repetition penalty.*s7"):
            sample_next(logits, [temperature], [1.0], [0], _gens(1), ["s7"], repetition_penalties=[1e-40], seen=[[0]])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "1.2", True])
def test_repetition_penalty_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=bad)
