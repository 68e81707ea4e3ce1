import pytest
import torch

from tinyfold_ray.config import ModelConfig
from tinyfold_ray.model import EvoformerBlock, TinyFold, num_parameters
from tinyfold_ray.model.msa import MSAColumnAttention, MSARowAttentionWithPairBias
from tinyfold_ray.model.outer_product_mean import OuterProductMean
from tinyfold_ray.model.primitives import MultiHeadAttention, Transition
from tinyfold_ray.model.triangle import TriangleAttention, TriangleMultiplication

B, S, R = 2, 5, 7
C_M, C_Z = 12, 20


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_module_shapes_with_odd_sizes():
    msa = torch.randn(B, S, R, C_M)
    pair = torch.randn(B, R, R, C_Z)
    assert MSARowAttentionWithPairBias(C_M, C_Z, num_heads=3)(msa, pair).shape == (B, S, R, C_M)
    assert MSAColumnAttention(C_M, num_heads=3)(msa).shape == (B, S, R, C_M)
    assert Transition(C_M, 24)(msa).shape == (B, S, R, C_M)
    assert OuterProductMean(C_M, C_Z, c_opm=6)(msa).shape == (B, R, R, C_Z)
    for outgoing in (True, False):
        assert TriangleMultiplication(C_Z, outgoing=outgoing)(pair).shape == (B, R, R, C_Z)
    for starting in (True, False):
        assert TriangleAttention(C_Z, num_heads=5, starting=starting)(pair).shape == (B, R, R, C_Z)
    block = EvoformerBlock(
        c_m=C_M,
        c_z=C_Z,
        num_heads_msa=3,
        num_heads_pair=5,
        msa_transition_dim=24,
        pair_transition_dim=28,
        c_opm=6,
    )
    out_msa, out_pair = block(msa, pair)
    assert out_msa.shape == msa.shape and out_pair.shape == pair.shape


def test_model_output_is_a_distance_map(tiny_model_cfg):
    model = TinyFold(tiny_model_cfg)
    tokens = torch.randint(0, tiny_model_cfg.vocab_size, (B, S, R))
    features = torch.randn(B, R, R, tiny_model_cfg.pair_input_dim)
    distances = model(tokens, features)
    assert distances.shape == (B, R, R)
    assert bool(((distances > 0) & (distances < 20)).all())


def test_default_model_has_exactly_the_used_tinyopenfold_parameters():
    # TinyOpenFold v1 builds 2,653,760; 1,024 of them (pair_norm_outer, 4 x 256) are never used.
    assert num_parameters(TinyFold(ModelConfig())) == 2_652_736


def test_every_parameter_gets_a_gradient():
    cfg = ModelConfig(seq_len=6, num_seqs=3)  # default channels, short inputs: fast
    model = TinyFold(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (1, 3, 6))
    features = torch.randn(1, 6, 6, cfg.pair_input_dim)
    model(tokens, features).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []


def test_ending_node_attention_is_starting_node_on_the_transposed_pair():
    pair = torch.randn(B, R, R, C_Z)
    start = TriangleAttention(C_Z, num_heads=5, starting=True)
    end = TriangleAttention(C_Z, num_heads=5, starting=False)
    end.load_state_dict(start.state_dict())
    expected = start(pair.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(end(pair), expected)
    assert not torch.allclose(end(pair), start(pair), atol=1e-4)  # the variants really differ


def test_incoming_multiplication_is_outgoing_on_the_transposed_pair():
    pair = torch.randn(B, R, R, C_Z)
    outgoing = TriangleMultiplication(C_Z, outgoing=True)
    incoming = TriangleMultiplication(C_Z, outgoing=False)
    incoming.load_state_dict(outgoing.state_dict())
    # Transposing the pair also swaps the roles of the left and right projections (and their gates):
    # sum_k a_kj b_ki. Rows of the fused projection: left, right, left gate, right gate, output gate.
    left, right, left_gate, right_gate, out_gate = outgoing.proj.weight.detach().chunk(5, dim=0)
    with torch.no_grad():
        outgoing.proj.weight.copy_(torch.cat([right, left, right_gate, left_gate, out_gate]))
    expected = outgoing(pair.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(incoming(pair), expected)
    assert not torch.allclose(incoming(pair), outgoing(pair), atol=1e-6)


def test_column_attention_mixes_sequences_not_residues():
    msa = torch.randn(1, S, R, C_M)
    col = MSAColumnAttention(C_M, num_heads=3)
    changed = msa.clone()
    changed[0, :, 3] += 1.0  # perturb residue 3 in every sequence
    diff = (col(changed) - col(msa)).abs().sum(dim=(0, 1, 3))
    assert bool(diff[3] > 0) and bool(diff[torch.arange(R) != 3].eq(0).all())


def test_row_attention_pair_bias_changes_the_output():
    msa = torch.randn(B, S, R, C_M)
    pair = torch.randn(B, R, R, C_Z)
    row = MSARowAttentionWithPairBias(C_M, C_Z, num_heads=3)
    torch.nn.init.normal_(row.pair_bias.weight, std=1.0)
    assert not torch.allclose(row(msa, pair), row(msa, torch.zeros_like(pair)))


@pytest.mark.parametrize("with_bias", [False, True])
def test_sdpa_kernel_matches_eager(with_bias):
    x = torch.randn(B, S, R, C_M)
    eager = MultiHeadAttention(C_M, num_heads=3, kernel="eager")
    fused = MultiHeadAttention(C_M, num_heads=3, kernel="sdpa")
    fused.load_state_dict(eager.state_dict())
    bias = torch.randn(B, 1, 3, R, R) if with_bias else None
    torch.testing.assert_close(fused(x, bias), eager(x, bias), rtol=1e-5, atol=1e-5)


def test_sdpa_model_matches_eager_model(tiny_model_cfg):
    from dataclasses import replace

    eager = TinyFold(tiny_model_cfg)
    fused = TinyFold(replace(tiny_model_cfg, attention="sdpa"))
    fused.load_state_dict(eager.state_dict())
    tokens = torch.randint(0, tiny_model_cfg.vocab_size, (B, S, R))
    features = torch.randn(B, R, R, tiny_model_cfg.pair_input_dim)
    torch.testing.assert_close(fused(tokens, features), eager(tokens, features), rtol=1e-5, atol=1e-5)
