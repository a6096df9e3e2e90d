import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close_by_norm
from lit_compclip.losses import info_nce, info_nce_local, info_nce_with_negatives


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
    assert_close_by_norm(info_nce(img[perm], txt[perm], 10.0), base, 1e-12)
    assert_close_by_norm(info_nce(txt, img, 10.0), base, 1e-12)  # the two directions swap roles


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
    assert (plain.grad @ neg.T).norm() <= 1e-12 * plain.grad.norm()  # without them, no push
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


# ---------------------------------------------------------------- local loss (one process's rows)


def global_loss(img, txt, neg, scale):
    return info_nce(img, txt, scale) if neg is None else info_nce_with_negatives(img, txt, neg, scale)


@pytest.mark.parametrize("ranks", [1, 2, 4])
@pytest.mark.parametrize("m", [None, 3])
def test_mean_of_local_losses_is_the_global_loss(ranks, m):
    img, txt = unit(8, 16, seed=1), unit(8, 16, seed=2)
    neg = None if m is None else unit(m, 16, seed=3)
    b = 8 // ranks
    local = [info_nce_local(img[r * b:(r + 1) * b], txt[r * b:(r + 1) * b], img, txt, 12.0, r * b, neg)
             for r in range(ranks)]
    assert float(sum(local) / ranks) == pytest.approx(float(global_loss(img, txt, neg, 12.0)), rel=1e-12)
    if ranks > 1:
        assert len({round(float(x), 6) for x in local}) == ranks  # each rank's share differs: not the global loss


def leaf(x):
    return x.detach().clone().requires_grad_()


@pytest.mark.parametrize("m", [None, 3])
def test_local_loss_gradients_under_ddp_are_the_global_gradients(m):
    """Simulates DDP per rank: own rows used directly, every rank's rows through an all-gather whose backward sums
    the gathered rows' gradients back to their owners, then DDP averages over ranks; that must be the global grad."""
    ranks, b = 3, 2
    img, txt = unit(ranks * b, 8, seed=4), unit(ranks * b, 8, seed=5)
    neg = None if m is None else unit(m, 8, seed=6)
    img_g, txt_g, scale_g = leaf(img), leaf(txt), torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    neg_g = None if neg is None else leaf(neg)
    global_loss(img_g, txt_g, neg_g, scale_g).backward()

    img_sum, txt_sum, scale_sum = torch.zeros_like(img), torch.zeros_like(txt), 0.0
    neg_sum = None if neg is None else torch.zeros_like(neg)
    for r in range(ranks):
        rows = slice(r * b, (r + 1) * b)
        own_img, own_txt = leaf(img[rows]), leaf(txt[rows])
        all_img, all_txt = leaf(img), leaf(txt)  # this rank's copy of the all-gather's output
        all_neg = None if neg is None else leaf(neg)
        scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)  # each rank's replica of the parameter
        info_nce_local(own_img, own_txt, all_img, all_txt, scale, r * b, all_neg).backward()
        img_sum[rows] += own_img.grad
        txt_sum[rows] += own_txt.grad
        img_sum += all_img.grad  # all_gather's backward: summed over ranks, each owner gets its rows
        txt_sum += all_txt.grad
        if neg is not None:
            neg_sum += all_neg.grad
        scale_sum += float(scale.grad)
    # DDP averages the replicas' parameter gradients over ranks
    assert_close_by_norm(img_sum / ranks, img_g.grad, 1e-12, "image gradient")
    assert_close_by_norm(txt_sum / ranks, txt_g.grad, 1e-12, "text gradient")
    assert scale_sum / ranks == pytest.approx(float(scale_g.grad), rel=1e-10)
    if neg is not None:
        assert_close_by_norm(neg_sum / ranks, neg_g.grad, 1e-12, "negative gradient")


def test_local_loss_of_the_only_rank_is_the_loss():
    img, txt, neg = unit(6, 8, seed=7), unit(6, 8, seed=8), unit(2, 8, seed=9)
    assert_close_by_norm(info_nce_local(img, txt, img, txt, 5.0, 0), info_nce(img, txt, 5.0), 1e-12)
    assert_close_by_norm(info_nce_local(img, txt, img, txt, 5.0, 0, neg), info_nce_with_negatives(img, txt, neg, 5.0),
                         1e-12)


def test_info_nce_local_rejects_an_offset_past_the_batch():
    img = unit(8, 8)
    with pytest.raises(ValueError, match="offset"):
        info_nce_local(img[:4], img[:4], img, img, 1.0, offset=6)
