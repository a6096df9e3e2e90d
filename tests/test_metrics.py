"""The benchmarks' scoring rules agree with slow obvious references and with hand-computed cases, ties included."""

import math

import pytest
import torch

from lit_compclip.metrics import (choice_accuracy, choice_correct, first_option_wins, group_mean, placement_sets,
                                  recall_at_k, sugarcrepe_pp_scores, winoground_scores)


def coarse(*shape, generator):
    """Scores from {0, 0.5, 1, 1.5}: exactly representable, so exact ties are frequent."""
    return torch.randint(0, 4, shape, generator=generator).float() / 2


# ---- choice accuracy ----------------------------------------------------------------------------------------------

def test_choice_accuracy_counts_a_tie_as_wrong():
    pos = torch.tensor([0.9, 0.5, 0.2, 0.7])
    neg = torch.tensor([0.1, 0.5, 0.3, 0.6])
    assert choice_accuracy(pos, neg) == (0.5, 1)


def test_choice_accuracy_needs_pos_above_every_negative():
    pos = torch.tensor([0.5, 0.5, 0.5])
    neg = torch.tensor([[0.1, 0.2], [0.1, 0.6], [0.5, 0.4]])  # wins; loses to one; ties the best
    correct, tied = choice_correct(pos, neg)
    assert correct.tolist() == [True, False, False]
    assert tied.tolist() == [False, False, True]
    assert choice_accuracy(pos, neg) == (pytest.approx(1 / 3), 1)


def test_choice_accuracy_nan_is_wrong():
    assert choice_accuracy(torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 0.0])) == (0.5, 0)


@pytest.mark.parametrize("k", [1, 3])
def test_choice_accuracy_matches_loop_reference(k):
    g = torch.Generator().manual_seed(k)
    pos, neg = coarse(200, generator=g), coarse(200, k, generator=g)
    wins = ties = 0
    for n in range(200):
        negs = [float(neg[n, j]) for j in range(k)]
        wins += all(float(pos[n]) > v for v in negs)
        ties += float(pos[n]) == max(negs)
    assert ties > 0  # the random case does exercise ties
    assert choice_accuracy(pos, neg if k > 1 else neg[:, 0]) == (pytest.approx(wins / 200), ties)


def test_choice_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="choice scores"):
        choice_accuracy(torch.zeros(3), torch.zeros(4))


# ---- winoground --------------------------------------------------------------------------------------------------

def test_winoground_scores_hand_computed():
    s = torch.tensor([
        [[0.9, 0.1], [0.2, 0.8]],  # perfect: text, image, group
        [[0.9, 0.8], [0.2, 0.7]],  # text fails (c1i1 0.7 < c0i1 0.8); image ok
        [[0.5, 0.1], [0.6, 0.9]],  # text fails (c1i0 > c0i0); image: 0.5>0.1 and 0.9>0.6 ok
        [[0.5, 0.1], [0.5, 0.9]],  # exact tie c0i0 == c1i0: text wrong, tied
    ])
    out = winoground_scores(s)
    assert out["text"].tolist() == [True, False, False, False]
    assert out["image"].tolist() == [True, True, True, True]
    assert out["group"].tolist() == [True, False, False, False]
    assert out["tied"].tolist() == [False, False, False, True]


def test_winoground_scores_match_loop_reference():
    g = torch.Generator().manual_seed(0)
    s = coarse(300, 2, 2, generator=g)
    out = winoground_scores(s)
    for n in range(300):
        v = s[n].tolist()  # v[c][i]
        text = v[0][0] > v[1][0] and v[1][1] > v[0][1]
        image = v[0][0] > v[0][1] and v[1][1] > v[1][0]
        tied = v[0][0] == v[1][0] or v[1][1] == v[0][1] or v[0][0] == v[0][1] or v[1][1] == v[1][0]
        assert (bool(out["text"][n]), bool(out["image"][n]), bool(out["group"][n]), bool(out["tied"][n])) == \
            (text, image, text and image, tied)


