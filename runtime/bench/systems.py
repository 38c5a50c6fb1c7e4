"""The systems `anymodel bench` times, one workload interface for all of them:

    anymodel-native / anymodel-transformers   our engine (continuous batching, paged KV)
    hf-generate                               `model.generate`, the whole batch left-padded at once
    hf-continuous-batching                    Transformers' ContinuousBatchingManager (generate_batch)

`system.run(prompts, output_len) -> RunResult` with the greedy tokens and the wall-clock time of
every token, so each system reports throughput, TTFT and ITL the same way.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from anymodel.model_facts import text_config_of

PAD_ID = 0


@dataclass
class RunResult:
    elapsed: float  # seconds, first request submitted -> last token
    tokens: list[list[int]]  # new tokens per prompt
    token_times: list[list[float]]  # seconds since start, one per new token

    def figures(self, num_input_tokens: int) -> dict:
        n_out = sum(len(t) for t in self.tokens)
        gaps = [b - a for times in self.token_times for a, b in zip(times, times[1:])]
        itl = statistics.mean(gaps) if gaps else float("nan")
        return {
            "elapsed_s": self.elapsed,
            "output_tok_s": n_out / self.elapsed,
            "total_tok_s": (n_out + num_input_tokens) / self.elapsed,
            "ttft_ms": 1e3 * statistics.mean(t[0] for t in self.token_times),
            "itl_ms": 1e3 * itl,
            "decode_tok_s": 1.0 / itl if gaps else float("nan"),  # per request, after its first token
        }


# ---------------------------------------------------------------- anymodel

class AnymodelSystem:
    def __init__(self, model_dir: Path, tokenizer: Path | None, impl: str, num_prompts: int, total_len: int) -> None:
        from anymodel import LLM

        self.name = f"anymodel-{impl}"
        blocks = num_prompts * math.ceil(total_len / 16) + 16
        # No prefix caching: repeats re-send the same prompts, and the baselines cache nothing.
        self.llm = LLM(str(model_dir), tokenizer=str(tokenizer) if tokenizer else None, model_impl=impl,
                       dtype="float32", enable_prefix_caching=False, num_kv_blocks=blocks, block_size=16)

    def run(self, prompts: list[list[int]], output_len: int) -> RunResult:
        from anymodel.params import RequestOutputKind, SamplingParams

        engine = self.llm.engine
        params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
        start = time.perf_counter()
        ids = []
        for p in prompts:
            ids.append(engine.new_request_id())
            engine.add_request(ids[-1], {"prompt_token_ids": p}, params)
        tokens = {i: [] for i in ids}
        times = {i: [] for i in ids}
        while engine.has_unfinished():
            outs = engine.step()
            now = time.perf_counter() - start
            for o in outs:
                new = o.outputs[0].token_ids
                tokens[o.request_id].extend(new)
                times[o.request_id].extend([now] * len(new))
        return RunResult(time.perf_counter() - start, [tokens[i] for i in ids], [times[i] for i in ids])

    def close(self) -> None:
        self.llm.engine.shutdown()


# ---------------------------------------------------------------- Transformers

def load_hf_model(model_dir: Path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    model.generation_config = GenerationConfig(do_sample=False, pad_token_id=PAD_ID)  # no EOS: never stops early
    return model


class _TokenClock:
    """A generate() streamer that only notes when each step's tokens arrive (the first put is the prompt)."""

    def __init__(self, start: float) -> None:
        self.start, self.times, self.seen_prompt = start, [], False

    def put(self, value) -> None:
        if self.seen_prompt:
            self.times.append(time.perf_counter() - self.start)
        self.seen_prompt = True

    def end(self) -> None:
        pass


class HFGenerateSystem:
    name = "hf-generate"

    def __init__(self, model) -> None:
        self.model = model

    @torch.inference_mode()
    def run(self, prompts: list[list[int]], output_len: int) -> RunResult:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[PAD_ID] * (width - len(p)) + p for p in prompts])  # left padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        start = time.perf_counter()
        clock = _TokenClock(start)
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=output_len,
                                  min_new_tokens=output_len, do_sample=False, streamer=clock)
        elapsed = time.perf_counter() - start
        tokens = out[:, width:].tolist()
        return RunResult(elapsed, tokens, [list(clock.times) for _ in prompts])

    def close(self) -> None:
        pass


