import pytest
import torch

from lab.data.tasks import copy_batch


def test_copy_batch_masks_all_but_the_second_copy():
    x, y = copy_batch(3, 4, 6, torch.Generator().manual_seed(0))
    xa, ya = copy_batch(3, 4, 6, torch.Generator().manual_seed(0), mask=False)
    assert torch.equal(x, xa) and x.shape == y.shape == (3, 9)
    assert (x[:, 0] == 6).all() and (x[:, 5] == 7).all()              # BOS = V, COPY = V + 1
    assert torch.equal(ya[:, :-1], x[:, 1:])                          # next-token targets
    assert (y[:, :5] == -100).all() and torch.equal(y[:, 5:], x[:, 1:5])


@pytest.mark.parametrize("kw,name", [({"batch": 0}, "batch"), ({"length": 0}, "length"),
                                     ({"vocab": 1}, "vocab")])
def test_copy_batch_rejects_bad_sizes(kw, name):
    args = {"batch": 2, "length": 3, "vocab": 4, **kw}
    with pytest.raises(ValueError, match=name):
        copy_batch(**args)
