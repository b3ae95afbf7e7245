"""A seeded synthetic world of coloured shapes: images, true captions, held-out pairs, facts.

`world` is the world itself (colours, shapes, sizes, places, drawing a scene), `knowledge` the
clues and the corpus of facts behind them (and the pilot's scenes), `captions` the captions and
questions true of a scene, `files` the splits and the folder `write_world` writes. The names below
are the package's public API; import them from here.
"""

from .captions import captions_for, knowledge_captions, knowledge_questions, knowledge_vqa_pairs, vqa_pairs
from .files import WorldConfig, generate_split, write_world
from .knowledge import (COLOUR_CLUES, COLOUR_MIXES, COUNT_CLUES, PILOT_SCENES, SEEN_COLOUR_THINGS, SEEN_COUNT_CLUES,
                        SEEN_SHAPE_CLUES, SHAPE_CLUES, TEXT_KINDS, clue_seen_with_images, knowledge_corpus,
                        pilot_texts)
from .world import (BACKGROUNDS, COLOUR_RGB, COLOURS, NUMBER_WORDS, SHAPES, SIZES, SPLITS, ShapeObject, draw_group,
                    held_out_combos, object_radius, plural, position_of, record_objects, render)

__all__ = [
    "BACKGROUNDS", "COLOUR_CLUES", "COLOUR_MIXES", "COLOUR_RGB", "COLOURS", "COUNT_CLUES", "NUMBER_WORDS",
    "PILOT_SCENES", "SEEN_COLOUR_THINGS", "SEEN_COUNT_CLUES", "SEEN_SHAPE_CLUES", "SHAPE_CLUES", "SHAPES", "SIZES",
    "SPLITS", "TEXT_KINDS", "ShapeObject", "WorldConfig", "captions_for", "clue_seen_with_images", "draw_group",
    "generate_split", "held_out_combos", "knowledge_captions", "knowledge_corpus", "knowledge_questions",
    "knowledge_vqa_pairs", "object_radius", "pilot_texts", "plural", "position_of", "record_objects", "render",
    "vqa_pairs", "write_world",
]
