"""The README stays true: its recipe reference is the schema's, its commands are the ones CI runs."""

from pathlib import Path

from launcher.recipe.reference import BEGIN, END, reference

REPO = Path(__file__).resolve().parents[1]


def test_recipe_reference_in_readme_is_generated_from_the_schema():
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert block == reference(), "run: python -m launcher.recipe.reference and paste it into README.md"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest" in readme
    assert "python -m pytest" in ci
    assert "pip install torch==2.13.0" in readme and "pip install torch==2.13.0" in ci
