import math

import pytest
import torch
import torch.nn.functional as F

from lit_compclip.losses import info_nce, info_nce_with_negatives


def reference_info_nce(img, txt, scale):
    """Slow and obvious: -log softmax of the positive, row by row, for both directions."""
    b = img.shape[0]
    total = 0.0
    for i in range(b):
        row = [scale * float(img[i] @ txt[j]) for j in range(b)]
        col = [scale * float(img[j] @ txt[i]) for j in range(b)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    return total / (2 * b)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("b,d,scale", [(1, 4, 1.0), (5, 8, 14.3), (16, 32, 100.0)])
def test_info_nce_matches_reference(b, d, scale):
    img, txt = unit(b, d, seed=1), unit(b, d, seed=2)
    assert float(info_nce(img, txt, scale)) == pytest.approx(reference_info_nce(img, txt, scale), rel=1e-9)


def test_info_nce_is_invariant_to_batch_order_and_symmetric():
    img, txt = unit(12, 16, seed=3), unit(12, 16, seed=4)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    base = info_nce(img, txt, 10.0)
    assert torch.allclose(info_nce(img[perm], txt[perm], 10.0), base)
    assert torch.allclose(info_nce(txt, img, 10.0), base)  # the two directions swap roles


def test_info_nce_limits():
    img = unit(8, 8, seed=5)
    assert float(info_nce(img, img.clone(), 0.0)) == pytest.approx(math.log(8))  # no signal: uniform
    eye = torch.eye(8, dtype=torch.float64)
    assert float(info_nce(eye, eye, 100.0)) < 1e-20  # a perfect match at the capped scale


def test_info_nce_gradient_matches_finite_differences():
    img, txt = unit(4, 6, seed=6).requires_grad_(), unit(4, 6, seed=7).requires_grad_()
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(info_nce, (img, txt, scale))


def test_info_nce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape|one shape"):
        info_nce(unit(4, 8), unit(5, 8), 1.0)


# ---------------------------------------------------------------- with hard negatives


def reference_info_nce_with_negatives(img, txt, neg, scale):
    """Slow and obvious: each image's row also holds its scores against every negative; columns are unchanged."""
    b = img.shape[0]
    total = 0.0
    for i in range(b):
        row = [scale * float(img[i] @ txt[j]) for j in range(b)] + [scale * float(img[i] @ n) for n in neg]
        col = [scale * float(img[j] @ txt[i]) for j in range(b)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    return total / (2 * b)


@pytest.mark.parametrize("b,m,d,scale", [(1, 1, 4, 1.0), (5, 3, 8, 14.3), (8, 16, 32, 100.0)])
def test_info_nce_with_negatives_matches_reference(b, m, d, scale):
    img, txt, neg = unit(b, d, seed=1), unit(b, d, seed=2), unit(m, d, seed=3)
    got = float(info_nce_with_negatives(img, txt, neg, scale))
    assert got == pytest.approx(reference_info_nce_with_negatives(img, txt, neg, scale), rel=1e-9)
    assert got > float(info_nce(img, txt, scale))  # a negative only ever adds competition


def test_info_nce_with_no_negatives_is_info_nce():
    img, txt = unit(6, 8, seed=4), unit(6, 8, seed=5)
    assert torch.equal(info_nce_with_negatives(img, txt, img.new_zeros(0, 8), 7.0), info_nce(img, txt, 7.0))


def test_gradient_pushes_each_image_away_from_the_negatives():
    # texts on the first 4 axes, negatives on the other 4: only the negatives' term can move an image toward them
    eye = torch.eye(8, dtype=torch.float64)
    txt, neg = eye[:4], eye[4:]
    img = F.normalize(txt + 0.5 * neg, dim=-1).requires_grad_()
    info_nce_with_negatives(img, txt, neg, 10.0).backward()
    assert (img.grad @ neg.T).diagonal().min() > 0  # descent lowers every image's score against its negative
    plain = img.detach().clone().requires_grad_()
    info_nce(plain, txt, 10.0).backward()
    assert torch.allclose(plain.grad @ neg.T, torch.zeros(4, 4, dtype=torch.float64))  # without them, no push
    negatives = neg.clone().requires_grad_()
    info_nce_with_negatives(img.detach(), txt, negatives, 10.0).backward()
    assert (negatives.grad @ img.detach().T).diagonal().min() > 0  # and moves each negative away from the images


def test_info_nce_with_negatives_gradient_matches_finite_differences():
    img, txt, neg = (unit(4, 6, seed=s).requires_grad_() for s in (6, 7, 8))
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(info_nce_with_negatives, (img, txt, neg[:3], scale))


def test_info_nce_with_negatives_rejects_mismatched_widths():
    with pytest.raises(ValueError, match=r"\(M, D\)"):
        info_nce_with_negatives(unit(4, 8), unit(4, 8), unit(2, 6), 1.0)
