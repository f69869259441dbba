"""flora-train: recipes, generated tasks, the training loop and parameter budgets."""

from .budget import ffba_params, ffba_width_for_lora, lora_params, lora_rank_for_ffba
from .recipe import Recipe, load_recipe

__all__ = ["Recipe", "load_recipe", "train", "ffba_params", "lora_params",
           "ffba_width_for_lora", "lora_rank_for_ffba"]


def train(recipe: Recipe, **kwargs) -> dict:
    """Run a recipe (see flora_export.train.trainer.train); imports Accelerate lazily."""
    from .trainer import train as _train
    return _train(recipe, **kwargs)
