"""The teacher/student sigma-recovery demo recovers known sigmas."""

import pytest

from envconv.recipes.sigma_recovery import run_sigma_recovery as run_demo


def test_single_sigma_recovered_within_2_percent():
    result = run_demo((1.3,), steps=200, seed=1)
    assert result.learned_sigma[0] == pytest.approx(1.3, rel=0.02)
    assert result.losses[-1] < 1e-3 * result.losses[0]


def test_per_channel_sigmas_recovered_within_2_percent():
    result = run_demo((0.6, 1.3, 1.8), steps=400)
    assert max(result.relative_error) < 0.02
    # starting point is the paper's raw 0, i.e. sigma = sqrt(log 2) = 0.833, far from all three
    assert all(abs(t - 0.8326) > 0.2 for t in result.teacher_sigma)


def test_bad_demo_arguments():
    with pytest.raises(ValueError, match="teacher_sigma"):
        run_demo((0.0,))
    with pytest.raises(ValueError, match="steps"):
        run_demo((1.0,), steps=0)


def test_a_sigma_per_axis_is_recovered_per_axis_in_3d():
    """A volume teacher blurs depth and the image plane differently; the student learns each axis back."""
    teacher = ((0.6, 1.5, 1.5), (1.4, 0.7, 1.0))
    result = run_demo(teacher, spatial_dims=3, steps=150, image_size=10, batch_size=4, envelope_size=7, seed=2)
    assert max(result.relative_error) < 0.01
    assert [len(s) for s in result.learned_sigma] == [3, 3]
    assert result.losses[-1] < 1e-6 * result.losses[0]


def test_per_channel_sigmas_recovered_in_1d():
    result = run_demo((0.6, 1.3, 2.0), spatial_dims=1, steps=300, image_size=64, seed=3)
    assert max(result.relative_error) < 0.02


def test_per_axis_teacher_needs_one_sigma_per_axis():
    with pytest.raises(ValueError, match="needs 3 sigmas per channel"):
        run_demo(((0.6, 1.5),), spatial_dims=3)
    with pytest.raises(ValueError, match="spatial_dims must be 1, 2 or 3"):
        run_demo((1.0,), spatial_dims=4)
