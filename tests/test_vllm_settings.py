"""The vLLM backend's settings, checked where vLLM is not installed (the main environment): clear
errors that say where it lives, before any model loads. Its behaviour: tests/vllm_backend (in .venv-vllm)."""

import importlib.util

import pytest

from rollout_len.cli import main
from rollout_len.rollout.coordinator import RolloutConfig
from rollout_len.rollout.worker import RolloutWorker

no_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")


def test_engine_names_are_checked():
    with pytest.raises(ValueError, match=r"RolloutConfig.engine must be one of \['hf', 'vllm'\], got 'vllm-gpu'"):
        RolloutConfig(engine="vllm-gpu")
    with pytest.raises(ValueError, match="RolloutConfig.engine_eager must be true or false"):
        RolloutConfig(engine_eager="yes")
    with pytest.raises(ValueError, match="engine must be one of"):
        RolloutWorker(0, "tiny-llama", slots=2, engine="sglang")


def test_a_hooked_tap_layer_needs_eager_mode():
    with pytest.raises(ValueError, match="RolloutConfig.tap_layer=10 with engine='vllm' needs engine_eager=true"):
        RolloutConfig(engine="vllm", tap_layer=10)


def test_vllm_engine_on_a_gpu_device_is_refused():
    with pytest.raises(ValueError, match="RolloutConfig.device must be 'cpu' with engine='vllm'"):
        RolloutConfig(engine="vllm", device="cuda")


@no_vllm
def test_vllm_engine_without_vllm_says_where_it_lives():
    with pytest.raises(ValueError, match=r"RolloutConfig.engine='vllm': .*make install.*\.venv-vllm"):
        RolloutConfig(engine="vllm")


@no_vllm
@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "engine", "--engine", "vllm"],
        ["bench", "rollout", "--engine", "vllm", "--quick"],
    ],
)
def test_cli_vllm_without_vllm_is_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rollout-len: error: --engine vllm: the vllm engine needs vLLM") and ".venv-vllm" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "rollout", "--engine-eager"], "--engine-eager applies to --engine vllm only"),
        (["bench", "rollout", "--engine", "vllm", "--mode", "partial"], "apply to --mode sync only"),
        (["bench", "engine", "--engine", "vllm", "--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["bench", "engine", "--engine", "vllm", "--seed", "1"], "--seed applies to --engine hf only"),
        (["bench", "engine", "--repeats", "2"], "--repeats applies to --engine vllm only"),
    ],
)
def test_cli_vllm_flags_are_checked(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
