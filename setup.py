"""Only what pyproject.toml cannot say: the packages are every package under ``unlearning/`` (found, so a new one is
never left out of the wheel) plus the repository's ``assets/`` folder installed as ``unlearning/assets``, so the
embedded twins travel with an installed package (``unlearning/paths.py`` looks there first). Metadata: pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["unlearning", "unlearning.*"]), "unlearning.assets"],
    package_dir={"unlearning.assets": "assets"},
    package_data={"unlearning.assets": ["**/*"]},
)
