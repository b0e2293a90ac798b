"""Latent-space tools on VAE/AAE detectors and CVAE generators, tables and images."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.datasets import load_digits

from anomaly_ae import Detector, Generator
from anomaly_ae.augment.latent import LatentSpace, attribute_vector, interpolate, plot_latent_map
from anomaly_ae.data.synthetic import LABEL_COLUMNS, METRIC_COLUMNS, make_telemetry
from anomaly_ae.exceptions import DataError

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def table():
    return make_telemetry(800, 0.0, seed=21).drop(columns=list(LABEL_COLUMNS))


@pytest.fixture(scope="module", params=["vae", "aae"])
def detector(request, table):
    return Detector(request.param, epochs=40, patience=8, random_state=0).fit(table)


@pytest.fixture(scope="module")
def cvae(table):
    return Generator("cvae", condition_cols="mode", epochs=60, patience=10, quality=False,
                     random_state=0).fit(table)


def test_encode_decode_roundtrip_on_detectors(detector, table):
    space = LatentSpace(detector)
    z = space.encode(table.head(50))
    assert z.shape == (50, space.latent_dim)
    back = space.decode(z)
    assert list(back.columns) == list(table.columns)
    # Reconstructions land near their inputs (in units of each column's spread) and keep the mode.
    err = ((back[list(METRIC_COLUMNS)] - table.head(50)[list(METRIC_COLUMNS)].to_numpy()).abs()
           / table[list(METRIC_COLUMNS)].std()).median().median()
    assert err < 0.5
    assert (back["mode"].to_numpy() == table.head(50)["mode"].to_numpy()).mean() > 0.9


def test_interpolation_has_both_endpoints(detector, table):
    day = table[table["mode"] == "day"].iloc[0]
    batch = table[table["mode"] == "batch"].iloc[0]
    path = interpolate(detector, day, batch, steps=6)
    assert len(path) == 6
    assert path["mode"].iloc[0] == "day" and path["mode"].iloc[-1] == "batch"
    # CPU moves monotonically-ish from day level to batch level.
    assert path["cpu_util_pct"].iloc[-1] > path["cpu_util_pct"].iloc[0]
    slerp = LatentSpace(detector).interpolate(day, batch, steps=4, spherical=True)
    assert len(slerp) == 4


def test_attribute_vector_moves_rows_towards_the_group(detector, table):
    space = LatentSpace(detector)
    batch, night = table[table["mode"] == "batch"], table[table["mode"] == "night"]
    vector = attribute_vector(detector, batch, night)
    assert vector.shape == (space.latent_dim,)
    moved = space.apply_attribute(night.head(40), vector, factor=1.0)
    assert moved["disk_io_mb_s"].mean() > night["disk_io_mb_s"].mean() + 0.5 * (
        batch["disk_io_mb_s"].mean() - night["disk_io_mb_s"].mean())
    unchanged = space.apply_attribute(night.head(40), vector, factor=0.0)
    assert (unchanged["mode"] == "night").mean() > 0.9


def test_latent_map_png_by_column_and_by_score(detector, table, tmp_path):
    plot_latent_map(detector, table.head(300), "mode", tmp_path / "by_mode.png")
    plot_latent_map(detector, table.head(300), "score", tmp_path / "by_score.png")
    assert (tmp_path / "by_mode.png").read_bytes()[:8] == PNG
    assert (tmp_path / "by_score.png").read_bytes()[:8] == PNG
    xy, axis = LatentSpace(detector).map_2d(table.head(20))
    assert xy.shape == (20, 2)
    with pytest.raises(DataError, match="neither"):
        plot_latent_map(detector, table.head(20), "nope")


def test_cvae_code_keeps_style_and_condition_sets_context(cvae, table):
    space = LatentSpace(cvae)
    day = table[table["mode"] == "day"].head(30)
    z = space.encode(day)
    as_batch = space.decode(z, {"mode": "batch"})
    assert (as_batch["mode"] == "batch").all()
    assert as_batch["disk_io_mb_s"].mean() > 3 * day["disk_io_mb_s"].mean()
    moved = space.reconstruct(day, condition={"mode": "night"})
    assert moved["requests_per_s"].mean() < 0.5 * day["requests_per_s"].mean()
    path = space.interpolate(day.iloc[0], day.iloc[1], steps=3)
    assert len(path) == 3 and (path["mode"] == "day").all()
    with pytest.raises(DataError, match="condition"):
        space.decode(z)


def test_image_latents_on_digits(tmp_path):
    digits = load_digits()
    images, labels = digits.images[:600], digits.target[:600]
    det = Detector("vae", epochs=15, random_state=0).fit(images)
    space = LatentSpace(det)
    assert space.decode(space.encode(images[:4])).shape == (4, 8, 8)
    assert space.interpolate(images[0], images[1], 5).shape == (5, 8, 8)
    space.plot_map(images, labels, tmp_path / "digits.png")
    assert (tmp_path / "digits.png").read_bytes()[:8] == PNG
    gen = Generator("cvae", epochs=10, quality=False, random_state=0).fit(images, labels)
    gspace = LatentSpace(gen)
    z = gspace.encode(images[:3], condition=labels[:3])
    assert gspace.decode(z, condition=8).shape == (3, 8, 8)
    with pytest.raises(DataError, match="condition"):
        gspace.encode(images[:3])


def test_models_without_a_latent_space_are_refused(table):
    with pytest.raises(DataError, match="VAE or AAE"):
        LatentSpace(Detector("pca").fit(table))
    with pytest.raises(DataError, match="encoder"):
        LatentSpace(Generator("gan", steps=2, quality=False).fit(table.head(100)))
    with pytest.raises(DataError):
        LatentSpace(pd.DataFrame())
