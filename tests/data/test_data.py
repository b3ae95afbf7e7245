"""Dataset loading: our JSONL format, Karpathy files, bad-record policies, images, writes."""

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from slq.data import (PAD_GREY, ImageRecord, ImageTextDataset, load_dataset, load_image, load_jsonl, load_karpathy,
                      pad_to_square, write_dataset_info, write_jsonl)
from slq.errors import DataError, SettingError, SLQError


def make_png(path: Path, size: int = 4, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def make_truncated_png(path: Path) -> Path:
    """A real PNG cut in half; noise so the pixel data spans many bytes and decoding needs all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise((64, 64), 50).convert("RGB").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rec(image: str, *captions: str) -> str:
    return json.dumps({"image": image, "captions": list(captions)})


@pytest.fixture
def images(tmp_path: Path) -> Path:
    make_png(tmp_path / "imgs" / "a.png")
    make_png(tmp_path / "imgs" / "b.png", color=(0, 0, 255))
    return tmp_path / "imgs"


# ---------------------------------------------------------------------------------------------
# JSONL


def test_jsonl_loads_relative_paths_strips_and_ignores_blank_lines_and_extra_keys(tmp_path, images):
    path = write_lines(
        tmp_path / "train.jsonl",
        [
            rec("imgs/a.png", "  a red square ", "red"),
            "",
            "   ",
            json.dumps({"image": str(images / "b.png"), "captions": ["blue"], "id": 7}),
        ],
    )
    ds = load_jsonl(path)
    assert ds.name == "train"
    assert len(ds) == 2
    assert ds.records[0] == ImageRecord(images / "a.png", ("a red square", "red"), f"{path}:1")
    assert ds.records[1].image == images / "b.png" and ds.records[1].source == f"{path}:4"
    assert ds.skipped == []
    assert all(p.is_absolute() for p in ds.image_paths())


def test_texts_and_text_to_image_are_consistent():
    ds = ImageTextDataset(
        records=[
            ImageRecord(Path("/x/a.png"), ("a1", "a2", "a3"), "f:1"),
            ImageRecord(Path("/x/b.png"), ("b1",), "f:2"),
            ImageRecord(Path("/x/c.png"), ("c1", "c2"), "f:3"),
        ],
        name="f",
    )
    assert ds.texts() == ["a1", "a2", "a3", "b1", "c1", "c2"]
    assert ds.text_to_image() == [0, 0, 0, 1, 2, 2]
    for text, image in zip(ds.texts(), ds.text_to_image()):
        assert text in ds.records[image].captions
    assert ds.image_paths() == [Path("/x/a.png"), Path("/x/b.png"), Path("/x/c.png")]


def test_write_then_load_round_trip_uses_relative_paths(tmp_path, images):
    outside = make_png(tmp_path.parent / f"{tmp_path.name}_outside.png")
    records = [
        ImageRecord(images / "a.png", ("a red square", "ünïcode \u2028 caption"), "x:1"),
        ImageRecord(images / "b.png", ("blue",), "x:2"),
        ImageRecord(outside, ("outside the folder",), "x:3"),
    ]
    out = tmp_path / "data" / "out.jsonl"
    out.parent.mkdir()
    write_jsonl(records, out, relative_to=tmp_path)
    write_jsonl(records, tmp_path / "here.jsonl")
    lines = (tmp_path / "here.jsonl").read_text("utf-8").splitlines()
    written = [json.loads(line) for line in lines]
    assert [w["image"] for w in written] == ["imgs/a.png", "imgs/b.png", str(outside)]

    loaded = load_jsonl(tmp_path / "here.jsonl")
    assert [(r.image, r.captions) for r in loaded.records] == [
        (r.image, r.captions) for r in records
    ]
    # Written relative to tmp_path but stored in data/: the paths resolve once the file moves up.
    assert json.loads(out.read_text("utf-8").splitlines()[0])["image"] == "imgs/a.png"
    os.replace(out, tmp_path / "moved.jsonl")
    moved = load_jsonl(tmp_path / "moved.jsonl")
    assert moved.image_paths()[:2] == [images / "a.png", images / "b.png"]


# Each malformed line, the line it sits on (2: line 1 is always good) and words of the reason.
BAD_LINES = {
    "bad_json": ('{"image": "imgs/a.png", "captions": ["x"]', "invalid JSON"),
    "not_object": ('["imgs/a.png", ["x"]]', "JSON object"),
    "missing_image": ('{"captions": ["x"]}', 'missing "image"'),
    "image_not_string": ('{"image": 3, "captions": ["x"]}', '"image" must be'),
    "empty_captions": ('{"image": "imgs/a.png", "captions": []}', '"captions" must be'),
    "captions_not_list": ('{"image": "imgs/a.png", "captions": "x"}', '"captions" must be'),
    "non_string_caption": ('{"image": "imgs/a.png", "captions": ["x", 5]}', '"captions" must be'),
    "blank_caption": ('{"image": "imgs/a.png", "captions": ["x", "  "]}', '"captions" must be'),
    "missing_file": ('{"image": "imgs/nope.png", "captions": ["x"]}', "image not found"),
    "truncated_png": ('{"image": "imgs/cut.png", "captions": ["x"]}', "cannot read image"),
    "not_an_image": ('{"image": "imgs/text.png", "captions": ["x"]}', "cannot read image"),
}


def around(line: str) -> list[str]:
    """The line under test on line 2, between two good records."""
    return [rec("imgs/a.png", "ok"), line, rec("imgs/b.png", "ok")]


@pytest.fixture
def bad_images(images: Path) -> Path:
    make_truncated_png(images / "cut.png")
    (images / "text.png").write_text("this is not a png")
    return images


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_malformed_record_raises_with_file_and_line(case, tmp_path, bad_images):
    line, reason = BAD_LINES[case]
    path = write_lines(tmp_path / f"{case}.jsonl", around(line))
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: "), message
    assert reason in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_malformed_record_is_skipped_and_listed(case, tmp_path, bad_images):
    line, reason = BAD_LINES[case]
    path = write_lines(tmp_path / f"{case}.jsonl", around(line))
    ds = load_jsonl(path, on_bad_record="skip")
    assert [r.source for r in ds.records] == [f"{path}:1", f"{path}:3"]
    assert len(ds.skipped) == 1
    assert ds.skipped[0].source == f"{path}:2"
    assert reason in ds.skipped[0].reason


def test_skipped_records_are_listed_in_file_order(tmp_path, bad_images):
    # Line 2 fails the (later) image check, line 3 the (earlier) syntax check.
    lines = [rec("imgs/a.png", "ok"), rec("imgs/nope.png", "x"), "{oops", rec("imgs/b.png", "ok")]
    ds = load_jsonl(write_lines(tmp_path / "d.jsonl", lines), on_bad_record="skip")
    assert [s.source.rsplit(":", 1)[1] for s in ds.skipped] == ["2", "3"]


def test_check_images_false_does_not_open_images(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [rec("imgs/missing.png", "x")])
    assert load_jsonl(path, check_images=False).image_paths() == [tmp_path / "imgs" / "missing.png"]


def test_all_bad_file_is_an_error_even_when_skipping(tmp_path):
    path = write_lines(tmp_path / "all_bad.jsonl", ["{", rec("nope.png", "x")])
    with pytest.raises(DataError, match="all_bad.jsonl: no usable records"):
        load_jsonl(path, on_bad_record="skip")
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match="empty.jsonl: no usable records"):
        load_jsonl(empty)


def test_missing_file_and_unknown_policy(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_jsonl(tmp_path / "nope.jsonl")
    path = write_lines(tmp_path / "d.jsonl", [rec("a.png", "x")])
    with pytest.raises(SLQError, match="^on_bad_record ignore: must be one of error, skip"):
        load_jsonl(path, on_bad_record="ignore", check_images=False)
    with pytest.raises(SLQError, match="on_bad_record"):
        load_karpathy(path, on_bad_record="warn", check_images=False)


def test_invalid_utf8_line_names_the_line(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(rec("a.png", "x").encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"bin\.jsonl:2: line is not valid UTF-8"):
        load_jsonl(path, check_images=False)


# ---------------------------------------------------------------------------------------------
# Karpathy


def karpathy_entry(filename: str, split: str, *raws: str, filepath: str | None = None) -> dict:
    sentences = [{"raw": r, "tokens": []} for r in raws]
    entry = {"filename": filename, "split": split, "sentences": sentences}
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """A COCO-like file (with "filepath") whose images live in tmp_path/root."""
    for name in ["val2014/v1.png", "val2014/v2.png", "train2014/t1.png", "val2014/r1.png"]:
        make_png(tmp_path / "root" / name)
    images = [
        karpathy_entry("v1.png", "test", "A cat. ", "a cat sitting", filepath="val2014"),
        karpathy_entry("t1.png", "train", "a train", filepath="train2014"),
        karpathy_entry("v2.png", "val", "a dog", filepath="val2014"),
        karpathy_entry("r1.png", "restval", "a rest", filepath="val2014"),
        karpathy_entry("v2.png", "test", "same image again", filepath="val2014"),
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_karpathy_with_filepath_and_split_selection(tmp_path, coco):
    root = tmp_path / "root"
    test = load_karpathy(coco, image_root=root)
    assert test.name == "dataset_coco-test"
    assert test.image_paths() == [root / "val2014" / "v1.png", root / "val2014" / "v2.png"]
    assert test.records[0].captions == ("A cat.", "a cat sitting")
    assert test.records[0].source == f"{coco}:images[0]"
    assert test.records[1].source == f"{coco}:images[4]"
    assert test.texts() == ["A cat.", "a cat sitting", "same image again"]
    assert load_karpathy(coco, image_root=root, split="val").texts() == ["a dog"]
    assert load_karpathy(coco, image_root=root, split="train").texts() == ["a train"]
    both = load_karpathy(coco, image_root=root, split="train+restval")
    assert both.texts() == ["a train", "a rest"]


def test_karpathy_without_filepath_defaults_root_to_json_folder(tmp_path):
    make_png(tmp_path / "f1.png")
    make_png(tmp_path / "f2.png")
    path = tmp_path / "dataset_flickr30k.json"
    entries = [karpathy_entry("f1.png", "test", "one"), karpathy_entry("f2.png", "test", "two")]
    path.write_text(json.dumps({"images": entries}))
    ds = load_karpathy(path)
    assert ds.image_paths() == [tmp_path / "f1.png", tmp_path / "f2.png"]
    assert ds.text_to_image() == [0, 1]


def test_karpathy_unknown_split(coco):
    allowed = r"train, val, test, restval, train\+restval"
    with pytest.raises(DataError, match=f"split must be one of {allowed}; got 'dev'"):
        load_karpathy(coco, split="dev")


def test_karpathy_bad_entries_error_or_skip(tmp_path, coco):
    data = json.loads(coco.read_text())
    data["images"][1] = karpathy_entry("t1.png", "test", "   ")  # blank raw caption
    data["images"].append("not an entry")  # images[5]
    data["images"].append(karpathy_entry("gone.png", "test", "x", filepath="val2014"))  # images[6]
    coco.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"dataset_coco\.json:images\[1\]: .*\"raw\""):
        load_karpathy(coco, image_root=tmp_path / "root")
    ds = load_karpathy(coco, image_root=tmp_path / "root", on_bad_record="skip")
    where = [s.source.rsplit(":", 1)[1] for s in ds.skipped]
    assert where == ["images[1]", "images[5]", "images[6]"]
    assert "image not found" in ds.skipped[2].reason
    assert len(ds) == 2


@pytest.mark.parametrize(
    "content, match",
    [
        ("{", "invalid JSON"),
        ("[]", '"images" list'),
        ('{"images": {}}', '"images" list'),
        ('{"images": []}', "no usable records in split 'test'"),
    ],
)
def test_karpathy_malformed_file(tmp_path, content, match):
    path = tmp_path / "k.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        load_karpathy(path, check_images=False)
    assert str(info.value).startswith(str(path))


def test_karpathy_missing_image_root(coco, tmp_path):
    with pytest.raises(DataError, match="image root is not a folder"):
        load_karpathy(coco, image_root=tmp_path / "nowhere")


def test_karpathy_max_captions_keeps_the_first_sentences_in_order(tmp_path):
    make_png(tmp_path / "f1.png")
    make_png(tmp_path / "f2.png")
    seven = [f"sentence {i}" for i in range(7)]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [karpathy_entry("f1.png", "test", *seven),
                                           karpathy_entry("f2.png", "test", "only one")]}))
    ds = load_karpathy(path, max_captions=5)
    assert ds.records[0].captions == tuple(seven[:5])
    assert ds.records[1].captions == ("only one",)  # fewer than N: all kept
    assert ds.text_to_image() == [0] * 5 + [1]
    assert load_karpathy(path).records[0].captions == tuple(seven)  # default: all
    assert load_dataset(path, max_captions=5).texts() == seven[:5] + ["only one"]


def test_jsonl_max_captions_keeps_the_first_captions(tmp_path, images):
    jsonl = write_lines(tmp_path / "d.jsonl", [rec("imgs/a.png", "one", "two", "three"), rec("imgs/b.png", "four")])
    assert load_jsonl(jsonl, max_captions=2).texts() == ["one", "two", "four"]
    assert load_dataset(jsonl, max_captions=1).texts() == ["one", "four"]
    assert load_dataset(jsonl).texts() == ["one", "two", "three", "four"]


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "5"])
def test_bad_max_captions_is_refused_before_reading(tmp_path, value):
    missing = tmp_path / "missing.json"
    for load in (load_dataset, load_karpathy, load_jsonl):
        with pytest.raises(SettingError, match=r"max_captions .*: must be an integer >= 1 \(or None"):
            load(missing, max_captions=value)


# ---------------------------------------------------------------------------------------------
# load_dataset dispatch


def test_load_dataset_dispatches_by_suffix(tmp_path, images, coco):
    jsonl = write_lines(tmp_path / "d.jsonl", [rec("imgs/a.png", "x")])
    assert load_dataset(jsonl).texts() == ["x"]
    assert load_dataset(coco, image_root=tmp_path / "root").name == "dataset_coco-test"
    assert load_dataset(coco, image_root=tmp_path / "root", split="val").texts() == ["a dog"]


@pytest.mark.parametrize("flag", ["image_root", "split"])
def test_load_dataset_rejects_karpathy_flags_for_jsonl(tmp_path, flag):
    jsonl = write_lines(tmp_path / "d.jsonl", [rec("a.png", "x")])
    with pytest.raises(DataError, match=f"d.jsonl: {flag} applies only to Karpathy"):
        load_dataset(jsonl, **{flag: "test" if flag == "split" else tmp_path}, check_images=False)


def test_load_dataset_rejects_folders_and_other_suffixes(tmp_path):
    with pytest.raises(DataError, match="is a folder; expected a .jsonl file"):
        load_dataset(tmp_path)
    (tmp_path / "d.csv").write_text("image,caption\n")
    with pytest.raises(DataError, match=r"d\.csv: unsupported file type '\.csv'; expected"):
        load_dataset(tmp_path / "d.csv")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------
# Images and writes


@pytest.mark.parametrize("size, box", [((6, 2), (0, 2, 6, 4)), ((5, 2), (0, 1, 5, 3)), ((2, 7), (2, 0, 4, 7))])
def test_pad_to_square_centres_the_image_on_grey(size, box):
    red = (200, 30, 30)
    square = pad_to_square(Image.new("RGB", size, red))
    side = max(size)
    assert square.size == (side, side) and square.mode == "RGB" and PAD_GREY == (127, 127, 127)
    left, top, right, bottom = box  # where the image lands: centred, an odd margin's extra pixel after it
    for x in range(side):
        for y in range(side):
            inside = left <= x < right and top <= y < bottom
            assert square.getpixel((x, y)) == (red if inside else PAD_GREY), (x, y)


def test_pad_to_square_keeps_a_square_and_converts_to_rgb():
    image = Image.new("RGB", (4, 4), (1, 2, 3))
    assert pad_to_square(image) is image
    grey = pad_to_square(Image.new("L", (1, 3), 9))
    assert grey.mode == "RGB" and [grey.getpixel((x, 1)) for x in range(3)] == [PAD_GREY, (9, 9, 9), PAD_GREY]


def test_load_image_decodes_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (3, 2), 128).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (3, 2) and img.getpixel((0, 0)) == (128, 128, 128)
    record = ImageRecord(path, ("x",), "d.jsonl:4")
    assert load_image(record).mode == "RGB"


@pytest.mark.parametrize("kind", ["truncated", "not_image", "missing"])
def test_load_image_failure_is_data_error_with_source(tmp_path, kind):
    path = tmp_path / "x.png"
    if kind == "truncated":
        make_truncated_png(path)
    elif kind == "not_image":
        path.write_bytes(b"\x89PNG not really")
    record = ImageRecord(path, ("x",), "d.jsonl:4")
    with pytest.raises(DataError) as info:
        load_image(record)
    assert str(info.value).startswith(f"d.jsonl:4: cannot read image {path}: ")
    with pytest.raises(DataError, match="^batch 3: cannot read image"):
        load_image(path, source="batch 3")


# ---------------------------------------------------------------------------------------------
# Properties: arbitrary input gives a dataset or a DataError, nothing else

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
# Records that are often nearly right, so the checks past "is it an object" get exercised too.
near_records = st.fixed_dictionaries(
    {"image": json_values | st.text(max_size=10)},
    optional={"captions": json_values | st.lists(json_values | st.text(max_size=10), max_size=3)},
)
PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _load_or_data_error(load, path: Path, **kwargs) -> None:
    for policy in ("error", "skip"):
        try:
            ds = load(path, on_bad_record=policy, check_images=False, **kwargs)
        except DataError as e:
            assert len(str(e).splitlines()) == 1, f"message is not one line: {e!r}"
        else:
            assert len(ds) > 0
            for r in ds.records:
                assert r.captions and all(c and c.strip() == c for c in r.captions), r


@PROPERTY
@given(lines=st.lists(st.text(), max_size=5))
def test_property_arbitrary_text_lines(tmp_path, lines):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    _load_or_data_error(load_jsonl, path)


@PROPERTY
@given(values=st.lists(json_values | near_records, max_size=5))
def test_property_arbitrary_json_lines(tmp_path, values):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(v) for v in values), encoding="utf-8")
    _load_or_data_error(load_jsonl, path)


sentence = json_values | st.fixed_dictionaries({"raw": json_values | st.text()})
karpathy_entries = st.fixed_dictionaries(
    {
        "filename": json_values | st.text(max_size=10),
        "split": st.sampled_from(["test", "train", "restval", "x"]) | json_values,
    },
    optional={
        "filepath": json_values | st.text(max_size=5),
        "sentences": json_values | st.lists(sentence, max_size=3),
    },
)


def _load_karpathy_or_data_error(path: Path, top) -> None:
    path.write_text(json.dumps(top), encoding="utf-8")
    _load_or_data_error(load_karpathy, path, split="train+restval")
    _load_or_data_error(load_karpathy, path)


@PROPERTY
@given(top=json_values)
def test_property_arbitrary_karpathy_file(tmp_path, top):
    _load_karpathy_or_data_error(tmp_path / "p.json", top)


@PROPERTY
@given(entries=st.lists(karpathy_entries | json_values, max_size=5))
def test_property_arbitrary_karpathy_entries(tmp_path, entries):
    _load_karpathy_or_data_error(tmp_path / "p.json", {"images": entries})


def test_records_keep_their_other_fields_and_write_them_back(tmp_path):
    """A benchmark's own labels (a category, objects) travel with its records: read, kept, written."""
    make_png(tmp_path / "a.png")
    (tmp_path / "in.jsonl").write_text(json.dumps({"image": "a.png", "captions": ["x"], "category": "Cultural Symbolism",
                                                   "objects": [{"shape": "star"}]}) + "\n")
    record = load_jsonl(tmp_path / "in.jsonl").records[0]
    assert record.meta == {"category": "Cultural Symbolism", "objects": [{"shape": "star"}]}
    write_jsonl([record], tmp_path / "out.jsonl")
    assert load_jsonl(tmp_path / "out.jsonl").records[0].meta == record.meta
    assert record == ImageRecord(record.image, record.captions, record.source)  # meta is data, not identity


def test_karpathy_entries_keep_their_ids(tmp_path):
    make_png(tmp_path / "a.png")
    entry = {"filename": "a.png", "split": "test", "cocoid": 42, "sentences": [{"raw": "x"}]}
    (tmp_path / "dataset_x.json").write_text(json.dumps({"images": [entry]}))
    assert load_karpathy(tmp_path / "dataset_x.json").records[0].meta == {"cocoid": 42}


def test_a_dataset_names_its_two_directions(tmp_path):
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"text": "cat", "captions": ["a feline"]}) + "\n")
    assert load_jsonl(tmp_path / "pairs.jsonl").directions == ("t2i", "i2t")
    assert load_dataset(tmp_path / "pairs.jsonl", directions=("d2w", "w2d")).directions == ("d2w", "w2d")
    with pytest.raises(SLQError, match="two different non-empty names"):
        load_jsonl(tmp_path / "pairs.jsonl", directions=("d2w", "d2w"))
    write_dataset_info(tmp_path, ("c2t", "t2c"))  # the folder names them for every file in it
    assert load_jsonl(tmp_path / "pairs.jsonl").directions == ("c2t", "t2c")
    (tmp_path / "slq-dataset.json").write_text('{"directions": "c2t"}')
    with pytest.raises(DataError, match="slq-dataset.json: .directions. must list two names"):
        load_jsonl(tmp_path / "pairs.jsonl")
