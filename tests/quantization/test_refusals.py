"""Nothing loads quantized tensors as if plain: what anymodel cannot load exactly is refused with a
message naming the argument / method and the supported ones (decided before any weight is read)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from anymodel import LLM
from anymodel.config import EngineArgs
from anymodel.distributed import ParallelState
from anymodel.model_loader import decide
from anymodel.server.cli import main as cli_main
from tests.models.zoo import build_tiny_model, tiny_config
from tests.quantization.checkpoints import block_fp8, quantized_pair

SUPPORTED = r"supported: \['fp8', 'compressed-tensors', 'awq', 'gptq'\]"


def _with_config(path, **fields):
    config = json.loads((path / "config.json").read_text())
    config.update(fields)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def fp8_dir(tmp_path_factory):
    return quantized_pair("llama", tmp_path_factory.mktemp("fp8"), block_fp8((16, 16)))[0]


def test_unsupported_method_names_it_and_the_supported_ones(tmp_path):
    path = _with_config(build_tiny_model("llama", tmp_path), quantization_config={"quant_method": "hqq"})
    with pytest.raises(ValueError, match=r"unsupported quantization method 'hqq' .*" + SUPPORTED):
        LLM(str(path), dtype="float32")


def test_multimodal_text_config_quantization_is_read(tmp_path):
    config = tiny_config("llama")
    text = tiny_config("llama")
    text.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    config.text_config = text
    decision = decide(EngineArgs(), config, tmp_path, ParallelState())
    assert (decision.impl, decision.rule) == ("refuse", "quantization")
    assert decision.reason.startswith("quantization method 'bitsandbytes' is not supported: its NF4 / FP4")


def test_quantization_argument_must_agree_with_the_checkpoint(fp8_dir, tmp_path):
    with pytest.raises(ValueError, match=r"quantization='awq' contradicts the checkpoint's quantization_config "
                                         r"\(quant_method 'fp8'\)"):
        LLM(str(fp8_dir), dtype="float32", quantization="awq")
    plain = build_tiny_model("llama", tmp_path)
    with pytest.raises(ValueError, match=r"quantization='fp8': the checkpoint has no quantization_config"):
        LLM(str(plain), dtype="float32", quantization="fp8")


def test_quantized_tensors_without_a_config_are_refused(fp8_dir, tmp_path):
    """The quantization_config deleted: the float8 tensors are still never cast to float32."""
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    for file in fp8_dir.iterdir():
        (stripped / file.name).write_bytes(file.read_bytes())
    config = json.loads((stripped / "config.json").read_text())
    del config["quantization_config"]
    (stripped / "config.json").write_text(json.dumps(config))
    for impl in ("transformers", "native"):
        with pytest.raises(ValueError, match=r"no quantization_config, but the checkpoint holds quantized tensors "
                                             r"\(model.layers.0.mlp.down_proj.weight \(F8_E4M3\)"):
            LLM(str(stripped), dtype="float32", model_impl=impl)


def test_every_loader_refuses_to_cast_a_quantized_tensor(fp8_dir):
    """Below the rules: the sharded loader and the native loader refuse a float8 tensor for a
    plain parameter themselves (the silent TP=2 bug: cast, scales dropped)."""
    from anymodel import loader
    from anymodel.adapters.parallel import load_parallel_causal_lm
    from anymodel.native_overrides.llama import LlamaForCausalLM
    from anymodel.native_overrides.weights import iter_checkpoint, load_weights

    config = loader.load_config(fp8_dir, trust_remote_code=False)
    spec = loader.resolve_causal_lm_class(config, fp8_dir, trust_remote_code=False)
    with pytest.raises(ValueError, match=r"is torch.float8_e4m3fn \(quantized\), but would load as a plain"):
        load_parallel_causal_lm(spec.cls, spec.has_lm_head, fp8_dir, config, torch.float32, ParallelState())
    with pytest.raises(ValueError, match=r"is torch.float8_e4m3fn \(quantized\), but would load as a plain"):
        load_weights(LlamaForCausalLM(config, torch.float32), iter_checkpoint(fp8_dir))


def test_pooling_and_compat_paths_refuse_quantized_checkpoints(fp8_dir, tmp_path):
    with pytest.raises(ValueError, match=r"task 'embed': quantized checkpoints \(fp8\) are served for generation only"):
        LLM(str(fp8_dir), dtype="float32", task="embed")
    config = tiny_config("bloom")
    config.architectures = ["BloomForCausalLM"]
    config.quantization_config = {"quant_method": "fp8", "weight_block_size": [16, 16]}
    decision = decide(EngineArgs(), config, tmp_path, ParallelState())
    assert (decision.impl, decision.rule) == ("refuse", "compat-quantized")


def test_a_shard_off_the_block_grid_is_refused():
    """Rank 1 of 2 on a 64-row projection starts at row 32: inside a 48-row scale block."""
    from anymodel.native_overrides.quantization.formats import BlockFp8
    from anymodel.native_overrides.quantization.methods import Cut

    method = BlockFp8((48, 16))
    param = method.create_weights(32, 64)["weight_scale_inv"]
    with pytest.raises(ValueError, match=r"'weight_scale_inv': this shard's output rows \[32, 64\) do not fall on "
                                         r"its 48-wide block / group / packing grid"):
        method.load_weight("weight_scale_inv", param, torch.ones(2, 4), Cut(0, 0, 32, 32))


def test_a_quantized_tensor_is_never_converted():
    from anymodel.native_overrides.quantization.formats import BlockFp8

    method = BlockFp8((16, 16))
    param = method.create_weights(16, 16)["weight"]
    with pytest.raises(ValueError, match=r"checkpoint dtype torch.float8_e5m2 where the format stores torch.float8_e4m3fn"):
        method.load_weight("weight", param, torch.zeros(16, 16, dtype=torch.float8_e5m2), None)


def test_kv_cache_dtype_and_quantization_arguments():
    assert EngineArgs(kv_cache_dtype="fp8").kv_cache_dtype == "fp8"
    with pytest.raises(ValueError, match=r"unsupported kv_cache_dtype 'int4'; supported: \['auto', 'fp8'"):
        EngineArgs(kv_cache_dtype="int4")
    with pytest.raises(ValueError, match=r"quantization must be None or a method name, got 8"):
        EngineArgs(quantization=8)


def test_cli_flags_and_inspect(fp8_dir, capsys):
    assert cli_main(["inspect", str(fp8_dir)]) == 0
    out = capsys.readouterr().out
    assert "quantization" in out and "fp8: block FP8 (float8_e4m3fn weights, 16x16 block scales)" in out
    assert cli_main(["inspect", str(fp8_dir), "--quantization", "gptq"]) == 0  # inspect prints the refusal
    out = capsys.readouterr().out
    assert "quantization='gptq' contradicts" in out and "=> refuse (quantization)" in out
    assert cli_main(["generate", "--kv-cache-dtype", "fp8_e4m3", "--attention-backend", "triton", "--prompt", "x"]) == 2
    assert "attention_backend" in capsys.readouterr().err  # triton: CUDA only, or FP8 not read by its kernels


def test_dummy_weights_do_not_apply_to_quantized_checkpoints(fp8_dir):
    with pytest.raises(ValueError, match=r"no quantized linear was built .*load_format='dummy' builds plain random"):
        LLM(str(fp8_dir), dtype="float32", load_format="dummy", num_kv_blocks=8)


def test_vllm_kernel_names_are_aliases_of_their_format(tmp_path):
    from anymodel.native_overrides.quantization import resolve_quantization

    config = tiny_config("llama")
    config.quantization_config = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
    assert resolve_quantization(config, "gptq_marlin", tmp_path).method == "gptq"
    with pytest.raises(ValueError, match=r"quantization='awq_marlin' contradicts .* \(quant_method 'gptq'\)"):
        resolve_quantization(config, "awq_marlin", tmp_path)