class HFContinuousBatchingSystem:
    """A ContinuousBatchingManager sized like our engine: 2048-token steps, a KV cache just big
    enough, no block sharing (no prefix cache). It is opened for each run, outside the timed part:
    left open, its idle background thread takes CPU (and the GIL) from the systems measured next
    (tiny preset: ours 3120 -> 2195 tok/s)."""

    name = "hf-continuous-batching"

    def __init__(self, model, num_prompts: int, total_len: int) -> None:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.model = model
        self.generation_config = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=PAD_ID,
                                                  max_new_tokens=total_len)
        self.cb_config = ContinuousBatchingConfig(num_blocks=num_prompts * math.ceil(total_len / 256) + 4,
                                                  max_batch_tokens=2048, allow_block_sharing=False)

    def run(self, prompts: list[list[int]], output_len: int) -> RunResult:
        context = self.model.continuous_batching_context_manager(
            generation_config=self.generation_config, continuous_batching_config=self.cb_config, block=True,
            timeout=5, warmup=False,
        )
        manager = context.__enter__()
        try:
            return self._timed_run(manager, prompts, output_len)
        finally:
            context.__exit__(None, None, None)

    @staticmethod
    def _timed_run(manager, prompts: list[list[int]], output_len: int) -> RunResult:
        start = time.perf_counter()
        ids = manager.add_requests(inputs=prompts, max_new_tokens=output_len, record_timestamps=True)
        done = {}
        while len(done) < len(ids):
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished():
                done[result.request_id] = result
            elif result is None and not manager.is_running():
                raise RuntimeError("Transformers' continuous batching thread stopped")
        elapsed = time.perf_counter() - start
        outs = [done[i] for i in ids]
        for o in outs:
            if o.error:
                raise RuntimeError(f"Transformers' continuous batching failed: {o.error}")
        return RunResult(elapsed, [o.generated_tokens for o in outs], [[t - start for t in o.timestamps] for o in outs])

    def close(self) -> None:
        pass


def build_systems(model_dir: Path, tokenizer: Path | None, impl: str, compare_hf: bool, num_prompts: int, total_len: int) -> list:
    """hf-generate first when comparing (it is the token reference), then ours, then HF's CB."""
    systems = []
    model = load_hf_model(model_dir) if compare_hf else None
    if compare_hf:
        systems.append(HFGenerateSystem(model))
    for name in (["native", "transformers"] if impl == "both" else [impl]):
        systems.append(AnymodelSystem(model_dir, tokenizer, name, num_prompts, total_len))
    if compare_hf:
        systems.append(HFContinuousBatchingSystem(model, num_prompts, total_len))
    return systems


# ---------------------------------------------------------------- model and tokenizer

def prepare_model_dir(model: str | None, preset: dict | None, workdir: Path, seed: int) -> tuple[Path, Path | None, int]:
    """(model dir, tokenizer dir when the model has none, vocab size): a preset or a config-only dir
    gets seeded random weights written under `workdir`."""
    from transformers import AutoConfig, LlamaConfig

    if model is None:
        config = LlamaConfig(**preset, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=PAD_ID)
        source = None
    else:
        source = Path(model)
        config = AutoConfig.from_pretrained(str(source))
    vocab = text_config_of(config).vocab_size
    model_dir = source
    if source is None or not _has_weights(source):
        model_dir = workdir / "model"
        write_random_checkpoint(config, model_dir, seed)
    if (model_dir / "tokenizer.json").exists() or (model_dir / "tokenizer_config.json").exists():
        return model_dir, None, vocab
    ours = model_dir != source  # a dir we wrote can take the tokenizer; a user's dir stays untouched
    tokenizer = model_dir if ours else workdir / "tokenizer"
    write_word_tokenizer(vocab, tokenizer)
    return model_dir, None if ours else tokenizer, vocab


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))


@torch.no_grad()
def write_random_checkpoint(config, out: Path, seed: int) -> None:
    """Seeded weights with peaky logits (embeddings N(0, 0.5), matrices N(0, 1/H)), so that float
    noise rarely flips a greedy argmax between implementations."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    hidden = text_config_of(config).hidden_size
    big = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, 0.5 if id(p) in big else hidden**-0.5, generator=gen)
        elif name.endswith("bias"):
            p.normal_(0.0, 0.02, generator=gen)
        else:
            p.fill_(1.0)
    model.tie_weights()
    model.save_pretrained(str(out), safe_serialization=True)


def write_word_tokenizer(vocab: int, out: Path) -> None:
    """A word-level tokenizer with `vocab` entries (<pad> <s> </s> <unk> t4 t5 ...): enough to detokenize."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"t{i}" for i in range(4, vocab)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(out))