# ---- recall@k ----------------------------------------------------------------------------------------------------

def loop_recall(sim, text_to_image, ks):
    """Reference: sort candidates by score, wrong ones first among equals, and look for a right one in the top k."""
    n_texts, n_images = sim.shape
    out = {}
    for k in ks:
        hits = 0
        for t in range(n_texts):
            own = int(text_to_image[t])
            order = sorted(range(n_images), key=lambda j: (-float(sim[t, j]), j == own))
            hits += own in order[:k]
        out[f"t2i_r{k}"] = hits / n_texts
    for k in ks:
        hits = 0
        for i in range(n_images):
            own = {t for t in range(n_texts) if int(text_to_image[t]) == i}
            order = sorted(range(n_texts), key=lambda t: (-float(sim[t, i]), t in own))
            hits += bool(own & set(order[:k]))
        out[f"i2t_r{k}"] = hits / n_images
    return out


def topk_recall(sim, text_to_image, ks):
    """CLIP_benchmark-style top-k by torch.topk; equal to ours whenever no scores tie."""
    n_texts, n_images = sim.shape
    positive = torch.zeros(n_texts, n_images, dtype=torch.bool)
    positive[torch.arange(n_texts), text_to_image] = True
    out = {}
    for k in ks:
        top = sim.topk(min(k, n_images), dim=1).indices
        out[f"t2i_r{k}"] = positive.gather(1, top).any(1).float().mean().item()
    for k in ks:
        top = sim.T.topk(min(k, n_texts), dim=1).indices
        out[f"i2t_r{k}"] = positive.T.gather(1, top).any(1).float().mean().item()
    return out


def test_recall_image_to_text_hits_if_any_caption_is_in_top_k():
    # 2 images, texts 0,1,2 belong to image 0 and text 3 to image 1.
    sim = torch.tensor([
        [0.1, 0.9],  # t0 (image 0) prefers image 1
        [0.2, 0.8],  # t1 (image 0) prefers image 1
        [0.7, 0.3],  # t2 (image 0) right
        [0.4, 0.6],  # t3 (image 1) right
    ])
    out = recall_at_k(sim, torch.tensor([0, 0, 0, 1]), ks=(1, 2))
    assert out["t2i_r1"] == pytest.approx(2 / 4)
    assert out["t2i_r2"] == 1.0
    # image 0: its best caption t2 (0.7) tops column 0 -> hit@1. image 1: t0 0.9, t1 0.8 beat t3 0.6 -> rank 2.
    assert out["i2t_r1"] == pytest.approx(1 / 2)
    assert out["i2t_r2"] == pytest.approx(1 / 2)


def test_recall_counts_a_tie_with_a_wrong_candidate_as_ranked_below_it():
    sim = torch.tensor([[0.5, 0.5, 0.1],
                        [0.2, 0.7, 0.7],
                        [0.0, 0.0, 0.0]])  # a collapsed row: every image ties
    out = recall_at_k(sim, torch.tensor([0, 1, 2]), ks=(1, 2, 3))
    assert out["t2i_r1"] == 0.0  # each text's own image ties a wrong one
    assert out["t2i_r2"] == pytest.approx(2 / 3)  # texts 0, 1 at rank 2; text 2 behind two ties at rank 3
    assert out["t2i_r3"] == 1.0
    # columns: image 0 -> t0 0.5 beats 0.2, 0.0 -> hit@1; image 1 -> t1 0.7 beats 0.5 -> hit@1;
    # image 2 -> t2 0.0 behind 0.1 and 0.7 -> rank 3.
    assert out["i2t_r1"] == pytest.approx(2 / 3)
    assert out["i2t_r3"] == 1.0


def test_recall_collapsed_model_scores_chance_not_perfect():
    sim = torch.zeros(20, 10)
    out = recall_at_k(sim, torch.arange(20) % 10, ks=(1, 5))
    assert out["t2i_r1"] == 0.0 and out["i2t_r1"] == 0.0 and out["t2i_r5"] == 0.0


