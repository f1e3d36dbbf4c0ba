import pytest
import torch

from luvc.compress.oim import grid_after_steps, merge_units, plan_oim, plan_oim_step


def grid_tokens(rows: list[list[float]]) -> torch.Tensor:
    """(H*W, 1) tokens from a hand-written grid, raster order."""
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 1)


def test_w_step_averages_pairs_and_carries_odd_column():
    a, b, c, d, e, f = 1.0, 2.0, 4.0, 8.0, 16.0, 32.0
    step = plan_oim_step([(1, 2, 3)], None, "W")
    merged = merge_units(grid_tokens([[a, b, c], [d, e, f]]), step)
    assert step.grids == ((1, 2, 2),)
    assert merged.flatten().tolist() == [(a + b) / 2, c, (d + e) / 2, f]
    assert step.sizes.tolist() == [2, 1, 2, 1]


def test_h_step_on_odd_rows():
    a, b, c, d, e, f = 1.0, 2.0, 4.0, 8.0, 16.0, 32.0
    step = plan_oim_step([(1, 3, 2)], None, "H")
    merged = merge_units(grid_tokens([[a, b], [c, d], [e, f]]), step)
    assert step.grids == ((1, 2, 2),)
    assert merged.flatten().tolist() == [(a + c) / 2, (b + d) / 2, e, f]


def test_two_iterations_alternate_axes():
    values = [[1.0, 2.0, 4.0, 8.0], [16.0, 32.0, 64.0, 128.0]]
    steps = plan_oim([(1, 2, 4)], ["W", "H"])
    merged = grid_tokens(values)
    for step in steps:
        merged = merge_units(merged, step)
    assert steps[-1].grids == ((1, 1, 2),)
    assert merged.flatten().tolist() == [(1 + 2 + 16 + 32) / 4, (4 + 8 + 64 + 128) / 4]


def test_size_weighted_mean_after_uneven_merges():
    # W on width 3 leaves sizes (2, 1); a second W merges them: the result is the mean of all three originals.
    steps = plan_oim([(1, 1, 3)], ["W", "W"])
    merged = grid_tokens([[3.0, 6.0, 12.0]])
    for step in steps:
        merged = merge_units(merged, step)
    assert merged.flatten().tolist() == pytest.approx([(3.0 + 6.0 + 12.0) / 3])
    assert steps[-1].sizes.tolist() == [3]


def test_images_and_frames_are_merged_separately():
    # Two images one after the other, the second with two temporal slices: no pair crosses a boundary.
    grids = [(1, 1, 2), (2, 1, 2)]
    tokens = torch.tensor([1.0, 3.0, 10.0, 30.0, 100.0, 300.0])[:, None]
    merged = merge_units(tokens, plan_oim_step(grids, None, "W"))
    assert merged.flatten().tolist() == [2.0, 20.0, 200.0]


def test_t_step_merges_adjacent_temporal_slices_and_carries_an_odd_last_one():
    # Three slices of a 1x2 grid: slices 0 and 1 merge unit by unit; slice 2 is carried; an image (t=1) is unchanged.
    tokens = torch.tensor([1.0, 2.0, 3.0, 4.0, 50.0, 60.0, 7.0])[:, None]
    step = plan_oim_step([(3, 1, 2), (1, 1, 1)], None, "T")
    assert step.grids == ((2, 1, 2), (1, 1, 1))
    assert merge_units(tokens, step).flatten().tolist() == [2.0, 3.0, 50.0, 60.0, 7.0]
    assert step.sizes.tolist() == [2, 2, 1, 1, 1]


def test_units_with_several_tokens_merge_position_by_position():
    # Qwen-VL units hold the 4 patches of a 2x2 group: patch p of the merged unit is the mean of patch p.
    units = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    merged = merge_units(units, plan_oim_step([(1, 1, 2)], None, "W"))
    torch.testing.assert_close(merged[0], (units[0] + units[1]) / 2)


def test_merge_along_batch_dimension_one():
    tokens = torch.randn(3, 4, 5)
    merged = merge_units(tokens, plan_oim_step([(1, 2, 2)], None, "H"), dim=1)
    torch.testing.assert_close(merged[:, 0], (tokens[:, 0] + tokens[:, 2]) / 2)
    assert merged.shape == (3, 2, 5)


def test_grid_after_steps_rounds_up():
    assert grid_after_steps((1, 5, 7), ["W", "H", "W"]) == (1, 3, 2)
