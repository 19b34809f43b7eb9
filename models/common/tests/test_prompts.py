"""Prompt files: text that no tokenizer can encode is refused in one line naming the item; an
escaped surrogate pair is a character like any other."""

import json

import pytest

from models.common.errors import UserError
from models.common.prompts import parse_prompts


@pytest.mark.parametrize("field", ["prompt", "context"])
def test_a_lone_surrogate_is_refused_naming_the_item_and_field(field):
    items = [{"prompt": "fine"}, {"prompt": "fine", field: "ab\\udc80"}]
    with pytest.raises(UserError, match=rf"^f.json: item 1: '{field}' holds a lone surrogate '\\udc80' at character 2"):
        parse_prompts(json.loads(json.dumps(items).replace("\\\\udc80", "\\udc80")), "f.json")


def test_an_escaped_surrogate_pair_is_one_character():
    prompts = parse_prompts(json.loads('[{"prompt": "smile \\ud83d\\ude00", "context": "\\u00e9t\\u00e9"}]'), "f.json")
    assert prompts[0].prompt == "smile \U0001f600" and prompts[0].text == "\u00e9t\u00e9\n\nsmile \U0001f600"
