"""Readers for the monotonic tabular benchmarks in ../shared/data/tabular (see its README):
COMPAS, Heart (Cleveland) and Auto-MPG, as float feature matrices with monotone signs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class Table:
    name: str
    task: str  # "binary" or "regression"
    features: list[str]
    monotone: list[int]  # +1 / -1 / 0 per feature
    x: np.ndarray  # all rows, or the training rows when the dataset ships a fixed split
    y: np.ndarray
    x_test: np.ndarray | None = None  # fixed test split (Heart), else a random 80/20 split per seed
    y_test: np.ndarray | None = None


def compas(root: Path) -> Table:
    df = pd.read_csv(root / "compas_scores_two_years.csv")
    keep = (
        df.days_b_screening_arrest.between(-30, 30)
        & (df.is_recid != -1)
        & (df.c_charge_degree != "O")
        & df.score_text.notna()
        & (df.score_text != "N/A")
    )
    df = df[keep]
    increasing = ["priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count"]
    races = sorted(df.race.unique())
    x = pd.concat(
        [
            df[increasing + ["age"]].astype(float),
            (df.sex == "Male").astype(float).rename("male"),
            pd.get_dummies(df.race, prefix="race").reindex(columns=[f"race_{r}" for r in races]).astype(float),
        ],
        axis=1,
    )
    signs = [1] * len(increasing) + [0] * (x.shape[1] - len(increasing))
    return Table("COMPAS", "binary", list(x.columns), signs, x.to_numpy(), df.two_year_recid.to_numpy().astype(float))


def heart(root: Path) -> Table:
    train = pd.read_csv(root / "heart_train.csv", index_col=0)
    test = pd.read_csv(root / "heart_test.csv", index_col=0)
    features = [c for c in train.columns if c != "target"]
    signs = [1 if c in ("trestbps", "chol") else 0 for c in features]
    return Table(
        "Heart",
        "binary",
        features,
        signs,
        train[features].to_numpy(float),
        train.target.to_numpy(float),
        test[features].to_numpy(float),
        test.target.to_numpy(float),
    )


def auto_mpg(root: Path) -> Table:
    df = pd.read_csv(root / "auto-mpg.csv", na_values="?").dropna(subset=["horsepower"])
    features = ["cylinders", "displacement", "horsepower", "weight", "acceleration", "model year", "origin"]
    signs = [-1 if c in ("displacement", "horsepower", "weight") else 0 for c in features]
    return Table("Auto-MPG", "regression", features, signs, df[features].to_numpy(float), df.mpg.to_numpy(float))


LOADERS = {"compas": compas, "heart": heart, "auto_mpg": auto_mpg}
