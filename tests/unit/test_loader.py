import numpy as np
import torch

from pico.data.loader import GlobalRowOrder, RowLoader


def rows(n=10, width=5):
    return np.arange(n * width, dtype=np.uint16).reshape(n, width)


def test_order_is_a_seeded_permutation_per_epoch():
    order = GlobalRowOrder(10, seed=7)
    epoch0 = order.indices(0, 10)
    assert sorted(epoch0.tolist()) == list(range(10))
    assert order.indices(0, 10).tolist() == GlobalRowOrder(10, seed=7).indices(0, 10).tolist()
    assert epoch0.tolist() != GlobalRowOrder(10, seed=8).indices(0, 10).tolist()
    epoch1 = order.indices(10, 10)
    assert sorted(epoch1.tolist()) == list(range(10)) and epoch1.tolist() != epoch0.tolist()
    # crossing an epoch boundary
    assert order.indices(8, 4).tolist() == epoch0[8:].tolist() + epoch1[:2].tolist()


def test_position_resume_gives_the_same_batches():
    a = RowLoader(rows(), seed=1, micro_batch_size=2, grad_accum_steps=2)
    seq = [torch.cat(a.step_batches(p)) for p in range(0, 40, 4)]
    b = RowLoader(rows(), seed=1, micro_batch_size=2, grad_accum_steps=2)
    assert torch.equal(torch.cat(b.step_batches(24)), seq[6])


def test_world_size_does_not_change_the_global_batch():
    one = RowLoader(rows(20), seed=3, micro_batch_size=4, grad_accum_steps=1)
    two = [RowLoader(rows(20), seed=3, micro_batch_size=2, grad_accum_steps=1, rank=r, world_size=2) for r in range(2)]
    for position in (0, 4, 16):
        single = sorted(map(tuple, torch.cat(one.step_batches(position)).tolist()))
        split = sorted(map(tuple, torch.cat([torch.cat(loader.step_batches(position)) for loader in two]).tolist()))
        assert single == split


def test_unshuffled_order_is_the_stored_order():
    order = GlobalRowOrder(5, seed=7, shuffle=False)
    assert order.indices(3, 6).tolist() == [3, 4, 0, 1, 2, 3]