def test_recall_nan_scores_are_misses():
    sim = torch.full((3, 3), float("nan"))
    assert set(recall_at_k(sim, torch.arange(3), ks=(1,)).values()) == {0.0}


@pytest.mark.parametrize("seed", range(4))
def test_recall_matches_loop_reference_with_ties_and_several_captions(seed):
    g = torch.Generator().manual_seed(seed)
    n_images = 7
    text_to_image = torch.cat([torch.arange(n_images), torch.randint(0, n_images, (11,), generator=g)])
    sim = coarse(len(text_to_image), n_images, generator=g)
    ks = (1, 2, 5, 10)
    out = recall_at_k(sim, text_to_image, ks)
    assert out == pytest.approx(loop_recall(sim, text_to_image, ks))


@pytest.mark.parametrize("seed", range(3))
def test_recall_matches_topk_when_no_scores_tie(seed):
    g = torch.Generator().manual_seed(seed)
    n_images = 9
    text_to_image = torch.cat([torch.arange(n_images), torch.randint(0, n_images, (20,), generator=g)])
    sim = torch.randn(len(text_to_image), n_images, generator=g)
    out = recall_at_k(sim, text_to_image, (1, 5, 10))
    assert out == pytest.approx(topk_recall(sim, text_to_image, (1, 5, 10)))
    assert out == pytest.approx(loop_recall(sim, text_to_image, (1, 5, 10)))


def test_recall_rejects_an_image_without_captions():
    with pytest.raises(ValueError, match="image 2 has no caption"):
        recall_at_k(torch.zeros(2, 3), torch.tensor([0, 1]))


# ---- group mean --------------------------------------------------------------------------------------------------

def test_group_mean_hand_computed_and_floor():
    correct = torch.tensor([True, False, True, True, False])
    groups = ["on", "on", ("red", "blue"), "on", ("red", "blue")]
    assert group_mean(correct, groups) == {"on": pytest.approx(2 / 3), ("red", "blue"): 0.5}
    assert group_mean(correct, groups, min_count=3) == {"on": pytest.approx(2 / 3)}


def test_group_mean_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    correct = torch.rand(100, generator=g) > 0.5
    groups = [f"g{int(v)}" for v in torch.randint(0, 6, (100,), generator=g)]
    out = group_mean(correct, groups)
    for name in set(groups):
        rows = [bool(c) for c, grp in zip(correct, groups) if grp == name]
        assert math.isclose(out[name], sum(rows) / len(rows), rel_tol=1e-6)
    assert len(out) == len(set(groups))


# ---- SugarCrepe++ ------------------------------------------------------------------------------------------------

def test_sugarcrepe_pp_needs_both_positives_and_counts_ties_wrong():
    image = torch.tensor([  # sim(image, caption), sim(image, caption2), sim(image, negative)
        [0.9, 0.8, 0.1],  # both win
        [0.9, 0.1, 0.5],  # only caption wins: wrong
        [0.1, 0.9, 0.5],  # only caption2 wins: wrong
        [0.9, 0.5, 0.5],  # caption2 ties the negative: wrong, tied
        [float("nan"), 0.9, 0.1],  # NaN: wrong, no tie
    ])
    text = torch.tensor([  # sim(caption, caption2), sim(caption, negative), sim(caption2, negative)
        [0.9, 0.1, 0.2],  # right
        [0.5, 0.6, 0.1],  # caption is nearer the negative: wrong
        [0.5, 0.1, 0.6],  # caption2 is nearer the negative: wrong
        [0.5, 0.1, 0.5],  # tie with caption2 ~ negative: wrong, tied
        [0.5, 0.4, 0.3],  # right
    ])
    out = sugarcrepe_pp_scores(image, text)
    assert out["itt"].tolist() == [True, False, False, False, False]
    assert out["itt_tied"].tolist() == [False, False, False, True, False]
    assert out["tot"].tolist() == [True, False, False, False, True]
    assert out["tot_tied"].tolist() == [False, False, False, True, False]


