"""`compclip export`'s framework: a trained model written as a folder another library loads (native, open_clip,
sentence-transformers), with its model card, checked as it is written: the folder is loaded back the way its target
library loads it and must give the model's embeddings on a few images and captions, or nothing is left.

Each format is a module (FORMATS) with OPTIONS, TOLERANCE, check(model, options), write(model, folder, info, options)
-> model card notes, and load_back(folder) -> an encoder (encode_images, encode_texts: normalised float32 rows).
`import lit_compclip.export` stays light: torch and the formats are imported when an export runs."""

from lit_compclip.export.framework import (CHECK_TEXTS, FORMATS, ModelEncoder, check_images, compare,  # noqa: F401
                                           export_model, source_info)
