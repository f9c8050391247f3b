"""The caption_set config: entries parsed in order with their defaults, derived ones after their source,
and a clear error before any job for a bad ``from`` or a misspelt key inside an entry."""

import pytest

from vidcap import caption_set, config


def load(entries: dict) -> dict:
    return config.load(None, {"input": "records.json", "caption_set": entries})


def test_no_caption_set_by_default():
    assert caption_set.entries(config.load(None, {"input": "records.json"})) == []


def test_entries_keep_config_order_and_split_visual_from_derived():
    cfg = load(
        {
            "t2v": {"prompt": "Rewrite as one sentence.", "from": "dense"},
            "dense": {"prompt": "Describe everything.", "max_tokens": 64, "sampling": {"temperature": 0}},
            "short": {"prompt": "Rewrite shorter.", "from": "caption"},
            "camera": {"prompt": "How does the camera move?", "output_format": "json"},
        }
    )
    assert [e.name for e in caption_set.entries(cfg)] == ["t2v", "dense", "short", "camera"]
    assert [e.name for e in caption_set.visual_entries(cfg)] == ["dense", "camera"]
    assert [e.name for e in caption_set.derived_entries(cfg)] == ["t2v", "short"]
    dense = caption_set.visual_entries(cfg)[0]
    assert (dense.max_tokens, dense.sampling, dense.system_prompt, dense.derived) == (
        64,
        {"temperature": 0},
        None,
        False,
    )


def test_a_derived_entry_comes_after_the_derived_entry_it_rewrites():
    cfg = load(
        {
            "shorter": {"prompt": "Shorter.", "from": "short"},
            "short": {"prompt": "Short.", "from": "caption"},
        }
    )
    assert [e.name for e in caption_set.derived_entries(cfg)] == ["short", "shorter"]


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"a": {"prompt": "x", "from": "nope"}}, "caption_set.a.from: no entry 'nope'"),
        ({"a": {"prompt": "x", "from": "b"}, "b": {"prompt": "y", "from": "a"}}, "a loop (a -> b -> a)"),
        (
            {"a": {"promt": "x"}},
            "unknown config key 'caption_set.a.promt' (did you mean 'caption_set.a.prompt'?)",
        ),
        ({"a": {"prompt": "x", "sampling": {"temprature": 0}}}, "caption_set.a.sampling.temprature"),
        ({"a b": {"prompt": "x"}}, "caption_set"),
        ({"a": {}}, "'prompt' is a required property"),
    ],
)
def test_a_bad_entry_is_a_config_error_naming_it(entries, message):
    with pytest.raises(config.ConfigError, match=None) as caught:
        load(entries)
    assert message in str(caught.value)


def test_the_merge_writes_every_caption_set_field():
    from vidcap import merge

    assert set(caption_set.SET_FIELDS) <= set(merge.EXTRA_FIELDS)
