import torch
from torch.overrides import TorchFunctionMode

from peft_hybrid.modeling.prompt import SoftPrompt
from peft_hybrid.offline import t5_from_preset


def test_sample_vocab_uses_real_pieces_only_and_is_seeded():
    base, tok = t5_from_preset("tiny")
    emb = base.get_input_embeddings()
    a, b = SoftPrompt(30, 64), SoftPrompt(30, 64)
    a.initialize("sample_vocab", emb, seed=1, tokenizer=tok)
    b.initialize("sample_vocab", emb, seed=1, tokenizer=tok)
    assert torch.equal(a.weight, b.weight)
    # Recover which rows were copied: each prompt vector equals exactly one embedding row.
    rows = [int(torch.nonzero((emb.weight == v).all(dim=1))[0]) for v in a.weight]
    assert len(set(rows)) == 30
    special = set(tok.all_special_ids)
    assert not special & set(rows)
    assert all(not tok.convert_ids_to_tokens(r).startswith("<extra_id_") for r in rows)


def test_sample_vocab_without_tokenizer_skips_specials_and_sentinels():
    base, _ = t5_from_preset("flan-t5-small", device="meta")
    emb = torch.nn.Embedding(32128, 8)
    p = SoftPrompt(30, 8)
    p.initialize("sample_vocab", emb, seed=0)
    rows = [int(torch.nonzero((emb.weight == v).all(dim=1))[0]) for v in p.weight]
    assert min(rows) >= 3 and max(rows) < 32000


def test_random_init_matches_embedding_scale():
    emb = torch.nn.Embedding(500, 64)
    p = SoftPrompt(200, 64)
    p.initialize("random", emb, seed=0)
    assert abs(p.weight.std().item() - emb.weight.std().item()) < 0.1


class _PromptShapedInputs(TorchFunctionMode):
    """Records every tensor argument shaped like the per-example prompt (batch x tokens x dim)."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.seen = torch.Size(shape), []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for arg in torch.utils._pytree.tree_leaves((args, kwargs or {})):
            if isinstance(arg, torch.Tensor) and arg.shape == self.shape:
                self.seen.append(arg)
        return func(*args, **(kwargs or {}))


def test_prepend_joins_one_shared_prompt_without_copying_it_per_example():
    p = SoftPrompt(3, 4)
    embeds = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with _PromptShapedInputs((2, 3, 4)) as spy:
        out, out_mask = p.prepend(embeds, mask)
    assert out.shape == (2, 8, 4)
    assert torch.equal(out[:, 3:], embeds)
    assert all(torch.equal(out[i, :3], p.weight.data) for i in range(2))
    assert out_mask.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0], [1] * 8]
    # The per-example prompt reaches the join only as a view of the one parameter: same storage,
    # stride 0 over the batch (an expand), never a batch-sized copy.
    assert spy.seen, "prepend never handled the prompt as a batch x tokens x dim tensor"
    for view in spy.seen:
        assert view.stride(0) == 0 and view.data_ptr() == p.weight.data_ptr()
    # One parameter: its gradient is the sum of both examples' gradients on the prompt rows.
    weights = torch.randn(2, 8, 4)
    (out * weights).sum().backward()
    assert torch.allclose(p.weight.grad, weights[0, :3] + weights[1, :3])
