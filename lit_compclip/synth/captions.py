"""Captions of synthetic scenes: web-like alt-text, dense recaptions and one-sentence probe phrasings.

Every function is pure in (scene, rng, split). Train and eval ("held-out") phrasings never share a template or a
relation synonym, so probes measure understanding rather than template matching."""

from __future__ import annotations

import random

from lit_compclip.synth.world import COLOURS, INVERSE, RELATIONS, SHAPES, SIZES

SPLITS = ("train", "eval")

# canonical relation -> phrasings per split. A held-out phrasing's nearest training phrasing (pretrained MiniLM, in
# "the red circle is ... the blue square.") must mean the same: with "under" in training, the nearest to "over"
# (0.980, "above" 0.975), some runs read "over" as "below" (VG-Relation's "over" pairs at 0-7%).
RELATION_WORDS = {
    "left of": {"train": ("to the left of", "left of"), "eval": ("on the left of",)},
    "right of": {"train": ("to the right of", "right of"), "eval": ("on the right of",)},
    "above": {"train": ("above", "on top of"), "eval": ("over",)},
    "below": {"train": ("below", "underneath"), "eval": ("beneath",)},
}
OBJECT_TEMPLATES = {
    "train": ("a {size} {colour} {shape}", "a {shape} that is {colour} and {size}", "a {size} {shape} that is {colour}"),
    "eval": ("a {colour} {shape} of {size} size", "a {shape} which is {size} and {colour}", "a {size} {shape} in {colour}"),
}
ANCHORED_LISTS = {  # every object, then the first along the relation axis named again; per end of the axis, per split
    "left": {"train": ("Of {objects}, {first} is the leftmost.",
                       "The picture has {objects}, with {first} furthest to the left."),
             "eval": ("Between {objects}, {first} is farthest left.",
                      "We see {objects}, {first} being leftmost of all.")},
    "top": {"train": ("Of {objects}, {first} is the topmost.", "The picture has {objects}, with {first} highest up."),
            "eval": ("Between {objects}, {first} is farthest up.",
                     "We see {objects}, {first} being uppermost of all.")},
}
RELATION_SENTENCES = {
    "train": ("{subject} is {relation} {object}.", "{subject} sits {relation} {object}."),
    "eval": ("{subject} is placed {relation} {object}.", "{subject} appears {relation} {object}."),
}
ALT_TEMPLATES = {  # colour and shape words listed apart, in alphabetical order, so binding cannot be recovered
    "train": ("{colours} {shapes}", "{shapes_and} in {colours_and}", "geometric shapes {colours} {shapes}",
              "{colours} {shapes} clipart"),
    "eval": ("{shapes} {colours} stock image", "{colours_and} {shapes_and} icons", "simple {shapes} shapes, {colours}"),
}
ALT_INCOMPLETE, ALT_WRONG = 0.20, 0.05  # like crawled alt-text: some miss an object or a colour, a few are wrong
SUGARCREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
SUGARCREPE_PP_SUBSETS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")  # Sri-Harsha/scpp's five
SECOND_OBJECT = "a {size}{shape} in {colour}"  # SugarCrepe++'s second caption names objects this way (eval only)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown caption split {split!r}; choose one of {list(SPLITS)}")


