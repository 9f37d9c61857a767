"""``perturb_images`` with a strength that overflows the pixels' dtype: a clear error, not inf pixels."""

import pytest
import torch

from hf_monosem.scenarios import perturb_images


def test_a_strength_that_overflows_float32_is_refused():
    images = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"strength=1e\+39 overflows torch.float32 pixels to inf"):
        perturb_images(images, "gaussian", 1e39, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(
        perturb_images(images, "gaussian", 1e30, generator=torch.Generator().manual_seed(0))
    ).all()
