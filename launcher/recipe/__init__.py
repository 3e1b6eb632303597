"""Recipes: the YAML a user writes, validated into a typed `Recipe`."""

from launcher.recipe.loader import LoadedRecipe, dump_recipe, load_recipe, load_resolved
from launcher.recipe.overrides import Override, parse_override
from launcher.recipe.schema import Recipe

__all__ = ["LoadedRecipe", "Override", "Recipe", "dump_recipe", "load_recipe", "load_resolved", "parse_override"]