def join_and(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def relation_words(relation: str, rng: random.Random, split: str) -> str:
    _check_split(split)
    return rng.choice(RELATION_WORDS[relation][split])


def object_phrase(obj: dict, rng: random.Random, split: str) -> str:
    """An indefinite phrase binding colour and size to the shape, attribute order varied."""
    return rng.choice(OBJECT_TEMPLATES[split]).format(**obj)


def locations(scene: dict) -> list[str]:
    """Each object's place along the relation axis: first is left/top, last right/bottom, others middle."""
    objs = scene["objects"]
    k = 0 if axis_end(scene) == "left" else 1
    ranked = sorted(range(len(objs)), key=lambda i: objs[i]["bbox"][k] + objs[i]["bbox"][k + 2] / 2)
    ends = (("left", "right"), ("top", "bottom"))[k]
    place = {i: "middle" for i in ranked}
    place[ranked[0]], place[ranked[-1]] = ends
    return [place[i] for i in range(len(objs))]


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def _relation_sentence(scene: dict, rel: dict, rng: random.Random, split: str) -> str:
    s, relation, o = rel["subject"], rel["relation"], rel["object"]
    if rng.random() < 0.5:  # state it from the other side: "B is right of A"
        s, relation, o = o, INVERSE[relation], s
    nps = []
    for obj in (scene["objects"][s], scene["objects"][o]):
        with_size = rng.random() < 0.3
        nps.append(f"the {obj['size'] + ' ' if with_size else ''}{obj['colour']} {obj['shape']}")
    return rng.choice(RELATION_SENTENCES[split]).format(
        subject=_capitalise(nps[0]), relation=relation_words(relation, rng, split), object=nps[1])


def anchored_list(objects: list[dict], first: dict, end: str, rng: random.Random, split: str) -> str:
    """'Of a small red circle and a large blue square, the red circle is the leftmost.': the objects in the given order,
    then `first`, the object at `end` ('left' or 'top') of the relation axis, named again (size 30% of the time)."""
    if end not in ANCHORED_LISTS:
        raise ValueError(f"unknown axis end {end!r}; choose one of {list(ANCHORED_LISTS)}")
    listed = join_and([object_phrase(obj, rng, split) for obj in objects])
    template = rng.choice(ANCHORED_LISTS[end][split])
    return _capitalise(template.format(objects=listed, first=f"the {noun(first, rng.random() < 0.3)}"))


def axis_end(scene: dict) -> str:
    """'left' for a scene laid out left to right, 'top' for one laid out top to bottom."""
    return "left" if scene["relations"][0]["relation"] in ("left of", "right of") else "top"


def recaption(scene: dict, rng: random.Random, split: str) -> str:
    """2-4 sentences, each true and complete on its own (sentence sampling trains on any one): every object with its
    attributes, the leftmost (or topmost) named again; then every relation, both objects named by colour and shape.

    Why name the first object again: the words of 'a red circle on the left and a blue square on the right' are the
    words of its place-swapped twin's caption ('a blue square on the left and a red circle on the right'), and so
    are those of every sentence that names both objects with their places or their relation. Towers that start as
    bags of words (a fresh ViT, a pooled sentence embedding) then have no place to agree on, and neither learns one
    (world format 3: relations at chance). 'The red circle is the leftmost' has words of its own for each of the
    four family members, so the image tower learns where each object is from the first steps, and the text tower
    then learns word order from the relation sentences (docs/RESEARCH_LOG.md, "How the default learns relations")."""
    _check_split(split)
    objs = scene["objects"]
    end = axis_end(scene)
    where = locations(scene)
    first = objs[where.index(end)]
    order = [objs[i] for i in rng.sample(range(len(objs)), len(objs))]
    sentences = [anchored_list(order, first, end, rng, split)]
    sentences += [_relation_sentence(scene, r, rng, split) for r in scene["relations"]]
    return " ".join(rng.sample(sentences, len(sentences)))


def plain_list(scene: dict, rng: random.Random, split: str) -> str:
    """'A large purple cross and a small triangle that is red.': every object with its attributes, in a random order,
    and nothing about where they are (synth.plain_lists). It is as true of the scene's place-swapped twin, which
    shares its batch; so training on it (data.later_caption_fields) asks the list's embedding to favour neither
    object, where the anchored lists teach both towers to favour the one at the left (docs/RESEARCH_LOG.md)."""
    _check_split(split)
    objs = list(scene["objects"])
    rng.shuffle(objs)
    return _capitalise(join_and([object_phrase(obj, rng, split) for obj in objs])) + "."


def alt_text(scene: dict, rng: random.Random, split: str) -> str:
    """Short web-like text: colour and shape words in separate sorted lists, no relation; some incomplete or wrong."""
    _check_split(split)
    colours = sorted(o["colour"] for o in scene["objects"])  # sorted first: nothing below depends on binding
    shapes = sorted(o["shape"] for o in scene["objects"])
    u = rng.random()
    if u < ALT_WRONG:  # one word names something that is not there
        if rng.random() < 0.5:
            colours[rng.randrange(len(colours))] = rng.choice([c for c in COLOURS if c not in colours])
        else:
            shapes[rng.randrange(len(shapes))] = rng.choice([s for s in SHAPES if s not in shapes])
    elif u < ALT_WRONG + ALT_INCOMPLETE:  # a whole object or just a colour goes missing
        if rng.random() < 0.5:
            obj = rng.choice(scene["objects"])
            colours.remove(obj["colour"])
            shapes.remove(obj["shape"])
        else:
            del colours[rng.randrange(len(colours))]
    colours, shapes = sorted(colours), sorted(shapes)
    return rng.choice(ALT_TEMPLATES[split]).format(
        colours=" ".join(colours), shapes=" ".join(shapes), colours_and=join_and(colours), shapes_and=join_and(shapes))


# ---- probe phrasings (held-out split) ----

def noun(obj: dict, with_size: bool = False) -> str:
    """'red circle' or 'large red circle'."""
    return f"{obj['size'] + ' ' if with_size else ''}{obj['colour']} {obj['shape']}"


def pair_caption(a: str, b: str, relation: str | None) -> str:
    """'a A on the left of a B' when a relation phrase is given, else 'a A and a B'."""
    return f"a {a} {relation} a {b}" if relation else f"a {a} and a {b}"


def _related_pair(scene: dict, rng: random.Random) -> tuple[dict, str, dict]:
    """(subject, canonical relation, object) for a random relation, stated from a random side."""
    rel = rng.choice(scene["relations"])
    s, relation, o = rel["subject"], rel["relation"], rel["object"]
    if rng.random() < 0.5:
        s, relation, o = o, INVERSE[relation], s
    return scene["objects"][s], relation, scene["objects"][o]


def sugarcrepe_pair(scene: dict, subset: str, rng: random.Random) -> tuple[str, str]:
    """(caption, negative_caption) for one SugarCrepe subset; the negative changes exactly what the subset names."""
    return sugarcrepe_parts(scene, subset, rng)[:2]


def sugarcrepe_parts(scene: dict, subset: str, rng: random.Random) -> tuple[str, str, dict]:
    """sugarcrepe_pair's (caption, negative_caption) and what the caption says: {a, relation, b, phrase, sized}
    (a is `relation` of b; `phrase` its words, None for 'a A and a B'; `sized`: the caption names sizes)."""
    if subset not in SUGARCREPE_SUBSETS:
        raise ValueError(f"unknown SugarCrepe subset {subset!r}; choose one of {list(SUGARCREPE_SUBSETS)}")
    a, relation, b = _related_pair(scene, rng)
    phrase = relation_words(relation, rng, "eval") if subset == "replace_rel" or rng.random() < 0.5 else None
    absent_colours = [c for c in COLOURS if c not in {o["colour"] for o in scene["objects"]}]
    absent_shapes = [s for s in SHAPES if s not in {o["shape"] for o in scene["objects"]}]
    pos, sized = pair_caption(noun(a), noun(b), phrase), False
    if subset == "swap_att" and a["size"] != b["size"] and rng.random() < 0.5:
        pos, sized = pair_caption(noun(a, True), noun(b, True), phrase), True
        neg = pair_caption(noun({**a, "size": b["size"]}, True), noun({**b, "size": a["size"]}, True), phrase)
    elif subset == "swap_att":
        neg = pair_caption(noun({**a, "colour": b["colour"]}), noun({**b, "colour": a["colour"]}), phrase)
    elif subset == "swap_obj":
        neg = pair_caption(noun({**a, "shape": b["shape"]}), noun({**b, "shape": a["shape"]}), phrase)
    elif subset in ("replace_att", "replace_obj"):
        key, pool = ("colour", absent_colours) if subset == "replace_att" else ("shape", absent_shapes)
        new = {"colour": a["colour"], "shape": a["shape"], "size": a["size"], key: rng.choice(pool)}
        a2, b2 = (new, b) if rng.random() < 0.5 else (a, {**b, key: new[key]})
        neg = pair_caption(noun(a2), noun(b2), phrase)
    elif subset == "replace_rel":
        neg = pair_caption(noun(a), noun(b), relation_words(INVERSE[relation], rng, "eval"))
    elif subset == "add_att":  # the positive names no size; the negative adds the wrong one to one object
        wrong = {o["shape"]: next(s for s in SIZES if s != o["size"]) for o in (a, b)}
        if rng.random() < 0.5:
            neg = pair_caption(noun({**a, "size": wrong[a["shape"]]}, True), noun(b), phrase)
        else:
            neg = pair_caption(noun(a), noun({**b, "size": wrong[b["shape"]]}, True), phrase)
    else:  # add_obj: an object whose colour and shape are both absent
        neg = f"{pos} and a {rng.choice(absent_colours)} {rng.choice(absent_shapes)}"
    return pos, neg, {"a": a, "relation": relation, "b": b, "phrase": phrase, "sized": sized}


def second_caption(parts: dict, rng: random.Random) -> str:
    """SugarCrepe++'s caption2: what sugarcrepe_parts' caption says, phrased otherwise (held-out words only).

    Stated from the other object's side ('a square in blue on the right of a circle in red') or as a held-out
    relation sentence ('The blue square appears on the right of the red circle.'); a caption without a relation
    lists the objects the other way round or joins them with 'together with'. So caption2 shares fewer words with
    the caption than the negative does (the point of SugarCrepe++) and the same relation words as a replace_rel
    negative."""
    a, b, sized = parts["a"], parts["b"], parts["sized"]
    inverse = relation_words(INVERSE[parts["relation"]], rng, "eval") if parts["phrase"] else None
    if rng.random() < 0.5:
        b_np, a_np = (SECOND_OBJECT.format(size=o["size"] + " " if sized else "", shape=o["shape"],
                                           colour=o["colour"]) for o in (b, a))
        return f"{b_np} {inverse} {a_np}" if inverse else rng.choice((f"{b_np} and {a_np}",
                                                                       f"{a_np} together with {b_np}"))
    the_b, the_a = (f"the {noun(o, sized)}" for o in (b, a))
    if not inverse:
        return f"{_capitalise(the_a)} is shown together with {the_b}."
    return rng.choice(RELATION_SENTENCES["eval"]).format(subject=_capitalise(the_b), relation=inverse, object=the_a)


def whatsup_options(a: dict, b: dict, relation: str, rng: random.Random) -> dict[str, str]:
    """What'sUp's four options for 'a A <relation> a B' (held-out words), relation -> caption: the true one first,
    then the other three relations in RELATIONS order."""
    order = [relation] + [r for r in RELATIONS if r != relation]
    return {r: pair_caption(noun(a), noun(b), relation_words(r, rng, "eval")) for r in order}


def aro_relation(scene: dict, rng: random.Random) -> tuple[str, str, str, tuple[dict, dict]]:
    """(true, false, relation name, the two objects): 'the A is <rel> the B' vs subject and object exchanged."""
    a, relation, b = _related_pair(scene, rng)
    words = relation_words(relation, rng, "eval")
    return (f"the {noun(a)} is {words} the {noun(b)}", f"the {noun(b)} is {words} the {noun(a)}", relation, (a, b))


def aro_attribution(scene: dict, rng: random.Random) -> tuple[str, str, list[str], tuple[dict, dict]]:
    """(true, false, [colour A, colour B], the objects): 'the red circle and the blue square' vs colours exchanged."""
    a, b = rng.sample(scene["objects"][:2], 2)
    true = f"the {noun(a)} and the {noun(b)}"
    false = f"the {b['colour']} {a['shape']} and the {a['colour']} {b['shape']}"
    return true, false, [a["colour"], b["colour"]], (a, b)


def winoground_captions(scene_0: dict, scene_1: dict, kind: str, rng: random.Random) -> tuple[str, str]:
    """Captions true of scene_0 and scene_1 with the same words in another order.

    kind "relation": scene_1 has objects 0 and 1 at exchanged positions; "binding": their colours exchanged."""
    a, b = scene_0["objects"][0], scene_0["objects"][1]
    rel = scene_0["relations"][0]
    relation = rel["relation"] if rel["subject"] == 0 else INVERSE[rel["relation"]]  # object 0 relative to 1
    if kind == "relation":
        assert scene_1["relations"][0]["relation"] == INVERSE[scene_0["relations"][0]["relation"]]
        words = relation_words(relation, rng, "eval")
        return pair_caption(noun(a), noun(b), words), pair_caption(noun(b), noun(a), words)
    if kind != "binding":
        raise ValueError(f"unknown Winoground pair kind {kind!r}; choose 'relation' or 'binding'")
    a1, b1 = scene_1["objects"][0], scene_1["objects"][1]
    assert (a1["colour"], b1["colour"]) == (b["colour"], a["colour"])
    words = relation_words(relation, rng, "eval") if rng.random() < 0.5 else None
    return pair_caption(noun(a), noun(b), words), pair_caption(noun(a1), noun(b1), words)
