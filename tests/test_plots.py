"""kmlp.plots: every picture is a valid PNG that matplotlib reads back; train() draws its pictures."""

import matplotlib.image
import numpy as np
import pytest

from kmlp.plots import (CLASS_COLORS, char_class, embedding_figure, plot_embedding, plot_loss, plot_lr_find,
                        save_figure, shown_label)
from kmlp.training.lr_find import LRFindResult
from kmlp.utils.numeric import project_2d

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_size=(300, 400)):
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] >= min_size[0] and image.shape[1] >= min_size[1]
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("with_rates", [True, False])
def test_loss_plot_is_a_valid_png(tmp_path, with_rates):
    steps = np.arange(250, 20_001, 250)
    losses = 2.1 + 1.5 * np.exp(-steps / 3000)
    rates = np.where(steps <= 10_000, 0.1, 0.01) if with_rates else None
    path = plot_loss(tmp_path / "loss.png", steps, losses, dev_steps=[10_000, 20_000],
                     dev_losses=[2.25, 2.17], rates=rates)
    assert_png(path)


def test_embedding_plot_of_two_dimensions_uses_them_as_they_are(tmp_path):
    table = np.random.default_rng(0).normal(size=(27, 2))
    points, xlabel, _ = project_2d(table)
    np.testing.assert_array_equal(points, table)
    assert xlabel == "dimension 1"
    assert_png(plot_embedding(tmp_path / "embedding.png", table, list(".abcdefghijklmnopqrstuvwxyz")))


def test_pca_keeps_the_geometry_of_a_table_lying_in_a_plane(tmp_path):
    rng = np.random.default_rng(1)
    plane = np.linalg.qr(rng.normal(size=(10, 2)))[0].T   # two orthonormal directions in 10-D
    flat = rng.normal(size=(27, 2)) * [3.0, 1.0]
    table = flat @ plane + rng.normal(size=10)           # shifted off the origin
    points, xlabel, ylabel = project_2d(table)
    distances = lambda p: np.linalg.norm(p[:, None] - p[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(distances(points), distances(table), atol=1e-9)
    assert xlabel.startswith("PC 1") and "%" in ylabel
    assert points[:, 0].var() >= points[:, 1].var()
    assert_png(plot_embedding(tmp_path / "embedding.png", table, list(".abcdefghijklmnopqrstuvwxyz")))
    with pytest.raises(ValueError, match="labels"):
        plot_embedding(tmp_path / "bad.png", table, ["a", "b"])


@pytest.mark.parametrize("chars, kind", [
    ("aeiouyAEY", "vowel"), ("éëöøåæœÅÉıαέияё", "vowel"), ("bcdxzßçñŁþβσςдй", "consonant"),
    ("0379٣²", "digit"), ("-' .·_!", "other"), ("中あ", "other")])
def test_characters_are_classed_by_what_they_are(chars, kind):
    assert {c: char_class(c) for c in chars} == dict.fromkeys(chars, kind)


def label_boxes(fig):
    """Pixel boxes of the drawn labels, by label text, and the pixel centres of the points."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = {t.get_text(): t.get_bbox_patch().get_window_extent(renderer) for t in ax.texts}
    dots = ax.transData.transform(ax.collections[0].get_offsets())
    return boxes, dots, ax.get_window_extent(renderer)


@pytest.mark.parametrize("case", ["lecture-like", "crowded", "many characters"])
def test_every_embedding_label_is_legible_on_the_rendered_figure(tmp_path, case):
    rng = np.random.default_rng(3)
    labels = list(".abcdefghijklmnopqrstuvwxyz")
    if case == "many characters":
        labels += list("éëöøåæœçñß0123456789-' αβиядä中") + ["\u200b"]
    table = rng.normal(size=(len(labels), 10))
    if case != "lecture-like":
        table[1:12] = table[1]          # eleven characters on one spot
        table[12] = table[1] + 1e-3     # and one a hair away from them
    fig = embedding_figure(table, labels)
    assert_png(save_figure(fig, tmp_path / "embedding.png"))
    boxes, dots, frame = label_boxes(fig)
    shown = [shown_label(c) for c in labels]
    assert sorted(boxes) == sorted(shown)  # one label per character, none lost
    assert "␣" in boxes or case != "many characters"
    assert "U+200B" in boxes or case != "many characters"
    for i, text in enumerate(shown):
        box = boxes[text]
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        for other, other_box in boxes.items():
            if other != text:
                assert not box.overlaps(other_box), (text, other)
        for j, (x, y) in enumerate(dots):
            if j != i:
                assert not box.contains(x, y), (text, labels[j])


def test_embedding_labels_are_coloured_by_class(tmp_path):
    labels = list(".aé3-b")
    fig = embedding_figure(np.random.default_rng(0).normal(size=(6, 4)), labels)
    colours = {t.get_text(): t.get_bbox_patch().get_facecolor() for t in fig.axes[0].texts}
    from matplotlib.colors import to_rgba

    expected = {".": "boundary", "a": "vowel", "é": "vowel", "3": "digit", "-": "other", "b": "consonant"}
    assert colours == {c: to_rgba(CLASS_COLORS[k]) for c, k in expected.items()}
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["vowel", "consonant", "digit", "other", "boundary"]


def test_lr_find_plot_is_a_valid_png(tmp_path):
    rates = np.geomspace(1e-3, 1.0, 300)
    losses = 2.5 + (np.log10(rates) + 1) ** 2 + np.random.default_rng(2).normal(0, 0.2, 300)
    result = LRFindResult(rates=list(rates), losses=list(losses), smoothed=list(losses),
                          suggested_lr=0.05, floor_lr=0.1, floor_loss=2.5, diverged=True,
                          start_lr=1e-3, end_lr=1.0, num_steps=400)
    assert_png(plot_lr_find(tmp_path / "lr_find.png", result))


def test_train_writes_loss_and_embedding_pictures_into_the_run(tiny_run_dir):
    assert_png(tiny_run_dir / "loss.png")
    assert_png(tiny_run_dir / "embedding.png")
