"""Tensor-parallel styles, numerically (2 gloo ranks), and plan errors (in process)."""

import pytest
import torch.multiprocessing as mp

from anymodel.adapters.tensor_parallel import check_style, supported_styles
from anymodel.distributed import free_port
from tests.parallel import style_cases


def test_every_style_matches_the_unsharded_module(tmp_path):
    # Every case in style_cases.CASES plus packed_rowwise, all_reduce and the local head counts.
    mp.spawn(style_cases.run_rank, args=(free_port(), tmp_path), nprocs=2, join=True)


@pytest.mark.parametrize(
    "style",
    ["colwise", "rowwise", "colwise_rep", "rowwise_rep", "replicate", "colwise_gather_output", "rowwise_split_input",
     "packed_colwise", "packed_rowwise", "embedding_rowwise", "embedding_colwise", "all_reduce", "local_params",
     "replicated_with_grad_allreduce", "mla_kv_a_proj"],
)
def test_known_styles_are_accepted(style):
    assert check_style(style, "layers.*.x")


def test_unknown_style_is_an_error_that_names_it():
    with pytest.raises(ValueError, match=r"unknown tensor-parallel style 'colwise_sideways'.*layers\.\*\.mlp.*supported"):
        check_style("colwise_sideways", "layers.*.mlp")


@pytest.mark.parametrize("style", ["moe_tp_experts", "grouped_gemm", "ep_dispatch_experts", "moe_identity_expert"])
def test_moe_styles_are_unsupported_yet(style):
    with pytest.raises(ValueError, match=f"{style}.*MoE expert style: not supported yet"):
        check_style(style, "layers.*.mlp.experts")


def test_sequence_parallel_is_rejected():
    with pytest.raises(ValueError, match="training style"):
        check_style("sequence_parallel", "norm")


def test_supported_list_is_explicit():
    assert {"colwise", "rowwise", "colwise_rep", "rowwise_rep", "packed_colwise", "embedding_rowwise"} <= set(supported_styles())
