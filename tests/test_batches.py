from lit_compclip.config import load_config
from lit_compclip.synth import generate
from lit_compclip.synth.batches import batch_stats
from helpers import DEFAULT


def test_family_grouping_puts_binding_and_relation_negatives_in_every_batch(tmp_path):
    generate(str(tmp_path / "w"), train_families=64, eval_families=4, shard_size=64, probe_size=4)
    # data.later_caption_fields=null: the default's epoch-2 plain lists need a world built with them; batches need keys
    cfg = load_config([DEFAULT], [f"data.train_shards={tmp_path}/w/train", "data.batch_size=32", "data.shuffle_buffer=64",
                                  "data.later_caption_fields=null"])
    stats = batch_stats(cfg, n_batches=4)
    grouped, random = stats["grouped by family"], stats["random"]
    assert grouped["binding_negative_frac"] == 1.0 and grouped["shape_negative_frac"] == 1.0
    # every family's base and position-swapped members (and their shape twins) are the same objects in inverted
    # relations; since format 8 the colour- and both-swapped members are so only when the two sizes match
    assert 0.5 <= grouped["relation_negative_frac"] < 1.0
    assert random["binding_negative_frac"] < 0.5 and random["relation_negative_frac"] < 0.5
