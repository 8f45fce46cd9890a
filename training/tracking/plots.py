"""The pictures a reviewer wants next to a model: predictions vs truth, attention maps, learning curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from training.data.datasets import Dataset, as_images, split_texts  # noqa: E402
from training.fit.loop import FitResult  # noqa: E402
from training.nn import NadarayaWatson, PixelModel, Seq2Seq, SequenceModel, translate  # noqa: E402


@torch.no_grad()
def nw_predictions(model: NadarayaWatson, data: Dataset) -> Figure:
    """1-D: prediction and truth over the test grid with the training points; n-D: predicted vs actual."""
    model.cpu().eval()
    pred = model(data.test.x)[0].numpy()
    test_x, test_y = data.test.x.numpy(), data.test.y.numpy()
    train_x, train_y = data.train.x.numpy(), data.train.y.numpy()
    fig, ax = plt.subplots(figsize=(6, 4))
    if data.in_features == 1:
        ax.plot(test_x[:, 0], test_y, label="truth")
        ax.plot(test_x[:, 0], pred, label="prediction")
        ax.plot(train_x[:, 0], train_y, "o", alpha=0.5, label="training points")
        ax.set(xlabel="x", ylabel="y")
        ax.legend()
    else:
        ax.scatter(test_y, pred, s=12, alpha=0.7)
        low, high = float(test_y.min()), float(test_y.max())
        ax.plot([low, high], [low, high], "k--", linewidth=1)
        ax.set(xlabel="actual", ylabel="predicted")
    ax.set_title(f"Nadaraya-Watson on {data.name} (test split)")
    fig.tight_layout()
    return fig


@torch.no_grad()
def nw_attention_heatmap(model: NadarayaWatson, data: Dataset) -> Figure:
    """Attention weights, test queries x training keys (the seeds' heatmap)."""
    model.cpu().eval()
    weights = model(data.test.x, need_weights=True)[1].numpy()  # (Q, K)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    image = ax.imshow(weights, cmap="Reds", aspect="auto")
    ax.set(xlabel="training inputs (keys)", ylabel="test inputs (queries)", title="attention weights")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


@torch.no_grad()
def mha_pooling_heatmap(model: SequenceModel, data: Dataset, n_examples: int = 3) -> Figure:
    """Per test sequence: its input values (steps x features) beside the pooling weight of each step.

    Short sequences (digits: 8 rows of 8 pixels) run down the page so an image looks like itself;
    long ones (adding: up to 200 steps) run across it."""
    model.cpu().eval()
    x, lengths, y = data.test.x[:n_examples], data.test.lengths[:n_examples], data.test.y[:n_examples]
    out, weights = model(x, lengths, need_weights=True)
    B, D = len(x), x.shape[-1]
    down = int(lengths.max()) <= 32
    if down:
        fig, axes = plt.subplots(1, 2 * B, figsize=(4.2 * B, 4.2), width_ratios=[D, 1.3] * B, squeeze=False)
        pairs = [(axes[0, 2 * i], axes[0, 2 * i + 1]) for i in range(B)]
    else:
        fig, axes = plt.subplots(2 * B, 1, figsize=(9, 2.6 * B + 0.6), height_ratios=[2, 1] * B, squeeze=False)
        pairs = [(axes[2 * i, 0], axes[2 * i + 1, 0]) for i in range(B)]
    for i, (inputs_ax, pooling_ax) in enumerate(pairs):
        n = int(lengths[i])
        inputs, pooling = x[i, :n].numpy(), weights["pooling"][i, :n, None].numpy()  # (T, D), (T, 1)
        names = _feature_names(data, D)
        if not down:
            inputs, pooling = inputs.T, pooling.T  # (D, T), (1, T)
        _heatmap(inputs_ax, inputs, "Blues", annotate=inputs.size <= 128)
        image = _heatmap(pooling_ax, pooling, "Reds", annotate=n <= 32, vmin=0.0)
        title = f"test #{i}: target {_label(y[i], data)}, predicted {_label(out[i], data)}"
        if down:
            inputs_ax.set_xticks(range(D), names, rotation=90, fontsize=7)
            inputs_ax.set_ylabel("step")
            pooling_ax.set_xticks([0], ["pooling"])
            pooling_ax.set_yticks([])
            inputs_ax.set_title(title, fontsize=9, loc="left")
        else:
            inputs_ax.set_yticks(range(D), names)
            inputs_ax.set_xticks([])
            pooling_ax.set_yticks([0], ["pooling"])
            pooling_ax.set_xlabel("step")
            fig.colorbar(image, ax=pooling_ax, fraction=0.03, pad=0.01, aspect=5).ax.tick_params(labelsize=6)
            inputs_ax.set_title(title, fontsize=9)
    fig.suptitle("attention pooling: the input steps each prediction is read from", fontsize=11)
    fig.tight_layout()
    return fig


@torch.no_grad()
def mha_head_maps(model: SequenceModel, data: Dataset, n_examples: int = 2) -> Figure:
    """Self-attention weights (query step x key step) of every layer and head, for a few test sequences."""
    model.cpu().eval()
    x, lengths = data.test.x[:n_examples], data.test.lengths[:n_examples]
    _, weights = model(x, lengths, need_weights=True)
    heads = weights["heads"]  # (B, L, H, T, T)
    B, L, H = heads.shape[:3]
    fig, axes = plt.subplots(B * L, H, figsize=(2.6 * H + 1, 2.4 * B * L + 0.6), squeeze=False)
    for b in range(B):
        n = int(lengths[b])
        for layer in range(L):
            for h in range(H):
                ax = axes[b * L + layer, h]
                image = ax.imshow(heads[b, layer, h, :n, :n].numpy(), cmap="Reds", vmin=0.0, aspect="auto")
                fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
                ax.set_title(f"test #{b}, layer {layer + 1}, head {h + 1}", fontsize=8)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
                ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
                ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("key step", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("query step", fontsize=8)
    fig.suptitle("self-attention per layer and head (rows sum to 1)", fontsize=11)
    fig.tight_layout()
    return fig


def s2s_alignments(model: Seq2Seq, data: Dataset, n_examples: int = 4) -> Figure:
    """Alignment matrices (output characters x input characters) for a few test inputs, one panel each."""
    model.cpu().eval()
    texts, targets = split_texts(data.test.subset(slice(0, n_examples)), data)
    results = translate(model, texts, need_weights=True)
    fig, axes = plt.subplots(1, len(texts), figsize=(4.2 * len(texts), 4), squeeze=False)
    for ax, result, target in zip(axes[0], results, targets):
        ax.imshow(result.weights.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(result.input_tokens)), [c if c != " " else "␣" for c in result.input_tokens])
        ax.set_yticks(range(len(result.output_tokens)), result.output_tokens)
        ax.tick_params(labelsize=7)
        mark = "✓" if result.text == target else f"✗ (truth {target})"
        ax.set_title(f"{result.text} {mark}", fontsize=9)
        ax.set_xlabel("input characters")
    axes[0, 0].set_ylabel("output characters")
    fig.suptitle("decoder attention over the input (alignment)")
    fig.tight_layout()
    return fig


@torch.no_grad()
def pixel_attention(model: PixelModel, data: Dataset, n_examples: int = 3, n_queries: int = 3) -> Figure:
    """Per test image: the image, then where a few of its pixels attend (a heatmap over the image, the
    query pixel ringed), then the attention each pixel receives on average over all queries."""
    model.cpu().eval()
    images, y = as_images(data.test)[:n_examples], data.test.y[:n_examples]  # (B, C, H, W), (B,)
    logits, weights = model(images, need_weights=True)
    attention, gamma = weights["attention"], float(weights["gamma"])  # (B, N, N), ()
    H, W = images.shape[-2:]
    B, cols = len(images), n_queries + 2
    fig, axes = plt.subplots(B, cols, figsize=(2.3 * cols, 2.4 * B + 0.6), squeeze=False)
    for b in range(B):
        picture = images[b].sum(0).numpy()  # (H, W), channels summed
        queries = example_queries(images[b], n_queries)
        axes[b, 0].imshow(picture, cmap="Greys")
        axes[b, 0].set_title(f"test #{b}: {_label(y[b], data)}, predicted {_label(logits[b], data)}", fontsize=8)
        for ax, (row, col) in zip(axes[b, 1:], queries):
            _overlay(ax, picture, attention[b, row * W + col].reshape(H, W).numpy())
            ax.plot([col], [row], "o", markersize=11, markerfacecolor="none", markeredgecolor="tab:blue", mew=2)
            ax.set_title(f"pixel ({row}, {col}) attends", fontsize=8)
        _overlay(axes[b, -1], picture, attention[b].mean(0).reshape(H, W).numpy())
        axes[b, -1].set_title("attention received (mean)", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"pixel self-attention (rows sum to 1); gamma = {gamma:.3g} weighs it into the features", fontsize=10)
    fig.tight_layout()
    return fig


def example_queries(image: torch.Tensor, n: int) -> list[tuple[int, int]]:
    """`n` query pixels along the ink of an image (C, H, W): the brightest half of its pixels in reading order,
    taken at evenly spaced places (top, middle, bottom of the stroke)."""
    picture = image.sum(0)  # (H, W)
    ink = torch.nonzero(picture >= picture.max() / 2)  # (P, 2) in row-major order
    picks = torch.linspace(0, len(ink) - 1, n).round().long() if len(ink) else torch.zeros(0, dtype=torch.long)
    return [(int(r), int(c)) for r, c in ink[picks]]


def learning_curve(result: FitResult, metric: str) -> Figure:
    """Train loss and validation metric on axes of their own, the restored (best) epoch marked on both."""
    history, best = result.history, result.best_epoch
    epochs = [row["epoch"] for row in history]
    val_epochs = ([0] if result.initial_val_metrics else []) + epochs
    val = ([result.initial_val_metrics[metric]] if result.initial_val_metrics else []) + [
        row[f"val_{metric}"] for row in history
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)  # one epoch scale, y apart
    left.plot(epochs, [row["train_loss"] for row in history], marker=".", color="tab:blue")
    left.set(xlabel="epoch", ylabel="train loss", title="training loss")
    right.plot(val_epochs, val, marker=".", color="tab:orange")
    right.set(xlabel="epoch (0: before training)", ylabel=f"validation {metric}", title=f"validation {metric}")
    if best in val_epochs:
        right.plot([best], [val[val_epochs.index(best)]], "o", color="tab:red", markersize=9, zorder=3)
    for ax in (left, right):
        ax.axvline(best, color="tab:red", linestyle="--", linewidth=1, label=f"restored: epoch {best}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("learning curve of the refit best trial", fontsize=11)
    fig.tight_layout()
    return fig


# helpers


def _heatmap(ax, values, cmap: str, annotate: bool, vmin: float | None = None):
    image = ax.imshow(values, cmap=cmap, aspect="auto", vmin=vmin, interpolation="nearest")
    if annotate:
        high = float(values.max()) if values.size else 0.0
        for (row, col), value in np.ndenumerate(values):
            color = "white" if high and value > 0.6 * high else "black"
            ax.text(col, row, f"{value:.2g}", ha="center", va="center", fontsize=7, color=color)
    return image


def _overlay(ax, picture: np.ndarray, weights: np.ndarray) -> None:
    """Attention weights (H, W) as a heatmap over the image (H, W) drawn in grey beneath."""
    ax.imshow(picture, cmap="Greys", interpolation="nearest")
    ax.imshow(weights, cmap="Reds", alpha=0.6, vmin=0.0, interpolation="nearest")


def _feature_names(data: Dataset, n: int) -> list[str]:
    if data.name == "adding":
        return ["value", "marker"]
    if data.name == "digits":
        return [f"px {j}" for j in range(n)]
    return [f"x{j}" for j in range(n)]


def _label(value: torch.Tensor, data: Dataset) -> str:
    if data.task == "classification":
        return str(int(value.argmax())) if value.ndim else str(int(value))
    return f"{float(value):.3g}"