def test_sugarcrepe_pp_matches_the_official_loop():
    g = torch.Generator().manual_seed(0)
    image, text = coarse(300, 3, generator=g), coarse(300, 3, generator=g)
    out = sugarcrepe_pp_scores(image, text)
    for n in range(300):
        p1, p2, neg = image[n].tolist()
        p1p2, p1n, p2n = text[n].tolist()
        # Sri-Harsha/scpp VLMs/test_*.py: `cos_p1 > cos_neg and cos_p2 > cos_neg`, `cos_p1p2 > cos_p1_neg and ...`
        assert bool(out["itt"][n]) == (p1 > neg and p2 > neg)
        assert bool(out["tot"][n]) == (p1p2 > p1n and p1p2 > p2n)
        assert bool(out["itt_tied"][n]) == (min(p1, p2) == neg)
        assert bool(out["tot_tied"][n]) == (p1p2 == max(p1n, p2n))
    assert out["itt_tied"].any() and out["tot_tied"].any()  # the random case does exercise ties


def test_sugarcrepe_pp_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="image scores need shape"):
        sugarcrepe_pp_scores(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="as many image rows"):
        sugarcrepe_pp_scores(torch.zeros(4, 3), torch.zeros(5, 3))


# ---- What'sUp ----------------------------------------------------------------------------------------------------

def test_first_option_wins_is_numpys_argmax_with_ties_to_the_first():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.5, 0.1], [0.1, 0.5, 0.5], [float("nan"), 0.1, 0.2]])
    assert first_option_wins(scores).tolist() == [True, True, False, False]
    g = torch.Generator().manual_seed(1)
    s = coarse(300, 4, generator=g)
    assert first_option_wins(s).tolist() == (s.numpy().argmax(axis=1) == 0).tolist()
    with pytest.raises(ValueError, match="option scores"):
        first_option_wins(torch.zeros(3, 1))


def test_placement_sets_hand_computed():
    correct = torch.tensor([True, True, True, False, True, True, True, True, False])
    objects = ["mug|table"] * 4 + ["cup|chair"] * 4 + ["pen|box"]  # pen|box lacks three placements: left out
    places = ["left", "right", "on", "under"] * 2 + ["left"]
    out = placement_sets(correct, objects, places, (("left", "right"), ("on", "under")))
    assert out == {"pair": 0.75, "set": 0.5, "groups": 2.0}  # mug|table: left-right only; cup|chair: both couples


def test_placement_sets_keeps_the_last_verdict_of_a_repeated_placement_and_reports_no_groups_as_nan():
    opposites = (("left", "right"), ("on", "under"))
    correct = torch.tensor([False, True, True, True, True])
    out = placement_sets(correct, ["a|b"] * 5, ["left", "right", "on", "under", "left"], opposites)
    assert out == {"pair": 1.0, "set": 1.0, "groups": 1.0}
    none = placement_sets(torch.tensor([True]), ["a|b"], ["left"], opposites)
    assert none["groups"] == 0 and math.isnan(none["pair"]) and math.isnan(none["set"])


def test_placement_sets_matches_the_official_loop():
    """Reference: amitakamath/whatsup_vlms Controlled_Images.evaluate_scores on complete object pairs."""
    g = torch.Generator().manual_seed(2)
    correct = torch.rand(40 * 4, generator=g) > 0.4
    objects = [f"o{n // 4}" for n in range(160)]
    places = ["left", "right", "in-front", "behind"] * 40
    out = placement_sets(correct, objects, places, (("left", "right"), ("in-front", "behind")))
    table: dict = {}
    for ok, obj, place in zip(correct.tolist(), objects, places):
        table.setdefault(obj, {})[place] = ok
    pair_correct = sum((d["left"] and d["right"]) + (d["in-front"] and d["behind"]) for d in table.values())
    set_correct = sum(sum(d.values()) == 4 for d in table.values())
    assert out["pair"] == pytest.approx(pair_correct / (160 / 2)) and out["set"] == pytest.approx(set_correct / 40)
