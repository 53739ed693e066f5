"""Recipe names resolve in ``genrec.config`` (one public function for ``genrec train`` and ``genrec sid build``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from genrec.config import RECIPES_DIR, recipe_names, resolve_recipe
from genrec.errors import ConfigError


def test_names_paths_and_none(tmp_path):
    assert "quickstart-sasrec" in recipe_names()
    assert Path(resolve_recipe("quickstart-sasrec")) == RECIPES_DIR / "quickstart-sasrec.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("model: {name: sasrec}\n")
    assert resolve_recipe(str(own)) == str(own)  # an existing path wins over the recipes folder
    assert resolve_recipe(None) is None


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="not found .*quickstart-hstu"):
        resolve_recipe("no-such-recipe")
