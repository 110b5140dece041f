"""Gao et al. 2022 fits: exact recovery on the forms, R^2, the CSV reader, errors."""

import csv
import json

import numpy as np
import pytest

from rlhf_jax.experiments import gao


@pytest.mark.parametrize("form, curve", [
    ("bon", lambda d: d * (0.8 - 0.15 * d)),
    ("rl", lambda d: d * (0.5 - 0.2 * np.log(d))),
])
def test_fit_recovers_the_coefficients(form, curve):
    kl = np.array([0.2, 0.7, 1.3, 2.1, 3.5, 6.0])
    f = gao.fit(kl, curve(np.sqrt(kl)), form)
    expected = (0.8, 0.15) if form == "bon" else (0.5, 0.2)
    assert (f.a, f.b) == pytest.approx(expected, abs=1e-9)
    assert f.r2 == pytest.approx(1.0)


def test_fit_r2_drops_with_noise_and_errors():
    rng = np.random.default_rng(0)
    kl = np.linspace(0.1, 5, 40)
    d = np.sqrt(kl)
    noisy = d * (0.8 - 0.15 * d) + rng.normal(0, 0.2, kl.shape)
    assert 0.0 < gao.fit(kl, noisy, "bon").r2 < 0.95
    with pytest.raises(ValueError, match="form"):
        gao.fit(kl, noisy, "linear")
    with pytest.raises(ValueError, match="distinct"):
        gao.fit([1.0, 1.0], [0.1, 0.1], "bon")


def test_fits_from_csv(tmp_path, capsys):
    path = tmp_path / "bon_ppo_dpo.csv"
    header = ["figure", "panel", "curve", "point", "x_mean", "x_min", "x_max", "y_mean", "y_min",
              "y_max", "y_std", "num_seeds", "x_seeds", "y_seeds", "runs"]
    base = 0.1
    rows = []
    for i, kl in enumerate([0.0, 0.19, 0.64, 1.2, 1.84]):
        d = np.sqrt(kl)
        y = base + d * (0.9 - 0.2 * d)
        rows.append(["f", "gold score vs KL", "best-of-N (RM-ranked)", i, kl, kl, kl, y, y, y, 0,
                     2, f"{kl};{kl}", f"{y};{y}", "a;b"])
    for i, kl in enumerate([0.5, 2.0, 8.0]):
        d = np.sqrt(kl)
        y = base + d * (0.4 - 0.1 * np.log(d))
        rows.append(["f", "gold score vs KL", "PPO, fixed beta", i, kl, kl, kl, y, y, y, 0, 1,
                     f"{kl}", f"{y}", "c"])
    rows.append(["f", "RM score vs KL", "PPO, fixed beta", 0, 1, 1, 1, 5, 5, 5, 0, 1, "1", "5",
                 "c"])
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    fits = gao.main([str(path)])
    assert fits["best-of-N (RM-ranked)"]["form"] == "bon"
    assert fits["best-of-N (RM-ranked)"]["a"] == pytest.approx(0.9, abs=1e-6)
    assert fits["PPO, fixed beta"]["b"] == pytest.approx(0.1, abs=1e-6)
    assert fits["PPO, fixed beta"]["initial_gold"] == pytest.approx(base)
    written = json.load(open(tmp_path / "gao_fits.json"))
    assert set(written) == set(fits) | {"provenance"}
    assert written["provenance"]["command"].startswith("python -m rlhf_jax.experiments.gao ")
    assert "commit" in written["provenance"]
    assert "R^2=1.000" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gao.main([str(tmp_path / "missing.csv")])
