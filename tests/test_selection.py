"""methods.selection: exact top-k with the documented tie rule, drop-and-grow, state reset."""

import pytest
import torch

from methods.selection import drop_and_grow, random_k, reset_optimizer_state, top_k


def brute_force(scores, k, eligible, largest):
    """Sort eligible (score, index) pairs: best score first, then the lower index."""
    sign = -1 if largest else 1
    pairs = sorted((sign * float(s), i) for i, (s, e) in
                   enumerate(zip(scores.flatten(), eligible.flatten(), strict=True)) if e)
    out = torch.zeros(scores.numel(), dtype=torch.bool)
    out[[i for _, i in pairs[:k]]] = True
    return out.view_as(scores)


def test_ties_at_the_kth_value_go_to_the_lowest_indices():
    scores = torch.tensor([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.0])
    # 3, 3 are in; three 2s compete for the last two places: indices 2 and 4 win.
    assert top_k(scores, 4).tolist() == [False, True, True, True, True, False, False]
    # Smallest 2: the 0 and the 1 (no tie); smallest 3: the first 2 (index 2).
    assert top_k(scores, 3, largest=False).nonzero().flatten().tolist() == [0, 2, 6]


@pytest.mark.parametrize("largest", [True, False])
def test_matches_brute_force_with_many_ties(largest):
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        scores = torch.randint(0, 5, (4, 9), generator=g).float()
        eligible = torch.rand(4, 9, generator=g) < 0.7
        k = trial % (int(eligible.sum()) + 1)
        got = top_k(scores, k, eligible, largest=largest)
        assert torch.equal(got, brute_force(scores, k, eligible, largest))
        assert int(got.sum()) == k


def test_too_many_is_an_error():
    with pytest.raises(ValueError, match="cannot choose 3 of 2 eligible"):
        top_k(torch.arange(4.0), 3, torch.tensor([True, False, True, False]))


def test_random_k_is_an_exact_subset_and_draws_nothing_for_zero():
    g = torch.Generator().manual_seed(1)
    eligible = torch.rand(50, generator=g) < 0.5
    state = g.get_state()
    assert not random_k(eligible, 0, g).any()
    assert torch.equal(g.get_state(), state)
    chosen = random_k(eligible, 7, g)
    assert int(chosen.sum()) == 7 and not (chosen & ~eligible).any()


def test_drop_and_grow_by_hand():
    # Active: 0, 1, 3, 5 with |w| 0.5, 0.1, 0.9, 0.2; drop 2 -> keep 3 and 0.
    active = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    drop = torch.tensor([0.5, 0.1, 0.0, 0.9, 0.0, 0.2])
    # Grow the 2 largest scores among positions not kept {1, 2, 4, 5}: 1 (just dropped,
    # 0.8) and 4 (0.7); 2 (0.3) and 5 (0.6) lose. Position 0 has 1.0 but is kept already.
    grow = torch.tensor([1.0, 0.8, 0.3, 0.0, 0.7, 0.6])
    mask, new = drop_and_grow(drop, grow, active, 2)
    assert mask.tolist() == [True, True, False, True, True, False]
    assert new.tolist() == [False, False, False, False, True, False]  # 1 was active: not new


def test_reset_optimizer_state_by_mask_and_by_index():
    a, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([a, b])
    (a.sum() + b.sum()).backward()
    opt.step()
    reset_optimizer_state(opt, [a, b], [torch.tensor([[True, False], [False, True]]),
                                        torch.tensor([2])])
    assert (opt.state[a]["exp_avg"] != 0).tolist() == [[False, True], [True, False]]
    assert (opt.state[b]["exp_avg_sq"] != 0).tolist() == [True, True, False]
    assert float(opt.state[a]["step"]) == 1.0  # scalar state is left alone


def test_random_k_is_the_first_k_of_a_randperm_of_the_eligible_positions():
    # The one random-subset rule: eligible positions 1, 3, 4, 6 in flat order; the subset is
    # positions[randperm(4)[:2]] from the same generator state, and with every position
    # eligible it is the classic randperm(numel)[:k] random mask (initial masks).
    eligible = torch.tensor([[False, True, False, True], [True, False, True, False]])
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(3))
    expected = torch.tensor([1, 3, 4, 6])[perm[:2]]  # flat positions, row-major
    want = torch.zeros(8, dtype=torch.bool)
    want[expected] = True
    got = random_k(eligible, 2, torch.Generator().manual_seed(3))
    assert torch.equal(got, want.view(2, 4))
    everywhere = random_k(torch.ones(3, 5, dtype=torch.bool), 4,
                          torch.Generator().manual_seed(9))
    classic = torch.zeros(15, dtype=torch.bool)
    classic[torch.randperm(15, generator=torch.Generator().manual_seed(9))[:4]] = True
    assert torch.equal(everywhere, classic.view(3, 5))
    with pytest.raises(ValueError, match="cannot choose 5 of 4 eligible"):
        random_k(eligible, 5, torch.Generator())
