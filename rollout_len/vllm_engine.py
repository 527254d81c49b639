"""VLLMEngine: the DecodeEngine interface over vLLM's own engine, with the taps PLP reads.

    from rollout_len.vllm_engine import VLLMEngine

    engine = VLLMEngine("smollm2-135m", EngineConfig(max_batch_size=64, tap_layer=-1, tap_entropy=True))
    done = engine.run([Sample("a", ids, SamplingParams(max_new_tokens=64), seed=0)])

vLLM does the batching (continuous, prefix caching) and the sampling; one `step()` is
one step of vLLM's `LLMEngine`, run in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so the taps
can read the model. Taps cost one wrapper around the model's `compute_logits` (the rows vLLM samples
from, in its input-batch order): the final-normed hidden state (transformers' last `hidden_states`,
`tap_layer=-1`) and the entropy of the raw next-token distribution (T = 1), as in `DecodeEngine`. Any other
tap layer reads that decoder layer's output (vLLM keeps it as hidden + residual) through a forward
hook, which needs eager mode (`enforce_eager`): a compiled graph does not call hooks.

Differences from DecodeEngine, by design:
- Random streams are vLLM's (a per-request seed derived from (seed, sample id, tokens so far)): a
  sampled sample is statistically, not bit-for-bit, the same as on the HF engine; greedy ones match.
- An exported sample carries no generator state (`rng_state=None`); imported, it is re-prefilled
  (prompt + generated tokens, vLLM's prefix cache permitting) and continues with a fresh derived seed.
- Log-probs are the policy's own as DecodeEngine reports them (temperature-scaled, unfiltered,
  unpenalized; raw for greedy rows), taken from a copy of the logits the taps see: vLLM is asked for
  none, which saves its own log-softmax and rank over the vocabulary.
- No static batching (the HF-generate baseline), no prefill taps, no KV token budget of ours: vLLM's
  scheduler and KV cache (`kv_cache_gib`) decide admission.

vLLM is not a dependency of the main environment (it needs transformers >= 5.16, verl 0.9.1 pins
< 5.11): it lives in `.venv-vllm` (`make install`); see docs/vllm.md.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import torch

from rollout_len.engine import EngineConfig, EngineStats, StepEngine, StepOutput
from rollout_len.model import EMBEDDED_MODELS, TINY_MODELS, resolve_layer
from rollout_len.sample import Sample, SampleStatus, sample_seed
from rollout_len.sampling import is_greedy

__all__ = ["VLLMEngine", "VLLM_MISSING", "vllm_model_path"]

VLLM_MISSING = (
    "the vllm engine needs vLLM, which lives in its own environment: run `make install` (it builds .venv-vllm) "
    "and use .venv-vllm/bin/rollout-len (docs/vllm.md)"
)

_FINISH = {"stop": SampleStatus.FINISHED_STOPPED, "length": SampleStatus.FINISHED_LENGTH}


def vllm_model_path(name_or_path: str) -> str:
    """What vLLM loads for a model name of `load_policy`: the embedded model's de-quantized folder,
    or the folder / Hugging Face id itself. Tiny random models exist only in memory: save one first."""
    if name_or_path in TINY_MODELS:
        raise ValueError(
            f"{name_or_path!r} is an in-memory test model; the vllm engine loads a folder: save it with "
            "policy.model.save_pretrained(folder) and policy.tokenizer.save_pretrained(folder), and pass the folder"
        )
    if name_or_path in EMBEDDED_MODELS:
        from rollout_len.model import _embedded_dir

        return str(_embedded_dir(name_or_path))
    return name_or_path


@dataclass
class _Request:
    sample: Sample
    started: bool = False  # got a token in this engine (prefilled)


@dataclass
class _Tap:
    req_ids: list[str]  # row -> request, vLLM's input-batch order
    hidden: torch.Tensor | None  # (R, d)
    entropy: torch.Tensor | None  # (R,)
    logits: torch.Tensor  # (R, V) raw logits, float32, a copy (vLLM's sampler edits its own in place)
    lse: torch.Tensor  # (R,) log-sum-exp of logits / T_row (T = 1 for greedy rows)
    temperature: torch.Tensor  # (R,) T_row


class VLLMEngine(StepEngine):
    """DecodeEngine's interface (`add`, `step`, `run`, `export`, `abort`, `running`, `stats`) over vLLM.

    Args:
        model: a `load_policy` name (the embedded "smollm2-135m"), a local folder or a Hugging Face id.
        config: `EngineConfig`; `max_batch_size` is vLLM's `max_num_seqs`; `tap_layer` / `tap_entropy`
            as in DecodeEngine. `kv_token_budget`, `static_batching`, `share_prefill` and `tap_prefill`
            are refused (vLLM's scheduler and prefix cache do these jobs).
        stop_ids: tokens that end a sample unless its params say otherwise (the policy's eos ids).
        context_length: vLLM's `max_model_len` (the model's context, or less to save KV memory).
        vocab_size: token ids must lie in [0, vocab_size).
        dtype: "float32", "bfloat16" or "float16".
        enforce_eager: no torch.compile (fast start; needed to tap a layer other than the last).
        kv_cache_gib: CPU KV cache of this engine (vLLM's VLLM_CPU_KVCACHE_SPACE), in GiB.
        threads: intra-op threads (None: vLLM's default binding).

    Raises:
        ImportError: vLLM is not installed here (`VLLM_MISSING` says where it is).
        ValueError: a setting above that vLLM cannot honour.
    """

    def __init__(
        self,
        model: str,
        config: EngineConfig | None = None,
        *,
        stop_ids: list[int],
        context_length: int,
        vocab_size: int,
        dtype: str = "float32",
        enforce_eager: bool = False,
        kv_cache_gib: float = 2.0,
        threads: int | None = None,
        seed: int = 0,
    ):
        self.config = config or EngineConfig()
        c = self.config
        for name in ("kv_token_budget", "share_prefill"):
            if getattr(c, name):
                raise ValueError(f"the vllm engine does not take EngineConfig.{name} (vLLM's scheduler decides)")
        if c.static_batching:
            raise ValueError("the vllm engine batches continuously; static batching is the HF engine's baseline")
        self.stop_ids, self.context_length, self.vocab_size = list(stop_ids), int(context_length), int(vocab_size)
        # In this process: the taps read the model, and step() is one scheduler + model step.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # vLLM logs to stdout at INFO by default; our benchmarks print their tables there
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_cache_gib:g}"
        if threads:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"  # several engines share the machine's cores
            os.environ["OMP_NUM_THREADS"] = str(threads)
            torch.set_num_threads(threads)
        try:
            from vllm import EngineArgs
            from vllm.v1.engine.llm_engine import LLMEngine
        except ImportError as err:
            raise ImportError(f"{VLLM_MISSING} ({err})") from err

        path = vllm_model_path(model)
        self.core = LLMEngine.from_engine_args(
            EngineArgs(
                model=path,
                skip_tokenizer_init=True,
                dtype=dtype,
                max_num_seqs=c.max_batch_size,
                max_model_len=self.context_length,
                seed=seed,
                enforce_eager=enforce_eager,
                enable_prefix_caching=True,
                async_scheduling=False,  # step() returns this step's tokens, with this step's taps
                # Whole prefills: vLLM 0.32 on CPU fails on a seeded request whose prefill is chunked
                # (its sampler rewinds a CPU generator's offset, which CPU generators do not have).
                enable_chunked_prefill=False,
                max_num_batched_tokens=max(self.context_length, 8192),
            )
        )
        self.model = self._runner().model
        num_layers = self.model.config.num_hidden_layers
        self.tap_layer = None if c.tap_layer is None else resolve_layer(c.tap_layer, num_layers, "tap_layer")
        self._hooked_layer = None
        if self.tap_layer is not None and self.tap_layer < num_layers:
            if not enforce_eager:
                raise ValueError(
                    f"tap_layer={c.tap_layer} (decoder layer {self.tap_layer} of {num_layers}) needs the vllm engine "
                    "in eager mode (enforce_eager=True): a compiled graph does not call hooks. The last layer "
                    "(tap_layer=-1) is tapped without one."
                )
            self._hooked_layer = self.model.model.layers[self.tap_layer - 1]
            self._hooked_layer.register_forward_hook(self._layer_hook)
        self._layer_out: torch.Tensor | None = None
        self._tap: _Tap | None = None
        self._compute_logits = self.model.compute_logits
        self.model.compute_logits = self._tapped_logits  # the instance attribute shadows the method
        self._requests: dict[str, _Request] = {}
        self.stats = EngineStats()

    # ------------------------------------------------------------------ public API (DecodeEngine's)

    def add(self, sample: Sample) -> None:
        """Queue a new sample, or import an exported one (re-prefilled; it continues where it stopped)."""
        sid = sample.sample_id
        self.check_new(sample, sid in self._requests, self.vocab_size, self.context_length)
        params = self._params(sample)
        self.core.add_request(sid, {"prompt_token_ids": sample.prompt_ids + sample.output_ids}, params)
        sample.status = SampleStatus.WAITING
        self._requests[sid] = _Request(sample)

    def step(self) -> StepOutput:
        """One vLLM engine step: rows of samples that got a token, decode rows first, then the samples
        prefilled now (their hidden/entropy rows are the prompt's last position, as in DecodeEngine)."""
        t0 = time.perf_counter()
        self._tap = None
        results = self.core.step()
        elapsed = time.perf_counter() - t0
        tap = self._tap
        row_of = {rid: i for i, rid in enumerate(tap.req_ids)} if tap is not None else {}
        decode, prefill = [], []
        for result in results:
            req = self._requests.get(result.request_id)
            if req is None or not result.outputs:
                continue
            (done,) = result.outputs
            (decode if req.started else prefill).append((req, done))
        out = StepOutput.make_empty()
        if (decode or prefill) and tap is None:
            raise RuntimeError("vLLM sampled tokens without calling compute_logits: the taps cannot follow it")
        rows: list[int] = []
        spans: list[tuple[Sample, int]] = []  # each sample's rows are contiguous: (sample, first row)
        prefill_tokens = 0
        for req, done in decode + prefill:
            sample = req.sample
            if not req.started:
                prefill_tokens += sample.num_tokens
            req.started = True
            sample.status = SampleStatus.RUNNING
            row = row_of[sample.sample_id]
            spans.append((sample, len(rows)))
            for token in done.token_ids:
                sample.output_ids.append(int(token))
                out.sample_ids.append(sample.sample_id)
                out.tokens.append(int(token))
                rows.append(row)
            if done.finish_reason is not None:
                sample.status = _FINISH.get(done.finish_reason, SampleStatus.FINISHED_ABORTED)
                del self._requests[sample.sample_id]
                out.finished.append(sample)
        out.num_decode_rows = sum(len(d.token_ids) for _, d in decode)
        if rows:
            index = torch.tensor(rows)
            # The policy's log-prob, as DecodeEngine reports it: temperature-scaled, unfiltered, unpenalized.
            logit = tap.logits[index, torch.tensor(out.tokens)]
            out.logprobs = (logit / tap.temperature[index] - tap.lse[index]).tolist()
            for (sample, lo), (_, hi) in zip(spans, spans[1:] + [(None, len(rows))]):
                sample.logprobs.extend(out.logprobs[lo:hi])
            out.entropy = tap.entropy[index] if tap.entropy is not None else None
            out.hidden = tap.hidden[index] if tap.hidden is not None else None
        self.stats.steps += 1
        self.stats.decode_tokens += len(out.tokens)
        if prefill_tokens:  # vLLM mixes prefill and decode in one step; such a step counts as prefill
            self.stats.prefill_tokens += prefill_tokens
            self.stats.prefill_time_s += elapsed
        else:
            self.stats.decode_time_s += elapsed
        if out.num_decode_rows:
            self.stats.decode_batch_sizes.append(out.num_decode_rows)
        return out

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_running(self) -> int:
        return sum(r.started for r in self._requests.values())

    @property
    def num_waiting(self) -> int:
        return sum(not r.started for r in self._requests.values())

    @property
    def context_tokens(self) -> int:
        """Tokens the running samples attend to: what the next decode step reads."""
        return sum(r.sample.num_tokens for r in self._requests.values() if r.started)

    def running(self) -> list[tuple[Sample, None]]:
        """Every running sample (no generator state: vLLM's does not travel)."""
        return [(r.sample, None) for r in self._requests.values() if r.started]

    def run_alone(self, samples: list[Sample]) -> dict[str, int]:
        """vLLM alone: the same requests (seeds, stops, budgets, the sampled token's log-prob) stepped
        with no taps and none of this class's bookkeeping, as a user of bare vLLM sends them. The
        baseline a tapped rollout must keep up with. Returns each sample's output length; the samples
        are not changed."""
        if self._requests:
            raise RuntimeError("run_alone needs an empty engine")
        for sample in samples:
            params = self._params(sample, logprobs=0)  # an RL rollout needs them: vLLM's own way
            self.core.add_request(sample.sample_id, {"prompt_token_ids": sample.prompt_ids}, params)
        lengths = {s.sample_id: 0 for s in samples}
        with self.untapped():
            while self.core.has_unfinished_requests():
                for result in self.core.step():
                    lengths[result.request_id] += sum(len(o.token_ids) for o in result.outputs)
        return lengths

    def clear(self) -> None:
        """Abort every sample: the engine is empty (the model and its weights stay)."""
        for sid in list(self._requests):
            self.abort(sid)

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """New weights by their Hugging Face names, through vLLM's in-place reload (the model's own
        `load_weights`, q/k/v and gate/up stacked as vLLM keeps them, then vLLM's post-load processing:
        what verl's vLLM rollout relies on). Give every tensor: the reload rebuilds whole layers.
        The prefix cache is dropped (its KV came from the old weights)."""
        if self._requests:
            raise RuntimeError("weights change between steps, not while samples are running")
        self._runner().reload_weights(weights_iterator=iter(state.items()))
        self.core.reset_prefix_cache()

    @contextlib.contextmanager
    def untapped(self):
        """vLLM's own compute_logits while inside (bare-vLLM benchmarks on the same engine)."""
        self.model.compute_logits = self._compute_logits
        try:
            yield self
        finally:
            self.model.compute_logits = self._tapped_logits

    # ------------------------------------------------------------------ internals

    def _params(self, sample: Sample, logprobs: int | None = None):
        """vLLM's sampling parameters for what is left of a sample. `logprobs` None: the taps give the
        sampled token's log-prob, so vLLM computes none (0: vLLM's own, as bare vLLM returns it)."""
        from vllm import SamplingParams as VLLMParams
        from vllm.sampling_params import RequestOutputKind

        p = sample.params
        return VLLMParams(
            n=1,
            temperature=0.0 if is_greedy(p.temperature) else p.temperature,
            top_p=p.top_p,
            top_k=p.top_k if p.top_k > 0 else -1,
            repetition_penalty=p.repetition_penalty,
            max_tokens=min(p.max_new_tokens - sample.num_output, self.context_length - sample.num_tokens),
            # A fresh stream for what is left: vLLM's generator state cannot travel with the sample.
            seed=sample_seed(sample.seed, f"{sample.sample_id}@{sample.num_output}") & 0x7FFFFFFF,
            logprobs=logprobs,
            ignore_eos=True,  # stops are ours: stop_token_ids below
            stop_token_ids=[] if p.ignore_stop else list(p.stop_ids if p.stop_ids is not None else self.stop_ids),
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,
        )

    def _runner(self):
        worker = self.core.engine_core.engine_core.model_executor.driver_worker
        return getattr(worker, "worker", worker).model_runner

    def _remove(self, sample_id: str, status: SampleStatus) -> Sample:
        req = self._requests.pop(sample_id, None)
        if req is None:
            raise KeyError(f"sample {sample_id!r} is not in this engine")
        self.core.abort_request([sample_id])
        req.sample.status = status
        req.sample.rng_state = None
        return req.sample

    def _layer_hook(self, module, args, output) -> None:
        hidden, residual = output  # vLLM's decoder layers return the stream split in two
        self._layer_out = hidden if residual is None else hidden + residual

    def _tapped_logits(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """vLLM's compute_logits, recording each sampled row's tap state, entropy and log-sum-exps."""
        logits = self._compute_logits(hidden_states, *args, **kwargs)
        runner = self._runner()
        # vLLM appends "-" and 8 random characters to each request id it is given
        req_ids = [rid.rsplit("-", 1)[0] for rid in runner.input_batch.req_ids[: logits.shape[0]]]
        raw = logits.float()
        if raw.data_ptr() == logits.data_ptr():
            raw = raw.clone()
        temps = [self._temperature(rid) for rid in req_ids]
        temperature = torch.tensor(temps, dtype=raw.dtype)
        # One softmax gives both: lse = max - log p_max (p_max >= 1/V, so the log is safe), and
        # H = lse - sum p * logit. Half the passes over (R, V) of logsumexp + log_softmax.
        top, where = raw.max(dim=-1)
        probs = torch.softmax(raw, dim=-1)
        lse_1 = top - torch.log(probs.gather(1, where[:, None])[:, 0])
        scaled = any(t != 1.0 for t in temps)
        lse = torch.logsumexp(raw / temperature[:, None], dim=-1) if scaled else lse_1
        hidden = None
        if self.tap_layer is not None:
            if self._hooked_layer is None:
                hidden = hidden_states.float().clone()
            else:
                num_reqs = len(req_ids)
                last = torch.as_tensor(runner.query_start_loc.np[1 : num_reqs + 1], dtype=torch.long) - 1
                hidden = self._layer_out[last].float()
        entropy = lse_1 - (probs * raw).sum(-1) if self.config.tap_entropy else None
        self._tap = _Tap(req_ids, hidden, entropy, raw, lse, temperature)
        return logits

    def _temperature(self, req_id: str) -> float:
        req = self._requests.get(req_id)
        t = req.sample.params.temperature if req is not None else 1.0
        return 1.0 if is_greedy(t) else float(t)
